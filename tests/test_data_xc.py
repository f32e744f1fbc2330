"""Extreme Classification Repository text format: reading, writing, errors, folder discovery."""
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from xmcviz.data import DataFormatError, find_pair, load
from xmcviz.data.xc_format import read_xc, read_xc_header, write_xc

GOOD = "3 5 4\n0,1 0:1 3:0.5\n 2:1\n3 4:2\n"


def write(tmp_path: Path, text: str, name: str = "train.txt") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_reads_rows_labels_and_features(tmp_path):
    r = read_xc(write(tmp_path, GOOD))
    assert r.X.dtype == np.float32 and r.Y.dtype == np.float32
    assert sp.isspmatrix_csr(r.X) and sp.isspmatrix_csr(r.Y)
    np.testing.assert_array_equal(r.X.toarray(), [[1, 0, 0, .5, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 2]])
    np.testing.assert_array_equal(r.Y.toarray(), [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]])
    assert r.X.has_canonical_format and r.Y.has_canonical_format


def test_empty_label_rows_and_label_only_rows(tmp_path):
    # Row 1: no labels (leading space); row 2: labels, no features; row 3: neither.
    r = read_xc(write(tmp_path, "3 4 3\n 0:1 1:2\n2,0\n \n"))
    assert np.diff(r.Y.indptr).tolist() == [0, 2, 0]
    assert np.diff(r.X.indptr).tolist() == [2, 0, 0]
    assert r.Y.indices.tolist() == [0, 2]  # sorted although written "2,0"


def test_crlf_tabs_unsorted_ids_and_explicit_zeros(tmp_path):
    r = read_xc(write(tmp_path, "2 5 2\r\n1\t4:1 0:0.25 2:0\r\n0 1:1\r\n\r\n"))
    assert r.X.indices[: r.X.indptr[1]].tolist() == [0, 4]  # sorted, explicit zero dropped
    assert r.X.data[:2].tolist() == [0.25, 1.0]


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    X = sp.random(50, 30, density=0.2, format="csr", dtype=np.float32, random_state=1)
    X.data = rng.standard_normal(X.nnz).astype(np.float32) * 1e3
    Y = sp.random(50, 12, density=0.15, format="csr", random_state=2)
    Y.data[:] = 1
    keep = np.ones(50, dtype=np.float32)
    keep[3] = 0  # an empty label row, and an empty feature row below
    Y = sp.csr_matrix(sp.diags(keep) @ Y.astype(np.float32))
    keep[3], keep[7] = 1, 0
    X = sp.csr_matrix(sp.diags(keep) @ X)
    Y.eliminate_zeros()
    X.eliminate_zeros()
    assert Y[3].nnz == 0 and X[7].nnz == 0
    p = tmp_path / "rt.txt"
    write_xc(p, X, Y)
    assert read_xc_header(p) == (50, 30, 12)
    r = read_xc(p)
    assert r.X.shape == X.shape and r.Y.shape == Y.shape
    np.testing.assert_array_equal(r.X.toarray(), X.toarray())  # float32 exactly
    np.testing.assert_array_equal(r.Y.toarray(), Y.toarray())
    assert list(tmp_path.iterdir()) == [p]  # no temporary file left behind


# Each bad file: (content, line of the error, words the message must contain).
BAD = {
    "fewer_rows": ("4 5 4\n0 0:1\n1 1:1\n", 4, "ends after 2"),
    "more_rows": ("1 5 4\n0 0:1\n1 1:1\n", 3, "one too many"),
    "header_two_fields": ("3 5\n0 0:1\n", 1, "malformed header"),
    "header_not_numbers": ("N D L\n0 0:1\n", 1, "malformed header"),
    "label_not_numeric": ("2 5 4\n0 0:1\n1,x 1:1\n", 3, "non-numeric label id 'x'"),
    "feature_id_not_numeric": ("2 5 4\n0 0:1\n1 a:1\n", 3, "non-numeric feature id 'a'"),
    "feature_id_exponent": ("2 500 4\n0 0:1\n1 1e2:1\n", 3, "non-numeric feature id '1e2'"),
    "value_not_numeric": ("2 5 4\n0 0:1\n1 1:abc\n", 3, "non-numeric value 'abc'"),
    "value_two_dots": ("2 5 4\n0 0:1\n1 1:1.5.3\n", 3, "non-numeric value '1.5.3'"),
    "label_out_of_range": ("2 5 4\n0 0:1\n4 1:1\n", 3, "label id 4 is out of range"),
    "label_negative": ("2 5 4\n0 0:1\n-1 1:1\n", 3, "negative label id -1"),
    "feature_out_of_range": ("2 5 4\n0 0:1\n1 5:1\n", 3, "feature id 5 is out of range"),
    "feature_negative": ("2 5 4\n0 0:1\n1 -2:1\n", 3, "negative feature id -2"),
    "duplicate_label": ("2 5 4\n0 0:1\n1,1 1:1\n", 3, "duplicate label id 1"),
    "duplicate_feature": ("2 5 4\n0 0:1\n1 1:1 1:2\n", 3, "duplicate feature id 1"),
    "nan_value": ("2 5 4\n0 0:1\n1 1:nan\n", 3, "not finite"),
    "inf_value": ("2 5 4\n0 0:1\n1 1:-inf\n", 3, "not finite"),
    "overflowing_value": ("2 5 4\n0 0:1\n1 1:1e999\n", 3, "not finite"),
    "float32_overflow": ("2 5 4\n0 0:1\n1 1:1e39\n", 3, "overflows float32"),
    "truncated_mid_token": ("3 5 4\n0 0:1\n1 1:1\n2 2:1 3:", 4, "feature 3 has no value"),
    "truncated_after_id": ("2 5 4\n0 0:1\n1 1:1 3", 3, "malformed feature '3'"),
    "truncated_rows": ("5 5 4\n0 0:1\n1 1:1\n", 4, "truncated"),
    "empty_file": ("", 1, "empty file"),
    "blank_file": ("\n  \n", 1, "empty file"),
    "stray_comma": ("2 5 4\n0 0:1\n1,,2 2:1\n", 3, "empty label id"),
    "missing_leading_space": ("2 5 4\n0 0:1\n1:1 2:1\n", 3, "must start with a space"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_file_and_line(tmp_path, case):
    text, line, words = BAD[case]
    p = write(tmp_path, text, f"{case}.txt")
    with pytest.raises(DataFormatError) as ei:
        read_xc(p)
    e = ei.value
    assert isinstance(e, ValueError)
    assert (e.path, e.line) == (str(p), line)
    assert str(e).startswith(f"{p}:{line}: ")
    assert words in str(e)


def test_first_error_is_reported_even_if_found_late(tmp_path):
    # The fast scans see the bad character on line 4 first; line 3's range error comes first.
    p = write(tmp_path, "3 5 4\n0 0:1\n9 1:1\n1 1:x\n")
    with pytest.raises(DataFormatError, match=r":3: label id 9 is out of range"):
        read_xc(p)


def test_errors_are_located_in_a_long_file(tmp_path):
    rows = [f"{i % 7} {i % 50}:1 {50 + i % 30}:0.5" for i in range(2000)]
    rows[1234] = "3 7:1 7:2"
    p = write(tmp_path, f"2000 100 7\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataFormatError) as ei:
        read_xc(p)
    assert ei.value.line == 1236 and "duplicate feature id 7" in str(ei.value)


def test_load_pair_checks_train_and_test_agree(tmp_path):
    tr = write(tmp_path, GOOD, "train.txt")
    te = write(tmp_path, "1 6 4\n0 0:1\n", "test.txt")
    with pytest.raises(DataFormatError) as ei:
        load(train=tr, test=te, cache=False)
    msg = str(ei.value)
    assert msg.startswith(f"{te}:1: ") and str(tr) in msg and "must agree" in msg


def test_load_pair_and_folder(tmp_path):
    write(tmp_path, GOOD, "train.txt")
    write(tmp_path, "1 5 4\n2,3 1:1\n", "test.txt")
    ds = load(tmp_path, cache=False).validate()
    assert ds.X_train.shape == (3, 5) and ds.Y_test.shape == (1, 4)
    assert ds.num_labels == 4 and ds.num_features == 5 and ds.name == tmp_path.name
    same = load(train=tmp_path / "train.txt", test=tmp_path / "test.txt", cache=False, name="x")
    assert same.name == "x" and (same.X_train != ds.X_train).nnz == 0


@pytest.mark.parametrize("names", [("train.txt", "test.txt"), ("trn.txt", "tst.txt"),
                                   ("eurlex_train.txt", "eurlex_test.txt"),
                                   ("wiki-train.txt", "wiki-test.txt"),
                                   ("Amazon_trn.txt", "Amazon_tst.txt")])
def test_find_pair_common_names(tmp_path, names):
    for n in names:
        write(tmp_path, GOOD, n)
    (tmp_path / "README.txt").write_text("not data")
    assert find_pair(tmp_path) == (tmp_path / names[0], tmp_path / names[1])
    # One file of the pair finds the other, whichever is given.
    assert find_pair(tmp_path / names[1]) == (tmp_path / names[0], tmp_path / names[1])


def test_find_pair_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no train/test pair"):
        find_pair(tmp_path)
    for n in ("a_train.txt", "a_test.txt", "b_train.txt", "b_test.txt"):
        write(tmp_path, GOOD, n)
    with pytest.raises(ValueError, match="several"):
        find_pair(tmp_path)
    lone = write(tmp_path, GOOD, "lonely_train.txt")
    with pytest.raises(FileNotFoundError, match="partner"):
        find_pair(lone)
    with pytest.raises(ValueError, match="train= and test="):
        load(train=lone)


# ---------------------------------------------------------------- streaming, fast path
def _tricky_file(tmp_path: Path, n_rows: int = 300, seed: int = 0) -> Path:
    """Rows in every spelling the format allows: unsorted ids, explicit zeros, signs,
    exponents, long and tiny values, leading zeros, tabs, CRLF, blank rows."""
    rng = np.random.default_rng(seed)
    spellings = ["{:.9g}", "{:.3e}", "{:+.2f}", "{:.20f}", "{:.1E}", "{:.6f}e-30", "{:.0f}."]
    rows = []
    for r in range(n_rows):
        labels = rng.choice(20, rng.integers(0, 4), replace=False)
        feats = rng.choice(50, rng.integers(0, 6), replace=False)
        vals = rng.standard_normal(feats.size) * 10.0 ** rng.integers(-3, 4, feats.size)
        vals[rng.random(feats.size) < 0.15] = 0
        toks = []
        for f, v in zip(feats, vals):
            fid = f"00{f}" if rng.random() < 0.1 else str(f)
            toks.append(f"{fid}:{spellings[rng.integers(len(spellings))].format(v)}")
        sep = "\t" if rng.random() < 0.1 else " "
        rows.append(",".join(map(str, labels)) + sep + " ".join(toks))
    rows[5] = ""  # a blank row in the middle: no labels, no features
    rows[6] = "1 3:123456789012345678901 4:-1e-320"  # exact only by the slow conversion
    p = tmp_path / "tricky.txt"
    p.write_bytes((f"{n_rows} 50 20\r\n" + "\r\n".join(rows) + "\r\n\r\n\n").encode())
    return p


def _same(a, b):
    for m, n in ((a.X, b.X), (a.Y, b.Y)):
        assert m.shape == n.shape and m.has_canonical_format and n.has_canonical_format
        np.testing.assert_array_equal(m.indptr, n.indptr)
        np.testing.assert_array_equal(m.indices, n.indices)
        np.testing.assert_array_equal(m.data, n.data)  # float32, bit for bit


def test_fast_path_and_numpy_path_agree(tmp_path, monkeypatch, count_calls):
    import xmcviz.data.xc_format as xc
    p = _tricky_file(tmp_path)
    monkeypatch.setenv("XMCVIZ_NUMBA", "1")
    fallbacks = count_calls(xc, "_parse_chunk_numpy")
    fast = read_xc(p)
    assert not fallbacks  # every spelling above is the kernel's
    monkeypatch.setenv("XMCVIZ_NUMBA", "0")
    _same(fast, read_xc(p))
    assert fallbacks
    assert fast.X[6].toarray()[0, 3] == np.float32(1.2345678901234568e20)
    assert fast.X[6].nnz == 1  # -1e-320 rounds to zero in float32: dropped as a zero
    assert fast.X[5].nnz == 0 and fast.Y[5].nnz == 0


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_chunks_of_any_size_give_the_same_matrices(tmp_path, monkeypatch, chunk):
    import xmcviz.data.xc_format as xc
    p = _tricky_file(tmp_path, seed=1)
    whole = read_xc(p)
    monkeypatch.setattr(xc, "_CHUNK_BYTES", chunk)
    _same(whole, read_xc(p))


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_lines_are_right_across_chunks(tmp_path, monkeypatch, case):
    import xmcviz.data.xc_format as xc
    monkeypatch.setattr(xc, "_CHUNK_BYTES", 5)  # a chunk boundary inside most lines
    text, line, words = BAD[case]
    p = write(tmp_path, text, f"{case}.txt")
    with pytest.raises(DataFormatError) as ei:
        read_xc(p)
    assert (ei.value.line, words in str(ei.value)) == (line, True)


def test_errors_in_a_later_chunk_name_their_line(tmp_path, monkeypatch):
    import xmcviz.data.xc_format as xc
    monkeypatch.setattr(xc, "_CHUNK_BYTES", 256)
    rows = [f"{i % 7} {i % 50}:1 {50 + i % 30}:0.5" for i in range(2000)]
    rows[1500] = "3 7:1 7:2"
    rows[1800] = "3 7:x"
    p = write(tmp_path, "2000 100 7\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataFormatError) as ei:
        read_xc(p)
    assert ei.value.line == 1502 and "duplicate feature id 7" in str(ei.value)


def test_progress_bar_on_request(tmp_path, capsys):
    p = write(tmp_path, GOOD, "bar_train.txt")
    read_xc(p, progress=True)
    assert "bar_train.txt" in capsys.readouterr().err
    read_xc(p)  # small files: no bar by default
    assert "bar_train.txt" not in capsys.readouterr().err


def test_result_arrays_are_exact_size_and_32_bit(tmp_path):
    r = read_xc(_tricky_file(tmp_path, seed=2))
    for m in (r.X, r.Y):
        assert m.indices.dtype == m.indptr.dtype == np.int32
        assert m.indices.size == m.data.size == m.nnz == m.indptr[-1]
        owner = m.indices if m.indices.base is None else m.indices.base
        assert owner.nbytes == m.indices.nbytes  # not a view of a larger growing buffer


@pytest.mark.parametrize("numba", ["0", "1"])
def test_rows_without_any_feature(tmp_path, monkeypatch, numba):
    monkeypatch.setenv("XMCVIZ_NUMBA", numba)
    r = read_xc(write(tmp_path, "3 5 4\n0\n1,2\n \n"))
    assert r.X.nnz == 0 and r.X.shape == (3, 5)
    assert np.diff(r.Y.indptr).tolist() == [1, 2, 0]
