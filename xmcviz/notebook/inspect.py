"""`xmcviz inspect RUN`: a short text summary of a run directory."""
from __future__ import annotations

import argparse
from pathlib import Path

from .analysis import rank_medians_by_phase, top_negative_labels
from .dynamics import describe_dynamics
from ..core.run_reader import load_run


def summarise_run(path: str | Path, top: int = 10) -> str:
    """Best P@5, rank medians per refresh-interval phase, most drawn negative labels."""
    run = load_run(path)
    cfg = run.config
    lines = [f"run: {run.path}"]
    if cfg:
        keys = ("data", "model", "sampler", "negatives", "mips_k", "refreshes_per_epoch", "refresh_every",
                "warmup_epochs", "eta_ratio", "epochs", "seed")
        lines.append("  " + ", ".join(f"{k}={cfg[k]}" for k in keys if cfg.get(k) is not None))
    m = run.metrics
    if len(m) and "P@5" in m:
        best = m.loc[m["P@5"].idxmax()]
        last = m.iloc[-1]
        lines.append(f"evaluations: {len(m)}; best P@5 {best['P@5']:.4f} at epoch {best.get('epoch')} "
                     f"(step {int(best.get('step', -1))}); last P@1/P@3/P@5 "
                     f"{last.get('P@1', float('nan')):.4f}/{last.get('P@3', float('nan')):.4f}/{last['P@5']:.4f} "
                     f"after {last.get('time_s', float('nan')):.1f} s of training")
    else:
        lines.append("evaluations: none yet")
    lines += describe_dynamics(run)
    ranks = run.hooks.get("ranks")
    if ranks is not None and len(ranks):
        lines.append(f"negative ranks: {len(ranks)} logged; median {ranks['rank'].median():.0f}")
        for phase, d in rank_medians_by_phase(ranks).items():
            srcs = ", ".join(f"{k} {v:.0f}" for k, v in d.items() if k != "all")
            lines.append(f"  {phase:>6} step of refresh intervals: median rank {d['all']:.0f} ({srcs})")
    freq, fsum = run.hooks.get("freq"), run.hooks.get("freq_summary")
    if freq is not None and fsum is not None and len(freq):
        t = top_negative_labels(freq, fsum, n=top)
        shown = ", ".join(f"{int(l)}: {s:.1%}" for l, s in zip(t["label"], t["share"]))
        lines.append(f"top {len(t)} negative labels (share of draws): {shown}")
        refresh = fsum[(fsum["kind"] == "refresh") & (fsum["source"] == "all")]
        if len(refresh):
            lines.append(f"  per refresh interval: top-10 share median {refresh['top10_share'].median():.1%}, "
                         f"normalised entropy median {refresh['entropy'].median():.3f}")
    grad = run.hooks.get("grad_summary")
    if grad is not None and len(grad):
        lines.append(f"gradient dominance ||g-||/||g+||: first {grad['ratio'].iloc[0]:.3g}, "
                     f"last {grad['ratio'].iloc[-1]:.3g}; cos(sampled, full) last {grad['cos_sampled_full'].iloc[-1]:.3f}")
    st = run.hooks.get("staleness")
    if st is not None and len(st):
        g = st.groupby("steps_since_refresh")["recall"].mean()
        lines.append(f"index recall vs exact: {g.iloc[0]:.3f} right after a refresh, {g.iloc[-1]:.3f} "
                     f"at {g.index[-1]} steps since")
    return "\n".join(lines)


def add_inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory written by `xmcviz train`")
    p.add_argument("--top", type=int, default=10, help="how many negative labels to list (default 10)")


def run_inspect_cli(args: argparse.Namespace) -> int:
    """``xmcviz inspect RUN``; a missing directory raises ``FileNotFoundError`` (load_run's)."""
    print(summarise_run(args.run, top=args.top))
    return 0
