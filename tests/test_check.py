"""`check_budget` and `cmt-gen check`: verdicts follow the printed precision and say what they found.

Expected figures come from Table 2 (cmt_gen.cost.table2, checked here against the
transcription in tests/data/paper_table2.txt) and from the analytic counter, never
typed in: a test compares two sources, it does not restate one.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from conftest import PAPER_TABLE2, run_cli_subprocess, tiny_spec_dict

from cmt_gen import analytic_cost, check_budget, load_spec
from cmt_gen.check import budget as B
from cmt_gen.cost import table2
from cmt_gen.errors import CmtGenError
from cmt_gen.spec.quantity import parse_quantity, printed_interval
from cmt_gen.spec.serialize import spec_to_dict

FIVE = ("cmt_ti", "cmt_xs", "cmt_s", "cmt_b", "cmt_l")


# ---------------------------------------------------------------- Table 2 as data

def test_table2_rows_match_the_transcribed_paper() -> None:
    """Every data row of the transcription's Table 2 is in the package, figure for figure."""
    text = PAPER_TABLE2.read_text(encoding="utf-8")
    block = text.split("Table 2.")[1].split("FIG 9")[0]
    lines = [ln.split("\t") for ln in block.splitlines() if ln.count("\t") == 7][1:]
    assert len(lines) == len(table2.rows())
    for cells, row in zip(lines, table2.rows(), strict=True):
        model, top1, top5, throughput, params, resolution, flops, ratio = (c.strip() for c in cells)
        assert row.model == re.sub(r"\s*\[\d+\]$", "", model).replace(" _{↑384}", " (384)")
        assert row.top1 == top1.rstrip("%")
        assert row.top5 == (None if top5 == "-" else top5.rstrip("%"))
        assert row.throughput == (None if throughput == "-" else throughput)
        assert row.params == params and row.flops == flops
        assert row.resolution == int(re.match(r"\d+", resolution).group())
        assert row.ratio == ratio.rstrip("×")


def test_bundled_references_are_table2_figures() -> None:
    for row in table2.cmt_rows():
        ref = load_spec(row.spec).reference
        assert ref is not None, row.spec
        assert printed_interval(ref.params) == row.interval("params")
        assert printed_interval(ref.macs) == row.interval("flops")
        assert (ref.top1, ref.top5, ref.throughput, ref.resolution) == (
            float(row.top1), float(row.top5), float(row.throughput), row.resolution)


def test_table2_lookup_and_peers() -> None:
    assert table2.row("CMT-S") is table2.row("cmt_s") is table2.for_spec("cmt_s")
    assert table2.row("Swin-T").timm == "swin_tiny_patch4_window7_224"
    assert table2.row("PVT-M").timm is None  # PVT v1: timm has only v2
    assert all(r.timm is None for r in table2.cmt_rows())
    assert {r.spec for r in table2.cmt_rows()} == set(FIVE)
    with pytest.raises(KeyError):
        table2.row("CMT-XL")


# ---------------------------------------------------------------- CMT-L derivation

def test_cmt_l_is_within_the_derivation_tolerance_of_table2() -> None:
    spec, row = load_spec("cmt_l"), table2.row("CMT-L")
    cost = analytic_cost(spec)
    assert abs(cost.params / row.value("params") - 1) <= 0.01
    assert abs(cost.macs / row.value("flops") - 1) <= 0.02
    assert spec.resolution == row.resolution == 288
    assert [s.heads for s in spec.stages] == [1, 2, 4, 8]
    assert [s.reduction for s in spec.stages] == [8, 4, 2, 1]
    assert all(s.expansion == 4 and s.channels % 8 == 0 for s in spec.stages)
    assert any(line.lower().startswith("derived configuration") for line in spec.provenance)
    assert any("not the authors" in line for line in spec.provenance)


# ---------------------------------------------------------------- verdicts

def test_released_variants_match_their_printed_figures() -> None:
    for name in ("cmt_ti", "cmt_xs", "cmt_b"):
        result = check_budget(name)
        assert result.verdict == B.MATCHES, result.notes
        for check in result.checks:
            assert check.low <= check.ours <= check.high


def test_cmt_s_parameter_gap_is_a_visible_discrepancy() -> None:
    result = check_budget("cmt_s")
    params = result.check("params")
    assert result.verdict == B.DISCREPANCY and params.status == B.DISCREPANCY
    assert not params.low <= params.ours <= params.high  # not hidden by a tolerance
    assert result.check("macs").status == B.MATCHES
    note = " ".join(result.notes)
    assert "25.1M" in note and f"{analytic_cost('cmt_s').params:,}" in note
    assert B.exit_code([result]) == 0 and not result.failed
    assert B.exit_code([result], strict=True) == 1


def test_undocumented_gap_fails() -> None:
    """The same gap without the provenance line is a plain failure."""
    data = spec_to_dict(load_spec("cmt_s"))
    data["provenance"] = [p for p in data["provenance"] if not p.startswith("Paper/code")]
    result = check_budget(data)
    assert result.verdict == B.DIFFERS and result.failed
    assert B.exit_code([result]) == 1


def test_discrepancy_line_covers_only_the_figure_it_names() -> None:
    """CMT-S's line is about parameters: a MAC gap stays a failure."""
    data = spec_to_dict(load_spec("cmt_s"))
    data["reference"]["macs"] = "4.2G"
    result = check_budget(data)
    assert result.check("macs").status == B.DIFFERS and result.verdict == B.DIFFERS


def test_cmt_l_is_a_derived_configuration() -> None:
    result = check_budget("cmt_l")
    assert result.verdict in (B.DERIVED, B.MATCHES)
    assert any("not the authors" in n for n in result.notes)
    assert B.exit_code([result]) == 0
    assert B.exit_code([result], strict=True) == (1 if result.verdict == B.DERIVED else 0)


def test_derived_configuration_outside_its_tolerance_fails() -> None:
    data = spec_to_dict(load_spec("cmt_l"))
    data["stages"][2]["depth"] = 22  # about -6% params, reference kept
    result = check_budget(data)
    assert result.verdict == B.DIFFERS and B.exit_code([result]) == 1


def test_tolerance_follows_printed_precision() -> None:
    spec = load_spec(tiny_spec_dict())
    cost = analytic_cost(spec)
    exact = f"{cost.params / 1e3:.1f}K"
    off = f"{cost.params / 1e3 + 0.1:.1f}K"  # one printed digit away
    coarse = f"{round(cost.macs / 1e6)}M"
    assert check_budget(tiny_spec_dict(reference={"params": exact, "macs": coarse})).verdict == B.MATCHES
    assert check_budget(tiny_spec_dict(reference={"params": off, "macs": coarse})).verdict == B.DIFFERS


def test_budget_limits() -> None:
    cost = analytic_cost(load_spec(tiny_spec_dict()))
    within = check_budget(tiny_spec_dict(budget={"params": cost.params, "macs": cost.macs}))
    assert within.verdict == B.WITHIN_BUDGET and B.exit_code([within]) == 0
    over = check_budget(tiny_spec_dict(budget={"params": cost.params - 1}))
    assert over.verdict == B.OVER_BUDGET and over.failed and B.exit_code([within, over]) == 1
    assert over.check("params", "budget").delta_pct > 0


def test_no_reference_and_overrides_drop_the_paper() -> None:
    assert check_budget(tiny_spec_dict()).verdict == B.NO_REFERENCE
    deeper = check_budget("cmt_s", overrides=["stages.2.depth=18"])
    assert deeper.verdict == B.NO_REFERENCE and deeper.params > analytic_cost("cmt_s").params
    assert check_budget("cmt_b", overrides=["block.attention=math"]).verdict == B.MATCHES


def test_exit_code_precedence() -> None:
    results = [check_budget(n) for n in ("cmt_ti", "cmt_s")]
    assert B.exit_code(results[:1]) == 0 and B.exit_code(results) == 0
    assert B.exit_code(results, strict=True) == 1
    over = check_budget(tiny_spec_dict(budget={"macs": 1}))
    assert B.exit_code([*results, over]) == 1


def test_fvcore_counters_agree_with_analytic() -> None:
    data = tiny_spec_dict(budget={"params": "10M", "macs": "1G"})
    both = check_budget(data, counter="both")
    fvcore = check_budget(data, counter="fvcore")
    assert both.analytic_params == both.fvcore_params == fvcore.params
    assert both.analytic_macs == both.fvcore_macs == fvcore.macs
    assert both.fvcore_total > both.macs and both.verdict == fvcore.verdict == B.WITHIN_BUDGET


def test_bad_counter_is_a_user_error() -> None:
    with pytest.raises(CmtGenError, match="unknown counter"):
        check_budget("cmt_ti", counter="flops")


def test_result_is_plain_json() -> None:
    record = json.loads(json.dumps(check_budget("cmt_s").as_dict()))
    assert record["verdict"] == B.DISCREPANCY and record["documented_deviation"] is True


# ---------------------------------------------------------------- the command

def test_check_all_prints_five_variants_with_verdicts(cli) -> None:
    result = cli("check", "--all")
    assert result.code == 0, result.err  # CMT-S discrepancy, CMT-L derived: shown, nothing over
    assert cli("check", "--all", "--strict").code == 1
    for name in FIVE:
        verdict = check_budget(name).verdict
        assert re.search(rf"{name}\b.*{re.escape(verdict)}", result.out), name
    assert "multiply-accumulates" in result.out and "0.55G to 0.65G" in result.out
    assert "26,256,160" in result.out and "25.1M" in result.out


def test_check_json(cli) -> None:
    result = cli("check", "cmt_ti", "cmt_s", "--json")
    payload = json.loads(result.out)
    assert result.code == payload["exit_code"] == 0
    assert [r["spec"] for r in payload["results"]] == ["cmt_ti", "cmt_s"]
    assert "multiply-accumulates" in payload["units"]["macs"]


def test_check_budget_exit_codes(cli, tmp_path) -> None:
    cost = analytic_cost(load_spec(tiny_spec_dict()))
    fits = tmp_path / "fits.yaml"
    fits.write_text(yaml.safe_dump(tiny_spec_dict(budget={"params": cost.params, "macs": cost.macs})))
    over = tmp_path / "over.yaml"
    over.write_text(yaml.safe_dump(tiny_spec_dict(budget={"macs": cost.macs // 2})))
    ok = cli("check", fits)
    assert ok.code == 0 and B.WITHIN_BUDGET in ok.out
    bad = cli("check", fits, over)
    assert bad.code == 1 and B.OVER_BUDGET in bad.out


@pytest.mark.parametrize("budget", ["30Q", "-5M", "lots"])
def test_bad_budget_units_exit_2_with_one_line(cli, tmp_path, budget: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny_spec_dict(budget={"params": budget})))
    # one run as a real process (what a user sees), the others in-process
    result = run_cli_subprocess("check", path) if budget == "30Q" else cli("check", path)
    assert result.code == 2
    assert "Traceback" not in result.err and result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "budget.params" in lines[0], result.err


@pytest.mark.parametrize("argv", [["check"], ["check", "cmt_ti", "--counter", "flops"], ["check", "no_such_spec"]])
def test_input_errors_exit_2(cli, argv: list[str]) -> None:
    result = cli(*argv)
    assert result.code == 2 and "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_analytic_check_never_imports_torch() -> None:
    import subprocess
    import sys

    from conftest import REPO, subprocess_env

    code = ("import sys\nfrom cmt_gen.cli.app import main\n"
            "try:\n    main(['check', '--all', '--counter', 'analytic', '--json'])\n"
            "except SystemExit as exc:\n    code = exc.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env=subprocess_env(), timeout=120)
    assert proc.stderr.strip().endswith("NO-TORCH 0"), proc.stderr


def test_parse_quantity_agrees_with_table2_values() -> None:
    assert table2.row("CMT-B").value("flops") == parse_quantity("9.3G")


def test_fvcore_check_refuses_a_model_too_large_to_trace(cli) -> None:
    """CMT-B at 4096x4096 would need tens of GiB: refused with the way out, while analytic still answers."""
    refused = cli("check", "cmt_b", "--set", "resolution=4096", "--counter", "fvcore")
    assert refused.code == 2 and "--force" in refused.err and "GiB" in refused.err
    assert len(refused.err.strip().splitlines()) == 1
    assert cli("check", "cmt_b", "--set", "resolution=4096").code == 0


@pytest.mark.slow
def test_traced_check_of_several_specs_runs_in_worker_processes() -> None:
    """Two specs, counter both, two spawned workers: same results, same order as one by one."""
    specs = [tiny_spec_dict(name="first"), tiny_spec_dict(name="second", block={"attention": "math"})]
    parallel = B.check_budgets(specs, "both", workers=2)
    assert [r.spec for r in parallel] == ["first", "second"]
    for result, data in zip(parallel, specs, strict=True):
        cost = analytic_cost(load_spec(data))
        assert result.fvcore_params == cost.params and result.fvcore_macs == cost.macs
        assert result.verdict == B.NO_REFERENCE


def test_worker_reports_a_user_error_whole() -> None:
    huge = load_spec("cmt_b", ["resolution=4096"])
    rule, source, field = B._check_in_worker(huge, "fvcore", False)
    assert "GiB" in rule and source == "cmt_b" and field == "measured cost"

