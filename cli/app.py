"""Entry point of `cmt-gen`: one Typer app; every user mistake exits 2 with one line.

Command modules import torch only inside the commands that need it, so
`cmt-gen --help`, `validate`, `list`, `schema` and `check --counter analytic`
start fast.
"""

from __future__ import annotations

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


def _version(value: bool) -> None:
    if value:
        from cmt_gen import __version__

        typer.echo(f"cmt-gen {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Spec-driven CMT backbones: build, count, check, profile and design."""


def _register() -> None:
    from cmt_gen.cli import check_command, design_commands, profile_command, spec_commands

    for module in (spec_commands, check_command, profile_command, design_commands):
        module.register(app)


_register()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; the project's errors exit 2 with one line, usage errors too."""
    try:
        app(args=argv, prog_name="cmt-gen")
    except CmtGenError as exc:
        _print_error(str(exc))
        sys.exit(2)
    except KeyboardInterrupt:
        _print_error("interrupted")
        sys.exit(130)


def _print_error(message: str) -> None:
    from rich.markup import escape

    from cmt_gen.cli.common import err_console

    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


if __name__ == "__main__":
    main()
