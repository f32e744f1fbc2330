"""Reader for Mulan's multi-label ARFF files and their ``.xml`` label lists.

An ARFF file is a header (``@relation NAME``, one ``@attribute NAME TYPE`` per column,
``%`` comments) followed by ``@data`` and one row per line, either sparse
(``{col val,col val,...}``, 0-based column indices, omitted columns are 0) or dense
(``v1,v2,...`` with one value per attribute). Mulan marks some attributes as labels: the
companion ``NAME.xml`` lists them (``<label name="..."/>``, possibly nested in
hierarchical files). Labels are found by name when the XML is given, and are otherwise
the last ``num_labels`` attributes; every other attribute is a feature, in file order.

The data section is streamed in chunks of lines, each parsed with the vectorised scans of
:mod:`xmcviz.data.xc_format` (sparse rows are rewritten as ``col:val`` tokens first), into
matrices that grow in place; a slow per-line check names the first bad line for any
problem the scans detect.
"""
from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .errors import DataFormatError
from .xc_format import (_NUM_LIST_CHARS, PROGRESS_BYTES, _Bad, _check_id, _check_value,
                        _csr, _CSRBuilder, _first, _line_chunks, _scan_id_list, _scan_pairs,
                        _shorten)

__all__ = ["ArffAttribute", "ArffFile", "find_mulan_xml", "read_arff", "read_mulan_xml"]

_DATA_LINE = re.compile(rb"(?im)^[ \t]*@data[ \t]*\r?$")
_ATTRIBUTE = re.compile(
    r"""@attribute\s+('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S+)\s*(.*?)\s*$""", re.I)
_COMMA_WS = re.compile(rb"[ \t]*,[ \t]*")
_WS = re.compile(rb"[ \t]+")
_NUMERIC_TYPES = {"numeric", "real", "integer"}


@dataclass
class ArffAttribute:
    """One ``@attribute`` line: its name, whether numeric, its nominal values, its line."""

    name: str
    numeric: bool
    values: list[str] | None
    line: int


@dataclass
class ArffFile:
    """One parsed ARFF file: features ``X`` [N, D], binary labels ``Y`` [N, L]."""

    X: sp.csr_matrix
    Y: sp.csr_matrix
    path: Path
    relation: str
    attributes: list[ArffAttribute]
    label_names: list[str]
    feature_names: list[str] = field(default_factory=list)
    data_line: int = 0  #: line number of ``@data``


def find_mulan_xml(arff_path: str | os.PathLike) -> Path | None:
    """The label list beside an ARFF file: ``NAME.xml`` for ``NAME-train.arff`` etc."""
    arff_path = Path(arff_path)
    base = re.sub(r"[-_.]?(train|test|trn|tst|training|testing)$", "", arff_path.stem, flags=re.I)
    for cand in (arff_path.with_suffix(".xml"), arff_path.parent / f"{base}.xml"):
        if cand.is_file():
            return cand
    xmls = sorted(arff_path.parent.glob("*.xml"))
    return xmls[0] if len(xmls) == 1 else None


def read_mulan_xml(path: str | os.PathLike) -> list[str]:
    """Label names from a Mulan ``.xml`` file, in document order (nested labels included)."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        line = e.position[0] if getattr(e, "position", None) else 1
        raise DataFormatError(path, max(line, 1), f"not a valid XML label list: {e}") from None
    names = []
    for el in root.iter():
        if isinstance(el.tag, str) and el.tag.rsplit("}", 1)[-1] == "label":
            name = el.get("name")
            if name is None:
                raise DataFormatError(path, 1, "a <label> element has no name attribute")
            names.append(name)
    if not names:
        raise DataFormatError(path, 1, "no <label name=...> elements: not a Mulan label list")
    return names


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] and name[0] in "'\"":
        return re.sub(r"\\(.)", r"\1", name[1:-1])
    return name


def _parse_attribute(path: Path, lineno: int, text: str) -> ArffAttribute:
    m = _ATTRIBUTE.match(text)
    if not m or not m.group(2):
        raise DataFormatError(path, lineno, f"malformed attribute line {_shorten(text)!r}: "
                                            "expected '@attribute NAME TYPE'")
    name, typ = _unquote(m.group(1)), m.group(2)
    if typ.lower() in _NUMERIC_TYPES:
        return ArffAttribute(name, True, None, lineno)
    if typ.startswith("{") and typ.endswith("}"):
        values = [_unquote(v.strip()) for v in typ[1:-1].split(",")]
        if not all(_check_value(v, "") is None for v in values):
            raise DataFormatError(path, lineno, f"attribute {name!r} has non-numeric nominal "
                                                f"values {_shorten(typ)}: only numbers are supported")
        return ArffAttribute(name, False, values, lineno)
    raise DataFormatError(path, lineno, f"attribute {name!r} has type {_shorten(typ)!r}: only "
                                        "numeric types and numeric sets like {0,1} are supported")


def _read_header(path: Path, f) -> tuple[str, list[ArffAttribute], int]:
    """(relation, attributes, line number of @data), reading ``f`` up to the @data line."""
    relation, attrs = "", []
    lineno, last, seen = 0, 0, False  # last: the last line that is not empty
    for bline in f:
        lineno += 1
        if bline.rstrip(b"\n"):
            last = lineno
        seen = seen or bool(bline.strip())
        if _DATA_LINE.match(bline.rstrip(b"\n")):
            return relation, attrs, lineno
        text = bline.decode("utf-8", "replace").strip()
        low = text.lower()
        if not text or text.startswith("%"):
            continue
        if low.startswith("@relation"):
            relation = _unquote(text[len("@relation"):].strip())
        elif low.startswith("@attribute"):
            attrs.append(_parse_attribute(path, lineno, text))
        else:
            raise DataFormatError(path, lineno, f"unexpected line in the ARFF header: "
                                                f"{_shorten(text)!r}")
    if not seen:
        raise DataFormatError(path, 1, "empty file: expected an ARFF header (@relation, "
                                       "@attribute lines, @data)")
    raise DataFormatError(path, max(last, 1), "no @data line: the file ends inside the ARFF "
                                              "header (not an ARFF file, or truncated)")


def _label_columns(path: Path, attrs: list[ArffAttribute], data_line: int,
                   label_names: list[str] | None, num_labels: int | None,
                   xml: Path | None) -> np.ndarray:
    """Indices of the label attributes."""
    n_attr = len(attrs)
    n_labels = len(label_names) if label_names is not None else num_labels
    if n_labels is None:
        raise ValueError(f"{path}: cannot tell which attributes are labels: pass num_labels= "
                         "or put the Mulan .xml label list beside the file")
    if n_labels > n_attr:
        src = f"the {xml.name} label list" if xml else "num_labels"
        raise DataFormatError(path, data_line, f"the header declares {n_attr} attributes, fewer "
                                               f"than the {n_labels} labels given by {src}")
    if label_names is None:
        return np.arange(n_attr - n_labels, n_attr)
    pos = {}
    for i, a in enumerate(attrs):
        pos.setdefault(a.name, i)
    missing = [n for n in label_names if n not in pos]
    if missing:
        raise DataFormatError(xml or path, 1, f"label {missing[0]!r} is not an attribute of "
                                              f"{path.name} ({len(missing)} labels missing)")
    cols = np.array([pos[n] for n in label_names], dtype=np.int64)
    if np.unique(cols).size != cols.size:
        raise DataFormatError(xml or path, 1, "the label list names the same attribute twice")
    return cols


def _check_sparse_line(text: str, attrs: list[ArffAttribute],
                       is_label: np.ndarray) -> str | None:
    if not text.endswith("}"):
        return "sparse row is not closed with '}' (truncated line?)"
    inner = text[1:-1].strip()
    if not inner:
        return None
    seen: set[int] = set()
    for item in inner.split(","):
        parts = item.split()
        if len(parts) != 2:
            return f"malformed sparse entry {_shorten(item.strip())!r}: expected 'index value'"
        idx, val = parts
        err = _check_id(idx, len(attrs), "column index")
        if err:
            return err
        col = int(idx)
        err = _check_col_value(val, col, attrs, is_label)
        if err:
            return err
        if col in seen:
            return f"duplicate column index {col}"
        seen.add(col)
    return None


def _check_col_value(val: str, col: int, attrs: list[ArffAttribute],
                     is_label: np.ndarray) -> str | None:
    name = attrs[col].name
    if val == "?":
        return f"missing value '?' in column {col} ({name!r}) is not supported"
    err = _check_value(_unquote(val), f"column {col} ({name!r})")
    if err:
        return err
    if is_label[col] and float(_unquote(val)) not in (0.0, 1.0):
        return f"label column {col} ({name!r}) has value {val!r}: labels must be 0 or 1"
    return None


def _check_dense_line(text: str, attrs: list[ArffAttribute],
                      is_label: np.ndarray) -> str | None:
    values = text.split(",")
    if len(values) != len(attrs):
        return (f"dense row has {len(values)} values but the header declares {len(attrs)} "
                "attributes (truncated line?)")
    for col, val in enumerate(values):
        err = _check_col_value(val.strip(), col, attrs, is_label)
        if err:
            return err
    return None


def _squeeze(body: bytes) -> bytes:
    """No blanks around commas, single spaces elsewhere (regexes only when needed: slow)."""
    if b"\t" in body or b" ," in body or b", " in body:
        body = _COMMA_WS.sub(b",", body)
    if b"\t" in body or b"  " in body:
        body = _WS.sub(b" ", body)
    return body


def _parse_sparse(inners: list[bytes], n_attr: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count per row, column, value) of sparse rows given without their braces."""
    body = _squeeze(b"\n".join(inners))
    # "{3 1,7 0.5}" -> "3:1 7:0.5": the XC feature scanner then does the work.
    counts, cols, vals = _scan_pairs(body.translate(bytes.maketrans(b" ,", b": ")), len(inners))
    rows = np.repeat(np.arange(len(inners)), counts)
    i = _first(cols >= n_attr)
    if i is not None:
        raise _Bad(rows[i], "column index out of range")
    return counts, cols, vals


def _parse_dense(texts: list[bytes], n_attr: int) -> np.ndarray:
    body = _squeeze(b"\n".join(texts))
    counts, vals = _scan_id_list(body, len(texts), what="value", allowed=_NUM_LIST_CHARS)
    i = _first(counts != n_attr)
    if i is not None:
        raise _Bad(i, "wrong number of values")
    return vals.reshape(len(texts), n_attr)


def _in_lines(offsets: np.ndarray, parse, *args):
    """Call ``parse``, renumbering a ``_Bad`` from its own rows to offsets in the file."""
    try:
        return parse(*args)
    except _Bad as b:
        raise _Bad(offsets[min(b.row, offsets.size - 1)], b.reason) from None


def _parse_rows(path: Path, lines: list[bytes], first_line: int, attrs: list[ArffAttribute],
                is_label: np.ndarray, new_col: np.ndarray, n_feat: int,
                n_lab: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(X, Y) of the data lines ``lines`` (``first_line``: the number of the first one);
    comments and blank lines are skipped. ``DataFormatError`` names the first bad line."""
    stripped = [ln.strip() for ln in lines]
    rows = np.array([i for i, s in enumerate(stripped) if s and not s.startswith(b"%")],
                    dtype=np.int64)  # offsets in `lines` of the data rows
    is_sparse = np.array([stripped[i].startswith(b"{") for i in rows], dtype=bool)
    n_attr = len(attrs)
    try:  # each _Bad.row below is an offset in `lines`
        parts_r, parts_c, parts_v = [], [], []
        sparse_rows, dense_rows = rows[is_sparse], rows[~is_sparse]
        if sparse_rows.size:
            for i in sparse_rows:
                if not stripped[i].endswith(b"}"):
                    raise _Bad(i, "sparse row not closed")
            counts, cols, vals = _in_lines(sparse_rows, _parse_sparse,
                                           [stripped[i][1:-1].strip() for i in sparse_rows], n_attr)
            parts_r.append(np.repeat(sparse_rows, counts))
            parts_c.append(cols.astype(np.int64))
            parts_v.append(vals)
        if dense_rows.size:
            dense = _in_lines(dense_rows, _parse_dense, [stripped[i] for i in dense_rows], n_attr)
            r, c = np.nonzero(dense)
            parts_r.append(dense_rows[r])
            parts_c.append(c.astype(np.int64))
            parts_v.append(dense[r, c])
        line_of = np.concatenate(parts_r) if parts_r else np.zeros(0, np.int64)
        cols = np.concatenate(parts_c) if parts_c else np.zeros(0, np.int64)
        vals = np.concatenate(parts_v) if parts_v else np.zeros(0)
        lab = is_label[cols]
        bad = _first(~np.isfinite(vals) | (lab & (vals != 0) & (vals != 1)))
        if bad is not None:
            raise _Bad(line_of[bad], "bad value")
        order = np.lexsort((cols, line_of))  # file order, then column
        line_of, cols, vals, lab = line_of[order], cols[order], vals[order], lab[order]
        # Explicit zeros are "absent": drop them, but only after the duplicate check.
        dup = _first((np.diff(line_of) == 0) & (np.diff(cols) == 0))
        if dup is not None:
            raise _Bad(line_of[dup], "duplicate column")
        row = np.searchsorted(rows, line_of)  # data row number of each entry
        keep = vals != 0
        fx, lx = keep & ~lab, keep & lab
        X = _csr(np.bincount(row[fx], minlength=rows.size), new_col[cols[fx]], vals[fx],
                 n_feat, "column")
        Y = _csr(np.bincount(row[lx], minlength=rows.size), new_col[cols[lx]], None,
                 n_lab, "column")
    except _Bad as bad:
        # Name the first bad line (an earlier one may break a rule checked later).
        for i in rows:
            text = stripped[i].decode("utf-8", "replace")
            check = _check_sparse_line if text.startswith("{") else _check_dense_line
            reason = check(text, attrs, is_label)
            if reason:
                raise DataFormatError(path, first_line + int(i), reason) from None
        raise DataFormatError(path, first_line + bad.row, bad.reason) from None
    return X, Y


def read_arff(path: str | os.PathLike, num_labels: int | None = None,
              xml: str | os.PathLike | None = None, progress: bool | None = None) -> ArffFile:
    """Read a Mulan multi-label ARFF file.

    Labels are the attributes named in ``xml`` (a Mulan label list) when given, else the
    last ``num_labels`` attributes. When both are given they must agree on the count.
    Returns float32 CSR ``X`` (explicit zeros dropped) and binary float32 CSR ``Y``, with
    sorted indices; ``label_names`` from the XML or the attribute names.
    Raises ``DataFormatError`` ("FILE:LINE: what") for malformed input.

    The data section is streamed in chunks of lines into matrices that grow in place;
    ``progress`` shows a tqdm bar (default: for files of ``PROGRESS_BYTES`` or more).
    """
    path = Path(path)
    xml = Path(xml) if xml is not None else None
    size = path.stat().st_size
    with open(path, "rb") as f:
        relation, attrs, data_line = _read_header(path, f)
        names = read_mulan_xml(xml) if xml is not None else None
        if names is not None and num_labels is not None and num_labels != len(names):
            raise DataFormatError(xml, 1, f"lists {len(names)} labels but "
                                          f"num_labels={num_labels}")
        label_cols = _label_columns(path, attrs, data_line, names, num_labels, xml)
        n_attr = len(attrs)
        is_label = np.zeros(n_attr, dtype=bool)
        is_label[label_cols] = True
        for c in label_cols:
            a = attrs[c]
            if a.values is not None and not set(a.values) <= {"0", "1"}:
                raise DataFormatError(path, a.line, f"label attribute {a.name!r} must be binary "
                                                    f"{{0,1}}, not {{{','.join(a.values)}}}")
        # New column of each attribute within X (features) or Y (labels).
        n_feat, n_lab = n_attr - label_cols.size, label_cols.size
        new_col = np.empty(n_attr, dtype=np.int64)
        new_col[~is_label] = np.arange(n_feat)
        new_col[label_cols] = np.arange(n_lab)

        X = _CSRBuilder(n_feat, None, with_data=True)
        Y = _CSRBuilder(n_lab, None, with_data=False)
        first_line = data_line + 1
        if progress is None:
            progress = size >= PROGRESS_BYTES
        from tqdm.auto import tqdm
        with tqdm(total=size, initial=f.tell(), unit="B", unit_scale=True,
                  disable=not progress, desc=path.name) as bar:
            for body in _line_chunks(f, bar if progress else None, clean=False):
                lines = body.split(b"\n")
                x, y = _parse_rows(path, lines, first_line, attrs, is_label, new_col,
                                   n_feat, n_lab)
                X.append(np.diff(x.indptr), x.indices, x.data)
                Y.append(np.diff(y.indptr), y.indices, None)
                first_line += len(lines)
    label_names = names if names is not None else [attrs[c].name for c in label_cols]
    return ArffFile(X=X.matrix(), Y=Y.matrix(), path=path, relation=relation, attributes=attrs,
                    label_names=list(label_names),
                    feature_names=[a.name for a, lab_ in zip(attrs, is_label) if not lab_],
                    data_line=data_line)
