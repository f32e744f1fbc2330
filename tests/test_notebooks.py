"""Every notebook runs top to bottom under papermill with tiny parameters.

Checks: ``results.json`` in ``output_dir`` holds what the notebook promises; the executed
notebook keeps its figures as static plotly outputs (plotly JSON + HTML, which an HTML export
shows) and no widget state.
"""
import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pm = pytest.importorskip("papermill")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PLOTLY = "application/vnd.plotly.v1+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
TINY = dict(threads=1, seed=0, device="cpu")
# Small enough for 2 CPU cores, big enough that every figure gets data.
CASES = {
    "gradient_dominance": dict(data="synthetic:tiny", negatives=8, hard_k=2, epochs=1, grad_every=2,
                               eval_every_steps=4),
    "rank_histograms": dict(data="synthetic:tiny", negatives=8, mips_k=3, warmup_epochs=1, epochs=2,
                            ranks_every=1, eval_every_steps=4),
    "interval_sensitivity": dict(data="synthetic:tiny", negatives=8, mips_k=3, intervals=[1, 2], epochs=2,
                                 eval_every_steps=4),
    "false_negatives": dict(data="synthetic:tiny", samplers=["uniform", "mips-s"], hide_fractions=[0.2],
                            negatives=8, mips_k=3, epochs=2, refreshes_per_epoch=2),
    "tour": dict(data_dominance="synthetic:tiny", data_mips="synthetic:tiny", epochs_dominance=1,
                 epochs_mips=2, negatives_dominance=8, negatives_mips=8, autorun=True),
}


def execute(name: str, tmp_path: Path, **params) -> tuple[dict, "nbformat.NotebookNode"]:
    out = tmp_path / "out"
    executed = tmp_path / f"{name}.ipynb"
    pm.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(executed),
                        parameters={**TINY, **CASES[name], **params, "output_dir": str(out)},
                        kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False,
                        store_widget_state=False)
    return json.loads((out / "results.json").read_text()), nbformat.read(executed, as_version=4)


def plotly_outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if PLOTLY in o.get("data", {})]


def check_static(nb, figures: int) -> None:
    outs = plotly_outputs(nb)
    assert len(outs) >= figures
    for o in outs:
        assert "Plotly.newPlot" in o["data"]["text/html"]  # what nbconvert's HTML export shows
        assert o["data"][PLOTLY]["data"] is not None
    # No widget state (megabytes of JS) and no widget-only figure.
    assert "widgets" not in nb.metadata
    assert not any(WIDGET_VIEW in o.get("data", {}) and PLOTLY not in o.get("data", {}) and
                   "FigureWidget" in str(o.get("data", {}).get("text/plain", ""))
                   for c in nb.cells for o in c.get("outputs", []))


def test_committed_notebooks_are_clean_and_parameterised():
    for name in CASES:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), name
        params = pm.inspect_notebook(str(NOTEBOOKS / f"{name}.ipynb"))
        assert {"seed", "device", "output_dir"} <= set(params), name
        assert any(p.startswith("data") for p in params) and any("epochs" in p for p in params), name
        assert params["device"]["default"] == '"auto"'


def test_gradient_dominance(tmp_path):
    res, nb = execute("gradient_dominance", tmp_path)
    labels = list(res["final"])
    assert labels[:2] == ["linear-top", "mlp-top"] and labels[-1] == "mlp-uniform" and len(labels) == 5
    assert any("top-re" in label for label in labels) and any("top-uniform" in label for label in labels)
    for r in res["final"].values():
        assert 0 <= r["P@5"] <= 1 and r["train_time_s"] > 0
    assert set(res["figures"]) == {"P@5", "dead embeddings", "scores", "gradient ratio", "gradient cosine"}
    ratio = res["figures"]["gradient ratio"]
    assert {t["name"] for t in ratio} >= set(labels) and all(len(t["y"]) > 0 for t in ratio)
    # The linear model's embedding is its fixed input: left out of the dead-embedding figure.
    dead = res["figures"]["dead embeddings"]
    assert {t["name"] for t in dead} == set(labels) - {"linear-top"}
    assert all(0 <= y <= 1 for t in dead for y in t["y"])
    scores = {t["name"]: t["y"] for t in res["figures"]["scores"]}
    assert set(scores) == {f"{lab}: {w}" for lab in labels for w in ("positives", "sampled negatives", "all labels")}
    assert all(0 <= y <= 1 for ys in scores.values() for y in ys)
    assert res["live"]["draw_fraction"] < 0.5
    check_static(nb, 5)


def test_rank_histograms(tmp_path):
    res, nb = execute("rank_histograms", tmp_path)
    assert list(res["final"]) == ["mips-a", "mips-s"]
    for s in ("mips-a", "mips-s"):
        assert set(res["rank_medians"][s]) == {"first", "middle", "last"}
        b = res["batch_concentration"][s]
        assert b["step"] == res["runs"][s]["steps_per_epoch"]  # first step after the warm-up
        assert b["draws"] > 0 and b["distinct"] <= b["draws"]
    assert res["batch_concentration"]["mips-a"]["draws"] > res["batch_concentration"]["mips-s"]["draws"]
    names = {t["name"] for t in res["figures"]["ranks mips-a"]}
    assert {"mips-a, first step", "mips-a, last step", "uniform expectation"} <= names
    check_static(nb, 4)


def test_false_negatives(tmp_path):
    res, nb = execute("false_negatives", tmp_path)
    assert list(res["final"]) == ["uniform, 20% hidden", "mips-s, 20% hidden"]
    shares = {lab: {r["source"]: r for r in rows} for lab, rows in res["hidden_shares"].items()}
    assert set(shares["mips-s, 20% hidden"]) >= {"mips", "uniform", "all"}
    assert shares["uniform, 20% hidden"]["uniform"]["draws"] > 0
    assert all(isinstance(lines, list) and lines for lines in res["findings"].values())
    names = {t["name"] for t in res["figures"]["popularity"]}
    assert "mips-s, 20% hidden: mips negatives" in names and "mips-s, 20% hidden: positives" in names
    assert any(t["name"] == "uniform, 20% hidden: base rate" for t in res["figures"]["hidden share"])
    assert len(res["figures"]["hidden recall"]) == 2
    check_static(nb, 4)


def test_interval_sensitivity(tmp_path):
    res, nb = execute("interval_sensitivity", tmp_path)
    assert list(res["final"]) == ["mips-a, PPE=1", "mips-a, PPE=2", "mips-s, PPE=1", "mips-s, PPE=2"]
    assert res["interval_setting"] == "refreshes_per_epoch"
    assert [row["refreshes_per_epoch"] for row in res["table"]] == [1, 2, 1, 2]
    sens = res["figures"]["interval"]
    assert [t["x"] for t in sens] == [[1, 2]] * 4  # P@5 and time, per sampler
    check_static(nb, 2)


def test_interval_sensitivity_in_steps(tmp_path):
    res, _ = execute("interval_sensitivity", tmp_path, interval_kind="steps", intervals=[3], samplers=["mips-s"],
                     epochs=2)
    assert list(res["final"]) == ["mips-s, P=3"]
    assert res["runs"]["mips-s, P=3"]["config"]["refresh_every"] == 3


def test_tour_autorun(tmp_path):
    res, nb = execute("tour", tmp_path)
    assert list(res["dominance"]["final"]) == ["mlp-top"]
    assert list(res["stale"]["final"]) == ["mips-a, PPE=1"]
    check_static(nb, 5)  # the panels' 2 + 3 figures, drawn in the autorun cells


def test_html_export_shows_figures(tmp_path):
    from nbconvert import HTMLExporter

    _, nb = execute("gradient_dominance", tmp_path, epochs=1)
    body, _ = HTMLExporter().from_notebook_node(nb)
    assert body.count("Plotly.newPlot") >= 3
    assert "plotly.js v" in body or "Plotly=" in body or "window.Plotly" in body  # plotly.js embedded
