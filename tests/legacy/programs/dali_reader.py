"""A DALI-style file reader (`fn.readers.file(file_root=ROOT, file_list=LIST)`): parse the
`<path> <label>` list, `stat` each file and `mmap` exactly `st_size` bytes, MAP_PRIVATE.

    python dali_reader.py ROOT LIST...

Prints, per listed file: path, label, size, the first bytes (JPEG/PNG magic) and the MD5 of
the mapping. Then, for the first file, a copy-on-write store into a PROT_WRITE private mapping
must stay private: the file reads back unchanged.
"""

import hashlib
import mmap
import os
import sys


def read_list(path: str) -> list[tuple[str, int]]:
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                name, label = line.rsplit(maxsplit=1)
                rows.append((name, int(label)))
    return rows


def mapped(path: str, size: int, prot: int = mmap.PROT_READ) -> mmap.mmap:
    fd = os.open(path, os.O_RDONLY)
    try:
        return mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=prot)
    finally:
        os.close(fd)


def main() -> None:
    root, lists = sys.argv[1], sys.argv[2:]
    first = None
    for name in lists:
        for rel, label in read_list(os.path.join(root, name)):
            path = os.path.join(root, rel)
            size = os.stat(path).st_size
            with mapped(path, size) as m:
                print(rel, label, size, m[:4].hex(), hashlib.md5(m).hexdigest())
            first = first or path
    if first is not None:
        size = os.stat(first).st_size
        with mapped(first, size, mmap.PROT_READ | mmap.PROT_WRITE) as m:
            before = hashlib.md5(m).hexdigest()
            m[0] ^= 0xFF
            changed = hashlib.md5(m).hexdigest() != before
        with open(first, "rb") as f:
            after = hashlib.md5(f.read()).hexdigest()
        print("copy-on-write", "private" if changed and after == before else "LEAKED")


if __name__ == "__main__":
    main()
