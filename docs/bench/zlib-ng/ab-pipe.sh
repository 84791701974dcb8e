#!/bin/bash
cd /work/main
for r in 1 2; do
 for v in main zng; do
  src=/work/main; [ $v = zng ] && src=/work/wt-zng
  flock /tmp/imagenetfs-bench.lock flock /tmp/imagenetfs-pytest.lock python3 scripts/bench.py --quick --pipeline --no-meta --no-reads --no-storm --no-shared --repeat 2 --work /var/tmp/imagenetfs-bench-pipeline --out /tmp/pipe-$v-$r --variants gzip --only imagenetfs,squashfuse_ll,unpacked --imagenetfs-src $src 2>&1 | sed "s/^/$v $r /"
 done
done
