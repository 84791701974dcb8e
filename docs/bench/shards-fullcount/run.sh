#!/bin/bash
# the measured stretches after the index A/B, each under both locks
set -u
cd /work/wt-fullcount/docs/bench/shards-fullcount
P=/opt/imagenetfs-fullcount/venv/bin/python
W=/var/tmp/imagenetfs-fullcount
S=$W/full-tiny-gzip
R=/var/tmp/imagenetfs-bench-shards/src-20x100-gzip
L="flock /tmp/imagenetfs-bench.lock flock /tmp/imagenetfs-pytest.lock"
mkdir -p $W/mnt
# S1: the image pass on the tiny full set (also the index the TFRecord view needs)
$L $P measure.py index /work/wt-fullcount $S $W/full-info.lmdb --image-info | tee -a info-tiny.log
# S2: mount-ready with and without --shards, then the first requests into the views
$L sh -c "for i in 1 2 3; do $P measure.py mount $S $W/full.lmdb $W/mnt; $P measure.py mount $S $W/full.lmdb $W/mnt --shards; done" | tee -a mount-ready.log
$L sh -c "for i in 1 2 3; do $P measure.py first $S $W/full.lmdb $W/mnt; done; for i in 1 2 3; do $P measure.py first $S $W/full-info.lmdb $W/mnt; done" | tee -a first-request.log
# S3: the daemon's memory: main's code and this branch's, without and with --shards
$L sh -c "for ix in full full-info; do PYTHONPATH=/work/main $P measure.py memory $S $W/\$ix.lmdb $W/mnt; PYTHONPATH=/work/main $P measure.py memory $S $W/\$ix.lmdb $W/mnt --shards; $P measure.py memory $S $W/\$ix.lmdb $W/mnt --shards; done" | tee -a memory.log
# S4: the image pass on real-size files, cold and warm
$L sh -c "for i in 1 2 3; do $P measure.py info $R $W/real-info.lmdb --cold; $P measure.py info $R $W/real-info.lmdb; done" | tee -a info-real.log
echo done
