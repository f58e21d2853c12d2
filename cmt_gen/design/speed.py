"""Speed budgets for the design tools: a throughput or latency target, predicted from a calibration.

`--throughput 40` (images/s) and `--latency 25ms` (per batch, at the
calibration's batch size) take the same target / range syntax as params and
MACs; a single value is met within 5% unless `--tolerance` says otherwise
(`1%` for all, or a third value: `1%,2%,5%`). Predictions come from
`cmt_gen.latency` (torch-free). Like cost, predicted latency is linear in
the depths (a stage's blocks are identical), so the search solves for depth
in closed form under a speed budget too: `SpeedModel` mirrors `CostModel`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from cmt_gen.design.constraints import Constraint, _fraction, parse_budget
from cmt_gen.design.scaling import DesignError, Shape
from cmt_gen.latency.calibration_file import Calibration, check_compatible, load_calibration
from cmt_gen.latency.features import PartShape
from cmt_gen.latency.predict import check_block_options, part_seconds, predict_latency
from cmt_gen.spec.schema import CMTSpec

DEFAULT_SPEED_TOLERANCE = 0.05


def checked_calibration(calibration: Calibration | str | Path | None,
                        force: bool = False) -> tuple[Calibration | None, list[str]]:
    """Load a calibration file and check it holds for this machine and torch (or warnings, forced)."""
    if calibration is None:
        return None, []
    source = "calibration"
    if not isinstance(calibration, Calibration):
        source = str(calibration)
        calibration = load_calibration(calibration)
    return calibration, check_compatible(calibration, source=source, force=force)


def parse_speed_tolerance(value: str | float | Sequence[float] | None) -> float:
    """The speed target's slack: one tolerance applies to all; `a,b,c` gives it third; else 5%."""
    if value is None:
        return DEFAULT_SPEED_TOLERANCE
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if len(parts) == 2:
            return DEFAULT_SPEED_TOLERANCE
        fraction = _fraction(parts[-1])
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        fraction = float(value)
    else:
        values = list(value)
        if len(values) != 3:
            return DEFAULT_SPEED_TOLERANCE
        fraction = float(values[2])
    if not math.isfinite(fraction) or not 0 < fraction <= 0.5:
        raise DesignError(f"a tolerance is between 0 and 50%, got {fraction * 100:g}%", field="tolerance")
    return fraction


def _seconds(text: object) -> object:
    """'25ms' -> 0.025, '0.1s' -> 0.1, bare text is milliseconds, a Python number seconds."""
    if text is None or not isinstance(text, str):
        return None if text is None else float(text)  # from Python: seconds
    value = text.strip().lower()
    if not value:
        return None
    try:
        if value.endswith("ms"):
            return float(value[:-2]) / 1000
        if value.endswith("s"):
            return float(value[:-1])
        return float(value) / 1000
    except ValueError:
        raise DesignError(f"write a latency as 25ms or 0.025s, got {text!r}", field="--latency") from None


def _ends(value: object, convert) -> object:
    if isinstance(value, str) and ".." in value:
        low, _, high = value.partition("..")
        return (convert(low) if low.strip() else None, convert(high) if high.strip() else None)
    if isinstance(value, (tuple, list)):
        return tuple(None if v is None else convert(v) for v in value)
    return convert(value)


def _images(text: object) -> object:
    value = str(text).strip().lower().removesuffix("img/s").strip()
    try:
        return float(value)
    except ValueError:
        raise DesignError(f"write a throughput as images/s, e.g. 40 or 30..50, got {text!r}",
                          field="--throughput") from None


def parse_speed_budget(throughput: object, latency: object, tolerance: float,
                       calibration: Calibration | None) -> Constraint | None:
    """A throughput (images/s) or latency (seconds per batch) constraint; it needs a calibration."""
    given = [v for v in (throughput, latency) if v is not None and not (isinstance(v, str) and not v.strip())]
    if not given:
        return None
    if len(given) == 2:
        raise DesignError("give --throughput or --latency, not both (each fixes the other)", field="budget")
    if calibration is None:
        which = "--throughput" if throughput is not None else "--latency"
        raise DesignError("a speed budget needs --calibration FILE (made by cmt-gen calibrate on the target device)",
                          field=which)
    if throughput is not None:
        return parse_budget("throughput", _ends(throughput, _images), tolerance)
    return parse_budget("latency", _ends(latency, _seconds), tolerance)


def seconds_bounds(constraint: Constraint | None, batch: int) -> tuple[float, float]:
    """The batch latencies (seconds) a speed constraint allows."""
    if constraint is None:
        return 0.0, math.inf
    if constraint.quantity == "latency":
        return constraint.lo, constraint.hi
    return batch / constraint.hi if constraint.hi > 0 else 0.0, batch / constraint.lo if constraint.lo > 0 else math.inf


def speed_value(constraint: Constraint, seconds: float, batch: int) -> float:
    """A predicted batch latency in the constraint's own unit."""
    return seconds if constraint.quantity == "latency" else batch / seconds


class SpeedModel:
    """Predicted seconds per batch as fixed(resolution, widths) + sum_i depth_i * block_i, cached."""

    def __init__(self, base: CMTSpec, calibration: Calibration, source: str = "calibration"):
        check_block_options(base, calibration, source)
        self.calibration = calibration
        self.batch = calibration.settings.batch_size
        self.in_channels, self.fc, self.classes = base.in_channels, base.head.fc_channels, base.num_classes
        self.heads = tuple(s.heads for s in base.stages)
        self.reductions = tuple(s.reduction for s in base.stages)
        opts = base.block
        self.reduction_kind, self.lpu = opts.reduction_kind.value, opts.lpu
        self._fixed: dict[tuple, float] = {}
        self._block: dict[tuple, float] = {}

    def fixed(self, resolution: int, stem: int, channels: tuple[int, ...]) -> float:
        key = (resolution, stem, channels)
        known = self._fixed.get(key)
        if known is None:
            cal = self.calibration
            known = part_seconds(cal, PartShape("stem", resolution, resolution, self.in_channels, stem))
            c_in, side = stem, resolution // 2
            for dim in channels:
                known += part_seconds(cal, PartShape("patch", side, side, c_in, dim))
                c_in, side = dim, side // 2
            known += part_seconds(cal, PartShape("head", side, side, c_in, self.fc, classes=self.classes))
            self._fixed[key] = known
        return known

    def block(self, i: int, resolution: int, dim: int, hidden: int) -> float:
        key = (i, resolution, dim, hidden)
        known = self._block.get(key)
        if known is None:
            side = resolution // 2 ** (i + 2)
            part = PartShape("block", side, side, dim, dim, self.heads[i], self.reductions[i], hidden,
                             reduction_kind=self.reduction_kind, lpu=self.lpu)
            known = self._block[key] = part_seconds(self.calibration, part)
        return known

    def predicted(self, spec: CMTSpec) -> float:
        """A built spec's predicted seconds, recounted part by part (`predict_latency`)."""
        return predict_latency(spec, self.calibration).seconds

    def cost(self, shape: Shape) -> float:
        seconds = self.fixed(shape.resolution, shape.stem, shape.channels)
        for i, (dim, hidden, depth) in enumerate(zip(shape.channels, shape.hiddens(), shape.depths, strict=True)):
            seconds += depth * self.block(i, shape.resolution, dim, hidden)
        return seconds
