"""The adversarial paper's own setting: softmax classification of each row's first label.

Bamler & Mandt (ICLR 2020; docs/background.md, section "First-label softmax setting") reduce a multi-label dataset to multi-class
classification on the first label of each row (the smallest label id, as in
:func:`xmcviz.samplers.adversarial.training_pairs`), train linear scores
``xi_y(x) = x . w_y + b_y`` with ONE negative ``y' ~ q(.|x)`` per positive ``(x, y)``, and
compare proposals q:

- ``adversarial``: q = the auxiliary tree p_n(y|x); loss
  ``-log sigma(xi_y) - log sigma(-xi_y') + reg [(xi_y + log q(y|x))^2 + (xi_y' + log q(y'|x))^2]``;
- ``uniform`` / ``frequency``: plain negative sampling, the same loss with ``reg = 0``;
- ``nce``: noise-contrastive estimation with the same tree as noise distribution: the logits
  are ``h = xi - log(R q)`` (R = 1), loss ``-log sigma(h_y) - log sigma(-h_y')``;
- ``full``: the reference, the full softmax cross-entropy ``-log softmax(xi)_y`` over all L
  labels (the exact gradient, no sampling; a step reads and writes all L rows of W at the
  batch's features).

At the optimum of negative sampling ``xi = log p(y|x) - log q(y|x)`` (tested on a tiny problem
in ``tests/test_softmax_fixed_point.py``), so the method's predictor is ``xi + log q`` (*bias
removal*; a constant for uniform), while NCE learns ``xi = log p(y|x)`` directly and predicts
with ``xi`` (its biases start at the log first-label frequencies, see ``__init__``).  The full
softmax predicts with ``xi``.  Every evaluation reports
the method's predictor (``acc``, ``loglik``), the plain scores ``xi`` (``acc_raw``,
``loglik_raw``) and the proposal alone (``acc_aux``, ``loglik_aux``: the auxiliary model's own
accuracy for the tree).  ``acc`` = P@1 against the first label; ``loglik`` = the mean over test
rows of ``log softmax(scores)[first label]`` over all L labels (rows without labels skipped).

Optimisation is Adagrad (lr 0.1, reg 1e-3 by default) on the mean loss of a batch, applied
*element-sparse*: gradients live only on the entries ``W[y, j]`` with ``x_j != 0`` of the
labels in the loss (and their biases), which is exactly dense Adagrad, since an Adagrad step
with a zero gradient leaves a parameter and its accumulator unchanged.  A sampled step costs
O(nnz(batch) log nnz), independent of L.  W is stored dense ([L, D], plus its accumulator).
Deterministic on CPU for a seed (epoch order from ``(seed, epoch)``, draws from a seeded
``torch.Generator``).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Iterable

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from .proposals import FrequencyProposal, Proposal, TreeProposal, UniformProposal
from ..samplers.adversarial.tree import training_pairs
from ..core.config import FIRST_LABEL, check_run_settings, setting, steps_per_epoch
from ..core.loop import TrainingLoop
from ..core.trainer import csr_to_torch
from ..hooks.base import Hook
from ..samplers.adversarial.sampler import fit_adversarial_sampler
from ..validation import check_choice, check_float, check_int

__all__ = ["SOFTMAX_METHODS", "SoftmaxConfig", "SoftmaxTrainer", "pair_loss", "sparse_pair_scores",
           "first_labels", "evaluate_first_label"]

PAIR_METHODS = ("adversarial", "uniform", "frequency", "nce")  # one sampled negative per positive
SOFTMAX_METHODS = PAIR_METHODS + ("full",)
_ADAGRAD_EPS = 1e-10  # torch.optim.Adagrad's default


@dataclass
class SoftmaxConfig:
    """Settings of a first-label softmax run (written to ``config.json``).

    ``sampler``: one of :data:`SOFTMAX_METHODS`; ``lr`` (Adagrad; the paper's 0.01 leaves the
    scores close to their start within a few epochs, see benchmarks/RESULTS.md), ``reg``
    (lambda of the adversarial regulariser), ``batch_size`` (positives per step, one negative each),
    ``epochs``, ``seed``; ``adv_dims`` (PCA dims k of the tree, adversarial and NCE);
    ``eval_every_steps`` (besides step 0 and every epoch end), ``eval_batch_size``;
    ``device`` (``auto`` = CUDA when present), ``out`` (run directory or None), ``overwrite``,
    ``progress``.  Data as in :class:`xmcviz.core.trainer.TrainConfig`.
    """

    data: str | None = None
    train: str | None = None
    test: str | None = None
    data_seed: int = 0
    sampler: str = setting("adversarial", "proposal", group=FIRST_LABEL, choices=SOFTMAX_METHODS)
    lr: float = 0.1
    reg: float = setting(1e-3, "regulariser weight of the adversarial loss", group=FIRST_LABEL,
                         metavar="LAMBDA")
    batch_size: int = 256
    epochs: int = 5
    seed: int = 0
    adv_dims: int = setting(16, "PCA dims of the adversarial tree", group=FIRST_LABEL,
                            metavar="k")
    eval_every_steps: int | None = None
    eval_batch_size: int = 1024
    device: str = "auto"
    out: str | None = None
    overwrite: bool = False
    progress: bool = True

    def to_dict(self) -> dict:
        return {**asdict(self), "first_label_only": True}

    @classmethod
    def from_dict(cls, d: dict) -> "SoftmaxConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def validate(self) -> "SoftmaxConfig":
        """Check every setting; ``ValueError`` naming the value and the allowed range."""
        check_choice("sampler", self.sampler, SOFTMAX_METHODS)
        check_run_settings(self)
        check_float("reg", self.reg, 0.0)
        check_int("adv_dims", self.adv_dims, 1)
        return self


# ----------------------------------------------------------------------------- building blocks
def first_labels(Y: sp.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    """(row ids, first label ids) of the rows of ``Y`` that have a label (smallest label id)."""
    return training_pairs(sp.csr_matrix(Y), "first")


def pair_loss(xi: torch.Tensor, log_q: torch.Tensor, method: str, reg: float = 0.0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row loss [B] and its derivative with respect to ``xi`` [B, 2].

    ``xi`` [B, 2]: scores of the positive (column 0) and of the negative (column 1);
    ``log_q`` [B, 2]: their log-probabilities under the proposal.  ``reg`` enters only for
    ``adversarial``; ``nce`` uses the logits ``xi - log q`` (one noise sample per positive).
    """
    check_choice("method", method, PAIR_METHODS)
    sign = xi.new_tensor([1.0, -1.0])  # positive: -log sigma(h); negative: -log sigma(-h)
    h = xi - log_q if method == "nce" else xi
    loss = F.softplus(-sign * h).sum(1)
    grad = torch.sigmoid(h) - (sign > 0).to(xi.dtype)  # d softplus(-s h)/dh = sigma(h) - [s=+1]
    if method == "adversarial" and reg > 0:
        u = xi + log_q
        loss = loss + reg * (u * u).sum(1)
        grad = grad + 2 * reg * u
    return loss, grad


def sparse_pair_scores(W: torch.Tensor, b: torch.Tensor, nnz_row: torch.Tensor, nnz_col: torch.Tensor,
                       nnz_val: torch.Tensor, labels: torch.Tensor,
                       lab: torch.Tensor | None = None) -> torch.Tensor:
    """``xi[i, j] = x_i . W[labels[i, j]] + b[labels[i, j]]`` from the non-zeros of the batch
    (COO: ``nnz_row``, ``nnz_col``, ``nnz_val``), [B, J]; O(nnz J), never densifies x.
    ``lab``: ``labels[nnz_row]`` when the caller already has it."""
    lab = labels[nnz_row] if lab is None else lab                   # [nnz, J]
    contrib = W[lab, nnz_col[:, None]] * nnz_val[:, None]
    return torch.zeros(labels.shape, dtype=W.dtype, device=W.device).index_add_(0, nnz_row, contrib) + b[labels]


def _adagrad_(param: torch.Tensor, accum: torch.Tensor, keys: torch.Tensor, grads: torch.Tensor,
              lr: float) -> None:
    """Adagrad on the flat entries ``keys`` of ``param`` (duplicates summed first)."""
    uniq, inv = torch.unique(keys, return_inverse=True)
    g = torch.zeros(uniq.shape, dtype=param.dtype, device=param.device).index_add_(0, inv, grads)
    p, a = param.view(-1), accum.view(-1)
    acc = a[uniq] + g * g
    a[uniq] = acc
    p[uniq] = p[uniq] - lr * g / (acc.sqrt() + _ADAGRAD_EPS)


Offset = "Callable[[sp.csr_matrix], torch.Tensor] | torch.Tensor | None"


@torch.no_grad()
def evaluate_first_label(score_fn: Callable[[sp.csr_matrix], torch.Tensor], X: sp.csr_matrix,
                         y: np.ndarray, offsets: dict[str, Offset] | None = None, *,
                         row_batch: int = 1024) -> dict[str, float]:
    """Accuracy (= P@1) and mean predictive log-likelihood of the first labels ``y`` [n].

    For each ``suffix -> offset`` of ``offsets`` (default ``{"": None}``) the scores are
    ``score_fn(X_block) + offset`` [b, L] and the result has ``"acc" + suffix`` and
    ``"loglik" + suffix``; an offset is None (plain scores), a callable of the CSR row block,
    or a precomputed [n, L] tensor.  ``score_fn`` runs once per block for all offsets; rows
    are processed ``row_batch`` at a time (at most ~16M scores per block).  The
    log-likelihood is ``log_softmax(scores)[y]`` over all L labels.
    """
    X = sp.csr_matrix(X)
    y = np.asarray(y, dtype=np.int64)
    if X.shape[0] != y.shape[0] or y.shape[0] == 0:
        raise ValueError(f"X has {X.shape[0]} rows and y {y.shape[0]}: need the same number, >= 1")
    offsets = {"": None} if offsets is None else offsets
    hits = dict.fromkeys(offsets, 0.0)
    ll = dict.fromkeys(offsets, 0.0)
    rows, s = check_int("row_batch", row_batch, 1), 0
    while s < X.shape[0]:
        Xb = X[s:s + rows]
        base = score_fn(Xb)
        yb = torch.as_tensor(y[s:s + Xb.shape[0]], device=base.device)
        for key, off in offsets.items():
            scores = base
            if off is not None:
                off = off[s:s + Xb.shape[0]] if isinstance(off, torch.Tensor) else off(Xb)
                scores = base + off.to(base.device, base.dtype)
            hits[key] += float((scores.argmax(1) == yb).sum())
            ll[key] += float(torch.log_softmax(scores.double(), 1).gather(1, yb[:, None]).sum())
        s += Xb.shape[0]
        rows = max(1, min(rows, (1 << 24) // base.shape[1]))  # later blocks: <= ~16M scores
    n = y.shape[0]
    return {f"{m}{k}": v / n for k in offsets for m, v in (("acc", hits[k]), ("loglik", ll[k]))}


# ----------------------------------------------------------------------------------- trainer
_STEP_MOMENTS = ("before_update", "after_update", "on_refresh")


class SoftmaxTrainer(TrainingLoop):
    """Train and evaluate the first-label softmax setting (see the module docstring).

    ``SoftmaxTrainer(config, dataset=None, hooks=())`` loads the data (``config.data`` ...),
    keeps the rows with at least one label, fits the tree (``adversarial``, ``nce``; its time
    is ``fit_s``) and validates everything before training.  The loop (batches, evaluations,
    run directory, hooks) is the shared :class:`~xmcviz.core.loop.TrainingLoop`; ``hooks`` get
    ``on_train_start``, ``on_eval`` (every evaluation record, e.g. a
    :class:`~xmcviz.hooks.MetricsLog` for live figures) and ``close``: hooks that observe
    training steps are refused, the step here has no model, positives or sampled negatives of
    the multi-label trainer.  :meth:`train` returns the last record.  Records (also the lines
    of ``out/metrics.jsonl``): ``step``, ``epoch``, ``time_s`` (training wall-clock,
    evaluation excluded), ``fit_s``, ``loss`` (mean since the last record), ``acc``,
    ``loglik``, ``acc_raw``, ``loglik_raw``, ``acc_aux``, ``loglik_aux``, ``eval_s``.
    Evaluations run at step 0, every ``eval_every_steps`` and every epoch end.  Runs are short
    and not checkpointed: ``out`` is refused when it holds a run, unless ``overwrite``.
    """

    resumable = False
    eval_at_start = True

    def __init__(self, config: SoftmaxConfig, dataset: Any = None,
                 hooks: Iterable[Hook] = ()) -> None:
        config.validate()
        self._setup(config, dataset, hooks)
        for h in self.hooks:
            steps = [m for m in _STEP_MOMENTS if getattr(type(h), m) is not getattr(Hook, m)]
            if steps:
                raise ValueError(f"hook {h.name!r} observes training steps ({', '.join(steps)}): "
                                 f"not supported by the first-label softmax setting, which "
                                 f"publishes on_train_start and on_eval only")
        self._open_checkpoint()  # a wrong out fails before the tree is fitted
        ds = self.dataset
        self.X_train = sp.csr_matrix(ds.X_train, dtype=np.float32)
        self.X_test = sp.csr_matrix(ds.X_test, dtype=np.float32)
        self.num_labels, self.num_features = int(ds.num_labels), int(self.X_train.shape[1])
        check_int("num_labels", self.num_labels, 2)
        self.train_rows, self.train_y = first_labels(ds.Y_train)
        test_rows, self.test_y = first_labels(ds.Y_test)
        if self.train_rows.size == 0 or test_rows.size == 0:
            raise ValueError("the dataset needs labelled training and test rows")
        self.X_test_lab = self.X_test[test_rows]
        self.num_train = int(self.train_rows.size)  # the epochs go through the labelled rows
        self.steps_per_epoch = steps_per_epoch(self.num_train, config.batch_size)
        # Which row of the training set holds each first label (for the proposals' log q).
        self.y_of_row = torch.full((self.X_train.shape[0],), -1, dtype=torch.int64, device=self.device)
        self.y_of_row[torch.as_tensor(self.train_rows, device=self.device)] = torch.as_tensor(
            self.train_y, device=self.device)

        self.fit_s = 0.0
        self.proposal = self._build_proposal()
        # log q of each training row's (fixed) first label, once: train_step indexes it.
        self.log_q_first = self._first_label_log_q()
        L, D = self.num_labels, self.num_features
        self.W = torch.zeros((L, D), dtype=torch.float32, device=self.device)
        self.b = torch.zeros(L, dtype=torch.float32, device=self.device)
        if config.sampler == "nce":
            # NCE predicts with xi itself, whose fixed point log p(y|x) is < 0.  From xi = 0, a
            # label the noise rarely proposes barely moves (its gradient is ~q) and outranks all
            # labels that did learn; start every label at a featureless model's log p instead.
            f = np.bincount(self.train_y, minlength=L) + 1.0  # add-one: every label finite
            self.b.copy_(torch.as_tensor(np.log(f / f.sum()), dtype=torch.float32))
        self.W_acc, self.b_acc = torch.zeros_like(self.W), torch.zeros_like(self.b)
        self._aux: dict[str, float] = {}
        self._test_log_q: torch.Tensor | Callable | None = None

    def _build_proposal(self) -> Proposal:
        c = self.config
        if c.sampler in ("uniform", "full"):  # full samples nothing: q only for acc_aux
            return UniformProposal(self.num_labels, self.device)
        if c.sampler == "frequency":
            return FrequencyProposal(np.bincount(self.train_y, minlength=self.num_labels), self.device)
        k = check_int("adv_dims", c.adv_dims, 1, min(self.X_train.shape))
        t0 = time.perf_counter()
        s = fit_adversarial_sampler(self.X_train, sp.csr_matrix(self.dataset.Y_train), 1, k=k,
                                    pairs="first", seed=c.seed, device=self.device)
        self.fit_s = time.perf_counter() - t0
        return TreeProposal(s)

    def _first_label_log_q(self, chunk: int = 65536) -> torch.Tensor:
        """float32 [N]: log q(first label | row) of every labelled training row (0 elsewhere)."""
        out = torch.zeros(self.X_train.shape[0], dtype=torch.float32, device=self.device)
        rows = torch.as_tensor(self.train_rows, dtype=torch.int64, device=self.device)
        for s in range(0, rows.shape[0], chunk):
            r = rows[s:s + chunk]
            out[r] = self.proposal.log_prob(r, self.y_of_row[r]).float()
        return out

    # ------------------------------------------------------------------------------ steps
    def _batch(self, rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        Xb = self.X_train[rows]
        dev = self.device
        nnz_row = torch.as_tensor(np.repeat(np.arange(len(rows)), np.diff(Xb.indptr)), device=dev)
        return (nnz_row, torch.as_tensor(Xb.indices, dtype=torch.int64, device=dev),
                torch.as_tensor(Xb.data, dtype=torch.float32, device=dev))

    def train_step(self, rows: np.ndarray) -> float:
        """One Adagrad step on the training rows ``rows`` (dataset row ids); returns the loss."""
        c = self.config
        nnz_row, nnz_col, nnz_val = self._batch(rows)
        rows_t = torch.as_tensor(rows, dtype=torch.int64, device=self.device)
        y = self.y_of_row[rows_t]
        if c.sampler == "full":
            return self._full_step(nnz_row, nnz_col, nnz_val, y)
        neg, lq_neg = self.proposal.sample(rows_t, self.generator)
        labels = torch.stack([y, neg], 1)
        log_q = torch.stack([self.log_q_first[rows_t], lq_neg.float()], 1)
        lab = labels[nnz_row]                                               # [nnz, 2]
        xi = sparse_pair_scores(self.W, self.b, nnz_row, nnz_col, nnz_val, labels, lab)
        loss, dxi = pair_loss(xi, log_q, c.sampler, c.reg)
        dxi = dxi / len(rows)  # the mean loss of the batch
        keys = (lab * self.num_features + nnz_col[:, None]).reshape(-1)
        grads = (dxi[nnz_row] * nnz_val[:, None]).reshape(-1)
        _adagrad_(self.W, self.W_acc, keys, grads, c.lr)
        _adagrad_(self.b, self.b_acc, labels.reshape(-1), dxi.reshape(-1), c.lr)
        return float(loss.mean())

    def _full_step(self, nnz_row: torch.Tensor, nnz_col: torch.Tensor, nnz_val: torch.Tensor,
                   y: torch.Tensor) -> float:
        """Adagrad on the mean full-softmax cross-entropy of the batch (labels ``y`` [B]).

        Only the columns of W whose feature occurs in the batch get a gradient, so the step
        works on those U columns ([L, U]: gathering and updating them dominates at large L);
        the batch stays sparse (O(nnz L) products).
        """
        cols, inv = torch.unique(nnz_col, return_inverse=True)
        B, U = y.shape[0], cols.shape[0]
        x = torch.sparse_coo_tensor(torch.stack([nnz_row, inv]), nnz_val, (B, U),
                                    check_invariants=False).coalesce()  # valid by construction
        Wc = self.W[:, cols]                                                # [L, U] (a copy)
        # sparse.mm is several times faster on a contiguous dense factor than on Wc.T's view.
        logp = torch.log_softmax(torch.sparse.mm(x, Wc.T.contiguous()) + self.b, 1)  # [B, L]
        loss = -logp.gather(1, y[:, None])[:, 0]
        d = logp.exp()
        d[torch.arange(B, device=self.device), y] -= 1.0                   # softmax - one-hot
        d /= B                                                              # the mean loss
        gW, gb = torch.sparse.mm(x.t(), d).T, d.sum(0)                      # [L, U], [L]
        acc = self.W_acc.index_select(1, cols).addcmul_(gW, gW)
        self.W_acc.index_copy_(1, cols, acc)
        self.W.index_copy_(1, cols, Wc - self.config.lr * gW / (acc.sqrt() + _ADAGRAD_EPS))
        self.b_acc += gb * gb
        self.b -= self.config.lr * gb / (self.b_acc.sqrt() + _ADAGRAD_EPS)
        return float(loss.mean())

    def _step(self, rows: np.ndarray) -> float:
        t0 = time.perf_counter()
        loss = self.train_step(rows)
        seconds = time.perf_counter() - t0
        self._check_finite(loss)
        self._advance(loss, seconds)
        return loss

    # ------------------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, float]:
        """``acc``/``loglik`` of the method's predictor, ``_raw`` of ``xi``, ``_aux`` of q alone."""
        X, y, rb = self.X_test_lab, self.test_y, self.config.eval_batch_size
        WT = self.W.T.contiguous()  # once per evaluation, not per block
        score = lambda Xb: torch.sparse.mm(csr_to_torch(Xb, self.device), WT) + self.b  # noqa: E731
        if self._test_log_q is None:  # the proposal is fixed: log q of the test set once
            small = X.shape[0] * self.num_labels <= (1 << 26)  # else recomputed per block
            self._test_log_q = self.proposal.log_prob_all(X) if small else self.proposal.log_prob_all
            zero = lambda Xb: torch.zeros((Xb.shape[0], self.num_labels), device=self.device)  # noqa: E731
            self._aux = evaluate_first_label(zero, X, y, {"_aux": self._test_log_q}, row_batch=rb)
        # The method's predictor: xi + log q for negative sampling (uniform: a constant, skipped),
        # xi for NCE and the full softmax.
        debias = self.config.sampler in ("adversarial", "frequency")
        out = evaluate_first_label(score, X, y, {"_raw": None, **({"": self._test_log_q} if debias else {})},
                                   row_batch=rb)
        if not debias:
            out.update(acc=out["acc_raw"], loglik=out["loglik_raw"])
        return {"acc": out["acc"], "loglik": out["loglik"], "acc_raw": out["acc_raw"],
                "loglik_raw": out["loglik_raw"], **self._aux}

    def _record_extra(self) -> dict:
        return {"fit_s": self.fit_s}

    def _resolved(self) -> dict:
        return {"device": str(self.device), "num_labels": self.num_labels,
                "num_features": self.num_features, "train_rows": int(self.train_rows.size),
                "test_rows": int(self.test_y.size), "steps_per_epoch": self.steps_per_epoch,
                "fit_s": self.fit_s, "dataset": getattr(self.dataset, "name", None)}
