import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("XMCVIZ_SHARED", Path(__file__).resolve().parents[2] / "shared"))


@pytest.fixture
def shared_data() -> Path:
    """The read-only development datasets beside the repo; skip when absent."""
    d = SHARED / "data"
    if not d.is_dir():
        pytest.skip("../shared/data not present")
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


def pytest_configure(config):
    # Tiny tensors: several threads per op only oversubscribe the 2 CI cores (50x slower steps).
    import torch
    torch.set_num_threads(1)
