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

from .morphology import fill_holes

CDI_NODATA = np.float32(-9999.0)
_SIGMA = 0.5


@njit(cache=True, parallel=True)
def _gauss_aggregate(b8, qai, k, off_coarse, ci0, out):
    """Mean over the k×k fine children of each coarse cell of the 5×5 Gaussian (σ = 0.5)
    of B08, normalised by the weights of in-image, valid neighbours; valid children only.
    The 25 weights are computed once (same values as per pixel). ``out`` holds the coarse
    rows ci0 … ci0 + out.shape[0] − 1."""
    ny, nx = b8.shape
    cy, cx = out.shape
    wtab = np.empty((5, 5), np.float64)
    for di in range(-2, 3):
        for dj in range(-2, 3):
            wtab[di + 2, dj + 2] = math.exp(-(di * di + dj * dj) / (2.0 * 0.25))
    for r in prange(cy):
        ci = ci0 + r
        for cj in range(cx):
            if off_coarse[ci, cj] & 1:
                out[r, cj] = 0.0
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
            out[r, cj] = np.float32(acc / nval) if nval > 0 else np.float32(0.0)


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
def _cdi_kernel(r1, r2, v, ra, ny, c0, cdi, vmin):
    """CDI from the sample variances over 7×7 cells (r1 ≠ 0, > 2 cells) and the minimum of
    v over 15×15 cells (r1 ≠ 0), for the image rows c0 … c0 + cdi.shape[0] − 1 (``ny``:
    image rows; r1, r2, v hold the image rows from ``ra`` on, at least 7 rows around).
    Row-parallel, each row summed in a fixed order."""
    nx = r1.shape[1]
    inf = np.float32(np.inf)
    for rr in prange(cdi.shape[0]):
        i = c0 + rr
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
            li = ii - ra
            for j in range(nx):
                a = r1[li, j]
                if a == 0:
                    continue
                if v[li, j] < cm[j]:
                    cm[j] = v[li, j]
                if near:
                    b = r2[li, j]
                    cn[j] += 1
                    c1[j] += a
                    c11[j] += np.float64(a) * a
                    c2[j] += b
                    c22[j] += np.float64(b) * b
        for j in range(nx):
            if r1[i - ra, j] == 0:
                cdi[rr, j] = CDI_NODATA
                vmin[rr, j] = inf
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
            vmin[rr, j] = m
            if n > 2:
                var1 = (s11 - s1 * s1 / n) / (n - 1)
                var2 = (s22 - s2 * s2 / n) / (n - 1)
                if var1 < 0:
                    var1 = 0.0
                if var2 < 0:
                    var2 = 0.0
                den = var1 + var2
                if den > 0:
                    cdi[rr, j] = np.float32((var1 - var2) / den)
                else:
                    cdi[rr, j] = np.float32(np.nan)     # 0/0 as in C: never seed nor grow
            else:
                cdi[rr, j] = CDI_NODATA


@njit(cache=True, inline="always")
def _growable(c):
    return c >= -1.0 and c < -0.25


@njit(cache=True, parallel=True)
def _seeds(cdi, vmin, c0, ny, i0, seed, grow):
    """Seeds and growable cells (−1 ≤ CDI < −0.25) of the image rows i0 … i0 +
    seed.shape[0] − 1; ``cdi``/``vmin`` hold the image rows from ``c0`` on (with the rows
    above and below); returns the number of cells with a CDI (row-wise counts summed)."""
    nr, nx = seed.shape
    cnt = np.zeros(nr, np.int64)
    for rr in prange(nr):
        i = i0 + rr
        li = i - c0
        for j in range(nx):
            c = cdi[li, j]
            if c != CDI_NODATA:
                cnt[rr] += 1
            grow[rr, j] = _growable(c)
            ok = c != CDI_NODATA and (c <= -0.5 or (vmin[li, j] > 0.8 and c < 0))
            if ok:
                for di in range(-1, 2):
                    ii = i + di
                    if ii < 0 or ii >= ny:
                        continue
                    for dj in range(-1, 2):
                        jj = j + dj
                        if jj < 0 or jj >= nx:
                            continue
                        d = cdi[ii - c0, jj]
                        if d == CDI_NODATA or (d > -0.5 and vmin[ii - c0, jj] < 0.8):
                            ok = False
            seed[rr, j] = ok
    return cnt.sum()


@njit(cache=True)
def _grow(grow, cloud):
    """FIFO region growing from the seeds in ``cloud`` (in place) into the ``grow`` cells,
    8-neighbourhood."""
    ny, nx = grow.shape
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
                    if not cloud[ii, jj] and grow[ii, jj]:
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
                if not cloud[ii, jj] and grow[ii, jj]:
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
    return smoothed_broadnir_rows(b8, qai, k, bits)(0, bits.shape[0])


def smoothed_broadnir_rows(b8: np.ndarray, qai: np.ndarray, k: int, bits: np.ndarray):
    """:func:`smoothed_broadnir` as a function of a row range: ``f(a, b)`` returns the work
    rows a:b (float32), so that the full-size float image is never made."""
    b8c = np.ascontiguousarray(b8)
    qc = np.ascontiguousarray(qai)

    def rows(a: int, b: int) -> np.ndarray:
        out = np.empty((b - a, bits.shape[1]), np.float32)
        _gauss_aggregate(b8c, qc, int(k), bits, int(a), out)
        return out
    return rows


STRIP_ROWS = 512          # work rows per strip of the CDI


def cloud_parallax(bits: np.ndarray, b7: np.ndarray, b8a: np.ndarray, gb8, vprob: np.ndarray,
                   strip: int = STRIP_ROWS) -> tuple[np.ndarray, dict]:
    """Sentinel-2 cloud mask on the 20 m work grid (spec 01 §6.4 steps 2–7): ratios of PCP
    cells, CDI, seeds, region growing, then OR saturation, AND bright. Returns (cloud bool,
    stats with the seed and grown cell counts).

    ``gb8``: the smoothed B08 (float32 array on the work grid) or a function of a row range
    (:func:`smoothed_broadnir_rows`). The ratios, the CDI and the 15×15 minimum are made in
    strips of ``strip`` rows (with the 8 rows above and below that they need); only the
    seeds and the growable cells (bool) are kept at full size."""
    ny, nx = bits.shape
    rows_gb8 = gb8 if callable(gb8) else (lambda a, b: gb8[a:b])
    cloud = np.empty((ny, nx), np.bool_)
    grow = np.empty((ny, nx), np.bool_)
    ncdi = 0
    strip = max(int(strip), 1)
    for i0 in range(0, ny, strip):
        i1 = min(ny, i0 + strip)
        c0, c1 = max(0, i0 - 1), min(ny, i1 + 1)        # CDI rows for the seeds' 3×3
        ra, rb = max(0, c0 - 7), min(ny, c1 + 7)        # ratio rows for the CDI's 15×15
        r1 = np.empty((rb - ra, nx), np.float32)
        r2 = np.empty((rb - ra, nx), np.float32)
        v = np.empty((rb - ra, nx), np.float32)
        _ratios(bits[ra:rb], b7[ra:rb], b8a[ra:rb], np.ascontiguousarray(rows_gb8(ra, rb)),
                vprob[ra:rb], r1, r2, v)
        cdi = np.empty((c1 - c0, nx), np.float32)
        vmin = np.empty((c1 - c0, nx), np.float32)
        _cdi_kernel(r1, r2, v, ra, ny, c0, cdi, vmin)
        del r1, r2, v
        ncdi += int(_seeds(cdi, vmin, c0, ny, i0, cloud[i0:i1], grow[i0:i1]))
        del cdi, vmin
    nseed = int(np.count_nonzero(cloud))
    _grow(grow, cloud)
    del grow
    ngrown = int(np.count_nonzero(cloud))
    # texture-less cloud interiors have no parallax signal (both variances ~0): fill the
    # PCP holes enclosed by the grown clouds (l2ps addition, docs/deviations.d/clouds.md)
    holes = fill_holes(cloud)
    holes &= ~cloud
    holes &= (bits & 2) != 0
    nfilled = int(np.count_nonzero(holes))
    cloud |= holes
    del holes
    stats = {"cdi_cells": ncdi, "seeds": nseed, "grown": ngrown, "holes_filled": nfilled}
    _final(bits, cloud)
    return cloud, stats
