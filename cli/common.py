"""Shared pieces of the CLI: consoles, error reporting, JSON output, override options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console


def _console(stderr: bool = False) -> Console:
    """Rich console; when piped (no terminal) it is wide enough for full tables."""
    probe = Console(stderr=stderr)
    return Console(stderr=stderr, highlight=False, width=None if probe.is_terminal else 160)


console = _console()
err_console = _console(stderr=True)

SET_HELP = "Override a field: --set stages.2.depth=18 (repeatable; values are YAML)."


def emit_json(payload: Any, path: str | Path | None = None) -> None:
    """Print JSON to stdout, or write it atomically to a file."""
    text = json.dumps(payload, indent=2, default=str) + "\n"
    if path is None or str(path) == "-":
        typer.echo(text, nl=False)
        return
    from cmt_gen.files import write_atomic

    write_atomic(Path(path), text)


def fmt_count(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    from cmt_gen.spec.quantity import format_quantity

    return format_quantity(value) + unit


def fmt_delta(ours: float, reference: float | None) -> str:
    if not reference:
        return "-"
    return f"{(ours - reference) / reference * 100:+.1f}%"


def family_order(names: list[str]) -> list[str]:
    """Bundled specs in Table 2's order (Ti, XS, S, B, L), then any others by name."""
    from cmt_gen.cost.table2 import cmt_rows

    order = [r.spec for r in cmt_rows()]
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))
