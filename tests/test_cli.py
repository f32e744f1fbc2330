import json
import os
import subprocess
import sys

import pytest

from xmcviz import data
from xmcviz.cli import COMMANDS, Command, main
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
    assert summary == json.loads(json.dumps(data.resolve("synthetic:tiny").summary()))
    assert summary["labels"] == 64 and summary["train_rows"] == 1000
    assert main(["data", "synthetic:tiny", "--seed", "1", "--json"]) == 0
    other = json.loads(capsys.readouterr().out)
    assert other["labels"] == 64 and other != summary  # --seed reaches the generator
    assert main(["data", "tiny"]) == 0
    table = capsys.readouterr().out
    assert all(key in table for key in summary) and "1000" in table
    assert main(["data", "no-such-dataset-xyz"]) == 2
    assert "no-such-dataset-xyz" in capsys.readouterr().err


def test_python_m_xmcviz_entry_point(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "xmcviz", "train", "--data", "tiny",
                        "--sampler", "mips-a", "--negatives", "10", "--nprobe", "100",
                        "--no-progress"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert "nprobe=100 is out of range" in r.stderr and "Traceback" not in r.stderr


BASE = ["train", "--data", "synthetic:tiny", "--epochs", "1", "--device", "cpu", "--no-progress"]


@pytest.mark.parametrize("extra, named", [
    # the first-label softmax mode has no model, R, MIPS, hooks or resume
    (["--first-label-only", "--model", "linear"], "--model not supported with --first-label-only"),
    (["--first-label-only", "-R", "5", "--mips-k", "2", "--nprobe", "2", "--hooks", "none"],
     "--negatives, --mips-k, --nprobe, --hooks not supported with --first-label-only"),
    (["--first-label-only", "--hidden", "8", "--dense-updates", "--warmup-epochs", "1"],
     "--hidden, --warmup-epochs, --dense-updates not supported"),
    (["--first-label-only", "--resume"], "--resume not supported with --first-label-only"),
    # and the multi-label mode has no softmax regulariser or tree dims
    (["--reg", "0.1", "--adv-dims", "4"], "--reg, --adv-dims only supported with --first-label-only"),
    # settings the chosen sampler does not read
    (["--mips-k", "3"], "mips_k=3 not supported with sampler='uniform'"),
    (["--sampler", "uniform", "--nprobe", "2", "--refresh-every", "5"],
     "nprobe=2 not supported with sampler='uniform': allowed with sampler mips-a or mips-s; "
     "refresh_every=5 not supported with sampler='uniform'"),
    (["--model", "linear", "--hidden", "8"], "hidden=8 not supported with model='linear'"),
    (["--sampler", "mips-a", "--mips-k", "3"], "mips_k=3 not supported with sampler='mips-a'"),
    (["--sampler", "top", "--clusters", "4"], "clusters=4 not supported with sampler='top'"),
    (["--sampler", "full", "-R", "5"], "negatives=5 not supported with sampler='full'"),
])
def test_settings_the_mode_or_sampler_does_not_read_are_refused(tmp_path, capsys, extra, named):
    out = tmp_path / "run"
    assert main(BASE + ["--out", str(out)] + extra) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
    assert not out.exists()


def test_settings_the_sampler_reads_are_accepted(tmp_path, capsys):
    argv = BASE + ["--sampler", "mips-s", "-R", "8", "--mips-k", "3", "--clusters", "4",
                   "--nprobe", "2", "--refreshes-per-epoch", "2", "--warmup-epochs", "1",
                   "--hooks", "none", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (cfg["mips_k"], cfg["clusters"], cfg["nprobe"], cfg["refreshes_per_epoch"]) == (3, 4, 2, 2)


def test_every_command_is_listed_and_answers_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    listing = " ".join(capsys.readouterr().out.split())
    assert set(COMMANDS) == {"train", "data", "inspect", "sweep"}
    for name, cmd in COMMANDS.items():
        assert f"{name} {cmd.help}" in listing
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0 and capsys.readouterr().out.startswith(f"usage: xmcviz {name}")


def test_a_command_is_an_entry_of_COMMANDS(monkeypatch):
    seen = {}

    def add(p):
        p.add_argument("run_dir")

    def run(args):
        seen["dir"] = args.run_dir
        return 0

    monkeypatch.setitem(COMMANDS, "inspect-test", Command(add, run, "test command"))
    assert main(["inspect-test", "somewhere"]) == 0
    assert seen == {"dir": "somewhere"}
