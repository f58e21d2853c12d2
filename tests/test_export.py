"""`cmt-gen export`: each format round-trips with dynamic sizes; mistakes exit 2, gaps exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cmt_gen.jobs.export import check_sizes, export_spec
from cmt_gen.spec.loading import load_spec


def _roundtrip(cli, spec_file, tmp_path, fmt: str, suffix: str) -> dict:
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / f"tiny{suffix}"
    r = cli("export", spec_file, "--format", fmt, "-o", out, "--json")
    assert r.code == 0, r.err
    record = json.loads(r.out)
    assert out.is_file() and record["passed"] and record["form"] == "deploy"
    shapes = [tuple(c["shape"]) for c in record["checks"]]
    assert len(set(shapes)) == 2 and shapes[0][0] != shapes[1][0] and shapes[0][2:] != shapes[1][2:]
    assert all(c["max_rel_diff"] < 1e-5 for c in record["checks"])
    assert [p.name for p in folder.iterdir()] == [out.name]  # written atomically, nothing left beside it
    return record


def test_torchscript_roundtrip(cli, tiny_spec_file, tmp_path) -> None:
    _roundtrip(cli, tiny_spec_file, tmp_path, "torchscript", ".pt")


@pytest.mark.slow
def test_program_roundtrip(cli, tiny_spec_file, tmp_path) -> None:
    """Where torch.export cannot make sizes multiples of the stride (torch 2.2), one line and exit 2."""
    from cmt_gen.export.formats import stride_multiples_supported

    if stride_multiples_supported():
        _roundtrip(cli, tiny_spec_file, tmp_path, "program", ".pt2")
        return
    out = tmp_path / "tiny.pt2"
    r = cli("export", tiny_spec_file, "--format", "program", "-o", out)
    assert r.code == 2 and r.err.count("\n") == 1 and "use --format onnx or torchscript" in r.err, r.err
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_onnx_roundtrip_through_onnxruntime(cli, tiny_spec_file, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    _roundtrip(cli, tiny_spec_file, tmp_path, "onnx", ".onnx")
    alone = tmp_path / "copied" / "tiny.onnx"  # self-contained: the weights travel inside the file
    alone.parent.mkdir()
    alone.write_bytes((tmp_path / "out" / "tiny.onnx").read_bytes())
    session = ort.InferenceSession(str(alone), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": torch.randn(1, 3, 64, 64).numpy()})[0]
    assert logits.shape == (1, 10)
    # The graph's IRFFN runs as NCHW convolutions (DeployIRFFN._forward_nchw); the round trip above held
    # it to the eager deploy form at two sizes. Per block: the LPU's, the K/V reduction's and the IRFFN's three.
    import onnx

    from cmt_gen import build_model

    ops = [node.op_type for node in onnx.load(str(alone)).graph.node]
    blocks = sum(len(stage.blocks) for stage in build_model(load_spec(str(tiny_spec_file))).stages)
    assert ops.count("Conv") >= 3 * blocks


def test_exported_weights_are_the_loaded_ones(tiny_spec_file, tmp_path) -> None:
    """--weights reaches the file: the export of trained weights differs from a fresh init's."""
    from cmt_gen import build_model, load_spec

    spec = load_spec(str(tiny_spec_file))
    torch.manual_seed(123)
    weights = tmp_path / "w.pt"
    torch.save(build_model(spec).state_dict(), weights)
    result = export_spec(spec, "torchscript", tmp_path / "w_export.pt", weights=weights)
    assert result.passed
    module = torch.jit.load(str(tmp_path / "w_export.pt"))
    reference = build_model(spec).eval()
    reference.load_state_dict(torch.load(weights))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(module(x), reference(x), atol=1e-5)


def test_difference_over_tolerance_exits_1(cli, tiny_spec_file, tmp_path) -> None:
    r = cli("export", tiny_spec_file, "--format", "torchscript", "-o", tmp_path / "t.pt", "--tolerance", "1e-15")
    assert r.code == 1
    assert "exceeds tolerance" in r.out


@pytest.mark.parametrize("args, message", [
    (["--format", "tflite"], "--format: unknown format 'tflite'"),
    (["--format", "torchscript", "--tolerance", "0"], "--tolerance: tolerance must be positive"),
    (["--format", "torchscript", "--threads", "0"], "--threads: must be a whole number >= 1"),
    (["--format", "torchscript", "--threads", "4096"], "would only measure contention"),
    (["--format", "torchscript", "--tolerance", "nan"], "--tolerance: tolerance must be positive and at most 1"),
    (["--format", "torchscript", "--tolerance", "inf"], "--tolerance: tolerance must be positive and at most 1"),
])
def test_bad_flags_exit_2(cli, tiny_spec_file, tmp_path, args, message) -> None:
    r = cli("export", tiny_spec_file, "-o", tmp_path / "x.pt", *args)
    assert r.code == 2 and message in r.err and "Traceback" not in r.err


def test_missing_output_folder_and_bad_weights_exit_2(cli, tiny_spec_file, tmp_path) -> None:
    r = cli("export", tiny_spec_file, "--format", "torchscript", "-o", tmp_path / "no" / "x.pt")
    assert r.code == 2 and "output folder does not exist" in r.err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = cli("export", tiny_spec_file, "--format", "torchscript", "-o", tmp_path / "x.pt", "--weights", bad)
    assert r.code == 2 and str(bad) in r.err
    assert not (tmp_path / "x.pt").exists()


def test_check_sizes_differ_in_every_dynamic_axis() -> None:
    a, b = check_sizes(3, 224, 32)
    assert a[0] != b[0] and a[2] != b[2] and a[3] != b[3] and b[2] != b[3]
    assert all(s % 32 == 0 and s >= 64 for s in (*a[2:], *b[2:]))


def test_export_never_overwrites_its_inputs(cli, tiny_spec_file, tmp_path) -> None:
    """The spec (and its `extends` chain) and the weights are inputs: an output onto one is refused."""
    spec_text = tiny_spec_file.read_text()
    r = cli("export", tiny_spec_file, "--format", "torchscript", "-o", tiny_spec_file)
    assert r.code == 2 and "also an input" in r.err and len(r.err.strip().splitlines()) == 1
    assert tiny_spec_file.read_text() == spec_text
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"not a checkpoint, and must stay so")
    r = cli("export", tiny_spec_file, "--weights", weights, "--format", "torchscript", "-o", weights)
    assert r.code == 2 and "also an input" in r.err
    assert weights.read_bytes() == b"not a checkpoint, and must stay so"


def test_export_prints_a_markup_name_as_written(cli, tmp_path) -> None:
    import yaml
    from conftest import tiny_spec_dict

    spec = tmp_path / "odd.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec_dict(name="a[/]b [red]x")))
    r = cli("export", spec, "--format", "torchscript", "-o", tmp_path / "odd.pt")
    assert r.code == 0, r.err
    assert "a[/]b [red]x" in r.out


def test_export_refuses_what_would_not_fit_before_allocating(cli, tmp_path) -> None:
    r = cli("export", "cmt_ti", "--set", "resolution=4096", "--format", "torchscript", "-o", tmp_path / "big.pt")
    assert r.code == 2 and "GiB" in r.err and "available" in r.err and not list(tmp_path.iterdir())
    assert "--force" not in r.err  # export has no --force to offer


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux) to stand in for a full disk")
def test_a_full_disk_is_one_clear_error_and_leaves_nothing(tiny_spec_file, tmp_path, monkeypatch) -> None:
    """torch.jit.save onto a full disk aborted the process (SIGABRT) inside C++; the bytes are now
    written from Python, where a full disk is an OSError."""
    import builtins

    from cmt_gen.errors import CmtGenError
    from cmt_gen.export import formats

    monkeypatch.setattr(formats, "open", lambda path, mode: builtins.open("/dev/full", mode),  # noqa: SIM115
                        raising=False)
    out = tmp_path / "out" / "tiny.pt"
    out.parent.mkdir()
    with pytest.raises(CmtGenError, match="cannot write: No space left on device"):
        export_spec(load_spec(tiny_spec_file), "torchscript", out)
    assert list(out.parent.iterdir()) == []


def test_non_finite_weights_are_a_user_mistake_not_an_export_defect(cli, tiny_spec_file, tmp_path) -> None:
    """`export --weights nan.pt --json` once exited 1 ("exceeds tolerance") and wrote a bare NaN into JSON."""
    from cmt_gen import build_model

    model = build_model(load_spec(str(tiny_spec_file)))
    state = model.state_dict()
    state["head.fc.weight"] = torch.full_like(state["head.fc.weight"], float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    out = tmp_path / "out" / "m.pt"
    out.parent.mkdir()
    r = cli("export", tiny_spec_file, "-f", "torchscript", "-o", out, "--weights", tmp_path / "nan.pt", "--json")
    assert r.code == 2 and r.err.count("\n") == 1 and "NaN" in r.err, r.err
    assert r.out == "" and list(out.parent.iterdir()) == []
