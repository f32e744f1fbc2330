"""Running a sweep on Dask distributed: a local cluster, an existing scheduler, or a given client.

:func:`run_sweep` validates everything up front, skips cells finished earlier (resume), checks
dataset paths on every worker, submits one task per remaining cell and writes each cell's files
under ``OUT/<slug>/`` as its result arrives (atomically; the ``done`` marker last).

- ``jobs=N`` (no client, no scheduler) starts a ``LocalCluster`` of N single-threaded worker
  processes; with GPUs present each worker owns one device, round-robin, via
  ``CUDA_VISIBLE_DEVICES``, and advertises a ``GPU`` resource.
- ``scheduler=ADDRESS`` (or ``DASK_SCHEDULER_ADDRESS``) or ``client=`` submits to an existing
  cluster. Cells ask for ``GPU=1`` when the workers advertise a ``GPU`` resource.
- A worker that dies while its cell runs (killed, out of memory) makes Dask report the task as
  ``KilledWorker``; the cell is then submitted again, up to ``retries`` times, and recorded as
  failed with the reason after that. The local cluster's scheduler is told not to retry on its
  own (``distributed.scheduler.allowed-failures = 0``) so that ``retries`` counts every death.
- Interrupting (Ctrl-C) cancels the cells not finished yet; finished cells stay finished, and
  the same call resumes. A local cluster is shut down with its kernels; on an existing cluster,
  cells already running finish there and their results are dropped.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ..core.rundir import RESULTS_FILE, atomic_write_bytes
from ..validation import check_float, check_int
from .cell import FAILED, OK, SKIPPED, CellOutput, CellTask, missing_paths, run_cell
from .collect import DEFAULT_METRIC, RunRecord, SweepResult, write_outputs
from .gpus import detect_gpus
from .grid import (DONE_FILE, KERNEL_LOG, NOTEBOOK_FILE, SweepError, canonical_params,
                   combinations, notebook_parameters, read_done, validate_grid)

if TYPE_CHECKING:
    from distributed import Client

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
CONNECT_TIMEOUT_S = 30.0  # reaching a scheduler, and waiting for its first worker


def _checked(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except ValueError as e:
        raise SweepError(str(e)) from None


def dataset_paths(params: Mapping[str, Any], grid: Mapping[str, Sequence[Any]],
                  notebook_dir: Path) -> list[str]:
    """The dataset paths a sweep needs: values of ``data`` / ``data_*`` parameters that look like
    paths (hold a ``/`` or start with ``~`` or ``.``); relative ones are taken from the notebook's
    folder, which is the kernel's working directory. Specs such as ``synthetic:small`` are not
    paths."""
    values = [(n, v) for n, v in params.items()] + [(n, v) for n, vs in grid.items() for v in vs]
    out: list[str] = []
    for name, v in values:
        if not (name == "data" or name.startswith("data_")) or not isinstance(v, str):
            continue
        if "/" in v or os.sep in v or v.startswith(("~", ".")):
            p = os.path.expanduser(v)
            p = p if os.path.isabs(p) else str(notebook_dir / p)
            if p not in out:
                out.append(p)
    return out


def check_paths_on_workers(client: "Client", paths: Sequence[str]) -> None:
    """Raise :class:`SweepError` naming each worker and path it lacks, before any cell runs."""
    if not paths:
        return
    missing = client.run(missing_paths, list(paths))
    lines = [f"  worker {addr}: {p}" for addr, ps in sorted(missing.items()) for p in ps]
    if lines:
        raise SweepError("dataset paths missing on the workers (a sweep assumes no shared "
                         "filesystem: copy the data to every worker, same path):\n"
                         + "\n".join(lines))


def _gpu_resources(client: "Client") -> dict[str, float] | None:
    """``{"GPU": 1}`` when the workers advertise a GPU resource, else None."""
    workers = client.scheduler_info().get("workers", {})
    if any(w.get("resources", {}).get("GPU") for w in workers.values()):
        return {"GPU": 1}
    return None


def _dashboard_line(client: "Client") -> str:
    import importlib.util

    if importlib.util.find_spec("bokeh") is None:
        return "dashboard: unavailable here (pip install 'bokeh>=3.1' for Dask's dashboard)"
    return f"dashboard: {client.dashboard_link}"


def _connect(client: "Client | None", scheduler: str | None, jobs: int, n_cells: int,
             devices: Sequence[str], memory_limit: str | float | None,
             stack: ExitStack) -> tuple["Client", bool]:
    """The client to submit to, and whether it drives a local cluster started here."""
    import dask
    from distributed import Client, LocalCluster

    if client is not None:
        return client, False
    if scheduler:
        try:
            c = stack.enter_context(Client(scheduler, timeout=CONNECT_TIMEOUT_S))
        except (OSError, TimeoutError) as e:
            raise SweepError(f"cannot reach the Dask scheduler at {scheduler!r}: {e}") from None
        return c, False
    # A dead worker is reported at once, so `retries` counts every death; and a worker holds
    # only the cell it runs (saturation 1.0), so its death does not fail cells queued behind.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                          "distributed.scheduler.worker-saturation": 1.0}):
        cluster = stack.enter_context(LocalCluster(
            n_workers=min(jobs, n_cells), threads_per_worker=1, processes=True,
            memory_limit=memory_limit, dashboard_address=":0", host="127.0.0.1",
            resources={"GPU": 1} if devices else None, silence_logs=logging.ERROR))
    return stack.enter_context(Client(cluster)), True


def _scheduler_notes(client: "Client") -> list[str]:
    """Settings of an existing cluster that change what ``retries`` means, said up front."""
    def settings(dask_scheduler) -> tuple[int, float]:
        return dask_scheduler.allowed_failures, dask_scheduler.WORKER_SATURATION

    notes = []
    try:
        allowed, saturation = client.run_on_scheduler(settings)
    except Exception:  # a scheduler of another version: the notes are only advice
        allowed, saturation = 0, 1.0
    if allowed:
        notes.append(f"note: the scheduler retries a cell {allowed} time(s) on its own when its "
                     "worker dies before --retries counts (set "
                     "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0 where it starts)")
    if saturation != 1.0:
        notes.append(f"note: worker-saturation is {saturation}: a worker may hold a queued cell "
                     "that fails with it when it dies (set "
                     "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION=1.0 where it starts)")
    threads = {w.get("nthreads", 1) for w in client.scheduler_info().get("workers", {}).values()}
    if any(t > 1 for t in threads):
        notes.append("note: some workers run several threads; start them with --nthreads 1 "
                     "(each cell is a kernel process) to keep kernel logs apart")
    return notes


def _write_cell(run_dir: Path, res: CellOutput, params: Mapping[str, Any], attempts: int) -> None:
    """Write a cell's files atomically; the ``done`` marker last, and only for a success."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / KERNEL_LOG, res.log)
    if res.notebook is not None:
        atomic_write_bytes(run_dir / NOTEBOOK_FILE, res.notebook)
    if res.results is not None:
        atomic_write_bytes(run_dir / RESULTS_FILE, res.results)
    if res.status == OK:
        atomic_write_bytes(run_dir / DONE_FILE, json.dumps({
            "params": canonical_params(params), "duration_s": res.duration_s,
            "device": res.device, "worker": res.worker, "attempts": attempts,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())


def _killed_error(exc: BaseException, attempts: int) -> str:
    return (f"WorkerDied: the worker running this cell died {attempts} time(s) (killed, out of "
            f"memory?); no retries left. Dask: {exc}")


def _run_on_client(client: "Client", tasks: Sequence[CellTask], retries: int,
                   resources: dict[str, float] | None,
                   done: Callable[[CellTask, CellOutput, int], None]) -> None:
    """Submit ``tasks``, resubmit those whose worker died, call ``done`` as results arrive."""
    from distributed import as_completed
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    def submit(task: CellTask):
        # pure=False and a fresh key: a retry is a new task, not the cached failure.
        return client.submit(run_cell, task, key=f"xmcviz-cell-{task.slug}-{uuid.uuid4().hex}",
                             pure=False, resources=resources)

    futures = {submit(t): (t, 1, time.monotonic()) for t in tasks}
    queue = as_completed(list(futures))
    try:
        for fut in queue:
            task, attempt, started = futures.pop(fut)
            try:
                res = fut.result()
            except KilledWorker as e:
                if attempt <= retries:
                    new = submit(task)
                    futures[new] = (task, attempt + 1, started)
                    queue.add(new)
                    continue
                res = CellOutput(FAILED, _killed_error(e, attempt),
                                 time.monotonic() - started, None, None, b"")
            except (FutureCancelledError, Exception) as e:  # e.g. unpicklable parameters
                res = CellOutput(FAILED, f"{type(e).__name__}: {e}",
                                 time.monotonic() - started, None, None, b"")
            done(task, res, attempt)
    except BaseException:
        # Ctrl-C (or an error writing a result): nothing more starts; finished cells stay.
        client.cancel(list(futures), force=True)
        raise


def _progress_line(i: int, n: int, rec: RunRecord) -> str:
    width = len(str(n))
    line = f"[{i:>{width}}/{n}] {rec.status:<7} {rec.slug}"
    if rec.status == SKIPPED:
        return line + "  (finished earlier)"
    if rec.duration_s is not None:
        line += f"  {rec.duration_s:.1f} s"
    if rec.attempts > 1:
        line += f"  ({rec.attempts} attempts)"
    if rec.error:
        first = rec.error.strip().splitlines()[0] if rec.error.strip() else rec.error
        line += f"  {first[:200]}"
    return line


def _plan(cells: Sequence[tuple[str, dict]], params: Mapping[str, Any], out_dir: Path,
          nb_path: Path, kernel_name: str | None,
          timeout: float | None) -> tuple[list[RunRecord], list[CellTask]]:
    """Cells finished earlier with the same parameters (resume), and the tasks of the others."""
    skipped: list[RunRecord] = []
    pending: list[CellTask] = []
    source = nb_path.read_bytes()
    for slug, combo in cells:
        run_dir = out_dir / slug
        full = {**params, **combo}
        marker = read_done(run_dir, full)
        if marker is not None:
            skipped.append(RunRecord(slug, combo, SKIPPED, None, marker.get("duration_s"),
                                     run_dir, marker.get("device"),
                                     int(marker.get("attempts", 1)), marker.get("worker")))
        else:
            pending.append(CellTask(slug, source, str(nb_path.parent), full, kernel_name,
                                    timeout, RESULTS_FILE))
    return skipped, pending


def _start(client: "Client | None", scheduler: str | None, jobs: int, n_cells: int,
           devices: Sequence[str], memory_limit: str | float | None, stack: ExitStack,
           say: Callable[..., None] | None) -> "Client":
    """A client with at least one worker; says the dashboard link and any cluster notes."""
    dask_client, local = _connect(client, scheduler, jobs, n_cells, devices, memory_limit, stack)
    if say is not None:
        say(_dashboard_line(dask_client), file=sys.stdout)
    if not local:
        try:
            dask_client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
        except TimeoutError:
            raise SweepError(f"no Dask worker joined the scheduler within "
                             f"{CONNECT_TIMEOUT_S:g} s") from None
        for note in _scheduler_notes(dask_client) if say is not None else ():
            say(note, file=sys.stdout)
    return dask_client


def run_sweep(notebook: str | Path, grid: Mapping[str, Sequence[Any]],
              params: Mapping[str, Any] | None = None, out: str | Path | None = None,
              jobs: int = 1, kernel_name: str | None = None, timeout: float | None = None,
              progress: bool = True, *, client: "Client | None" = None,
              scheduler: str | None = None, retries: int = 2, metric: str = DEFAULT_METRIC,
              memory_limit: str | float | None = "auto", devices: Sequence[str] | None = None,
              on_record: Callable[[RunRecord], None] | None = None) -> SweepResult:
    """Run ``notebook`` with papermill once per cell of ``grid`` (cross product), on Dask.

    Args:
        notebook: path to a notebook with a ``parameters`` cell declaring ``output_dir``.
        grid: parameter name -> list of values, passed as given (:func:`parse_grid_args` parses
            strings).
        params: fixed values for every cell.
        out: sweep folder (default ``runs/sweeps/<notebook stem>``).
        jobs: worker processes of the local cluster (ignored with ``client`` or ``scheduler``).
        kernel_name: kernel to use (default: the notebook's kernelspec).
        timeout: wall-clock seconds allowed per cell (None: unlimited).
        progress: a progress bar and one line per cell as it finishes.
        client: a ``distributed.Client`` to submit to (e.g. a cluster a notebook already has).
        scheduler: address of a running scheduler; default ``$DASK_SCHEDULER_ADDRESS`` when
            neither ``client`` nor ``scheduler`` is given; unset, a local cluster is started.
        retries: resubmissions of a cell whose worker died while running it.
        metric: the metric plotted for every run label in ``summary.html``.
        memory_limit: memory per local worker process, as Dask reads it (``"4GB"``, bytes,
            ``"auto"``: the machine's memory shared out, None: unlimited).
        devices: local cluster's ``CUDA_VISIBLE_DEVICES`` ids, round-robin over workers; None
            detects them (:func:`detect_gpus`); ``[]`` leaves the variable alone.
        on_record: called with each :class:`RunRecord` as it is known (skipped ones first).

    Returns:
        :class:`SweepResult`. Failed cells do not raise; see ``.failed`` / ``.ok``.

    Raises:
        SweepError: before anything runs, for unknown names, empty value lists, bad ``jobs``,
            ``timeout`` or ``retries``, a notebook that is missing or lacks ``output_dir``, an
            unreachable scheduler, or dataset paths missing on a worker.
    """
    nb_path = Path(notebook).resolve()
    declared = notebook_parameters(nb_path)
    params = dict(params or {})
    grid = validate_grid(grid, params, declared)
    jobs = _checked(check_int, "jobs", jobs, 1)
    retries = _checked(check_int, "retries", retries, 0)
    if timeout is not None:
        timeout = _checked(check_float, "timeout", timeout, 0.0)
        if timeout <= 0:
            raise SweepError(f"timeout={timeout!r} is out of range: allowed > 0 seconds or None")
    if isinstance(memory_limit, str) and memory_limit != "auto":
        from dask.utils import parse_bytes

        try:
            parse_bytes(memory_limit)
        except ValueError:
            raise SweepError(f"memory_limit={memory_limit!r} is not a size such as '4GB', "
                             "'auto' or None") from None
    if not isinstance(metric, str) or not metric:
        raise SweepError(f"metric={metric!r} must be a non-empty result name such as 'P@5'")
    cells = combinations(grid)
    if client is None and scheduler is None:
        scheduler = os.environ.get(SCHEDULER_ENV) or None

    out_dir = (Path(out) if out is not None else Path("runs") / "sweeps" / nb_path.stem).resolve()
    n = len(cells)
    records: dict[str, RunRecord] = {}
    combos = dict(cells)

    from tqdm.auto import tqdm

    bar = tqdm(total=n, desc="sweep", unit="cell", disable=not progress, file=sys.stderr)

    def report(rec: RunRecord) -> None:
        records[rec.slug] = rec
        bar.update(1)
        if progress:
            bar.write(_progress_line(len(records), n, rec), file=sys.stdout)
            sys.stdout.flush()
        if on_record is not None:
            on_record(rec)

    to_skip, pending = _plan(cells, params, out_dir, nb_path, kernel_name, timeout)
    paths = dataset_paths(params, grid, nb_path.parent)

    try:
        for rec in to_skip:
            report(rec)
        with ExitStack() as stack:
            dask_client = None
            if pending:
                local_devices = list(detect_gpus() if devices is None else devices) \
                    if client is None and not scheduler else []
                dask_client = _start(client, scheduler, jobs, len(pending), local_devices,
                                     memory_limit, stack, bar.write if progress else None)
                check_paths_on_workers(dask_client, paths)
                pending = [replace(t, devices=tuple(local_devices)) for t in pending]
            out_dir.mkdir(parents=True, exist_ok=True)
            for task in pending:
                run_dir = out_dir / task.slug
                run_dir.mkdir(parents=True, exist_ok=True)
                # Stale files must not make an unfinished re-run look finished.
                for name in (DONE_FILE, RESULTS_FILE):
                    (run_dir / name).unlink(missing_ok=True)

            def done(task: CellTask, res: CellOutput, attempts: int) -> None:
                run_dir = out_dir / task.slug
                _write_cell(run_dir, res, task.parameters, attempts)
                report(RunRecord(task.slug, combos[task.slug], res.status, res.error,
                                 res.duration_s, run_dir, res.device, attempts, res.worker))

            if pending:
                _run_on_client(dask_client, pending, retries,
                               _gpu_resources(dask_client), done)
    finally:
        bar.close()

    ordered = [records[s] for s, _ in cells]
    table, long, files = write_outputs(out_dir, ordered, list(grid), metric)
    return SweepResult(out_dir, ordered, table, long, metric, files)

