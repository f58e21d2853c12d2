"""The compare plot: labels never overlap each other, a marker or the family line; the labels say what they show.

Bounding boxes come from matplotlib's own renderer (Agg), in pixels, after the
layout is final: what a reader of the saved picture sees.
"""

from __future__ import annotations

import json

import pytest

from cmt_gen import analytic_cost, load_spec

matplotlib = pytest.importorskip("matplotlib")


def _points():
    from cmt_gen.design.plotting import PlotPoint

    # A spec equal to a paper model (on its ring), two near CMT-L, one small: the crowded cases.
    picked = [("cmt_b", 2.2), ("cmt_ti", 23.8), ("cmt_l", None), ("cmt_s", 1.63)]
    points = []
    for name, speed in picked:
        spec = load_spec(name)
        cost = analytic_cost(spec)
        points.append(PlotPoint(name, cost.params, cost.macs, speed, spec.resolution))
    wide = load_spec("cmt_b", ["resolution=288", "stages.2.depth=24"])
    cost = analytic_cost(wide)
    points.append(PlotPoint("my_l", cost.params, cost.macs, None, wide.resolution))
    return points


def _overlap(a, b) -> float:
    return max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))


def test_plot_labels_overlap_nothing() -> None:
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    from cmt_gen.design.compare import table2_points
    from cmt_gen.design.plotting import _crosses, draw_cost_map, family_lines

    fig = draw_cost_map(_points(), table2_points(), speed_title="measured images/s\ncpu (test CPU), fp32")
    try:
        fig.canvas.draw()  # final positions, as saved
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        labels = [t for t in ax.texts if t.get_gid() == "label"]
        # The text's own box (an Annotation's extent would include its leader line).
        boxes = [Text.get_window_extent(t, renderer) for t in labels]
        texts = [t.get_text() for t in labels]
        assert len(labels) >= 5 + 5  # every user spec and every CMT family member is labelled
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                assert _overlap(boxes[i], boxes[j]) == 0, (texts[i], texts[j])
        # No label on any marker: stars, family rings, other models' dots.
        scale = fig.dpi / 72.0
        for collection in ax.collections:
            radius = (max(collection.get_sizes()) ** 0.5) / 2 * scale
            for x, y in collection.get_offsets():
                px, py = ax.transData.transform((x, y))
                marker = Bbox([[px - radius * 0.7, py - radius * 0.7], [px + radius * 0.7, py + radius * 0.7]])
                for text, box in zip(texts, boxes, strict=True):
                    assert _overlap(marker, box) == 0, (text, x, y)
        for segment in family_lines(ax):
            for text, box in zip(texts, boxes, strict=True):
                assert not _crosses(segment, (box.x0, box.y0, box.x1, box.y1)), text
        frame = ax.get_window_extent(renderer)
        for text, box in zip(texts, boxes, strict=True):
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, text
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_plot_labels_say_resolution_speed_and_where_it_was_measured() -> None:
    from cmt_gen.design.compare import table2_points
    from cmt_gen.design.plotting import draw_cost_map

    fig = draw_cost_map(_points(), table2_points(), speed_title="measured images/s\ncpu (test CPU), fp32")
    try:
        texts = {t.get_text() for t in fig.axes[0].texts}
        assert "cmt_s (224 px, 1.6 img/s)" in texts  # one decimal: 1.63 is not rounded to 2
        assert "cmt_b (256 px, 2.2 img/s)" in texts and "my_l (288 px)" in texts
        bar = fig.axes[1]
        assert "cpu (test CPU), fp32" in bar.get_title(loc="left")
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_colour_bar_title_comes_from_the_profile_file(tmp_path) -> None:
    from cmt_gen.design.compare import compare_specs, speed_title

    record = {"name": "cmt_ti", "images_per_s": 12.5, "settings": {"device": "cpu", "precision": "fp32"}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"env": {"device_name": "Test CPU"}, "results": [record]}))
    result = compare_specs(["cmt_ti"], path)
    assert speed_title(result.throughput) == "measured images/s\ncpu (Test CPU), fp32"


def test_speed_panel_line_runs_through_the_median_family_rate() -> None:
    """Two profiled family members (an even count): the constant-MACs/s line takes the mean of the middle
    two rates, as a median should, not the faster one."""
    from cmt_gen.design.plotting import _pyplot
    from cmt_gen.design.speed_panel import SpeedPanel, SpeedPoint, draw_speed_panel

    family = [SpeedPoint("cmt_ti", 0.6e9, 100.0, True, True), SpeedPoint("cmt_xs", 1.5e9, 50.0, True, True)]
    panel = SpeedPanel([*family, SpeedPoint("mine", 1e9, 70.0, True, False)], "test")  # 60 and 75 GMAC/s
    plt = _pyplot()
    fig, ax = plt.subplots()
    try:
        draw_speed_panel(ax, panel)
        line = next(line for line in ax.get_lines() if line.get_linestyle() == "--")
        assert line.get_xdata()[0] * 1e9 * line.get_ydata()[0] == pytest.approx(67.5e9)
        assert "67.5 GMAC/s" in line.get_label()
    finally:
        plt.close(fig)
