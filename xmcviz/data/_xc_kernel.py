"""numba kernel behind :func:`xmcviz.data.xc_format.read_xc`: one pass over a chunk of rows.

It parses the common spelling of XC rows (digit ids; decimal values, optionally signed and
with an exponent) straight into CSR arrays. It does not explain problems: on anything it does
not accept it returns the row, and the reader falls back to the numpy scans and the per-line
checker of :mod:`xmcviz.data.xc_format`, which stay the reference for what a valid file is
and for every error message. Module-level with ``cache=True``, so later processes reuse the
compiled code.
"""
import numba
import numpy as np

__all__ = ["OK", "BAD", "parse_rows"]

OK, BAD = 0, 1
_NL, _SP, _COMMA, _COLON, _DOT, _PLUS, _MINUS = 10, 32, 44, 58, 46, 43, 45
_E, _E_UP, _ZERO, _NINE = 101, 69, 48, 57
_F32_MAX = float(np.finfo(np.float32).max)
# Exact powers of ten: m * 10^p with m < 2^53 and |p| <= 22 is then correctly rounded.
_POW10 = np.array([10.0**k for k in range(23)])
_MAX_ID_DIGITS = 18  # int64 holds them; longer ids (leading zeros) take the numpy path


@numba.njit(cache=True, boundscheck=False, nogil=True)
def _read_id(buf, i, n):  # type: ignore[no-untyped-def]
    """The decimal id at ``buf[i:]``: ``(value, digits, next i)``; digits is -1 past
    ``_MAX_ID_DIGITS`` (the row then goes to the numpy path), 0 when there is no digit."""
    v, nd = 0, 0
    while i < n and _ZERO <= buf[i] <= _NINE:
        v = v * 10 + (buf[i] - _ZERO)
        nd += 1
        i += 1
        if nd > _MAX_ID_DIGITS:
            return v, -1, i
    return v, nd, i


@numba.njit(cache=True, boundscheck=False, nogil=True)
def parse_rows(buf, n_features, n_labels, y_counts, y_ids, x_counts, x_ids, x_vals,
               slow_tok, slow_start, slow_end):  # type: ignore[no-untyped-def]
    """Rows of ``buf`` (whole lines joined by newlines, no trailing newline).

    Fills the output arrays and returns ``(status, row, n_rows, n_y, n_x, n_slow, y_sorted,
    x_sorted, n_zero)``: ``status`` is ``BAD`` with the first row it did not accept (range
    errors included), else ``OK``. ``y_sorted``/``x_sorted``: ids strictly increase within
    every row (so no duplicates). Explicit zeros are kept (``n_zero`` of them). Values it
    cannot convert exactly (over 15 significant digits, large exponents) are left to the
    caller: their token, first and end byte are listed in ``slow_*``.
    """
    n = buf.shape[0]
    i, row, ny, nx, ns, n_zero = 0, 0, 0, 0, 0, 0
    y_sorted, x_sorted = True, True
    while True:
        # Labels: "l,l,..." up to a space or the end of the line; none if it starts with a space.
        cnt, prev = 0, -1
        if i < n and buf[i] != _SP and buf[i] != _NL:
            while True:
                v, nd, i = _read_id(buf, i, n)
                if nd <= 0 or v >= n_labels:
                    return BAD, row, row, ny, nx, ns, y_sorted, x_sorted, n_zero
                y_ids[ny] = v
                ny += 1
                cnt += 1
                if v <= prev:
                    y_sorted = False
                prev = v
                if i < n and buf[i] == _COMMA:
                    i += 1
                    continue
                if i >= n or buf[i] == _NL or buf[i] == _SP:
                    break
                return BAD, row, row, ny, nx, ns, y_sorted, x_sorted, n_zero
        y_counts[row] = cnt
        # Features: "id:value" tokens separated by spaces.
        cnt, prev = 0, -1
        while i < n and buf[i] != _NL:
            if buf[i] == _SP:
                i += 1
                continue
            v, nd, i = _read_id(buf, i, n)
            if nd <= 0 or v >= n_features or i >= n or buf[i] != _COLON:
                return BAD, row, row, ny, nx, ns, y_sorted, x_sorted, n_zero
            i += 1
            start = i
            neg = False
            if i < n and (buf[i] == _PLUS or buf[i] == _MINUS):
                neg = buf[i] == _MINUS
                i += 1
            m, sig, ndig, p10 = 0, 0, 0, 0
            while i < n and _ZERO <= buf[i] <= _NINE:
                d = buf[i] - _ZERO
                if sig > 0 or d != 0:
                    sig += 1
                    if sig <= 18:
                        m = m * 10 + d
                    else:
                        p10 += 1
                ndig += 1
                i += 1
            if i < n and buf[i] == _DOT:
                i += 1
                while i < n and _ZERO <= buf[i] <= _NINE:
                    d = buf[i] - _ZERO
                    if sig > 0 or d != 0:
                        sig += 1
                        if sig <= 18:
                            m = m * 10 + d
                            p10 -= 1
                    else:
                        p10 -= 1
                    ndig += 1
                    i += 1
            if ndig == 0:
                return BAD, row, row, ny, nx, ns, y_sorted, x_sorted, n_zero
            if i < n and (buf[i] == _E or buf[i] == _E_UP):
                i += 1
                eneg = False
                if i < n and (buf[i] == _PLUS or buf[i] == _MINUS):
                    eneg = buf[i] == _MINUS
                    i += 1
                e, ne = 0, 0
                while i < n and _ZERO <= buf[i] <= _NINE:
                    if e < 100000:
                        e = e * 10 + (buf[i] - _ZERO)
                    ne += 1
                    i += 1
                if ne == 0:
                    return BAD, row, row, ny, nx, ns, y_sorted, x_sorted, n_zero
                p10 += -e if eneg else e
            if i < n and buf[i] != _SP and buf[i] != _NL:
                return BAD, row, row, ny, nx, ns, y_sorted, x_sorted, n_zero
            val = 0.0
            if m != 0:
                if sig > 15 or p10 > 22 or p10 < -22:
                    slow_tok[ns] = nx
                    slow_start[ns] = start
                    slow_end[ns] = i
                    ns += 1
                elif p10 >= 0:
                    val = m * _POW10[p10]
                else:
                    val = m / _POW10[-p10]
                if val > _F32_MAX:
                    return BAD, row, row, ny, nx, ns, y_sorted, x_sorted, n_zero
            else:
                n_zero += 1
            x_ids[nx] = v
            x_vals[nx] = -val if neg else val
            nx += 1
            cnt += 1
            if v <= prev:
                x_sorted = False
            prev = v
        x_counts[row] = cnt
        row += 1
        if i >= n:
            return OK, row, row, ny, nx, ns, y_sorted, x_sorted, n_zero
        i += 1  # the newline
