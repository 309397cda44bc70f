"""Sentinel-2 per-pixel water vapour from B8A (865 nm) and B09 (945 nm) (spec 02 §2.4).

For every 60 m pixel of B09 (FORCE: 6×6 blocks of the 10 m grid) the reference surface
reflectance is the mean B8A TOA of the block's 20 m pixels that are valid, not cloud shadow, not
water and have TOA ≥ 0.15; both bands are inverted with the RT terms of the pixel's nearest cell
and elevation level for a series of water-vapour columns, and the column where the B09 surface
reflectance equals the B8A one is the estimate.  Deterministic (FORCE's Nelder–Mead start value
depends on the OpenMP thread; here the root is bracketed on a fixed 0.25 g cm⁻² grid and
interpolated linearly), accepted in 0 < w ≤ 7 g cm⁻².
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import qai as Q
from ..scene import nearest_index

W_MAX = 7.0
REF_MIN_TOA = 1500          # B8A TOA ×10000 below which a pixel is no reference


@njit(cache=True)
def _rho(toa, pr, pa, tgr, tga, tg, t, s):
    y = (toa - (tgr * pr + tga * pa)) / tg
    return y / (t + s * y)


@njit(cache=True, parallel=True)
def _wv_kernel(b9, ref, ref_n, cell_i, cell_j, lev, wv_nodes,
               pr9, pa9, t9, s9, tgr9, tga9, tg9, pr8, pa8, t8, s8, tgr8, tga8, tg8, out):
    nr, nc = b9.shape
    nw = wv_nodes.size
    for r in prange(nr):
        ci = cell_i[r]
        for c in range(nc):
            out[r, c] = np.nan
            if ref_n[r, c] == 0 or b9[r, c] == -9999:
                continue
            cj = cell_j[c]
            k = lev[r, c]
            if np.isnan(t9[ci, cj, k]) or np.isnan(t8[ci, cj, k]):
                continue
            m9 = b9[r, c] / 10000.0
            m8 = ref[r, c]
            prev = 0.0
            for iw in range(nw):
                d = (_rho(m9, pr9[ci, cj, k], pa9[ci, cj, k], tgr9[ci, cj, k], tga9[ci, cj, k, iw],
                          tg9[ci, cj, k, iw], t9[ci, cj, k], s9[ci, cj, k])
                     - _rho(m8, pr8[ci, cj, k], pa8[ci, cj, k], tgr8[ci, cj, k], tga8[ci, cj, k, iw],
                            tg8[ci, cj, k, iw], t8[ci, cj, k], s8[ci, cj, k]))
                if iw > 0 and prev < 0.0 and d >= 0.0:
                    w = wv_nodes[iw - 1] + (wv_nodes[iw] - wv_nodes[iw - 1]) * (-prev) / (d - prev)
                    if w > 0.0 and w <= 7.0:
                        out[r, c] = w
                    break
                if iw == 0 and d >= 0.0:
                    break            # no absorption signal: w ≤ 0
                prev = d


@njit(cache=True, parallel=True)
def _block_reference_kernel(b8a, qai, qr, qc, bad_bits, fy, fx, ref, ref_n):
    """Mean B8A reflectance of the valid reference pixels per B09 pixel (fy×fx blocks of the
    20 m grid): valid = QAI (nearest processing-grid pixel ``qai[qr[r], qc[c]]``) without the
    ``bad_bits`` and TOA ≥ REF_MIN_TOA.  Sums are integer (exact, order-independent)."""
    ny, nx = ref.shape
    for i in prange(ny):
        for j in range(nx):
            acc = 0
            n = 0
            for r in range(i * fy, i * fy + fy):
                for c in range(j * fx, j * fx + fx):
                    v = b8a[r, c]
                    if v < REF_MIN_TOA or (qai[qr[r], qc[c]] & bad_bits) != 0:
                        continue
                    acc += v
                    n += 1
            ref_n[i, j] = n
            ref[i, j] = acc / n / 10000.0 if n > 0 else 0.0


def retrieve_water_vapor(scene, rt_b8a, rt_b09, level_of, cell_index) -> np.ndarray:
    """Water vapour (g cm⁻², float32, NaN = not retrieved) on the B09 grid.

    ``rt_b8a``/``rt_b09``: :class:`~l2ps.atmosphere.grid.BandRT` with water-vapour nodes;
    ``level_of(grid)``: nearest elevation level (int) per pixel of ``grid``;
    ``cell_index(grid)``: nearest coarse cell row and column index per row/column of ``grid``.
    """
    g9, g8 = scene.grids["VAPOR"], scene.grids["NIR"]
    fy, fx = int(round(g9.dy / g8.dy)), int(round(g9.dx / g8.dx))
    b8 = scene.toa["NIR"]
    ny = min(g9.ny, b8.shape[0] // fy)
    nx = min(g9.nx, b8.shape[1] // fx)
    ref = np.zeros((g9.ny, g9.nx), np.float64)
    ref_n = np.zeros((g9.ny, g9.nx), np.int32)
    qr, qc = nearest_index(scene.grid, g8)
    bad = np.uint16((1 << Q.NODATA) | (1 << Q.SHADOW) | (1 << Q.WATER))
    _block_reference_kernel(b8, scene.qai, qr.astype(np.int64), qc.astype(np.int64), bad, fy, fx,
                            ref[:ny, :nx], ref_n[:ny, :nx])
    ci, cj = cell_index(g9)
    lev = level_of(g9).astype(np.int64)
    out = np.empty((g9.ny, g9.nx), np.float32)
    a, b = rt_b09, rt_b8a
    _wv_kernel(scene.toa["VAPOR"], ref, ref_n, ci, cj, lev, a.wv,
               a.path_r, a.path_a, a.t_sun * a.t_view, a.s, a.tg_ray, a.tg_aer, a.tg,
               b.path_r, b.path_a, b.t_sun * b.t_view, b.s, b.tg_ray, b.tg_aer, b.tg, out)
    return out


def water_vapor_fill(scene, w09: np.ndarray, fill_value: float) -> tuple[np.ndarray, float, int]:
    """Water vapour int16 ×1000 on the B09 grid from the retrieval ``w09``: pixels without a
    retrieval get the scene mean of the retrieved values (or ``fill_value`` if none succeeded);
    valid processing-grid pixels whose B09 pixel was filled get QAI bit 14 ("water vapour
    fill", set block-wise).  Returns (B09-grid map, scene mean, n filled processing pixels)."""
    good = np.isfinite(w09)
    mean = float(w09[good].mean()) if good.any() else float(fill_value)
    w = np.where(good, w09, np.float32(mean))
    w16 = np.clip(w.astype(np.float32) * np.float32(1000.0), -32768, 32767).astype(np.int16)
    r, c = nearest_index(scene.grids["VAPOR"], scene.grid)
    filled = 0
    for r0 in range(0, scene.grid.ny, 512):
        rr = r[r0:r0 + 512]
        q = scene.qai[r0:r0 + 512]
        miss = ~good[rr[:, None], c[None, :]] & ((q & 1) == 0)
        Q.set_flag(q, Q.WATER_VAPOR_FILL, miss)
        filled += int(miss.sum())
    return w16, mean, filled
