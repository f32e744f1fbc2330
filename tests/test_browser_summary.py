"""A sweep's ``summary.html`` in a real browser: headless Chromium (Playwright) opens the page
from disk, offline, and finds the figure drawn (one panel per grid parameter, one line per run
label, error bars over seeds) and the long table with one row per cell and run label.
Skips when Chromium or Playwright is missing, unless XMCVIZ_REQUIRE_BROWSER=1 (as in CI).
"""
import itertools
import json
import os
from pathlib import Path

import pytest

from xmcviz.sweep import RunRecord, slug_for, write_outputs

pytestmark = pytest.mark.browser

# JS: per trace of the summary figure, its axis, name, drawn points and error bar values.
TRACES_JS = """() => {
  const gd = document.getElementById('sweep-summary');
  return (gd && gd._fullData || []).map(t => ({axis: t.xaxis, name: t.name,
    n: (t.x || []).length, errors: t.error_y && t.error_y.visible ? t.error_y.array.length : 0}));
}"""


def _summary(out: Path) -> Path:
    """summary.html of a sweep over k x sampler x seed with two run labels, one cell failed."""
    grid = {"k": [5, 20, 50], "sampler": ["uniform", "mips-s"], "seed": [0, 1]}
    records = []
    for combo in (dict(zip(grid, v)) for v in itertools.product(*grid.values())):
        slug = slug_for(combo)
        d = out / slug
        d.mkdir(parents=True)
        if slug == "k=50__sampler=mips-s__seed=1":
            records.append(RunRecord(slug, combo, "failed", "ValueError: boom", 3.0, d))
            continue
        final = {label: {"P@1": 0.5, "P@5": 0.2 + combo["k"] / 500 + shift + combo["seed"] / 50,
                         "train_time_s": 1.5} for label, shift in (("mips-a", 0.0), ("mips-s", 0.1))}
        (d / "results.json").write_text(json.dumps({"final": final}))
        records.append(RunRecord(slug, combo, "ok", None, 2.0, d))
    write_outputs(out, records, list(grid))
    return out / "summary.html"


def test_sweep_summary_renders_figure_and_table_in_chromium(tmp_path, browser_page):
    page, errors = browser_page
    page_path = _summary(tmp_path / "sweep")
    page.goto(page_path.as_uri(), timeout=60000)
    page.wait_for_function("() => document.querySelector('#sweep-summary .main-svg')",
                           timeout=60000)
    traces = page.evaluate(TRACES_JS)
    # Two panels (k, sampler; seed averaged), one line per run label in each, error bars.
    assert [(t["axis"], t["name"]) for t in traces] == [
        ("x", "mips-a"), ("x", "mips-s"), ("x2", "mips-a"), ("x2", "mips-s")]
    assert [t["n"] for t in traces] == [3, 3, 2, 2]
    assert all(t["errors"] == t["n"] for t in traces)
    # Plotly drew them: one line path per trace, one panel title per parameter.
    assert page.locator("#sweep-summary .scatterlayer .trace").count() == 4
    titles = page.locator("#sweep-summary .annotation-text").all_text_contents()
    assert any("vs k" in t for t in titles) and any("vs sampler" in t for t in titles)
    legend = page.locator("#sweep-summary .legendtext").all_text_contents()
    assert legend == ["mips-a", "mips-s"]
    # The long table: one row per cell and run label, plus the failed cell.
    rows = page.locator("table.sweep tbody tr")
    assert rows.count() == 11 * 2 + 1
    header = page.locator("table.sweep thead th").all_inner_texts()
    assert header[:5] == ["k", "sampler", "seed", "label", "P@5"]
    assert page.locator("table.sweep td.failed").count() == 1
    assert "k=50__sampler=mips-s__seed=1" in page.inner_text("#sweep-failed")
    shot = os.environ.get("XMCVIZ_SCREENSHOT")
    if shot:
        page.screenshot(path=shot, full_page=False)
    assert not errors, "\n".join(errors)
