"""Landsat: thermal and variability cloud probabilities with dynamic thresholds (spec 01
§6.3, FORCE ``cloud_probability``, ``land_probability``, ``water_probability``).

The land and water probabilities are recomputed inside the kernels instead of being kept
as full-scene float arrays: one pass gathers the clear-sky sample for the percentile, a
second pass applies the thresholds.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .morphology import majority_fill
from .stats import quantile_int16

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
def _gather_land(bits, temp, vprob, a, b, out):
    ny, nx = bits.shape
    n = 0
    for i in range(ny):
        for j in range(nx):
            if (bits[i, j] & (1 | 2 | 4 | 16)) == 0:      # lnd
                out[n] = _landprob(temp[i, j], vprob[i, j], a, b)
                n += 1
    return n


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
    sample = (bits & np.uint8(1 | 2 | 16 | (4 if 100.0 * nland / max(npix, 1) >= 0.1 else 0))) == 0
    lowtemp = quantile_int16(temp, sample, P_LOW)
    hightemp = quantile_int16(temp, sample, P_HIGH)
    del sample
    a = np.float32(hightemp + 400.0)
    b = np.float32((hightemp + 400.0) - (lowtemp - 400.0))
    buf = np.empty(max(nland, 1), np.float32)
    n = _gather_land(bits, temp, vprob, a, b, buf)
    lclr_max = _quantile_of(buf, n, P_HIGH) + cloud_threshold
    del buf
    # clear water: water bit and SWIR2 ≤ 0.03 (PCP not checked)
    clear_water = ((bits & np.uint8(1 | 4)) == 4) & (swir2 <= 300)
    n_cw = int(np.count_nonzero(clear_water))
    if n_cw:
        wtemp = quantile_int16(temp, clear_water, P_HIGH)
        del clear_water
        buf = np.empty(n_cw, np.float32)
        n = _gather_water(bits, swir2, temp, swir1, np.float32(wtemp), buf)
        wclr_max = _quantile_of(buf, n, P_HIGH) + cloud_threshold
        del buf
    else:
        del clear_water
        wtemp, wclr_max = 0.0, 1.0
    cloud = np.empty(bits.shape, np.bool_)
    _cloud_kernel(bits, temp, vprob, swir1, a, b, np.float32(lclr_max), n_cw > 0,
                  np.float32(wtemp), np.float32(wclr_max), np.float32(lowtemp - 3500.0), cloud)
    majority_fill(cloud)
    return cloud, {"lowtemp": lowtemp, "hightemp": hightemp, "lclr_max": lclr_max,
                   "wtemp": wtemp if n_cw else None, "wclr_max": wclr_max,
                   "n_clear_water": n_cw}
