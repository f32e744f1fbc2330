"""First-label softmax setting (xmcviz.softmax.trainer): losses, bias removal, metrics, CLI, determinism."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from xmcviz.cli import main
from xmcviz.data.dataset import Dataset
from xmcviz.softmax.trainer import (PAIR_METHODS, SOFTMAX_METHODS, SoftmaxConfig, SoftmaxTrainer,
                                    evaluate_first_label, pair_loss, sparse_pair_scores)


def _toy_dataset(n_train=600, n_test=200, contexts=6, L=10, seed=0) -> Dataset:
    """One-hot contexts (plus a constant feature) with a known p(y | context)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (contexts, L))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)

    def split(n):
        c = rng.integers(0, contexts, n)
        y = np.array([rng.choice(L, p=p[ci]) for ci in c])
        X = sp.csr_matrix((np.ones(2 * n, np.float32), (np.repeat(np.arange(n), 2),
                           np.stack([c, np.full(n, contexts)], 1).ravel())), shape=(n, contexts + 1))
        Y = sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), y)), shape=(n, L))
        return X, Y
    Xtr, Ytr = split(n_train)
    Xte, Yte = split(n_test)
    return Dataset(Xtr, Ytr, Xte, Yte, name="toy")


@pytest.fixture(scope="module")
def toy() -> Dataset:
    return _toy_dataset()


def _cfg(**kw) -> SoftmaxConfig:
    base = dict(sampler="adversarial", epochs=2, batch_size=32, adv_dims=3, device="cpu", progress=False)
    return SoftmaxConfig(**{**base, **kw})


# ------------------------------------------------------------------------------ the losses
@pytest.mark.parametrize("method", PAIR_METHODS)
@pytest.mark.parametrize("reg", [0.0, 0.3])
def test_pair_loss_matches_autograd(method, reg):
    g = torch.Generator().manual_seed(1)
    xi = torch.randn(9, 2, generator=g, dtype=torch.float64, requires_grad=True)
    lq = -torch.rand(9, 2, generator=g, dtype=torch.float64) * 5
    h = xi - lq if method == "nce" else xi
    ref = -F.logsigmoid(h[:, 0]) - F.logsigmoid(-h[:, 1])
    if method == "adversarial":
        ref = ref + reg * ((xi + lq) ** 2).sum(1)
    (gref,) = torch.autograd.grad(ref.sum(), xi)
    loss, grad = pair_loss(xi.detach(), lq, method, reg)
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(grad, gref)


def _sparse_case():
    """7 labels, 11 features, 5 sparse rows with 2 labels each, as sparse_pair_scores takes them."""
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(7, 11, generator=g), torch.randn(7, generator=g)
    X = sp.random(5, 11, density=0.3, random_state=0, format="csr", dtype=np.float32)
    labels = torch.randint(0, 7, (5, 2), generator=g)
    row = torch.as_tensor(np.repeat(np.arange(5), np.diff(X.indptr)))
    col, val = torch.as_tensor(X.indices, dtype=torch.int64), torch.as_tensor(X.data)
    return W, b, X, labels, row, col, val


def test_sparse_scores_match_dense():
    W, b, X, labels, row, col, val = _sparse_case()
    xi = sparse_pair_scores(W, b, row, col, val, labels)
    dense = torch.as_tensor(X.toarray())
    ref = torch.einsum("bd,bjd->bj", dense, W[labels]) + b[labels]
    torch.testing.assert_close(xi, ref)


def test_pair_loss_refuses_the_full_softmax():
    with pytest.raises(ValueError, match="full"):
        pair_loss(torch.zeros(2, 2), torch.zeros(2, 2), "full")


def test_full_step_is_dense_adagrad_on_cross_entropy(toy):
    """sampler="full": torch.optim.Adagrad on the mean softmax cross-entropy over all labels."""
    tr = SoftmaxTrainer(_cfg(sampler="full", lr=0.1), dataset=toy)
    W = torch.randn_like(tr.W) * 0.1
    tr.W.copy_(W)
    Wd, bd = W.clone().requires_grad_(True), torch.zeros_like(tr.b).requires_grad_(True)
    opt = torch.optim.Adagrad([Wd, bd], lr=0.1)
    for step in range(3):
        rows = tr.train_rows[step * 32:(step + 1) * 32]
        x = torch.as_tensor(toy.X_train[rows].toarray())
        loss = F.cross_entropy(x @ Wd.T + bd, tr.y_of_row[torch.as_tensor(rows)])
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert tr.train_step(rows) == pytest.approx(loss.item(), rel=1e-5)
        torch.testing.assert_close(tr.W, Wd.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(tr.b, bd.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", PAIR_METHODS)
def test_train_step_is_dense_adagrad(toy, method):
    """The element-sparse step equals torch.optim.Adagrad on the dense loss (brute force)."""
    tr = SoftmaxTrainer(_cfg(sampler=method, reg=0.05, lr=0.1), dataset=toy)
    W = torch.randn_like(tr.W) * 0.1
    tr.W.copy_(W)
    Wd, bd = W.clone().requires_grad_(True), tr.b.clone().requires_grad_(True)
    opt = torch.optim.Adagrad([Wd, bd], lr=0.1)
    for step in range(3):
        rows = tr.train_rows[step * 32:(step + 1) * 32]
        state = tr.generator.get_state()
        rows_t = torch.as_tensor(rows)
        y = tr.y_of_row[rows_t]
        neg, lq_neg = tr.proposal.sample(rows_t, torch.Generator().set_state(state))
        lq = torch.stack([tr.proposal.log_prob(rows_t, y), lq_neg], 1)
        x = torch.as_tensor(toy.X_train[rows].toarray())
        labels = torch.stack([y, neg], 1)
        xi = torch.einsum("bd,bjd->bj", x, Wd[labels]) + bd[labels]
        h = xi - lq if method == "nce" else xi
        loss = -F.logsigmoid(h[:, 0]) - F.logsigmoid(-h[:, 1])
        if method == "adversarial":
            loss = loss + 0.05 * ((xi + lq) ** 2).sum(1)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        got = tr.train_step(rows)
        assert got == pytest.approx(float(loss.detach().mean()), rel=1e-5)
        torch.testing.assert_close(tr.W, Wd.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(tr.b, bd.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", SOFTMAX_METHODS)
def test_first_label_log_q_is_precomputed_bitwise(toy, method):
    """train_step reads log q of the rows' first labels from a table built once; it equals
    the per-batch proposal.log_prob bitwise, for every batch of an epoch."""
    from xmcviz.core.trainer import epoch_permutation
    tr = SoftmaxTrainer(_cfg(sampler=method), dataset=toy)
    order = tr.train_rows[epoch_permutation(0, 0, tr.train_rows.size)]
    for B in (32, 7, 1, tr.train_rows.size):
        for s in range(0, order.size, B):
            rows = torch.as_tensor(order[s:s + B])
            assert torch.equal(tr.log_q_first[rows], tr.proposal.log_prob(rows, tr.y_of_row[rows]))


def test_sparse_scores_take_the_gathered_labels():
    W, b, _, labels, row, col, val = _sparse_case()
    assert torch.equal(sparse_pair_scores(W, b, row, col, val, labels, labels[row]),
                       sparse_pair_scores(W, b, row, col, val, labels))


# ---------------------------------------------------------------------------- bias removal
def _expected_optimum(p, q, method, reg=0.0, steps=3000):
    """Minimise E_{y~p}[pos loss] + E_{y'~q}[neg loss] over free scores xi_y (Newton-free GD),
    using pair_loss's gradients: column 0 weighted by p, column 1 by q."""
    xi = torch.zeros_like(p)
    lq = torch.log(q)
    for _ in range(steps):
        _, g = pair_loss(torch.stack([xi, xi], 1), torch.stack([lq, lq], 1), method, reg)
        xi = xi - 2.0 * (p * g[:, 0] + q * g[:, 1]) / (p + q)
    return xi


def test_bias_removal_identity_on_toy_optimum():
    """Negative sampling from q: the optimum is xi = log p - log q, so softmax(xi + log q) = p;
    NCE with noise q learns xi = log p itself (docs/background.md, section "NCE")."""
    g = torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(8, generator=g, dtype=torch.float64) * 2, 0)
    q = torch.softmax(torch.randn(8, generator=g, dtype=torch.float64), 0)
    for method in ("adversarial", "frequency"):
        xi = _expected_optimum(p, q, method)
        torch.testing.assert_close(xi, torch.log(p) - torch.log(q), atol=1e-6, rtol=0)
        torch.testing.assert_close(torch.softmax(xi + torch.log(q), 0), p, atol=1e-6, rtol=0)
        assert (torch.softmax(xi, 0) - p).abs().max() > 0.05  # without bias removal: wrong
    xi = _expected_optimum(p, q, "nce")
    torch.testing.assert_close(xi, torch.log(p), atol=1e-6, rtol=0)
    # With the regulariser the optimum satisfies p (sigma - 1) + q sigma + 2 reg (p + q)(xi + log q) = 0.
    reg = 0.05
    xi = _expected_optimum(p, q, "adversarial", reg)
    s = torch.sigmoid(xi)
    torch.testing.assert_close(p * (s - 1) + q * s + 2 * reg * (p + q) * (xi + torch.log(q)),
                               torch.zeros_like(p), atol=1e-8, rtol=0)


def test_bias_removal_learned_end_to_end():
    """Frequency negatives on one context: trained scores + log q recover p (the trainer's
    ``acc``/``loglik`` use them), the raw scores do not."""
    ds = _toy_dataset(n_train=4000, n_test=400, contexts=1, L=5, seed=2)
    tr = SoftmaxTrainer(_cfg(sampler="frequency", epochs=8, batch_size=50, lr=0.3), dataset=ds)
    rec = tr.train()
    x = np.array([[1.0, 1.0]], np.float32)
    xi = torch.as_tensor(x) @ tr.W.T + tr.b
    lq = tr.proposal.log_prob_all(sp.csr_matrix(x))
    p_hat = np.bincount(tr.train_y, minlength=5) / tr.train_y.size
    np.testing.assert_allclose(torch.softmax(xi + lq, 1)[0].numpy(), p_hat, atol=0.03)
    assert rec["loglik"] > rec["loglik_raw"]


# ---------------------------------------------------------------------------- metrics
def test_metrics_match_brute_force(toy):
    tr = SoftmaxTrainer(_cfg(sampler="adversarial", epochs=1), dataset=toy)
    tr.train()
    rec = tr.evaluate()
    X = torch.as_tensor(tr.X_test_lab.toarray())
    raw = X @ tr.W.T + tr.b
    lq = tr.proposal.log_prob_all(tr.X_test_lab)
    y = torch.as_tensor(tr.test_y)
    for s, suffix in ((raw + lq, ""), (raw, "_raw"), (lq, "_aux")):
        assert rec["acc" + suffix] == pytest.approx(float((s.argmax(1) == y).double().mean()))
        ll = torch.log_softmax(s.double(), 1)[torch.arange(len(y)), y].mean()
        assert rec["loglik" + suffix] == pytest.approx(float(ll), rel=1e-6)
    # Block-wise evaluation gives the same numbers as one block.
    f = lambda Xb: torch.as_tensor(Xb.toarray()) @ tr.W.T + tr.b  # noqa: E731
    offs = {"": tr.proposal.log_prob_all, "_raw": None, "_pre": lq}
    one = evaluate_first_label(f, tr.X_test_lab, tr.test_y, offs, row_batch=10_000)
    blocks = evaluate_first_label(f, tr.X_test_lab, tr.test_y, offs, row_batch=7)
    assert one == pytest.approx(blocks)
    assert one["acc"] == pytest.approx(rec["acc"]) and one["loglik"] == pytest.approx(rec["loglik"])
    assert one["acc_pre"] == one["acc"] and one["loglik_raw"] == pytest.approx(rec["loglik_raw"])


def test_aux_model_starts_adversarial_ahead(toy):
    """At step 0 (xi = 0) the adversarial predictor is the tree itself; NCE predicts with xi,
    which starts at the log of the (add-one) first-label frequencies, a featureless log p."""
    adv = SoftmaxTrainer(_cfg(sampler="adversarial"), dataset=toy).evaluate()
    assert adv["acc"] == adv["acc_aux"] and adv["loglik"] == pytest.approx(adv["loglik_aux"])
    tr = SoftmaxTrainer(_cfg(sampler="nce"), dataset=toy)
    nce = tr.evaluate()
    f = np.bincount(tr.train_y, minlength=10) + 1.0
    torch.testing.assert_close(tr.b, torch.as_tensor(np.log(f / f.sum()), dtype=torch.float32))
    assert nce["acc"] == nce["acc_raw"]
    assert nce["loglik"] == pytest.approx(float(np.log(f / f.sum())[tr.test_y].mean()), rel=1e-5)


# ---------------------------------------------------------------------- determinism, runs
def test_deterministic_and_seeded(toy):
    def run(seed):
        h = SoftmaxTrainer(_cfg(seed=seed, eval_every_steps=5), dataset=toy)
        h.train()
        return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in h.history], h.W.clone()
    a, Wa = run(0)
    b, Wb = run(0)
    c, Wc = run(1)
    assert a == b and torch.equal(Wa, Wb)
    assert not torch.equal(Wa, Wc)
    assert [r["step"] for r in a] == [0, 5, 10, 15, 19, 20, 25, 30, 35, 38]


def test_validation_and_run_directory(toy, tmp_path):
    with pytest.raises(ValueError, match="sampler='mips-s'"):
        SoftmaxConfig(sampler="mips-s").validate()
    with pytest.raises(ValueError, match="lr=0"):
        SoftmaxConfig(lr=0).validate()
    with pytest.raises(ValueError, match="adv_dims"):
        SoftmaxTrainer(_cfg(adv_dims=50), dataset=toy)
    out = tmp_path / "run"
    tr = SoftmaxTrainer(_cfg(sampler="uniform", out=str(out)), dataset=toy)
    last = tr.train()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["acc"] == last["acc"] and lines[0]["step"] == 0
    assert json.loads((out / "config.json").read_text())["first_label_only"] is True
    with pytest.raises(ValueError, match="not empty"):
        SoftmaxTrainer(_cfg(sampler="uniform", out=str(out)), dataset=toy)


def test_cli(tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["train", "--data", "synthetic:tiny", "--first-label-only", "--sampler", "full",
               "--epochs", "1", "--no-progress", "--out", str(out)])
    assert rc == 0
    rec = json.loads(capsys.readouterr().out)
    assert {"acc", "loglik", "acc_raw", "loglik_raw", "acc_aux"} <= set(rec)
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == SoftmaxConfig().lr and config["sampler"] == "full"
    for argv, msg in ((["--sampler", "mips-s"], "sampler='mips-s'"), (["--reg", "-1"], "reg=-1"),
                      (["--resume", "--out", str(out)], "resume"), (["--adv-dims", "0"], "adv_dims=0")):
        assert main(["train", "--data", "synthetic:tiny", "--first-label-only", *argv]) == 2
        assert msg in capsys.readouterr().err
    assert main(["train", "--data", "synthetic:tiny", "--sampler", "nce"]) == 2  # softmax-only
    assert "sampler='nce'" in capsys.readouterr().err


def test_snr_comparison(toy):
    """Same probe and seed for every proposal; matches gradient_snr called directly."""
    from xmcviz.softmax.proposals import UniformProposal
    from xmcviz.softmax.snr import as_snr_proposal, snr_comparison
    from xmcviz.softmax.gradient_snr import gradient_snr
    tr = SoftmaxTrainer(_cfg(sampler="adversarial"), dataset=toy)
    tr.train()
    recs = {r["sampler"]: r for r in snr_comparison(tr, probe_size=64, num_draws=32)}
    assert set(recs) == {"uniform", "frequency", "adversarial"}
    assert recs["adversarial"]["reg"] == tr.config.reg and recs["uniform"]["reg"] == 0
    assert all(0 < r["snr"] < math.inf for r in recs.values())
    again = {r["sampler"]: r for r in snr_comparison(tr, probe_size=64, num_draws=32)}
    assert again == recs
    # Uniform draws depend only on the generator: the direct call must agree exactly.
    rows = torch.as_tensor(np.sort(tr.train_rows[np.random.default_rng(0).choice(
        tr.train_rows.size, 64, replace=False)]))
    direct = gradient_snr(tr.W, tr.b, torch.as_tensor(toy.X_train[rows.numpy()].toarray()),
                          tr.y_of_row[rows], as_snr_proposal(UniformProposal(10), rows), 32,
                          generator=torch.Generator().manual_seed(0))
    assert recs["uniform"]["total_variance"] == pytest.approx(direct.total_variance, rel=1e-9)
    assert recs["uniform"]["snr"] == pytest.approx(direct.snr, rel=1e-9)


# ------------------------------------------------------------------ the shared training loop
def test_hooks_see_the_run_and_every_record(toy):
    """The loop of xmcviz.core.loop publishes through the hooks' channel, as for Trainer."""
    from xmcviz.hooks import MetricsLog
    from xmcviz.hooks.base import Hook

    class Seen(Hook):
        name = "seen"

        def __init__(self):
            super().__init__()
            self.calls = []

        def on_train_start(self, run):
            self.calls.append(("start", run.num_labels, run.steps_per_epoch))

        def on_eval(self, record):
            self.calls.append(("eval", record["step"]))

        def close(self):
            self.calls.append(("close",))

    seen, log, published = Seen(), MetricsLog(), []
    log.subscribe(published.append)
    tr = SoftmaxTrainer(_cfg(sampler="uniform", eval_every_steps=5), dataset=toy, hooks=[seen, log])
    tr.train()
    steps = [0, 5, 10, 15, 19, 20, 25, 30, 35, 38]
    assert seen.calls == [("start", 10, 19), *(("eval", s) for s in steps), ("close",)]
    assert published == tr.history


def test_step_hooks_are_refused(toy):
    from xmcviz.hooks import make_hooks
    with pytest.raises(ValueError, match="hook 'grad' observes training steps"):
        SoftmaxTrainer(_cfg(), dataset=toy, hooks=make_hooks("grad:2"))


def test_divergence_names_the_step_and_keeps_the_log(toy, tmp_path):
    from xmcviz.core.loop import TrainingDiverged
    out = tmp_path / "run"
    tr = SoftmaxTrainer(_cfg(sampler="uniform", out=str(out)), dataset=toy)
    tr.train_step = lambda rows: float("nan")
    with pytest.raises(TrainingDiverged, match=r"loss=nan at step 0 \(epoch 0, batch 0 .*metrics\.jsonl"):
        tr.train()
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [0]
    with pytest.raises(RuntimeError, match="already called on this SoftmaxTrainer"):
        tr.train()
