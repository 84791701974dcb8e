#!/bin/bash
cd /work/main
mkdir -p /var/tmp/imagenetfs-bench-shards
for r in 1 2 3; do
 for v in main zng; do
  pp=""; [ $v = zng ] && pp=/work/wt-zng
  flock /tmp/imagenetfs-bench.lock flock /tmp/imagenetfs-pytest.lock env PYTHONPATH=$pp /opt/imagenetfs/venv/bin/python scripts/bench_shards.py --quick --repeat 3 --work /var/tmp/imagenetfs-bench-shards > /tmp/shards-$v-$r.log 2>&1
  cp /var/tmp/imagenetfs-bench-shards/results.json /tmp/shards-$v-$r.json 2>/dev/null
  echo "$v $r done rc=$?"
 done
done
