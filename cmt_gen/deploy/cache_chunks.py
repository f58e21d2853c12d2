"""Split a batch into chunks of images whose widest activation fits the CPU's last-level cache.

At the early CMT stages one image's IRFFN map is large (CMT-S at 224: 3136 tokens
x 256 channels = 3.2 MB at stage 1), so a batch of 16 spills the 32 MB L3 between
the up linear, the BN affine, the depthwise conv and the down linear, and each of
them streams the 51 MB map from memory. Running a stage's blocks on a few images at a
time keeps that map in cache; later stages, whose many blocks' weights would be re-read
per chunk, stay whole. Half the cache per chunk is the budget that measured best
(`benchmarks/NOTES.md`, "Cache-sized image chunks").
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch

from cmt_gen.deploy import onednn

FALLBACK_CACHE_BYTES = 32 << 20
CPU0_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")


@functools.lru_cache(maxsize=4)
def last_level_cache_bytes(caches: Path = CPU0_CACHES) -> int:
    """Size of the largest data cache of CPU 0 (Linux sysfs), else 32 MiB."""
    sizes = []
    for index in caches.glob("index*"):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit() and int(digits) > 0:
            sizes.append(int(digits) * scale)
    return max(sizes, default=FALLBACK_CACHE_BYTES)


def image_chunks(tokens: torch.Tensor, widest_channels: int) -> list[torch.Tensor]:
    """`tokens` (B, N, C) split into near-even chunks of images, as many as the (B, N,
    widest_channels) activation fills halves of the last-level cache; `[tokens]` when it fits."""
    batch, n = tokens.shape[0], tokens.shape[1]
    total = batch * n * widest_channels * tokens.element_size()
    chunks = min(batch, math.ceil(total / (last_level_cache_bytes() // 2)))
    if chunks <= 1:
        return [tokens]
    return list(tokens.split(math.ceil(batch / chunks)))


def stage_chunks(tokens: torch.Tensor, widest_channels: int) -> list[torch.Tensor]:
    """The chunks a deploy stage runs `tokens` in: `image_chunks` in eager CPU inference (where the
    oneDNN path runs), the whole batch anywhere else (traced or compiled graphs, autograd, CUDA)."""
    if not onednn.onednn_usable(tokens):
        return [tokens]
    return image_chunks(tokens, widest_channels)
