#!/bin/sh
# One pipeline run of A (zng) or B (push-copied), snapshots made by `git archive BRANCH imagenetfs`
# into /var/tmp/pc-src/{zng,push}; under the locks, as the helper brief says.
# usage: pipeline.sh zng|push N VARIANT
set -e
which=$1; n=$2; variant=${3:-gzip}
out=docs/bench/push-copied/pipeline-$variant-$n-$which
flock /tmp/imagenetfs-bench.lock flock /tmp/imagenetfs-pytest.lock \
  /opt/imagenetfs-push-copied/venv/bin/python scripts/bench.py --quick --pipeline --no-meta --no-reads \
    --no-storm --no-shared --repeat 2 --work /var/tmp/imagenetfs-bench-pipeline --variants $variant \
    --only imagenetfs,squashfuse_ll,unpacked --imagenetfs-src /var/tmp/pc-src/$which --out $out \
    > $out.log 2>&1
