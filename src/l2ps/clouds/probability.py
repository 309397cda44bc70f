"""Landsat: thermal and variability cloud probabilities with dynamic thresholds (spec 01
§6.3, FORCE ``cloud_probability``, ``land_probability``, ``water_probability``).

The land and water probabilities are recomputed inside the kernels instead of being kept
as full-scene float arrays: the land percentile is an exact radix selection over two
passes (no gathered sample), the clear-water sample is gathered (it is small), and a last
pass applies the thresholds.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .morphology import majority_fill
from .stats import quantile_from_hist, quantile_int16_bits

P_LOW = 0.175
P_HIGH = 0.825


@njit(cache=True, inline="always")
def _landprob(t, vprob, a, b):
    tp = (a - np.float32(t)) / b
    if tp < 0:
        tp = np.float32(0.0)
    return tp * np.float32(vprob) / np.float32(10000.0)


@njit(cache=True, inline="always")
def _waterprob(t, s1, wtemp):
    tp = (wtemp - np.float32(t)) / np.float32(400.0)
    bp = np.float32(s1) / np.float32(1100.0)
    if bp > 1:
        bp = np.float32(1.0)
    return tp * bp


@njit(cache=True)
def _gather_water(bits, swir2, temp, swir1, wtemp, out):
    ny, nx = bits.shape
    n = 0
    for i in range(ny):
        for j in range(nx):
            c = bits[i, j]
            if (c & 1) == 0 and (c & 4) != 0 and swir2[i, j] <= 300:
                out[n] = _waterprob(temp[i, j], swir1[i, j], wtemp)
                n += 1
    return n


@njit(cache=True)
def _hist_clear_water(bits, swir2, temp, hist):
    """Histogram of the temperatures of clear water (water bit, SWIR2 ≤ 0.03, valid)."""
    ny, nx = bits.shape
    n = 0
    for i in range(ny):
        for j in range(nx):
            if (bits[i, j] & 5) == 4 and swir2[i, j] <= 300:
                hist[np.int64(temp[i, j]) + 32768] += 1
                n += 1
    return n


@njit(cache=True, parallel=True)
def _cloud_kernel(bits, temp, vprob, swir1, a, b, lclr_max, has_water, wtemp, wclr_max,
                  cold, cloud):
    ny, nx = bits.shape
    for i in prange(ny):
        for j in range(nx):
            c = bits[i, j]
            if (c & 1) or not (c & 32):          # off, or not bright
                cloud[i, j] = False
                continue
            t = temp[i, j]
            res = (c & 64) != 0 or np.float32(t) < cold
            if not res and (c & 2):
                if c & 4:
                    if has_water:
                        res = _waterprob(t, swir1[i, j], wtemp) > wclr_max
                    else:
                        res = np.float32(0.0) > wclr_max
                else:
                    res = _landprob(t, vprob[i, j], a, b) > lclr_max
            cloud[i, j] = res


@njit(cache=True, inline="always")
def _fkey(x, tmp):
    """Order-preserving uint32 key of a float32 (``tmp``: a 1-element float32 scratch)."""
    tmp[0] = x
    u = np.int64(tmp.view(np.uint32)[0])
    if u & 0x80000000:
        return (~u) & 0xFFFFFFFF
    return u | 0x80000000


@njit(cache=True)
def _land_hist(bits, temp, vprob, a, b, top, hist):
    """Histogram of the land probabilities' keys of the lnd pixels: top < 0: by the upper
    16 bits of the key; else the lower 16 bits of the keys whose upper bits are ``top``."""
    ny, nx = bits.shape
    tmp = np.empty(1, np.float32)
    n = 0
    for i in range(ny):
        for j in range(nx):
            if (bits[i, j] & (1 | 2 | 4 | 16)) == 0:      # lnd
                k = _fkey(_landprob(temp[i, j], vprob[i, j], a, b), tmp)
                if top < 0:
                    hist[k >> 16] += 1
                    n += 1
                elif (k >> 16) == top:
                    hist[k & 0xFFFF] += 1
                    n += 1
    return n


def _key_value(key: int) -> float:
    u = key ^ 0x80000000 if key & 0x80000000 else (~key) & 0xFFFFFFFF
    return float(np.array([u], np.uint32).view(np.float32)[0])


def _land_quantile(bits, temp, vprob, a, b, p: float) -> float:
    """The quantile ``p`` (as :func:`_quantile_of`: linear interpolation, index p·(n − 1))
    of the land probabilities of the lnd pixels, exact, without gathering them: a radix
    selection of the order statistics on the float32 values' order-preserving keys (one
    pass over the upper 16 bits, one over the lower 16 bits of the selected bins)."""
    hist = np.zeros(65536, np.int64)
    n = int(_land_hist(bits, temp, vprob, a, b, -1, hist))
    if n == 0:
        return 0.0
    idx = float(np.float32(p)) * (n - 1)
    k = int(np.floor(idx))
    k1 = min(k + 1, n - 1)
    cum = np.cumsum(hist)
    vals = {}
    for r in sorted({k, k1}):
        top = int(np.searchsorted(cum, r, side="right"))      # first bin with cum > r
        before = int(cum[top - 1]) if top > 0 else 0
        low = np.zeros(65536, np.int64)
        _land_hist(bits, temp, vprob, a, b, top, low)
        lc = np.cumsum(low)
        bottom = int(np.searchsorted(lc, r - before, side="right"))
        vals[r] = _key_value((top << 16) | bottom)
    return vals[k] + (idx - k) * (vals[k1] - vals[k])


def _quantile_of(buf: np.ndarray, n: int, p: float) -> float:
    if n == 0:
        return 0.0
    part = buf[:n]              # scratch: partitioned in place (no copy)
    idx = float(np.float32(p)) * (n - 1)
    k = int(np.floor(idx))
    k1 = min(k + 1, n - 1)
    part.partition((k, k1) if k1 != k else k)
    return float(part[k]) + (idx - k) * (float(part[k1]) - float(part[k]))


def cloud_probability(bits: np.ndarray, bands: dict[str, np.ndarray], vprob: np.ndarray,
                      counts: dict[str, int], cloud_threshold: float) -> tuple[np.ndarray, dict]:
    """Landsat cloud mask (bool, majority-filled) and statistics (spec 01 §6.3).

    ``bits``: packed classes of :mod:`.potential`; ``bands``: TEMP, SWIR1, SWIR2 (int16);
    ``counts``: from :func:`~.potential.class_counts`. Returns (cloud, stats) with lowtemp,
    hightemp, lclr_max, wtemp, wclr_max, n_clear_water.
    """
    temp, swir1, swir2 = bands["TEMP"], bands["SWIR1"], bands["SWIR2"]
    npix, nland = counts["npix"], counts["nland"]
    sample = 1 | 2 | 16 | (4 if 100.0 * nland / max(npix, 1) >= 0.1 else 0)
    lowtemp = quantile_int16_bits(temp, bits, sample, P_LOW)
    hightemp = quantile_int16_bits(temp, bits, sample, P_HIGH)
    a = np.float32(hightemp + 400.0)
    b = np.float32((hightemp + 400.0) - (lowtemp - 400.0))
    lclr_max = _land_quantile(bits, temp, vprob, a, b, P_HIGH) + cloud_threshold
    # clear water: water bit and SWIR2 ≤ 0.03 (PCP not checked)
    hist = np.zeros(65536, np.int64)
    n_cw = int(_hist_clear_water(bits, swir2, temp, hist))
    if n_cw:
        wtemp = quantile_from_hist(hist, n_cw, P_HIGH)
        del hist
        buf = np.empty(n_cw, np.float32)
        n = _gather_water(bits, swir2, temp, swir1, np.float32(wtemp), buf)
        wclr_max = _quantile_of(buf, n, P_HIGH) + cloud_threshold
        del buf
    else:
        wtemp, wclr_max = 0.0, 1.0
    cloud = np.empty(bits.shape, np.bool_)
    _cloud_kernel(bits, temp, vprob, swir1, a, b, np.float32(lclr_max), n_cw > 0,
                  np.float32(wtemp), np.float32(wclr_max), np.float32(lowtemp - 3500.0), cloud)
    majority_fill(cloud)
    return cloud, {"lowtemp": lowtemp, "hightemp": hightemp, "lclr_max": lclr_max,
                   "wtemp": wtemp if n_cw else None, "wclr_max": wclr_max,
                   "n_clear_water": n_cw}
