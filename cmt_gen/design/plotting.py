"""A picture of MACs against parameters: your specs among the paper's Table 2 models.

matplotlib is an optional extra (`pip install -e ".[plot]"`); nothing else
in cmt-gen imports it. Log axes, because Table 2 spans 6M to 99M parameters
and 0.6G to 78G MACs. With profile results the user's specs are coloured by
measured images/s.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cmt_gen.design.compare import ReferencePoint
from cmt_gen.errors import CmtGenError

FORMATS = (".png", ".svg", ".pdf")


@dataclass
class PlotPoint:
    """One of the user's specs: analytic cost and, when profiled, its speed."""

    label: str
    params: float
    macs: float
    throughput: float | None = None


PLOT_HINT = 'pip install -e ".[plot]" in your cmt-gen checkout (or pip install matplotlib)'


def require_matplotlib() -> None:
    """Fail before any work (or output) when matplotlib is missing; the hint fits a from-checkout install."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise CmtGenError(f"--plot needs matplotlib: {PLOT_HINT}", field="plot")


def _pyplot():
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def check_plot_path(path: str | Path) -> Path:
    """Fail before any work if the picture cannot be written (bad suffix, no folder, no matplotlib)."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise CmtGenError(f"a plot is saved as {', '.join(FORMATS)}, not {path.suffix or 'no suffix'}",
                          source=str(path))
    if not (path.parent if str(path.parent) else Path(".")).is_dir():
        raise CmtGenError("output folder does not exist", source=str(path))
    require_matplotlib()
    return path


def plot_cost_map(path: str | Path, points: Sequence[PlotPoint], references: Sequence[ReferencePoint],
                  title: str | None = None) -> Path:
    """Draw and atomically save the MACs-vs-params picture; returns the path written."""
    from cmt_gen.files import write_atomic

    path = check_plot_path(path)
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(8, 5.6), dpi=150)
    try:
        others = [r for r in references if not r.is_cmt]
        family = sorted((r for r in references if r.is_cmt), key=lambda r: r.params)
        if others:
            ax.scatter([r.params / 1e6 for r in others], [r.macs / 1e9 for r in others], s=22, color="#b0b0b0",
                       zorder=2, label="Table 2: other models")
        if family:
            ax.plot([r.params / 1e6 for r in family], [r.macs / 1e9 for r in family], "-o", color="#1f4e99",
                    markersize=6, linewidth=1.4, zorder=3, label="Table 2: CMT family")
        _draw_points(fig, ax, points)
        ax.set_xscale("log")
        ax.set_yscale("log")
        _frame(ax, [(r.params, r.macs) for r in references] + [(p.params, p.macs) for p in points])
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))
        ax.tick_params(axis="both", which="both", labelsize=8)
        ax.set_xlabel("parameters (M)")
        ax.set_ylabel("MACs (G)  = Table 2's '# FLOPs'")
        ax.set_title(title or "CMT designs: MACs against parameters", fontsize=11)
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", alpha=0.12)
        ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
        fig.tight_layout()
        labels = [(p.label if p.throughput is None else f"{p.label} ({p.throughput:,.0f} img/s)", p.params, p.macs,
                   21, dict(fontsize=8, color="black")) for p in points]
        labels += [(r.name, r.params, r.macs, 7, dict(fontsize=8, fontweight="bold", color="#1f4e99"))
                   for r in family]
        labels += [(r.name, r.params, r.macs, 5, dict(fontsize=6, color="#8a8a8a")) for r in others]
        _place_labels(fig, ax, labels)
        buffer = io.BytesIO()
        fig.savefig(buffer, format=path.suffix.lower().lstrip("."))
    finally:
        plt.close(fig)
    write_atomic(path, buffer.getvalue())
    return path


def _frame(ax, values: Sequence[tuple[float, float]]) -> None:
    """Log-axis limits with room for labels around the outermost points."""
    xs = [v[0] / 1e6 for v in values]
    ys = [v[1] / 1e9 for v in values]
    if xs:
        ax.set_xlim(min(xs) / 1.25, max(xs) * 1.6)
        ax.set_ylim(min(ys) / 1.5, max(ys) * 1.5)


def _offsets() -> list[tuple[float, float]]:
    """Label offsets (points) tried in turn: close around the marker first, then further out."""
    import math

    found = []
    for radius in (9, 20, 32, 46):
        for degrees in (-15, 30, 150, 195, 270, 90, -60, 240, 60, 120):
            angle = math.radians(degrees)
            found.append((radius * math.cos(angle), radius * math.sin(angle)))
    return found


def _place_labels(fig, ax, labels) -> None:
    """Greedy placement in the order given: each label takes the first offset where it stays inside
    the axes and overlaps no marker or earlier label; failing that, the offset overlapping least.
    Labels placed away from their marker get a thin leader line."""
    renderer = fig.canvas.get_renderer()
    taken = []
    for _, x, y, radius, _ in labels:  # every marker, in pixels
        px, py = ax.transData.transform((x / 1e6, y / 1e9))
        taken.append((px - radius, py - radius, px + radius, py + radius))
    frame = ax.get_window_extent(renderer)
    offsets = _offsets()
    for text, x, y, _, style in labels:
        best = None
        for dx, dy in offsets:
            note = _note(ax, text, x, y, dx, dy, style)
            box = note.get_window_extent(renderer)
            rect = (box.x0, box.y0, box.x1, box.y1)
            outside = sum(max(0.0, v) for v in (frame.x0 - box.x0, box.x1 - frame.x1, frame.y0 - box.y0,
                                                 box.y1 - frame.y1))
            cost = sum(_overlap(rect, other) for other in taken) + 50 * outside * box.height
            note.remove()
            if best is None or cost < best[0]:
                best = (cost, dx, dy, rect)
            if cost == 0:
                break
        _, dx, dy, rect = best
        _note(ax, text, x, y, dx, dy, style, leader=abs(dx) + abs(dy) > 14)
        taken.append(rect)


def _note(ax, text: str, x: float, y: float, dx: float, dy: float, style: dict, leader: bool = False):
    ha = "left" if dx > 2 else ("right" if dx < -2 else "center")
    va = "bottom" if dy > 2 else ("top" if dy < -2 else "center")
    arrow = dict(arrowstyle="-", lw=0.5, color=style.get("color", "black"), shrinkA=0, shrinkB=4) if leader else None
    return ax.annotate(text, (x / 1e6, y / 1e9), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                       zorder=6, arrowprops=arrow, **style)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Area two pixel boxes share."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _draw_points(fig, ax, points: Sequence[PlotPoint]) -> None:
    """The user's specs as stars: coloured by images/s where profiled, red otherwise."""
    timed = [p for p in points if p.throughput is not None]
    untimed = [p for p in points if p.throughput is None]
    if timed:
        speeds = [p.throughput for p in timed]
        dots = ax.scatter([p.params / 1e6 for p in timed], [p.macs / 1e9 for p in timed], c=speeds, cmap="viridis",
                          marker="*", s=260, edgecolors="black", linewidths=0.6, zorder=5.5,
                          vmin=min(speeds) * (0.95 if len(set(speeds)) == 1 else 1), vmax=max(speeds),
                          label="your specs (colour: images/s)")
        fig.colorbar(dots, ax=ax, pad=0.02).set_label("measured images/s (profile)")
    if untimed:
        ax.scatter([p.params / 1e6 for p in untimed], [p.macs / 1e9 for p in untimed], marker="*", s=260,
                   color="#d62728", edgecolors="black", linewidths=0.6, zorder=5,
                   label="your specs" + (" (not profiled)" if timed else ""))
