"""Turn raw spec data into a `CMTSpec`, reporting every problem found in one `SpecError`.

Its one line (str) lists them all; `cmt-gen validate` prints its `problems` one per line.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from cmt_gen.errors import Problem, SpecError
from cmt_gen.spec.schema import _STAGE_RULE_FIELDS, CMTSpec, _DesignRuleError, cross_field_problems


def validate_spec(data: dict, origin: str) -> CMTSpec:
    """Validate a raw dict into a `CMTSpec`; a SpecError carries every problem pydantic and the design rules find."""
    try:
        return CMTSpec.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    # A misspelt key also leaves the field it meant missing: report the typo (with its hint) once.
    meant = {(*_loc(e)[:-1], _key_hint(_loc(e))[0]) for e in errors if e.get("type") == "extra_forbidden"}
    problems = [p for e in errors if not (e.get("type") == "missing" and tuple(_loc(e)) in meant) for p in _describe(e)]
    if not any(isinstance((e.get("ctx") or {}).get("error"), _DesignRuleError) for e in errors):
        # The design rules run only on a spec whose fields all pass; check those their valid fields break.
        problems += _partial_design_problems(data, errors)
    problems.sort(key=lambda problem: _spec_order(problem[0]))  # as the fields come in a spec: a list reads top down
    raise SpecError.of([Problem(rule, origin, field or None) for field, rule in problems])


def _partial_design_problems(data: object, errors: list) -> list[tuple[str, str]]:
    """The cross-field rules over the fields that passed their own checks (the others are reported already)."""
    if not isinstance(data, Mapping):
        return []
    broken = [_loc(e) for e in errors]

    def clean(*loc: str) -> bool:  # no error at loc, inside it, or at a place that holds it
        return not any(b[: len(loc)] == loc or loc[: len(b)] == b for b in broken)

    def number(value: object, *loc: str) -> int | float | None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and clean(*loc)
        return value if ok else None  # type: ignore[return-value]

    resolution = number(data.get("resolution"), "resolution")
    raw_stages = data.get("stages")
    if not isinstance(raw_stages, list) or ("stages",) in broken:  # not a list, or too long or short
        return []  # every rule needs the stages
    stages = [
        {name: number(stage.get(name), "stages", str(i), name) for name in _STAGE_RULE_FIELDS}
        if isinstance(stage, Mapping) else {}
        for i, stage in enumerate(raw_stages)
    ]
    return cross_field_problems(len(raw_stages), stages, resolution, resolution)


def _spec_order(field: str) -> tuple[int, ...]:
    """Sort key of a field path: the schema's field order at each level, list items by index."""
    parts = field.split(".") if field else []
    key = []
    for depth, part in enumerate(parts):
        if part.isdigit():
            key.append(int(part))
            continue
        model = _model_at(parts[:depth])
        names = list(model.model_fields) if model else []
        key.append(names.index(part) if part in names else len(names))  # an unknown key after the known ones
    return tuple(key)


def _loc(err: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(str(p) for p in err.get("loc", ()))


def _key_hint(loc: tuple[str, ...], root: type[BaseModel] = CMTSpec) -> tuple[str | None, list[str]]:
    """The field an unknown key most likely meant (or None), and the keys allowed at its place."""
    model = _model_at(list(loc[:-1]), root)
    known = sorted(model.model_fields) if model else []
    hint = difflib.get_close_matches(loc[-1], known, n=1) if loc else []
    return (hint[0] if hint else None), known


def _describe(err: Mapping[str, Any], root: type[BaseModel] = CMTSpec) -> list[tuple[str, str]]:
    """One pydantic error as (field, rule) pairs: one, or each broken design rule (`root`: the model validated)."""
    loc = _loc(err)
    field = ".".join(loc)
    kind = err.get("type", "")
    inner = (err.get("ctx") or {}).get("error")
    if isinstance(inner, _DesignRuleError):
        return list(inner.problems)
    if kind == "extra_forbidden":
        hint, known = _key_hint(loc, root)
        suggestion = f"; did you mean {hint!r}?" if hint else ""
        return [(field, f"unknown key {loc[-1]!r}{suggestion} (allowed: {', '.join(known)})")]
    if kind == "missing":
        return [(field, "required field is missing")]
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if "input" in err and kind not in {"model_type", "dict_type"}:
        message += f" (got {_short(err['input'])})"
    return [(field, message)]


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        return f"a {type(value).__name__} too long to print"
    return text if len(text) <= 60 else text[:57] + "..."


def _model_at(loc: list[str], root: type[BaseModel] = CMTSpec) -> type[BaseModel] | None:
    """The pydantic model that sits at a location such as ['stages', '2']."""
    import typing

    model: Any = root
    for part in loc:
        if part.isdigit():
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *typing.get_args(annotation)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None

