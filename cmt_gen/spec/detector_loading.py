"""Resolve a detector spec source into a `DetectorSpec`: bundled names, files, `extends`, `--set`.

The backbone is a CMT spec like any other: `backbone: cmt_s` (a bundled name or
a path, relative to the detector's file) or a mapping, which may itself
`extends:` a backbone and change fields. `--set backbone.stages.2.depth=18`
reaches into it. As for backbones, a change that moves the counts drops the
paper's figures (and says so in provenance).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cmt_gen.errors import Problem, SpecError
from cmt_gen.spec.bundled import (
    bundled_detector_path,
    bundled_path,
    looks_like_path,
    unknown_detector_rule,
)
from cmt_gen.spec.detector import DetectorSpec
from cmt_gen.spec.loading import (
    _is_file,
    _raw_from_source,
    apply_overrides,
    load_spec,
    parse_override,
    spec_files,
)

# Fields whose change keeps a detector's parameters and MACs: its reference stays.
DETECTOR_COST_NEUTRAL = ("name", "description", "provenance", "reference", "budget", "extends")


def _any_bundled(name: str) -> Path | None:
    """A detector may extend a bundled detector; its `backbone:` names a bundled backbone."""
    return bundled_detector_path(name) or bundled_path(name)


def _detector_cost_changes(paths: list[str]) -> list[str]:
    return [p for p in paths if not any(p == f or p.startswith(f + ".") for f in DETECTOR_COST_NEUTRAL)]


def _absolute_backbone(data: dict, folder: Path) -> None:
    """A backbone path is relative to the file that writes it, wherever a child that extends that file lives."""
    if "backbone" in data:
        data["backbone"] = _backbone_mapping(data["backbone"], folder)


def raw_detector(source: str | Path | Mapping, reads: list[Path] | None = None) -> tuple[dict, str]:
    """The source's fields with `extends` resolved (backbone paths made absolute) and its origin."""
    return _raw_from_source(source, reads=reads, finder=_any_bundled, unknown=unknown_detector_rule,
                            prepare=_absolute_backbone)


def detector_files(source: str | Path | Mapping, overrides: Sequence[str] | None = None) -> list[Path]:
    """The files a detector spec is read from (itself, its `extends` chain, a backbone's files, one given by
    --set too): a command's inputs, which its outputs must never replace."""
    reads: list[Path] = []
    data, _ = raw_detector(source, reads)
    backbone = data.get("backbone")
    for text in overrides or []:
        parts, value = parse_override(text)
        if parts == ["backbone"]:
            backbone = _backbone_mapping(value, Path.cwd())
    if isinstance(backbone, dict):
        reads += spec_files(backbone)
    return reads


_DETECTOR_KEYS = ("kind", "backbone", "fpn", "retina_head", "rpn", "box_head", "mask_head")


def is_detector(source: str | Path | Mapping) -> bool:
    """Whether a spec source describes a detector: it has a detector's fields (`kind`, `backbone`, `fpn`, the
    heads), itself or through `extends`; a detector without `kind` is then told it is missing."""
    if isinstance(source, Mapping):
        return any(key in source for key in _DETECTOR_KEYS) or _extends_detector(source.get("extends"))
    text = str(source)
    if not looks_like_path(text) and not _is_file(Path(text)):
        return bundled_detector_path(text) is not None
    try:
        data, _ = raw_detector(source)
    except SpecError:
        return False  # the backbone loader reports the file's problem
    return any(key in data for key in _DETECTOR_KEYS)


def _extends_detector(parent: object) -> bool:
    return isinstance(parent, str) and bundled_detector_path(parent) is not None


def _backbone_mapping(value: Any, base_dir: Path) -> Any:
    """`backbone: cmt_s` or a path becomes `{extends: ...}`, so `--set backbone.x=...` can reach into it."""
    if isinstance(value, str):
        value = {"extends": value}
    if isinstance(value, dict) and isinstance(value.get("extends"), str):
        parent = value["extends"]
        if looks_like_path(parent) and not Path(parent).is_absolute():
            value = {**value, "extends": str(base_dir / parent)}
    return value


def load_detector_spec(source: str | Path | Mapping,
                       overrides: Sequence[str] | Mapping[str, Any] | None = None) -> DetectorSpec:
    """Load a detector spec from a bundled name, a YAML path or a dict, then apply overrides."""
    data, origin = raw_detector(source)
    if "stages" in data or "stem" in data:
        raise SpecError("a detector extends a detector spec; name a backbone under `backbone:` instead "
                        "(this one extends a backbone spec)", source=origin, field="extends")
    data = apply_overrides(data, overrides, origin, _detector_cost_changes, _cwd_backbone)
    return validate_detector(data, origin)


def _cwd_backbone(data: dict, parts: list[str]) -> dict:
    """A backbone path typed on the command line is relative to the working folder."""
    if parts[0] == "backbone":
        data["backbone"] = _backbone_mapping(data["backbone"], Path.cwd())
    return data


def validate_detector(data: dict, origin: str) -> DetectorSpec:
    """Validate raw fields into a `DetectorSpec`; a SpecError carries every problem, backbone ones included."""
    from cmt_gen.spec.validation import _describe

    problems: list[Problem] = []
    backbone = data.get("backbone")
    if backbone is None:
        problems.append(Problem("required field is missing: a bundled backbone name, a path or a mapping",
                                origin, "backbone"))
    elif not isinstance(backbone, (dict, DetectorSpec)):
        problems.append(Problem(f"a backbone is a name, a path or a mapping, got {type(backbone).__name__}",
                                origin, "backbone"))
    else:
        try:
            data = {**data, "backbone": load_spec(backbone)}
        except SpecError as exc:
            problems += [Problem(p.rule, origin, f"backbone.{p.field}" if p.field else "backbone")
                         for p in exc.problems]
    if problems:
        data = {k: v for k, v in data.items() if k != "backbone"}
    try:
        spec = DetectorSpec.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            if problems and tuple(err.get("loc", ()))[:1] == ("backbone",):
                continue  # reported above, with the backbone's own field
            problems += [Problem(rule, origin, field or None) for field, rule in _describe(err, DetectorSpec)]
    else:
        if not problems:
            return spec
    raise SpecError.of(problems)

