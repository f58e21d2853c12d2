"""The details a first-hour user notices: units, budgets as given, block YAML, sorted tables, literal names,
a clean API listing, readable help, honest spreads, and profiling that says how far to trust it."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from conftest import tiny_spec_dict

from cmt_gen import analytic_cost, load_spec

# ---------------------------------------------------------------- API and help


def test_dir_lists_the_api_only() -> None:
    import cmt_gen

    listing = dir(cmt_gen)
    assert {"Any", "annotations", "import_module"}.isdisjoint(listing)
    assert sorted(cmt_gen.__all__) == [n for n in listing if n != "__version__"]
    assert all(callable(getattr(cmt_gen, name)) for name in cmt_gen.__all__)


@pytest.mark.parametrize("command", ["", "build", "validate", "list", "schema", "check", "profile", "new",
                                     "design", "sample", "compare", "export", "calibrate", "predict"])
def test_help_has_no_type_tags_or_braces(cli, command: str) -> None:
    result = cli(*([command] if command else []), "--help")
    assert result.code == 0
    assert "<bool>" not in result.out and "list[" not in result.out
    assert not re.search(r"\{\w+\}", result.out), result.out


# ---------------------------------------------------------------- units

def test_one_unit_per_quantity() -> None:
    from cmt_gen.design.constraints import parse_budget
    from cmt_gen.spec.quantity import format_bytes, format_macs, format_params

    assert format_params(600_000) == "0.60M" and format_params(26_256_160) == "26.26M"
    assert format_macs(639_000_000) == "0.64G" and format_macs(19.499e9) == "19.50G"
    assert format_bytes(95.3 * 2**20) == "95.3 MiB" and format_bytes(3 * 2**30) == "3.00 GiB"
    assert parse_budget("params", "2M..6000M", 0.01).describe() == "2.00M..6000.00M"  # never "2.00M..6.00G"


def test_list_and_check_footer_use_g_for_macs(cli) -> None:
    listing = cli("list")
    assert "0.64G" in listing.out and "0.6B" not in listing.out
    assert "V100" in listing.out  # the paper's img/s column says where it was measured
    footer = cli("check", "cmt_ti").out
    assert "0.55G to 0.65G" in footer and "0.55B" not in footer


def test_design_span_error_uses_one_unit(cli) -> None:
    result = cli("design", "--params", "1M", "--macs", "50G")
    assert result.code == 2
    span = re.search(r"span (\S+)\.\.(\S+)", result.err)
    assert span and span.group(1).endswith("M") and span.group(2).endswith("M"), result.err


# ---------------------------------------------------------------- budgets and written YAML

def test_design_writes_the_budget_as_given_and_check_checks_that_target(cli, tmp_path) -> None:
    out = tmp_path / "l.yaml"
    made = cli("design", "--params", "74.7M", "--macs", "19.5G", "--resolution", "288", "--from", "cmt_b",
               "-o", out)
    assert made.code == 0, made.err
    written = yaml.safe_load(out.read_text())
    assert written["budget"] == {"params": {"target": "74.7M", "tolerance": "1%"},
                                 "macs": {"target": "19.5G", "tolerance": "2%"}}
    checked = cli("check", out, "--json")
    assert checked.code == 0
    params = next(c for c in json.loads(checked.out)["results"][0]["checks"] if c["quantity"] == "params")
    ours = analytic_cost(load_spec(out)).params
    assert params["target"] == "74.7M ±1%" and params["delta_pct"] == pytest.approx((ours / 74.7e6 - 1) * 100)
    assert abs(params["delta_pct"]) < 1  # measured against the target, not against the +1% edge


def test_budget_targets_ranges_and_plain_maxima() -> None:
    from cmt_gen import check_budget
    from cmt_gen.check import budget as B

    cost = analytic_cost(load_spec(tiny_spec_dict()))
    target = check_budget(tiny_spec_dict(budget={"params": {"target": cost.params * 1.005, "tolerance": "1%"}}))
    assert target.verdict == B.WITHIN_BUDGET
    short = check_budget(tiny_spec_dict(budget={"params": {"target": cost.params * 1.05, "tolerance": "1%"}}))
    assert short.verdict == B.OVER_BUDGET and "under budget" in short.notes[0]
    ranged = check_budget(tiny_spec_dict(budget={"macs": {"min": cost.macs // 2, "max": cost.macs * 2}}))
    assert ranged.verdict == B.WITHIN_BUDGET


def test_written_yaml_is_block_style_and_never_wraps(tmp_path) -> None:
    from cmt_gen.design.spec_writer import write_spec

    note = "a provenance line long enough that a YAML writer would like to fold it: " + "word " * 40
    spec = load_spec(tiny_spec_dict(provenance=[note.strip()]))
    text = write_spec(spec, tmp_path / "s.yaml").read_text()
    assert "{" not in text and "[" not in text  # no flow style
    assert any(note.strip() in line for line in text.splitlines())  # on one line
    assert load_spec(tmp_path / "s.yaml") == spec


# ---------------------------------------------------------------- design and new tables

def test_nearest_designs_are_sorted_by_their_score() -> None:
    from cmt_gen.design.search import design_specs

    result = design_specs("cmt_s", params="30M", macs="3G", resolution="224", top=5, tolerance="0.1%")
    assert not result.feasible and len(result.designs) > 1
    scores = [d.score for d in result.designs]
    assert scores == sorted(scores)


def test_new_keeps_the_name_and_fills_the_change_column(cli, tmp_path) -> None:
    result = cli("new", "My_Net", "--from", "cmt_b", "--width", "1.15", "--depth", "1.15", "--resolution", "288",
                 "-o", tmp_path / "n.yaml")
    assert result.code == 0, result.err
    assert "My_Net from cmt_b" in result.out
    rows = {line.split("│")[1].strip(): line.split("│")[-2].strip() for line in result.out.splitlines()
            if line.startswith("│")}
    assert rows["resolution"] == "x1.125" and rows["depths"].endswith("blocks") and rows["expansion"] == "same"
    assert all(rows[k] for k in ("stem channels", "channels", "params", "MACs"))


# ---------------------------------------------------------------- profiling

FAST = ["--device", "cpu", "--batch-size", "2", "--warmup", "0", "--iters", "1", "--min-time", "0"]


def test_one_repeat_shows_no_spread(tiny_spec_file, cli) -> None:
    from cmt_gen import profile_model

    result = profile_model(tiny_spec_dict(), device="cpu", batch_size=2, warmup=0, iters=1, min_time=0,
                           repeats=1, threads=1, measure_peak=False)
    assert result.spread is None
    run = cli("profile", tiny_spec_file, *FAST, "--repeats", "1", "--threads", "1")
    row = next(line for line in run.out.splitlines() if line.startswith("│ tiny"))
    assert row.split("│")[5].strip() == "-"


def test_profile_json_on_stdout_progress_lines_on_stderr_paper_column_labelled(tiny_spec_file, cli) -> None:
    run = cli("profile", tiny_spec_file, *FAST, "--repeats", "2", "--threads", "1", "--json", "-")
    assert run.code == 0, run.err
    payload = json.loads(run.out)  # nothing else on stdout
    assert payload["results"][0]["name"] == "tiny"
    assert re.search(r"\[1/1\] tiny: repeat 1/2", run.err)  # one plain line per step when piped
    from cmt_gen.cost.table2 import THROUGHPUT_NOTE

    assert "paper img/s" in run.err and "V100" in run.err and THROUGHPUT_NOTE in run.err and "MiB" in run.err
    assert "--threads 1" not in run.err  # given: no advice to pass it


class _FakeClock:
    """A clock returning scripted seconds per span: the rates a busy machine would give."""

    def __init__(self, seconds):
        self.seconds = list(seconds)

    def time(self, fn, n=1):
        return self.seconds.pop(0) if self.seconds else 1.0


def test_a_noisy_run_is_extended_then_marked_noisy() -> None:
    from cmt_gen.profile.timing import measure_throughput

    settles = measure_throughput(lambda: None, 1, _FakeClock([1, 3, 1, 1, 1, 1]), warmup=0, iters=1, min_time=0,
                                 repeats=3, max_spread=0.05, extend_time=10)
    assert not settles.noisy and settles.window == [1.0, 1.0, 1.0] and settles.dropped == 2
    stays = measure_throughput(lambda: None, 1, _FakeClock([1, 3] * 20), warmup=0, iters=1, min_time=0,
                               repeats=3, max_spread=0.05, extend_time=6)
    assert stays.noisy and len(stays.rates) > 3 and sum(stays.seconds[3:]) >= 6


def test_default_threads_follow_the_free_cores(monkeypatch) -> None:
    from cmt_gen.profile import env

    monkeypatch.setattr(env.os, "cpu_count", lambda: 4)
    assert env.default_threads("cpu", busy=0.5)[0] == 2
    assert env.default_threads("cpu", busy=0.0)[0] == 4
    assert env.default_threads("cpu", busy=1.0)[0] == 1
    assert env.default_threads("cuda:0") == (None, None)
    assert "--threads 1" in env.busy_warning("cpu", threads_settled=False, busy=0.9)
    assert "--threads 1" not in env.busy_warning("cpu", threads_settled=True, busy=0.9)


def test_load_meter_reports_a_share_of_the_cores() -> None:
    from cmt_gen.profile.env import LoadMeter

    meter = LoadMeter().start()
    sum(i * i for i in range(200_000))  # our own work is not counted as other load
    busy = meter.other_busy()
    assert busy is None or 0.0 <= busy <= 1.0


def test_traced_check_reports_progress_on_stderr_only(tiny_spec_file, cli) -> None:
    result = cli("check", tiny_spec_file, "--counter", "fvcore", "--json")
    assert json.loads(result.out)["results"][0]["spec"] == "tiny"
    assert "check: traced tiny (1/1)" in result.err


def test_compare_takes_set_for_every_spec(cli) -> None:
    result = cli("compare", "cmt_ti", "cmt_xs", "--set", "resolution=224", "--json")
    rows = {(r["section"], r["field"]): r["values"] for r in json.loads(result.out)["rows"]}
    assert rows[("input", "resolution")] == [224, 224]


def test_profile_results_files_have_their_suffix(cli, tmp_path) -> None:
    result = cli("profile", "cmt_ti", "--json", tmp_path / "results.csv")
    assert result.code == 2 and "as .json, not .csv" in result.err and not list(tmp_path.iterdir())


def test_compare_json_diff_keeps_only_differing_rows(cli) -> None:
    every = json.loads(cli("compare", "cmt_b", "cmt_s", "--json").out)["rows"]
    differing = json.loads(cli("compare", "cmt_b", "cmt_s", "--json", "--diff").out)["rows"]
    assert differing == [row for row in every if row["differs"]] and len(differing) < len(every)
