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
from cmt_gen.design.plot_text import Label, place_labels, plain_log_ticks
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
    noisy: bool = False  # cmt-gen profile marked the measured speed noisy

    def text(self) -> str:
        """'my_l (288 px, 12.3 img/s)': the name, the input it was counted at, the speed to one decimal
        ('~12.3 img/s, noisy' where cmt-gen profile marked it so)."""
        facts = [f"{self.resolution} px"] if self.resolution else []
        if self.throughput is not None:
            facts.append(f"~{self.throughput:,.1f} img/s, noisy" if self.noisy else f"{self.throughput:,.1f} img/s")
        return f"{self.label} ({', '.join(facts)})" if facts else self.label


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
    speed_labels = []
    if speed is not None:
        from cmt_gen.design.speed_panel import draw_speed_panel

        speed_labels = draw_speed_panel(axes[0][1], speed)
    ax.set_title(title or "CMT designs: MACs against parameters", fontsize=11)
    fig.tight_layout()
    place_labels(fig, ax, labels, lines=family_lines(ax))
    if speed is not None:
        place_labels(fig, axes[0][1], speed_labels, lines=family_lines(axes[0][1]))
    return fig


def draw_cost_panel(fig, ax, points: Sequence[PlotPoint], references: Sequence[ReferencePoint], *,
                    speed_title: str) -> list[Label]:
    """MACs against parameters on log axes: Table 2's models, the CMT family as a line, the user's specs
    as outlined stars on top. Returns the labels to place once the figure's layout is final."""
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
    plain_log_ticks(ax)
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
    """The CMT family's line segments in pixels (and any other line drawn with gid 'family' or 'avoid'):
    labels must not sit on them."""
    segments = []
    for line in ax.get_lines():
        if line.get_gid() not in ("family", "avoid"):
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
