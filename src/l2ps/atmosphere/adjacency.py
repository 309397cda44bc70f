"""Adjacency effect: background reflectance (spec 02 §4).

The provisional (homogeneous) BOA ρ0 of a band is smoothed with separable recursive
exponential moving averages for three rings (0.25, 1.0, 4.5 km; α = 2/(r + 1), r in pixels
of the band's grid), cloud pixels bridged (the state carries over them), nodata skipped; the
rings are weighted with the increments of the environment function F(r) of the scene-average
atmosphere, and the pixel's own weight F_self (radius 1.5 pixels) mixes ρ0 back in:
ρb = ρ0·F_self + (1 − F_self)·Σ w_k·avg_k.  Deterministic (rows/columns are independent).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import radtran as rt

RING_KM = (0.25, 1.0, 4.5)


@njit(cache=True, parallel=True)
def _mask_kernel(rho0, qai, out):
    """uint8 mask per pixel: bit 0 skip (QAI nodata or ρ0 nodata), bit 1 cloud (any state)."""
    nr, nc = rho0.shape
    for r in prange(nr):
        for c in range(nc):
            q = qai[r, c]
            m = 0
            if (q & 1) != 0 or rho0[r, c] == -9999:
                m = 1
            if ((q >> 1) & 3) != 0:
                m |= 2
            out[r, c] = m


@njit(cache=True, parallel=True)
def _ema_rows(src, mask, alphas, out):
    """Forward then backward EMA along rows for every ring k (``alphas[k]``), in one sweep;
    int16 ×10000 in, int16 ``out[k]``; ``mask`` bit 0 skip, bit 1 cloud (bridged)."""
    nr, nc = src.shape
    nk = alphas.size
    for r in prange(nr):
        s = 0.0
        n = 0
        for c in range(nc):
            if mask[r, c] == 0:
                s += src[r, c]
                n += 1
        mean = s / n if n > 0 else 0.0
        state = np.full(nk, mean)
        row = np.empty((nc, nk), np.float64)
        for c in range(nc):
            m = mask[r, c]
            if m & 1:
                continue
            if m == 0:
                v = src[r, c]
                for k in range(nk):
                    state[k] = alphas[k] * v + (1.0 - alphas[k]) * state[k]
            for k in range(nk):
                row[c, k] = state[k]
        for c in range(nc - 1, -1, -1):
            m = mask[r, c]
            if m & 1:
                continue
            for k in range(nk):
                if m == 0:
                    state[k] = alphas[k] * row[c, k] + (1.0 - alphas[k]) * state[k]
                out[k, r, c] = np.int16(min(max(round(state[k]), -32768.0), 32767.0))


COL_CHUNK = 32           # columns per task of the column pass (contiguous row segments)


@njit(cache=True, parallel=True)
def _ema_cols(src, mask, alphas, weights, f_self, rho):
    """Forward then backward EMA along the columns of the row-smoothed fields ``src[k]`` of
    the three rings, ring-weighted sum, own-pixel weight: ``rho`` (int16, the provisional BOA
    ρ0 on entry) becomes the background ρb = F_self·ρ0 + (1 − F_self)·Σ_k w_k·avg_k
    (truncated, −9999 where skipped), in place (each pixel reads its ρ0 before writing).
    Columns are processed in chunks of COL_CHUNK (contiguous row segments, one state vector
    per ring, unrolled rings); each column's arithmetic is the same as walking it alone."""
    nk, nr, nc = src.shape
    nchunk = (nc + COL_CHUNK - 1) // COL_CHUNK
    a0, a1, a2 = alphas[0], alphas[1], alphas[2]
    b0, b1, b2 = 1.0 - a0, 1.0 - a1, 1.0 - a2
    w0, w1, w2 = weights[0], weights[1], weights[2]
    for q in prange(nchunk):
        c0 = q * COL_CHUNK
        c1 = min(nc, c0 + COL_CHUNK)
        w = c1 - c0
        s0 = np.zeros(w)
        s1 = np.zeros(w)
        s2 = np.zeros(w)
        cnt = np.zeros(w, np.int64)
        for r in range(nr):
            for j in range(w):
                if mask[r, c0 + j] == 0:
                    s0[j] += src[0, r, c0 + j]
                    s1[j] += src[1, r, c0 + j]
                    s2[j] += src[2, r, c0 + j]
                    cnt[j] += 1
        for j in range(w):
            if cnt[j] > 0:
                s0[j] /= cnt[j]
                s1[j] /= cnt[j]
                s2[j] /= cnt[j]
        buf = np.empty((nr, 3, w), np.float32)
        for r in range(nr):
            for j in range(w):
                if mask[r, c0 + j] == 0:
                    s0[j] = a0 * src[0, r, c0 + j] + b0 * s0[j]
                    s1[j] = a1 * src[1, r, c0 + j] + b1 * s1[j]
                    s2[j] = a2 * src[2, r, c0 + j] + b2 * s2[j]
                buf[r, 0, j] = s0[j]
                buf[r, 1, j] = s1[j]
                buf[r, 2, j] = s2[j]
        for r in range(nr - 1, -1, -1):
            for j in range(w):
                m = mask[r, c0 + j]
                if m == 0:
                    s0[j] = a0 * buf[r, 0, j] + b0 * s0[j]
                    s1[j] = a1 * buf[r, 1, j] + b1 * s1[j]
                    s2[j] = a2 * buf[r, 2, j] + b2 * s2[j]
                if m & 1:
                    rho[r, c0 + j] = -9999
                else:
                    a = w0 * s0[j] + w1 * s1[j] + w2 * s2[j]
                    v = f_self * rho[r, c0 + j] + (1.0 - f_self) * np.float32(a)
                    rho[r, c0 + j] = np.int16(min(max(v, -32768.0), 32767.0))


def ring_weights(tau_a: float, tau_r: float) -> np.ndarray:
    """Weights of the three rings from the increments of F(r) (spec 02 §4 step 5)."""
    f = rt.env_weight(tau_a, tau_r, rt.env_aerosol(np.array(RING_KM)), rt.env_rayleigh(np.array(RING_KM)))
    d = np.array([f[0], f[1] - f[0], f[2] - f[1]])
    return d / d.sum()


def self_weight(tau_a: float, tau_r: float, res_m: float) -> float:
    """F of the pixel itself, radius 1.5 pixels (spec 02 §1.7)."""
    r0 = 1.5 * res_m / 1000.0
    return float(rt.env_weight(tau_a, tau_r, rt.env_aerosol(r0), rt.env_rayleigh(r0)))


def background_reflectance(rho0: np.ndarray, skip: np.ndarray, cloud: np.ndarray, res_m: float,
                           tau_a: float, tau_r: float) -> np.ndarray:
    """Background reflectance ×10000 (int16, a new array) of a band from its provisional BOA
    ``rho0`` (int16 ×10000); ``skip``: nodata pixels, ``cloud``: cloud pixels (any state), bool
    on the band's grid; ``res_m`` its pixel size; ``tau_a``/``tau_r`` the scene-average optical
    depths."""
    mask = (np.asarray(skip, bool).astype(np.uint8) | (np.asarray(cloud, bool).astype(np.uint8) << 1))
    return background_inplace(rho0.copy(), mask, res_m, tau_a, tau_r)


def background_mask(rho0: np.ndarray, qai: np.ndarray) -> np.ndarray:
    """The mask of :func:`background_inplace` from a QAI on ``rho0``'s grid: uint8, bit 0
    skip (QAI nodata or ρ0 nodata), bit 1 cloud (QAI cloud state > 0)."""
    mask = np.empty(rho0.shape, np.uint8)
    _mask_kernel(rho0, qai, mask)
    return mask


def background_inplace(rho: np.ndarray, mask: np.ndarray, res_m: float, tau_a: float,
                       tau_r: float, own: bool = True) -> np.ndarray:
    """Background reflectance written over the provisional BOA ``rho`` (int16 ×10000);
    ``mask``: uint8 bit 0 skip, bit 1 cloud.  ``own = False``: the ring part Σ_k w_k·avg_k
    only (the caller mixes in the pixel's own ρ0 with F_self).  Temporaries: three int16 ring
    fields."""
    assert len(RING_KM) == 3                  # the column kernel unrolls three rings
    w = ring_weights(tau_a, tau_r)
    f_self = self_weight(tau_a, tau_r, res_m) if own else 0.0
    tmp = np.empty((len(RING_KM),) + rho.shape, np.int16)
    alphas = np.array([2.0 / (km * 1000.0 / res_m + 1.0) for km in RING_KM])
    _ema_rows(rho, mask, alphas, tmp)
    _ema_cols(tmp, mask, alphas, w.astype(np.float64), np.float32(f_self), rho)
    return rho
