"""Load time and peak memory of the XC text reader against napkinXC's (issue 16, item 1).

Each loader reads the train and test files of one dataset in a fresh subprocess, so that its
peak resident memory (``ru_maxrss``) is its own; the loaders run interleaved, ``--repeats``
rounds with the order rotated from round to round, and the medians are reported.

* ``xmcviz``: ``xmcviz.data.load(train=, test=, cache=False)``: parsing only.
* ``xmcviz-cached``: the same call reading the ``.npz`` cache (written once beforehand in a
  temporary folder).
* ``napkinxc``: ``napkinxc.datasets.load_libsvm_file`` on both files, with its defaults
  (labels as lists, indices as in the file: its fastest setting).
* ``xmcviz-numpy`` (``--numpy-path``): our reader with ``XMCVIZ_NUMBA=0`` (the reference
  scans alone).

Targets on the Amazon-670K shape: xmcviz's peak RSS <= 2x the bytes of the CSR matrices it
returns, and its time <= 1.5x napkinXC's. Wall-clock and process CPU time are both recorded
(on a shared machine CPU time is less disturbed by other processes); the time includes
importing the reader (numba's, for the compiled kernel, from its on-disk cache). Each run prints one JSON line; a summary line
with the ratios ends the output.

    python benchmarks/load.py --data DIR [--repeats 3] [--out FILE.jsonl]
    python benchmarks/load.py --like amazon-670k --work DIR   # generates DIR if missing

``DIR`` holds a train/test pair (see ``xmcviz.data.find_pair``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _jsonl import JsonLines  # noqa: E402

LOADERS = ("xmcviz", "xmcviz-cached", "napkinxc")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _child(loader: str, train: str, test: str, cache_dir: str) -> dict:
    """Run one loader in this (fresh) process and describe it."""
    if loader == "napkinxc":
        from napkinxc.datasets import load_libsvm_file
        base = _rss_mb()
        t, c = time.perf_counter(), time.process_time()
        out = [load_libsvm_file(f) for f in (train, test)]
        seconds, cpu = time.perf_counter() - t, time.process_time() - c
        mats = [x for x, _ in out]
    else:
        import xmcviz.data as data
        base = _rss_mb()
        t, c = time.perf_counter(), time.process_time()
        ds = data.load(train=train, test=test, cache=loader == "xmcviz-cached",
                       cache_dir=cache_dir)
        seconds, cpu = time.perf_counter() - t, time.process_time() - c
        if loader == "xmcviz-cached" and "cache" not in ds.meta:
            raise RuntimeError("the cache was not used")
        mats = [ds.X_train, ds.Y_train, ds.X_test, ds.Y_test]
    csr = sum(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes for m in mats)
    return {"loader": loader, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": _rss_mb(),
            "rss_before_mb": base, "csr_mb": csr / 2**20}


def _run_child(loader: str, train: Path, test: Path, cache_dir: str) -> dict:
    env = dict(os.environ)
    if loader == "xmcviz-numpy":
        env["XMCVIZ_NUMBA"] = "0"
    cmd = [sys.executable, __file__, "--child", "xmcviz" if loader == "xmcviz-numpy" else loader,
           "--train", str(train), "--test", str(test), "--cache-dir", cache_dir]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{loader} failed:\n{res.stderr[-2000:]}")
    rec = json.loads(res.stdout.strip().splitlines()[-1])
    rec["loader"] = loader
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="folder with a train/test pair of XC text files")
    ap.add_argument("--like", help="generate a file of this benchmark's shape into --work")
    ap.add_argument("--rows", type=int, default=None, help="with --like: cap on training rows")
    ap.add_argument("--work", type=Path, help="with --like: folder of the generated files")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--numpy-path", action="store_true", help="also time XMCVIZ_NUMBA=0")
    ap.add_argument("--out", default=None, help="append the JSON lines to this file")
    ap.add_argument("--child", choices=LOADERS, help=argparse.SUPPRESS)
    ap.add_argument("--train", help=argparse.SUPPRESS)
    ap.add_argument("--test", help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.train, args.test, args.cache_dir)))
        return 0

    from xmcviz.data import find_pair
    from xmcviz.validation import check_int
    check_int("repeats", args.repeats, 1)
    if args.like:
        if args.work is None:
            ap.error("--like needs --work DIR")
        if not (args.work / "train.txt").is_file():
            from xmcviz.data.make_large import write_xc_like
            write_xc_like(args.work, like=args.like, rows=args.rows)
        args.data = args.work
    if args.data is None:
        ap.error("pass --data DIR or --like NAME --work DIR")
    train, test = find_pair(args.data)
    loaders = LOADERS + (("xmcviz-numpy",) if args.numpy_path else ())
    records: dict[str, list[dict]] = {name: [] for name in loaders}
    with tempfile.TemporaryDirectory() as cache_dir, JsonLines(args.out, "a") as out:
        # Warm-up: the numba kernel's on-disk cache and the .npz cache of this pair.
        _run_child("xmcviz-cached", train, test, cache_dir)
        for r in range(args.repeats):
            order = loaders[r % len(loaders):] + loaders[:r % len(loaders)]
            for name in order:
                rec = _run_child(name, train, test, cache_dir)
                records[name].append(out.emit({"benchmark": "load", "data": str(args.data),
                                               "round": r, **rec}))
        med = {name: {k: statistics.median(x[k] for x in recs)
                      for k in ("seconds", "cpu_seconds", "peak_rss_mb", "csr_mb")}
               for name, recs in records.items()}
        ours, napkin = med["xmcviz"], med["napkinxc"]
        out.emit({"benchmark": "load-summary", "data": str(args.data), "train_bytes":
                  train.stat().st_size, "test_bytes": test.stat().st_size,
                  "repeats": args.repeats, "median": med,
                  "time_vs_napkinxc": ours["seconds"] / napkin["seconds"],
                  "cpu_time_vs_napkinxc": ours["cpu_seconds"] / napkin["cpu_seconds"],
                  "peak_rss_vs_csr": ours["peak_rss_mb"] / ours["csr_mb"],
                  "cached_seconds": med["xmcviz-cached"]["seconds"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
