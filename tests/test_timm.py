"""CMT through timm, modeled on timm's own model tests: registry, default cfgs, forward and backward,
classifier reset with and without pooling, forward_features / forward_intermediates, features_only
(list, getter and FX wrappers), pruning, released checkpoints, layer-decay fine-tuning, torchvision's
FPN and torch.hub. timm is in the `test` extra, so CI runs these rather than skipping them.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import LAYOUT_FILE, REPO, malicious_checkpoints, tiny_spec_dict
from reference_forward import random_official_state_dict
from test_deploy import trained_looking
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resolve_data_config
from timm.models import model_entrypoint

import cmt_gen.timm as cmt_timm
from cmt_gen import build_model, convert_official_state_dict
from cmt_gen.errors import CheckpointError, CmtGenError

RESOLUTION = {"cmt_ti": 160, "cmt_xs": 192, "cmt_s": 224, "cmt_b": 256, "cmt_l": 288}
RELEASE_FILE = {"cmt_ti": "cmt_tiny.pth", "cmt_xs": "cmt_xs.pth", "cmt_s": "cmt_small.pth", "cmt_b": "cmt_base.pth"}
SLOW_BUILDS = {"cmt_b", "cmt_l"}
TINY = cmt_timm.register_spec(tiny_spec_dict(name="cmt_test_tiny"))


def _variants(slow: set[str] = SLOW_BUILDS):
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in RESOLUTION]


def _tiny(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(TINY, **kwargs).eval()


def _x(h: int = 64, w: int = 64, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- registry and default cfgs

def test_import_cmt_gen_never_imports_timm():
    code = ("import sys, cmt_gen; from cmt_gen.model import network; cmt_gen.build_model\n"
            "print('timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_every_bundled_variant_is_registered():
    assert set(RESOLUTION) <= set(timm.list_models("cmt_*"))
    assert set(timm.list_pretrained("cmt_*")) == {f"{n}.in1k" for n in RELEASE_FILE}  # CMT-L: no weights
    assert tuple(RESOLUTION) == cmt_timm.BUNDLED


@pytest.mark.parametrize("name", list(RESOLUTION))
def test_default_cfgs_state_the_released_training_facts(name):
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    r = RESOLUTION[name]
    assert cfg["input_size"] == (3, r, r) and cfg["pool_size"] == (r // 32, r // 32)
    assert cfg["crop_pct"] == 0.875 and cfg["crop_mode"] == "center" and cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == IMAGENET_DEFAULT_MEAN and cfg["std"] == IMAGENET_DEFAULT_STD
    assert cfg["num_classes"] == 1000 and cfg["first_conv"] == "stem.0.conv" and cfg["classifier"] == "head.fc"
    release = RELEASE_FILE.get(name)
    expected = f"https://github.com/ggjy/CMT.pytorch/releases/download/release-v1/{release}" if release else ""
    assert (cfg["url"] or "") == expected


def test_cfg_keys_name_our_modules_and_data_config_follows_the_variant(released_ti):
    model = timm.create_model("cmt_ti")
    keys = model.state_dict().keys()
    assert {"stem.0.conv.weight", "head.fc.weight"} <= keys
    assert model.pretrained_cfg is model.default_cfg or model.pretrained_cfg == model.default_cfg
    assert resolve_data_config(model=model)["input_size"] == (3, 160, 160)  # not timm's 224 fallback
    assert resolve_data_config(model=released_ti)["input_size"] == (3, 160, 160)  # built without timm, too
    assert resolve_data_config(model=build_model("cmt_l"))["crop_pct"] == 0.875


# ---------------------------------------------------------------- forward, backward, classifier

@pytest.mark.parametrize("name", _variants())
def test_forward_and_backward_through_timm(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7, drop_path_rate=0.0).train()
    out = model(_x(64, 96, batch=2))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.mean().backward()
    params = dict(model.named_parameters())
    no_grad = [n for n, p in params.items() if p.grad is None]
    assert not no_grad, no_grad[:5]


@pytest.mark.parametrize("name", _variants())
def test_model_api_on_each_variant(name):
    """timm's test_models checks, per variant: features, intermediates, classifier reset, features_only."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    x = _x(64, 96, batch=1)
    with torch.no_grad():
        features = model.forward_features(x)
        final, maps = model.forward_intermediates(x)
        model.reset_classifier(0)
        pooled = model(x)
        model.reset_classifier(0, "")
        unpooled = model(x)
    assert features.shape == (1, model.num_features, 2, 3) and torch.equal(final, features)
    assert [tuple(m.shape[1:]) for m in maps] == [
        (c, 64 // r, 96 // r) for c, r in zip(model.feature_info.channels(), model.feature_info.reduction(),
                                               strict=True)]
    assert pooled.shape == (1, model.head_hidden_size) and unpooled.shape == (1, model.head_hidden_size, 2, 3)
    torch.manual_seed(0)
    backbone = timm.create_model(name, features_only=True, out_indices=(0, 2)).eval()
    with torch.no_grad():
        picked = backbone(x)
    assert backbone.feature_info.channels() == [maps[0].shape[1], maps[2].shape[1]]
    assert all(torch.equal(p, m) for p, m in zip(picked, [maps[0], maps[2]], strict=True))


def test_timm_kwargs_reach_the_model():
    model = timm.create_model("cmt_ti", num_classes=10, in_chans=1, drop_rate=0.25, drop_path_rate=0.3,
                              global_pool="max")
    assert model.stem[0].conv.in_channels == 1 and model.num_classes == 10
    assert model.head.dropout.p == 0.25 and model.head.global_pool == "max"
    rates = [b.drop_path.rate for s in model.stages for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    with pytest.raises(TypeError):
        timm.create_model("cmt_ti", no_such_argument=1)


def test_reset_classifier_with_and_without_pooling():
    model = _tiny()
    x = _x(64, 96)
    with torch.no_grad():
        model.reset_classifier(5)
        assert model(x).shape == (2, 5)
        model.reset_classifier(0)
        pooled = model(x)
        assert pooled.shape == (2, model.head_hidden_size) and model.num_classes == 0
        model.reset_classifier(0, "")
        unpooled = model(x)
        assert unpooled.shape == (2, model.head_hidden_size, 2, 3)
        assert torch.allclose(unpooled.mean(dim=(2, 3)), pooled, atol=1e-6)
        assert torch.equal(model.forward_head(model.forward_features(x)), unpooled)
        model.reset_classifier(0, "max")
        assert torch.allclose(model(x), unpooled.amax(dim=(2, 3)))
    with pytest.raises(ValueError, match="needs num_classes=0"):
        model.reset_classifier(5, "")
    with pytest.raises(ValueError, match="global_pool='avgmaxx'"):
        model.reset_classifier(5, "avgmaxx")
    assert model.get_classifier() is model.head.fc


def test_forward_features_and_intermediates_follow_timm():
    model = _tiny()
    x = _x(64, 96)
    with torch.no_grad():
        features = model.forward_features(x)
        final, maps = model.forward_intermediates(x, norm=True)
        nhwc = model.forward_intermediates(x, indices=[0, -1], output_fmt="NHWC", intermediates_only=True)
        early = model.forward_intermediates(x, indices=2, stop_early=True)
    assert features.shape == (2, model.num_features, 2, 3) and torch.equal(final, features)
    assert [m.shape[1] for m in maps] == model.feature_info.channels()
    assert [96 // m.shape[-1] for m in maps] == model.feature_info.reduction() == [4, 8, 16, 32]
    assert [m.shape for m in nhwc] == [maps[0].permute(0, 2, 3, 1).shape, maps[3].permute(0, 2, 3, 1).shape]
    assert torch.equal(nhwc[1], maps[3].permute(0, 2, 3, 1))
    assert len(early[1]) == 2 and torch.equal(early[0], maps[3])
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NLC")


def test_prune_intermediate_layers_keeps_what_the_indices_need():
    model = _tiny()
    x = _x()
    with torch.no_grad():
        want = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        assert model.prune_intermediate_layers([0, -3]) == [0, 1]
        got = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    assert len(model.stages) == 2 and model.head is None and model.num_classes == 0
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert not any(k.startswith(("stages.2", "stages.3", "head")) for k in model.state_dict())


# ---------------------------------------------------------------- feature models

@pytest.mark.parametrize("feature_cls", ["list", "getter", "fx"])
def test_features_only_wrappers_agree(feature_cls):
    full = _tiny()
    torch.manual_seed(0)  # the same initialisation as `full`
    model = timm.create_model(TINY, features_only=True, out_indices=(1, 3), feature_cls=feature_cls).eval()
    info = model.feature_info
    assert info.channels() == [24, 48] and info.reduction() == [8, 32]
    assert info.module_name() == ["stages.1", "stages.3"]
    x = _x(64, 96)
    with torch.no_grad():
        _, want = full.forward_intermediates(x)
        got = model(x)
    got = list(got.values()) if isinstance(got, dict) else got
    assert len(got) == 2
    for g, w in zip(got, [want[1], want[3]], strict=True):
        assert torch.allclose(g, w, atol=1e-5, rtol=1e-5)


def test_default_features_model_drives_torchvision_fpn():
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    model = timm.create_model(TINY, features_only=True).eval()
    layers = {name.replace(".", "_"): str(i) for i, name in enumerate(model.feature_info.module_name())}
    fpn = BackboneWithFPN(model, layers, model.feature_info.channels(), out_channels=32).eval()
    getter = IntermediateLayerGetter(model, layers)
    with torch.no_grad():
        pyramid = fpn(_x(64, 96))
        maps = getter(_x(64, 96))
    assert [tuple(v.shape[-2:]) for v in pyramid.values()] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    assert [m.shape[1] for m in maps.values()] == [16, 24, 32, 48]
    with pytest.raises(CmtGenError, match="total stride 32"):  # the input check is a child: it runs here too
        getter(_x(65, 64))


def test_fx_feature_extraction_then_torchscript():
    from timm.models import FeatureGraphNet

    torch.manual_seed(0)
    model = _tiny()
    extractor = FeatureGraphNet(model, out_indices=(0, 1, 2, 3)).eval()
    x = _x(64, 96)
    with torch.no_grad():
        want = model.forward_intermediates(x, intermediates_only=True)
        got = extractor(x)
        scripted = torch.jit.script(extractor)(x)
    for g, s, w in zip(got, scripted, want, strict=True):
        assert torch.equal(g, w) and torch.allclose(s, w, atol=1e-6)


# ---------------------------------------------------------------- released checkpoints

def _released_checkpoint(tmp_path, name: str, wrapper: str = "model"):
    import json

    layout = json.loads(LAYOUT_FILE.read_text())[name]["state_dict"]
    official = random_official_state_dict(layout, seed=3)
    path = tmp_path / RELEASE_FILE[name]
    torch.save({wrapper: official, "epoch": 300}, path)
    return path, official


@pytest.mark.parametrize("wrapper", ["model", "model_ema"])
def test_released_checkpoint_loads_strictly_through_timm(tmp_path, wrapper):
    path, official = _released_checkpoint(tmp_path, "cmt_s", wrapper)
    model = timm.create_model("cmt_s", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    ours = convert_official_state_dict(official)
    state = model.state_dict()
    assert state.keys() == ours.keys()
    assert all(torch.equal(state[k], v) for k, v in ours.items())


def test_pretrained_with_another_head_and_channels_keeps_the_backbone(tmp_path):
    path, official = _released_checkpoint(tmp_path, "cmt_ti")
    model = timm.create_model("cmt_ti", pretrained=True, num_classes=10, in_chans=1,
                              pretrained_cfg_overlay=dict(file=str(path)))
    ours = convert_official_state_dict(official)
    state = model.state_dict()
    assert state["head.fc.weight"].shape == (10, 1280)
    assert state["stem.0.conv.weight"].shape[1] == 1  # timm folds the RGB filters into one channel
    assert torch.allclose(state["stem.0.conv.weight"][:, 0], ours["stem.0.conv.weight"].sum(dim=1))
    same = [k for k in ours if not k.startswith(("head.fc", "stem.0.conv.weight"))]
    assert all(torch.equal(state[k], ours[k]) for k in same)


def test_a_checkpoint_of_another_variant_is_refused(tmp_path):
    path, _ = _released_checkpoint(tmp_path, "cmt_ti")
    with pytest.raises(CheckpointError, match=r"does not fit the spec's model; missing \d+: .*; wrong shape \d+: "):
        timm.create_model("cmt_xs", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


# ---------------------------------------------------------------- checkpoints timm refuses as `build --weights` does

Q = "stages.1.blocks.0.attn.q.weight"  # (24, 24) in the tiny spec


def _broken(state: dict[str, torch.Tensor], case: str) -> dict[str, torch.Tensor]:
    state = dict(state)
    if case == "int8":
        state["stem.0.conv.weight"] = state["stem.0.conv.weight"].to(torch.int8)
    elif case == "nan":
        state[Q] = state[Q].clone()
        state[Q][3, 0] = float("nan")
    elif case == "inf":
        state["stem.1.norm.running_var"] = torch.tensor([float("inf"), -float("inf")] + [1.0] * 6)
    elif case == "float-counter":
        state["stem.0.norm.num_batches_tracked"] = torch.tensor(3.0)
    elif case == "missing":
        del state[Q]
    elif case == "unexpected":
        state["stages.0.extra"] = torch.zeros(1)
    elif case == "wrong-shape":
        state[Q] = torch.zeros(3, 3)
    return state


BROKEN = {  # case: (field, rule) of the CLI's error
    "int8": ("stem.0.conv.weight", "dtype int8; a weight of the model is a floating-point tensor"),
    "nan": (Q, "holds 1 NaN or infinite value; a weight of the model is finite"),
    "inf": ("stem.1.norm.running_var", "holds 2 NaN or infinite values; a weight of the model is finite"),
    "float-counter": ("stem.0.norm.num_batches_tracked", "dtype float32; this buffer holds whole numbers (int64)"),
    "missing": (None, f"checkpoint does not fit the spec's model; missing 1: {Q}"),
    "unexpected": (None, "checkpoint does not fit the spec's model; unexpected 1: stages.0.extra"),
    "wrong-shape": (None, f"checkpoint does not fit the spec's model; wrong shape 1: {Q} (checkpoint (3, 3), "
                          "model (24, 24))"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_every_timm_path_refuses_what_build_weights_refuses_with_its_message(tmp_path, tiny_spec_file, cli, case):
    """Before, an int8 or NaN checkpoint loaded silently through timm (cast, or non-strictly once the head
    was dropped); now each path runs the CLI's checks, from the same functions."""
    state = _broken(_tiny().state_dict(), case)
    path = tmp_path / f"{case}.pt"
    torch.save({"model": state}, path)
    result = cli("build", tiny_spec_file, "--weights", path)
    field, rule = BROKEN[case]
    message = f"{path}: {field}: {rule}" if field else f"{path}: {rule}"
    assert result.code == 2 and f"error: {message}" in result.err
    loads = {
        "file": lambda: timm.create_model(TINY, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))),
        "file, another head": lambda: timm.create_model(TINY, pretrained=True, num_classes=5,
                                                        pretrained_cfg_overlay=dict(file=str(path))),
        "file, one channel": lambda: timm.create_model(TINY, pretrained=True, in_chans=1,
                                                       pretrained_cfg_overlay=dict(file=str(path))),
        "features": lambda: timm.create_model(TINY, pretrained=True, features_only=True,
                                              pretrained_cfg_overlay=dict(file=str(path))),
        "state_dict": lambda: timm.create_model(TINY, pretrained=True, pretrained_cfg_overlay=dict(state_dict=state)),
        "checkpoint_path": lambda: timm.create_model(TINY, checkpoint_path=str(path)),
        "load_checkpoint": lambda: timm.models.load_checkpoint(_tiny(), str(path)),
    }
    for how, load in loads.items():
        with pytest.raises(CheckpointError) as info:
            load()
        assert (info.value.field, info.value.rule) == (field, rule), how
        expected_source = {"state_dict": "pretrained_cfg state_dict", "checkpoint_path": None,
                           "load_checkpoint": None}.get(how, str(path))
        assert info.value.source == expected_source, how


def test_timm_still_adapts_the_head_and_stem_of_a_good_checkpoint(tmp_path):
    """What timm adapts passes the checks: a head of another class count when num_classes differs
    (dropped), a stem of the cfg's three channels for in_chans=1 (folded); the rest loads exactly."""
    source = _tiny(num_classes=11).state_dict()
    path = tmp_path / "eleven.pt"
    torch.save(source, path)
    model = timm.create_model(TINY, pretrained=True, num_classes=5, in_chans=1,
                              pretrained_cfg_overlay=dict(file=str(path)))
    state = model.state_dict()
    assert state["head.fc.weight"].shape == (5, 40) and state["stem.0.conv.weight"].shape[1] == 1
    kept = [k for k in source if not k.startswith(("head.fc", "stem.0.conv.weight"))]
    assert kept and all(torch.equal(state[k], source[k]) for k in kept)
    with pytest.raises(CheckpointError, match=r"wrong shape 2: head.fc.weight \(checkpoint \(11, 40\), model \(10"):
        timm.create_model(TINY, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))  # the cfg's 10


def test_timm_reads_a_weights_file_as_the_cli_does(tmp_path):
    """timm 1.0.3 unpickles a `file=` checkpoint fully: the payload would run. It is read weights-only
    first, and a folder gets the CLI's one line."""
    marker, paths = malicious_checkpoints(tmp_path)
    for path in paths:
        with pytest.raises(CheckpointError, match="refused: not a weights-only checkpoint") as info:
            timm.create_model(TINY, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
        assert info.value.source == str(path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="is a folder; a checkpoint is a .pt, .pth or .safetensors file"):
        timm.create_model(TINY, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path)))


# ---------------------------------------------------------------- user specs

def test_register_spec_from_a_file(tiny_spec_file):
    name = cmt_timm.register_spec(tiny_spec_file, name="my_tiny_cmt")
    assert name == "my_tiny_cmt" and "my_tiny_cmt" in timm.list_models("my_tiny_*")
    model = timm.create_model("my_tiny_cmt", num_classes=3)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 64, 64) and cfg["architecture"] == "my_tiny_cmt" and not cfg["url"]
    assert model(_x()).shape == (2, 3)
    with pytest.raises(CmtGenError, match="'my_tiny_cmt', a CMT registered before; pass overwrite=True"):
        cmt_timm.register_spec(tiny_spec_file, name="my_tiny_cmt")
    assert cmt_timm.register_spec(tiny_spec_file, name="my_tiny_cmt", overwrite=True) == "my_tiny_cmt"


def test_a_spec_that_extends_a_bundled_one_does_not_replace_it_silently():
    """Before, `extends: cmt_s` without a name replaced the released CMT-S (and its URL) in timm."""
    before = model_entrypoint("cmt_s"), timm.models.get_pretrained_cfg("cmt_s").url
    with pytest.raises(CmtGenError) as info:
        cmt_timm.register_spec({"extends": "cmt_s", "stages": {2: {"depth": 18}}})
    assert str(info.value) == ("cmt_s: name: timm already has 'cmt_s', a bundled CMT; pass overwrite=True to "
                               "replace it, or give the spec its own name")
    assert (model_entrypoint("cmt_s"), timm.models.get_pretrained_cfg("cmt_s").url) == before
    assert before[1].endswith("cmt_small.pth") and "cmt_s.in1k" in timm.list_pretrained("cmt_s*")
    with pytest.raises(CmtGenError, match=f"timm already has '{TINY}', a CMT registered before"):
        cmt_timm.register_spec(tiny_spec_dict(name=TINY))


def test_overwrite_replaces_a_registered_cmt_without_a_warning():
    cmt_timm.register_spec(tiny_spec_dict(name="cmt_test_overwrite"), overwrite=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cmt_timm.register_spec(tiny_spec_dict(name="cmt_test_overwrite", num_classes=4), overwrite=True)
    model = timm.create_model("cmt_test_overwrite")
    assert model.num_classes == 4 and model.pretrained_cfg["num_classes"] == 4


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("name, fragment", [
    ("resnet50", "timm already has a model named 'resnet50'; pass another name="),
    ("my cmt", "not a usable timm model name"),
    ("my_cmt\n", "not a usable timm model name"),
    ("my_\u200bcmt", "not a usable timm model name"),
    ("my_cmt\u200b", "not a usable timm model name"),
    ("", "not a usable timm model name"),
    ("1cmt", "not a usable timm model name"),
    ("cmt_s.in1k", "not a usable timm model name"),
])
def test_register_spec_refuses_names_it_cannot_own(name, fragment, overwrite):
    """Another family's model is never replaced, overwrite or not: other code builds it by that name."""
    entrypoint = model_entrypoint("resnet50")
    with pytest.raises(CmtGenError, match=fragment) as info:
        cmt_timm.register_spec(tiny_spec_dict(), name=name, overwrite=overwrite)
    assert info.value.field == "name" and "\n" not in str(info.value)
    assert model_entrypoint("resnet50") is entrypoint
    assert name == "resnet50" or name not in timm.list_models()


def test_star_import_works_after_a_later_registration():
    """timm appends each registered name to the registering module's __all__; a name there that is no
    attribute of the module would break `from cmt_gen.timm import *`."""
    name = cmt_timm.register_spec(tiny_spec_dict(name="cmt_test_star"), overwrite=True)
    namespace: dict = {}
    exec("from cmt_gen.timm import *", namespace)
    assert name not in cmt_timm.__all__ and "register_spec" in namespace and name not in namespace


# ---------------------------------------------------------------- fine-tuning

def test_layer_decay_groups_run_from_stem_to_head():
    try:
        from timm.optim import param_groups_layer_decay
    except ImportError:  # older timm (1.0.3) keeps it in optim_factory
        from timm.optim.optim_factory import param_groups_layer_decay

    model = _tiny()
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5,
                                      no_weight_decay_list=model.no_weight_decay())
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    assert scale.keys() == set(names.values())
    order = [scale["stem.0.conv.weight"], scale["stages.0.blocks.0.attn.q.weight"],
             scale["stages.1.blocks.1.attn.q.weight"], scale["stages.3.blocks.0.ffn.expand.conv.weight"],
             scale["head.fc.weight"]]
    assert order == sorted(order) and len(set(order)) == len(order) and order[-1] == 1.0
    # as in timm's ConvNeXt: a stage's downsample and position bias share its first block's group
    assert scale["stages.2.downsample.conv.weight"] == scale["stages.2.position_bias"] \
        == scale["stages.2.blocks.0.norm1.weight"] < scale["stages.2.blocks.0.norm1.weight"] / 0.5 \
        == scale["stages.3.blocks.0.norm1.weight"]
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert "stages.0.position_bias" in no_decay


def test_fine_tune_through_timm_lowers_the_loss():
    from timm.optim import create_optimizer_v2

    torch.manual_seed(0)
    model = timm.create_model(TINY, num_classes=10, drop_path_rate=0.0).train()
    optimizer = create_optimizer_v2(model, "adamw", lr=2e-3, weight_decay=0.05, layer_decay=0.75)
    assert len({g["lr_scale"] for g in optimizer.param_groups}) > 2
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 64, 64, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses


# ---------------------------------------------------------------- torch.hub

def test_torch_hub_loads_from_the_repo(tmp_path):
    torch.manual_seed(0)
    source = build_model("cmt_ti")
    weights = tmp_path / "ti.pt"
    torch.save(source.state_dict(), weights)
    model = torch.hub.load(str(REPO), "cmt_ti", source="local", weights=str(weights), num_classes=10)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in source.state_dict().items() if not k.startswith("head.fc"))
    assert model.get_classifier().out_features == 10
    features = torch.hub.load(str(REPO), "cmt_ti", source="local", weights=str(weights), features_only=True)
    assert [m.shape[1] for m in features.eval()(_x())] == [46, 92, 184, 368]
    with pytest.raises(CmtGenError, match="released no checkpoint"):
        torch.hub.load(str(REPO), "cmt_l", source="local", pretrained=True)


def test_release_url_only_for_the_released_layers():
    from cmt_gen import load_spec
    from cmt_gen.model.pretrained_cfg import pretrained_cfg_for

    assert pretrained_cfg_for(load_spec("cmt_s", ["num_classes=10"]))["url"].endswith("cmt_small.pth")
    assert pretrained_cfg_for(load_spec("cmt_s", ["resolution=256"]))["url"] == ""  # bias shapes differ
    assert pretrained_cfg_for(load_spec("cmt_s", ["stages.2.depth=18"]))["url"] == ""


# ---------------------------------------------------------------- timm's reparameterize_model

def test_timm_reparameterize_model_in_train_mode_gives_our_deploy_form():
    """timm's validate.py / benchmark.py / onnx_export.py --reparam call `reparameterize_model` on a
    freshly created model, still in train mode: the result is the network `model.eval().reparameterize()`
    makes, layer for layer."""
    import copy

    from timm.utils.model import reparameterize_model

    from cmt_gen.deploy.hook import is_deploy_form

    model = trained_looking(_tiny()).train()
    by_timm = reparameterize_model(model).eval()
    ours = copy.deepcopy(model).eval().reparameterize()
    assert model.training and not is_deploy_form(model)  # timm worked on a copy
    assert is_deploy_form(by_timm)
    assert [type(m).__name__ for m in by_timm.modules()] == [type(m).__name__ for m in ours.modules()]
    assert by_timm.state_dict().keys() == ours.state_dict().keys()
    x = _x()
    with torch.inference_mode():
        expected = model.eval()(x)
        assert torch.equal(by_timm(x), ours(x))
        assert ((by_timm(x) - expected).abs().max() / expected.abs().max()).item() < 1e-5


def test_fvcore_counts_a_deploy_form_as_timm_benchmark_does():
    """benchmark.py runs fvcore's plain FlopCountAnalysis on the (reparameterized) model and catches only
    RuntimeError: every matmul of the deploy form must be one fvcore's handles accept."""
    from fvcore.nn import FlopCountAnalysis

    model = trained_looking(_tiny()).reparameterize()
    analysis = FlopCountAnalysis(model, torch.ones(1, 3, 64, 64))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    assert analysis.total() > 0


def test_img_size_builds_at_that_resolution_and_resamples_released_biases(tmp_path) -> None:
    """`create_model("cmt_s", img_size=256)` raised TypeError; timm's models take img_size, and loading
    weights trained at another size resamples their position embeddings (here: position biases)."""
    torch.manual_seed(0)
    small = timm.create_model("cmt_ti").eval()
    torch.save({"model": small.state_dict()}, tmp_path / "ti160.pth")
    model = timm.create_model("cmt_ti", img_size=(256, 256))
    assert model.spec.resolution == 256 and resolve_data_config(model=model)["input_size"] == (3, 256, 256)
    with pytest.warns(UserWarning, match="resampled 4 position biases .* resolution 160 to 256"):
        loaded = timm.create_model("cmt_ti", img_size=256, pretrained=True,
                                   pretrained_cfg_overlay=dict(file=str(tmp_path / "ti160.pth"))).eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        assert torch.allclose(loaded(x), small(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(CmtGenError, match="one square resolution"):
        timm.create_model("cmt_ti", img_size=(256, 192))
