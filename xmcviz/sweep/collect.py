"""Collection and reports: what a sweep did, its results tables and ``summary.html``.

``results.jsonl`` / ``results.csv`` hold one row per grid cell (parameters, status, and every
scalar of the notebook's ``results.json`` flattened as ``a.b``). ``results_long.csv`` holds one
row per cell and run label (the keys of the results' ``final`` mapping, e.g. ``mips-a, PPE=1``):
the parameters, the label, the main metrics, the duration and the status. ``summary.html`` plots
the chosen metric for every run label against each grid parameter and shows the long table.
"""
from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..core.rundir import RESULTS_FILE, atomic_write_bytes, json_safe
from .cell import FAILED, OK, SKIPPED  # noqa: F401  (re-exported)
from .grid import NOTEBOOK_FILE

if TYPE_CHECKING:  # pandas/plotly stay out of the workers and of `xmcviz --help`
    import pandas as pd
    import plotly.graph_objects as go

# Table columns that are not notebook results; a result key with one of these names (or a grid
# parameter's name) is prefixed with "result." in the wide table.
BASE_COLUMNS = ("status", "error", "duration_s", "attempts", "dir")
DEFAULT_METRIC = "P@5"
SEED_PARAM = "seed"  # a grid parameter averaged over, with error bars, in the summary
# Metrics shown in the long table besides the chosen one (every result is in results.csv).
_MAIN_METRIC = re.compile(r"^(?:P|nDCG)@\d+$|^train_time_s$")
_PLOTS_PER_ROW = 3


@dataclass
class RunRecord:
    """Outcome of one grid cell."""

    slug: str
    params: dict[str, Any]  # the grid values of this cell
    status: str  # "ok", "failed", or "skipped" (finished by an earlier run)
    error: str | None
    duration_s: float | None
    dir: Path
    device: str | None = None
    attempts: int = 1  # executions started (> 1 when a worker died and the cell was retried)
    worker: str | None = None

    @property
    def notebook(self) -> Path:
        """The executed notebook (kept for failed runs)."""
        return self.dir / NOTEBOOK_FILE


@dataclass
class SweepResult:
    """What a sweep did: ``table`` has one row per cell in grid order, ``long`` one row per cell
    and run label."""

    out: Path
    records: list[RunRecord]
    table: "pd.DataFrame"
    long: "pd.DataFrame"
    metric: str = DEFAULT_METRIC  # the metric plotted in summary.html
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> list[RunRecord]:
        """The cells that failed in this call."""
        return [r for r in self.records if r.status == FAILED]

    @property
    def ok(self) -> bool:
        """True when every cell succeeded now or earlier."""
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


def _results(r: RunRecord) -> dict:
    if r.status == FAILED:
        return {}
    try:
        data = json.loads((r.dir / RESULTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _base(r: RunRecord) -> dict[str, Any]:
    return {"status": r.status, "error": r.error, "duration_s": r.duration_s,
            "attempts": r.attempts, "dir": r.slug}


def wide_rows(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """One row per cell: grid values, status columns, then every scalar result."""
    rows = []
    for r in records:
        row = {name: _cell(v) for name, v in r.params.items()}
        row.update(_base(r))
        for key, value in _flatten(_results(r)).items():
            row[f"result.{key}" if key in row else key] = value
        rows.append(row)
    return rows


def _numbers(d: Mapping[str, Any]) -> dict[str, float]:
    return {str(k): v for k, v in d.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def run_labels(results: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The numeric final metrics of each run label in a notebook's results.

    ``final`` mapping labels to metrics (what :class:`xmcviz.notebook.experiment.Experiment`
    writes) gives one entry per label; a ``final`` of plain numbers is one label, ``final``;
    without ``final``, the flattened top-level numbers are one label, ``""``.
    """
    final = results.get("final")
    if isinstance(final, Mapping) and final:
        if all(isinstance(v, Mapping) for v in final.values()):
            return {str(label): _numbers(v) for label, v in final.items()}
        return {"final": _numbers(final)}
    return {"": _numbers(_flatten(results))}


def long_rows(records: Sequence[RunRecord], metric: str = DEFAULT_METRIC) -> list[dict[str, Any]]:
    """One row per cell and run label: grid values, ``label``, ``metric`` and the other main
    metrics (P@k, nDCG@k, train_time_s), duration and status. A cell without results
    (failed) is one row with an empty label."""
    rows = []
    for r in records:
        labels = run_labels(_results(r)) if r.status != FAILED else {}
        for label, metrics in (labels or {None: {}}).items():
            row = {name: _cell(v) for name, v in r.params.items()}
            row["label"] = label
            row[metric] = metrics.get(metric)
            row.update({k: v for k, v in metrics.items() if k != metric and _MAIN_METRIC.match(k)})
            row.update(_base(r))
            rows.append(row)
    return rows


def _sd(values: "pd.Series") -> float:
    """Root mean square of per-cell seed deviations: one error bar for a marginal mean."""
    v = values.dropna()
    return math.sqrt(float((v ** 2).mean())) if len(v) else float("nan")


def summary_figure(long: "pd.DataFrame", grid_names: Sequence[str],
                   metric: str = DEFAULT_METRIC) -> "go.Figure | None":
    """``metric`` for every run label against each grid parameter (one panel per parameter).

    A panel shows, per label, the mean over the grid's other parameters; with a ``seed``
    parameter in the grid, seeds are averaged first and the error bars show their standard
    deviation. None when no finished cell reports ``metric``.
    """
    import pandas as pd
    import plotly.colors
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if metric not in long.columns:
        return None
    done = long[(long["status"] != FAILED) & long[metric].notna() & long["label"].notna()]
    if done.empty:
        return None
    done = done.assign(**{metric: done[metric].astype(float)})
    seeded = SEED_PARAM in grid_names and done[SEED_PARAM].nunique() > 1
    keys = [n for n in grid_names if n != SEED_PARAM]
    # Seeds first: mean and standard deviation per (label, other parameters).
    per_cell = (done.groupby(["label", *keys], sort=False, dropna=False)[metric]
                .agg(["mean", "std"]).reset_index())
    panels = keys or [None]
    cols = min(len(panels), _PLOTS_PER_ROW)
    rows = math.ceil(len(panels) / cols)
    titles = []
    for x in panels:
        others = [k for k in keys if k != x]
        t = f"vs {x}" if x else "all cells"
        if others:
            t += f" (mean over {', '.join(others)})"
        titles.append(t)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles,
                        horizontal_spacing=0.08, vertical_spacing=0.18)
    palette = plotly.colors.qualitative.Plotly
    labels = list(dict.fromkeys(per_cell["label"]))
    for i, x in enumerate(panels):
        row, col = divmod(i, cols)
        for j, label in enumerate(labels):
            part = per_cell[per_cell["label"] == label]
            if x is None:
                xs, g = [label], part.agg({"mean": "mean", "std": _sd}).to_frame().T
            else:
                g = part.groupby(x, sort=False, dropna=False).agg(mean=("mean", "mean"),
                                                                 std=("std", _sd))
                numeric = pd.api.types.is_numeric_dtype(g.index) and \
                    not pd.api.types.is_bool_dtype(g.index)
                g = g.sort_index() if numeric else g
                xs = g.index.tolist() if numeric else [str(v) for v in g.index]
            err = dict(type="data", array=g["std"].fillna(0).tolist(), visible=True) \
                if seeded else None
            kind = go.Bar if x is None else go.Scatter
            extra = {} if x is None else {"mode": "lines+markers"}
            fig.add_trace(kind(x=xs, y=g["mean"].tolist(), error_y=err, name=label or metric,
                               legendgroup=label, showlegend=i == 0,
                               marker_color=palette[j % len(palette)], **extra),
                          row=row + 1, col=col + 1)
        if x is not None:
            fig.update_xaxes(title_text=x, row=row + 1, col=col + 1,
                             type=None if pd.api.types.is_numeric_dtype(per_cell[x])
                             and not pd.api.types.is_bool_dtype(per_cell[x]) else "category")
        fig.update_yaxes(title_text=metric, row=row + 1, col=col + 1)
    n_failed = int((long.drop_duplicates("dir")["status"] == FAILED).sum())
    title = f"{metric} per run label" + (" (mean ± sd over seeds)" if seeded else "")
    if n_failed:
        title += f"; {n_failed} failed cell{'s' * (n_failed > 1)} not shown"
    fig.update_layout(title=title, template="plotly_white", height=380 * rows,
                      legend_title_text="run label")
    return fig


_STYLE = """<style>
body { font-family: sans-serif; margin: 1em 2em; }
table.sweep { border-collapse: collapse; font-size: 13px; }
table.sweep th, table.sweep td { padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: right;
                                 white-space: nowrap; }
table.sweep th { position: sticky; top: 0; background: #f4f4f4; }
table.sweep td.failed { color: #b00; font-weight: bold; }
</style>"""


def _table_html(long: "pd.DataFrame") -> str:
    import pandas as pd

    shown = long.drop(columns=["error"]).copy()
    for c in shown.columns:
        if pd.api.types.is_float_dtype(shown[c]):
            shown[c] = shown[c].map(lambda v: "" if pd.isna(v) else f"{v:.4g}")
    text = shown.to_html(index=False, na_rep="", border=0, classes="sweep")
    # Mark failed cells' status so the eye finds them.
    return text.replace("<td>failed</td>", '<td class="failed">failed</td>')


def write_outputs(out: Path, records: Sequence[RunRecord], grid_names: Sequence[str],
                  metric: str = DEFAULT_METRIC) -> tuple["pd.DataFrame", "pd.DataFrame", dict[str, Path]]:
    """Write ``results.jsonl``, ``results.csv``, ``results_long.csv`` and ``summary.html``."""
    import pandas as pd

    rows = wide_rows(records)
    # Nullable dtypes keep integer results integers next to the missing values of failed runs.
    table = pd.DataFrame(rows).convert_dtypes()
    long = pd.DataFrame(long_rows(records, metric)).convert_dtypes()
    files = {"jsonl": out / "results.jsonl", "csv": out / "results.csv",
             "long": out / "results_long.csv", "summary": out / "summary.html"}
    atomic_write_bytes(files["jsonl"], "".join(
        json.dumps(json_safe(row)) + "\n" for row in rows).encode())
    atomic_write_bytes(files["csv"], table.to_csv(index=False).encode())
    atomic_write_bytes(files["long"], long.to_csv(index=False).encode())
    fig = summary_figure(long, grid_names, metric) if len(long) else None
    # include_plotlyjs=True: the page embeds plotly.js (~5 MB) and renders offline, e.g. when
    # copied off a cluster node without internet access.
    if fig is not None:
        plot = fig.to_html(full_html=False, include_plotlyjs=True, div_id="sweep-summary")
    else:
        present = sorted({c for c in long.columns if _MAIN_METRIC.match(str(c))} - {metric})
        plot = (f"<p id=\"sweep-summary\">No finished cell reports {html.escape(metric)}"
                + (f"; metrics present: {html.escape(', '.join(present))}" if present else "")
                + ".</p>")
    failed = [r for r in records if r.status == FAILED]
    errors = "".join(f"<li><b>{html.escape(r.slug)}</b>: {html.escape(r.error or '')}</li>"
                     for r in failed)
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>sweep {html.escape(out.name)}</title>{_STYLE}</head><body>\n"
            f"<h2>Sweep {html.escape(str(out))}</h2>\n"
            f"<p>{len(records)} cells: {sum(r.status == OK for r in records)} ok, "
            f"{sum(r.status == SKIPPED for r in records)} finished earlier, {len(failed)} failed. "
            "Every result: <code>results.csv</code>; this table: "
            "<code>results_long.csv</code>.</p>\n"
            f"{plot}\n"
            + (f"<h3>Failed cells</h3><ul id=\"sweep-failed\">{errors}</ul>\n" if failed else "")
            + "<h3>One row per cell and run label</h3>\n"
            f"{_table_html(long)}\n</body></html>\n")
    atomic_write_bytes(files["summary"], page.encode())
    return table, long, files
