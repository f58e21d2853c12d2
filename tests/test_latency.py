"""Latency model: exact on timings it can represent, files validated like specs, speed budgets honoured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_cli_subprocess, subprocess_env, tiny_spec_dict

from cmt_gen.cost.analytic import analytic_cost
from cmt_gen.latency.calibration_file import (
    CalibratedBlockOptions,
    Calibration,
    CalibrationError,
    check_compatible,
    current_machine,
    installed_torch_version,
    load_calibration,
    save_calibration,
)
from cmt_gen.latency.features import FEATURES, PartShape, spec_parts
from cmt_gen.latency.fit import fit_nonnegative
from cmt_gen.latency.predict import predict_latency
from cmt_gen.spec.loading import load_spec

# Synthetic device: seconds per call = these coefficients . features (all >= 0, some exactly 0).
TRUE = {
    "stem": (2e-4, 3e-10, 2e-9),
    "patch": (5e-5, 6e-11, 1e-9, 0.0),
    "block": (4e-4, 5e-11, 4e-11, 8e-11, 3e-9, 6e-10, 2e-9, 1.5e-9, 7e-10),
    "head": (1e-4, 5e-11, 1e-9, 0.0),
}
BATCH = 4
FACTOR = 1.07  # a whole network runs 7% slower than its parts timed alone


def fake_timer(part: PartShape) -> float:
    return sum(c * f for c, f in zip(TRUE[part.kind], part.features(BATCH), strict=True))


@pytest.fixture(scope="module")
def calibration() -> Calibration:
    from cmt_gen.latency.calibrate import calibrate

    # Parts fitted alone (the default: the whole networks only measure the factor), so every coefficient is
    # recovered exactly; the joint fit has its own tests (test_latency_calibration.py).
    return calibrate(device="cpu", batch_size=BATCH, threads=1, blocks_per_stage=6, timer=fake_timer,
                     network_timer=lambda spec: FACTOR * sum(n * fake_timer(p) for p, n in spec_parts(spec)),
                     networks=4)


@pytest.fixture(scope="module")
def cal_file(calibration, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cal") / "cal.json"
    save_calibration(calibration, path)
    return path


# ---------------------------------------------------------------- the model

def test_features_count_exactly_the_analytic_macs():
    for name in ("cmt_ti", "cmt_s"):
        spec = load_spec(name)
        assert sum(calls * part.macs() for part, calls in spec_parts(spec)) == analytic_cost(spec).macs
        for part, _ in spec_parts(spec):
            assert len(part.features(2)) == len(FEATURES[part.kind])


def test_fit_recovers_representable_timings_exactly(calibration):
    for kind, truth in TRUE.items():
        got = calibration.parts[kind].coefficients
        assert got == pytest.approx(truth, rel=1e-6, abs=1e-18), kind
        assert calibration.parts[kind].worst_error < 1e-6


def test_prediction_is_the_sum_of_its_parts_exactly(calibration):
    assert calibration.network_factor == pytest.approx(FACTOR, rel=1e-6)
    from cmt_gen.latency.calibrate import REFERENCE_NETWORKS
    from cmt_gen.latency.networks import draw_networks

    drawn = [name for name, _ in draw_networks(4, 0)]
    assert sorted(r.name for r in calibration.references) == sorted(
        [name for name, _, _ in REFERENCE_NETWORKS] + drawn)
    assert len({(r.resolution, r.parts_seconds) for r in calibration.references}) == len(REFERENCE_NETWORKS) + 4
    for spec in (load_spec("cmt_xs"), load_spec(tiny_spec_dict())):
        expected = FACTOR * sum(calls * fake_timer(part) for part, calls in spec_parts(spec))
        got = predict_latency(spec, calibration)
        assert got.seconds == pytest.approx(expected, rel=1e-6)
        assert got.images_per_s == pytest.approx(BATCH / expected, rel=1e-6)
        assert got.batch_size == BATCH


def test_robust_fit_leaves_out_a_disturbed_timing():
    from cmt_gen.latency.fit import fit_robust

    rows = [[1.0, float(x), float(x * x % 7 + 1)] for x in range(1, 30)]
    seconds = [2e-3 + 1e-4 * r[1] + 3e-4 * r[2] for r in rows]
    seconds[5] *= 3  # another process took the core during this timing
    report = fit_robust(rows, seconds)
    assert report.outliers == 1
    assert report.coefficients == pytest.approx((2e-3, 1e-4, 3e-4), rel=1e-6)
    assert report.worst_error == pytest.approx(2 / 3, rel=1e-6)  # still reported


def test_fit_keeps_coefficients_non_negative():
    rows = [[1.0, float(x), float(x * x)] for x in range(1, 12)]
    seconds = [5.0 - 0.3 * r[1] + 0.01 * r[2] for r in rows]  # a negative slope the model may not use
    report = fit_nonnegative(rows, seconds)
    assert min(report.coefficients) >= 0


def _fit_cases() -> dict[str, tuple[list, list[float], tuple[float, ...] | None]]:
    """Rows, seconds and (where known) the true coefficients: each part kind on the fake device, and a
    problem whose unconstrained fit would go negative (so the constraint is active)."""
    from cmt_gen.latency.calibrate import plan_parts

    cases = {}
    for kind, truth in TRUE.items():
        rows = [p.features(BATCH) for p in plan_parts(6, 0) if p.kind == kind]
        cases[kind] = (rows, [sum(c * f for c, f in zip(truth, r, strict=True)) for r in rows], truth)
    rows = [[1.0, float(x), float(x * x)] for x in range(1, 12)]
    cases["constrained"] = (rows, [5.0 - 0.3 * r[1] + 0.01 * r[2] for r in rows], None)
    return cases


@pytest.mark.parametrize("case", list(_fit_cases()))
def test_scipy_and_the_fallback_solver_agree(case, monkeypatch):
    """scipy's NNLS is used when importable, the pure-Python one when not, and on these well-conditioned
    rows they fit the same coefficients; scipy recovers representable timings to near machine precision
    (it never forms the normal equations, which square the condition number)."""
    pytest.importorskip("scipy")
    from cmt_gen.latency import fit

    rows, seconds, truth = _fit_cases()[case]
    calls: list[int] = []
    real = fit._nnls
    monkeypatch.setattr(fit, "_nnls", lambda *args: calls.append(1) or real(*args))
    with_scipy = fit.fit_nonnegative(rows, seconds)
    assert not calls
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)  # as if scipy were not installed
    fallback = fit.fit_nonnegative(rows, seconds)
    assert calls
    assert fallback.coefficients == pytest.approx(with_scipy.coefficients, rel=1e-6, abs=1e-18)
    assert fallback.median_error == pytest.approx(with_scipy.median_error, rel=1e-6, abs=1e-9)
    assert min(with_scipy.coefficients) >= 0 and min(fallback.coefficients) >= 0
    if truth is not None:
        assert with_scipy.coefficients == pytest.approx(truth, rel=1e-11, abs=1e-20)


def test_prediction_summary_of_an_even_count():
    from types import SimpleNamespace

    from cmt_gen.latency.evaluate import summary

    rows = [SimpleNamespace(error=e) for e in (0.1, -0.3, None, 0.2, -0.4)]  # one row failed to measure
    assert summary(rows) == {"measured": 4, "within": 0.10, "fraction_within": 0.25,
                             "median_abs_error": pytest.approx(0.25), "worst_abs_error": 0.4}
    assert summary([SimpleNamespace(error=None)]) == {"measured": 0}


def test_median_error_of_an_even_count_is_the_mean_of_the_middle_two():
    from cmt_gen.latency.fit import _report

    report = _report((1.0,), [[1.0]] * 4, [1 / 1.1, 1 / 1.2, 1 / 1.3, 1 / 1.4])  # errors 0.1 .. 0.4
    assert report.median_error == pytest.approx(0.25) and report.worst_error == pytest.approx(0.4)


# ---------------------------------------------------------------- files

def test_calibration_round_trips(calibration, cal_file):
    again = load_calibration(cal_file)
    assert again == calibration
    assert predict_latency("cmt_s", cal_file).seconds == predict_latency("cmt_s", calibration).seconds


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("parts"), "parts"),
    (lambda d: d["parts"]["block"]["coefficients"].__setitem__(1, -1.0), "parts.block"),
    (lambda d: d["parts"]["head"]["features"].reverse(), "parts"),
    (lambda d: d["settings"].__setitem__("batch_size", 0), "settings.batch_size"),
    (lambda d: d.__setitem__("surprise", 1), "surprise"),
    (lambda d: d.__setitem__("format", "other/9"), "format"),
])
def test_bad_calibration_files_are_one_line_and_exit_2(cal_file, tmp_path, cli, mutate, field):
    data = json.loads(cal_file.read_text())
    mutate(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(CalibrationError) as info:
        load_calibration(bad)
    assert str(info.value).startswith(f"{bad}: {field}")
    result = cli("predict", "cmt_ti", "--calibration", bad)
    assert result.code == 2
    assert result.err.count("\n") == 1 and "Traceback" not in result.err


def _head_coefficients(value):
    def mutate(d):
        d["parts"]["head"]["coefficients"] = [value] * len(d["parts"]["head"]["coefficients"])
    return mutate


@pytest.mark.parametrize("edit, message", [
    (lambda text: text.replace('"network_factor": ', '"network_factor": 1e308, "_x": ', 1), "network_factor"),
    (lambda text: _edit_json(text, _head_coefficients(float("inf"))), "Infinity is not a number JSON allows"),
    (lambda text: _edit_json(text, _head_coefficients(1e308)), "parts.head: coefficients are seconds per unit"),
    (lambda text: _edit_json(text, _head_coefficients(0.0)), "parts.head: all coefficients are 0"),
    (lambda text: text.replace('"seconds": ', '"seconds": NaN, "_y": ', 1), "NaN is not a number JSON allows"),
    (lambda text: "[" * 100_000 + "]" * 100_000, "not a calibration: nested too deeply"),
    (lambda text: text.replace('"batch_size": ', '"batch_size": ' + "9" * 4401 + ', "_z": ', 1),
     "a number has thousands of digits"),
])
def test_hostile_numbers_in_calibration_files_are_refused(cal_file, tmp_path, cli, edit, message):
    """Infinity, 1e308 and all-zero coefficients once made predict print inf ms, write Infinity into
    JSON or divide by zero; deep nesting and huge integers crashed the reader (exit 70)."""
    bad = tmp_path / "bad.json"
    bad.write_text(edit(cal_file.read_text()))
    result = cli("predict", "cmt_ti", "--calibration", bad)
    assert result.code == 2, result.err
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert message in result.err, result.err


def _edit_json(text: str, mutate) -> str:
    data = json.loads(text)
    mutate(data)
    return json.dumps(data)  # writes Infinity for inf, as Python's json does


def test_unreadable_calibration_files(tmp_path, cli):
    (tmp_path / "broken.json").write_text("{not json")
    for path, rule in ((tmp_path / "broken.json", "not valid JSON"), (tmp_path / "absent.json", "not found")):
        result = cli("predict", "cmt_ti", "--calibration", path)
        assert result.code == 2 and rule in result.err


def test_mismatched_calibration_is_refused_unless_forced(calibration, tmp_path, cli):
    other = calibration.model_copy(update={"torch_version": "0.0.1"})
    path = tmp_path / "other.json"
    save_calibration(other, path)
    refused = cli("predict", "cmt_ti", "--calibration", path)
    assert refused.code == 2 and "torch_version" in refused.err and "--force" in refused.err
    forced = cli("predict", "cmt_ti", "--calibration", path, "--force")
    assert forced.code == 0 and "warning" in forced.err
    with pytest.raises(CalibrationError, match="settings.threads"):
        check_compatible(calibration, threads=2)
    with pytest.raises(CalibrationError, match="settings.batch_size"):
        check_compatible(calibration, batch_size=BATCH + 1)
    assert check_compatible(calibration, threads=1, batch_size=BATCH, precision="fp32") == []
    assert calibration.machine == current_machine("cpu")
    assert calibration.torch_version == installed_torch_version()


def test_spec_with_other_block_options_is_refused(calibration):
    with pytest.raises(CalibrationError, match="attention"):
        predict_latency(load_spec("cmt_ti", ["block.attention=math"]), calibration)
    with pytest.raises(CalibrationError, match="gelu_approximation 'tanh'.*calibrated with 'none'"):
        predict_latency(load_spec("cmt_ti", ["block.gelu_approximation=tanh"]), calibration)


def test_block_options_come_from_the_spec_and_old_files_read_as_defaults(calibration):
    """The calibration records every spec block option (no list of its own to keep in step); a file
    written before an option existed holds the option's default, which is what it measured."""
    from cmt_gen.spec.schema import BlockOptions

    assert set(BlockOptions.model_fields) | {"qkv_bias"} == set(CalibratedBlockOptions.model_fields)
    data = json.loads(calibration.to_json())
    del data["block_options"]["gelu_approximation"]
    assert Calibration.model_validate(data).block_options == calibration.block_options
    data["block_options"]["reduction_kind"] = "maxpool"
    with pytest.raises(ValueError, match="reduction_kind"):
        Calibration.model_validate(data)


@pytest.mark.parametrize("form, deployed", [("deploy", True), ("as-built", False)])
def test_calibration_times_the_form_it_names(form, deployed):
    """A deploy calibration times each part in its deploy form, as `profile` runs the whole network."""
    from cmt_gen.latency.calibrate import plan_parts
    from cmt_gen.latency.calibration_file import CalibratedBlockOptions as BlockOptions
    from cmt_gen.latency.measure import TorchPartTimer, build_part
    from cmt_gen.profile.settings import resolve_settings

    settings = resolve_settings(device="cpu", batch_size=1, threads=1, form=form)
    timer = TorchPartTimer(settings, BlockOptions(), min_time=0.0, repeats=1, warmup=0, form=form)
    for part in [p for p in plan_parts(3, 0) if p.kind in ("block", "head")][:2]:
        module, inputs = build_part(part, BlockOptions(), 1)
        assert timer.time_module(module, inputs) > 0
        assert type(module).__name__.startswith("Deploy") is deployed


# ---------------------------------------------------------------- predict, design, sample

def test_predict_json_rows(cal_file, tmp_path, cli):
    out = tmp_path / "rows.json"
    result = cli("predict", "cmt_ti", "cmt_xs", "--calibration", cal_file, "--json", out)
    assert result.code == 0
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == ["cmt_ti", "cmt_xs"]
    assert rows[0]["latency_ms"] == pytest.approx(predict_latency("cmt_ti", cal_file).latency_ms)
    assert rows[0]["images_per_s"] == pytest.approx(BATCH / rows[0]["latency_ms"] * 1000)


def test_predict_and_design_do_not_import_torch(cal_file):
    code = ("import sys\nfrom cmt_gen.cli.app import main\n"
            f"for argv in (['predict', 'cmt_s', '--calibration', {str(cal_file)!r}],"
            f" ['design', '--throughput', '20', '--calibration', {str(cal_file)!r}, '--top', '1']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env=subprocess_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]


@pytest.mark.parametrize("budget", [{"throughput": "25"}, {"throughput": "20..30"}, {"latency": "..150ms"},
                                    {"latency": 0.2, "macs": "..2G"}])
def test_design_honours_speed_budgets(calibration, budget):
    from cmt_gen.design.search import design_specs

    result = design_specs("cmt_xs", calibration=calibration, resolution="160..256", **budget)
    assert result.feasible and result.designs
    for d in result.designs:
        predicted = predict_latency(d.spec, calibration)
        assert d.seconds == pytest.approx(predicted.seconds, rel=1e-9)
        value = predicted.images_per_s if result.speed.quantity == "throughput" else predicted.seconds
        assert result.speed.lo <= value <= result.speed.hi
        assert d.meets
    if "macs" in budget:
        assert all(d.macs <= 2e9 for d in result.designs)


def test_design_speed_errors(cal_file, cli):
    missing = cli("design", "--throughput", "40")
    assert missing.code == 2 and "--calibration" in missing.err
    both = cli("design", "--throughput", "40", "--latency", "20ms", "--calibration", cal_file)
    assert both.code == 2 and "not both" in both.err
    impossible = cli("design", "--throughput", "1e9", "--calibration", cal_file)
    assert impossible.code == 2 and "no CMT can meet throughput" in impossible.err
    shown = cli("design", "--throughput", "25", "--from", "cmt_xs", "--calibration", cal_file, "--top", "2")
    assert shown.code == 0 and "img/s (batch 4)" in shown.out


def test_sample_rows_carry_predicted_speed(cal_file, tmp_path, cli):
    out = tmp_path / "s.jsonl"
    assert cli("sample", "--n", "3", "--calibration", cal_file, "-o", out).code == 0
    for line in out.read_text().splitlines():
        row = json.loads(line)
        predicted = predict_latency(load_spec(row["spec"]), cal_file)
        assert row["latency_ms"] == pytest.approx(predicted.latency_ms)
        assert row["images_per_s"] == pytest.approx(predicted.images_per_s)


def test_compare_plot_has_a_speed_panel(cal_file, tmp_path, cli):
    pytest.importorskip("matplotlib")
    from cmt_gen.design.speed_panel import speed_panel

    spec = load_spec("cmt_xs")
    panel = speed_panel([spec], [analytic_cost(spec)], [None], load_calibration(cal_file))
    assert {p.label for p in panel.points if p.family} >= {"cmt_ti", "cmt_s", "cmt_b"}
    assert not panel.points[0].measured
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    assert cli("compare", "cmt_xs", "--plot", one).code == 0
    assert cli("compare", "cmt_xs", "--plot", two, "--calibration", cal_file).code == 0
    width = lambda p: int.from_bytes(p.read_bytes()[16:20], "big")  # noqa: E731 - PNG header
    assert width(two) > 1.5 * width(one)


# ---------------------------------------------------------------- on the device (small)

def test_torch_timer_measures_a_block():
    from cmt_gen.latency.calibration_file import CalibratedBlockOptions as BlockOptions
    from cmt_gen.latency.measure import TorchPartTimer
    from cmt_gen.profile.settings import resolve_settings

    timer = TorchPartTimer(resolve_settings(device="cpu", batch_size=1, threads=1), BlockOptions(), min_time=0.0,
                           repeats=1)
    small = timer(PartShape("block", 4, 4, 16, 16, 2, 2, 32))
    assert 0 < small < 1.0


@pytest.mark.parametrize("form, chunk", [("deploy", 1), ("as-built", 3)])
def test_blocks_are_timed_in_the_image_chunks_their_stage_runs(monkeypatch, form, chunk):
    """On CPU a deploy stage runs a cache-spilling batch a few images at a time, so a deploy
    calibration times each block on those chunks (here: a cache so small each image is one)."""
    from cmt_gen.deploy import cache_chunks
    from cmt_gen.latency import measure
    from cmt_gen.profile.settings import resolve_settings

    monkeypatch.setattr(cache_chunks, "last_level_cache_bytes", lambda: 2)
    seen: list[int] = []
    real = measure.build_part

    def recording(part, options, batch):
        module, inputs = real(part, options, batch)
        module.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[0]))
        return module, inputs

    monkeypatch.setattr(measure, "build_part", recording)
    settings = resolve_settings(device="cpu", batch_size=3, threads=1, form=form)
    timer = measure.TorchPartTimer(settings, CalibratedBlockOptions(), min_time=0.0, repeats=1, warmup=0, form=form)
    assert timer(PartShape("block", 4, 4, 16, 16, 2, 2, 32)) > 0
    assert seen and set(seen) == {chunk}


@pytest.mark.parametrize("form, channels_last", [("deploy", True), ("as-built", False)])
def test_patches_and_heads_are_timed_on_the_networks_layout(monkeypatch, form, channels_last):
    """In the deploy network a patch aggregation and the head get channels-last maps (the stem's output, a
    stage's tokens viewed as a map); timed alone they get the same, so no copy is timed that the network
    never makes."""
    import torch

    from cmt_gen.latency import measure
    from cmt_gen.profile.settings import resolve_settings

    seen: list[bool] = []
    real = measure.build_part

    def recording(part, options, batch):
        module, inputs = real(part, options, batch)
        module.register_forward_pre_hook(
            lambda mod, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)
                                          and not args[0].is_contiguous()))
        return module, inputs

    monkeypatch.setattr(measure, "build_part", recording)
    settings = resolve_settings(device="cpu", batch_size=2, threads=1, form=form)
    timer = measure.TorchPartTimer(settings, CalibratedBlockOptions(), min_time=0.0, repeats=1, warmup=0, form=form)
    assert timer(PartShape("patch", 16, 16, 8, 16)) > 0
    assert timer(PartShape("head", 4, 4, 32, 64, classes=10)) > 0
    assert seen and set(seen) == {channels_last}


def test_benchmark_draws_every_base_and_band_within_the_mac_cap(monkeypatch):
    """`bench_latency.draw_specs`: `sample_specs` per (base, band) cell, legal sizes, under the cap, seeded."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from bench_latency import BANDS, BASES, draw_specs, space_ranges, spec_summary

    from cmt_gen.design.scaling import resolution_step

    drawn, cells = draw_specs(14, 3, max_macs="4.5G", ranges=space_ranges("sample"))
    assert len(drawn) == 14 and sorted(c["asked"] for c in cells) == [1] * 10 + [2] * 2
    assert {(d.base, d.band) for d in drawn} == {(b, f"{lo}-{hi}") for b in BASES for lo, hi in BANDS}
    assert len({d.spec.name for d in drawn}) == 14
    for d in drawn:
        low, high = (int(v) for v in d.band.split("-"))
        assert low <= d.spec.resolution <= high and d.spec.resolution % resolution_step(d.spec) == 0
        assert analytic_cost(d.spec).macs <= 4.5e9
        base = load_spec(d.base)
        s = spec_summary(d.spec, d.base)
        assert s["heads"] == [st.heads for st in base.stages]
        assert s["reductions"] == [st.reduction for st in base.stages]
    again, _ = draw_specs(14, 3, max_macs="4.5G", ranges=space_ranges("sample"))
    assert [d.spec for d in again] == [d.spec for d in drawn]
    assert space_ranges("design")["width_range"][1] > space_ranges("sample")["width_range"][1]


@pytest.mark.slow
def test_benchmark_reduced_form_runs(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/bench_latency.py", "--quick", "--out", str(tmp_path)],
                            capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-800:]
    report = json.loads((tmp_path / "bench_latency.json").read_text())
    assert report["summary"]["measured"] == len(report["rows"]) == 3
    # One tiny spec per resolution band, each row carrying its spec summary; every band and overall reported.
    assert list(report["bands"]) == ["128-192", "224-288", "320-384", "overall"]
    assert all(report["bands"][b]["specs"] == 1 for b in ("128-192", "224-288", "320-384"))
    assert report["bands"]["overall"]["measured"] == 3
    for row in report["rows"]:
        low, high = (int(v) for v in row["band"].split("-"))
        assert row["base"] == "cmt_ti" and low <= row["resolution"] <= high and row["resolution"] % 32 == 0
        assert len(row["channels"]) == len(row["depths"]) == len(row["heads"]) == len(row["reductions"]) == 4
    assert set(report["misses"]) == {"beyond_10", "beyond_5"}
    judged = {"within_10", "within_5", "plain_within_10", "specs", "calibration_time", "repeatable", "design"}
    assert set(report["goals"]) == judged | {"within_10_at_speed", "within_5_at_speed", "plain_within_10_at_speed",
                                             "repeatable_at_speed", "design_at_speed"}
    assert report["judged"] is False and report["space"]["bases"] == ["cmt_ti"]
    # Every row measured three ways: cmt-gen's profiler, scaled for drift, and a plain script in its own process.
    assert all(r["plain_script_error"] is not None and r["drift_adjusted_error"] is not None for r in report["rows"])
    assert report["repeatability"]["worst"] >= 0 and report["drift_reference_ms"]
    assert report["design"][0]["seconds"] > 0 and (tmp_path / "bench_latency.png").stat().st_size > 0
    assert load_calibration(tmp_path / "calibration.json").settings.batch_size == 1
    _ = run_cli_subprocess  # the CLI form is exercised in-process above


def test_calibrate_command_writes_a_file_predict_can_measure(tmp_path, cli):
    cal = tmp_path / "cal.json"
    made = cli("calibrate", "--device", "cpu", "--threads", "1", "--batch-size", "1", "--blocks", "3",
               "--min-time", "0", "--networks", "2", "--max-drift", "1", "-o", cal)
    assert made.code == 0, made.err
    assert load_calibration(cal).settings.batch_size == 1
    # Where the channel block came from, as the probe said (conftest's stand-in here), recorded and printed.
    assert load_calibration(cal).environment["channel_block_source"] == "channels as counted (tests)"
    assert "whole blocks of 1 (channels as counted (tests))" in " ".join(made.out.split())
    spec = tmp_path / "tiny.yaml"
    spec.write_text(json.dumps(tiny_spec_dict()))
    out = tmp_path / "rows.json"
    measured = cli("predict", spec, "--calibration", cal, "--measure", "--min-time", "0", "--json", out)
    assert measured.code == 0, measured.err
    row = json.loads(out.read_text())[0]
    assert row["measured_images_per_s"] > 0
    assert row["error"] == pytest.approx(row["images_per_s"] / row["measured_images_per_s"] - 1)
    # Timed in turn with the drift reference: the machine's speed now, and the error at that speed.
    assert row["machine_speed"] > 0
    assert row["anchored_error"] == pytest.approx((1 + row["error"]) / row["machine_speed"] - 1)
    assert row["settings"]["form"] == "deploy" and "reparameterize" in row["settings"]["plain_script"]
    assert "machine now" in measured.out and "a plain script sees these speeds with" in measured.out


@pytest.mark.parametrize("argv, rule", [
    (["--form", "trained"], "unknown form"),
    (["--blocks", "1"], "blocks: must be a whole number from 3 to 1000"),
    (["--blocks", "1000000000"], "blocks: must be a whole number from 3 to 1000"),  # once filled memory
    (["--device", "tpu"], "unknown device"),
    (["--min-time", "-1"], "min_time"),
    (["--min-time", "1e12"], "min_time: must be a number of seconds from 0 to 60"),  # once ran forever
    (["--networks", "-1"], "networks: must be a whole number from 0 to 500"),
    (["--max-drift", "0"], "max_drift: must be a fraction above 0 and at most 1"),
    (["--channel-block", "0"], "channel_block: must be a whole number from 1 to 64"),
    (["--channel-block", "128"], "channel_block: must be a whole number from 1 to 64"),
])
def test_calibrate_bad_options_exit_2(tmp_path, cli, argv, rule):
    result = cli("calibrate", *argv, "-o", tmp_path / "cal.json")
    assert result.code == 2 and rule in result.err and not (tmp_path / "cal.json").exists()
    assert cli("calibrate", "-o", tmp_path / "cal.txt").code == 2


def test_predict_never_overwrites_its_calibration(cal_file, cli):
    before = cal_file.read_bytes()
    result = cli("predict", "cmt_ti", "--calibration", cal_file, "--json", cal_file)
    assert result.code == 2 and "also an input" in result.err and cal_file.read_bytes() == before


@pytest.mark.parametrize("argv, rule", [
    (["--precision", "bogus"], "unknown precision"),
    (["--batch-size", "-5", "--force"], "--batch-size: must be at least 1"),
])
def test_predict_checks_its_run_settings(cal_file, cli, argv, rule):
    result = cli("predict", "cmt_ti", "--calibration", cal_file, *argv)
    assert result.code == 2 and rule in result.err and len(result.err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [
    ["design", "--throughput", "40", "--from", "cmt_ti", "-o"],
    ["sample", "--n", "2", "--from", "cmt_ti", "-o"],
])
def test_design_tools_never_overwrite_the_calibration(cal_file, cli, tmp_path, command):
    own = tmp_path / ("cal.yaml" if command[0] == "design" else "cal.jsonl")
    own.write_bytes(cal_file.read_bytes())
    result = cli(*command, own, "--calibration", own)
    assert result.code == 2 and "also an input" in result.err and own.read_bytes() == cal_file.read_bytes()


def test_calibration_progress_knows_its_total_from_the_first_step():
    """The bar once started as 0/None and jumped when the reference networks began; the total now counts
    every timing and reference network from the start, and the last report reaches it."""
    from cmt_gen.latency.calibrate import REFERENCE_NETWORKS, calibrate
    from cmt_gen.latency.networks import DEFAULT_NETWORKS

    calls: list[tuple[int, int, str]] = []
    calibrate(device="cpu", batch_size=BATCH, threads=1, blocks_per_stage=3, timer=fake_timer,
              network_timer=lambda spec: FACTOR * sum(n * fake_timer(p) for p, n in spec_parts(spec)),
              progress=lambda done, total, what: calls.append((done, total, what)))
    totals = {total for _, total, _ in calls}
    assert len(totals) == 1 and calls[-1][0] == calls[-1][1] == totals.pop()
    assert [done for done, _, _ in calls] == sorted(done for done, _, _ in calls)
    assert sum(what.startswith("network ") for _, _, what in calls) == len(REFERENCE_NETWORKS) + DEFAULT_NETWORKS
    assert sum(what.startswith("drift reference") for _, _, what in calls) >= 2
