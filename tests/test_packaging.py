"""The wheel carries the bundled specs and maps `cli/` into `cmt_gen.cli` (no top-level `cli`)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO


@pytest.mark.slow
def test_wheel_contents(tmp_path: Path) -> None:
    # Built without isolation, so the environment must meet pyproject's build requirements itself
    # (a fresh Python 3.10 venv has setuptools 65 and no `wheel`; pip's isolated builds fetch them).
    setuptools = pytest.importorskip("setuptools", minversion="68")
    if tuple(int(p) for p in setuptools.__version__.split(".")[:2]) < (70, 1):
        pytest.importorskip("wheel")  # bdist_wheel moved into setuptools in 70.1
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("cmt_gen-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    bundled = sorted(n.removeprefix("cmt_gen/specs/") for n in names
                     if n.startswith("cmt_gen/specs/") and n.endswith(".yaml"))
    assert bundled == sorted(p.relative_to(REPO / "specs").as_posix() for p in (REPO / "specs").rglob("*.yaml"))
    assert "detectors/cmt_s_retinanet.yaml" in bundled
    assert "cmt_gen/cli/app.py" in names
    assert not any(n.startswith(("cli/", "specs/", "tests/")) for n in names)
    modules = {f"cmt_gen/{p.relative_to(REPO / 'cmt_gen').as_posix()}" for p in (REPO / "cmt_gen").rglob("*.py")}
    assert modules <= set(names), sorted(modules - set(names))  # every module ships, not only the listed ones


def test_every_subpackage_is_listed_for_setuptools() -> None:
    """pyproject names the packages one by one; a new folder missing there is absent from every wheel."""
    import re

    text = (REPO / "pyproject.toml").read_text()
    listed = set(re.findall(r'"(cmt_gen(?:\.\w+)?)"', text.split("packages = [", 1)[1].split("]", 1)[0]))
    folders = {"cmt_gen"} | {f"cmt_gen.{p.parent.name}" for p in (REPO / "cmt_gen").glob("*/__init__.py")}
    assert folders <= listed, sorted(folders - listed)


def test_bundled_dir_prefers_the_installed_copy(tmp_path: Path, monkeypatch) -> None:
    """In a wheel the specs sit in cmt_gen/specs; in a checkout beside the package."""
    import cmt_gen.spec.bundled as bundled

    package = tmp_path / "site" / "cmt_gen"
    (package / "specs").mkdir(parents=True)
    (package / "specs" / "x.yaml").write_text("name: x\n")
    monkeypatch.setattr(bundled, "__file__", str(package / "spec" / "bundled.py"))
    assert bundled.bundled_dir() == (package / "specs").resolve()
    assert bundled.bundled_names() == ["x"]
    (package / "specs" / "x.yaml").unlink()
    (package / "specs").rmdir()
    assert bundled.bundled_dir() == (tmp_path / "site" / "specs").resolve()
