"""Exact algebra of the deploy form: norms folded into the weights next to them.

Every function returns new (weight, bias) tensors computed in float64 and cast
back, so a folded layer differs from the unfolded pair by rounding only.
A per-channel affine `y = x * scale + shift` folds *forward* into a layer that
reads it only where every output sees real inputs (1x1 convs, linears, unpadded
strided convs): a zero-padded 3x3 would see `shift` where the original saw 0.
"""

from __future__ import annotations

import torch
from torch import nn


def norm_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel of an eval-mode BatchNorm, or the affine part of a LayerNorm."""
    if isinstance(norm, nn.BatchNorm2d):
        scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
        return scale, norm.bias.double() - norm.running_mean.double() * scale
    if isinstance(norm, nn.LayerNorm):
        return norm.weight.double(), norm.bias.double()
    raise TypeError(f"cannot take the affine part of {type(norm).__name__}")


def _bias_of(layer_weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return bias.double() if bias is not None else torch.zeros(layer_weight.shape[0], dtype=torch.float64,
                                                              device=layer_weight.device)


def fold_affine_after(weight: torch.Tensor, bias: torch.Tensor | None,
                      scale: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer then affine on its output channels: `affine(layer(x)) == layer'(x)` (any padding)."""
    w = weight.double() * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    b = _bias_of(weight, bias) * scale + shift
    return w.to(weight.dtype), b.to(weight.dtype)


def fold_affine_before(weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor,
                       shift: torch.Tensor, groups: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine on the input channels, then a linear / unpadded conv: `layer(affine(x)) == layer'(x)`.

    `weight` is (out, in / groups, *kernel) or a linear's (out, in); exact only when the
    layer has no zero padding (the caller's job: 1x1, linear, kernel == stride).
    """
    out_channels, in_per_group = weight.shape[0], weight.shape[1]
    out_per_group = out_channels // groups
    # input channel read by each (out, in-within-group) weight slice
    group_of_out = torch.arange(out_channels, device=weight.device) // out_per_group
    channel = group_of_out[:, None] * in_per_group + torch.arange(in_per_group, device=weight.device)[None, :]
    extra = [1] * (weight.ndim - 2)
    w64 = weight.double()
    w = w64 * scale[channel].reshape(out_channels, in_per_group, *extra)
    shift_term = (w64 * shift[channel].reshape(out_channels, in_per_group, *extra)).flatten(1).sum(1)
    b = _bias_of(weight, bias) + shift_term
    return w.to(weight.dtype), b.to(weight.dtype)


def add_identity_to_depthwise(weight: torch.Tensor) -> torch.Tensor:
    """`x + dwconv(x) == dwconv'(x)` for an odd 'same'-padded depthwise kernel: +1 on the centre tap."""
    kh, kw = weight.shape[-2:]
    if weight.shape[1] != 1 or kh % 2 == 0 or kw % 2 == 0:
        raise ValueError("the identity folds only into an odd, depthwise, same-padded kernel")
    w = weight.detach().clone()
    w[:, 0, kh // 2, kw // 2] += 1.0
    return w


def conv1x1_as_linear(weight: torch.Tensor) -> torch.Tensor:
    """(out, in, 1, 1) conv weight as the (out, in) weight of a linear on channel-last tokens."""
    return weight.reshape(weight.shape[0], weight.shape[1])


def parameter(t: torch.Tensor) -> nn.Parameter:
    """A fresh leaf parameter (folded weights are new values, not views of the trained ones)."""
    return nn.Parameter(t.detach().clone().contiguous(), requires_grad=False)


def leave_inference_mode(module: nn.Module) -> None:
    """Replace every parameter and buffer of `module` made under inference_mode by a normal copy,
    so a deploy form built inside `torch.inference_mode()` runs as one built outside: only a
    normal tensor has the version counter the packed-weight and bias caches follow updates by.
    Every layer's rewrite ends with it (`hook.Reparameterizable.reparameterize`)."""
    with torch.inference_mode(False):
        for m in module.modules():
            for name, p in m._parameters.items():
                if p is not None and p.is_inference():
                    m._parameters[name] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
            for name, b in m._buffers.items():
                if b is not None and b.is_inference():
                    m._buffers[name] = b.clone()
