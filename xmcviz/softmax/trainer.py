"""The adversarial paper's own setting: softmax classification of each row's first label.

Bamler & Mandt (ICLR 2020; SPEC section 4) reduce a multi-label dataset to multi-class
classification on the first label of each row (the smallest label id, as in
:func:`xmcviz.samplers.adversarial.training_pairs`), train linear scores
``xi_y(x) = x . w_y + b_y`` with ONE negative ``y' ~ q(.|x)`` per positive ``(x, y)``, and
compare proposals q:

- ``adversarial``: q = the auxiliary tree p_n(y|x); loss
  ``-log sigma(xi_y) - log sigma(-xi_y') + reg [(xi_y + log q(y|x))^2 + (xi_y' + log q(y'|x))^2]``;
- ``uniform`` / ``frequency``: plain negative sampling, the same loss with ``reg = 0``;
- ``nce``: noise-contrastive estimation with the same tree as noise distribution: the logits
  are ``h = xi - log(R q)`` (R = 1), loss ``-log sigma(h_y) - log sigma(-h_y')``.

At the optimum of negative sampling ``xi = log p(y|x) - log q(y|x)`` (+ a per-row constant),
so the method's predictor is ``xi + log q`` (*bias removal*; a constant for uniform), while
NCE learns ``xi = log p(y|x)`` directly and predicts with ``xi``.  Every evaluation reports
the method's predictor (``acc``, ``loglik``), the plain scores ``xi`` (``acc_raw``,
``loglik_raw``) and the proposal alone (``acc_aux``, ``loglik_aux``: the auxiliary model's own
accuracy for the tree).  ``acc`` = P@1 against the first label; ``loglik`` = the mean over test
rows of ``log softmax(scores)[first label]`` over all L labels (rows without labels skipped).

Optimisation is Adagrad (lr 0.01, reg 1e-3 by default) on the mean loss of a batch, applied
*element-sparse*: gradients live only on the entries ``W[y, j]`` with ``x_j != 0`` of the
labels in the loss (and their biases), which is exactly dense Adagrad, since an Adagrad step
with a zero gradient leaves a parameter and its accumulator unchanged.  A step costs
O(nnz(batch) log nnz), independent of L.  W is stored dense ([L, D], plus its accumulator).
Deterministic on CPU for a seed (epoch order from ``(seed, epoch)``, draws from a seeded
``torch.Generator``).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from .proposals import FrequencyProposal, Proposal, TreeProposal, UniformProposal
from ..samplers.adversarial.tree import training_pairs
from ..core.rundir import JsonlWriter, RunDir, environment_info
from ..validation import check_choice, check_float, check_int

__all__ = ["SOFTMAX_METHODS", "SoftmaxConfig", "SoftmaxTrainer", "pair_loss", "sparse_pair_scores",
           "first_labels", "evaluate_first_label"]

SOFTMAX_METHODS = ("adversarial", "uniform", "frequency", "nce")
_ADAGRAD_EPS = 1e-10  # torch.optim.Adagrad's default


@dataclass
class SoftmaxConfig:
    """Settings of a first-label softmax run (written to ``config.json``).

    ``sampler``: one of :data:`SOFTMAX_METHODS`; ``lr`` (Adagrad), ``reg`` (lambda of the
    adversarial regulariser), ``batch_size`` (positives per step, one negative each),
    ``epochs``, ``seed``; ``adv_dims`` (PCA dims k of the tree, adversarial and NCE);
    ``eval_every_steps`` (besides step 0 and every epoch end), ``eval_batch_size``;
    ``device`` (``auto`` = CUDA when present), ``out`` (run directory or None), ``overwrite``,
    ``progress``.  Data as in :class:`xmcviz.core.trainer.TrainConfig`.
    """

    data: str | None = None
    train: str | None = None
    test: str | None = None
    data_seed: int = 0
    sampler: str = "adversarial"
    lr: float = 0.01
    reg: float = 1e-3
    batch_size: int = 256
    epochs: int = 5
    seed: int = 0
    adv_dims: int = 16
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
        from ..core.trainer import resolve_device
        check_choice("sampler", self.sampler, SOFTMAX_METHODS)
        check_float("lr", self.lr, 0.0, low_inclusive=False)
        check_float("reg", self.reg, 0.0)
        check_int("batch_size", self.batch_size, 1)
        check_int("epochs", self.epochs, 1)
        check_int("seed", self.seed, 0)
        check_int("data_seed", self.data_seed, 0)
        check_int("adv_dims", self.adv_dims, 1)
        check_int("eval_batch_size", self.eval_batch_size, 1)
        if self.eval_every_steps is not None:
            check_int("eval_every_steps", self.eval_every_steps, 1)
        resolve_device(self.device)
        if self.data is not None and (self.train is not None or self.test is not None):
            raise ValueError(f"data={self.data!r} and train/test files both set: give one")
        if self.data is None and (self.train is None) != (self.test is None):
            raise ValueError(f"train={self.train!r}, test={self.test!r}: give both files")
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
    check_choice("method", method, SOFTMAX_METHODS)
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
class SoftmaxTrainer:
    """Train and evaluate the first-label softmax setting (see the module docstring).

    ``SoftmaxTrainer(config, dataset=None)`` loads the data (``config.data`` ...), keeps the
    rows with at least one label, fits the tree (``adversarial``, ``nce``; its time is
    ``fit_s``) and validates everything before training.  :meth:`subscribe` registers a
    callback that receives every evaluation record (for live plots); :meth:`train` returns
    the last record.  Records (also the lines of ``out/metrics.jsonl``): ``step``, ``epoch``,
    ``time_s`` (training wall-clock, evaluation excluded), ``loss`` (mean since the last
    record), ``acc``, ``loglik``, ``acc_raw``, ``loglik_raw``, ``acc_aux``, ``loglik_aux``,
    ``eval_s``.  Evaluations run at step 0, every ``eval_every_steps`` and every epoch end.
    """

    def __init__(self, config: SoftmaxConfig, dataset: Any = None) -> None:
        from ..core.trainer import Trainer, resolve_device, steps_per_epoch
        self.config = config.validate()
        self.device = resolve_device(config.device)
        self.dataset = dataset if dataset is not None else Trainer._load_data(config)
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
        self.steps_per_epoch = steps_per_epoch(self.train_rows.size, config.batch_size)
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
        self.W_acc, self.b_acc = torch.zeros_like(self.W), torch.zeros_like(self.b)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(config.seed)
        self.step, self.time_s, self.history = 0, 0.0, []
        self._loss_sum, self._loss_count = 0.0, 0
        self._aux: dict[str, float] = {}
        self._test_log_q: torch.Tensor | Callable | None = None
        self._callbacks: list[Callable[[dict], None]] = []
        self._started = False
        self.run_dir = RunDir(config.out) if config.out is not None else None
        if self.run_dir is not None:
            self.run_dir.check_free(overwrite=config.overwrite, resumable=False)

    def _build_proposal(self) -> Proposal:
        c = self.config
        if c.sampler == "uniform":
            return UniformProposal(self.num_labels, self.device)
        if c.sampler == "frequency":
            return FrequencyProposal(np.bincount(self.train_y, minlength=self.num_labels), self.device)
        from ..samplers.adversarial.sampler import fit_adversarial_sampler
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

    def subscribe(self, callback: Callable[[dict], None]) -> None:
        """Call ``callback(record)`` after every evaluation."""
        self._callbacks.append(callback)

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

    # ------------------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, float]:
        """``acc``/``loglik`` of the method's predictor, ``_raw`` of ``xi``, ``_aux`` of q alone."""
        X, y, rb = self.X_test_lab, self.test_y, self.config.eval_batch_size
        WT = self.W.T.contiguous()  # once per evaluation, not per block
        from ..core.trainer import csr_to_torch
        score = lambda Xb: torch.sparse.mm(csr_to_torch(Xb, self.device), WT) + self.b  # noqa: E731
        if self._test_log_q is None:  # the proposal is fixed: log q of the test set once
            small = X.shape[0] * self.num_labels <= (1 << 26)  # else recomputed per block
            self._test_log_q = self.proposal.log_prob_all(X) if small else self.proposal.log_prob_all
            zero = lambda Xb: torch.zeros((Xb.shape[0], self.num_labels), device=self.device)  # noqa: E731
            self._aux = evaluate_first_label(zero, X, y, {"_aux": self._test_log_q}, row_batch=rb)
        # The method's predictor: xi + log q for negative sampling (uniform: a constant, skipped),
        # xi for NCE.
        debias = self.config.sampler in ("adversarial", "frequency")
        out = evaluate_first_label(score, X, y, {"_raw": None, **({"": self._test_log_q} if debias else {})},
                                   row_batch=rb)
        if not debias:
            out.update(acc=out["acc_raw"], loglik=out["loglik_raw"])
        return {"acc": out["acc"], "loglik": out["loglik"], "acc_raw": out["acc_raw"],
                "loglik_raw": out["loglik_raw"], **self._aux}

    def _eval_and_log(self, writer: JsonlWriter | None) -> dict:
        t0 = time.perf_counter()
        m = self.evaluate()
        rec = {"epoch": round(self.step / self.steps_per_epoch, 6), "step": self.step,
               "time_s": self.time_s, "fit_s": self.fit_s,
               "loss": self._loss_sum / self._loss_count if self._loss_count else None,
               **m, "eval_s": time.perf_counter() - t0}
        self._loss_sum, self._loss_count = 0.0, 0
        self.history.append(rec)
        if writer is not None:
            writer.write(rec)
        for cb in self._callbacks:
            cb(dict(rec))
        return rec

    def train(self) -> dict:
        """Train for ``config.epochs`` epochs; returns the last evaluation record."""
        from tqdm.auto import tqdm

        from ..core.trainer import epoch_permutation
        if self._started:
            raise RuntimeError("train() was already called on this SoftmaxTrainer: build a new one")
        self._started = True
        c, writer = self.config, None
        if self.run_dir is not None:
            self.run_dir.prepare(resume=False, overwrite=c.overwrite)
            self.run_dir.write_config({**c.to_dict(), "resolved": {
                "device": str(self.device), "num_labels": self.num_labels,
                "num_features": self.num_features, "train_rows": int(self.train_rows.size),
                "test_rows": int(self.test_y.size), "steps_per_epoch": self.steps_per_epoch,
                "fit_s": self.fit_s, "dataset": getattr(self.dataset, "name", None)},
                "environment": environment_info(self.device)})
            writer = self.run_dir.metrics_writer()
        try:
            self._eval_and_log(writer)
            B = c.batch_size
            for epoch in range(c.epochs):
                order = self.train_rows[epoch_permutation(c.seed, epoch, self.train_rows.size)]
                for i in tqdm(range(self.steps_per_epoch), disable=not c.progress,
                              desc=f"epoch {epoch + 1}/{c.epochs}", unit="step"):
                    t0 = time.perf_counter()
                    loss = self.train_step(order[i * B:(i + 1) * B])
                    self.time_s += time.perf_counter() - t0
                    if not math.isfinite(loss):
                        from ..core.trainer import TrainingDiverged
                        raise TrainingDiverged(f"training diverged: loss={loss} at step {self.step}")
                    self.step += 1
                    self._loss_sum, self._loss_count = self._loss_sum + loss, self._loss_count + 1
                    last = i == self.steps_per_epoch - 1
                    if last or (c.eval_every_steps and self.step % c.eval_every_steps == 0):
                        self._eval_and_log(writer)
        finally:
            if writer is not None:
                writer.close()
        return dict(self.history[-1])
