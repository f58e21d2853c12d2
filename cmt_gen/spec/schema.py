"""The typed schema of a CMT spec: the single source of truth for every tool.

Field names follow the paper: per stage C_i (`channels`), depth, heads,
K/V reduction ratio k (`reduction`) and IRFFN expansion ratio E (`expansion`).
Defaults reproduce the released network; options beyond it are explicit.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, model_validator

from cmt_gen.spec.quantity import parse_quantity, printed_interval


def _printed(value: object) -> str:
    """Keep a paper figure as printed ('0.6G'): its digits say how precise it is."""
    parse_quantity(value)
    return str(value).strip()


PrintedQuantity = Annotated[str, BeforeValidator(_printed)]

# Strict scalars: YAML's `true` must not become 1, nor 224.5 become 224; no inf or nan.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Bool = Annotated[bool, Strict()]

# Upper bounds, far above any real CMT (CMT-L: 288 px, 23 blocks in a stage, 608 channels), low enough
# that counting stays instant and no number typed by mistake reaches an allocator.
MAX_RESOLUTION = 8192
MAX_CHANNELS = 16384
MAX_DEPTH = 1024
MAX_HEADS = 1024
MAX_STAGES = 8
MAX_EXPANSION = 64.0
MAX_IN_CHANNELS = 1024
MAX_CLASSES = 1_000_000
# Whole-network limits from a quick estimate (exact counts come later, from cost.analytic):
# 1e11 parameters are 400 GB of float32 weights, 1e11 attention scores per image 400 GB of memory.
MAX_PARAMS_ESTIMATE = 100e9
MAX_ATTENTION_ESTIMATE = 100e9


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class AttentionImpl(str, Enum):
    """How LMHSA computes attention: both give the same numbers to fp32 tolerance."""

    fused = "fused"  # torch scaled_dot_product_attention
    math = "math"  # explicit q @ k^T, softmax, @ v (as released)


class ReductionKind(str, Enum):
    """How keys and values are spatially reduced by the ratio k."""

    dwconv_bn = "dwconv_bn"  # released CMT: depthwise k x k conv stride k, then BatchNorm
    avgpool = "avgpool"  # parameter-free k x k average pooling
    conv_ln = "conv_ln"  # PVT: full k x k conv stride k, then LayerNorm


class PositionBias(str, Enum):
    """Where the learnable relative position bias lives."""

    stage = "stage"  # released: one bias per stage, shared by its blocks
    block = "block"  # one bias per block
    none = "none"  # no bias


class GeluApproximation(str, Enum):
    """The IRFFN's GELU: exact (erf), as released, or the tanh approximation some accelerators and
    compilers run faster; both keep parameters and MACs."""

    none = "none"  # released: 0.5 x (1 + erf(x / sqrt 2))
    tanh = "tanh"  # 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))


class StemSpec(_Strict):
    channels: Int = Field(gt=0, le=MAX_CHANNELS, description="Channels s of the three 3x3 stem convolutions.")


class StageSpec(_Strict):
    channels: Int = Field(gt=0, le=MAX_CHANNELS, description="Channels C_i of the stage.")
    depth: Int = Field(gt=0, le=MAX_DEPTH, description="Number of CMT blocks.")
    heads: Int = Field(gt=0, le=MAX_HEADS, description="Attention heads; must divide channels.")
    reduction: Int = Field(gt=0, le=MAX_RESOLUTION, description="K/V spatial reduction ratio k (1 = none).")
    expansion: Float = Field(gt=0, le=MAX_EXPANSION, description="IRFFN expansion ratio E; hidden = floor(C * E).")

    @property
    def hidden(self) -> int:
        return int(self.channels * self.expansion)


class HeadSpec(_Strict):
    fc_channels: Int = Field(1280, gt=0, le=MAX_CHANNELS, description="Channels of the 1x1 conv before pooling.")
    dropout: Float = Field(0.0, ge=0, lt=1, description="Dropout before the classifier.")


class BlockOptions(_Strict):
    # cost_neutral: params and MACs stay as they are, so a derived spec keeps its reference (spec.loading)
    attention: AttentionImpl = Field(AttentionImpl.fused, json_schema_extra={"cost_neutral": True})
    lpu: Bool = Field(True, description="Local perception unit (depthwise 3x3 + residual).")
    reduction_kind: ReductionKind = ReductionKind.dwconv_bn
    position_bias: PositionBias = PositionBias.stage
    gelu_approximation: GeluApproximation = Field(
        GeluApproximation.none, description="GELU of the IRFFN: none (exact erf, released) or tanh.",
        json_schema_extra={"cost_neutral": True})


class Reference(_Strict):
    """The paper's figures for this variant, to check the built model against."""

    params: PrintedQuantity | None = Field(None, description="Parameters as printed, e.g. 25.1M.")
    macs: PrintedQuantity | None = Field(None, description="Table 2 '# FLOPs' as printed (multiply-accumulates).")
    top1: Float | None = Field(None, ge=0, le=100)
    top5: Float | None = Field(None, ge=0, le=100)
    throughput: Float | None = Field(None, ge=0, description="Images/s as printed in the paper.")
    resolution: Int | None = Field(None, gt=0)
    source: str | None = None

    def interval(self, field: str) -> tuple[float, float] | None:
        """The range of true values that round to the printed figure."""
        text = getattr(self, field)
        return None if text is None else printed_interval(text)


# A target without a tolerance is met within these (the design tools' defaults too).
DEFAULT_BUDGET_TOLERANCE = {"params": "1%", "macs": "2%"}


def _percent(value: object) -> str:
    """A tolerance as written ('1%' or 0.01), kept as text; 0 < tolerance <= 50%."""
    text = str(value).strip()
    try:
        fraction = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a tolerance: write 1% or 0.01") from None
    if not 0 < fraction <= 0.5:
        raise ValueError(f"a tolerance is between 0 and 50%, got {value!r}")
    return text if text.endswith("%") else f"{fraction * 100:g}%"


Percent = Annotated[str, BeforeValidator(_percent)]


class BudgetLimit(_Strict):
    """One figure of a budget as the user gave it: a target within a tolerance, or a min/max range.

    Figures stay text (`74.7M`), so a written spec reads as the command that made it.
    """

    target: PrintedQuantity | None = None
    tolerance: Percent | None = None
    min: PrintedQuantity | None = None
    max: PrintedQuantity | None = None

    @model_validator(mode="after")
    def _one_form(self) -> BudgetLimit:
        if self.target is not None and (self.min is not None or self.max is not None):
            raise ValueError("give a target (with a tolerance) or a min/max range, not both")
        if self.tolerance is not None and self.target is None:
            raise ValueError("a tolerance belongs to a target")
        if self.target is None and self.min is None and self.max is None:
            raise ValueError("give a target, a min or a max")
        if self.min is not None and self.max is not None and parse_quantity(self.min) > parse_quantity(self.max):
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self

    def bounds(self, quantity: str) -> tuple[float, float]:
        """Lowest and highest passing values (inf: no upper limit)."""
        if self.target is not None:
            target = parse_quantity(self.target)
            fraction = float(self.tolerance_text(quantity)[:-1]) / 100
            return target * (1 - fraction), target * (1 + fraction)
        low = parse_quantity(self.min) if self.min is not None else 0.0
        return low, parse_quantity(self.max) if self.max is not None else float("inf")

    def tolerance_text(self, quantity: str) -> str:
        return self.tolerance or DEFAULT_BUDGET_TOLERANCE[quantity]


def _limit(value: object) -> object:
    """A plain figure (`30M`, 3e7) is an upper limit, as budgets were first written."""
    if value is None or isinstance(value, (dict, BudgetLimit)):
        return value
    parse_quantity(value)  # a bad figure is reported at budget.<figure>, where the user wrote it
    return {"max": value}


Limit = Annotated[BudgetLimit | None, BeforeValidator(_limit)]


class Budget(_Strict):
    """A user's own budget, checked by `cmt-gen check`: per figure a target or a range (a plain figure: a max)."""

    params: Limit = None
    macs: Limit = None


class CMTSpec(_Strict):
    """A whole CMT network: stem, stages, head, resolution and block options."""

    name: str = Field(min_length=1)
    description: str = ""
    resolution: Int = Field(gt=0, le=MAX_RESOLUTION, description="Square input side the spec is built for.")
    in_channels: Int = Field(3, gt=0, le=MAX_IN_CHANNELS)
    num_classes: Int = Field(1000, ge=0, le=MAX_CLASSES, description="0 builds a model without classifier.")
    stem: StemSpec
    stages: list[StageSpec] = Field(min_length=1, max_length=MAX_STAGES)
    head: HeadSpec = HeadSpec()
    drop_path: Float = Field(0.0, ge=0, lt=1, description="Stochastic depth rate of the last block.")
    qkv_bias: Bool = True
    block: BlockOptions = BlockOptions()  # also what the block-level layers and their costs take as `options`
    reference: Reference | None = None
    provenance: list[str] = Field(default_factory=list)
    budget: Budget | None = None

    @property
    def total_stride(self) -> int:
        """Stem (2) and one 2x patch aggregation per stage."""
        return 2 ** (len(self.stages) + 1)

    def stage_sizes(self, height: int | None = None, width: int | None = None) -> list[tuple[int, int]]:
        """Feature-map (H, W) of each stage for an input of the given size."""
        h = self.resolution if height is None else height
        w = self.resolution if width is None else width
        return [(h // 2 ** (i + 2), w // 2 ** (i + 2)) for i in range(len(self.stages))]

    @model_validator(mode="after")
    def _check_design(self) -> CMTSpec:
        problems = design_problems(self, self.resolution, self.resolution)
        if problems:
            field, rule = problems[0]
            raise _DesignRuleError(field, rule)
        return self


class _DesignRuleError(ValueError):
    """Carries the field path of a cross-field rule through pydantic."""

    def __init__(self, field: str, rule: str):
        self.field = field
        self.rule = rule
        super().__init__(f"{field}: {rule}")


def design_problems(spec: CMTSpec, height: int, width: int) -> list[tuple[str, str]]:
    """Cross-field rules as (field path, rule) pairs; empty when the design is legal."""
    problems: list[tuple[str, str]] = []
    stride = spec.total_stride
    for side, value in (("resolution", height), ("resolution", width)):
        if value % stride:
            problems.append(
                (
                    side,
                    f"{value} is not divisible by the total stride {stride} "
                    f"(2 ** ({len(spec.stages)} stages + 1)); nearest legal: "
                    f"{_nearest_multiples(value, stride)}",
                )
            )
            return problems
    for i, (stage, (h, w)) in enumerate(zip(spec.stages, spec.stage_sizes(height, width), strict=True)):
        if stage.channels % stage.heads:
            problems.append(
                (f"stages.{i}.heads", f"{stage.heads} heads do not divide {stage.channels} channels")
            )
        if h % stage.reduction or w % stage.reduction:
            problems.append(
                (
                    f"stages.{i}.reduction",
                    f"reduction ratio {stage.reduction} does not divide the stage's "
                    f"{h}x{w} feature map (input {height}x{width})",
                )
            )
        try:
            hidden = stage.hidden
        except (OverflowError, ValueError):  # an infinite ratio, or channels too large for a float
            problems.append((f"stages.{i}.expansion", "channels * expansion is not a finite number of hidden channels"))
            continue
        if hidden < 1:
            problems.append(
                (f"stages.{i}.expansion", f"floor({stage.channels} * {stage.expansion}) is 0 hidden channels")
            )
    if not problems:
        problems += _size_problems(spec, height, width)
    return problems


def _size_problems(spec: CMTSpec, height: int, width: int) -> list[tuple[str, str]]:
    """Refuse a network no real machine could hold, with its estimated size (O(stages), rough on purpose)."""
    params = 0.0
    worst = (0.0, "stages")
    c_in = spec.stem.channels
    for i, (stage, (h, w)) in enumerate(zip(spec.stages, spec.stage_sizes(height, width), strict=True)):
        c, e = stage.channels, stage.hidden
        tokens, kv = h * w, (h // stage.reduction) * (w // stage.reduction)
        params += 4 * c_in * c + stage.depth * (4 * c * c + 2 * c * e + 9 * (c + e))
        bias = stage.heads * tokens * kv
        params += bias * (stage.depth if spec.block.position_bias == PositionBias.block else 1)
        if bias > worst[0]:
            worst = (float(bias), f"stages.{i}")
        c_in = c
    params += c_in * spec.head.fc_channels + spec.head.fc_channels * spec.num_classes
    if params > MAX_PARAMS_ESTIMATE:
        return [("stages", f"the network would have about {params:.2g} parameters ({4 * params / 1e9:,.0f} GB of "
                           f"float32 weights), beyond any real machine; lower the resolution, widths or depths")]
    if worst[0] > MAX_ATTENTION_ESTIMATE:
        return [(worst[1], f"its attention would hold about {worst[0]:.2g} scores per image ({4 * worst[0] / 1e9:,.0f}"
                           f" GB), beyond any real machine; lower the resolution or raise the reduction ratio")]
    return []


def _nearest_multiples(value: int, stride: int) -> str:
    low = value // stride * stride
    high = low + stride
    return f"{high}" if low == 0 else f"{low} or {high}"
