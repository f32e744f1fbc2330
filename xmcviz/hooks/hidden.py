"""HiddenPositives: are the hard negatives false negatives?  Counted on positives hidden on purpose.

With ``hide_labels`` > 0 the trainer hides that fraction of the training positives
(:mod:`xmcviz.data.hide`).  Every counted step, this hook checks each sampled negative against
its row's hidden positives and adds, per source, the draws, the hits and the hits a *uniform*
draw of the same size would expect (the base rate: a row with h hidden and p visible positives
hits a hidden one with probability h / (L - p) per uniform draw).  A sampler whose share of hits
is far above the base rate is drawing missing positives, not hard negatives.  Every ``rank_every``
steps the true rank (among all L labels) of the hits in the probe rows is logged, and at each
evaluation the model's recall@k of the hidden positives on a fixed sample of training rows
(visible positives excluded from the ranking): does the model still rank what it was never told?

Without hidden positives (``hide_labels`` = 0) the hook records nothing.

Files: ``hooks/hidden.jsonl``: window records (``kind`` ``steps`` / ``refresh`` as in ``freq``,
``source``, ``draws``, ``hits``, ``share`` = hits / draws, ``base_share`` = expected uniform
share, ``ranked_hits``, ``median_hit_rank``) and evaluation records (``kind`` = ``eval``,
``recall@K`` for each K in ``ks``, ``rows``, ``hidden``).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ..core.topk import topk_labels, true_ranks
from ..data.hide import hidden_labels
from ..samplers.base import SOURCE_NAMES, Positives
from ..validation import check_int
from .base import RunInfo, StepContext
from .windows import WindowedHook


class HiddenPositives(WindowedHook):
    """Share of sampled negatives that are hidden positives, by source, against the base rate."""

    name = "hidden"

    def __init__(self, every: int = 1, window: int = 50, by_refresh: bool = True, rank_every: int = 20,
                 probe: int = 50, recall_rows: int = 1000, ks: tuple[int, ...] = (5, 10),
                 seed: int = 0) -> None:
        super().__init__(every, window, by_refresh, probe, seed)
        self.rank_every = check_int("rank_every", rank_every, 1)
        self.recall_rows = check_int("recall_rows", recall_rows, 1)
        self.ks = tuple(check_int("k", k, 1) for k in ks)
        self._hidden: sp.csr_matrix | None = None
        self._model = None

    def on_train_start(self, run: RunInfo) -> None:
        hidden = hidden_labels(run.dataset)
        if hidden is None or hidden.nnz == 0:
            self.run = run
            return  # nothing hidden: nothing to count, no file
        super().on_train_start(run)
        self._hidden = sp.csr_matrix(hidden)
        visible = sp.csr_matrix(run.dataset.Y_train)
        L = run.num_labels
        h = np.diff(self._hidden.indptr).astype(np.float64)
        p = np.diff(visible.indptr).astype(np.float64)
        self._base = torch.as_tensor(h / np.maximum(L - p, 1.0), dtype=torch.float64, device=run.device)
        # A fixed sample of training rows with hidden positives, for the recall at evaluations.
        rows = np.flatnonzero(h > 0)
        rng = np.random.default_rng((self.seed, 0x5245))
        if rows.size > self.recall_rows:
            rows = np.sort(rng.choice(rows, self.recall_rows, replace=False))
        self._recall_rows = rows

    def wants(self, step: int) -> bool:
        return self._hidden is not None and super().wants(step)

    def new_window(self) -> dict:
        S = len(SOURCE_NAMES)
        z = lambda dt: torch.zeros(S, dtype=dt, device=self._base.device)
        return {"draws": z(torch.int64), "hits": z(torch.int64), "expected": z(torch.float64),
                "ranks": [[] for _ in range(S)]}

    @torch.no_grad()
    def before_update(self, ctx: StepContext) -> None:
        self._model = ctx.model
        windows = self.open_windows(ctx)
        neg = ctx.negatives
        hid = Positives.from_csr(self._hidden, ctx.rows, device=neg.ids.device)
        hit = ((neg.ids.unsqueeze(2) == hid.ids.unsqueeze(1)) & hid.mask.unsqueeze(1)).any(2) & neg.mask
        src = neg.source.long()
        S = len(SOURCE_NAMES)
        draws = torch.bincount(src[neg.mask], minlength=S)
        hits = torch.bincount(src[hit], minlength=S)
        base = self._base[ctx.rows].unsqueeze(1).expand_as(neg.ids)
        expected = torch.zeros(S, dtype=torch.float64, device=base.device).index_add_(
            0, src[neg.mask], base[neg.mask])
        ranked = None
        if ctx.step % self.rank_every == 0:
            p = self.probe_rows(neg.ids.shape[0])
            if bool(hit[p].any()):
                bias = getattr(ctx.model, "bias", None)
                r = true_ranks(ctx.emb[p], ctx.model.W.detach(), neg.ids[p],
                               bias=None if bias is None else bias.detach())
                ranked = (src[p][hit[p]].cpu().numpy(), r[hit[p]].cpu().numpy())
        for win in windows:
            win["draws"] += draws
            win["hits"] += hits
            win["expected"] += expected
            if ranked is not None:
                for code, rank in zip(*ranked):
                    win["ranks"][int(code)].append(int(rank))

    def write_window(self, win: dict, base: dict) -> bool:
        draws, hits = win["draws"].cpu().numpy(), win["hits"].cpu().numpy()
        expected = win["expected"].cpu().numpy()
        if draws.sum() == 0:
            return False
        rows = [("all", draws.sum(), hits.sum(), expected.sum(), sum(win["ranks"], []))]
        rows += [(SOURCE_NAMES[c], draws[c], hits[c], expected[c], win["ranks"][c])
                 for c in np.flatnonzero(draws)]
        for name, d, h, e, ranks in rows:
            self.emit({**base, "source": name, "draws": int(d), "hits": int(h), "share": float(h / d),
                       "base_share": float(e / d), "ranked_hits": len(ranks),
                       "median_hit_rank": float(np.median(ranks)) if ranks else None})
        return True

    @torch.no_grad()
    def on_eval(self, record: dict) -> None:
        if self._hidden is None or self._model is None or self._recall_rows.size == 0:
            return
        from ..core.trainer import csr_to_torch
        model, run = self._model, self.run
        X = sp.csr_matrix(run.dataset.X_train)
        visible = sp.csr_matrix(run.dataset.Y_train)
        kmax = min(max(self.ks), run.num_labels)
        was_training = model.training
        model.eval()
        found = np.zeros(len(self.ks))
        total = 0
        try:
            bias = getattr(model, "bias", None)
            for s in range(0, self._recall_rows.size, 256):
                rows = self._recall_rows[s:s + 256]
                emb = model.embed(csr_to_torch(X[rows], run.device))
                vis = Positives.from_csr(visible, rows, device=emb.device)
                _, top = topk_labels(emb, model.W.detach(), kmax, exclude=vis.ids, exclude_mask=vis.mask,
                                     bias=None if bias is None else bias.detach())
                hid = Positives.from_csr(self._hidden, rows, device=emb.device)
                hit = (top.unsqueeze(2) == hid.ids.unsqueeze(1)) & hid.mask.unsqueeze(1)  # [n, k, H]
                cum = hit.any(2).cumsum(1)  # hidden positives found within the first j+1
                for i, k in enumerate(self.ks):
                    found[i] += float(cum[:, min(k, kmax) - 1].sum())
                total += int(hid.mask.sum())
        finally:
            model.train(was_training)
        self.emit({"kind": "eval", "step": int(record.get("step", -1)), "epoch": record.get("epoch"),
                   "rows": int(self._recall_rows.size), "hidden": total,
                   **{f"recall@{k}": float(f / max(total, 1)) for k, f in zip(self.ks, found)}})

