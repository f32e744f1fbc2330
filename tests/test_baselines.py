"""benchmarks/baselines.py: napkinXC and xmcviz runs scored alike, JSON lines, resume, table."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("napkinxc")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the script imports its sibling _jsonl
spec = importlib.util.spec_from_file_location("baselines", ROOT / "benchmarks" / "baselines.py")
baselines = importlib.util.module_from_spec(spec)
spec.loader.exec_module(baselines)


def test_runs_score_alike_and_resume(tmp_path, capsys):
    out = tmp_path / "b.jsonl"
    argv = ["--data", "synthetic:tiny", "--methods", "ovr,full", "--epochs", "1", "--out", str(out)]
    recs = baselines.main(argv)
    assert [(r["data"], r["method"]) for r in recs] == [("synthetic:tiny", "ovr"), ("synthetic:tiny", "full")]
    for r in recs:
        assert all(0.0 <= r[k] <= 1.0 for k in baselines.KEYS) and r["train_s"] > 0
    assert recs[0]["P@1"] > 0.3  # napkinXC's OVR learns the tiny preset
    lines = [json.loads(s) for s in out.read_text().splitlines()]
    assert lines == recs
    table = capsys.readouterr().out.splitlines()
    assert table[-4].startswith("| data | method | P@1") and table[-1].startswith("| synthetic:tiny | full |")
    # --resume keeps the finished runs and only adds the new one.
    more = baselines.main(argv[:3] + ["ovr,full,plt"] + argv[4:] + ["--resume"])
    assert more[:2] == recs and more[2]["method"] == "plt"
    assert len(out.read_text().splitlines()) == 3


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        baselines.main(["--epochs", "0"])
