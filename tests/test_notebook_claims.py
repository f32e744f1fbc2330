"""benchmarks/notebook_claims.py: claims checked over results.json, runs bounded by --timeout."""
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("notebook_claims", ROOT / "benchmarks" / "notebook_claims.py")
nc = sys.modules["notebook_claims"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
spec.loader.exec_module(nc)

GD_RUNS = ("linear-top", "mlp-top", "mlp-top-re (eta+/eta- = 50)", "mlp-top-uniform (5 hard + 15 uniform)",
           "mlp-uniform")


def gd_results(stuck_dead=0.9, stuck_sig=0.5, stuck_p5=0.01) -> dict:
    """A gradient_dominance results.json whose stuck run has the given late values."""
    figs = {"dead embeddings": [], "scores": [], "gradient ratio": []}
    final = {}
    for lab in GD_RUNS:
        stuck = lab == "mlp-top"
        final[lab] = {"P@5": stuck_p5 if stuck else 0.3}
        if lab != "linear-top":
            figs["dead embeddings"].append({"name": lab, "y": [0.0] + [stuck_dead if stuck else 0.0] * 3})
        pos, allv = (stuck_sig, stuck_sig) if stuck else (0.7, 0.3)
        figs["scores"] += [{"name": f"{lab}: positives", "y": [0.5, pos, pos]},
                           {"name": f"{lab}: sampled negatives", "y": [0.5, allv, allv]},
                           {"name": f"{lab}: all labels", "y": [0.5, allv, allv]}]
        figs["gradient ratio"].append({"name": lab, "y": [3.0, 2.0 if stuck else 4.0]})
    return {"final": final, "figures": figs}


def verdicts(name, res):
    return [v for v, _, _ in nc.check(name, res)]


def test_gradient_dominance_claims_hold_and_fail():
    assert verdicts("gradient_dominance", gd_results()) == ["holds"] * 4
    # A stuck run whose embeddings live and whose scores moved: the first three claims fail.
    assert verdicts("gradient_dominance", gd_results(stuck_dead=0.0, stuck_sig=0.2, stuck_p5=0.3)) == \
        ["does not hold"] * 3 + ["holds"]
    _, _, evidence = nc.check("gradient_dominance", gd_results())[0]
    assert "mlp-top 0.9" in evidence and "mlp-uniform 0" in evidence


def test_missing_data_is_not_checked():
    res = gd_results()
    del res["figures"]["scores"]
    assert verdicts("gradient_dominance", res) == ["holds", "not checked", "holds", "holds"]


def test_interval_claims():
    table = [{"sampler": s, "refreshes_per_epoch": k, "P@5": p, "time_s": t}
             for s, ps in (("mips-a", (0.2, 0.15, 0.07)), ("mips-s", (0.32, 0.29, 0.39)))
             for k, p, t in zip((1, 2, 4), ps, (2.8, 3.0, 3.2))]
    res = {"table": table, "interval_setting": "refreshes_per_epoch"}
    assert verdicts("interval_sensitivity", res) == ["holds", "holds", "holds", "holds"]
    table[0]["P@5"] = 0.01  # MIPS-a now better at the shortest interval than at PPE = 1
    assert verdicts("interval_sensitivity", res)[0] == "does not hold"


def test_rank_histogram_claims_read_the_notebooks_shapes():
    hist = lambda lows: [{"step": s, "P@5": p} for s, p in zip((5, 10, 15, 20), (0.1, 0.15) + lows)]
    res = {"runs": {s: {"steps_per_epoch": 10, "num_labels": 1000, "history": hist(lows)}
                    for s, lows in (("mips-a", (0.01, 0.2)), ("mips-s", (0.1, 0.2)))},
           "rank_medians": {"mips-a": {"first": {"all": 5.0, "mips": 5.0}, "last": {"all": 900.0, "mips": 900.0}},
                            "mips-s": {"first": {"all": 480.0}, "middle": {"all": 510.0}, "last": {"all": 495.0}}},
           "batch_concentration": {"mips-a": {"distinct": 90, "draws": 5000, "distinct_if_uniform": 990.0}}}
    assert verdicts("rank_histograms", res) == ["holds"] * 4
    res["rank_medians"]["mips-a"]["last"]["all"] = 2.0  # no drift
    assert verdicts("rank_histograms", res)[1] == "does not hold"


def test_main_reuses_results_and_reports_missing_runs(tmp_path, capsys):
    d = tmp_path / "gradient_dominance" / "defaults"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps(gd_results()))
    assert nc.main(["--only", "gradient_dominance", "--reuse", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "== gradient_dominance [defaults]: reused" in out and out.count("holds ") == 4
    assert nc.main(["--only", "tour", "--reuse", "--out", str(tmp_path)]) == 1
    assert "== tour [defaults]: not run" in capsys.readouterr().out


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        nc.main(["--timeout", "0"])
    with pytest.raises(SystemExit):
        nc.main(["--data", str(tmp_path / "absent")])


def test_run_past_timeout_is_killed_with_its_kernel(tmp_path, monkeypatch):
    pytest.importorskip("papermill")
    monkeypatch.setattr(nc, "NOTEBOOKS", ROOT / "tests" / "notebooks")
    pidfile = tmp_path / "pid"
    err = nc.run_notebook("echo", {"hang_once": str(pidfile)}, tmp_path / "out", timeout=5)
    assert err.startswith("killed after --timeout 5")
    if pidfile.exists():  # the kernel got as far as hanging: its parent (papermill) is gone
        with pytest.raises(ProcessLookupError):
            os.kill(int(pidfile.read_text()), 0)


def test_failing_notebook_is_reported(tmp_path, monkeypatch):
    pytest.importorskip("papermill")
    monkeypatch.setattr(nc, "NOTEBOOKS", ROOT / "tests" / "notebooks")
    err = nc.run_notebook("echo", {"a": 3, "fail_on": 3}, tmp_path / "out", timeout=300)
    assert err is not None and err.startswith("papermill exit")
