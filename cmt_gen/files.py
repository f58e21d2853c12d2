"""Output files written atomically: a finished file or none, never half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cmt_gen.errors import CmtGenError


def default_file_mode() -> int:
    """The mode a plain open() would give a new file under the current umask (0644 under 022)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on failure it vanishes.

    Every writer of output files goes through here, so none is ever left half-written
    and an OS failure (disk full, a folder in the way) is one clear CmtGenError.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise CmtGenError("output folder does not exist", source=str(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise CmtGenError(f"cannot write: {exc.strerror or exc}", source=str(path)) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, default_file_mode())  # mkstemp made it private (0600)
        os.replace(tmp, path)
    except OSError as exc:
        raise CmtGenError(f"cannot write: {exc.strerror or exc}", source=str(path)) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write text or bytes through `atomic_output`, synced to disk before the rename."""
    payload = data.encode() if isinstance(data, str) else data
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
