"""The second panel of `compare --plot`: images/s against MACs, where MACs mislead about speed.

Each point is a rate measured by `cmt-gen profile` (`--profile`: filled
markers) or predicted from a calibration (`--calibration`: hollow markers),
for the user's specs (stars) and the CMT family (circles on a line). With
both, a spec gets both points, joined by a dotted segment: the prediction's
error. A dashed line marks constant MACs per second through the family's
median (measured where the profile has the family, else predicted): a point
above it runs faster than its MACs suggest, one below slower. A rate the
profile marked noisy says so. Drawn by `cmt_gen.design.plotting` when there
are speeds to show.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

FAMILY_COLOUR = "#1f4e99"
USER_COLOUR = "#d62728"


@dataclass
class SpeedPoint:
    label: str
    macs: float
    images_per_s: float
    measured: bool  # False: predicted from a calibration
    family: bool  # a bundled CMT variant, drawn on the family's line
    noisy: bool = False  # measured, and cmt-gen profile marked the rate noisy


@dataclass
class SpeedPanel:
    points: list[SpeedPoint]
    note: str  # the device and settings the rates hold for


def _rate(value) -> tuple[float, bool]:
    """A measured rate: a number, or a `compare.Throughput` (which may be marked noisy)."""
    return float(getattr(value, "images_per_second", value)), bool(getattr(value, "noisy", False))


def speed_panel(specs: Sequence, costs: Sequence, throughput: Sequence, calibration=None,
                measured_family: Mapping[str, object] | None = None) -> SpeedPanel | None:
    """Points for the user's specs and the CMT family: measured where profiled, predicted where calibrated.

    With a calibration every spec has a predicted point, a profiled one a measured point too.
    `measured_family` maps bundled names to images/s (a number or a `Throughput`).
    """
    from cmt_gen.spec.bundled import bundled_names
    from cmt_gen.spec.loading import load_spec

    points: list[SpeedPoint] = []
    for spec, cost, speed in zip(specs, costs, throughput, strict=True):
        if calibration is not None:
            points.append(SpeedPoint(spec.name, cost.macs, _predicted(spec, calibration), False, False))
        if speed is not None:
            rate, noisy = _rate(speed)
            points.append(SpeedPoint(spec.name, cost.macs, rate, True, False, noisy))
    if not points:
        return None
    from cmt_gen.cost.analytic import analytic_cost

    measured_family = measured_family or {}
    for name in bundled_names():
        if calibration is None and name not in measured_family:
            continue
        family = load_spec(name)
        macs = analytic_cost(family).macs
        if calibration is not None:
            points.append(SpeedPoint(name, macs, _predicted(family, calibration), False, True))
        if name in measured_family:
            rate, noisy = _rate(measured_family[name])
            points.append(SpeedPoint(name, macs, rate, True, True, noisy))
    return SpeedPanel(points, _note(calibration, [*throughput, *measured_family.values()]))


def _note(calibration, measured: Sequence) -> str:
    """Where each kind of rate holds: 'predicted: <machine>, fp32, batch 8, threads 4; measured: cpu (...), fp32'."""
    parts = []
    if calibration is not None:
        s = calibration.settings
        parts.append(f"predicted: {calibration.machine}, {s.precision}, batch {s.batch_size}, "
                     f"threads {s.threads or 'default'}")
    if any(m is not None for m in measured):
        devices = sorted({m.device for m in measured if getattr(m, "device", None)})
        precisions = sorted({m.precision for m in measured if getattr(m, "precision", None)})
        where = ", ".join([" / ".join(devices), " / ".join(precisions)]).strip(", ")
        parts.append(f"measured: {where or 'by cmt-gen profile'}")
    return "; ".join(parts)


def _predicted(spec, calibration) -> float:
    from cmt_gen.latency.predict import predict_latency

    return predict_latency(spec, calibration).images_per_s


def reference_rate(points: Sequence[SpeedPoint]) -> tuple[float, str] | None:
    """MACs per second through the family's median: of its measured rates where there are any, else predicted."""
    family = [p for p in points if p.family]
    chosen = [p for p in family if p.measured] or family
    if not chosen:
        return None
    return statistics.median(p.macs * p.images_per_s for p in chosen), "measured" if chosen[0].measured \
        else "predicted"


def draw_speed_panel(ax, panel: SpeedPanel) -> list:
    """Log-log images/s against MACs on the given matplotlib axes; returns the labels to place
    (`plot_text.place_labels`) once the figure's layout is final."""
    from cmt_gen.design.plot_text import plain_log_ticks

    points = panel.points
    values = [p.images_per_s for p in points]
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError("a speed to plot is not finite")
    family = [p for p in points if p.family]
    users = [p for p in points if not p.family]
    source = {True: "measured (profile)", False: "predicted (calibration)"}
    for measured in (False, True):
        chosen = sorted((p for p in family if p.measured == measured), key=lambda p: p.macs)
        if chosen:
            ax.plot([p.macs / 1e9 for p in chosen], [p.images_per_s for p in chosen], "-o", color=FAMILY_COLOUR,
                    markersize=6, markeredgewidth=1.4, markerfacecolor=FAMILY_COLOUR if measured else "white",
                    linewidth=1.4 if measured else 1.0, zorder=3, label=f"CMT family, {source[measured]}",
                    gid="family")
    for measured in (False, True):
        chosen = [p for p in users if p.measured == measured]
        if chosen:
            ax.scatter([p.macs / 1e9 for p in chosen], [p.images_per_s for p in chosen], marker="*", s=230,
                       color=USER_COLOUR if measured else "white", edgecolors="black" if measured else USER_COLOUR,
                       linewidths=0.6 if measured else 1.2, zorder=5, label=f"your specs, {source[measured]}")
    _errors(ax, points)
    reference = reference_rate(points)
    macs = [p.macs for p in points]
    x_low, x_high = min(macs) / 1.6, max(macs) * 1.6
    if reference is not None:
        rate, kind = reference
        xs = [x_low, x_high]
        ax.plot([x / 1e9 for x in xs], [rate / x for x in xs], "--", color="#8a8a8a", linewidth=1, zorder=1,
                gid="avoid", label=f"constant MACs/s through the family's {kind} median ({_gmacs(rate)} GMAC/s):\n"
                                   "above it, faster than its MACs suggest")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_low / 1e9, x_high / 1e9)
    ax.set_ylim(min(values) / 1.8, max(values) * 1.8)
    plain_log_ticks(ax)
    ax.tick_params(axis="both", which="both", labelsize=8)
    ax.set_xlabel("MACs (G)  = Table 2's '# FLOPs'")
    ax.set_ylabel("images/s")
    ax.set_title("speed against MACs: filled = measured, hollow = predicted\n" + panel.note, fontsize=9)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=7, framealpha=0.9)
    return _labels(points)


def _gmacs(rate: float) -> str:
    """MACs per second in G, plain: 67.5, 1,030."""
    value = rate / 1e9
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _errors(ax, points: Sequence[SpeedPoint]) -> None:
    """A dotted segment from each predicted point to the same spec's measured one: the prediction's error."""
    predicted = {(p.label, p.family): p for p in points if not p.measured}
    drawn = False
    for p in points:
        twin = predicted.get((p.label, p.family)) if p.measured else None
        if twin is None:
            continue
        ax.plot([twin.macs / 1e9, p.macs / 1e9], [twin.images_per_s, p.images_per_s], ":", linewidth=1,
                color=FAMILY_COLOUR if p.family else USER_COLOUR, zorder=2, gid="avoid",
                label="_nolegend_" if drawn else "predicted to measured, same spec")
        drawn = True


def _labels(points: Sequence[SpeedPoint]) -> list:
    """Each spec named once (at its predicted point where it has one; a bundled variant among the user's
    specs by the family's label); a noisy measured rate says so, once per point."""
    from cmt_gen.design.plot_text import Label

    family = {p.label for p in points if p.family}
    found, named, noisy = [], set(), set()
    for p in sorted(points, key=lambda p: p.measured):  # predicted first
        radius = 5 if p.family else 8
        key = (p.label, p.family)
        if key not in named and (p.family or p.label not in family):
            named.add(key)
            style = dict(fontsize=8, fontweight="bold", color=FAMILY_COLOUR) if p.family else \
                dict(fontsize=8, color="black")
            found.append(Label(p.label, p.macs, p.images_per_s, radius, style, units=(1e9, 1.0)))
        if p.noisy and (p.label, p.macs, p.images_per_s) not in noisy:
            noisy.add((p.label, p.macs, p.images_per_s))
            found.append(Label(f"{p.label}: ~{p.images_per_s:,.1f} noisy", p.macs, p.images_per_s, radius,
                               dict(fontsize=7, color="#9a6a00", fontstyle="italic"), units=(1e9, 1.0)))
    return found
