"""Attention with a float position bias, by the kernel that is fastest on each device.

The deploy form folds the softmax scale into q, so every kernel computes
`softmax(q k^T + bias) v`. On CPU, `scaled_dot_product_attention` with a float
mask runs its math fallback plus mask checks, and an explicit matmul, in-place
bias add and softmax is faster (`matmul`); on CUDA the memory-efficient SDPA
kernel takes a float bias and fuses the three steps (`sdpa`). Each device says
which is its default; the figures are in `benchmarks/NOTES.md` and
`benchmarks/bench_inference.py --kernels` measures them again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KERNELS = ("sdpa", "matmul")


def check_kernel(kernel: str | None) -> None:
    """Refuse an unknown kernel name before any layer is rewritten (None: the device's default)."""
    if kernel is not None and kernel not in KERNELS:
        raise ValueError(f"attention_kernel={kernel!r} is not one of {', '.join(KERNELS)} (or None: the fastest "
                         "on the model's device)")


def default_kernel(device_type: str) -> str:
    """The measured winner for this device type (`Device.attention_kernel`); SDPA where nothing was measured."""
    from cmt_gen.devices import find

    device = find(device_type)
    return device.attention_kernel if device is not None else "sdpa"


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
           kernel: str) -> torch.Tensor:
    """softmax(q k^T + bias) v for (B, heads, N, d) q and (B, heads, M, d) k, v; q already scaled."""
    if kernel == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
    logits = q @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    return logits.softmax(dim=-1) @ v
