"""End to end in a real browser: JupyterLab + headless Chromium run the tour's first panel.

Serves JupyterLab on localhost over a temporary copy of ``tour.ipynb`` (small parameters),
opens it in Debian's Chromium through Playwright, runs all cells, clicks the first Train
button and checks that the live plotly figure gains points while the run trains, that the
run finishes, and that no JavaScript or widget error appears.  With
``XMCVIZ_SCREENSHOT=PATH`` it also saves a screenshot of the live figure there (how
``docs/img/live_figure.png`` was made).  Skips when Chromium or Playwright is missing.
"""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import require_browser

pytestmark = pytest.mark.browser

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TOKEN = "xmcviz-browser-test"
# JS: number of points plotly drew in each figure of the widget outputs (_fullData holds the
# decoded arrays: plotly 7 sends numpy arrays base64-encoded, so gd.data's x has no length).
POINTS_JS = """() => Array.from(document.querySelectorAll('.jupyter-widgets .js-plotly-plot')).map(
  gd => (gd._fullData || []).reduce((n, t) => n + ((t.x && t.x.length) || 0), 0))"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    require_browser()  # before starting JupyterLab
    import nbformat

    root = tmp_path / "lab"
    root.mkdir()
    nb = nbformat.read(NOTEBOOKS / "tour.ipynb", as_version=4)
    # About ten seconds of training for the first panel: several live redraws.  Injected after
    # the parameters cell, as papermill does.
    params = {"data_dominance": "synthetic:small", "epochs_dominance": 20, "eval_every_steps": 2,
              "threads": 1, "device": "cpu", "output_dir": str(tmp_path / "out")}
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items())))
    nbformat.write(nb, root / "tour.ipynb")
    port = free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "jrt")}
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
                             "--ip=127.0.0.1", "--allow-root", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
                             "--LabApp.news_url=", "--LabApp.expose_app_in_browser=True"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    pytest.fail(f"JupyterLab did not start: {(tmp_path / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_tour_live_figure_in_chromium(lab, tmp_path, browser_page):
    page, errors = browser_page
    page.goto(f"{lab}/lab/tree/tour.ipynb?token={TOKEN}", timeout=60000)
    # Through JupyterLab's command registry (window.jupyterapp): menus race the kernel start.
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext", timeout=60000)
    page.evaluate("""async () => {
        const nb = window.jupyterapp.shell.currentWidget;
        await nb.context.ready;
        await nb.sessionContext.ready;
        await window.jupyterapp.commands.execute('notebook:run-all-cells');
    }""")
    train = page.locator(".jupyter-widgets button", has_text="Train").first
    try:
        train.wait_for(timeout=90000)
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        raise AssertionError(f"no Train button; page text: {page.inner_text('body')[-3000:]}; "
                             f"errors: {errors}; screenshot {tmp_path / 'failure.png'}")
    train.scroll_into_view_if_needed()
    train.click()

    snapshots: list[list[int]] = []
    status = page.locator(".jupyter-widgets .widget-html-content").filter(has_text="mlp-top").first
    deadline = time.time() + 120
    while time.time() < deadline:
        snapshots.append(page.evaluate(POINTS_JS))
        text = status.inner_text() if status.count() else ""
        if "P@5 =" in text or "failed" in text:
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"the run did not finish in time; snapshots {snapshots[-5:]}")
    assert "P@5 =" in text, text
    time.sleep(0.5)
    snapshots.append(page.evaluate(POINTS_JS))
    totals = [sum(s) for s in snapshots if s]
    # Live: the figures had data before the end, and more of it later.
    assert len(set(totals)) >= 3, f"figure did not change during training: {totals}"
    assert totals[-1] > min(totals) > 0 or totals[-1] > totals[0]
    body = page.inner_text("body")
    for bad in ("Error displaying widget", "Failed to load model", "Error rendering output"):
        assert bad not in body
    shot = os.environ.get("XMCVIZ_SCREENSHOT")
    if shot:
        page.add_style_tag(content=".Toastify { display: none !important; }")  # news prompt
        fig = page.locator(".jupyter-widgets .js-plotly-plot").first
        fig.scroll_into_view_if_needed()
        page.locator(".jupyter-widgets.widget-vbox").first.screenshot(path=shot)
    real = [e for e in errors if "favicon" not in e]
    assert not real, "\n".join(real)
