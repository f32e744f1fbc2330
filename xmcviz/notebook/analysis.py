"""Small, tested computations behind the figures and `xmcviz inspect`."""
from __future__ import annotations

import numpy as np
import pandas as pd

PHASES = ("first", "middle", "last")


def rank_phases(ranks: pd.DataFrame) -> pd.Series:
    """Label each logged step as the first, middle or last logged step of its refresh interval.

    Intervals are identified by their start step (``step - steps_since_refresh``).
    Within an interval, ``first`` is the earliest logged step, ``last`` the latest,
    ``middle`` the logged step closest to halfway between them.  Steps of a sampler
    that never refreshes (``steps_since_refresh == -1``) get no phase (None).
    An interval with fewer than three logged steps has no middle.
    """
    out = pd.Series([None] * len(ranks), index=ranks.index, dtype=object)
    ok = ranks["steps_since_refresh"] >= 0
    if not ok.any():
        return out
    steps = ranks.loc[ok, ["step", "steps_since_refresh"]].drop_duplicates("step")
    steps = steps.assign(start=steps["step"] - steps["steps_since_refresh"])
    phase_of_step: dict[int, str] = {}
    for _, grp in steps.groupby("start"):
        s = np.sort(grp["step"].to_numpy())
        phase_of_step[int(s[0])] = "first"
        if len(s) >= 2:
            phase_of_step[int(s[-1])] = "last"
        if len(s) >= 3:
            inner = s[1:-1]
            mid = inner[np.argmin(np.abs(inner - (s[0] + s[-1]) / 2))]
            phase_of_step[int(mid)] = "middle"
    okv = ok.to_numpy()
    vals = [phase_of_step.get(int(s)) if o else None for s, o in zip(ranks["step"].to_numpy(), okv)]
    return pd.Series(vals, index=ranks.index, dtype=object)


def rank_medians_by_phase(ranks: pd.DataFrame, since_step: int = 0) -> dict[str, dict[str, float]]:
    """Median true rank per phase of the refresh interval and per source (steps >= since_step)."""
    r = ranks[ranks["step"] >= since_step]
    phase = rank_phases(r)
    out: dict[str, dict[str, float]] = {}
    for ph in PHASES:
        sel = r[phase == ph]
        if len(sel):
            d = {"all": float(sel["rank"].median())}
            for src, g in sel.groupby("source", observed=True):
                d[str(src)] = float(g["rank"].median())
            out[ph] = d
    return out


def uniform_rank_expectation(edges: np.ndarray, num_labels: int) -> np.ndarray:
    """Fraction of a uniform draw over ranks 1..L that falls in each bin [e_i, e_{i+1})."""
    lo = np.clip(np.ceil(edges[:-1]), 1, num_labels + 1)
    hi = np.clip(np.ceil(edges[1:]), 1, num_labels + 1)
    return (hi - lo) / num_labels


def log_rank_edges(num_labels: int, bins: int = 30) -> np.ndarray:
    """Log-spaced histogram edges covering ranks 1..L."""
    return np.geomspace(1, num_labels + 1, bins + 1)


def top_negative_labels(counts: pd.DataFrame, summary: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The ``n`` labels drawn most often as negatives over the run (all sources).

    ``counts``/``summary`` are a run's ``hooks["freq"]`` / ``hooks["freq_summary"]``;
    only the ``steps`` windows are summed (``refresh`` windows count the same draws again).
    Each window records at most its ``keep`` most drawn labels per source (the ``freq`` hook's
    bound at large L), so counts are exact when no window had more distinct labels than that,
    and otherwise a lower bound that still ranks the labels drawn most over the run first.
    """
    if counts.empty or summary.empty:
        return pd.DataFrame(columns=["label", "count", "share"])
    wins = summary.loc[summary["kind"] == "steps", "window"].unique()
    tot = counts[counts["window"].isin(wins)].groupby("label")["count"].sum().sort_values(ascending=False)
    head = tot.head(n)
    return pd.DataFrame({"label": head.index.to_numpy(), "count": head.to_numpy(),
                         "share": head.to_numpy() / tot.sum()})


def batch_label_counts(records: pd.DataFrame, source: str = "mips",
                       step: int | None = None) -> tuple[int | None, np.ndarray, np.ndarray]:
    """How often each label was drawn as a ``source`` negative at one logged step (see
    docs/background.md, section "Label concentration").

    ``records``: per-negative records with ``step``, ``label``, ``source`` (the ``ranks``
    hook's, whose probe rows form the mini-batch).  ``step`` None: the first logged step with
    any ``source`` negative (for MIPS samplers after a warm-up, the first step after the
    switch).  Returns ``(step, labels, counts)``, most drawn first; ``(None, [], [])`` when no
    such negative was logged.
    """
    empty = (None, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    if records.empty:
        return empty
    sel = records[records["source"] == source]  # categorical names: no string copy
    if step is None:
        if sel.empty:
            return empty
        step = int(sel["step"].min())
    sel = sel[sel["step"] == step]
    if sel.empty:
        return empty
    labels, counts = np.unique(sel["label"].to_numpy(), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return int(step), labels[order].astype(np.int64), counts[order].astype(np.int64)


def concentration(counts: np.ndarray, num_labels: int | None = None, top: int = 10) -> dict[str, float]:
    """Summaries of one count vector: draws, distinct labels, share of the ``top`` most drawn
    and, given ``num_labels`` L, the distinct labels that as many uniform draws would hit on
    average, L (1 - (1 - 1/L)^draws)."""
    c = np.sort(np.asarray(counts))[::-1]
    total = int(c.sum())
    out = {"draws": total, "distinct": int((c > 0).sum()),
           f"top{top}_share": float(c[:top].sum() / total) if total else 0.0}
    if num_labels is not None:
        out["distinct_if_uniform"] = float(num_labels * (1.0 - (1.0 - 1.0 / num_labels) ** total))
    return out


def select_interval(records: pd.DataFrame, which: int = -1) -> pd.DataFrame:
    """The records of one refresh interval: ``which`` indexes the intervals in step order
    (0 = the first, e.g. right after a warm-up; -1 = the latest).  Records of steps with no
    refresh (``steps_since_refresh < 0``) are never selected; empty when there is no such
    interval."""
    if records.empty or "steps_since_refresh" not in records:
        return records.iloc[0:0]
    ok = records[records["steps_since_refresh"] >= 0]
    starts = np.unique((ok["step"] - ok["steps_since_refresh"]).to_numpy())
    if starts.size == 0 or not -starts.size <= which < starts.size:
        return records.iloc[0:0]
    return ok[(ok["step"] - ok["steps_since_refresh"]) == starts[which]]
