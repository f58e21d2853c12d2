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
    "errors": 0, "files": 0,
    "spec": 1,
    "cost": 2,
    "devices": 3,  # one module per kind of device: timing, memory, budgets, precision rules (torch-free)
    "ops": 3,  # tensor ops both network forms share (tracing probe, position bias)
    "deploy": 4,  # the inference rewrite and its CPU kernels; the trained layers name their rewrite here
    "model": 5,
    "check": 6, "export": 6,
    "timm": 6,  # cmt_gen/timm.py: registers specs in timm's registry (beside check, above model)
    "detection": 6,  # detectors around a CMT backbone (torchvision), their traced counts and FLOP conventions
    "profile": 7, "latency": 7, "jobs": 7,
    "design": 8,
    "cli": 9,
}
# Layers whose import must never pull in torch (the CLI's light commands stand on them).
TORCH_FREE = ("cmt_gen.spec", "cmt_gen.cost", "cmt_gen.design", "cmt_gen.latency", "cmt_gen.profile.host_allocator",
              "cmt_gen.devices")
# Import circles between modules that are allowed to stay (module pairs); none today.
ALLOWED_CIRCLES: set[tuple[str, ...]] = set()
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


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, lazy imports included (`from pkg import mod` counts as mod)."""
    known = {m for m, _ in _modules()}
    graph: dict[str, set[str]] = {}
    for module, path in _modules():
        targets = set()
        for _, target in _imports(path, module):
            if target in known and target != module:
                targets.add(target)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):  # `from cmt_gen.deploy import onednn` names a module, not an attribute
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
        graph[module] = targets - {module}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[str, ...]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(tuple(sorted(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles_even_inside_a_layer() -> None:
    """A circle hidden by a lazy import inside one layer still couples its modules both ways."""
    graph = _import_graph()
    graph = {m: {t for t in targets if _layer(t) is not None} for m, targets in graph.items() if m != "cmt_gen"}
    circles = [c for c in _circles(graph) if c not in ALLOWED_CIRCLES]
    assert not circles, "import circles (lazy imports included): " + "; ".join(" <-> ".join(c) for c in circles)


def test_the_circle_finder_finds_a_lazy_circle(tmp_path: Path) -> None:
    """The rule above would be empty if the finder missed a circle, or the walker an import inside a function."""
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [("a", "b", "c")]
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from cmt_gen.model import layers\n")
    assert ("cmt_gen.model") in {t for _, t in _imports(path, "cmt_gen.deploy.probe")}


def test_package_docstrings_name_their_own_layer() -> None:
    """A package docstring that opens with its layer number keeps it equal to LAYERS (they drifted once)."""
    import re

    wrong = {}
    for init in (REPO / "cmt_gen").glob("*/__init__.py"):
        found = re.match(r'"""Layer (\d+)', init.read_text())
        if found and int(found.group(1)) != LAYERS[init.parent.name]:
            wrong[init.parent.name] = (int(found.group(1)), LAYERS[init.parent.name])
    assert not wrong, f"docstring layer != LAYERS: {wrong}"
