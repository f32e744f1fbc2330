"""xmcviz.sweep on a local Dask cluster: grids, failure isolation, resume, retries after a
worker death, Ctrl-C, up-front validation, CLI codes, the tables and the summary figure.

Notebook executions cost ~1-2 s each (kernel start) and each sweep starts its own local
cluster, so the end-to-end tests share few sweeps. tests/test_sweep_distributed.py runs
sweeps against a separately started scheduler and workers.
"""
from __future__ import annotations

import argparse
import itertools
import json
import shutil
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from xmcviz.sweep import (MAX_SLUG_LEN, NotebookParameter, RunRecord, SweepError,
                          add_sweep_arguments, dataset_paths, detect_gpus, notebook_parameters,
                          parse_grid_args, parse_param_args, parse_value, read_done, run_labels,
                          run_sweep, run_sweep_cli, slug_for, summary_figure, write_outputs)
from xmcviz.sweep import gpus

ECHO = Path(__file__).parent / "notebooks" / "echo.ipynb"


@pytest.fixture
def echo(tmp_path: Path) -> Path:
    """A private copy of the fixture notebook (tests edit it; runs use its folder as cwd)."""
    d = tmp_path / "nb"
    d.mkdir()
    return Path(shutil.copy(ECHO, d / "echo.ipynb"))


def cli(*argv) -> int:
    parser = add_sweep_arguments(argparse.ArgumentParser(prog="xmcviz sweep"))
    return run_sweep_cli(parser.parse_args([str(a) for a in argv]))


def results_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


# ----------------------------------------------------------------------------- end to end

def test_cross_product_in_parallel_writes_folders_tables_and_summary(echo, tmp_path):
    out = tmp_path / "sweep"
    seen = []
    res = run_sweep(echo, {"a": [1, 2], "b": ["x", "y"]}, {"widget": True}, out=out, jobs=2,
                    progress=False, devices=["0", "1"], on_record=seen.append)

    assert res.ok and res.failed == [] and res.out == out.resolve()
    assert len(seen) == 4 and {r.status for r in res.records} == {"ok"}
    combos = list(itertools.product([1, 2], ["x", "y"]))
    for (a, b), rec in zip(combos, res.records):
        run_dir = out / f"a={a}__b={b}"
        assert rec.dir == run_dir.resolve() and rec.params == {"a": a, "b": b}
        assert rec.attempts == 1 and rec.worker.startswith("tcp://127.0.0.1:")
        for name in ("notebook.ipynb", "done", "kernel.log"):
            assert (run_dir / name).is_file(), name
        got = results_of(run_dir)
        assert (got["a"], got["b"], got["score"]) == (a, b, 2 * a)
        assert got["cwd"] == str(echo.parent)  # runs in the notebook's folder, as in JupyterLab
        # Each local worker owns one device and the kernel inherits it.
        assert got["cuda_visible_devices"] == rec.device
        nb = nbformat.read(run_dir / "notebook.ipynb", as_version=4)
        # The worker ran the cell in a temporary folder of its own and sent the files back.
        assert nb.metadata.papermill.parameters["output_dir"] != str(run_dir.resolve())
        assert nb.metadata.papermill.parameters["widget"] is True
        assert "widgets" not in nb.metadata  # store_widget_state=False reached nbclient
        marker = json.loads((run_dir / "done").read_text())
        assert marker["params"] == {"a": a, "b": b, "widget": True}
    assert {r.device for r in res.records} == {"0", "1"}

    t = res.table
    assert list(zip(t["a"], t["b"])) == combos  # grid order, not completion order
    for col in ("a", "b", "status", "error", "duration_s", "attempts", "dir", "score",
                "final.lin.P@5", "final.sq.P@5", "result.a", "result.b", "cuda_visible_devices"):
        assert col in t.columns, col
    assert "curve" not in t.columns  # lists are figure data, not table cells
    assert list(t["score"]) == [2, 2, 4, 4]
    assert (t["duration_s"] > 0).all() and t["error"].isna().all()

    csv = pd.read_csv(out / "results.csv")
    assert len(csv) == 4 and list(csv["score"]) == [2, 2, 4, 4]
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["dir"] for line in lines] == ["a=1__b=x", "a=1__b=y", "a=2__b=x",
                                                           "a=2__b=y"]
    # Long format: one row per cell and run label, the chosen metric and the main ones.
    long = pd.read_csv(out / "results_long.csv")
    assert list(long.columns[:4]) == ["a", "b", "label", "P@5"]
    assert list(zip(long["a"], long["b"], long["label"])) == [
        (a, b, label) for a, b in combos for label in ("lin", "sq")]
    assert list(long["P@5"]) == pytest.approx([0.1, 0.01, 0.1, 0.01, 0.2, 0.04, 0.2, 0.04])
    assert "P@1" in long.columns and "train_time_s" in long.columns
    assert res.metric == "P@5"
    page = (out / "summary.html").read_text()
    assert "Plotly.newPlot" in page and "P@5 per run label" in page
    assert '<script src="http' not in page and len(page) > 1_000_000  # plotly.js embedded


def test_failure_isolation_then_resume_after_fixing_the_notebook(echo, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = (echo, "--grid", "a=1,2,3", "--param", "fail_on=2", "--out", out, "--jobs", "2")

    assert cli(*args) == 1
    text = capsys.readouterr().out
    assert "failed" in text and "a=2: ValueError: boom: a=2" in text
    assert sum(" ok " in line for line in text.splitlines()) == 2
    for a in (1, 3):
        assert results_of(out / f"a={a}")["score"] == 2 * a
    failed = out / "a=2"
    assert (failed / "notebook.ipynb").is_file()  # kept for inspection
    assert not (failed / "done").exists() and not (failed / "results.json").exists()
    nb = nbformat.read(failed / "notebook.ipynb", as_version=4)
    assert any(o.get("ename") == "ValueError" for c in nb.cells for o in c.get("outputs", []))
    table = pd.read_csv(out / "results.csv")
    assert list(table["status"]) == ["ok", "failed", "ok"]
    assert "boom: a=2" in table.loc[1, "error"] and pd.isna(table.loc[0, "error"])

    mtimes = {a: (out / f"a={a}" / "notebook.ipynb").stat().st_mtime_ns for a in (1, 3)}
    # Fix the bug in the notebook; the same command re-runs only what did not finish.
    nb = nbformat.read(echo, as_version=4)
    nb.cells[2].source = "pass"
    nbformat.write(nb, echo)

    assert cli(*args) == 0
    text = capsys.readouterr().out
    assert "skipped a=1" in text and "skipped a=3" in text and "ok      a=2" in text
    assert {a: (out / f"a={a}" / "notebook.ipynb").stat().st_mtime_ns for a in (1, 3)} == mtimes
    assert results_of(failed)["score"] == 4 and (failed / "done").is_file()
    table = pd.read_csv(out / "results.csv")
    assert list(table["status"]) == ["skipped", "ok", "skipped"]
    assert list(table["score"]) == [2, 4, 6]
    assert table["duration_s"].notna().all()  # skipped rows keep their original duration


def test_timeout_and_missing_results_fail_only_their_combination(echo, tmp_path):
    # A per-cell timeout that every quick cell meets even on a loaded machine, and a sleep
    # far beyond it.
    res = run_sweep(echo, {"sleep_s": [0.0, 60.0]}, {"write_results": False},
                    out=tmp_path / "sweep", jobs=2, timeout=5.0, progress=False, devices=[])
    assert not res.ok
    no_results, slow = res.records
    assert no_results.status == "failed" and "wrote no results.json" in no_results.error
    assert slow.status == "failed" and slow.error.startswith("TimeoutError")
    assert slow.duration_s < 40
    nb = nbformat.read(slow.notebook, as_version=4)
    sleep_cell = nb.cells[4]  # after the injected-parameters cell
    assert sleep_cell.metadata.papermill.status == "failed"
    assert any(o.get("ename") == "TimeoutError" for o in sleep_cell.outputs)
    assert [r.slug for r in res.failed] == ["sleep_s=0.0", "sleep_s=60.0"]
    page = (res.out / "summary.html").read_text()  # written even when nothing can be plotted
    assert "No finished cell reports P@5" in page and "sleep_s=60.0" in page


def test_a_killed_worker_is_retried_then_recorded_and_the_sweep_goes_on(echo, tmp_path):
    # The kernel of a=2 SIGKILLs the worker process that started it (as the OOM killer would),
    # on every attempt: one retry, then the cell is recorded as failed with the reason.
    res = run_sweep(echo, {"a": [1, 2, 3]}, {"kill_worker_on": 2}, out=tmp_path / "sweep",
                    jobs=1, retries=1, progress=False, devices=[])
    assert [r.status for r in res.records] == ["ok", "failed", "ok"]
    killed = res.records[1]
    assert killed.error.startswith("WorkerDied") and "died 2 time(s)" in killed.error
    assert killed.attempts == 2
    assert results_of(res.records[2].dir)["score"] == 6  # ran on the restarted worker
    assert list(pd.read_csv(res.out / "results.csv")["attempts"]) == [1, 2, 1]


def test_interrupt_cancels_the_rest_and_keeps_finished_cells(echo, tmp_path):
    out = tmp_path / "sweep"

    def interrupt(rec: RunRecord) -> None:  # as Ctrl-C would, once the quick cell is in
        raise KeyboardInterrupt

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_sweep(echo, {"sleep_s": [0.0, 120.0]}, out=out, jobs=2, progress=False, devices=[],
                  on_record=interrupt)
    assert time.monotonic() - start < 100  # the 120 s cell was not waited for
    assert (out / "sleep_s=0.0" / "done").is_file() and results_of(out / "sleep_s=0.0")
    assert not (out / "sleep_s=120.0" / "done").exists()
    # The same call resumes: the finished cell is skipped.
    res = run_sweep(echo, {"sleep_s": [0.0]}, out=out, jobs=1, progress=False, devices=[])
    assert [r.status for r in res.records] == ["skipped"]


# ----------------------------------------------------------------------------- validation

def test_bad_arguments_exit_2_before_anything_runs(echo, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert cli(echo, "--grid", "aa=1,2", "--out", out) == 2
    err = capsys.readouterr().err
    assert "unknown grid name 'aa'" in err and "allows" in err and "'fail_on'" in err
    assert cli(echo, "--grid", "a=1,two", "--out", out) == 2
    assert "a='two' is not a valid int" in capsys.readouterr().err
    assert cli(echo, "--grid", "a=1", "--param", "sleep_s=slow", "--out", out) == 2
    assert "sleep_s='slow'" in capsys.readouterr().err
    assert cli(echo, "--grid", "a=1", "--param", "output_dir=/tmp/x", "--out", out) == 2
    assert cli(echo, "--grid", "a=1,,2", "--out", out) == 2
    assert cli(echo, "--grid", "a=1", "--grid", "a=2", "--out", out) == 2
    assert cli(echo, "--grid", "a=1", "--jobs", "0", "--out", out) == 2
    assert cli(echo, "--grid", "a=1", "--retries", "-1", "--out", out) == 2
    assert "retries=-1 is out of range" in capsys.readouterr().err
    assert cli(echo, "--grid", "a=1", "--memory-limit", "4XB", "--out", out) == 2
    assert "memory_limit='4XB' is not a size" in capsys.readouterr().err
    assert cli(tmp_path / "missing.ipynb", "--grid", "a=1", "--out", out) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()  # nothing ran, nothing was created

    with pytest.raises(SweepError, match="unknown grid name 'bb'"):
        run_sweep(echo, {"bb": [1]}, out=out, progress=False)
    with pytest.raises(SweepError, match="both a grid name and a fixed parameter"):
        run_sweep(echo, {"a": [1]}, {"a": 2}, out=out, progress=False)
    with pytest.raises(SweepError, match="same folder"):
        run_sweep(echo, {"a": [1, 1]}, out=out, progress=False)
    with pytest.raises(SweepError, match="must be a list"):
        run_sweep(echo, {"b": "xy"}, out=out, progress=False)
    assert not out.exists()


def test_an_unreachable_scheduler_is_a_clear_error(echo, tmp_path, capsys, monkeypatch):
    import socket

    from xmcviz.sweep import execute

    monkeypatch.setattr(execute, "CONNECT_TIMEOUT_S", 2.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket is closed
    out = tmp_path / "sweep"
    assert cli(echo, "--grid", "a=1", "--out", out, "--scheduler", f"tcp://127.0.0.1:{port}") == 2
    assert f"cannot reach the Dask scheduler at 'tcp://127.0.0.1:{port}'" in capsys.readouterr().err
    assert not out.exists()


def test_notebook_without_output_dir_is_rejected(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "a = 1", metadata={"tags": ["parameters"]})])
    path = tmp_path / "plain.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(SweepError, match="names no kernel"):
        notebook_parameters(path)
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    with pytest.raises(SweepError, match=r"no 'output_dir' parameter; its parameters are \['a'\]"):
        notebook_parameters(path)
    path.write_text("not json")
    with pytest.raises(SweepError, match="cannot read notebook"):
        notebook_parameters(path)


def test_value_parsing_follows_the_notebook_defaults():
    params = notebook_parameters(ECHO)
    assert {n: p.kind for n, p in params.items()} == {
        "a": "int", "b": "str", "seed": "int", "data": "str", "fail_on": "int",
        "kill_worker_on": "int", "hang_once": "str", "sleep_s": "float", "widget": "bool",
        "write_results": "bool", "output_dir": "str"}
    assert parse_value(params["a"], " 7 ") == 7
    assert parse_value(params["sleep_s"], "1e-3") == 0.001
    assert parse_value(params["widget"], "yes") is True
    assert parse_value(params["widget"], "False") is False
    assert parse_value(params["b"], "None") == "None"  # a str parameter keeps the text
    assert parse_value(params["a"], "None") is None
    with pytest.raises(SweepError, match="widget='maybe' is not a valid bool"):
        parse_value(params["widget"], "maybe")
    anything = NotebookParameter("k", "any", "None")
    assert parse_value(anything, "[1, 2]") == [1, 2]
    assert parse_value(anything, "mips-s") == "mips-s"  # literal_eval fallback: the string

    grid = parse_grid_args(["a=1, 2", 'b=["p,q", "r"]', "sleep_s=[0, 0.5]"], params)
    assert grid == {"a": [1, 2], "b": ["p,q", "r"], "sleep_s": [0.0, 0.5]}
    with pytest.raises(SweepError, match="a=1.5 is not a valid int"):
        parse_grid_args(["a=[1, 1.5]"], params)
    with pytest.raises(SweepError, match="not a JSON list"):
        parse_grid_args(["a=[1, 2"], params)
    with pytest.raises(SweepError, match="NAME=VALUE"):
        parse_grid_args(["a"], params)
    assert parse_param_args(["b=p,q", "fail_on=-1"], params) == {"b": "p,q", "fail_on": -1}


# ----------------------------------------------------------------------------- pieces

def test_slugs_are_readable_safe_distinct_and_bounded():
    assert slug_for({"sampler": "mips-s", "ppe": 4}) == "sampler=mips-s__ppe=4"
    assert slug_for({"lr": 0.001, "flag": True, "k": None}) == "lr=0.001__flag=True__k=None"
    assert slug_for({}) == "default"
    lossy = [slug_for({"p": v}) for v in ("a b", "a/b", "a-b", "../x", "[1, 2]")]
    assert len(set(lossy)) == len(lossy)
    assert lossy[2] == "p=a-b"
    for s in lossy:
        assert "/" not in s and " " not in s and not s.split("=", 1)[1].startswith(".")
    long = slug_for({"name": "x" * 300})
    assert len(long) <= MAX_SLUG_LEN and long == slug_for({"name": "x" * 300})
    assert long != slug_for({"name": "x" * 299})


def test_done_marker_requires_results_and_the_same_parameters(tmp_path):
    params = {"a": 1, "b": "x", "output_dir": "/somewhere"}
    run = tmp_path / "run"
    run.mkdir()
    (run / "done").write_text(json.dumps({"params": {"a": 1, "b": "x"}, "duration_s": 1.0}))
    assert read_done(run, params) is None  # no results.json
    (run / "results.json").write_text("{}")
    assert read_done(run, params)["duration_s"] == 1.0
    assert read_done(run, {**params, "output_dir": "/moved"}) is not None
    assert read_done(run, {**params, "b": "y"}) is None  # re-parameterised: run again
    (run / "done").write_text('{"params": ')  # torn write
    assert read_done(run, params) is None


def test_gpu_detection(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert detect_gpus() == ["2", "3"]
    for none in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", none)
        assert detect_gpus() == []
    smi = ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa)\n"
           "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bbbb)\n")
    assert gpus._parse_nvidia_smi(smi) == ["0", "1"]
    mig = ("GPU 0: NVIDIA A100 (UUID: GPU-aaaa)\n"
           "  MIG 3g.20gb     Device  0: (UUID: MIG-1111)\n"
           "  MIG 3g.20gb     Device  1: (UUID: MIG-2222)\n")
    assert gpus._parse_nvidia_smi(mig) == ["MIG-1111", "MIG-2222"]
    assert gpus._parse_nvidia_smi("") == []


def test_run_labels_come_from_the_final_mapping():
    assert run_labels({"final": {"mips-a": {"P@5": 0.3, "note": "x"}, "mips-s": {"P@5": 0.4}}}) \
        == {"mips-a": {"P@5": 0.3}, "mips-s": {"P@5": 0.4}}
    assert run_labels({"final": {"P@5": 0.3, "flag": True}}) == {"final": {"P@5": 0.3}}
    assert run_labels({"acc": 0.9, "nested": {"P@5": 0.2}, "curve": [1]}) == {
        "": {"acc": 0.9, "nested.P@5": 0.2}}


def _fake_sweep(tmp_path: Path, grid: dict, value, failed: set[str] = frozenset()) -> list:
    """Records and results.json files of a sweep that did not run: ``value(label, **cell)``."""
    records = []
    for combo in (dict(zip(grid, v)) for v in itertools.product(*grid.values())):
        slug = slug_for(combo)
        d = tmp_path / slug
        d.mkdir(parents=True)
        if slug in failed:
            records.append(RunRecord(slug, combo, "failed", "ValueError: boom", 1.0, d))
            continue
        final = {label: {"P@5": value(label, **combo), "P@1": 0.5, "loss": 1.0}
                 for label in ("mips-a", "mips-s")}
        (d / "results.json").write_text(json.dumps({"final": final}))
        records.append(RunRecord(slug, combo, "ok", None, 2.0, d))
    return records


def test_summary_plots_every_run_label_against_each_parameter_with_seed_error_bars(tmp_path):
    grid = {"k": [5, 20], "sampler": ["u", "m"], "seed": [0, 1]}
    records = _fake_sweep(tmp_path, grid,
                          lambda label, k, sampler, seed: k / 100 + (label == "mips-s") + seed / 10,
                          failed={"k=20__sampler=m__seed=1"})
    table, long, files = write_outputs(tmp_path, records, list(grid))
    assert len(table) == 8 and len(long) == 7 * 2 + 1  # one row per cell and label (+ failure)
    assert long.loc[long["status"] == "failed", "label"].isna().all()
    fig = summary_figure(long, list(grid))
    # Two panels (k, sampler; seed is averaged), one line per label in each.
    traces = [(tr.name, tr.xaxis, list(tr.x)) for tr in fig.data]
    assert traces == [("mips-a", "x", [5, 20]), ("mips-s", "x", [5, 20]),
                      ("mips-a", "x2", ["u", "m"]), ("mips-s", "x2", ["u", "m"])]
    a_vs_k = fig.data[0]
    # k=5: mean over sampler of the seed means (0.05 + 0.05) / 2 each; seed sd = 0.0707.
    assert list(a_vs_k.y) == pytest.approx([0.05 + 0.05, 0.20 + (0.05 + 0.0) / 2])
    assert list(a_vs_k.error_y.array)[0] == pytest.approx(0.1 / 2 ** 0.5)
    assert [tr.showlegend for tr in fig.data] == [True, True, False, False]
    assert "1 failed cell not shown" in fig.layout.title.text and "sd over seeds" in \
        fig.layout.title.text
    page = files["summary"].read_text()
    assert 'id="sweep-failed"' in page and "k=20__sampler=m__seed=1" in page
    # Without seed: no error bars; with a metric nobody reports: no figure, a clear note.
    fig = summary_figure(long[long["seed"] == 0], ["k", "sampler"])
    assert all(tr.error_y.array is None for tr in fig.data)
    assert summary_figure(long, list(grid), "nDCG@3") is None
    write_outputs(tmp_path, records, list(grid), metric="nDCG@3")
    assert "No finished cell reports nDCG@3; metrics present: P@1" in files["summary"].read_text()


def test_dataset_paths_are_the_data_parameters_that_look_like_paths(tmp_path):
    grid = {"data": ["synthetic:tiny", "../data/Delicious", "/abs/Bibtex"], "a": [1]}
    got = dataset_paths({"data_eval": "~/x", "b": "/not/data"}, grid, tmp_path / "nb")
    assert got == [str(Path("~/x").expanduser()), str(tmp_path / "nb" / "../data/Delicious"),
                   "/abs/Bibtex"]


def test_results_are_strict_json_through_one_converter():
    import math

    import numpy as np

    from xmcviz.core.rundir import json_safe

    got = json_safe({"a": np.float32(0.5), "n": np.int64(3), "nan": float("nan"),
                     "inf": np.float64(math.inf), "t": (1, np.bool_(True)), "p": Path("x/y"),
                     "arr": np.arange(2), 4: {"s": {2}}})
    assert got == {"a": 0.5, "n": 3, "nan": None, "inf": None, "t": [1, True], "p": "x/y",
                   "arr": [0, 1], "4": {"s": [2]}}
    assert json.loads(json.dumps(got, allow_nan=False)) == got
