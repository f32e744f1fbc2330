"""``xmcviz sweep --scheduler`` against a separately started ``dask scheduler`` and two
``dask worker`` processes on loopback ports, as a user would start them on two machines:
a grid with a failing cell, resume, the client API, the dataset check, and a worker killed
while its cell runs. Real processes, no mocks; every process is stopped even on failure.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import nbformat
import pandas as pd
import pytest

from test_sweep import cli, echo  # noqa: F401  (echo: the fixture notebook, a private copy)
from xmcviz.sweep import SweepError, run_sweep
START_TIMEOUT_S = 120  # a busy 2-core machine starts three Python processes slowly


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    # Each process leads its own session: the group holds its nanny, worker and kernels.
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the group (kernels)
    except ProcessLookupError:
        pass
    proc.wait(timeout=15)


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory) -> str:
    """Address of a scheduler with two single-threaded workers, all on 127.0.0.1."""
    distributed = pytest.importorskip("distributed")
    logs = tmp_path_factory.mktemp("dask-logs")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    # As docs/sweep.md recommends: retries counted by the client, one cell per worker.
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0",
           "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "1.0"}
    commands = [[sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                 "--port", str(port), "--no-dashboard"]]
    commands += [[sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                  "--nworkers", "1", "--host", "127.0.0.1", "--no-dashboard", "--name", name,
                  "--memory-limit", "0"] for name in ("w1", "w2")]
    procs = []
    try:
        for i, cmd in enumerate(commands):
            log = open(logs / f"proc{i}.log", "w")
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True))
            log.close()
        with distributed.Client(address, timeout=START_TIMEOUT_S) as client:
            client.wait_for_workers(2, timeout=START_TIMEOUT_S)
        yield address
    finally:
        for proc in reversed(procs):
            _stop(proc)


def test_a_grid_on_a_separate_scheduler_records_a_failure_and_resumes(scheduler, echo, tmp_path,
                                                                      capsys):
    out = tmp_path / "sweep"
    args = (echo, "--grid", "a=1,2,3,4", "--param", "fail_on=3", "--out", out,
            "--scheduler", scheduler, "--timeout", "120")
    assert cli(*args) == 1
    text = capsys.readouterr().out
    assert "a=3: ValueError: boom: a=3" in text
    table = pd.read_csv(out / "results.csv")
    assert list(table["status"]) == ["ok", "ok", "failed", "ok"]
    assert list(table["score"].fillna(-1)) == [2, 4, -1, 8]
    failed = out / "a=3"
    assert (failed / "notebook.ipynb").is_file() and (failed / "kernel.log").is_file()
    assert not (failed / "done").exists()
    workers = {json.loads((out / f"a={a}" / "done").read_text())["worker"] for a in (1, 2, 4)}
    assert workers <= set(_worker_addresses(scheduler)) and workers
    long = pd.read_csv(out / "results_long.csv")
    assert len(long) == 3 * 2 + 1 and (out / "summary.html").is_file()

    nb = nbformat.read(echo, as_version=4)  # fix the bug; the same command resumes
    nb.cells[2].source = "pass"
    nbformat.write(nb, echo)
    assert cli(*args) == 0
    text = capsys.readouterr().out
    assert text.count("] skipped ") == 3 and "ok      a=3" in text
    assert list(pd.read_csv(out / "results.csv")["status"]) == ["skipped", "skipped", "ok",
                                                                "skipped"]


def _worker_addresses(address: str) -> list[str]:
    from distributed import Client

    with Client(address, timeout=START_TIMEOUT_S) as client:
        return list(client.scheduler_info()["workers"])


def test_dataset_paths_are_checked_on_the_workers_before_anything_runs(scheduler, echo,
                                                                        tmp_path):
    from distributed import Client

    out = tmp_path / "sweep"
    with Client(scheduler, timeout=START_TIMEOUT_S) as client:  # the Python API's client
        with pytest.raises(SweepError) as e:
            run_sweep(echo, {"a": [1]}, {"data": str(tmp_path / "no-such-data")}, out=out,
                      client=client, progress=False)
        assert "worker tcp://127.0.0.1:" in str(e.value)
        assert str(tmp_path / "no-such-data") in str(e.value)
        assert not out.exists()  # nothing ran
        (tmp_path / "data").mkdir()
        res = run_sweep(echo, {"a": [1]}, {"data": str(tmp_path / "data")}, out=out,
                        client=client, progress=False)
        assert res.ok


def test_a_worker_killed_mid_cell_gets_its_cell_retried_elsewhere(scheduler, echo, tmp_path):
    out, hang = tmp_path / "sweep", tmp_path / "hang.pid"
    cmd = [sys.executable, "-m", "xmcviz", "sweep", str(echo), "--grid", "a=1,2",
           "--param", f"hang_once={hang}", "--out", str(out), "--scheduler", scheduler,
           "--retries", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not hang.exists():  # the first cell to start writes its worker's pid and hangs
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no cell started"
            time.sleep(0.2)
        os.kill(int(hang.read_text()), signal.SIGKILL)
        text, _ = proc.communicate(timeout=START_TIMEOUT_S)
    finally:
        _stop(proc)
    assert proc.returncode == 0, text
    rows = pd.read_csv(out / "results.csv")
    assert list(rows["status"]) == ["ok", "ok"]
    assert sorted(rows["attempts"]) == [1, 2]  # the hung cell ran again, on a live worker
    assert "(2 attempts)" in text
