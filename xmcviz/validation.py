"""Parameter validation in scikit-learn's manner: fail early, name the value and the allowed range."""
from __future__ import annotations

import numpy as np


def check_int(name: str, value, low: int, high: int | None = None) -> int:
    """Validate an integer parameter; the error names the value and the range."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        rng = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}={value} is out of range: allowed {rng}")
    return int(value)


def check_float(name: str, value, low: float, high: float | None = None,
                low_inclusive: bool = True, high_inclusive: bool = True) -> float:
    """Validate a real parameter; the error names the value and the range."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    bad_low = v < low if low_inclusive else v <= low
    bad_high = high is not None and (v > high if high_inclusive else v >= high)
    if not np.isfinite(v) or bad_low or bad_high:
        lo, hi = "[" if low_inclusive else "(", "]" if high_inclusive else ")"
        rng = f"{lo}{low}, {high}{hi}" if high is not None else f"{'>=' if low_inclusive else '>'} {low}"
        raise ValueError(f"{name}={value!r} is out of range: allowed {rng}")
    return v


def check_choice(name: str, value, choices) -> str:
    """Validate a value against a fixed set of choices."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported: allowed {sorted(choices)}")
    return value
