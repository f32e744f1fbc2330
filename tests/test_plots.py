"""Figure builders, phase labelling and the live display helpers."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from xmcviz.notebook import analysis; from xmcviz.notebook import plots
from xmcviz.notebook.live import LiveData, LiveFigure, mime_bundle


def ranks_frame():
    # Two refresh intervals of 10 steps, logged every 2 steps; ranks grow within an interval.
    rows = []
    for step in range(0, 20, 2):
        ssr = step % 10
        for r in range(5):
            rows.append({"step": step, "epoch": step // 10, "steps_since_refresh": ssr, "refresh_interval": 10,
                         "source": "mips", "rank": 1 + ssr * 10 + r, "label": r, "row": r})
    return pd.DataFrame(rows)


def test_rank_phases_first_middle_last():
    df = ranks_frame()
    ph = analysis.rank_phases(df)
    by_step = dict(zip(df["step"], ph))
    assert by_step[0] == "first" and by_step[8] == "last" and by_step[4] == "middle"
    assert by_step[10] == "first" and by_step[18] == "last" and by_step[14] == "middle"
    assert by_step[2] is None and by_step[6] is None
    med = analysis.rank_medians_by_phase(df)
    assert med["first"]["all"] < med["middle"]["all"] < med["last"]["all"]
    assert med["last"]["mips"] == pytest.approx(np.median(1 + 80 + np.arange(5)))


def test_rank_phases_none_without_refresh():
    df = ranks_frame().assign(steps_since_refresh=-1)
    assert analysis.rank_phases(df).isna().all()


def test_uniform_rank_expectation_is_exact():
    L = 1000
    edges = analysis.log_rank_edges(L, 17)
    expect = analysis.uniform_rank_expectation(edges, L)
    assert expect.sum() == pytest.approx(1.0)
    h, _ = np.histogram(np.arange(1, L + 1), bins=edges)
    np.testing.assert_allclose(expect, h / L)


def test_top_negative_labels_counts_steps_windows_only():
    counts = pd.DataFrame({"window": [0, 0, 1, 1], "label": [3, 4, 3, 4], "source": ["mips"] * 4,
                           "count": [5, 1, 5, 1]})
    summary = pd.DataFrame({"window": [0, 1], "kind": ["steps", "refresh"]})
    top = analysis.top_negative_labels(counts, summary, n=1)
    assert top["label"].tolist() == [3] and top["count"].tolist() == [5]
    assert top["share"].iloc[0] == pytest.approx(5 / 6)


def test_colours_are_per_sampler_and_stable():
    assert plots.colour_for("mips-s (PPE=1)") == plots.SAMPLER_COLOURS["mips-s"]
    assert plots.colour_for("MIPS-S, tau=4") == plots.SAMPLER_COLOURS["mips-s"]  # case-insensitive
    assert plots.colour_for("top-uniform") == plots.SAMPLER_COLOURS["top-uniform"]  # not "top" nor "uniform"
    # Distinct samplers never share a colour, and unknown labels never take a sampler's colour.
    sampler_colours = list(plots.SAMPLER_COLOURS.values())
    assert len(set(sampler_colours)) == len(sampler_colours)
    others = [f"run {i}" for i in range(40)]
    fallback = {plots.colour_for(o) for o in others}
    assert fallback.isdisjoint(sampler_colours) and len(fallback) > 1


def test_fallback_colours_are_the_same_in_another_process():
    # A figure redrawn in a new kernel (or a sweep worker) keeps its colours: no salted hash().
    labels = ["run 0", "baseline", "my encoder, lr 0.1", "résumé"]
    code = ("import json; from xmcviz.notebook.plots import colour_for; "
            f"print(json.dumps([colour_for(s) for s in {labels!r}]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300, check=True)
    assert json.loads(out.stdout) == [plots.colour_for(s) for s in labels]


def test_runs_of_one_sampler_share_its_colour_with_distinct_dashes():
    styles = plots.run_styles(["mips-s P=1", "uniform", "mips-s P=4", "mips-s P=16"])
    mips = [styles[k] for k in ("mips-s P=1", "mips-s P=4", "mips-s P=16")]
    assert {s["color"] for s in mips} == {plots.SAMPLER_COLOURS["mips-s"]}
    assert len({s["dash"] for s in mips}) == 3
    assert styles["uniform"] == {"color": plots.SAMPLER_COLOURS["uniform"], "dash": "solid"}


def test_builders_titles_traces_and_colours():
    m = pd.DataFrame({"epoch": [1, 2], "step": [10, 20], "time_s": [1.0, 2.0], "P@5": [0.1, 0.2]})
    fig = plots.metric_curves({"uniform": m, "mips-s": m}, "P@5", x="time_s")
    assert [t.name for t in fig.data] == ["uniform", "mips-s"]
    assert fig.data[1].line.color == plots.SAMPLER_COLOURS["mips-s"]
    assert fig.layout.xaxis.title.text == "training time (s)"

    g = pd.DataFrame({"step": [0, 10], "ratio": [50.0, 40.0], "ratio_full": [60.0, 50.0], "cos_sampled_full": [0.2, 0.5]})
    fig = plots.gradient_ratio({"top": g})
    assert fig.layout.yaxis.type == "log" and len(fig.data) == 2
    assert plots.gradient_cosine({"top": g}).data[0].y.tolist() == [0.2, 0.5]

    s = g.assign(sig_pos=[0.5, 0.7], sig_neg=[0.5, 0.3], sig_all=[0.5, 0.2], dead_fraction=[0.0, 0.8])
    fig = plots.score_trajectories({"mlp-top": s, "mlp-uniform": s, "empty": pd.DataFrame()})
    assert [t.name for t in fig.data] == [f"{r}: {w}" for r in ("mlp-top", "mlp-uniform")
                                          for w in ("positives", "sampled negatives", "all labels")]
    assert [t.line.dash for t in fig.data[:3]] == ["solid", "dash", "dot"]
    assert fig.data[3].xaxis == "x2" and fig.data[5].y.tolist() == [0.5, 0.2]  # one panel per run
    assert len(plots.score_trajectories({}).data) == 0  # titled and empty before any data
    fig = plots.dead_embeddings({"mlp-top": s})
    assert fig.data[0].y.tolist() == [0.0, 0.8] and "E_x = 0" in fig.layout.title.text

    fig = plots.rank_histogram({"mips-a": ranks_frame()}, num_labels=200, by_phase=True)
    names = [t.name for t in fig.data]
    assert names[-1] == "uniform expectation"
    assert {"mips-a, first step", "mips-a, middle step", "mips-a, last step"} <= set(names)
    for t in fig.data[:-1]:
        assert sum(t.y) == pytest.approx(1.0)
    assert fig.layout.xaxis.type == "log"

    fig = plots.label_frequency_curve({"mips-a": np.array([0, 5, 1, 10])})
    assert fig.data[0].y.tolist() == pytest.approx([10 / 16, 5 / 16, 1 / 16])

    st = pd.DataFrame({"steps_since_refresh": [0, 0, 5], "recall": [1.0, 0.8, 0.4], "overlap_snapshot": [1, 1, 0.5]})
    fig = plots.staleness_recall({"mips-a": st})
    assert fig.data[0].y.tolist() == pytest.approx([0.9, 0.4])

    tab = pd.DataFrame({"sampler": ["mips-a", "mips-a", "mips-s"], "ppe": [1, 8, 1], "P@5": [0.2, 0.3, 0.35],
                        "time_s": [10, 20, 11]})
    fig = plots.interval_sensitivity(tab, "ppe")
    assert len(fig.data) == 4


def test_live_figure_throttles_and_finishes():
    n = {"builds": 0}

    def build():
        n["builds"] += 1
        return plots.metric_curves({})

    live = LiveFigure(build, min_interval=10.0, display=False).show()
    assert live.draws == 1
    assert not live.update()  # within min_interval: no redraw
    live.finish()
    assert live.draws == 2 and n["builds"] == 2
    with pytest.raises(ValueError, match="budget=0"):
        LiveFigure(build, budget=0)


def test_live_figure_respects_time_budget():
    def slow():
        time.sleep(0.02)
        return plots.metric_curves({})

    live = LiveFigure(slow, min_interval=0.0, budget=0.05, display=False)
    durations = []  # each draw's time as the throttle saw it
    spent = live.throttle.spent
    live.throttle.spent = lambda s, count=True: (durations.append(s), spent(s, count))[1]
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.5:
        live.update()
    # A draw starts only while within budget, so the budget is exceeded by at most the last
    # draw (bounded by the longest one, however slow the machine is); without the budget
    # check every call would draw and draw_seconds would be close to the elapsed time.
    assert live.draws >= 1 and len(durations) == live.draws
    assert live.draw_seconds <= 0.05 * live.throttle.elapsed() + max(durations)


def test_mime_bundle_has_plotly_json_and_html():
    b = mime_bundle(plots.metric_curves({"uniform": pd.DataFrame({"epoch": [1], "P@5": [0.5]})}))
    assert "application/vnd.plotly.v1+json" in b and "text/html" in b
    assert "Plotly.newPlot" in b["text/html"]
    json.dumps(b)  # serialisable into a notebook


def test_live_data_collects_scalars_and_arrays():
    from xmcviz.hooks.ranks import RANK_DTYPE

    data = LiveData()
    seen = []
    data.on_record(lambda k, r: seen.append(k))
    sink = data.sink("ranks")
    rec = np.zeros(3, dtype=RANK_DTYPE)
    rec["rank"] = [1, 2, 3]
    rec["source"] = 3
    sink({"step": 0, "median_rank": 2.0, "array": rec})
    sink({"step": 1, "median_rank": 2.0, "array": rec})
    assert data.frame("ranks")["step"].tolist() == [0, 1]
    df = data.records("ranks")
    assert len(df) == 6 and set(df["source"]) == {"mips"}
    assert seen == ["ranks", "ranks"]
