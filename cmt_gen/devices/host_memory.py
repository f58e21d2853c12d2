"""Peak memory of one model's run in host RAM, measured per model rather than per process.

- On Linux: the growth of the resident set's high-water mark (VmHWM) over the
  resident size at the start. Freed heap is first handed back to the OS
  (`malloc_trim`) and the high-water mark is reset through
  `/proc/self/clear_refs`, so each model is measured from its own baseline,
  not from the largest model that ran before it (what a plain `ru_maxrss`
  delta would give). It counts everything the process touched meanwhile:
  weights, activations, oneDNN/MKL buffers.
- Elsewhere: the `ru_maxrss` delta, marked as a lower bound (it only sees
  growth beyond the process's earlier peak).

Apart from `devices.cpu` so that any device whose memory is host RAM can use it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
from pathlib import Path

from cmt_gen.devices.base import MemoryMeter

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


class LinuxRssMemory(MemoryMeter):
    method = "cpu resident peak growth (VmHWM reset per model via /proc/self/clear_refs)"

    def __init__(self) -> None:
        self.baseline = 0

    def start(self) -> None:
        release_free_heap()
        CLEAR_REFS.write_text("5")
        self.baseline = read_status_kib("VmRSS") * 1024

    def reset_peak(self) -> None:
        release_free_heap(collect=False)
        CLEAR_REFS.write_text("5")

    def peak_bytes(self) -> int | None:
        return max(0, read_status_kib("VmHWM") * 1024 - self.baseline)


class MaxRssMemory(MemoryMeter):
    method = "cpu ru_maxrss growth (lower bound: only growth beyond the process's earlier peak)"

    def __init__(self) -> None:
        self.baseline = 0

    def start(self) -> None:
        release_free_heap()
        self.baseline = _maxrss_bytes()

    def peak_bytes(self) -> int | None:
        return max(0, _maxrss_bytes() - self.baseline)


def host_memory_meter() -> MemoryMeter:
    """The resettable Linux meter where the kernel allows it, else the ru_maxrss lower bound."""
    return LinuxRssMemory() if can_reset_rss_peak() else MaxRssMemory()


def can_reset_rss_peak() -> bool:
    """Linux >= 4.0 lets a process reset its own VmHWM by writing 5 to clear_refs."""
    if not sys.platform.startswith("linux") or not CLEAR_REFS.exists():
        return False
    try:
        CLEAR_REFS.write_text("5")
        read_status_kib("VmHWM")
    except (OSError, ValueError):
        return False
    return True


def read_status_kib(key: str) -> int:
    """A `kB` field of /proc/self/status, e.g. VmRSS or VmHWM."""
    for line in STATUS.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise ValueError(f"{key} not in {STATUS}")


def release_free_heap(collect: bool = True) -> None:
    """Collect garbage and return freed malloc arenas to the OS, so RSS starts from live memory."""
    if collect:
        gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _maxrss_bytes() -> int:
    import resource  # POSIX only: imported where it is needed, not when the package is

    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024  # Linux reports KiB
