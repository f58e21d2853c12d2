"""The CPU fast path holds on every CPU: private oneDNN ops are self-checked, and an op that raises
or computes wrong falls back to the portable op with the same results.

The AVX2-only case is exercised on any x86 machine by capping oneDNN's instruction set
(`ONEDNN_MAX_CPU_ISA`, `ATEN_CPU_CAPABILITY`) in a child process: on an AVX2 part bf16
reorders raise inside oneDNN, and the deploy form must still give bf16 logits.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import tiny_spec_dict
from test_deploy import REL_TOL, relative_gap, trained_looking

from cmt_gen import build_model
from cmt_gen.deploy import onednn

needs_onednn = pytest.mark.skipif(not onednn._HAVE_ONEDNN, reason="needs torch's oneDNN ops")

CHILD = r"""
import copy, json, warnings
import torch
from cmt_gen import build_model
from cmt_gen.deploy import onednn
from conftest import tiny_spec_dict
from test_deploy import trained_looking

torch.manual_seed(0)
model = trained_looking(build_model(tiny_spec_dict()))
x = torch.randn(3, 3, 64, 64)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    deployed = copy.deepcopy(model).reparameterize()
    with torch.inference_mode():
        reference = model(x)
        fp32 = deployed(x)
    deployed.to(torch.bfloat16)
    with torch.inference_mode():
        bf16 = deployed(x.bfloat16()).float()
cos = torch.nn.functional.cosine_similarity(bf16, reference, dim=1).min().item()
print(json.dumps({
    "fp32_gap": ((fp32 - reference).abs().max() / reference.abs().max()).item(),
    "bf16_cosine": cos,
    "bf16_linear_trusted": onednn.linear_case_ok(torch.bfloat16, "gelu"),
    "warnings": [str(w.message) for w in caught if "oneDNN" in str(w.message)],
}))
"""


def run_child(env_caps: dict[str, str]) -> dict:
    env = {**os.environ, **env_caps}
    tests = os.path.dirname(__file__)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [tests, env.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tests)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@needs_onednn
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 instruction sets")
@pytest.mark.parametrize("isa", ["AVX2", "ALL"], ids=["avx2-only", "every-isa-this-cpu-has"])
def test_bf16_deploy_form_runs_on_avx2_and_avx512_alike(isa: str) -> None:
    """`reparameterize()` then `.to(torch.bfloat16)` gives bf16 logits (cosine >= 0.999 with fp32);
    on an AVX2-only CPU oneDNN's bf16 path raises, and exactly one warning per op says the
    portable op runs instead."""
    caps = {"ONEDNN_MAX_CPU_ISA": isa}
    if isa == "AVX2":
        caps["ATEN_CPU_CAPABILITY"] = "avx2"
    got = run_child(caps)
    assert got["fp32_gap"] < REL_TOL
    assert got["bf16_cosine"] >= 0.999
    if isa == "AVX2":  # oneDNN needs AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT for bf16
        assert not got["bf16_linear_trusted"]
        assert len(got["warnings"]) == 2, got["warnings"]  # one for the linears, one for the convs
        assert all("portable PyTorch op runs instead" in w for w in got["warnings"])
    elif got["bf16_linear_trusted"]:
        assert got["warnings"] == []


@pytest.fixture
def fresh_checks():
    onednn.reset_self_checks()
    yield
    onednn.reset_self_checks()


def _deploy_pair() -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = trained_looking(build_model(tiny_spec_dict()))
    return model, copy.deepcopy(model).reparameterize(), torch.randn(2, 3, 64, 64)


def _raising(*args, **kwargs):
    raise RuntimeError("injected: this op is broken")


def _off_by(real, factor: float):
    return lambda *args, **kwargs: real(*args, **kwargs) * factor


BROKEN = {
    "raising": lambda real: _raising,
    "wrong-by-1e-2": lambda real: _off_by(real, 1.01),
}


@needs_onednn
@pytest.mark.parametrize(("op", "fault"), [
    ("_linear_pointwise", "raising"), ("_linear_pointwise", "wrong-by-1e-2"),
    ("_convolution_pointwise", "raising"), ("_convolution_pointwise", "wrong-by-1e-2"),
    ("_reorder_linear_weight", "raising"), ("_reorder_convolution_weight", "raising"),  # a pack is opaque
])
def test_a_broken_private_op_is_caught_and_outputs_stay_correct(monkeypatch, fresh_checks, op, fault) -> None:
    model, deployed, x = _deploy_pair()
    monkeypatch.setattr(torch.ops.mkldnn, op, BROKEN[fault](getattr(torch.ops.mkldnn, op)))
    with warnings.catch_warnings(record=True) as caught, torch.inference_mode():
        warnings.simplefilter("always")
        got = deployed(x)
        expected = model(x)
    assert relative_gap(got, expected) < REL_TOL
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    kinds = {"_linear_pointwise": ["linear"], "_reorder_linear_weight": ["linear"],
             "_convolution_pointwise": ["conv"], "_reorder_convolution_weight": ["conv"]}[op]
    assert [m.split("oneDNN ")[1].split(" ")[0] for m in messages] == kinds, messages  # one warning, the op named
    assert ("raised" if fault == "raising" else "differs from the portable op") in messages[0]


@needs_onednn
def test_an_op_that_raises_only_on_real_sizes_falls_back_there(monkeypatch, fresh_checks) -> None:
    """The self-check runs a tiny input; a failure at a real size switches the op off as well."""
    model, deployed, x = _deploy_pair()
    real = torch.ops.mkldnn._linear_pointwise

    def fails_when_large(inp, *args):
        if inp.numel() > 1000:
            raise RuntimeError("injected: no primitive for this size")
        return real(inp, *args)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", fails_when_large)
    with warnings.catch_warnings(record=True) as caught, torch.inference_mode():
        warnings.simplefilter("always")
        assert relative_gap(deployed(x), model(x)) < REL_TOL
    assert onednn.linear_case_ok(torch.float32, "gelu") is False
    assert sum("raised on a" in str(w.message) for w in caught) == 1


@needs_onednn
def test_self_checks_run_once_per_case_and_leave_the_rng_alone(fresh_checks) -> None:
    model, deployed, x = _deploy_pair()
    torch.manual_seed(123)
    expected_next = torch.randn(3)
    torch.manual_seed(123)
    with torch.inference_mode():
        deployed(x)
    assert torch.equal(torch.randn(3), expected_next)  # the probes use a generator of their own
    cases = dict(onednn._VERDICTS)
    assert cases and all(cases.values())
    assert {case[0] for case in cases} == {"linear", "conv"}
    with torch.inference_mode():
        deployed(x)
    assert cases == onednn._VERDICTS


def test_a_deploy_form_built_under_inference_mode_packs_its_weights_and_follows_updates() -> None:
    """Weights made under inference_mode have no version counter; the rewrite gives its weights one,
    so the packed kernels run as for a model built outside, and any input size works."""
    torch.manual_seed(0)
    with torch.inference_mode():
        model = trained_looking(build_model(tiny_spec_dict()))
        deployed = copy.deepcopy(model).reparameterize()
        x = torch.randn(2, 3, 64, 64)
        assert relative_gap(deployed(x), model(x)) < REL_TOL
        other = torch.randn(1, 3, 96, 64)  # another size: the bias cache follows its source's version
        assert relative_gap(deployed(other), model(other)) < REL_TOL
    assert not any(p.is_inference() for p in deployed.parameters())
    assert not any(b.is_inference() for b in deployed.buffers())
    if onednn._HAVE_ONEDNN and onednn.linear_case_ok(torch.float32, "gelu"):
        linear = deployed.stages[0].blocks[0].ffn.expand_fc
        assert id(linear.weight) in onednn._PACKED  # packed, not run unpacked
    weight = deployed.stages[0].blocks[0].ffn.expand_fc.weight
    with torch.inference_mode():
        before = deployed(x)
        weight.mul_(2)  # in place, under inference_mode: the version counter still moves
        changed = deployed(x)
        weight.div_(2)
        assert relative_gap(changed, before) > 1e-3  # the pack was redone, not reused
        assert relative_gap(deployed(x), before) < REL_TOL
