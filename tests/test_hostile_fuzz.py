"""Random careless input to the CLI's entry points: never a traceback, a hang or a stray file.

Each example runs the real entry point in-process within a time bound
(hypothesis's deadline, and an alarm in case of a true hang). Whatever the input,
the command exits 0 (it made sense), 1 (over budget / nothing found) or 2 with
exactly one line on stderr; never 70 (an internal error) and never a traceback.
Only the output path the example names may appear, and only on success.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from hostile_support import make_arena, snapshot, time_limit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(deadline=timedelta(seconds=15), max_examples=60, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

FIELDS = ["name", "resolution", "in_channels", "num_classes", "stem.channels", "stages.0.depth", "stages.1.channels",
          "stages.2.heads", "stages.3.reduction", "stages.0.expansion", "head.fc_channels", "head.dropout",
          "drop_path", "block.attention", "block.reduction_kind", "budget.params", "reference.params", "stages"]

numbers = st.one_of(
    st.integers(min_value=-(10 ** 30), max_value=10 ** 30).map(str),
    st.integers(min_value=0, max_value=1024).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["inf", "-inf", "nan", "1e300", "1e-300", "9" * 400, "0x10", "1_000", "", " ", "..", "1..",
                     "..2", "2..1", "1..1e12", "nan..2", "1e3x", "x", "[1]", "-0", "0.0", "1%", "200%", "3M", "4G",
                     "1.5T", "2M..1M"]),
)
yaml_values = st.one_of(
    numbers,
    st.text(max_size=40),
    st.sampled_from([".inf", ".nan", "~", "null", "true", "[1, 2]", "{a: 1}", "*x", "&a [*a]", "!!python/none",
                     "'unclosed", "[" * 50, "- a\n- b", "\t", "\x00", "\x1b[31m", "[bold]x[/]"]),
)
override_keys = st.one_of(st.sampled_from(FIELDS), st.text(min_size=0, max_size=30),
                          st.lists(st.sampled_from(["stages", "0", "-1", "99", "depth", "a", ""]), min_size=1,
                                   max_size=20).map(".".join))


@pytest.fixture
def arena(tmp_path, monkeypatch):
    root = make_arena(tmp_path / "arena")
    monkeypatch.chdir(root)
    return root


def _check(cli, arena, argv: list[str], output: str | None = None) -> None:
    before = snapshot(arena)
    with time_limit(60):
        result = cli(*argv)
    assert "Traceback" not in result.err + result.out, (argv, result.err)
    assert result.code in (0, 1, 2), (argv, result.code, result.err)
    if result.code == 2:
        lines = result.err.strip("\n").splitlines()
        if argv[0] == "validate":  # validate lists every problem of a spec, one line each
            assert lines and all(line.startswith("error: ") for line in lines), (argv, result.err)
        else:
            assert len(lines) == 1, (argv, result.err)
    after = snapshot(arena)
    created = set(after) - set(before)
    if output is not None and result.code == 0:
        created.discard(output)
        after.pop(output, None)
        (arena / output).unlink(missing_ok=True)
    assert created == set(), (argv, created)
    assert {k: v for k, v in after.items() if k in before} == before, argv


@FUZZ
@given(command=st.sampled_from(["validate", "check"]), source=st.sampled_from(["cmt_ti", "tiny.yaml", "child.yaml"]),
       key=override_keys, value=yaml_values)
def test_fuzz_set_overrides(cli, arena, command, source, key, value):
    _check(cli, arena, [command, source, "--set", f"{key}={value}"])


@FUZZ
@given(source=st.text(max_size=60))
def test_fuzz_spec_source(cli, arena, source):
    _check(cli, arena, ["validate", source])


def option(flag: str, *good: str):
    """A flag left out or given a sensible value (3 in 4), or a hostile one: the deep paths get exercised too."""
    def pick(kind: int, sensible: str, hostile: str) -> list[str]:
        return [] if kind == 0 else [flag, sensible] if kind < 3 else [flag, hostile]

    return st.builds(pick, st.integers(0, 3), st.sampled_from(good), numbers)


def argv_of(parts: list[list[str]]) -> list[str]:
    return [item for part in parts for item in part]


@FUZZ
@given(name=st.one_of(st.text(max_size=20), st.just("ok")),
       parts=st.tuples(option("--width", "1.25", "0.75"), option("--depth", "1.5", "1"),
                       option("--resolution", "128", "1.5x", "96"), option("--divisor", "8", "4")))
def test_fuzz_new(cli, arena, name, parts):
    _check(cli, arena, ["new", name, "--from", "tiny.yaml", *argv_of(list(parts)), "-o", "out.yaml"],
           output="out.yaml")


@settings(FUZZ, max_examples=40)
@given(parts=st.tuples(option("--params", "60K..90K", "70K", "..1M"), option("--macs", "2M..5M", "3.3M", "1M.."),
                       option("--resolution", "64", "32..128"), option("--top", "1", "3"),
                       option("--tolerance", "5%", "1%,2%"), option("--divisor", "8", "2")))
def test_fuzz_design(cli, arena, parts):
    _check(cli, arena, ["design", "--from", "tiny.yaml", *argv_of(list(parts))])


@settings(FUZZ, max_examples=40)
@given(parts=st.tuples(option("--n", "1", "2", "4"), option("--width-range", "0.5..2", "1..1.5"),
                       option("--depth-range", "0.5..2"),
                       option("--expansion-range", "2..4"), option("--resolution", "64", "32..128"),
                       option("--seed", "0", "7"), option("--macs", "1M..10M"), option("--params", "..1M")))
def test_fuzz_sample(cli, arena, parts):
    _check(cli, arena, ["sample", "--from", "tiny.yaml", *argv_of(list(parts)), "-o", "out.jsonl"],
           output="out.jsonl")


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(
        st.sampled_from(["name", "spec", "images_per_s", "throughput", "results", "error", "settings", "median"]),
        inner, max_size=4)),
    max_leaves=20,
)


@settings(FUZZ, max_examples=40)
@given(payload=json_values)
def test_fuzz_profile_results_read_by_compare(cli, arena, payload):
    """Whatever JSON a --profile file holds, compare shows the specs or refuses the file in one line."""
    import json

    (arena / "random.json").write_text(json.dumps(payload))
    _check(cli, arena, ["compare", "tiny.yaml", "--profile", "random.json"])
    (arena / "random.json").unlink()


# ---------------------------------------------------------------- readers of calibration and results files

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10 ** 400), max_value=10 ** 400),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def calibration_text() -> str:
    from test_latency import BATCH, FACTOR, fake_timer

    from cmt_gen.latency.calibrate import calibrate
    from cmt_gen.latency.features import spec_parts

    cal = calibrate(device="cpu", batch_size=BATCH, threads=1, blocks_per_stage=3, timer=fake_timer,
                    network_timer=lambda spec: FACTOR * sum(n * fake_timer(p) for p, n in spec_parts(spec)))
    return cal.to_json()


def _leaf_paths(data, prefix=()):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaf_paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _leaf_paths(value, (*prefix, i))
    yield prefix


@FUZZ
@given(data=st.data())
def test_a_calibration_with_any_value_anywhere_is_valid_or_one_clear_error(calibration_text, tmp_path_factory,
                                                                            data):
    """Whatever a hand-edited calibration holds, loading it gives a usable model (finite, positive
    predictions) or a CalibrationError; never another exception."""
    import json
    import math

    from cmt_gen.latency.calibration_file import CalibrationError, load_calibration
    from cmt_gen.latency.predict import predict_latency

    doc = json.loads(calibration_text)
    paths = [p for p in _leaf_paths(doc) if p]
    path = data.draw(st.sampled_from(paths))
    value = data.draw(json_values)
    target = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    file = tmp_path_factory.mktemp("cal") / "cal.json"
    file.write_text(json.dumps(doc))
    try:
        cal = load_calibration(file)
    except CalibrationError as exc:
        assert "\n" not in str(exc)
        return
    try:
        prediction = predict_latency("cmt_ti", cal)
    except CalibrationError:
        return  # e.g. block options that the spec does not have
    assert math.isfinite(prediction.latency_ms) and prediction.latency_ms > 0
    assert math.isfinite(prediction.images_per_s) and prediction.images_per_s > 0


profile_records = st.lists(st.fixed_dictionaries(
    {"name": st.sampled_from(["cmt_s", "cmt_ti", "", "x"]), "images_per_s": json_values},
    optional={"source": st.sampled_from(["predicted", "measured"]), "measured_images_per_s": json_values,
              "error": json_values, "settings": json_values}), max_size=4)


@FUZZ
@given(doc=st.one_of(json_values, profile_records))
def test_a_profile_file_with_any_json_is_read_or_one_clear_error(tmp_path_factory, doc):
    import json
    import math

    from cmt_gen.design.compare import load_profile
    from cmt_gen.errors import CmtGenError

    file = tmp_path_factory.mktemp("profile") / "p.json"
    file.write_text(json.dumps(doc))
    try:
        found = load_profile(file)
    except CmtGenError as exc:
        assert "\n" not in str(exc)
        return
    assert all(math.isfinite(t.images_per_second) and t.images_per_second > 0 for t in found.values())
