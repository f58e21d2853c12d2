"""CMT's layers as PyTorch modules, each taking explicit keyword arguments.

Op order, norms and eps follow the released implementation exactly (see
`shared/reference/cmt-architecture.md`). Each class carries a `complexity`
staticmethod (defined torch-free in `cmt_gen.cost.analytic`) that walks the same
sub-layers as its `__init__`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from cmt_gen.cost import analytic as complexity
from cmt_gen.deploy import attention as deploy_attention
from cmt_gen.deploy import rewrite as deploy
from cmt_gen.deploy.blocks import BiasAtSize
from cmt_gen.deploy.hook import Reparameterizable
from cmt_gen.errors import InputShapeError
from cmt_gen.ops.capture import recording
from cmt_gen.ops.position_bias import position_bias_at
from cmt_gen.spec.schema import BlockOptions

BN_EPS = 1e-5
LN_EPS_BLOCK = 1e-6  # the blocks' norm1 / norm2
LN_EPS_PATCH = 1e-5  # patch aggregation's LayerNorm (PyTorch default)
RELEASED = BlockOptions()  # the block options of the released CMT


def tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, N, C) tokens -> (B, C, H, W) image view."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C)."""
    return x.flatten(2).transpose(1, 2)


class DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample while training."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty([x.shape[0]] + [1] * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate:.3f}"


class InputCheck(nn.Module):
    """Refuses, in eager mode, inputs that are not (B, C, H, W) with H and W multiples of the total stride.

    A parameter-free first child, so feature wrappers that call the children in
    turn (timm's FeatureListNet, torchvision's IntermediateLayerGetter) check too.
    """

    def __init__(self, total_stride: int):
        super().__init__()
        self.total_stride = total_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self.check(x)
        return x

    @torch.jit.unused
    def check(self, x: torch.Tensor) -> None:
        if recording():
            return
        if x.ndim != 4:
            raise InputShapeError(f"expected a (batch, channels, height, width) tensor, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        s = self.total_stride
        if h % s or w % s:
            raise InputShapeError(
                f"input {h}x{w} is not a multiple of the total stride {s}; "
                f"use e.g. {max(s, h // s * s)}x{max(s, w // s * s)}"
            )


class ConvGeluBN(nn.Module):
    """Conv (with bias) -> GELU -> BatchNorm: the stem's unit, in the released order."""

    complexity = staticmethod(complexity.conv_gelu_bn_cost)

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, gelu_approximation: str = "none"):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=True)
        self.act = nn.GELU(approximate=gelu_approximation)
        self.norm = nn.BatchNorm2d(c_out, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.conv(x)))


class Stem(Reparameterizable, nn.Sequential):
    """3x3 s2 (in -> s), 3x3 (s -> s), 3x3 (s -> s); each conv, GELU, BN."""

    complexity = staticmethod(complexity.stem_cost)
    deploy_rewrite = staticmethod(deploy.reparameterize_stem)

    def __init__(self, in_channels: int, channels: int):
        super().__init__(
            ConvGeluBN(in_channels, channels, 3, 2),
            ConvGeluBN(channels, channels, 3, 1),
            ConvGeluBN(channels, channels, 3, 1),
        )


class PatchAggregation(Reparameterizable, nn.Module):
    """2x2 conv stride 2, flatten to tokens, LayerNorm: halves the map between stages."""

    complexity = staticmethod(complexity.patch_aggregation_cost)
    deploy_rewrite = staticmethod(deploy.reparameterize_patch_aggregation)

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 2, 2, bias=True)
        self.norm = nn.LayerNorm(c_out, eps=LN_EPS_PATCH)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.conv(x)
        return self.norm(map_to_tokens(x)), x.shape[2], x.shape[3]


class LocalPerceptionUnit(Reparameterizable, nn.Module):
    """LPU: x + DWConv3x3(x), on the image view."""

    complexity = staticmethod(complexity.local_perception_unit_cost)
    deploy_rewrite = staticmethod(deploy.reparameterize_lpu)

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class KVReduction(Reparameterizable, nn.Module):
    """Shrinks the key/value map by `ratio` in each direction before K and V projections.

    Modules a kind does not use are None (not absent), so TorchScript drops their branches.
    """

    complexity = staticmethod(complexity.kv_reduction_cost)
    deploy_rewrite = staticmethod(deploy_attention.reparameterize_kv_reduction)

    def __init__(self, dim: int, ratio: int, kind: str):
        super().__init__()
        self.kind = kind
        self.conv: nn.Module | None = None
        self.norm: nn.Module | None = None
        self.pool: nn.Module | None = None
        self.norm_on_tokens = kind == "conv_ln"  # LayerNorm normalises tokens; BatchNorm the map
        if kind == "dwconv_bn":
            self.conv = nn.Conv2d(dim, dim, ratio, ratio, groups=dim, bias=True)
            self.norm = nn.BatchNorm2d(dim, eps=BN_EPS)
        elif kind == "conv_ln":
            self.conv = nn.Conv2d(dim, dim, ratio, ratio, bias=True)
            self.norm = nn.LayerNorm(dim, eps=LN_EPS_PATCH)
        elif kind == "avgpool":
            self.pool = nn.AvgPool2d(ratio, ratio)
        else:
            raise ValueError(f"unknown reduction kind {kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N / ratio^2, C) tokens."""
        if self.pool is not None:
            return map_to_tokens(self.pool(x))
        if self.conv is not None and self.norm is not None:
            if self.norm_on_tokens:
                return self.norm(map_to_tokens(self.conv(x)))
            return map_to_tokens(self.norm(self.conv(x)))
        return map_to_tokens(x)  # unreachable: __init__ sets the pool or the conv and norm


def new_position_bias(heads: int, h: int, w: int, reduction: int) -> nn.Parameter:
    """Learnable bias (heads, N, N / k^2), initialised from N(0, 1) as released."""
    return nn.Parameter(torch.randn(heads, h * w, (h // reduction) * (w // reduction)))


def new_position_bias_table(heads: int, h: int, w: int, reduction: int) -> nn.Parameter:
    """Learnable offset table (heads, 2h - k, 2w - k) (`ops.position_bias.table_index`), initialised from
    N(0, 1) as the released bias: at the own grid each entry is one of its values, repeated per offset."""
    return nn.Parameter(torch.randn(heads, 2 * h - reduction, 2 * w - reduction))


class LightweightMHSA(Reparameterizable, nn.Module):
    """LMHSA: q from all tokens; k, v from the reduced map; softmax(q k^T * scale + B) v; proj."""

    complexity = staticmethod(complexity.lmhsa_cost)
    deploy_rewrite = staticmethod(deploy_attention.reparameterize_attention)

    def __init__(self, dim: int, heads: int, reduction: int, *, options: BlockOptions = RELEASED,
                 qkv_bias: bool = True, grid: tuple[int, int] | None = None):
        reduction_kind = options.reduction_kind.value
        own_position_bias = options.position_bias.value == "block"
        fused = options.attention.value == "fused"
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.reduction_ratio = reduction
        self.fused = fused
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.reduce = KVReduction(dim, reduction, reduction_kind) if reduction > 1 else None
        self.grid = grid
        self.kv_grid = (grid[0] // reduction, grid[1] // reduction) if grid else None
        self.position_bias = (
            new_position_bias(heads, grid[0], grid[1], reduction) if own_position_bias and grid else None
        )

    def forward(self, x: torch.Tensor, h: int, w: int,
                position_bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape[0], x.shape[1], x.shape[2]
        q = self.q(x).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        kv_source = self.reduce(tokens_to_map(x, h, w)) if self.reduce is not None else x
        m = kv_source.shape[1]
        k = self.k(kv_source).reshape(b, m, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(kv_source).reshape(b, m, self.heads, self.head_dim).transpose(1, 2)
        bias = position_bias  # the stage's, already at this input's grid
        if self.position_bias is not None and self.grid is not None and self.kv_grid is not None:
            r = self.reduction_ratio
            bias = position_bias_at(self.position_bias, self.grid, self.kv_grid, (h, w), (h // r, w // r))
        if bias is not None:
            bias = bias.to(q.dtype)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        else:
            logits = (q @ k.transpose(-2, -1)) * self.scale
            if bias is not None:
                logits = logits + bias
            out = logits.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class IRFFN(Reparameterizable, nn.Module):
    """IRFFN: 1x1 up, GELU, BN; DW3x3 + residual, GELU, BN; 1x1 down, BN."""

    complexity = staticmethod(complexity.irffn_cost)
    deploy_rewrite = staticmethod(deploy.reparameterize_irffn)

    def __init__(self, dim: int, hidden: int, *, options: BlockOptions = RELEASED):
        super().__init__()
        self.expand = ConvGeluBN(dim, hidden, 1, 1, options.gelu_approximation.value)
        self.local = nn.Module()
        self.local.conv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=True)
        self.local.norm = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self.project = nn.Module()
        self.project.conv = nn.Conv2d(hidden, dim, 1, bias=True)
        self.project.norm = nn.BatchNorm2d(dim, eps=BN_EPS)
        self.act = nn.GELU(approximate=options.gelu_approximation.value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        y = self.expand(x)
        y = self.local.norm(self.act(self.local.conv(y) + y))
        return self.project.norm(self.project.conv(y))


class CMTBlock(Reparameterizable, nn.Module):
    """LPU, then x + LMHSA(LN(x)), then x + IRFFN(LN(x)); drop path on both branches."""

    complexity = staticmethod(complexity.cmt_block_cost)
    deploy_rewrite = staticmethod(deploy.reparameterize_block)

    def __init__(self, dim: int, heads: int, reduction: int, hidden: int, *, options: BlockOptions = RELEASED,
                 qkv_bias: bool = True, grid: tuple[int, int] | None = None, drop_path: float = 0.0):
        super().__init__()
        self.lpu = LocalPerceptionUnit(dim) if options.lpu else None
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS_BLOCK)
        self.attn = LightweightMHSA(dim, heads, reduction, options=options, qkv_bias=qkv_bias, grid=grid)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS_BLOCK)
        self.ffn = IRFFN(dim, hidden, options=options)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, h: int, w: int,
                position_bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.lpu is not None:
            x = map_to_tokens(self.lpu(tokens_to_map(x, h, w)))
        x = x + self.drop_path(self.attn(self.norm1(x), h, w, position_bias))
        y = self.ffn(tokens_to_map(self.norm2(x), h, w))
        return x + self.drop_path(map_to_tokens(y))


class CMTStage(Reparameterizable, BiasAtSize, nn.Module):
    """Patch aggregation, the stage's shared position bias (or offset table), then `depth` CMT blocks.

    At another input size the bias is resampled (the table gathered); in eval mode without grad that is
    cached per size (`deploy.blocks.BiasAtSize`): a detector at 1280x800 would otherwise redo it per forward.
    """

    complexity = staticmethod(complexity.cmt_stage_cost)
    deploy_rewrite = staticmethod(deploy.reparameterize_stage)

    def __init__(self, c_in: int, dim: int, depth: int, heads: int, reduction: int, hidden: int, *,
                 options: BlockOptions = RELEASED, qkv_bias: bool = True, grid: tuple[int, int] = (1, 1),
                 drop_path: list[float] | None = None):
        super().__init__()
        rates = drop_path or [0.0] * depth
        self.grid = grid
        self.kv_grid = (grid[0] // reduction, grid[1] // reduction)
        self.reduction_ratio = reduction
        self.downsample = PatchAggregation(c_in, dim)
        kind = options.position_bias.value
        self.position_bias = new_position_bias(heads, grid[0], grid[1], reduction) if kind == "stage" else None
        self.position_bias_table = (
            new_position_bias_table(heads, grid[0], grid[1], reduction) if kind == "table" else None
        )
        self.blocks = nn.ModuleList(
            CMTBlock(dim, heads, reduction, hidden, options=options, qkv_bias=qkv_bias, grid=grid,
                     drop_path=rates[j])
            for j in range(depth)
        )
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, 2H, 2W) -> (B, C, H, W)."""
        tokens, h, w = self.downsample(x)
        if not torch.jit.is_scripting():
            self.check_grid(h, w)
        bias: torch.Tensor | None = None
        if self.position_bias is not None:
            bias = self._bias_at(self.position_bias, h, w, self.position_bias.dtype)
        if self.position_bias_table is not None:
            bias = self._bias_at(self.position_bias_table, h, w, self.position_bias_table.dtype, True)
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting() and torch.is_grad_enabled():
                tokens = torch.utils.checkpoint.checkpoint(block, tokens, h, w, bias, use_reentrant=False)
            else:
                tokens = block(tokens, h, w, bias)
        return tokens_to_map(tokens, h, w)

    @torch.jit.unused
    def _may_cache_bias(self) -> bool:
        """Only when nothing can train the bias: eval mode, no grad (never while recording: BiasAtSize)."""
        return not self.training and not torch.is_grad_enabled()

    @torch.jit.unused
    def _recording(self) -> bool:
        return recording()

    @torch.jit.unused
    def check_grid(self, h: int, w: int) -> None:
        r = self.reduction_ratio
        if not recording() and (h % r or w % r):
            raise InputShapeError(
                f"stage map {h}x{w} is not divisible by its K/V reduction ratio {r}; "
                "choose an input size that keeps every stage divisible"
            )


POOLS = ("avg", "max", "")


class ClassifierHead(Reparameterizable, nn.Module):
    """1x1 conv to fc channels, BN, Swish, global pool, dropout, linear.

    `global_pool=""` keeps the map unpooled (timm's convention); it needs no classifier.
    """

    complexity = staticmethod(complexity.classifier_head_cost)
    deploy_rewrite = staticmethod(deploy.reparameterize_head)

    def __init__(self, c_in: int, fc_channels: int, num_classes: int, dropout: float = 0.0,
                 global_pool: str = "avg"):
        super().__init__()
        check_pool(global_pool, num_classes)
        self.global_pool = global_pool
        self.conv = nn.Conv2d(c_in, fc_channels, 1, bias=True)
        self.norm = nn.BatchNorm2d(fc_channels, eps=BN_EPS)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(dropout)
        self.fc: nn.Module = nn.Linear(fc_channels, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.act(self.norm(self.conv(x)))
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        elif self.global_pool == "max":
            x = x.amax(dim=(2, 3))
        x = self.dropout(x)
        return x if pre_logits else self.fc(x)


def check_pool(global_pool: str, num_classes: int) -> None:
    if global_pool not in POOLS:
        raise ValueError(f"global_pool={global_pool!r}: choose one of {', '.join(map(repr, POOLS))}")
    if global_pool == "" and num_classes > 0:
        raise ValueError("global_pool='' (unpooled map) needs num_classes=0: a linear classifier needs a pooled vector")
