"""The host CPU: synchronous, measured in host RAM, and only fast in a low precision with native units.

A CPU runs each op to completion before the call returns, so perf_counter
around the calls is the timing; its peak memory is the resident set's growth
(`devices.host_memory`). A low precision without AVX512-BF16/FP16 or AMX
kernels is emulated tens of times slower than fp32, so it is refused unless
asked for (`--allow-slow-precision`).
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from cmt_gen.devices.base import Device, DeviceDefaults, MatmulSizes, MemoryMeter
from cmt_gen.errors import CmtGenError


class CpuDevice(Device):
    kind = "cpu"
    label = "CPU"
    names = ("cpu",)
    host = True
    picked_by_auto = True  # the fallback when no accelerator is present
    defaults = DeviceDefaults(batch_size=8, warmup=1, iters=1, min_time=2.0, repeats=5,
                              latency_warmup=1, latency_samples=10, latency_time=2.0, latency_max_samples=200)
    matmul_sizes = MatmulSizes(start=1024, efficient_call_s=0.05, largest=2048)
    # an explicit matmul, bias add and softmax beats SDPA's float-mask fallback (deploy.attention_kernels)
    attention_kernel = "matmul"
    amp_dtype = "bfloat16"  # CPU autocast runs bf16

    def machine_name(self) -> str | None:
        return cpu_model()

    def fingerprint(self, device: str) -> dict[str, Any]:
        return {"device_name": cpu_model()}

    def memory_meter(self, device: str) -> MemoryMeter:
        from cmt_gen.devices.host_memory import host_memory_meter

        return host_memory_meter()

    def check_precision(self, device: str, dtype_name: str, label: str, *, allow_slow: bool) -> None:
        if not allow_slow and self.native_support(dtype_name) is False:
            capability = cpu_capability() or "unknown capability"
            raise CmtGenError(
                f"{label} on cpu: this CPU ({capability}) has no native {dtype_name} kernels, so it would be "
                "emulated and run tens of times slower than fp32; use --precision fp32, or "
                "--allow-slow-precision to measure the emulation anyway",
                field="precision",
            )

    def native_support(self, dtype_name: str) -> bool | None:
        """Whether the CPU has native kernels for a low precision (AVX512-BF16/FP16, AMX); None if unknown."""
        import torch

        probe = {"bfloat16": "_is_mkldnn_bf16_supported", "float16": "_is_mkldnn_fp16_supported"}.get(dtype_name)
        if probe is None:
            return True
        try:
            return bool(getattr(torch.ops.mkldnn, probe)())
        except (AttributeError, RuntimeError):
            return None


def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo where there is one."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# Environment variables that lower the instruction set a process's kernels use on this same CPU: oneDNN's
# (convolutions, linear layers; it reads the first one set) and ATen's (its own kernels). A timing or a
# calibration holds only under the caps it was made with (`benchmarks/NOTES.md`, the oneDNN ISA sweep).
ONEDNN_ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
INSTRUCTION_SET_CAPS = (*ONEDNN_ISA_VARIABLES, "ATEN_CPU_CAPABILITY")


def instruction_set_caps(environ=None) -> dict[str, str]:
    """The caps set in this process's environment, as set (empty values ignored). Torch-free."""
    import os

    environ = os.environ if environ is None else environ
    return {name: environ[name].strip() for name in INSTRUCTION_SET_CAPS if environ.get(name, "").strip()}


def caps_text(caps: dict) -> str:
    """Caps as one line of `NAME=value` (a file's values bounded and printable), or that there is none."""
    def clean(text) -> str:
        return "".join(c if c.isprintable() and not c.isspace() else "?" for c in str(text))[:40]

    if not caps:
        return "no instruction-set cap"
    return " ".join(f"{clean(k)}={clean(v)}" for k, v in sorted(caps.items(), key=lambda kv: str(kv[0])))


def cpu_capability() -> str | None:
    """The vector instruction set torch's CPU kernels use here (e.g. AVX512); None if torch cannot say (a torch
    without the probe, or a build whose probe fails)."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability()) or None
    except Exception:  # noqa: BLE001 - a probe that fails on some build is the same as no probe
        return None


CPU = CpuDevice()
