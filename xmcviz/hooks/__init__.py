"""Instruments that watch training: see :mod:`xmcviz.hooks.base` for the contract.

``make_hooks("ranks:10,freq,grad:20")`` builds hooks from a CLI-style spec
(``name`` or ``name:every``); ``DEFAULT_HOOKS`` is what ``xmcviz train`` uses
when ``--hooks default`` is given.
"""
from __future__ import annotations

from .base import Hook, RunInfo, StepContext
from .frequency import LabelFrequency
from .gradient import GradientDominance
from .metrics_log import MetricsLog
from .hidden import HiddenPositives
from .popularity import NegativePopularity
from .ranks import NegativeRanks
from .staleness import IndexStaleness

HOOKS: dict[str, type[Hook]] = {
    "ranks": NegativeRanks,
    "freq": LabelFrequency,
    "grad": GradientDominance,
    "metrics": MetricsLog,
    "staleness": IndexStaleness,
    "popularity": NegativePopularity,
    "hidden": HiddenPositives,
}
DEFAULT_HOOKS = "ranks,freq,grad,staleness,popularity,hidden"


def make_hooks(spec: str | None) -> list[Hook]:
    """Build hooks from ``"name[:every],..."``; ``"default"`` = :data:`DEFAULT_HOOKS`; ``""``/None/"none" = none."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return []
    if spec.strip().lower() == "default":
        spec = DEFAULT_HOOKS
    hooks = []
    for part in spec.split(","):
        name, _, every = part.strip().partition(":")
        if name not in HOOKS:
            raise ValueError(f"hook {name!r} is not known: allowed {sorted(HOOKS)}")
        if every:
            try:
                n = int(every)
            except ValueError:
                raise ValueError(f"hook interval {part.strip()!r}: {every!r} is not an integer") from None
            hooks.append(HOOKS[name](every=n))
        else:
            hooks.append(HOOKS[name]())
    return hooks


__all__ = ["Hook", "RunInfo", "StepContext", "NegativeRanks", "LabelFrequency", "GradientDominance",
           "MetricsLog", "IndexStaleness", "NegativePopularity", "HiddenPositives", "HOOKS", "DEFAULT_HOOKS", "make_hooks"]
