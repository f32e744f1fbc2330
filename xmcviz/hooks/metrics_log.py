"""MetricsLog: pushes each evaluation record (P@k, PSP@k, wall-clock) to live subscribers.

The trainer already writes these records to ``metrics.jsonl``; this hook only
forwards them in-process so a notebook can draw P@k against time as it trains.
"""
from __future__ import annotations

from .base import Hook


class MetricsLog(Hook):
    name = "metrics"

    def on_eval(self, record: dict) -> None:
        self.publish(dict(record))
