"""Shared pieces of the CLI: consoles, error reporting, JSON output, override options."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

# Control and invisible characters (zero-width spaces and joiners, direction marks, BOM, soft hyphen): shown as
# escapes, so two names that differ only there do not print alike.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\xad\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def one_line(text: object) -> str:
    """Text with every control character shown as its escape (a newline as \\n): one line, no terminal codes."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def literal(text: object) -> str:
    """User text (names, paths, notes) for rich: printed as written, never read as markup."""
    from rich.markup import escape

    return escape(one_line(text))


SET_HELP = "Override a field: --set stages.2.depth=18 (repeatable; values are YAML)."


def _device_help() -> str:
    """--device's help from the registered devices (`cmt_gen.devices`), so a new device shows up by itself."""
    from cmt_gen.devices import DEVICE_HELP, auto_help

    return f"{auto_help()}, {DEVICE_HELP.removeprefix('auto, ')}."


DEVICE_HELP = _device_help()  # "auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps."


@contextmanager
def step_progress(what: str) -> Iterator[Callable[[str], None]]:
    """Progress of long work on stderr: a live status line on a terminal, one plain line per step when
    piped (logs, CI). stdout is never touched, so `--json` output stays parseable."""
    import time

    started = time.perf_counter()
    if err_console.is_terminal:
        with err_console.status(what) as status:
            yield lambda text: status.update(f"{literal(what)}: {literal(text)}")
        return

    def line(text: str) -> None:
        print(f"{time.perf_counter() - started:6.1f}s {one_line(what)}: {one_line(text)}", file=sys.stderr, flush=True)

    yield line


def emit_json(payload: Any, path: str | Path | None = None) -> None:
    """Print JSON to stdout, or write it atomically to a file."""
    text = json.dumps(payload, indent=2, default=str) + "\n"
    if path is None or str(path) == "-":
        typer.echo(text, nl=False)
        return
    from cmt_gen.files import write_atomic

    write_atomic(Path(path), text)


def verdict_cell(result) -> str:
    """A check's verdict, coloured: red when failing, yellow for a documented deviation, else green."""
    from cmt_gen.check.budget import FAILING

    style = "red" if result.verdict in FAILING else "yellow" if result.documented else "green"
    return f"[{style}]{result.verdict}[/]"


def fmt_params(value: float | None, digits: int = 2) -> str:
    """Parameters always in M (one unit per column: 0.60M beside 26.26M)."""
    from cmt_gen.spec.quantity import format_params

    return "-" if value is None else format_params(value, digits)


def fmt_macs(value: float | None, digits: int = 2) -> str:
    """MACs always in G (Table 2's FLOPs column)."""
    from cmt_gen.spec.quantity import format_macs

    return "-" if value is None else format_macs(value, digits)


def fmt_bytes(value: float | None) -> str:
    """Memory in MiB or GiB."""
    from cmt_gen.spec.quantity import format_bytes

    return "-" if value is None else format_bytes(value)


def fmt_delta(ours: float, reference: float | None) -> str:
    if not reference:
        return "-"
    return f"{(ours - reference) / reference * 100:+.1f}%"


def family_order(names: list[str]) -> list[str]:
    """Bundled specs in Table 2's order (Ti, XS, S, B, L), then any others by name."""
    from cmt_gen.cost.table2 import cmt_rows

    order = [r.spec for r in cmt_rows()]
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


class _ReadableParams:
    """Help without type tags on flags (`<bool>`) and with arguments as NAME, not `{name}`.

    Typer shows every option's type and wraps required arguments in braces; for a
    flag the type says nothing, and braces read like a template placeholder.
    """

    def get_params(self, ctx):  # noqa: ANN001 - click's signature
        params = super().get_params(ctx)
        for param in params:
            if param.param_type_name == "argument" and param.metavar is None:
                param.metavar = param.name.upper()
            if not getattr(param, "_readable", False):
                param.display_type_rich = _readable_type(param, param.display_type_rich)
                param._readable = True
        return params

    def collect_usage_pieces(self, ctx) -> list[str]:  # noqa: ANN001
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                continue
            name = param.metavar + ("..." if param.nargs != 1 else "")
            pieces.append(name if param.required else f"[{name}]")
        subcommands = getattr(self, "subcommand_metavar", None)
        return pieces + ([subcommands] if subcommands else [])


def _readable_type(param, shown):
    """A flag shows no type; a list shows its element type once: `<str>...`, not `<list[str]>`."""

    def display(ctx):  # noqa: ANN001
        if getattr(param, "is_flag", False):
            return None
        text = shown(ctx)
        if text and text.startswith("<list[") and text.endswith("]>"):
            return f"<{text[6:-2]}>..."
        return text

    return display


def _readable_classes():
    from typer.core import TyperCommand, TyperGroup

    class ReadableCommand(_ReadableParams, TyperCommand):
        pass

    class ReadableGroup(_ReadableParams, TyperGroup):
        pass

    return ReadableCommand, ReadableGroup


ReadableCommand, ReadableGroup = _readable_classes()


THREADS_HELP = "Intra-op threads (default: the cores free of other work, as profile picks them)."


def use_threads(threads: int | None) -> str | None:
    """Set torch's threads for a command that runs a model, as `profile` picks them: the user's count,
    else the cores free of other work (all of them busy would make every thread wait on the others).
    Returns the line saying what it chose and why (None when the user chose), for the command to print
    once it has succeeded: a refusal stays one line."""
    import torch

    from cmt_gen.profile.env import default_threads
    from cmt_gen.profile.settings import check_threads

    if threads is not None:
        check_threads(threads, "--threads")
        torch.set_num_threads(threads)
        return None
    chosen, note = default_threads("cpu")
    torch.set_num_threads(chosen or torch.get_num_threads())
    return f"{note} (--threads sets it)" if note else None


class StepReport:
    """Progress of long work whose steps are counted up front (`step_progress` is for uncounted steps),
    on stderr: a bar on a terminal; when
    piped, a line for a step still running after `delay` seconds, and for many short steps (calibrate's
    timings) one line per `every` seconds, so a log never sits silent for long. A command that fails
    within `delay` seconds (a bad input) prints nothing but its one error line."""

    def __init__(self, label: str, every: float = 10.0, delay: float = 2.0):
        self.label, self.every, self.delay = label, every, delay
        self._bar = None
        self._task = None
        self._timer = None
        self._last = 0.0
        self._start = 0.0

    def __enter__(self) -> StepReport:
        import time

        self._start = self._last = time.monotonic()
        if err_console.is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                 console=err_console, transient=True)
            self._bar.__enter__()
        return self

    def __call__(self, done: int, total: int, what: str) -> None:
        import threading
        import time

        if self._bar is not None:
            if self._task is None:
                self._task = self._bar.add_task(self.label, total=total)
            self._bar.update(self._task, completed=done, total=total, description=f"{self.label}: {literal(what)}")
            return
        self._cancel()
        line = f"{self.label}: {done}/{total} {literal(what)}"
        if time.monotonic() - self._last >= self.every and done < total:
            self._print(line)
        elif done < total:
            self._timer = threading.Timer(self.delay, self._print, (line,))
            self._timer.daemon = True
            self._timer.start()

    def _print(self, line: str) -> None:
        import time

        self._last = now = time.monotonic()
        err_console.print(f"{line} ({now - self._start:.0f} s)", soft_wrap=True)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __exit__(self, *exc: object) -> None:
        self._cancel()
        if self._bar is not None:
            self._bar.__exit__(*exc)
