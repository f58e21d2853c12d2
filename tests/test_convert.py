"""Released checkpoints: key conversion, strict and safe loading, and numerical equivalence.

The equivalence tests hold our modules against tests/reference_forward.py, an
independent functional transcription of cmt-architecture.md that reads the
OFFICIAL key layout. Weights (BatchNorm running statistics included) are random.
"""

from __future__ import annotations

import pickle

import pytest
import torch
from conftest import RELEASED, RELEASED_PARAMS, Payload, malicious_checkpoints, tiny_spec_dict
from reference_forward import forward_features, random_official_state_dict, reference_forward

from cmt_gen import build_model, convert_official_state_dict, load_spec
from cmt_gen.errors import CheckpointError, CmtGenError
from cmt_gen.model.convert import convert_official_key, load_checkpoint, load_state_dict_strict, read_checkpoint


def _official(layout: dict, name: str, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    return random_official_state_dict(layout[name]["state_dict"], seed=seed, dtype=dtype)


def _loaded(name: str, official: dict, attention: str = "fused") -> torch.nn.Module:
    model = build_model(name, overrides={"block.attention": attention})
    load_state_dict_strict(model, convert_official_state_dict(official))
    return model.eval()


# ---------------------------------------------------------------- layout and conversion

def test_reference_layout_counts_are_the_released_counts(official_layout):
    for name in RELEASED:
        entry = official_layout[name]
        counted = sum(
            _numel(shape) for key, shape in entry["state_dict"].items()
            if not key.endswith(("running_mean", "running_var", "num_batches_tracked"))
        )
        assert counted == entry["num_parameters"] == RELEASED_PARAMS[name]


def _numel(shape: list[int]) -> int:
    n = 1
    for side in shape:
        n *= side
    return n


@pytest.mark.parametrize("name", RELEASED)
def test_converted_keys_and_shapes_match_ours_exactly(official_layout, released_model, name):
    layout = official_layout[name]["state_dict"]
    converted = {convert_official_key(k): tuple(shape) for k, shape in layout.items()}
    assert len(converted) == len(layout)  # no two official keys land on one of ours
    ours = {k: tuple(v.shape) for k, v in released_model(name).state_dict().items()}
    assert set(converted) - set(ours) == set()
    assert set(ours) - set(converted) == set()
    assert converted == ours
    assert official_layout[name]["resolution"] == load_spec(name).resolution


def test_converted_released_state_dict_loads_strictly_and_completely(official_layout):
    official = _official(official_layout, "cmt_ti", seed=3)
    model = _loaded("cmt_ti", official)
    ours = model.state_dict()
    for key, value in convert_official_state_dict(official).items():
        assert torch.equal(ours[key], value), key


def test_official_checkpoint_on_disk_is_detected_and_converted(official_layout, tmp_path):
    official = _official(official_layout, "cmt_ti", seed=4)
    path = tmp_path / "cmt_ti.pth"
    torch.save({"model": official, "epoch": 300}, path)  # as training scripts nest it
    model = build_model("cmt_ti")
    load_checkpoint(model, path)
    assert torch.equal(model.stages[0].position_bias, official["relative_pos_a"])
    assert torch.equal(model.head.conv.weight, official["_fc.weight"])
    assert torch.equal(model.stages[2].blocks[9].attn.reduce.norm.running_var,
                       official["blocks_c.9.attn.sr.1.running_var"])


def test_unknown_official_keys_are_listed():
    with pytest.raises(CheckpointError, match="blocks_a.0.attn.extra.weight"):
        convert_official_state_dict({"blocks_a.0.attn.extra.weight": torch.zeros(1),
                                     "stem_conv1.weight": torch.zeros(1)})


# ---------------------------------------------------------------- strict loading

def test_mismatch_lists_missing_unexpected_and_misshaped_keys_in_one_message():
    model = build_model(tiny_spec_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = dict(model.state_dict())
    del state["stages.1.blocks.0.attn.q.weight"]
    state["stages.1.blocks.0.attn.extra"] = torch.zeros(3)
    state["head.fc.weight"] = torch.zeros(11, 40)
    state["stem.0.conv.bias"] = torch.ones(8)  # a good key that must not be loaded on failure
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(model, state, source="ckpt.pt")
    message = str(info.value)
    assert message.startswith("ckpt.pt: ")
    assert "\n" not in message
    assert "missing 1: stages.1.blocks.0.attn.q.weight" in message
    assert "unexpected 1: stages.1.blocks.0.attn.extra" in message
    assert "wrong shape 1: head.fc.weight (checkpoint (11, 40), model (10, 40))" in message
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # all or nothing


def test_long_mismatch_lists_are_shortened():
    small = build_model(tiny_spec_dict())
    large = build_model(tiny_spec_dict(stages=[{**s, "depth": 3} for s in tiny_spec_dict()["stages"]]))
    with pytest.raises(CheckpointError, match=r"missing \d+: .*\(\d+ more\)"):
        load_state_dict_strict(large, small.state_dict())


# ---------------------------------------------------------------- safe reading

def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker, paths = malicious_checkpoints(tmp_path)
    # Control: an ordinary unpickler would run the payload.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(control)))
    assert control.exists()
    for path in paths:
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(path)
        assert path.name in str(info.value)
        assert "weights_only` set to `False`" not in str(info.value)  # never advise the unsafe way
        with pytest.raises(CheckpointError):
            load_checkpoint(build_model(tiny_spec_dict()), path)
    assert not marker.exists()


@pytest.mark.parametrize("content, fragment", [
    (b"", "unreadable"),
    (b"not a checkpoint at all", "refused: not a weights-only checkpoint"),
    (None, "no state dict"),
])
def test_unreadable_or_odd_files_are_checkpoint_errors(tmp_path, content, fragment):
    path = tmp_path / "weights.pt"
    if content is None:
        torch.save([torch.zeros(2)], path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=fragment):
        read_checkpoint(path)


def test_truncated_checkpoint_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(build_model(tiny_spec_dict()).state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError):
        read_checkpoint(path)


def test_missing_file_and_bad_safetensors(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(CheckpointError, match="is a folder"):
        read_checkpoint(tmp_path)  # a folder
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match="safetensors"):
        read_checkpoint(bad)


def test_checkpoint_errors_are_the_project_error():
    assert issubclass(CheckpointError, CmtGenError)


# ---------------------------------------------------------------- equivalence with the released network

def _assert_close(ours: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
    scale = max(1.0, ref.abs().max().item())
    err = (ours - ref).abs().max().item()
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel:g} x output scale {scale:.3g}"


def _equivalence(layout: dict, name: str, attention: str, batch: int, seed: int) -> None:
    official = _official(layout, name, seed=seed)
    side = layout[name]["resolution"]
    x = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))
    model = _loaded(name, official, attention)
    with torch.no_grad():
        ours = model(x)
    ref = reference_forward(official, x)
    assert ours.shape == ref.shape == (batch, 1000)
    assert ref.std() > 0.1  # a meaningful output, not a collapsed one
    _assert_close(ours, ref, 1e-4)


@pytest.fixture(scope="module")
def ti_case(official_layout):
    """CMT-Ti with random official weights, an input batch and the reference's stage maps and logits."""
    official = _official(official_layout, "cmt_ti", seed=11)
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        maps = forward_features(official, x)
    return official, x, maps, reference_forward(official, x), reference_forward(official, x, pre_logits=True)


@pytest.mark.parametrize("attention", ["fused", "math"])
def test_cmt_ti_matches_the_functional_reference(ti_case, attention):
    official, x, ref_maps, ref_logits, ref_pooled = ti_case
    model = _loaded("cmt_ti", official, attention)
    with torch.no_grad():
        _, maps = model.forward_intermediates(x)
        pooled = model.forward_head(maps[-1], pre_logits=True)
        logits = model(x)
    for ours, ref in zip(maps, ref_maps, strict=True):
        _assert_close(ours, ref, 1e-4)
    _assert_close(pooled, ref_pooled, 1e-4)
    _assert_close(logits, ref_logits, 1e-4)


def test_cmt_ti_matches_in_float64_tightly_enough_to_see_every_eps(official_layout):
    """fp64 agreement to 1e-10: a LayerNorm eps of 1e-5 instead of 1e-6 in one block already shows (~1e-8)."""
    official = _official(official_layout, "cmt_ti", seed=5, dtype=torch.float64)
    x = torch.randn(1, 3, 160, 160, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    model = build_model("cmt_ti", overrides={"block.attention": "math"}).double()
    load_state_dict_strict(model, convert_official_state_dict(official))
    model.eval()
    ref = reference_forward(official, x)
    with torch.no_grad():
        _assert_close(model(x), ref, 1e-10)
        model.stages[2].blocks[4].norm1.eps = 1e-5  # control: the comparison can fail
        assert (model(x) - ref).abs().max().item() > 1e-9


def test_the_comparison_can_fail(ti_case):
    """Control: perturb one BatchNorm running variance in the reference weights; fp32 must notice."""
    official, x, _, ref_logits, _ = ti_case
    model = _loaded("cmt_ti", official)
    changed = dict(official)
    changed["blocks_c.5.mlp.proj_bn.running_var"] = official["blocks_c.5.mlp.proj_bn.running_var"] * 1.01
    with torch.no_grad():
        ours = model(x)
    _assert_close(ours, ref_logits, 1e-4)
    with pytest.raises(AssertionError):
        _assert_close(ours, reference_forward(changed, x), 1e-4)


@pytest.mark.parametrize("attention", ["fused", "math"])
def test_cmt_xs_matches_the_functional_reference(official_layout, attention):
    _equivalence(official_layout, "cmt_xs", attention, batch=1, seed=21)


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["fused", "math"])
@pytest.mark.parametrize("name", ["cmt_s", "cmt_b"])
def test_large_variants_match_the_functional_reference(official_layout, name, attention):
    _equivalence(official_layout, name, attention, batch=1, seed=31)


def test_a_checkpoint_at_another_resolution_loads_with_its_biases_resampled(tmp_path) -> None:
    """A 160 px CMT-Ti checkpoint into a spec at 256 (build --set resolution=256 --weights) was refused on
    the bias shapes; it now loads, says so, and gives what the 160 px model gives for 256 px inputs
    (which resamples the same biases at run time)."""
    import torch

    from cmt_gen import build_model, load_spec
    from cmt_gen.model.convert import load_checkpoint

    torch.manual_seed(0)
    small = build_model(load_spec("cmt_ti")).eval()
    torch.save(small.state_dict(), tmp_path / "ti160.pt")
    big = build_model(load_spec("cmt_ti", ["resolution=256"])).eval()
    note = load_checkpoint(big, tmp_path / "ti160.pt")
    assert note == ("resampled 4 position biases (bicubic) from the checkpoint's resolution 160 to 256, as the "
                    "model does for inputs of another size")
    assert load_checkpoint(small, tmp_path / "ti160.pt") is None  # same size: nothing to say
    x = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        assert torch.allclose(big(x), small(x), rtol=1e-5, atol=1e-5)


def test_build_says_when_it_resampled_the_biases(cli, tmp_path) -> None:
    import torch

    from cmt_gen import build_model, load_spec

    torch.save(build_model(load_spec("cmt_ti")).state_dict(), tmp_path / "ti160.pt")
    result = cli("build", "cmt_ti", "--set", "resolution=192", "--weights", tmp_path / "ti160.pt")
    assert result.code == 0, result.err
    assert "note: resampled 4 position biases (bicubic) from the checkpoint's resolution 160 to 192" in result.out


def test_released_layout_both_ways_keeps_every_key_and_tensor(official_layout, tmp_path, cli) -> None:
    """Ours -> the authors' names -> ours is the identity, and the authors' names are exactly their
    checkpoint's keys and shapes (tests/data), so a fine-tuned model can be shared with code that loads
    theirs; `build --weights ours.pt -o theirs.pth --layout released` writes it."""
    import torch

    from cmt_gen import build_model, load_spec
    from cmt_gen.model.convert import convert_official_state_dict, released_state_dict

    model = build_model(load_spec("cmt_ti"))
    ours = model.state_dict()
    theirs = released_state_dict(ours)
    layout = official_layout["cmt_ti"]["state_dict"]
    assert {k: tuple(v.shape) for k, v in theirs.items()} == {k: tuple(s) for k, s in layout.items()}
    back = convert_official_state_dict(theirs)
    assert back.keys() == ours.keys() and all(back[k] is ours[k] for k in ours)

    torch.save(ours, tmp_path / "ours.pt")
    result = cli("build", "cmt_ti", "--weights", tmp_path / "ours.pt", "-o", tmp_path / "theirs.pth",
                 "--layout", "released")
    assert result.code == 0 and "in the authors' released layout" in result.out, result.err
    saved = torch.load(tmp_path / "theirs.pth", weights_only=True)
    assert set(saved) == {"model"} and set(saved["model"]) == set(layout)
    again = cli("build", "cmt_ti", "--weights", tmp_path / "theirs.pth", "-o", tmp_path / "ours_again.pt")
    assert again.code == 0, again.err
    reloaded = torch.load(tmp_path / "ours_again.pt", weights_only=True)
    assert all(torch.equal(reloaded[k], ours[k]) for k in ours)


def test_a_network_the_released_layout_cannot_hold_is_refused(cli, tmp_path) -> None:
    result = cli("build", "cmt_ti", "--set", "block.position_bias=block", "-o", tmp_path / "x.pth",
                 "--layout", "released")
    assert result.code == 2 and "no place in the released CMT layout" in result.err and result.err.count("\n") == 1
    assert not (tmp_path / "x.pth").exists()
    bad = cli("build", "cmt_ti", "-o", tmp_path / "x.pth", "--layout", "theirs")
    assert bad.code == 2 and "--layout: unknown layout 'theirs'" in bad.err
