"""Figures of the first-label softmax setting (xmcviz.softmax.plots) from constructed results."""
import pandas as pd
import pytest

from xmcviz.notebook.plots import SAMPLER_COLOURS
from xmcviz.softmax import plots


def history(acc0: float, aux: bool) -> pd.DataFrame:
    d = {"step": [0, 50, 100], "epoch": [0.0, 0.5, 1.0], "time_s": [0.0, 1.5, 3.0],
         "acc": [acc0, acc0 + 0.1, acc0 + 0.2], "loglik": [-8.0, -7.0, -6.5]}
    if aux:
        d.update(acc_aux=[0.2, 0.2, 0.25], loglik_aux=[-5.5, -5.5, -5.4])
    return pd.DataFrame(d)


HISTORIES = {"adversarial": history(0.2, aux=True), "uniform": history(0.0, aux=False),
             "nce": history(0.01, aux=True), "frequency": pd.DataFrame()}


def test_learning_curves_one_panel_per_metric_one_line_per_run():
    fig = plots.learning_curves(HISTORIES, x="step")
    runs = [t for t in fig.data if t.name != "tree p_n alone"]
    # The empty run draws nothing; every other run has one trace per panel, in its colour.
    assert [t.name for t in runs] == ["adversarial", "adversarial", "uniform", "uniform", "nce", "nce"]
    assert [t.xaxis for t in runs] == ["x", "x2"] * 3
    for t in runs:
        assert t.line.color == SAMPLER_COLOURS[t.name]
        assert list(t.x) == [0, 50, 100]
    acc_adv = next(t for t in runs if t.name == "adversarial" and t.xaxis == "x")
    assert list(acc_adv.y) == pytest.approx([0.2, 0.3, 0.4])
    assert [t.showlegend for t in runs] == [True, False] * 3  # one legend entry per run
    titles = [a.text for a in fig.layout.annotations]
    assert titles == [plots.METRICS["acc"], plots.METRICS["loglik"]]
    assert fig.layout.xaxis.title.text == fig.layout.xaxis2.title.text == "step"


def test_the_tree_alone_is_drawn_once_per_panel_at_its_final_value():
    fig = plots.learning_curves(HISTORIES, x="time_s")
    aux = [t for t in fig.data if t.name == "tree p_n alone"]
    assert len(aux) == 2  # adversarial and NCE share the tree: one line per panel, not two
    assert list(aux[0].y) == [0.25, 0.25] and list(aux[1].y) == [-5.4, -5.4]
    assert list(aux[0].x) == [0.0, 3.0] and aux[0].line.dash == "dot"
    assert fig.layout.xaxis.title.text == "training time (s)"
    assert not [t for t in plots.learning_curves(HISTORIES, aux=False).data
                if t.name == "tree p_n alone"]


def test_learning_curves_of_one_metric():
    fig = plots.learning_curves({"uniform": history(0.0, aux=False)}, x="epoch", metrics=("loglik",))
    assert len(fig.data) == 1 and list(fig.data[0].y) == [-8.0, -7.0, -6.5]
    assert fig.layout.xaxis.title.text == "epoch"


@pytest.mark.parametrize("kw, named", [({"x": "wall"}, "x='wall'"),
                                       ({"metrics": ("P@5",)}, "metric='P@5'")])
def test_learning_curves_refuse_unknown_axes(kw, named):
    with pytest.raises(ValueError, match=named):
        plots.learning_curves(HISTORIES, **kw)


def test_bias_removal_bars_group_predictor_raw_and_proposal():
    final = {"adversarial": {"acc": 0.25, "acc_raw": 0.2, "acc_aux": 0.23},
             "uniform": {"acc": 0.1, "acc_raw": 0.1},
             "nce": {"acc": 0.01, "acc_raw": 0.01, "acc_aux": 0.23}}
    fig = plots.bias_removal_bars(final, "acc")
    assert [t.name for t in fig.data] == ["predictor (bias removed)", "raw scores xi", "proposal q alone"]
    assert all(list(t.x) == ["adversarial", "uniform", "nce"] for t in fig.data)
    assert list(fig.data[0].y) == [0.25, 0.1, 0.01]
    assert list(fig.data[1].y) == [0.2, 0.1, 0.01]
    assert list(fig.data[2].y) == [0.23, None, 0.23]  # uniform has no proposal model
    assert list(fig.data[0].marker.color) == [SAMPLER_COLOURS[n] for n in final]
    assert [t.marker.pattern.shape for t in fig.data] == ["", "/", "."]
    assert fig.layout.barmode == "group" and fig.layout.yaxis.title.text == plots.METRICS["acc"]
    with pytest.raises(ValueError, match="metric='P@1'"):
        plots.bias_removal_bars(final, "P@1")


def test_snr_bars_one_trace_per_sampler_grouped_by_point():
    snr = {"init_raw": [{"sampler": "uniform", "snr": 0.01}, {"sampler": "adversarial", "snr": 0.5}],
           "uniform_final_raw": [{"sampler": "uniform", "snr": 0.02},
                                 {"sampler": "frequency", "snr": 0.03},
                                 {"sampler": "adversarial", "snr": 0.4}]}
    fig = plots.snr_bars(snr)
    assert [t.name for t in fig.data] == ["uniform", "adversarial", "frequency"]
    by = {t.name: t for t in fig.data}
    assert all(list(t.x) == ["init_raw", "uniform_final_raw"] for t in fig.data)
    assert list(by["uniform"].y) == [0.01, 0.02]
    assert list(by["frequency"].y) == [None, 0.03]  # not measured at that point
    assert by["adversarial"].marker.color == SAMPLER_COLOURS["adversarial"]
    assert fig.layout.yaxis.type == "log" and fig.layout.xaxis.title.text == "parameters"
    with pytest.raises(ValueError, match="value='nope'"):
        plots.snr_bars(snr, value="nope")
