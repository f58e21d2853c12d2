"""Entry point of `cmt-gen`: one Typer app; every user mistake exits 2 with one line
(`validate` alone prints a line per problem of its specs).

Command modules import torch only inside the commands that need it, so
`cmt-gen --help`, `validate`, `list`, `schema` and `check --counter analytic`
start fast.
"""

from __future__ import annotations

import os
import sys

import typer

from cmt_gen.cli.common import ReadableGroup
from cmt_gen.errors import CmtGenError

app = typer.Typer(
    name="cmt-gen",
    cls=ReadableGroup,
    help="Spec-driven CMT backbones: build, count, check, profile and design.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


DEBUG_ENV = "CMT_GEN_DEBUG"
# sysexits' EX_SOFTWARE: a bug in cmt-gen, not the user's input (1 means over budget / nothing found).
EXIT_INTERNAL = 70
_debug = False


def _version(value: bool) -> None:
    if value:
        from cmt_gen import __version__

        typer.echo(f"cmt-gen {__version__}")
        raise typer.Exit()


def _set_debug(value: bool) -> None:
    global _debug
    _debug = _debug or value


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", callback=_set_debug, is_eager=True,
                               help=f"Show the traceback of an internal error (or set {DEBUG_ENV}=1)."),
) -> None:
    """Spec-driven CMT backbones: build, count, check, profile and design."""


def _register() -> None:
    from cmt_gen.cli import (
        check_command,
        design_commands,
        export_command,
        latency_commands,
        profile_command,
        spec_commands,
    )

    for module in (spec_commands, check_command, profile_command, export_command, design_commands, latency_commands):
        module.register(app)


_register()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI behind one error boundary.

    Exit codes: 0 done; 1 over budget / nothing found (the command says which); 2 a
    user mistake, one line naming file, field and rule; 70 an internal error (a bug),
    one line, the traceback with --debug or CMT_GEN_DEBUG=1; 130 interrupted.
    """
    from cmt_gen.cli import streams
    from cmt_gen.profile.onednn_cache import enlarge_primitive_cache

    enlarge_primitive_cache()  # before any command runs a model (profile, calibrate, predict --measure)
    global _debug
    _debug = os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
    guard = streams.install()
    try:
        code = _run(argv)
    finally:
        failure = streams.restore(guard)
    if failure is not None and not guard.broken_pipe:  # a closed pipe is the reader's choice; a full disk is not
        _print_error(f"stdout: output lost: {failure.strerror or failure}")
        code = 2
    sys.exit(code)


def _run(argv: list[str] | None) -> int:
    """The command's exit status; every failure is printed here as one line."""
    usage, abort = _click_errors()
    try:
        result = app(args=argv, prog_name="cmt-gen", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except CmtGenError as exc:
        for line in exc.lines():  # one line; one per problem where the command asked for it (validate)
            _print_error(line)
        return 2
    except usage as exc:  # an unknown option, a flag value of the wrong type, a missing argument
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":  # typer has printed the help
            return 2
        _print_error(f"{exc.format_message()} (see {ctx.command_path if ctx else 'cmt-gen'} --help)")
        return exc.exit_code or 2
    except (KeyboardInterrupt, *abort):
        _print_error("interrupted")
        return 130
    except MemoryError:
        _print_error("out of memory: lower the resolution, widths or batch size")
        return 2
    except OSError as exc:
        if exc.filename is None:  # not about a path the user gave: a bug, said by the boundary below
            return _internal_error(exc)
        _print_error(f"{_short_path(exc.filename)}: {exc.strerror or exc}")  # name too long, no permission...
        return 2
    except Exception as exc:  # noqa: BLE001 - the boundary: anything else is a bug, said in one line
        if type(exc).__name__ == "OutOfMemoryError":  # torch's, without importing torch here
            _print_error(f"out of memory: {str(exc).splitlines()[0] if str(exc) else ''}; "
                         "lower the resolution, widths or batch size")
            return 2
        return _internal_error(exc)


def _internal_error(exc: BaseException) -> int:
    if _debug:
        import traceback

        traceback.print_exc()
    where = "" if _debug else f"; rerun with --debug (or {DEBUG_ENV}=1) for the traceback"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    _print_error(f"internal error, a bug in cmt-gen: {type(exc).__name__}: {first[:300]}{where}")
    return EXIT_INTERNAL


def _short_path(name: object) -> str:
    """A path as given, cut to a readable length (the OS refuses names of thousands of characters)."""
    text = os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else str(name)
    return text if len(text) <= 120 else f"{text[:60]}...{text[-40:]} ({len(text)} characters)"


def _click_errors() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """Usage-error and abort classes of the click that typer runs on (its own copy in recent typer)."""
    usage: list[type] = []
    abort: list[type] = []
    try:
        import click

        usage.append(click.ClickException)
        abort.append(click.exceptions.Abort)
    except ImportError:  # recent typer carries its own click
        pass
    try:
        from typer import _click as vendored
        from typer import exceptions as typer_exceptions

        usage.append(vendored.exceptions.ClickException)
        abort.append(typer_exceptions.Abort)
    except (ImportError, AttributeError):
        pass
    return tuple(usage), tuple(abort)


def _print_error(message: str) -> None:
    from cmt_gen.cli.common import err_console, literal

    err_console.print(f"[bold red]error:[/] {literal(message)}", soft_wrap=True)


if __name__ == "__main__":
    main()
