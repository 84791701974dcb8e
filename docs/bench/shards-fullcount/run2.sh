#!/bin/bash
# py-spy profiles of the image pass on real-size files, cold and warm (after run.sh)
set -u
cd /work/wt-fullcount/docs/bench/shards-fullcount
P=/opt/imagenetfs-fullcount/venv/bin/python
W=/var/tmp/imagenetfs-fullcount
R=/var/tmp/imagenetfs-bench-shards/src-20x100-gzip
L="flock /tmp/imagenetfs-bench.lock flock /tmp/imagenetfs-pytest.lock"
$L sh -c "
$P -c 'import sys; sys.argv=[\"m\", \"x\"]; exec(open(\"measure.py\").read().split(\"def main\")[0]); evict(\"$R\")'
/opt/imagenetfs-fullcount/venv/bin/py-spy record --idle -r 250 --format raw -o $W/prof-cold.txt -- $P -m imagenetfs.cli index --source $R --index $W/prof.lmdb --image-info -q --rebuild
/opt/imagenetfs-fullcount/venv/bin/py-spy record --idle -r 250 --format raw -o $W/prof-warm.txt -- $P -m imagenetfs.cli index --source $R --index $W/prof.lmdb --image-info -q --rebuild
"
echo done2
