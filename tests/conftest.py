import os
from pathlib import Path

import pytest

#: A folder holding real datasets (Delicious/, Bibtex/, ... as downloaded from Mulan or the
#: Extreme Classification Repository); tests that need one skip when it is not set.
DATA_ENV = "XMCVIZ_DATA"


@pytest.fixture
def shared_data() -> Path:
    """The folder of real datasets named by ``$XMCVIZ_DATA`` (read-only); skip when absent."""
    d = Path(os.environ.get(DATA_ENV, "")).expanduser()
    if not os.environ.get(DATA_ENV) or not d.is_dir():
        pytest.skip(f"real datasets not available: set {DATA_ENV} to a folder holding Delicious/ and Bibtex/")
    return d


@pytest.fixture
def count_calls(monkeypatch):
    """``count_calls(module, name)``: a list that gets an entry each time ``module.name`` is
    called (the real function still runs), to check which code path a test took."""
    def spy(module, name: str) -> list:
        calls, real = [], getattr(module, name)

        def counted(*args, **kwargs):
            calls.append(1)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
        return calls
    return spy


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A real run directory, read-only for tests: one epoch of MIPS-s on ``synthetic:tiny`` (8 steps,
    an index refresh every 4, an evaluation every 4) with the ranks, freq, grad and staleness hooks.
    Returns ``(path, trainer)``."""
    from xmcviz.core.trainer import TrainConfig, Trainer
    from xmcviz.hooks import make_hooks
    out = tmp_path_factory.mktemp("tiny_run") / "run"
    cfg = TrainConfig(data="synthetic:tiny", model="mlp", hidden=16, sampler="mips-s", negatives=10,
                      mips_k=3, refreshes_per_epoch=2, batch_size=128, epochs=1, lr=0.01,
                      eval_every_steps=4, device="cpu", progress=False, seed=0, out=str(out))
    trainer = Trainer(cfg, hooks=make_hooks("ranks:1,freq,grad:4,staleness:1"))
    trainer.train()
    return out, trainer


def pytest_configure(config):
    # Tiny tensors: several threads per op only oversubscribe the 2 CI cores (50x slower steps).
    import torch
    torch.set_num_threads(1)


#: Debian's Chromium; the browser tests drive it through Playwright.
CHROMIUM = os.environ.get("XMCVIZ_CHROMIUM", "/usr/bin/chromium")


def require_browser() -> None:
    """Skip without Chromium or Playwright; with ``XMCVIZ_REQUIRE_BROWSER=1`` (CI) fail instead."""
    required = os.environ.get("XMCVIZ_REQUIRE_BROWSER") == "1"
    if not Path(CHROMIUM).exists():
        (pytest.fail if required else pytest.skip)(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    if required:
        import playwright.sync_api  # noqa: F401  (an ImportError fails the check in CI)
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")


@pytest.fixture
def browser_page():
    """``(page, errors)``: a headless Chromium page and the JavaScript errors it reports (console
    errors and uncaught exceptions), collected while the test runs; see :func:`require_browser`."""
    require_browser()
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            yield page, errors
        finally:
            browser.close()

