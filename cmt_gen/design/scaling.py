"""Compound scaling of a CMT spec (width, depth, resolution) that keeps the design legal.

Rounding rules, shared by `new`, `design` and `sample`:

- Channels: the first stage's channels become the nearest multiple of
  lcm(heads, divisor) (ties round up, never below one multiple); the other
  stages and the stem follow that effective multiplier, rounded the same way
  (the stem to a multiple of the divisor), so C, 2C, 4C, 8C stays so. The
  default divisor 8 suits tensor cores and vector units. The released CMTs use
  46, 52 and 76 channels (multiples of 2 only), so a width multiplier of exactly
  1 leaves every channel count as it is; any other multiplier re-rounds all of
  them. `divisor=1` keeps only the heads rule. Heads and reduction ratios stay.
- Depths: nearest integer, at least 1.
- Resolution: the nearest multiple of the spec's legal step, the lcm of the
  total stride and, per stage, 2^(i+2) times its reduction ratio (so every
  stage's map divides by its ratio). An explicit pixel size must already be
  legal: it is the user's number, so it is refused rather than moved.

A derived spec drops the base's `reference` (it is no longer the paper's model)
and `budget` (a designed or sampled spec records the budget it was made for,
as the user gave it), and its provenance lists the base and every changed field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmt_gen.errors import CmtGenError
from cmt_gen.spec.schema import CMTSpec

DEFAULT_DIVISOR = 8


class DesignError(CmtGenError):
    """A scaling factor, budget or design-space bound that cannot be honoured."""


# ---------------------------------------------------------------- legal values

def resolution_step(spec: CMTSpec) -> int:
    """Smallest step of input sizes for which every stage map divides by its reduction."""
    step = spec.total_stride
    for i, stage in enumerate(spec.stages):
        step = math.lcm(step, 2 ** (i + 2) * stage.reduction)
    return step


def nearest_resolution(spec: CMTSpec, value: float) -> int:
    """The legal input size nearest to `value` (ties up, at least one step)."""
    step = resolution_step(spec)
    return max(step, int(math.floor(value / step + 0.5)) * step)


def check_resolution(spec: CMTSpec, size: int, field: str = "resolution") -> int:
    """Refuse an explicit input size that breaks the stride or a reduction ratio."""
    from cmt_gen.spec.schema import MAX_RESOLUTION

    step = resolution_step(spec)
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise DesignError(f"a resolution is a positive whole number of pixels, got {size!r}", field=field)
    if size > MAX_RESOLUTION:
        raise DesignError(f"a resolution is at most {MAX_RESOLUTION} px, got {_short(size)}", field=field)
    if size % step:
        low = size // step * step
        options = f"{low} or {low + step}" if low else f"{step}"
        raise DesignError(
            f"{size} px is not a multiple of {step} (total stride {spec.total_stride} and the stages' "
            f"reduction ratios {[s.reduction for s in spec.stages]}); nearest legal: {options}",
            field=field,
        )
    return size


def _short(value: object) -> str:
    """A number the user typed, cut short when it has hundreds of digits."""
    text = str(value)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} digits)"


def channel_multiple(heads: int, divisor: int) -> int:
    return math.lcm(heads, divisor)


def round_channels(value: float, multiple: int) -> int:
    """Nearest multiple of `multiple` (ties up), never below one multiple."""
    return max(multiple, int(math.floor(value / multiple + 0.5)) * multiple)


def round_depth(value: float) -> int:
    return max(1, int(math.floor(value + 0.5)))


def check_divisor(divisor: int) -> int:
    if isinstance(divisor, bool) or not isinstance(divisor, int) or not 1 <= divisor <= 256:
        raise DesignError(f"the channel divisor is a whole number from 1 to 256, got {divisor!r}", field="divisor")
    return divisor


def check_factor(value: float, field: str) -> float:
    """A scaling factor: finite and positive, within a range that still describes a network."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DesignError(f"a scaling factor is a finite number, got {value!r}", field=field)
    if not 0.01 <= value <= 100:
        raise DesignError(f"factor {value:g} is outside 0.01..100", field=field)
    return float(value)


# ---------------------------------------------------------------- shapes

@dataclass(frozen=True)
class Shape:
    """The fields scaling and search change; everything else comes from the base."""

    resolution: int
    stem: int
    channels: tuple[int, ...]
    depths: tuple[int, ...]
    expansions: tuple[float, ...]

    @classmethod
    def of(cls, spec: CMTSpec) -> Shape:
        return cls(spec.resolution, spec.stem.channels, tuple(s.channels for s in spec.stages),
                   tuple(s.depth for s in spec.stages), tuple(s.expansion for s in spec.stages))

    def hiddens(self) -> tuple[int, ...]:
        # Same expression as StageSpec.hidden, so costs agree to the channel.
        return tuple(int(c * e) for c, e in zip(self.channels, self.expansions, strict=True))

    def changes(self, other: Shape) -> list[str]:
        """`field: old -> new` for every field where `other` differs from this shape."""
        lines: list[str] = []
        if other.resolution != self.resolution:
            lines.append(f"resolution: {self.resolution} -> {other.resolution}")
        if other.stem != self.stem:
            lines.append(f"stem.channels: {self.stem} -> {other.stem}")
        for i in range(len(self.channels)):
            for key, old, new in (("channels", self.channels[i], other.channels[i]),
                                  ("depth", self.depths[i], other.depths[i]),
                                  ("expansion", self.expansions[i], other.expansions[i])):
                if old != new:
                    lines.append(f"stages.{i}.{key}: {old:g} -> {new:g}")
        return lines


def scaled_widths(base: CMTSpec, multiplier: float, divisor: int) -> tuple[int, tuple[int, ...]]:
    """(stem, stage channels) for a width multiplier under the rounding rules above.

    The first stage is rounded first and the others follow its effective
    multiplier, so CMT's C, 2C, 4C, 8C pattern survives rounding.
    """
    if multiplier == 1.0:
        return base.stem.channels, tuple(s.channels for s in base.stages)
    first = base.stages[0]
    c0 = round_channels(first.channels * multiplier, channel_multiple(first.heads, divisor))
    effective = c0 / first.channels
    stem = round_channels(base.stem.channels * effective, divisor)
    channels = (c0, *(round_channels(s.channels * effective, channel_multiple(s.heads, divisor))
                      for s in base.stages[1:]))
    return stem, channels


def resolve_base(base: CMTSpec | str | Path | Mapping) -> tuple[CMTSpec, str]:
    """A base spec and the label its provenance records (name, or path as given)."""
    if isinstance(base, CMTSpec):
        return base, base.name
    from cmt_gen.spec.loading import load_spec

    spec = load_spec(base)
    return spec, (spec.name if isinstance(base, Mapping) else str(base))


def derive_spec(base: CMTSpec, shape: Shape, *, name: str, description: str, provenance: Sequence[str],
                overrides: Sequence[str] | Mapping[str, Any] | None = None,
                budget: Mapping[str, Mapping[str, str]] | None = None) -> CMTSpec:
    """A validated spec: the base with `shape` applied, no stale reference, full provenance.

    `budget` (`constraints.budget_record`: target and tolerance, or min/max, as text) is what
    `cmt-gen check` later checks the spec against.
    """
    from cmt_gen.spec.loading import apply_override, parse_override
    from cmt_gen.spec.serialize import spec_to_dict
    from cmt_gen.spec.validation import validate_spec

    data = spec_to_dict(base)
    data.pop("reference", None)
    data.pop("budget", None)
    if budget:
        data["budget"] = dict(budget)
    data["name"] = name
    data["description"] = description
    data["resolution"] = shape.resolution
    data["stem"] = {**data["stem"], "channels": shape.stem}
    data["stages"] = [
        {**stage, "channels": c, "depth": d, "expansion": e}
        for stage, c, d, e in zip(data["stages"], shape.channels, shape.depths, shape.expansions, strict=True)
    ]
    lines = [f"{base.name}: {line}" for line in base.provenance] + list(provenance)
    origin = f"{name} (derived from {base.name})"
    if overrides:
        if isinstance(overrides, Mapping):
            items = [(str(k).split("."), v, f"{k}={v}") for k, v in overrides.items()]
        else:
            items = [(*parse_override(text), text) for text in overrides]
        for parts, value, text in items:
            data = apply_override(data, parts, value, f"{origin} (--set {text})")
        lines.append("overrides: " + ", ".join(text for _, _, text in items))
    data["provenance"] = lines
    return validate_spec(data, origin)


# ---------------------------------------------------------------- scale_spec

def scale_spec(
    base: CMTSpec | str | Path | Mapping,
    width: float = 1.0,
    depth: float = 1.0,
    resolution: float = 1.0,
    *,
    size: int | None = None,
    divisor: int = DEFAULT_DIVISOR,
    name: str | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
) -> CMTSpec:
    """Compound-scale a spec: multiply widths, depths and resolution, then round legally.

    `resolution` is a factor; `size` sets the input side in pixels instead (it
    must be legal). `overrides` (`['stages.0.heads=2']`) apply last.
    """
    if name is not None and not name.strip():
        raise DesignError("a new spec needs a name that is not blank", field="name")
    spec, label = resolve_base(base)
    width = check_factor(width, "width")
    depth = check_factor(depth, "depth")
    resolution = check_factor(resolution, "resolution")
    divisor = check_divisor(divisor)
    if size is not None:
        if resolution != 1.0:
            raise DesignError("give a resolution factor or a pixel size, not both", field="resolution")
        new_resolution = check_resolution(spec, size)
    else:
        new_resolution = (spec.resolution if resolution == 1.0
                          else nearest_resolution(spec, spec.resolution * resolution))
    stem, channels = scaled_widths(spec, width, divisor)
    depths = tuple(s.depth if depth == 1.0 else round_depth(s.depth * depth) for s in spec.stages)
    old = Shape.of(spec)
    new = Shape(new_resolution, stem, channels, depths, old.expansions)
    name = name or f"{spec.name}_scaled"
    summary = (f"scaled from {label}: width x{width:g}, depth x{depth:g}, resolution "
               f"{spec.resolution} -> {new_resolution} px")
    if width != 1.0:
        summary += f"; channels rounded to multiples of lcm(heads, {divisor})"
    description = (f"Scaled from {spec.name} by cmt-gen (width x{width:g}, depth x{depth:g}, "
                   f"{new_resolution} px).")
    return derive_spec(spec, new, name=name, description=description,
                       provenance=[summary, *old.changes(new)], overrides=overrides)
