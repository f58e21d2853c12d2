"""Shared fixtures: paths to the references, a tiny spec that builds in milliseconds, CLI runners."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
BAD_SPECS = TESTS / "bad_specs"
# Facts the tests compare against, copied from the paper and the released checkpoints: a clone carries them.
DATA = TESTS / "data"
LAYOUT_FILE = DATA / "official_state_dict_layout.json"  # every key and shape of the released checkpoints
PAPER_TABLE2 = DATA / "paper_table2.txt"  # the paper's Table 2, transcribed row for row
RELEASED = ("cmt_ti", "cmt_xs", "cmt_s", "cmt_b")
# Parameter counts of the authors' released models (cmt-architecture.md, measured on their code).
RELEASED_PARAMS = {"cmt_ti": 9_492_426, "cmt_xs": 15_247_208, "cmt_s": 26_256_160, "cmt_b": 45_715_076}


def pytest_configure(config) -> None:
    """One intra-op thread: the test models are small, and on a shared 2-core box two OpenMP
    threads per process spin against each other (10x slower here). CMT_TEST_THREADS overrides."""
    import torch

    torch.set_num_threads(int(os.environ.get("CMT_TEST_THREADS", "1")))


@pytest.fixture(scope="session", autouse=True)
def channels_as_counted():
    """Calibrations made in tests count channels as written (channel block 1), whatever this CPU's vector
    width: the fake timers of the latency tests are sums of unpadded features, so their exact recoveries
    hold on AVX2 and AVX-512 alike. test_channel_block.py checks the real probe and the padded counts."""
    from cmt_gen.latency import measure

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(measure, "device_channel_block", lambda device_type: (1, "channels as counted (tests)"))
        yield


def tiny_spec_dict(**changes) -> dict:
    """A four-stage CMT small enough to build and run in milliseconds, with every released feature."""
    spec = {
        "name": "tiny",
        "resolution": 64,
        "stem": {"channels": 8},
        "stages": [
            {"channels": 16, "depth": 1, "heads": 1, "reduction": 4, "expansion": 2.0},
            {"channels": 24, "depth": 2, "heads": 2, "reduction": 2, "expansion": 2.5},
            {"channels": 32, "depth": 1, "heads": 4, "reduction": 2, "expansion": 2.0},
            {"channels": 48, "depth": 1, "heads": 4, "reduction": 1, "expansion": 2.0},
        ],
        "head": {"fc_channels": 40, "dropout": 0.0},
        "num_classes": 10,
    }
    spec.update(changes)
    return spec


@pytest.fixture
def tiny_spec() -> dict:
    return tiny_spec_dict()


@pytest.fixture
def tiny_spec_file(tmp_path: Path) -> Path:
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_spec_dict(), sort_keys=False))
    return path


_RELEASED_MODELS: dict = {}


@pytest.fixture(scope="session")
def released_model():
    """Freshly initialised released variants, built once per session; tests must not modify them."""
    import torch

    from cmt_gen import build_model

    def get(name: str):
        if name not in _RELEASED_MODELS:
            torch.manual_seed(0)
            _RELEASED_MODELS[name] = build_model(name).eval()
        return _RELEASED_MODELS[name]

    return get


@pytest.fixture(scope="session")
def released_ti(released_model):
    """One freshly initialised CMT-Ti (eval) shared by read-only tests."""
    return released_model("cmt_ti")


@lru_cache(maxsize=1)
def _layout() -> dict:
    return json.loads(LAYOUT_FILE.read_text())


@pytest.fixture(scope="session")
def official_layout() -> dict:
    """Keys and shapes of the released checkpoints (tests/data, carried by the clone)."""
    return _layout()


# ---------------------------------------------------------------- hostile checkpoints

class Payload:
    """Pickles into a call that would create a marker file: weights-only loading must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def malicious_checkpoints(folder: Path) -> tuple[Path, list[Path]]:
    """A zip-format (torch.save) and a legacy pickle checkpoint carrying Payload; returns (marker, paths)."""
    import pickle

    import torch

    marker = folder / "PWNED"
    zipped = folder / "evil.pt"
    torch.save({"model": {"stem.0.conv.weight": torch.zeros(1)}, "payload": Payload(marker)}, zipped)
    legacy = folder / "evil_legacy.pth"
    with legacy.open("wb") as handle:
        pickle.dump({"state_dict": Payload(marker)}, handle)
    assert not marker.exists()
    return marker, [zipped, legacy]


# ---------------------------------------------------------------- CLI runners

@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run the real entry point in-process; returns exit code, stdout and stderr."""
    from cmt_gen.cli.app import main

    def run(*argv: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in argv])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def subprocess_env() -> dict[str, str]:
    """The environment for child interpreters: one torch thread, as in this process (see pytest_configure)."""
    threads = os.environ.get("CMT_TEST_THREADS", "1")
    return {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def run_cli_subprocess(*argv: str, cwd: Path | None = None, timeout: float = 120) -> CliResult:
    """Run `cmt-gen` in a fresh interpreter, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-c", "from cmt_gen.cli.app import main; main()", *map(str, argv)],
        capture_output=True, text=True, cwd=cwd or REPO, env=subprocess_env(), timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
