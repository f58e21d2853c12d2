"""The deploy form: each layer rewritten in place into an equivalent, faster inference layer.

`reparameterize_*` functions fold what is exactly foldable (see `folding`),
delete the training-only submodules and switch the module's class to a
`Deploy*` subclass whose forward runs the folded weights. Subclasses keep
`isinstance` true and keep the module where it was, so `timm`'s
`reparameterize_model` (which walks the children calling `reparameterize()`)
and our `CMT.reparameterize()` give the same network.

Layout: from the stem on, maps are channels-last, so the `(B, N, C)` tokens and
the `(B, C, H, W)` map of a stage are two views of one buffer: no transposes
are copied. 1x1 convolutions run as linears on the tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmt_gen.deploy import onednn
from cmt_gen.deploy.attention import (
    DeployLightweightMHSA,
    affine_free,
    fold_input_affine_into_attention,
    reparameterize_attention,
)
from cmt_gen.deploy.attention_kernels import check_kernel
from cmt_gen.deploy.blocks import (
    BiasAtSize,
    ChannelAffine,
    FusedConv,
    fold_linear_input,
    linear_layer,
    map_as_tokens,
    tokens_as_map,
)
from cmt_gen.deploy.cache_chunks import stage_chunks
from cmt_gen.deploy.folding import (
    add_identity_to_depthwise,
    conv1x1_as_linear,
    fold_affine_after,
    fold_affine_before,
    norm_affine,
    parameter,
)
from cmt_gen.deploy.hook import DeployForm, Reparameterizable
from cmt_gen.errors import InputShapeError
from cmt_gen.ops import capture


def gelu_name(gelu: nn.GELU) -> str:
    """The fused activation that computes this GELU (the block option `gelu_approximation`)."""
    return "gelu" if gelu.approximate == "none" else "gelu_tanh"


# ---------------------------------------------------------------- stem and patch aggregation
class DeployStem(DeployForm, nn.Sequential):
    """The stem, fed a channels-last copy of the image so every later map is channels-last."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        for unit in self:
            x = unit(x)
        return x


class DeployConvGeluBN(nn.Module):
    """Conv with GELU fused, then the BN (or nothing, once that BN is folded forward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


def reparameterize_stem(stem: nn.Module, kernel: str | None = None) -> None:
    """Each conv takes its GELU; the BNs stay. None folds inside the stem (each follows a GELU),
    and the last one could fold only across layers, into stage 0's unpadded patch conv: that
    fold saved almost nothing (`benchmarks/NOTES.md`) and would make a layer's rewrite depend on
    its neighbour (timm's `reparameterize_model` rewrites layer by layer), so it is not made."""
    for unit in stem:
        unit.conv = FusedConv(unit.conv, gelu_name(unit.act))
        del unit.act
        unit.__class__ = DeployConvGeluBN
    stem.__class__ = DeployStem


class DeployPatchAggregation(DeployForm, nn.Module):
    """2x2 stride-2 conv on a channels-last map, its tokens taken as a view, LayerNorm."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.conv(x.contiguous(memory_format=torch.channels_last))
        h, w = x.shape[-2], x.shape[-1]
        return self.norm(map_as_tokens(x)), h, w


def reparameterize_patch_aggregation(patch: nn.Module, kernel: str | None = None) -> None:
    patch.conv = FusedConv(patch.conv)
    patch.__class__ = DeployPatchAggregation


# ---------------------------------------------------------------- LPU and K/V reduction
class DeployLocalPerceptionUnit(DeployForm, nn.Module):
    """`x + dw3x3(x)` as one depthwise conv with the identity on its centre tap."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def reparameterize_lpu(lpu: nn.Module, kernel: str | None = None) -> None:
    lpu.conv.weight = parameter(add_identity_to_depthwise(lpu.conv.weight))
    lpu.conv = FusedConv(lpu.conv)
    lpu.__class__ = DeployLocalPerceptionUnit


# ---------------------------------------------------------------- IRFFN, block, stage, head
class DeployIRFFN(DeployForm, nn.Module):
    """On tokens: linear up, GELU, BN; dw3x3 (identity on its centre) on the map view, GELU; linear down
    with both trailing BNs folded in."""

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, N, C) tokens -> (B, N, C)."""
        if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript drops this block only when it stands alone)
            if capture.onnx_export():
                return self._forward_nchw(x, h, w)
        y = self.expand_norm(self.expand_fc(x))
        y = self.local_conv(tokens_as_map(y, h, w))
        return self.project_fc(map_as_tokens(y))

    @torch.jit.unused
    def _forward_nchw(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The same IRFFN as three NCHW convolutions, for ONNX export.

        ONNX has no channels-last layout, so the token form would transpose the
        expanded (4x-wide) map on its way into and out of the depthwise conv;
        here only the C-wide tokens are transposed, once in and once out.
        """
        y = onednn.activate(F.conv2d(tokens_as_map(x, h, w), self.expand_fc.weight[:, :, None, None],
                                     self.expand_fc.bias), self.expand_fc.act)
        affine = self.expand_norm  # as a 1x1 depthwise conv: ORT keeps it in its blocked layout
        y = F.conv2d(y, affine.scale[:, None, None, None], affine.shift, groups=affine.scale.shape[0])
        conv = self.local_conv
        y = onednn.activate(F.conv2d(y, conv.weight, conv.bias, conv.stride, conv.padding, 1, conv.groups), conv.act)
        y = F.conv2d(y, self.project_fc.weight[:, :, None, None], self.project_fc.bias)
        return map_as_tokens(y)


def reparameterize_irffn(ffn: nn.Module, kernel: str | None = None) -> None:
    """1x1 convs as linears on tokens, the residual into the dw kernel's centre, and the BNs
    after the dw conv and after the 1x1 down conv into the down linear."""
    ffn.expand_fc = linear_layer(conv1x1_as_linear(ffn.expand.conv.weight), ffn.expand.conv.bias,
                                 gelu_name(ffn.expand.act))
    ffn.expand_norm = ChannelAffine(*norm_affine(ffn.expand.norm))
    ffn.local.conv.weight = parameter(add_identity_to_depthwise(ffn.local.conv.weight))
    ffn.local_conv = FusedConv(ffn.local.conv, gelu_name(ffn.act))
    down = ffn.project.conv
    w, b = fold_affine_before(conv1x1_as_linear(down.weight), down.bias, *norm_affine(ffn.local.norm))
    w, b = fold_affine_after(w, b, *norm_affine(ffn.project.norm))
    ffn.project_fc = linear_layer(w, b)
    del ffn.expand, ffn.local, ffn.project, ffn.act
    ffn.__class__ = DeployIRFFN


def _residual(x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """x + branch, written into the branch's fresh buffer when no autograd graph needs it."""
    if torch.is_grad_enabled() or branch.dtype != x.dtype:  # autocast: keep the stream's dtype
        return x + branch
    return branch.add_(x)


class DeployCMTBlock(DeployForm, nn.Module):
    """LPU; x + attn(LN(x)); x + ffn(LN(x)); both LNs affine-free (their affines live in the next layers)."""

    def forward(self, x: torch.Tensor, h: int, w: int,
                position_bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.lpu is not None:
            x = map_as_tokens(self.lpu(tokens_as_map(x, h, w)))
        x = _residual(x, self.attn(self.norm1(x), h, w, position_bias))
        return _residual(x, self.ffn(self.norm2(x), h, w))


def reparameterize_block(block: nn.Module, kernel: str | None = None) -> None:
    """Deploy the LPU, attention and IRFFN (unless done already), then fold norm1's affine into
    the attention's input layers and norm2's into the IRFFN's up linear."""
    if block.lpu is not None and not isinstance(block.lpu, DeployLocalPerceptionUnit):
        reparameterize_lpu(block.lpu)
    if not isinstance(block.attn, DeployLightweightMHSA):
        reparameterize_attention(block.attn, kernel)
    if not isinstance(block.ffn, DeployIRFFN):
        reparameterize_irffn(block.ffn)
    fold_input_affine_into_attention(block.attn, *norm_affine(block.norm1))
    block.ffn.expand_fc = fold_linear_input(block.ffn.expand_fc, *norm_affine(block.norm2))
    block.norm1, block.norm2 = affine_free(block.norm1), affine_free(block.norm2)
    del block.drop_path
    block.__class__ = DeployCMTBlock


class DeployCMTStage(DeployForm, BiasAtSize, nn.Module):
    """Patch aggregation, the stage's bias (or offset table) at this size (cached), the blocks on shared token memory;
    on CPU in eager mode, a few images at a time where a batch would spill the cache (`cache_chunks`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, h, w = self.downsample(x)
        r = self.reduction_ratio
        if h % r or w % r:
            raise InputShapeError(
                f"stage map {h}x{w} is not divisible by its K/V reduction ratio {r}; "
                "choose an input size that keeps every stage divisible"
            )
        bias: torch.Tensor | None = None
        if self.position_bias is not None:
            bias = self._bias_at(self.position_bias, h, w, tokens.dtype)
        if self.position_bias_table is not None:
            bias = self._bias_at(self.position_bias_table, h, w, tokens.dtype, True)
        if not torch.jit.is_scripting():  # TorchScript drops this block only when it stands alone
            parts = stage_chunks(tokens, self.widest_channels)
            if len(parts) > 1:
                return tokens_as_map(torch.cat([self._blocks(part, h, w, bias) for part in parts]), h, w)
        return tokens_as_map(self._blocks(tokens, h, w, bias), h, w)

    def _blocks(self, tokens: torch.Tensor, h: int, w: int, bias: torch.Tensor | None) -> torch.Tensor:
        for block in self.blocks:
            tokens = block(tokens, h, w, bias)
        return tokens


def reparameterize_stage(stage: nn.Module, kernel: str | None = None) -> None:
    reparameterize_patch_aggregation(stage.downsample)
    for block in stage.blocks:
        if not isinstance(block, DeployCMTBlock):
            reparameterize_block(block, kernel)
    stage._bias_cache = {}
    stage.widest_channels = max(block.ffn.project_fc.weight.shape[1] for block in stage.blocks)  # IRFFN width
    stage.__class__ = DeployCMTStage


class DeployClassifierHead(DeployForm, nn.Module):
    """Linear (the 1x1 conv with its BN folded) on channel-last pixels, Swish, mean, dropout, fc."""

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        x = self.conv_fc(map_as_tokens(x))
        if self.global_pool == "avg":
            x = x.mean(dim=1)
        elif self.global_pool == "max":
            x = x.amax(dim=1)
        else:  # "": the unpooled map
            x = tokens_as_map(x, h, w)
        x = self.dropout(x)
        return x if pre_logits else self.fc(x)


def reparameterize_head(head: nn.Module, kernel: str | None = None) -> None:
    w, b = fold_affine_after(conv1x1_as_linear(head.conv.weight), head.conv.bias, *norm_affine(head.norm))
    head.conv_fc = linear_layer(w, b, "swish")
    del head.conv, head.norm, head.act
    head.__class__ = DeployClassifierHead


def reparameterize_network(model: nn.Module, attention_kernel: str | None = None) -> None:
    """Every layer of a `CMT` into its deploy form: the layer-by-layer walk timm's
    `reparameterize_model` makes too, so both give the same network."""
    check_kernel(attention_kernel)
    for child in (model.stem, *model.stages, model.head):
        if isinstance(child, Reparameterizable):
            child.reparameterize(attention_kernel=attention_kernel)  # each ends in leave_inference_mode
