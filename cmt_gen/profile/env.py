"""The environment a profile ran in: enough to tell whether two measurements are comparable."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo where there is one."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


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


def busy_warning(device: str) -> str | None:
    """A warning when other work already loads the CPU: CPU timings are then slow and noisy."""
    if device.split(":")[0] != "cpu":
        return None
    cores = os.cpu_count() or 1
    busy = cpu_busy_fraction()
    if busy is not None:
        if busy < 0.25:
            return None
        what = f"{busy * 100:.0f}% of its {cores} cores busy with other work"
    else:
        load = load_average()
        if load is None or load[0] <= cores:
            return None
        what = f"load {load[0]:.1f} on {cores} cores"
    return (f"the machine was busy before the run ({what}): CPU timings are slowed and noisy; rerun on a "
            "quiet machine, or with --threads 1 to avoid threads waiting on each other")


def fingerprint(device: str) -> dict[str, Any]:
    """torch, CUDA, device name, threads, CPU, Python and package versions."""
    import torch

    import cmt_gen

    kind = device.split(":")[0]
    info: dict[str, Any] = {
        "cmt_gen": cmt_gen.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": _cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda_runtime": torch.version.cuda,
        "load_average": load_average(),
    }
    if kind == "cuda":
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        info.update(
            device_name=props.name,
            device_capability=f"{props.major}.{props.minor}",
            device_memory_bytes=props.total_memory,
            cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
        )
    elif kind == "mps":
        info.update(device_name=f"Apple MPS ({platform.machine()})")
    else:
        info.update(device_name=info["cpu"])
    timm = sys.modules.get("timm")
    if timm is not None:
        info["timm"] = getattr(timm, "__version__", None)
    return info


def _cpu_capability() -> str | None:
    import torch

    try:
        return torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        return None
