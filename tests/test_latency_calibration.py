"""Calibration over the whole space: whole networks in the fit, drift corrected or refused, the median
statistic, a plain script's settings, and the GPU path (with fakes where no GPU is present)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, subprocess_env, tiny_spec_dict
from test_latency import BATCH, TRUE, fake_timer

from cmt_gen.cost.analytic import analytic_cost
from cmt_gen.latency.calibrate import REFERENCE_NETWORKS, calibrate
from cmt_gen.latency.calibration_file import CalibrationError, calibration_from_dict, check_compatible
from cmt_gen.latency.drift import DRIFT_EVERY, TimedPlan, correct_drift, smoothed
from cmt_gen.latency.features import spec_parts
from cmt_gen.latency.networks import BASES, NETWORK_RESOLUTIONS, draw_networks
from cmt_gen.latency.predict import predict_latency
from cmt_gen.spec.loading import load_spec


def parts_sum(spec) -> float:
    return sum(n * fake_timer(p) for p, n in spec_parts(spec))


# ---------------------------------------------------------------- whole networks drawn over the space

def test_drawn_networks_cover_every_base_and_the_size_range_under_the_cap():
    drawn = draw_networks(24, 0)
    assert len(drawn) == 24 and len({name for name, _ in drawn}) == 24
    assert {name.split("_cal")[0] for name, _ in drawn} == set(BASES)
    sizes = {spec.resolution for _, spec in drawn}
    assert min(sizes) <= 160 and max(sizes) >= 352 and sizes <= set(NETWORK_RESOLUTIONS)
    assert all(analytic_cost(spec).macs <= 2.0e9 for _, spec in drawn)
    # Stages are jittered apart: some network is not its base scaled by one width multiplier.
    def ratios(spec):
        return [b.channels / a.channels for a, b in zip(spec.stages, spec.stages[1:], strict=False)]
    assert any(ratios(spec) != ratios(load_spec(name.split("_cal")[0])) for name, spec in drawn)
    assert [s for _, s in draw_networks(24, 0)] == [s for _, s in drawn]  # seeded
    assert [s for _, s in draw_networks(24, 1)] != [s for _, s in drawn]


def test_the_benchmarks_unseen_specs_are_never_calibration_networks(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from bench_latency import draw_specs, space_ranges

    def shape(spec):
        return json.dumps({k: v for k, v in spec.model_dump(mode="json").items() if k != "name"}, sort_keys=True)

    calibration = {shape(s) for _, s in draw_networks(24, 0)}
    calibration |= {shape(load_spec(base, o or None)) for _, base, o in REFERENCE_NETWORKS}
    drawn, _ = draw_specs(60, 0, max_macs="4.5G", ranges=space_ranges("sample"))
    assert not calibration & {shape(d.spec) for d in drawn}


# ---------------------------------------------------------------- the joint fit

def test_joint_fit_of_consistent_timings_recovers_every_coefficient():
    """Networks that are exactly the sum of their parts leave the fit nothing to trade: exact recovery."""
    cal = calibrate(device="cpu", batch_size=BATCH, threads=1, blocks_per_stage=6, networks=6, timer=fake_timer,
                    network_timer=parts_sum, network_weight=3.0)
    for kind, truth in TRUE.items():
        assert cal.parts[kind].coefficients == pytest.approx(truth, rel=1e-6, abs=1e-18), kind
    assert cal.network_factor == pytest.approx(1.0, rel=1e-6)
    assert len(cal.references) == len(REFERENCE_NETWORKS) + 6


def test_networks_teach_the_fit_what_a_unit_of_work_costs_in_context():
    """A device whose blocks' memory-bound work costs 40% more inside a network than alone: with the
    networks weighted into the fit, unseen networks are predicted exactly where parts alone and a single
    factor miss."""
    in_network = {**TRUE, "block": (*TRUE["block"][:6], 1.4 * TRUE["block"][6], 1.4 * TRUE["block"][7],
                                    TRUE["block"][8])}

    def network_timer(spec):
        return sum(n * sum(c * f for c, f in zip(in_network[p.kind], p.features(BATCH), strict=True))
                   for p, n in spec_parts(spec))

    common = dict(device="cpu", batch_size=BATCH, threads=1, blocks_per_stage=6, networks=24, timer=fake_timer,
                  network_timer=network_timer)
    joint, alone = calibrate(**common, network_weight=1e4), calibrate(**common)
    unseen = [load_spec("cmt_s"), load_spec("cmt_b", ["resolution=320"]), load_spec(tiny_spec_dict()),
              load_spec("cmt_ti", ["resolution=384", "stages.0.channels=24", "stages.3.channels=512"])]

    def worst(cal):
        return max(abs(predict_latency(s, cal).seconds / network_timer(s) - 1) for s in unseen)
    assert worst(alone) > 0.01  # the single factor cannot follow the shift in the mix of work
    assert worst(joint) < 1e-4


# ---------------------------------------------------------------- drift

def _calls_in_a_run() -> int:
    calls = [0]
    calibrate(device="cpu", batch_size=BATCH, threads=1, blocks_per_stage=6, networks=6,
              timer=lambda part: calls.__setitem__(0, calls[0] + 1) or fake_timer(part),
              network_timer=lambda spec: calls.__setitem__(0, calls[0] + 1) or parts_sum(spec))
    return calls[0]


def _drifting(ramp: float):
    """Fake timers on a machine that slows down linearly by `ramp` over the run (every call counted)."""
    state = {"calls": 0}
    total = _calls_in_a_run()

    def slow(seconds):
        state["calls"] += 1
        return seconds * (1 + ramp * min(1.0, state["calls"] / total))
    return (lambda part: slow(fake_timer(part))), (lambda spec: slow(parts_sum(spec)))


def test_drift_is_corrected():
    """A machine 8% slower at the end than at the start: the timings are scaled back to one speed, and the
    coefficients come out as a steady machine at the reference's median speed would give them."""
    part_timer, network_timer = _drifting(0.08)
    cal = calibrate(device="cpu", batch_size=BATCH, threads=1, blocks_per_stage=6, networks=6, timer=part_timer,
                    network_timer=network_timer, network_weight=0)
    speeds = [d.seconds for d in cal.drift]
    assert len(speeds) >= 3 and speeds[-1] > 1.07 * speeds[0]
    level = cal.reference_seconds / parts_sum(load_spec("cmt_ti"))  # the median speed, relative to steady
    for spec in (load_spec("cmt_s"), load_spec("cmt_b", ["resolution=320"]), load_spec(tiny_spec_dict())):
        # Within 2% (the reference's own calls advance the fake drift between an item and its reading);
        # uncorrected, the early and late timings would sit 4% either side of the level.
        assert predict_latency(spec, cal).seconds == pytest.approx(level * parts_sum(spec), rel=0.02), spec.name


def test_too_much_drift_is_refused_in_one_line():
    part_timer, network_timer = _drifting(0.40)
    with pytest.raises(CalibrationError, match=r"moved \d+% during calibration.*--max-drift") as caught:
        calibrate(device="cpu", batch_size=BATCH, threads=1, blocks_per_stage=6, networks=6, timer=part_timer,
                  network_timer=network_timer)
    assert caught.value.field == "drift"
    part_timer, network_timer = _drifting(0.40)
    allowed = calibrate(device="cpu", batch_size=BATCH, threads=1, blocks_per_stage=6, networks=6,
                        timer=part_timer, network_timer=network_timer, max_drift=0.6)
    assert allowed.drift


def test_one_disturbed_reference_timing_moves_no_correction():
    timed = TimedPlan(seconds=[1.0] * 100, total=100, position={i: i for i in range(100)},
                      reference=[(k * DRIFT_EVERY, s) for k, s in enumerate([0.2, 0.2, 0.5, 0.2, 0.2])])
    record = correct_drift(timed)
    assert [r["smoothed"] for r in record] == [0.2] * 5
    assert timed.seconds == [pytest.approx(1.0)] * 100
    assert smoothed([1.0, 3.0]) == [1.0, 3.0] and smoothed([1.0, 2.0, 3.0, 4.0]) == [1.0, 2.0, 3.0, 4.0]


def test_every_part_is_timed_in_each_pass_at_its_own_place():
    """Two passes: each planned part timed twice, not back to back, and both timings are rows of the fit."""
    order: list = []

    def recording(part):
        order.append(part)
        return fake_timer(part)

    one = calibrate(device="cpu", batch_size=BATCH, threads=1, blocks_per_stage=6, networks=2, timer=recording,
                    network_timer=parts_sum, part_passes=1)
    shapes = list(order)
    order.clear()
    two = calibrate(device="cpu", batch_size=BATCH, threads=1, blocks_per_stage=6, networks=2, timer=recording,
                    network_timer=parts_sum, part_passes=2)
    assert sorted(map(repr, order)) == sorted(map(repr, shapes * 2))
    assert len(two.measurements) == 2 * len(one.measurements) == 2 * len(shapes)
    assert sum(a == b for a, b in zip(order, order[1:], strict=False)) < len(shapes) // 4  # not back to back
    assert {k: m.samples for k, m in two.parts.items()} == {k: 2 * m.samples for k, m in one.parts.items()}
    for spec in ("cmt_ti", "cmt_b"):  # consistent timings: the same model either way
        assert predict_latency(spec, two).seconds == pytest.approx(predict_latency(spec, one).seconds, rel=1e-6)


@pytest.mark.parametrize("passes", [0, 11, True, 1.5])
def test_part_passes_out_of_range_are_refused(passes):
    with pytest.raises(CalibrationError, match="from 1 to 10") as caught:
        calibrate(device="cpu", batch_size=BATCH, threads=1, blocks_per_stage=3, networks=0, timer=fake_timer,
                  part_passes=passes)
    assert caught.value.field == "part_passes"


def test_files_without_drift_read_as_before():
    made = calibrate(device="cpu", batch_size=BATCH, threads=1, blocks_per_stage=3, networks=2, timer=fake_timer,
                     network_timer=parts_sum)
    data = json.loads(made.to_json())
    assert data["drift"]
    data.pop("drift")
    old = calibration_from_dict(data)
    assert old.drift == [] and old.reference_seconds is None
    assert predict_latency("cmt_s", old).seconds > 0


# ---------------------------------------------------------------- what is measured

def test_parts_are_timed_as_the_median_repeat(monkeypatch):
    """As the profiler reports a network: the median of the repeats, not the fastest."""
    from cmt_gen.latency import measure
    from cmt_gen.latency.calibration_file import CalibratedBlockOptions
    from cmt_gen.latency.features import PartShape
    from cmt_gen.profile.settings import resolve_settings
    from cmt_gen.profile.timing import ThroughputRun

    monkeypatch.setattr(measure, "measure_throughput", lambda *a, **k: ThroughputRun(rates=[8.0, 2.0, 4.0]))
    settings = resolve_settings(device="cpu", batch_size=2, threads=1)
    timer = measure.TorchPartTimer(settings, CalibratedBlockOptions(), min_time=0.0, repeats=3)
    assert timer(PartShape("block", 4, 4, 16, 16, 2, 2, 32)) == pytest.approx(2 / 4.0)


def test_the_plain_script_environment_is_the_retain_policy():
    """What the README and the benchmark give a plain script (glibc's tunables) sets what `retain` sets."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from bench_latency import PLAIN_RETAIN_ENV
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    from cmt_gen.profile import host_allocator

    retain = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(host_allocator._KEEP_TRIM_THRESHOLD)}
    assert retain == PLAIN_RETAIN_ENV
    readme = (REPO / "README.md").read_text()
    assert "MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647" in readme


def test_plain_timing_script_times_a_spec(tmp_path):
    specs = tmp_path / "specs.json"
    specs.write_text(json.dumps([load_spec(tiny_spec_dict()).model_dump(mode="json")]))
    done = subprocess.run([sys.executable, "benchmarks/plain_timing.py", str(specs), "--batch-size", "2",
                           "--warmup", "1", "--min-calls", "2", "--min-time", "0", "--repeats", "3"],
                          capture_output=True, text=True,
                          cwd=REPO, env=subprocess_env(), timeout=120)
    assert done.returncode == 0, done.stderr[-600:]
    record = json.loads(done.stdout.splitlines()[0])
    assert record["calls"] >= 3 and 0 < record["seconds"] < 10  # three timed loops, the median kept


# ---------------------------------------------------------------- the GPU path, with fakes

@pytest.fixture
def fake_gpu(monkeypatch):
    """torch.cuda as if one GPU were present: names, properties, and no kernel ever launched."""
    class Props:
        name, major, minor, total_memory = "Fake GPU", 9, 0, 80 << 30

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: Props())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True, raising=False)


def test_gpu_calibration_path_with_fake_timers(fake_gpu):
    """`calibrate --device cuda` resolves the GPU's settings and records the GPU, and predictions and the
    compatibility check hold for it, with no GPU present (gpu_check.sh runs it for real)."""
    cal = calibrate(device="cuda", threads=None, blocks_per_stage=6, networks=4, timer=fake_timer,
                    network_timer=parts_sum)
    assert cal.settings.device_type == "cuda" and cal.settings.device.startswith("cuda")
    assert cal.machine == "Fake GPU" and cal.settings.allocator == "system"
    assert cal.settings.batch_size >= 1 and cal.drift
    assert check_compatible(cal) == []
    assert predict_latency("cmt_s", cal).seconds > 0
