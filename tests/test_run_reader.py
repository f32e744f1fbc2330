"""load_run: a run directory written by the trainer and its hooks, read back into pandas."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

import xmcviz
from xmcviz.core.run_reader import Run, load_run
from xmcviz.samplers.base import SOURCE_NAMES


def test_config_is_the_trainers(tiny_run):
    path, trainer = tiny_run
    run = load_run(path)
    assert isinstance(run, Run) and run.path == path
    expected = trainer.config.to_dict()
    assert {k: run.config[k] for k in expected} == json.loads(json.dumps(expected))
    assert run.config["sampler"] == "mips-s" and run.config["negatives"] == 10


def test_metrics_are_the_evaluation_history(tiny_run):
    path, trainer = tiny_run
    m = load_run(path).metrics
    assert list(m["step"]) == [4, 8] and list(m["epoch"]) == [0.5, 1.0]
    for key in ("loss", "P@1", "P@5", "nDCG@5", "PSP@5"):
        np.testing.assert_allclose(m[key].to_numpy(), [h[key] for h in trainer.history])


def test_hook_records_and_summaries(tiny_run):
    path, _ = tiny_run
    hooks = load_run(path).hooks
    assert set(hooks) == {"ranks", "ranks_summary", "freq", "freq_summary", "grad", "grad_summary",
                          "staleness"}
    ranks, rsum = hooks["ranks"], hooks["ranks_summary"]
    # Every step logged: one record per negative in the loss of each probe row.
    assert sorted(rsum["step"]) == list(range(8)) == sorted(ranks["step"].unique())
    assert ranks.groupby("step").size().to_dict() == dict(zip(rsum["step"], rsum["count"]))
    assert isinstance(ranks["source"].dtype, pd.CategoricalDtype)
    assert list(ranks["source"].cat.categories) == list(SOURCE_NAMES)
    assert set(ranks["source"]) == {"mips", "uniform"}
    assert ranks["rank"].between(1, 64).all() and ranks["label"].between(0, 63).all()
    # Two refresh intervals of 4 steps each.
    assert set(ranks["steps_since_refresh"]) == {0, 1, 2, 3}
    assert set(ranks["refresh_interval"]) == {4}
    # freq: the kept labels' counts add up to what the summary says was kept, per window/source.
    freq, fsum = hooks["freq"], hooks["freq_summary"]
    kept = freq.groupby(["window", "source"], observed=True)["count"].sum()
    for _, row in fsum.iterrows():
        if (row["window"], row["source"]) in kept.index:
            assert kept[(row["window"], row["source"])] == row["kept_draws"] <= row["draws"]
    assert set(fsum["kind"]) >= {"refresh"}
    # grad: per-row records at the logged steps, summaries per logged step.
    assert sorted(hooks["grad"]["step"].unique()) == sorted(hooks["grad_summary"]["step"]) == [0, 4]
    assert (hooks["grad"]["norm_pos"] >= 0).all()
    # staleness has scalar records only: they come under its own name.
    st = hooks["staleness"]
    assert sorted(st["step"]) == list(range(8)) and st["recall"].between(0, 1).all()


def test_reload_reads_the_directory_again(tiny_run, tmp_path):
    src, _ = tiny_run
    path = tmp_path / "run"
    shutil.copytree(src, path)
    run = load_run(path)
    with open(path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2.0, "step": 16, "P@5": 0.5}) + "\n")
    again = run.reload()
    assert len(again.metrics) == len(run.metrics) + 1 and again.metrics["step"].iloc[-1] == 16


def test_a_run_killed_mid_write_loads(tiny_run, tmp_path):
    src, _ = tiny_run
    path = tmp_path / "run"
    shutil.copytree(src, path)
    with open(path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2.0, "step": 1')  # torn last line: the writer was killed
    with open(path / "hooks" / "staleness.jsonl", "a") as f:
        f.write('{"step": 9, "rec')
    run = load_run(path)
    assert list(run.metrics["step"]) == [4, 8]
    assert sorted(run.hooks["staleness"]["step"]) == list(range(8))


def test_a_run_that_has_written_nothing_yet(tmp_path):
    run = load_run(tmp_path)
    assert run.config == {} and run.metrics.empty and run.hooks == {}


def test_missing_directory_is_named(tmp_path):
    missing = tmp_path / "no-such-run"
    with pytest.raises(FileNotFoundError, match="no-such-run: no such run directory"):
        load_run(missing)
    a_file = tmp_path / "metrics.jsonl"
    a_file.write_text("{}\n")
    with pytest.raises(FileNotFoundError, match="metrics.jsonl: no such run directory"):
        load_run(a_file)


def test_package_level_load_run_is_the_same_function():
    assert xmcviz.load_run is load_run and xmcviz.Run is Run
