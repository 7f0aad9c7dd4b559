"""JSON has no NaN or Infinity: steadylm writes them as the strings "nan", "inf", "-inf", so a
diverged step or an undefined figure stays visible and every file stays valid JSON. Readers turn
them back into floats (`float("nan")` reads them)."""

from __future__ import annotations

import math
from typing import Any


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float (also inside dicts, lists and tuples) as a string."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
