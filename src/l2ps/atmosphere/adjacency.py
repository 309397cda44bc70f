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
def _ema_rows(src, skip, cloud, alpha, out):
    """Forward then backward EMA along rows (int16 ×10000 in and out)."""
    nr, nc = src.shape
    for r in prange(nr):
        s = 0.0
        n = 0
        for c in range(nc):
            if not skip[r, c] and not cloud[r, c]:
                s += src[r, c]
                n += 1
        state = s / n if n > 0 else 0.0
        row = np.empty(nc, np.float64)
        for c in range(nc):
            if skip[r, c]:
                continue
            if not cloud[r, c]:
                state = alpha * src[r, c] + (1.0 - alpha) * state
            row[c] = state
        for c in range(nc - 1, -1, -1):
            if skip[r, c]:
                continue
            if not cloud[r, c]:
                state = alpha * row[c] + (1.0 - alpha) * state
            out[r, c] = np.int16(min(max(round(state), -32768.0), 32767.0))


@njit(cache=True, parallel=True)
def _ema_cols(src, skip, cloud, alpha, weight, acc):
    """Forward then backward EMA along columns of the row-smoothed field; ``acc += weight ·
    result`` (float32)."""
    nr, nc = src.shape
    for c in prange(nc):
        s = 0.0
        n = 0
        for r in range(nr):
            if not skip[r, c] and not cloud[r, c]:
                s += src[r, c]
                n += 1
        state = s / n if n > 0 else 0.0
        col = np.empty(nr, np.float32)
        for r in range(nr):
            if skip[r, c]:
                continue
            if not cloud[r, c]:
                state = alpha * src[r, c] + (1.0 - alpha) * state
            col[r] = state
        for r in range(nr - 1, -1, -1):
            if skip[r, c]:
                continue
            if not cloud[r, c]:
                state = alpha * col[r] + (1.0 - alpha) * state
            acc[r, c] += weight * state


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
    tmp = np.zeros(rho0.shape, np.int16)
    for k, km in enumerate(RING_KM):
        r_px = km * 1000.0 / res_m
        alpha = 2.0 / (r_px + 1.0)
        _ema_rows(rho0, skip, cloud, alpha, tmp)
        _ema_cols(tmp, skip, cloud, alpha, np.float32(w[k]), acc)
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
