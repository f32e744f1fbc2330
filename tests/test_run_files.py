"""Run directories end to end: `train --hooks`, `inspect`, SIGKILL mid-epoch, file size."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xmcviz import load_run
from xmcviz.cli import main

TINY = ["train", "--data", "synthetic:tiny", "--hidden", "16", "--negatives", "10",
        "--batch-size", "64", "--epochs", "2", "--lr", "0.01", "--device", "cpu", "--no-progress"]


def test_train_hooks_option_writes_each_hook_and_inspect_summarises(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(TINY + ["--sampler", "mips-s", "--mips-k", "3", "--warmup-epochs", "1",
                      "--hooks", "ranks:2,freq:1,grad:2,staleness:1", "--out", str(out)])
    assert rc == 0
    capsys.readouterr()
    run = load_run(out)
    assert {"ranks", "ranks_summary", "freq", "freq_summary", "grad", "grad_summary",
            "staleness"} <= set(run.hooks)
    ranks = run.hooks["ranks"]
    assert {"step", "epoch", "steps_since_refresh", "refresh_interval", "source",
            "rank"} <= set(ranks.columns)
    assert set(ranks["step"].unique()) <= set(range(0, 100, 2))  # every 2nd step only
    assert set(ranks["source"].astype(str)) == {"uniform", "mips"}  # warm-up, then MIPS-s
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "best P@5" in text and "median rank" in text and "negative labels" in text


def test_train_without_hooks_and_bad_hook_spec(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TINY + ["--hooks", "none", "--out", str(out)]) == 0
    assert not (out / "hooks").exists() or not any((out / "hooks").iterdir())
    capsys.readouterr()
    assert main(TINY + ["--hooks", "ranks,bogus", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "'bogus'" in err and "allowed" in err
    assert main(TINY + ["--hooks", "ranks:x", "--out", str(tmp_path / "c")]) == 2
    assert "'x'" in capsys.readouterr().err


def test_inspect_missing_directory_is_a_usage_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nowhere")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def _wait_for(cond, timeout: float, proc: subprocess.Popen) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("training never reached the point to kill it")
        time.sleep(0.05)


def _last_logged_step(path) -> int:
    """The largest ``step`` among the complete lines of a hook's summary; -1 if none yet."""
    if not path.exists():
        return -1
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines(keepends=True)
             if line.endswith("\n")]
    return max(steps, default=-1)


def test_sigkill_mid_epoch_leaves_every_file_readable_and_resumable(tmp_path):
    out = tmp_path / "run"
    args = ["--data", "synthetic:small", "--hidden", "16", "--negatives", "20",
            "--batch-size", "32", "--epochs", "30", "--device", "cpu", "--no-progress",
            "--sampler", "mips-s", "--mips-k", "5", "--refresh-every", "7",
            "--hooks", "ranks:1,freq:1,grad:1,staleness:1", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "xmcviz", "train", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    metrics = out / "metrics.jsonl"
    # After the first evaluation (end of epoch 1) and a few steps into epoch 2: mid-epoch.
    # Wait for the logged step itself, not for a fixed time (a loaded machine is slow).
    _wait_for(lambda: metrics.exists() and metrics.stat().st_size > 0
              and _last_logged_step(out / "hooks" / "ranks.jsonl")
              >= json.loads((out / "config.json").read_text())["resolved"]["steps_per_epoch"] + 2,
              240, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    run = load_run(out)
    assert len(run.metrics) >= 1 and run.config["sampler"] == "mips-s"
    for name in ("ranks", "freq", "grad", "staleness"):
        assert name in run.hooks and len(run.hooks[name]) > 0, name
    steps_per_epoch = run.config["resolved"]["steps_per_epoch"]
    last = int(run.hooks["ranks"]["step"].max())
    assert last >= steps_per_epoch  # it was killed in a later epoch than the first

    # --resume (to a shorter end: epochs may change on resume) continues from the checkpoint
    # of the last finished epoch; the steps redone are not logged twice.
    end = max(3, last // steps_per_epoch + 2)
    resumed = subprocess.run(
        [sys.executable, "-m", "xmcviz", "train", *[str(end) if a == "30" else a for a in args],
         "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run = load_run(out)
    assert list(run.metrics["epoch"]) == [float(e) for e in range(1, end + 1)]
    summary_steps = run.hooks["ranks_summary"]["step"]
    assert summary_steps.is_unique and summary_steps.max() == end * steps_per_epoch - 1


def test_default_hooks_stay_small_on_an_eurlex_sized_run(tmp_path, capsys):
    """Hook files grow linearly with steps: one epoch x 20 must stay under the 50 MB budget."""
    out = tmp_path / "run"
    assert main(["train", "--data", "synthetic:eurlex-like", "--sampler", "mips-s", "--epochs", "1",
                 "--device", "cpu", "--no-progress", "--out", str(out)]) == 0
    capsys.readouterr()
    hook_bytes = sum(f.stat().st_size for f in (out / "hooks").iterdir())
    assert hook_bytes > 0
    assert 20 * hook_bytes < 50 * 2**20, f"{hook_bytes / 2**20:.1f} MB per epoch"
