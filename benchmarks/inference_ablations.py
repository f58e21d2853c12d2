"""Undo one deploy-form rewrite at a time, for the ablation rows of `bench_inference.py`.

Each function takes a deploy-form `CMT` (a copy) and puts back the work that one
rewrite removed, with identity parameters so the output is unchanged: an unfolded
BatchNorm costs one eval-mode affine pass, an unfolded residual one add, and so
on. The rest of the deploy form stays as it is, so a row's slowdown against the
full deploy form is what that rewrite contributes on its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmt_gen.deploy import attention as deploy_attention
from cmt_gen.deploy import blocks as deploy_blocks
from cmt_gen.deploy import cache_chunks, onednn
from cmt_gen.deploy import rewrite as D
from cmt_gen.deploy.blocks import FusedConv, TokenLinear


class TokenAffine(nn.Module):
    """An eval-mode BatchNorm on (B, N, C) tokens with identity statistics: one multiply-add pass."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels), requires_grad=False)
        self.shift = nn.Parameter(torch.zeros(channels), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x, self.scale)


def identity_bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels).eval()
    bn.running_var.fill_(1.0 - bn.eps)  # sqrt(var + eps) == 1 exactly
    return bn


class Then(nn.Sequential):
    """Modules applied in order (a token layer with the norm it had absorbed put back)."""


def _blocks(model):
    for stage in model.stages:
        yield from stage.blocks


def without_norm_folds(model):
    """Put back every folded norm: the blocks' LayerNorm affines, the K/V reduction BN, the IRFFN's
    two BNs around its down projection and the head's BN."""
    for block in _blocks(model):
        for name in ("norm1", "norm2"):
            old = getattr(block, name)
            setattr(block, name, nn.LayerNorm(old.normalized_shape, eps=old.eps))
        reduce = block.attn.reduce
        if reduce is not None and reduce.kind == "dwconv_bn":
            reduce.shrink = Then(reduce.shrink, identity_bn(reduce.shrink.weight.shape[0]))
        proj = block.ffn.project_fc
        block.ffn.project_fc = Then(TokenAffine(proj.weight.shape[1]), proj, TokenAffine(proj.weight.shape[0]))
    fc = model.head.conv_fc
    fc.act = "none"
    model.head.conv_fc = Then(fc, TokenAffine(fc.weight.shape[0]), nn.SiLU())
    return model


class AddInput(nn.Module):
    """y = layer(x) + x: the identity residual the centre tap had absorbed (the tap gets -1 back)."""

    def __init__(self, layer: nn.Module, act: str = "none"):
        super().__init__()
        self.layer, self.act = layer, act
        layer.act = "none"
        with torch.no_grad():
            k = layer.weight.shape[-1] // 2
            layer.weight[:, 0, k, k] -= 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x) + x
        return F.gelu(y) if self.act == "gelu" else y


def without_residual_folds(model):
    """`x + dw(x)` computed as written, in the LPU and the IRFFN (whose GELU then cannot fuse)."""
    for block in _blocks(model):
        if block.lpu is not None:
            block.lpu.conv = AddInput(block.lpu.conv)
        block.ffn.local_conv = AddInput(block.ffn.local_conv, "gelu")
    return model


class SplitKV(nn.Module):
    """K and V as two linears (their outputs concatenated for the deploy forward: one extra copy)."""

    def __init__(self, kv: TokenLinear):
        super().__init__()
        c = kv.weight.shape[0] // 2
        self.k = TokenLinear(kv.weight[:c], kv.bias[:c])
        self.v = TokenLinear(kv.weight[c:], kv.bias[c:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.k(x), self.v(x)], dim=-1)


def without_kv_fusion(model):
    for block in _blocks(model):
        block.attn.kv = SplitKV(block.attn.kv)
    return model


def without_onednn(model):
    """Linears through `F.linear` (BLAS) and convs through `F.conv2d`, activations separate."""
    for module in model.modules():
        if isinstance(module, (TokenLinear, FusedConv)):
            module.use_onednn = False
    return model


def with_sdpa(model):
    """Attention by `scaled_dot_product_attention` instead of the per-device choice."""
    for module in model.modules():
        if isinstance(module, D.DeployLightweightMHSA):
            module.kernel = "sdpa"
    return model


# Every module that binds the view helpers by name (a patch of one module misses the others' calls).
VIEW_USERS = (D, deploy_attention, deploy_blocks)


class CopyingViews(nn.Module):
    """Runs the deploy form with token <-> map conversions that copy, as the training form's do."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        to_map, to_tokens = deploy_blocks.tokens_as_map, deploy_blocks.map_as_tokens
        saved = [(m, m.tokens_as_map, m.map_as_tokens) for m in VIEW_USERS]
        for module in VIEW_USERS:
            module.tokens_as_map = lambda t, h, w: to_map(t, h, w).contiguous()
            module.map_as_tokens = lambda m: to_tokens(m.contiguous()).contiguous()
        try:
            return self.model(x.contiguous())
        finally:
            for module, a, b in saved:
                module.tokens_as_map, module.map_as_tokens = a, b


def without_channels_last(model):
    return CopyingViews(model)


class Patched(nn.Module):
    """Runs the model with some module attributes replaced for the duration of each call."""

    def __init__(self, model: nn.Module, patches: list[tuple[object, str, object]]):
        super().__init__()
        self.model, self.patches = model, patches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in self.patches]
        for owner, name, value in self.patches:
            setattr(owner, name, value)
        try:
            return self.model(x)
        finally:
            for owner, name, value in saved:
                setattr(owner, name, value)


def without_single_head_fold(model):
    """One-head attention computes q and the output projection on all N tokens (`_single_head`)."""
    for module in model.modules():
        if isinstance(module, D.DeployLightweightMHSA):
            module.fold_single_head = False
    return model


def without_image_chunks(model):
    """Every stage on the whole batch at once (`deploy.cache_chunks`)."""
    return Patched(model, [(cache_chunks, "image_chunks", lambda tokens, widest: [tokens])])


def without_packed_weights(model):
    """oneDNN reorders each linear and conv weight on every call (`deploy.onednn._cached_pack`)."""
    return Patched(model, [(onednn, "packed_weight", lambda weight, rows: weight),
                           (onednn, "packed_conv_weight", lambda weight, *shape: weight)])


ABLATIONS = {
    "norm folds (BN, LN affine)": without_norm_folds,
    "residual folds (centre tap)": without_residual_folds,
    "K/V fusion": without_kv_fusion,
    "channels-last views": without_channels_last,
    "oneDNN linear/conv + fused activation": without_onednn,
    "attention kernel choice (SDPA instead)": with_sdpa,
    "single-head projections on keys/values": without_single_head_fold,
    "cache-sized image chunks": without_image_chunks,
    "pre-packed oneDNN weights": without_packed_weights,
}
