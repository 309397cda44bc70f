"""Cloud shadows: Fmask-style flood-fill shadow probability and shadow matching with a
cloud-height search (spec 01 §6.5–§6.6, FORCE ``shadow_probability``, ``shadow_matching``).

Deterministic with any thread count: the match measure is accumulated in integers (the
fill depth, divided by 750 only at the end), objects are processed independently and
shadows are only ever set (never cleared) in the shared mask.

Departures from FORCE (docs/deviations.d/clouds.md): the fill is a priority flood; each
object is matched on at most ``MAX_SAMPLES`` of its pixels; the height whose projection
covers the most dark pixels (capped depth sum) among those with a match ≥ ``MIN_DRAW`` is
kept (FORCE: the first best ratio, plus every height ≥ 0.85), and the whole object is then
projected; a shadow pixel is drawn only where the fill depth says "dark" and the relative
darkening is ≥ ``REL_PIXEL`` (the direct beam is at least half blocked; a semi-transparent
cloud darkens its shadow by less), and on flat water (dark anyway) only when at least
``WATER_LAND`` of the visible land pixels of the projection pass that test.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from .morphology import distance_transform, fill_depressions_many
from .stats import quantile_int16

MIN_OBJECT = 3            # objects with fewer pixels are removed from the cloud mask
MATCH = 0.85              # minimum match of a cloud-height candidate
DEPTH_WEIGHT = 750.0      # fill depth (×10000) that counts as a full shadow match
BASE_MIN, BASE_MAX = 200.0, 12000.0    # cloud base search range (m)
LAPSE_DRY, LAPSE_WET, LAPSE_REDUCED = 0.98, 0.65, 0.1   # K×100 per m
MIN_DRAW = 0.5            # FORCE draws the best height whenever its match is > 0
DEPTH_CAP = 750           # a pixel contributes at most 1 to the match (FORCE: no cap)
MAX_SAMPLES = 2000        # pixels per object used for the height search
CORE_DEPTH = 3            # px from the cloud edge: inner (unmixed) pixels for basetemp
CORE_QUANTILE = 0.9       # basetemp = this quantile of the inner pixels' temperatures
REL_MIN = 0               # median relative darkening (×10000) of a drawn shadow
# relative darkening (×10000) of a drawn shadow pixel: a shadow blocks at least half of the
# direct beam, which carries ≥ ~80 % of the NIR/SWIR irradiance, so it darkens by ≥ ~0.40;
# a semi-transparent (thin) cloud keeps ≥ 0.6 of the beam and darkens by ≤ ~0.33
REL_PIXEL = 4000
WATER_LAND = 0.25         # share of dark visible land pixels that licenses water


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
def _depth_min(filled, band, bits, dist, maxdist, bck, spr, rel):
    """spr = min(spr, filled − mask); rel = min(rel, (filled − mask)/filled ×10000), with
    the flood's input ``mask`` recomputed as in :func:`_prepare_fill` (the flood overwrote
    it with ``filled``)."""
    ny, nx = spr.shape
    for i in prange(ny):
        for j in range(nx):
            f = np.int32(filled[i, j])
            if (i == 0 or j == 0 or i == ny - 1 or j == nx - 1 or (bits[i, j] & 1)
                    or dist[i, j] > maxdist):
                m = np.int32(bck)
            else:
                m = np.int32(band[i, j])
            d = f - m
            if d > 32767:
                d = 32767
            if d < spr[i, j]:
                spr[i, j] = d
            r = 0
            if f > 0 and d > 0:
                r = min(10000, (d * 10000) // f)
            if r < rel[i, j]:
                rel[i, j] = r


def shadow_probability(bits: np.ndarray, nir: np.ndarray, swir1: np.ndarray,
                       cloud: np.ndarray, lnd: np.ndarray, maxdist: float
                       ) -> tuple[np.ndarray, np.ndarray, dict]:
    """(spr, rel, stats). spr: fill depth (int16, TOA ×10000) of dark depressions near
    clouds: min over NIR and SWIR1 of (filled − band), where the band is set to its
    clear-land 17.5th percentile on the image border, on nodata pixels and farther than
    ``maxdist`` pixels from any cloud, then filled by greyscale reconstruction (spec 01
    §6.5). Uses min(NIR, SWIR1) always (FORCE's 1-thread path uses SWIR1 only, a bug;
    §9 #13). rel: the relative darkening (filled − band)/filled ×10000 (int16), min over
    the two bands (an l2ps addition used to tell opaque from semi-transparent shadows)."""
    dist = distance_transform(cloud)
    stats = {}
    tmps = []
    bcks = []
    md = np.float64(maxdist)
    for name, band in (("nir", nir), ("swir1", swir1)):
        bck = int(math.trunc(quantile_int16(band, lnd, 0.175)))
        stats[f"background_{name}"] = bck
        bcks.append(np.int16(bck))
        tmp = np.empty(bits.shape, np.int16)
        _prepare_fill(band, bits, dist, md, np.int16(bck), tmp)
        tmps.append(tmp)
    # the two floods are sequential each; run them side by side (numba releases the GIL);
    # in place: the flood's input is recomputed from band, bits and dist afterwards
    filled = fill_depressions_many(tmps, threads=numba.get_num_threads(), inplace=True)
    del tmps
    spr = np.full(bits.shape, 32767, np.int16)
    rel = np.full(bits.shape, 10000, np.int16)
    for f, band, bck in zip(filled, (nir, swir1), bcks):
        _depth_min(f, band, bits, dist, md, bck, spr, rel)
    del filled, dist
    return spr, rel, stats


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
def _hidden(y, x, cloud, bits, slope0, has_slope):
    """A projected position where a shadow cannot be seen: on a cloud, on nodata or on flat
    water (FORCE counts these as non-matching)."""
    if cloud[y, x] or (bits[y, x] & 1):
        return True
    flat = True
    if has_slope:
        flat = slope0[y, x]
    return flat and (bits[y, x] & 4) != 0


@njit(cache=True, inline="always")
def _flat_water(y, x, bits, slope0, has_slope):
    """Flat water (water bit and slope code 0, or no slope): no darkening test possible."""
    flat = True
    if has_slope:
        flat = slope0[y, x]
    return flat and (bits[y, x] & 4) != 0


@njit(cache=True)
def _object_setup(pr, pc, temp, has_temp, lowtemp, hightemp, tk, inner):
    """(basetemp, base_min, base_max) of one object (spec 01 §6.6 step 4); fills tk with its
    temperatures clamped at basetemp (K×100). basetemp: the CORE_QUANTILE of the
    temperatures of the object's inner pixels (≥ CORE_DEPTH px from the cloud edge, not
    mixed with the warm ground), i.e. the warmest opaque layer of the object, whose
    height is then ``base``; colder layers rise by the wet lapse rate. Objects without inner
    pixels use FORCE's percentile ((r − 8)/r)² of all their pixels."""
    n = pr.shape[0]
    if not has_temp:
        return 0.0, BASE_MIN, BASE_MAX
    vals = np.empty(n, np.float64)
    nin = 0
    for m in range(n):
        if inner[pr[m], pc[m]] >= CORE_DEPTH:
            vals[nin] = temp[pr[m], pc[m]]
            nin += 1
    if nin >= 3:
        v = np.sort(vals[:nin])
        idx = CORE_QUANTILE * (nin - 1)
        k0 = int(math.floor(idx))
        k1 = min(k0 + 1, nin - 1)
        basetemp = v[k0] + (idx - k0) * (v[k1] - v[k0])
    else:
        rad = math.sqrt(n / math.pi)
        core = ((rad - 8.0) / rad) ** 2 if rad > 8.0 else 0.0
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
def _match_objects(objs, start, pix, nx_img, temp, has_temp, lowtemp, hightemp, base_step,
                   crow, ccol, fx, fy, spr, rel, thr, cloud, labels, bits, slope0, has_slope,
                   inner, max_samples, min_match, rel_min, shadow, best_base, best_match, best_rel):
    """Per object (in parallel; each writes only its own result slots and only sets shadow
    pixels): the cloud base height whose projected sample pixels cover the largest capped
    depth sum among the heights with a match ≥ ``min_match``; then every pixel of the
    object is projected at that height and drawn where the fill depth is > ``thr`` and the
    relative darkening ≥ REL_PIXEL (flat water: only if ≥ WATER_LAND of the visible land
    sample positions pass) — if the median relative darkening of the visible projection is
    ≥ ``rel_min``."""
    ny, nx = spr.shape
    for o in prange(objs.shape[0]):
        k = objs[o]
        a, b = start[k], start[k + 1]
        n = b - a
        pr = np.empty(n, np.int64)
        pc = np.empty(n, np.int64)
        for m in range(n):
            p = np.int64(pix[a + m])
            pr[m] = p // nx_img
            pc[m] = p - pr[m] * nx_img
        tk = np.zeros(n, np.float64)
        basetemp, bmin, bmax = _object_setup(pr, pc, temp, has_temp, lowtemp, hightemp, tk,
                                             inner)
        stride = (n + max_samples - 1) // max_samples
        best_sum = 0
        bbase = -1.0
        bmatch = 0.0
        if bmin <= bmax:
            base = bmin
            while base <= bmax:
                ssum = 0
                vis = 0
                for m in range(0, n, stride):
                    h = base
                    if has_temp:
                        h = (basetemp - tk[m]) / LAPSE_WET + base
                    y, x = _project(pr[m], pc[m], h, crow, ccol, fx, fy)
                    if y < 0 or y >= ny or x < 0 or x >= nx or labels[y, x] == k:
                        continue
                    if _hidden(y, x, cloud, bits, slope0, has_slope):
                        continue
                    vis += 1
                    s = np.int64(spr[y, x])
                    if s > thr:
                        ssum += min(s, DEPTH_CAP)
                if vis > 0:
                    match = (ssum / DEPTH_WEIGHT) / vis
                    if match >= min_match and ssum > best_sum:
                        best_sum = ssum
                        bbase = base
                        bmatch = match
                base += base_step
        brel = 0
        if bbase >= 0:
            # median relative darkening of the visible projection at the chosen height
            vals = np.empty((n + stride - 1) // stride, np.int64)
            nv = 0
            for m in range(0, n, stride):
                h = bbase
                if has_temp:
                    h = (basetemp - tk[m]) / LAPSE_WET + bbase
                y, x = _project(pr[m], pc[m], h, crow, ccol, fx, fy)
                if y < 0 or y >= ny or x < 0 or x >= nx or labels[y, x] == k:
                    continue
                if _hidden(y, x, cloud, bits, slope0, has_slope):
                    continue
                vals[nv] = rel[y, x]
                nv += 1
            water_ok = True
            if nv > 0:
                v = np.sort(vals[:nv])
                brel = v[nv // 2]
                # flat water is dark in NIR and SWIR1 with or without a shadow: it is drawn
                # only when the projection's visible land pixels show a shadow (at least
                # WATER_LAND of them darkened by REL_PIXEL; thin clouds darken by less)
                water_ok = v[min(nv - 1, int((1.0 - WATER_LAND) * nv))] >= REL_PIXEL
            if brel >= rel_min:
                for m in range(n):
                    h = bbase
                    if has_temp:
                        h = (basetemp - tk[m]) / LAPSE_WET + bbase
                    y, x = _project(pr[m], pc[m], h, crow, ccol, fx, fy)
                    if (0 <= y < ny and 0 <= x < nx and spr[y, x] > thr and rel[y, x] >= REL_PIXEL
                            and (water_ok or not _flat_water(y, x, bits, slope0, has_slope))):
                        shadow[y, x] = True
        best_base[k] = bbase
        best_match[k] = bmatch
        best_rel[k] = brel


@njit(cache=True)
def _object_pixels(labels, n):
    """Flat indices (int32) of the pixels of objects 1..n grouped by object, each in raster order,
    and the offsets (n + 2 entries; object k is pix[start[k]:start[k+1]])."""
    ny, nx = labels.shape
    count = np.zeros(n + 2, np.int64)
    for i in range(ny):
        for j in range(nx):
            lab = labels[i, j]
            if lab > 0:
                count[lab + 1] += 1
    start = np.zeros(n + 2, np.int64)
    for k in range(1, n + 2):
        start[k] = start[k - 1] + count[k]
    fill = start.copy()
    pix = np.empty(start[n + 1], np.int32)      # flat index < 2^31 (≤ 46 340² pixels)
    for i in range(ny):
        for j in range(nx):
            lab = labels[i, j]
            if lab > 0:
                pix[fill[lab]] = i * nx + j
                fill[lab] += 1
    return pix, start


def shadow_matching(cloud: np.ndarray, labels: np.ndarray, nobj: int, spr: np.ndarray,
                    rel: np.ndarray, bits: np.ndarray, *, res: float, crow: np.ndarray,
                    ccol: np.ndarray, fx: np.ndarray, fy: np.ndarray, base_step: float,
                    shadow_threshold: float, temp: np.ndarray | None = None,
                    lowtemp: float = 0.0, hightemp: float = 0.0,
                    slope_zero: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Shadow mask (bool) from matching each cloud object's projected shadow with the fill
    depth ``spr`` over a range of cloud heights (spec 01 §6.6, with the departures listed
    in the module docstring).

    ``labels``/``nobj``: 8-connected cloud objects of ≥ 3 pixels (1..nobj). ``rel``: relative
    darkening ×10000 (see :func:`shadow_probability`). ``crow``/``ccol``: coarse-cell row per
    image row and column per image column; ``fx``/``fy``: per coarse cell, the column/row
    shift (pixels) per metre of cloud height (parallax toward the sensor minus shadow cast
    away from the sun). ``base_step``: height step (m). ``temp``: BT (K×100) for the thermal
    height model (Landsat), or None. ``slope_zero``: bool, slope code == 0 (None: flat
    everywhere). stats["per_object"]: arrays (index = label) of the chosen base height (m,
    −1 none), its match and the median relative darkening."""
    ny, nx = cloud.shape
    shadow = np.zeros((ny, nx), np.bool_)
    stats: dict = {"objects": nobj, "heights": {}, "matched": 0}
    if nobj == 0:
        return shadow, stats
    pix, start = _object_pixels(labels, nobj)
    inner = distance_transform(~cloud) if temp is not None else np.zeros((1, 1), np.uint16)
    sizes = np.diff(start)              # sizes[k] = pixels of object k (k = 1..nobj)
    has_temp = temp is not None
    t = temp if has_temp else np.zeros((1, 1), np.int16)
    has_slope = slope_zero is not None
    s0 = slope_zero if has_slope else np.zeros((1, 1), np.bool_)
    thr = np.int64(round(shadow_threshold * 10000.0))
    best_base = np.full(nobj + 1, -1.0)
    best_match = np.zeros(nobj + 1)
    best_rel = np.zeros(nobj + 1, np.int64)
    ids = np.arange(1, nobj + 1)
    ids = ids[sizes[1:nobj + 1] > 0]
    # largest first, so that the big ones do not end up on one thread at the end
    order = ids[np.argsort(-sizes[ids], kind="stable")].astype(np.int64)
    _match_objects(order, start, pix, nx, t, has_temp, float(lowtemp), float(hightemp),
                   float(base_step), crow, ccol, fx, fy, spr, rel, thr, cloud, labels, bits,
                   s0, has_slope, inner, MAX_SAMPLES, MIN_DRAW, REL_MIN, shadow, best_base,
                   best_match, best_rel)
    found = best_base[1:] >= 0
    drawn = found & (best_rel[1:] >= REL_MIN)
    stats["matched"] = int(found.sum())
    stats["drawn"] = int(drawn.sum())
    stats["heights"] = {"objects_with_match": int(found.sum()),
                        "median_m": float(np.median(best_base[1:][found])) if found.any() else None,
                        "min_m": float(best_base[1:][found].min()) if found.any() else None,
                        "max_m": float(best_base[1:][found].max()) if found.any() else None}
    stats["max_samples"] = MAX_SAMPLES
    stats["per_object"] = {"base_m": best_base, "match": best_match, "rel": best_rel,
                           "size": sizes[:nobj + 1]}
    return shadow, stats
