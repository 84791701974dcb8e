"""Epochs of a real input pipeline, served one at a time to scripts/bench.py (`--pipeline`).

Runs under an interpreter that has torch and torchvision (benchlib/pipeline.py finds it: the
test environment) and imports nothing of the project. It reads commands on stdin, one JSON
object a line, and answers each with one JSON line on stdout, so that the benchmark can read
the daemon's CPU time between epochs:

- `{"root": DIR, "subset": FILE}`: the next epochs read `ImageFolder(DIR)`, restricted to the
  `<class>/<file>` paths FILE lists, one a line (answer: `{"ready": true}`); the folder is
  scanned at the next epoch, inside its timing, as a training script scans it at start;
- `{"epoch": SEED, "workers": N, "batch": B}`: one epoch -- `DataLoader(ImageFolder(...,
  RandomResizedCrop(224), RandomHorizontalFlip(), ToTensor(), Normalize(ImageNet's mean and
  std)), batch_size=B, shuffle=True, num_workers=N)`, the order from SEED -- answered with its
  seconds (`scan_s` of them scanning the folder, 0 after the first epoch), the images read,
  and the CPU seconds of this process and of its reaped children (the DataLoader's workers,
  which exit at the end of each epoch): `cpu_s`;
- `{"quit": true}`.

Started once per benchmark run, before any mount: importing torch (seconds, and most of a GB
of libraries read) is not timed and does not happen between a cache drop and an epoch.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any


def main() -> int:
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    torch.set_num_threads(1)  # the main process only collates; the workers decode
    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    root = ""
    wanted: set[str] = set()
    dataset: Any = None

    def valid(path: str) -> bool:
        return os.path.relpath(path, root) in wanted

    def cpu() -> float:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def say(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    say({"ready": True, "torch": torch.__version__})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("quit"):
            break
        if "root" in cmd:
            root = cmd["root"]
            with open(cmd["subset"]) as f:
                wanted = {x for x in f.read().splitlines() if x}
            dataset = None
            say({"ready": True})
            continue
        c0, t0 = cpu(), time.perf_counter()
        scan = 0.0
        if dataset is None:
            dataset = datasets.ImageFolder(root, transform=transform, is_valid_file=valid)
            scan = time.perf_counter() - t0
            if len(dataset) != len(wanted):
                say({"error": f"{root}: {len(dataset)} images found, {len(wanted)} listed"})
                continue
        gen = torch.Generator()
        gen.manual_seed(int(cmd["epoch"]))
        loader = DataLoader(
            dataset,
            batch_size=int(cmd["batch"]),
            shuffle=True,
            num_workers=int(cmd["workers"]),
            generator=gen,
        )
        images = 0
        for batch, _labels in loader:
            images += batch.shape[0]
        del loader  # its workers are joined (and reaped) once the epoch is exhausted
        say(
            {
                "seconds": time.perf_counter() - t0,
                "scan_s": scan,
                "images": images,
                "cpu_s": cpu() - c0,
            }
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
