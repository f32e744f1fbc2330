"""Reader and writer for the Extreme Classification Repository's bag-of-words text format.

A file is a header line ``N D L`` (rows, features, labels) and then one row per line::

    l1,l2,... f:v f:v ...

Label ids and feature ids are 0-based. A row without labels starts with a space.

The file is streamed in chunks of whole lines (:func:`read_xc`) and the CSR arrays grow in
place, so memory stays close to the size of the result. Each chunk is parsed in one pass by
a numba kernel (:mod:`xmcviz.data._xc_kernel`) when it accepts the chunk, and otherwise by
vectorised numpy scans: the label and feature parts of all rows are scanned as byte arrays
and every number is converted in one C call (``np.fromstring``). Those scans only *detect*
a problem; a slow per-line checker then re-reads the chunk's rows from the top to the first
bad one, to name its line and what is wrong with it, so an error never surfaces as a numpy
traceback. The numpy path is the reference (``XMCVIZ_NUMBA=0`` uses it alone); its
scanning helpers are shared with the ARFF reader.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import scipy.sparse as sp

from .cache import atomic_open
from .errors import DataFormatError

__all__ = ["XCFile", "read_xc", "read_xc_header", "write_xc"]

_NL, _SP, _COLON, _COMMA = 10, 32, 58, 44
_F32_MAX = float(np.finfo(np.float32).max)


def _lut(chars: bytes) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    table[np.frombuffer(chars, dtype=np.uint8)] = True
    return table


_NUM_LIST_CHARS = b"0123456789+-.eE,\n"
_TO_SPACE = bytes.maketrans(b",:\n", b"   ")
_NUM = rb"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
# First whitespace-delimited token that is not a plain decimal number.
_BAD_NUMBER = re.compile(rb"(?<!\S)(?!" + _NUM + rb"(?!\S))\S+")
_NUM_STR = re.compile(_NUM.decode())
_ASCII_INT = re.compile(r"[0-9]+")
_NEG_INT = re.compile(r"-[0-9]+")


class _Bad(Exception):
    """Raised by the fast scans: a problem at or before ``row`` (0-based data row)."""

    def __init__(self, row: int, reason: str):
        super().__init__(reason)
        self.row = int(row)
        self.reason = reason


# ---------------------------------------------------------------------------- scans
def _row_of(newlines: np.ndarray, pos) -> np.ndarray | int:
    """Data row holding byte ``pos`` (rows are separated by the newlines)."""
    return np.searchsorted(newlines, pos)


def _check_chars(body: bytes, allowed: bytes, newlines: np.ndarray, what: str) -> None:
    """``_Bad`` at the first byte not in ``allowed`` (bytes.translate: one fast C pass)."""
    if body.translate(None, allowed):
        a = np.frombuffer(body, dtype=np.uint8)
        p = int(np.argmax(~_lut(allowed)[a]))
        raise _Bad(_row_of(newlines, p), f"unexpected character {chr(a[p])!r} in a {what}")


def _gather(mask: np.ndarray, pos: np.ndarray, edge: bool) -> np.ndarray:
    """``mask[pos]``, with ``edge`` where ``pos`` falls outside the buffer."""
    inside = (pos >= 0) & (pos < mask.size)
    out = np.full(pos.shape, edge)
    out[inside] = mask[pos[inside]]
    return out


def _counts(starts: np.ndarray, newlines: np.ndarray, n_rows: int) -> np.ndarray:
    """Tokens per row: token starts between consecutive newlines."""
    if n_rows == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.concatenate((np.searchsorted(starts, newlines), [starts.size]))
    return np.diff(ends, prepend=0)


def _token_starts(sep: np.ndarray) -> np.ndarray:
    """Positions of the first byte of each run of non-separator bytes."""
    if not sep.size:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(sep[:-1] & ~sep[1:]) + 1
    return np.concatenate(([0], starts)) if not sep[0] else starts


def _parse_floats(flat: bytes, expected: int, newlines: np.ndarray, what: str) -> np.ndarray:
    """All whitespace-separated numbers of ``flat``; ``_Bad`` if any token is not one."""
    if expected == 0 and not flat.strip():  # np.fromstring refuses blanks alone
        return np.zeros(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            nums = np.fromstring(flat, dtype=np.float64, sep=" ")
    except ValueError:
        nums = None
    if nums is None or nums.size != expected:
        m = _BAD_NUMBER.search(flat)
        row = int(_row_of(newlines, m.start())) if m else int(newlines.size)
        raise _Bad(row, f"malformed {what}")
    return nums


def _scan_id_list(body: bytes, n_rows: int, what: str = "label id",
                  allowed: bytes = b"0123456789,\n") -> tuple[np.ndarray, np.ndarray]:
    """Rows of comma-separated numbers, one row per line: (count per row, values)."""
    a = np.frombuffer(body, dtype=np.uint8)
    newlines = np.flatnonzero(a == _NL)
    _check_chars(body, allowed, newlines, what)
    delim = (a == _COMMA) | (a == _NL)
    commas = np.flatnonzero(a == _COMMA)
    # A comma next to a delimiter or a buffer edge leaves an empty field ("1,,2", ",1").
    edge = _gather(delim, commas - 1, True) | _gather(delim, commas + 1, True)
    if edge.any():
        raise _Bad(_row_of(newlines, commas[np.argmax(edge)]), f"empty {what}")
    starts = _token_starts(delim)
    nums = _parse_floats(body.translate(_TO_SPACE), starts.size, newlines, what)
    return _counts(starts, newlines, n_rows), nums


def _scan_pairs(body: bytes, n_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of space-separated ``id:value`` tokens: (count per row, ids, values).

    Ids must be digit strings (non-negative integers); values any decimal number.
    """
    a = np.frombuffer(body, dtype=np.uint8)
    newlines = np.flatnonzero(a == _NL)
    _check_chars(body, b"0123456789+-.eE: \n", newlines, "feature")
    sep = a == _SP
    sep[newlines] = True
    starts = _token_starts(sep)
    colons = np.flatnonzero(a == _COLON)
    edge = _gather(sep, colons - 1, True) | _gather(sep, colons + 1, True)
    if edge.any():
        raise _Bad(_row_of(newlines, colons[np.argmax(edge)]), "feature without id or value")
    per_token = np.bincount(np.searchsorted(starts, colons, side="right") - 1,
                            minlength=starts.size)
    if (per_token != 1).any():
        t = int(np.argmax(per_token != 1))
        raise _Bad(_row_of(newlines, starts[t]), "feature token is not 'id:value'")
    nums = _parse_floats(body.translate(_TO_SPACE), 2 * starts.size, newlines, "feature")
    ids, vals = nums[0::2], nums[1::2]
    # Ids must be digit strings. Checking every id byte costs several passes over the
    # file; instead, an id of n digits (no leading zero) lies in [10^(n-1), 10^n). Of the
    # other spellings the characters allow (+-.eE), only "de2"-like ones ("1e2" = 100)
    # keep that magnitude: caught by the 'e' two bytes before the colon. The few ids
    # left over (leading zeros, or bad) are checked one by one.
    n = colons - starts
    with np.errstate(over="ignore"):
        low = np.where(n > 1, 10.0 ** (n - 1), 0.0)
        suspect = ~((ids >= low) & (ids < 10.0 ** n) & (ids == np.floor(ids)))
    e_char = a[np.maximum(colons - 2, 0)]
    suspect |= (n >= 3) & ((e_char == ord("e")) | (e_char == ord("E")))
    for t in np.flatnonzero(suspect):
        if not body[starts[t]:colons[t]].isdigit():
            raise _Bad(_row_of(newlines, starts[t]), "feature id is not a non-negative integer")
    return _counts(starts, newlines, n_rows), ids, vals


def _first(mask: np.ndarray) -> int | None:
    return int(np.argmax(mask)) if mask.size and mask.any() else None


def _csr(counts: np.ndarray, ids: np.ndarray, values: np.ndarray | None, n_cols: int,
         what: str) -> sp.csr_matrix:
    """CSR from per-row counts and flat (id, value) lists; ``_Bad`` on a repeated id in a row."""
    indptr = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    idx_dtype = np.int32 if max(n_cols, ids.size) < 2**31 else np.int64
    data = np.ones(ids.size, np.float32) if values is None else values.astype(np.float32)
    m = sp.csr_matrix((data, ids.astype(idx_dtype), indptr.astype(idx_dtype)),
                      shape=(counts.size, n_cols))
    m.sort_indices()
    same = np.diff(m.indices) == 0
    if same.any():
        # A repeat is only a duplicate when both entries lie in the same row.
        row_start = np.zeros(m.indices.size, dtype=bool)
        row_start[m.indptr[:-1][counts > 0]] = True
        dup = _first(same & ~row_start[1:])
        if dup is not None:
            raise _Bad(np.searchsorted(m.indptr, dup, side="right") - 1, f"duplicate {what}")
    return m


# ---------------------------------------------------------------------------- XC text
@dataclass
class XCFile:
    """One parsed XC text file: features ``X`` [N, D] and labels ``Y`` [N, L]."""

    X: sp.csr_matrix
    Y: sp.csr_matrix
    path: Path


def read_xc_header(path: str | os.PathLike) -> tuple[int, int, int]:
    """The ``(N, D, L)`` header of an XC text file, read without parsing the rows."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.readline(4096)
    if not head.strip():
        raise DataFormatError(path, 1, "empty file: expected a header line 'N D L'")
    return _parse_header(path, head)


def _parse_header(path: Path, head: bytes) -> tuple[int, int, int]:
    toks = head.split()
    if len(toks) != 3 or not all(t.isdigit() for t in toks):
        shown = head.strip()[:80].decode("utf-8", "replace")
        raise DataFormatError(path, 1, f"malformed header {shown!r}: expected 'N D L' "
                                       "(rows, features, labels as non-negative integers)")
    n, d, l = (int(t) for t in toks)
    return n, d, l


def _check_id(tok: str, bound: int, what: str) -> str | None:
    if not _ASCII_INT.fullmatch(tok):
        if _NEG_INT.fullmatch(tok):
            return f"negative {what} {tok}"
        return f"non-numeric {what} {_shorten(tok)!r}"
    if int(tok) >= bound:
        return f"{what} {int(tok)} is out of range: the header allows 0..{bound - 1}"
    return None


def _check_value(val: str, where: str) -> str | None:
    try:
        x = float(val)
    except ValueError:
        x = None
    if x is not None and not math.isfinite(x):
        return f"value {_shorten(val)!r} for {where} is not finite (NaN or inf)"
    if x is None or not _NUM_STR.fullmatch(val):  # float() also takes '1_000', ' 1'
        return f"non-numeric value {_shorten(val)!r} for {where}"
    if abs(x) > _F32_MAX:
        return f"value {val!r} for {where} overflows float32"
    return None


def _shorten(s: str, n: int = 40) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def _check_xc_line(text: str, n_features: int, n_labels: int) -> str | None:
    """What is wrong with one row line (``None`` if nothing): the slow, precise check."""
    lab, _, feats = text.partition(" ")
    if lab:
        if ":" in lab:
            return (f"labels field {_shorten(lab)!r} contains ':' (a row without labels "
                    "must start with a space)")
        seen: set[int] = set()
        for tok in lab.split(","):
            if tok == "":
                return f"empty label id in {_shorten(lab)!r} (stray comma)"
            err = _check_id(tok, n_labels, "label id")
            if err:
                return err
            if int(tok) in seen:
                return f"duplicate label id {int(tok)}"
            seen.add(int(tok))
    seen = set()
    for tok in feats.split():
        if tok.count(":") != 1:
            return f"malformed feature {_shorten(tok)!r}: expected 'id:value'"
        fid, val = tok.split(":")
        if fid == "":
            return f"feature {_shorten(tok)!r} has no id"
        if val == "":
            return f"feature {fid} has no value ({tok!r}: truncated line?)"
        err = _check_id(fid, n_features, "feature id") or _check_value(val, f"feature {fid}")
        if err:
            return err
        if int(fid) in seen:
            return f"duplicate feature id {int(fid)}"
        seen.add(int(fid))
    return None


def _diagnose(path: Path, lines: Sequence[bytes], bad: _Bad, first_line: int,
              check: Callable[[str], str | None]) -> DataFormatError:
    """Re-check rows one by one from the top and describe the first bad line.

    ``bad`` (from a fast scan) is only used if the per-line check finds nothing, which
    would mean the two disagree: its row and reason still beat a numpy traceback.
    """
    # In order from the top: the fast scans stop at the first problem *they* look for,
    # but an earlier row may break a rule checked later (say, a label id out of range).
    for i, line in enumerate(lines):
        reason = check(line.decode("utf-8", "replace"))
        if reason:
            return DataFormatError(path, first_line + i, reason)
    return DataFormatError(path, first_line + max(bad.row, 0), bad.reason)


# ---------------------------------------------------------------------------- streaming
_CHUNK_BYTES = 16 << 20  # bytes read at a time; a chunk's temporaries are a few times this
PROGRESS_BYTES = 100 << 20  #: files at least this large show a progress bar by default
_TAB_CR = bytes.maketrans(b"\t", b" ")


def _clean(data: bytes) -> bytes:
    """Windows line ends and tabs become the format's own separators."""
    if b"\t" in data or b"\r" in data:
        return data.translate(_TAB_CR, b"\r")
    return data


def _line_chunks(f, bar, clean: bool = True) -> Iterator[bytes]:
    """The rest of ``f`` as chunks of whole lines joined by newlines (no final newline).

    Blank lines at the very end of the file are not yielded; blank lines between others
    are. ``clean``: tabs become spaces and carriage returns go (:func:`_clean`).
    """
    pending = b""  # starts at the beginning of a line
    while True:
        data = f.read(_CHUNK_BYTES)
        if not data:
            break
        if bar is not None:
            bar.update(len(data))
        data = _clean(data) if clean else data
        buf = pending + data if pending else data
        cut = buf.rfind(b"\n")
        core = buf[:cut].rstrip(b"\n") if cut >= 0 else b""
        if not core:
            pending = buf
            continue
        yield core
        pending = buf[len(core) + 1:]  # blank lines held back: they may end the file
    core = pending.rstrip(b"\n")
    if core:
        yield core


class _Growing:
    """A 1-D array filled in order: it grows in place (realloc), never copying what it holds."""

    def __init__(self, dtype):
        self._a = np.empty(0, dtype=dtype)
        self.size = 0

    def append(self, x: np.ndarray, expect: int) -> None:
        """Append ``x``; ``expect`` is the final size guessed so far (grown to at once)."""
        need = self.size + x.size
        if need > self._a.size:
            self._a.resize(max(need, expect), refcheck=False)
        self._a[self.size:need] = x
        self.size = need

    def array(self) -> np.ndarray:
        self._a.resize(self.size, refcheck=False)
        return self._a


class _CSRBuilder:
    """Rows appended chunk by chunk; memory is the final matrix plus a small margin."""

    def __init__(self, n_cols: int, expected_rows: int | None, with_data: bool):
        self.n_cols, self.expected_rows = n_cols, expected_rows
        idx = np.int32 if n_cols < 2**31 else np.int64
        self.counts = _Growing(np.int64)
        self.indices = _Growing(idx)
        self.data = _Growing(np.float32) if with_data else None

    def append(self, counts: np.ndarray, indices: np.ndarray, data: np.ndarray | None) -> None:
        rows = self.counts.size + counts.size
        nnz = self.indices.size + indices.size
        if self.expected_rows is not None and rows < self.expected_rows:
            # Room for the rows the header announces at the density seen so far, plus 2%.
            expect = int(nnz * self.expected_rows / rows * 1.02) + 1024
            self.counts.append(counts, self.expected_rows)
        else:  # no (or a wrong) row count: grow geometrically
            expect = int(nnz * 1.5) + 1024
            self.counts.append(counts, int(rows * 1.5) + 1024)
        self.indices.append(indices, expect)
        if self.data is not None:
            self.data.append(data, expect)

    def matrix(self) -> sp.csr_matrix:
        counts, indices = self.counts.array(), self.indices.array()
        idx = np.int32 if max(self.n_cols, indices.size) < 2**31 else np.int64
        indptr = np.zeros(counts.size + 1, dtype=idx)
        np.cumsum(counts, out=indptr[1:], dtype=idx)
        data = self.data.array() if self.data is not None else np.ones(indices.size, np.float32)
        m = sp.csr_matrix((data, indices.astype(idx, copy=False), indptr),
                          shape=(counts.size, self.n_cols), copy=False)
        m.has_sorted_indices = True
        return m


# (y_counts, y_ids, x_counts, x_ids, x_vals) of a chunk: ids sorted per row, no explicit zeros.
_Rows = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _use_kernel() -> bool:
    return os.environ.get("XMCVIZ_NUMBA", "1") != "0"


def _parse_chunk_fast(body: bytes, d: int, l: int) -> _Rows | None:
    """Rows of ``body`` by the numba kernel; ``None`` for anything it does not accept."""
    from . import _xc_kernel as K
    buf = np.frombuffer(body, dtype=np.uint8)
    n_lines = body.count(b"\n") + 1
    idx = np.int32 if max(d, l) < 2**31 else np.int64
    n_x, n_y = body.count(b":"), body.count(b",") + n_lines
    y_counts, x_counts = np.empty(n_lines, np.int64), np.empty(n_lines, np.int64)
    y_ids, x_ids, x_vals = np.empty(n_y, idx), np.empty(n_x, idx), np.empty(n_x, np.float32)
    slow = [np.empty(n_x, np.int64) for _ in range(3)]
    status, _, rows, ny, nx, ns, y_sorted, x_sorted, n_zero = K.parse_rows(
        buf, d, l, y_counts, y_ids, x_counts, x_ids, x_vals, *slow)
    if status != K.OK or rows != n_lines:
        return None
    y_ids, x_ids, x_vals = y_ids[:ny], x_ids[:nx], x_vals[:nx]
    for t, s, e in zip(*(a[:ns].tolist() for a in slow)):  # rare: long or extreme values
        v = float(body[s:e])
        if not math.isfinite(v) or abs(v) > _F32_MAX:
            return None
        x_vals[t] = v
    if ns:
        n_zero = int(np.count_nonzero(x_vals == 0))
    try:
        if not y_sorted:
            Y = _csr(y_counts, y_ids, None, l, "label id")
            y_counts, y_ids = np.diff(Y.indptr), Y.indices
        if not x_sorted or n_zero:
            X = _csr(x_counts, x_ids, x_vals, d, "feature id")
            X.eliminate_zeros()
            x_counts, x_ids, x_vals = np.diff(X.indptr), X.indices, X.data
    except _Bad:  # a duplicate id: the numpy path names it
        return None
    return y_counts, y_ids, x_counts, x_ids, x_vals


def _parse_chunk_numpy(path: Path, body: bytes, first_line: int, d: int, l: int) -> _Rows:
    """Rows of ``body`` by the numpy scans; ``DataFormatError`` for the first bad line."""
    lines = body.split(b"\n")
    n_rows = len(lines)
    parts = [ln.partition(b" ") for ln in lines]
    lab_body = b"\n".join([p[0] for p in parts])
    feat_body = b"\n".join([p[2] for p in parts])
    del parts
    try:
        lab_counts, lab_ids = _scan_id_list(lab_body, n_rows)
        feat_counts, fids, fvals = _scan_pairs(feat_body, n_rows)
        # Any range problem is enough: _diagnose then finds the first bad line itself.
        for counts, mask, reason in (
            (lab_counts, lab_ids >= l, "label id out of range"),
            (feat_counts, fids >= d, "feature id out of range"),
            (feat_counts, ~np.isfinite(fvals) | (np.abs(fvals) > _F32_MAX), "value is not finite"),
        ):
            i = _first(mask)
            if i is not None:
                raise _Bad(np.searchsorted(np.cumsum(counts), i, side="right"), reason)
        Y = _csr(lab_counts, lab_ids, None, l, "label id")
        X = _csr(feat_counts, fids, fvals, d, "feature id")
    except _Bad as bad:
        raise _diagnose(path, lines, bad, first_line, lambda t: _check_xc_line(t, d, l)) from None
    X.eliminate_zeros()
    return np.diff(Y.indptr), Y.indices, np.diff(X.indptr), X.indices, X.data


def _is_blank(f) -> bool:
    """Whether the rest of ``f`` is whitespace only."""
    while True:
        data = f.read(_CHUNK_BYTES)
        if not data:
            return True
        if data.strip():
            return False


def read_xc(path: str | os.PathLike, progress: bool | None = None) -> XCFile:
    """Read one XC text file.

    Returns ``XCFile`` with float32 CSR ``X`` [N, D] (explicit zeros dropped) and binary
    float32 CSR ``Y`` [N, L], both with sorted indices. Raises ``DataFormatError``
    naming the file and 1-based line for anything malformed, and ``OSError`` when the
    file cannot be read.

    The file is streamed in chunks of lines and the matrices grow in place, so memory
    stays close to the size of the result. ``progress`` shows a tqdm bar (default: for
    files of ``PROGRESS_BYTES`` or more).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = _clean(f.readline())
        if not head.strip() and _is_blank(f):
            raise DataFormatError(path, 1, "empty file: expected a header line 'N D L'")
        n, d, l = _parse_header(path, head)
        if progress is None:
            progress = size >= PROGRESS_BYTES
        from tqdm.auto import tqdm
        X = _CSRBuilder(d, n, with_data=True)
        Y = _CSRBuilder(l, n, with_data=False)
        n_rows = 0
        with tqdm(total=size, initial=len(head), unit="B", unit_scale=True, disable=not progress,
                  desc=path.name) as bar:
            for body in _line_chunks(f, bar if progress else None):
                rows = None
                if _use_kernel():
                    rows = _parse_chunk_fast(body, d, l)
                if rows is None:
                    rows = _parse_chunk_numpy(path, body, n_rows + 2, d, l)
                y_counts, y_ids, x_counts, x_ids, x_vals = rows
                Y.append(y_counts, y_ids, None)
                X.append(x_counts, x_ids, x_vals)
                n_rows += y_counts.size
    if n_rows != n:
        if n_rows < n:
            raise DataFormatError(path, n_rows + 2, f"the header says {n} rows but the file "
                                                    f"ends after {n_rows} (truncated file?)")
        raise DataFormatError(path, n + 2, f"the header says {n} rows but the file has "
                                           f"{n_rows}: line {n + 2} is one too many")
    return XCFile(X=X.matrix(), Y=Y.matrix(), path=path)


def write_xc(path: str | os.PathLike, X: sp.spmatrix, Y: sp.spmatrix) -> None:
    """Write features ``X`` [N, D] and binary labels ``Y`` [N, L] as an XC text file.

    Values are written with 9 significant digits, which round-trips float32 exactly.
    The file appears atomically (written to a temporary file, then renamed).
    """
    X, Y = sp.csr_matrix(X), sp.csr_matrix(Y)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}")
    X, Y = X.sorted_indices(), Y.sorted_indices()  # copies: the caller's matrices stay as given
    xi, xd, xp = X.indices.tolist(), X.data.tolist(), X.indptr.tolist()
    yi, yp = Y.indices.tolist(), Y.indptr.tolist()
    out = [f"{X.shape[0]} {X.shape[1]} {Y.shape[1]}"]
    for r in range(X.shape[0]):
        labels = ",".join(map(str, yi[yp[r]:yp[r + 1]]))
        feats = " ".join(f"{j}:{v:.9g}" for j, v in zip(xi[xp[r]:xp[r + 1]], xd[xp[r]:xp[r + 1]]))
        # A row with neither labels nor features is a lone space: an empty line at the
        # end of a file would be read as the end of the file.
        out.append(f"{labels} {feats}" if feats else labels or " ")
    with atomic_open(path, "w", encoding="ascii", newline="\n") as f:
        f.write("\n".join(out) + "\n")
