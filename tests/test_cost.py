"""Invariants of cost accounting: analytic counts equal the built model (numel), fvcore and torch.

Analytic MACs must equal fvcore's conv + linear + matmul + attention count per
part (we allow 0.1%, they are in fact equal), for both attention
implementations and every block option; torch's FlopCounterMode must report
exactly 2 FLOPs per MAC.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_spec_dict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from cmt_gen import analytic_cost, build_model, load_spec, measured_cost
from cmt_gen.check.measured import MAC_OPERATORS, torch_flop_count
from cmt_gen.cost import analytic as cx
from cmt_gen.errors import CmtGenError
from cmt_gen.model import layers as L
from cmt_gen.spec.schema import BlockOptions

BUNDLED = ("cmt_ti", "cmt_xs", "cmt_s", "cmt_b", "cmt_l")
TOLERANCE = 1e-3  # the bound; the counts are in fact identical


def numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def assert_close(ours: int, theirs: int, what: str) -> None:
    assert abs(ours - theirs) <= TOLERANCE * max(theirs, 1), f"{what}: analytic {ours:,} vs measured {theirs:,}"


def assert_invariants(spec, height: int | None = None, width: int | None = None, cross_check: bool = True):
    """params == numel; MACs == fvcore per part; FlopCounterMode == 2 x MACs. Returns the measurement."""
    measured = measured_cost(spec, height, width, cross_check=cross_check)
    analytic = analytic_cost(spec, height, width)
    assert measured.params == analytic.params
    assert [p.name for p in measured.parts] == [p.name for p in analytic.parts]
    for part in measured.parts:
        assert part.params == analytic.part(part.name).params, part.name
        assert_close(analytic.part(part.name).macs, part.macs, f"{spec.name} {part.name}")
    assert_close(analytic.macs, measured.macs, spec.name)
    assert measured.fvcore_total > measured.macs  # fvcore also counts the norms
    if cross_check:
        assert measured.torch_flops == 2 * analytic.macs, measured.torch_by_operator
    return measured


# ---------------------------------------------------------------- per layer: complexity == numel

LAYER_CASES = [
    (L.ConvGeluBN, (3, 8, 3, 2)),
    (L.Stem, (3, 12)),
    (L.PatchAggregation, (12, 20)),
    (L.LocalPerceptionUnit, (20,)),
    (L.KVReduction, (20, 4, "dwconv_bn")),
    (L.KVReduction, (20, 4, "conv_ln")),
    (L.KVReduction, (20, 4, "avgpool")),
    (L.IRFFN, (20, 72)),
    (L.ClassifierHead, (20, 64, 10)),
    (L.ClassifierHead, (20, 64, 0)),
]


@pytest.mark.parametrize(("layer", "args"), LAYER_CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_layer_complexity_equals_numel(layer, args) -> None:
    cost = layer.complexity(cx.Cx(16, 16), *args)
    assert cost.params == numel(layer(*args))


@pytest.mark.parametrize("reduction", [1, 2, 4])
@pytest.mark.parametrize("kind", ["dwconv_bn", "conv_ln", "avgpool"])
@pytest.mark.parametrize("position_bias", ["stage", "block"])
def test_attention_and_block_complexity_equal_numel(reduction: int, kind: str, position_bias: str) -> None:
    grid = (8, 8)
    options = BlockOptions(reduction_kind=kind, position_bias=position_bias)
    attn_args = (24, 2, reduction)
    attn = L.LightweightMHSA(*attn_args, options=options, grid=grid)
    assert L.LightweightMHSA.complexity(cx.Cx(*grid), *attn_args, options=options).params == numel(attn)
    block_args = (24, 2, reduction, 60)
    block = L.CMTBlock(*block_args, options=options, qkv_bias=False, grid=grid)
    assert L.CMTBlock.complexity(cx.Cx(*grid), *block_args, options=options, qkv_bias=False).params == numel(block)
    no_lpu = options.model_copy(update={"lpu": False})
    assert (L.CMTBlock.complexity(cx.Cx(*grid), *block_args, options=no_lpu).params
            == numel(L.CMTBlock(*block_args, options=no_lpu, grid=grid)))


@pytest.mark.parametrize("position_bias", ["stage", "block", "none", "table"])
def test_stage_complexity_equals_numel(position_bias: str) -> None:
    args = (16, 32, 2, 2, 2, 80)
    options = BlockOptions(position_bias=position_bias)
    stage = L.CMTStage(*args, options=options, grid=(8, 8))
    assert L.CMTStage.complexity(cx.Cx(16, 16), *args, options=options).params == numel(stage)


def test_derived_cmt_l_params_equal_numel() -> None:
    """Exact for CMT-L too (the released four: test_builder; all five traced: the slow tests below).

    Built on the meta device: shapes only, no 300 MB of weights to initialise.
    """
    spec = load_spec("cmt_l")
    with torch.device("meta"):
        model = build_model(spec)
    assert analytic_cost(spec).params == numel(model)


# ---------------------------------------------------------------- whole model: analytic == fvcore == torch / 2

# Every block option appears with both attention implementations (a covering set, not the full product).
OPTION_CASES = [
    {"attention": "fused", "reduction_kind": "dwconv_bn", "position_bias": "stage", "lpu": True},
    {"attention": "math", "reduction_kind": "dwconv_bn", "position_bias": "none", "lpu": False},
    {"attention": "fused", "reduction_kind": "avgpool", "position_bias": "block", "lpu": False},
    {"attention": "math", "reduction_kind": "avgpool", "position_bias": "stage", "lpu": True},
    {"attention": "fused", "reduction_kind": "conv_ln", "position_bias": "none", "lpu": True},
    {"attention": "math", "reduction_kind": "conv_ln", "position_bias": "block", "lpu": False},
    {"attention": "fused", "reduction_kind": "dwconv_bn", "position_bias": "stage", "lpu": True,
     "gelu_approximation": "tanh"},
    {"attention": "math", "reduction_kind": "dwconv_bn", "position_bias": "table", "lpu": True},
]


@pytest.mark.parametrize("block", OPTION_CASES, ids=lambda b: "-".join(str(v) for v in b.values()))
def test_invariants_for_every_block_option(block: dict) -> None:
    assert_invariants(load_spec(tiny_spec_dict(block=block)))


@pytest.mark.parametrize("attention", ["fused", "math"])
def test_invariants_at_another_input_size(attention: str) -> None:
    """The position bias is resampled (bicubic) for a 96x128 input: counted, not a MAC, never unsupported."""
    spec = load_spec(tiny_spec_dict(block={"attention": attention, "position_bias": "block"}))
    measured = assert_invariants(spec, 96, 128)
    assert measured.by_operator.get("upsample_bicubic2d", 0) > 0


def test_invariants_without_classifier() -> None:
    assert_invariants(load_spec(tiny_spec_dict(num_classes=0)))


def test_fused_and_math_attention_count_the_same() -> None:
    fused = measured_cost(load_spec(tiny_spec_dict(block={"attention": "fused"})), cross_check=False)
    math = measured_cost(load_spec(tiny_spec_dict(block={"attention": "math"})), cross_check=False)
    assert fused.macs == math.macs and fused.fvcore_total == math.fvcore_total
    assert fused.by_operator["scaled_dot_product_attention"] == math.by_operator["matmul"]


def test_plain_fvcore_silently_drops_fused_attention() -> None:
    """Why the handle exists: without it fvcore reports the attention as zero and only warns."""
    from fvcore.nn import FlopCountAnalysis

    spec = load_spec(tiny_spec_dict())
    model = build_model(spec).eval()
    plain = FlopCountAnalysis(model, torch.zeros(1, 3, 64, 64))
    plain.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    ours = measured_cost(model)
    plain_macs = sum(v for k, v in plain.by_operator().items() if k in MAC_OPERATORS)
    assert "aten::scaled_dot_product_attention" in plain.unsupported_ops()
    assert plain_macs == ours.macs - ours.by_operator["scaled_dot_product_attention"]


def test_torch_counter_gap_without_our_cpu_attention_formula() -> None:
    """FlopCounterMode has no formula for the CPU flash kernel SDPA uses without a mask; we add it.

    The plain counter must be exactly 2 x MACs, or short by exactly the attention's FLOPs
    (if a later torch adds the formula, the first case holds and ours is redundant).
    """
    from torch.utils.flop_counter import FlopCounterMode

    spec = load_spec(tiny_spec_dict(block={"position_bias": "none"}))
    model = build_model(spec).eval()
    x = torch.zeros(1, 3, 64, 64)
    plain = FlopCounterMode(display=False)
    with plain, torch.no_grad():
        model(x)
    ours, _ = torch_flop_count(model, x)
    analytic = analytic_cost(spec)
    attention = sum(2 * 2 * h * w * (h // s.reduction) * (w // s.reduction) * s.channels * s.depth
                    for s, (h, w) in zip(spec.stages, spec.stage_sizes(), strict=True))
    assert ours == 2 * analytic.macs
    assert plain.get_total_flops() in (2 * analytic.macs, 2 * analytic.macs - attention)


# ---------------------------------------------------------------- random valid specs

@st.composite
def small_specs(draw) -> dict:
    n_stages = draw(st.integers(1, 3))
    stride = 2 ** (n_stages + 1)
    resolution = stride * draw(st.integers(1, 3)) * (2 if n_stages == 1 else 1)
    sizes = [resolution // 2 ** (i + 2) for i in range(n_stages)]
    stages = []
    for size in sizes:
        heads = draw(st.sampled_from([1, 2, 4]))
        stages.append({
            "channels": heads * draw(st.integers(1, 6)),
            "depth": draw(st.integers(1, 2)),
            "heads": heads,
            "reduction": draw(st.sampled_from([r for r in (1, 2, 4, 8) if size % r == 0])),
            "expansion": draw(st.sampled_from([1.0, 1.5, 2.0, 2.5, 3.6, 3.77, 4.0])),
        })
    return {
        "name": "random", "resolution": resolution, "stem": {"channels": draw(st.integers(1, 8))},
        "stages": stages, "num_classes": draw(st.sampled_from([0, 7])),
        "head": {"fc_channels": draw(st.integers(1, 24))}, "qkv_bias": draw(st.booleans()),
        "block": {
            "attention": draw(st.sampled_from(["fused", "math"])),
            "lpu": draw(st.booleans()),
            "reduction_kind": draw(st.sampled_from(["dwconv_bn", "avgpool", "conv_ln"])),
            "position_bias": draw(st.sampled_from(["stage", "block", "none", "table"])),
        },
    }


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_specs())
def test_invariants_for_random_specs(data: dict) -> None:
    assert_invariants(load_spec(data))


# ---------------------------------------------------------------- failing loudly

class _Cumsum(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(x, dim=-1)


def test_unsupported_op_fails_loudly() -> None:
    with pytest.raises(CmtGenError, match=r"aten::cumsum"):
        measured_cost(_Cumsum(), 8, 8)


def test_module_without_spec_needs_an_input_size() -> None:
    with pytest.raises(CmtGenError, match="height and width"):
        measured_cost(_Cumsum())


def test_illegal_input_size_is_a_user_error() -> None:
    with pytest.raises(CmtGenError, match="total stride"):
        measured_cost(load_spec(tiny_spec_dict()), 70, 64)


def test_memory_guard_refuses_then_force_and_analytic_work() -> None:
    spec = load_spec(tiny_spec_dict())
    with pytest.raises(CmtGenError, match=r"GiB.*--counter analytic.*--force"):
        measured_cost(spec, memory_limit=1024)
    assert measured_cost(spec, memory_limit=1024, force=True, cross_check=False).params == analytic_cost(spec).params


def test_memory_guard_refuses_a_huge_spec_without_building_it() -> None:
    """CMT-B at 4096x4096: tens of GiB of attention maps; refused before any allocation."""
    huge = load_spec("cmt_b", ["resolution=4096"])
    with pytest.raises(CmtGenError, match="GiB"):
        measured_cost(huge, memory_limit=8 << 30)
    assert analytic_cost(huge).macs > 1e12


def test_measured_result_is_plain_data() -> None:
    import json

    result = measured_cost(load_spec(tiny_spec_dict()))
    record = json.loads(json.dumps(result.as_dict()))
    assert record["macs"] == result.macs and record["torch_flops"] == 2 * result.macs
    assert {p["name"] for p in record["parts"]} >= {"stem", "stage0", "head"}


# ---------------------------------------------------------------- the bundled variants (slow)

@pytest.mark.slow
@pytest.mark.parametrize("attention", ["fused", "math"])
@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_analytic_equals_fvcore_per_stage(name: str, attention: str) -> None:
    """Every bundled spec, both attention implementations; torch's counter on the meta device (no arithmetic)."""
    spec = load_spec(name, {"block.attention": attention})
    assert_invariants(spec, cross_check=False)
    with torch.device("meta"):
        model = build_model(spec).eval()
        flops, per_op = torch_flop_count(model, torch.zeros(1, 3, spec.resolution, spec.resolution))
    assert flops == 2 * analytic_cost(spec).macs, per_op
