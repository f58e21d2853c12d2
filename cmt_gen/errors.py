"""The project's one error type: every user mistake becomes a `CmtGenError`.

The CLI turns it into a single line and exit code 2, so the message must name
where the problem is (file, field path) and which rule was broken.
"""

from __future__ import annotations


class CmtGenError(Exception):
    """A user-facing error: `source: field: rule`, printed without a traceback."""

    def __init__(self, rule: str, *, source: str | None = None, field: str | None = None):
        self.rule = rule
        self.source = source
        self.field = field
        super().__init__(self.message)

    @property
    def message(self) -> str:
        parts = [p for p in (self.source, self.field) if p]
        return ": ".join([*parts, self.rule])

    def __str__(self) -> str:
        return self.message


class SpecError(CmtGenError):
    """A spec (YAML file, dict or override) breaks the schema or a design rule."""


class CheckpointError(CmtGenError):
    """A checkpoint cannot be read, or does not fit the model built from the spec."""


class InputShapeError(CmtGenError, ValueError):
    """An input tensor's size does not fit the network's strides or reductions."""
