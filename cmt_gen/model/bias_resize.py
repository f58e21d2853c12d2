"""A checkpoint's position biases brought to the spec's resolution when they were trained at another.

A position bias is (heads, N, N / k^2) for a stage of N tokens; a checkpoint
trained at 224 holds stage 0's at 56 x 56 tokens, a spec at 256 wants 64 x 64.
The model already resamples its biases (bicubic) for inputs of another size at
run time (`ops.position_bias`); loading resamples the stored ones the same way,
once, as timm does with a ViT's position embeddings, and says so. Only shapes
that are a square grid reduced by a whole ratio on both sides are resampled;
anything else is left for the strict shape check to refuse.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

from cmt_gen.ops.position_bias import resample_position_bias

_STAGE = re.compile(r"^stages\.(\d+)\.")


def _square_grid(tokens: int, kv_tokens: int) -> tuple[int, int] | None:
    """(side, reduction) of a square grid of `tokens` whose reduced grid holds `kv_tokens`; None if none."""
    side = math.isqrt(tokens)
    if side * side != tokens or kv_tokens < 1:
        return None
    ratio = math.isqrt(tokens // kv_tokens) if tokens % kv_tokens == 0 else 0
    if ratio < 1 or ratio * ratio * kv_tokens != tokens or side % ratio:
        return None
    return side, ratio


def resize_position_biases(state_dict: Mapping[str, torch.Tensor],
                           own: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str | None]:
    """The checkpoint with each position bias of another grid resampled to the model's; and one line saying
    what was resampled (None when nothing was)."""
    out = dict(state_dict)
    resized: list[tuple[str, int, int]] = []
    for key, mine in own.items():
        theirs = out.get(key)
        if not key.endswith("position_bias") or not isinstance(theirs, torch.Tensor) or theirs.ndim != 3 \
                or mine.ndim != 3 or tuple(theirs.shape) == tuple(mine.shape) or theirs.shape[0] != mine.shape[0]:
            continue
        old, new = _square_grid(theirs.shape[1], theirs.shape[2]), _square_grid(mine.shape[1], mine.shape[2])
        if old is None or new is None or old[1] != new[1]:
            continue
        (a, k), (b, _) = old, new
        with torch.no_grad():
            out[key] = resample_position_bias(theirs, (a, a), (a // k, a // k), (b, b), (b // k, b // k))
        resized.append((key, a, b))
    if not resized:
        return out, None
    key, a, b = resized[0]
    stage = _STAGE.match(key)
    scale = 2 ** (int(stage.group(1)) + 2) if stage else None
    sizes = f"resolution {a * scale} to {b * scale}" if scale else f"{a}x{a} to {b}x{b} tokens"
    what = f"{len(resized)} position bias{'es' if len(resized) > 1 else ''}"
    return out, (f"resampled {what} (bicubic) from the checkpoint's {sizes}, as the model does for inputs of "
                 "another size")
