"""User-facing input errors: one line naming the field, the value and the rule.

The CLI turns a :class:`RomsimInputError` into that one line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class RomsimInputError(ValueError):
    """Bad input from a user file or flag."""

    def __init__(self, field: str, value: object, rule: str, source: str | None = None):
        self.field = field
        self.value = value
        self.rule = rule
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field} = {value!r}: {rule}")


def from_validation_error(e: ValidationError, source: str | None = None) -> RomsimInputError:
    """The first error of a pydantic validation as one line: field path, value, rule."""
    err = e.errors()[0]
    field = ".".join(str(p) for p in err["loc"] if p != "function-after") or "config"
    value = err.get("input")
    rule = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    if isinstance(value, dict):
        value = "{...}"
    return RomsimInputError(field, value, rule, source)
