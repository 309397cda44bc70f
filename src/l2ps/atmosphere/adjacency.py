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
def _ema_rows(src, skip, cloud, alphas, out):
    """Forward then backward EMA along rows for every ring k (``alphas[k]``), in one sweep;
    int16 ×10000 in, int16 ``out[k]``."""
    nr, nc = src.shape
    nk = alphas.size
    for r in prange(nr):
        s = 0.0
        n = 0
        for c in range(nc):
            if not skip[r, c] and not cloud[r, c]:
                s += src[r, c]
                n += 1
        mean = s / n if n > 0 else 0.0
        state = np.full(nk, mean)
        row = np.empty((nc, nk), np.float64)
        for c in range(nc):
            if skip[r, c]:
                continue
            if not cloud[r, c]:
                v = src[r, c]
                for k in range(nk):
                    state[k] = alphas[k] * v + (1.0 - alphas[k]) * state[k]
            for k in range(nk):
                row[c, k] = state[k]
        for c in range(nc - 1, -1, -1):
            if skip[r, c]:
                continue
            cl = cloud[r, c]
            for k in range(nk):
                if not cl:
                    state[k] = alphas[k] * row[c, k] + (1.0 - alphas[k]) * state[k]
                out[k, r, c] = np.int16(min(max(round(state[k]), -32768.0), 32767.0))


COL_CHUNK = 64           # columns per task of the column pass (contiguous row segments)


@njit(cache=True, parallel=True)
def _ema_cols(src, skip, cloud, alphas, weights, acc):
    """Forward then backward EMA along the columns of the row-smoothed fields ``src[k]`` of
    every ring k; ``acc = Σ_k weights[k] · result_k`` (float32).  Columns are processed in
    chunks of COL_CHUNK so that every step reads contiguous row segments (a column-by-column
    walk is cache-hostile on large grids); each column's arithmetic is the same as walking it
    alone."""
    nk, nr, nc = src.shape
    nchunk = (nc + COL_CHUNK - 1) // COL_CHUNK
    for q in prange(nchunk):
        c0 = q * COL_CHUNK
        c1 = min(nc, c0 + COL_CHUNK)
        w = c1 - c0
        ssum = np.zeros((w, nk), np.float64)
        cnt = np.zeros(w, np.int64)
        for r in range(nr):
            for c in range(c0, c1):
                if not skip[r, c] and not cloud[r, c]:
                    cnt[c - c0] += 1
                    for k in range(nk):
                        ssum[c - c0, k] += src[k, r, c]
        state = np.zeros((w, nk), np.float64)
        for j in range(w):
            for k in range(nk):
                state[j, k] = ssum[j, k] / cnt[j] if cnt[j] > 0 else 0.0
        buf = np.empty((nr, w, nk), np.float32)
        for r in range(nr):
            for c in range(c0, c1):
                j = c - c0
                if skip[r, c]:
                    continue
                cl = cloud[r, c]
                for k in range(nk):
                    if not cl:
                        state[j, k] = alphas[k] * src[k, r, c] + (1.0 - alphas[k]) * state[j, k]
                    buf[r, j, k] = state[j, k]
        for r in range(nr - 1, -1, -1):
            for c in range(c0, c1):
                j = c - c0
                if skip[r, c]:
                    continue
                cl = cloud[r, c]
                a = 0.0
                for k in range(nk):
                    if not cl:
                        state[j, k] = alphas[k] * buf[r, j, k] + (1.0 - alphas[k]) * state[j, k]
                    a += weights[k] * state[j, k]
                acc[r, c] = a


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
    """Background reflectance ×10000 (int16) of a band from its provisional BOA ``rho0``
    (int16 ×10000); ``skip``: nodata pixels, ``cloud``: cloud pixels (any state), bool on the
    band's grid; ``res_m`` its pixel size; ``tau_a``/``tau_r`` the scene-average optical depths."""
    w = ring_weights(tau_a, tau_r)
    f_self = self_weight(tau_a, tau_r, res_m)
    acc = np.zeros(rho0.shape, np.float32)
    tmp = np.zeros((len(RING_KM),) + rho0.shape, np.int16)
    alphas = np.array([2.0 / (km * 1000.0 / res_m + 1.0) for km in RING_KM])
    _ema_rows(rho0, skip, cloud, alphas, tmp)
    _ema_cols(tmp, skip, cloud, alphas, w.astype(np.float64), acc)
    del tmp
    _mix(rho0, skip, np.float32(f_self), acc)
    return acc.astype(np.int16)


@njit(cache=True, parallel=True)
def _mix(rho0, skip, f_self, acc):
    nr, nc = rho0.shape
    for r in prange(nr):
        for c in range(nc):
            if skip[r, c]:
                acc[r, c] = -9999.0
            else:
                v = f_self * rho0[r, c] + (1.0 - f_self) * acc[r, c]
                acc[r, c] = min(max(v, -32768.0), 32767.0)
