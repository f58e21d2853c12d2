"""The hostile-input arena: a folder of bad inputs, a snapshot of it, and the one assertion every case makes.

Each case runs the real entry point in-process (`cli` fixture) inside a copy of
tests/hostile/ plus what git cannot hold: FIFOs, links to devices, dangling
links, a 3 GB sparse file, broken checkpoints. A case passes when the command
ends with the expected exit code and exactly one line on stderr naming the
problem, prints no traceback, finishes within CASE_SECONDS, and leaves every
file of the arena (and /dev/null) exactly as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import stat
import time
from pathlib import Path

from conftest import TESTS

HOSTILE = TESTS / "hostile"
CASE_SECONDS = 20.0  # generous on a shared 2-core box: the slowest case takes well under 2 s
SPARSE_BYTES = 3 << 30  # "a 3 GB spec": sparse, so it costs no disk


def make_arena(root: Path, checkpoints: Path | None = None) -> Path:
    """Copy tests/hostile/ into `root` and add the inputs git cannot hold."""
    shutil.copytree(HOSTILE, root)
    for name in ("fifo.yaml", "fifo.json", "fifo.pt", "fifo_out.jsonl"):
        os.mkfifo(root / name)
    (root / "folder").mkdir()
    (root / "folder.yaml").mkdir()
    for name in ("to_devnull.json", "to_devnull.yaml", "to_devnull.jsonl", "to_devnull.pt"):
        (root / name).symlink_to("/dev/null")
    (root / "dangling.json").symlink_to(root / "nowhere" / "x.json")
    for name in ("sparse.yaml", "sparse.json"):
        with open(root / name, "wb") as handle:
            handle.truncate(SPARSE_BYTES)
    shutil.copy(root / "tiny.yaml", root / "[red]file.yaml")  # a path that rich would read as markup
    (root / "profile.json").write_text('[{"name": "tiny", "images_per_s": 100.0}]\n')
    (root / "huge_rate.json").write_text('[{"name": "tiny", "images_per_s": 1' + "0" * 400 + '}]\n')  # 10^400
    (root / "profile.png").write_text('[{"name": "tiny", "images_per_s": 100.0}]\n')  # JSON under a picture's name
    if checkpoints is not None:
        for item in checkpoints.iterdir():
            shutil.copy(item, root / item.name)
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root: kind, and for files size, mtime, inode and (for small ones) a hash."""
    state: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        info = os.lstat(path)
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(info.st_mode):
            state[rel] = ("link", os.readlink(path))
        elif stat.S_ISREG(info.st_mode):
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if info.st_size < (1 << 20) else ""
            state[rel] = ("file", info.st_size, info.st_mtime_ns, info.st_ino, digest)
        else:
            state[rel] = ("other", stat.S_IFMT(info.st_mode))
    return state


class CaseTimeout(Exception):
    """A case ran past its time bound: a hang, reported instead of waiting forever."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Interrupt a blocked call (open() on a FIFO, an endless loop) with an exception."""
    def expire(signum, frame):
        raise CaseTimeout(f"ran past {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_refused(cli, arena: Path, argv: list[str], code: int, fragment: str):
    """Run one case; assert the exit code, one stderr line holding `fragment`, no traceback, nothing touched."""
    before = snapshot(arena)
    devnull = os.stat("/dev/null").st_mode
    start = time.perf_counter()
    with time_limit(CASE_SECONDS * 2):
        result = cli(*argv)
    elapsed = time.perf_counter() - start
    assert elapsed < CASE_SECONDS, f"{argv} took {elapsed:.1f} s"
    assert "Traceback" not in result.err + result.out, result.err
    lines = result.err.strip("\n").splitlines()
    assert result.code == code, (result.code, result.err, result.out[-500:])
    assert len(lines) == 1, result.err
    assert fragment in lines[0], lines[0]
    assert snapshot(arena) == before, f"{argv} created, changed or removed a file"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and os.stat("/dev/null").st_mode == devnull
    return result
