"""notebooks/adversarial_sampling.ipynb runs under papermill with tiny parameters."""
import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pm = pytest.importorskip("papermill")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "adversarial_sampling.ipynb"
PLOTLY = "application/vnd.plotly.v1+json"
TINY = dict(data="synthetic:tiny", samplers=["full", "adversarial", "uniform", "frequency", "nce"], epochs=1,
            batch_size=64, eval_every_steps=5, adv_dims=4, snr_probe=32, snr_draws=8, seed=0,
            device="cpu", threads=1)


def test_committed_notebook_is_clean_and_parameterised():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in nb.cells if c.cell_type == "code")
    params = pm.inspect_notebook(str(NOTEBOOK))
    assert {"data", "samplers", "epochs", "seed", "device", "output_dir", "lr", "reg"} <= set(params)


def test_notebook_runs(tmp_path):
    out = tmp_path / "out"
    executed = tmp_path / "adv.ipynb"
    pm.execute_notebook(str(NOTEBOOK), str(executed), parameters={**TINY, "output_dir": str(out)},
                        kernel_name="python3", cwd=str(NOTEBOOK.parent), progress_bar=False,
                        store_widget_state=False)
    res = json.loads((out / "results.json").read_text())
    assert set(res["final"]) == set(TINY["samplers"])
    steps = [r["step"] for r in res["curves"]["uniform"]]
    assert steps[0] == 0 and steps[-1] == res["final"]["uniform"]["step"] > 0
    adv = res["final"]["adversarial"]
    assert adv["fit_s"] > 0 and 0 <= adv["acc_aux"] <= 1
    assert res["curves"]["adversarial"][0]["acc"] == adv["acc_aux"]  # step 0: the tree alone
    assert res["final"]["full"]["acc"] == res["final"]["full"]["acc_raw"]  # the reference: no bias removal
    assert {"init_raw", "init_debiased", "uniform_final_raw", "uniform_final_debiased"} == set(res["snr"])
    for recs in res["snr"].values():
        assert {r["sampler"] for r in recs} == {"uniform", "frequency", "adversarial"}
    for s in TINY["samplers"]:
        assert (out / s / "metrics.jsonl").exists()
    nb = nbformat.read(executed, as_version=4)
    figs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if PLOTLY in o.get("data", {})]
    assert len(figs) >= 5  # two live figures, two bias-removal bars, the SNR bars
    assert all("Plotly.newPlot" in o["data"]["text/html"] for o in figs)
    assert "widgets" not in nb.metadata
