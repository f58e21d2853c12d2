"""Safe YAML reading: size and alias limits, no duplicate keys, one clear error per mistake."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import yaml

from cmt_gen.errors import SpecError

MAX_SPEC_BYTES = 1 << 20
MAX_YAML_NODES = 20_000
# A spec nests four levels (stages -> list -> stage -> field). The limit is checked explicitly, not left to
# Python's recursion limit, which torch.compile raises for the rest of the process.
MAX_YAML_DEPTH = 64


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


def _depth(node: yaml.Node) -> int:
    """How deeply collections nest under `node` (iterative; call it once aliases are known to be bounded)."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        current, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(current, yaml.SequenceNode):
            stack.extend((child, level + 1) for child in current.value)
        elif isinstance(current, yaml.MappingNode):
            stack.extend((child, level + 1) for pair in current.value for child in pair)
    return deepest


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
        if _depth(node) > MAX_YAML_DEPTH:
            raise SpecError(f"YAML nests too deeply (more than {MAX_YAML_DEPTH} levels); a spec nests four",
                            source=origin)
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
    """Read a spec file: a regular file of at most MAX_SPEC_BYTES, checked before reading."""
    from cmt_gen.files import read_bounded

    origin = str(path)
    raw = read_bounded(path, MAX_SPEC_BYTES, SpecError)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError("not UTF-8 text; a spec is a YAML file", source=origin) from None
    return parse_yaml_text(text, origin)

