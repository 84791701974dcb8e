#!/bin/sh
# 8 readers, random order, cold and warm (scripts/bench_ab.py), A = zng, B = push-copied
# (snapshots by `git archive`, /var/tmp/pc-src/{zng,push}), then one reader in sorted order
# (scripts/bench.py --sorted-only), A and B alternating; each under the locks on its own.
set -e
d=docs/bench/push-copied
L="flock /tmp/imagenetfs-bench.lock flock /tmp/imagenetfs-pytest.lock"
PY=/opt/imagenetfs-push-copied/venv/bin/python
for v in gzip noD-noF; do
  $L $PY scripts/bench_ab.py --a /var/tmp/pc-src/zng --b /var/tmp/pc-src/push \
    --work /var/tmp/imagenetfs-bench-pipeline --repeat 6 --variant $v --only reads --alternate \
    > $d/ab-reads-$v.log 2>&1
done
for n in 1 2; do
  for which in $( [ $n = 1 ] && echo "zng push" || echo "push zng" ); do
    $L $PY scripts/bench.py --quick --repeat 3 --work /var/tmp/imagenetfs-bench-pipeline \
      --variants gzip --only imagenetfs,kernel,squashfuse_ll --no-meta --no-storm --no-shared \
      --sorted-only --imagenetfs-src /var/tmp/pc-src/$which --out $d/sorted-gzip-$n-$which \
      > $d/sorted-gzip-$n-$which.log 2>&1
  done
done
