"""The full loss's batch bound follows the free memory of its device (monkeypatched here)."""
import pytest
import torch

from xmcviz import data
from xmcviz.samplers import full
from xmcviz.samplers.base import Positives
from xmcviz.samplers.full import BYTES_PER_ENTRY, FullSampler, free_memory_bytes
from xmcviz.core.trainer import TrainConfig, Trainer


def _positives(B):
    return Positives(torch.zeros(B, 1, dtype=torch.int64), torch.ones(B, 1, dtype=torch.bool))


def test_free_memory_is_positive_on_cpu():
    assert free_memory_bytes("cpu") > 0


def test_bound_follows_free_memory(monkeypatch):
    L = 100
    monkeypatch.setattr(full, "free_memory_bytes", lambda device: 10 * L * BYTES_PER_ENTRY)
    s = FullSampler(L)
    assert s.max_elements == 10 * L
    assert s.sample(torch.zeros(10, 3), _positives(10)).mask.shape == (10, L)
    with pytest.raises(ValueError, match=r"B\*L = 11\*100 = 1100 .*free memory of cpu.*at most 10"):
        s.sample(torch.zeros(11, 3), _positives(11))
    # Plenty of memory: the int32 cap is the bound again.
    monkeypatch.setattr(full, "free_memory_bytes", lambda device: 1 << 50)
    assert FullSampler(L).max_elements == full.MAX_ELEMENTS


def test_trainer_refuses_a_batch_the_memory_cannot_hold(monkeypatch):
    ds = data.synthetic("tiny", seed=0)  # 64 labels
    monkeypatch.setattr(full, "free_memory_bytes", lambda device: 32 * 64 * BYTES_PER_ENTRY)
    cfg = TrainConfig(sampler="full", batch_size=64, epochs=1, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"batch_size=64 is out of range .*allowed \[1, 32\]"):
        Trainer(cfg, dataset=ds)
    Trainer(TrainConfig(sampler="full", batch_size=32, epochs=1, device="cpu", progress=False),
            dataset=ds)
