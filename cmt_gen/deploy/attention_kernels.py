"""Attention with a float position bias, by the kernel that is fastest on each device.

The deploy form folds the softmax scale into q, so every kernel computes
`softmax(q k^T + bias) v`. Which kernel wins was measured with
`benchmarks/bench_inference.py --kernels` (CMT-S shapes, fp32):

- CPU (torch 2.14, 2-core AMD EPYC, avx512): `scaled_dot_product_attention` with a float
  mask runs its math fallback plus mask checks; an explicit matmul, in-place bias
  add and softmax is faster at every CMT-S stage, so CPU uses `matmul` (batch 16,
  1 thread, ms sdpa / matmul: stage 1 33.0 / 11.4, stage 2 8.0 / 5.5, stage 3
  3.8 / 2.8, stage 4 6.0 / 1.5).
- CUDA: the memory-efficient SDPA kernel accepts a float bias and fuses the three
  steps, so CUDA uses `sdpa` (checked by `benchmarks/gpu_check.sh`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KERNELS = ("sdpa", "matmul")
_DEFAULT_BY_DEVICE = {"cpu": "matmul", "cuda": "sdpa"}


def check_kernel(kernel: str | None) -> None:
    """Refuse an unknown kernel name before any layer is rewritten (None: the device's default)."""
    if kernel is not None and kernel not in KERNELS:
        raise ValueError(f"attention_kernel={kernel!r} is not one of {', '.join(KERNELS)} (or None: the fastest "
                         "on the model's device)")


def default_kernel(device_type: str) -> str:
    """The measured winner for this device type; SDPA where nothing was measured."""
    return _DEFAULT_BY_DEVICE.get(device_type, "sdpa")


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
           kernel: str) -> torch.Tensor:
    """softmax(q k^T + bias) v for (B, heads, N, d) q and (B, heads, M, d) k, v; q already scaled."""
    if kernel == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
    logits = q @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    return logits.softmax(dim=-1) @ v
