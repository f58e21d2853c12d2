"""Analytic cost of every CMT layer, computed from its arguments without torch.

Each function mirrors one layer class in `cmt_gen.model.layers` (same name, same
arguments, same sub-layers in the same order) and is attached to that class as
its `complexity` staticmethod. It lives here rather than in the class body so
that counting never imports torch: `cmt-gen check` and the design search call
it thousands of times and must start in a fraction of a second.

Units: `params` counts learnable parameters exactly; `macs` counts
multiply-accumulates of convolutions, linear layers and the two attention
matmuls (one per multiply-add, the convention of the paper's "FLOPs");
`acts` counts output elements of those same operations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cmt_gen.spec.schema import BlockOptions, CMTSpec

RELEASED = BlockOptions()  # the block options of the released CMT, every layer's default


@dataclass
class Cx:
    """A running cost record: the current feature-map size and the totals so far."""

    h: int
    w: int
    params: int = 0
    macs: int = 0
    acts: int = 0
    peak: int = 0  # largest output count of one block (or stem, head): live at once in inference

    def fork(self) -> Cx:
        return Cx(self.h, self.w)

    def absorb(self, other: Cx) -> None:
        self.h, self.w = other.h, other.w
        self.params += other.params
        self.macs += other.macs
        self.acts += other.acts


# ---------------------------------------------------------------- primitives

def conv2d(cx: Cx, c_in: int, c_out: int, k: int, stride: int = 1, pad: int = 0,
           groups: int = 1, bias: bool = True) -> Cx:
    h = (cx.h + 2 * pad - k) // stride + 1
    w = (cx.w + 2 * pad - k) // stride + 1
    per_out = (c_in // groups) * k * k
    cx.params += c_out * per_out + (c_out if bias else 0)
    cx.macs += h * w * c_out * per_out
    cx.acts += h * w * c_out
    cx.h, cx.w = h, w
    return cx


def linear(cx: Cx, c_in: int, c_out: int, bias: bool = True, tokens: int | None = None) -> Cx:
    n = cx.h * cx.w if tokens is None else tokens
    cx.params += c_in * c_out + (c_out if bias else 0)
    cx.macs += n * c_in * c_out
    cx.acts += n * c_out
    return cx


def norm(cx: Cx, channels: int) -> Cx:
    """BatchNorm or LayerNorm: a weight and a bias per channel; no MACs in the paper's count."""
    cx.params += 2 * channels
    return cx


# ---------------------------------------------------------------- CMT layers

def conv_gelu_bn_cost(cx: Cx, c_in: int, c_out: int, kernel: int, stride: int) -> Cx:
    conv2d(cx, c_in, c_out, kernel, stride, kernel // 2)
    return norm(cx, c_out)


def stem_cost(cx: Cx, in_channels: int, channels: int) -> Cx:
    conv_gelu_bn_cost(cx, in_channels, channels, 3, 2)
    conv_gelu_bn_cost(cx, channels, channels, 3, 1)
    return conv_gelu_bn_cost(cx, channels, channels, 3, 1)


def patch_aggregation_cost(cx: Cx, c_in: int, c_out: int) -> Cx:
    conv2d(cx, c_in, c_out, 2, 2)
    return norm(cx, c_out)


def local_perception_unit_cost(cx: Cx, dim: int) -> Cx:
    return conv2d(cx, dim, dim, 3, 1, 1, groups=dim)


def kv_reduction_cost(cx: Cx, dim: int, ratio: int, kind: str) -> Cx:
    if kind == "dwconv_bn":
        conv2d(cx, dim, dim, ratio, ratio, groups=dim)
        return norm(cx, dim)
    if kind == "conv_ln":
        conv2d(cx, dim, dim, ratio, ratio)
        return norm(cx, dim)
    if kind == "avgpool":
        cx.h, cx.w = cx.h // ratio, cx.w // ratio
        return cx
    raise ValueError(f"unknown reduction kind {kind!r}")


def position_bias_params(heads: int, h: int, w: int, reduction: int) -> int:
    """Relative position bias (heads, N, N / k^2) for a stage of h x w tokens."""
    return heads * (h * w) * ((h // reduction) * (w // reduction))


def position_bias_table_params(heads: int, h: int, w: int, reduction: int) -> int:
    """Offset table (heads, 2h - k, 2w - k) of a stage of h x w tokens: a key cell j covers query rows
    kj..kj+k-1, so the offset q - kj runs over -(h - k)..h - 1."""
    return heads * (2 * h - reduction) * (2 * w - reduction)


def stage_bias_params(kind: str, heads: int, h: int, w: int, reduction: int) -> int:
    """Parameters of the position bias a stage owns (`stage`, `table`; none for `block`, `none`)."""
    if kind == "stage":
        return position_bias_params(heads, h, w, reduction)
    if kind == "table":
        return position_bias_table_params(heads, h, w, reduction)
    return 0


def lmhsa_cost(cx: Cx, dim: int, heads: int, reduction: int, *, options: BlockOptions = RELEASED,
               qkv_bias: bool = True) -> Cx:
    n = cx.h * cx.w
    linear(cx, dim, dim, qkv_bias)  # q
    kv = cx.fork()
    if reduction > 1:
        kv_reduction_cost(kv, dim, reduction, options.reduction_kind.value)
    n_kv = kv.h * kv.w
    cx.params += kv.params
    cx.macs += kv.macs
    cx.acts += kv.acts
    linear(cx, dim, dim, qkv_bias, tokens=n_kv)  # k
    linear(cx, dim, dim, qkv_bias, tokens=n_kv)  # v
    if options.position_bias.value == "block":
        cx.params += position_bias_params(heads, cx.h, cx.w, reduction)
    cx.macs += 2 * n * n_kv * dim  # q @ k^T and attn @ v, over all heads
    cx.acts += heads * n * n_kv + n * dim
    return linear(cx, dim, dim, True)  # proj


def irffn_cost(cx: Cx, dim: int, hidden: int, *, options: BlockOptions = RELEASED) -> Cx:
    conv2d(cx, dim, hidden, 1)
    norm(cx, hidden)
    conv2d(cx, hidden, hidden, 3, 1, 1, groups=hidden)
    norm(cx, hidden)
    conv2d(cx, hidden, dim, 1)
    return norm(cx, dim)


def cmt_block_cost(cx: Cx, dim: int, heads: int, reduction: int, hidden: int, *,
                   options: BlockOptions = RELEASED, qkv_bias: bool = True) -> Cx:
    if options.lpu:
        local_perception_unit_cost(cx, dim)
    norm(cx, dim)
    lmhsa_cost(cx, dim, heads, reduction, options=options, qkv_bias=qkv_bias)
    norm(cx, dim)
    return irffn_cost(cx, dim, hidden, options=options)


def cmt_stage_cost(cx: Cx, c_in: int, dim: int, depth: int, heads: int, reduction: int,
                   hidden: int, *, options: BlockOptions = RELEASED, qkv_bias: bool = True) -> Cx:
    """Patch aggregation, then `depth` identical blocks: one block's cost times depth (O(1) in depth)."""
    before = cx.acts
    patch_aggregation_cost(cx, c_in, dim)
    cx.peak = max(cx.peak, cx.acts - before)
    cx.params += stage_bias_params(options.position_bias.value, heads, cx.h, cx.w, reduction)
    block = cmt_block_cost(cx.fork(), dim, heads, reduction, hidden, options=options, qkv_bias=qkv_bias)
    cx.params += depth * block.params
    cx.macs += depth * block.macs
    cx.acts += depth * block.acts
    cx.peak = max(cx.peak, block.acts + cx.h * cx.w * dim)  # plus the block's input, kept for the residual
    cx.h, cx.w = block.h, block.w
    return cx


def classifier_head_cost(cx: Cx, c_in: int, fc_channels: int, num_classes: int) -> Cx:
    conv2d(cx, c_in, fc_channels, 1)
    norm(cx, fc_channels)
    cx.h = cx.w = 1
    if num_classes > 0:
        linear(cx, fc_channels, num_classes, tokens=1)
    return cx


# ---------------------------------------------------------------- a whole spec

@dataclass
class PartCost:
    """Cost of one named part of the network (stem, stage i, head)."""

    name: str
    params: int
    macs: int
    acts: int
    height: int
    width: int
    peak_acts: int = 0


@dataclass
class PartTotals:
    """Per-part costs of a network at one input size, and their totals (a backbone's or a detector's)."""

    spec_name: str
    height: int
    width: int
    parts: list[PartCost] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(p.params for p in self.parts)

    @property
    def macs(self) -> int:
        return sum(p.macs for p in self.parts)

    def part(self, name: str) -> PartCost:
        return next(p for p in self.parts if p.name == name)


@dataclass
class ModelCost(PartTotals):
    """Analytic cost of a spec at one input size, with a per-part breakdown."""

    @property
    def activations(self) -> int:
        return sum(p.acts for p in self.parts)

    @property
    def peak_activations(self) -> int:
        """Outputs of the largest block (or stem, head) with its input: what inference holds at once."""
        return max((p.peak_acts for p in self.parts), default=0)

    @property
    def flops(self) -> int:
        """2 x MACs: the unit of torch's FlopCounterMode, not of the paper."""
        return 2 * self.macs

    @property
    def stages(self) -> list[PartCost]:
        return [p for p in self.parts if p.name.startswith("stage")]

    def as_dict(self) -> dict:
        return {
            "spec": self.spec_name, "input": [self.height, self.width], "params": self.params,
            "macs": self.macs, "flops": self.flops, "activations": self.activations,
            "parts": [vars(p) for p in self.parts],
        }


def analytic_cost(spec, height: int | None = None, width: int | None = None) -> ModelCost:
    """Parameters, MACs and activations of a `CMTSpec`, per part; no model is built.

    Parameters include the position bias at the spec's own resolution (the
    model keeps that shape and resamples it, or clamps its table's offsets, for other inputs).
    """
    if not isinstance(spec, CMTSpec):
        from cmt_gen.spec.loading import load_spec

        spec = load_spec(spec)
    h = spec.resolution if height is None else height
    w = spec.resolution if width is None else width
    result = ModelCost(spec.name, h, w)
    opts = spec.block
    cx = Cx(h, w)
    stem_cost(cx, spec.in_channels, spec.stem.channels)
    result.parts.append(PartCost("stem", cx.params, cx.macs, cx.acts, cx.h, cx.w, cx.acts))
    c_in = spec.stem.channels
    for i, stage in enumerate(spec.stages):
        part = Cx(cx.h, cx.w)
        cmt_stage_cost(part, c_in, stage.channels, stage.depth, stage.heads, stage.reduction,
                       stage.hidden, options=opts, qkv_bias=spec.qkv_bias)
        if (h, w) != (spec.resolution, spec.resolution) and opts.position_bias.value != "none":
            part.params += _bias_shape_correction(spec, i, stage, h, w)
        result.parts.append(PartCost(f"stage{i}", part.params, part.macs, part.acts, part.h, part.w, part.peak))
        cx.h, cx.w = part.h, part.w
        c_in = stage.channels
    head = Cx(cx.h, cx.w)
    classifier_head_cost(head, c_in, spec.head.fc_channels, spec.num_classes)
    result.parts.append(PartCost("head", head.params, head.macs, head.acts, cx.h, cx.w, head.acts))
    return result


def _bias_shape_correction(spec, index: int, stage, h: int, w: int) -> int:
    """Position biases keep the spec resolution's shape when the input size differs."""
    native = spec.resolution // 2 ** (index + 2)
    here_h, here_w = h // 2 ** (index + 2), w // 2 ** (index + 2)
    kind = spec.block.position_bias.value
    if kind == "block":
        own = stage.depth * position_bias_params(stage.heads, native, native, stage.reduction)
        return own - stage.depth * position_bias_params(stage.heads, here_h, here_w, stage.reduction)
    own = stage_bias_params(kind, stage.heads, native, native, stage.reduction)
    return own - stage_bias_params(kind, stage.heads, here_h, here_w, stage.reduction)


def position_bias_elements(spec, height: int | None = None, width: int | None = None) -> list[int]:
    """Per stage, the position-bias values a forward at height x width materialises: heads x N x N / k^2
    for `stage` and `table` (the resampled bias or the gathered table), that per block for `block`, 0 for
    `none`. What the biases cost in memory at a detector's size (CMT-S at 1280x800: 120M, 480 MB fp32)."""
    if not isinstance(spec, CMTSpec):
        from cmt_gen.spec.loading import load_spec

        spec = load_spec(spec)
    h = spec.resolution if height is None else height
    w = spec.resolution if width is None else width
    kind = spec.block.position_bias.value
    out = []
    for stage, (sh, sw) in zip(spec.stages, spec.stage_sizes(h, w), strict=True):
        per_bias = position_bias_params(stage.heads, sh, sw, stage.reduction)
        out.append({"none": 0, "block": stage.depth * per_bias}.get(kind, per_bias))
    return out
