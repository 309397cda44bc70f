"""The 16-bit quality assurance information (QAI) layer, spec 01 §7 and spec 03 §2.8.

Layout (bit: meaning):

====  ===========================================================================
0     nodata (0 valid, 1 nodata); on output a nodata pixel is exactly the value 1
1–2   cloud: 0 clear, 1 less confident (buffer), 2 confident/opaque, 3 cirrus
3     cloud shadow
4     snow
5     water
6–7   aerosol: 0 estimated, 1 interpolated, 2 high (> 0.6), 3 fill (fallback)
8     subzero reflectance in an output band
9     saturation
10    high sun zenith (> 75°)
11–12 illumination: 0 good (< 55°), 1 medium (55–80°), 2 poor (> 80°), 3 shadow (> 90°)
13    slope > 2°
14    water-vapour fill
15    unused (always 0)
====  ===========================================================================

In memory QAI is ``uint16``; on disk it is Int16 with nodata 1 (bit 15 is never set, so the
values are identical).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

QAI_DTYPE = np.uint16
QAI_NODATA = 1

# single-bit flags: name -> bit
NODATA = 0
SHADOW = 3
SNOW = 4
WATER = 5
SUBZERO = 8
SATURATION = 9
HIGH_SUN_ZENITH = 10
SLOPE = 13
WATER_VAPOR_FILL = 14

# two-bit fields: name -> lowest bit
CLOUD = 1
AEROSOL = 6
ILLUMINATION = 11

FLAGS = {
    "nodata": NODATA, "shadow": SHADOW, "snow": SNOW, "water": WATER, "subzero": SUBZERO,
    "saturation": SATURATION, "high_sun_zenith": HIGH_SUN_ZENITH, "slope": SLOPE,
    "water_vapor_fill": WATER_VAPOR_FILL,
}
FIELDS = {"cloud": CLOUD, "aerosol": AEROSOL, "illumination": ILLUMINATION}

# field values
CLOUD_CLEAR, CLOUD_BUFFER, CLOUD_OPAQUE, CLOUD_CIRRUS = 0, 1, 2, 3
AEROSOL_ESTIMATED, AEROSOL_INTERPOLATED, AEROSOL_HIGH, AEROSOL_FILL = 0, 1, 2, 3
ILLUMINATION_GOOD, ILLUMINATION_MEDIUM, ILLUMINATION_POOR, ILLUMINATION_SHADOW = 0, 1, 2, 3


def empty(shape) -> np.ndarray:
    """A QAI layer with every pixel valid and no flag set."""
    return np.zeros(shape, dtype=QAI_DTYPE)


# ------------------------------------------------------------------------- flags
def get_flag(qai: np.ndarray, bit: int) -> np.ndarray:
    """Boolean array: is flag ``bit`` set?"""
    return (qai & QAI_DTYPE(1 << bit)) != 0


def set_flag(qai: np.ndarray, bit: int, mask: np.ndarray | bool = True) -> None:
    """Set flag ``bit`` where ``mask`` is true (in place)."""
    v = QAI_DTYPE(1 << bit)
    if mask is True:
        qai |= v
    else:
        np.bitwise_or(qai, v, out=qai, where=np.asarray(mask, dtype=bool))


def clear_flag(qai: np.ndarray, bit: int, mask: np.ndarray | bool = True) -> None:
    v = QAI_DTYPE(~np.uint16(1 << bit) & 0xFFFF)
    if mask is True:
        qai &= v
    else:
        np.bitwise_and(qai, v, out=qai, where=np.asarray(mask, dtype=bool))


# ------------------------------------------------------------------------ fields
def get_field(qai: np.ndarray, low_bit: int) -> np.ndarray:
    """Value (0–3) of the two-bit field starting at ``low_bit``, as uint8."""
    return ((qai >> QAI_DTYPE(low_bit)) & QAI_DTYPE(3)).astype(np.uint8)


def set_field(qai: np.ndarray, low_bit: int, value, mask: np.ndarray | bool = True) -> None:
    """Set the two-bit field to ``value`` (scalar or array) where ``mask`` is true (in place)."""
    clear = QAI_DTYPE(~np.uint16(3 << low_bit) & 0xFFFF)
    val = (np.asarray(value, dtype=QAI_DTYPE) & QAI_DTYPE(3)) << QAI_DTYPE(low_bit)
    new = (qai & clear) | val
    if mask is True:
        qai[...] = new
    else:
        np.copyto(qai, new.astype(QAI_DTYPE, copy=False), where=np.asarray(mask, dtype=bool))


# ----------------------------------------------------------------- conveniences
def is_nodata(qai: np.ndarray) -> np.ndarray:
    return get_flag(qai, NODATA)


def is_valid(qai: np.ndarray) -> np.ndarray:
    return ~get_flag(qai, NODATA)


@njit(cache=True)
def _count_valid(flat: np.ndarray) -> int:
    n = 0
    for i in range(flat.size):
        if (flat[i] & 1) == 0:       # bit 0 = NODATA
            n += 1
    return n


def count_valid(qai: np.ndarray) -> int:
    """Number of pixels without the nodata bit (no full-size temporaries)."""
    return int(_count_valid(np.ascontiguousarray(qai).reshape(-1)))


def normalize_nodata(qai: np.ndarray) -> None:
    """Every pixel with the nodata bit becomes exactly 1 (spec 01 §7, "On output") in place."""
    qai[get_flag(qai, NODATA)] = QAI_NODATA


def cloud_or_shadow(qai: np.ndarray) -> np.ndarray:
    """Pixels counted as cloudy for cover statistics: cloud state > 0 or shadow (spec 03 §2.7)."""
    return ((qai & QAI_DTYPE((3 << CLOUD) | (1 << SHADOW))) != 0) & is_valid(qai)


def describe(value: int) -> dict:
    """Decode one QAI value into a dict of named flags and fields (for logs and reports)."""
    v = int(value)
    out = {name: bool((v >> bit) & 1) for name, bit in FLAGS.items()}
    out.update({name: (v >> bit) & 3 for name, bit in FIELDS.items()})
    return out


# ------------------------------------------------------------------------- merge
@njit(cache=True, inline="always")
def _merge_one(a: int, b: int) -> int:
    """Merge two valid QAI values (spec 03 §2.8): cloud and aerosol max, illumination min,
    every other flag OR-ed."""
    flags = (a | b) & ~((3 << 1) | (3 << 6) | (3 << 11)) & 0x7FFF
    cloud = max((a >> 1) & 3, (b >> 1) & 3)
    aero = max((a >> 6) & 3, (b >> 6) & 3)
    illu = min((a >> 11) & 3, (b >> 11) & 3)
    return flags | (cloud << 1) | (aero << 6) | (illu << 11)


@njit(cache=True, parallel=True)
def _merge_kernel(values: np.ndarray, count: np.ndarray, out: np.ndarray) -> None:
    # values: (k, n) QAI contributions; a contribution equal to 1 (nodata) is ignored
    k, n = values.shape
    for p in prange(n):
        acc = 1
        for c in range(k):
            v = values[c, p]
            if v & 1:
                continue
            if acc == 1:
                acc = v
            else:
                acc = _merge_one(acc, v)
        out[p] = acc


def merge(contributions: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """Merge several QAI layers of the same shape pixel by pixel (order-independent).

    Nodata contributions are ignored; a pixel without any valid contribution is nodata (1).
    """
    stack = np.asarray(contributions, dtype=np.int32)
    shape = stack.shape[1:]
    flat = stack.reshape(stack.shape[0], -1)
    out = np.empty(flat.shape[1], dtype=np.int32)
    _merge_kernel(flat, np.zeros(0, np.int32), out)
    return out.reshape(shape).astype(QAI_DTYPE)
