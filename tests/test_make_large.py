"""Large synthetic XC files of a published shape: shape, determinism, napkinXC agreement, CLI."""
import numpy as np
import pytest

from xmcviz.cli import main
from xmcviz.data import load
from xmcviz.data.make_large import like_shape, write_xc_like
from xmcviz.data.xc_format import read_xc, read_xc_header


@pytest.fixture(scope="module")
def amazon_like(tmp_path_factory):
    out = tmp_path_factory.mktemp("amazon")
    return write_xc_like(out, like="amazon-670k", rows=2000, seed=3, progress=False)


def test_shape_follows_the_registry():
    s = like_shape("Amazon-670K")
    assert (s["train_rows"], s["test_rows"], s["features"], s["labels"]) == (
        490449, 153025, 135909, 670091)
    small = like_shape("amazoncat13k", rows=1000)
    assert small["name"] == "AmazonCat-13K" and small["train_rows"] == 1000
    assert small["test_rows"] == round(306782 * 1000 / 1186239)
    with pytest.raises(ValueError, match="like='nope' is not a registered benchmark"):
        like_shape("nope")
    with pytest.raises(ValueError, match=r"rows=0 is out of range: allowed >= 1"):
        like_shape("eurlex-4k", rows=0)


def test_files_have_the_requested_shape_statistics(amazon_like):
    train, test = amazon_like
    s = like_shape("amazon-670k", rows=2000)
    assert read_xc_header(train) == (2000, 135909, 670091)
    assert read_xc_header(test) == (s["test_rows"], 135909, 670091)
    r = read_xc(train)
    lab = np.diff(r.Y.indptr)
    feat = np.diff(r.X.indptr)
    assert lab.min() >= 1 and feat.min() >= 1
    assert lab.mean() == pytest.approx(s["labels_per_row"], rel=0.05)
    assert feat.mean() == pytest.approx(s["features_per_row"], rel=0.05)
    assert lab.std() > 0.5 and feat.std() > 5  # lengths vary from row to row
    # Popular labels: a power law, the most frequent far above the mean frequency.
    freq = np.bincount(r.Y.indices, minlength=r.Y.shape[1])
    assert freq.max() > 20 * freq[freq > 0].mean()
    assert ((r.X.data > 0) & (r.X.data < 1)).all()


def test_napkinxc_reads_the_same_matrices(amazon_like):
    nx = pytest.importorskip("napkinxc.datasets")
    for path in amazon_like:
        ours = read_xc(path)
        X, Y = nx.load_libsvm_file(str(path), labels_format="csr_matrix", sort_indices=True)
        assert X.shape[0] == ours.X.shape[0] and Y.shape[0] == ours.Y.shape[0]
        for a, b in ((ours.X, X), (ours.Y, Y)):
            # napkinXC sizes the matrices by the largest id it saw, not by the header.
            np.testing.assert_array_equal(a.indptr, b.indptr)
            np.testing.assert_array_equal(a.indices, b.indices)
            np.testing.assert_array_equal(a.data, b.data.astype(np.float32))


def test_deterministic_per_seed(tmp_path, amazon_like):
    again = write_xc_like(tmp_path / "a", like="amazon-670k", rows=2000, seed=3, progress=False)
    other = write_xc_like(tmp_path / "b", like="amazon-670k", rows=2000, seed=4, progress=False)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in amazon_like]
    assert other[0].read_bytes() != again[0].read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["test.txt", "train.txt"]


def test_eurlex_shape_is_dense_enough(tmp_path):
    train, _ = write_xc_like(tmp_path, like="eurlex-4k", rows=500, progress=False)
    r = read_xc(train)
    assert np.diff(r.X.indptr).mean() == pytest.approx(236.8, rel=0.05)
    assert r.X.shape[1] == 5000 and r.Y.shape[1] == 3993


def test_cli_make_synthetic(tmp_path, capsys):
    out = tmp_path / "e4k"
    assert main(["data", "make-synthetic", str(out), "--like", "eurlex-4k", "--rows", "200"]) == 0
    assert str(out / "train.txt") in capsys.readouterr().out
    ds = load(out, cache=False)
    assert ds.X_train.shape == (200, 5000) and ds.Y_test.shape[1] == 3993
    assert main(["data", "make-synthetic", str(tmp_path / "x"), "--like", "nope"]) == 2
    assert "not a registered benchmark" in capsys.readouterr().err
    assert main(["data", "make-synthetic"]) == 2
    assert "needs an output folder" in capsys.readouterr().err
