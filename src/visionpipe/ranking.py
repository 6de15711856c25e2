"""One definition of "better" for a metric: used to pick the best epoch and by the registry's champion gate."""

from __future__ import annotations

import math


def is_better(value: float, best: float | None, greater: bool) -> bool:
    """Whether ``value`` beats ``best`` (None or NaN: any finite value does)."""
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if greater else value < best
