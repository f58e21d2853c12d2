"""A few bytes of a weight's values, read without torch's dispatcher, so the deploy form's caches
notice writes that bypass the version counter.

The packed-weight and position-bias caches are keyed by each tensor's version
counter, which every in-place op through the parameter moves (`copy_` under
`no_grad`, `load_state_dict`, an optimizer step). A write through `.data`
does not: `.data` is a new tensor with a counter of its own. So each cache
also keeps 64 bytes spread evenly over the tensor's memory and compares them
on use (a fraction of a microsecond): a write that changes the weight as a
whole (`p.data.copy_(new)`, `fill_`, `mul_`) is always noticed; one that
changes a few elements between the sampled bytes through `.data` is not, so
write those with `copy_` under `torch.no_grad()`. CPU tensors only: reading
device memory would synchronise, and the caches it guards run on CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

SAMPLED_BYTES = 64


def value_probe(tensor: torch.Tensor) -> Callable[[], bytes] | None:
    """A function returning the sampled bytes of `tensor` now; None where they cannot be read cheaply."""
    if tensor.device.type != "cpu" or not tensor.is_contiguous() or tensor.numel() == 0 or tensor.is_inference():
        return None
    try:
        raw = tensor.detach().reshape(-1).view(torch.uint8).numpy()
    except (RuntimeError, TypeError):  # a dtype numpy cannot view (none so far): version counter only
        return None
    positions = np.linspace(0, raw.size - 1, min(SAMPLED_BYTES, raw.size)).astype(np.intp)
    return lambda: raw[positions].tobytes()
