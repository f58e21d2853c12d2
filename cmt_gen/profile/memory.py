"""Peak memory of one model's run, measured per model rather than per process.

- CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, minus
  what was allocated before the model came: weights, inputs, activations,
  gradients and optimizer state (train), workspaces. The caching allocator's
  reserve is not counted.
- CPU on Linux: the growth of the resident set's high-water mark (VmHWM) over
  the resident size at the start. Freed heap is first handed back to the OS
  (`malloc_trim`) and the high-water mark is reset through
  `/proc/self/clear_refs`, so each model is measured from its own baseline,
  not from the largest model that ran before it (what a plain `ru_maxrss`
  delta would give). It counts everything the process touched meanwhile:
  weights, activations, oneDNN/MKL buffers.
- Elsewhere on CPU: the `ru_maxrss` delta, marked as a lower bound (it only
  sees growth beyond the process's earlier peak).
- MPS: no peak counter exists; reported as unavailable.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import resource
import sys
from pathlib import Path

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


class MemoryMeter:
    """Call `start()` before the model is built or placed, `peak_bytes()` after the run."""

    method = "unavailable"

    def start(self) -> None:
        """Take the baseline (before the model exists) and start a fresh peak."""

    def reset_peak(self) -> None:
        """Start a fresh peak, keeping the baseline (a new attempt after out-of-memory)."""

    def peak_bytes(self) -> int | None:
        return None


class CudaMemory(MemoryMeter):
    method = "cuda peak allocated (torch.cuda.max_memory_allocated) over the model's run"

    def __init__(self, device: str):
        self.device = device
        self.baseline = 0

    def start(self) -> None:
        import torch

        gc.collect()
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        self.baseline = torch.cuda.memory_allocated(self.device)

    def reset_peak(self) -> None:
        import torch

        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak_bytes(self) -> int | None:
        import torch

        torch.cuda.synchronize(self.device)
        return max(0, torch.cuda.max_memory_allocated(self.device) - self.baseline)


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


def memory_meter(device: str) -> MemoryMeter:
    """The most honest per-model meter this device and OS offer."""
    kind = device.split(":")[0]
    if kind == "cuda":
        return CudaMemory(device)
    if kind == "cpu":
        return LinuxRssMemory() if can_reset_rss_peak() else MaxRssMemory()
    return MemoryMeter()


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
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024  # Linux reports KiB


def tensor_bytes(module) -> int:
    """Bytes of a module's parameters and buffers (what its weights occupy)."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


__all__ = ["MemoryMeter", "memory_meter", "tensor_bytes", "release_free_heap"]
