"""The environment a profile ran in: enough to tell whether two measurements are comparable."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from cmt_gen.devices import device_for, find
from cmt_gen.devices.cpu import cpu_capability, cpu_model, instruction_set_caps

__all__ = ["LoadMeter", "busy_warning", "cpu_busy_fraction", "cpu_model", "default_threads", "fingerprint",
           "free_cores", "load_average", "with_default_threads"]


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load: other work on the machine makes CPU timings noisy."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def cpu_busy_fraction(window_s: float = 0.25) -> float | None:
    """Share of all cores busy with other work right now (we sleep meanwhile), from /proc/stat."""
    stat = Path("/proc/stat")
    if not stat.is_file():
        return None

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return idle, sum(fields[:8])

    try:
        idle0, total0 = sample()
        time.sleep(window_s)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return None if total <= 0 else max(0.0, 1.0 - (idle1 - idle0) / total)


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all cores since boot, from /proc/stat; None where there is none."""
    stat = Path("/proc/stat")
    try:
        fields = [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


class LoadMeter:
    """Share of the machine's cores busy with OTHER work over a span (this process's CPU time removed).

    /proc/stat counts every process; the process's own user+system time (all its
    threads) is subtracted, so what is left is load that competes with the
    measurement. None where /proc/stat is missing.
    """

    def __init__(self) -> None:
        self._start: tuple[tuple[int, int] | None, float, float] | None = None

    def start(self) -> LoadMeter:
        self._start = (_cpu_jiffies(), _own_cpu_seconds(), time.perf_counter())
        return self

    def other_busy(self) -> float | None:
        if self._start is None:
            return None
        jiffies0, own0, wall0 = self._start
        jiffies1, own1, wall1 = _cpu_jiffies(), _own_cpu_seconds(), time.perf_counter()
        if jiffies0 is None or jiffies1 is None or jiffies1[1] <= jiffies0[1]:
            return None
        ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        cores = os.cpu_count() or 1
        busy_s = (jiffies1[0] - jiffies0[0]) / ticks
        total_s = (jiffies1[1] - jiffies0[1]) / ticks or (wall1 - wall0) * cores
        other = (busy_s - (own1 - own0)) / total_s
        return round(min(1.0, max(0.0, other)), 3)


def _on_host(device: str) -> bool:
    """Whether the device is the host CPU, where threads and other work on the machine set the pace."""
    found = find(device)
    return found is not None and found.host


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def free_cores(busy: float | None = None) -> tuple[int, int, float | None]:
    """(cores free of other work, cores, busy fraction): a core counts as free when under half used."""
    cores = os.cpu_count() or 1
    busy = cpu_busy_fraction() if busy is None else busy
    if busy is None:
        load = load_average()
        busy = None if load is None else min(1.0, load[0] / cores)
    if busy is None:
        return cores, cores, None
    return max(1, min(cores, round(cores * (1 - busy)))), cores, busy


def default_threads(device: str, busy: float | None = None) -> tuple[int | None, str | None]:
    """Threads for a CPU run when the user named none: the cores actually free, so threads do not
    queue behind other work (two threads on a busy 2-core machine measure contention, not the model).
    Returns (None, None) off the host CPU, where torch's own default is right."""
    if not _on_host(device):
        return None, None
    free, cores, busy = free_cores(busy)
    if busy is None:
        return cores, f"{cores} threads: all {cores} cores (load unknown)"
    return free, (f"{free} thread{'s' if free != 1 else ''}: {free} of {cores} cores free "
                  f"({busy * 100:.0f}% busy with other work before the run)")


def busy_warning(device: str, threads_settled: bool = False, busy: float | None = None) -> str | None:
    """A warning when other work already loads the CPU: CPU timings are then slow and noisy.

    Suggests --threads 1 only when the thread count is not settled already (given, or one).
    """
    if not _on_host(device):
        return None
    cores = os.cpu_count() or 1
    busy = cpu_busy_fraction() if busy is None else busy
    if busy is not None:
        if busy < 0.25:
            return None
        what = f"{busy * 100:.0f}% of its {cores} cores busy with other work"
    else:
        load = load_average()
        if load is None or load[0] <= cores:
            return None
        what = f"load {load[0]:.1f} on {cores} cores"
    advice = "rerun on a quiet machine" if threads_settled else \
        "rerun on a quiet machine, or with --threads 1 to avoid threads waiting on each other"
    return f"the machine was busy before the run ({what}): CPU timings are slowed and noisy; {advice}"


def with_default_threads(settings: Any) -> tuple[Any, float | None]:
    """A ProfileSettings with, on CPU without --threads, as many threads as cores are free of other work;
    returned with the busy fraction measured for that choice (None when nothing was chosen)."""
    from dataclasses import replace

    if not _on_host(settings.device_type) or settings.threads is not None:
        return settings, None  # nothing to choose (busy_warning measures the load itself)
    busy = cpu_busy_fraction()
    threads, note = default_threads(settings.device, busy)
    return replace(settings, threads=threads, threads_note=note), busy


def fingerprint(device: str) -> dict[str, Any]:
    """torch, CUDA, device name, threads, CPU, Python and package versions; the device adds its own part."""
    import torch

    import cmt_gen

    info: dict[str, Any] = {
        "cmt_gen": cmt_gen.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": cpu_capability(),
        "instruction_set_caps": instruction_set_caps(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda_runtime": torch.version.cuda,
        "load_average": load_average(),
    }
    info.update(device_for(device).fingerprint(device))
    timm = sys.modules.get("timm")
    if timm is not None:
        info["timm"] = getattr(timm, "__version__", None)
    return info
