"""Benchmark output: each record printed as one JSON line, and appended to ``--out`` if given."""
from __future__ import annotations

import json
from typing import IO


class JsonLines:
    """``with JsonLines(path) as out: out.emit(record)``: stdout always, ``path`` when set
    (``mode`` "w" replaces the file, "a" appends to it)."""

    def __init__(self, path: str | None = None, mode: str = "w") -> None:
        self.path = path
        self.mode = mode
        self._f: IO[str] | None = None

    def __enter__(self) -> "JsonLines":
        self._f = open(self.path, self.mode) if self.path else None
        return self

    def emit(self, record: dict) -> dict:
        line = json.dumps(record)
        print(line, flush=True)
        if self._f is not None:
            self._f.write(line + "\n")
            self._f.flush()  # an interrupted benchmark keeps the runs it finished
        return record

    def __exit__(self, *exc: object) -> None:
        if self._f is not None:
            self._f.close()
