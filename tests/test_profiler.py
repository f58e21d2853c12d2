"""Profiler: honest timing and memory, settings checked up front, robust runs, records on disk.

Fast tests run a tiny CMT (64x64, a few blocks) with budgets of a few hundredths
of a second; GPU paths are exercised with fakes of torch.cuda here and for real
in the `gpu` tests when a CUDA device is present.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_spec_dict

from cmt_gen.errors import CmtGenError

FAST = dict(device="cpu", batch_size=2, warmup=1, iters=1, min_time=0.02, repeats=2, threads=1)
CLI_FAST = ("--device", "cpu", "--batch-size", "2", "--warmup", "1", "--min-time", "0.02", "--repeats", "2",
            "--threads", "1")


@pytest.fixture
def quick_peak(monkeypatch):
    """A matmul peak measured in a few milliseconds: CLI tests are about plumbing, not precision."""
    from cmt_gen.profile import peak as profile_peak
    from cmt_gen.profile import runner as profiler

    def fast(device, dtype_name="float32", **_):
        return profile_peak.measure_matmul_peak(device, dtype_name, window_s=0.01, windows=1)

    monkeypatch.setitem(profile_peak.START_SIZE, "cpu", 256)
    monkeypatch.setitem(profile_peak.MAX_SIZE, "cpu", 256)
    monkeypatch.setattr(profiler, "measure_matmul_peak", fast)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_peak_tries_every_product_torch_has_and_they_agree(dtype):
    """The deploy form's linears run through oneDNN, which on AMD CPUs is about twice MKL's
    `a @ b`; a peak from `a @ b` alone made the deploy form read as 127% of peak."""
    from cmt_gen.deploy import onednn
    from cmt_gen.profile import peak as profile_peak

    a, b = torch.randn(64, 64, dtype=dtype), torch.randn(64, 64, dtype=dtype)
    trusted = onednn._HAVE_ONEDNN and onednn.linear_case_ok(dtype)  # bf16 needs AVX-512 or AVX-NE-CONVERT
    with torch.inference_mode():
        products = profile_peak._products("cpu", a, b)
        assert set(products) == ({"matmul", "oneDNN"} if trusted else {"matmul"})
        for kernel, product in products.items():
            tol = {"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 0.1}
            torch.testing.assert_close(product().float(), a.float() @ b.float(), **tol, msg=kernel)
    peak = profile_peak.measure_matmul_peak("cpu", str(dtype).removeprefix("torch."), window_s=0.01, windows=1)
    assert peak.kernel in products and peak.macs_per_s > 0


def write_spec(folder: Path, name: str, **changes) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_spec_dict(name=name, **changes), sort_keys=False))
    return path


def canonical_sha(spec) -> str:
    from cmt_gen.spec.serialize import spec_to_dict

    text = json.dumps(spec_to_dict(spec), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- results

def test_result_fields_are_sane(quick_peak):
    from cmt_gen import analytic_cost, load_spec, profile_model

    spec = load_spec(tiny_spec_dict())
    result = profile_model(spec, **FAST)
    assert result.ok and result.error is None
    assert result.name == "tiny" and result.kind == "cmt" and result.resolution == 64
    assert result.spec_hash == canonical_sha(spec)
    assert result.batch_size == 2 and result.batches_tried == [2]
    assert len(result.images_per_s_repeats) == 2
    assert result.images_per_s_min <= result.images_per_s <= result.images_per_s_max
    assert result.images_per_s > 0 and 0 <= result.spread < 1
    assert result.latency_batch == 1 and result.latency_samples >= 10
    assert 0 < result.latency_p50_ms <= result.latency_p90_ms
    cost = analytic_cost(spec)
    assert result.macs_per_image == cost.macs and result.macs_source == "analytic"
    assert result.params == cost.params
    assert result.achieved_macs_per_s == pytest.approx(cost.macs * result.images_per_s)
    assert result.peak_macs_per_s > 0
    assert result.fraction_of_peak == pytest.approx(result.achieved_macs_per_s / result.peak_macs_per_s)
    deployed = __import__("cmt_gen").build_model(spec).eval().reparameterize()  # what profile measures by default
    assert result.settings["form"] == "deploy"
    assert result.weights_bytes == sum(t.numel() * t.element_size() for t in [*deployed.parameters(),
                                                                             *deployed.buffers()])
    assert result.peak_memory_bytes is not None and result.memory_method
    assert result.settings["device"] == "cpu" and result.settings["precision"] == "fp32"
    assert result.settings["repeats"] == 2 and result.settings["mode"] == "infer"
    assert result.compile_seconds is None
    assert result.env["torch"] == torch.__version__ and result.env["torch_threads"] == 1


def test_threads_are_set_for_the_run_and_restored(monkeypatch):
    from cmt_gen import profile_model

    before = torch.get_num_threads()
    calls = []
    # Record instead of switching: two threads on a busy 2-core box only measure contention.
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    profile_model(tiny_spec_dict(), **{**FAST, "threads": 2}, measure_peak=False)
    assert calls == [2, before]


def test_paper_throughput_only_for_the_papers_network():
    from cmt_gen.profile.targets import paper_throughput_of
    from cmt_gen.spec.loading import load_spec

    assert paper_throughput_of(load_spec("cmt_s")) == 562.5
    assert paper_throughput_of(load_spec("cmt_s", ["stages.2.depth=4"])) is None


def test_train_mode_runs_and_leaves_a_callers_module_untouched():
    from cmt_gen import build_model, profile_model

    model = build_model(tiny_spec_dict()).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = profile_model(model, mode="train", **FAST, measure_peak=False)
    assert result.ok and result.settings["mode"] == "train"
    assert result.settings["form"] == "as-built"  # what it measured (once recorded as deploy)
    assert result.latency_batch == 2  # train mode times whole steps at the training batch
    assert result.achieved_macs_per_s == pytest.approx(3 * result.macs_per_image * result.images_per_s)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training


def test_train_mode_refuses_the_deploy_form_by_name():
    from cmt_gen.errors import CmtGenError
    from cmt_gen.profile.settings import resolve_settings

    with pytest.raises(CmtGenError, match="form: the deploy form is for inference"):
        resolve_settings(device="cpu", mode="train", form="deploy")
    assert resolve_settings(device="cpu", mode="train").form == "as-built"
    assert resolve_settings(device="cpu").form == "deploy"


@pytest.mark.parametrize("fails", [False, True])
def test_onnxruntime_backend_leaves_no_temporary_folder(tmp_path, monkeypatch, fails):
    """Each model's exported file once stayed behind in a cmt-gen-ort-* folder of the temp dir; now it goes
    once the session holds the model, and when the export or the load fails. (The export itself is
    tested in test_export.py; here it is a stand-in, so the test takes no ONNX export's time.)"""
    import tempfile

    from cmt_gen import build_model
    from cmt_gen.export import formats
    from cmt_gen.profile import backends
    from cmt_gen.profile.settings import resolve_settings

    def write(fmt, graph, example, stride, path):
        Path(path).write_bytes(b"stand-in")

    def load(fmt, path, threads=None):
        if fails:
            raise RuntimeError("onnxruntime could not load it")
        return lambda x: x

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(formats, "write_export", write)
    monkeypatch.setattr(formats, "load_runner", load)
    settings = resolve_settings(device="cpu", backend="onnxruntime", threads=1)
    model = build_model(tiny_spec_dict()).eval()
    if fails:
        with pytest.raises(RuntimeError, match="could not load"):
            backends.make_runner(model, None, settings, torch.randn(1, 3, 64, 64))
    else:
        runner, seconds = backends.make_runner(model, None, settings, torch.randn(1, 3, 64, 64))
        assert seconds is not None and seconds >= 0
    assert list(tmp_path.iterdir()) == []


def test_train_mode_really_steps_the_optimizer(monkeypatch):
    from cmt_gen import profile_model

    steps = []
    original = torch.optim.AdamW.step

    def counting(self, *args, **kwargs):
        steps.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting)
    result = profile_model(tiny_spec_dict(), mode="train", **FAST, measure_peak=False)
    # one warm-up call, two repeats of >= 1 call, >= 10 latency samples plus one latency warm-up (and the primer's)
    assert len(steps) >= 1 + 2 + 10 + 1
    assert sum(result.calls_per_repeat) >= 2


def test_a_module_without_a_spec_gets_measured_macs():
    from cmt_gen import profile_model

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    model(torch.zeros(1, 3, 16, 16))
    result = profile_model(model, resolution=16, **FAST, measure_peak=False)
    assert result.kind == "module" and result.macs_source == "FlopCounterMode/2"
    assert result.macs_per_image == 16 * 16 * 8 * 3 * 9 + 8 * 16 * 16 * 5
    with pytest.raises(CmtGenError, match="resolution"):
        profile_model(model, **FAST, measure_peak=False)


def test_measured_macs_count_fused_attention():
    """FlopCounterMode does not see CPU's fused attention kernel; counting forces the math path."""
    from cmt_gen import analytic_cost, build_model
    from cmt_gen.profile.targets import count_macs

    model = build_model(tiny_spec_dict())
    assert model.spec.block.attention.value == "fused"
    assert count_macs(model, 64) == analytic_cost(model.spec).macs


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-model RSS peak needs Linux clear_refs")
def test_cpu_peak_memory_is_per_model():
    """A model that touches 64 MiB shows it; a small one measured after it is not charged for it."""
    from cmt_gen.profile.memory import can_reset_rss_peak
    from cmt_gen.profile.runner import run_profiles
    from cmt_gen.profile.settings import resolve_settings
    from cmt_gen.profile.targets import target_from_module

    if not can_reset_rss_peak():
        pytest.skip("/proc/self/clear_refs is not writable here")
    hog_bytes = 64 << 20

    class Hog(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x.sum() + torch.ones(hog_bytes // 4).sum() * self.w

    settings = resolve_settings(**{k: v for k, v in FAST.items()})
    targets = [target_from_module(Hog(), resolution=8, name="hog"),
               target_from_module(torch.nn.Conv2d(3, 4, 1), resolution=8, name="small")]
    run = run_profiles(targets, settings, measure_peak=False)
    hog, small = run.results
    assert hog.peak_memory_bytes >= 0.97 * hog_bytes  # freed heap returned meanwhile may offset a little
    assert small.peak_memory_bytes < hog_bytes // 4


# ---------------------------------------------------------------- robustness

def test_a_failing_model_is_reported_and_the_others_still_run():
    from cmt_gen.profile.runner import run_profiles
    from cmt_gen.profile.settings import resolve_settings
    from cmt_gen.profile.targets import ModelTarget, target_from_spec
    from cmt_gen.spec.loading import load_spec

    def broken():
        raise RuntimeError("exploded while building")

    good = target_from_spec(load_spec(tiny_spec_dict()))
    bad = ModelTarget(name="broken", kind="module", resolution=64, in_channels=3, build=broken, content_hash="x",
                      macs=1)
    run = run_profiles([good, bad, target_from_spec(load_spec(tiny_spec_dict(name="again")))],
                       resolve_settings(**FAST), measure_peak=False)
    assert [r.name for r in run.results] == ["tiny", "broken", "again"]
    assert run.results[0].ok and run.results[2].ok
    assert run.results[1].error == "RuntimeError: exploded while building"
    assert run.failed == [run.results[1]] and not run.interrupted


def test_ctrl_c_keeps_the_finished_models():
    from cmt_gen.profile.runner import run_profiles
    from cmt_gen.profile.settings import resolve_settings
    from cmt_gen.profile.targets import ModelTarget, target_from_spec
    from cmt_gen.spec.loading import load_spec

    def interrupt():
        raise KeyboardInterrupt

    stop = ModelTarget(name="stop", kind="module", resolution=64, in_channels=3, build=interrupt, content_hash="x",
                       macs=1)
    tiny = target_from_spec(load_spec(tiny_spec_dict()))
    run = run_profiles([tiny, stop, tiny], resolve_settings(**FAST), measure_peak=False)
    assert run.interrupted and [r.name for r in run.results] == ["tiny"] and run.results[0].ok


def test_batch_ladder():
    from cmt_gen.profile.batch import batch_ladder

    assert batch_ladder(256) == [256, 192, 128, 96, 64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1]
    assert batch_ladder(100) == [100, 96, 64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1]
    assert batch_ladder(1) == [1]
    assert batch_ladder(1024)[:4] == [1024, 768, 512, 384]


def test_out_of_memory_decays_the_batch():
    from cmt_gen.profile.batch import run_with_batch_decay

    calls, cleanups = [], []

    def fake_runner(batch: int) -> str:
        calls.append(batch)
        if batch > 100:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory at batch {batch}")
        return f"measured at {batch}"

    outcome = run_with_batch_decay(fake_runner, 256, cleanup=lambda: cleanups.append(1))
    assert outcome.value == "measured at 96" and outcome.batch == 96
    assert outcome.tried == calls == [256, 192, 128, 96] and outcome.decayed
    assert len(cleanups) == 3


def test_other_errors_do_not_decay_and_memory_can_run_out_everywhere():
    from cmt_gen.profile.batch import OutOfMemoryAtSmallestBatch, is_out_of_memory, run_with_batch_decay

    def broken(batch: int):
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError):
        run_with_batch_decay(broken, 64, cleanup=lambda: None)

    def never_fits(batch: int):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(OutOfMemoryAtSmallestBatch, match="64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1"):
        run_with_batch_decay(never_fits, 64, cleanup=lambda: None)
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_out_of_memory_decay_end_to_end():
    """A model that 'runs out of memory' above batch 5 is measured at 4 and says so."""
    from cmt_gen import profile_model

    class Fussy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            if x.shape[0] > 5:
                raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} GiB")
            return self.conv(x)

    result = profile_model(Fussy(), resolution=16, **{**FAST, "batch_size": 16}, measure_peak=False)
    assert result.ok and result.batch_size == 4 and result.batches_tried == [16, 12, 8, 6, 4]
    assert any("16 -> 12 -> 8 -> 6 -> 4" in note for note in result.notes)


# ---------------------------------------------------------------- settings

def test_protocols_and_explicit_values(monkeypatch):
    from cmt_gen.profile.settings import resolve_settings

    swin = resolve_settings(device="cpu", protocol="swin")
    assert (swin.batch_size, swin.precision, swin.protocol) == (64, "fp32", "swin")
    assert resolve_settings(device="cpu", protocol="swin", batch_size=3).batch_size == 3
    default = resolve_settings(device="cpu")
    assert (default.batch_size, default.precision, default.repeats) == (8, "fp32", 5)
    monkeypatch.setattr("cmt_gen.devices.cpu.CPU.native_support", lambda dtype: True)
    timm_like = resolve_settings(device="cpu", protocol="timm")
    assert (timm_like.batch_size, timm_like.precision, timm_like.compute_dtype) == (256, "amp", "bfloat16")
    with pytest.raises(CmtGenError, match="largest batch"):
        resolve_settings(device="cpu", protocol="deit")
    with pytest.raises(CmtGenError, match="unknown protocol"):
        resolve_settings(device="cpu", protocol="vit")


def test_precision_the_cpu_only_emulates_is_refused(monkeypatch):
    from cmt_gen.profile.settings import resolve_settings

    monkeypatch.setattr("cmt_gen.devices.cpu.CPU.native_support", lambda dtype: False)
    for precision in ("fp16", "bf16", "amp"):
        with pytest.raises(CmtGenError, match="--allow-slow-precision"):
            resolve_settings(device="cpu", precision=precision)
    assert resolve_settings(device="cpu", precision="bf16", allow_slow_precision=True).compute_dtype == "bfloat16"


def test_precision_that_fails_on_the_device_is_refused(monkeypatch):
    from cmt_gen.profile import settings as profile_settings

    monkeypatch.setattr("cmt_gen.devices.cpu.CPU.native_support", lambda dtype: True)
    monkeypatch.setattr(profile_settings, "_probe_ops", lambda *a: '"slow_conv2d_cpu" not implemented for \'Half\'')
    with pytest.raises(CmtGenError, match="fp16 cannot run on cpu: \"slow_conv2d_cpu\" not implemented"):
        profile_settings.resolve_settings(device="cpu", precision="fp16")


def test_device_checks_with_a_fake_cuda(monkeypatch):
    from cmt_gen.profile.settings import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto") == "cuda:0" and resolve_device("cuda") == "cuda:0"
    assert resolve_device("CUDA:0") == "cuda:0"
    with pytest.raises(CmtGenError, match="only 1 CUDA device"):
        resolve_device("cuda:1")
    with pytest.raises(CmtGenError, match="unknown device"):
        resolve_device("cuda:x")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(CmtGenError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_bad_numbers_are_refused():
    from cmt_gen.profile.settings import resolve_settings

    for field, value in (("batch_size", 0), ("repeats", 0), ("iters", -1), ("warmup", -1), ("threads", 0),
                         ("min_time", float("nan"))):
        with pytest.raises(CmtGenError, match=field):
            resolve_settings(device="cpu", **{field: value})
    with pytest.raises(CmtGenError, match="unknown mode"):
        resolve_settings(device="cpu", mode="eval")
    with pytest.raises(CmtGenError, match="unknown compile mode"):
        resolve_settings(device="cpu", compile_mode="fastest")


def test_busy_machine_warning(monkeypatch):
    from cmt_gen.profile import env as profile_env

    monkeypatch.setattr(profile_env, "cpu_busy_fraction", lambda: 0.9)
    assert "90% of its" in profile_env.busy_warning("cpu")
    assert profile_env.busy_warning("cuda:0") is None
    monkeypatch.setattr(profile_env, "cpu_busy_fraction", lambda: 0.05)
    assert profile_env.busy_warning("cpu") is None


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs /proc/stat")
def test_cpu_busy_fraction_sees_a_spinning_thread():
    import os
    import threading
    import time

    from cmt_gen.profile.env import cpu_busy_fraction

    stop = time.perf_counter() + 0.6
    spinner = threading.Thread(target=lambda: [None for _ in iter(lambda: time.perf_counter() < stop, False)])
    spinner.start()
    busy = cpu_busy_fraction(0.3)
    spinner.join()
    assert busy is not None and busy >= 0.5 / (os.cpu_count() or 1)


# ---------------------------------------------------------------- timing and memory with fake CUDA

def test_cuda_clock_uses_events(monkeypatch):
    from cmt_gen.profile.timing import Clock

    log = []

    class FakeEvent:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.name = "start" if not any(e[0] == "new" for e in log) else "end"
            log.append(("new", self.name))

        def record(self):
            log.append(("record", self.name))

        def synchronize(self):
            log.append(("sync", self.name))

        def elapsed_time(self, other):
            return 250.0  # milliseconds, as CUDA reports

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append(("device-sync", device)))
    seconds = Clock("cuda:0").time(lambda: log.append(("call", None)), 3)
    assert seconds == 0.25
    assert [e[0] for e in log] == ["device-sync", "new", "new", "record", "call", "call", "call", "record", "sync"]


def test_cuda_memory_meter_subtracts_the_baseline(monkeypatch):
    from cmt_gen.profile.memory import CudaMemory, memory_meter

    state = {"allocated": 100, "peak": 100}
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                        lambda device=None: state.update(peak=state["allocated"]))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: state["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: state["peak"])
    meter = memory_meter("cuda:0")
    assert isinstance(meter, CudaMemory)
    meter.start()
    state.update(allocated=600, peak=5000)  # weights, then a failed big attempt
    meter.reset_peak()
    state.update(peak=1600)
    assert meter.peak_bytes() == 1500


def test_throughput_plans_calls_from_the_warm_up_pace():
    from cmt_gen.profile.timing import calls_for, measure_throughput, percentile

    class FakeClock:
        def __init__(self):
            self.calls = []

        def time(self, fn, n=1):
            self.calls.append(n)
            return 0.01 * n  # 10 ms a call

    clock = FakeClock()
    run = measure_throughput(lambda: None, 4, clock, warmup=2, iters=1, min_time=0.1, repeats=3)
    assert clock.calls == [1, 1, 10, 10, 10]
    assert run.rates == pytest.approx([400.0] * 3)
    assert calls_for(None, 5, 1.0) == 5 and calls_for(0.5, 1, 0.0) == 1 and calls_for(0.3, 1, 1.0) == 4
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([5], 90) == 5
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90) == pytest.approx(9.1)


# ---------------------------------------------------------------- peers

def test_peer_syntax_and_missing_timm(monkeypatch):
    from cmt_gen.profile.peers import parse_peer, require_timm

    assert parse_peer("timm:efficientnet_b3@300") == ("efficientnet_b3", 300)
    assert parse_peer("timm:swin_tiny_patch4_window7_224") == ("swin_tiny_patch4_window7_224", None)
    with pytest.raises(CmtGenError, match="timm:<model name>"):
        parse_peer("timm:")
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(CmtGenError, match=r"pip install 'cmt-gen\[timm\]'"):
        require_timm()


def test_broken_timm_names_the_install_line(monkeypatch, tmp_path):
    from cmt_gen.profile.peers import KNOWN_GOOD_PAIR, require_timm

    fake = tmp_path / "timm"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.delitem(sys.modules, "timm", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(CmtGenError, match="torchvision::nms") as info:
        require_timm()
    assert KNOWN_GOOD_PAIR in str(info.value) and torch.__version__ in str(info.value)


def test_paper_ratios_come_from_table2():
    pytest.importorskip("cmt_gen.cost.table2")
    from cmt_gen.profile.peers import paper_row_for, throughput_ratios
    from cmt_gen.profile.runner import ProfileResult

    swin = paper_row_for("swin_tiny_patch4_window7_224")
    assert swin.model == "Swin-T" and swin.throughput == 755.2 and swin.exact
    port = paper_row_for("efficientnet_b3")
    assert port.model == "EfficientNet-B3" and port.resolution == 300 and not port.exact

    def fake(name, kind, measured, paper):
        return ProfileResult(name=name, kind=kind, spec_hash="h", source=None, resolution=224, settings={},
                             images_per_s=measured, paper_throughput=paper)

    ratios = throughput_ratios([fake("cmt_s", "cmt", 50.0, 562.5),
                                fake("swin_tiny_patch4_window7_224", "timm", 40.0, 755.2)])
    assert len(ratios) == 1
    assert ratios[0].paper == pytest.approx(0.745, abs=5e-4) and ratios[0].measured == 1.25


def test_timm_peer_profiles_beside_cmt(quick_peak, cli, tmp_path):
    pytest.importorskip("timm", exc_type=ImportError)
    spec = write_spec(tmp_path, "tiny")
    out = tmp_path / "run.json"
    result = cli("profile", spec, "--compare", "timm:resnet18@64", *CLI_FAST, "--json", out)
    assert result.code == 0, result.err
    payload = json.loads(out.read_text())
    names = [r["name"] for r in payload["results"]]
    assert names == ["tiny", "resnet18"]
    peer = payload["results"][1]
    assert peer["kind"] == "timm" and peer["resolution"] == 64 and peer["macs_source"] == "FlopCounterMode/2"
    assert peer["params"] == 11_689_512 and peer["macs_per_image"] > 0
    ratio = payload["ratios"][0]
    assert ratio["measured"] == pytest.approx(payload["results"][0]["images_per_s"] / peer["images_per_s"])
    assert "throughput ratios" in result.out


# ---------------------------------------------------------------- CLI

def test_cli_writes_json_and_csv_atomically(quick_peak, cli, tmp_path, monkeypatch):
    import csv

    from cmt_gen import files
    from cmt_gen.spec.loading import load_spec

    written = []
    real_write = files.write_atomic

    def recording(path, data):
        written.append(Path(path).name)
        return real_write(path, data)

    monkeypatch.setattr(files, "write_atomic", recording)
    first, second = write_spec(tmp_path, "tiny"), write_spec(tmp_path, "tiny_b", num_classes=7)
    out_json, out_csv = tmp_path / "out.json", tmp_path / "out.csv"
    result = cli("profile", first, second, *CLI_FAST, "--json", out_json, "--csv", out_csv)
    assert result.code == 0, result.err
    assert sorted(written) == ["out.csv", "out.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.json", "tiny.yaml", "tiny_b.yaml"]
    payload = json.loads(out_json.read_text())
    hashes = {r["name"]: r["spec_hash"] for r in payload["results"]}
    assert hashes == {"tiny": canonical_sha(load_spec(first)), "tiny_b": canonical_sha(load_spec(second))}
    assert payload["settings"]["batch_size"] == 2 and payload["env"]["torch"] == torch.__version__
    assert payload["matmul_peak"]["macs_per_s"] > 0 and payload["interrupted"] is False
    rows = list(csv.DictReader(out_csv.open()))
    assert [(r["name"], r["spec_hash"]) for r in rows] == list(hashes.items())
    assert float(rows[0]["images_per_s"]) == pytest.approx(payload["results"][0]["images_per_s"])
    assert "tiny_b" in result.out and "img/s" in result.out


@pytest.mark.parametrize(("args", "message"), [
    (("--device", "tpu"), "error: device: unknown device 'tpu'"),
    (("--precision", "fp64"), "error: precision: unknown precision 'fp64'"),
    (("--batch-size", "0"), "error: batch_size: must be a whole number >= 1"),
    (("--compare", "resnet50"), "error: resnet50: compare: a peer is written timm:"),
])
def test_cli_mistakes_exit_2_with_one_line_before_any_model(cli, tmp_path, monkeypatch, args, message):
    from cmt_gen.profile import runner as profiler

    monkeypatch.setattr(profiler, "measure_target", lambda *a, **k: pytest.fail("a model ran"))
    result = cli("profile", write_spec(tmp_path, "tiny"), *args)
    assert result.code == 2
    assert result.err.strip().startswith(message) and len(result.err.strip().splitlines()) == 1


def test_cli_cuda_without_cuda_exits_2(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = cli("profile", write_spec(tmp_path, "tiny"), "--device", "cuda")
    assert result.code == 2 and "CUDA is not available" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_cli_emulated_precision_exits_2(cli, tmp_path, monkeypatch):
    monkeypatch.setattr("cmt_gen.devices.cpu.CPU.native_support", lambda dtype: False)
    result = cli("profile", write_spec(tmp_path, "tiny"), "--device", "cpu", "--precision", "fp16")
    assert result.code == 2 and "no native float16" in result.err


def test_cli_missing_timm_exits_2(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    result = cli("profile", write_spec(tmp_path, "tiny"), "--compare", "timm:resnet50", "--device", "cpu")
    assert result.code == 2 and "pip install" in result.err


def test_cli_failure_row_and_exit_1(quick_peak, cli, tmp_path, monkeypatch):
    from cmt_gen.profile import runner as profiler

    real = profiler.measure_target

    def sometimes(target, settings, **kwargs):
        if target.name == "tiny_b":
            raise RuntimeError("kernel went away")
        return real(target, settings, **kwargs)

    monkeypatch.setattr(profiler, "measure_target", sometimes)
    out = tmp_path / "r.json"
    result = cli("profile", write_spec(tmp_path, "tiny"), write_spec(tmp_path, "tiny_b"),
                 write_spec(tmp_path, "tiny_c"), *CLI_FAST, "--json", out)
    assert result.code == 1 and "1 of 3 model(s) failed" in result.err
    assert "tiny_b" in result.out and "tiny_c" in result.out
    records = json.loads(out.read_text())["results"]
    assert [r["error"] is None for r in records] == [True, False, True]


def test_cli_ctrl_c_still_writes_the_finished_models(quick_peak, cli, tmp_path, monkeypatch):
    from cmt_gen.profile import runner as profiler

    real = profiler.measure_target

    def interrupted(target, settings, **kwargs):
        if target.name == "tiny_b":
            raise KeyboardInterrupt
        return real(target, settings, **kwargs)

    monkeypatch.setattr(profiler, "measure_target", interrupted)
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    result = cli("profile", write_spec(tmp_path, "tiny"), write_spec(tmp_path, "tiny_b"),
                 write_spec(tmp_path, "tiny_c"), *CLI_FAST, "--json", out_json, "--csv", out_csv)
    assert result.code == 130 and "interrupted" in result.err
    payload = json.loads(out_json.read_text())
    assert payload["interrupted"] is True and [r["name"] for r in payload["results"]] == ["tiny"]
    assert len(out_csv.read_text().splitlines()) == 2


def test_help_does_not_import_torch():
    code = ("import sys\nfrom cmt_gen.cli.app import main\ntry:\n    main(['profile', '--help'])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "--protocol" in proc.stdout and proc.stderr.strip().splitlines()[-1] == "False"


def test_api_is_exported():
    import cmt_gen
    from cmt_gen.profile.runner import profile_model

    assert cmt_gen.profile_model is profile_model


# ---------------------------------------------------------------- slow and GPU

@pytest.mark.slow
def test_compile_time_is_reported_separately(monkeypatch):
    """Compiled with dynamo's eager backend: the plumbing, without minutes of inductor codegen on 2 cores."""
    from cmt_gen import profile_model

    real_compile = torch.compile
    compiled = []

    def eager_compile(model, **kwargs):
        compiled.append(kwargs)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    result = profile_model(tiny_spec_dict(), compile_mode="reduce-overhead", **FAST, measure_peak=False)
    assert result.ok and result.compile_seconds > 0 and result.settings["compile"]
    assert compiled == [{"mode": "reduce-overhead"}]


@pytest.mark.slow
def test_channels_last_runs():
    from cmt_gen import profile_model

    result = profile_model(tiny_spec_dict(), channels_last=True, **FAST, measure_peak=False)
    assert result.ok and result.settings["channels_last"]


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_gpu_profile_measures_events_and_peak_allocated():
    from cmt_gen import profile_model

    result = profile_model(tiny_spec_dict(), device="cuda", batch_size=8, warmup=3, min_time=0.05, repeats=3)
    assert result.ok and result.settings["device"].startswith("cuda:")
    assert "cuda peak allocated" in result.memory_method
    assert result.peak_memory_bytes >= result.weights_bytes
    assert result.env["device_name"] and result.fraction_of_peak is not None and result.fraction_of_peak < 1.5


@pytest.mark.gpu
@needs_cuda
def test_gpu_amp_and_train():
    from cmt_gen import profile_model

    result = profile_model(tiny_spec_dict(), device="cuda", precision="amp", mode="train", batch_size=8, warmup=2,
                           min_time=0.05, repeats=2)
    assert result.ok and result.settings["compute_dtype"] == "float16"


@pytest.mark.gpu
@needs_cuda
def test_gpu_real_out_of_memory_decays():
    """A batch far beyond the card's memory decays to one that fits."""
    from cmt_gen import profile_model

    free, _total = torch.cuda.mem_get_info()
    per_image = 3 * 1024 * 1024 * 4 * 20  # input plus activations of a 1024x1024 tiny CMT, roughly
    start = 1 << max(1, int(free // per_image).bit_length() + 2)
    spec = tiny_spec_dict(resolution=1024)
    spec["stages"][0]["reduction"] = 8
    result = profile_model(spec, device="cuda", batch_size=start, warmup=1, min_time=0.01, repeats=1,
                           measure_peak=False)
    assert result.ok and result.batches_tried[0] == start and result.batch_size < start
