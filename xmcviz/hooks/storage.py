"""Append-only files for hook records: safe to read while a run writes them.

Two formats, both documented here because `load_run` and outside tools read them:

* ``NAME.jsonl`` — one JSON object per line, for scalar records.  Each line is
  flushed when written; a reader drops a torn last line (a run killed mid-write).
* ``NAME.bin`` + ``NAME.bin.json`` — fixed-width binary records for arrays
  (ranks, counts, per-row gradient norms).  The sidecar JSON holds the numpy
  structured dtype (``{"fields": [[name, dtype-str], ...]}``, little-endian,
  packed); the ``.bin`` file is the concatenation of records.  A reader ignores
  a trailing partial record.  ``numpy.fromfile`` reads it with no xmcviz code.

Flushing hands each write to the operating system, so killing the process
(even with SIGKILL) loses nothing already written.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

# JSON lines are shared with the run directory (metrics.jsonl): one implementation.
from ..core.rundir import (JsonlWriter, atomic_write_bytes, read_jsonl,  # noqa: F401 (re-exported)
                      truncate_jsonl)


class RecordWriter:
    """Append numpy structured records to ``path`` (binary) with a dtype sidecar."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        side = self.path.with_name(self.path.name + ".json")
        fields = [[n, self.dtype.fields[n][0].str] for n in self.dtype.names]
        atomic_write_bytes(side, json.dumps({"fields": fields}).encode())
        self._f = open(self.path, "ab")
        # A torn tail from a killed run would misalign every later record: cut it.
        size = self._f.tell()
        if size % self.dtype.itemsize:
            self._f.truncate(size - size % self.dtype.itemsize)
            self._f.seek(0, os.SEEK_END)

    def write(self, records: np.ndarray) -> None:
        if records.dtype != self.dtype:
            records = records.astype(self.dtype)
        self._f.write(np.ascontiguousarray(records).tobytes())
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


def read_records(path: Path) -> np.ndarray:
    """Read a ``.bin`` record file written by :class:`RecordWriter` (torn tail ignored)."""
    path = Path(path)
    side = path.with_name(path.name + ".json")
    dtype = np.dtype([(n, t) for n, t in json.loads(side.read_text())["fields"]])
    if not path.exists():
        return np.zeros(0, dtype=dtype)
    raw = path.read_bytes()
    n = len(raw) // dtype.itemsize
    return np.frombuffer(raw[: n * dtype.itemsize], dtype=dtype).copy()


def truncate_records(path: Path, max_step: int, field: str = "step") -> None:
    """Drop binary records with ``field > max_step`` (a resumed run redoes those steps)."""
    path = Path(path)
    if not path.exists() or not path.with_name(path.name + ".json").exists():
        return
    rec = read_records(path)
    atomic_write_bytes(path, rec[rec[field] <= max_step].tobytes())
