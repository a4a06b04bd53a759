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


_BOUND_ERRORS = {"less_than", "less_than_equal", "greater_than", "greater_than_equal"}


def _field_description(model: type | None, loc: tuple) -> str | None:
    """The ``description`` of the pydantic field at ``loc`` (nested models followed)."""
    info = None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not isinstance(part, str) or fields is None or part not in fields:
            return None
        info = fields[part]
        model = info.annotation
    return info.description if info is not None else None


def from_validation_error(
    e: ValidationError, source: str | None = None, model: type | None = None
) -> RomsimInputError:
    """The first error of a pydantic validation as one line: field path, value, rule. With the
    validated ``model`` class, a bound's rule also gives the field's description (its reason)."""
    err = e.errors()[0]
    loc = tuple(p for p in err["loc"] if p != "function-after")
    field = ".".join(str(p) for p in loc) or "config"
    value = err.get("input")
    rule = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    if err["type"] in _BOUND_ERRORS and (why := _field_description(model, loc)):
        rule = f"{rule} ({why})"
    if isinstance(value, dict):
        value = "{...}"
    return RomsimInputError(field, value, rule, source)
