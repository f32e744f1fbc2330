"""Name the training dynamics a run logged: collapse after the switch to hard negatives,
alternation across refresh intervals or epochs, and the labels the negatives were in each phase.

Everything here reads what the trainer and the hooks wrote (``metrics.jsonl``, the
``popularity`` and ``ranks`` hooks) and is tested on constructed series; ``xmcviz inspect``
prints :func:`describe_dynamics`, notebooks call the functions directly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..validation import check_float, check_int


@dataclass
class Collapse:
    """A drop of ``metric`` after the switch from warm-up to hard negatives."""

    metric: str
    switch_step: int
    before: float          # the last evaluation at or before the switch
    lowest: float          # the lowest evaluation after it
    lowest_step: int
    final: float
    recovered_step: int | None  # first evaluation after the lowest back within tolerance of before

    @property
    def drop(self) -> float:
        return self.before - self.lowest


@dataclass
class Alternation:
    """A metric that goes up and down at successive evaluations (a period of two evaluations)."""

    metric: str
    steps: np.ndarray        # the evaluations' steps considered
    values: np.ndarray
    flips: int               # successive changes whose sign differs from the previous change
    changes: int             # successive changes considered
    amplitude: float         # median |change|
    eval_spacing: float      # median steps between the evaluations
    low_steps: np.ndarray    # evaluations that went down (the bad phase)
    high_steps: np.ndarray   # evaluations that went up (the good phase)
    fading: bool             # the last third's median |change| is under half of the first third's

    @property
    def period_steps(self) -> float:
        return 2 * self.eval_spacing


def switch_step(config: dict) -> int | None:
    """The step at which a run switched from its uniform warm-up to its sampler (None: no warm-up)."""
    warm = int(config.get("warmup_epochs") or 0)
    spe = (config.get("resolved") or {}).get("steps_per_epoch")
    if warm <= 0 or not spe or config.get("sampler") in (None, "uniform", "full"):
        return None
    return warm * int(spe)


def find_collapse(metrics: pd.DataFrame, switch: int, metric: str = "P@5", min_drop: float = 0.02,
                  rel_drop: float = 0.1, tolerance: float = 0.05) -> Collapse | None:
    """A collapse: after step ``switch`` the metric falls by at least ``min_drop`` and by at least
    ``rel_drop`` of its value at the switch.  Recovered once it is back within ``tolerance``
    (relative) of that value."""
    check_float("min_drop", min_drop, 0.0)
    check_float("rel_drop", rel_drop, 0.0, 1.0)
    check_float("tolerance", tolerance, 0.0, 1.0)
    if metric not in metrics or "step" not in metrics or not len(metrics):
        return None
    m = metrics[["step", metric]].dropna().sort_values("step")
    before_rows, after = m[m["step"] <= switch], m[m["step"] > switch]
    if before_rows.empty or after.empty:
        return None
    before = float(before_rows[metric].iloc[-1])
    i = int(np.argmin(after[metric].to_numpy()))
    lowest, lowest_step = float(after[metric].iloc[i]), int(after["step"].iloc[i])
    if before - lowest < max(min_drop, rel_drop * before):
        return None
    rest = after.iloc[i:]
    back = rest[rest[metric] >= before * (1 - tolerance)]
    return Collapse(metric, int(switch), before, lowest, lowest_step, float(after[metric].iloc[-1]),
                    int(back["step"].iloc[0]) if len(back) else None)


def find_alternation(metrics: pd.DataFrame, metric: str = "P@5", since_step: int = 0,
                     min_changes: int = 4, min_flip_rate: float = 0.75,
                     min_amplitude: float = 0.01) -> Alternation | None:
    """Alternation: among the evaluations after ``since_step``, at least ``min_flip_rate`` of the
    successive changes reverse the previous one's sign (a smooth rise or fall flips rarely), over
    at least ``min_changes`` changes, with a median |change| of at least ``min_amplitude``."""
    check_int("min_changes", min_changes, 2)
    check_float("min_flip_rate", min_flip_rate, 0.0, 1.0)
    check_float("min_amplitude", min_amplitude, 0.0)
    if metric not in metrics or "step" not in metrics:
        return None
    m = metrics[["step", metric]].dropna().sort_values("step")
    m = m[m["step"] > since_step]
    steps, values = m["step"].to_numpy(), m[metric].to_numpy(dtype=np.float64)
    d = np.diff(values)
    if d.size < min_changes:
        return None
    sign = np.sign(d)
    flips = int(np.sum(sign[1:] * sign[:-1] < 0))
    amplitude = float(np.median(np.abs(d)))
    if flips < min_flip_rate * (d.size - 1) or amplitude < min_amplitude:
        return None
    third = max(1, d.size // 3)
    fading = bool(np.median(np.abs(d[-third:])) < 0.5 * np.median(np.abs(d[:third])))
    return Alternation(metric, steps, values, flips, int(d.size - 1), amplitude,
                       float(np.median(np.diff(steps))), steps[1:][d < 0], steps[1:][d > 0], fading)


def phase_of_windows(windows: pd.DataFrame, alt: Alternation) -> pd.Series:
    """``low`` / ``high`` for each window (rows with ``start_step``, ``end_step``) that lies
    between two evaluations, by the change at the evaluation that closes it; None otherwise."""
    bounds = alt.steps  # evaluation e_i covers the steps (e_{i-1}, e_i]
    low, high = set(alt.low_steps.tolist()), set(alt.high_steps.tolist())
    out = []
    for s, e in zip(windows["start_step"].to_numpy(), windows["end_step"].to_numpy()):
        i = int(np.searchsorted(bounds, e - 1, side="left"))  # first evaluation at or after the window's last step
        ok = 0 < i < len(bounds) and bounds[i - 1] <= s
        step = int(bounds[i]) if ok else None
        out.append("low" if step in low else "high" if step in high else None)
    return pd.Series(out, index=windows.index, dtype=object)


def popularity_by_phase(popularity: pd.DataFrame, alt: Alternation, source: str = "mips",
                        kind: str = "refresh") -> dict[str, dict[str, float]]:
    """Per phase (low / high), the ``source`` negatives' median training-frequency rank (median
    over the windows) and head share, from the ``popularity`` hook's records."""
    if popularity is None or popularity.empty:
        return {}
    w = popularity[(popularity["source"] == source) & (popularity["kind"] == kind)]
    if w.empty:
        return {}
    ph = phase_of_windows(w, alt)
    out = {}
    for name in ("low", "high"):
        sel = w[ph == name]
        if len(sel):
            out[name] = {"windows": int(len(sel)), "median_freq_rank": float(sel["median_freq_rank"].median()),
                         "head": float(sel["head"].median()), "tail": float(sel["tail"].median())}
    return out


def first_interval_popularity(popularity: pd.DataFrame | None, switch: int,
                              source: str = "mips") -> dict[str, float] | None:
    """The ``source`` negatives' popularity in the first refresh interval that starts at or after
    ``switch`` (the labels a collapse penalised), with the positives' median rank beside it."""
    if popularity is None or not len(popularity) or "kind" not in popularity:
        return None
    w = popularity[(popularity["kind"] == "refresh") & (popularity["start_step"] >= switch)]
    neg = w[w["source"] == source].sort_values("start_step")
    if neg.empty:
        return None
    first = neg.iloc[0]
    pos = w[(w["source"] == "positives") & (w["start_step"] == first["start_step"])]
    return {"median_freq_rank": float(first["median_freq_rank"]), "head": float(first["head"]),
            "positives": float(pos["median_freq_rank"].iloc[0]) if len(pos) else float("nan")}


def top_labels_by_phase(ranks: pd.DataFrame, alt: Alternation, freq_rank: np.ndarray | None,
                        source: str = "mips", n: int = 5) -> dict[str, pd.DataFrame]:
    """The ``n`` labels most drawn as ``source`` negatives (in the ``ranks`` hook's probe rows) in
    the steps of each phase, with their training-frequency rank when ``freq_rank`` is given."""
    if ranks is None or ranks.empty:
        return {}
    r = ranks[ranks["source"] == source]
    bounds = alt.steps
    i = np.searchsorted(bounds, r["step"].to_numpy(), side="left")
    valid = (i > 0) & (i < len(bounds))
    closing = np.where(valid, bounds[np.clip(i, 0, len(bounds) - 1)], -1)
    out = {}
    for name, steps in (("low", alt.low_steps), ("high", alt.high_steps)):
        sel = r[np.isin(closing, steps)]
        if sel.empty:
            continue
        c = sel["label"].value_counts().head(n)
        df = pd.DataFrame({"label": c.index.to_numpy(dtype=np.int64), "draws": c.to_numpy()})
        if freq_rank is not None:
            df["freq_rank"] = freq_rank[df["label"].to_numpy()]
        out[name] = df
    return out


def describe_dynamics(run, metrics_names: tuple[str, ...] = ("P@1", "P@5")) -> list[str]:
    """Plain-words findings of a run directory (``xmcviz.load_run``'s): see :func:`findings`."""
    from ..hooks.popularity import read_frequency_ranks
    spe = (run.config.get("resolved") or {}).get("steps_per_epoch")
    return findings(run.metrics, run.config, spe, popularity=run.hooks.get("popularity"),
                    ranks=run.hooks.get("ranks"), freq_rank=read_frequency_ranks(run.path),
                    metrics_names=metrics_names) + hidden_findings(run.hooks.get("hidden"))


def hidden_shares(hidden: pd.DataFrame | None, since_step: int = 0) -> pd.DataFrame:
    """Per source, over the ``hidden`` hook's step windows ending after ``since_step``: draws,
    hits, the share of negatives that are hidden positives and the uniform base share."""
    cols = ["source", "draws", "hits", "share", "base_share", "ratio"]
    if hidden is None or not len(hidden) or "kind" not in hidden:
        return pd.DataFrame(columns=cols)
    w = hidden[(hidden["kind"] == "steps") & (hidden["end_step"] > since_step)]
    if w.empty:
        return pd.DataFrame(columns=cols)
    w = w.assign(expected=w["base_share"] * w["draws"])
    g = w.groupby("source", observed=True)[["draws", "hits", "expected"]].sum()
    out = pd.DataFrame({"source": g.index.astype(str), "draws": g["draws"].to_numpy(),
                        "hits": g["hits"].to_numpy()})
    out["share"] = out["hits"] / out["draws"]
    out["base_share"] = g["expected"].to_numpy() / out["draws"]
    out["ratio"] = out["share"] / out["base_share"]
    return out[cols]


def hidden_findings(hidden: pd.DataFrame | None) -> list[str]:
    """The ``hidden`` hook in words: per source, how often the negatives were hidden positives
    against what uniform draws would hit, and the last recall of the hidden positives."""
    sh = hidden_shares(hidden)
    if sh.empty:
        return []
    parts = [f"{r.source} {r.share:.2%} ({r.ratio:.2g}x the uniform base rate {r.base_share:.2%})"
             for r in sh.itertuples() if r.source != "all"]
    lines = ["hidden positives among the sampled negatives: " + "; ".join(parts)]
    ev = hidden[hidden["kind"] == "eval"] if "kind" in hidden else hidden.iloc[0:0]
    ks = [c for c in ev.columns if c.startswith("recall@")] if len(ev) else []
    if ks:
        last = ev.sort_values("step").iloc[-1]
        lines.append("  recall of the hidden positives at the last evaluation: "
                     + ", ".join(f"{c} {last[c]:.3f}" for c in ks))
    return lines


def findings(metrics: pd.DataFrame, config: dict, steps_per_epoch: int | None,
             popularity: pd.DataFrame | None = None, ranks: pd.DataFrame | None = None,
             freq_rank: np.ndarray | None = None,
             metrics_names: tuple[str, ...] = ("P@1", "P@5")) -> list[str]:
    """Plain-words findings with their numbers: a collapse after the switch to hard negatives,
    an alternation of P@k across evaluations, and (with the ``popularity`` / ``ranks`` records)
    the training popularity and the most drawn labels of the MIPS negatives in each phase."""
    lines: list[str] = []
    cfg = {**config, "resolved": {**(config.get("resolved") or {}), "steps_per_epoch": steps_per_epoch}}
    sw = switch_step(cfg)
    if sw is not None:
        for name in metrics_names:
            c = find_collapse(metrics, sw, name)
            if c is not None:
                rec = (f"back within 5% of {c.before:.3f} at step {c.recovered_step}"
                       if c.recovered_step is not None else f"not recovered (last {c.final:.3f})")
                lines.append(f"collapse after the switch to hard negatives at step {c.switch_step}: {name} "
                             f"{c.before:.3f} -> {c.lowest:.3f} at step {c.lowest_step}; {rec}")
                first = first_interval_popularity(popularity, c.switch_step)
                if first is not None:
                    lines.append(f"  mips negatives of the first interval after the switch: median "
                                 f"training-frequency rank {first['median_freq_rank']:.0f} (head labels "
                                 f"{first['head']:.0%}); positives' median rank {first['positives']:.0f}")
                break
    for name in metrics_names:
        alt = find_alternation(metrics, name, since_step=sw or 0)
        if alt is None:
            continue
        interval = _refresh_interval(cfg)
        per = f"{alt.period_steps:.0f} steps" + (f" = {alt.period_steps / interval:.3g} refresh intervals"
                                                 if interval else "")
        lines.append(f"alternation: {name} goes up and down at successive evaluations ({alt.flips} of "
                     f"{alt.changes} changes reverse direction), median swing {alt.amplitude:.3f}, "
                     f"period {per}" + ("; the swings fade" if alt.fading else ""))
        src = "mips" if popularity is not None and len(popularity) and (popularity["source"] == "mips").any() else None
        if src is not None:
            by = popularity_by_phase(popularity, alt, src)
            posw = popularity[(popularity["source"] == "positives") & (popularity["kind"] == "refresh")]
            pos_rank = float(posw["median_freq_rank"].median()) if len(posw) else float("nan")
            for ph, label in (("low", "before evaluations that dropped"), ("high", "before evaluations that rose")):
                if ph in by:
                    d = by[ph]
                    lines.append(f"  {src} negatives {label}: median training-frequency rank "
                                 f"{d['median_freq_rank']:.0f} (head labels {d['head']:.0%}, tail "
                                 f"{d['tail']:.0%}; over {d['windows']} refresh intervals; positives' "
                                 f"median rank {pos_rank:.0f})")
            for ph, df in top_labels_by_phase(ranks, alt, freq_rank, src).items():
                shown = ", ".join(f"{int(r.label)}" + (f" (freq rank {int(r.freq_rank)})" if "freq_rank" in df else "")
                                  for r in df.itertuples())
                lines.append(f"  most drawn {src} negatives in the {ph} phase: {shown}")
        break
    if not lines:
        lines.append("dynamics: no collapse after a switch and no alternation in " + " / ".join(metrics_names))
    return lines


def _refresh_interval(cfg: dict) -> float | None:
    spe = (cfg.get("resolved") or {}).get("steps_per_epoch")
    if cfg.get("refresh_every"):
        return float(cfg["refresh_every"])
    if spe and cfg.get("sampler", "").startswith("mips"):
        return spe / float(cfg.get("refreshes_per_epoch") or 1)
    return None
