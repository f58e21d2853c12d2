"""The deploy form (`CMT.reparameterize()`) computes what the trained form computes, with less."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from conftest import tiny_spec_dict
from torch import nn

from cmt_gen import build_model
from cmt_gen.deploy import rewrite as D
from cmt_gen.deploy.attention_kernels import attend, default_kernel
from cmt_gen.deploy.blocks import FusedConv, TokenLinear
from cmt_gen.deploy.hook import is_deploy_form

REL_TOL = 1e-5  # fp32: max |deploy - trained| / max |trained|


def trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and norm affines, so that every fold moves real numbers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def assert_same_outputs(model: nn.Module, sizes=((2, 64, 64), (1, 96, 64))) -> nn.Module:
    deployed = copy.deepcopy(model).reparameterize()
    with torch.inference_mode():
        for batch, h, w in sizes:
            x = torch.randn(batch, model.spec.in_channels, h, w)
            assert relative_gap(deployed(x), model(x)) < REL_TOL, (batch, h, w)
    return deployed


BLOCK_OPTIONS = [
    {},
    {"reduction_kind": "avgpool"},
    {"reduction_kind": "conv_ln"},
    {"position_bias": "block"},
    {"position_bias": "none"},
    {"position_bias": "table"},
    {"lpu": False},
    {"gelu_approximation": "tanh"},
]


@pytest.mark.parametrize("attention", ["fused", "math"])
@pytest.mark.parametrize("options", BLOCK_OPTIONS,
                         ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "released")
def test_deploy_form_equals_trained_form_for_every_block_option(attention, options) -> None:
    torch.manual_seed(0)
    model = trained_looking(build_model(tiny_spec_dict(block={"attention": attention, **options})))
    deployed = assert_same_outputs(model)
    assert is_deploy_form(deployed)


@pytest.mark.parametrize("name", ["cmt_ti", "cmt_xs", "cmt_s",
                                  pytest.param("cmt_b", marks=pytest.mark.slow),
                                  pytest.param("cmt_l", marks=pytest.mark.slow)])
def test_deploy_form_equals_trained_form_for_the_family(name) -> None:
    torch.manual_seed(0)
    model = trained_looking(build_model(name, overrides=["block.attention=math"]))
    assert_same_outputs(model, sizes=((2, 64, 64),))  # small inputs keep it fast; the bias is resampled


def test_timm_reparameterize_model_gives_the_same_network() -> None:
    from timm.utils.model import reparameterize_model

    torch.manual_seed(0)
    model = trained_looking(build_model(tiny_spec_dict()))
    by_timm = reparameterize_model(model)  # walks the children calling their reparameterize()
    ours = copy.deepcopy(model).reparameterize()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert relative_gap(by_timm(x), model(x)) < REL_TOL
        assert relative_gap(ours(x), model(x)) < REL_TOL
    assert is_deploy_form(by_timm)


def test_each_layer_can_be_deployed_on_its_own_first() -> None:
    """A user who deploys an attention or IRFFN by hand and then the model gets the same network."""
    torch.manual_seed(0)
    model = trained_looking(build_model(tiny_spec_dict(block={"reduction_kind": "conv_ln"})))
    partly = copy.deepcopy(model)
    partly.stages[1].blocks[0].attn.reparameterize()
    partly.stages[1].blocks[0].ffn.reparameterize()
    partly.stages[0].blocks[0].lpu.reparameterize()
    partly.reparameterize()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert relative_gap(partly(x), model(x)) < REL_TOL


def test_deploy_form_holds_no_dead_modules() -> None:
    """Every parameter reaches the output (nudging it moves the logits); no BN is left in blocks or head."""
    torch.manual_seed(0)
    deployed = trained_looking(build_model(tiny_spec_dict())).reparameterize()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        base = deployed(x)
    dead = []
    for name, param in deployed.named_parameters():
        with torch.no_grad():
            param.add_(0.1)  # in place: version counters move, so caches and packed copies follow
        with torch.inference_mode():
            if torch.equal(deployed(x), base):
                dead.append(name)
        with torch.no_grad():
            param.sub_(0.1)
    assert dead == []
    bns = [n for n, m in deployed.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns == ["stem.0.norm", "stem.1.norm", "stem.2.norm"]  # each follows a GELU
    keys = deployed.state_dict().keys()
    assert not any(k.endswith((".k.weight", ".v.weight")) for k in keys)
    assert [k for k in keys if k.endswith("running_mean")] == [f"stem.{i}.norm.running_mean" for i in range(3)]


def test_reparameterize_works_in_train_mode_as_timm_models_do_and_is_idempotent() -> None:
    """timm's scripts reparameterize a freshly created model before `model.eval()`: the folds use
    the running statistics in either mode, so the result is the eval-mode rewrite."""
    torch.manual_seed(0)
    model = trained_looking(build_model(tiny_spec_dict()))
    in_eval = copy.deepcopy(model).reparameterize()
    in_train = copy.deepcopy(model).train().reparameterize().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = model(x)
        assert torch.equal(in_train(x), in_eval(x))
        assert relative_gap(in_train(x), expected) < REL_TOL
        in_eval.reparameterize()
        assert torch.equal(in_eval(x), in_train(x))


def test_an_unknown_attention_kernel_is_refused_before_anything_changes() -> None:
    model = build_model(tiny_spec_dict()).eval()
    before = copy.deepcopy(model.state_dict())
    for call in (lambda: model.reparameterize(attention_kernel="bogus"),
                 lambda: model.stages[0].reparameterize(attention_kernel="bogus")):
        with pytest.raises(ValueError, match="'bogus' is not one of sdpa, matmul"):
            call()
    assert not is_deploy_form(model) and model.state_dict().keys() == before.keys()


def test_position_bias_is_resampled_once_per_size() -> None:
    torch.manual_seed(0)
    model = trained_looking(build_model(tiny_spec_dict()))
    deployed = copy.deepcopy(model).reparameterize()
    stage = deployed.stages[0]
    x = torch.randn(1, 3, 96, 64)
    with torch.inference_mode():
        first = deployed(x)
        cached = dict(stage._bias_cache)
        assert len(cached) == 1  # 96x64 is not the native grid: resampled once...
        second = deployed(x)
        assert stage._bias_cache[next(iter(cached))] is next(iter(cached.values()))  # ...and reused
        assert torch.equal(first, second)
        deployed(torch.randn(1, 3, 64, 64))  # the native grid needs no copy at all
    assert len(stage._bias_cache) == 1


def test_portable_path_equals_onednn_path() -> None:
    """What exporters and compilers see (F.linear / F.conv2d) matches the oneDNN fast path."""
    torch.manual_seed(0)
    deployed = trained_looking(build_model(tiny_spec_dict())).reparameterize()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        fast = deployed(x)
        for m in deployed.modules():
            if isinstance(m, (TokenLinear, FusedConv)):
                m.use_onednn = False
        assert relative_gap(deployed(x), fast) < REL_TOL


def test_attention_kernels_agree_and_cpu_uses_the_measured_winner() -> None:
    q, k, v = torch.randn(2, 3, 20, 8), torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    bias = torch.randn(3, 20, 5)
    assert torch.allclose(attend(q, k, v, bias, "sdpa"), attend(q, k, v, bias, "matmul"), atol=1e-6)
    assert default_kernel("cpu") == "matmul" and default_kernel("cuda") == "sdpa"
    deployed = build_model(tiny_spec_dict()).eval().reparameterize(attention_kernel="sdpa")
    assert {m.kernel for m in deployed.modules() if isinstance(m, D.DeployLightweightMHSA)} == {"sdpa"}


def test_bf16_deploy_form_keeps_the_logits() -> None:
    torch.manual_seed(0)
    model = trained_looking(build_model(tiny_spec_dict()))
    deployed = copy.deepcopy(model).reparameterize().to(torch.bfloat16)
    x = torch.randn(4, 3, 64, 64)
    fp32_deploy = copy.deepcopy(model).reparameterize()
    with torch.inference_mode():
        reference = model(x)
        cos = nn.functional.cosine_similarity(deployed(x.bfloat16()).float(), reference, dim=1)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # AMP: oneDNN steps aside, autocast picks dtypes
            amp = fp32_deploy(x)
    assert cos.min().item() >= 0.999
    assert amp.dtype == torch.bfloat16
    assert nn.functional.cosine_similarity(amp.float(), reference, dim=1).min().item() >= 0.999


def test_a_deploy_model_converted_after_running_repacks_its_weights() -> None:
    """`model.to(dtype)` swaps the data behind the same parameters (their version counters stay):
    the oneDNN packs made for the fp32 weights must not be reused for the bf16 ones, or back."""
    torch.manual_seed(0)
    deployed = trained_looking(build_model(tiny_spec_dict())).reparameterize()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        fp32 = deployed(x)  # packs every weight for fp32
    deployed.to(torch.bfloat16)
    with torch.inference_mode():
        bf16 = deployed(x.bfloat16())
    deployed.to(torch.float32)
    with torch.inference_mode():
        again = deployed(x)
    assert nn.functional.cosine_similarity(bf16.float(), fp32, dim=1).min().item() >= 0.999
    assert relative_gap(again, fp32) < 1e-2  # the weights went through bf16 and back


@pytest.mark.gpu
def test_deploy_form_on_cuda_matches_eager_and_uses_sdpa() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    torch.manual_seed(0)
    model = trained_looking(build_model(tiny_spec_dict())).cuda()
    deployed = copy.deepcopy(model).reparameterize()
    assert {m.kernel for m in deployed.modules() if isinstance(m, D.DeployLightweightMHSA)} == {"sdpa"}
    x = torch.randn(2, 3, 64, 64, device="cuda")
    with torch.inference_mode():
        assert relative_gap(deployed(x), model(x)) < 1e-4  # TF32 may be on
        with torch.autocast("cuda", dtype=torch.bfloat16):
            cos = nn.functional.cosine_similarity(deployed(x).float(), model(x).float(), dim=1)
    assert cos.min().item() >= 0.999


# ---------------------------------------------------------------- profiling what ships

def test_profile_settings_default_to_the_deploy_form_and_check_backends() -> None:
    from cmt_gen.errors import CmtGenError
    from cmt_gen.profile.settings import resolve_settings

    s = resolve_settings(device="cpu")
    assert (s.form, s.backend, s.compile) == ("deploy", "eager", False)
    assert resolve_settings(device="cpu", compile=True).backend == "compile"
    assert resolve_settings(device="cpu", backend="compile").compile
    with pytest.raises(CmtGenError, match="form: unknown form 'fused'"):
        resolve_settings(device="cpu", form="fused")
    with pytest.raises(CmtGenError, match="backend: the onnxruntime backend runs fp32 inference on cpu"):
        resolve_settings(device="cpu", backend="onnxruntime", mode="train")


def test_profile_measures_the_deploy_form_and_leaves_a_callers_model_alone() -> None:
    from dataclasses import replace

    from cmt_gen.profile.backends import compile_options, freezes_weights, prepare_model
    from cmt_gen.profile.settings import resolve_settings
    from cmt_gen.profile.targets import target_from_module

    model = build_model(tiny_spec_dict()).eval()
    target = target_from_module(model)
    settings = resolve_settings(device="cpu")
    deployed = prepare_model(model, target, settings)
    assert is_deploy_form(deployed) and not is_deploy_form(model)
    assert prepare_model(model, target, replace(settings, form="as-built")) is model
    assert prepare_model(model, target, replace(settings, mode="train")) is model
    assert compile_options(settings) == {} and freezes_weights(settings)  # frozen through FrozenCompiled
    assert not freezes_weights(replace(settings, device_type="cuda"))
    assert compile_options(replace(settings, device_type="cuda", compile_mode="max-autotune")) == \
        {"mode": "max-autotune"}
    assert compile_options(replace(settings, device_type="cuda")) == {}


def test_profile_json_says_which_form_it_measured(cli, tiny_spec_file, tmp_path) -> None:
    out = tmp_path / "p.json"
    fast = ["--device", "cpu", "--threads", "1", "--batch-size", "2", "--warmup", "0", "--iters", "1",
            "--min-time", "0", "--repeats", "1"]
    r = cli("profile", tiny_spec_file, *fast, "--form", "as-built", "--json", out)
    assert r.code == 0, r.err
    data = __import__("json").loads(out.read_text())
    assert data["settings"]["form"] == "as-built" and data["settings"]["backend"] == "eager"
    assert "form as-built" in r.out
    r = cli("profile", tiny_spec_file, *fast, "--backend", "tensorrt")
    assert r.code == 2 and "backend: unknown backend 'tensorrt'" in r.err


def test_cpu_bf16_units_and_plain_precision_verdicts(tmp_path) -> None:
    from types import SimpleNamespace

    from cmt_gen.profile.backends import cpu_low_precision_units, describe_cpu_units, precision_verdicts

    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu avx512f avx512_bf16 avx2\n")
    units = cpu_low_precision_units(info)
    assert units["avx512_bf16"] and not units["amx_bf16"]
    assert describe_cpu_units(units) == "bf16/fp16 units: avx512_bf16"
    assert describe_cpu_units({"avx512_bf16": False, "amx_bf16": False}).endswith("none (no avx512_bf16, no AMX)")
    low = [SimpleNamespace(name="cmt_s", ok=True, images_per_s=91.0)]
    fp32 = [SimpleNamespace(name="cmt_s", ok=True, images_per_s=100.0)]
    assert precision_verdicts(low, fp32, "bf16") == [
        "cmt_s: bf16 91.0 img/s vs fp32 100.0 img/s = 0.91x, SLOWER than fp32 on this device"]


def test_non_cpu_path_runs_portable_ops_with_sdpa(monkeypatch) -> None:
    """The path a GPU takes (no oneDNN, SDPA with the float bias), on CPU with oneDNN made absent."""
    from cmt_gen.deploy import onednn

    torch.manual_seed(0)
    model = trained_looking(build_model(tiny_spec_dict()))
    cpu_form = copy.deepcopy(model).reparameterize()
    gpu_like = copy.deepcopy(model).reparameterize(attention_kernel="sdpa")
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = cpu_form(x)
        monkeypatch.setattr(onednn, "_HAVE_ONEDNN", False)
        assert not onednn.onednn_usable(x)
        assert relative_gap(gpu_like(x), expected) < REL_TOL


def test_gpu_report_merges_runs_and_checks_the_3x_target(tmp_path) -> None:
    import json
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "benchmarks"))
    import gpu_report

    def run(form, precision, ips):
        return {"tool": "cmt-gen profile", "env": {"device_name": "H100", "torch": "2.14"},
                "settings": {"form": form, "precision": precision},
                "results": [{"name": "cmt_s", "images_per_s": ips, "batch_size": 64, "latency_p50_ms": 3.0}]}

    (tmp_path / "released_swin_fp32.json").write_text(json.dumps(run("as-built", "fp32", 1000.0)))
    (tmp_path / "deploy_timm_amp.json").write_text(json.dumps(run("deploy", "amp", 3500.0)))
    (tmp_path / "deploy_swin_bf16.json").write_text(json.dumps(run("deploy", "bf16", 2500.0)))
    gpu_report.main([str(tmp_path)])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    verdicts = {v["run"]: v["met"] for v in report["bf16_amp_vs_released_fp32"]}
    assert verdicts == {"deploy_timm_amp": True, "deploy_swin_bf16": False}
    assert "| deploy_timm_amp | cmt_s | deploy | amp | 64 | 3,500.0 | 3.00 | 3.50x |" in \
        (tmp_path / "gpu_check.md").read_text()


def test_new_weights_refresh_the_cached_position_bias() -> None:
    """The bias resampled for an input size is cached; loading new weights must not serve the old one."""
    import copy

    from cmt_gen import build_model

    torch.manual_seed(0)
    deployed = build_model("cmt_ti", overrides=["resolution=64"]).eval().reparameterize()
    x = torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        deployed(x)  # fills the cache at 96x96
    state = {k: v + 0.5 if "position_bias" in k else v for k, v in deployed.state_dict().items()}
    deployed.load_state_dict(state)
    fresh = copy.deepcopy(deployed)
    fresh.apply(lambda m: setattr(m, "_bias_cache", {}) if hasattr(m, "_bias_cache") else None)
    with torch.inference_mode():
        assert torch.equal(deployed(x), fresh(x))


def test_deploy_form_passes_gradients_to_its_input() -> None:
    """The fused oneDNN ops have no autograd formula: with grad enabled the portable ops run instead."""
    from cmt_gen import build_model

    deployed = build_model("cmt_ti", overrides=["resolution=64"]).eval().reparameterize()
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    deployed(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.slow
def test_compiled_deploy_form_matches_eager_with_token_linears_on_onednn(monkeypatch) -> None:
    """Under torch.compile on CPU the token linears become 1x1 convs (packed oneDNN, activation fused),
    and one-head attention keeps its projections (inductor's code for the fold was slower)."""
    from torch.profiler import ProfilerActivity, profile

    from cmt_gen.deploy.attention import DeployLightweightMHSA
    from cmt_gen.export.graph import InferenceGraph
    from cmt_gen.ops import capture
    from cmt_gen.profile.backends import compile_model
    from cmt_gen.profile.settings import resolve_settings

    folds: list[bool] = []
    real_fold = DeployLightweightMHSA._single_head
    monkeypatch.setattr(DeployLightweightMHSA, "_single_head",
                        lambda self, *args: folds.append(capture.is_compiling()) or real_fold(self, *args))
    model = trained_looking(build_model(tiny_spec_dict()).eval()).reparameterize()
    compiled = compile_model(InferenceGraph(model), resolve_settings(device="cpu", backend="compile"))
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = model(x)
        got = compiled(x)
    assert folds == [False]  # eager (stage 1 has one head) folded; the compiled graph did not
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as trace:
        compiled(x)
    assert (got - expected).abs().max() <= REL_TOL * expected.abs().max()
    calls = {event.key: event.count for event in trace.key_averages()}
    assert calls.get("mkldnn::_convolution_pointwise", 0) > 20, calls
    # Only the classifier's (B, C) linear is left to MKL; every token linear went through oneDNN.
    assert calls.get("mkl::_mkl_linear", 0) + calls.get("aten::addmm", 0) <= 1, calls


@pytest.mark.slow
def test_compiled_cpu_inference_freezes_weights():
    """`torch.compile(options={"freezing": True})` is ignored under inference_mode in torch 2.14; ours is not."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from cmt_gen.profile.backends import compile_model
    from cmt_gen.profile.settings import resolve_settings

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(8, 8, 1)).eval()
    x = torch.randn(2, 3, 16, 16)
    compiled = compile_model(model, resolve_settings(device="cpu", backend="compile"))
    with torch.inference_mode():
        expected = model(x)
        assert torch.allclose(compiled(x), expected, atol=1e-5)
        with profile(activities=[ProfilerActivity.CPU]) as trace:
            compiled(x)
    ops = {event.key for event in trace.key_averages()}
    assert "mkldnn::_convolution_pointwise" in ops, sorted(ops)  # pre-packed weights, GELU fused


def _linear_case() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], Callable, Callable]:
    import torch.nn.functional as F

    from cmt_gen.deploy import onednn

    weight, bias = torch.randn(32, 16), torch.randn(32)
    inputs = [torch.randn(2, 10, 16), torch.randn(1, 10, 16), torch.randn(3, 7, 16)]
    return (weight, bias, inputs, lambda x, w, b: onednn.linear(x, w, b, "gelu"),
            lambda x, w, b: F.gelu(F.linear(x, w, b)))


def _depthwise_case() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], Callable, Callable]:
    import torch.nn.functional as F

    from cmt_gen.deploy import onednn

    weight, bias = torch.randn(16, 1, 3, 3), torch.randn(16)
    shapes = ((2, 16, 8, 8), (1, 16, 8, 8), (3, 16, 5, 5))
    inputs = [torch.randn(shape).contiguous(memory_format=torch.channels_last) for shape in shapes]
    return (weight, bias, inputs, lambda x, w, b: onednn.conv2d(x, w, b, 1, 1, 16, "gelu"),
            lambda x, w, b: F.gelu(F.conv2d(x, w, b, 1, 1, 1, 16)))


@pytest.mark.parametrize("case", [_linear_case, _depthwise_case], ids=["linear", "depthwise-conv"])
def test_packed_weights_follow_updates_and_go_with_the_weight(case: Callable) -> None:
    """Packs are made per input shape (at most two kept), redone after an in-place update,
    and dropped with the weight; every shape, packed for or not, gives the right answer."""
    import gc

    from cmt_gen.deploy import onednn

    if not onednn._HAVE_ONEDNN:
        pytest.skip("needs torch's oneDNN ops")
    weight, bias, inputs, fast, reference = case()
    for step in range(2):
        for x in inputs:  # the third shape evicts the first pack
            with torch.inference_mode():
                got = fast(x, weight, bias)
            assert torch.allclose(got, reference(x, weight, bias), atol=1e-5), (step, tuple(x.shape))
        assert len(onednn._PACKED[id(weight)][2]) == onednn.INPUT_KEYS_KEPT
        with torch.no_grad():
            weight.mul_(2)  # in place: the version counter moves, the pack is redone
    key = id(weight)
    assert key in onednn._PACKED
    del weight
    gc.collect()
    assert key not in onednn._PACKED


def test_training_the_deploy_form_is_refused() -> None:
    """Fine-tuning a deploy form once ran without a word while it trained another network (norms
    folded, statistics frozen); now its weights are frozen and train() says why, changing nothing."""
    model = build_model(tiny_spec_dict()).eval().reparameterize()
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(RuntimeError, match="deploy form.*train the model from build_model"):
        model.train()
    assert not any(m.training for m in model.modules())  # refused before any flag changed
    with pytest.raises(RuntimeError, match="deploy form"):
        model.stages[0].train()
    model.eval()  # eval stays allowed
    by_layer = build_model(tiny_spec_dict()).train()  # timm's walk: layer by layer, in train mode
    for child in (by_layer.stem, *by_layer.stages, by_layer.head):
        child.reparameterize()
    assert not any(p.requires_grad for p in by_layer.parameters())
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    by_layer(x).sum().backward()  # the input still gets its gradient (saliency, attacks)
    assert x.grad is not None


def test_the_deploy_form_follows_writes_through_data() -> None:
    """`p.data.copy_(new)` moves no version counter; the packed weights and cached biases once kept the
    old values (outputs off by 2.1 relative). A sample of each weight's bytes now notices."""
    torch.manual_seed(0)
    deployed = trained_looking(build_model(tiny_spec_dict()).eval()).reparameterize()
    sizes = [torch.randn(2, 3, 64, 64), torch.randn(1, 3, 96, 128)]  # the second resamples (and caches) the bias
    with torch.inference_mode():
        for x in sizes:
            deployed(x)  # packs and bias caches made
    with torch.no_grad():
        for p in deployed.parameters():
            p.data.copy_(p.data * 1.5 + 0.01)
    fresh = copy.deepcopy(deployed)  # new parameter objects: nothing cached for them
    with torch.inference_mode():
        for x in sizes:
            assert relative_gap(deployed(x), fresh(x)) < REL_TOL
