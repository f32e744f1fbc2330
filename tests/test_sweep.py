"""xmcviz.sweep: papermill grids, failure isolation, resume, up-front validation, CLI codes.

Notebook executions cost ~1-2 s each (kernel start), so the end-to-end tests share few sweeps.
"""
from __future__ import annotations

import argparse
import itertools
import json
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from xmcviz import sweep
from xmcviz.sweep import (MAX_SLUG_LEN, NotebookParameter, SweepError, add_sweep_arguments,
                          detect_gpus, notebook_parameters, parse_grid_args, parse_param_args,
                          parse_value, pick_metric, read_done, run_sweep, run_sweep_cli, slug_for,
                          summary_figure)

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

def test_cross_product_in_parallel_writes_folders_table_and_summary(echo, tmp_path):
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
        assert (run_dir / "notebook.ipynb").is_file() and (run_dir / "done").is_file()
        got = results_of(run_dir)
        assert (got["a"], got["b"], got["score"]) == (a, b, 2 * a)
        assert got["cwd"] == str(echo.parent)  # runs in the notebook's folder, as in JupyterLab
        # Each job slot owns one device and the kernel inherits it.
        assert got["cuda_visible_devices"] == rec.device
        nb = nbformat.read(run_dir / "notebook.ipynb", as_version=4)
        assert nb.metadata.papermill.parameters["output_dir"] == str(run_dir.resolve())
        assert nb.metadata.papermill.parameters["widget"] is True
        assert "widgets" not in nb.metadata  # store_widget_state=False reached nbclient
    assert {r.device for r in res.records} == {"0", "1"}

    t = res.table
    assert list(zip(t["a"], t["b"])) == combos  # grid order, not completion order
    for col in ("a", "b", "status", "error", "duration_s", "dir", "score", "final.P@5",
                "result.a", "result.b", "cuda_visible_devices"):
        assert col in t.columns, col
    assert "curve" not in t.columns  # lists are figure data, not table cells
    assert list(t["score"]) == [2, 2, 4, 4]
    assert list(t["final.P@5"]) == pytest.approx([0.1, 0.1, 0.2, 0.2])
    assert (t["duration_s"] > 0).all() and t["error"].isna().all()

    csv = pd.read_csv(out / "results.csv")
    assert len(csv) == 4 and list(csv["score"]) == [2, 2, 4, 4]
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["dir"] for line in lines] == ["a=1__b=x", "a=1__b=y", "a=2__b=x",
                                                           "a=2__b=y"]

    # Summary: P@5 preferred over "score"; lines over numeric a, one trace per b; offline page.
    assert res.metric == "final.P@5"
    fig = summary_figure(res.table, ["a", "b"], res.metric)
    traces = {tr.name: (list(tr.x), list(tr.y)) for tr in fig.data}
    assert traces == {"b=x": ([1, 2], pytest.approx([0.1, 0.2])),
                      "b=y": ([1, 2], pytest.approx([0.1, 0.2]))}
    page = (out / "summary.html").read_text()
    assert "Plotly.newPlot" in page and "final.P@5" in page
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
    assert (res.out / "summary.html").is_file()  # written even when nothing can be plotted
    assert res.metric is None


def test_a_killed_worker_fails_its_combination_and_the_sweep_goes_on(echo, tmp_path):
    # The kernel of a=2 SIGKILLs the worker process that started it (as the OOM killer would).
    res = run_sweep(echo, {"a": [1, 2, 3]}, {"kill_worker_on": 2}, out=tmp_path / "sweep",
                    jobs=1, progress=False, devices=[])
    assert [r.status for r in res.records] == ["ok", "failed", "ok"]
    assert res.records[1].error.startswith("WorkerDied")
    assert results_of(res.records[2].dir)["score"] == 6  # ran in a fresh pool


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
        "a": "int", "b": "str", "fail_on": "int", "kill_worker_on": "int", "sleep_s": "float",
        "widget": "bool",
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
    assert sweep._parse_nvidia_smi(smi) == ["0", "1"]
    mig = ("GPU 0: NVIDIA A100 (UUID: GPU-aaaa)\n"
           "  MIG 3g.20gb     Device  0: (UUID: MIG-1111)\n"
           "  MIG 3g.20gb     Device  1: (UUID: MIG-2222)\n")
    assert sweep._parse_nvidia_smi(mig) == ["MIG-1111", "MIG-2222"]
    assert sweep._parse_nvidia_smi("") == []


def test_metric_choice_prefers_p_at_5():
    t = pd.DataFrame({"lr": [0.1, 0.2], "status": ["ok", "ok"], "duration_s": [1.0, 2.0],
                      "epochs": [3, 3], "loss": [0.5, 0.4], "final_P@5": [0.3, 0.4],
                      "name": ["u", "v"]})
    assert pick_metric(t, ["lr"]) == "final_P@5"
    assert pick_metric(t.drop(columns="final_P@5"), ["lr"]) == "loss"
    assert pick_metric(t.drop(columns=["final_P@5", "loss"]), ["lr"]) == "epochs"
    assert pick_metric(t[["lr", "status", "name"]], ["lr"]) is None


def test_summary_figure_groups_bars_by_the_other_parameters():
    t = pd.DataFrame({"s": ["u", "v", "u", "v"], "b": ["x", "x", "y", "y"], "c": [1, 1, 1, 2],
                      "status": ["ok", "ok", "failed", "skipped"],
                      "P@5": [0.1, 0.2, None, 0.4]}).convert_dtypes()
    fig = summary_figure(t, ["s", "b", "c"])
    bars = [(tr.type, tr.name, list(tr.x), list(tr.y)) for tr in fig.data]
    assert bars == [("bar", "b=x, c=1", ["u", "v"], [0.1, 0.2]), ("bar", "b=y, c=2", ["v"], [0.4])]
    assert "1 failed" in fig.layout.title.text
    assert summary_figure(t[["s", "status"]], ["s"]) is None
