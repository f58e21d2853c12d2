"""The builder: exact released sizes, any legal input size, the timm model API, block options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import RELEASED, RELEASED_PARAMS, tiny_spec_dict

import cmt_gen
from cmt_gen import build_model, load_spec
from cmt_gen.cost.analytic import analytic_cost
from cmt_gen.errors import CmtGenError, InputShapeError
from cmt_gen.model.layers import DropPath
from cmt_gen.model.network import CMT, count_parameters, stage_arguments
from cmt_gen.ops.position_bias import resample_position_bias
from cmt_gen.spec.serialize import spec_to_yaml


def _tiny(**changes) -> CMT:
    torch.manual_seed(0)
    return build_model(tiny_spec_dict(**changes)).eval()


def _x(h: int = 64, w: int | None = None, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, h, w or h, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- released sizes

@pytest.mark.parametrize("name", RELEASED)
def test_released_variants_have_the_released_parameter_count(released_model, name):
    model = released_model(name)
    assert count_parameters(model) == RELEASED_PARAMS[name]
    assert analytic_cost(model.spec).params == RELEASED_PARAMS[name]


def test_released_count_on_real_tensors(released_ti):
    assert count_parameters(released_ti) == RELEASED_PARAMS["cmt_ti"]
    assert all(p.device.type == "cpu" for p in released_ti.parameters())


def test_name_path_dict_and_spec_build_the_same_network(tmp_path):
    spec = load_spec(tiny_spec_dict())
    path = tmp_path / "tiny.yaml"
    path.write_text(spec_to_yaml(spec))
    shapes = [
        {k: tuple(v.shape) for k, v in build_model(source).state_dict().items()}
        for source in (tiny_spec_dict(), path, str(path), spec)
    ]
    assert all(s == shapes[0] for s in shapes)
    with pytest.raises(TypeError):
        build_model(spec, overrides={"resolution": 96})


def test_public_api_is_importable_from_the_package():
    assert {"load_spec", "build_model", "convert_official_state_dict"} <= set(cmt_gen.__all__)
    assert cmt_gen.build_model is build_model
    assert callable(cmt_gen.convert_official_state_dict)


def test_build_applies_overrides_and_revalidates():
    model = build_model(tiny_spec_dict(), overrides=["stages.1.depth=3"])
    assert len(model.stages[1].blocks) == 3
    with pytest.raises(CmtGenError, match="do not divide"):
        build_model(tiny_spec_dict(), overrides={"stages.1.heads": 5})


# ---------------------------------------------------------------- input sizes

@pytest.mark.parametrize("size", [(64, 64), (32, 32), (96, 96), (64, 96), (128, 32)])
def test_any_multiple_of_the_total_stride_runs(size):
    model = _tiny()
    x = _x(*size)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    assert features.shape == (2, 48, size[0] // 32, size[1] // 32)
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


def test_released_variant_runs_off_its_native_size(released_ti):
    with torch.no_grad():
        y = released_ti(_x(96, 192, batch=1))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()


@pytest.mark.parametrize("size, fragment", [((65, 64), "65x64"), ((64, 80), "64x80"), ((16, 16), "16x16")])
def test_input_off_the_stride_is_refused_clearly(size, fragment):
    with pytest.raises(InputShapeError, match="total stride 32") as info:
        _tiny()(_x(*size))
    assert fragment in str(info.value)
    assert isinstance(info.value, CmtGenError) and isinstance(info.value, ValueError)


def test_input_that_breaks_a_stage_reduction_is_refused_clearly():
    # Stage 2 reduces by 8: at 128 its map is 8x8, at 96 it is 6x6.
    spec = tiny_spec_dict(resolution=128)
    spec["stages"][2]["reduction"] = 8
    model = build_model(spec).eval()
    with torch.no_grad():
        assert model(_x(128, batch=1)).shape == (1, 10)
    with pytest.raises(InputShapeError, match=r"6x6 is not divisible by its K/V reduction ratio 8"):
        model(_x(96, batch=1))


def test_non_image_input_is_refused():
    with pytest.raises(InputShapeError, match="batch, channels, height, width"):
        _tiny()(torch.randn(3, 64, 64))


# ---------------------------------------------------------------- position bias resampling

def test_resampling_to_the_native_grid_is_identity():
    bias = torch.randn(2, 16 * 16, 4 * 4)
    same = resample_position_bias(bias, (16, 16), (4, 4), (16, 16), (4, 4))
    assert torch.equal(same, bias)
    # and F.interpolate itself, which the non-native path uses, is an identity at the same size
    grid = bias.reshape(2, 16, 16, 16).permute(0, 3, 1, 2)
    assert torch.allclose(F.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False), grid)


def test_resampling_keeps_query_and_key_axes_apart():
    heads, q, kv = 2, (4, 6), (2, 3)
    rows = torch.arange(q[0], dtype=torch.float32).repeat_interleave(q[1])  # query row index, row-major tokens
    bias = rows[None, :, None].expand(heads, q[0] * q[1], kv[0] * kv[1]).clone()
    out = resample_position_bias(bias, q, kv, (8, 12), (4, 6))
    assert out.shape == (heads, 8 * 12, 4 * 6)
    grid = out.reshape(heads, 8, 12, 24)
    assert torch.allclose(grid, grid[:, :, :1, :1].expand_as(grid), atol=1e-5)  # constant along columns, keys
    per_row = grid[0, :, 0, 0]
    assert (per_row[1:] >= per_row[:-1] - 1e-6).all() and per_row[-1] > per_row[0]  # still grows with the row

    cols = torch.arange(kv[1], dtype=torch.float32).repeat(kv[0])  # key column index
    bias = cols[None, None, :].expand(heads, q[0] * q[1], kv[0] * kv[1]).clone()
    out = resample_position_bias(bias, q, kv, (2, 3), (4, 6)).reshape(heads, 6, 4, 6)
    assert torch.allclose(out, out[:, :1, :1, :].expand_as(out), atol=1e-5)  # constant along queries, key rows
    assert out[0, 0, 0, -1] > out[0, 0, 0, 0]


def test_constant_bias_stays_constant_under_resampling():
    bias = torch.full((3, 8 * 8, 2 * 2), 0.7)
    out = resample_position_bias(bias, (8, 8), (2, 2), (12, 4), (3, 1))
    assert out.shape == (3, 48, 3)
    assert torch.allclose(out, torch.full_like(out, 0.7), atol=1e-6)


def test_native_size_uses_the_stored_bias_unchanged(monkeypatch):
    """At the built resolution the attention sees the stored bias bit for bit (released weights rely on it).
    Graphs resample unconditionally (tests/test_export_paths.py); eager mode skips the copy."""
    import cmt_gen.model.layers as layers

    masks = []
    real = layers.F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        masks.append(attn_mask)
        return real(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", spy)
    model = _tiny()
    with torch.no_grad():
        for stage in model.stages:  # wide, varied values: any blending of neighbours would show
            stage.position_bias.copy_(torch.randn_like(stage.position_bias) * 1e3)
        model(_x(64))
    stored = [stage.position_bias for stage in model.stages for _ in stage.blocks]
    assert len(masks) == len(stored)
    assert all(torch.equal(mask, bias) for mask, bias in zip(masks, stored, strict=True))
    masks.clear()
    with torch.no_grad():
        model(_x(96))
    assert masks[0].shape[-2:] == (24 * 24, 6 * 6)  # another size: resampled


# ---------------------------------------------------------------- timm API

def test_forward_features_head_and_pre_logits():
    model = _tiny()
    x = _x()
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        logits = model.forward_head(features)
        full = model(x)
    assert features.shape == (2, model.num_features, 2, 2)
    assert model.num_features == 48
    assert pooled.shape == (2, 40)
    assert torch.allclose(logits, full)
    assert torch.allclose(model.get_classifier()(pooled), logits, atol=1e-6)


def test_released_head_has_1280_pre_logits(released_ti):
    model = released_ti
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(_x(64, batch=1)), pre_logits=True)
    assert pooled.shape == (1, 1280)
    assert model.num_features == 368


@pytest.mark.parametrize("classes", [5, 0])
def test_reset_classifier(classes):
    model = _tiny()
    model.reset_classifier(classes)
    x = _x()
    with torch.no_grad():
        out = model(x)
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    if classes:
        assert out.shape == (2, classes)
        assert isinstance(model.get_classifier(), torch.nn.Linear)
        assert model.get_classifier().out_features == classes
        assert torch.count_nonzero(model.get_classifier().bias) == 0
    else:
        assert out.shape == (2, 40)
        assert torch.allclose(out, pooled)
    assert model.num_classes == classes


def test_feature_info_and_intermediates():
    model = _tiny()
    assert [f["num_chs"] for f in model.feature_info] == [16, 24, 32, 48]
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    x = _x(64, 96)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        features = model.forward_features(x)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
    assert torch.allclose(final, features)
    assert len(maps) == 4
    for info, fmap in zip(model.feature_info, maps, strict=True):
        assert fmap.shape == (2, info["num_chs"], 64 // info["reduction"], 96 // info["reduction"])
    assert [m.shape for m in last_two] == [m.shape for m in maps[2:]]
    assert len(early) == 1 and torch.allclose(early[0], maps[1])


@pytest.mark.parametrize("indices", [[4], [-5], [], 0, 5])
def test_intermediate_indices_out_of_range_are_refused(indices):
    with pytest.raises(ValueError, match="indices"):
        _tiny().forward_intermediates(_x(), indices=indices)


def test_features_only_model_returns_the_four_stage_maps():
    torch.manual_seed(0)
    model = build_model(tiny_spec_dict(), features_only=True).eval()
    assert model.head is None
    assert not any(k.startswith("head.") for k in model.state_dict())
    with torch.no_grad():
        maps = model(_x(96))
    assert [m.shape[1] for m in maps] == [16, 24, 32, 48]
    assert [96 // m.shape[-1] for m in maps] == [4, 8, 16, 32]
    with pytest.raises(RuntimeError):
        model.forward_head(maps[-1])


def _grads(model: CMT, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), target)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_grad_checkpointing_gives_the_same_gradients(monkeypatch):
    import cmt_gen.model.layers as layers

    model = build_model(tiny_spec_dict(drop_path=0.0)).train()
    x, target = _x(), torch.tensor([1, 7])
    plain = _grads(model, x, target)

    calls = []
    real = layers.torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(layers.torch.utils.checkpoint, "checkpoint", counting)
    model.set_grad_checkpointing(True)
    checkpointed = _grads(model, x, target)
    assert len(calls) == sum(len(s.blocks) for s in model.stages)  # every block went through it
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(model.parameters()))
    for name, grad in plain.items():
        assert torch.allclose(grad, checkpointed[name], atol=1e-6, rtol=1e-5), name
    model.set_grad_checkpointing(False)
    calls.clear()
    _grads(model, x, target)
    assert calls == []


# ---------------------------------------------------------------- attention paths and options

def _with_attention(spec: dict, impl: str) -> CMT:
    spec = {**spec, "block": {**spec.get("block", {}), "attention": impl}}
    return build_model(spec).eval()


@pytest.mark.parametrize("position_bias", ["stage", "block", "none", "table"])
@pytest.mark.parametrize("size", [(64, 64), (96, 32)])
def test_fused_and_explicit_attention_agree(position_bias, size):
    spec = tiny_spec_dict(block={"position_bias": position_bias})
    fused, explicit = _with_attention(spec, "fused"), _with_attention(spec, "math")
    explicit.load_state_dict(fused.state_dict())
    x = _x(*size)
    with torch.no_grad():
        a, b = fused(x), explicit(x)
    assert torch.allclose(a, b, atol=1e-5 * max(1.0, a.abs().max().item()), rtol=0)


OPTIONS = {
    "no_lpu": {"lpu": False},
    "avgpool": {"reduction_kind": "avgpool"},
    "conv_ln": {"reduction_kind": "conv_ln"},
    "block_bias": {"position_bias": "block"},
    "no_bias": {"position_bias": "none"},
    "math": {"attention": "math"},
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_block_options_build_run_and_match_the_analytic_count(option):
    spec = tiny_spec_dict(block=OPTIONS[option])
    model = build_model(spec).eval()
    keys = list(model.state_dict())
    with torch.no_grad():
        for size in ((64, 64), (96, 64)):
            assert torch.isfinite(model(_x(*size))).all()
    assert count_parameters(model) == analytic_cost(load_spec(spec)).params
    has = {
        "lpu": any(".lpu." in k for k in keys),
        "reduce_params": any(".attn.reduce." in k for k in keys),
        "reduce_bn": any(k.endswith("attn.reduce.norm.running_var") for k in keys),
        "stage_bias": any(k.endswith(("stages.0.position_bias", "stages.3.position_bias")) for k in keys),
        "block_bias": any(k.endswith("attn.position_bias") for k in keys),
    }
    expected = {"lpu": True, "reduce_params": True, "reduce_bn": True, "stage_bias": True, "block_bias": False}
    expected.update({
        "no_lpu": {"lpu": False},
        "avgpool": {"reduce_params": False, "reduce_bn": False},
        "conv_ln": {"reduce_bn": False},
        "block_bias": {"stage_bias": False, "block_bias": True},
        "no_bias": {"stage_bias": False},
        "math": {},
    }[option])
    assert has == expected


def test_qkv_bias_option():
    model = build_model(tiny_spec_dict(qkv_bias=False))
    assert model.stages[0].blocks[0].attn.q.bias is None
    assert model.stages[0].blocks[0].attn.proj.bias is not None
    assert count_parameters(model) == analytic_cost(load_spec(tiny_spec_dict(qkv_bias=False))).params


def test_gelu_approximation_option_changes_only_the_irffn_gelus():
    """block.gelu_approximation: tanh swaps the IRFFN's two GELUs (not the stem's); same weights, same
    counts, outputs close to but not equal to the exact (erf) GELU's."""
    torch.manual_seed(0)
    exact = build_model(tiny_spec_dict()).eval()
    tanh = build_model(tiny_spec_dict(block={"gelu_approximation": "tanh"})).eval()
    tanh.load_state_dict(exact.state_dict())
    ffn = tanh.stages[0].blocks[0].ffn
    assert ffn.act.approximate == "tanh" and ffn.expand.act.approximate == "tanh"
    assert tanh.stem[0].act.approximate == "none"
    spec = load_spec(tiny_spec_dict(block={"gelu_approximation": "tanh"}))
    assert count_parameters(tanh) == analytic_cost(spec).params
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = exact(x), tanh(x)
    assert not torch.equal(a, b) and torch.allclose(a, b, atol=1e-2)


@pytest.mark.parametrize("n_stages, resolution", [(3, 32), (5, 128)])
def test_other_stage_counts_build(n_stages, resolution):
    spec = tiny_spec_dict(resolution=resolution)
    spec["stages"] = (spec["stages"] + [{"channels": 64, "depth": 1, "heads": 4, "reduction": 1, "expansion": 2}])[
        :n_stages
    ]
    model = build_model(spec).eval()
    assert [f["reduction"] for f in model.feature_info] == [2 ** (i + 2) for i in range(n_stages)]
    with torch.no_grad():
        assert model(_x(resolution, batch=1)).shape == (1, 10)


def test_drop_path_rates_rise_linearly_to_the_spec_rate():
    spec = load_spec(tiny_spec_dict(drop_path=0.2))
    rates = [r for args in stage_arguments(spec) for r in args["drop_path"]]
    assert len(rates) == 5 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.2)
    assert all(b > a for a, b in zip(rates, rates[1:], strict=False))
    model = build_model(spec)
    assert model.stages[3].blocks[0].drop_path.rate == pytest.approx(0.2)
    model.eval()
    x = _x()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # no randomness in eval


def test_drop_path_drops_whole_samples_in_training():
    torch.manual_seed(0)
    layer = DropPath(0.5).train()
    out = layer(torch.ones(200, 3, 4))
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()
    assert 40 < int((per_sample[:, 0] == 0).sum()) < 160


def test_initialisation_follows_the_released_scheme(released_ti):
    model = released_ti
    attn = model.stages[2].blocks[0].attn
    assert torch.count_nonzero(attn.q.bias) == 0
    assert attn.q.weight.std().item() == pytest.approx(0.02, rel=0.05)  # trunc_normal_(std=0.02)
    assert torch.equal(model.stages[2].blocks[0].norm1.weight, torch.ones(184))
    conv = model.stages[2].blocks[0].ffn.expand.conv.weight  # Kaiming normal, fan-out
    expected = (2.0 / (conv.shape[0] * conv.shape[2] * conv.shape[3])) ** 0.5
    assert conv.std().item() == pytest.approx(expected, rel=0.05)
    assert model.stages[0].position_bias.std().item() == pytest.approx(1.0, rel=0.05)
