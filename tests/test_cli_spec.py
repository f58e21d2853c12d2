"""`cmt-gen build | validate | list | schema` through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import (
    RELEASED,
    RELEASED_PARAMS,
    REPO,
    malicious_checkpoints,
    run_cli_subprocess,
    subprocess_env,
    tiny_spec_dict,
)

from cmt_gen.model.convert import read_checkpoint

# ---------------------------------------------------------------- light commands never import torch

PROBE = """
import json, sys
from cmt_gen.cli.app import main
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as exc:
    code = exc.code or 0
print(json.dumps({"code": code, "torch": "torch" in sys.modules}), file=sys.stderr)
"""


def _probe(*argv: str, cwd: Path = REPO) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=cwd,
                          env=subprocess_env(), timeout=120)
    return json.loads(proc.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [("--help",), ("validate", "cmt_s", "cmt_ti", "--set", "stages.2.depth=4"),
                                  ("list",), ("schema",)])
def test_light_commands_do_not_import_torch(argv):
    assert _probe(*argv) == {"code": 0, "torch": False}


@pytest.mark.slow
def test_torch_probe_can_see_torch(tiny_spec_file):
    """Control for the test above: `build` needs torch, and the probe notices."""
    assert _probe("build", str(tiny_spec_file), "--json") == {"code": 0, "torch": True}


# ---------------------------------------------------------------- help, validate, list, schema

def test_help_lists_the_commands(cli):
    result = cli("--help")
    assert result.code == 0
    for command in ("build", "validate", "list", "schema"):
        assert command in result.out


def test_validate_several_specs(cli, tiny_spec_file):
    result = cli("validate", "cmt_ti", str(tiny_spec_file), "CMT-B")
    assert result.code == 0, result.err
    lines = result.out.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("ok ") for line in lines)
    assert "tiny, 4 stages, 64x64" in lines[1]


def test_validate_applies_overrides(cli):
    assert cli("validate", "cmt_s", "--set", "resolution=256").code == 0
    bad = cli("validate", "cmt_s", "--set", "resolution=250")
    assert bad.code == 2 and "resolution: 250 is not divisible" in bad.err


def _three_mistakes(folder: Path) -> Path:
    data = tiny_spec_dict(resolution=70)  # not a multiple of the stride 32
    data["stages"][0].update(channels=250, heads=4)  # 4 heads do not divide 250 channels
    data["stages"][1]["depth"] = -1  # a field error: the design rules above are still checked
    path = folder / "three.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_validate_lists_every_problem_one_a_line_and_other_commands_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _three_mistakes(tmp_path)
    result = cli("validate", "three.yaml")
    assert result.code == 2 and result.out == "" and "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert [line.split(": ")[:3] for line in lines] == [
        ["error", "three.yaml", "resolution"], ["error", "three.yaml", "stages.0.heads"],
        ["error", "three.yaml", "stages.1.depth"]], result.err
    assert "nearest legal: 64 or 96" in lines[0]
    assert "(heads that divide 250: 1, 2, 5, 10, 25, 50, 125, 250)" in lines[1]
    assert "greater than 0" in lines[2]
    check = cli("check", "three.yaml")
    assert check.code == 2 and check.out == ""
    assert check.err.strip().splitlines() == ["error: three.yaml: 3 problems: " + "; ".join(
        line.removeprefix("error: three.yaml: ") for line in lines)]


def test_validate_reports_every_spec_it_is_given(cli, tmp_path, monkeypatch):
    """A broken spec does not hide the others: the good ones say ok, every problem of the rest is listed."""
    monkeypatch.chdir(tmp_path)
    _three_mistakes(tmp_path)
    result = cli("validate", "cmt_ti", "three.yaml", "absent.yaml", "cmt_s")
    assert result.code == 2
    assert [line.split(":")[0] for line in result.out.strip().splitlines()] == ["ok cmt_ti", "ok cmt_s"]
    errors = result.err.strip().splitlines()
    assert len(errors) == 4 and all(line.startswith("error: ") for line in errors), result.err
    assert all(line.startswith("error: three.yaml: ") for line in errors[:3])
    assert errors[3].startswith("error: absent.yaml") and "no such file" in errors[3]
    bad = cli("validate", "cmt_ti", "--set", "stages.0.reduction=3")
    assert bad.code == 2 and bad.err.strip().splitlines() == [
        "error: cmt_ti (cmt_ti.yaml): stages.0.reduction: reduction ratio 3 does not divide the stage's 40x40 "
        "feature map (input 160x160); ratios that divide it: 1, 2, 4, 5, 8, 10, 20, 40"]


def test_usage_errors_exit_2_without_traceback(cli):
    for argv in (("validate",), ("build",), ("nonsense",), ("build", "cmt_ti", "--bogus")):
        result = cli(*argv)
        assert result.code == 2, argv
        assert "Traceback" not in result.err


def test_list_shows_the_released_variants_with_exact_counts(cli):
    result = cli("list", "--json")
    assert result.code == 0
    records = {r["name"]: r for r in json.loads(result.out)}
    for name in RELEASED:
        assert records[name]["params"] == RELEASED_PARAMS[name]
    assert records["cmt_s"]["paper_params"] == "25.1M" and records["cmt_s"]["paper_macs"] == "4.0G"
    table = cli("list")
    assert table.code == 0
    assert all(name in table.out for name in RELEASED)


def test_schema_is_json_schema_of_the_spec(cli, tmp_path):
    result = cli("schema")
    assert result.code == 0
    schema = json.loads(result.out)
    assert {"name", "resolution", "stem", "stages", "block", "extends"} <= set(schema["properties"])
    assert schema.get("additionalProperties") is False
    target = tmp_path / "schema.json"
    assert cli("schema", "--output", str(target)).code == 0
    assert json.loads(target.read_text()) == schema
    assert sorted(p.name for p in tmp_path.iterdir()) == ["schema.json"]


# ---------------------------------------------------------------- build

def test_build_json_record(cli, tiny_spec_file):
    result = cli("build", str(tiny_spec_file), "--json")
    assert result.code == 0, result.err
    record = json.loads(result.out)
    assert record["spec"] == "tiny"
    assert record["built_params"] == record["params"]
    assert record["output_shape"] == [2, 10]
    assert [r["part"] for r in record["rows"]] == ["stem", "stage0", "stage1", "stage2", "stage3", "head"]


def test_build_table_and_overrides(cli, tiny_spec_file):
    plain = cli("build", str(tiny_spec_file))
    assert plain.code == 0
    assert "stage3" in plain.out and "forward pass" in plain.out
    deeper = json.loads(cli("build", str(tiny_spec_file), "--set", "stages.1.depth=3", "--json").out)
    base = json.loads(cli("build", str(tiny_spec_file), "--json").out)
    assert deeper["built_params"] > base["built_params"]
    assert deeper["rows"][2]["depth"] == 3


def test_build_released_variant(cli):
    record = json.loads(cli("build", "cmt_ti", "--json").out)
    assert record["built_params"] == RELEASED_PARAMS["cmt_ti"]
    assert record["output_shape"] == [2, 1000]


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_saved_weights_round_trip_strictly(cli, tiny_spec_file, tmp_path, suffix):
    first = tmp_path / f"first{suffix}"
    second = tmp_path / f"second{suffix}"
    assert cli("build", str(tiny_spec_file), "--output", str(first)).code == 0
    loaded = cli("build", str(tiny_spec_file), "--weights", str(first), "--output", str(second), "--json")
    assert loaded.code == 0, loaded.err
    assert json.loads(loaded.out)["weights"] == str(first)
    a, b = read_checkpoint(first), read_checkpoint(second)
    assert a.keys() == b.keys() and len(a) > 50
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["tiny.yaml", first.name, second.name])


def test_released_layout_checkpoint_loads_through_the_cli(cli, official_layout, tmp_path):
    from reference_forward import random_official_state_dict

    from cmt_gen.model.convert import convert_official_state_dict

    official = random_official_state_dict(official_layout["cmt_ti"]["state_dict"], seed=2)
    ckpt = tmp_path / "cmt_ti_official.pth"
    torch.save({"model": official}, ckpt)
    ours = tmp_path / "ours.safetensors"
    result = cli("build", "cmt_ti", "--weights", str(ckpt), "--output", str(ours))
    assert result.code == 0, result.err
    assert "loaded weights strictly" in result.out
    saved, expected = read_checkpoint(ours), convert_official_state_dict(official)
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[k], expected[k]) for k in saved)


def test_weights_that_do_not_fit_are_refused_in_one_line(cli, tiny_spec_file, tmp_path):
    weights = tmp_path / "tiny.pt"
    assert cli("build", str(tiny_spec_file), "--output", str(weights)).code == 0
    result = cli("build", str(tiny_spec_file), "--set", "stages.1.depth=3", "--set", "num_classes=7",
                 "--weights", str(weights), "--json")
    assert result.code == 2
    assert result.out == ""  # --json prints nothing on failure
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err
    assert "missing" in lines[0] and "stages.1.blocks.2." in lines[0]
    assert "wrong shape" in lines[0] and "head.fc.weight" in lines[0]
    fewer = cli("build", str(tiny_spec_file), "--set", "stages.1.depth=1", "--weights", str(weights))
    assert fewer.code == 2 and "unexpected" in fewer.err and "stages.1.blocks.1." in fewer.err


def _assert_refused(path: Path, result) -> None:
    assert result.code == 2
    assert "Traceback" not in result.err
    assert f"error: {path}: refused: not a weights-only checkpoint" in result.err
    assert len(result.err.strip().splitlines()) == 1, result.err


def test_malicious_checkpoint_is_refused_by_the_cli(cli, tiny_spec_file, tmp_path):
    marker, paths = malicious_checkpoints(tmp_path)
    for path in paths:
        _assert_refused(path, cli("build", str(tiny_spec_file), "--weights", str(path)))
    assert not marker.exists()


@pytest.mark.slow
def test_malicious_checkpoint_is_refused_by_a_real_cli_process(tiny_spec_file, tmp_path):
    marker, paths = malicious_checkpoints(tmp_path)
    for path in paths:
        _assert_refused(path, run_cli_subprocess("build", str(tiny_spec_file), "--weights", str(path)))
    assert not marker.exists()


@pytest.mark.parametrize("output, fragment", [
    ("weights.txt", "not .txt"), ("missing/weights.pt", "folder does not exist"),
])
def test_bad_output_paths_fail_before_any_work(cli, tiny_spec_file, tmp_path, output, fragment):
    result = cli("build", str(tiny_spec_file), "--output", str(tmp_path / output))
    assert result.code == 2 and fragment in result.err
    assert "forward pass" not in result.out


def test_unwritable_output_is_a_clean_error(cli, tiny_spec_file, tmp_path):
    (tmp_path / "taken.pt").mkdir()  # a folder stands where the file should go
    result = cli("build", str(tiny_spec_file), "--output", str(tmp_path / "taken.pt"))
    assert result.code == 2 and "cannot write" in result.err
    schema = cli("schema", "--output", str(tmp_path / "taken.pt"))
    assert schema.code == 2 and "cannot write" in schema.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.pt", "tiny.yaml"]


def test_missing_weights_file(cli, tiny_spec_file, tmp_path):
    result = cli("build", str(tiny_spec_file), "--weights", str(tmp_path / "absent.pt"))
    assert result.code == 2 and "absent.pt: no such file" in result.err


def test_failed_build_leaves_the_existing_output_untouched(cli, tiny_spec_file, tmp_path):
    out = tmp_path / "out.pt"
    out.write_bytes(b"previous weights")
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"garbage")
    assert cli("build", str(tiny_spec_file), "--weights", str(bogus), "--output", str(out)).code == 2
    assert out.read_bytes() == b"previous weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bogus.pt", "out.pt", "tiny.yaml"]


@pytest.mark.parametrize("suffix, writer", [(".pt", "torch.save"), (".safetensors", "safetensors.torch.save_file")])
def test_failure_while_saving_leaves_no_partial_file(cli, tiny_spec_file, tmp_path, monkeypatch, suffix, writer):
    import importlib

    module_name, _, attr = writer.rpartition(".")
    module = importlib.import_module(module_name)
    real = getattr(module, attr)

    def half_then_fail(obj, path, *args, **kwargs):
        real(obj, path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, attr, half_then_fail)
    out = tmp_path / f"out{suffix}"
    out.write_bytes(b"previous weights")
    result = cli("build", str(tiny_spec_file), "--output", str(out))
    assert result.code == 2 and "Traceback" not in result.err
    assert f"{out}: cannot write: No space left on device" in result.err
    assert out.read_bytes() == b"previous weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, "tiny.yaml"]


def test_build_reads_a_spec_with_extends_and_relative_base(cli, tmp_path):
    family = tmp_path / "family"
    family.mkdir()
    (family / "base.yaml").write_text(yaml.safe_dump(tiny_spec_dict(name="base")))
    (family / "child.yaml").write_text("extends: base.yaml\nname: child\nstages: {0: {depth: 2}}\n")
    result = cli("build", str(family / "child.yaml"), "--json")
    assert result.code == 0, result.err
    record = json.loads(result.out)
    assert record["spec"] == "child" and record["rows"][1]["depth"] == 2


def test_build_refuses_a_model_that_would_not_fit_in_memory(cli):
    """A typo'd resolution must not allocate a ~25 GB position bias and get the process killed."""
    result = cli("build", "cmt_ti", "--set", "resolution=3200")
    assert result.code == 2 and "Traceback" not in result.err
    assert "GiB" in result.err and "--force" in result.err and "build" in result.err
    assert result.out.strip() == ""  # refused before the stage table: the error is the only output


@pytest.mark.parametrize("argv", [["build", "tiny.yaml"], ["export", "tiny.yaml", "-f", "torchscript", "-o", "x.pt"],
                                  ["check", "tiny.yaml", "--counter", "fvcore"]])
def test_commands_that_run_a_model_pick_threads_as_profile_does(cli, tmp_path, monkeypatch, argv) -> None:
    """build and export once used every core while other work ran (a forward 17x slower); they now take
    the cores free of other work, say so on stderr, and take --threads."""
    import torch

    from cmt_gen.profile import env

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_spec_dict(), sort_keys=False))
    monkeypatch.setattr(env, "cpu_busy_fraction", lambda: 0.5)  # half the cores busy with other work
    monkeypatch.setattr(env.os, "cpu_count", lambda: 4)
    before = torch.get_num_threads()
    try:
        result = cli(*argv)
        assert result.code == 0, result.err
        assert "2 threads: 2 of 4 cores free (50% busy with other work before the run) (--threads sets it)" \
            in result.err
        assert torch.get_num_threads() == 2
        result = cli(*argv, "--threads", "1")
        assert result.code == 0 and "cores free" not in result.err and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_long_steps_report_progress_when_piped_and_quick_refusals_stay_one_line(cli, tmp_path, monkeypatch) -> None:
    """ONNX export once sat silent for a minute: a step still running after 2 s now says so, with the step
    count known up front; a quick refusal stays one line (no progress, no thread note)."""
    import time

    from cmt_gen.jobs import export as job

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_spec_dict(), sort_keys=False))
    real = job.write_export

    def slow_write(*args, **kwargs):
        time.sleep(2.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(job, "write_export", slow_write)
    result = cli("export", "tiny.yaml", "-f", "torchscript", "-o", "x.pt", "--threads", "1")
    assert result.code == 0, result.err
    steps = [line for line in result.err.splitlines() if line.startswith("exporting: ")]
    # the slow step is announced; on a loaded machine another step may run past 2 s and be announced too
    assert any(line.startswith("exporting: 3/6 writing torchscript") for line in steps), result.err
    assert all(line.split(" ")[1].endswith("/6") for line in steps), result.err
    refused = cli("export", "tiny.yaml", "-f", "torchscript", "-o", "y.pt", "--weights", "absent.pt")
    assert refused.code == 2 and refused.err.count("\n") == 1, refused.err
