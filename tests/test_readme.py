"""Every code block of README.md runs, so the README cannot drift from the tool.

Python blocks run as written (they create any data they need). YAML blocks are
specs: they must validate and pass `cmt-gen check`. Shell blocks run line by
line in a fresh temporary folder, `cmt-gen` in-process and `python` as a child;
a block whose lines use each other's files (a recipe) runs in order in one
folder. Only the two set-up commands (they create a venv and install; CI runs
them in a fresh clone, see .ci/run) and commands needing a GPU are skipped,
each with its reason. Profiling runs on small timing budgets (one call per
repeat, one latency sample), since the README's defaults take minutes; what
is checked is that each line works and writes what the next one reads.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, subprocess_env

README = REPO / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\s*$", re.S | re.M)
# Blocks whose lines read what earlier lines wrote: run in order, in one folder.
RECIPES = ("Ten minutes with cmt-gen", "Designing variants", "Designing for measured speed")
# Lines slow enough on a 2-core CPU to leave to the full suite (they build and time large models, calibrate, or time
# fresh interpreters).
SLOW = ("cmt-gen profile", "cmt-gen calibrate", "benchmarks/")
# Benchmarks are timed with fewer repeats here: what is tested is that the line runs.
SHORT_RUNS = {"bench_cli_startup.py": ["--runs", "1"], "bench_check.py": ["--runs", "1", "--both-runs", "1"],
              "bench_latency.py": ["--quick", "--out", str(Path(tempfile.gettempdir()) / "cmt_gen_bench_latency")]}


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int  # line of the opening fence
    section: str  # the "## " heading the block sits under

    @property
    def commands(self) -> list[tuple[int, str]]:
        """(README line, command) of each non-empty, non-comment line."""
        found = []
        for offset, text in enumerate(self.code.splitlines(), 1):
            if text.strip() and not text.lstrip().startswith("#"):
                found.append((self.line + offset, text.strip()))
        return found


def readme_blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        before = text[:match.start()]
        headings = re.findall(r"^## (.+)$", before, re.M)
        blocks.append(Block(match.group(1), match.group(2), before.count("\n") + 1,
                            headings[-1].strip() if headings else ""))
    return blocks


BLOCKS = readme_blocks()


def _skip_reason(command: str) -> str | None:
    if "python3 -m venv" in command:
        return "set-up command: creates a venv and installs the project (.ci/run runs it in a fresh clone)"
    if "--device cuda" in command:
        import torch

        if not torch.cuda.is_available():
            return "needs a CUDA device"
    return None


def _is_slow(command: str) -> bool:
    return any(key in command for key in SLOW)


def _shell_cases() -> list:
    cases = []
    for block in BLOCKS:
        if block.language not in ("bash", "sh", "shell", "console"):
            continue
        commands = block.commands
        if block.section in RECIPES:
            marks = [pytest.mark.slow] if any(_is_slow(c) for _, c in commands) else []
            cases.append(pytest.param(commands, id=f"L{block.line}-recipe", marks=marks))
            continue
        for line, command in commands:
            marks = [pytest.mark.slow] if _is_slow(command) else []
            cases.append(pytest.param([(line, command)], id=f"L{line}", marks=marks))
    return cases


@pytest.fixture
def small_budgets(monkeypatch):
    """CPU profiling defaults cut to one call per repeat and one latency sample; a short calibration."""
    from cmt_gen.profile import settings

    monkeypatch.setitem(settings.DEVICE_DEFAULTS, "cpu", settings.DeviceDefaults(
        batch_size=1, warmup=0, iters=1, min_time=0.0, repeats=2, latency_warmup=0, latency_samples=1,
        latency_time=0.0, latency_max_samples=1))
    from cmt_gen.latency import calibrate  # `cmt-gen calibrate`: fewer blocks, each timed once or twice

    monkeypatch.setattr(calibrate, "DEFAULT_BLOCKS_PER_STAGE", 6)
    monkeypatch.setattr(calibrate, "DEFAULT_MIN_TIME", 0.0)
    monkeypatch.setattr(calibrate, "DEFAULT_NETWORKS", 2)
    from cmt_gen.latency import drift  # single-call timings of a tiny budget jitter more than a real run's

    monkeypatch.setattr(drift, "MAX_DRIFT", 1.0)


def _run_line(line: int, command: str, cli, folder: Path) -> None:
    argv = shlex.split(command, comments=True)
    if argv[0] == "cmt-gen":
        result = cli(*argv[1:])
        assert result.code == 0, f"README line {line}: {command}\n{result.out}\n{result.err}"
        return
    if argv[0] in ("python", "python3") and argv[1].startswith("benchmarks/"):
        extra = SHORT_RUNS.get(Path(argv[1]).name, [])
        proc = subprocess.run([sys.executable, *argv[1:], *extra], cwd=REPO, env=subprocess_env(),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"README line {line}: {command}\n{proc.stdout}\n{proc.stderr}"
        return
    pytest.fail(f"README line {line}: no runner for {command!r}; teach tests/test_readme.py how to run it")


@pytest.mark.parametrize("commands", _shell_cases())
def test_readme_shell_lines_run(commands, cli, tmp_path, monkeypatch, small_budgets) -> None:
    monkeypatch.chdir(tmp_path)
    for line, command in commands:
        reason = _skip_reason(command)
        if reason is not None:
            pytest.skip(f"README line {line}: {reason}")
        _run_line(line, command, cli, tmp_path)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.language == "python"], ids=lambda b: f"L{b.line}")
def test_readme_python_blocks_run_as_written(block: Block, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(block.code, f"README.md (block at line {block.line})", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out  # each block shows its results


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.language == "yaml"], ids=lambda b: f"L{b.line}")
def test_readme_specs_validate_and_meet_their_budget(block: Block, tmp_path, cli) -> None:
    path = tmp_path / "readme_spec.yaml"
    path.write_text(block.code, encoding="utf-8")
    assert cli("validate", path).code == 0
    result = cli("check", path)
    assert result.code == 0, result.out + result.err


def test_every_readme_block_has_a_runner() -> None:
    known = {"python", "yaml", "bash", "sh", "shell", "console"}
    assert BLOCKS, "README.md has no code blocks"
    strays = [f"line {b.line}: ```{b.language}" for b in BLOCKS if b.language not in known]
    assert not strays, f"README blocks without a runner: {strays}"


def test_the_setup_commands_are_the_only_skipped_lines() -> None:
    setup = [c for b in BLOCKS for _, c in b.commands if "python3 -m venv" in c]
    assert len(setup) == 2 and all("pip install" in c for c in setup)
