"""Peak memory of one model's run, measured per model rather than per process.

How is the device's answer (`Device.memory_meter`):

- CUDA (`devices.cuda.CudaMemory`): `torch.cuda.max_memory_allocated` after
  `reset_peak_memory_stats`, minus what was allocated before the model came.
- CPU (`devices.host_memory`): on Linux the growth of the resident set's
  high-water mark, reset per model through `/proc/self/clear_refs`; elsewhere
  the `ru_maxrss` delta, marked as a lower bound.
- MPS: no peak counter exists; reported as unavailable.

The meters keep their names here for callers that import them from the profiler.
"""

from __future__ import annotations

from cmt_gen.devices import device_for
from cmt_gen.devices.base import MemoryMeter
from cmt_gen.devices.cuda import CudaMemory
from cmt_gen.devices.host_memory import (
    LinuxRssMemory,
    MaxRssMemory,
    can_reset_rss_peak,
    read_status_kib,
    release_free_heap,
)


def memory_meter(device: str) -> MemoryMeter:
    """The most honest per-model meter this device and OS offer."""
    return device_for(device).memory_meter(device)


def tensor_bytes(module) -> int:
    """Bytes of a module's parameters and buffers (what its weights occupy)."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


__all__ = ["CudaMemory", "LinuxRssMemory", "MaxRssMemory", "MemoryMeter", "can_reset_rss_peak", "memory_meter",
           "read_status_kib", "release_free_heap", "tensor_bytes"]
