"""The package's layering, checked: each subpackage is one layer and imports only from layers below it.

Every import counts, including the lazy ones inside functions, since those are
how the torch-free layers stay torch-free. See ARCHITECTURE.md.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Lower number = lower layer. A module may import its own layer and any lower one.
LAYERS = {
    "errors": 0, "files": 0, "host_allocator": 0, "onednn_cache": 0,
    "spec": 1,
    "cost": 2,
    "model": 3,
    "check": 4, "export": 4,
    "timm": 4,  # cmt_gen/timm.py: registers specs in timm's registry (beside check, above model)
    "profile": 5, "latency": 5,
    "design": 6,
    "cli": 9,
}
# Layers whose import must never pull in torch (the CLI's light commands stand on them).
TORCH_FREE = ("cmt_gen.spec", "cmt_gen.cost", "cmt_gen.design", "cmt_gen.latency", "cmt_gen.host_allocator")
MAX_MODULE_LINES = 420


def _modules() -> list[tuple[str, Path]]:
    found = [(".".join(("cmt_gen", *p.relative_to(REPO / "cmt_gen").with_suffix("").parts)), p)
             for p in sorted((REPO / "cmt_gen").rglob("*.py"))]
    found += [(f"cmt_gen.cli.{p.stem}", p) for p in sorted((REPO / "cli").glob("*.py"))]
    return [(name.removesuffix(".__init__"), path) for name, path in found]


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "cmt_gen" else None


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            if target == "cmt_gen":  # `from cmt_gen import x`: x is a submodule or a public name
                out += [(node.lineno, f"cmt_gen.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, target))
    return out


def test_every_subpackage_has_a_layer() -> None:
    names = {p.name.removesuffix(".py") for p in (REPO / "cmt_gen").iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.name != "__init__.py")}
    assert names | {"cli"} <= set(LAYERS), f"add {sorted(names - set(LAYERS))} to LAYERS and ARCHITECTURE.md"


def test_no_layer_imports_a_higher_one() -> None:
    violations = []
    for module, path in _modules():
        own = _layer(module)
        if own is None or module == "cmt_gen":
            continue  # the package's facade lazily re-exports every layer's public API
        for line, target in _imports(path, module):
            other = _layer(target)
            if other in LAYERS and LAYERS[other] > LAYERS[own]:
                violations.append(f"{path.relative_to(REPO)}:{line}: {own} (layer {LAYERS[own]}) imports "
                                  f"{target} (layer {LAYERS[other]})")
    assert not violations, "\n".join(violations)


def test_the_walker_sees_lazy_imports() -> None:
    """The rule above would be empty if the walker missed imports inside functions."""
    path = REPO / "cmt_gen" / "check" / "measured.py"
    assert "cmt_gen.model.network" in {t for _, t in _imports(path, "cmt_gen.check.measured")}


def test_modules_stay_small() -> None:
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for _, p in _modules()}
    long = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not long, f"split these modules (one job each, at most {MAX_MODULE_LINES} lines): {long}"


@pytest.mark.parametrize("package", TORCH_FREE)
def test_torch_free_layers_do_not_import_torch(package: str) -> None:
    modules = [m for m, _ in _modules() if m == package or m.startswith(package + ".")]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}:\n"
            "    try:\n        importlib.import_module(m)\n"
            "    except ImportError as exc:\n        if exc.name != 'matplotlib': raise\n"
            "print(sorted(k for k in sys.modules if k == 'torch' or k.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"{package} imported torch: {out[:200]}"
