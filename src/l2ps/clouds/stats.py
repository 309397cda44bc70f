"""Quantiles of masked pixel samples (spec 01 §6.3: GSL linear interpolation on sorted data,
index = p·(n − 1) with p as float32; 0.0 for an empty sample).

Integer samples use an exact histogram (no sort, no copy); float samples are gathered into
one float32 buffer and partially sorted.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _hist_int16(values, mask, hist):
    ny, nx = values.shape
    n = 0
    for i in range(ny):
        for j in range(nx):
            if mask[i, j]:
                hist[np.int64(values[i, j]) + 32768] += 1
                n += 1
    return n


@njit(cache=True)
def _kth_from_hist(hist, k):
    acc = 0
    for b in range(hist.shape[0]):
        acc += hist[b]
        if acc > k:
            return b - 32768
    return hist.shape[0] - 1 - 32768


def _position(p: float, n: int) -> tuple[int, float]:
    idx = float(np.float32(p)) * (n - 1)
    k = int(np.floor(idx))
    return k, idx - k


def quantile_int16(values: np.ndarray, mask: np.ndarray, p: float) -> float:
    """Linear-interpolation quantile ``p`` of the int16 ``values`` where ``mask`` (exact)."""
    hist = np.zeros(65536, np.int64)
    n = _hist_int16(values, mask, hist)
    if n == 0:
        return 0.0
    k, frac = _position(p, n)
    lo = _kth_from_hist(hist, k)
    hi = _kth_from_hist(hist, min(k + 1, n - 1))
    return float(lo + frac * (hi - lo))


@njit(cache=True)
def _hist_int16_bits(values, bits, none_of, hist):
    ny, nx = values.shape
    n = 0
    for i in range(ny):
        for j in range(nx):
            if (bits[i, j] & none_of) == 0:
                hist[np.int64(values[i, j]) + 32768] += 1
                n += 1
    return n


def quantile_from_hist(hist: np.ndarray, n: int, p: float) -> float:
    """The quantile ``p`` of a sample of ``n`` int16 values given as a 65536-bin histogram
    (bin = value + 32768), as :func:`quantile_int16`."""
    if n == 0:
        return 0.0
    k, frac = _position(p, n)
    lo = _kth_from_hist(hist, k)
    hi = _kth_from_hist(hist, min(k + 1, n - 1))
    return float(lo + frac * (hi - lo))


def quantile_int16_bits(values: np.ndarray, bits: np.ndarray, none_of: int, p: float) -> float:
    """:func:`quantile_int16` with the mask ``(bits & none_of) == 0`` evaluated on the fly
    (no full-scene bool array)."""
    hist = np.zeros(65536, np.int64)
    n = _hist_int16_bits(values, bits, np.uint8(none_of), hist)
    if n == 0:
        return 0.0
    k, frac = _position(p, n)
    lo = _kth_from_hist(hist, k)
    hi = _kth_from_hist(hist, min(k + 1, n - 1))
    return float(lo + frac * (hi - lo))


@njit(cache=True)
def _gather(values, mask, out):
    ny, nx = values.shape
    n = 0
    for i in range(ny):
        for j in range(nx):
            if mask[i, j]:
                out[n] = values[i, j]
                n += 1
    return n


def quantile_float(values: np.ndarray, mask: np.ndarray, p: float, count: int | None = None
                   ) -> float:
    """Linear-interpolation quantile ``p`` of float ``values`` where ``mask``."""
    n = int(np.count_nonzero(mask)) if count is None else int(count)
    if n == 0:
        return 0.0
    buf = np.empty(n, np.float32)
    n = _gather(values, mask, buf)
    buf = buf[:n]
    k, frac = _position(p, n)
    k1 = min(k + 1, n - 1)
    part = np.partition(buf, (k, k1) if k1 != k else k)
    lo, hi = float(part[k]), float(part[k1])
    return lo + frac * (hi - lo)


def quantile_values(values: np.ndarray, p: float) -> float:
    """Linear-interpolation quantile of a 1-D sample (float), 0.0 if empty."""
    n = values.shape[0]
    if n == 0:
        return 0.0
    k, frac = _position(p, n)
    k1 = min(k + 1, n - 1)
    part = np.partition(values.astype(np.float64), (k, k1) if k1 != k else k)
    return float(part[k] + frac * (part[k1] - part[k]))
