"""What a part of a CMT costs a device, as a few MAC-like counts a latency model can weigh.

Each building block (stem, patch aggregation, one CMT block, head) is described
by a short feature vector per image: multiply-accumulates split by the kind of
kernel that runs them (dense GEMMs, depthwise convolutions, attention matmuls),
the elements that memory-bound ops (norms, activations, softmax, residual adds)
read and write, and a constant per call for dispatch overhead. The counts come
from `cmt_gen.cost.analytic`, so they are exactly what the built modules run.
Torch-free: the design search evaluates thousands of these.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cmt_gen.cost.analytic import Cx, conv2d, kv_reduction_cost, linear

PART_KINDS = ("stem", "patch", "block", "head")
# The kinds whose channels count in whole blocks of the device's vector width (`PartShape.padded`). A
# calibration records the kinds it was fitted with (files from before stems padded: blocks only).
PADDED_KINDS = ("block", "stem")

FEATURES: dict[str, tuple[str, ...]] = {
    "stem": ("calls", "conv_macs", "elements"),
    "patch": ("calls", "conv_macs", "in_elements", "out_elements"),
    "block": ("calls", "linear_macs", "pointwise_macs", "attention_macs", "attention_scores", "reduction_macs",
              "token_elements", "hidden_elements", "unaligned_scores"),
    "head": ("calls", "conv_macs", "elements", "linear_macs"),
}

# The feature lists of files written before a feature was added (per kind, oldest first): such a file
# predicts with the features it was fitted on (`select`), so its predictions do not move.
EARLIER_FEATURES: dict[str, tuple[tuple[str, ...], ...]] = {"block": (FEATURES["block"][:-1],)}
# Attention scores whose rows (one per query and head, `n_kv` floats long) are not whole 32-byte vectors:
# every row then starts off a vector boundary, and the bias add, softmax and matmuls over it run slower
# per score (`benchmarks/NOTES.md`).
SCORE_ROW_FLOATS = 8


def select(features: tuple[float, ...], kind: str, names: tuple[str, ...] | list[str]) -> tuple[float, ...]:
    """The entries of a kind's full feature vector that a model fitted on `names` weighs, in its order."""
    if tuple(names) == FEATURES[kind]:
        return features
    return tuple(features[FEATURES[kind].index(name)] for name in names)


@dataclass(frozen=True)
class PartShape:
    """One building block as built: its kind and the arguments its cost depends on."""

    kind: str
    height: int  # map side at the part's input (block: its own grid)
    width: int
    c_in: int
    c_out: int
    heads: int = 1
    reduction: int = 1
    hidden: int = 0
    classes: int = 0
    reduction_kind: str = "dwconv_bn"
    lpu: bool = True

    def features(self, batch: int = 1, channel_block: int = 1,
                 padded_kinds: tuple[str, ...] = PADDED_KINDS) -> tuple[float, ...]:
        """The kind's feature vector for a batch: per-call overhead once, every count times `batch`.

        `channel_block`: the device's kernels work on channels in blocks of this many (a calibration's
        `channel_block`), so the counts of `padded_kinds` are those of their shapes padded (`padded`).
        """
        shape = self.padded(channel_block) if self.kind in padded_kinds else self
        counts, _ = _COUNTERS[self.kind](shape)
        return (1.0, *(batch * float(v) for v in counts))

    def padded(self, channel_block: int) -> PartShape:
        """The shape as the device's kernels run it: channels rounded up to whole blocks of `channel_block`.

        oneDNN lays a CPU tensor's channels out in blocks of its vector width (16 fp32 on AVX-512, 8 on
        AVX2), so a CMT block of 40 channels or an IRFFN 210 wide runs the work of 48 or 224. A block pads
        its channels and hidden width; a stem its width only (the image's 3 channels enter as they are):
        its time steps with the padded width (40 and 48 channels cost the same). Patch aggregations and
        heads stay as written: counted padded, they fitted no better (`benchmarks/NOTES.md`).
        """
        if channel_block <= 1:
            return self
        if self.kind == "block":
            return replace(self, c_in=round_up(self.c_in, channel_block), c_out=round_up(self.c_out, channel_block),
                           hidden=round_up(self.hidden, channel_block))
        if self.kind == "stem":
            return replace(self, c_out=round_up(self.c_out, channel_block))
        return self

    def macs(self) -> int:
        """Multiply-accumulates of one image through this part, as `analytic_cost` counts them."""
        return _COUNTERS[self.kind](self)[1]

    def describe(self) -> str:
        side = f"{self.height}x{self.width}"
        if self.kind == "block":
            return (f"block {side} C={self.c_out} heads={self.heads} k={self.reduction} hidden={self.hidden}")
        return f"{self.kind} {side} {self.c_in}->{self.c_out}"


def round_up(channels: int, block: int) -> int:
    """`channels` rounded up to a whole number of `block`s."""
    return -(-channels // block) * block


Counts = tuple[tuple[int, ...], int]  # (features after `calls`, exact MACs)


def _stem(p: PartShape) -> Counts:
    cx = conv2d(Cx(p.height, p.width), p.c_in, p.c_out, 3, 2, 1)
    conv2d(cx, p.c_out, p.c_out, 3, 1, 1)
    conv2d(cx, p.c_out, p.c_out, 3, 1, 1)
    return (cx.macs, cx.acts), cx.macs  # each conv's output passes GELU and BN


def _patch(p: PartShape) -> Counts:
    cx = conv2d(Cx(p.height, p.width), p.c_in, p.c_out, 2, 2)
    return (cx.macs, p.height * p.width * p.c_in, cx.acts), cx.macs  # LayerNorm and the token transpose


def _block(p: PartShape) -> Counts:
    """The 3x3 depthwise convolutions (LPU, IRFFN) do 9 MACs per element they write: memory-bound
    work, counted through `token_elements` and `hidden_elements` rather than as a feature of their own
    (it would be a fixed combination of those two, which no fit could tell apart)."""
    n = p.height * p.width
    kv = Cx(p.height, p.width)
    if p.reduction > 1:
        kv_reduction_cost(kv, p.c_out, p.reduction, p.reduction_kind)
    n_kv = kv.h * kv.w
    lin = Cx(p.height, p.width)
    linear(lin, p.c_out, p.c_out)  # q
    linear(lin, p.c_out, p.c_out, tokens=n_kv)  # k
    linear(lin, p.c_out, p.c_out, tokens=n_kv)  # v
    linear(lin, p.c_out, p.c_out)  # proj
    pointwise = 2 * n * p.c_out * p.hidden  # IRFFN's 1x1 up and down
    attention = 2 * n * n_kv * p.c_out  # q k^T and attn v over all heads
    scores = p.heads * n * n_kv  # bias add and softmax
    depthwise = 9 * n * p.hidden + (9 * n * p.c_out if p.lpu else 0)
    unaligned = scores if n_kv % SCORE_ROW_FLOATS else 0
    features = (lin.macs, pointwise, attention, scores, kv.macs, n * p.c_out, n * p.hidden, unaligned)
    return features, lin.macs + pointwise + attention + kv.macs + depthwise


def _head(p: PartShape) -> Counts:
    cx = conv2d(Cx(p.height, p.width), p.c_in, p.c_out, 1)
    return (cx.macs, cx.acts, p.c_out * p.classes), cx.macs + p.c_out * p.classes


_COUNTERS = {"stem": _stem, "patch": _patch, "block": _block, "head": _head}


def spec_parts(spec) -> list[tuple[PartShape, int]]:
    """Every building block of a spec at its own resolution, with how many times it runs."""
    opts = spec.block
    side = spec.resolution
    parts = [(PartShape("stem", side, side, spec.in_channels, spec.stem.channels), 1)]
    c_in, side = spec.stem.channels, side // 2
    for stage in spec.stages:
        parts.append((PartShape("patch", side, side, c_in, stage.channels), 1))
        side //= 2
        parts.append((PartShape("block", side, side, stage.channels, stage.channels, stage.heads, stage.reduction,
                                stage.hidden, reduction_kind=opts.reduction_kind.value, lpu=opts.lpu), stage.depth))
        c_in = stage.channels
    parts.append((PartShape("head", side, side, c_in, spec.head.fc_channels, classes=spec.num_classes), 1))
    return parts
