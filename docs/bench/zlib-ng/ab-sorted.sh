#!/bin/bash
cd /work/main
for r in 1 2 3; do
 for v in main zng; do
  src=/work/main; [ $v = zng ] && src=/work/wt-zng
  flock /tmp/imagenetfs-bench.lock flock /tmp/imagenetfs-pytest.lock python3 scripts/bench.py --quick --repeat 3 --work /var/tmp/imagenetfs-bench-pipeline --out /tmp/sorted-$v-$r --variants gzip --only imagenetfs,kernel,squashfuse_ll --no-meta --no-storm --no-shared --sorted-only --imagenetfs-src $src 2>&1 | grep "sorted order" | sed "s/^/$v $r /"
 done
done
