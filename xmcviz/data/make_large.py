"""Large synthetic files in the XC text format, shaped like a published benchmark.

:func:`write_xc_like` writes ``train.txt`` and ``test.txt`` with the row counts, feature and
label counts and the mean labels per row of a benchmark from the registry
(:func:`xmcviz.data.benchmarks`), and about as many non-zero features per row as the real
bag-of-words files. It is meant for measuring loaders, memory and step cost at scale, not
for learning anything: labels and features are independent power-law draws.

Rows are generated and written in chunks, each from its own seeded generator, so memory
stays bounded whatever the size, and a file depends only on ``(like, rows, seed)``.
Text is formatted with numpy digit arithmetic (no per-token Python), values as ``0.dddd``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..validation import check_int
from .cache import atomic_open
from .registry import benchmark, benchmarks

__all__ = ["FEATURES_PER_ROW", "like_shape", "write_xc_like"]

#: Mean non-zero features per row of the bag-of-words files (the registry does not hold
#: them): the figures commonly reported with the Extreme Classification Repository's data.
FEATURES_PER_ROW: dict[str, float] = {
    "Eurlex-4K": 236.8, "Wiki10-31K": 673.45, "AmazonCat-13K": 71.09, "Amazon-670K": 75.68,
    "WikiLSHTC-325K": 42.15, "Wikipedia-500K": 385.31, "Delicious": 18.17, "Bibtex": 68.74,
}
_CHUNK_ROWS = 16384  # rows per generator chunk: part of what makes a file (keep fixed)
_LABEL_EXPONENT, _FEATURE_EXPONENT = 0.8, 0.9  # power-law popularity p_i ~ (i + 1)^-a
_VALUE_DIGITS = 4  # values are written as 0.dddd


def like_shape(like: str, rows: int | None = None) -> dict:
    """The shape :func:`write_xc_like` writes for a benchmark name or alias.

    ``rows`` caps the training rows (test rows keep the published train/test ratio).
    Returns ``name, train_rows, test_rows, features, labels, labels_per_row,
    features_per_row``. Raises ``ValueError`` for an unknown name or a bad ``rows``.
    """
    entry = benchmark(like)
    if entry is None:
        names = sorted(benchmarks())
        raise ValueError(f"like={like!r} is not a registered benchmark: allowed {names} "
                         "(any case, punctuation optional)")
    n_train, n_test = entry["train_rows"], entry["test_rows"]
    if rows is not None:
        rows = check_int("rows", rows, 1)
        n_test = max(1, round(n_test * min(rows, n_train) / n_train))
        n_train = min(rows, n_train)
    return {"name": entry["name"], "train_rows": n_train, "test_rows": n_test,
            "features": entry["features"], "labels": entry["labels"],
            "labels_per_row": min(entry["avg_labels_per_point"], entry["labels"]),
            "features_per_row": min(FEATURES_PER_ROW[entry["name"]], entry["features"])}


def _power_law_cdf(n: int, exponent: float) -> np.ndarray:
    w = (np.arange(1, n + 1, dtype=np.float64)) ** -exponent
    return np.cumsum(w / w.sum())


class _Lengths:
    """Row lengths: log-normal targets, turned into how many ids to draw for each row.

    Rows drop repeated ids, so a row is drawn longer than its target: the number of draws
    whose expected number of distinct ids is the target, interpolated from a table of
    E[distinct](draws) = sum_i 1 - (1 - p_i)^draws.
    """

    def __init__(self, cdf: np.ndarray, mean: float, sigma: float = 0.5):
        self.cdf, self.mean, self.sigma = cdf, mean, sigma
        log_q = np.log1p(-np.minimum(np.diff(cdf, prepend=0.0), 1 - 1e-12))
        cap = cdf.size - 0.5  # no row can hold more distinct ids than there are
        self.draws = np.unique(np.geomspace(1, 64 * cdf.size, 96))
        self.distinct = np.array([-np.expm1(c * log_q).sum() for c in self.draws])
        self.distinct = np.minimum(self.distinct, cap)

    def sample(self, rng: np.random.Generator, n_rows: int) -> np.ndarray:
        mu = np.log(self.mean) - self.sigma**2 / 2  # log-normal with mean ``mean``
        target = np.clip(rng.lognormal(mu, self.sigma, n_rows), 1, self.distinct[-1])
        return np.maximum(1, np.rint(np.interp(target, self.distinct, self.draws))).astype(np.int64)


def _row_ids(rng: np.random.Generator, n_rows: int, lengths: _Lengths,
             perm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row sorted distinct ids: (count per row, flat ids). Every row gets at least one."""
    cdf = lengths.cdf
    draws = lengths.sample(rng, n_rows)
    row = np.repeat(np.arange(n_rows, dtype=np.int64), draws)
    ids = perm[np.minimum(np.searchsorted(cdf, rng.random(row.size)), cdf.size - 1)]
    keys = np.sort(row * cdf.size + ids)
    keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]  # repeats within a row
    counts = np.bincount(keys // cdf.size, minlength=n_rows)
    return counts, keys % cdf.size


def _n_digits(x: np.ndarray) -> np.ndarray:
    nd = np.ones(x.shape, dtype=np.int64)
    p = 10
    while True:
        more = x >= p
        if not more.any():
            return nd
        nd += more
        p *= 10


def _put_digits(buf: np.ndarray, end: np.ndarray, x: np.ndarray, nd: np.ndarray) -> None:
    """Write the decimal digits of ``x`` into ``buf`` so that the last one is at ``end - 1``."""
    x = x.copy()
    for d in range(int(nd.max()) if nd.size else 0):
        m = nd > d
        buf[end[m] - 1 - d] = 48 + x[m] % 10
        x //= 10


def _format_rows(lab_counts: np.ndarray, labels: np.ndarray, feat_counts: np.ndarray,
                 feats: np.ndarray, values: np.ndarray) -> bytes:
    """XC text of rows ``l,l,... f:0.dddd f:0.dddd ...\\n`` (every row has both parts)."""
    lab_ptr = np.concatenate(([0], np.cumsum(lab_counts)))
    feat_ptr = np.concatenate(([0], np.cumsum(feat_counts)))
    # Tokens in file order: a row's labels, then its features.
    n_tok = labels.size + feats.size
    lab_pos = np.arange(labels.size) + np.repeat(feat_ptr[:-1], lab_counts)
    feat_pos = np.arange(feats.size) + np.repeat(lab_ptr[1:], feat_counts)
    num = np.empty(n_tok, dtype=np.int64)
    num[lab_pos], num[feat_pos] = labels, feats
    nd = _n_digits(num)
    width = nd + 1  # digits and the separator after them
    width[feat_pos] += 3 + _VALUE_DIGITS  # ":0." and the value's digits
    end = np.cumsum(width)  # one past each token's separator
    start = end - width
    buf = np.empty(int(end[-1]) if n_tok else 0, dtype=np.uint8)
    _put_digits(buf, start + nd, num, nd)
    sep = np.full(n_tok, ord(" "), dtype=np.uint8)
    sep[lab_pos] = ord(",")
    sep[lab_pos[lab_ptr[1:] - 1]] = ord(" ")  # the last label of a row
    sep[feat_pos[feat_ptr[1:] - 1]] = ord("\n")  # the last feature of a row
    buf[end - 1] = sep
    fs = start[feat_pos] + nd[feat_pos]
    buf[fs], buf[fs + 1], buf[fs + 2] = ord(":"), ord("0"), ord(".")
    _put_digits(buf, fs + 3 + _VALUE_DIGITS, values, np.full(values.size, _VALUE_DIGITS))
    return buf.tobytes()


def _write_split(path: Path, n_rows: int, shape: dict, seed: int, split: int,
                 lab_len: _Lengths, feat_len: _Lengths, lab_perm: np.ndarray,
                 feat_perm: np.ndarray, bar) -> None:
    with atomic_open(path, "wb") as f:
        f.write(f"{n_rows} {shape['features']} {shape['labels']}\n".encode())
        for c, r0 in enumerate(range(0, n_rows, _CHUNK_ROWS)):
            m = min(_CHUNK_ROWS, n_rows - r0)
            rng = np.random.default_rng([seed, split, c])
            lc, lab = _row_ids(rng, m, lab_len, lab_perm)
            fc, feat = _row_ids(rng, m, feat_len, feat_perm)
            vals = rng.integers(1, 10**_VALUE_DIGITS, feat.size)
            f.write(_format_rows(lc, lab, fc, feat, vals))
            if bar is not None:
                bar.update(m)


def write_xc_like(out_dir: str | os.PathLike, like: str = "amazon-670k", rows: int | None = None,
                  seed: int = 0, progress: bool = True) -> tuple[Path, Path]:
    """Write ``out_dir/train.txt`` and ``out_dir/test.txt`` with a benchmark's shape.

    ``like`` is a registered benchmark name or alias (``"amazon-670k"``, ``"eurlex-4k"``,
    ``"amazoncat-13k"``, ...; see :func:`like_shape`); ``rows`` caps the training rows
    (default: the published counts). Deterministic in ``(like, rows, seed)``; written in
    chunks (memory stays bounded), each file atomically. ``progress`` shows a tqdm bar.
    Returns the (train, test) paths; :func:`xmcviz.data.load` reads the folder.
    """
    shape = like_shape(like, rows)
    seed = check_int("seed", seed, 0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    setup = np.random.default_rng([seed, 2**31])
    lab_cdf = _power_law_cdf(shape["labels"], _LABEL_EXPONENT)
    feat_cdf = _power_law_cdf(shape["features"], _FEATURE_EXPONENT)
    # Which ids are popular is random, not "small ids first".
    lab_perm, feat_perm = setup.permutation(shape["labels"]), setup.permutation(shape["features"])
    lab_len = _Lengths(lab_cdf, shape["labels_per_row"])
    feat_len = _Lengths(feat_cdf, shape["features_per_row"])
    from tqdm.auto import tqdm
    total = shape["train_rows"] + shape["test_rows"]
    paths = out / "train.txt", out / "test.txt"
    with tqdm(total=total, disable=not progress, unit="row", desc=f"{shape['name']}-like") as bar:
        for split, (path, key) in enumerate(zip(paths, ("train_rows", "test_rows"))):
            _write_split(path, shape[key], shape, seed, split, lab_len, feat_len,
                         lab_perm, feat_perm, bar)
    return paths
