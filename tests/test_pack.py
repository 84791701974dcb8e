"""`imagenetfs pack SOURCE OUTDIR`: any source, written in the cluster layout, serves the same tree.

Five generated sources -- the cluster sample (realistic JPEGs), a Kaggle directory, Kaggle's zip,
the official tars with the devkit, and an unpacked tree with the odd cases (a val file without a
label, a symlink, an empty file, one larger than a stream chunk, a long non-ASCII name) -- are
packed by the real CLI with the real mksquashfs. Each OUTDIR is mounted with imagenetfs beside a
mount of its source: the same walk, every file's bytes the same (val regrouped alike, meta.bin
and the lists too). Every packed image, extracted by `unsquashfs` and mounted by the kernel's own
SquashFS, holds byte for byte what the real tools (`unsquashfs`, `tar`, `unzip`, `cp`) extract
from its source, and `val_labels.txt` the source's own labels, read without imagenetfs. A pack
stopped by SIGINT or killed leaves no image that looks finished, and the rerun finishes it; a
rerun after success keeps every image; refusals are one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import oracles
import pytest
from helpers import (
    CLI,
    Mounter,
    Reference,
    extract_archive,
    fuse_unusable,
    one_error_line,
    reference_tree,
    wait_until,
)
from oracles import kernel_mounted

from imagenetfs import generate, nodeid
from imagenetfs.generate import Spec

UNUSABLE = fuse_unusable(("mksquashfs", "unsquashfs", "fusermount3"), "the tests mount as root")
pytestmark = pytest.mark.skipif(UNUSABLE is not None, reason=str(UNUSABLE))

SPLITS = ("train", "val", "test")
SOURCES = ("cluster", "kaggle", "unpacked", "official", "kaggle-zip")
TINY = Spec(classes=3, train_per_class=3, val_per_class=2, test=2, tiny=True, progress=False)
OUTPUT = {
    *(f"{s}.squashfs" for s in SPLITS),
    *(f"{s}_files.txt" for s in SPLITS),
    "val_labels.txt",
    "LOC_synset_mapping.txt",
    "imagenetfs.lmdb",
    ".imagenetfs-pack.json",
}
LOCK = ".imagenetfs-pack.lock"
LONG_NAME = "n01440764_" + "é" * 60 + ".JPEG"  # > 100 bytes: a PAX header in the stream


def make_unpacked(cluster: Path, root: Path) -> Path:
    """The tiny cluster images unpacked into train/ val/ test/, with the odd cases added."""
    root.mkdir()
    for split in SPLITS:
        extract_archive(cluster / f"{split}.squashfs", root / split)
    shutil.copy(cluster / "val_labels.txt", root)
    wnid = sorted(p.name for p in (root / "train").iterdir())[0]
    klass = root / "train" / wnid
    (klass / f"{wnid}_99.JPEG").write_bytes(os.urandom(3 * (1 << 20) + 123))  # > 1 chunk
    (klass / f"{wnid}_98.JPEG").write_bytes(b"")
    (klass / LONG_NAME).write_bytes(b"long name")
    os.symlink(f"{wnid}_99.JPEG", klass / "link.JPEG")
    (root / "val" / "ILSVRC2012_val_00049999.JPEG").write_bytes(b"no label for me")
    return root


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mounter]:
    """Runs the CLI as root with a cache of its own (the sources' indexes), and mounts."""
    harness = Mounter(tmp_path_factory.mktemp("pack"))
    try:
        yield harness
    finally:
        harness.cleanup()


@pytest.fixture(scope="module")
def sources(work: Mounter) -> dict[str, Path]:
    base = work.work / "sources"
    cluster = base / "cluster"
    generate.sample(cluster, progress=False)
    kaggle = base / "kaggle"
    generate.generate(kaggle, Spec(**{**TINY.__dict__, "layout": "kaggle"}))
    tiny = base / "tiny-cluster"
    generate.generate(tiny, TINY)
    official = base / "official"  # the ILSVRC2012 tars, as downloaded
    generate.generate(official, Spec(**{**TINY.__dict__, "layout": "official"}))
    kaggle_zip = base / "kaggle-zip"  # Kaggle's one zip, as downloaded
    generate.generate(kaggle_zip, Spec(**{**TINY.__dict__, "layout": "kaggle", "kaggle_zip": True}))
    return {
        "cluster": cluster,
        "kaggle": kaggle,
        "unpacked": make_unpacked(tiny, base / "u"),
        "official": official,
        "kaggle-zip": kaggle_zip,
    }


@pytest.fixture(scope="module")
def references(work: Mounter, sources: dict[str, Path]) -> dict[str, Reference]:
    """Each source's files as the real tools extract them (no imagenetfs)."""
    return {n: reference_tree(r, work.work / "reference" / n) for n, r in sources.items()}


@pytest.fixture(scope="module")
def packed(work: Mounter, sources: dict[str, Path]) -> dict[str, Path]:
    """Each source packed once by the CLI."""
    out = {}
    for name, root in sources.items():
        target = work.work / "packed" / name
        result = work.cli("pack", root, target, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "checked" in result.stdout, result.stdout
        out[name] = target
    return out


def walk(mp: Path) -> dict[str, bytes | str | None]:
    """Relative path -> bytes (files), link target (symlinks) or None (directories)."""
    found: dict[str, bytes | str | None] = {}
    for dirpath, dirnames, filenames in os.walk(mp):
        rel = os.path.relpath(dirpath, mp)
        for name in dirnames:
            found[os.path.normpath(os.path.join(rel, name))] = None
        for name in filenames:
            path = os.path.join(dirpath, name)
            key = os.path.normpath(os.path.join(rel, name))
            found[key] = os.readlink(path) if os.path.islink(path) else Path(path).read_bytes()
    return found


@pytest.mark.parametrize("name", SOURCES)
def test_packed_source_serves_the_same_tree(
    work: Mounter, sources: dict[str, Path], packed: dict[str, Path], name: str
) -> None:
    out = packed[name]
    assert {p.name for p in out.iterdir()} == OUTPUT
    before = work.work / f"mnt-{name}-source"
    after = work.work / f"mnt-{name}-packed"
    before.mkdir()
    after.mkdir()
    work.mount(before, sources[name])
    work.mount(after, out)
    state = work.state(after)
    assert state is not None and state["index"] == str(out / "imagenetfs.lmdb")  # the one beside
    want, got = walk(before), walk(after)
    assert sorted(got) == sorted(want)
    assert got == want  # every file, meta.bin and the lists included
    assert any(p.startswith("val/n0") and p.endswith(".JPEG") for p in got)
    if name == "unpacked":
        assert got["val/ILSVRC2012_val_00049999.JPEG"] == b"no label for me"
        assert isinstance(got[next(p for p in got if p.endswith("link.JPEG"))], str)
        assert any(p.endswith(LONG_NAME) for p in got)
    for mp in (before, after):
        assert work.cli("umount", mp).returncode == 0


def test_like_a_generated_cluster(sources: dict[str, Path], packed: dict[str, Path]) -> None:
    """Lists and labels byte-identical to the generator's; images hold what it puts at their
    root (`<wnid>/<file>`, flat val, flat test)."""
    generated, out = sources["cluster"], packed["cluster"]
    for name in (*(f"{s}_files.txt" for s in SPLITS), "val_labels.txt"):
        assert (out / name).read_bytes() == (generated / name).read_bytes(), name
    for split in SPLITS:
        assert listing(out / f"{split}.squashfs") == listing(generated / f"{split}.squashfs")
    mapping = (out / "LOC_synset_mapping.txt").read_text().splitlines()
    assert mapping[0] == "n01440764 tench, Tinca tinca"


def listing(image: Path) -> list[tuple[str, str]]:
    """(type, path) of every entry of an image, from `unsquashfs -lls`."""
    result = subprocess.run(
        ["unsquashfs", "-lls", "-d", "R", str(image)], capture_output=True, text=True, check=True
    )
    rows = []
    for line in result.stdout.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("R/"):
            rows.append((fields[0][0], fields[5][2:].split(" -> ")[0]))
    return rows


@pytest.mark.parametrize("name", SOURCES)
def test_images_list_their_files_txt(packed: dict[str, Path], name: str) -> None:
    out = packed[name]
    for split in SPLITS:
        files = [p for kind, p in listing(out / f"{split}.squashfs") if kind == "-"]
        assert files == (out / f"{split}_files.txt").read_text().splitlines(), split
        assert files, split
    labels = dict(line.split() for line in (out / "val_labels.txt").read_text().splitlines())
    flat = [p for kind, p in listing(out / "val.squashfs")]
    assert all("/" not in p for p in flat)
    unlabelled = {"ILSVRC2012_val_00049999.JPEG"} if name == "unpacked" else set()
    assert set(flat) - set(labels) == unlabelled


def packed_form(reference: Reference, split: str) -> tuple[dict[str, Any], dict[str, int]]:
    """What the packed image of `split` must hold, from the source's reference extraction:
    relative path -> bytes (files), link target (symlinks) or None (directories), and the
    files' and links' mtimes; val flat again, as the cluster layout keeps it."""
    tree: dict[str, Any] = {}
    mtimes: dict[str, int] = {}
    entries = [*reference.files.items(), *reference.links.items()]
    entries += [(d, None) for d in reference.dirs]
    for rel, body in entries:
        top, _, inner = rel.partition("/")
        if top != split or not inner:
            continue
        if split == "val":
            if body is None:
                continue  # val/<wnid>/: the regrouping, in no image
            inner = inner.rsplit("/", 1)[-1]
        tree[inner] = body
        if body is not None:
            mtimes[inner] = reference.mtimes[rel]
    return tree, mtimes


def times(root: Path) -> dict[str, int]:
    """Relative path -> mtime (whole seconds) of every file and symlink under `root`."""
    found = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, root)] = int(os.lstat(path).st_mtime)
    return found


@pytest.mark.parametrize("name", SOURCES)
def test_packed_images_hold_the_sources_files(
    work: Mounter, references: dict[str, Reference], packed: dict[str, Path], name: str
) -> None:
    """Each packed image, extracted by `unsquashfs` and mounted by the kernel's own SquashFS,
    holds byte for byte the files of its source as the real tools extract them (`unsquashfs`,
    `tar`, `unzip`, `cp`: `helpers.reference_tree`): `<wnid>/<file>` in train, val and test
    flat; symlinks as symlinks, the source's mtimes; its `*_files.txt` lists the regular
    files, sorted."""
    for split in SPLITS:
        want, want_times = packed_form(references[name], split)
        assert any(isinstance(v, bytes) for v in want.values()), split
        image = packed[name] / f"{split}.squashfs"
        extracted = extract_archive(image, work.work / f"unsquashed-{name}-{split}")
        assert oracles.walk(extracted) == want, split
        assert times(extracted) == want_times, split
        with kernel_mounted(image, work.work / f"kernel-{name}-{split}") as mp:
            assert oracles.walk(mp) == want, split
        listed = (packed[name] / f"{split}_files.txt").read_text().splitlines()
        assert listed == sorted(p for p, v in want.items() if isinstance(v, bytes)), split


@pytest.mark.parametrize("name", SOURCES)
def test_val_labels_are_the_sources(
    references: dict[str, Reference], packed: dict[str, Path], name: str
) -> None:
    """The packed `val_labels.txt` (`<file> <wnid>` a line) gives each val file the wnid the
    source's own labels give it, read without imagenetfs (`val_labels.txt`, Kaggle's
    `LOC_val_solution.csv`, the devkit by scipy.io.loadmat: `helpers.reference_tree`); a
    file without one has no line."""
    lines = (packed[name] / "val_labels.txt").read_text().splitlines()
    assert all(len(line.split(" ")) == 2 for line in lines), lines
    got = dict(line.split(" ") for line in lines)
    assert len(got) == len(lines)
    val = [p.split("/")[1:] for p in references[name].files if p.startswith("val/")]
    assert got == {parts[1]: parts[0] for parts in val if len(parts) == 2}
    unlabelled = {parts[0] for parts in val if len(parts) == 1}
    assert unlabelled == ({"ILSVRC2012_val_00049999.JPEG"} if name == "unpacked" else set())


def test_rerun_keeps_every_image(work: Mounter, packed: dict[str, Path]) -> None:
    out = packed["cluster"]
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}
    result = work.cli("pack", work.work / "sources" / "cluster", out)
    assert result.returncode == 0, result.stderr
    for split in SPLITS:
        assert f"{split}.squashfs: already packed, kept" in result.stdout
    assert "imagenetfs.lmdb: up to date, kept" in result.stdout
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}
    assert after == before


# --- interrupted ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow(work: Mounter, sources: dict[str, Path]) -> Path:
    """An unpacked source whose first train file is 512 MiB (sparse): packing it takes a
    second or more, time to stop it."""
    root = work.work / "sources" / "slow"
    shutil.copytree(sources["unpacked"], root, symlinks=True)
    first = sorted((root / "train").iterdir())[0]
    with open(first / "0-big.JPEG", "wb") as f:
        f.truncate(512 << 20)
    return root


def start_pack(work: Mounter, source: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        work.command([CLI, "pack", str(source), str(out)]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=work.env(),
        stdin=subprocess.DEVNULL,
    )


def parts(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob(".*.part-*")) if out.exists() else []


def stop_while_streaming(work: Mounter, source: Path, out: Path, signum: int) -> str:
    """Start a pack, send `signum` once the train image is being written; its stderr."""
    proc = start_pack(work, source, out)
    try:

        def written() -> bool:  # the part exists and mksquashfs has written into it
            return any(p.stat().st_size > 0 for p in out.glob(".train.squashfs.part-*"))

        assert wait_until(written, 60), parts(out)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (128 + signum, -signum), (proc.returncode, stderr)
    assert not (out / "train.squashfs").exists()
    return stderr


def mksquashfs_gone(out: Path) -> bool:
    """No mksquashfs is still writing into `out`."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if str(out).encode() in cmdline.read_bytes() and b"mksquashfs" in cmdline.read_bytes():
                return False
    return True


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stopped_pack_leaves_nothing_and_reruns(
    work: Mounter, slow: Path, signum: signal.Signals
) -> None:
    out = work.work / f"stopped-{signum.name}"
    stderr = stop_while_streaming(work, slow, out, signum)
    *notes, last = stderr.strip().splitlines()
    assert last == (
        f"imagenetfs: pack stopped by {signum.name}: no unfinished image is left in {out}; "
        "run the same command to go on"
    ), stderr
    assert all(note.startswith("imagenetfs: indexing ") for note in notes), stderr  # first use
    assert parts(out) == []
    assert wait_until(lambda: mksquashfs_gone(out), 10)
    if signum == signal.SIGTERM:
        return  # the rerun is the killed pack's test
    rerun_is_right(work, slow, out)


def test_a_killed_pack_is_finished_by_the_rerun(work: Mounter, slow: Path) -> None:
    out = work.work / "killed"
    proc = start_pack(work, slow, out)
    assert wait_until(lambda: bool(list(out.glob(".train.squashfs.part-*"))), 60)
    one_error_line(
        work.cli("pack", slow, out), f"another imagenetfs pack is writing {out}", stdout=None
    )
    assert proc.poll() is None, "the first pack ended before the second was refused"
    proc.kill()
    proc.wait()
    assert wait_until(lambda: mksquashfs_gone(out), 10)  # its input closed: it gave up
    assert not (out / "train.squashfs").exists()
    assert (out / LOCK).is_file()  # left by the killed pack: its holder is gone, on this node
    # what a pack killed at another moment leaves: a part file (its pid is gone)
    stale = f".val.squashfs.part-{nodeid.suffix(proc.pid)}"
    (out / stale).write_bytes(b"half")
    result = rerun_is_right(work, slow, out)
    assert stale in result.stdout


def rerun_is_right(work: Mounter, source: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """Run the pack again: it succeeds, leaves no part, serves the source's tree, and a
    further rerun keeps everything."""
    result = work.cli("pack", source, out, timeout=120)
    assert result.returncode == 0, result.stderr
    assert parts(out) == []
    assert {p.name for p in out.iterdir()} == OUTPUT
    assert served(out, work) == served(source, work)
    stamp = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}
    again = work.cli("pack", source, out, timeout=120)
    assert again.returncode == 0 and again.stdout.count("already packed, kept") == 3
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()} == stamp
    return result


def served(root: Path, work: Mounter) -> dict[str, str]:
    """Path -> digest of every file the source serves, read through its index (no mount)."""
    code = """
import hashlib, json, sys
from pathlib import Path
from imagenetfs import index, source
root = Path(json.loads(sys.argv[1]))
with index.Index.open(source.find_index(None, root), source=root) as ix:
    out, stack = {}, [(index.ROOT_INO, "")]
    while stack:
        ino, prefix = stack.pop()
        for node in ix.readdir(ino):
            rel = prefix + node.name.decode("utf-8", "surrogateescape")
            if node.kind == index.DIR:
                stack.append((node.ino, rel + "/"))
            elif node.kind == index.FILE:
                digest = hashlib.sha1()  # (the fastest here)
                for offset in range(0, node.size, 1 << 22):
                    digest.update(ix.read(node, offset, 1 << 22))
                out[rel] = digest.hexdigest()
print(json.dumps(out))
"""
    found: dict[str, str] = work.python(code, root, timeout=120)
    return found


# --- refusals and failures --------------------------------------------------------------------


# (A pack that has begun -- its source read, `source: ...` said on stdout -- and then stops:
# `stdout=None` below. A refusal before that says nothing on stdout.)


def test_refusals(work: Mounter, sources: dict[str, Path], packed: dict[str, Path]) -> None:
    kaggle, cluster = sources["kaggle"], sources["cluster"]
    one_error_line(work.cli("pack", kaggle, kaggle), "is the source itself")
    one_error_line(work.cli("pack", kaggle / ".", kaggle / "x" / ".."), "is the source itself")
    unpacked = sources["unpacked"]
    one_error_line(work.cli("pack", unpacked, unpacked / "train" / "x"), "is inside the source")
    missing = work.work / "nowhere"
    one_error_line(work.cli("pack", missing, work.work / "o"), f"source {missing} does not exist")
    one_error_line(work.cli("pack", kaggle, work.work / "o", "--splits", "train,dev"), "--splits")
    assert not (work.work / "o").exists()
    # packed from another source: refused, then replaced with --force
    result = work.cli("pack", kaggle, packed["cluster"])
    one_error_line(
        result, "holds train.squashfs, val.squashfs, test.squashfs of another source", stdout=None
    )
    assert "--force" in result.stderr
    # images no pack made (the generator's): refused too
    theirs = work.work / "theirs"
    theirs.mkdir()
    shutil.copy(cluster / "val.squashfs", theirs)
    one_error_line(work.cli("pack", kaggle, theirs), "holds val.squashfs of another", stdout=None)
    result = work.cli("pack", kaggle, theirs, "--force", "--splits", "val")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((theirs / ".imagenetfs-pack.json").read_text())
    assert set(manifest["images"]) == {"val.squashfs"}


def test_no_space_is_one_line(work: Mounter, sources: dict[str, Path]) -> None:
    small = work.work / "small-fs"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        result = work.cli("pack", sources["cluster"], small / "out")
        one_error_line(result, "not enough space for train.squashfs", stdout=None)
        assert parts(small / "out") == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_mksquashfs_failing_is_one_line(work: Mounter, sources: dict[str, Path]) -> None:
    """mksquashfs dying mid-stream (as on ENOSPC): its last words, no part, nothing hangs."""
    bin_dir = work.work / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "mksquashfs"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -version ]; then echo "mksquashfs version 4.5.1 (2022/03/17)"; exit 0; fi\n'
        "head -c 100000 >/dev/null\n"
        'echo "Write failed because No space left on device" >&2\n'
        'echo "FATAL ERROR: Failed to write to output filesystem" >&2\n'
        "exit 1\n"
    )
    fake.chmod(0o755)
    env = {**work.env(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    out = work.work / "failing"
    started = time.monotonic()
    result = subprocess.run(
        [CLI, "pack", str(sources["cluster"]), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    one_error_line(
        result, "mksquashfs failed for train.squashfs: Write failed because No space", stdout=None
    )
    assert "FATAL ERROR: Failed to write to output filesystem" in result.stderr
    assert time.monotonic() - started < 30
    assert parts(out) == [] and not (out / "train.squashfs").exists()


# --- a shared OUTDIR: other nodes, the lock, an unfinished pack ------------------------------


def dead_pid() -> int:
    """A pid no process of this node has now."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_parts_of_another_node_survive(work: Mounter, sources: dict[str, Path]) -> None:
    """A part file names the node that writes it (pid, boot id, host): a pack removes this
    node's parts whose process is gone, and keeps those of another node -- or of this host
    before a reboot, or of no known node -- which a pack there may still be writing."""
    out = work.work / "shared-parts"
    out.mkdir()
    here = nodeid.here()
    theirs = [
        f".train.squashfs.part-{dead_pid()}-{'ab' * 16}-othernode",  # another node
        f".val.squashfs.part-{dead_pid()}-{'cd' * 16}-{here.host}",  # this host, another boot
        f".test.squashfs.part-{dead_pid()}",  # an older pack's name: no node in it
    ]
    ours = f".val.squashfs.part-{dead_pid()}-{here.boot}-{here.host}"
    for name in (*theirs, ours):
        (out / name).write_bytes(b"half")
    result = work.cli("pack", sources["cluster"], out, timeout=120)
    assert result.returncode == 0, result.stderr
    assert not (out / ours).exists() and ours in result.stdout
    for name in theirs:
        assert (out / name).read_bytes() == b"half", name
        assert name in result.stdout, result.stdout  # said: left, and why
    assert "othernode" in result.stdout


MKSQUASHFS_KILLS_PACK = """#!/bin/sh
# the real mksquashfs, except for val.squashfs: then its parent, the pack, is SIGKILLed
case "$*" in *.val.squashfs.part*) kill -KILL $PPID; exit 1;; esac
exec {real} "$@"
"""


def test_an_unfinished_pack_is_not_served(work: Mounter, sources: dict[str, Path]) -> None:
    """A pack killed after train.squashfs took its name leaves an OUTDIR that looks like a
    train-only dataset: `mount` and `index` refuse it in one line naming the command that
    finishes it, and once that has run it is served."""
    src, out = sources["cluster"], work.work / "unfinished"
    bin_dir = work.work / "bin-kills-pack"
    bin_dir.mkdir()
    fake = bin_dir / "mksquashfs"
    fake.write_text(MKSQUASHFS_KILLS_PACK.format(real=shutil.which("mksquashfs")))
    fake.chmod(0o755)
    env = {**work.env(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    killed = subprocess.run(
        [CLI, "pack", str(src), str(out)], capture_output=True, text=True, env=env, timeout=120
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (out / "train.squashfs").is_file() and not (out / "val.squashfs").exists()
    mp = work.work / "mnt-unfinished"
    mp.mkdir()
    work.points.append(mp)  # (unmounted at the end, should a mount succeed)
    finish = f"finish it with the same command: imagenetfs pack {src} {out}"
    for args in (("mount", "--source", out, mp), ("index", "--source", out)):
        result = work.cli(*args)
        one_error_line(result, f"{out}: ")
        assert finish in result.stderr, result.stderr
    assert not os.path.ismount(mp)
    result = work.cli("pack", src, out, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train.squashfs: already packed, kept" in result.stdout
    assert work.cli("index", "--source", out).returncode == 0
    assert parts(out) == [] and not (out / LOCK).exists()


HOLD_THE_LOCK = """
import sys
from pathlib import Path
from imagenetfs import nodeid, pack
nodeid.here = lambda: nodeid.Node("othernode", "ef" * 16)  # a pack running on another node
with pack.locked(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_the_lock_of_another_node(work: Mounter, sources: dict[str, Path]) -> None:
    """A pack refuses an OUTDIR locked by a pack of another node -- while it runs, and after
    it died too (only its own node can tell that it is gone): one line naming the holder and
    the lock file to remove once no pack runs there. Then the pack goes on."""
    src, out = sources["cluster"], work.work / "locked-elsewhere"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        refused = f"another imagenetfs pack is writing {out} (pid {holder.pid} on othernode"
        one_error_line(work.cli("pack", src, out), refused, stdout=None)
        holder.kill()  # its lock file stays: this node cannot know that it is gone
        holder.wait()
        result = work.cli("pack", src, out)
        one_error_line(result, refused, stdout=None)
        assert f"remove {out / LOCK}" in result.stderr
        assert {p.name for p in out.iterdir()} == {LOCK}
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    (out / LOCK).unlink()  # as the line says
    result = work.cli("pack", src, out, timeout=120)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in out.iterdir()} == OUTPUT
