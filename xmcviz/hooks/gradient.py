"""GradientDominance: the positive and negative terms of the embedding gradient.

For each probe row, in closed form from the scores and W (no extra backward
pass), with o_j = sigma(f_j) and the loss of docs/background.md, section "Loss":

    g+ = eta_ratio * sum_{j pos} (o_j - 1) w_j          (positive term)
    g- = sum_{j in sampled negatives} o_j w_j            (sampled negative term)
    g-_full = sum_{j not pos} o_j w_j                    (all negatives: the full loss)

Logged per row: ||g+||, ||g-||, ||g-_full||, cos(g+, g-), the cosine between
the sampled gradient g+ + g- and the full one g+ + g-_full, and the state the
gradient acts on:

    sig_pos, sig_neg, sig_all = mean o_j over the positives, the sampled negatives
                                and all labels (score trajectories);
    emb_norm                  = ||E_x||.

With only the hardest negatives from scratch, g- dominates the first steps; a
network whose embedding ends in a ReLU can be pushed to E_x = 0 for most rows.
Then every score is the label bias, the three sigma means coincide, and no
gradient reaches the network again (docs/background.md, section "Gradient
dominance").  For a linear model E_x = x is the fixed input: emb_norm is the
input's norm and says nothing about training.

Files: ``hooks/grad.jsonl`` (per logged step: medians over the probe, and
``dead_fraction``, the share of probe rows with E_x = 0) and
``hooks/grad.bin`` (per probe row, dtype ``GRAD_DTYPE``).
"""
from __future__ import annotations

import numpy as np
import torch

from .base import StepContext
from .recording import FullScoringHook, to_numpy

GRAD_DTYPE = np.dtype([("step", "<i8"), ("row", "<i4"), ("norm_pos", "<f4"), ("norm_neg", "<f4"),
                       ("norm_neg_full", "<f4"), ("cos_pos_neg", "<f4"), ("cos_sampled_full", "<f4"),
                       ("sig_pos", "<f4"), ("sig_neg", "<f4"), ("sig_all", "<f4"),
                       ("emb_norm", "<f4")])


def gradient_terms(emb: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None,
                   pos_ids: torch.Tensor, pos_mask: torch.Tensor, pos_scores: torch.Tensor,
                   neg_ids: torch.Tensor, neg_mask: torch.Tensor, neg_scores: torch.Tensor,
                   eta_ratio: float = 1.0, label_chunk: int = 65536) -> dict[str, torch.Tensor]:
    """Return ``g_pos``, ``g_neg`` and ``g_neg_full`` ([B, d] each) and ``sig_pos``, ``sig_neg``,
    ``sig_all`` ([B]: mean o_j over the positives, the sampled negatives and all labels) for the
    rows of ``emb``."""
    Wd = W.detach()
    coef_pos = (torch.sigmoid(pos_scores) - 1.0) * pos_mask * eta_ratio
    coef_neg = torch.sigmoid(neg_scores) * neg_mask
    g_pos = torch.einsum("bk,bkd->bd", coef_pos, Wd[pos_ids])
    g_neg = torch.einsum("bk,bkd->bd", coef_neg, Wd[neg_ids])
    # Full negative term: sum over every label, chunked, minus the positives.
    g_all = torch.zeros_like(emb)
    sig_sum = torch.zeros(emb.shape[0], dtype=emb.dtype, device=emb.device)
    for start in range(0, Wd.shape[0], label_chunk):
        Wc = Wd[start:start + label_chunk]
        s = emb @ Wc.T
        if bias is not None:
            s = s + bias.detach()[start:start + label_chunk]
        o = torch.sigmoid(s)
        g_all += o @ Wc
        sig_sum += o.sum(dim=1)
    s_pos = (emb.unsqueeze(1) @ Wd[pos_ids].transpose(1, 2)).squeeze(1)
    if bias is not None:
        s_pos = s_pos + bias.detach()[pos_ids]
    g_pos_as_neg = torch.einsum("bk,bkd->bd", torch.sigmoid(s_pos) * pos_mask, Wd[pos_ids])
    pm, nm = pos_mask.to(emb.dtype), neg_mask.to(emb.dtype)
    # Masked means; a row without any entry gives nan rather than a fake 0.
    sig_pos = (torch.sigmoid(pos_scores) * pm).sum(1) / pm.sum(1)
    sig_neg = (torch.sigmoid(neg_scores) * nm).sum(1) / nm.sum(1)
    return {"g_pos": g_pos, "g_neg": g_neg, "g_neg_full": g_all - g_pos_as_neg,
            "sig_pos": sig_pos, "sig_neg": sig_neg, "sig_all": sig_sum / Wd.shape[0]}


def _nanmedian(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else float("nan")


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12)


class GradientDominance(FullScoringHook):
    """Log gradient-term norms and cosines for ``probe`` rows every ``every`` steps."""

    name = "grad"
    record_dtypes = {"": GRAD_DTYPE}

    default_every = 20

    def __init__(self, every: int | None = None, probe: int = 50, label_chunk: int = 65536) -> None:
        super().__init__(every, probe)
        self.label_chunk = label_chunk

    @torch.no_grad()
    def before_update(self, ctx: StepContext) -> None:
        p = self.probe_rows(ctx.emb.shape[0])
        pos, neg = ctx.positives, ctx.negatives
        bias = getattr(ctx.model, "bias", None)
        g = gradient_terms(ctx.emb[p], ctx.model.W, bias, pos.ids[p], pos.mask[p], ctx.pos_scores[p],
                           neg.ids[p], neg.mask[p], ctx.neg_scores[p], ctx.eta_ratio, self.label_chunk)
        n_pos, n_neg, n_full = (g[k].norm(dim=1) for k in ("g_pos", "g_neg", "g_neg_full"))
        rec = np.zeros(n_pos.numel(), dtype=GRAD_DTYPE)
        rec["step"] = ctx.step
        rec["row"] = to_numpy(ctx.rows[p])
        rec["norm_pos"] = to_numpy(n_pos)
        rec["norm_neg"] = to_numpy(n_neg)
        rec["norm_neg_full"] = to_numpy(n_full)
        rec["cos_pos_neg"] = to_numpy(_cos(g["g_pos"], g["g_neg"]))
        rec["cos_sampled_full"] = to_numpy(_cos(g["g_pos"] + g["g_neg"], g["g_pos"] + g["g_neg_full"]))
        for k in ("sig_pos", "sig_neg", "sig_all"):
            rec[k] = to_numpy(g[k])
        rec["emb_norm"] = to_numpy(ctx.emb[p].norm(dim=1))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = rec["norm_neg"] / rec["norm_pos"]
            ratio_full = rec["norm_neg_full"] / rec["norm_pos"]
        finite = np.isfinite(ratio)
        summary = {
            "step": ctx.step, "epoch": ctx.epoch,
            "ratio": float(np.median(ratio[finite])) if finite.any() else float("nan"),
            "ratio_full": float(np.median(ratio_full[finite])) if finite.any() else float("nan"),
            "norm_pos": float(np.median(rec["norm_pos"])),
            "norm_neg": float(np.median(rec["norm_neg"])),
            "norm_neg_full": float(np.median(rec["norm_neg_full"])),
            "cos_pos_neg": float(np.median(rec["cos_pos_neg"])),
            "cos_sampled_full": float(np.median(rec["cos_sampled_full"])),
            **{k: _nanmedian(rec[k]) for k in ("sig_pos", "sig_neg", "sig_all", "emb_norm")},
            # Rows whose embedding is exactly zero (all ReLU units off): no gradient reaches them.
            "dead_fraction": float(np.mean(rec["emb_norm"] == 0)),
        }
        self.emit(summary, {"": rec})
