"""Potential cloud pixels, snow and water (spec 01 §6.2, FORCE ``potential_cloud``).

Per-pixel tests on TOA ×10000 integers (temperature K ×100). The results are packed into
one ``uint8`` class array (bits below) so that a full scene needs one byte per pixel.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .morphology import STRIP_ROWS, buffer_rows

# bits of the packed class array
OFF = np.uint8(1)          # nodata (QAI bit 0)
PCP = np.uint8(2)          # potential cloud pixel
WATER = np.uint8(4)        # water test passed (and slope < 0.087 rad)
SNOW_CANDIDATE = np.uint8(8)
SNOW = np.uint8(16)        # buffered snow candidates (the QAI snow bit)
BRIGHT = np.uint8(32)      # mean visible reflectance > 0.15
SATURATED = np.uint8(64)   # QAI saturation bit

WATER_SLOPE_LIMIT = 870    # slope in rad ×10000 (≈ 4.98°), spec 01 §6.2


@njit(cache=True, parallel=True)
def _potential_kernel(blue, green, red, nir, swir1, swir2, temp, has_temp, slope, has_slope,
                      bits, vprob):
    ny, nx = bits.shape
    for i in prange(ny):
        for j in range(nx):
            c = bits[i, j]
            if c & 1:
                vprob[i, j] = 0
                continue
            b = np.float32(blue[i, j])
            g = np.float32(green[i, j])
            r = np.float32(red[i, j])
            n = np.float32(nir[i, j])
            s1 = np.float32(swir1[i, j])
            s2 = np.float32(swir2[i, j])
            sat = (c & 64) != 0
            if n + r != 0:
                ndvi = (n - r) / (n + r)
            else:
                ndvi = np.float32(0.01)
            if g + s1 != 0:
                ndsi = (g - s1) / (g + s1)
            else:
                ndsi = np.float32(0.01)
            t = np.float32(0.0)
            if has_temp:
                t = np.float32(temp[i, j])
            # snow candidates
            snow = ndsi > 0.4 and s2 < 1100 and n > 1100 and g > 1000
            if has_temp and ndsi > 0.15 and t < 28300 and n > 1100 and g > 1000:
                snow = True
            if snow:
                c |= 8
            # water
            flat = True
            if has_slope:
                flat = slope[i, j] < 870
            if flat and ((ndvi < 0.01 and n < 1100) or (ndvi > 0 and ndvi < 0.1 and n < 500)):
                c |= 4
            # potential cloud pixel
            basic = ndsi < 0.8 and ndvi < 0.8 and s2 > 300 and ((not has_temp) or t <= 30015)
            vis = (b + g + r) / np.float32(3.0)
            bright = vis > 1500
            if bright:
                c |= 32
            if vis > 0:
                white = (abs(b - vis) + abs(g - vis) + abs(r - vis)) / vis
                if white > 1:
                    white = np.float32(1.0)
            else:
                white = np.float32(1.0)
            hot = b - np.float32(0.5) * r - np.float32(800.0)
            if s1 != 0:
                r45 = n / s1
            else:
                r45 = np.float32(0.0)
            if sat or (basic and white < 0.7 and bright and hot > 0 and r45 > 0.75):
                c |= 2
            # variability probability
            a = abs(ndvi)
            if sat and ndvi > 0:
                a = np.float32(0.0)
            s = abs(ndsi)
            if sat and ndsi < 0:
                s = np.float32(0.0)
            m = max(a, s, white)
            vprob[i, j] = np.int16(np.trunc((np.float32(1.0) - m) * np.float32(10000.0)))
            bits[i, j] = c


def potential_cloud(bands: dict[str, np.ndarray], bits: np.ndarray,
                    slope_code: np.ndarray | None) -> np.ndarray:
    """Sets the PCP, WATER, SNOW_CANDIDATE and BRIGHT bits of ``bits`` (in place; OFF and
    SATURATED must be set already) and returns the variability probability vprob as
    int16 trunc(vprob·10000) (spec 01 §6.2).

    ``bands``: BLUE, GREEN, RED, NIR, SWIR1, SWIR2 and optionally TEMP, int16 on the work
    grid. ``slope_code``: slope as uint16/int trunc(rad·10000) on the work grid, or None
    (flat)."""
    ny, nx = bits.shape
    temp = bands.get("TEMP")
    has_temp = temp is not None
    if temp is None:
        temp = np.zeros((1, 1), np.int16)
    has_slope = slope_code is not None
    if slope_code is None:
        slope_code = np.zeros((1, 1), np.int32)
    vprob = np.empty((ny, nx), np.int16)
    _potential_kernel(bands["BLUE"], bands["GREEN"], bands["RED"], bands["NIR"], bands["SWIR1"],
                      bands["SWIR2"], temp, has_temp, slope_code, has_slope, bits, vprob)
    return vprob


@njit(cache=True, parallel=True)
def _apply_snow(bits, snow_buf):
    ny, nx = bits.shape
    for i in prange(ny):
        for j in range(nx):
            if snow_buf[i, j] and not (bits[i, j] & 1):
                bits[i, j] |= 16


def set_snow(bits: np.ndarray, buffered_candidates: np.ndarray) -> None:
    """Set the SNOW bit where the buffered snow candidates are and the pixel is valid."""
    _apply_snow(bits, np.ascontiguousarray(buffered_candidates))


def buffer_snow(bits: np.ndarray, radius: int, strip: int = STRIP_ROWS) -> None:
    """Set the SNOW bit where ``buffer_disk(SNOW_CANDIDATE, radius)`` is and the pixel is
    valid, strip by strip (no full-size mask: the candidates are read from ``bits``, whose
    SNOW_CANDIDATE bit the SNOW bit does not touch)."""
    ny = bits.shape[0]

    def cand(a, b):
        return (bits[a:b] & SNOW_CANDIDATE) != 0
    for i0 in range(0, ny, max(int(strip), 1)):
        i1 = min(ny, i0 + max(int(strip), 1))
        _apply_snow(bits[i0:i1], buffer_rows(cand, bits.shape, radius, i0, i1))


@njit(cache=True, parallel=True)
def _count_kernel(bits, counts):
    # counts per row: npix, nwater, nsnow, nclear, nland, npcp
    ny, nx = bits.shape
    for i in prange(ny):
        a = 0
        w = 0
        s = 0
        cl = 0
        la = 0
        p = 0
        for j in range(nx):
            c = bits[i, j]
            if c & 1:
                continue
            a += 1
            if c & 4:
                w += 1
            if c & 16:
                s += 1
            if c & 2:
                p += 1
            if not (c & 2) and not (c & 16):
                cl += 1
                if not (c & 4):
                    la += 1
        counts[i, 0] = a
        counts[i, 1] = w
        counts[i, 2] = s
        counts[i, 3] = cl
        counts[i, 4] = la
        counts[i, 5] = p


def class_counts(bits: np.ndarray) -> dict[str, int]:
    """npix (valid), nwater, nsnow, nclear (clr: valid, not PCP, not snow), nland (clr and
    not water), npcp."""
    counts = np.zeros((bits.shape[0], 6), np.int64)
    _count_kernel(bits, counts)
    tot = counts.sum(axis=0)
    return dict(zip(("npix", "nwater", "nsnow", "nclear", "nland", "npcp"),
                    (int(v) for v in tot)))


def clear_mask(bits: np.ndarray) -> np.ndarray:
    """clr: valid, not PCP, not snow."""
    return (bits & (OFF | PCP | SNOW)) == 0


def land_mask(bits: np.ndarray) -> np.ndarray:
    """lnd: clr and not water."""
    return (bits & (OFF | PCP | SNOW | WATER)) == 0
