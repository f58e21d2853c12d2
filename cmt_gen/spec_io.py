"""Reading, merging and writing specs: YAML files, bundled names, `extends` and `--set`.

Everything that can go wrong here is a user mistake, so every failure is a
`SpecError` naming the file, the field path and the rule.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from cmt_gen.errors import CmtGenError, SpecError
from cmt_gen.spec import CMTSpec, _DesignRuleError

MAX_SPEC_BYTES = 1 << 20
MAX_YAML_NODES = 20_000
MAX_EXTENDS_DEPTH = 16

# Fields whose change leaves parameters and MACs as they are: a spec changed only
# here still describes the paper's network, so its reference figures stay.
COST_NEUTRAL_FIELDS = {
    "name", "description", "provenance", "reference", "budget", "drop_path",
    "head.dropout", "block.attention", "extends",
}


# ---------------------------------------------------------------- bundled specs

def bundled_dir() -> Path:
    """The folder of bundled specs: `cmt_gen/specs` in an installed wheel, `specs/` in a checkout."""
    package = Path(__file__).resolve().parent
    installed = package / "specs"
    return installed if installed.is_dir() else package.parent / "specs"


def bundled_names() -> list[str]:
    return sorted(p.stem for p in bundled_dir().glob("*.yaml"))


def _bundled_path(name: str) -> Path | None:
    key = name.strip().lower().replace("-", "_")
    path = bundled_dir() / f"{key}.yaml"
    return path if path.is_file() else None


def _looks_like_path(source: str) -> bool:
    return source.endswith((".yaml", ".yml", ".json")) or os.sep in source or "/" in source


# ---------------------------------------------------------------- YAML reading

class _GuardedLoader(yaml.SafeLoader):
    """Safe loader that refuses duplicate keys (a silent typo otherwise)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                duplicate = False
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            with contextlib.suppress(TypeError):  # an unhashable key; the constructor reports it
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, memo: dict[int, int], budget: int) -> int:
    """Nodes the document has once aliases are expanded, stopping early past budget."""
    known = memo.get(id(node))
    if known is not None:
        return known
    memo[id(node)] = budget + 1  # a cycle counts as too large
    size = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            size += _expanded_size(child, memo, budget)
            if size > budget:
                break
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            size += _expanded_size(key, memo, budget) + _expanded_size(value, memo, budget)
            if size > budget:
                break
    memo[id(node)] = size
    return size


def parse_yaml_text(text: str, origin: str) -> Any:
    """Parse one YAML document safely: no code, no alias bombs, no duplicate keys."""
    if len(text.encode("utf-8", "replace")) > MAX_SPEC_BYTES:
        raise SpecError(f"file is larger than {MAX_SPEC_BYTES // 1024} KiB; a spec is a few lines", source=origin)
    loader = None
    try:
        loader = _GuardedLoader(text)  # its reader already refuses control characters
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}, MAX_YAML_NODES) > MAX_YAML_NODES:
            raise SpecError(
                f"YAML expands to more than {MAX_YAML_NODES} nodes through aliases "
                "(an alias bomb?); write the spec out plainly",
                source=origin,
            )
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{origin}:{mark.line + 1}:{mark.column + 1}" if mark else origin
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"YAML syntax error: {problem}", source=where) from None
    except RecursionError:
        raise SpecError("YAML nests too deeply", source=origin) from None
    except (ValueError, OverflowError) as exc:  # a scalar's constructor: 2020-13-45, a 5000-digit int
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise SpecError(f"YAML value cannot be read: {reason}", source=origin) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml_file(path: Path) -> Any:
    origin = str(path)
    if not path.exists():
        raise SpecError("no such file", source=origin)
    if not path.is_file():
        raise SpecError("not a file", source=origin)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", source=origin) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError("not UTF-8 text; a spec is a YAML file", source=origin) from None
    return parse_yaml_text(text, origin)


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

def _raw_from_source(source: str | Path | Mapping, chain: tuple[str, ...] = ()) -> tuple[dict, str]:
    """Read a spec source into a plain dict with `extends` resolved; returns (data, origin)."""
    if isinstance(source, Mapping):
        data, origin, base_dir = dict(source), "<dict>", Path.cwd()
    else:
        text = str(source)
        path = Path(text)
        bundled = None if _looks_like_path(text) or path.is_file() else _bundled_path(text)
        if bundled is None and not path.exists() and not _looks_like_path(text):
            raise SpecError(_unknown_name_rule(text), source=text)
        path = bundled or path
        origin = str(source) if bundled is None else f"{text} ({path.name})"
        data, base_dir = read_yaml_file(path), path.resolve().parent
        if path.resolve().as_posix() in chain:
            raise SpecError(f"extends itself through {' -> '.join(chain)}", source=origin, field="extends")
        chain = (*chain, path.resolve().as_posix())
    if data is None:
        raise SpecError("empty spec: expected a mapping with name, resolution, stem and stages", source=origin)
    if not isinstance(data, dict):
        raise SpecError(f"a spec is a mapping of fields, got a {type(data).__name__}", source=origin)
    parent = data.pop("extends", None)
    if parent is None:
        return data, origin
    if not isinstance(parent, str):
        raise SpecError("extends names a bundled spec or a path", source=origin, field="extends")
    if len(chain) > MAX_EXTENDS_DEPTH:
        raise SpecError(f"extends chain deeper than {MAX_EXTENDS_DEPTH}", source=origin, field="extends")
    parent_path = base_dir / parent
    parent_source: str | Path = parent_path if _looks_like_path(parent) or parent_path.is_file() else parent
    # A base that cannot be found, or that closes a cycle, is this file's mistake: name this file.
    if isinstance(parent_source, Path):
        if not parent_path.is_file():
            raise SpecError(f"base spec {parent!r} not found: no file {parent_path}", source=origin, field="extends")
        if parent_path.resolve().as_posix() in chain:
            cycle = [Path(p).name for p in (*chain, parent_path.resolve().as_posix())]
            raise SpecError(f"cycle: {' -> '.join(cycle)}", source=origin, field="extends")
    elif _bundled_path(parent) is None:
        raise SpecError(_unknown_name_rule(parent), source=origin, field="extends")
    base, _ = _raw_from_source(parent_source, chain)
    merged = _merge(base, data, "", origin)
    changed = [p for p in _leaf_paths(data) if affects_cost(p)]
    _mark_derived(merged, base, f"extends {parent}", changed, keeps_reference="reference" in data,
                  own_notes=data.get("provenance", []))
    return merged, origin


def _unknown_name_rule(text: str) -> str:
    hint = difflib.get_close_matches(text.lower().replace("-", "_"), bundled_names(), n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    return f"no bundled spec or file named {text!r}{suggestion} (bundled: {', '.join(bundled_names())})"


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
    if isinstance(overrides, str):  # one override, not a sequence of one-letter ones
        overrides = [overrides]
    items: list[tuple[list[str], Any, str]] = []
    if isinstance(overrides, Mapping):
        items = [(str(k).split("."), v, f"override {k}") for k, v in overrides.items()]
    elif overrides:
        for text in overrides:
            parts, value = parse_override(text)
            items.append((parts, value, f"--set {text}"))
    applied: list[str] = []
    for parts, value, label in items:
        data = apply_override(data, parts, value, f"{origin} ({label})")
        applied.append(".".join(parts))
    if applied:
        changed = [p for p in applied if affects_cost(p)]
        labels = ", ".join(lbl.removeprefix("--set ").removeprefix("override ") for _, _, lbl in items)
        base = dict(data)
        _mark_derived(data, base, f"overrides: {labels}", changed,
                      keeps_reference=any(p.startswith("reference") for p in applied),
                      own_notes=[], keep_own=True)
    return validate_spec(data, origin)


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
    lines = "\n".join(f"  {f or '(top)'}: {r}" for f, r in problems)
    raise SpecError(f"{len(problems)} problems:\n{lines}", source=origin)


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


# ---------------------------------------------------------------- writing

def spec_to_dict(spec: CMTSpec) -> dict:
    """Plain data of a spec, in schema order, without unset optional sections."""
    return spec.model_dump(mode="json", exclude_none=True)


def spec_to_yaml(spec: CMTSpec) -> str:
    return yaml.safe_dump(spec_to_dict(spec), sort_keys=False, default_flow_style=None, width=100)


def default_file_mode() -> int:
    """The mode a plain open() would give a new file under the current umask (0644 under 022)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on failure it vanishes.

    Every writer of output files goes through here, so none is ever left half-written
    and an OS failure (disk full, a folder in the way) is one clear CmtGenError.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise CmtGenError("output folder does not exist", source=str(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise CmtGenError(f"cannot write: {exc.strerror or exc}", source=str(path)) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, default_file_mode())  # mkstemp made it private (0600)
        os.replace(tmp, path)
    except OSError as exc:
        raise CmtGenError(f"cannot write: {exc.strerror or exc}", source=str(path)) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write text or bytes through `atomic_output`, synced to disk before the rename."""
    payload = data.encode() if isinstance(data, str) else data
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
