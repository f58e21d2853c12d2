"""The typed schema of a CMT spec: the single source of truth for every tool.

Field names follow the paper: per stage C_i (`channels`), depth, heads,
K/V reduction ratio k (`reduction`) and IRFFN expansion ratio E (`expansion`).
Defaults reproduce the released network; options beyond it are explicit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Annotated, Any

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
# A message lists the legal alternatives (heads that divide the channels...) up to this many, the nearest first.
MAX_ALTERNATIVES = 8


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
    table = "table"  # one table per stage indexed by query-key offset: its size never depends on the input's


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
        return hidden_channels(self.channels, self.expansion)


def hidden_channels(channels: int, expansion: float) -> int:
    """IRFFN hidden width: floor(C * E)."""
    return int(channels * expansion)


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
        return _stage_sizes(len(self.stages), h, w)

    @model_validator(mode="after")
    def _check_design(self) -> CMTSpec:
        problems = design_problems(self, self.resolution, self.resolution)
        if problems:
            raise _DesignRuleError(problems)
        return self


def _stage_sizes(stages: int, height: int, width: int) -> list[tuple[int, int]]:
    return [(height // 2 ** (i + 2), width // 2 ** (i + 2)) for i in range(stages)]


class _DesignRuleError(ValueError):
    """Carries every broken cross-field rule, each with its field path, through pydantic."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        self.field, self.rule = problems[0]
        super().__init__("; ".join(f"{field}: {rule}" for field, rule in problems))


_STAGE_RULE_FIELDS = ("channels", "heads", "reduction", "expansion")


def design_problems(spec: CMTSpec, height: int, width: int) -> list[tuple[str, str]]:
    """Cross-field rules as (field path, rule) pairs; empty when the design is legal."""
    stages = [{name: getattr(stage, name) for name in _STAGE_RULE_FIELDS} for stage in spec.stages]
    problems = cross_field_problems(len(spec.stages), stages, height, width)
    if not problems:
        problems += _size_problems(spec, height, width)
    return problems


def cross_field_problems(
    stage_count: int | None,
    stages: Sequence[Mapping[str, Any]],
    height: int | None,
    width: int | None,
) -> list[tuple[str, str]]:
    """The cross-field rules over what is known: a rule any of whose inputs is None or absent is skipped.

    A valid spec gives all of them (`design_problems`); a spec with broken fields gives the
    values that passed their own checks (spec.validation), so one report lists both kinds.
    `stages` holds each stage's channels, heads, reduction and expansion; `stage_count` and the
    input size decide the total stride and the stage maps (the reduction rule needs the input
    size to be legal first).
    """
    problems: list[tuple[str, str]] = []
    maps: list[tuple[int, int]] | None = None
    if stage_count is not None and height is not None and width is not None:
        stride = 2 ** (stage_count + 1)  # CMTSpec.total_stride
        bad = next((value for value in (height, width) if value % stride), None)
        if bad is not None:
            problems.append(
                (
                    "resolution",
                    f"{bad} is not divisible by the total stride {stride} "
                    f"(2 ** ({stage_count} stages + 1)); nearest legal: {_nearest_multiples(bad, stride)}",
                )
            )
        else:
            maps = _stage_sizes(stage_count, height, width)
    for i, stage in enumerate(stages):
        channels, heads, ratio, expansion = (stage.get(name) for name in _STAGE_RULE_FIELDS)
        if channels is not None and heads is not None and channels % heads:
            problems.append((f"stages.{i}.heads", _heads_rule(channels, heads)))
        if maps is not None and i < len(maps) and ratio is not None:
            h, w = maps[i]
            if h % ratio or w % ratio:
                problems.append((f"stages.{i}.reduction", _reduction_rule(ratio, h, w, height, width)))
        if channels is None or expansion is None:
            continue
        try:
            hidden = hidden_channels(channels, expansion)
        except (OverflowError, ValueError):  # an infinite ratio, or channels too large for a float
            problems.append((f"stages.{i}.expansion", "channels * expansion is not a finite number of hidden channels"))
            continue
        if hidden < 1:
            problems.append((f"stages.{i}.expansion", f"floor({channels} * {expansion}) is 0 hidden channels"))
    return problems


def _heads_rule(channels: int, heads: int) -> str:
    legal = _divisors(channels, MAX_HEADS)
    return f"{heads} heads do not divide {channels} channels ({_alternatives(legal, heads, 'heads', f'{channels}')})"


def _reduction_rule(ratio: int, h: int, w: int, height: int, width: int) -> str:
    legal = _divisors(math.gcd(h, w), MAX_RESOLUTION)
    return (f"reduction ratio {ratio} does not divide the stage's {h}x{w} feature map (input {height}x{width}); "
            f"{_alternatives(legal, ratio, 'ratios', 'it')}")


def _alternatives(legal: list[int], given: int, what: str, whole: str) -> str:
    """'heads that divide 250: 1, 2, 5, ...', cut to the MAX_ALTERNATIVES nearest the given value (by ratio)."""
    if len(legal) > MAX_ALTERNATIVES:
        nearest = sorted(sorted(legal, key=lambda v: (abs(math.log(v / given)), v))[:MAX_ALTERNATIVES])
        return f"nearest {what} that divide {whole}: {', '.join(map(str, nearest))}"
    return f"{what} that divide {whole}: {', '.join(map(str, legal))}"


def _divisors(n: int, limit: int) -> list[int]:
    """Divisors of n up to a field's bound, ascending (at most `limit` steps, whatever n is)."""
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


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
        if spec.block.position_bias == PositionBias.table:  # (heads, 2 Hs - k, 2 Ws - k) at the spec's own grid
            side = spec.resolution // 2 ** (i + 2)
            params += stage.heads * (2 * side - stage.reduction) ** 2
        else:
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
