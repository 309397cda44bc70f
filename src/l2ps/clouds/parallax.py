"""Sentinel-2: the Cloud Displacement Index (Frantz et al. 2018) and its region growing
(spec 01 §6.4, FORCE ``cloud_parallax``).

Clouds are displaced between the bands of the MSI's staggered detectors; near a cloud the
ratio B08/B8A varies more than B07/B8A, so CDI = (Var1 − Var2)/(Var1 + Var2) is strongly
negative for clouds and near zero for bright ground.

FORCE works on the 10 m grid and aggregates 2×2 blocks to a 20 m "half grid". l2ps works on
the 20 m grid of B8A directly (B07 and B8A are native there); the Gaussian-smoothed B08 is
smoothed at 10 m and averaged over each 20 m cell exactly as FORCE does.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange
from scipy import ndimage

CDI_NODATA = np.float32(-9999.0)
_SIGMA = 0.5


@njit(cache=True, parallel=True)
def _gauss_aggregate(b8, qai, k, off_coarse, out):
    """Mean over the k×k fine children of each coarse cell of the 5×5 Gaussian (σ = 0.5)
    of B08, normalised by the weights of in-image, valid neighbours; valid children only.
    The 25 weights are computed once (same values as per pixel)."""
    ny, nx = b8.shape
    cy, cx = out.shape
    wtab = np.empty((5, 5), np.float64)
    for di in range(-2, 3):
        for dj in range(-2, 3):
            wtab[di + 2, dj + 2] = math.exp(-(di * di + dj * dj) / (2.0 * 0.25))
    for ci in prange(cy):
        for cj in range(cx):
            if off_coarse[ci, cj] & 1:
                out[ci, cj] = 0.0
                continue
            acc = 0.0
            nval = 0
            for a in range(k):
                i = ci * k + a
                if i >= ny:
                    continue
                for b in range(k):
                    j = cj * k + b
                    if j >= nx or (qai[i, j] & 1):
                        continue
                    s = 0.0
                    w = 0.0
                    for di in range(-2, 3):
                        ii = i + di
                        if ii < 0 or ii >= ny:
                            continue
                        for dj in range(-2, 3):
                            jj = j + dj
                            if jj < 0 or jj >= nx or (qai[ii, jj] & 1):
                                continue
                            wt = wtab[di + 2, dj + 2]
                            s += wt * b8[ii, jj]
                            w += wt
                    if w > 0:
                        acc += s / w
                        nval += 1
            out[ci, cj] = np.float32(acc / nval) if nval > 0 else np.float32(0.0)


@njit(cache=True, parallel=True)
def _ratios(bits, b7, b8a, gb8, vprob, r1, r2, v):
    ny, nx = bits.shape
    for i in prange(ny):
        for j in range(nx):
            c = bits[i, j]
            n = np.float32(b8a[i, j])
            if (c & 1) or not (c & 2) or n == 0:
                r1[i, j] = 0.0
                r2[i, j] = 0.0
                v[i, j] = 0.0
                continue
            r1[i, j] = np.float32(b7[i, j]) / n
            r2[i, j] = gb8[i, j] / n
            v[i, j] = np.float32(vprob[i, j]) / np.float32(10000.0)


@njit(cache=True, parallel=True)
def _cdi_kernel(r1, r2, v, cdi, vmin):
    """CDI from the sample variances over 7×7 cells (r1 ≠ 0, > 2 cells) and the minimum of
    v over 15×15 cells (r1 ≠ 0). Row-parallel, each row summed in a fixed order."""
    ny, nx = r1.shape
    inf = np.float32(np.inf)
    for i in prange(ny):
        cn = np.zeros(nx, np.int64)
        c1 = np.zeros(nx, np.float64)
        c11 = np.zeros(nx, np.float64)
        c2 = np.zeros(nx, np.float64)
        c22 = np.zeros(nx, np.float64)
        cm = np.empty(nx, np.float32)
        for j in range(nx):
            cm[j] = inf
        for ii in range(max(0, i - 7), min(ny, i + 8)):
            near = ii >= i - 3 and ii <= i + 3
            for j in range(nx):
                a = r1[ii, j]
                if a == 0:
                    continue
                if v[ii, j] < cm[j]:
                    cm[j] = v[ii, j]
                if near:
                    b = r2[ii, j]
                    cn[j] += 1
                    c1[j] += a
                    c11[j] += np.float64(a) * a
                    c2[j] += b
                    c22[j] += np.float64(b) * b
        for j in range(nx):
            if r1[i, j] == 0:
                cdi[i, j] = CDI_NODATA
                vmin[i, j] = inf
                continue
            n = 0
            s1 = 0.0
            s11 = 0.0
            s2 = 0.0
            s22 = 0.0
            for jj in range(max(0, j - 3), min(nx, j + 4)):
                n += cn[jj]
                s1 += c1[jj]
                s11 += c11[jj]
                s2 += c2[jj]
                s22 += c22[jj]
            m = inf
            for jj in range(max(0, j - 7), min(nx, j + 8)):
                if cm[jj] < m:
                    m = cm[jj]
            vmin[i, j] = m
            if n > 2:
                var1 = (s11 - s1 * s1 / n) / (n - 1)
                var2 = (s22 - s2 * s2 / n) / (n - 1)
                if var1 < 0:
                    var1 = 0.0
                if var2 < 0:
                    var2 = 0.0
                den = var1 + var2
                if den > 0:
                    cdi[i, j] = np.float32((var1 - var2) / den)
                else:
                    cdi[i, j] = np.float32(np.nan)     # 0/0 as in C: never seed nor grow
            else:
                cdi[i, j] = CDI_NODATA


@njit(cache=True, parallel=True)
def _seeds(cdi, vmin, seed):
    ny, nx = cdi.shape
    for i in prange(ny):
        for j in range(nx):
            c = cdi[i, j]
            ok = c != CDI_NODATA and (c <= -0.5 or (vmin[i, j] > 0.8 and c < 0))
            if ok:
                for di in range(-1, 2):
                    ii = i + di
                    if ii < 0 or ii >= ny:
                        continue
                    for dj in range(-1, 2):
                        jj = j + dj
                        if jj < 0 or jj >= nx:
                            continue
                        d = cdi[ii, jj]
                        if d == CDI_NODATA or (d > -0.5 and vmin[ii, jj] < 0.8):
                            ok = False
            seed[i, j] = ok


@njit(cache=True, inline="always")
def _growable(c):
    return c >= -1.0 and c < -0.25


@njit(cache=True)
def _grow(cdi, cloud):
    """FIFO region growing from the seeds in ``cloud`` (in place), 8-neighbourhood."""
    ny, nx = cdi.shape
    n = 0
    for i in range(ny):
        for j in range(nx):
            if cloud[i, j]:
                n += 1
    queue = np.empty(max(n, 16), np.int64)
    cap = queue.shape[0]
    head = 0
    size = 0
    for i in range(ny):
        for j in range(nx):
            if not cloud[i, j]:
                continue
            push = False
            for di in range(-1, 2):
                ii = i + di
                if ii < 0 or ii >= ny:
                    continue
                for dj in range(-1, 2):
                    jj = j + dj
                    if jj < 0 or jj >= nx:
                        continue
                    if not cloud[ii, jj] and _growable(cdi[ii, jj]):
                        push = True
            if push:
                queue[(head + size) % cap] = i * nx + j
                size += 1
    while size > 0:
        p = queue[head]
        head = (head + 1) % cap
        size -= 1
        i = p // nx
        j = p - i * nx
        for di in range(-1, 2):
            ii = i + di
            if ii < 0 or ii >= ny:
                continue
            for dj in range(-1, 2):
                jj = j + dj
                if jj < 0 or jj >= nx:
                    continue
                if not cloud[ii, jj] and _growable(cdi[ii, jj]):
                    cloud[ii, jj] = True
                    if size == cap:
                        new = np.empty(2 * cap, np.int64)
                        for k in range(size):
                            new[k] = queue[(head + k) % cap]
                        queue = new
                        head = 0
                        cap = 2 * cap
                    queue[(head + size) % cap] = ii * nx + jj
                    size += 1


@njit(cache=True, parallel=True)
def _final(bits, cloud):
    ny, nx = bits.shape
    for i in prange(ny):
        for j in range(nx):
            c = bits[i, j]
            cloud[i, j] = ((cloud[i, j] and not (c & 1)) or (c & 64) != 0) and (c & 32) != 0


def smoothed_broadnir(b8: np.ndarray, qai: np.ndarray, k: int, bits: np.ndarray) -> np.ndarray:
    """Gaussian-smoothed B08 (σ = 0.5 px, 5×5, valid neighbours only) averaged over the k×k
    fine pixels of each work cell (k = 1: smoothing on the work grid itself). float32 on the
    work grid (``bits``' shape)."""
    out = np.empty(bits.shape, np.float32)
    _gauss_aggregate(np.ascontiguousarray(b8), np.ascontiguousarray(qai), int(k), bits, out)
    return out


def cloud_parallax(bits: np.ndarray, b7: np.ndarray, b8a: np.ndarray, gb8: np.ndarray,
                   vprob: np.ndarray) -> tuple[np.ndarray, dict]:
    """Sentinel-2 cloud mask on the 20 m work grid (spec 01 §6.4 steps 2–7): ratios of PCP
    cells, CDI, seeds, region growing, then OR saturation, AND bright. Returns (cloud bool,
    stats with the seed and grown cell counts)."""
    shape = bits.shape
    r1 = np.empty(shape, np.float32)
    r2 = np.empty(shape, np.float32)
    v = np.empty(shape, np.float32)
    _ratios(bits, b7, b8a, gb8, vprob, r1, r2, v)
    cdi = np.empty(shape, np.float32)
    vmin = np.empty(shape, np.float32)
    _cdi_kernel(r1, r2, v, cdi, vmin)
    del r1, r2, v
    cloud = np.empty(shape, np.bool_)
    _seeds(cdi, vmin, cloud)
    nseed = int(np.count_nonzero(cloud))
    del vmin
    _grow(cdi, cloud)
    ngrown = int(np.count_nonzero(cloud))
    # texture-less cloud interiors have no parallax signal (both variances ~0): fill the
    # PCP holes enclosed by the grown clouds (l2ps addition, docs/deviations.d/clouds.md)
    holes = ndimage.binary_fill_holes(cloud)
    holes &= ~cloud
    holes &= (bits & 2) != 0
    nfilled = int(np.count_nonzero(holes))
    cloud |= holes
    del holes
    valid_cdi = cdi[cdi != CDI_NODATA]
    stats = {"cdi_cells": int(valid_cdi.size), "seeds": nseed, "grown": ngrown,
             "holes_filled": nfilled}
    del cdi, valid_cdi
    _final(bits, cloud)
    return cloud, stats
