import json

import pytest
import torch

from xmcviz.core.rundir import (JsonlWriter, RunDir, RunDirNotEmpty, atomic_write_json,
                           environment_info, load_checkpoint, read_jsonl, save_checkpoint,
                           truncate_jsonl)


def test_read_jsonl_drops_torn_last_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "P@')
    assert read_jsonl(p) == [{"step": 1}, {"step": 2}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_read_jsonl_rejects_bad_middle_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match="m.jsonl:2"):
        read_jsonl(p)


def test_writer_flushes_each_record_and_cuts_torn_tail(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 1}\n{"step": 2, "lo')  # killed mid-write
    w = JsonlWriter(p)
    w.write({"step": 2, "loss": 0.5})
    # Readable before close: the record reached the file when written.
    assert read_jsonl(p) == [{"step": 1}, {"step": 2, "loss": 0.5}]
    w.close()
    assert p.read_text().count("\n") == 2


def test_truncate_jsonl(tmp_path):
    p = tmp_path / "m.jsonl"
    with JsonlWriter(p) as w:
        for s in range(5):
            w.write({"step": s})
    assert truncate_jsonl(p, lambda r: r["step"] <= 2) == 3
    assert [r["step"] for r in read_jsonl(p)] == [0, 1, 2]
    assert not (tmp_path / "m.jsonl.tmp").exists()


def test_atomic_json_and_checkpoint_roundtrip(tmp_path):
    atomic_write_json(tmp_path / "c.json", {"a": 1, "t": (1, 2)})
    assert json.loads((tmp_path / "c.json").read_text()) == {"a": 1, "t": [1, 2]}
    state = {"w": torch.arange(6.0).view(2, 3), "step": 7, "rng": torch.get_rng_state()}
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    back = load_checkpoint(tmp_path / "checkpoint.pt")
    assert back["step"] == 7 and torch.equal(back["w"], state["w"])
    assert not (tmp_path / "checkpoint.pt.tmp").exists()


def test_rundir_refuses_nonempty_unless_resume_or_overwrite(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.prepare()
    assert rd.path.is_dir()
    rd.write_config({"seed": 0})
    (rd.hooks_dir).mkdir()
    (rd.hooks_dir / "ranks.jsonl").write_text("{}\n")
    (rd.path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirNotEmpty, match="not empty"):
        rd.prepare()
    rd.prepare(resume=True)
    assert rd.config_path.exists()
    rd.prepare(overwrite=True)
    assert not rd.config_path.exists() and not rd.hooks_dir.exists()
    assert (rd.path / "notes.txt").read_text() == "mine"  # only run files are removed


def test_truncate_metrics_keeps_records_up_to_step(tmp_path):
    rd = RunDir(tmp_path)
    with rd.metrics_writer() as w:
        for s in (4, 8, 12):
            w.write({"step": s, "P@1": 0.1})
    assert rd.truncate_metrics(8) == 2
    assert [r["step"] for r in rd.read_metrics()] == [4, 8]


def test_environment_info_has_versions():
    info = environment_info("cpu")
    for key in ("python", "torch", "numpy", "faiss", "device"):
        assert key in info
    assert info["torch"] == torch.__version__ and info["device"] == "cpu"
