"""stdout that survives its reader: a closed pipe or a full device never becomes a traceback.

`cmt-gen check --all | head -1` closes the pipe while the table is printed; the
command must still finish and exit with its real status. `cmt-gen list >
/dev/full` loses its output; that is reported once, after the command ran.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any


class GuardedStream:
    """Wraps a text stream: the first failed write or flush is remembered, later output is dropped."""

    def __init__(self, stream: Any):
        self._stream = stream
        self.failure: OSError | None = None

    def write(self, text: str) -> int:
        if self._stream is None and self.failure is None:  # started with stdout closed (`cmt-gen list >&-`)
            self.failure = OSError(errno.EBADF, "stdout is closed")
        if self.failure is None:
            try:
                return self._stream.write(text)
            except UnicodeEncodeError:  # PYTHONIOENCODING=ascii and a table holding Δ: escape, as stderr does
                encoding = getattr(self._stream, "encoding", None) or "ascii"
                return self.write(text.encode(encoding, "backslashreplace").decode(encoding))
            except OSError as exc:
                self.failure = exc
        return len(text)

    def flush(self) -> None:
        if self.failure is None and self._stream is not None:
            try:
                self._stream.flush()
            except OSError as exc:
                self.failure = exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    @property
    def broken_pipe(self) -> bool:
        return self.failure is not None and self.failure.errno == errno.EPIPE


def install() -> GuardedStream:
    """Put a guard around sys.stdout (undo with `restore`)."""
    guard = GuardedStream(sys.stdout)
    sys.stdout = guard  # type: ignore[assignment]
    return guard


def restore(guard: GuardedStream) -> OSError | None:
    """Flush, put the original stream back and return the write failure, if any.

    After a failure the real stdout still holds unwritten bytes that Python would
    try (and fail) to flush at exit, printing a second error: point file
    descriptor 1 at /dev/null so that final flush succeeds silently.
    """
    guard.flush()
    sys.stdout = guard._stream
    if guard.failure is not None and guard._stream is sys.__stdout__:
        _silence_stdout()
    return guard.failure


def _silence_stdout() -> None:
    try:
        fd = sys.__stdout__.fileno() if sys.__stdout__ is not None else 1
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except (OSError, ValueError):  # no real descriptor (a test's capture): nothing to silence
        pass
