"""Turn raw spec data into a `CMTSpec`, reporting pydantic's findings as one `SpecError`."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from cmt_gen.errors import SpecError
from cmt_gen.spec.schema import CMTSpec, _DesignRuleError


def validate_spec(data: dict, origin: str) -> CMTSpec:
    """Validate a raw dict into a `CMTSpec`, turning pydantic's report into a SpecError."""
    try:
        return CMTSpec.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    # A misspelt key also leaves the field it meant missing: report the typo (with its hint) once.
    meant = {(*_loc(e)[:-1], _key_hint(_loc(e))[0]) for e in errors if e.get("type") == "extra_forbidden"}
    problems = [_describe(e) for e in errors if not (e.get("type") == "missing" and tuple(_loc(e)) in meant)]
    if len(problems) == 1:
        field, rule = problems[0]
        raise SpecError(rule, source=origin, field=field or None)
    listed = "; ".join(f"{f or '(top)'}: {r}" for f, r in problems)  # one line, like every error
    raise SpecError(f"{len(problems)} problems: {listed}", source=origin)


def _loc(err: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(str(p) for p in err.get("loc", ()))


def _key_hint(loc: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """The field an unknown key most likely meant (or None), and the keys allowed at its place."""
    model = _model_at(list(loc[:-1]))
    known = sorted(model.model_fields) if model else []
    hint = difflib.get_close_matches(loc[-1], known, n=1) if loc else []
    return (hint[0] if hint else None), known


def _describe(err: Mapping[str, Any]) -> tuple[str, str]:
    loc = _loc(err)
    field = ".".join(loc)
    kind = err.get("type", "")
    inner = (err.get("ctx") or {}).get("error")
    if isinstance(inner, _DesignRuleError):
        return inner.field, inner.rule
    if kind == "extra_forbidden":
        hint, known = _key_hint(loc)
        suggestion = f"; did you mean {hint!r}?" if hint else ""
        return field, f"unknown key {loc[-1]!r}{suggestion} (allowed: {', '.join(known)})"
    if kind == "missing":
        return field, "required field is missing"
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if "input" in err and kind not in {"model_type", "dict_type"}:
        message += f" (got {_short(err['input'])})"
    return field, message


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        return f"a {type(value).__name__} too long to print"
    return text if len(text) <= 60 else text[:57] + "..."


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    """The pydantic model that sits at a location such as ['stages', '2']."""
    import typing

    model: Any = CMTSpec
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

