"""An NVIDIA GPU through CUDA: asynchronous, timed by its own events, with a caching allocator.

Work is queued on a stream, so a span is timed with CUDA events recorded on
that stream (the GPU's own timeline, one synchronisation at the end); peak
memory is the allocator's `max_memory_allocated` over the model's run, minus
what was allocated before the model came (weights, inputs, activations,
gradients and optimizer state, workspaces; the allocator's reserve is not
counted). cuDNN picks its fastest algorithms for the run, as timm, DeiT and
Swin benchmarks do.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from typing import Any

from cmt_gen.devices.base import Device, DeviceDefaults, MatmulSizes, MemoryMeter
from cmt_gen.errors import CmtGenError


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


class CudaDevice(Device):
    kind = "cuda"
    label = "CUDA"
    names = ("cuda", "cuda:N")
    picked_by_auto = True
    defaults = DeviceDefaults(batch_size=64, warmup=10, iters=10, min_time=1.0, repeats=5,
                              latency_warmup=5, latency_samples=20, latency_time=0.5, latency_max_samples=500)
    matmul_sizes = MatmulSizes(start=4096, efficient_call_s=0.002, largest=8192)
    # the memory-efficient SDPA kernel takes the float bias and fuses the three steps
    attention_kernel = "sdpa"

    def resolve(self, text: str, asked: str) -> str | None:
        if text != "cuda" and not text.startswith("cuda:"):
            return None
        index_text = text.partition(":")[2]
        if index_text and not index_text.isdigit():
            return None  # "cuda:x": not a device name at all
        import torch

        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
            raise CmtGenError(f"{asked} asked for but CUDA is not available (torch {torch.__version__}, "
                              f"{build} build); use --device cpu or auto", field="device")
        count = torch.cuda.device_count()
        index = int(index_text) if index_text else torch.cuda.current_device()
        if index >= count:
            raise CmtGenError(f"{asked} asked for but there {'is' if count == 1 else 'are'} only {count} "
                              f"CUDA device{'s' if count != 1 else ''} (cuda:0..cuda:{count - 1})", field="device")
        return f"cuda:{index}"

    def auto(self) -> str | None:
        import torch

        return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else None

    def machine_name(self) -> str | None:
        """The first GPU's name, only when torch is loaded already (checking a calibration stays torch-free)."""
        import sys

        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
        return None

    def fingerprint(self, device: str) -> dict[str, Any]:
        import torch

        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        return dict(
            device_name=props.name,
            device_capability=f"{props.major}.{props.minor}",
            device_memory_bytes=props.total_memory,
            cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
        )

    def synchronize(self, device: str) -> None:
        import torch

        torch.cuda.synchronize(device)

    def time_calls(self, device: str, fn: Callable[[], object], n: int) -> float:
        import torch

        self.synchronize(device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0

    def memory_meter(self, device: str) -> MemoryMeter:
        return CudaMemory(device)

    def free_memory(self, device: str) -> int:
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)

    def empty_cache(self, device: str) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def check_precision(self, device: str, dtype_name: str, label: str, *, allow_slow: bool) -> None:
        if dtype_name != "bfloat16":
            return
        import torch

        try:
            supported = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:
            supported = torch.cuda.is_bf16_supported()
        if not supported:
            name = torch.cuda.get_device_name(torch.device(device))
            raise CmtGenError(f"{label} is not supported on {device} ({name}); use fp32, fp16 or amp",
                              field="precision")

    def uses_grad_scaler(self, dtype_name: str) -> bool:
        return dtype_name == "float16"  # fp16 gradients underflow without loss scaling; bf16 has fp32's range

    @contextlib.contextmanager
    def run_flags(self) -> Iterator[None]:
        """Let cuDNN pick its fastest algorithms (what timm, DeiT and Swin benchmarks do); restored after."""
        import torch

        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = before


CUDA = CudaDevice()
