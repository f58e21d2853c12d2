"""Resolve a spec source into a `CMTSpec`: bundled names, files, `extends` and `--set`.

Everything that can go wrong here is a user mistake, so every failure is a
`SpecError` naming the file, the field path and the rule.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cmt_gen.errors import SpecError
from cmt_gen.spec.bundled import bundled_path, looks_like_path, unknown_name_rule
from cmt_gen.spec.schema import BlockOptions, CMTSpec
from cmt_gen.spec.validation import validate_spec
from cmt_gen.spec.yaml_reader import parse_yaml_text, read_yaml_file

MAX_EXTENDS_DEPTH = 16
MAX_OVERRIDE_PARTS = 16  # a field path is a few names deep; thousands would only recurse

# Fields whose change leaves parameters and MACs as they are: a spec changed only
# here still describes the paper's network, so its reference figures stay.
# A block option says so in the schema (`cost_neutral`), so adding one touches no list here.
COST_NEUTRAL_FIELDS = {
    "name", "description", "provenance", "reference", "budget", "drop_path", "head.dropout", "extends",
} | {f"block.{name}" for name, field in BlockOptions.model_fields.items()
     if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("cost_neutral")}



# ---------------------------------------------------------------- merging

def _merge(base: Any, override: Any, where: str, origin: str) -> Any:
    """Deep merge: mappings merge, a mapping of indices merges into a list, else replace."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            path = f"{where}.{key}" if where else str(key)
            if key in base and path not in WHOLE_FIELDS:
                merged[key] = _merge(base[key], value, path, origin)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(override, dict):
        merged_list = list(base)
        for key, value in override.items():
            index = _list_index(key, len(base), f"{where}.{key}", origin)
            merged_list[index] = _merge(base[index], value, f"{where}.{index}", origin)
        return merged_list
    return copy.deepcopy(override)


def _list_index(key: Any, length: int, where: str, origin: str) -> int:
    try:
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise TypeError  # int(2.5) or int(True) would quietly pick another item
        index = int(key)
    except (TypeError, ValueError):
        raise SpecError(f"a list is indexed by a whole number, got {key!r}", source=origin, field=where) from None
    if not -length <= index < length:
        raise SpecError(
            f"index {index} is out of range: the list has {length} items (0..{length - 1})",
            source=origin, field=where,
        )
    return index % length


def _leaf_paths(data: Any, prefix: str = "") -> list[str]:
    if isinstance(data, dict) and data:
        paths: list[str] = []
        for key, value in data.items():
            paths += _leaf_paths(value, f"{prefix}.{key}" if prefix else str(key))
        return paths
    return [prefix]


# Sections a child replaces whole: half of the paper's figures beside new ones would mislead.
WHOLE_FIELDS = {"reference", "budget"}


def affects_cost(path: str) -> bool:
    """Whether changing this dotted field may change parameters or MACs."""
    return not any(path == f or path.startswith(f + ".") for f in COST_NEUTRAL_FIELDS)


# ---------------------------------------------------------------- overrides

def parse_override(text: str) -> tuple[list[str], Any]:
    """`stages.2.depth=18` -> (["stages", "2", "depth"], 18); the value is read as YAML."""
    if not isinstance(text, str):
        raise SpecError(f"an override is a 'key.path=value' string, got {type(text).__name__}", source="--set")
    origin = f"--set {text}"
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError("an override is written key.path=value, e.g. stages.2.depth=18", source=origin)
    parts = key.split(".")
    if len(parts) > MAX_OVERRIDE_PARTS:
        raise SpecError(f"the field path has {len(parts)} parts; a spec's fields are at most "
                        f"{MAX_OVERRIDE_PARTS} deep", source=origin)
    if any(not p for p in parts):
        raise SpecError(f"{key!r} has an empty path component", source=origin)
    value = parse_yaml_text(raw, origin) if raw.strip() else ""
    return parts, value


def apply_override(data: dict, parts: list[str], value: Any, origin: str) -> dict:
    """Set one dotted path in a raw spec dict, creating mappings; lists are indexed."""
    data = copy.deepcopy(data)
    node: Any = data
    for depth, part in enumerate(parts):
        where = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, list):
            index = _list_index(part, len(node), where, origin)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            parent = ".".join(parts[:depth]) or "(top)"
            raise SpecError(f"{parent} is a {type(node).__name__}, not a mapping or list", source=origin, field=where)
    return data


# ---------------------------------------------------------------- resolution

def _raw_from_source(source: str | Path | Mapping, chain: tuple[str, ...] = (),
                     reads: list[Path] | None = None, finder: Callable[[str], Path | None] = bundled_path,
                     unknown: Callable[[str], str] = unknown_name_rule,
                     prepare: Callable[[dict, Path], None] | None = None) -> tuple[dict, str]:
    """Read a spec source into a plain dict with `extends` resolved; returns (data, origin).

    Every file read is appended to `reads` (when given): outputs must never land on them.
    `finder` maps a bundled name to its file (backbones by default; detectors pass their own);
    `prepare(data, folder)` sees each file's own fields before merging (a detector makes its
    backbone path absolute there, so it stays relative to the file that wrote it).
    """
    if isinstance(source, Mapping):
        data, origin, base_dir = dict(source), "<dict>", Path.cwd()
    else:
        text = str(source)
        path = Path(text)
        bundled = None if looks_like_path(text) or _is_file(path) else finder(text)
        if bundled is None and not _exists(path) and not looks_like_path(text):
            raise SpecError(unknown(text), source=text)
        path = bundled or path
        origin = str(source) if bundled is None else f"{text} ({path.name})"
        data, base_dir = read_yaml_file(path), path.resolve().parent
        if reads is not None:
            reads.append(path)
        if path.resolve().as_posix() in chain:
            raise SpecError(f"extends itself through {' -> '.join(chain)}", source=origin, field="extends")
        chain = (*chain, path.resolve().as_posix())
    if data is None:
        raise SpecError("empty spec: expected a mapping with name, resolution, stem and stages", source=origin)
    if not isinstance(data, dict):
        raise SpecError(f"a spec is a mapping of fields, got a {type(data).__name__}", source=origin)
    if prepare is not None:
        prepare(data, base_dir)
    parent = data.pop("extends", None)
    if parent is None:
        return data, origin
    if not isinstance(parent, str):
        raise SpecError("extends names a bundled spec or a path", source=origin, field="extends")
    if len(chain) > MAX_EXTENDS_DEPTH:
        raise SpecError(f"extends chain deeper than {MAX_EXTENDS_DEPTH}", source=origin, field="extends")
    parent_path = base_dir / parent
    parent_source: str | Path = parent_path if looks_like_path(parent) or _is_file(parent_path) else parent
    # A base that cannot be found, or that closes a cycle, is this file's mistake: name this file.
    if isinstance(parent_source, Path):
        if not _is_file(parent_path):
            raise SpecError(f"base spec {parent!r} not found: no file {parent_path}", source=origin, field="extends")
        if parent_path.resolve().as_posix() in chain:
            cycle = [Path(p).name for p in (*chain, parent_path.resolve().as_posix())]
            raise SpecError(f"cycle: {' -> '.join(cycle)}", source=origin, field="extends")
    elif finder(parent) is None:
        raise SpecError(unknown(parent), source=origin, field="extends")
    base, _ = _raw_from_source(parent_source, chain, reads, finder, unknown, prepare)
    merged = _merge(base, data, "", origin)
    changed = [p for p in _leaf_paths(data) if affects_cost(p)]
    _mark_derived(merged, base, f"extends {parent}", changed, keeps_reference="reference" in data,
                  own_notes=data.get("provenance", []))
    return merged, origin



def _is_file(path: Path) -> bool:
    """Path.is_file that answers False for names the OS refuses (too long, a NUL byte)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def spec_files(source: str | Path | Mapping) -> list[Path]:
    """The files a spec source is read from (itself and its `extends` chain): a command's inputs."""
    reads: list[Path] = []
    _raw_from_source(source, reads=reads)
    return reads


_DERIVATION_PREFIXES = ("extends ", "overrides: ")


def _mark_derived(merged: dict, base: dict, note: str, changed: list[str], keeps_reference: bool,
                  own_notes: list, keep_own: bool = False) -> None:
    """Record a derivation in provenance; a cost change makes the base's reference and notes stale."""
    if changed:
        note += f" (changes cost: {', '.join(changed)})"
        if not keeps_reference:
            merged.pop("reference", None)
    source = merged if keep_own else base
    inherited = _note_list(source.get("provenance"))
    if changed:  # the base's notes describe another network; its derivation history still holds
        inherited = [n for n in inherited if isinstance(n, str) and n.startswith(_DERIVATION_PREFIXES)]
    merged["provenance"] = [*inherited, note, *_note_list(own_notes)]


def _note_list(value: Any) -> list:
    """Provenance as a list; a stray scalar stays one item, for the schema to judge (never split a string)."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def apply_overrides(data: dict, overrides: Sequence[str] | Mapping[str, Any] | str | None, origin: str,
                    cost_changes: Callable[[list[str]], list[str]] | None = None,
                    after_each: Callable[[dict, list[str]], dict] | None = None) -> dict:
    """Apply overrides (`key.path=value` strings as on the command line, or a mapping of dotted paths) and
    record them in provenance; `cost_changes` picks the paths that move a count (a backbone's by default),
    which drop the inherited reference. `after_each(data, parts)` follows each one (a detector's backbone)."""
    if isinstance(overrides, str):  # one override, not a sequence of one-letter ones
        overrides = [overrides]
    items: list[tuple[list[str], Any, str]] = []
    if isinstance(overrides, Mapping):
        items = [(str(k).split("."), v, f"override {k}") for k, v in overrides.items()]
    elif overrides:
        items = [(*parse_override(text), f"--set {text}") for text in overrides]
    for parts, value, label in items:
        data = apply_override(data, parts, value, f"{origin} ({label})")
        if after_each is not None:
            data = after_each(data, parts)
    if items:
        applied = [".".join(parts) for parts, _, _ in items]
        changed = cost_changes(applied) if cost_changes else [p for p in applied if affects_cost(p)]
        labels = ", ".join(lbl.removeprefix("--set ").removeprefix("override ") for _, _, lbl in items)
        _mark_derived(data, dict(data), f"overrides: {labels}", changed,
                      keeps_reference=any(p.startswith("reference") for p in applied), own_notes=[], keep_own=True)
    return data


def load_spec(
    source: str | Path | Mapping,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
) -> CMTSpec:
    """Load a spec from a bundled name, a YAML path or a dict, then apply overrides.

    Overrides are `key.path=value` strings (as on the command line) or a mapping
    of dotted paths to values. Changing anything that affects cost drops the
    inherited paper reference, since the result is no longer the paper's model.
    """
    data, origin = _raw_from_source(source)
    if "kind" in data and "stages" not in data:  # a detector given where a backbone belongs
        backbone = data.get("backbone")
        hint = f" (its backbone: {backbone})" if isinstance(backbone, str) else ""
        raise SpecError(f"this is a detector spec (kind: {data['kind']}); this takes a backbone spec{hint}",
                        source=origin, field="kind")
    data = apply_overrides(data, overrides, origin)
    return validate_spec(data, origin)

