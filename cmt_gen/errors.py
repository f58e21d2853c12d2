"""The project's one error type: every user mistake becomes a `CmtGenError`.

The CLI turns it into a single line and exit code 2, so the message must name
where the problem is (file, field path) and which rule was broken.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One broken rule: `source: field: rule` (each part left out when unknown)."""

    rule: str
    source: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        return ": ".join([*(p for p in (self.source, self.field) if p), self.rule])


class CmtGenError(Exception):
    """A user-facing error: `source: field: rule`, printed without a traceback.

    It carries every problem found (`problems`; one unless made by `of`). `str()` is always one
    line; the CLI prints `lines()`: that one line, or one line per problem when `every_line` is set
    (as `cmt-gen validate` does).
    """

    def __init__(self, rule: str, *, source: str | None = None, field: str | None = None,
                 problems: Sequence[Problem] = (), every_line: bool = False):
        self.rule = rule
        self.source = source
        self.field = field
        self.problems: tuple[Problem, ...] = tuple(problems) or (Problem(rule, source, field),)
        self.every_line = every_line
        super().__init__(self.message)

    @classmethod
    def of(cls, problems: Sequence[Problem], *, every_line: bool = False):
        """One error for several problems; its one line lists them all ('<file>: 3 problems: a: ...; b: ...')."""
        if not problems:
            raise ValueError("an error needs at least one problem")
        if len(problems) == 1:
            only = problems[0]
            return cls(only.rule, source=only.source, field=only.field, every_line=every_line)
        sources = {p.source for p in problems}
        shared = len(sources) == 1  # then named once, before the list
        listed = "; ".join(f"{p.field or '(top)'}: {p.rule}" if shared else str(p) for p in problems)
        return cls(f"{len(problems)} problems: {listed}", source=sources.pop() if shared else None,
                   problems=problems, every_line=every_line)

    @property
    def message(self) -> str:
        return str(Problem(self.rule, self.source, self.field))

    def lines(self) -> list[str]:
        """What the CLI prints: one line, or one per problem when `every_line` is set."""
        return [str(p) for p in self.problems] if self.every_line else [self.message]

    def __str__(self) -> str:
        return self.message


class SpecError(CmtGenError):
    """A spec (YAML file, dict or override) breaks the schema or a design rule."""


class CheckpointError(CmtGenError):
    """A checkpoint cannot be read, or does not fit the model built from the spec."""


class InputShapeError(CmtGenError, ValueError):
    """An input tensor's size does not fit the network's strides or reductions."""
