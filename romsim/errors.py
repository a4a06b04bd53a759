"""User-facing input errors: one line naming the field, the value and the rule.

The CLI turns a :class:`RomsimInputError` into that one line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RomsimInputError(ValueError):
    """Bad input from a user file or flag."""

    def __init__(self, field: str, value: object, rule: str, source: str | None = None):
        self.field = field
        self.value = value
        self.rule = rule
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field} = {value!r}: {rule}")
