"""Run directory IO: ``config.json``, ``metrics.jsonl``, ``checkpoint.pt``, atomic writes.

Layout (see docs/DESIGN.md)::

    RUN/config.json        every setting, seed, versions, device
    RUN/metrics.jsonl      one JSON object per evaluation
    RUN/checkpoint.pt      latest checkpoint, written atomically (tmp + os.replace)
    RUN/hooks/...          hook records (written by the hooks themselves)

Every JSON-lines record is flushed and fsync'd when written, so a run killed at any moment
keeps everything it logged; readers drop a torn last line.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping

import numpy as np
import torch

__all__ = ["RunDir", "JsonlWriter", "read_jsonl", "truncate_jsonl", "atomic_write_bytes",
           "atomic_write_json", "json_safe", "RESULTS_FILE", "save_checkpoint", "load_checkpoint",
           "environment_info", "RunDirNotEmpty"]

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
HOOKS = "hooks"
#: What a notebook writes to its ``output_dir``: the contract between notebooks and ``xmcviz sweep``.
RESULTS_FILE = "results.json"


class RunDirNotEmpty(ValueError):
    """Raised when a run directory already holds a run and neither resume nor overwrite is set."""


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on every platform.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Write to ``path.tmp``, fsync, then ``os.replace`` it onto ``path``: a kill at any moment
    leaves the old file or the new one, never a torn one (``prepare`` clears stale ``.tmp``)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_file`)."""
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_leaf(o: Any) -> Any:
    """``o`` as a plain JSON type when it is one of the non-JSON types we write (numpy scalars and
    arrays, paths, torch devices, sets, tuples); ``o`` itself otherwise."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path, torch.device)):
        return str(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    return o


def _json_default(o: Any) -> Any:
    # json.dumps hook: the same conversions as json_safe, leaving NaN as NaN (metrics logs).
    converted = _json_leaf(o)
    if converted is o:
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")
    return converted


def json_safe(v: Any) -> Any:
    """Plain, strict JSON types: numpy scalars and arrays to Python, NaN/inf to None, tuples and
    sets to lists, paths to strings.

    Results files (``results.json``, written by :class:`xmcviz.notebook.experiment.Experiment`
    and collected by ``xmcviz sweep``) and the sweep's results table go through it."""
    v = _json_leaf(v)
    if isinstance(v, Mapping):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [json_safe(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class JsonlWriter:
    """Append JSON objects to a file, one line each, flushed and fsync'd per record.

    A torn last line left by a killed run is cut off on open, so the next record starts on a
    line of its own.
    """

    def __init__(self, path: str | os.PathLike, fsync: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        _cut_torn_tail(self.path)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record, separators=(",", ":"), default=_json_default) + "\n")
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    @property
    def closed(self) -> bool:
        return self._f.closed

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cut_torn_tail(path: Path) -> None:
    if not path.exists():
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":  # the usual case: only the last byte is read
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a JSON-lines file; a torn (unterminated, unparsable) last line is dropped.

    A missing file reads as no records; a bad line elsewhere raises ``ValueError`` naming it.
    """
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # unterminated last line: written when the run was killed
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON object: {line[:80]!r}") from None
    return out


def truncate_jsonl(path: str | os.PathLike, keep: Callable[[dict], bool]) -> int:
    """Atomically rewrite ``path`` with the records for which ``keep(record)``; returns how many."""
    path = Path(path)
    if not path.exists():
        return 0
    kept = [r for r in read_jsonl(path) if keep(r)]
    body = "".join(json.dumps(r, separators=(",", ":"), default=_json_default) + "\n"
                   for r in kept)
    atomic_write_bytes(path, body.encode())
    return len(kept)


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """``torch.save`` atomically (:func:`atomic_file`): a kill never leaves a torn file."""
    with atomic_file(path) as f:
        torch.save(state, f)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`."""
    # weights_only=False: the checkpoint holds numpy RNG states and plain dicts we wrote.
    return torch.load(Path(path), map_location=map_location, weights_only=False)


def environment_info(device: torch.device | str | None = None) -> dict:
    """Versions of python / torch / faiss / numpy / scipy and the device, for ``config.json``."""
    import scipy

    try:
        import faiss  # noqa: PLC0415
        faiss_version = getattr(faiss, "__version__", "unknown")
    except Exception:  # faiss is optional for samplers that do not need it
        faiss_version = None
    from .. import __version__

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "xmcviz": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "faiss": faiss_version,
        "device": None if device is None else str(device),
    }
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


class RunDir:
    """Paths and lifecycle of one run directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def hooks_dir(self) -> Path:
        return self.path / HOOKS

    def is_nonempty(self) -> bool:
        return self.path.is_dir() and any(self.path.iterdir())

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    def check_free(self, resume: bool = False, overwrite: bool = False,
                   resumable: bool = True) -> None:
        """Refuse a directory that holds a run unless resuming or overwriting it.

        Trainers call this before any work, so a wrong ``out`` fails at once.  ``resumable``:
        whether the message may offer ``--resume``."""
        if self.is_nonempty() and not (resume or overwrite):
            how = ("pass resume=True (--resume) to continue it or overwrite=True (--overwrite) "
                   "to replace it" if resumable else
                   "pass overwrite=True (--overwrite) to replace it")
            raise RunDirNotEmpty(f"out={str(self.path)!r} is not empty (it holds a run): {how}")

    def prepare(self, resume: bool = False, overwrite: bool = False) -> None:
        """Create the directory; refuse a non-empty one unless resuming or overwriting.

        ``overwrite`` removes the files a run writes (config, metrics, checkpoint, hooks/)
        and nothing else.
        """
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"out={str(self.path)!r} exists and is not a directory")
        self.check_free(resume, overwrite)
        if self.is_nonempty() and not resume:
            for name in (CONFIG, METRICS, CHECKPOINT, CHECKPOINT + ".tmp", CONFIG + ".tmp",
                         METRICS + ".tmp"):
                (self.path / name).unlink(missing_ok=True)
            shutil.rmtree(self.hooks_dir, ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)

    def write_config(self, config: dict) -> None:
        atomic_write_json(self.config_path, config)

    def read_metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_path)

    def truncate_metrics(self, max_step: int) -> int:
        """Keep the evaluations at or before ``max_step`` (steps done); returns how many."""
        return truncate_jsonl(self.metrics_path, lambda r: r.get("step", 0) <= max_step)

    def metrics_writer(self) -> JsonlWriter:
        return JsonlWriter(self.metrics_path)
