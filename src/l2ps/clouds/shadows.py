"""Cloud shadows: Fmask-style flood-fill shadow probability and shadow matching with a
cloud-height search (spec 01 §6.5–§6.6, FORCE ``shadow_probability``, ``shadow_matching``).

Deterministic with any thread count: the match measure is accumulated in integers (the
fill depth, divided by 750 only at the end), objects are processed independently and
shadows are only ever set (never cleared) in the shared mask.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .morphology import distance_transform, fill_depressions
from .stats import quantile_int16

MIN_OBJECT = 3            # objects with fewer pixels are removed from the cloud mask
MATCH = 0.85              # minimum match of a cloud-height candidate
DEPTH_WEIGHT = 750.0      # fill depth (×10000) that counts as a full shadow match
BASE_MIN, BASE_MAX = 200.0, 12000.0    # cloud base search range (m)
LAPSE_DRY, LAPSE_WET, LAPSE_REDUCED = 0.98, 0.65, 0.1   # K×100 per m
MIN_DRAW = 0.5            # FORCE draws the best height whenever its match is > 0
GREEDY = False            # FORCE draws every height with match >= MATCH
DEPTH_CAP = 750           # a pixel contributes at most 1 to the match (FORCE: no cap)
BIG_OBJECT = 20000        # objects with at least this many pixels use parallel inner loops


# ----------------------------------------------------------------------------- probability
@njit(cache=True, parallel=True)
def _prepare_fill(band, bits, dist, maxdist, bck, out):
    ny, nx = band.shape
    for i in prange(ny):
        for j in range(nx):
            if (i == 0 or j == 0 or i == ny - 1 or j == nx - 1 or (bits[i, j] & 1)
                    or dist[i, j] > maxdist):
                out[i, j] = bck
            else:
                out[i, j] = band[i, j]


@njit(cache=True, parallel=True)
def _depth_min(filled, mask, spr):
    ny, nx = spr.shape
    for i in prange(ny):
        for j in range(nx):
            d = np.int32(filled[i, j]) - np.int32(mask[i, j])
            if d > 32767:
                d = 32767
            if d < spr[i, j]:
                spr[i, j] = d


def shadow_probability(bits: np.ndarray, nir: np.ndarray, swir1: np.ndarray,
                       cloud: np.ndarray, lnd: np.ndarray, maxdist: float) -> tuple[np.ndarray, dict]:
    """Fill depth (int16, TOA ×10000) of dark depressions near clouds: min over NIR and
    SWIR1 of (filled − band), where the band is set to its clear-land 17.5th percentile on
    the image border, on nodata pixels and farther than ``maxdist`` pixels from any cloud,
    then filled by greyscale reconstruction (spec 01 §6.5). Uses min(NIR, SWIR1) always
    (FORCE's 1-thread path uses SWIR1 only, a bug; §9 #13)."""
    dist = distance_transform(cloud)
    spr = np.full(bits.shape, 32767, np.int16)
    stats = {}
    tmp = np.empty(bits.shape, np.int16)
    for name, band in (("nir", nir), ("swir1", swir1)):
        bck = int(math.trunc(quantile_int16(band, lnd, 0.175)))
        stats[f"background_{name}"] = bck
        _prepare_fill(band, bits, dist, np.float64(maxdist), np.int16(bck), tmp)
        filled = fill_depressions(tmp)
        _depth_min(filled, tmp, spr)
        del filled
    return spr, stats


# ----------------------------------------------------------------------------- matching
@njit(cache=True, inline="always")
def _cround(v):
    if v >= 0:
        return np.int64(math.floor(v + 0.5))
    return -np.int64(math.floor(-v + 0.5))


@njit(cache=True, inline="always")
def _project(r, c, h, crow, ccol, fx, fy):
    cr = crow[r]
    cc = ccol[c]
    x = _cround(c + h * fx[cr, cc])
    y = _cround(r + h * fy[cr, cc])
    return y, x


@njit(cache=True, inline="always")
def _counts(r, c, h, k, crow, ccol, fx, fy, spr, thr, cloud, labels, bits, slope0, has_slope):
    """(depth added, counted) for one object pixel at cloud height h. Positions outside the
    image, on the object itself, on other clouds, on nodata and on flat water cannot show
    whether a shadow is there and are not counted (FORCE counts all but the first two)."""
    y, x = _project(r, c, h, crow, ccol, fx, fy)
    ny, nx = spr.shape
    if y < 0 or y >= ny or x < 0 or x >= nx:
        return 0, 0
    if labels[y, x] == k:
        return 0, 0
    if cloud[y, x] or (bits[y, x] & 1):
        return 0, 0
    flat = True
    if has_slope:
        flat = slope0[y, x]
    if flat and (bits[y, x] & 4):
        return 0, 0
    s = spr[y, x]
    add = 0
    if s > thr:
        add = np.int64(s)
        if add > DEPTH_CAP:
            add = DEPTH_CAP
    return add, 1


@njit(cache=True, inline="always")
def _draw(r, c, h, crow, ccol, fx, fy, shadow):
    y, x = _project(r, c, h, crow, ccol, fx, fy)
    ny, nx = shadow.shape
    if 0 <= y < ny and 0 <= x < nx:
        shadow[y, x] = True


@njit(cache=True)
def _object_setup(pr, pc, temp, has_temp, lowtemp, hightemp, tk):
    """(basetemp, base_min, base_max) of one object; fills tk with its clamped temperatures."""
    n = pr.shape[0]
    if not has_temp:
        return 0.0, BASE_MIN, BASE_MAX
    rad = math.sqrt(n / math.pi)
    core = ((rad - 8.0) / rad) ** 2 if rad > 8.0 else 0.0
    vals = np.empty(n, np.float64)
    for m in range(n):
        vals[m] = temp[pr[m], pc[m]]
    vals.sort()
    idx = np.float64(np.float32(core)) * (n - 1)
    k0 = int(math.floor(idx))
    k1 = min(k0 + 1, n - 1)
    basetemp = vals[k0] + (idx - k0) * (vals[k1] - vals[k0])
    for m in range(n):
        t = np.float64(temp[pr[m], pc[m]])
        tk[m] = basetemp if t > basetemp else t
    bmin = max(BASE_MIN, (lowtemp - 400.0 - basetemp) / LAPSE_DRY)
    bmax = min(BASE_MAX, (hightemp + 400.0 - basetemp) / LAPSE_REDUCED)
    return basetemp, bmin, bmax


@njit(cache=True, parallel=True)
def _match_small(objs, start, pix, nx_img, temp, has_temp, lowtemp, hightemp, base_step,
                 crow, ccol, fx, fy, spr, thr, cloud, labels, bits, slope0, has_slope,
                 shadow, best_base, best_match):
    for o in prange(objs.shape[0]):
        k = objs[o]
        a, b = start[k], start[k + 1]
        n = b - a
        pr = np.empty(n, np.int64)
        pc = np.empty(n, np.int64)
        for m in range(n):
            p = pix[a + m]
            pr[m] = p // nx_img
            pc[m] = p - pr[m] * nx_img
        tk = np.zeros(n, np.float64)
        basetemp, bmin, bmax = _object_setup(pr, pc, temp, has_temp, lowtemp, hightemp, tk)
        best = 0.0
        bbase = -1.0
        if bmin <= bmax:
            base = bmin
            while base <= bmax:
                ssum = 0
                tot = 0
                for m in range(n):
                    h = base
                    if has_temp:
                        h = (basetemp - tk[m]) / LAPSE_WET + base
                    add, cnt = _counts(pr[m], pc[m], h, k, crow, ccol, fx, fy, spr, thr,
                                       cloud, labels, bits, slope0, has_slope)
                    ssum += add
                    tot += cnt
                match = (ssum / DEPTH_WEIGHT) / tot if tot > 0 else 0.0
                if GREEDY and match >= MATCH:
                    for m in range(n):
                        h = base
                        if has_temp:
                            h = (basetemp - tk[m]) / LAPSE_WET + base
                        _draw(pr[m], pc[m], h, crow, ccol, fx, fy, shadow)
                if match > best:
                    best = match
                    bbase = base
                base += base_step
            if best >= MIN_DRAW and (best < MATCH or not GREEDY):
                for m in range(n):
                    h = bbase
                    if has_temp:
                        h = (basetemp - tk[m]) / LAPSE_WET + bbase
                    _draw(pr[m], pc[m], h, crow, ccol, fx, fy, shadow)
        best_base[k] = bbase
        best_match[k] = best


@njit(cache=True, parallel=True)
def _sum_height(pr, pc, tk, basetemp, has_temp, base, k, crow, ccol, fx, fy, spr, thr, cloud,
                labels, bits, slope0, has_slope):
    ssum = 0
    tot = 0
    for m in prange(pr.shape[0]):
        h = base
        if has_temp:
            h = (basetemp - tk[m]) / LAPSE_WET + base
        add, cnt = _counts(pr[m], pc[m], h, k, crow, ccol, fx, fy, spr, thr, cloud, labels,
                           bits, slope0, has_slope)
        ssum += add
        tot += cnt
    return ssum, tot


@njit(cache=True, parallel=True)
def _draw_height(pr, pc, tk, basetemp, has_temp, base, crow, ccol, fx, fy, shadow):
    for m in prange(pr.shape[0]):
        h = base
        if has_temp:
            h = (basetemp - tk[m]) / LAPSE_WET + base
        _draw(pr[m], pc[m], h, crow, ccol, fx, fy, shadow)


def _match_big(k, pr, pc, temp, has_temp, lowtemp, hightemp, base_step, crow, ccol, fx, fy,
               spr, thr, cloud, labels, bits, slope0, has_slope, shadow):
    tk = np.zeros(pr.shape[0], np.float64)
    basetemp, bmin, bmax = _object_setup(pr, pc, temp, has_temp, lowtemp, hightemp, tk)
    best, bbase = 0.0, -1.0
    if bmin <= bmax:
        base = bmin
        while base <= bmax:
            ssum, tot = _sum_height(pr, pc, tk, basetemp, has_temp, base, k, crow, ccol, fx, fy,
                                    spr, thr, cloud, labels, bits, slope0, has_slope)
            match = (ssum / DEPTH_WEIGHT) / tot if tot > 0 else 0.0
            if GREEDY and match >= MATCH:
                _draw_height(pr, pc, tk, basetemp, has_temp, base, crow, ccol, fx, fy, shadow)
            if match > best:
                best, bbase = match, base
            base += base_step
        if best >= MIN_DRAW and (best < MATCH or not GREEDY):
            _draw_height(pr, pc, tk, basetemp, has_temp, bbase, crow, ccol, fx, fy, shadow)
    return bbase, best


@njit(cache=True)
def _object_pixels(labels, n, step):
    """Flat indices of the (subsampled) pixels of objects 1..n grouped by object, each in
    raster order, and the offsets (n + 2 entries; object k is pix[start[k]:start[k+1]])."""
    ny, nx = labels.shape
    count = np.zeros(n + 2, np.int64)
    for i in range(0, ny, step):
        for j in range(0, nx, step):
            lab = labels[i, j]
            if lab > 0:
                count[lab + 1] += 1
    start = np.zeros(n + 2, np.int64)
    for k in range(1, n + 2):
        start[k] = start[k - 1] + count[k]
    fill = start.copy()
    pix = np.empty(start[n + 1], np.int64)
    for i in range(0, ny, step):
        for j in range(0, nx, step):
            lab = labels[i, j]
            if lab > 0:
                pix[fill[lab]] = i * nx + j
                fill[lab] += 1
    return pix, start


def shadow_matching(cloud: np.ndarray, labels: np.ndarray, nobj: int, spr: np.ndarray,
                    bits: np.ndarray, *, res: float, crow: np.ndarray, ccol: np.ndarray,
                    fx: np.ndarray, fy: np.ndarray, base_step: float,
                    shadow_threshold: float, temp: np.ndarray | None = None,
                    lowtemp: float = 0.0, hightemp: float = 0.0,
                    slope_zero: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Shadow mask (bool) from matching each cloud object's projected shadow with the fill
    depth ``spr`` over a range of cloud heights (spec 01 §6.6).

    ``labels``/``nobj``: 8-connected cloud objects of ≥ 3 pixels (1..nobj). ``crow``/``ccol``:
    coarse-cell row per image row and column per image column; ``fx``/``fy``: per coarse cell,
    the column/row shift (pixels) per metre of cloud height (parallax toward the sensor
    minus shadow cast away from the sun). ``base_step``: height step (m). ``temp``: BT
    (K×100) for the thermal height model (Landsat), or None. ``slope_zero``: bool, slope
    code == 0 (None: flat everywhere)."""
    ny, nx = cloud.shape
    shadow = np.zeros((ny, nx), np.bool_)
    stats = {"objects": nobj, "heights": [], "matched": 0}
    if nobj == 0:
        return shadow, stats
    step = max(1, int(math.floor(30.0 / res))) if res < 30 else 1
    pix, start = _object_pixels(labels, nobj, step)
    sizes = np.diff(start)              # sizes[k] = pixels of object k (k = 1..nobj)
    has_temp = temp is not None
    t = temp if has_temp else np.zeros((1, 1), np.int16)
    has_slope = slope_zero is not None
    s0 = slope_zero if has_slope else np.zeros((1, 1), np.bool_)
    thr = np.int64(round(shadow_threshold * 10000.0))
    best_base = np.full(nobj + 1, -1.0)
    best_match = np.zeros(nobj + 1)
    ids = np.arange(1, nobj + 1)
    small = ids[(sizes[1:nobj + 1] > 0) & (sizes[1:nobj + 1] < BIG_OBJECT)]
    big = ids[sizes[1:nobj + 1] >= BIG_OBJECT]
    if small.size:
        # largest first, so that the big ones do not end up on one thread at the end
        order = small[np.argsort(-sizes[small], kind="stable")]
        _match_small(order.astype(np.int64), start, pix, nx, t, has_temp, float(lowtemp),
                     float(hightemp), float(base_step), crow, ccol, fx, fy, spr, thr, cloud,
                     labels, bits, s0, has_slope, shadow, best_base, best_match)
    for k in big:
        p = pix[start[k]:start[k + 1]]
        pr = p // nx
        pc = p - pr * nx
        bb, bm = _match_big(int(k), pr, pc, t, has_temp, float(lowtemp), float(hightemp),
                            float(base_step), crow, ccol, fx, fy, spr, thr, cloud, labels, bits,
                            s0, has_slope, shadow)
        best_base[k], best_match[k] = bb, bm
    found = best_base[1:] >= 0
    stats["matched"] = int(np.count_nonzero(best_match[1:] >= MATCH))
    stats["heights"] = {"objects_with_match": int(found.sum()),
                        "median_m": float(np.median(best_base[1:][found])) if found.any() else None,
                        "min_m": float(best_base[1:][found].min()) if found.any() else None,
                        "max_m": float(best_base[1:][found].max()) if found.any() else None}
    stats["subsample_step"] = step
    return shadow, stats
