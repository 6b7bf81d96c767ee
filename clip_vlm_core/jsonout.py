"""Machine-readable output is valid JSON: a non-finite number (an infinite "best so far" before the
first validation, a NaN metric) is written as null, never as Python's `Infinity` / `NaN`, which JSON
does not have and other tools (jq, JavaScript, ...) refuse."""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """`value` with every non-finite float (inside dicts, lists and tuples too) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """json.dumps that writes non-finite numbers as null (and fails loudly on anything else non-JSON)."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)
