"""The deploy form (`CMT.reparameterize()`) computes what the trained form computes, with less."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_spec_dict
from torch import nn

from cmt_gen import build_model
from cmt_gen.model import deploy as D
from cmt_gen.model.attention_kernels import attend, default_kernel

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
    {"lpu": False},
]


@pytest.mark.parametrize("attention", ["fused", "math"])
@pytest.mark.parametrize("options", BLOCK_OPTIONS,
                         ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "released")
def test_deploy_form_equals_trained_form_for_every_block_option(attention, options) -> None:
    torch.manual_seed(0)
    model = trained_looking(build_model(tiny_spec_dict(block={"attention": attention, **options})))
    deployed = assert_same_outputs(model)
    assert D.is_deploy_form(deployed)


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
    assert D.is_deploy_form(by_timm)


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
    """Every module that owns parameters runs in the forward; no BN is left in blocks or head."""
    torch.manual_seed(0)
    deployed = trained_looking(build_model(tiny_spec_dict())).reparameterize()
    owners = {name for name, m in deployed.named_modules() if any(True for _ in m.parameters(recurse=False))}
    called: set[str] = set()
    handles = [m.register_forward_hook(lambda mod, i, o, n=name: called.add(n))
               for name, m in deployed.named_modules() if name in owners]
    with torch.inference_mode():
        deployed(torch.randn(1, 3, 64, 64))
    for h in handles:
        h.remove()
    assert owners - called == set()
    bns = [n for n, m in deployed.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns == ["stem.0.norm", "stem.1.norm"]  # each follows a GELU and precedes a padded 3x3
    keys = deployed.state_dict().keys()
    assert not any(k.endswith((".k.weight", ".v.weight")) for k in keys)
    assert [k for k in keys if k.endswith("running_mean")] == ["stem.0.norm.running_mean", "stem.1.norm.running_mean"]


def test_reparameterize_refuses_training_mode_and_is_idempotent() -> None:
    model = build_model(tiny_spec_dict())
    with pytest.raises(RuntimeError, match="eval"):
        model.reparameterize()
    model.eval().reparameterize()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        once = model(x)
        model.reparameterize()
        assert torch.equal(model(x), once)


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
            if isinstance(m, (D.TokenLinear, D.FusedConv)):
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
    with torch.inference_mode():
        cos = nn.functional.cosine_similarity(deployed(x.bfloat16()).float(), model(x), dim=1)
    assert cos.min().item() >= 0.999


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
