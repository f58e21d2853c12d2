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
    from cmt_gen.design.plot_text import _crosses
    from cmt_gen.design.plotting import draw_cost_map, family_lines

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


def _speed_figure(panel):
    from cmt_gen.design.plotting import _pyplot, family_lines, place_labels
    from cmt_gen.design.speed_panel import draw_speed_panel

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 6))
    labels = draw_speed_panel(ax, panel)
    fig.tight_layout()
    place_labels(fig, ax, labels, lines=family_lines(ax))  # as draw_cost_map does, once the layout is final
    fig.canvas.draw()
    return plt, fig, ax


def _mixed_panel():
    """The family predicted and (two members) measured, a spec predicted and measured (noisy)."""
    from cmt_gen.design.speed_panel import SpeedPanel, SpeedPoint

    predicted = [SpeedPoint(n, m, r, False, True) for n, m, r in
                 (("cmt_ti", 0.64e9, 180.0), ("cmt_xs", 1.55e9, 95.0), ("cmt_s", 4.03e9, 40.0))]
    measured = [SpeedPoint("cmt_ti", 0.64e9, 160.0, True, True), SpeedPoint("cmt_s", 4.03e9, 45.0, True, True)]
    mine = [SpeedPoint("mine", 1e9, 120.0, False, False), SpeedPoint("mine", 1e9, 100.0, True, False, noisy=True)]
    return SpeedPanel([*predicted, *measured, *mine], "predicted: Test CPU, fp32, batch 8, threads 4")


def test_speed_panel_legend_names_predicted_measured_and_the_reference_line() -> None:
    """Issue 21: predicted and measured points shared one unexplained line, and the dashed line was unexplained."""
    plt, fig, ax = _speed_figure(_mixed_panel())
    try:
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        for entry in ("CMT family, predicted (calibration)", "CMT family, measured (profile)",
                      "your specs, predicted (calibration)", "your specs, measured (profile)"):
            assert entry in legend, legend
        reference = next(t for t in legend if t.startswith("constant MACs/s"))
        assert "family's measured median" in reference and "faster than its MACs suggest" in reference
        assert "filled = measured, hollow = predicted" in ax.get_title()
        # Measured and predicted family members are separate lines, told apart by filled and hollow markers.
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert lines["CMT family, predicted (calibration)"].get_markerfacecolor() == "white"
        assert lines["CMT family, measured (profile)"].get_markerfacecolor() != "white"
        texts = {t.get_text() for t in ax.texts}
        assert "mine: ~100.0 noisy" in texts and "mine" in texts
    finally:
        plt.close(fig)


def test_speed_panel_reference_falls_back_to_the_predicted_family() -> None:
    from cmt_gen.design.speed_panel import SpeedPanel, SpeedPoint

    panel = SpeedPanel([SpeedPoint("cmt_ti", 1e9, 100.0, False, True), SpeedPoint("mine", 1e9, 90.0, False, False)],
                       "test")
    plt, fig, ax = _speed_figure(panel)
    try:
        line = next(line for line in ax.get_lines() if line.get_linestyle() == "--")
        assert "family's predicted median (100 GMAC/s)" in line.get_label()
    finally:
        plt.close(fig)


@pytest.mark.parametrize("rates", [(900.0, 300.0, 500.0), (50.0, 12.0, 2.0, 0.6)])
def test_log_axes_print_plain_numbers(rates) -> None:
    """Minor ticks once read '6x10^1' beside a plain '10'; an axis spanning less than a decade had one label."""
    from cmt_gen.design.speed_panel import SpeedPanel, SpeedPoint

    points = [SpeedPoint(f"m{k}", 0.5e9 * 2 ** k, r, True, k > 0) for k, r in enumerate(rates)]
    plt, fig, ax = _speed_figure(SpeedPanel(points, "test"))
    try:
        for axis in (ax.xaxis, ax.yaxis):
            shown = [t.get_text() for t in axis.get_ticklabels(which="both") if t.get_text()]
            assert len(shown) >= 3, shown
            assert not [t for t in shown if "times" in t or "^" in t or "e+" in t or "$" in t], shown
            for text in shown:
                float(text.replace(",", ""))  # a plain number
    finally:
        plt.close(fig)


def test_speed_panel_labels_overlap_each_other_nowhere() -> None:
    from matplotlib.text import Text

    plt, fig, ax = _speed_figure(_mixed_panel())
    try:
        renderer = fig.canvas.get_renderer()
        labels = [t for t in ax.texts if t.get_gid() == "label"]
        boxes = [Text.get_window_extent(t, renderer) for t in labels]
        assert len(labels) == 3 + 1 + 1  # the family's three, "mine", and mine's noisy mark
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                assert _overlap(boxes[i], boxes[j]) == 0, (labels[i].get_text(), labels[j].get_text())
    finally:
        plt.close(fig)
