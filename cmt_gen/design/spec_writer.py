"""Write a designed spec: validated, proven to round-trip through YAML, written atomically."""

from __future__ import annotations

from pathlib import Path

from cmt_gen.design.scaling import DesignError
from cmt_gen.spec.schema import CMTSpec

SPEC_SUFFIXES = (".yaml", ".yml")


def spec_yaml(spec: CMTSpec) -> str:
    """The YAML of a spec, proven to load back to the same spec before anyone writes it."""
    from cmt_gen.spec.serialize import spec_to_yaml
    from cmt_gen.spec.validation import validate_spec
    from cmt_gen.spec.yaml_reader import parse_yaml_text

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
    from cmt_gen.files import write_atomic

    path = check_spec_path(path)
    write_atomic(path, spec_yaml(spec))
    return path
