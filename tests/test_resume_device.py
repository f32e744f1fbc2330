"""Resuming across devices is refused clearly; a resumed MIPS run rebuilds its index on the run's device."""
import pytest
import torch

from xmcviz import data
from xmcviz.core.rundir import load_checkpoint, save_checkpoint
from xmcviz.core.trainer import TrainConfig, Trainer
from xmcviz.samplers import faiss_index
from xmcviz.samplers.faiss_index import MipsIndex


@pytest.fixture(scope="module")
def tiny():
    return data.synthetic("tiny", seed=0)


def _cfg(out, **kw) -> TrainConfig:
    base = dict(model="mlp", hidden=16, sampler="mips-s", negatives=10, batch_size=128, epochs=1,
                seed=0, device="cpu", progress=False, out=str(out))
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def run_dir(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume_device") / "run"
    Trainer(_cfg(out), dataset=tiny).train()
    return out


def _rewrite(run_dir, tmp_path, edit):
    """A copy of ``run_dir`` whose checkpoint went through ``edit(ck)``."""
    import shutil
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    ck = load_checkpoint(out / "checkpoint.pt")
    edit(ck)
    save_checkpoint(out / "checkpoint.pt", ck)
    return out


def test_checkpoint_records_the_device_type(run_dir):
    assert load_checkpoint(run_dir / "checkpoint.pt")["device_type"] == "cpu"


def test_cuda_checkpoint_resumed_on_cpu_is_refused(run_dir, tiny, tmp_path):
    def as_cuda(ck):  # what a CUDA run writes: its device type and a 16-byte CUDA RNG state
        ck["device_type"] = "cuda"
        ck["generator"] = torch.zeros(16, dtype=torch.uint8)
        ck["cuda_rng"] = torch.zeros(16, dtype=torch.uint8)
    out = _rewrite(run_dir, tmp_path, as_cuda)
    with pytest.raises(ValueError, match=r"written on 'cuda' but this run resolves "
                                         r"device='auto' to 'cpu'.*--device cuda"):
        Trainer(_cfg(out, device="auto" if not torch.cuda.is_available() else "cpu",
                     epochs=2, resume=True), dataset=tiny)


def test_older_checkpoint_without_the_field_is_judged_by_its_cuda_rng(run_dir, tiny, tmp_path):
    def legacy_cuda(ck):
        del ck["device_type"]
        ck["cuda_rng"] = torch.zeros(16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="written on 'cuda'"):
        Trainer(_cfg(_rewrite(run_dir, tmp_path / "a", legacy_cuda), epochs=2, resume=True),
                dataset=tiny)

    def legacy_cpu(ck):
        del ck["device_type"]
    tr = Trainer(_cfg(_rewrite(run_dir, tmp_path / "b", legacy_cpu), epochs=2, resume=True),
                 dataset=tiny)
    assert tr.step == tr.steps_per_epoch


def test_resumed_mips_index_is_built_for_the_run_device(run_dir, tiny, tmp_path):
    # The sampler gets the run's device, and the resumed index searches as the saved one did.
    out = _rewrite(run_dir, tmp_path, lambda ck: None)
    tr = Trainer(_cfg(out, epochs=2, resume=True), dataset=tiny)
    index = tr.sampler.index
    assert index.device == tr.device and index.is_built and not index.on_gpu
    saved = load_checkpoint(run_dir / "checkpoint.pt")["sampler"]["index"]["snapshot"]
    torch.testing.assert_close(index.snapshot[0], saved[:, :index.dim])


def test_index_placement_follows_the_configured_gpu(monkeypatch):
    # Placement logic only (no GPU here): with faiss-gpu, a CPU snapshot (as a checkpoint
    # loads it) goes to the configured cuda:N; without it, the index stays on the host.
    snap = torch.zeros(10, 4)
    monkeypatch.setattr(faiss_index, "faiss_has_gpu", lambda: True)
    assert MipsIndex(4, device="cuda:1").index_device(snap) == torch.device("cuda:1")
    assert MipsIndex(4, device="cpu").index_device(snap) == torch.device("cpu")
    assert MipsIndex(4, device="cuda:1", use_gpu=False).index_device(snap) == torch.device("cpu")
    monkeypatch.setattr(faiss_index, "faiss_has_gpu", lambda: False)
    assert MipsIndex(4, device="cuda:1").index_device(snap) == torch.device("cpu")
