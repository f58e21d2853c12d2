"""Apple silicon's GPU through Metal (MPS): asynchronous, with no per-model peak-memory counter.

Queued work is waited for with `torch.mps.synchronize` around perf_counter;
peak memory is reported as unavailable; the up-front fit guard counts the
host's free RAM (the GPU shares it). `--device auto` never picks it: it is
used when asked for by name.
"""

from __future__ import annotations

import platform
from typing import Any

from cmt_gen.devices.base import Device, DeviceDefaults, MatmulSizes
from cmt_gen.errors import CmtGenError


class MpsDevice(Device):
    kind = "mps"
    label = "Apple MPS"
    names = ("mps",)
    defaults = DeviceDefaults(batch_size=32, warmup=5, iters=5, min_time=1.0, repeats=5,
                              latency_warmup=3, latency_samples=20, latency_time=0.5, latency_max_samples=500)
    matmul_sizes = MatmulSizes(start=2048, efficient_call_s=0.005, largest=4096)
    attention_kernel = "sdpa"  # not measured here: SDPA, the default where nothing was measured

    def resolve(self, text: str, asked: str) -> str | None:
        if text != "mps":
            return None
        import torch

        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise CmtGenError("mps asked for but not available (needs Apple silicon and a torch built with MPS)",
                              field="device")
        return "mps"

    def fingerprint(self, device: str) -> dict[str, Any]:
        return {"device_name": f"Apple MPS ({platform.machine()})"}

    def synchronize(self, device: str) -> None:
        import torch

        torch.mps.synchronize()


MPS = MpsDevice()
