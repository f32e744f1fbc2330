import json
import os
import subprocess
import sys

import pytest
import torch

from xmcviz.cli import COMMANDS, build_parser, main, register_command
from xmcviz.core.rundir import read_jsonl




TRAIN = ["train", "--data", "synthetic:tiny", "--hidden", "16", "--negatives", "10",
         "--batch-size", "128", "--epochs", "2", "--lr", "0.01", "--device", "cpu",
         "--no-progress"]


@pytest.mark.parametrize("extra, named", [
    (["--sampler", "mips-s", "--negatives", "10", "--mips-k", "20"], "mips_k=20"),      # k > R
    (["--sampler", "mips-s", "--clusters", "4", "--nprobe", "5"], "nprobe=5"),       # tau > K
    (["--negatives", "64"], "negatives=64"),                                         # R >= L
    (["--lr", "0"], "lr=0"),
    (["--epochs", "0"], "epochs=0"),
    (["--eta-ratio", "-1"], "eta_ratio=-1"),
    (["--batch-size", "-5"], "batch_size=-5"),
    (["--warmup-epochs", "3"], "warmup_epochs=3"),
])
def test_bad_values_exit_2_naming_the_value(tmp_path, capsys, extra, named):
    out = tmp_path / "run"
    rc = main(TRAIN + ["--out", str(out)] + extra)
    err = capsys.readouterr().err
    assert rc == 2
    assert named in err and "allowed" in err and "Traceback" not in err
    assert not out.exists()  # nothing trained, nothing written


def test_unknown_sampler_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(TRAIN + ["--sampler", "hardest"])
    assert e.value.code == 2
    assert "'hardest'" in capsys.readouterr().err


def test_missing_data_and_bad_path_exit_2(tmp_path, capsys):
    rc = main(["train", "--no-progress"])
    assert rc == 2 and "no data" in capsys.readouterr().err
    rc = main(["train", "--data", str(tmp_path / "nowhere"), "--no-progress"])
    assert rc == 2 and "nowhere" in capsys.readouterr().err


def test_train_writes_run_dir_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TRAIN + ["--out", str(out), "--eval-every", "5"]) == 0
    final = json.loads(capsys.readouterr().out)
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.jsonl", "checkpoint.pt"}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"] == "synthetic:tiny" and cfg["negatives"] == 10 and cfg["seed"] == 0
    assert cfg["sparse_updates"] is True and cfg["environment"]["device"] == "cpu"
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [5, 8, 10, 15, 16]  # 8 steps per epoch
    assert records[-1]["P@5"] == final["P@5"]
    # the same out again: refused (exit 2), unless --resume (nothing left to do) or --overwrite
    assert main(TRAIN + ["--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(TRAIN + ["--out", str(out), "--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["P@5"] == final["P@5"]
    assert main(TRAIN + ["--out", str(out), "--overwrite", "--dense-updates"]) == 0
    assert json.loads((out / "config.json").read_text())["sparse_updates"] is False
    assert len(read_jsonl(out / "metrics.jsonl")) == 2


def test_train_with_files(tmp_path, capsys):
    from xmcviz import data
    ds = data.synthetic("tiny", seed=1)

    def write(path, X, Y):
        lines = [f"{X.shape[0]} {X.shape[1]} {Y.shape[1]}"]
        for i in range(X.shape[0]):
            labels = ",".join(map(str, Y[i].indices))
            feats = " ".join(f"{j}:{v:.6g}" for j, v in zip(X[i].indices, X[i].data))
            lines.append(f"{labels} {feats}")
        path.write_text("\n".join(lines) + "\n")

    write(tmp_path / "train.txt", ds.X_train, ds.Y_train)
    write(tmp_path / "test.txt", ds.X_test, ds.Y_test)
    argv = ["train", "--train", str(tmp_path / "train.txt"), "--test", str(tmp_path / "test.txt"),
            "--model", "linear", "--label-bias", "--negatives", "8", "--epochs", "1",
            "--device", "cpu", "--no-progress", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 4  # 1000 rows / 256


def test_data_command(capsys):
    assert main(["data", "synthetic:tiny", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["labels"] == 64 and summary["train_rows"] == 1000
    assert main(["data", "tiny"]) == 0
    assert "labels" in capsys.readouterr().out
    assert main(["data", "no-such-dataset-xyz"]) == 2


def test_subcommands_are_pluggable(capsys):
    seen = {}

    def add(p):
        p.add_argument("run_dir")

    def run(args):
        seen["dir"] = args.run_dir
        return 0

    register_command("inspect-test", add, run, "test command")
    try:
        assert main(["inspect-test", "somewhere"]) == 0
        assert seen == {"dir": "somewhere"}
    finally:
        del COMMANDS["inspect-test"]
    assert "inspect-test" not in build_parser().format_help()


def test_python_m_xmcviz_entry_point(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "xmcviz", "train", "--data", "tiny",
                        "--sampler", "mips-a", "--negatives", "10", "--nprobe", "100",
                        "--no-progress"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert "nprobe=100 is out of range" in r.stderr and "Traceback" not in r.stderr
