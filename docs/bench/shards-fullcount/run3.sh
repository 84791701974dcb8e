#!/bin/bash
# per-process memory, the branch, default index, without and with --shards (after run2.sh)
set -u
cd /work/wt-fullcount/docs/bench/shards-fullcount
P=/opt/imagenetfs-fullcount/venv/bin/python
W=/var/tmp/imagenetfs-fullcount
S=$W/full-tiny-gzip
flock /tmp/imagenetfs-bench.lock flock /tmp/imagenetfs-pytest.lock sh -c "$P measure.py memory $S $W/full.lmdb $W/mnt; $P measure.py memory $S $W/full.lmdb $W/mnt --shards" | tee -a memory-per-process.log
