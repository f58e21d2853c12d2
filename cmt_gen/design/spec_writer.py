"""Write a designed spec: validated, proven to round-trip through YAML, written atomically."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

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


def check_spec_path(path: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """Fail before any work if a spec cannot be written there, or would replace one of the `inputs`."""
    from cmt_gen.files import check_output_target

    path = Path(path)
    check_output_target(path, inputs=inputs, suffixes=SPEC_SUFFIXES, what="a spec")
    return path


def base_files(base: str | Path | None) -> list[Path]:
    """Files a design reads: the base's chain, or every bundled spec when the search picks one."""
    from cmt_gen.spec.bundled import bundled_names, bundled_path
    from cmt_gen.spec.loading import spec_files

    if base is None:
        return [p for p in (bundled_path(n) for n in bundled_names()) if p is not None]
    return spec_files(base)


def write_spec(spec: CMTSpec, path: str | Path) -> Path:
    """Validate, round-trip and atomically write a spec as YAML."""
    from cmt_gen.files import write_atomic

    path = check_spec_path(path)
    write_atomic(path, spec_yaml(spec))
    return path
