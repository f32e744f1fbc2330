"""Batch runs of a parameterised notebook over a grid of parameter values, with papermill.

A notebook taking part has a cell tagged ``parameters`` that assigns ``output_dir`` (among
others) and writes its results as a JSON object to ``output_dir/results.json``.
:func:`run_sweep` executes it once per combination of the grid's cross product::

    OUT/<slug>/notebook.ipynb   the executed notebook (kept for failed runs too)
    OUT/<slug>/results.json     written by the notebook
    OUT/<slug>/kernel.log       the kernel's own stdout/stderr (crashes, C-level warnings)
    OUT/<slug>/done             marker written (atomically) after a successful run
    OUT/results.jsonl, OUT/results.csv   one row per combination
    OUT/summary.html            a plotly chart of the main metric + the table (works offline)

``<slug>`` reads ``name=value__name=value`` in grid order (e.g. ``sampler=mips-s__ppe=4``);
characters outside ``[A-Za-z0-9._@+-]`` become ``-`` and then a short hash of the exact value
is appended, so distinct values never share a folder; a slug over 100 characters is cut and
ends with a hash of the whole.

Semantics:

- Up-front validation: grid and fixed parameter names must be parameters of the notebook
  (``papermill.inspect_notebook``); nothing runs otherwise (:class:`SweepError`).
- Combinations run in ``jobs`` worker processes (forkserver or spawn, never plain fork, so
  calling from a Jupyter kernel is safe). With GPUs present, each job slot owns one device, round-robin, via
  ``CUDA_VISIBLE_DEVICES``, which the kernel inherits.
- Failure isolation: a failing combination (notebook exception, timeout, dead kernel, missing
  ``results.json``) is recorded with its error; the others go on.
- Resume: a combination whose ``done`` marker and ``results.json`` exist, and whose marker
  records the same parameter values (``output_dir`` aside), is skipped. Failed, interrupted
  or re-parameterised combinations run again. Edits to the notebook itself do not invalidate
  finished runs: that is what lets one fix a bug and re-run only what failed.
- ``timeout`` is a wall-clock limit in seconds per combination, counted from its first cell
  (kernel start-up has papermill's own 60 s limit).
- The notebook runs with its own folder as working directory, as in JupyterLab, so its
  relative paths mean the same in both; ``output_dir`` is passed as an absolute path.
"""
from __future__ import annotations

import argparse
import ast
import concurrent.futures as cf
import hashlib
import html
import itertools
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

if TYPE_CHECKING:  # pandas/plotly stay out of the worker processes and of `xmcviz --help`
    import pandas as pd
    import plotly.graph_objects as go

RESULTS_FILE = "results.json"
NOTEBOOK_FILE = "notebook.ipynb"
DONE_FILE = "done"
KERNEL_LOG = "kernel.log"
OUTPUT_DIR_PARAM = "output_dir"
MAX_SLUG_LEN = 100

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
# Table columns that are not notebook results; a result key with one of these names (or a grid
# parameter's name) is prefixed with "result." in the table.
BASE_COLUMNS = ("status", "error", "duration_s", "dir")

_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]+")
_P_AT_5 = re.compile(r"(?:^|[^A-Za-z0-9])P@5$")
_METRIC_LIKE = re.compile(r"(?:P|nDCG|PSP|PSnDCG)@\d+|acc|precision|recall|f1|auc|score|loss",
                          re.IGNORECASE)


class SweepError(ValueError):
    """Bad sweep arguments, detected before anything runs (the CLI exits with status 2)."""


# --------------------------------------------------------------------------- notebook parameters

@dataclass(frozen=True)
class NotebookParameter:
    """One assignment of a notebook's ``parameters`` cell.

    ``kind`` is the type values are parsed as: ``int``, ``float``, ``bool``, ``str`` (from the
    annotation if any, else from the default's literal), or ``any`` (``None`` default, lists,
    expressions: values go through ``ast.literal_eval`` with the plain string as fallback).
    """

    name: str
    kind: str
    default: str


def _kind_of(type_name: str, default: str) -> str:
    if type_name in ("int", "float", "bool", "str"):
        return type_name
    try:
        value = ast.literal_eval(default)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return "any"
    # bool before int: bool is a subclass of int.
    for kind, cls in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if isinstance(value, cls):
            return kind
    return "any"


def notebook_parameters(notebook: str | Path) -> dict[str, NotebookParameter]:
    """The parameters declared in ``notebook``'s ``parameters`` cell, by name.

    Raises :class:`SweepError` when the notebook is missing, has no ``parameters`` cell, or
    declares no ``output_dir`` (the sweep needs it to collect results).
    """
    path = Path(notebook)
    if not path.is_file():
        raise SweepError(f"notebook {str(path)!r} does not exist")
    import papermill as pm

    try:
        info = pm.inspect_notebook(str(path))
    except ValueError as e:
        if "kernel name" in str(e):  # papermill needs metadata.kernelspec to pick a translator
            raise SweepError(f"notebook {str(path)!r} names no kernel (metadata.kernelspec): "
                             "open it in JupyterLab, select a kernel and save") from None
        raise SweepError(f"cannot read notebook {str(path)!r}: {type(e).__name__}: {e}") from None
    except Exception as e:  # unreadable JSON, not a notebook, ...
        raise SweepError(f"cannot read notebook {str(path)!r}: {type(e).__name__}: {e}") from None
    if not info:
        raise SweepError(f"notebook {str(path)!r} has no cell tagged 'parameters' "
                         "(or papermill found no assignments in it)")
    params = {name: NotebookParameter(name, _kind_of(p["inferred_type_name"], p["default"]),
                                      p["default"])
              for name, p in info.items()}
    if OUTPUT_DIR_PARAM not in params:
        raise SweepError(f"notebook {str(path)!r} has no '{OUTPUT_DIR_PARAM}' parameter; "
                         f"its parameters are {sorted(params)}")
    return params


def parse_value(param: NotebookParameter, text: str) -> Any:
    """Parse a command-line string as a value of ``param``'s kind (see :class:`NotebookParameter`).

    ``None`` is accepted for every kind but ``str``. Raises :class:`SweepError` naming the value.
    """
    s = text.strip()
    if param.kind != "str" and s == "None":
        return None
    bad = SweepError(f"{param.name}={text!r} is not a valid {param.kind} "
                     f"(the notebook's default is {param.name} = {param.default})")
    if param.kind == "int":
        try:
            return int(s)
        except ValueError:
            raise bad from None
    if param.kind == "float":
        try:
            return float(s)
        except ValueError:
            raise bad from None
    if param.kind == "bool":
        low = s.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise bad
    if param.kind == "str":
        return text
    try:
        return ast.literal_eval(s)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text  # a bare word such as mips-s


def _check_json_value(param: NotebookParameter, value: Any) -> Any:
    """Type-check a non-string element of a JSON list given on the command line."""
    if value is None or param.kind == "any":
        return value
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "bool": isinstance(value, bool),
          "str": False}[param.kind]
    if not ok:
        raise SweepError(f"{param.name}={json.dumps(value)} is not a valid {param.kind} "
                         f"(the notebook's default is {param.name} = {param.default})")
    return float(value) if param.kind == "float" else value


def _unknown_name_error(name: str, params: Mapping[str, NotebookParameter], what: str) -> SweepError:
    allowed = sorted(n for n in params if n != OUTPUT_DIR_PARAM)
    return SweepError(f"unknown {what} {name!r}: the notebook's parameters cell allows "
                      f"{allowed} (papermill skips assignments it cannot parse, e.g. lines "
                      "holding two '=' signs, comments included)")


def _split_assignment(text: str, what: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise SweepError(f"{what} {text!r} must look like NAME=VALUE")
    return name, value


def parse_grid_args(items: Iterable[str],
                    params: Mapping[str, NotebookParameter]) -> dict[str, list[Any]]:
    """Parse ``--grid`` strings into a grid.

    ``name=v1,v2,...`` splits on commas (whitespace around values is stripped); a value holding a
    comma is given with JSON list syntax, ``name=["a,b", "c"]``, whose string elements are parsed
    like the comma form and whose other elements are type-checked against the default.
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, raw = _split_assignment(item, "--grid")
        if name not in params or name == OUTPUT_DIR_PARAM:
            raise _unknown_name_error(name, params, "grid name")
        if name in grid:
            raise SweepError(f"grid name {name!r} is given twice")
        p = params[name]
        if raw.lstrip().startswith("["):
            try:
                elements = json.loads(raw)
            except json.JSONDecodeError as e:
                raise SweepError(f"--grid {item!r}: not a JSON list ({e})") from None
            if not isinstance(elements, list):
                raise SweepError(f"--grid {item!r}: not a JSON list")
            values = [parse_value(p, e) if isinstance(e, str) else _check_json_value(p, e)
                      for e in elements]
        else:
            texts = raw.split(",")
            if any(not t.strip() for t in texts):
                raise SweepError(f"--grid {item!r} has an empty value")
            values = [parse_value(p, t) for t in texts]
        if not values:
            raise SweepError(f"--grid {item!r} has no values")
        grid[name] = values
    return grid


def parse_param_args(items: Iterable[str],
                     params: Mapping[str, NotebookParameter]) -> dict[str, Any]:
    """Parse ``--param name=value`` strings (one value each; commas are part of the value)."""
    fixed: dict[str, Any] = {}
    for item in items:
        name, raw = _split_assignment(item, "--param")
        if name not in params or name == OUTPUT_DIR_PARAM:
            raise _unknown_name_error(name, params, "parameter")
        if name in fixed:
            raise SweepError(f"parameter {name!r} is given twice")
        fixed[name] = parse_value(params[name], raw)
    return fixed


# --------------------------------------------------------------------------- slugs and markers

def _short_hash(text: str, n: int) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def slug_for(combo: Mapping[str, Any]) -> str:
    """Folder name of one combination: stable, readable and filesystem-safe."""
    if not combo:
        return "default"
    parts = []
    for name, value in combo.items():
        text = _value_text(value)
        safe = _UNSAFE.sub("-", text).strip("-.")  # no leading "." (hidden folders, "..")
        if safe != text or not safe:
            # Lossy: tag with the exact value's hash so "a b" and "a/b" get different folders.
            safe = f"{safe}-{_short_hash(text, 6)}" if safe else _short_hash(text, 6)
        parts.append(f"{name}={safe}")
    slug = "__".join(parts)
    if len(slug) > MAX_SLUG_LEN:
        slug = f"{slug[:MAX_SLUG_LEN - 12].rstrip('-_.=')}__{_short_hash(slug, 10)}"
    return slug


def _canonical(params: Mapping[str, Any]) -> Any:
    """Parameter values as they round-trip through JSON, for comparing with a marker."""
    return json.loads(json.dumps({k: v for k, v in params.items() if k != OUTPUT_DIR_PARAM},
                                 sort_keys=True, default=repr))


def _write_atomic(path: Path, text: str) -> None:
    # tmp + rename: a reader (or a resume after a crash) sees the old file or the whole new one.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_done(run_dir: str | Path, params: Mapping[str, Any]) -> dict | None:
    """The ``done`` marker of a finished combination run with ``params``, else None."""
    run_dir = Path(run_dir)
    if not (run_dir / RESULTS_FILE).is_file():
        return None
    try:
        marker = json.loads((run_dir / DONE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("params") != _canonical(params):
        return None
    return marker


# --------------------------------------------------------------------------- GPUs

def _parse_nvidia_smi(text: str) -> list[str]:
    """Device ids from ``nvidia-smi -L``: GPU indices, or MIG UUIDs when MIG slices exist."""
    mig = re.findall(r"^\s+MIG .*\(UUID:\s*(MIG-[^)\s]+)\)", text, re.MULTILINE)
    if mig:
        return mig
    return [str(i) for i, _ in enumerate(re.findall(r"^GPU \d+:", text, re.MULTILINE))]


def detect_gpus() -> list[str]:
    """Ids usable in ``CUDA_VISIBLE_DEVICES``, found without initialising CUDA here.

    An existing ``CUDA_VISIBLE_DEVICES`` is honoured (its entries are shared out); otherwise
    ``nvidia-smi -L``; otherwise ``torch.cuda.device_count()`` only if torch is already imported.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d.strip() for d in visible.split(",") if d.strip()]
        return [] if ids in ([], ["-1"]) else ids
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=15)
            if out.returncode == 0:
                return _parse_nvidia_smi(out.stdout)
        except (OSError, subprocess.SubprocessError):
            pass
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            return [str(i) for i in range(torch.cuda.device_count())]
        except Exception:
            return []
    return []


# --------------------------------------------------------------------------- worker

@dataclass(frozen=True)
class _Task:
    slug: str
    notebook: str
    run_dir: str
    parameters: dict
    kernel_name: str | None
    timeout: float | None
    device: str | None


class _Deadline:
    """nbclient ``timeout_func``: each cell gets the time left until one overall deadline."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline: float | None = None

    def __call__(self, cell: Any) -> float:
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + self.seconds
        return max(self.deadline - now, 0.01)  # 0 would mean "no timeout" to nbclient


def _engine_kwargs(timeout: float | None) -> dict[str, Any]:
    """Extra papermill engine arguments, limited to what the installed nbclient accepts."""
    from papermill.clientwrap import PapermillNotebookClient

    traits = set(PapermillNotebookClient.class_trait_names())
    kw: dict[str, Any] = {}
    if "store_widget_state" in traits:
        # Headless widget state is stale and carries a large JS bundle (ECOSYSTEM.md).
        kw["store_widget_state"] = False
    if timeout:
        if "timeout_func" in traits:
            kw["timeout_func"] = _Deadline(timeout)
        else:  # per-cell limit: the closest papermill offers
            kw["execution_timeout"] = timeout
    return kw


def _check_results(path: Path) -> str | None:
    if not path.is_file():
        return f"the notebook finished but wrote no {RESULTS_FILE} in output_dir"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        return f"{RESULTS_FILE} is not valid JSON: {e}"
    if not isinstance(data, dict):
        return f"{RESULTS_FILE} must hold a JSON object, got {type(data).__name__}"
    return None


def _mark_timeout(path: Path, message: str) -> None:
    """Show a timeout in the saved notebook, which papermill leaves looking completed."""
    import nbformat

    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:
        return  # nothing saved (timed out before the first cell): nothing to mark
    started = [i for i, c in enumerate(nb.cells)
               if c.get("metadata", {}).get("papermill", {}).get("start_time")]
    if not started:
        return
    last = started[-1]  # the cell running when time ran out
    cell = nb.cells[last]
    if cell.cell_type == "code":
        cell.outputs.append(nbformat.v4.new_output(
            "error", ename="TimeoutError", evalue=message, traceback=[f"TimeoutError: {message}"]))
    cell.metadata.papermill.update(status="failed", exception=True)
    for c in nb.cells[last + 1:]:
        if "papermill" in c.get("metadata", {}):
            c.metadata.papermill.update(status="pending", start_time=None, end_time=None,
                                        duration=None)
    nbformat.write(nb, path)


def _execute(task: _Task) -> dict[str, Any]:
    """Run one combination (in a worker process); never raises for notebook failures."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    run_dir = Path(task.run_dir)
    if task.device is not None:
        # The kernel is started by this process and inherits its environment.
        os.environ["CUDA_VISIBLE_DEVICES"] = task.device
    error: str | None = None
    timed_out = ""
    start = time.monotonic()
    # The kernel writes to the fds it inherits: send them to a per-run log instead of the terminal.
    saved = [os.dup(1), os.dup(2)]
    sys.stdout.flush()
    sys.stderr.flush()
    log = os.open(run_dir / KERNEL_LOG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.dup2(log, 1)
        os.dup2(log, 2)
        pm.execute_notebook(task.notebook, str(run_dir / NOTEBOOK_FILE),
                            parameters=task.parameters, kernel_name=task.kernel_name,
                            progress_bar=False, log_output=False,
                            cwd=str(Path(task.notebook).parent),
                            **_engine_kwargs(task.timeout))
    except PapermillExecutionError as e:
        error = f"{e.ename}: {e.evalue}"
    except TimeoutError:  # nbclient's CellTimeoutError
        timed_out = f"the run exceeded its timeout of {task.timeout:g} s"
        error = f"TimeoutError: {timed_out}"
    except Exception as e:  # dead kernel, missing kernel spec, ...
        error = f"{type(e).__name__}: {e}"
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log):
            os.close(fd)
    duration = time.monotonic() - start
    if timed_out:
        _mark_timeout(run_dir / NOTEBOOK_FILE, timed_out)
    if error is None:
        error = _check_results(run_dir / RESULTS_FILE)
    if error is None:
        _write_atomic(run_dir / DONE_FILE, json.dumps({
            "params": _canonical(task.parameters), "duration_s": duration,
            "device": task.device, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    return {"status": OK if error is None else FAILED, "error": error, "duration_s": duration}


# --------------------------------------------------------------------------- results

@dataclass
class RunRecord:
    """Outcome of one combination."""

    slug: str
    params: dict[str, Any]  # the grid values of this combination
    status: str  # "ok", "failed", or "skipped" (finished by an earlier run)
    error: str | None
    duration_s: float | None
    dir: Path
    device: str | None = None

    @property
    def notebook(self) -> Path:
        """The executed notebook (kept for failed runs)."""
        return self.dir / NOTEBOOK_FILE


@dataclass
class SweepResult:
    """What :func:`run_sweep` did: ``table`` has one row per combination, in grid order."""

    out: Path
    records: list[RunRecord]
    table: "pd.DataFrame"
    metric: str | None = None  # the column plotted in summary.html
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> list[RunRecord]:
        """The combinations that failed in this call."""
        return [r for r in self.records if r.status == FAILED]

    @property
    def ok(self) -> bool:
        """True when every combination succeeded now or earlier."""
        return not self.failed


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalar entries of nested dicts as ``a.b`` keys; lists (figure data) are left out."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[name] = value
    return flat


def _cell(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


def _rows(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        row = {name: _cell(v) for name, v in r.params.items()}
        row.update(status=r.status, error=r.error, duration_s=r.duration_s, dir=r.slug)
        if r.status != FAILED:
            try:
                results = json.loads((r.dir / RESULTS_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                results = {}
            for key, value in _flatten(results).items():
                row[f"result.{key}" if key in row else key] = value
        rows.append(row)
    return rows


def json_safe(v: Any) -> Any:
    """Plain JSON types: numpy scalars to Python, NaN/inf to None, tuples to lists.

    Results files (``results.json``, written by :class:`xmcviz.notebook.experiment.Experiment`) and
    the results table go through it, so both hold strict JSON."""
    import numpy as np  # here: `xmcviz sweep` starts without numpy

    if isinstance(v, Mapping):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, np.ndarray):
        return [json_safe(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def pick_metric(table: "pd.DataFrame", exclude: Iterable[str] = ()) -> str | None:
    """The result column to plot: one named like ``P@5`` (``final.P@5``, ``final_P@5``) first,
    then the first metric-like name (P@k, nDCG@k, accuracy, score, loss, ...), then the first
    numeric column."""
    import pandas as pd

    skip = set(exclude) | set(BASE_COLUMNS)
    numeric = [c for c in table.columns if c not in skip
               and pd.api.types.is_numeric_dtype(table[c])
               and not pd.api.types.is_bool_dtype(table[c]) and table[c].notna().any()]
    for test in (_P_AT_5.search, _METRIC_LIKE.search):
        for c in numeric:
            if test(str(c)):
                return c
    return numeric[0] if numeric else None


def summary_figure(table: "pd.DataFrame", grid_names: Sequence[str],
                   metric: str | None = None) -> "go.Figure | None":
    """``metric`` against the first grid parameter, one trace per value of the others.

    Lines over a numeric first parameter, grouped bars otherwise. None when there is nothing
    numeric to plot (e.g. every run failed).
    """
    import pandas as pd
    import plotly.graph_objects as go

    metric = metric or pick_metric(table, grid_names)
    if metric is None:
        return None
    done = table[table["status"] != FAILED]
    done = done[done[metric].notna()]
    x_name = grid_names[0] if grid_names else None
    xs = done[x_name] if x_name else pd.Series(["default"] * len(done), index=done.index)
    numeric_x = x_name is not None and pd.api.types.is_numeric_dtype(xs) \
        and not pd.api.types.is_bool_dtype(xs)
    others = list(grid_names[1:])
    groups = (done.groupby([done[n].astype(str) for n in others], sort=False) if others
              else [((), done)])
    fig = go.Figure()
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{n}={v}" for n, v in zip(others, key)) or metric
        px = part[x_name] if x_name else pd.Series(["default"] * len(part), index=part.index)
        if numeric_x:
            order = px.argsort(kind="stable")
            fig.add_trace(go.Scatter(x=px.iloc[order].tolist(), y=part[metric].iloc[order].tolist(),
                                     mode="lines+markers", name=label))
        else:
            fig.add_trace(go.Bar(x=px.astype(str).tolist(), y=part[metric].tolist(), name=label))
    n_failed = int((table["status"] == FAILED).sum())
    title = f"{metric} by {x_name or 'run'}" + (f" ({n_failed} failed, not shown)" if n_failed else "")
    fig.update_layout(title=title, xaxis_title=x_name or "", yaxis_title=metric,
                      barmode="group", showlegend=bool(others), template="plotly_white")
    if not numeric_x:
        fig.update_xaxes(type="category")
    return fig


def write_outputs(out: Path, records: Sequence[RunRecord],
                  grid_names: Sequence[str]) -> tuple["pd.DataFrame", str | None, dict[str, Path]]:
    """Write ``results.jsonl``, ``results.csv`` and ``summary.html`` under ``out``."""
    import pandas as pd

    rows = _rows(records)
    # Nullable dtypes keep integer results integers next to the missing values of failed runs.
    table = pd.DataFrame(rows).convert_dtypes()
    files = {"jsonl": out / "results.jsonl", "csv": out / "results.csv",
             "summary": out / "summary.html"}
    _write_atomic(files["jsonl"], "".join(
        json.dumps({k: json_safe(v) for k, v in row.items()}) + "\n" for row in rows))
    _write_atomic(files["csv"], table.to_csv(index=False))
    metric = pick_metric(table, grid_names) if len(table) else None
    fig = summary_figure(table, grid_names, metric) if metric else None
    # include_plotlyjs=True: the page embeds plotly.js (~5 MB) and renders offline, e.g. when
    # copied off a cluster node without internet access.
    plot = (fig.to_html(full_html=False, include_plotlyjs=True) if fig is not None
            else "<p>No numeric result to plot.</p>")
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>sweep {html.escape(out.name)}</title></head><body>\n"
            f"<h2>Sweep {html.escape(str(out))}</h2>\n{plot}\n"
            f"{table.to_html(index=False, na_rep='', border=0)}\n</body></html>\n")
    _write_atomic(files["summary"], page)
    return table, metric, files


# --------------------------------------------------------------------------- sweep

def _validate(grid: Mapping[str, Sequence[Any]], params: Mapping[str, Any],
              declared: Mapping[str, NotebookParameter]) -> None:
    for name, values in grid.items():
        if name not in declared or name == OUTPUT_DIR_PARAM:
            raise _unknown_name_error(name, declared, "grid name")
        if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
            raise SweepError(f"grid[{name!r}] must be a list of values, got {values!r}")
        if len(values) == 0:
            raise SweepError(f"grid[{name!r}] has no values")
    for name in params:
        if name not in declared or name == OUTPUT_DIR_PARAM:
            raise _unknown_name_error(name, declared, "parameter")
        if name in grid:
            raise SweepError(f"{name!r} is both a grid name and a fixed parameter")


def _progress_line(i: int, n: int, rec: RunRecord) -> str:
    width = len(str(n))
    line = f"[{i:>{width}}/{n}] {rec.status:<7} {rec.slug}"
    if rec.status == SKIPPED:
        return line + "  (finished earlier)"
    if rec.duration_s is not None:
        line += f"  {rec.duration_s:.1f} s"
    if rec.error:
        first = rec.error.strip().splitlines()[0] if rec.error.strip() else rec.error
        line += f"  {first[:200]}"
    return line


def run_sweep(notebook: str | Path, grid: Mapping[str, Sequence[Any]],
              params: Mapping[str, Any] | None = None, out: str | Path | None = None,
              jobs: int = 1, kernel_name: str | None = None, timeout: float | None = None,
              progress: bool = True, *, devices: Sequence[str] | None = None,
              on_record: Callable[[RunRecord], None] | None = None) -> SweepResult:
    """Run ``notebook`` with papermill once per combination of ``grid`` (cross product).

    Args:
        notebook: path to a notebook with a ``parameters`` cell declaring ``output_dir``.
        grid: parameter name -> list of values; values are passed as given (see
            :func:`parse_grid_args` for parsing strings).
        params: fixed values for every combination.
        out: sweep folder (default ``runs/sweeps/<notebook stem>``).
        jobs: combinations run at once, each in its own worker process and kernel.
        kernel_name: kernel to use (default: the notebook's kernelspec).
        timeout: wall-clock seconds allowed per combination (None: unlimited).
        progress: print one line per combination as it finishes.
        devices: ``CUDA_VISIBLE_DEVICES`` ids shared out to job slots round-robin; None detects
            them (:func:`detect_gpus`); ``[]`` leaves the variable alone.
        on_record: called with each :class:`RunRecord` as it is known (skipped ones first).

    Returns:
        :class:`SweepResult`. Failed combinations do not raise; see ``.failed`` / ``.ok``.

    Raises:
        SweepError: before anything runs, for unknown names, empty value lists, a bad ``jobs``
            or ``timeout``, or a notebook that is missing or lacks ``output_dir``.
    """
    nb_path = Path(notebook).resolve()
    declared = notebook_parameters(nb_path)
    params = dict(params or {})
    # Any iterable of values (tuple, range, numpy array) becomes a list; a bare string is refused.
    grid = {name: values if isinstance(values, (str, bytes, Mapping)) or
            not isinstance(values, Iterable) else list(values) for name, values in grid.items()}
    _validate(grid, params, declared)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise SweepError(f"jobs={jobs!r} is out of range: allowed >= 1")
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise SweepError(f"timeout={timeout!r} is out of range: allowed > 0 seconds or None")

    names = list(grid)
    combos = [dict(zip(names, values)) for values in itertools.product(*grid.values())]
    slugs = [slug_for(c) for c in combos]
    seen: dict[str, dict] = {}
    for slug, combo in zip(slugs, combos):
        if slug in seen:
            raise SweepError(f"combinations {seen[slug]} and {combo} map to the same folder "
                             f"{slug!r} (duplicate grid values?)")
        seen[slug] = combo

    out_dir = Path(out) if out is not None else Path("runs") / "sweeps" / nb_path.stem
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(combos)
    records: dict[str, RunRecord] = {}
    finished_count = 0

    def report(rec: RunRecord) -> None:
        nonlocal finished_count
        finished_count += 1
        records[rec.slug] = rec
        if progress:
            print(_progress_line(finished_count, n, rec), flush=True)
        if on_record is not None:
            on_record(rec)

    pending: deque[_Task] = deque()
    for slug, combo in zip(slugs, combos):
        run_dir = out_dir / slug
        full = {**params, **combo, OUTPUT_DIR_PARAM: str(run_dir)}
        marker = read_done(run_dir, full)
        if marker is not None:
            report(RunRecord(slug, combo, SKIPPED, None, marker.get("duration_s"), run_dir,
                             marker.get("device")))
        else:
            pending.append(_Task(slug, str(nb_path), str(run_dir), full, kernel_name, timeout,
                                 None))

    if pending:
        _run_pending(pending, min(jobs, len(pending)),
                     list(detect_gpus() if devices is None else devices),
                     {s: c for s, c in zip(slugs, combos)}, report)

    ordered = [records[s] for s in slugs]
    table, metric, files = write_outputs(out_dir, ordered, names)
    return SweepResult(out_dir, ordered, table, metric, files)


def _prepare(task: _Task) -> None:
    run_dir = Path(task.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Stale files must not make an unfinished re-run look finished.
    for name in (DONE_FILE, RESULTS_FILE):
        (run_dir / name).unlink(missing_ok=True)


def _mp_context() -> multiprocessing.context.BaseContext:
    """Worker start method: never plain fork, as the caller may be a threaded Jupyter kernel.

    forkserver (Linux, macOS) forks workers from a clean server process that has papermill
    imported once (~1 s, for the whole Python session); spawn elsewhere.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        # Process-wide setting; it only takes effect if the server is not running yet.
        ctx.set_forkserver_preload(["papermill"])
        return ctx
    return multiprocessing.get_context("spawn")


def _run_pending(pending: deque[_Task], workers: int, devices: list[str],
                 combos: Mapping[str, dict], report: Callable[[RunRecord], None]) -> None:
    """Keep ``workers`` tasks in flight; each job slot keeps one device (round-robin)."""
    from concurrent.futures.process import BrokenProcessPool

    ctx = _mp_context()
    free_slots = list(range(workers))
    running: dict[cf.Future, tuple[int, _Task, float]] = {}
    pool = cf.ProcessPoolExecutor(workers, mp_context=ctx)
    broken = False
    try:
        while pending or running:
            if broken and not running:
                # A worker process died: its pool is unusable; the remaining tasks get a new one.
                pool.shutdown(wait=False)
                pool = cf.ProcessPoolExecutor(workers, mp_context=ctx)
                broken = False
            while pending and free_slots and not broken:
                slot = free_slots.pop(0)
                task = pending.popleft()
                device = devices[slot % len(devices)] if devices else None
                task = replace(task, device=device)
                _prepare(task)
                running[pool.submit(_execute, task)] = (slot, task, time.monotonic())
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                slot, task, submitted = running.pop(fut)
                free_slots.append(slot)
                try:
                    res = fut.result()
                except BrokenProcessPool:
                    broken = True
                    res = {"status": FAILED, "duration_s": time.monotonic() - submitted,
                           "error": "WorkerDied: a sweep worker process was killed while "
                                    f"this combination ran (out of memory?); see {KERNEL_LOG}"}
                except Exception as e:  # e.g. a pickling error: still only this combination
                    res = {"status": FAILED, "duration_s": time.monotonic() - submitted,
                           "error": f"{type(e).__name__}: {e}"}
                report(RunRecord(task.slug, combos[task.slug], res["status"], res["error"],
                                 res["duration_s"], Path(task.run_dir), task.device))
    except BaseException:
        # Interrupted alone (e.g. a Jupyter kernel interrupt): pass SIGINT on so that nbclient in
        # each worker shuts its kernel down instead of finishing a long notebook.
        processes = dict(getattr(pool, "_processes", None) or {})  # private, hence the guard
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes.values():
            try:
                os.kill(proc.pid, signal.SIGINT)
            except (OSError, AttributeError, TypeError):
                pass
        raise
    pool.shutdown(wait=True)


# --------------------------------------------------------------------------- command line

def add_sweep_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``xmcviz sweep`` arguments to ``parser`` (a subcommand parser)."""
    parser.description = ("Run a notebook with papermill over the cross product of --grid values; "
                          "re-running the same command skips finished combinations.")
    parser.add_argument("notebook", help="notebook with a 'parameters' cell declaring output_dir")
    parser.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                        help="values of one parameter, comma-separated; a JSON list "
                             "(NAME='[\"a,b\", \"c\"]') for values holding commas. Repeatable.")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="fixed value for every combination (commas kept). Repeatable.")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="sweep folder: DIR/<combination>/, results.csv, summary.html")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="combinations run at once (one GPU each, round-robin, if present)")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="wall-clock seconds allowed per combination")
    parser.add_argument("--kernel", dest="kernel_name", default=None, metavar="NAME",
                        help="Jupyter kernel (default: the notebook's)")
    return parser


def run_sweep_cli(args: argparse.Namespace) -> int:
    """Run ``xmcviz sweep``: 0 all succeeded, 1 some failed, 2 bad arguments."""
    try:
        declared = notebook_parameters(args.notebook)
        grid = parse_grid_args(args.grid, declared)
        params = parse_param_args(args.param, declared)
        result = run_sweep(args.notebook, grid, params, out=args.out, jobs=args.jobs,
                           kernel_name=args.kernel_name, timeout=args.timeout, progress=True)
    except SweepError as e:
        print(f"xmcviz sweep: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xmcviz sweep: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    counts = {s: sum(r.status == s for r in result.records) for s in (OK, SKIPPED, FAILED)}
    print(f"{len(result.records)} combinations: {counts[OK]} ok, {counts[SKIPPED]} skipped "
          f"(finished earlier), {counts[FAILED]} failed")
    print(f"results: {result.files['csv']}  summary: {result.files['summary']}")
    if result.failed:
        print("failed:")
        for r in result.failed:
            print(f"  {r.slug}: {r.error}\n    notebook: {r.notebook}")
    return 0 if result.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m xmcviz.sweep ...``: the same as ``xmcviz sweep ...``."""
    parser = add_sweep_arguments(argparse.ArgumentParser(prog="xmcviz sweep"))
    return run_sweep_cli(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
