"""The spec schema and loader: quantities, bundled specs, `extends`, overrides, design rules, provenance."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from conftest import LAYOUT_FILE, RELEASED, tiny_spec_dict
from hypothesis import given, settings
from hypothesis import strategies as st

from cmt_gen import load_spec
from cmt_gen.errors import CmtGenError, SpecError
from cmt_gen.files import write_atomic
from cmt_gen.spec.bundled import bundled_names
from cmt_gen.spec.loading import affects_cost, parse_override
from cmt_gen.spec.quantity import format_quantity, parse_quantity, printed_interval
from cmt_gen.spec.schema import CMTSpec, design_problems
from cmt_gen.spec.serialize import spec_to_dict, spec_to_yaml
from cmt_gen.spec.validation import validate_spec

# ---------------------------------------------------------------- quantities


@pytest.mark.parametrize("text, value", [
    ("25.1M", 25.1e6), ("4.0G", 4.0e9), ("0.6B", 0.6e9), ("74.7m", 74.7e6), ("10K", 1e4), ("1.5T", 1.5e12),
    ("26256160", 26256160.0), (" 9.5M ", 9.5e6), ("1e3K", 1e6), (12, 12.0), (0.5, 0.5), (".5G", 0.5e9),
])
def test_quantities_parse(text, value):
    assert parse_quantity(text) == pytest.approx(value)


@pytest.mark.parametrize("bad", ["25.1Q", "", "M", "-3M", "25.1 MM", "1,000", "nan", "inf", True, None, [1],
                                 float("inf"), float("nan"), -1])
def test_bad_quantities_are_refused_with_the_rule(bad):
    with pytest.raises(ValueError, match="quantity|number"):
        parse_quantity(bad)


def test_quantity_formatting_and_printed_interval():
    assert format_quantity(26_256_160) == "26.26M"
    assert format_quantity(4.032e9) == "4.03G"
    assert format_quantity(950) == "950"
    low, high = printed_interval("0.6G")
    assert (low, high) == (pytest.approx(0.55e9), pytest.approx(0.65e9))
    low, high = printed_interval("25.1M")
    assert (low, high) == (pytest.approx(25.05e6), pytest.approx(25.15e6))


def test_spec_quantity_fields():
    spec = load_spec("cmt_s", ["budget.params=25.1M", "budget.macs=4.0G"])
    # A plain budget figure is an upper limit, kept as written.
    assert spec.budget.params.max == "25.1M" and spec.budget.params.bounds("params") == (0.0, pytest.approx(25.1e6))
    assert spec.budget.macs.bounds("macs") == (0.0, pytest.approx(4.0e9))
    assert spec.reference.params == "25.1M"  # paper figures stay as printed: their digits are their precision
    assert spec.reference.interval("macs") == (pytest.approx(3.95e9), pytest.approx(4.05e9))
    with pytest.raises(SpecError, match="not a quantity"):
        load_spec("cmt_s", ["reference.macs=4.0Q"])


# ---------------------------------------------------------------- bundled specs

# Transcribed from shared/reference/cmt-architecture.md (Variants table).
DOC_TABLE = {
    "cmt_ti": (160, 16, (46, 92, 184, 368), (2, 2, 10, 2), 3.6, 0.1),
    "cmt_xs": (192, 16, (52, 104, 208, 416), (3, 3, 12, 3), 3.77, 0.1),
    "cmt_s": (224, 32, (64, 128, 256, 512), (3, 3, 16, 3), 4.0, 0.1),
    "cmt_b": (256, 38, (76, 152, 304, 608), (4, 4, 20, 4), 4.0, 0.3),
}


def test_bundled_specs_are_the_released_variants():
    assert set(RELEASED) <= set(bundled_names())


@pytest.mark.parametrize("name", RELEASED)
def test_bundled_spec_matches_the_architecture_table(name):
    resolution, stem, channels, depths, expansion, dropout = DOC_TABLE[name]
    spec = load_spec(name)
    assert spec.name == name
    assert (spec.resolution, spec.stem.channels) == (resolution, stem)
    assert tuple(s.channels for s in spec.stages) == channels
    assert tuple(s.depth for s in spec.stages) == depths
    assert tuple(s.heads for s in spec.stages) == (1, 2, 4, 8)
    assert tuple(s.reduction for s in spec.stages) == (8, 4, 2, 1)
    assert all(s.expansion == expansion for s in spec.stages)
    assert spec.head == spec.head.__class__(fc_channels=1280, dropout=dropout)
    assert (spec.block.attention.value, spec.block.lpu, spec.block.reduction_kind.value,
            spec.block.position_bias.value) == ("fused", True, "dwconv_bn", "stage")
    assert spec.qkv_bias and spec.num_classes == 1000 and spec.in_channels == 3
    assert spec.reference is not None and spec.reference.resolution == resolution


def test_layout_resolutions_agree_with_bundled_specs():
    data = json.loads(LAYOUT_FILE.read_text())
    assert {name: data[name]["resolution"] for name in RELEASED} == {n: DOC_TABLE[n][0] for n in RELEASED}


@pytest.mark.parametrize("alias", ["CMT-S", "cmt-s", "cmt_s", " cmt_s "])
def test_bundled_names_are_forgiving_about_case_and_dashes(alias):
    assert load_spec(alias).name == "cmt_s"


def test_unknown_bundled_name_suggests_the_nearest():
    with pytest.raises(SpecError, match=r"did you mean 'cmt_ti'"):
        load_spec("cmt_tii")


def test_load_spec_takes_a_name_a_path_or_a_dict(tmp_path):
    by_name = load_spec("cmt_xs")
    path = tmp_path / "xs.yaml"
    path.write_text(spec_to_yaml(by_name))
    assert load_spec(path) == by_name
    assert load_spec(str(path)) == by_name
    assert load_spec(spec_to_dict(by_name)) == by_name
    assert isinstance(by_name, CMTSpec)


# ---------------------------------------------------------------- schema

@pytest.mark.parametrize("where, key, hint", [
    ((), "resolutoin", "resolution"),
    (("stem",), "chanels", "channels"),
    (("head",), "fc_chanels", "fc_channels"),
    (("block",), "atention", "attention"),
    (("stages", 1), "reducton", "reduction"),
])
def test_unknown_keys_are_rejected_with_did_you_mean(where, key, hint):
    data = tiny_spec_dict(block={})
    node = data
    for part in where:
        node = node[part]
    node[key] = node.pop(hint, 1)
    with pytest.raises(SpecError) as info:
        load_spec(data)
    field = ".".join(map(str, (*where, key)))
    assert info.value.field == field  # one problem: the typo, not also its missing twin
    assert f"did you mean {hint!r}" in info.value.rule


def test_unknown_key_without_a_close_match_lists_the_allowed_keys():
    with pytest.raises(SpecError, match=r"unknown key 'zzz' \(allowed: .*resolution"):
        load_spec(tiny_spec_dict(zzz=1))


def test_spec_is_immutable():
    spec = load_spec("cmt_ti")
    with pytest.raises(Exception, match="frozen"):
        spec.resolution = 192


def test_several_problems_are_listed_in_one_message():
    data = tiny_spec_dict(resolution=-1, num_classes="many")
    del data["stem"]
    with pytest.raises(SpecError) as info:
        load_spec(data)
    message = str(info.value)
    assert message.startswith("<dict>: 3 problems:")
    for fragment in ("resolution: Input should be greater than 0", "num_classes:", "stem: required field"):
        assert fragment in message


# ---------------------------------------------------------------- cross-field rules

@pytest.mark.parametrize("override, field, fragment", [
    ("stages.0.heads=3", "stages.0.heads", "3 heads do not divide 16 channels"),
    ("resolution=80", "resolution", "80 is not divisible by the total stride 32"),
    ("resolution=16", "resolution", "nearest legal: 32"),
    ("stages.0.reduction=3", "stages.0.reduction", "reduction ratio 3 does not divide the stage's 16x16"),
    ("stages.2.reduction=8", "stages.2.reduction", "4x4"),
    ("stages.1.expansion=0.01", "stages.1.expansion", "0 hidden channels"),
    ("stages.1.expansion=0", "stages.1.expansion", "greater than 0"),
    ("stages.1.expansion=-2", "stages.1.expansion", "greater than 0"),
    ("stages.1.expansion=.inf", "stages.1.expansion", "should be a finite number"),
    ("stages.1.channels=0", "stages.1.channels", "greater than 0"),
    ("stages.1.depth=0", "stages.1.depth", "greater than 0"),
    ("stages.1.heads=0", "stages.1.heads", "greater than 0"),
    ("stages.1.reduction=0", "stages.1.reduction", "greater than 0"),
    ("stem.channels=-8", "stem.channels", "greater than 0"),
    ("resolution=0", "resolution", "greater than 0"),
    ("in_channels=0", "in_channels", "greater than 0"),
    ("head.fc_channels=0", "head.fc_channels", "greater than 0"),
    ("head.dropout=1.0", "head.dropout", "less than 1"),
    ("drop_path=-0.1", "drop_path", "greater than or equal to 0"),
    ("num_classes=-1", "num_classes", "greater than or equal to 0"),
    ("block.reduction_kind=maxpool", "block.reduction_kind", "'dwconv_bn', 'avgpool' or 'conv_ln'"),
    ("block.position_bias=global", "block.position_bias", "'stage', 'block', 'none' or 'table'"),
])
def test_design_rules_name_the_field_and_the_rule(override, field, fragment, tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_spec_dict()))
    with pytest.raises(SpecError) as info:
        load_spec(path, [override])
    assert info.value.field == field
    assert fragment in info.value.rule
    assert str(path) in info.value.source


def test_design_problems_at_another_input_size():
    spec = load_spec(tiny_spec_dict(resolution=128, stages=[
        {"channels": 16, "depth": 1, "heads": 1, "reduction": 4, "expansion": 2},
        {"channels": 24, "depth": 1, "heads": 2, "reduction": 2, "expansion": 2},
        {"channels": 32, "depth": 1, "heads": 4, "reduction": 8, "expansion": 2},
        {"channels": 48, "depth": 1, "heads": 4, "reduction": 1, "expansion": 2},
    ]))
    assert design_problems(spec, 128, 128) == []
    assert design_problems(spec, 256, 128) == []
    assert [f for f, _ in design_problems(spec, 96, 128)] == ["stages.2.reduction"]
    assert [f for f, _ in design_problems(spec, 100, 128)] == ["resolution"]


def test_total_stride_and_stage_sizes_follow_the_number_of_stages():
    spec = load_spec("cmt_s")
    assert spec.total_stride == 32
    assert spec.stage_sizes() == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert spec.stage_sizes(256, 192) == [(64, 48), (32, 24), (16, 12), (8, 6)]
    three = load_spec(tiny_spec_dict(resolution=64, stages=tiny_spec_dict()["stages"][:3]))
    assert three.total_stride == 16


# ---------------------------------------------------------------- extends and overrides

def _write(path: Path, data: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def test_extends_a_bundled_spec_with_an_index_mapping_into_the_stage_list(tmp_path):
    child = _write(tmp_path / "deep_s.yaml", "extends: cmt_s\nname: deep_s\nstages: {2: {depth: 18}}\n")
    spec, base = load_spec(child), load_spec("cmt_s")
    assert spec.name == "deep_s"
    assert [s.depth for s in spec.stages] == [3, 3, 18, 3]
    assert spec.stages[2].model_copy(update={"depth": 16}) == base.stages[2]  # the rest of stage 2 is kept
    assert spec.stages[:2] == base.stages[:2] and spec.stages[3] == base.stages[3]
    assert (spec.resolution, spec.stem, spec.head) == (base.resolution, base.stem, base.head)


def test_string_and_negative_indices_and_nested_mappings_merge(tmp_path):
    child = _write(tmp_path / "c.yaml", {
        "extends": "cmt_ti", "name": "c",
        "stages": {"1": {"heads": 4}, -1: {"depth": 3}},
        "block": {"attention": "math"},
    })
    spec = load_spec(child)
    assert [s.heads for s in spec.stages] == [1, 4, 4, 8]
    assert [s.depth for s in spec.stages] == [2, 2, 10, 3]
    assert spec.block.attention.value == "math" and spec.block.lpu  # sibling keys of block kept


def test_a_list_in_the_child_replaces_the_base_list(tmp_path):
    stages = tiny_spec_dict()["stages"]
    child = _write(tmp_path / "c.yaml", {"extends": "cmt_ti", "name": "c", "resolution": 64, "stem": {"channels": 8},
                                         "stages": stages})
    spec = load_spec(child)
    assert [s.channels for s in spec.stages] == [s["channels"] for s in stages]


def test_extends_paths_are_relative_to_the_spec_file(tmp_path, monkeypatch):
    _write(tmp_path / "family" / "base.yaml", tiny_spec_dict(name="base"))
    _write(tmp_path / "family" / "wide" / "child.yaml", "extends: ../base.yaml\nname: child\nstem: {channels: 12}\n")
    grandchild = _write(tmp_path / "family" / "wide" / "grand.yaml", "extends: child.yaml\nname: grand\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = load_spec(grandchild)
    assert (spec.name, spec.stem.channels, spec.resolution) == ("grand", 12, 64)
    assert spec.provenance[-2:] == ["extends ../base.yaml (changes cost: stem.channels)", "extends child.yaml"]


def test_extends_inside_a_dict_source():
    spec = load_spec({"extends": "cmt_ti", "name": "from_dict", "drop_path": 0.2})
    assert spec.drop_path == 0.2 and spec.stages == load_spec("cmt_ti").stages


def test_dotted_overrides_are_applied_and_revalidated():
    spec = load_spec("cmt_s", ["stages.2.depth=18", "resolution=256"])
    assert [s.depth for s in spec.stages] == [3, 3, 18, 3]
    assert spec.resolution == 256
    same = load_spec("cmt_s", {"stages.2.depth": 18, "resolution": 256})
    assert same.stages == spec.stages and same.resolution == spec.resolution
    with pytest.raises(SpecError, match="not divisible by the total stride"):
        load_spec("cmt_s", ["stages.2.depth=18", "resolution=250"])


@pytest.mark.parametrize("text, parts, value", [
    ("stages.2.depth=18", ["stages", "2", "depth"], 18),
    ("block.attention=math", ["block", "attention"], "math"),
    ("qkv_bias=false", ["qkv_bias"], False),
    ("drop_path=0.25", ["drop_path"], 0.25),
    ("budget.params=25.1M", ["budget", "params"], "25.1M"),
    ("stages.0={channels: 8, depth: 1}", ["stages", "0"], {"channels": 8, "depth": 1}),
    ("description=a = b", ["description"], "a = b"),
    ("name=", ["name"], ""),
])
def test_override_values_are_read_as_yaml(text, parts, value):
    assert parse_override(text) == (parts, value)


@pytest.mark.parametrize("overrides, field, fragment", [
    (["stages.9.depth=1"], "stages.9", "out of range"),
    (["stages.x.depth=1"], "stages.x", "indexed by a whole number"),
    (["resolution.x=1"], "resolution.x", "not a mapping or list"),
    (["stagez.2.depth=1"], "stagez", "did you mean 'stages'"),
    (["stages.2.depth=-1"], "stages.2.depth", "greater than 0"),
    (["resolution"], None, "key.path=value"),
    (["=3"], None, "key.path=value"),
    (["a..b=3"], None, "empty path component"),
    (["stages.2.depth=[1, 2"], None, "YAML syntax error"),
    ([7], None, "string"),
])
def test_bad_overrides_name_the_override_and_the_rule(overrides, field, fragment):
    with pytest.raises(SpecError) as info:
        load_spec("cmt_ti", overrides)
    assert info.value.field == field
    assert fragment in str(info.value)


def test_a_single_override_string_is_one_override():
    assert [s.depth for s in load_spec("cmt_ti", "stages.2.depth=4").stages] == [2, 2, 4, 2]


# ---------------------------------------------------------------- reference and provenance

@pytest.mark.parametrize("overrides", [["stages.2.depth=18"], ["resolution=256"], ["stem.channels=24"],
                                       ["stages.0.expansion=3"], ["num_classes=10"], ["block.lpu=false"],
                                       ["block.position_bias=none"], ["qkv_bias=false"], ["head.fc_channels=1024"]])
def test_cost_affecting_overrides_drop_the_paper_reference(overrides):
    spec = load_spec("cmt_s", overrides)
    assert spec.reference is None
    assert any(overrides[0] in line and "changes cost" in line for line in spec.provenance), spec.provenance


@pytest.mark.parametrize("overrides", [["block.attention=math"], ["drop_path=0.2"], ["head.dropout=0.2"],
                                       ["name=renamed"], ["description=mine"], ["budget.params=20M"]])
def test_cost_neutral_overrides_keep_the_reference(overrides):
    base = load_spec("cmt_s")
    spec = load_spec("cmt_s", overrides)
    assert spec.reference == base.reference
    assert spec.provenance[: len(base.provenance)] == base.provenance
    assert spec.provenance[-1] == f"overrides: {overrides[0]}"


def test_overriding_the_reference_itself_keeps_it():
    spec = load_spec("cmt_s", ["stages.2.depth=18", "reference.params=27.5M"])
    assert spec.reference is not None and spec.reference.params == "27.5M"


def test_extends_with_a_cost_change_drops_the_reference_and_records_it(tmp_path):
    changed = load_spec(_write(tmp_path / "a.yaml", "extends: cmt_s\nname: a\nstages: {2: {depth: 18}}\n"))
    assert changed.reference is None
    assert changed.provenance[-1] == "extends cmt_s (changes cost: stages.2.depth)"
    neutral = load_spec(_write(tmp_path / "b.yaml", "extends: cmt_s\nname: b\nblock: {attention: math}\n"))
    assert neutral.reference == load_spec("cmt_s").reference
    assert neutral.provenance[-1] == "extends cmt_s"
    own = load_spec(_write(tmp_path / "c.yaml", "extends: cmt_s\nname: c\nprovenance: [my note]\n"))
    assert own.provenance[-2:] == ["extends cmt_s", "my note"]


@pytest.mark.parametrize("path, costs", [
    ("resolution", True), ("stages.2.depth", True), ("stem.channels", True), ("block.lpu", True),
    ("name", False), ("block.attention", False), ("block.gelu_approximation", False), ("drop_path", False),
    ("head.dropout", False),
    ("reference.params", False), ("budget.macs", False), ("provenance", False),
])
def test_affects_cost(path, costs):
    assert affects_cost(path) is costs


# ---------------------------------------------------------------- writing

def test_yaml_round_trip_of_every_bundled_spec():
    for name in bundled_names():
        spec = load_spec(name)
        again = validate_spec(yaml.safe_load(spec_to_yaml(spec)), "round trip")
        assert again == spec


def test_write_atomic_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "out.yaml"
    write_atomic(target, "first\n")
    write_atomic(target, b"second\n")
    assert target.read_text() == "second\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.yaml"]
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # as a plain open() would create it
    target.chmod(0o600)
    write_atomic(target, "third\n")  # an overwritten private output stays private (it once became 0644)
    assert target.stat().st_mode & 0o777 == 0o600 and target.read_text() == "third\n"


def test_write_atomic_failure_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.yaml"
    target.write_text("old\n")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(CmtGenError, match="cannot write: No space left on device"):
        write_atomic(target, "new\n")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.yaml"]


def test_write_atomic_into_a_missing_folder_is_our_error(tmp_path):
    with pytest.raises(CmtGenError, match="folder does not exist"):
        write_atomic(tmp_path / "nope" / "out.yaml", "x")


def test_write_atomic_where_nothing_can_be_written_is_our_error(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(CmtGenError, match="cannot write"):
        write_atomic(tmp_path / "taken", "x")  # a folder stands where the file should go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


# ---------------------------------------------------------------- property: legal designs load and round-trip

@st.composite
def legal_designs(draw) -> dict:
    n = draw(st.integers(1, 5))
    resolution = 2 ** (n + 1) * draw(st.integers(1, 8))
    stages = []
    for i in range(n):
        side = resolution // 2 ** (i + 2)
        heads = draw(st.integers(1, 4))
        divisors = [k for k in range(1, side + 1) if side % k == 0]
        stages.append({
            "channels": heads * draw(st.integers(1, 16)), "depth": draw(st.integers(1, 4)), "heads": heads,
            "reduction": draw(st.sampled_from(divisors)), "expansion": draw(st.sampled_from([1, 2, 3.6, 3.77, 4])),
        })
    return {"name": "random", "resolution": resolution, "stem": {"channels": draw(st.integers(1, 32))},
            "stages": stages, "drop_path": draw(st.floats(0, 0.5)),
            "block": {"attention": draw(st.sampled_from(["fused", "math"])),
                      "reduction_kind": draw(st.sampled_from(["dwconv_bn", "avgpool", "conv_ln"]))}}


@settings(max_examples=40, deadline=None)
@given(design=legal_designs())
def test_legal_designs_load_and_round_trip(design):
    spec = load_spec(design)
    assert design_problems(spec, spec.resolution, spec.resolution) == []
    assert validate_spec(yaml.safe_load(spec_to_yaml(spec)), "round trip") == spec


def test_the_tiny_spec_file_is_the_tests_tiny_spec():
    """`.ci/floor` exports tests/data/tiny.yaml; it must stay the network the tests build."""
    import yaml
    from conftest import REPO, tiny_spec_dict

    assert yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text()) == tiny_spec_dict()
