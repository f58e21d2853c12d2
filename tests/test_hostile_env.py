"""The environment as an adversary: closed pipes, full devices, full disks, bugs, interrupts.

Closed pipes and full devices need a real child process (its stdout is a file
descriptor); a full disk is made real in-process with RLIMIT_FSIZE (writes past
the limit fail with EFBIG, as on a full disk, once SIGXFSZ is ignored).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, subprocess_env, tiny_spec_dict
from hostile_support import make_arena, run_refused, snapshot

ENTRY = [sys.executable, "-c", "from cmt_gen.cli.app import main; main()"]


@pytest.fixture
def arena(tmp_path, monkeypatch):
    root = make_arena(tmp_path / "arena")
    monkeypatch.chdir(root)
    return root


# ---------------------------------------------------------------- stdout

@pytest.mark.parametrize("argv, status", [
    (["check", "--all"], 0),
    (["check", "cmt_s", "--strict"], 1),  # a documented deviation fails under --strict: the status survives
])
def test_closed_pipe_ends_quietly_with_the_real_status(argv, status):
    """`cmt-gen check --all | head -0`: the reader is gone before the first byte."""
    proc = subprocess.Popen([*ENTRY, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                            env=subprocess_env())
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == status, err
    assert err == ""


def test_full_device_on_stdout_is_one_line():
    with open("/dev/full", "w") as full:
        proc = subprocess.run([*ENTRY, "list"], stdout=full, stderr=subprocess.PIPE, text=True, cwd=REPO,
                              env=subprocess_env(), timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "stdout" in lines[0] and "No space left" in lines[0], proc.stderr


def test_closed_stdout_is_one_line():
    """`cmt-gen list >&-`: Python starts with sys.stdout None; once an internal error and a traceback."""
    proc = subprocess.run([*ENTRY, "list"], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
                          env=subprocess_env(), timeout=60, preexec_fn=lambda: os.close(1))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: stdout: output lost: stdout is closed"], proc.stderr


def test_ascii_only_stdout_escapes_what_it_cannot_encode():
    """PYTHONIOENCODING=ascii and a table holding Δ: escaped like stderr does, not a UnicodeEncodeError."""
    proc = subprocess.run([*ENTRY, "check", "cmt_s"], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**subprocess_env(), "PYTHONIOENCODING": "ascii"})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "\\u0394 params" in proc.stdout


# ---------------------------------------------------------------- a full disk

@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Writes past `nbytes` fail with EFBIG, like a disk that fills up mid-write."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.mark.parametrize("argv", [
    ["build", "tiny.yaml", "-o", "w.pt"],             # torch.save raises RuntimeError
    ["build", "tiny.yaml", "-o", "w.safetensors"],    # safetensors raises its own error
    ["schema", "-o", "schema.json"],                  # a plain write raises OSError
    ["sample", "--n", "20", "--from", "tiny.yaml", "-o", "s.jsonl"],
])
def test_full_disk_leaves_no_file_and_one_line(cli, arena, argv):
    before = snapshot(arena)
    with file_size_limit(4096):
        result = cli(*argv)
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "cannot write" in lines[0] and "Traceback" not in result.err, result.err
    assert snapshot(arena) == before  # neither the output nor its temporary file is left


# ---------------------------------------------------------------- bugs and interrupts

def _explode(exc: BaseException):
    def load_spec(*args, **kwargs):
        raise exc

    return load_spec


def test_internal_error_is_one_line_that_says_how_to_see_more(cli, arena, monkeypatch):
    monkeypatch.setattr("cmt_gen.spec.loading.load_spec", _explode(ZeroDivisionError("boom\nsecond line")))
    result = run_refused(cli, arena, ["validate", "cmt_s"], 70, "internal error")
    assert "ZeroDivisionError: boom" in result.err and "--debug" in result.err and "CMT_GEN_DEBUG=1" in result.err


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(cli, arena, monkeypatch, how):
    monkeypatch.setattr("cmt_gen.spec.loading.load_spec", _explode(ZeroDivisionError("boom")))
    if how == "env":
        monkeypatch.setenv("CMT_GEN_DEBUG", "1")
    result = cli(*(["--debug"] if how == "flag" else []), "validate", "cmt_s")
    assert result.code == 70
    assert "Traceback" in result.err and "ZeroDivisionError: boom" in result.err


def test_ctrl_c_exits_130_without_a_traceback(cli, arena, monkeypatch):
    """typer turns KeyboardInterrupt into exit 130 itself; the shell has already shown ^C."""
    monkeypatch.setattr("cmt_gen.spec.loading.load_spec", _explode(KeyboardInterrupt()))
    before = snapshot(arena)
    result = cli("check", "cmt_s")
    assert result.code == 130 and "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) <= 1
    assert snapshot(arena) == before


@pytest.mark.parametrize("exc, code, fragment", [
    (MemoryError(), 2, "out of memory"),
    (RecursionError("maximum recursion depth exceeded"), 70, "internal error"),
])
def test_interrupts_and_memory_errors_are_one_line(cli, arena, monkeypatch, exc, code, fragment):
    monkeypatch.setattr("cmt_gen.spec.loading.load_spec", _explode(exc))
    run_refused(cli, arena, ["check", "cmt_s"], code, fragment)


def test_a_user_error_never_carries_a_traceback_in_a_fresh_process(tmp_path):
    """The boundary as a user meets it: a child process, a --set value with a newline, one line."""
    spec = tmp_path / "tiny.yaml"
    import yaml

    spec.write_text(yaml.safe_dump(tiny_spec_dict()))
    proc = subprocess.run([*ENTRY, "validate", str(spec), "--set", "resolution=[1,\n2"], capture_output=True,
                          text=True, cwd=tmp_path, env=subprocess_env(), timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "\\n" in proc.stderr, proc.stderr
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["tiny.yaml"]


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA device")
def test_gpu_profile_guard_counts_against_the_card(cli, arena):
    """On CUDA the up-front guard compares with the card's free memory, not the host's."""
    import torch

    from cmt_gen.profile.fits import device_memory
    from cmt_gen.profile.settings import resolve_settings

    free = device_memory(resolve_settings(device="cuda"))
    assert 0 < free <= torch.cuda.get_device_properties(0).total_memory
    run_refused(cli, arena, ["profile", "cmt_ti", "--device", "cuda", "--set", "resolution=3200"], 2, "GiB")
