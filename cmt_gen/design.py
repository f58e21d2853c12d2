"""Custom CMT variants: scale a spec, solve for a budget, sample a design space, compare.

The public entry points, each living in a module with one job:

- `scale_spec` (cmt_gen.scaling): compound width/depth/resolution scaling with
  legal, hardware-friendly rounding;
- `design_specs` (cmt_gen.search): the specs that meet a params/MACs budget;
- `sample_specs` (cmt_gen.sampling): random legal specs around a base;
- `compare_specs` (cmt_gen.compare) and `plot_cost_map` (cmt_gen.plotting).

All of them count with the torch-free analytic counter.
"""

from __future__ import annotations

from pathlib import Path

from cmt_gen.compare import Comparison, compare_specs, load_profile, table2_points
from cmt_gen.sampling import SampleResult, sample_specs
from cmt_gen.scaling import DEFAULT_DIVISOR, DesignError, Shape, derive_spec, resolution_step, scale_spec
from cmt_gen.search import Constraint, CostModel, Design, DesignResult, design_specs, parse_budget
from cmt_gen.spec import CMTSpec

__all__ = [
    "DEFAULT_DIVISOR", "Comparison", "Constraint", "CostModel", "Design", "DesignError", "DesignResult",
    "SampleResult", "Shape", "compare_specs", "derive_spec", "design_specs", "load_profile", "parse_budget",
    "resolution_step", "sample_specs", "scale_spec", "spec_yaml", "table2_points", "write_spec",
]

SPEC_SUFFIXES = (".yaml", ".yml")


def spec_yaml(spec: CMTSpec) -> str:
    """The YAML of a spec, proven to load back to the same spec before anyone writes it."""
    from cmt_gen.spec_io import parse_yaml_text, spec_to_yaml, validate_spec

    text = spec_to_yaml(spec)
    again = validate_spec(parse_yaml_text(text, spec.name), spec.name)
    if again != spec:
        raise RuntimeError(f"spec {spec.name} does not survive a YAML round trip")
    return text


def check_spec_path(path: str | Path) -> Path:
    """Fail before any work if a spec cannot be written there."""
    path = Path(path)
    if path.suffix.lower() not in SPEC_SUFFIXES:
        raise DesignError(f"a spec is written as .yaml or .yml, not {path.suffix or 'no suffix'}", source=str(path))
    if not (path.parent if str(path.parent) else Path(".")).is_dir():
        raise DesignError("output folder does not exist", source=str(path))
    return path


def write_spec(spec: CMTSpec, path: str | Path) -> Path:
    """Validate, round-trip and atomically write a spec as YAML."""
    from cmt_gen.spec_io import write_atomic

    path = check_spec_path(path)
    write_atomic(path, spec_yaml(spec))
    return path
