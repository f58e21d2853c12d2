"""Every broken spec ends in exit code 2 and one message naming the file, the field and the rule.

The corpus lives in tests/bad_specs/; BAD_SPECS below is its sidecar table:
file -> (extra CLI arguments, field path or None, fragments the rule must contain).
A hypothesis test then feeds random documents to the loader: nothing but the
project's own error type may come out.
"""

from __future__ import annotations

import copy
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest
import yaml
from conftest import BAD_SPECS, run_cli_subprocess, tiny_spec_dict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmt_gen.errors import CmtGenError, SpecError
from cmt_gen.spec.loading import load_spec
from cmt_gen.spec.yaml_reader import parse_yaml_text

# file -> (extra args, field path named in the message or None, fragments of the rule)
BAD_SPEC_TABLE: dict[str, tuple[tuple[str, ...], str | None, tuple[str, ...]]] = {
    "yaml_syntax_error.yaml": ((), None, ("yaml_syntax_error.yaml:4:", "YAML syntax error")),
    "tab_indent.yaml": ((), None, ("tab_indent.yaml:3:", "YAML syntax error", "'\\t'")),
    "not_a_mapping.yaml": ((), None, ("a spec is a mapping", "list")),
    "empty.yaml": ((), None, ("empty spec",)),
    "comments_only.yaml": ((), None, ("empty spec",)),
    "unknown_key_typo.yaml": ((), "resolutoin", ("unknown key 'resolutoin'", "did you mean 'resolution'")),
    "nested_unknown_key.yaml": ((), "stages.1.dpeth", ("unknown key 'dpeth'", "did you mean 'depth'")),
    "wrong_type.yaml": ((), "resolution", ("valid integer", "'large'")),
    "negative_depth.yaml": ((), "stages.2.depth", ("greater than 0", "-4")),
    "zero_channels.yaml": ((), "stem.channels", ("greater than 0",)),
    "zero_expansion.yaml": ((), "stages.1.expansion", ("greater than 0",)),
    "heads_not_dividing.yaml": ((), "stages.0.heads", ("3 heads do not divide 64 channels",)),
    "resolution_not_divisible.yaml": ((), "resolution", ("230", "total stride 32", "224 or 256")),
    "reduction_not_dividing.yaml": ((), "stages.2.reduction", ("reduction ratio 3", "14x14")),
    "bad_quantity.yaml": ((), "budget.params", ("'25.1Q' is not a quantity", "25.1M")),
    "bad_enum.yaml": ((), "block.attention", ("'fused' or 'math'", "'flash'")),
    "missing_stages.yaml": ((), "stages", ("required field is missing",)),
    "empty_stages.yaml": ((), "stages", ("at least 1 item",)),
    "stages_as_mapping.yaml": ((), "stages", ("valid list",)),
    "alias_bomb.yaml": ((), None, ("alias bomb",)),
    "duplicate_key.yaml": ((), None, ("duplicate_key.yaml:3:", "duplicate key 'resolution'")),
    "non_utf8.yaml": ((), None, ("not UTF-8",)),
    "extends_cycle_a.yaml": ((), "extends", ("cycle", "extends_cycle_a.yaml -> extends_cycle_b.yaml")),
    "extends_missing_base.yaml": ((), "extends", ("'no_such_base.yaml' not found",)),
    "extends_unknown_bundled.yaml": ((), "extends", ("'cmt_sx'", "did you mean 'cmt_s'")),
    "extends_not_a_name.yaml": ((), "extends", ("bundled spec or a path",)),
    "extends_bad_index.yaml": ((), "stages.7", ("index 7 is out of range", "4 items")),
    # Not files of the corpus: a path that does not exist, and a bad --set path on a good spec.
    "does_not_exist.yaml": ((), None, ("no such file",)),
    "../../specs/cmt_ti.yaml": (("--set", "stages.9.depth=1"), "stages.9", ("--set stages.9.depth=1", "out of range")),
}
SUBPROCESS_CASES = ("yaml_syntax_error.yaml", "extends_cycle_a.yaml")


def test_corpus_is_large_and_every_file_has_an_expectation():
    files = {p.name for p in BAD_SPECS.glob("*.yaml")}
    assert len(files) >= 15
    # extends_cycle_b is the other half of the cycle; everything else is listed.
    assert files - set(BAD_SPEC_TABLE) == {"extends_cycle_b.yaml"}
    assert not (BAD_SPECS / "does_not_exist.yaml").exists()


def _check_message(name: str, code: int, err: str) -> None:
    _, field, fragments = BAD_SPEC_TABLE[name]
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one message line, got:\n{err}"
    line = lines[0]
    assert line.startswith("error: ")
    assert Path(name).name in line, line  # names the file
    if field is not None:
        assert f": {field}: " in line, line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"


@pytest.mark.parametrize("name", sorted(BAD_SPEC_TABLE))
def test_validate_reports_one_clear_error(cli, name, monkeypatch):
    monkeypatch.chdir(BAD_SPECS)
    extra, _, _ = BAD_SPEC_TABLE[name]
    result = cli("validate", name, *extra)
    assert result.out == ""
    _check_message(name, result.code, result.err)


@pytest.mark.parametrize("name", ["heads_not_dividing.yaml", "bad_quantity.yaml", "extends_missing_base.yaml"])
def test_build_stops_at_the_same_error(cli, name, monkeypatch):
    monkeypatch.chdir(BAD_SPECS)
    result = cli("build", name)
    _check_message(name, result.code, result.err)


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_real_process_exits_2_without_traceback(name):
    result = run_cli_subprocess("validate", name, cwd=BAD_SPECS)
    _check_message(name, result.code, result.err)


def test_library_raises_spec_error_with_file_field_and_rule():
    with pytest.raises(SpecError) as info:
        load_spec(BAD_SPECS / "heads_not_dividing.yaml")
    assert info.value.field == "stages.0.heads"
    assert "heads_not_dividing.yaml" in info.value.source
    assert "do not divide" in info.value.rule


# ---------------------------------------------------------------- every problem at once, with the legal values

def _three_mistakes() -> dict:
    """Resolution off the stride, heads that do not divide, a negative depth: a field error and two design rules."""
    data = tiny_spec_dict(resolution=70)
    data["stages"][0].update(channels=250, heads=4)
    data["stages"][1]["depth"] = -1
    return data


def test_spec_error_carries_every_problem_and_stays_one_line():
    with pytest.raises(SpecError) as info:
        load_spec(_three_mistakes())
    error = info.value
    assert [(p.source, p.field) for p in error.problems] == [
        ("<dict>", "resolution"), ("<dict>", "stages.0.heads"), ("<dict>", "stages.1.depth")]  # in spec order
    assert "nearest legal: 64 or 96" in error.problems[0].rule
    assert "greater than 0" in error.problems[2].rule
    assert str(error).startswith("<dict>: 3 problems: resolution: 70 is not divisible")
    assert "\n" not in str(error) and error.lines() == [str(error)]  # one line unless a command asks for each
    listed = SpecError.of(error.problems, every_line=True).lines()
    assert listed == [str(p) for p in error.problems]
    assert listed[1].startswith("<dict>: stages.0.heads: 4 heads do not divide 250 channels")


def test_design_rules_still_run_on_the_fields_that_pass():
    """The rules need every field valid to run in the schema; the fields that pass are still checked."""
    data = tiny_spec_dict(num_classes="many")
    data["stages"][2]["heads"] = 5
    data["stages"][0]["reduction"] = 3
    with pytest.raises(SpecError) as info:
        load_spec(data)
    assert [p.field for p in info.value.problems] == ["num_classes", "stages.0.reduction", "stages.2.heads"]
    # a rule whose own inputs are broken is left out: a wrong heads type is reported once, as a type
    data = tiny_spec_dict()
    data["stages"][0]["heads"] = "four"
    with pytest.raises(SpecError) as info:
        load_spec(data)
    assert [p.field for p in info.value.problems] == ["stages.0.heads"]


@pytest.mark.parametrize("channels, heads, fragment", [
    (250, 4, "4 heads do not divide 250 channels (heads that divide 250: 1, 2, 5, 10, 25, 50, 125, 250)"),
    (256, 6, "6 heads do not divide 256 channels (nearest heads that divide 256: 1, 2, 4, 8, 16, 32, 64, 128)"),
    (720, 7, "(nearest heads that divide 720: 4, 5, 6, 8, 9, 10, 12, 15)"),  # 30 divisors: the 8 nearest 7 by ratio
    (97, 2, "(heads that divide 97: 1, 97)"),
])
def test_heads_message_names_the_heads_that_divide(channels, heads, fragment):
    data = tiny_spec_dict()
    data["stages"][3].update(channels=channels, heads=heads)
    with pytest.raises(SpecError) as info:
        load_spec(data)
    assert info.value.field == "stages.3.heads"
    assert fragment in info.value.rule


@pytest.mark.parametrize("resolution, stage, ratio, fragment", [
    (64, 0, 3, "16x16 feature map (input 64x64); ratios that divide it: 1, 2, 4, 8, 16"),
    (224, 0, 3, "56x56 feature map (input 224x224); ratios that divide it: 1, 2, 4, 7, 8, 14, 28, 56"),
    (1024, 0, 100, "(input 1024x1024); nearest ratios that divide it: 2, 4, 8, 16, 32, 64, 128, 256"),
])
def test_reduction_message_names_the_ratios_that_divide(resolution, stage, ratio, fragment):
    data = tiny_spec_dict(resolution=resolution)
    data["stages"][stage]["reduction"] = ratio
    with pytest.raises(SpecError) as info:
        load_spec(data)
    assert info.value.field == f"stages.{stage}.reduction"
    assert fragment in info.value.rule


def test_oversized_file_is_refused_before_parsing(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("name: big\ndescription: '" + "x" * (1 << 20) + "'\n")
    with pytest.raises(SpecError, match="larger than"):
        load_spec(big)


def test_a_folder_is_not_a_spec(tmp_path):
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    with pytest.raises(SpecError, match="not a file"):
        load_spec(folder)


@pytest.mark.parametrize("text, fragment", [
    ("a: " + "1" * 5000, "cannot be read"),       # past Python's int digit limit
    ("a: 2020-13-45", "cannot be read"),            # a timestamp that is no date
    ("[" * 800 + "]" * 800, "nests too deeply"),
    ("a: !!python/object/apply:os.system ['true']", "YAML syntax error"),
    ("--- 1\n--- 2\n", "YAML syntax error"),
    ("a: *nowhere", "YAML syntax error"),
])
def test_hostile_yaml_text(text, fragment):
    with pytest.raises(SpecError, match=fragment):
        parse_yaml_text(text, "doc.yaml")


# ---------------------------------------------------------------- fuzzing

@lru_cache(maxsize=1)
def _valid() -> dict:
    with (Path(__file__).resolve().parents[1] / "specs" / "cmt_ti.yaml").open() as handle:
        return yaml.safe_load(handle)


FIELD_NAMES = ["name", "resolution", "stem", "stages", "channels", "depth", "heads", "reduction", "expansion",
               "head", "fc_channels", "dropout", "block", "attention", "extends", "reference", "params", "macs",
               "budget", "provenance", "drop_path", "qkv_bias", "num_classes", "in_channels", "lpu"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**6), max_value=10**6), st.integers(),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["25.1M", "4.0G", "25.1Q", "cmt_s", "cmt_ti", "fused", "math", "avgpool", "block", "1e999",
                     ".inf", "-3", "0", "stage", "dwconv_bn", "none", "../x.yaml", "2.5"]),
)
keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=8), st.integers(-3, 10), st.booleans())
documents = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(keys, children, max_size=6)),
    max_leaves=30,
)


def _mutate(data: dict, draw) -> dict:
    """Replace, delete or add one value somewhere in a valid spec."""
    data = copy.deepcopy(data)
    node = data
    for _ in range(draw(st.integers(0, 3))):
        children = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        containers = [(k, v) for k, v in children if isinstance(v, (dict, list)) and v]
        if not containers:
            break
        _, node = draw(st.sampled_from(containers))
    key = draw(st.sampled_from(list(node) if isinstance(node, dict) else list(range(len(node)))))
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace":
        node[key] = draw(documents)
    elif action == "delete":
        del node[key]
    elif isinstance(node, dict):
        node[draw(keys)] = draw(documents)
    else:
        node.append(draw(documents))
    return data


def _load_or_own_error(source, overrides=None) -> None:
    try:
        load_spec(source, overrides)
    except CmtGenError as exc:
        assert str(exc)  # a message, never empty


FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(document=documents)
def test_random_dicts_raise_only_our_error(document):
    _load_or_own_error(document if isinstance(document, dict) else {"value": document})


@FUZZ
@given(data=st.data())
def test_mutated_valid_spec_raises_only_our_error(data):
    _load_or_own_error(_mutate(_valid(), data.draw))


@settings(FUZZ, max_examples=50)
@given(data=st.data())
def test_mutated_extending_spec_raises_only_our_error(data):
    child = {"extends": "cmt_ti", "name": "child", "stages": {2: {"depth": 3}}, "provenance": ["mine"]}
    _load_or_own_error(_mutate(child, data.draw))


yaml_alphabet = st.sampled_from(list("abc019 :-[]{}&*!|>'\"%@`#,?.\n\t\\") + ["name", "stages", "extends"])
yaml_texts = st.one_of(
    st.text(max_size=200),
    st.lists(yaml_alphabet, max_size=80).map("".join),
    documents.map(lambda d: yaml.safe_dump(d, default_flow_style=None)),
)


@FUZZ
@given(text=yaml_texts, cut=st.integers(0, 400), junk=st.text(max_size=5))
def test_random_yaml_files_raise_only_our_error(text, cut, junk):
    text = text[:cut] + junk + text[cut:]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spec.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        _load_or_own_error(path)


@FUZZ
@given(text=st.one_of(st.text(max_size=40), st.builds(
    lambda k, v: f"{k}={v}", st.sampled_from(["stages.2.depth", "resolution", "stages", "block.attention",
                                              "stages.x", "a..b", "stem", "stages.-1.heads", "reference.params"]),
    yaml_texts)))
def test_random_overrides_raise_only_our_error(text):
    _load_or_own_error("cmt_ti", [text])


def test_deep_nesting_is_refused_whatever_the_recursion_limit():
    """torch.compile raises Python's recursion limit for the rest of the process; the depth rule stays."""
    import sys

    before = sys.getrecursionlimit()
    sys.setrecursionlimit(max(before, 20000))
    try:
        with pytest.raises(SpecError, match="nests too deeply"):
            parse_yaml_text("[" * 800 + "]" * 800, "doc.yaml")
        with pytest.raises(SpecError, match="nests too deeply"):
            parse_yaml_text("{a: " * 100 + "1" + "}" * 100, "doc.yaml")
    finally:
        sys.setrecursionlimit(before)
