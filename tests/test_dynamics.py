"""Dynamics diagnostics (xmcviz.notebook.dynamics) on constructed series."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xmcviz.notebook import dynamics as dyn

DELICIOUS_LIKE = [0.59, 0.50, 0.61, 0.56, 0.65, 0.57, 0.64, 0.59, 0.64, 0.58]  # alternating P@1


def metrics(values, spacing=50, start=50, name="P@1"):
    steps = start + spacing * np.arange(len(values))
    return pd.DataFrame({"step": steps, name: values})


def test_alternation_found_with_period_and_amplitude():
    alt = dyn.find_alternation(metrics(DELICIOUS_LIKE), "P@1")
    assert alt is not None
    assert alt.changes == 8 and alt.flips == 8
    assert alt.period_steps == 100
    assert alt.amplitude == pytest.approx(np.median(np.abs(np.diff(DELICIOUS_LIKE))))
    # low phases: the evaluations that dropped (2nd, 4th, ...)
    assert list(alt.low_steps) == [100, 200, 300, 400, 500]
    assert list(alt.high_steps) == [150, 250, 350, 450]
    assert not alt.fading


def test_smooth_rise_is_not_alternation():
    rise = [0.30, 0.45, 0.55, 0.60, 0.63, 0.65, 0.66, 0.67, 0.675, 0.68]
    assert dyn.find_alternation(metrics(rise), "P@1") is None


def test_noise_below_amplitude_is_not_alternation():
    tiny = 0.6 + 0.002 * (-1) ** np.arange(10)
    assert dyn.find_alternation(metrics(tiny), "P@1") is None
    assert dyn.find_alternation(metrics(tiny), "P@1", min_amplitude=0.001) is not None


def test_alternation_fading_and_since_step():
    amp = 0.1 * 0.6 ** np.arange(12)
    vals = 0.5 + amp * (-1) ** np.arange(12)
    alt = dyn.find_alternation(metrics(vals), "P@1", min_amplitude=0.001)
    assert alt is not None and alt.fading
    # only evaluations after since_step count: too few changes remain
    assert dyn.find_alternation(metrics(vals), "P@1", since_step=450, min_amplitude=0.001) is None


def test_collapse_and_recovery():
    m = metrics([0.40, 0.45, 0.05, 0.10, 0.30, 0.44, 0.47], name="P@5")
    c = dyn.find_collapse(m, switch=100, metric="P@5")
    assert c is not None
    assert (c.before, c.lowest, c.lowest_step) == (0.45, 0.05, 150)
    assert c.recovered_step == 300  # 0.44 >= 0.45 * 0.95
    assert c.drop == pytest.approx(0.40)


def test_collapse_without_recovery_and_no_collapse():
    c = dyn.find_collapse(metrics([0.4, 0.45, 0.05, 0.06, 0.07], name="P@5"), 100, "P@5")
    assert c is not None and c.recovered_step is None and c.final == 0.07
    assert dyn.find_collapse(metrics([0.4, 0.45, 0.44, 0.5], name="P@5"), 100, "P@5") is None


def test_switch_step_from_config():
    cfg = {"warmup_epochs": 1, "sampler": "mips-s", "resolved": {"steps_per_epoch": 51}}
    assert dyn.switch_step(cfg) == 51
    assert dyn.switch_step({**cfg, "sampler": "uniform"}) is None
    assert dyn.switch_step({**cfg, "warmup_epochs": 0}) is None


def test_phases_of_windows_and_popularity_by_phase():
    alt = dyn.find_alternation(metrics(DELICIOUS_LIKE), "P@1")
    # refresh windows [e_{i-1}, e_i): the window closed by the evaluation at step 100 is low
    w = pd.DataFrame({"start_step": [50, 100, 150, 200], "end_step": [100, 150, 200, 250],
                      "source": "mips", "kind": "refresh",
                      "median_freq_rank": [7.0, 40.0, 6.0, 45.0], "head": [0.9, 0.2, 0.95, 0.1],
                      "tail": [0.0, 0.3, 0.0, 0.4]})
    assert list(dyn.phase_of_windows(w, alt)) == ["low", "high", "low", "high"]
    by = dyn.popularity_by_phase(w, alt)
    assert by["low"]["median_freq_rank"] == pytest.approx(6.5)
    assert by["high"]["median_freq_rank"] == pytest.approx(42.5)
    assert by["low"]["windows"] == 2


def test_top_labels_by_phase():
    alt = dyn.find_alternation(metrics(DELICIOUS_LIKE), "P@1")
    ranks = pd.DataFrame({"step": [60, 70, 80, 120, 130], "label": [3, 3, 1, 9, 9],
                          "source": ["mips"] * 5})
    freq_rank = np.arange(1, 11)
    tops = dyn.top_labels_by_phase(ranks, alt, freq_rank)
    assert tops["low"]["label"].tolist() == [3, 1] and tops["low"]["draws"].tolist() == [2, 1]
    assert tops["low"]["freq_rank"].tolist() == [4, 2]
    assert tops["high"]["label"].tolist() == [9]


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="min_flip_rate"):
        dyn.find_alternation(metrics(DELICIOUS_LIKE), "P@1", min_flip_rate=1.5)
    with pytest.raises(ValueError, match="rel_drop"):
        dyn.find_collapse(metrics(DELICIOUS_LIKE), 50, "P@1", rel_drop=2.0)


def test_hidden_shares_and_findings():
    hidden = pd.DataFrame([
        {"kind": "steps", "end_step": 10, "source": "mips", "draws": 100, "hits": 20, "base_share": 0.02},
        {"kind": "steps", "end_step": 20, "source": "mips", "draws": 100, "hits": 10, "base_share": 0.02},
        {"kind": "steps", "end_step": 10, "source": "uniform", "draws": 400, "hits": 8, "base_share": 0.02},
        {"kind": "eval", "step": 20, "recall@5": 0.1, "recall@10": 0.2},
    ])
    sh = dyn.hidden_shares(hidden).set_index("source")
    assert sh.loc["mips", "share"] == pytest.approx(0.15)
    assert sh.loc["mips", "ratio"] == pytest.approx(7.5)
    assert sh.loc["uniform", "ratio"] == pytest.approx(1.0)
    assert dyn.hidden_shares(hidden, since_step=15).set_index("source").loc["mips", "hits"] == 10
    lines = dyn.hidden_findings(hidden)
    assert "mips 15.00% (7.5x" in lines[0] and "recall@10 0.200" in lines[1]
    assert dyn.hidden_findings(None) == []


def test_first_interval_popularity_after_the_switch():
    pop = pd.DataFrame([
        {"kind": "refresh", "start_step": 0, "source": "uniform", "median_freq_rank": 400.0, "head": 0.1},
        {"kind": "refresh", "start_step": 51, "source": "mips", "median_freq_rank": 8.0, "head": 0.8},
        {"kind": "refresh", "start_step": 51, "source": "positives", "median_freq_rank": 70.0, "head": 0.3},
        {"kind": "refresh", "start_step": 102, "source": "mips", "median_freq_rank": 40.0, "head": 0.4},
    ])
    first = dyn.first_interval_popularity(pop, 51)
    assert first == {"median_freq_rank": 8.0, "head": 0.8, "positives": 70.0}
    assert dyn.first_interval_popularity(pop, 200) is None
    m = metrics([0.40, 0.45, 0.05, 0.30, 0.44], name="P@5", spacing=51, start=0)
    cfg = {"warmup_epochs": 1, "sampler": "mips-s"}
    lines = dyn.findings(m, cfg, 51, popularity=pop, metrics_names=("P@5",))
    assert lines[0].startswith("collapse after the switch to hard negatives at step 51")
    assert "median training-frequency rank 8 (head labels 80%)" in lines[1]
