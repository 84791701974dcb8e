#!/bin/sh
# The second set: counters per image (pipecount.py), 12 more rounds of each 8-reader A/B, and
# two more alternations of the sorted one-reader row; each under the locks on its own.
set -e
d=docs/bench/push-copied
L="flock /tmp/imagenetfs-bench.lock flock /tmp/imagenetfs-pytest.lock"
PY=/opt/imagenetfs-push-copied/venv/bin/python
$L $PY $d/pipecount.py $d/counters /var/tmp/pc-src/zng /var/tmp/pc-src/push > $d/counters.log 2>&1
for v in noD-noF gzip; do
  $L $PY scripts/bench_ab.py --a /var/tmp/pc-src/zng --b /var/tmp/pc-src/push \
    --work /var/tmp/imagenetfs-bench-pipeline --repeat 12 --variant $v --only reads --alternate \
    > $d/ab-reads-$v-12.log 2>&1
done
for n in 3 4; do
  for which in $( [ $n = 3 ] && echo "zng push" || echo "push zng" ); do
    $L $PY scripts/bench.py --quick --repeat 3 --work /var/tmp/imagenetfs-bench-pipeline \
      --variants gzip --only imagenetfs,kernel,squashfuse_ll --no-meta --no-storm --no-shared \
      --sorted-only --imagenetfs-src /var/tmp/pc-src/$which --out $d/sorted-gzip-$n-$which \
      > $d/sorted-gzip-$n-$which.log 2>&1
  done
done
