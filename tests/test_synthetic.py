"""Synthetic presets: determinism, sizes, power-law labels, clusters, learnability, validation."""

import numpy as np
import pytest
import scipy.sparse as sp

import xmcviz.data as data
from xmcviz.data.synthetic import PRESETS, generate, make_params


@pytest.fixture(scope="module")
def tiny():
    return data.synthetic("tiny", seed=0)


@pytest.fixture(scope="module")
def small():
    return data.synthetic("small", seed=0)


def same(a, b) -> bool:
    return all(getattr(a, m).shape == getattr(b, m).shape and (getattr(a, m) != getattr(b, m)).nnz == 0
               for m in ("X_train", "Y_train", "X_test", "Y_test"))


def test_presets_listed():
    assert data.PRESETS == ("tiny", "small", "eurlex-like", "wiki10-like", "delicious-like", "large")
    assert set(PRESETS) == set(data.PRESETS)


def test_missing_positives_drop_labels_not_words(tiny):
    holed = data.synthetic({"preset": "tiny", "missing": 0.3}, seed=0)
    assert (holed.X_train != tiny.X_train).nnz == 0 and (holed.X_test != tiny.X_test).nnz == 0
    for full, part in ((tiny.Y_train, holed.Y_train), (tiny.Y_test, holed.Y_test)):
        assert part.multiply(full).nnz == part.nnz          # only labels the row had
        assert np.diff(part.indptr).min() >= 1              # every row keeps a label
        assert 0.6 < part.nnz / full.nnz < 0.8              # about 30% dropped
        assert part.has_canonical_format
    with pytest.raises(ValueError, match="missing=1.0"):
        data.synthetic({"preset": "tiny", "missing": 1.0})


def test_delicious_like_has_the_real_data_shape():
    ds = data.synthetic("delicious-like", seed=0)
    s = ds.summary()
    assert (s["train_rows"], s["labels"], s["features"]) == (12900, 1000, 500)
    assert 15 < s["avg_labels_per_row"] < 22                  # Delicious: 19
    freq = np.asarray(ds.Y_train.sum(0)).ravel() / s["train_rows"]
    assert 0.3 < freq.max() < 0.6                             # a strong head label (Delicious: 0.40)


def test_deterministic_in_seed(tiny):
    assert same(tiny, data.synthetic("tiny", seed=0))
    other = data.synthetic("tiny", seed=1)
    assert not same(tiny, other)
    np.testing.assert_array_equal(tiny.meta["label_cluster"], data.synthetic("tiny", 0).meta["label_cluster"])


def test_contract_float32_csr_binary_sorted(tiny):
    tiny.validate()
    for m in (tiny.X_train, tiny.Y_train, tiny.X_test, tiny.Y_test):
        assert sp.isspmatrix_csr(m) and m.dtype == np.float32 and m.has_canonical_format
    assert tiny.name == "tiny" and tiny.meta["seed"] == 0 and tiny.meta["preset"] == "tiny"


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_rows_have_positives_and_unit_norm(name, tiny, small):
    ds = {"tiny": tiny, "small": small}[name]
    for X, Y in ((ds.X_train, ds.Y_train), (ds.X_test, ds.Y_test)):
        assert np.diff(Y.indptr).min() >= 1
        assert np.diff(X.indptr).min() >= 1
        norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
        assert (X.data > 0).all()


def test_preset_sizes(tiny, small):
    assert (tiny.X_train.shape, tiny.X_test.shape, tiny.num_labels) == ((1000, 300), (300, 300), 64)
    assert (small.X_train.shape, small.X_test.shape, small.num_labels) == ((4000, 1000), (1000, 1000), 500)
    for name, (n_tr, n_te, d, l) in {"eurlex-like": (15500, 3800, 5000, 4000),
                                     "wiki10-like": (14000, 6600, 30000, 30000)}.items():
        _, p = make_params(name)
        assert (p["n_train"], p["n_test"], p["num_features"], p["num_labels"]) == (n_tr, n_te, d, l)
    _, p = make_params("large")
    assert p["num_labels"] >= 300_000


def test_few_positives_per_row(tiny, small):
    for ds, lo, hi in ((tiny, 2.5, 3.5), (small, 3.5, 4.5)):
        assert lo <= ds.summary()["avg_labels_per_row"] <= hi


def test_power_law_label_frequencies(small):
    freq = np.sort(np.asarray(small.Y_train.sum(axis=0)).ravel())[::-1]
    assert freq[0] > 20 * np.median(freq)
    assert freq[:10].sum() > 0.1 * freq.sum()  # head: 2% of the labels
    assert np.quantile(freq, 0.1) < freq[0] / 50  # and a long tail


def test_labels_cooccur_within_clusters(small):
    cluster = small.meta["label_cluster"]
    Y = small.Y_train
    rows = np.repeat(np.arange(Y.shape[0]), np.diff(Y.indptr))
    first = Y.indptr[rows]  # pair every label with the first label of its row
    mask = Y.indices != Y.indices[first]
    same = (cluster[Y.indices[mask]] == cluster[Y.indices[first[mask]]]).mean()
    sizes = np.bincount(cluster) / cluster.size
    chance = (sizes ** 2).sum()
    assert same > 0.3 > 5 * chance


def test_features_carry_the_labels(small):
    """A centroid classifier beats the most-frequent-label baseline by far (P@1)."""
    Xtr, Ytr, Xte, Yte = small.X_train, small.Y_train, small.X_test, small.Y_test
    C = (Ytr.T @ Xtr).toarray()
    C /= np.linalg.norm(C, axis=1, keepdims=True) + 1e-12
    pred = np.asarray((Xte @ C.T).argmax(axis=1)).ravel()
    p1 = np.asarray(Yte[np.arange(Yte.shape[0]), pred]).mean()
    top = np.asarray(Ytr.sum(axis=0)).ravel().argmax()
    baseline = Yte[:, top].toarray().mean()
    assert p1 > 0.5 and p1 > 3 * baseline


def test_cluster_mates_are_confusable(small):
    """Label centroids are closer within a cluster than across clusters."""
    C = (small.Y_train.T @ small.X_train).toarray()
    C /= np.linalg.norm(C, axis=1, keepdims=True) + 1e-12
    S = C @ C.T
    cl = small.meta["label_cluster"]
    same = cl[:, None] == cl[None, :]
    np.fill_diagonal(same, False)
    other = ~same
    np.fill_diagonal(other, False)
    assert S[same].mean() > 2 * S[other].mean()


def test_tiny_stays_tiny(tiny):
    # Most tests train on "tiny": its size is what keeps the suite fast (a size check, not a
    # timed one, so a loaded machine cannot fail it).
    assert tiny.X_train.shape[0] + tiny.X_test.shape[0] <= 1500
    assert tiny.num_labels <= 64 and tiny.X_train.shape[1] <= 300
    assert tiny.X_train.nnz <= 30 * tiny.X_train.shape[0]


def test_dict_params_and_preset_override():
    ds = data.synthetic({"n_train": 50, "n_test": 20, "num_features": 40, "num_labels": 10,
                         "num_clusters": 2, "mean_labels": 2, "words_per_row": 15, "name": "mini"}, seed=3)
    ds.validate()
    assert ds.name == "mini" and ds.X_train.shape == (50, 40) and ds.Y_test.shape == (20, 10)
    ds2 = generate({"preset": "tiny", "n_train": 100}, seed=0)
    assert ds2.X_train.shape == (100, 300) and ds2.num_labels == 64


@pytest.mark.parametrize("params, match", [
    ({"n_train": 0}, r"n_train=0 is out of range: allowed \[1, "),
    ({"num_labels": 1.5}, "num_labels must be an integer"),
    ({"num_clusters": 600}, r"num_clusters=600 is out of range: allowed \[1, 500\]"),
    ({"mean_labels": 0.5}, r"mean_labels=0.5 is out of range"),
    ({"zipf_exponent": -1}, r"zipf_exponent=-1 is out of range: allowed \[0.0, 4.0\]"),
    ({"cooccurrence": 2}, r"cooccurrence=2 is out of range"),
    ({"own_words": 5000}, r"own_words=5000 is out of range: allowed \[1, 1000\]"),
    ({"own_weight": 0, "cluster_weight": 0, "background_weight": 0}, "allowed > 0"),
    ({"wrods_per_row": 3}, "unknown synthetic parameter 'wrods_per_row'"),
    ({"preset": "huge"}, "unknown synthetic preset 'huge'"),
])
def test_bad_params_are_named(params, match):
    with pytest.raises(ValueError, match=match):
        data.synthetic(params)


def test_bad_name_and_seed():
    with pytest.raises(ValueError, match="unknown synthetic preset 'eurlex'"):
        data.synthetic("eurlex")
    with pytest.raises(ValueError, match="seed=-1 is out of range"):
        data.synthetic("tiny", seed=-1)


def test_resolve_specs(tmp_path, tiny):
    assert same(data.resolve("synthetic:tiny"), tiny)
    assert same(data.resolve("tiny"), tiny)
    assert not same(data.resolve("tiny", seed=2), tiny)
    assert data.resolve(tiny) is tiny
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        data.resolve("synthetic:nope")
    with pytest.raises(FileNotFoundError, match="Extreme Classification Repository"):
        data.resolve("Eurlex-4K")
    with pytest.raises(ValueError, match="cannot resolve"):
        data.resolve(str(tmp_path / "missing"))
