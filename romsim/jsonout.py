"""Strict JSON for every file and stdout object romsim writes: NaN and ±inf become ``null``, so
any standards-following parser (``jq``, JavaScript's ``JSON.parse``) reads the result."""

from __future__ import annotations

import json
import math
from typing import Any


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (dicts, lists, tuples, numpy scalars)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", None) == 0:
        return finite_or_none(obj.item())  # numpy scalar
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes NaN/Infinity (they become null)."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)
