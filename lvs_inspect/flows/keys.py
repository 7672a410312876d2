"""Grouping and membership over whole columns, without pandas' multi-column machinery.

``group_ids(cols)`` numbers rows by their tuple of values in order of first appearance, exactly
as ``DataFrame.groupby(cols, sort=False).ngroup()`` does, at a fraction of the time and memory:
the columns are folded into one 64-bit hash, the hash is factorised in one pass, and every row is
then compared, column by column, with the first row of its group. Two different tuples that
share a hash are detected by that check and the slow exact method answers instead, so the
result never depends on the hash.

``member(a, keys)`` is ``np.isin(a, keys)`` for the handful of keys a topology has (addresses,
MACs, leg codes), as a few comparisons instead of a sort of the whole column.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

_MUL = np.uint64(0x9E3779B97F4A7C15)
_FMIX1 = np.uint64(0xFF51AFD7ED558CCD)
_FMIX2 = np.uint64(0xC4CEB9FE1A85EC53)
#: at most this many keys are compared one by one; more go to np.isin
SMALL_SET = 16


def _take(col: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    return col if rows is None else col[rows]


def hash_rows(cols: Sequence[np.ndarray], rows: np.ndarray | None = None) -> np.ndarray:
    """A 64-bit hash of each row's tuple of integer values (equal tuples, equal hashes), for the
    rows ``rows`` of the columns (all rows when None). One column is read at a time."""
    n = len(cols[0]) if rows is None else len(rows)
    h = np.zeros(n, dtype=np.uint64)
    tmp = np.empty(n, dtype=np.uint64)
    for c in cols:
        h *= _MUL
        if c.dtype == np.uint64 and rows is not None:
            np.take(c, rows, out=tmp)
        else:
            np.copyto(tmp, _take(c, rows), casting="unsafe")   # signed values wrap: still one per input
        h += tmp
    # murmur3's finaliser: every input bit reaches every output bit
    for mul in (_FMIX1, _FMIX2):
        np.right_shift(h, np.uint64(33), out=tmp)
        h ^= tmp
        h *= mul
    np.right_shift(h, np.uint64(33), out=tmp)
    h ^= tmp
    return h


def first_positions(codes: np.ndarray) -> np.ndarray:
    """Row of the first occurrence of each code, for codes numbered in order of first appearance."""
    if len(codes) == 0:
        return np.zeros(0, dtype=np.int64)
    top = np.maximum.accumulate(codes)
    new = np.empty(len(codes), dtype=bool)
    new[0] = True
    np.not_equal(top[1:], top[:-1], out=new[1:])
    del top
    return np.flatnonzero(new)


def _factorize(values: np.ndarray) -> np.ndarray:
    # a hash table sized for every row would cost 32 bytes a row; let it grow with the groups
    return pd.factorize(values, size_hint=max(1024, len(values) >> 4))[0].astype(np.int64, copy=False)


def group_ids(cols: Sequence[np.ndarray], rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, first) over the rows ``rows`` of the columns (all rows when None): ids[i] numbers
    row i's tuple in order of first appearance (int64); first[g] is the first row (position in
    ``rows``) of group g, ascending."""
    n = len(cols[0]) if rows is None else len(rows)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if len(cols) == 1 and cols[0].dtype.kind in "iub":
        codes = _factorize(_take(cols[0], rows))
        return codes, first_positions(codes)
    codes = _factorize(hash_rows(cols, rows))
    first = first_positions(codes)
    for c in cols:
        values = _take(c, rows)
        if (values != values[first][codes]).any():
            # two different tuples with one hash: number them exactly (and slowly)
            df = pd.DataFrame({f"c{i}": _take(col, rows) for i, col in enumerate(cols)})
            codes = df.groupby(list(df.columns), sort=False).ngroup().to_numpy().astype(np.int64)
            return codes, first_positions(codes)
    return codes, first


def member(a: np.ndarray, keys) -> np.ndarray:
    """``np.isin(a, keys)``, by comparisons when the keys are few and compare exactly."""
    keys = np.asarray(keys)
    if len(keys) == 0:
        return np.zeros(len(a), dtype=bool)
    exact = a.dtype.kind in "iub" and keys.dtype.kind in "iub" and np.result_type(a, keys).kind in "iub"
    uniq = np.unique(keys) if exact else keys
    if not exact or len(uniq) > SMALL_SET:
        return np.isin(a, keys)
    out = a == uniq[0]
    for k in uniq[1:]:
        out |= a == k
    return out
