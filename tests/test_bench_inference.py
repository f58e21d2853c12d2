"""`benchmarks/bench_inference.py` runs end to end (reduced: a tiny spec, one round); its numbers are
for a person to read, so this checks only that every row it promises is there and sane."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, subprocess_env, tiny_spec_dict

BENCH = "benchmarks/bench_inference.py"


@pytest.mark.slow
def test_reduced_benchmark_reports_every_row(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from inference_ablations import ABLATIONS

    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec_dict(), sort_keys=False))
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, BENCH, "--spec", str(spec), "--batch", "2", "--rounds", "1",
                             "--latency-rounds", "2", "--no-compile", "--json", str(out)],
                            capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-1500:]
    report = json.loads(out.read_text())
    rows = {row["variant"]: row for row in report["rows"]}
    expected = {"as released (reference)", "deploy", "onnxruntime (deploy)", "deploy, bf16",
                "deploy, built under inference_mode, system allocator",
                *(f"deploy without {name}" for name in ABLATIONS)}
    assert expected <= set(rows), sorted(expected - set(rows))
    for name, row in rows.items():
        assert row["median_s"] > 0 and row["ratio"] > 0, name
        floor = 0.999 if "bf16" in name else 0.99999  # every row computes the same logits
        assert row["cosine_to_reference"] >= floor, (name, row["cosine_to_reference"])
    assert report["latency_ratio"] > 0
    assert all(isinstance(rows[f"deploy without {name}"]["worth"], float) for name in ABLATIONS)
    assert "oneDNN bf16 path" in report["machine"]  # the ablation names the CPU and its features


def test_kernel_report_times_the_onednn_path(monkeypatch, capsys):
    """`--kernels` used to time `onednn.linear` with autograd on, where it steps aside for F.linear."""
    import torch

    from cmt_gen.deploy import onednn

    if not onednn._HAVE_ONEDNN:
        pytest.skip("needs torch's oneDNN ops")
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench_inference

    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *args: calls.append(1) or real(*args))
    bench_inference.kernel_report(threads=1, batch=1)
    assert calls, "the oneDNN row never reached oneDNN"
    assert "oneDNN linear+gelu" in capsys.readouterr().out


def test_a_dead_worker_ends_the_benchmark_with_an_error_not_a_hang(monkeypatch, tmp_path):
    """A worker that fails while building its variants (here: a spec that does not exist) used to leave
    the parent waiting on its pipe forever."""
    import time

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench_inference

    start = time.monotonic()
    with pytest.raises(SystemExit, match="benchmark worker died"):
        bench_inference.main(["--spec", str(tmp_path / "missing.yaml"), "--batch", "1", "--rounds", "1",
                              "--no-compile", "--no-onnx", "--no-bf16", "--no-ablation"])
    assert time.monotonic() - start < 120


def test_the_views_ablation_patches_every_module_that_uses_the_views(monkeypatch):
    """The "channels-last views" row under-measured once when the attention's views moved to another
    module; every deploy module that calls the views must be patched."""
    import importlib
    import pkgutil

    import cmt_gen.deploy

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from inference_ablations import VIEW_USERS

    users = set()
    for info in pkgutil.iter_modules(cmt_gen.deploy.__path__):
        module = importlib.import_module(f"cmt_gen.deploy.{info.name}")
        source = (REPO / "cmt_gen" / "deploy" / f"{info.name}.py").read_text()
        if "tokens_as_map(" in source or "map_as_tokens(" in source:
            users.add(module.__name__)
    assert users == {m.__name__ for m in VIEW_USERS}
