"""Mulan ARFF reader: sparse and dense rows, XML label lists, errors with file and line."""
from pathlib import Path

import numpy as np
import pytest

from xmcviz.data import DataFormatError, load
from xmcviz.data.arff import find_mulan_xml, read_arff, read_mulan_xml

HEADER = """% a comment line
@relation 'toy data'

@attribute f0 numeric
@attribute 'f 1' {0,1}
@attribute f2 REAL
@attribute lab_a {0,1}
@attribute lab_b {0,1}

@data
"""
HEADER_LINES = HEADER.count("\n")  # the first data row is on line HEADER_LINES + 1
SPARSE = HEADER + "{0 1.5,1 1,3 1}\n% a comment between rows\n{2 -2, 4 1}\n{}\n"
DENSE = HEADER + "1.5,1,0,1,0\n0, 0, -2, 0, 1\n0,0,0,0,0\n"
XML = """<?xml version="1.0" encoding="utf-8"?>
<labels xmlns="http://mulan.sourceforge.net/labels">
<label name="lab_a"><label name="lab_b"></label></label>
</labels>
"""
X_EXPECTED = [[1.5, 1, 0], [0, 0, -2], [0, 0, 0]]
Y_EXPECTED = [[1, 0], [0, 1], [0, 0]]


def write(tmp_path: Path, text: str, name: str = "toy-train.arff") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("text", [SPARSE, DENSE], ids=["sparse", "dense"])
def test_reads_sparse_and_dense_rows(tmp_path, text):
    r = read_arff(write(tmp_path, text), num_labels=2)
    assert r.X.dtype == np.float32 and r.Y.dtype == np.float32
    np.testing.assert_array_equal(r.X.toarray(), X_EXPECTED)
    np.testing.assert_array_equal(r.Y.toarray(), Y_EXPECTED)
    assert r.X.has_canonical_format and r.Y.has_canonical_format
    assert r.relation == "toy data" and r.feature_names == ["f0", "f 1", "f2"]
    assert r.label_names == ["lab_a", "lab_b"]  # attribute names without an XML file


def test_mixed_sparse_and_dense_rows_keep_file_order(tmp_path):
    text = HEADER + "{0 1.5,1 1,3 1}\n0,0,-2,0,1\n{}\n"
    r = read_arff(write(tmp_path, text), num_labels=2)
    np.testing.assert_array_equal(r.X.toarray(), X_EXPECTED)
    np.testing.assert_array_equal(r.Y.toarray(), Y_EXPECTED)


def test_xml_label_names_nested_and_found_beside_the_file(tmp_path):
    arff = write(tmp_path, SPARSE)
    xml = tmp_path / "toy.xml"
    xml.write_text(XML)
    assert find_mulan_xml(arff) == xml
    assert read_mulan_xml(xml) == ["lab_a", "lab_b"]
    r = read_arff(arff, xml=xml)
    assert r.label_names == ["lab_a", "lab_b"]
    np.testing.assert_array_equal(r.Y.toarray(), Y_EXPECTED)


def test_labels_are_found_by_name_when_not_last(tmp_path):
    text = HEADER.replace("@attribute f0 numeric\n", "").replace(
        "@attribute lab_b {0,1}\n", "@attribute lab_b {0,1}\n@attribute f0 numeric\n")
    # Columns now: f 1, f2, lab_a, lab_b, f0.
    p = write(tmp_path, text + "{0 1,2 1,4 1.5}\n")
    xml = tmp_path / "toy.xml"
    xml.write_text(XML)
    r = read_arff(p, xml=xml)
    assert r.feature_names == ["f 1", "f2", "f0"]
    np.testing.assert_array_equal(r.X.toarray(), [[1, 0, 1.5]])
    np.testing.assert_array_equal(r.Y.toarray(), [[1, 0]])


def test_load_arff_folder(tmp_path):
    write(tmp_path, SPARSE, "toy-train.arff")
    write(tmp_path, DENSE, "toy-test.arff")
    (tmp_path / "toy.xml").write_text(XML)
    ds = load(tmp_path, cache=False).validate()
    assert ds.name == "toy" and ds.label_names == ["lab_a", "lab_b"]
    assert ds.X_train.shape == ds.X_test.shape == (3, 3)
    np.testing.assert_array_equal(ds.Y_test.toarray(), Y_EXPECTED)


def test_load_arff_pair_must_have_the_same_attributes(tmp_path):
    tr = write(tmp_path, SPARSE, "toy-train.arff")
    te = write(tmp_path, SPARSE.replace("@attribute f2 REAL", "@attribute g2 REAL"), "toy-test.arff")
    with pytest.raises(DataFormatError) as ei:
        load(train=tr, test=te, num_labels=2, cache=False)
    assert ei.value.path == str(te) and ei.value.line == 6 and "'g2'" in str(ei.value)


def test_missing_label_count_is_a_usage_error(tmp_path):
    with pytest.raises(ValueError, match="num_labels"):
        read_arff(write(tmp_path, SPARSE))


BAD = {
    "no_data_section": (HEADER.replace("@data\n", ""), 2, HEADER_LINES - 2, "no @data"),  # last non-blank line
    "column_out_of_range": (HEADER + "{0 1}\n{7 1}\n", 2, HEADER_LINES + 2, "column index 7 is out of range"),
    "column_negative": (HEADER + "{-1 1}\n", 2, HEADER_LINES + 1, "negative column index"),
    "fewer_attributes_than_labels": (SPARSE, 6, HEADER_LINES, "5 attributes, fewer than the 6 labels"),
    "label_not_binary": (HEADER + "{0 1}\n{3 2}\n", 2, HEADER_LINES + 2, "labels must be 0 or 1"),
    "value_not_numeric": (HEADER + "{0 abc}\n", 2, HEADER_LINES + 1, "non-numeric value 'abc'"),
    "value_nan": (HEADER + "{0 1}\n{0 nan}\n", 2, HEADER_LINES + 2, "not finite"),
    "missing_value": (HEADER + "1,?,0,1,0\n", 2, HEADER_LINES + 1, "missing value"),
    "duplicate_column": (HEADER + "{0 1,0 2}\n", 2, HEADER_LINES + 1, "duplicate column index 0"),
    "malformed_entry": (HEADER + "{0 1 2}\n", 2, HEADER_LINES + 1, "malformed sparse entry"),
    "truncated_sparse_row": (HEADER + "{0 1}\n{0 1,3", 2, HEADER_LINES + 2, "not closed"),
    "truncated_dense_row": (HEADER + "1,0,0,1,0\n1,0,0", 2, HEADER_LINES + 2, "3 values"),
    "empty_file": ("", 2, 1, "empty file"),
    "string_attribute": (HEADER.replace("f2 REAL", "f2 string") + "{}\n", 2, 6, "type 'string'"),
    "nominal_words": (HEADER.replace("f2 REAL", "f2 {red,blue}") + "{}\n", 2, 6, "non-numeric nominal"),
    "label_nominal_not_binary": (HEADER.replace("lab_b {0,1}", "lab_b {0,1,2}") + "{}\n", 2, 8, "binary"),
    "malformed_attribute": (HEADER.replace("@attribute f2 REAL", "@attribute f2") + "{}\n", 2, 6,
                            "malformed attribute"),
    "junk_in_header": (HEADER.replace("@relation", "@relatoin") + "{}\n", 2, 2, "unexpected line"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_file_and_line(tmp_path, case):
    text, num_labels, line, words = BAD[case]
    p = write(tmp_path, text, f"{case}.arff")
    with pytest.raises(DataFormatError) as ei:
        read_arff(p, num_labels=num_labels)
    e = ei.value
    assert (e.path, e.line) == (str(p), line)
    assert str(e).startswith(f"{p}:{line}: ")
    assert words in str(e)


def test_xml_errors_name_the_xml_file(tmp_path):
    arff = write(tmp_path, SPARSE)
    xml = tmp_path / "toy.xml"
    xml.write_text(XML.replace("lab_b", "lab_z"))
    with pytest.raises(DataFormatError, match="'lab_z' is not an attribute") as ei:
        read_arff(arff, xml=xml)
    assert ei.value.path == str(xml)
    xml.write_text("<labels>\n<label name='a'>\n</labels>\n")
    with pytest.raises(DataFormatError) as ei:
        read_mulan_xml(xml)
    assert ei.value.path == str(xml) and ei.value.line == 3
    xml.write_text("<labels></labels>")
    with pytest.raises(DataFormatError, match="no <label"):
        read_mulan_xml(xml)
    xml.write_text(XML)
    with pytest.raises(DataFormatError, match="num_labels=3"):
        read_arff(arff, xml=xml, num_labels=3)


# ---------------------------------------------------------------- streaming in chunks
def _many_rows(n: int = 400) -> str:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        if i % 3 == 0:
            rows.append(",".join(str(int(v)) for v in rng.integers(0, 2, 5)))
        else:
            cols = np.sort(rng.choice(5, rng.integers(0, 4), replace=False))
            vals = [f"{rng.integers(1, 9)}" if c < 3 else "1" for c in cols]
            rows.append("{" + ", ".join(f"{c} {v}" for c, v in zip(cols, vals)) + "}")
        if i % 50 == 7:
            rows.append("% a comment")
            rows.append("")
    return HEADER + "\n".join(rows) + "\n\n"


@pytest.mark.parametrize("chunk", [5, 100])
def test_chunks_of_any_size_give_the_same_matrices(tmp_path, monkeypatch, chunk):
    import xmcviz.data.xc_format as xc
    p = write(tmp_path, _many_rows())
    whole = read_arff(p, num_labels=2)
    monkeypatch.setattr(xc, "_CHUNK_BYTES", chunk)
    part = read_arff(p, num_labels=2)
    assert whole.X.shape == part.X.shape == (400, 3) and part.Y.shape == (400, 2)
    for a, b in ((whole.X, part.X), (whole.Y, part.Y)):
        assert (a != b).nnz == 0 and b.has_canonical_format
        assert b.indices.dtype == b.indptr.dtype == np.int32


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_lines_are_right_across_chunks(tmp_path, monkeypatch, case):
    import xmcviz.data.xc_format as xc
    monkeypatch.setattr(xc, "_CHUNK_BYTES", 4)  # a chunk boundary inside most lines
    text, num_labels, line, words = BAD[case]
    p = write(tmp_path, text, f"{case}.arff")
    with pytest.raises(DataFormatError) as ei:
        read_arff(p, num_labels=num_labels)
    assert (ei.value.line, words in str(ei.value)) == (line, True)


def test_error_in_a_later_chunk_names_its_line(tmp_path, monkeypatch):
    import xmcviz.data.xc_format as xc
    monkeypatch.setattr(xc, "_CHUNK_BYTES", 64)
    text = _many_rows()
    lines = text.split("\n")
    bad = len(lines) - 20
    lines[bad] = "{0 1,0 2}"
    p = write(tmp_path, "\n".join(lines))
    with pytest.raises(DataFormatError, match=rf":{bad + 1}: duplicate column index 0"):
        read_arff(p, num_labels=2)


def test_progress_bar_on_request(tmp_path, capsys):
    p = write(tmp_path, SPARSE, "bar-train.arff")
    read_arff(p, num_labels=2, progress=True)
    assert "bar-train.arff" in capsys.readouterr().err
