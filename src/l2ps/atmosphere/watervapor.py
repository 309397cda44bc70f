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


def _block_reference(b8a: np.ndarray, ok: np.ndarray, fy: int, fx: int, shape):
    """Mean of the valid B8A pixels (×10000 → reflectance) per B09 pixel (fy×fx blocks)."""
    ny, nx = shape
    v = np.where(ok, b8a.astype(np.float64), 0.0)[:ny * fy, :nx * fx]
    n = ok[:ny * fy, :nx * fx].astype(np.int32)
    vs = v.reshape(ny, fy, nx, fx).sum(axis=(1, 3))
    ns = n.reshape(ny, fy, nx, fx).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ns > 0, vs / np.maximum(ns, 1) / 10000.0, 0.0), ns


def retrieve_water_vapor(scene, rt_b8a, rt_b09, level_of, cell_index) -> np.ndarray:
    """Water vapour (g cm⁻², float32, NaN = not retrieved) on the B09 grid.

    ``rt_b8a``/``rt_b09``: :class:`~l2ps.atmosphere.grid.BandRT` with water-vapour nodes;
    ``level_of(grid)``: nearest elevation level (int) per pixel of ``grid``;
    ``cell_index(grid)``: nearest coarse cell row and column index per row/column of ``grid``.
    """
    g9, g8 = scene.grids["VAPOR"], scene.grids["NIR"]
    fy, fx = int(round(g9.dy / g8.dy)), int(round(g9.dx / g8.dx))
    q8 = scene.qai_on(g8)
    ok = ((q8 & 1) == 0) & ~Q.get_flag(q8, Q.SHADOW) & ~Q.get_flag(q8, Q.WATER) \
        & (scene.toa["NIR"] >= REF_MIN_TOA)
    b8 = scene.toa["NIR"]
    ny = min(g9.ny, b8.shape[0] // fy)
    nx = min(g9.nx, b8.shape[1] // fx)
    ref = np.zeros((g9.ny, g9.nx), np.float64)
    ref_n = np.zeros((g9.ny, g9.nx), np.int32)
    r_, n_ = _block_reference(b8, ok, fy, fx, (ny, nx))
    ref[:ny, :nx], ref_n[:ny, :nx] = r_, n_
    ci, cj = cell_index(g9)
    lev = level_of(g9).astype(np.int64)
    out = np.empty((g9.ny, g9.nx), np.float32)
    a, b = rt_b09, rt_b8a
    _wv_kernel(scene.toa["VAPOR"], ref, ref_n, ci, cj, lev, a.wv,
               a.path_r, a.path_a, a.t_sun * a.t_view, a.s, a.tg_ray, a.tg_aer, a.tg,
               b.path_r, b.path_a, b.t_sun * b.t_view, b.s, b.tg_ray, b.tg_aer, b.tg, out)
    return out


def water_vapor_map(scene, w09: np.ndarray, fill_value: float) -> tuple[np.ndarray, float, int]:
    """WVP on the processing grid (int16 ×1000, −9999 nodata) from the B09-grid retrieval; valid
    pixels without a retrieval get the scene mean of the retrieved values (or ``fill_value`` if
    none succeeded) and QAI bit 14 ("water vapour fill").  Returns (map, scene mean, n filled)."""
    r, c = nearest_index(scene.grids["VAPOR"], scene.grid)
    good = np.isfinite(w09)
    mean = float(w09[good].mean()) if good.any() else float(fill_value)
    off = (scene.qai & 1) != 0
    out = np.empty(scene.grid.shape, np.int16)
    filled = 0
    for r0 in range(0, scene.grid.ny, 512):
        rr = r[r0:r0 + 512]
        w = w09[rr[:, None], c[None, :]]
        miss = ~np.isfinite(w) & ~off[r0:r0 + 512]
        w = np.where(np.isfinite(w), w, mean)
        blk = (w * 1000.0).astype(np.int16)
        blk[off[r0:r0 + 512]] = -9999
        out[r0:r0 + 512] = blk
        Q.set_flag(scene.qai[r0:r0 + 512], Q.WATER_VAPOR_FILL, miss)
        filled += int(miss.sum())
    return out, mean, filled
