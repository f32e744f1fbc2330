"""`xmcviz inspect`: the text summary of a real run directory."""
import re

import pytest

from xmcviz.cli import main
from xmcviz.core.run_reader import load_run
from xmcviz.notebook.analysis import top_negative_labels
from xmcviz.notebook.inspect import summarise_run


def test_summary_names_the_run_and_its_settings(tiny_run):
    path, _ = tiny_run
    lines = summarise_run(path).splitlines()
    assert lines[0] == f"run: {path}"
    assert lines[1].strip().startswith("data=synthetic:tiny, model=mlp, sampler=mips-s, negatives=10, "
                                       "mips_k=3, refreshes_per_epoch=2")
    assert "refresh_every" not in lines[1]  # unset settings are left out


def test_summary_metrics_are_the_runs(tiny_run):
    path, _ = tiny_run
    text = summarise_run(path)
    m = load_run(path).metrics
    best, last = m.loc[m["P@5"].idxmax()], m.iloc[-1]
    assert (f"evaluations: 2; best P@5 {best['P@5']:.4f} at epoch {best['epoch']} "
            f"(step {int(best['step'])})") in text
    assert f"last P@1/P@3/P@5 {last['P@1']:.4f}/{last['P@3']:.4f}/{last['P@5']:.4f}" in text


def test_summary_reports_every_instrument(tiny_run):
    path, _ = tiny_run
    text = summarise_run(path)
    hooks = load_run(path).hooks
    ranks = hooks["ranks"]
    assert f"negative ranks: {len(ranks)} logged; median {ranks['rank'].median():.0f}" in text
    for phase in ("first", "middle", "last"):
        assert re.search(rf"{phase} step of refresh intervals: median rank \d+ \(.*mips \d+", text)
    top = top_negative_labels(hooks["freq"], hooks["freq_summary"], n=10)
    first = f"{int(top['label'].iloc[0])}: {top['share'].iloc[0]:.1%}"
    assert f"top 10 negative labels (share of draws): {first}" in text
    assert "per refresh interval: top-10 share median" in text
    g = hooks["grad_summary"]
    assert f"gradient dominance ||g-||/||g+||: first {g['ratio'].iloc[0]:.3g}" in text
    assert re.search(r"index recall vs exact: [01]\.\d{3} right after a refresh", text)


def test_top_limits_the_labels_listed(tiny_run):
    path, _ = tiny_run
    line = next(l for l in summarise_run(path, top=3).splitlines() if l.startswith("top "))
    assert line.startswith("top 3 negative labels") and line.count("%") == 3


def test_a_run_without_evaluations_or_hooks(tmp_path):
    text = summarise_run(tmp_path)
    assert "evaluations: none yet" in text
    assert not any(w in text for w in ("negative ranks", "negative labels", "gradient", "recall"))


def test_cli_prints_the_summary_and_names_a_missing_run(tiny_run, tmp_path, capsys):
    path, _ = tiny_run
    assert main(["inspect", str(path), "--top", "3"]) == 0
    assert capsys.readouterr().out.strip() == summarise_run(path, top=3)
    assert main(["inspect", str(tmp_path / "gone")]) == 2
    assert "gone: no such run directory" in capsys.readouterr().err


def test_missing_run_directory_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        summarise_run(tmp_path / "gone")
