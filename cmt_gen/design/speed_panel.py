"""The second panel of `compare --plot`: images/s against MACs, where MACs mislead about speed.

Each point is a measured rate (from `--profile`) or one predicted from a
calibration (`--calibration`), for the user's specs and the CMT family.
A dashed line marks constant MACs per second through the family's median:
a point above it runs faster than its MACs suggest, one below slower.
Drawn by `cmt_gen.design.plotting` when there are speeds to show.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class SpeedPoint:
    label: str
    macs: float
    images_per_s: float
    measured: bool  # False: predicted from a calibration
    family: bool  # a bundled CMT variant, drawn as the reference line


@dataclass
class SpeedPanel:
    points: list[SpeedPoint]
    note: str  # the device and settings the rates hold for


def speed_panel(specs: Sequence, costs: Sequence, throughput: Sequence, calibration=None,
                measured_family: dict[str, float] | None = None) -> SpeedPanel | None:
    """Points for the user's specs (measured where profiled, else predicted) and the CMT family."""
    from cmt_gen.spec.bundled import bundled_names
    from cmt_gen.spec.loading import load_spec

    points: list[SpeedPoint] = []
    for spec, cost, speed in zip(specs, costs, throughput, strict=True):
        if speed is not None:
            points.append(SpeedPoint(spec.name, cost.macs, speed.images_per_second, True, False))
        elif calibration is not None:
            points.append(SpeedPoint(spec.name, cost.macs, _predicted(spec, calibration), False, False))
    if not points:
        return None
    from cmt_gen.cost.analytic import analytic_cost

    for name in bundled_names():
        family = load_spec(name)
        rate = (measured_family or {}).get(name)
        if rate is None and calibration is not None:
            rate = _predicted(family, calibration)
        if rate is not None:
            points.append(SpeedPoint(name, analytic_cost(family).macs, rate, name in (measured_family or {}), True))
    if calibration is not None:
        s = calibration.settings
        note = f"{calibration.machine}, {s.precision}, batch {s.batch_size}, threads {s.threads or 'default'}"
    else:
        note = "measured by cmt-gen profile"
    return SpeedPanel(points, note)


def _predicted(spec, calibration) -> float:
    from cmt_gen.latency.predict import predict_latency

    return predict_latency(spec, calibration).images_per_s


def draw_speed_panel(ax, panel: SpeedPanel) -> None:
    """Log-log images/s against MACs on the given matplotlib axes."""
    family = sorted((p for p in panel.points if p.family), key=lambda p: p.macs)
    users = [p for p in panel.points if not p.family]
    if family:
        ax.plot([p.macs / 1e9 for p in family], [p.images_per_s for p in family], "-o", color="#1f4e99",
                markersize=6, linewidth=1.4, zorder=3, label="CMT family")
        for p in family:
            ax.annotate(p.label, (p.macs / 1e9, p.images_per_s), xytext=(6, 4), textcoords="offset points",
                        fontsize=8, color="#1f4e99", fontweight="bold")
        macs_per_s = statistics.median(p.macs * p.images_per_s for p in family)
        xs = [min(p.macs for p in panel.points) / 1.5, max(p.macs for p in panel.points) * 1.5]
        ax.plot([x / 1e9 for x in xs], [macs_per_s / x for x in xs], "--", color="#8a8a8a", linewidth=1,
                zorder=1, label=f"constant MACs/s ({macs_per_s / 1e9:.3g} GMAC/s)")
    for measured, marker, colour in ((True, "*", "#2ca02c"), (False, "*", "#d62728")):
        chosen = [p for p in users if p.measured == measured]
        if chosen:
            ax.scatter([p.macs / 1e9 for p in chosen], [p.images_per_s for p in chosen], marker=marker, s=220,
                       color=colour, edgecolors="black", linewidths=0.6, zorder=5,
                       label="your specs, " + ("measured" if measured else "predicted"))
            for p in chosen:
                if p.label not in {f.label for f in family}:  # a bundled variant is already named
                    ax.annotate(p.label, (p.macs / 1e9, p.images_per_s), xytext=(7, -10),
                                textcoords="offset points", fontsize=8)
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    values = [p.images_per_s for p in panel.points]
    ax.set_ylim(min(values) / 1.6, max(values) * 1.6)
    ax.set_xlabel("MACs (G)")
    ax.set_ylabel("images/s")
    ax.set_title(f"speed against MACs ({panel.note})", fontsize=9)
    ax.grid(True, which="major", alpha=0.35)
    ax.legend(loc="upper right", fontsize=7, framealpha=0.9)
    if not math.isfinite(sum(values)):
        raise ValueError("a speed to plot is not finite")
