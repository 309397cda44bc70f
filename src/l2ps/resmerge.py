"""Sentinel-2 resolution merge: the six 20 m bands on the 10 m grid (spec 03 §4, RES_MERGE).

Runs on the Sentinel-2 TOA (int16 ×10000) after cloud detection (and co-registration),
before the atmospheric correction. Targets ("coarse" bands): REDEDGE1–3, NIR (B8A), SWIR1,
SWIR2, read at their native 20 m grid (``scene.grids[d]``). Predictors ("fine" bands):
GREEN, RED and BROADNIR (B08) on the 10 m processing grid. A target pixel is merged when its
QAI is not nodata, not cloud (any state > 0) and not shadow, and all nine bands are valid
there; every other pixel keeps the nearest-neighbour (2×2 replicated) value.

Methods (``RES_MERGE``):

* ``NONE`` — nearest-neighbour replication of the 20 m value onto the 10 m grid.
* ``REGRESSION`` — per pixel and band an ordinary least-squares fit ``y = a + b·[G, R,
  BNIR]`` over the valid pixels of the 5×5 window (cloudy neighbours take part, nodata ones
  do not), evaluated with the centre's 10 m values. Each row pairs a neighbour's 20 m value
  with the G/R/BNIR means of the same 20 m cell (``fit_scale="coarse"``, default), so a
  20 m band that is a local linear combination of the 10 m bands is recovered exactly;
  ``fit_scale="fine"`` uses the neighbour's own 10 m values as FORCE does (slopes
  attenuated toward 0). The window sums are exact integer (int64) running sums of the
  ×10000 values, so the result does not depend on how rows are split among threads; the
  3×3 centred normal equations are solved with column scaling and a pivoted Cholesky that
  drops collinear predictors — at the centre, which is one of the fitted rows, every
  least-squares solution predicts the same value, as GSL's truncated SVD does. FORCE pads
  windows with fewer than 25 valid pixels with rows ``[1,0,0,0] → 0``; those rows are not
  data and pull the fit toward zero at image and nodata edges, so they are dropped here
  (docs/deviations.d/resmerge.md).
* ``IMPROPHE`` (default) — the spectral-similarity weighted mean of the replicated 20 m
  values within the 13-pixel circular kernel (radius 2), thresholds 0.0025 … 0.025 of the
  mean absolute G/R/BNIR difference, at least 3 neighbours per similarity class, weights
  ``1/(1 + exp(25·(S − min)/(max − min) − 7.5))``. The thresholds are compared as exact
  integers (sum of the three ×10000 differences against 75, 150, 300, 600, 750).
* ``STARFM`` — spectral STARFM with the base pairs (G + R)/2 and BNIR: their 20 m
  simulation (5×5 Gaussian σ = 0.5 px, then the mean over each 20 m pixel — the true 20 m
  pixel, not FORCE's running block counter, spec [BUG?]), candidates in the 3×3 window
  within ``2·std/40`` of the centre and within the residual uncertainties, prediction
  ``Σ W·(target + fine − simulated coarse)``. Cloud and shadow targets keep their
  replicated values here too (FORCE merges them).

Results are written as ``round(value)`` in the ×10000 scale (FORCE truncates toward zero;
see the deviations), clipped to the int16 range; −9999 stays reserved for nodata. All
kernels are numba ``parallel`` loops over rows with per-pixel work in a fixed order, so the
result is the same for any number of threads. Memory: int16 in and out (one (6, ny, nx)
int16 block for the six merged bands), STARFM adds two float32 arrays at 20 m.

IMPROPHE runs on blocks of 32 rows (± the kernel radius) copied into small int16 buffers
per thread and, within a row, on strips of 512 columns with one simple loop per kernel
offset (similarity sums, class limit, min/max, the index into a table of the exact
sigmoid values, weighted means in kernel order), which the compiler vectorises; the table
lookups (scalar loads: no gather instruction before AVX2) have a loop of their own, so
that they do not keep the index arithmetic from being vectorised. Per pixel it does the
same float64 operations in the same order as the per-neighbour definition, so the int16
result is the same to the bit (full 10980² tile: 32 → ~3 CPU-s; one core, 4096²: 38 →
26 ns per pixel with the lookups apart; benchmarks/bench_resmerge.py). It needs no 20 m
validity array (the 20 m values are checked per block).
"""
from __future__ import annotations

import math
import time

import numpy as np
from numba import njit, prange

from .errors import Level1Error, ParameterError, ProcessingError
from .scene import Scene, nearest_index

#: bands to merge, in FORCE's order (spec 03 §4)
TARGETS = ("REDEDGE1", "REDEDGE2", "REDEDGE3", "NIR", "SWIR1", "SWIR2")
#: 10 m predictor bands
PREDICTORS = ("GREEN", "RED", "BROADNIR")
METHODS = ("NONE", "REGRESSION", "IMPROPHE", "STARFM")

NODATA = -9999
#: QAI bits that exclude a pixel from being merged: nodata (0), cloud (1–2), shadow (3)
_SKIP_BITS = 0b1111

# IMPROPHE: Sthr = {0.0025, 0.005, 0.01, 0.02, 0.025} on the mean |Δρ| of three bands,
# compared as the sum of the three ×10000 differences: 3·10000·Sthr
_IMPROPHE_SUM_THR = np.array([75, 150, 300, 600, 750], dtype=np.int32)
_IMPROPHE_MINK = 3
# STARFM constants (reflectance units)
_STARFM_UNC = 0.002 * math.sqrt(2.0)
_STARFM_UNC_ALL = 0.004
# REGRESSION: pivot (1 − R² of a predictor on the previous ones) below which it is dropped
_REG_PIVOT_TOL = 1e-10
_REG_CHUNK = 32          # rows per parallel work item (running sums restart per chunk)


# ------------------------------------------------------------------------------ helpers
@njit(cache=True, inline="always")
def _to_int16(v: float) -> int:
    """Round half away from zero, clip to the int16 range, never produce the nodata value."""
    if v >= 0.0:
        k = math.floor(v + 0.5)
    else:
        k = -math.floor(-v + 0.5)
    if k > 32767:
        k = 32767
    elif k < -32767:
        k = -32767
    if k == -9999:
        k = -9998
    return int(k)


@njit(cache=True, inline="always")
def _valid(g, r, n, qai, cvalid, rmap, cmap, i, j) -> bool:
    """Usable as a neighbour: not QAI nodata and all nine band values present (``cvalid``:
    1 where all six 20 m values of a 20 m pixel are present)."""
    if qai[i, j] & 1:
        return False
    if g[i, j] == -9999 or r[i, j] == -9999 or n[i, j] == -9999:
        return False
    return cvalid[rmap[i], cmap[j]] != 0


@njit(cache=True, parallel=True)
def _coarse_valid(coarse, cvalid):
    """1 where every coarse band has a value (not −9999), else 0."""
    cy, cx = cvalid.shape
    for ci in prange(cy):
        for cj in range(cx):
            ok = 1
            for b in range(len(coarse)):
                if coarse[b][ci, cj] == -9999:
                    ok = 0
            cvalid[ci, cj] = ok


# ------------------------------------------------------------------------------ IMPROPHE
_IMPROPHE_CHUNK = 32     # image rows per parallel work item
_IMPROPHE_STRIP = 512    # columns per vectorised strip (working arrays stay in L1/L2)
_FAR = 1 << 20           # similarity sum given to unusable neighbours (above every limit)


@njit(cache=True)
def _improphe_weights(top: int) -> np.ndarray:
    """IMPROPHE weights looked up instead of evaluated per neighbour: entry 0 → 0 (not in
    the class), 1 → 1 (S = 0, or max ≤ min), ``2 + d(d+1)/2 + t`` → ``1/(1 + exp(25·t/d −
    7.5))`` for the integers t = S − min and d = max − min, 0 ≤ t ≤ d < ``top``. The
    expression is the one of the per-neighbour formula on the same integers, so the values
    are bit-identical to evaluating it directly (float64)."""
    tab = np.empty(2 + top * (top + 1) // 2, np.float64)
    tab[0] = 0.0
    tab[1] = 1.0
    for d in range(top):
        o = 2 + d * (d + 1) // 2
        for t in range(d + 1):
            if d == 0:
                tab[o + t] = 1.0
            else:
                tab[o + t] = 1.0 / (1.0 + math.exp(25.0 * t / d - 7.5))
    return tab


@njit(cache=True, parallel=True, error_model="numpy")
def _improphe(g, r, n, qai, coarse, rmap, cmap, off_i, off_j, thr, mink, wtab,
              chunk, strip, out, ra, qoff):
    """IMPROPHE (spec 03 §4): see the module docstring. ``off_i/off_j``: kernel offsets
    (centre first); ``thr``: class limits of the sum of |ΔG|+|ΔR|+|ΔBNIR| (×10000, int,
    increasing); ``wtab``: ``_improphe_weights(thr[-1])``; ``rmap`` non-decreasing (two
    north-up grids, ``nearest_index``).

    Work items are blocks of ``chunk`` rows; each copies its rows ± the kernel radius into
    column-padded int16 blocks (G, R, BNIR, a usable flag, the six 20 m bands replicated
    along the row) and runs over strips of ``strip`` columns with one simple loop per kernel
    offset, so that the compiler vectorises them: similarity sums S (``_FAR`` where the
    neighbour is unusable), the class limit (the smallest threshold with ≥ ``mink``
    neighbours, the centre included, below it), min/max of 0 < S < limit, the weights
    (table), and the weighted means accumulated in kernel order in float64 — the same
    operations in the same order per pixel as the per-neighbour formulation (a weight of 0
    adds exactly 0), hence independent of blocks, strips and threads.

    ``out`` holds image rows ``ra``.. (all rows: ``ra`` = 0 and ``out`` of the image's
    height); ``qai`` holds rows ``qoff``.. (at least the rows of ``out`` ± the kernel
    radius). Returns the number of merged pixels per row of ``out``."""
    nb, nrows, nx = out.shape
    ny = g.shape[0]
    nk = off_i.shape[0]
    ncls = thr.shape[0]
    rad = 0
    for k in range(nk):
        rad = max(rad, abs(off_i[k]), abs(off_j[k]))
    wid = nx + 2 * rad
    nchunk = (nrows + chunk - 1) // chunk
    merged = np.zeros(nrows, np.int64)
    for t in prange(nchunk):
        a = ra + t * chunk
        e = min(a + chunk, ra + nrows)
        r0 = max(a - rad, 0)
        r1 = min(e + rad, ny)
        h = r1 - r0
        cr0 = rmap[r0]
        hc = rmap[r1 - 1] - cr0 + 1
        bg = np.empty((h, wid), np.int16)
        br = np.empty((h, wid), np.int16)
        bn = np.empty((h, wid), np.int16)
        ok = np.empty((h, wid), np.uint8)
        by = np.empty((hc, nb, wid), np.int16)
        for lc in range(hc):
            for b in range(nb):
                src = coarse[b]
                yb = by[lc, b]
                for j in range(rad):
                    yb[j] = yb[nx + rad + j] = 0
                for j in range(nx):
                    yb[j + rad] = src[cr0 + lc, cmap[j]]
        for li in range(h):
            i = r0 + li
            lc = rmap[i] - cr0
            for j in range(rad):
                bg[li, j] = bg[li, nx + rad + j] = 0
                br[li, j] = br[li, nx + rad + j] = 0
                bn[li, j] = bn[li, nx + rad + j] = 0
                ok[li, j] = ok[li, nx + rad + j] = 0
            for j in range(nx):
                gv = g[i, j]
                rv = r[i, j]
                nv = n[i, j]
                bg[li, j + rad] = gv
                br[li, j + rad] = rv
                bn[li, j + rad] = nv
                use = ((qai[i - qoff, j] & _SKIP_BITS) == 0 and gv != -9999
                       and rv != -9999 and nv != -9999)
                for b in range(nb):
                    use = use and by[lc, b, j + rad] != -9999
                ok[li, j + rad] = 1 if use else 0
        ss = np.empty((nk, strip), np.int32)
        ww = np.empty((nk, strip), np.float64)
        xx = np.empty((nk, strip), np.int32)
        acc = np.empty((nb, strip), np.float64)
        wsum = np.empty(strip, np.float64)
        lim = np.empty(strip, np.int32)
        lo = np.empty(strip, np.int32)
        hi = np.empty(strip, np.int32)
        cnt = np.empty(strip, np.int32)
        for i in range(a, e):
            nmerged = 0
            l0 = i - r0
            for j0 in range(0, nx, strip):
                m = min(strip, nx - j0)
                # similarity sums
                for k in range(nk):
                    sk = ss[k, :m]
                    ii = i + off_i[k]
                    if ii < 0 or ii >= ny:
                        sk[:] = _FAR
                        continue
                    li = ii - r0
                    c0 = j0 + rad
                    c1 = j0 + rad + off_j[k]
                    g0 = bg[l0, c0:c0 + m]
                    r0_ = br[l0, c0:c0 + m]
                    n0 = bn[l0, c0:c0 + m]
                    g1 = bg[li, c1:c1 + m]
                    r1_ = br[li, c1:c1 + m]
                    n1 = bn[li, c1:c1 + m]
                    u1 = ok[li, c1:c1 + m]
                    for q in range(m):
                        s = (abs(np.int32(g0[q]) - np.int32(g1[q]))
                             + abs(np.int32(r0_[q]) - np.int32(r1_[q]))
                             + abs(np.int32(n0[q]) - np.int32(n1[q])))
                        sk[q] = s if u1[q] != 0 else _FAR
                # class limit: the smallest threshold with at least mink sums below it
                lm = lim[:m]
                lm[:] = thr[ncls - 1]
                cn = cnt[:m]
                for c in range(ncls - 1, -1, -1):
                    tc = thr[c]
                    cn[:] = 0
                    for k in range(nk):
                        sk = ss[k, :m]
                        for q in range(m):
                            cn[q] += 1 if sk[q] < tc else 0
                    for q in range(m):
                        lm[q] = tc if cn[q] >= mink else lm[q]
                # min / max of the positive sums in the class
                lw = lo[:m]
                hg = hi[:m]
                lw[:] = _FAR
                hg[:] = -1
                for k in range(nk):
                    sk = ss[k, :m]
                    for q in range(m):
                        s = sk[q]
                        inside = s > 0 and s < lm[q]
                        lw[q] = min(lw[q], s) if inside else lw[q]
                        hg[q] = max(hg[q], s) if inside else hg[q]
                # weights: the table index (0 outside the class, 1 for weight 1) in one
                # loop the compiler vectorises, the table lookups in another
                for k in range(nk):
                    sk = ss[k, :m]
                    xk = xx[k, :m]
                    for q in range(m):
                        s = sk[q]
                        d = hg[q] - lw[q]
                        x = 2 + ((d * (d + 1)) >> 1) + s - lw[q]
                        x = 1 if (s == 0 or d <= 0) else x
                        x = 0 if s >= lm[q] else x
                        xk[q] = x
                for k in range(nk):
                    xk = xx[k, :m]
                    wk = ww[k, :m]
                    for q in range(m):
                        wk[q] = wtab[xk[q]]
                # weighted means of the replicated 20 m values, in kernel order
                for q in range(m):
                    wsum[q] = 0.0
                for b in range(nb):
                    for q in range(m):
                        acc[b, q] = 0.0
                for k in range(nk):
                    ii = i + off_i[k]
                    if ii < 0 or ii >= ny:
                        continue
                    lc = rmap[ii] - cr0
                    c1 = j0 + rad + off_j[k]
                    wk = ww[k, :m]
                    for q in range(m):
                        wsum[q] += wk[q]
                    for b in range(nb):
                        ab = acc[b, :m]
                        yb = by[lc, b, c1:c1 + m]
                        for q in range(m):
                            ab[q] += wk[q] * yb[q]
                lc = rmap[i] - cr0
                c0 = j0 + rad
                u0 = ok[l0, c0:c0 + m]
                ws = wsum[:m]
                for q in range(m):
                    nmerged += 1 if u0[q] != 0 else 0
                for b in range(nb):
                    ab = acc[b, :m]
                    yb = by[lc, b, c0:c0 + m]
                    ob = out[b, i - ra, j0:j0 + m]
                    for q in range(m):
                        ob[q] = _to_int16(ab[q] / ws[q]) if u0[q] != 0 else yb[q]
            merged[i - ra] = nmerged
    return merged


# ---------------------------------------------------------------------------- REGRESSION
_NQ = 34   # window sums: 1, G, R, N, GG, GR, GN, RR, RN, NN, y(6), G·y(6), R·y(6), N·y(6)


@njit(cache=True, inline="always")
def _add_row(g, r, n, qai, coarse, cvalid, rmap, cmap, agg, row, sign, col):
    """Add (sign = +1) or remove (−1) the window quantities of one image row to the
    per-column sums ``col`` (nx, 34), exact in int64. Predictors: the 20 m aggregates
    ``agg`` (4 × block mean) of the pixel's 20 m cell, or (``agg`` empty, FORCE) the
    pixel's own 10 m values."""
    use_agg = agg.shape[1] > 0
    nx = g.shape[1]
    ci = rmap[row]
    for j in range(nx):
        if not _valid(g, r, n, qai, cvalid, rmap, cmap, row, j):
            continue
        cj = cmap[j]
        if use_agg:
            x0 = np.int64(agg[0, ci, cj])
            x1 = np.int64(agg[1, ci, cj])
            x2 = np.int64(agg[2, ci, cj])
        else:
            x0 = np.int64(g[row, j])
            x1 = np.int64(r[row, j])
            x2 = np.int64(n[row, j])
        col[j, 0] += sign
        col[j, 1] += sign * x0
        col[j, 2] += sign * x1
        col[j, 3] += sign * x2
        col[j, 4] += sign * x0 * x0
        col[j, 5] += sign * x0 * x1
        col[j, 6] += sign * x0 * x2
        col[j, 7] += sign * x1 * x1
        col[j, 8] += sign * x1 * x2
        col[j, 9] += sign * x2 * x2
        for b in range(len(coarse)):
            y = np.int64(coarse[b][ci, cj])
            col[j, 10 + b] += sign * y
            col[j, 16 + 3 * b] += sign * x0 * y
            col[j, 17 + 3 * b] += sign * x1 * y
            col[j, 18 + 3 * b] += sign * x2 * y


@njit(cache=True, inline="always")
def _solve_predict(h, xc0, xc1, xc2, nb, pred, c, s, lmat, use, dx, z, beta):
    """Least-squares prediction at the centre from the window sums ``h`` (34,) for each of
    ``nb`` bands into ``pred`` (×10000 scale, float64); c … beta are scratch arrays."""
    nn = h[0]
    sx = (h[1], h[2], h[3])
    # centred cross products times n (exact integers)
    c[0, 0] = nn * h[4] - sx[0] * sx[0]
    c[0, 1] = nn * h[5] - sx[0] * sx[1]
    c[0, 2] = nn * h[6] - sx[0] * sx[2]
    c[1, 1] = nn * h[7] - sx[1] * sx[1]
    c[1, 2] = nn * h[8] - sx[1] * sx[2]
    c[2, 2] = nn * h[9] - sx[2] * sx[2]
    c[1, 0] = c[0, 1]
    c[2, 0] = c[0, 2]
    c[2, 1] = c[1, 2]
    for k in range(3):
        s[k] = math.sqrt(c[k, k]) if c[k, k] > 0.0 else 0.0
    # scaled (correlation) matrix, pivoted Cholesky that drops collinear predictors
    for k in range(3):
        use[k] = False
        for m in range(3):
            lmat[k, m] = 0.0
    for k in range(3):
        if s[k] == 0.0:
            continue
        d = 1.0
        for m in range(k):
            if use[m]:
                d -= lmat[k, m] * lmat[k, m]
        if d <= _REG_PIVOT_TOL:
            continue
        use[k] = True
        lkk = math.sqrt(d)
        lmat[k, k] = lkk
        for l in range(k + 1, 3):
            if s[l] == 0.0:
                continue
            a = c[l, k] / (s[l] * s[k])
            for m in range(k):
                if use[m]:
                    a -= lmat[l, m] * lmat[k, m]
            lmat[l, k] = a / lkk
    # centre offset from the window mean, times n
    dx[0] = nn * xc0 - sx[0]
    dx[1] = nn * xc1 - sx[1]
    dx[2] = nn * xc2 - sx[2]
    for b in range(nb):
        sy = h[10 + b]
        # right-hand side: centred X'y times n, scaled
        for k in range(3):
            if use[k]:
                z[k] = (nn * h[16 + 3 * b + k] - sx[k] * sy) / s[k]
            else:
                z[k] = 0.0
        for k in range(3):          # forward: L z' = z
            if use[k]:
                a = z[k]
                for m in range(k):
                    if use[m]:
                        a -= lmat[k, m] * z[m]
                z[k] = a / lmat[k, k]
        for k in range(2, -1, -1):  # backward: L' γ = z'
            if use[k]:
                a = z[k]
                for m in range(k + 1, 3):
                    if use[m]:
                        a -= lmat[m, k] * beta[m]
                beta[k] = a / lmat[k, k]
            else:
                beta[k] = 0.0
        v = float(sy)
        for k in range(3):
            if use[k]:
                v += beta[k] / s[k] * dx[k]
        pred[b] = v / nn


@njit(cache=True, parallel=True)
def _regression(g, r, n, qai, coarse, cvalid, rmap, cmap, agg, rad, chunk, out):
    """REGRESSION (spec 03 §4) with exact running window sums; ``rad``: window radius;
    ``agg``: (3, cy, cx) 4 × 20 m means of G/R/BNIR (fit at 20 m), or shape (3, 0, 0) for
    FORCE's fit of the 20 m values on the 10 m predictors."""
    nb, ny, nx = out.shape
    xs = 4 if agg.shape[1] > 0 else 1
    nchunk = (ny + chunk - 1) // chunk
    merged = np.zeros(nchunk, np.int64)
    for t in prange(nchunk):
        a = t * chunk
        e = min(a + chunk, ny)
        col = np.zeros((nx, _NQ), np.int64)
        h = np.zeros(_NQ, np.int64)
        pred = np.empty(nb, np.float64)
        sc_c = np.empty((3, 3), np.float64)
        sc_l = np.empty((3, 3), np.float64)
        sc_s = np.empty(3, np.float64)
        sc_d = np.empty(3, np.float64)
        sc_z = np.empty(3, np.float64)
        sc_b = np.empty(3, np.float64)
        sc_u = np.empty(3, np.bool_)
        for row in range(max(a - rad, 0), min(a + rad, ny)):
            _add_row(g, r, n, qai, coarse, cvalid, rmap, cmap, agg, row, 1, col)
        cnt = 0
        for i in range(a, e):
            if i + rad < ny:
                _add_row(g, r, n, qai, coarse, cvalid, rmap, cmap, agg, i + rad, 1, col)
            ci0 = rmap[i]
            for q in range(_NQ):
                h[q] = 0
            for j in range(min(rad, nx)):
                for q in range(_NQ):
                    h[q] += col[j, q]
            for j in range(nx):
                if j + rad < nx:
                    for q in range(_NQ):
                        h[q] += col[j + rad, q]
                if j - rad - 1 >= 0:
                    for q in range(_NQ):
                        h[q] -= col[j - rad - 1, q]
                cj0 = cmap[j]
                for b in range(nb):
                    out[b, i, j] = coarse[b][ci0, cj0]
                if qai[i, j] & _SKIP_BITS:
                    continue
                if not _valid(g, r, n, qai, cvalid, rmap, cmap, i, j):
                    continue
                _solve_predict(h, xs * np.int64(g[i, j]), xs * np.int64(r[i, j]),
                               xs * np.int64(n[i, j]),
                               nb, pred, sc_c, sc_s, sc_l, sc_u, sc_d, sc_z, sc_b)
                for b in range(nb):
                    out[b, i, j] = _to_int16(pred[b])
                cnt += 1
            if i - rad >= 0:
                _add_row(g, r, n, qai, coarse, cvalid, rmap, cmap, agg, i - rad, -1, col)
        merged[t] = cnt
    return merged.sum()


@njit(cache=True, parallel=True)
def _aggregate(g, r, n, qai, coarse, cvalid, rmap, cmap, rstart, cstart, agg):
    """4 × the mean of G, R, BNIR over the valid 10 m pixels of each 20 m pixel, rounded
    (exact when all are valid: the block sum), int32; 0 where none is valid."""
    cy = agg.shape[1]
    cx = agg.shape[2]
    for ci in prange(cy):
        for cj in range(cx):
            s0 = 0
            s1 = 0
            s2 = 0
            m = 0
            for i in range(rstart[ci], rstart[ci + 1]):
                for j in range(cstart[cj], cstart[cj + 1]):
                    if not _valid(g, r, n, qai, cvalid, rmap, cmap, i, j):
                        continue
                    s0 += np.int64(g[i, j])
                    s1 += np.int64(r[i, j])
                    s2 += np.int64(n[i, j])
                    m += 1
            if m == 4:
                agg[0, ci, cj] = s0
                agg[1, ci, cj] = s1
                agg[2, ci, cj] = s2
            elif m > 0:
                agg[0, ci, cj] = round(4.0 * s0 / m)
                agg[1, ci, cj] = round(4.0 * s1 / m)
                agg[2, ci, cj] = round(4.0 * s2 / m)
            else:
                agg[0, ci, cj] = 0
                agg[1, ci, cj] = 0
                agg[2, ci, cj] = 0


# -------------------------------------------------------------------------------- STARFM
@njit(cache=True, parallel=True)
def _pair_moments(g, r, n, qai, coarse, cvalid, rmap, cmap):
    """Per-row sums of the two fine base pairs (reflectance) and their squares over valid
    pixels, reduced in row order (deterministic)."""
    ny, nx = g.shape
    part = np.zeros((ny, 5), np.float64)
    for i in prange(ny):
        for j in range(nx):
            if not _valid(g, r, n, qai, cvalid, rmap, cmap, i, j):
                continue
            f0 = 0.5 * (g[i, j] + r[i, j]) * 1e-4
            f1 = n[i, j] * 1e-4
            part[i, 0] += 1.0
            part[i, 1] += f0
            part[i, 2] += f0 * f0
            part[i, 3] += f1
            part[i, 4] += f1 * f1
    tot = np.zeros(5, np.float64)
    for i in range(ny):
        for k in range(5):
            tot[k] += part[i, k]
    return tot


@njit(cache=True, parallel=True)
def _simulate_coarse(g, r, n, qai, coarse, cvalid, rmap, cmap, rstart, cstart, pairs):
    """The base pairs as the 20 m sensor would see them: 5×5 Gaussian (σ = 0.5 px,
    normalised over valid neighbours), then the mean over the valid 10 m pixels of each
    20 m pixel. ``rstart/cstart``: first fine row/col of each coarse row/col (+1 entry)."""
    ny, nx = g.shape
    cy = pairs.shape[1]
    cx = pairs.shape[2]
    w = np.empty((5, 5), np.float64)
    for a in range(5):
        for b in range(5):
            w[a, b] = math.exp(-((a - 2) ** 2 + (b - 2) ** 2) / 0.5) / (math.pi * 0.5)
    for ci in prange(cy):
        for cj in range(cx):
            s0 = 0.0
            s1 = 0.0
            m = 0
            for i in range(rstart[ci], rstart[ci + 1]):
                for j in range(cstart[cj], cstart[cj + 1]):
                    if not _valid(g, r, n, qai, cvalid, rmap, cmap, i, j):
                        continue
                    ws = 0.0
                    v0 = 0.0
                    v1 = 0.0
                    for a in range(5):
                        ii = i + a - 2
                        if ii < 0 or ii >= ny:
                            continue
                        for b in range(5):
                            jj = j + b - 2
                            if jj < 0 or jj >= nx:
                                continue
                            if not _valid(g, r, n, qai, cvalid, rmap, cmap, ii, jj):
                                continue
                            ww = w[a, b]
                            ws += ww
                            v0 += ww * 0.5 * (g[ii, jj] + r[ii, jj]) * 1e-4
                            v1 += ww * n[ii, jj] * 1e-4
                    s0 += v0 / ws
                    s1 += v1 / ws
                    m += 1
            if m > 0:
                pairs[0, ci, cj] = s0 / m
                pairs[1, ci, cj] = s1 / m
            else:
                pairs[0, ci, cj] = 0.0
                pairs[1, ci, cj] = 0.0


@njit(cache=True, parallel=True)
def _starfm(g, r, n, qai, coarse, cvalid, rmap, cmap, pairs, slice0, slice1, out):
    """Spectral STARFM (spec 03 §4) on the 3×3 window; see the module docstring."""
    nb, ny, nx = out.shape
    unc_r = _STARFM_UNC
    merged = np.zeros(ny, np.int64)
    for i in prange(ny):
        # the (up to) 9 neighbours × 2 pairs that pass the slice test: fine value, simulated
        # coarse value, distance, 20 m index
        qf = np.empty(18, np.float64)
        qc = np.empty(18, np.float64)
        qd = np.empty(18, np.float64)
        qi = np.empty(18, np.int64)
        qj = np.empty(18, np.int64)
        cnt = 0
        ci0 = rmap[i]
        for j in range(nx):
            cj0 = cmap[j]
            for b in range(nb):
                out[b, i, j] = coarse[b][ci0, cj0]
            if qai[i, j] & _SKIP_BITS:
                continue
            if not _valid(g, r, n, qai, cvalid, rmap, cmap, i, j):
                continue
            f0p = 0.5 * (g[i, j] + r[i, j]) * 1e-4
            f1p = n[i, j] * 1e-4
            c0p = pairs[0, ci0, cj0]
            c1p = pairs[1, ci0, cj0]
            m = 0
            for di in range(-1, 2):
                ii = i + di
                if ii < 0 or ii >= ny:
                    continue
                for dj in range(-1, 2):
                    jj = j + dj
                    if jj < 0 or jj >= nx:
                        continue
                    if not _valid(g, r, n, qai, cvalid, rmap, cmap, ii, jj):
                        continue
                    ci = rmap[ii]
                    cj = cmap[jj]
                    d = math.sqrt(di * di + dj * dj)
                    f0 = 0.5 * (g[ii, jj] + r[ii, jj]) * 1e-4
                    if abs(f0 - f0p) <= slice0:
                        qf[m] = f0
                        qc[m] = pairs[0, ci, cj]
                        qd[m] = d
                        qi[m] = ci
                        qj[m] = cj
                        m += 1
                    f1 = n[ii, jj] * 1e-4
                    if abs(f1 - f1p) <= slice1:
                        qf[m] = f1
                        qc[m] = pairs[1, ci, cj]
                        qd[m] = d
                        qi[m] = ci
                        qj[m] = cj
                        m += 1
            for b in range(nb):
                src = coarse[b]
                tp = src[ci0, cj0] * 1e-4
                min_rc = min(abs(c0p - tp), abs(c1p - tp))
                min_rf = min(abs(c0p - f0p), abs(c1p - f1p))
                csum = 0.0
                vsum = 0.0
                for k in range(m):
                    tq = src[qi[k], qj[k]] * 1e-4
                    rcq = qc[k] - tq
                    rfq = qc[k] - qf[k]
                    if not (abs(rcq) < min_rc + unc_r or abs(rfq) < min_rf + unc_r):
                        continue
                    tt = abs(rcq) + 1e-4
                    ss = abs(rfq) + 1e-4
                    if tt * ss < _STARFM_UNC_ALL:
                        cw = 1.0
                    else:
                        cw = 1.0 / (tt * ss * (1.0 + qd[k]))
                    csum += cw
                    vsum += cw * (qf[k] - rcq)
                if csum > 0.0:
                    out[b, i, j] = _to_int16(vsum / csum * 1e4)
            cnt += 1
        merged[i] = cnt
    return merged.sum()


# ----------------------------------------------------------------------------- interface
# ------------------------------------------------------------------- merge when read
@njit(cache=True, parallel=True)
def _pack_rows(qai, bits, out):
    """``out`` (rows, ceil(nx / 8)) uint8: bit 7 − j % 8 of byte j // 8 set where ``qai``
    & ``bits`` ≠ 0 (np.packbits order, row by row)."""
    ny, nx = qai.shape
    for i in prange(ny):
        for jb in range(out.shape[1]):
            v = 0
            for t in range(8):
                j = jb * 8 + t
                if j < nx and (qai[i, j] & bits) != 0:
                    v |= 1 << (7 - t)
            out[i, jb] = v


@njit(cache=True)
def _unpack_rows(packed, r0, c0, out):
    """``out`` (rows, cols) uint16 = the bits of ``packed`` from row r0, column c0 (1
    where set)."""
    h, w = out.shape
    for i in range(h):
        for t in range(w):
            j = c0 + t
            out[i, t] = (packed[r0 + i, j >> 3] >> (7 - (j & 7))) & 1


@njit(cache=True, parallel=True)
def _nodata_where_bits(packed, r0, c0, out):
    """``out`` (bands, rows, cols) = −9999 where the bit of ``packed`` at row r0 + i,
    column c0 + t is set."""
    nb, h, w = out.shape
    for i in prange(h):
        for t in range(w):
            j = c0 + t
            if (packed[r0 + i, j >> 3] >> (7 - (j & 7))) & 1:
                for b in range(nb):
                    out[b, i, t] = NODATA


@njit(cache=True, parallel=True)
def _replicate_rows(src, rmap, cmap, r0, out):
    """``out`` (rows, nx) = the 20 m band ``src`` at fine rows r0.. (nearest)."""
    h, nx = out.shape
    for i in prange(h):
        ci = rmap[r0 + i]
        for j in range(nx):
            out[i, j] = src[ci, cmap[j]]


@njit(cache=True, parallel=True)
def _count_usable(g, r, n, skip, coarse, rmap, cmap):
    """Pixels IMPROPHE merges: mergeable QAI (``skip`` bit clear) and all nine values."""
    ny, nx = g.shape
    counts = np.zeros(ny, np.int64)
    for i in prange(ny):
        c = 0
        ci = rmap[i]
        for j in range(nx):
            if (skip[i, j >> 3] >> (7 - (j & 7))) & 1:
                continue
            if g[i, j] == NODATA or r[i, j] == NODATA or n[i, j] == NODATA:
                continue
            ok = True
            for b in range(len(coarse)):
                if coarse[b][ci, cmap[j]] == NODATA:
                    ok = False
            c += 1 if ok else 0
        counts[i] = c
    return counts.sum()


def _packed(qai: np.ndarray, bits: int) -> np.ndarray:
    out = np.empty((qai.shape[0], (qai.shape[1] + 7) // 8), np.uint8)
    _pack_rows(qai, bits, out)
    return out


#: MergedRows: spare rows of a block's buffer (the kept rows move to its front only when
#: the new ones do not fit: every ~3 cube strips of 256 rows), and columns computed beyond
#: those asked for (the next strips of a tile are shifted by a few columns)
_ROW_SLACK = 768
_COLUMN_SLACK = 128


class MergedRows:
    """The six IMPROPHE bands on the 10 m grid, computed block of rows by block of rows
    when they are read (``resolution_merge(..., lazy=True)``): a TOA-only run hands them
    to the cube writer, which reads them strip by strip, so the six merged bands (1.35 GiB
    for a full tile) are never held whole; the 20 m bands (¼ of that) stay instead.

    Every row equals the row of :func:`resolution_merge` (the kernel's rows depend only
    on the rows ± its radius) and, once :meth:`capture_nodata` has been called with the
    products' QAI, is nodata where that QAI is (as ``assemble_products`` makes the other
    bands). Of the QAI only two bits per pixel are kept (packed): "not mergeable"
    (nodata, cloud, shadow; at the merge) and nodata (at the products). The last block
    is kept, and a block that overlaps it further down reuses its rows, so a cube strip
    after strip computes each row about once per tile.

    Not thread-safe: one reader at a time (the cube writer's worker thread)."""

    def __init__(self, g, r, n, qai, coarse, rmap, cmap):
        self.g, self.r, self.n = g, r, n
        self.coarse, self.rmap, self.cmap = coarse, rmap, cmap
        self.shape = g.shape
        self.skip = _packed(qai, _SKIP_BITS)
        self.nodata: np.ndarray | None = None
        self.seconds = 0.0
        self._oi, self._oj = _kernel_offsets(2)
        self._wtab = _improphe_weights(int(_IMPROPHE_SUM_THR[-1]))
        self._buf: np.ndarray | None = None
        self._buffers: dict[str, np.ndarray] = {}
        self._c0 = self._c1 = self._off = 0          # rows of the kept block, its offset
        self._x = (0, 0)                              # and its columns

    def capture_nodata(self, qai: np.ndarray) -> None:
        """Rows made from now on are nodata where ``qai`` has its nodata bit."""
        self.nodata = _packed(qai, 1)

    def count_merged(self) -> int:
        """Pixels IMPROPHE merges in the whole image (as :func:`resolution_merge` counts
        them: the usable ones; whether or not the cube has read their rows)."""
        return int(_count_usable(self.g, self.r, self.n, self.skip, self.coarse, self.rmap,
                                 self.cmap))

    def _compute(self, a: int, b: int, x0: int, x1: int, out: np.ndarray) -> None:
        """Rows a..b, columns x0..x1 of the six bands into ``out`` (6, b − a, x1 − x0).
        The kernel runs on columns x0..x1 ± its radius (it treats the edges of what it
        is given as the image's, which only changes the 2 columns it drops)."""
        t0 = time.perf_counter()
        ny, nx = self.shape
        rad = 2                                               # the kernel's radius
        q0, q1 = max(a - rad, 0), min(b + rad, ny)
        h0, h1 = max(x0 - rad, 0), min(x1 + rad, nx)
        qloc = self._scratch("q", (q1 - q0, h1 - h0), np.uint16)
        _unpack_rows(self.skip, q0, h0, qloc)
        # the kernel writes C-contiguous arrays (one compiled variant); its scratch
        # buffers are reused (fresh pages cost the kernel's time again in page faults)
        direct = h0 == x0 and h1 == x1 and out.flags.c_contiguous
        tmp = out if direct else self._scratch("out", (len(self.coarse), b - a, h1 - h0),
                                               np.int16)
        cols = slice(h0, h1)
        _improphe(self.g[:, cols], self.r[:, cols], self.n[:, cols], qloc, self.coarse,
                  self.rmap, self.cmap[cols], self._oi, self._oj, _IMPROPHE_SUM_THR,
                  _IMPROPHE_MINK, self._wtab, _IMPROPHE_CHUNK, _IMPROPHE_STRIP, tmp, a, q0)
        if not direct:
            out[...] = tmp[:, :, x0 - h0:x1 - h0]
        if self.nodata is not None:
            _nodata_where_bits(self.nodata, a, x0, out)
        self.seconds += time.perf_counter() - t0

    def _scratch(self, key: str, shape: tuple, dtype) -> np.ndarray:
        """A C-contiguous array of ``shape`` on a buffer kept between calls."""
        size = int(np.prod(shape))
        buf = self._buffers.get(key)
        if buf is None or buf.size < size:
            self._buffers[key] = buf = np.empty(size, dtype)
        return buf[:size].reshape(shape)

    def any_valid_rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows r0..r1 (int16): 0 where one of the six bands is valid, nodata where none
        is (:meth:`MergedBand.valid_rows` of all six at once: one replication)."""
        out = np.empty((max(r1 - r0, 0), self.shape[1]), np.int16)
        if r1 <= r0:
            return out
        c0, c1 = int(self.rmap[r0]), int(self.rmap[r1 - 1]) + 1    # their 20 m rows
        anyv = np.full((c1 - c0, self.coarse[0].shape[1]), NODATA, np.int16)
        for c in self.coarse:
            anyv[c[c0:c1] != NODATA] = 0
        _replicate_rows(anyv, self.rmap - c0, self.cmap, r0, out)
        return out

    def block(self, s0: int, s1: int, c0: int = 0, c1: int | None = None) -> np.ndarray:
        """Rows s0..s1 of the six bands, (6, s1 − s0, nx) int16, of which at least
        columns c0..c1 (default: all) are set (valid until the next call).

        The kept block: rows r0..r1 at offset ``off`` of the buffer, columns x0..x1. A
        request further down that overlaps it keeps the shared rows (the buffer has
        :data:`_ROW_SLACK` spare rows, so they are moved to its front only every few
        requests), adds the columns it lacks and computes only the new rows; any other
        request starts a new block."""
        ny, nx = self.shape
        c1 = nx if c1 is None else c1
        s0, s1 = max(int(s0), 0), min(int(s1), ny)
        s1 = max(s1, s0)
        c0, c1 = max(int(c0), 0), min(int(c1), nx)
        c1 = max(c1, c0)
        buf, r0, r1, off = self._buf, self._c0, self._c1, self._off
        x0, x1 = self._x
        cols_ok = x0 <= c0 and c1 <= x1
        if buf is not None and cols_ok and r0 <= s0 and s1 <= r1:
            return buf[:, off + s0 - r0:off + s1 - r0]
        nb = len(self.coarse)

        def widen(a: int, b: int) -> tuple[int, int]:
            a, b = max(a - _COLUMN_SLACK, 0), min(b + _COLUMN_SLACK, nx)
            return (0, nx) if b - a > nx - 2 * _COLUMN_SLACK else (a, b)

        if buf is not None and r0 <= s0 < r1:            # moving down: keep the overlap
            off += s0 - r0
            r0 = s0
            if off + (s1 - r0) > buf.shape[1]:
                if s1 - r0 <= buf.shape[1]:
                    for k in range(0, r1 - r0, off):       # to the front, in pieces that
                        e = min(k + off, r1 - r0)          # do not overlap, per band (no
                        for b in range(nb):                # temporary)
                            buf[b, k:e] = buf[b, off + k:off + e]
                else:
                    new = np.empty((nb, s1 - r0 + _ROW_SLACK, nx), np.int16)
                    new[:, :r1 - r0] = buf[:, off:off + r1 - r0]
                    self._buf = buf = new
                off = 0
            if not cols_ok:                                # add the columns it lacks
                nx0, nx1 = widen(min(c0, x0), max(c1, x1))
                for a, b in ((nx0, x0), (x1, nx1)):
                    if b > a:
                        self._compute(r0, r1, a, b, buf[:, off:off + r1 - r0, a:b])
                x0, x1 = nx0, nx1
            start = r1
        else:                                              # a new block
            x0, x1 = widen(c0, c1)
            if buf is None or buf.shape[1] < s1 - s0:
                self._buf = buf = None                     # the old block goes first
                buf = np.empty((nb, s1 - s0 + _ROW_SLACK, nx), np.int16)
                self._buf = buf
            r0, off, start = s0, 0, s0
        if s1 > start:
            self._compute(start, s1, x0, x1, buf[:, off + start - r0:off + s1 - r0, x0:x1])
        self._c0, self._c1, self._off, self._x = r0, s1, off, (x0, x1)
        return buf[:, off:off + s1 - r0]

    def bands(self) -> list["MergedBand"]:
        return [MergedBand(self, k) for k in range(len(self.coarse))]


class MergedBand:
    """One band of :class:`MergedRows` (a row source of ``l2ps.cube.warp``: ``rows``,
    ``valid_rows``); ``np.asarray`` computes the whole band."""

    def __init__(self, merged: MergedRows, k: int):
        self.merged, self.k = merged, k
        self.shape = merged.shape
        self.dtype = np.dtype(np.int16)
        self.ndim = 2

    def rows(self, r0: int, r1: int, c0: int = 0, c1: int | None = None) -> np.ndarray:
        return self.merged.block(r0, r1, c0, c1)[self.k]

    def valid_rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows r0..r1 of the replicated 20 m band: nodata exactly where the merged band
        is (a merged pixel needs its own 20 m value), apart from the products' nodata
        (already nodata in the QAI)."""
        m = self.merged
        out = np.empty((max(r1 - r0, 0), self.shape[1]), np.int16)
        _replicate_rows(m.coarse[self.k], m.rmap, m.cmap, r0, out)
        return out

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape, np.int16)
        for r0 in range(0, self.shape[0], 1024):
            r1 = min(r0 + 1024, self.shape[0])
            out[r0:r1] = self.rows(r0, r1)
        return out if dtype is None else out.astype(dtype, copy=False)


def _kernel_offsets(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Row/col offsets of the circular kernel (Euclidean distance ≤ radius), centre first."""
    oi, oj = [0], [0]
    for di in range(-radius, radius + 1):
        for dj in range(-radius, radius + 1):
            if (di or dj) and di * di + dj * dj <= radius * radius:
                oi.append(di)
                oj.append(dj)
    return np.asarray(oi, np.int64), np.asarray(oj, np.int64)


def _starts(index: np.ndarray, n: int) -> np.ndarray:
    """First fine index mapping to each coarse index 0..n (monotone maps), length n + 1."""
    return np.searchsorted(index, np.arange(n + 1), side="left").astype(np.int64)


def resolution_merge(scene: Scene, method: str, *, nthreads: int | None = None,
                     fit_scale: str = "coarse", lazy: bool = False) -> dict:
    """Merge the Sentinel-2 20 m bands to 10 m in place (spec 03 §4, RES_MERGE).

    ``method``: NONE, REGRESSION, IMPROPHE or STARFM (case-insensitive). Replaces
    ``scene.toa[d]`` of the six targets (REDEDGE1–3, NIR, SWIR1, SWIR2) by int16 ×10000
    arrays on ``scene.grid`` and sets ``scene.grids[d] = scene.grid``; NONE replicates the
    20 m values (nearest neighbour). Nodata, cloud and shadow pixels (QAI) keep the
    replicated value. ``nthreads`` sets numba's thread count for the call (default: as is).
    ``fit_scale`` (REGRESSION only): "coarse" (default) fits the 20 m values on the 20 m
    means of the predictors, "fine" on the 10 m predictors as FORCE.

    ``lazy`` (IMPROPHE only; for a run whose next reader is the cube writer): the six
    bands become :class:`MergedBand` row sources computed when read (the predictors, the
    20 m bands and two QAI bits per pixel are kept; the QAI and the predictors must not
    change in a way that matters meanwhile: nodata, cloud and shadow bits as they are now,
    predictor values where those bits are clear). ``pixels_merged`` is then 0 here and
    :meth:`MergedRows.count_merged` later.

    Returns stats: ``method``, ``seconds``, ``pixels_merged`` (10 m pixels computed by the
    method), ``bands``. For a scene that is not Sentinel-2 nothing happens
    (``skipped`` says why).
    """
    import numba

    t0 = time.perf_counter()
    if fit_scale not in ("coarse", "fine"):
        raise ValueError(f"fit_scale {fit_scale!r}: expected 'coarse' or 'fine'")
    m = str(method).strip().upper()
    if m not in METHODS:
        raise ParameterError(f"RES_MERGE = {method!r}: expected one of {', '.join(METHODS)}")
    stats: dict = {"method": m, "seconds": 0.0, "pixels_merged": 0, "bands": list(TARGETS)}
    if scene.spec.mission != "sentinel2":
        stats.update(bands=[], skipped=f"{scene.sensor} is not Sentinel-2")
        return stats
    src = getattr(scene.level1, "source", scene.sensor)
    for d in PREDICTORS + TARGETS:
        if d not in scene.toa:
            raise Level1Error(f"{src}: band {d} is missing; the resolution merge needs "
                              f"{', '.join(PREDICTORS + TARGETS)}")
    grid = scene.grid
    for d in PREDICTORS:
        if scene.grids[d] != grid or scene.toa[d].shape != scene.qai.shape:
            raise ProcessingError(f"{src}: band {d} is not on the 10 m processing grid "
                                  f"({scene.toa[d].shape} vs QAI {scene.qai.shape})")
    tgrid = scene.grids[TARGETS[0]]
    for d in TARGETS:
        if scene.grids[d] != tgrid or scene.toa[d].shape != (tgrid.ny, tgrid.nx):
            raise ProcessingError(f"{src}: the 20 m bands are not on one grid ({d})")
    rmap, cmap = nearest_index(tgrid, grid)
    rmap = np.ascontiguousarray(rmap, np.int64)
    cmap = np.ascontiguousarray(cmap, np.int64)
    coarse = tuple(np.ascontiguousarray(scene.toa[d], np.int16) for d in TARGETS)
    g, r, n = (np.ascontiguousarray(scene.toa[d], np.int16) for d in PREDICTORS)
    qai = np.ascontiguousarray(scene.qai, np.uint16)
    if lazy and m == "IMPROPHE":
        merged_rows = MergedRows(g, r, n, qai, coarse, rmap, cmap)
        for d, band in zip(TARGETS, merged_rows.bands()):
            scene.toa[d] = band
            scene.grids[d] = grid
        stats.update(lazy=True, seconds=round(time.perf_counter() - t0, 3))
        return stats
    out = np.empty((len(TARGETS), grid.ny, grid.nx), np.int16)
    # 20 m pixels with all six values (IMPROPHE checks them in its row blocks instead)
    need_cvalid = m in ("REGRESSION", "STARFM")
    cvalid = np.empty((tgrid.ny, tgrid.nx) if need_cvalid else (0, 0), np.uint8)

    old = numba.get_num_threads()
    if nthreads is not None:
        numba.set_num_threads(max(1, min(int(nthreads), numba.config.NUMBA_NUM_THREADS)))
    try:
        if need_cvalid:
            _coarse_valid(coarse, cvalid)
        if m == "NONE":
            for k in range(len(TARGETS)):
                _replicate_rows(coarse[k], rmap, cmap, 0, out[k])
            merged = 0
        elif m == "IMPROPHE":
            oi, oj = _kernel_offsets(2)
            thr = _IMPROPHE_SUM_THR
            merged = _improphe(g, r, n, qai, coarse, rmap, cmap, oi, oj, thr,
                               _IMPROPHE_MINK, _improphe_weights(int(thr[-1])),
                               _IMPROPHE_CHUNK, _IMPROPHE_STRIP, out, 0, 0).sum()
        elif m == "REGRESSION":
            if fit_scale == "coarse":
                agg = np.empty((3, tgrid.ny, tgrid.nx), np.int32)
                _aggregate(g, r, n, qai, coarse, cvalid, rmap, cmap, _starts(rmap, tgrid.ny),
                           _starts(cmap, tgrid.nx), agg)
            else:
                agg = np.empty((3, 0, 0), np.int32)
            merged = _regression(g, r, n, qai, coarse, cvalid, rmap, cmap, agg, 2, _REG_CHUNK, out)
            del agg
        else:
            tot = _pair_moments(g, r, n, qai, coarse, cvalid, rmap, cmap)
            cnt = max(tot[0], 1.0)
            std0 = math.sqrt(max(tot[2] / cnt - (tot[1] / cnt) ** 2, 0.0))
            std1 = math.sqrt(max(tot[4] / cnt - (tot[3] / cnt) ** 2, 0.0))
            pairs = np.zeros((2, tgrid.ny, tgrid.nx), np.float32)
            _simulate_coarse(g, r, n, qai, coarse, cvalid, rmap, cmap, _starts(rmap, tgrid.ny),
                             _starts(cmap, tgrid.nx), pairs)
            merged = _starfm(g, r, n, qai, coarse, cvalid, rmap, cmap, pairs, 2.0 * std0 / 40.0,
                             2.0 * std1 / 40.0, out)
            del pairs
            stats["slices"] = [2.0 * std0 / 40.0, 2.0 * std1 / 40.0]
    finally:
        numba.set_num_threads(old)
    del coarse
    for k, d in enumerate(TARGETS):
        scene.toa[d] = out[k]
        scene.grids[d] = grid
    stats["pixels_merged"] = int(merged)
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    return stats
