#!/bin/bash
# The layout made once per mount (branch layout-once) against main (36d085b), interleaved,
# three rounds; each stretch under both locks. Main's code runs from an export of 36d085b's
# imagenetfs/ on PYTHONPATH (the venv and the CLI are the branch's; the PYTHONPATH trick of
# run.sh), the branch's from the venv's editable install.
set -u
cd "$(dirname "$0")"
export VENV=/opt/imagenetfs-layout-once/venv WORK=/var/tmp/imagenetfs-fullcount
P=$VENV/bin/python
W=$WORK
S=$W/full-tiny-gzip
MAIN=$W/main-code
L="flock /tmp/imagenetfs-bench.lock flock /tmp/imagenetfs-pytest.lock"
mkdir -p $W/mnt
what=${1:-all}
if [ "$what" = first ] || [ "$what" = all ]; then
  for i in 1 2 3; do
    for ix in full full-info; do
      $L env PYTHONPATH=$MAIN $P measure.py first $S $W/$ix.lmdb $W/mnt | sed "s/^/{\"code\": \"main\", \"index\": \"$ix\", \"round\": $i, \"r\": /; s/\$/}/" | tee -a once-first.log
      $L $P measure.py first $S $W/$ix.lmdb $W/mnt | sed "s/^/{\"code\": \"branch\", \"index\": \"$ix\", \"round\": $i, \"r\": /; s/\$/}/" | tee -a once-first.log
    done
  done
fi
if [ "$what" = memory ] || [ "$what" = all ]; then
  for i in 1 2 3; do
    for ix in full full-info; do
      for sh in "" --shards; do
        $L env PYTHONPATH=$MAIN $P measure.py memory $S $W/$ix.lmdb $W/mnt $sh | sed "s/^/{\"code\": \"main\", \"index\": \"$ix\", \"round\": $i, \"r\": /; s/\$/}/" | tee -a once-memory.log
        $L $P measure.py memory $S $W/$ix.lmdb $W/mnt $sh | sed "s/^/{\"code\": \"branch\", \"index\": \"$ix\", \"round\": $i, \"r\": /; s/\$/}/" | tee -a once-memory.log
      done
    done
  done
fi

if [ "$what" = child ]; then
  # the layout process alone: time and peak RSS (child_peak.py), three times per index
  for i in 1 2 3; do for ix in full full-info; do
    $L $P child_peak.py $W/$ix.lmdb | tee -a once-child.log
  done; done
fi
if [ "$what" = loop ]; then
  # --workers 0: other requests while the first ls into shards/ makes the layout (loop.py)
  for i in 1 2 3; do
    $L env PYTHONPATH=$MAIN $P loop.py $S $W/full.lmdb $W/mnt | sed "s/^/{\"code\": \"main\", \"round\": $i, \"r\": /; s/\$/}/" | tee -a once-loop.log
    $L $P loop.py $S $W/full.lmdb $W/mnt | sed "s/^/{\"code\": \"branch\", \"round\": $i, \"r\": /; s/\$/}/" | tee -a once-loop.log
  done
fi
echo done
