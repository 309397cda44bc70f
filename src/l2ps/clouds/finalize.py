"""Cirrus, buffers and the QAI cloud/shadow/snow/water bits (spec 01 §6.7, §7; FORCE
``finalize_cloud``), plus ERASE_CLOUDS and the DST distance (spec 02 §8.6).

The masks come from the work grid (Landsat: the 30 m image grid; Sentinel-2: the 20 m grid
of B8A) and are mapped by nearest neighbour onto the QAI grid (the processing grid), where
the buffers are drawn with radii int(metres / QAI pixel size).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .. import qai as Q
from ..grid import Grid
from ..scene import nearest_index, resample_nearest
from .morphology import STRIP_ROWS, buffer_rows, distance_transform

# rows per strip of finalize: the strips run side by side (one per thread), each holding
# its five buffered masks and one buffer's work arrays (S2 10 m: ~50 MB per strip)
FINALIZE_STRIP = STRIP_ROWS // 2

_CLEAR_BITS = np.uint16(~np.uint16((3 << Q.CLOUD) | (1 << Q.SHADOW) | (1 << Q.SNOW)
                                   | (1 << Q.WATER)) & 0xFFFF)


# ----------------------------------------------------------------------------- mapping
@njit(cache=True, parallel=True)
def _upmap(src, rows, cols, out):
    ny, nx = out.shape
    for i in prange(ny):
        r = rows[i]
        for j in range(nx):
            out[i, j] = src[r, cols[j]]


@njit(cache=True, nogil=True)
def _upmap_serial(src, rows, cols, out):
    """:func:`_upmap` on the calling thread only (GIL released)."""
    ny, nx = out.shape
    for i in range(ny):
        r = rows[i]
        for j in range(nx):
            out[i, j] = src[r, cols[j]]


class GridMap:
    """Nearest-neighbour mapping from the work grid to the QAI grid (identity if equal)."""

    def __init__(self, work: Grid, target: Grid):
        self.work, self.target = work, target
        self.identity = work == target or (work.shape == target.shape and abs(work.x0 - target.x0) < 1e-6
                                           and abs(work.y0 - target.y0) < 1e-6)
        if not self.identity:
            self.rows, self.cols = nearest_index(work, target)

    def up(self, mask: np.ndarray) -> np.ndarray:
        """``mask`` (work grid) on the target grid (a new array, never a view)."""
        if self.identity:
            return np.array(mask, copy=True)
        out = np.empty(self.target.shape, mask.dtype)
        _upmap(np.ascontiguousarray(mask), self.rows, self.cols, out)
        return out

    def up_rows(self, mask: np.ndarray, a: int, b: int, serial: bool = False) -> np.ndarray:
        """Rows ``a:b`` of :meth:`up` (a view of ``mask`` for the identity); ``serial``: on
        the calling thread only, GIL released."""
        if self.identity:
            return mask[a:b]
        out = np.empty((b - a, self.target.nx), mask.dtype)
        (_upmap_serial if serial else _upmap)(np.ascontiguousarray(mask), self.rows[a:b],
                                              self.cols, out)
        return out


# ----------------------------------------------------------------------------- cirrus
def bin_centre_elevation_km(dem: np.ndarray, valid: np.ndarray) -> np.ndarray | None:
    """FORCE's binned DEM (spec 01 §4.5): 255 bins between the min and max (+1 m) elevation
    of the valid pixels, in km; returns the bin-centre elevation per pixel (float32), or
    None when no valid finite elevation exists."""
    ok = valid & np.isfinite(dem)
    if not ok.any():
        return None
    z = dem.astype(np.float32) / np.float32(1000.0)
    zmin = float(z[ok].min())
    zmax = float(z[ok].max()) + 0.001
    step = (zmax - zmin) / 255.0
    b = np.floor((z - zmin) / step)
    b = np.clip(np.nan_to_num(b, nan=0.0), 0, 254)
    return (zmin + step / 2 + b * step).astype(np.float32)


@njit(cache=True, parallel=True)
def _cirrus_kernel(cirrus, bits, zc, has_z, out):
    ny, nx = out.shape
    for i in prange(ny):
        for j in range(nx):
            c = bits[i, j]
            v = cirrus[i, j]
            if (c & 1) or (c & 16) or v <= 100:
                out[i, j] = False
                continue
            thr = np.float32(100.0)
            if has_z:
                z = zc[i, j]
                t = np.float32(70.0) + np.float32(70.0) * z * z
                if t > thr:
                    thr = t
            out[i, j] = np.float32(v) > thr


def cirrus_candidates(cirrus: np.ndarray, bits: np.ndarray, z_km: np.ndarray | None) -> np.ndarray:
    """Cirrus test (spec 01 §6.7 step 2; Baetens et al. 2019): valid, not snow, cirrus TOA
    > 100 and > max(100, 70 + 70·z²) with z the bin-centre elevation in km (flat: 0 km)."""
    out = np.empty(bits.shape, np.bool_)
    has_z = z_km is not None
    _cirrus_kernel(np.ascontiguousarray(cirrus), bits,
                   z_km if has_z else np.zeros((1, 1), np.float32), has_z, out)
    return out


# ----------------------------------------------------------------------------- QAI bits
@njit(cache=True, parallel=True)
def _set_bits(qai, mask, bit):
    ny, nx = qai.shape
    v = np.uint16(1 << bit)
    for i in prange(ny):
        for j in range(nx):
            if mask[i, j] and not (qai[i, j] & 1):
                qai[i, j] |= v


@njit(cache=True, parallel=True)
def _set_water(qai, bits, rows, cols, identity):
    ny, nx = qai.shape
    for i in prange(ny):
        for j in range(nx):
            if qai[i, j] & 1:
                continue
            if identity:
                w = bits[i, j] & 4
            else:
                w = bits[rows[i], cols[j]] & 4
            if w:
                qai[i, j] |= np.uint16(1 << 5)


@njit(cache=True, parallel=True)
def _clear_bits(qai, keep):
    ny, nx = qai.shape
    for i in prange(ny):
        for j in range(nx):
            qai[i, j] &= keep


@njit(cache=True, parallel=True)
def _opaque(qai, cloud, counts):
    ny, nx = qai.shape
    for i in prange(ny):
        n = 0
        for j in range(nx):
            if cloud[i, j] and not (qai[i, j] & 1):
                qai[i, j] = (qai[i, j] & np.uint16(0xFFF9)) | np.uint16(2 << 1)
                n += 1
        counts[i] = n


@njit(cache=True, parallel=True)
def _buffer_states(qai, cloud_buf, cirrus_buf, has_cirrus):
    """Spec 01 §6.7 step 4: buffered cloud on a clear pixel → 1, else buffered cirrus → 3 —
    except on a confident cloud, which stays 2 (FORCE turns it into 3 where the cirrus
    test holds, i.e. on most opaque high clouds; docs/deviations.d/clouds.md)."""
    ny, nx = qai.shape
    for i in prange(ny):
        for j in range(nx):
            q = qai[i, j]
            if q & 1:
                continue
            state = (q >> 1) & 3
            if cloud_buf[i, j] and state == 0:
                qai[i, j] = (q & np.uint16(0xFFF9)) | np.uint16(1 << 1)
            elif has_cirrus and cirrus_buf[i, j] and state != 2:
                qai[i, j] = (q & np.uint16(0xFFF9)) | np.uint16(3 << 1)


@njit(cache=True, parallel=True)
def _all_shadow(qai):
    ny, nx = qai.shape
    for i in prange(ny):
        for j in range(nx):
            if not (qai[i, j] & 1):
                qai[i, j] |= np.uint16(1 << 3)


@njit(cache=True, parallel=True)
def _cover_counts(qai, counts):
    # per row: valid, cloud>0 or shadow, water, snow, opaque (state 2)
    ny, nx = qai.shape
    for i in prange(ny):
        v = 0
        c = 0
        w = 0
        s = 0
        o = 0
        for j in range(nx):
            q = qai[i, j]
            if q & 1:
                continue
            v += 1
            if q & ((3 << 1) | (1 << 3)):
                c += 1
            if q & (1 << 5):
                w += 1
            if q & (1 << 4):
                s += 1
            if ((q >> 1) & 3) == 2:
                o += 1
        counts[i, 0] = v
        counts[i, 1] = c
        counts[i, 2] = w
        counts[i, 3] = s
        counts[i, 4] = o


def cover_counts(qai: np.ndarray) -> dict[str, int]:
    """Counts of valid pixels, cloud>0-or-shadow, water, snow and opaque-cloud pixels."""
    counts = np.zeros((qai.shape[0], 5), np.int64)
    _cover_counts(qai, counts)
    t = counts.sum(axis=0)
    return dict(zip(("valid", "cloud_or_shadow", "water", "snow", "opaque"), (int(x) for x in t)))


def radius_px(metres: float, res: float) -> int:
    """Buffer radius in pixels: int(metres / res) (spec 01 §5)."""
    return int(float(metres) / float(res)) if metres > 0 else 0


@njit(cache=True, parallel=True)
def _set_bits_from(qai, bits, flag, bit):
    """QAI ``bit`` where ``bits & flag`` (identity grids) and the pixel is valid."""
    ny, nx = qai.shape
    v = np.uint16(1 << bit)
    for i in prange(ny):
        for j in range(nx):
            if (bits[i, j] & flag) and not (qai[i, j] & 1):
                qai[i, j] |= v


@njit(cache=True, nogil=True)
def _apply_strip(q, snow_b, has_snow, c10, counts, cloud_b, cirrus_b, has_cirrus, shadow_b,
                 shadow_mode, snow_bit, shadow_bit):
    """The per-pixel steps of :func:`finalize` on the rows of one strip, in their order:
    buffered snow (``has_snow``), opaque cloud (→ state 2, counted per row into
    ``counts``), buffered cloud on a clear pixel → 1, else buffered cirrus → 3 unless state
    2 (:func:`_buffer_states`), then shadow (``shadow_mode`` 0: none, 1: ``shadow_b``,
    2: every valid pixel). Nodata pixels (bit 0) are left alone. Calling thread only."""
    ny, nx = q.shape
    vsnow = np.uint16(1 << snow_bit)
    vshadow = np.uint16(1 << shadow_bit)
    for i in range(ny):
        n = 0
        for j in range(nx):
            v = q[i, j]
            if v & 1:
                continue
            if has_snow and snow_b[i, j]:
                v |= vsnow
            if c10[i, j]:
                v = (v & np.uint16(0xFFF9)) | np.uint16(2 << 1)
                n += 1
            state = (v >> 1) & 3
            if cloud_b[i, j] and state == 0:
                v = (v & np.uint16(0xFFF9)) | np.uint16(1 << 1)
            elif has_cirrus and cirrus_b[i, j] and state != 2:
                v = (v & np.uint16(0xFFF9)) | np.uint16(3 << 1)
            if shadow_mode == 2 or (shadow_mode == 1 and shadow_b[i, j]):
                v |= vshadow
            q[i, j] = v
        counts[i] = n


def finalize(qai: np.ndarray, gmap: GridMap, bits: np.ndarray, cloud: np.ndarray,
             shadow: np.ndarray | None, cirrus: np.ndarray | None, *, cloud_buffer: float,
             cirrus_buffer: float, shadow_buffer: float, snow_buffer: float,
             snow_buffered_work: np.ndarray | None = None, snow_from_bits: bool = False,
             strip: int = FINALIZE_STRIP) -> dict:
    """Write the cloud, shadow, snow and water bits into ``qai`` (in place; spec 01 §6.2,
    §6.7). ``cloud``/``shadow``/``cirrus``: bool on the work grid; ``shadow=None`` means
    every valid pixel is shadow (the forced cc = 100 paths of §6.1). Buffers in metres.
    ``snow_buffered_work``: the buffered snow mask already made on the work grid, or
    ``snow_from_bits=True``: the SNOW bit (16) of ``bits`` is that mask (both used only
    when the work grid is the QAI grid). Returns the counts of :func:`cover_counts` plus
    the number of opaque-cloud pixels before buffering.

    The QAI is written in strips of ``strip`` rows: every step is pixel-wise given the
    buffered masks, and the buffers of a strip come from the mask rows around it
    (:func:`~.morphology.buffer_rows`), so no full-size mask is made on the QAI grid. The
    strips are processed side by side by ``numba.get_num_threads()`` threads (serial
    kernels, GIL released; no barrier per kernel): the result does not depend on it."""
    res = gmap.target.res
    ny = qai.shape[0]
    shape = qai.shape
    _clear_bits(qai, _CLEAR_BITS)
    # water (unbuffered)
    rows = gmap.rows if not gmap.identity else np.zeros(1, np.int64)
    cols = gmap.cols if not gmap.identity else np.zeros(1, np.int64)
    _set_water(qai, bits, rows, cols, gmap.identity)
    snow_done = False
    if gmap.identity and snow_buffered_work is not None:
        _set_bits(qai, snow_buffered_work, Q.SNOW)
        snow_done = True
    elif gmap.identity and snow_from_bits:
        _set_bits_from(qai, bits, np.uint8(16), Q.SNOW)
        snow_done = True
    r_snow = radius_px(snow_buffer, res)
    r_cloud = radius_px(cloud_buffer, res) if cloud_buffer > 0 else 0
    r_cirrus = radius_px(cirrus_buffer, res) if cirrus_buffer > 0 else 0
    r_shadow = radius_px(shadow_buffer, res) if shadow_buffer > 0 else 0
    has_cirrus = cirrus is not None

    def rows_of(mask):
        return lambda a, b: gmap.up_rows(mask, a, b, serial=True)

    snow_rows = None
    if not snow_done:
        def snow_rows(a, b):
            return (gmap.up_rows(bits, a, b, serial=True) & np.uint8(8)) != 0
    opaque_rows = np.zeros(ny, np.int64)
    none = np.zeros((1, 1), np.bool_)
    strip = max(int(strip), 1)

    def one_strip(i0: int) -> None:
        # every step is pixel-wise given the buffered masks: the strips are independent
        # and each writes only its own QAI rows (any order, any thread: same result)
        i1 = min(ny, i0 + strip)
        snow_b = (buffer_rows(snow_rows, shape, r_snow, i0, i1, serial=True)
                  if snow_rows is not None else none)
        c10 = np.ascontiguousarray(gmap.up_rows(cloud, i0, i1, serial=True))
        cb = (buffer_rows(rows_of(cloud), shape, r_cloud, i0, i1, serial=True)
              if r_cloud > 0 else c10)
        cirb = (buffer_rows(rows_of(cirrus), shape, r_cirrus, i0, i1, serial=True)
                if has_cirrus else none)
        if shadow is None:
            mode, sb = 2, none
        else:
            mode = 1
            sb = buffer_rows(rows_of(shadow), shape, r_shadow, i0, i1, serial=True)
        _apply_strip(qai[i0:i1], snow_b, snow_rows is not None, c10, opaque_rows[i0:i1], cb,
                     cirb, has_cirrus, sb, mode, Q.SNOW, Q.SHADOW)

    # the strips side by side on a thread pool (the kernels release the GIL): no barrier
    # per kernel and strip, the threads take the next strip when free
    starts = list(range(0, ny, strip))
    nt = max(1, min(numba.get_num_threads(), len(starts)))
    if nt == 1:
        for i0 in starts:
            one_strip(i0)
    else:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=nt) as pool:
            for f in [pool.submit(one_strip, i0) for i0 in starts]:
                f.result()
    out = cover_counts(qai)
    out["opaque_unbuffered"] = int(opaque_rows.sum())
    return out


# ----------------------------------------------------------------------------- ERASE_CLOUDS
def erase_clouds(bands: dict[str, np.ndarray], grids: dict[str, Grid], qai: np.ndarray,
                 qai_grid: Grid, nodata: int = -9999) -> None:
    """ERASE_CLOUDS (spec 01 §5): set reflectance to ``nodata`` where the QAI cloud state is
    2 (confident/opaque), in place; the QAI is not changed. Bands on another grid than the
    QAI (Sentinel-2 20 m) are erased where the QAI pixel under their pixel centre is."""
    opaque = Q.get_field(qai, Q.CLOUD) == Q.CLOUD_OPAQUE
    cache: dict[Grid, np.ndarray] = {}
    for name, arr in bands.items():
        g = grids.get(name, qai_grid)
        if arr.shape == qai.shape and (g == qai_grid or g.shape == qai_grid.shape):
            m = opaque
        else:
            if g not in cache:
                cache[g] = resample_nearest(opaque, qai_grid, g)
            m = cache[g]
        arr[m] = nodata


# ----------------------------------------------------------------------------- DST
def cloud_distance(qai: np.ndarray, res: float) -> np.ndarray:
    """DST (spec 02 §8.6): distance in metres (int16, capped at 32767) from each pixel to the
    nearest pixel with cloud state > 0, shadow or snow; (nx + ny)·res (capped) where there is
    none; −9999 on nodata pixels. ``qai``: uint16 or int16 QAI, ``res``: pixel size (m)."""
    q = qai.view(np.uint16) if qai.dtype == np.int16 else qai
    valid = (q & np.uint16(1)) == 0
    feature = valid & ((q & np.uint16((3 << Q.CLOUD) | (1 << Q.SHADOW) | (1 << Q.SNOW))) != 0)
    ny, nx = q.shape
    out = np.empty(q.shape, np.int16)
    if feature.any():
        _scale_distance(distance_transform(feature), valid, np.float64(res), out)
    else:
        out[...] = np.int16(min(float(nx + ny) * float(res), 32767.0))
        out[~valid] = -9999
    return out


@njit(cache=True, parallel=True)
def _scale_distance(dist, valid, res, out):
    ny, nx = dist.shape
    for i in prange(ny):
        for j in range(nx):
            if not valid[i, j]:
                out[i, j] = -9999
            else:
                v = np.float64(dist[i, j]) * res
                out[i, j] = np.int16(32767) if v >= 32767.0 else np.int16(v)
