"""Where text goes on a plot: plain numbers on log axes, and labels placed so that they overlap
nothing (other labels, markers, lines) or are left out, nearest first; shared by both panels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Label:
    """A text to place near its point (data units: params, MACs); `required` labels are always drawn."""

    text: str
    params: float
    macs: float
    marker_radius: float  # points: the marker's half-size, kept clear of every label
    style: dict
    required: bool = True
    units: tuple[float, float] = (1e6, 1e9)  # data units of the axes: params in M, MACs in G

    @property
    def xy(self) -> tuple[float, float]:
        """The point in the axes' data units."""
        return self.params / self.units[0], self.macs / self.units[1]


def plain_number(value: float) -> str:
    """A tick as a plain number: 0.5, 20, 1,000 (never 6x10^1 or 1e+06)."""
    return f"{value:,.0f}" if value >= 1000 else f"{value:g}"


def _leading_digit(value: float) -> str:
    return f"{value:.0e}"[0]


def plain_log_ticks(ax) -> None:
    """Plain-number labels on both log axes of `ax` (call after setting the limits): every power of ten,
    and between them the 2s and 5s, or every digit on an axis spanning less than a decade, so that no
    axis shows fewer than a few labelled ticks; matplotlib's own minor labels read '6x10^1'."""
    import math

    from matplotlib.ticker import FuncFormatter, LogLocator

    for axis, (low, high) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        decades = math.log10(high / low) if low > 0 and high > low else 1.0
        digits = "23456789" if decades < 1.2 else "25" if decades < 4 else ""
        axis.set_major_locator(LogLocator(base=10))
        axis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10)), numticks=100))
        axis.set_major_formatter(FuncFormatter(lambda v, _: plain_number(v)))
        axis.set_minor_formatter(FuncFormatter(
            lambda v, _, digits=digits: plain_number(v) if _leading_digit(v) in digits else ""))


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
        px, py = ax.transData.transform(label.xy)
        r = label.marker_radius * scale
        markers.append((px - r, py - r, px + r, py + r))
    frame = ax.get_window_extent(renderer)
    boxes: list[tuple[float, ...]] = []
    segments = list(lines)
    for label in sorted(labels, key=lambda item: not item.required):
        anchor = ax.transData.transform(label.xy)
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
    return ax.annotate(label.text, label.xy, xytext=(dx, dy),
                       textcoords="offset points", ha=ha, va=va, zorder=7, arrowprops=arrow, gid="label",
                       **label.style)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Area two pixel boxes share."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
