"""The device objects (`cmt_gen.devices`), their pure logic under a faked torch, and the profile request.

This machine has no GPU: the CUDA and MPS answers are checked against
monkeypatched torch functions, the way `tests/test_profiler.py` fakes CUDA
events and memory counters.
"""

from __future__ import annotations

import math

import pytest
import torch

from cmt_gen import devices
from cmt_gen.devices import DEVICE_HELP, KINDS, Device, device_for, find, resolve
from cmt_gen.devices.base import DeviceDefaults, MatmulSizes, MemoryMeter
from cmt_gen.devices.cpu import CPU, cpu_model
from cmt_gen.devices.cuda import CUDA, CudaMemory
from cmt_gen.devices.mps import MPS
from cmt_gen.errors import CmtGenError


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda as if two GPUs were present, the current one cuda:0."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")


# ---------------------------------------------------------------- registry and names

def test_registry_names_every_kind_once():
    assert KINDS == ("cpu", "cuda", "mps")
    assert [device_for(kind) for kind in KINDS] == [CPU, CUDA, MPS]
    assert device_for("cuda:1") is CUDA and find("cuda:3") is CUDA
    assert find("meta") is None
    with pytest.raises(KeyError, match="xpu"):
        device_for("xpu")
    assert DEVICE_HELP == "auto, cpu, cuda, cuda:N or mps"
    assert devices.auto_help() == "auto (CUDA when present, else CPU)"
    assert [d.kind for d in devices.DEVICES.values() if d.host] == ["cpu"]


def test_resolve_names_and_mistakes(monkeypatch, fake_cuda):
    assert resolve(" CPU ") == "cpu"
    assert resolve("auto") == "cuda:0" and resolve("cuda") == "cuda:0" and resolve("cuda:1") == "cuda:1"
    with pytest.raises(CmtGenError, match=r"cuda:2 asked for but there are only 2 CUDA devices \(cuda:0..cuda:1\)") \
            as info:
        resolve("cuda:2")
    assert info.value.field == "device"
    for text in ("cuda:x", "tpu", "", "cpu:0"):
        with pytest.raises(CmtGenError, match=f"unknown device {text!r}; use auto, cpu, cuda, cuda:N or mps"):
            resolve(text)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(CmtGenError, match="there is only 1 CUDA device "):
        resolve("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve("auto") == "cpu"
    with pytest.raises(CmtGenError, match=r"CUDA:0 asked for but CUDA is not available \(torch .*build\); use "
                                          "--device cpu or auto"):
        resolve("CUDA:0")


def test_mps_is_named_not_picked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve("auto") == "cpu"  # as before: auto never picks MPS
    assert resolve("MPS") == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(CmtGenError, match="mps asked for but not available") as info:
        resolve("mps")
    assert info.value.field == "device"


def test_a_new_device_is_one_class_registered(monkeypatch):
    """What an `xpu.py` would hold: a Device subclass; registering it makes every profiler answer work."""
    from cmt_gen.deploy.attention_kernels import default_kernel
    from cmt_gen.profile.memory import memory_meter
    from cmt_gen.profile.settings import compute_dtype_name
    from cmt_gen.profile.timing import Clock

    synced = []

    class XpuDevice(Device):
        kind, label, names = "xpu", "XPU", ("xpu",)
        defaults = DeviceDefaults(batch_size=16, warmup=2, iters=2, min_time=1.0, repeats=3, latency_warmup=1,
                                  latency_samples=5, latency_time=0.5, latency_max_samples=50)
        matmul_sizes = MatmulSizes(start=1024, efficient_call_s=0.005, largest=4096)

        def synchronize(self, device: str) -> None:
            synced.append(device)

    monkeypatch.setitem(devices.DEVICES, "xpu", XpuDevice())
    assert resolve("XPU") == "xpu" and device_for("xpu").defaults.batch_size == 16
    assert Clock("xpu").time(lambda: None, 3) >= 0 and synced == ["xpu", "xpu"]
    assert memory_meter("xpu").method == "unavailable"
    assert default_kernel("xpu") == "sdpa" and compute_dtype_name("xpu", "amp") == "float16"
    assert not device_for("xpu").uses_grad_scaler("float16")


# ---------------------------------------------------------------- what each device answers

def test_budgets_sizes_and_kernels_per_device():
    from cmt_gen.deploy.attention_kernels import KERNELS, default_kernel
    from cmt_gen.profile import peak
    from cmt_gen.profile.settings import DEVICE_DEFAULTS, compute_dtype_name

    assert {k: d.batch_size for k, d in DEVICE_DEFAULTS.items()} == {"cpu": 8, "cuda": 64, "mps": 32}
    assert DEVICE_DEFAULTS["cpu"].min_time == 2.0 and DEVICE_DEFAULTS["cuda"].latency_max_samples == 500
    assert peak.START_SIZE == {"cpu": 1024, "cuda": 4096, "mps": 2048}
    assert peak.EFFICIENT_CALL_S == {"cpu": 0.05, "cuda": 0.002, "mps": 0.005}
    assert peak.MAX_SIZE == {"cpu": 2048, "cuda": 8192, "mps": 4096}
    assert {k: default_kernel(k) for k in KINDS} == {"cpu": "matmul", "cuda": "sdpa", "mps": "sdpa"}
    assert all(device_for(k).attention_kernel in KERNELS for k in KINDS)
    assert {k: compute_dtype_name(k, "amp") for k in KINDS} == {"cpu": "bfloat16", "cuda": "float16",
                                                                 "mps": "float16"}
    assert [k for k in KINDS if device_for(k).uses_grad_scaler("float16")] == ["cuda"]
    assert not CUDA.uses_grad_scaler("bfloat16")


def test_cpu_precision_rules(monkeypatch):
    monkeypatch.setattr(CPU, "native_support", lambda dtype: False)
    with pytest.raises(CmtGenError, match=r"bf16 on cpu: this CPU \(.+\) has no native bfloat16 kernels") as info:
        CPU.check_precision("cpu", "bfloat16", "bf16", allow_slow=False)
    assert info.value.field == "precision" and "--allow-slow-precision" in str(info.value)
    CPU.check_precision("cpu", "bfloat16", "bf16", allow_slow=True)
    monkeypatch.setattr(CPU, "native_support", lambda dtype: None)  # unknown: the op probe decides
    CPU.check_precision("cpu", "float16", "fp16", allow_slow=False)
    monkeypatch.undo()
    assert CPU.native_support("float32") is True and CPU.native_support("bfloat16") in (True, False, None)


def test_cuda_bf16_rule(monkeypatch, fake_cuda):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    with pytest.raises(CmtGenError, match=r"amp \(bfloat16 autocast\) is not supported on cuda:1 \(Fake GPU\); "
                                          "use fp32, fp16 or amp") as info:
        CUDA.check_precision("cuda:1", "bfloat16", "amp (bfloat16 autocast)", allow_slow=False)
    assert info.value.field == "precision"
    CUDA.check_precision("cuda:0", "float16", "fp16", allow_slow=False)  # fp16 runs on every CUDA GPU

    def old_signature() -> bool:  # torch before `including_emulation` existed: a TypeError, then this
        return True

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", old_signature)
    CUDA.check_precision("cuda:0", "bfloat16", "bf16", allow_slow=False)


def test_timing_waits_for_each_device(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append("mps-sync"))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(("cuda-sync", device)))
    assert MPS.time_calls("mps", lambda: calls.append("call"), 2) >= 0
    assert calls == ["mps-sync", "call", "call", "mps-sync"]
    calls.clear()
    CPU.synchronize("cpu")
    assert CPU.time_calls("cpu", lambda: calls.append("call"), 1) >= 0 and calls == ["call"]
    CUDA.synchronize("cuda:1")
    assert calls == ["call", ("cuda-sync", "cuda:1")]


def test_memory_per_device(monkeypatch):
    from cmt_gen.cost.memory_guard import available_memory
    from cmt_gen.devices.host_memory import LinuxRssMemory, MaxRssMemory

    assert isinstance(CPU.memory_meter("cpu"), (LinuxRssMemory, MaxRssMemory))
    assert isinstance(CUDA.memory_meter("cuda:0"), CudaMemory)
    assert type(MPS.memory_meter("mps")) is MemoryMeter and MPS.memory_meter("mps").peak_bytes() is None
    assert abs(CPU.free_memory("cpu") - available_memory()) < 1 << 30  # both read the host's free RAM
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (123 << 20, 1 << 40))
    assert CUDA.free_memory("cuda:0") == 123 << 20
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    CPU.empty_cache("cpu")
    MPS.empty_cache("mps")
    assert emptied == []
    CUDA.empty_cache("cuda:0")
    assert emptied == [True]


def test_out_of_memory_cleanup_empties_only_the_run_device(monkeypatch):
    from cmt_gen.profile.batch import free_device_memory

    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    free_device_memory("cpu")
    assert emptied == []
    free_device_memory("cuda:0")
    free_device_memory()  # as before: auto's device, so the CUDA cache where CUDA is present
    assert emptied == [True, True]


def test_run_flags_are_restored():
    before = torch.backends.cudnn.benchmark
    with CUDA.run_flags():
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark == before
    with CPU.run_flags(), MPS.run_flags():
        assert torch.backends.cudnn.benchmark == before


def test_fingerprints_and_machine_names(monkeypatch, fake_cuda):
    class Props:
        name, major, minor, total_memory = "Fake GPU", 9, 0, 80 << 30

    indices = []
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: indices.append(index) or Props())
    info = CUDA.fingerprint("cuda:1")
    assert indices[0] == 1 and info["device_name"] == "Fake GPU" and info["device_capability"] == "9.0"
    assert info["device_memory_bytes"] == 80 << 30 and "cudnn_benchmark" in info
    assert CUDA.machine_name() == "Fake GPU"
    assert MPS.fingerprint("mps")["device_name"].startswith("Apple MPS (")
    assert MPS.machine_name() is None
    assert CPU.fingerprint("cpu") == {"device_name": cpu_model()} and CPU.machine_name() == cpu_model()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert CUDA.machine_name() is None


def test_host_only_choices_follow_the_device():
    from cmt_gen.profile import env

    assert env.default_threads("cuda:0") == (None, None) and env.default_threads("mps") == (None, None)
    assert env.busy_warning("mps", busy=0.9) is None and "busy" in env.busy_warning("cpu", busy=0.9)
    assert env.default_threads("meta") == (None, None)  # a device this package does not know: not the host


# ---------------------------------------------------------------- percentiles

def _numpy_linear(values, q):
    """The hand-written percentile the profiler used before `statistics` (numpy's default method)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@pytest.mark.parametrize("values", [[5.0], [1, 2, 3, 4], [3.5, 1.25, 9.0], [0.01 * i ** 1.5 for i in range(37)],
                                    [2.0, 2.0, 2.0, 7.5, -1.0]])
def test_percentile_matches_the_old_formula(values):
    from cmt_gen.profile.timing import median, percentile

    for q in (0, 1, 10, 25, 50, 75, 90, 99, 100, 12.5, 99.9):
        assert percentile(values, q) == pytest.approx(_numpy_linear(values, q), rel=1e-12, abs=1e-15), q
    assert median(values) == pytest.approx(_numpy_linear(values, 50), rel=1e-12)
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        median([])


# ---------------------------------------------------------------- the profile request

def test_request_and_keywords_resolve_alike():
    from cmt_gen.profile.settings import ProfileRequest, resolve_settings

    request = ProfileRequest(device="cpu", batch_size=3, threads=1, min_time=0.5)
    assert resolve_settings(request) == resolve_settings(device="cpu", batch_size=3, threads=1, min_time=0.5)
    assert resolve_settings(request, batch_size=5).batch_size == 5  # keywords win over the request
    assert request.batch_size == 3  # frozen: the request itself is unchanged
    with pytest.raises(TypeError, match="resolve_settings\\(\\) got an unexpected keyword argument 'batch'"):
        resolve_settings(device="cpu", batch=3)
    with pytest.raises(TypeError, match="must be a ProfileRequest, not str"):
        resolve_settings("cpu")


def test_profile_model_refuses_an_unknown_keyword_before_building(monkeypatch):
    from cmt_gen.profile import runner

    monkeypatch.setattr(runner, "make_target", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(TypeError, match="profile_model\\(\\) got an unexpected keyword argument 'devise'"):
        runner.profile_model("cmt_ti", devise="cpu")
    with pytest.raises(CmtGenError, match="unknown device 'tpu'"):
        runner.profile_model("cmt_ti", runner.ProfileRequest(device="tpu"))
