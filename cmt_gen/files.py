"""Safe files: outputs written atomically onto regular files only, inputs read with a bound.

An output is a finished file or none, never half of one; it never replaces a
device, a FIFO or a folder, nor one of the command's own inputs. An input is
read only if it is a regular file no larger than its limit, so `/dev/zero` or a
FIFO can neither hang a command nor fill its memory.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from cmt_gen.errors import CmtGenError


def default_file_mode() -> int:
    """The mode a plain open() would give a new file under the current umask (0644 under 022)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _mode_for(path: Path) -> int:
    """An overwritten file keeps its permissions (a private 0600 output stays private); a new one gets
    what open() would give it."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return default_file_mode()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they would be
        return os.path.realpath(a) == os.path.realpath(b)


def check_output_target(path: str | Path, *, inputs: Iterable[str | Path | None] = (),
                        others: Iterable[str | Path | None] = (), suffixes: Sequence[str] = (),
                        what: str = "the output") -> Path:
    """The path to write `path` at, or a CmtGenError: only a regular file or a new path will do.

    A link to a regular file is followed (the file is replaced, the link kept);
    a device, FIFO, socket, folder or dangling link is refused, and so is one of
    the command's own `inputs` or another output (`others`) of the same run.
    With `suffixes`, the file name must end in one of them ("write {what} as ...").
    """
    path = Path(path)
    name = str(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise CmtGenError(f"cannot write: {exc.strerror or exc}", source=name) from None
    if mode is None and path.is_symlink():
        raise CmtGenError("cannot write: a link to nothing; give a regular file or a new path", source=name)
    if mode is not None and not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a device, FIFO or socket)"
        raise CmtGenError(f"cannot write: {kind}; outputs go only to regular files or new paths", source=name)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise CmtGenError("output folder does not exist", source=name)
    for item in inputs:
        if item is not None and _same_file(Path(item), target):
            raise CmtGenError(f"cannot write: also an input of this command ({item}); choose another output path",
                              source=name)
    for item in others:
        if item is not None and _same_file(Path(item), target):
            raise CmtGenError("cannot write: given for two outputs of this run; give each its own path", source=name)
    if suffixes and path.suffix.lower() not in suffixes:
        raise CmtGenError(f"write {what} as {' or '.join(suffixes)}, not {path.suffix or 'no suffix'}", source=name)
    return target


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on failure it vanishes.

    Every writer of output files goes through here, so none is ever left half-written,
    nothing but a regular file is ever replaced, and any failure of the writer (a full
    disk, as an OSError or as a library's own error) is one clear CmtGenError.
    """
    name = str(path)
    path = check_output_target(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise CmtGenError(f"cannot write: {exc.strerror or exc}", source=name) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _mode_for(path))  # mkstemp made it private (0600)
        os.replace(tmp, path)
    except CmtGenError:
        raise
    except OSError as exc:
        raise CmtGenError(f"cannot write: {exc.strerror or exc}", source=name) from None
    except Exception as exc:  # noqa: BLE001 - torch.save, safetensors, matplotlib raise their own types
        raise CmtGenError(f"cannot write: {_first_line(exc)}", source=name) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write text or bytes through `atomic_output`, synced to disk before the rename."""
    payload = data.encode() if isinstance(data, str) else data
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def read_bounded(path: str | Path, limit: int, error: type[CmtGenError] = CmtGenError) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; anything else is one clear `error`.

    The size is checked before reading and the read stops at the limit, so a device,
    a FIFO or a file that grows while it is read cannot hang the command or fill memory.
    """
    name = str(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error("no such file", source=name) from None
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror or exc}", source=name) from None
    if stat.S_ISDIR(info.st_mode):
        raise error("is a folder, not a file", source=name)
    if not stat.S_ISREG(info.st_mode):
        raise error("not a regular file (a device, FIFO or socket); give a file", source=name)
    if info.st_size > limit:
        raise error(f"file is {_size(info.st_size)}, larger than the {_size(limit)} allowed here", source=name)
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror or exc}", source=name) from None
    if len(data) > limit:
        raise error(f"file grew past the {_size(limit)} allowed here while it was read", source=name)
    return data


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
