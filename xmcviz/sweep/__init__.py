"""Batch runs of a parameterised notebook over a grid of parameter values: papermill on Dask.

A notebook taking part has a cell tagged ``parameters`` that assigns ``output_dir`` (among
others) and writes its results as a JSON object to ``output_dir/results.json``.
:func:`run_sweep` executes it once per cell of the grid's cross product, on a local Dask
cluster or an existing one, and writes::

    OUT/<slug>/notebook.ipynb   the executed notebook (kept for failed runs too)
    OUT/<slug>/results.json     written by the notebook
    OUT/<slug>/kernel.log       the kernel's own stdout/stderr (crashes, C-level warnings)
    OUT/<slug>/done             marker written (atomically) after a successful run
    OUT/results.jsonl, OUT/results.csv   one row per cell, every scalar result
    OUT/results_long.csv        one row per cell and run label: the main metrics
    OUT/summary.html            the chosen metric per run label against each grid parameter

Semantics:

- Up-front validation: grid and fixed parameter names must be parameters of the notebook
  (``papermill.inspect_notebook``), dataset paths must exist on every worker; nothing runs
  otherwise (:class:`SweepError`).
- Failure isolation: a failing cell (notebook exception, timeout, dead kernel, missing
  ``results.json``) is recorded with its error; the others go on. A cell whose worker dies is
  retried on another worker (``retries``), then recorded as failed.
- Resume: a cell whose ``done`` marker and ``results.json`` exist, and whose marker records the
  same parameter values (``output_dir`` aside), is skipped. Failed, interrupted or
  re-parameterised cells run again. Edits to the notebook itself do not invalidate finished
  runs: that is what lets one fix a bug and re-run only what failed.
- ``timeout`` is a wall-clock limit in seconds per cell, counted from its first notebook cell
  (kernel start-up has papermill's own 60 s limit).
- No shared filesystem: a worker runs the cell in a temporary folder of its own and sends the
  files back; the notebook's folder is the kernel's working directory where the worker has it
  (as in JupyterLab), else the temporary folder.

Modules: :mod:`.grid` (parameters, grid, slugs, markers), :mod:`.cell` (one cell on a worker),
:mod:`.execute` (the Dask path), :mod:`.collect` (tables, summary), :mod:`.cli`, :mod:`.gpus`.
"""
import importlib
from typing import Any

# Lazy, so that a worker unpickling ``run_cell`` imports neither pandas, plotly nor torch.
_HOME = {
    "cell": ("FAILED", "OK", "SKIPPED", "CellOutput", "CellTask", "run_cell"),
    "cli": ("add_sweep_arguments", "main", "run_sweep_cli"),
    "collect": ("DEFAULT_METRIC", "RunRecord", "SweepResult", "long_rows", "run_labels",
                "summary_figure", "write_outputs"),
    "execute": ("dataset_paths", "run_sweep"),
    "gpus": ("detect_gpus",),
    "grid": ("DONE_FILE", "KERNEL_LOG", "MAX_SLUG_LEN", "NOTEBOOK_FILE", "OUTPUT_DIR_PARAM",
             "NotebookParameter", "SweepError", "notebook_parameters", "parse_grid_args",
             "parse_param_args", "parse_value", "read_done", "slug_for"),
}
_WHERE = {name: module for module, names in _HOME.items() for name in names}
__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
