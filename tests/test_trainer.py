import dataclasses
import json

import numpy as np
import pytest
import torch

from xmcviz import data
from xmcviz.hooks.base import Hook
from xmcviz.core.evaluate import evaluate, inv_propensity
from xmcviz.core.rundir import RunDirNotEmpty, read_jsonl
from xmcviz.samplers import UniformSampler, make_sampler
from xmcviz.core.trainer import TrainConfig, Trainer, TrainingDiverged, epoch_permutation

TIMING = ("time_s", "eval_s")




@pytest.fixture(scope="module")
def tiny():
    return data.synthetic("tiny", seed=0)  # 1000 train rows, 300 features, 64 labels


def _cfg(**kw) -> TrainConfig:
    base = dict(model="mlp", hidden=32, sampler="uniform", negatives=10, batch_size=64,
                epochs=3, lr=0.01, seed=0, device="cpu", progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kw, named", [
    (dict(sampler="mips-s", negatives=10, mips_k=11), "mips_k=11"),
    (dict(sampler="mips-s", clusters=8, nprobe=9), "nprobe=9"),
    (dict(sampler="mips-a", nprobe=9), "nprobe=9"),          # K defaults to sqrt(64) = 8
    (dict(negatives=64), "negatives=64"),                      # R >= L
    (dict(sampler="bogus"), "sampler='bogus'"),
    (dict(model="cnn"), "model='cnn'"),
    (dict(lr=0.0), "lr=0.0"),
    (dict(lr=-1e-3), "lr=-0.001"),
    (dict(batch_size=0), "batch_size=0"),
    (dict(epochs=0), "epochs=0"),
    (dict(dropout=1.0), "dropout=1.0"),
    (dict(eta_ratio=-2.0), "eta_ratio=-2.0"),
    (dict(warmup_epochs=5), "warmup_epochs=5"),
    (dict(eval_ks=(1, 100)), "eval k=100"),
    (dict(refresh_every=3, refreshes_per_epoch=2), "refresh_every=3"),
    (dict(refreshes_per_epoch=17), "refreshes_per_epoch=17"),  # 16 steps per epoch
    (dict(device="tpu"), "device='tpu'"),
])
def test_bad_settings_fail_before_training(tiny, kw, named):
    with pytest.raises(ValueError, match="allowed|give at most one|supported") as e:
        Trainer(_cfg(**kw), tiny)
    assert named in str(e.value)


def test_validate_without_data_checks_what_it_can():
    _cfg().validate()
    with pytest.raises(ValueError, match=r"mips_k=7 is out of range: allowed \[1, 5\]"):
        _cfg(sampler="mips-s", negatives=5, mips_k=7).validate()


# --------------------------------------------------------------------------- recording hook
class Recorder(Hook):
    name = "recorder"

    def __init__(self, every=1, raise_at=None, poison_at=None):
        super().__init__(every)
        self.events = []
        self.raise_at, self.poison_at = raise_at, poison_at
        self.closed = 0
        self.run = None

    def on_train_start(self, run):
        self.run = run
        self.events.append(("start",))

    def before_update(self, ctx):
        if ctx.step == self.raise_at:
            raise KeyboardInterrupt
        m = ctx.model
        self.events.append(("before", ctx.step, ctx.epoch, ctx.step_in_epoch))
        self.last = dict(
            step=ctx.step, loss=ctx.loss, rows=ctx.rows.clone(), emb=ctx.emb.clone(),
            pos=ctx.positives, neg=ctx.negatives, pos_scores=ctx.pos_scores.clone(),
            neg_scores=ctx.neg_scores.clone(), W=m.W.detach().clone(), sampler=ctx.sampler,
            pos_model=m.score(ctx.emb, ctx.positives.ids).detach(),
            neg_model=m.score(ctx.emb, ctx.negatives.ids).detach(),
            ssr=ctx.steps_since_refresh)
        self.on_before(ctx)

    def on_before(self, ctx):
        pass

    def after_update(self, ctx):
        self.events.append(("after", ctx.step))
        if ctx.step == self.poison_at:
            with torch.no_grad():
                ctx.model.W.fill_(float("inf"))
        self.on_after(ctx)

    def on_after(self, ctx):
        pass

    def on_refresh(self, info):
        self.events.append(("refresh", info["step"], info["epoch"]))

    def on_eval(self, record):
        self.events.append(("eval", record))

    def close(self):
        self.closed += 1


def test_hooks_see_consistent_steps_scores_refreshes_and_evals(tiny, tmp_path):
    checks = []

    class Checker(Recorder):
        def on_before(self, ctx):
            r = self.last
            B = ctx.emb.shape[0]
            assert r["emb"].shape == (B, 32)
            # scores handed to hooks = the model's scores of those ids (before the update)
            torch.testing.assert_close(r["pos_scores"], r["pos_model"])
            torch.testing.assert_close(r["neg_scores"], r["neg_model"])
            # positives are the batch rows' labels; no positive is an unmasked negative
            Y = tiny.Y_train[r["rows"].numpy()].toarray().astype(bool)
            got = np.zeros_like(Y)
            p = r["pos"]
            rr, cc = p.mask.nonzero(as_tuple=True)
            got[rr.numpy(), p.ids[rr, cc].numpy()] = True
            assert (got == Y).all()
            n = r["neg"]
            assert n.ids.shape == (B, 10)
            assert not Y[np.arange(B)[:, None].repeat(10, 1)[n.mask.numpy()],
                         n.ids[n.mask].numpy()].any()
            assert r["sampler"] is trainer.sampler
            checks.append(ctx.step)

        def on_after(self, ctx):
            assert not torch.equal(ctx.model.W, self.last["W"])  # the update happened in between

    rec, every3 = Checker(), Recorder(every=3)
    cfg = _cfg(sampler="mips-s", mips_k=3, warmup_epochs=1, refreshes_per_epoch=2,
               eval_every_steps=10, out=str(tmp_path / "run"))
    trainer = Trainer(cfg, tiny, hooks=[rec, every3])
    final = trainer.train()
    spe = trainer.steps_per_epoch
    total = 3 * spe
    assert checks == list(range(total))
    assert rec.run.steps_per_epoch == spe and rec.run.resume_step is None
    assert rec.run.run_dir == tmp_path / "run" and rec.run.num_labels == 64
    befores = [e for e in rec.events if e[0] == "before"]
    assert [e[1] for e in befores] == list(range(total))
    assert [(e[2], e[3]) for e in befores] == [(s // spe, s % spe) for s in range(total)]
    assert [e[1] for e in rec.events if e[0] == "after"] == list(range(total))
    # MIPS refreshes: none during the warm-up epoch, then twice per epoch, each right
    # before the step it serves.
    refresh_at = [i for i, e in enumerate(rec.events) if e[0] == "refresh"]
    steps = [rec.events[i][1] for i in refresh_at]
    assert steps == [spe, spe + spe // 2, 2 * spe, 2 * spe + spe // 2]
    for i in refresh_at:
        assert rec.events[i + 1][:2] == ("before", rec.events[i][1])
    # on_eval gets exactly the records of metrics.jsonl; the last one is returned
    evals = [e[1] for e in rec.events if e[0] == "eval"]
    on_disk = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert evals == on_disk and evals[-1] == final
    assert [r["step"] for r in on_disk] == sorted({10, 20, 30, 40, spe, 2 * spe, 3 * spe})
    for r in on_disk:
        for key in ("epoch", "step", "time_s", "loss", "P@1", "P@3", "P@5", "nDCG@5",
                    "PSP@1", "PSP@3", "PSP@5"):
            assert key in r
    # `every` respected
    assert [e[1] for e in every3.events if e[0] == "before"] == list(range(0, total, 3))
    assert rec.closed == 1 and every3.closed == 1


def test_metrics_loss_is_mean_training_loss_since_last_eval(tiny):
    losses = []

    class L(Recorder):
        def on_before(self, ctx):
            losses.append(ctx.loss)

    t = Trainer(_cfg(epochs=2, eval_every_steps=5), tiny, hooks=[L()])
    t.train()
    prev = 0
    for r in t.history:
        chunk = losses[prev:r["step"]]
        assert r["loss"] == pytest.approx(sum(chunk) / len(chunk), rel=1e-12)
        prev = r["step"]


def test_evaluate_matches_dense_scores(tiny):
    t = Trainer(_cfg(epochs=1, eval_batch_size=37), tiny)  # several eval batches
    t.train()
    m = t.model.eval()
    from xmcviz.core.trainer import csr_to_torch
    with torch.no_grad():
        scores = m.full_scores(m.embed(csr_to_torch(tiny.X_test)))
    expect = evaluate(scores, tiny.Y_test, ks=(1, 3, 5),
                      inv_propensity=inv_propensity(tiny.Y_train, 0.55, 1.5))
    got = t.evaluate()
    for k, v in expect.items():
        assert got[k] == pytest.approx(v, abs=1e-12)


# --------------------------------------------------------------------------- updates
@pytest.mark.parametrize("sparse", [True, False])
def test_row_sparse_updates(tiny, sparse):
    seen = {"outside_moved": 0, "steps": 0}

    class Rows(Recorder):
        def on_after(self, ctx):
            r = self.last
            in_loss = torch.zeros(64, dtype=torch.bool)
            in_loss[r["pos"].ids[r["pos"].mask]] = True
            in_loss[r["neg"].ids[r["neg"].mask]] = True
            W_after = ctx.model.W.detach()
            outside = ~in_loss
            assert outside.sum() > 0
            same = torch.equal(W_after[outside], r["W"][outside])  # bit-identical
            if sparse:
                assert same, f"step {ctx.step}: rows outside the loss moved"
            seen["outside_moved"] += int(not same)
            seen["steps"] += 1
            assert not torch.equal(W_after[in_loss], r["W"][in_loss])

    t = Trainer(_cfg(epochs=1, negatives=5, batch_size=8, sparse_updates=sparse), tiny,
                hooks=[Rows()])
    t.train()
    opts = [type(o).__name__ for o in t.optimizers]
    if sparse:
        assert opts == ["RowSparseAdam", "Adam"] and seen["outside_moved"] == 0
        assert isinstance(t.optimizers[0], torch.optim.SparseAdam)
    else:
        # dense Adam: momentum moves rows that are not in the step's loss
        assert opts == ["Adam"] and seen["outside_moved"] > seen["steps"] // 2


def test_linear_model_with_bias_trains(tiny):
    t = Trainer(_cfg(model="linear", label_bias=True, epochs=2, lr=0.05), tiny)
    final = t.train()
    first = t.history[0]
    assert tuple(t.model.W.shape) == (64, 300) and t.model.bias is not None
    assert final["P@1"] > 0.3 and final["loss"] < first["loss"]
    assert isinstance(t.optimizers[0], torch.optim.SparseAdam) and len(t.optimizers) == 1


# --------------------------------------------------------------------------- determinism / resume

def test_same_seed_same_metrics_other_seed_differs(tiny):
    runs = [Trainer(_cfg(epochs=2, eval_every_steps=7, seed=s), tiny) for s in (0, 0, 1)]
    for r in runs:
        r.train()
    assert _strip(runs[0].history) == _strip(runs[1].history)
    assert torch.equal(runs[0].model.W, runs[1].model.W)
    assert _strip(runs[0].history) != _strip(runs[2].history)


def test_epoch_permutation_depends_on_seed_and_epoch_only():
    p = epoch_permutation(3, 1, 100)
    assert np.array_equal(p, epoch_permutation(3, 1, 100))
    assert not np.array_equal(p, epoch_permutation(3, 2, 100))
    assert sorted(p) == list(range(100))


@pytest.mark.parametrize("sampler, extra", [
    ("uniform", dict()),
    ("mips-s", dict(mips_k=3, warmup_epochs=1, refreshes_per_epoch=2,
                    checkpoint_every_steps=5, eval_every_steps=6)),
])
def test_interrupted_and_resumed_run_ends_like_uninterrupted(tiny, tmp_path, sampler, extra):
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full = Trainer(_cfg(sampler=sampler, out=str(full_dir), **extra), tiny)
    expect = full.train()
    spe = full.steps_per_epoch

    stop = spe + spe // 2 + 1  # mid-epoch 2
    rec = Recorder(raise_at=stop)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_cfg(sampler=sampler, out=str(cut_dir), **extra), tiny, hooks=[rec]).train()
    assert rec.closed == 1  # hooks closed on interrupt
    logged = read_jsonl(cut_dir / "metrics.jsonl")
    assert logged and all(r["step"] <= stop for r in logged)

    # A fresh process would see only the directory: a new Trainer from the same config.
    with pytest.raises(RunDirNotEmpty, match="resume"):
        Trainer(_cfg(sampler=sampler, out=str(cut_dir), **extra), tiny)
    rec2 = Recorder()
    resumed = Trainer(_cfg(sampler=sampler, out=str(cut_dir), resume=True, **extra), tiny,
                      hooks=[rec2])
    ck_step = resumed.step
    ckpt_every = extra.get("checkpoint_every_steps")
    assert ck_step == (stop // ckpt_every * ckpt_every if ckpt_every else spe)
    got = resumed.train()
    assert rec2.run.resume_step == ck_step
    assert [e[1] for e in rec2.events if e[0] == "before"][0] == ck_step
    assert _strip([got]) == _strip([expect])
    assert _strip(read_jsonl(cut_dir / "metrics.jsonl")) == _strip(read_jsonl(full_dir /
                                                                               "metrics.jsonl"))
    assert torch.equal(resumed.model.W, full.model.W)
    cfg = json.loads((cut_dir / "config.json").read_text())
    assert cfg["resolved"]["resumed_from_step"] == ck_step and cfg["seed"] == 0
    for key in ("python", "torch", "faiss", "numpy", "device"):
        assert key in cfg["environment"]


def test_resume_refuses_changed_settings(tiny, tmp_path):
    Trainer(_cfg(epochs=1, out=str(tmp_path)), tiny).train()
    with pytest.raises(ValueError, match="lr=0.5"):
        Trainer(_cfg(epochs=2, lr=0.5, out=str(tmp_path), resume=True), tiny)
    # more epochs is fine: training continues
    t = Trainer(_cfg(epochs=2, out=str(tmp_path), resume=True), tiny)
    t.train()
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1.0, 2.0]


def test_overwrite_replaces_run(tiny, tmp_path):
    Trainer(_cfg(epochs=1, out=str(tmp_path)), tiny).train()
    with pytest.raises(RunDirNotEmpty, match="not empty"):
        Trainer(_cfg(epochs=1, out=str(tmp_path)), tiny)
    Trainer(_cfg(epochs=1, seed=1, out=str(tmp_path), overwrite=True), tiny).train()
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 1
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 1


# --------------------------------------------------------------------------- divergence
def test_nan_loss_stops_with_step_and_keeps_log(tiny, tmp_path):
    rec = Recorder(poison_at=4)
    t = Trainer(_cfg(eval_every_steps=2, out=str(tmp_path)), tiny, hooks=[rec])
    with pytest.raises(TrainingDiverged, match=r"step 5 \(epoch 0") as e:
        t.train()
    assert "loss=" in str(e.value)
    assert rec.closed == 1
    logged = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in logged] == [2, 4]
    assert (tmp_path / "metrics.jsonl").read_text().endswith("\n")


def test_custom_model_and_sampler_objects(tiny):
    from xmcviz.core.models import XMCModel

    class Enc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(300, 16)

        def forward(self, x):
            return torch.tanh(torch.sparse.mm(x, self.lin.weight.T) + self.lin.bias)

    torch.manual_seed(0)
    model = XMCModel(Enc(), 64, 16)
    cfg = dataclasses.replace(_cfg(epochs=1), model="my-encoder")
    t = Trainer(cfg, tiny, model=model, sampler=UniformSampler(64, 10))
    rec = t.train()
    assert t.model is model and rec["P@1"] > 0
    assert [type(o).__name__ for o in t.optimizers] == ["RowSparseAdam", "Adam"]


def test_full_sampler_runs_through_the_same_path(tiny):
    t = Trainer(_cfg(sampler="full", epochs=3), tiny)
    assert isinstance(t.sampler, type(make_sampler("full", num_labels=64, num_negatives=63)))
    rec = t.train()
    # all 64 labels in every row's loss: slower start than uniform, but it learns
    assert t.history[0]["loss"] > rec["loss"] and rec["P@1"] > 0.2
