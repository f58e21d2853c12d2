"""The host allocator policy that profiles, calibrations and the benchmark run under."""

from __future__ import annotations

import json

import pytest

from cmt_gen.errors import CmtGenError
from cmt_gen.profile import host_allocator as H

needs_glibc = pytest.mark.skipif(H.retain_unavailable() is not None, reason="retain needs glibc's mallopt (Linux)")


def test_unknown_policy_is_a_one_line_error_naming_the_field(cli, tiny_spec_file):
    with pytest.raises(CmtGenError, match="unknown allocator 'fast'") as info:
        H.resolve_policy("fast")
    assert info.value.field == "allocator"
    result = cli("profile", tiny_spec_file, "--device", "cpu", "--allocator", "fast")
    assert result.code == 2 and "allocator" in result.err and "Traceback" not in result.err
    assert result.err.strip().count("\n") == 0


def test_auto_retains_for_cpu_runs_and_defers_to_a_preloaded_allocator(monkeypatch):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert H.resolve_policy("auto", "cuda") == "system"
    assert H.resolve_policy("auto", "cpu") == ("retain" if H.retain_unavailable() is None else "system")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert H.resolve_policy("auto", "cpu") == "system"
    assert H.describe("system") == "jemalloc (preloaded)"
    with pytest.raises(CmtGenError, match="jemalloc is preloaded"):
        H.resolve_policy("retain")


# Run in a fresh interpreter: malloc's state is process-wide history. In a process where earlier work (a
# profile under `retain`, say) left large free chunks in the heap, even the system policy serves the
# activations from them without a fault, and the comparison would measure that history, not the policy.
_FAULTS = """
import json, resource, torch
from cmt_gen.profile import host_allocator as H

def faults(forwards):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(32, 64, 1),
                              torch.nn.GELU(), torch.nn.Conv2d(64, 32, 1)).eval()
    x = torch.randn(8, 3, 160, 160)
    out = []
    with torch.inference_mode():
        for _ in range(forwards):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            net(x)
            out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return out

with H.allocator_policy("system"):
    system = faults(3)[1:]
with H.allocator_policy("retain") as policy:
    retained = faults(4)[2:]  # the heap grows during the first forwards
print(json.dumps({"system": system, "retained": retained, "policy": policy, "after": H.current_policy()}))
"""


@needs_glibc
def test_retain_stops_page_faults_once_the_heap_has_grown():
    """Minor page faults per forward of a small conv net whose activations (52 MB) exceed glibc's largest
    mmap threshold, like CMT-S's stage-1 maps at batch 16."""
    import subprocess
    import sys

    from conftest import subprocess_env

    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, timeout=300,
                         env=subprocess_env(), check=True).stdout
    found = json.loads(out.strip().splitlines()[-1])
    system, retained = found["system"], found["retained"]
    assert found["policy"] == "retain" and found["after"] == "system"
    pages = 8 * 64 * 160 * 160 * 4 // 4096
    assert min(system) >= pages // 512, f"{system}: each fresh mmap of an activation faults (4 KiB or 2 MiB pages)"
    assert max(retained) * 20 < min(system), f"{retained} page faults per forward with retain vs {system} without"


@needs_glibc
def test_profile_and_calibration_record_the_allocator(cli, tiny_spec_file, tmp_path):
    from cmt_gen.latency.calibration_file import CalibrationSettings
    from cmt_gen.profile.settings import resolve_settings

    assert resolve_settings(device="cpu").allocator == "retain"
    assert resolve_settings(device="cpu", allocator="system").allocator == "system"
    out = tmp_path / "run.json"
    result = cli("profile", tiny_spec_file, "--device", "cpu", "--min-time", "0", "--repeats", "1",
                 "--allocator", "system", "--json", out)
    assert result.code == 0, result.err
    assert json.loads(out.read_text())["settings"]["allocator"] == "system"
    assert H.current_policy() == "system"  # restored after the run
    # Calibrations written before the field existed were measured under the C library's defaults.
    old = {"device": "cpu", "device_type": "cpu", "precision": "fp32", "batch_size": 8, "threads": 1}
    assert CalibrationSettings(**old).allocator == "system"


def test_onednn_cache_is_enlarged_before_models_run_unless_the_user_chose(monkeypatch):
    from cmt_gen.profile.onednn_cache import CAPACITY, CAPACITY_ENV, enlarge_primitive_cache

    monkeypatch.delenv(CAPACITY_ENV, raising=False)
    assert enlarge_primitive_cache() == str(CAPACITY)
    monkeypatch.setenv(CAPACITY_ENV, "512")
    assert enlarge_primitive_cache() == "512"


def test_cli_processes_start_with_the_larger_onednn_cache():
    import subprocess
    import sys

    from conftest import subprocess_env

    from cmt_gen.profile.onednn_cache import CAPACITY, CAPACITY_ENV

    # `cmt-gen list` runs no model; the variable is set for the whole process before any command does.
    script = ("import os, sys\nfrom cmt_gen.cli.app import main\n"
              "try:\n    main(['list'])\nexcept SystemExit:\n    pass\n"
              f"print('capacity', os.environ.get({CAPACITY_ENV!r}), file=sys.stderr)")
    env = {k: v for k, v in subprocess_env().items() if k != CAPACITY_ENV}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"capacity {CAPACITY}" in done.stderr
