"""One grid cell, executed on a Dask worker: papermill into a local temporary folder.

Nothing here assumes a filesystem shared with the client: the notebook travels as bytes, runs
in a temporary folder of the worker, and the executed notebook, ``results.json`` and the
kernel's log come back as bytes in a :class:`CellOutput` (the client writes them). Notebook
failures, timeouts and dead kernels are results, not exceptions.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .grid import KERNEL_LOG, NOTEBOOK_FILE, OUTPUT_DIR_PARAM

OK, FAILED, SKIPPED = "ok", "failed", "skipped"


@dataclass(frozen=True)
class CellTask:
    """What a worker needs to run one cell (picklable, no client paths written to)."""

    slug: str
    notebook: bytes  # the source notebook
    notebook_dir: str  # the client's folder of the notebook: the kernel's cwd where it exists
    parameters: dict  # without output_dir, which the worker sets to its temporary folder
    kernel_name: str | None
    timeout: float | None
    results_file: str  # what the notebook writes in output_dir (xmcviz.core.rundir.RESULTS_FILE)
    devices: tuple[str, ...] = ()  # local cluster: CUDA_VISIBLE_DEVICES round-robin by worker


@dataclass
class CellOutput:
    """What a worker sends back for one cell."""

    status: str  # OK or FAILED
    error: str | None
    duration_s: float
    notebook: bytes | None  # the executed notebook (also for failed runs, when saved)
    results: bytes | None  # results.json as written by the notebook
    log: bytes  # the kernel's own stdout/stderr
    worker: str | None = None
    device: str | None = None


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
        # Headless widget state is stale and carries a large JS bundle.
        kw["store_widget_state"] = False
    if timeout:
        if "timeout_func" in traits:
            kw["timeout_func"] = _Deadline(timeout)
        else:  # per-cell limit: the closest papermill offers
            kw["execution_timeout"] = timeout
    return kw


def check_results(data: bytes | None, name: str) -> str | None:
    """Why the results file ``name`` (``data`` None: not written) is unusable, or None when it
    holds a JSON object."""
    if data is None:
        return f"the notebook finished but wrote no {name} in output_dir"
    try:
        obj = json.loads(data)
    except ValueError as e:
        return f"{name} is not valid JSON: {e}"
    if not isinstance(obj, dict):
        return f"{name} must hold a JSON object, got {type(obj).__name__}"
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


def _this_worker() -> Any:
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):  # called outside a Dask worker (e.g. directly)
        return None


def _device_for(worker: Any, devices: Sequence[str]) -> str | None:
    """Round-robin device of a local worker: LocalCluster names its workers 0, 1, ..."""
    if not devices or worker is None:
        return None
    try:
        return devices[int(worker.name) % len(devices)]
    except (TypeError, ValueError):
        return None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def run_cell(task: CellTask) -> CellOutput:
    """Execute one cell with papermill in a temporary folder and return its files as bytes."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    worker = _this_worker()
    device = _device_for(worker, task.devices)
    if device is not None:
        # The kernel is started by this process and inherits its environment.
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    tmp = Path(tempfile.mkdtemp(prefix="xmcviz-cell-"))
    try:
        source, executed, out_dir = tmp / "input.ipynb", tmp / NOTEBOOK_FILE, tmp / "output"
        source.write_bytes(task.notebook)
        out_dir.mkdir()
        # The notebook's own folder as cwd (as in JupyterLab) where the worker has it.
        cwd = task.notebook_dir if Path(task.notebook_dir).is_dir() else str(tmp)
        error: str | None = None
        timed_out = ""
        start = time.monotonic()
        # The kernel writes to the fds it inherits: send them to the cell's log. The worker
        # is single-threaded, so no other cell shares these fds meanwhile.
        saved = [os.dup(1), os.dup(2)]
        sys.stdout.flush()
        sys.stderr.flush()
        log = os.open(tmp / KERNEL_LOG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.dup2(log, 1)
            os.dup2(log, 2)
            pm.execute_notebook(str(source), str(executed),
                                parameters={**task.parameters, OUTPUT_DIR_PARAM: str(out_dir)},
                                kernel_name=task.kernel_name, progress_bar=False,
                                log_output=False, cwd=cwd, **_engine_kwargs(task.timeout))
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
            _mark_timeout(executed, timed_out)
        results = _read(out_dir / task.results_file)
        if error is None:
            error = check_results(results, task.results_file)
        return CellOutput(OK if error is None else FAILED, error, duration, _read(executed),
                          results, _read(tmp / KERNEL_LOG) or b"",
                          str(worker.address) if worker is not None else None,
                          device if device is not None else os.environ.get("CUDA_VISIBLE_DEVICES"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def missing_paths(paths: Sequence[str]) -> list[str]:
    """Those of ``paths`` that do not exist here (run on each worker before a sweep)."""
    return [p for p in paths if not os.path.exists(os.path.expanduser(p))]
