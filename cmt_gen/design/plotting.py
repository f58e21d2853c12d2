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
    """One of the user's specs: analytic cost, input side and, when profiled, its speed."""

    label: str
    params: float
    macs: float
    throughput: float | None = None
    resolution: int | None = None

    def text(self) -> str:
        """'my_l (288 px, 12.3 img/s)': the name, the input it was counted at, the speed to one decimal."""
        facts = [f"{self.resolution} px"] if self.resolution else []
        if self.throughput is not None:
            facts.append(f"{self.throughput:,.1f} img/s")
        return f"{self.label} ({', '.join(facts)})" if facts else self.label


@dataclass
class Label:
    """A text to place near its point (data units: params, MACs); `required` labels are always drawn."""

    text: str
    params: float
    macs: float
    marker_radius: float  # points: the marker's half-size, kept clear of every label
    style: dict
    required: bool = True


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


def check_plot_path(path: str | Path, inputs: Sequence[str | Path | None] = ()) -> Path:
    """Fail before any work if the picture cannot be written (a command's input, bad suffix, no matplotlib)."""
    from cmt_gen.files import check_output_target

    path = Path(path)
    check_output_target(path, inputs=inputs, suffixes=FORMATS, what="a plot")
    require_matplotlib()
    return path


def plot_cost_map(path: str | Path, points: Sequence[PlotPoint], references: Sequence[ReferencePoint],
                  title: str | None = None, speed_title: str = "measured images/s", speed=None) -> Path:
    """Draw and atomically save the MACs-vs-params picture; returns the path written.

    `speed` (a `cmt_gen.design.speed_panel.SpeedPanel`) adds a second panel: images/s against MACs.
    """
    from cmt_gen.files import write_atomic

    path = check_plot_path(path)
    plt = _pyplot()
    fig = draw_cost_map(points, references, title=title, speed_title=speed_title, speed=speed)
    try:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=path.suffix.lower().lstrip("."))
    finally:
        plt.close(fig)
    write_atomic(path, buffer.getvalue())
    return path


def draw_cost_map(points: Sequence[PlotPoint], references: Sequence[ReferencePoint], *, title: str | None = None,
                  speed_title: str = "measured images/s", speed=None):
    """The figure (not saved): one panel per axes, laid out first, labels placed last on the final layout.

    `speed_title` titles the colour bar; say where and how the speeds were measured (device, precision).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2 if speed else 1, figsize=(16 if speed else 8.4, 5.8), dpi=150, squeeze=False)
    ax = axes[0][0]
    labels = draw_cost_panel(fig, ax, points, references, speed_title=speed_title)
    if speed is not None:
        from cmt_gen.design.speed_panel import draw_speed_panel

        draw_speed_panel(axes[0][1], speed)
    ax.set_title(title or "CMT designs: MACs against parameters", fontsize=11)
    fig.tight_layout()
    place_labels(fig, ax, labels, lines=family_lines(ax))
    return fig


def draw_cost_panel(fig, ax, points: Sequence[PlotPoint], references: Sequence[ReferencePoint], *,
                    speed_title: str) -> list[Label]:
    """MACs against parameters on log axes: Table 2's models, the CMT family as a line, the user's specs
    as outlined stars on top. Returns the labels to place once the figure's layout is final."""
    from matplotlib.ticker import FuncFormatter

    others = [r for r in references if not r.is_cmt]
    family = sorted((r for r in references if r.is_cmt), key=lambda r: r.params)
    if others:
        ax.scatter([r.params / 1e6 for r in others], [r.macs / 1e9 for r in others], s=20, color="#a8a8a8",
                   zorder=2, label="Table 2: other models")
    if family:
        # Rings, not dots: a user's star on a family point (a spec equal to a paper model) sits inside the ring.
        ax.plot([r.params / 1e6 for r in family], [r.macs / 1e9 for r in family], "-o", color="#1f4e99",
                markersize=11, markerfacecolor="white", markeredgewidth=1.6, linewidth=1.4, zorder=3,
                label="Table 2: CMT family", gid="family")
    _draw_points(fig, ax, points, speed_title)
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
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    labels = [Label(p.text(), p.params, p.macs, 9, dict(fontsize=8, color="black", fontweight="bold"))
              for p in points]
    labels += [Label(r.name, r.params, r.macs, 6, dict(fontsize=8, fontweight="bold", color="#1f4e99"))
               for r in family]
    labels += [Label(r.name, r.params, r.macs, 3.5, dict(fontsize=6, color="#7a7a7a"), required=False)
               for r in others]
    return labels


def family_lines(ax) -> list[tuple[float, float, float, float]]:
    """The CMT family's line segments in pixels: labels must not sit on them."""
    segments = []
    for line in ax.get_lines():
        if line.get_gid() != "family":
            continue
        pixels = ax.transData.transform(list(zip(line.get_xdata(), line.get_ydata(), strict=True)))
        segments += [(*a, *b) for a, b in zip(pixels[:-1], pixels[1:], strict=True)]
    return segments


def _frame(ax, values: Sequence[tuple[float, float]]) -> None:
    """Log-axis limits with room for labels around the outermost points."""
    xs = [v[0] / 1e6 for v in values]
    ys = [v[1] / 1e9 for v in values]
    if xs:
        ax.set_xlim(min(xs) / 1.3, max(xs) * 1.9)
        ax.set_ylim(min(ys) / 1.6, max(ys) * 1.6)


def _offsets() -> list[tuple[float, float]]:
    """Label offsets (points) tried in turn: close around the marker first, then further out."""
    import math

    found = []
    for radius in (8, 16, 26, 38, 52, 70):
        for degrees in (0, 180, 90, 270, 30, 150, 210, 330, 60, 120, 240, 300):
            angle = math.radians(degrees)
            found.append((radius * math.cos(angle), radius * math.sin(angle)))
    return found


# Offsets (points, |dx| + |dy|) beyond which an optional label is left out instead of drawn far away.
OPTIONAL_REACH = 36


def place_labels(fig, ax, labels: Sequence[Label], lines: Sequence[tuple[float, ...]] = ()) -> None:
    """Greedy placement, required labels first: each takes the first offset where it stays inside the
    axes and touches no marker, line, leader or earlier label. A required label with no free spot takes
    the least crowded one; an optional one (other Table 2 models) is left out rather than overlap.
    Labels placed away from their marker get a thin leader line, itself kept off other labels.
    Hand-written because a force-directed placer (adjustText 1.4, tried on these plots) left labels on
    markers and on the family line, and cannot leave out an optional label it has no room for."""
    renderer = fig.canvas.get_renderer()
    scale = fig.dpi / 72.0
    markers = []
    for label in labels:  # every marker, in pixels
        px, py = ax.transData.transform((label.params / 1e6, label.macs / 1e9))
        r = label.marker_radius * scale
        markers.append((px - r, py - r, px + r, py + r))
    frame = ax.get_window_extent(renderer)
    boxes: list[tuple[float, ...]] = []
    segments = list(lines)
    for label in sorted(labels, key=lambda item: not item.required):
        anchor = ax.transData.transform((label.params / 1e6, label.macs / 1e9))
        best = None
        for dx, dy in _offsets():
            if not label.required and abs(dx) + abs(dy) > OPTIONAL_REACH:
                continue  # a far-off grey label with a long leader reads worse than none
            note = _note(ax, label, dx, dy)
            box = note.get_window_extent(renderer)
            note.remove()
            rect = (box.x0 - 1, box.y0 - 1, box.x1 + 1, box.y1 + 1)
            leader = _leader(anchor, rect) if abs(dx) + abs(dy) > 12 else None
            cost = _crowding(rect, leader, markers, boxes, segments, frame)
            if best is None or cost < best[0]:
                best = (cost, dx, dy, rect, leader)
            if cost == 0:
                break
        cost, dx, dy, rect, leader = best
        if cost > 0 and not label.required:
            continue
        _note(ax, label, dx, dy, leader=leader is not None)
        boxes.append(rect)
        if leader is not None:
            segments.append(leader)


def _crowding(rect, leader, markers, boxes, segments, frame) -> float:
    """How badly a candidate label (and its leader) collides: 0 means free."""
    outside = sum(max(0.0, v) for v in (frame.x0 - rect[0], rect[2] - frame.x1, frame.y0 - rect[1],
                                         rect[3] - frame.y1))
    cost = 50 * outside * (rect[3] - rect[1])
    cost += sum(_overlap(rect, other) for other in markers) + sum(_overlap(rect, other) for other in boxes)
    cost += 400 * sum(_crosses(segment, rect) for segment in segments)
    if leader is not None:
        cost += 400 * sum(_crosses(leader, other) for other in boxes)
        cost += 400 * sum(_intersect(leader, other) for other in segments)
    return cost


def _intersect(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Whether two segments cross (touching at a shared end, like a leader leaving a line's marker, does not count)."""
    def side(p, q, r) -> float:
        return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])

    p1, p2, q1, q2 = a[:2], a[2:], b[:2], b[2:]
    d1, d2, d3, d4 = side(q1, q2, p1), side(q1, q2, p2), side(p1, p2, q1), side(p1, p2, q2)
    return d1 * d2 < -1e-6 and d3 * d4 < -1e-6


def _leader(anchor, rect) -> tuple[float, float, float, float]:
    """Segment from the marker to the nearest point of the label's box."""
    x = min(max(anchor[0], rect[0]), rect[2])
    y = min(max(anchor[1], rect[1]), rect[3])
    return (float(anchor[0]), float(anchor[1]), x, y)


def _crosses(segment: tuple[float, ...], rect: tuple[float, ...]) -> bool:
    """Whether a segment passes through a box (clipped Liang-Barsky test), its end on the edge excluded."""
    x0, y0, x1, y1 = segment
    dx, dy = x1 - x0, y1 - y0
    low, high = 0.0, 1.0
    for p, q in ((-dx, x0 - rect[0]), (dx, rect[2] - x0), (-dy, y0 - rect[1]), (dy, rect[3] - y0)):
        if p == 0:
            if q < 0:
                return False
            continue
        t = q / p
        if p < 0:
            low = max(low, t)
        else:
            high = min(high, t)
        if low > high:
            return False
    return high - low > 1e-3


def _note(ax, label: Label, dx: float, dy: float, leader: bool = False):
    ha = "left" if dx > 2 else ("right" if dx < -2 else "center")
    va = "bottom" if dy > 2 else ("top" if dy < -2 else "center")
    arrow = dict(arrowstyle="-", lw=0.5, color=label.style.get("color", "black"), shrinkA=0, shrinkB=3) \
        if leader else None
    return ax.annotate(label.text, (label.params / 1e6, label.macs / 1e9), xytext=(dx, dy),
                       textcoords="offset points", ha=ha, va=va, zorder=7, arrowprops=arrow, gid="label",
                       **label.style)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Area two pixel boxes share."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _draw_points(fig, ax, points: Sequence[PlotPoint], speed_title: str) -> None:
    """The user's specs as stars on top of everything, outlined (black edge, white halo) so each stays
    distinct from the Table 2 ring or dot it may sit on."""
    import matplotlib.patheffects as effects

    halo = [effects.withStroke(linewidth=2.5, foreground="white")]
    timed = [p for p in points if p.throughput is not None]
    untimed = [p for p in points if p.throughput is None]
    common = dict(marker="*", s=120, edgecolors="black", linewidths=0.7, zorder=6)
    if timed:
        speeds = [p.throughput for p in timed]
        dots = ax.scatter([p.params / 1e6 for p in timed], [p.macs / 1e9 for p in timed], c=speeds, cmap="viridis",
                          vmin=min(speeds) * (0.95 if len(set(speeds)) == 1 else 1), vmax=max(speeds),
                          label="your specs (colour: images/s)", **common)
        dots.set_path_effects(halo)
        bar = fig.colorbar(dots, ax=ax, pad=0.02)
        bar.ax.set_title(speed_title, fontsize=7, loc="left", pad=6)
        bar.ax.tick_params(labelsize=7)
    if untimed:
        stars = ax.scatter([p.params / 1e6 for p in untimed], [p.macs / 1e9 for p in untimed], color="#d62728",
                           label="your specs" + (" (not profiled)" if timed else ""), **common)
        stars.set_path_effects(halo)
