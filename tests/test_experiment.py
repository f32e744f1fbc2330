"""Experiment (labelled runs with live figures), its views and the tour's TrainPanel."""
import json

import numpy as np
import pandas as pd
import pytest

from xmcviz.notebook import analysis; from xmcviz.notebook import plots; from xmcviz.notebook import views
from xmcviz.notebook.experiment import Experiment
from xmcviz.core.trainer import TrainConfig


def cfg(**kw):
    base = dict(data="synthetic:tiny", model="mlp", negatives=8, epochs=2, batch_size=128,
                eval_every_steps=3, device="cpu", progress=False)
    return TrainConfig(**{**base, **kw})


def test_experiment_runs_configs_and_writes_results(tmp_path):
    exp = Experiment(hooks="grad:2,ranks:2", live=False)
    exp.add_figure("P@5", views.precision)
    exp.add_figure("ratio", views.gradient_ratio)
    exp.add_figure("ranks", lambda e: views.rank_histograms(e, "mips-a", interval=0))
    exp.add_figure("batch", views.batch_concentration)
    exp.show()
    runs = exp.run_all({"uniform": cfg(sampler="uniform"),
                        "mips-a": cfg(sampler="mips-a", warmup_epochs=1, refreshes_per_epoch=2)})
    assert list(runs) == ["uniform", "mips-a"] and all(r.finished for r in runs.values())
    # 8 steps per epoch, 2 epochs: evaluations every 3 steps and at each epoch end.
    assert exp.metrics()["uniform"]["step"].tolist() == [3, 6, 8, 9, 12, 15, 16]
    assert len(exp.frames("grad")["mips-a"]) == 8
    recs = exp.records("ranks")["mips-a"]
    assert set(recs["source"].astype(str)) == {"uniform", "mips"}
    figs = exp.finish()
    assert [t.name for t in figs["P@5"].data] == ["uniform", "mips-a"]
    assert any("first step" in (t.name or "") for t in figs["ranks"].data)
    assert len(figs["batch"].data) == 1 and "mips-a" in figs["batch"].data[0].name

    path = exp.write(tmp_path / "out", note="x")
    res = json.loads(path.read_text())
    assert set(res) >= {"final", "runs", "figures", "live", "note"}
    assert res["final"]["mips-a"]["P@5"] == pytest.approx(runs["mips-a"].final["P@5"])
    assert res["final"]["uniform"]["train_time_s"] > 0
    assert res["runs"]["uniform"]["config"]["sampler"] == "uniform"
    assert res["figures"]["P@5"][0]["y"] == pytest.approx(exp.metrics()["uniform"]["P@5"].tolist())
    assert res["live"]["draws"] == sum(f.draws for f in exp.figures.values())

    table = exp.summary(settings=("sampler", "refreshes_per_epoch"))
    assert table["label"].tolist() == ["uniform", "mips-a"] and "P@5" in table
    fig = views.interval_sensitivity(exp)
    assert [t.name for t in fig.data] == ["mips-a", "mips-a"]  # only mips-a has an interval


def test_figures_redraw_while_a_run_trains():
    seen = []

    def build(e):
        seen.append(sum(len(df) for df in e.metrics().values()))
        return views.precision(e)

    exp = Experiment(live=False, min_interval=0.0, budget=1.0)
    exp.add_figure("P@5", build)
    exp.run("uniform", cfg(sampler="uniform", epochs=3))
    final = len(exp.metrics()["uniform"])
    # Drawn during training with partial data, not only once at the end.
    assert any(0 < n < final for n in seen)
    assert exp.draw_stats()["live_draw_s"] > 0


def test_experiment_validates():
    with pytest.raises(ValueError, match="hook 'nope'"):
        Experiment(hooks="nope")
    exp = Experiment(live=False)
    exp.add_figure("a", views.precision)
    with pytest.raises(ValueError, match="figure name 'a'"):
        exp.add_figure("a", views.precision)
    exp.run("u", cfg(sampler="uniform", epochs=1))
    with pytest.raises(ValueError, match="run label 'u'"):
        exp.run("u", cfg(sampler="uniform", epochs=1))


def test_views_of_an_empty_experiment_are_titled():
    exp = Experiment(live=False)
    for build in (views.precision, views.gradient_ratio, views.gradient_cosine, views.rank_histograms,
                  views.batch_concentration, views.interval_sensitivity):
        fig = build(exp)
        assert fig.layout.title.text


def test_batch_label_counts_and_concentration():
    recs = pd.DataFrame({"step": [5, 5, 5, 5, 7, 7], "label": [3, 3, 9, 1, 4, 4],
                         "source": ["mips", "mips", "mips", "uniform", "mips", "mips"]})
    step, labels, counts = analysis.batch_label_counts(recs)
    assert step == 5 and labels.tolist() == [3, 9] and counts.tolist() == [2, 1]
    assert analysis.batch_label_counts(recs, step=7)[2].tolist() == [2]
    assert analysis.batch_label_counts(recs, "adversarial")[0] is None
    c = analysis.concentration(np.array([2, 1, 0]), num_labels=100, top=1)
    assert c["draws"] == 3 and c["distinct"] == 2 and c["top1_share"] == pytest.approx(2 / 3)
    assert c["distinct_if_uniform"] == pytest.approx(100 * (1 - 0.99 ** 3))


def test_select_interval():
    recs = pd.DataFrame({"step": [0, 1, 10, 12, 20], "steps_since_refresh": [-1, 0, 0, 2, 0]})
    assert analysis.select_interval(recs, 0)["step"].tolist() == [1]
    assert analysis.select_interval(recs, 1)["step"].tolist() == [10, 12]
    assert analysis.select_interval(recs, -1)["step"].tolist() == [20]
    assert analysis.select_interval(recs, 5).empty


def test_run_styles_and_figure_data():
    st = plots.run_styles(["mips-a, PPE=1", "mips-a, PPE=8", "mips-s, PPE=1"])
    assert st["mips-a, PPE=1"]["color"] == st["mips-a, PPE=8"]["color"] == plots.SAMPLER_COLOURS["mips-a"]
    assert st["mips-a, PPE=1"]["dash"] != st["mips-a, PPE=8"]["dash"]
    assert st["mips-s, PPE=1"]["dash"] == "solid"
    assert plots.colour_for("mlp-top-re (eta+/eta-=50)") == plots.SAMPLER_COLOURS["top-re"]
    fig = plots.metric_curves({"u": pd.DataFrame({"step": np.arange(3), "P@5": np.array([0.1, 0.2, 0.3])})},
                              x="step")
    data = plots.figure_data(fig)
    assert data == [{"name": "u", "type": "scatter", "x": [0, 1, 2], "y": [0.1, 0.2, 0.3]}]
    json.dumps(data)


def test_train_panel_button_trains_and_reports():
    pytest.importorskip("ipywidgets")
    from ipywidgets import Dropdown

    from xmcviz.notebook.panel import TrainPanel

    def make_run(v):
        return v["sampler"], cfg(sampler=v["sampler"], epochs=1)

    panel = TrainPanel({"sampler": Dropdown(options=["uniform", "top"], value="uniform")}, make_run,
                       {"P@5": views.precision}, live=False)
    panel.button.click()
    panel.button.click()  # same settings again: a second run, with its own label
    assert list(panel.experiment.runs) == ["uniform", "uniform (2)"]
    assert "P@5 =" in panel.status.value and not panel.button.disabled and not panel.errors

    def broken(v):
        raise ValueError("bad setting")

    bad = TrainPanel({"sampler": Dropdown(options=["uniform"])}, broken, {"P@5": views.precision}, live=False)
    bad.button.click()
    assert "bad setting" in bad.status.value and len(bad.errors) == 1
    with pytest.raises(ValueError, match="figures"):
        TrainPanel({}, make_run, {}, live=False)


def test_experiment_drives_the_softmax_setting(tmp_path):
    """A SoftmaxConfig runs through the same Experiment machinery (records, figures, results)
    and gives what SoftmaxTrainer gives on its own."""
    import torch

    from xmcviz.softmax.trainer import SoftmaxConfig, SoftmaxTrainer
    sc = dict(data="synthetic:tiny", epochs=1, batch_size=64, eval_every_steps=5, adv_dims=4,
              device="cpu", progress=False)
    exp = Experiment(live=False, keep_trainers=True, min_interval=0.0, budget=1.0)
    assert views.learning_curves(exp).layout.title.text
    exp.add_figure("curves", lambda e: views.learning_curves(e, x="step"))
    exp.show()
    exp.run("adversarial", SoftmaxConfig(sampler="adversarial", out=str(tmp_path / "adv"), **sc))
    exp.run("uniform", SoftmaxConfig(sampler="uniform", **sc))
    direct = SoftmaxTrainer(SoftmaxConfig(sampler="uniform", **sc))
    direct.train()

    def strip(history):
        return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in history]
    assert strip(exp.runs["uniform"].history) == strip(direct.history)
    assert torch.equal(exp.runs["uniform"].trainer.W, direct.W)
    adv = exp.runs["adversarial"]
    assert exp.metrics()["adversarial"]["step"].tolist() == [r["step"] for r in adv.history]
    assert adv.history[0]["step"] == 0 and adv.history[0]["acc"] == adv.history[0]["acc_aux"]
    assert (tmp_path / "adv" / "metrics.jsonl").exists()
    names = {t.name for t in exp.finish()["curves"].data}
    assert {"adversarial", "uniform"} <= names
    res = exp.results()
    assert res["runs"]["uniform"]["config"]["first_label_only"] is True
    assert res["final"]["adversarial"]["acc"] == pytest.approx(adv.final["acc"])

    plain = Experiment(live=False)
    assert plain.run("u", SoftmaxConfig(sampler="uniform", **sc)).trainer is None
    with pytest.raises(ValueError, match="hook 'grad' observes training steps"):
        Experiment(hooks="grad:2", live=False).run("u", SoftmaxConfig(sampler="uniform", **sc))
    with pytest.raises(TypeError, match="allowed TrainConfig or SoftmaxConfig"):
        plain.run("x", {"sampler": "uniform"})
