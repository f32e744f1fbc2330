"""Does each notebook's prose hold at its default parameters?

Runs every notebook in ``notebooks/`` with its DEFAULT parameters through papermill (and, with
``--data DIR``, once more with ``data=DIR``, e.g. the Delicious folder of the Mulan benchmarks,
https://mulan.sourceforge.net/datasets-mlc.html), reads the ``results.json`` it writes, and
prints, per claim of its "what to look for" text, ``holds`` / ``does not hold`` with the
numbers and the figure behind it.  The claims are encoded below as functions over
``results.json``; a claim whose data a run lacks is reported as ``not checked``.

Each default run takes minutes on a small CPU: ``--only NAME`` (repeatable) picks notebooks,
``--timeout S`` bounds each run (a run past it is killed and reported), ``--reuse`` checks the
``results.json`` of an earlier run instead of running again.

    python benchmarks/notebook_claims.py --only gradient_dominance --data DATA/Delicious
    python benchmarks/notebook_claims.py --reuse            # re-check earlier runs
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


@dataclass
class Claim:
    """One statement of a notebook's prose and the check over its ``results.json``.

    ``check(results)`` returns ``(holds, evidence)``; it raises ``KeyError`` when the run lacks
    the data (reported as not checked)."""

    text: str
    figure: str
    check: Callable[[dict], tuple[bool, str]]


# ---------------------------------------------------------------------------- helpers
def _trace(res: dict, figure: str, name: str) -> np.ndarray:
    for t in res["figures"][figure]:
        if t["name"] == name:
            return np.asarray(t["y"], dtype=float)
    raise KeyError(f"{figure}: no trace {name!r}")


def _late(y: np.ndarray) -> float:
    """Median of the second half of a curve (where a run has settled)."""
    y = y[np.isfinite(y)]
    return float(np.median(y[len(y) // 2:])) if len(y) else float("nan")


def _label(res: dict, prefix: str) -> str:
    """The run label that starts with ``prefix`` (labels carry their settings after it)."""
    hits = [k for k in res["final"] if k == prefix or k.startswith(prefix + " ")]
    if len(hits) != 1:
        raise KeyError(f"no single run labelled {prefix!r} in {list(res['final'])}")
    return hits[0]


def _fmt(d: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in d.items())


# ---------------------------------------------------------------------- gradient_dominance
GD_OTHERS = ("mlp-top-re", "mlp-top-uniform", "mlp-uniform")


def _gd_dead(res: dict) -> tuple[bool, str]:
    dead = {p: _late(_trace(res, "dead embeddings", _label(res, p))) for p in ("mlp-top",) + GD_OTHERS}
    ok = dead["mlp-top"] >= 0.5 and all(dead[p] <= 0.1 for p in GD_OTHERS)
    return ok, "late median fraction of rows with E_x = 0: " + _fmt(dead)


def _gd_scores(res: dict) -> tuple[bool, str]:
    out, ok = {}, True
    for p in ("mlp-top",) + GD_OTHERS:
        lab = _label(res, p)
        pos, allv = (_late(_trace(res, "scores", f"{lab}: {w}")) for w in ("positives", "all labels"))
        out[f"{p} pos-all"] = pos - allv
        out[f"{p} |all-0.5|"] = abs(allv - 0.5)
        if p == "mlp-top":
            ok &= abs(pos - allv) < 0.01 and abs(allv - 0.5) < 0.01
        else:
            ok &= pos > allv and abs(allv - 0.5) > 0.05
    return ok, "late mean sigma, positives minus all labels and distance from 0.5: " + _fmt(out)


def _gd_p5(res: dict) -> tuple[bool, str]:
    p5 = {p: res["final"][_label(res, p)]["P@5"] for p in ("linear-top", "mlp-top") + GD_OTHERS}
    ok = all(p5["mlp-top"] < 0.5 * p5[p] for p in p5 if p != "mlp-top")
    return ok, "final P@5: " + _fmt(p5)


def _gd_ratio(res: dict) -> tuple[bool, str]:
    r = {p: _late(_trace(res, "gradient ratio", _label(res, p)))
         for p in ("linear-top", "mlp-top") + GD_OTHERS}
    # Claim: the ratio does not single out the stuck run (it is not the largest).
    ok = r["mlp-top"] <= max(v for p, v in r.items() if p != "mlp-top")
    return ok, "late median ||g-||/||g+||: " + _fmt(r)


# -------------------------------------------------------------------- interval_sensitivity
def _interval_finals(res: dict, sampler: str) -> dict[int, float]:
    """Final P@5 by interval setting, longest interval first (fewest refreshes per epoch, or
    most steps between refreshes)."""
    rows = [r for r in res["table"] if r["sampler"] == sampler]
    if not rows:
        raise KeyError(sampler)
    key = res["interval_setting"]
    rows = sorted(rows, key=lambda r: r[key], reverse=key == "refresh_every")
    return {int(r[key]): float(r["P@5"]) for r in rows}


def _is_mips_a_worse_when_short(res: dict) -> tuple[bool, str]:
    a = _interval_finals(res, "mips-a")
    v = list(a.values())
    return v[-1] < v[0], "final P@5 of MIPS-a by interval: " + _fmt({f"{k}": x for k, x in a.items()})


def _is_mips_s_ahead(res: dict) -> tuple[bool, str]:
    a, s = _interval_finals(res, "mips-a"), _interval_finals(res, "mips-s")
    ok = all(s[k] > a[k] for k in a if k in s)
    return ok, "final P@5 MIPS-s / MIPS-a by interval: " + ", ".join(
        f"{k}: {s[k]:.3g} / {a[k]:.3g}" for k in a if k in s)


def _is_mips_s_holds_long(res: dict) -> tuple[bool, str]:
    s = _interval_finals(res, "mips-s")
    v = list(s.values())
    return v[0] >= 0.8 * max(v), "final P@5 of MIPS-s by interval: " + _fmt({f"{k}": x for k, x in s.items()})


def _is_time_close(res: dict) -> tuple[bool, str]:
    t = {f"{r['sampler']} {r[res['interval_setting']]}": float(r["time_s"]) for r in res["table"]}
    return max(t.values()) < 1.3 * min(t.values()), "training time (s): " + _fmt(t)


# ------------------------------------------------------------------------- rank_histograms
def _rh_p5_after_switch(res: dict) -> tuple[bool, str]:
    out = {}
    for s in ("mips-a", "mips-s"):
        h = res["runs"][s]["history"]
        spe = res["runs"][s]["steps_per_epoch"]
        warm = [r["P@5"] for r in h if r["step"] <= spe]
        after = [r["P@5"] for r in h if r["step"] > spe]
        out[f"{s} end of warm-up"], out[f"{s} min after"] = warm[-1], min(after)
    drop = {s: out[f"{s} end of warm-up"] - out[f"{s} min after"] for s in ("mips-a", "mips-s")}
    return drop["mips-a"] > drop["mips-s"], "P@5 (MIPS-a loses more after the switch): " + _fmt(out)


def _phase_medians(res: dict, sampler: str) -> dict[str, float]:
    """Median true rank of all the run's negatives at the first / middle / last logged step."""
    return {ph: v["all"] for ph, v in res["rank_medians"][sampler].items()}


def _rh_drift(res: dict) -> tuple[bool, str]:
    m = _phase_medians(res, "mips-a")
    return m["last"] > m["first"], "MIPS-a median true rank by phase: " + _fmt(m)


def _rh_mips_s_uniform(res: dict) -> tuple[bool, str]:
    m = _phase_medians(res, "mips-s")
    half = res["runs"]["mips-s"]["num_labels"] / 2
    ok = all(0.5 * half <= v <= 1.5 * half for v in m.values())
    return ok, f"MIPS-s median true rank by phase (uniform: ~{half:.0f}): " + _fmt(m)


def _rh_concentration(res: dict) -> tuple[bool, str]:
    b = res["batch_concentration"]["mips-a"]
    return b["distinct"] < 0.5 * b["distinct_if_uniform"], (
        f"MIPS-a first mini-batch: {b['distinct']} distinct labels in {b['draws']} draws, "
        f"{b['distinct_if_uniform']:.0f} if uniform")


# ------------------------------------------------------------------------------------ tour
def _tour_stuck(res: dict) -> tuple[bool, str]:
    p5 = res["dominance"]["final"]["mlp-top"]["P@5"]
    return p5 < 0.05, f"mlp-top final P@5 {p5:.3g} (the panel's default run)"


def _tour_dead(res: dict) -> tuple[bool, str]:
    dead = _late(_trace(res["dominance"], "dead embeddings", "mlp-top"))
    return dead >= 0.5, f"mlp-top late median fraction of rows with E_x = 0: {dead:.3g}"


def _tour_switch(res: dict) -> tuple[bool, str]:
    run = res["stale"]["runs"]["mips-a, PPE=1"]
    spe, h = run["steps_per_epoch"], run["history"]
    warm = [r["P@5"] for r in h if r["step"] <= spe][-1]
    low = min(r["P@5"] for r in h if r["step"] > spe)
    return low < 0.5 * warm, f"mips-a, PPE=1: P@5 {warm:.3g} at the switch, lowest after it {low:.3g}"


# ---------------------------------------------------------------------------- meta_vs_mips
def _mm_meta_fresh(res: dict) -> tuple[bool, str]:
    y = _trace(res, "hard ranks", "meta")
    early, late = float(np.median(y[:len(y) // 2])), _late(y)
    return late < 2 * early and early < 2 * late, f"meta's median hard-negative rank, first half " \
        f"{early:.4g}, second half {late:.4g} (no drift: within a factor 2)"


def _mm_recall_climbs(res: dict) -> tuple[bool, str]:
    y = _trace(res, "meta recall", "meta")
    return y[-1] > y[0], f"meta recall first {y[0]:.3g}, last {y[-1]:.3g}"


def _mm_mips_sawtooth(res: dict) -> tuple[bool, str]:
    y = _trace(res, "hard ranks", "mips-a")
    y = y[np.isfinite(y)]
    return float(y.max()) > 5 * float(y.min()), (
        f"mips-a's median hard-negative rank between {y.min():.4g} (fresh) and {y.max():.4g} (stale)")


# ------------------------------------------------------------------------- false_negatives
def _fn_hidden_hits(res: dict) -> tuple[bool, str]:
    out, ok = {}, True
    for label, rows in res["hidden_shares"].items():
        by = {r["source"]: r for r in rows}
        if label.startswith("uniform") and "uniform" in by:
            out[f"{label} uniform"] = by["uniform"]["ratio"]
            ok &= 0.5 <= by["uniform"]["ratio"] <= 2  # at the base rate
        if label.startswith("mips-s") and "mips" in by:
            out[f"{label} mips"] = by["mips"]["ratio"]
            ok &= by["mips"]["ratio"] >= 3  # many times the base rate
    if not out:
        raise KeyError("no run with hidden labels")
    return ok, "hidden-positive hits / uniform base rate: " + _fmt(out)


def _fn_lines(res: dict, prefix: str) -> dict[str, list[str]]:
    return {lab: lines for lab, lines in res["findings"].items() if lab.startswith(prefix)}


def _fn_mips_s_alternates_on_head_labels(res: dict) -> tuple[bool, str]:
    ok, shown = True, []
    for lab, lines in _fn_lines(res, "mips-s").items():
        alt = any(line.startswith("alternation") for line in lines)
        low = [line for line in lines if "before evaluations that dropped" in line]
        high = [line for line in lines if "before evaluations that rose" in line]
        rank = lambda line: float(line.split("median training-frequency rank ")[1].split()[0])
        ok &= alt and bool(low) and bool(high) and rank(low[0]) < rank(high[0])
        shown.append(f"{lab}: alternation {alt}, MIPS negatives' median frequency rank "
                     f"{rank(low[0]) if low else '?'} before drops vs {rank(high[0]) if high else '?'} before rises")
    if not shown:
        raise KeyError("no mips-s run")
    return ok, "; ".join(shown)


def _fn_mips_a_collapses(res: dict) -> tuple[bool, str]:
    runs = _fn_lines(res, "mips-a")
    if not runs:
        raise KeyError("no mips-a run")
    ok = all(any("not recovered" in line for line in lines) for lines in runs.values())
    return ok, "; ".join(f"{lab}: {lines[0]}" for lab, lines in runs.items())


def _fn_recall(res: dict) -> tuple[bool, str]:
    recall = {}
    for lab, lines in res["findings"].items():
        for line in lines:
            if "recall@10" in line:
                recall[lab] = float(line.split("recall@10 ")[1].split()[0])
    uni = [v for k, v in recall.items() if k.startswith("uniform")]
    mips = [v for k, v in recall.items() if k.startswith("mips")]
    if not uni or not mips:
        raise KeyError("no recall of hidden positives")
    return max(mips) < min(uni), "recall@10 of the hidden positives: " + _fmt(recall)


def _fn_uniform_rises(res: dict) -> tuple[bool, str]:
    lab = next(k for k in res["final"] if k.startswith("uniform"))
    y = [r["P@1"] if "P@1" in r else r["P@5"] for r in res["runs"][lab]["history"]]
    drops = sum(b < a - 0.01 for a, b in zip(y, y[1:]))
    return y[-1] > y[0] and drops <= 1, f"{lab}: P@k {y[0]:.3g} -> {y[-1]:.3g}, {drops} drop(s) > 0.01"


# -------------------------------------------------------------------- adversarial_sampling
def _adv(res: dict, sampler: str, key: str) -> float:
    return float(res["final"][sampler][key])


def _adv_beyond_tree(res: dict) -> tuple[bool, str]:
    acc, aux = _adv(res, "adversarial", "acc"), _adv(res, "adversarial", "acc_aux")
    return acc > aux + 0.01, f"adversarial accuracy {acc:.3g}, its tree alone {aux:.3g}"


def _adv_bias_removal(res: dict) -> tuple[bool, str]:
    # The prose: at this budget (synthetic preset) the raw scores may still rank better than
    # xi + log q, by less than 0.1, the trained part of xi being far from its fixed point.
    acc, raw = _adv(res, "frequency", "acc"), _adv(res, "frequency", "acc_raw")
    return raw - acc < 0.1, f"frequency: bias-removed xi + log q {acc:.3g}, raw xi {raw:.3g}"


def _adv_nce(res: dict) -> tuple[bool, str]:
    # The prose: NCE starts from the log label frequencies and is still below its noise
    # distribution at this budget, far from converged rather than broken (accuracy well above 0).
    acc, aux = _adv(res, "nce", "acc"), _adv(res, "nce", "acc_aux")
    return 0.5 * aux <= acc, f"nce accuracy {acc:.3g}, its noise distribution alone {aux:.3g}"


def _adv_full_reference(res: dict) -> tuple[bool, str]:
    acc = {s: _adv(res, s, "acc") for s in res["final"]}
    return acc["full"] >= max(acc.values()) - 0.01, "final accuracy: " + _fmt(acc)


CLAIMS: dict[str, list[Claim]] = {
    "gradient_dominance": [
        Claim("mlp-top's embeddings die (E_x = 0 for most rows); remedies and mlp-uniform stay alive",
              "dead embeddings", _gd_dead),
        Claim("mlp-top's three score means stay together at 0.5; elsewhere positives end above all labels",
              "scores", _gd_scores),
        Claim("mlp-top's P@5 stays near zero, below half of every other run's", "P@5", _gd_p5),
        Claim("the ratio ||g-||/||g+|| does not single out mlp-top (not the largest)",
              "gradient ratio", _gd_ratio),
    ],
    "interval_sensitivity": [
        Claim("MIPS-a ends lower at the shortest interval than at the longest", "interval",
              _is_mips_a_worse_when_short),
        Claim("MIPS-s is ahead of MIPS-a at every interval", "interval", _is_mips_s_ahead),
        Claim("MIPS-s holds its P@5 at the longest interval (>= 80% of its best)", "interval",
              _is_mips_s_holds_long),
        Claim("at 4K labels the refresh cost is small: training times within 30% of each other",
              "interval", _is_time_close),
    ],
    "rank_histograms": [
        Claim("after the switch MIPS-a loses more P@5 than MIPS-s", "P@5", _rh_p5_after_switch),
        Claim("MIPS-a's negatives drift to higher true ranks over the interval", "ranks mips-a", _rh_drift),
        Claim("MIPS-s's negatives stay near the uniform median rank", "ranks mips-s", _rh_mips_s_uniform),
        Claim("MIPS-a's first mini-batch draws few distinct labels", "batch labels", _rh_concentration),
    ],
    "tour": [
        Claim("section 1: mlp + top (the default controls) stays at chance", "P@5", _tour_stuck),
        Claim("section 1: mlp + top ends with most rows' E_x = 0", "dead embeddings", _tour_dead),
        Claim("section 2: mips-a at PPE = 1 loses P@5 right after the switch", "P@5", _tour_switch),
    ],
    "meta_vs_mips": [
        Claim("meta's hard negatives are fresh: their median rank does not drift", "hard ranks",
              _mm_meta_fresh),
        Claim("the meta head learns: its cluster recall climbs", "meta recall", _mm_recall_climbs),
        Claim("MIPS-a's hard negatives are fine but stale: a saw-tooth of ranks", "hard ranks",
              _mm_mips_sawtooth),
    ],
    "false_negatives": [
        Claim("uniform's P@k rises smoothly", "P@k", _fn_uniform_rises),
        Claim("uniform negatives hit hidden positives at the base rate, MIPS-s's MIPS negatives many "
              "times more often (>= 3x)", "hidden share", _fn_hidden_hits),
        Claim("MIPS-s alternates; its MIPS negatives are more popular before drops than before rises",
              "popularity", _fn_mips_s_alternates_on_head_labels),
        Claim("MIPS-a collapses after the switch and does not recover", "P@k", _fn_mips_a_collapses),
        Claim("the MIPS runs rank the hidden positives worse than uniform (recall@10)", "hidden recall",
              _fn_recall),
    ],
    "adversarial_sampling": [
        Claim("the trained adversarial model adds accuracy to its tree", "table", _adv_beyond_tree),
        Claim("frequency: the bias-removed predictor is at most 0.1 below the raw scores at this budget",
              "acc bars", _adv_bias_removal),
        Claim("NCE learns (at least half its noise distribution's accuracy), still below it at this budget",
              "acc bars", _adv_nce),
        Claim("the full softmax is the reference: no sampler beats it", "time", _adv_full_reference),
    ],
}
# Parameters for a headless run beyond the defaults (the tour's panels train only on autorun).
EXTRA = {"tour": {"autorun": True}}
# The parameter(s) that name the data set.
DATA_PARAMS = {"tour": ("data_dominance", "data_mips")}


def run_notebook(name: str, params: dict, out_dir: Path, timeout: float) -> str | None:
    """Execute notebook ``name`` with ``params`` into ``out_dir``; None, or why it failed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "papermill", str(NOTEBOOKS / f"{name}.ipynb"),
           str(out_dir / "executed.ipynb"), "-y", json.dumps({**params, "output_dir": str(out_dir)}),
           "--cwd", str(NOTEBOOKS), "--no-progress-bar"]
    # Own process group: a timeout kills papermill and its kernel together.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"killed after --timeout {timeout:g} s"
    if proc.returncode:
        tail = log.decode(errors="replace").strip().splitlines()[-3:]
        return f"papermill exit {proc.returncode}: " + " | ".join(tail)
    return None


def check(name: str, res: dict) -> list[tuple[str, Claim, str]]:
    """Every claim of notebook ``name`` against ``res``: (verdict, claim, evidence)."""
    out = []
    for c in CLAIMS[name]:
        try:
            ok, evidence = c.check(res)
            out.append(("holds" if ok else "does not hold", c, evidence))
        except (KeyError, IndexError, TypeError, ValueError) as e:  # a results.json of another shape
            out.append(("not checked", c, f"missing data: {e}"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="a real data set's folder: each notebook runs "
                    "once more with data=DIR")
    ap.add_argument("--only", action="append", choices=sorted(CLAIMS), help="notebook(s) to check")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per notebook run")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "notebook_claims")
    ap.add_argument("--reuse", action="store_true", help="check existing results.json, run nothing")
    a = ap.parse_args(argv)
    if a.timeout <= 0:
        ap.error(f"--timeout={a.timeout} is out of range: allowed > 0")
    if a.data is not None and not Path(a.data).exists():
        ap.error(f"--data {a.data}: no such file or folder")
    names = [n for n in (a.only or CLAIMS) if (NOTEBOOKS / f"{n}.ipynb").exists()]
    jobs = [(n, "defaults", {}) for n in names]
    if a.data:
        tag = Path(a.data).name
        jobs += [(n, tag, {p: str(Path(a.data).resolve()) for p in DATA_PARAMS.get(n, ("data",))})
                 for n in names]
    failed = 0
    for name, tag, params in tqdm(jobs, desc="notebooks", disable=None):
        out_dir = a.out / name / tag
        t0 = time.time()
        err = None if a.reuse else run_notebook(name, {**EXTRA.get(name, {}), **params}, out_dir, a.timeout)
        results = out_dir / "results.json"
        head = f"== {name} [{tag}]"
        if err or not results.exists():
            print(f"{head}: not run ({err or f'no {results}'})", flush=True)
            failed += 1
            continue
        print(f"{head}: {'reused' if a.reuse else f'{time.time() - t0:.0f} s'}", flush=True)
        for verdict, c, evidence in check(name, json.loads(results.read_text())):
            print(f"  {verdict:13s} | {c.text} [figure: {c.figure}]\n                | {evidence}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
