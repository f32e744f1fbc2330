"""Deterministic synthetic XMC data with the structure that matters for hard negatives.

Generative story (all of it vectorised numpy, one ``numpy.random.Generator`` seeded by
``seed``):

1. **Label popularity.** Label ``l`` gets a Zipf prior ``pi_l ∝ (r_l + zipf_offset) **
   -zipf_exponent`` where ``r_l`` is its rank in a random permutation, so label
   frequencies follow a power law (a few head labels, a long tail) while ids carry no
   information about frequency.
2. **Latent clusters.** Labels are split into ``num_clusters`` clusters of random sizes
   (Dirichlet(``cluster_concentration``) proportions, every cluster non-empty). A
   cluster stands for a topic: its labels share vocabulary and co-occur, which is what
   makes some negatives truly confusable.
3. **Vocabulary.** Words have a Zipf background distribution (``word_zipf_exponent``).
   Each cluster owns ``cluster_words`` topic words and each label ``own_words`` words of
   its own, drawn uniformly from the vocabulary (so topic and label words are mid- or
   low-frequency, discriminative words). Label ``l``'s word distribution mixes its own
   words (weight ``own_weight``), its cluster's words (``cluster_weight``) and the
   background (``background_weight``).
4. **Labels of a row.** The row draws ``k = 1 + Poisson(mean_labels - 1)`` labels (at
   most ``max_labels``, so at least one). The first is drawn from ``pi``; each further one
   comes, with probability ``cooccurrence``, from the first label's cluster (∝ ``pi``
   within it), else from ``pi`` again. Repeats are dropped.
5. **Words of a row.** The row has ``n ~ Poisson(words_per_row * g)`` tokens, ``g ~
   Gamma(3, 1/3)`` (document lengths vary), at least ``max(3, words_per_row // 8)``.
   Each token picks one of the row's labels uniformly and a word from that label's
   distribution.
6. **Missing positives.** Each of a row's labels is then dropped from ``Y`` with probability
   ``missing`` (train and test alike; a row keeps at least one label), *after* its words were
   written: the text still shows the label, the annotation does not, as with tags nobody
   added.  Frequent labels lose the most positives, so they become the high-scoring
   non-positives that a hard-negative sampler finds: false negatives.
7. **Features.** Term counts become TF-IDF: ``(1 + log tf) * idf`` with the smoothed
   ``idf = log((1 + N_train) / (1 + df)) + 1`` computed on the training rows; every row
   is then L2-normalised. ``X`` is float32 CSR, ``Y`` binary float32 CSR.

The first ``n_train`` rows form the training set, the other ``n_test`` the test set (rows
are exchangeable, so this is a random split). Labels are learnable from features (a
label's own words identify it) but labels of one cluster overlap in the cluster words
and appear together, so the hardest negatives of a row are mostly its labels' cluster
mates. ``Dataset.meta`` keeps the preset, parameters, seed, the propensity constants
(``{"A", "B"}``, Jain et al.'s defaults) and per-label arrays ``label_cluster`` and
``label_prior``.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import scipy.sparse as sp

from ..validation import check_float, check_int
from .dataset import Dataset
from .registry import propensity_constants

__all__ = ["DEFAULTS", "PRESETS", "PRESET_NAMES", "generate", "make_params"]

#: Generator settings not tied to a size; a preset or a user's dict overrides them.
DEFAULTS: dict[str, Any] = {
    "n_train": 4000,
    "n_test": 1000,
    "num_features": 1000,
    "num_labels": 500,
    "num_clusters": None,      # None: num_labels // 12 (at least 1)
    "mean_labels": 4.0,
    "max_labels": None,        # None: derived from mean_labels
    "zipf_exponent": 1.1,
    "zipf_offset": 3.0,
    "cooccurrence": 0.6,
    "cluster_concentration": 2.0,
    "words_per_row": 80,
    "own_words": 8,
    "own_from_cluster": 0.75,
    "cluster_words": 40,
    "own_weight": 0.25,
    "cluster_weight": 0.45,
    "background_weight": 0.3,
    "word_zipf_exponent": 1.0,
    "missing": 0.0,
}

PRESETS: dict[str, dict[str, Any]] = {
    # Unit tests: generates in a few milliseconds.
    "tiny": dict(n_train=1000, n_test=300, num_features=300, num_labels=64, num_clusters=8,
                 mean_labels=3.0, words_per_row=40, own_words=6, cluster_words=20),
    "small": dict(n_train=4000, n_test=1000, num_features=1000, num_labels=500, num_clusters=40,
                  mean_labels=4.0, words_per_row=80),
    # Sizes of Eurlex-4K (15,539 / 3,809 rows, 5,000 features, 3,993 labels, 5.3 labels/row).
    # Structure: 100 clusters of ~40 labels, as EUROVOC groups its ~4K descriptors into ~130
    # micro-thesauri; a descriptor has its own vocabulary (own words drawn from the whole
    # vocabulary) but shares the thesaurus' words with its ~40 mates, and a document's
    # descriptors often span several thesauri (cooccurrence 0.3).  A model that only uses the
    # shared words ranks a row's ~40 mates alike: uniform negatives (100 of 4,000, ~1 mate per
    # row) seldom correct that, the hardest negatives do (see benchmarks/mips_vs_uniform.py).
    "eurlex-like": dict(n_train=15500, n_test=3800, num_features=5000, num_labels=4000,
                        num_clusters=100, mean_labels=5.0, words_per_row=120,
                        own_from_cluster=0.0, cooccurrence=0.3),
    # Wiki10-31K has 101,938 features and 18.6 labels/row; 30K features keep it quick.
    "wiki10-like": dict(n_train=14000, n_test=6600, num_features=30000, num_labels=30000,
                        num_clusters=2000, mean_labels=18.0, words_per_row=400, own_words=10,
                        cluster_words=60, zipf_exponent=1.0),
    # Delicious' shape (12,920 / 3,185 rows, 500 features, 983 labels, 19 labels per row) with
    # its phenomena: many positives per row, strong head labels, and a third of the positives
    # missing from the annotation (step 6), so hard negatives are often missing head positives.
    "delicious-like": dict(n_train=12900, n_test=3200, num_features=500, num_labels=1000,
                           num_clusters=60, mean_labels=26.0, max_labels=60, zipf_exponent=1.0,
                           zipf_offset=3.0, cooccurrence=0.5, words_per_row=30, own_words=4,
                           cluster_words=15, own_from_cluster=0.5, missing=0.3),
    # Scale tests: 300K labels with an Amazon-670K-like tail (median 3 training rows per label).
    "large": dict(n_train=300000, n_test=60000, num_features=100000, num_labels=300000,
                  num_clusters=20000, mean_labels=5.0, zipf_exponent=0.7, words_per_row=60),
}
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)

_MAX_ROWS = 50_000_000
_MAX_DIM = 50_000_000


def make_params(name_or_params: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Validated, complete generator parameters for a preset name or a dict.

    A dict overrides :data:`DEFAULTS` (its optional ``"name"`` key names the dataset;
    ``"preset"`` starts from a preset instead of the defaults). Raises ``ValueError``
    naming the value and its allowed range.
    """
    if isinstance(name_or_params, str):
        if name_or_params not in PRESETS:
            raise ValueError(f"unknown synthetic preset {name_or_params!r}: allowed "
                             f"{list(PRESET_NAMES)}")
        name, given = name_or_params, dict(PRESETS[name_or_params])
    elif isinstance(name_or_params, Mapping):
        given = dict(name_or_params)
        preset = given.pop("preset", None)
        name = str(given.pop("name", preset or "synthetic"))
        if preset is not None:
            if preset not in PRESETS:
                raise ValueError(f"unknown synthetic preset {preset!r}: "
                                 f"allowed {list(PRESET_NAMES)}")
            given = {**PRESETS[preset], **given}
    else:
        raise ValueError(f"synthetic data needs a preset name or a dict of parameters, "
                         f"got {type(name_or_params).__name__}")
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown synthetic parameter {unknown[0]!r}: allowed {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **given}
    q: dict[str, Any] = {}
    q["n_train"] = check_int("n_train", p["n_train"], 1, _MAX_ROWS)
    q["n_test"] = check_int("n_test", p["n_test"], 1, _MAX_ROWS)
    q["num_features"] = check_int("num_features", p["num_features"], 2, _MAX_DIM)
    q["num_labels"] = check_int("num_labels", p["num_labels"], 2, _MAX_DIM)
    L, D = q["num_labels"], q["num_features"]
    nc = p["num_clusters"] if p["num_clusters"] is not None else max(1, L // 12)
    q["num_clusters"] = check_int("num_clusters", nc, 1, L)
    q["mean_labels"] = check_float("mean_labels", p["mean_labels"], 1.0, float(min(L, 1000)))
    ml = p["max_labels"]
    if ml is None:
        ml = min(L, int(math.ceil(max(2 * q["mean_labels"], q["mean_labels"] + 8))))
    q["max_labels"] = check_int("max_labels", ml, int(math.ceil(q["mean_labels"])), min(L, 2000))
    q["zipf_exponent"] = check_float("zipf_exponent", p["zipf_exponent"], 0.0, 4.0)
    q["zipf_offset"] = check_float("zipf_offset", p["zipf_offset"], 0.0, 1e6)
    q["cooccurrence"] = check_float("cooccurrence", p["cooccurrence"], 0.0, 1.0)
    q["cluster_concentration"] = check_float("cluster_concentration", p["cluster_concentration"],
                                             0.0, 1e6, low_inclusive=False)
    q["words_per_row"] = check_int("words_per_row", p["words_per_row"], 1, 100_000)
    q["own_words"] = check_int("own_words", p["own_words"], 1, D)
    q["cluster_words"] = check_int("cluster_words", p["cluster_words"], 1, D)
    q["own_from_cluster"] = check_float("own_from_cluster", p["own_from_cluster"], 0.0, 1.0)
    for k in ("own_weight", "cluster_weight", "background_weight"):
        q[k] = check_float(k, p[k], 0.0, 1.0)
    if q["own_weight"] + q["cluster_weight"] + q["background_weight"] <= 0:
        raise ValueError("own_weight + cluster_weight + background_weight=0 is out of range: "
                         "allowed > 0")
    q["word_zipf_exponent"] = check_float("word_zipf_exponent", p["word_zipf_exponent"], 0.0, 4.0)
    q["missing"] = check_float("missing", p["missing"], 0.0, 1.0, high_inclusive=False)
    return name, q


def _draw(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling: indices into ``cum`` (a cumulative sum) for uniforms ``u``."""
    return np.minimum(np.searchsorted(cum, u * cum[-1], side="right"), cum.size - 1)


def _zipf(rng: np.random.Generator, n: int, exponent: float, offset: float) -> np.ndarray:
    """Zipf weights over a random permutation of ``n`` items (normalised)."""
    w = (rng.permutation(n) + 1.0 + offset) ** -exponent
    return w / w.sum()


def _labels(rng: np.random.Generator, p: dict, prior: np.ndarray, cluster: np.ndarray,
            n_rows: int) -> sp.csr_matrix:
    """Binary label matrix [n_rows, L], step 4 of the module docstring (ids in draw order)."""
    L, K = p["num_labels"], p["num_clusters"]
    k = np.minimum(1 + rng.poisson(p["mean_labels"] - 1.0, n_rows), p["max_labels"])
    m = min(L, p["max_labels"] + max(4, p["max_labels"] // 2))  # spare draws for repeats
    cum = np.cumsum(prior)
    first = _draw(cum, rng.random(n_rows))
    # Labels sorted by cluster: a cluster's prior mass is a contiguous range of `ccum`.
    by_cluster = np.argsort(cluster, kind="stable")
    ccum = np.concatenate(([0.0], np.cumsum(prior[by_cluster])))
    bounds = np.searchsorted(cluster[by_cluster], np.arange(K + 1))
    lo, hi = ccum[bounds[:-1]], ccum[bounds[1:]]
    c0 = cluster[first]
    u = rng.random((n_rows, m - 1))
    pos = np.searchsorted(ccum, lo[c0, None] + u * (hi - lo)[c0, None], side="right") - 1
    pos = np.clip(pos, bounds[c0, None], bounds[c0 + 1, None] - 1)
    same = by_cluster[pos]
    other = _draw(cum, rng.random((n_rows, m - 1)))
    cand = np.concatenate([first[:, None],
                           np.where(rng.random((n_rows, m - 1)) < p["cooccurrence"], same, other)],
                          axis=1)
    # Drop repeats, keeping each label's first draw, then the first k distinct ones.
    order = np.argsort(cand, axis=1, kind="stable")
    srt = np.take_along_axis(cand, order, axis=1)
    rep_sorted = np.zeros_like(srt, dtype=bool)
    rep_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    rep = np.empty_like(rep_sorted)
    np.put_along_axis(rep, order, rep_sorted, axis=1)
    keep = ~rep & (np.cumsum(~rep, axis=1) <= k[:, None])
    counts = keep.sum(axis=1)
    indptr = np.concatenate(([0], np.cumsum(counts)))
    Y = sp.csr_matrix((np.ones(int(indptr[-1]), np.float32), cand[keep].astype(np.int32),
                       indptr.astype(np.int64)), shape=(n_rows, L))
    return Y


def _words(rng: np.random.Generator, p: dict, Y: sp.csr_matrix,
           cluster: np.ndarray) -> sp.csr_matrix:
    """Term counts [n_rows, D], steps 3 and 5 of the module docstring."""
    n_rows, L = Y.shape
    D = p["num_features"]
    word_cum = np.cumsum(_zipf(rng, D, p["word_zipf_exponent"], 10.0))
    cluster_vocab = rng.integers(0, D, size=(p["num_clusters"], p["cluster_words"]), dtype=np.int32)
    own_vocab = rng.integers(0, D, size=(L, p["own_words"]), dtype=np.int32)
    # Some of a label's own words are picked among its cluster's words: cluster mates then
    # differ only by which topic words they favour, which makes them hard to tell apart.
    from_cluster = rng.random((L, p["own_words"])) < p["own_from_cluster"]
    pick = rng.integers(0, p["cluster_words"], size=(L, p["own_words"]))
    own_vocab = np.where(from_cluster, cluster_vocab[cluster[:, None], pick], own_vocab)
    wpr = p["words_per_row"]
    n = rng.poisson(wpr * rng.gamma(3.0, 1.0 / 3.0, n_rows))
    n = np.maximum(n, max(3, wpr // 8))
    row = np.repeat(np.arange(n_rows, dtype=np.int32), n)
    T = row.size
    n_lab = np.diff(Y.indptr)
    slot = (rng.random(T) * n_lab[row]).astype(np.int32)
    lab = Y.indices[Y.indptr[row] + slot]
    w = np.array([p["own_weight"], p["cluster_weight"], p["background_weight"]])
    comp = np.searchsorted(np.cumsum(w / w.sum()), rng.random(T), side="right")
    word = np.empty(T, dtype=np.int32)
    own, clu = comp == 0, comp == 1
    bg = ~(own | clu)
    word[own] = own_vocab[lab[own], rng.integers(0, p["own_words"], int(own.sum()))]
    word[clu] = cluster_vocab[cluster[lab[clu]],
                              rng.integers(0, p["cluster_words"], int(clu.sum()))]
    word[bg] = _draw(word_cum, rng.random(int(bg.sum())))
    counts = sp.csr_matrix((np.ones(T, np.float32), (row, word)), shape=(n_rows, D))
    counts.sum_duplicates()
    return counts


def _drop_missing(rng: np.random.Generator, Y: sp.csr_matrix, missing: float) -> sp.csr_matrix:
    """Step 6: drop each positive with probability ``missing``; a row keeps its first label
    (in draw order) if all of them were dropped."""
    drop = rng.random(Y.nnz) < missing
    first = Y.indptr[:-1][np.diff(Y.indptr) > 0]
    none_left = np.add.reduceat(~drop, first) == 0 if first.size else np.zeros(0, bool)
    drop[first[none_left]] = False
    keep = ~drop
    counts = np.add.reduceat(keep.astype(np.int64), first) if first.size else np.zeros(0, np.int64)
    per_row = np.zeros(Y.shape[0], dtype=np.int64)
    per_row[np.diff(Y.indptr) > 0] = counts
    indptr = np.concatenate(([0], np.cumsum(per_row)))
    return sp.csr_matrix((Y.data[keep], Y.indices[keep], indptr), shape=Y.shape)


def _tfidf(C: sp.csr_matrix, n_train: int) -> sp.csr_matrix:
    """(1 + log tf) * smoothed idf from the training rows, rows L2-normalised, float32."""
    X = C.astype(np.float64)
    df = np.bincount(X.indices[: X.indptr[n_train]], minlength=X.shape[1])
    idf = np.log((1.0 + n_train) / (1.0 + df)) + 1.0
    X.data = (1.0 + np.log(X.data)) * idf[X.indices]
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    X.data /= np.repeat(np.where(norms > 0, norms, 1.0), np.diff(X.indptr))
    return X.astype(np.float32)


def generate(name_or_params: str | Mapping[str, Any], seed: int = 0) -> Dataset:
    """Generate a synthetic dataset from a preset name or a parameter dict.

    Same ``seed`` and parameters give identical matrices; a different seed gives a
    different dataset. See the module docstring for the generative model.
    """
    seed = check_int("seed", seed, 0)
    name, p = make_params(name_or_params)
    preset = (name_or_params if isinstance(name_or_params, str)
              else dict(name_or_params).get("preset"))
    rng = np.random.default_rng(seed)
    L, K = p["num_labels"], p["num_clusters"]
    prior = _zipf(rng, L, p["zipf_exponent"], p["zipf_offset"])
    sizes = rng.dirichlet(np.full(K, p["cluster_concentration"]))
    cluster = rng.choice(K, size=L, p=sizes).astype(np.int32)
    cluster[rng.permutation(L)[:K]] = np.arange(K, dtype=np.int32)  # no empty cluster
    n_rows = p["n_train"] + p["n_test"]
    Y = _labels(rng, p, prior, cluster, n_rows)
    X = _tfidf(_words(rng, p, Y, cluster), p["n_train"])
    if p["missing"] > 0:
        Y = _drop_missing(rng, Y, p["missing"])
    Y.sort_indices()
    X.sort_indices()
    prop_a, prop_b = propensity_constants(name)
    tr = slice(0, p["n_train"])
    te = slice(p["n_train"], n_rows)
    return Dataset(
        X_train=X[tr], Y_train=Y[tr], X_test=X[te], Y_test=Y[te], name=name, label_names=None,
        meta={"generator": "xmcviz.data.synthetic", "preset": preset,
              "params": p, "seed": seed, "propensity": {"A": prop_a, "B": prop_b},
              "label_cluster": cluster, "label_prior": prior},
    )
