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

from . import potential as P
from .morphology import _CHUNK, _new_chunk, mark_beyond
from .stats import quantile_int16_bits

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
# relative darkening (×10000) of a drawn shadow pixel: a shadow blocks at least half of the
# direct beam, which carries ≥ ~80 % of the NIR/SWIR irradiance, so it darkens by ≥ ~0.40;
# a semi-transparent (thin) cloud keeps ≥ 0.6 of the beam and darkens by ≤ ~0.33
REL_PIXEL = 4000
WATER_LAND = 0.25         # share of dark visible land pixels that licenses water


# ----------------------------------------------------------------------------- probability
FAR = np.uint8(128)         # temporary bit of the class array: farther than maxdist from clouds
DEPTH_MASK = 0x7FFF         # packed shadow darkness: bits 0–14 fill depth (0..32767, ×10000)
DARK_BIT = 0x8000           # bit 15: relative darkening ≥ REL_PIXEL in both bands
# True (and ≥ 2 threads): the two floods run side by side, each into its own packed array
# (2 × 2 bytes per pixel); False: one after the other into ``dark`` (2 bytes per pixel,
# about twice the wall time of this step). Same result either way.
PARALLEL_FLOODS = True


@njit(cache=True, parallel=True)
def _clear_bit(bits, bit):
    keep = np.uint8(0xFF ^ bit)
    ny, nx = bits.shape
    for i in prange(ny):
        for j in range(nx):
            bits[i, j] &= keep


@njit(cache=True, inline="always")
def _fill_input(band, bits, bck, i, j, ny, nx):
    """The flood's input at (i, j): ``bck`` on the border, nodata and FAR pixels, else the
    band (never stored)."""
    if (i == 0 or j == 0 or i == ny - 1 or j == nx - 1 or (bits[i, j] & 1)
            or (bits[i, j] & 128)):
        return np.int64(bck)
    return np.int64(band[i, j])


@njit(cache=True, nogil=True)
def _flood_dark(band, bits, bck, dark, first):
    """The priority flood of :func:`~.morphology._priority_fill` on the input of
    :func:`_fill_input` (computed on the fly, never stored), writing each pixel's depth
    f − m (capped at 32767) and DARK_BIT (relative darkening min(10000, (f − m)·10000 // f)
    ≥ REL_PIXEL) into ``dark`` when its fill level f is known: the first band (``first``)
    sets ``dark``, the second takes the minimum depth and ANDs the bit. No image but
    ``dark``, a visited bit per pixel and the queue's chunks. ``band``, ``bits``, ``dark``:
    C-contiguous. Returns the chunks used.

    Speed: the neighbours of an interior pixel are visited without bounds tests (the
    border seeds are queued as −(p + 1)), and an unvisited neighbour is never on the image
    border (the border is seeded first), so its input needs only the nodata/FAR test; the
    darkening test needs no division."""
    ny, nx = band.shape
    n = ny * nx
    b1 = band.reshape(n)
    k1 = bits.reshape(n)
    d1 = dark.reshape(n)
    bckv = np.int64(bck)
    lo_v = bckv
    hi_v = bckv
    for i in range(1, ny - 1):
        for j in range(1, nx - 1):
            if not (bits[i, j] & 129):
                v = np.int64(band[i, j])
                if v < lo_v:
                    lo_v = v
                if v > hi_v:
                    hi_v = v
    offset = -lo_v
    nlev = hi_v - lo_v + 1
    seen = np.zeros((n + 7) // 8, np.uint8)
    pool = np.empty(1024 * _CHUNK, np.int32)
    cnext = np.empty(1024, np.int32)
    free = -1
    nalloc = 0
    hc = np.full(nlev, -1, np.int32)
    hp = np.zeros(nlev, np.int32)
    tc = np.full(nlev, -1, np.int32)
    tp = np.zeros(nlev, np.int32)
    ring = np.empty(1 << 16, np.int32)
    rmask = ring.shape[0] - 1
    rh = 0
    rn = 0
    lo = nlev
    # The bucket and ring pushes below are written out on purpose: as inline helpers that
    # return the (re)allocated arrays, the flood ran 2.3x slower (3.8 -> 8.7 s on a
    # full-size Landsat scene; reference counting of the returned arrays per pixel).
    for i in range(ny):
        for j in range(nx):
            if i == 0 or j == 0 or i == ny - 1 or j == nx - 1:
                p = i * nx + j
                m = _fill_input(band, bits, bck, i, j, ny, nx)
                v = m + offset
                dark[i, j] = 0
                seen[p >> 3] |= np.uint8(1 << (p & 7))
                if tc[v] == -1 or tp[v] == _CHUNK:
                    pool, cnext, c, free, nalloc = _new_chunk(pool, cnext, free, nalloc)
                    cnext[c] = -1
                    if tc[v] == -1:
                        hc[v] = c
                        hp[v] = 0
                    else:
                        cnext[tc[v]] = c
                    tc[v] = c
                    tp[v] = 0
                pool[tc[v] * _CHUNK + tp[v]] = -(p + 1)     # border pixel: −(p + 1)
                tp[v] += 1
                if v < lo:
                    lo = v
    for lev in range(lo, nlev):
        f = lev - offset
        while True:
            if rn > 0:
                p = ring[rh]
                rh = (rh + 1) & rmask
                rn -= 1
            else:
                c = hc[lev]
                if c == -1:
                    break
                end = tp[lev] if c == tc[lev] else _CHUNK
                if hp[lev] == end:
                    nxt = cnext[c]
                    cnext[c] = free
                    free = c
                    if c == tc[lev]:
                        hc[lev] = -1
                        tc[lev] = -1
                    else:
                        hc[lev] = nxt
                        hp[lev] = 0
                    continue
                p = pool[c * _CHUNK + hp[lev]]
                hp[lev] += 1
            # every queued pixel but the border seeds (stored as −(p + 1)) is interior:
            # its 8 neighbours need no bounds test (and no row/column division)
            interior = p >= 0
            if not interior:
                p = -p - 1
                i = p // nx
                j = p - i * nx
            for k in range(8):
                if k < 3:
                    di = -1
                    dj = k - 1
                elif k == 3:
                    di = 0
                    dj = -1
                elif k == 4:
                    di = 0
                    dj = 1
                else:
                    di = 1
                    dj = k - 6
                if not interior:
                    ii = i + di
                    jj = j + dj
                    if ii < 0 or ii >= ny or jj < 0 or jj >= nx:
                        continue
                q = p + di * nx + dj
                sb = seen[q >> 3]
                bit = np.uint8(1 << (q & 7))
                if sb & bit:
                    continue
                seen[q >> 3] = sb | bit
                # an unseen pixel is never on the image border (all seeded at the start)
                if k1[q] & 129:
                    m = bckv
                else:
                    m = np.int64(b1[q])
                v = m + offset
                if v <= lev:
                    d = f - m
                    if d == 0:
                        d1[q] = 0
                    else:
                        if d > 32767:
                            d = 32767
                        # relative darkening min(10000, d·10000 // f) ≥ REL_PIXEL, without
                        # the division (f > 0: floor(x / f) ≥ k  ⇔  x ≥ k·f)
                        rd = f > 0 and d * 10000 >= REL_PIXEL * f
                        if first:
                            w = d
                            if rd:
                                w |= DARK_BIT
                        else:
                            old = np.int64(d1[q])
                            w = min(old & DEPTH_MASK, d)
                            if (old & DARK_BIT) and rd:
                                w |= DARK_BIT
                        d1[q] = np.uint16(w)
                    if rn == ring.shape[0]:
                        r2 = np.empty(2 * ring.shape[0], np.int32)
                        for kk in range(rn):
                            r2[kk] = ring[(rh + kk) & rmask]
                        ring = r2
                        rmask = ring.shape[0] - 1
                        rh = 0
                    ring[(rh + rn) & rmask] = q
                    rn += 1
                    continue
                d1[q] = 0
                if tc[v] == -1 or tp[v] == _CHUNK:
                    pool, cnext, c2, free, nalloc = _new_chunk(pool, cnext, free, nalloc)
                    cnext[c2] = -1
                    if tc[v] == -1:
                        hc[v] = c2
                        hp[v] = 0
                    else:
                        cnext[tc[v]] = c2
                    tc[v] = c2
                    tp[v] = 0
                pool[tc[v] * _CHUNK + tp[v]] = q
                tp[v] += 1
    return nalloc


@njit(cache=True, parallel=True)
def _merge_dark(dark, other):
    """dark = min(depths) | DARK_BIT where both have it."""
    ny, nx = dark.shape
    for i in prange(ny):
        for j in range(nx):
            a = np.int64(dark[i, j])
            b = np.int64(other[i, j])
            v = min(a & DEPTH_MASK, b & DEPTH_MASK) | (a & b & DARK_BIT)
            dark[i, j] = np.uint16(v)


def mark_far(bits: np.ndarray, cloud: np.ndarray, maxdist: float) -> None:
    """Set the temporary FAR bit of ``bits`` where the (truncated integer) distance to the
    nearest cloud pixel is > ``maxdist`` pixels (spec 01 §6.5), clear it elsewhere."""
    mark_beyond(cloud, maxdist, bits, FAR)


def shadow_probability(bits: np.ndarray, nir: np.ndarray, swir1: np.ndarray,
                       cloud: np.ndarray | None, maxdist: float, *, threads: int | None = None
                       ) -> tuple[np.ndarray, dict]:
    """(dark, stats). Fill depth of dark depressions near clouds (spec 01 §6.5): per band
    (NIR, SWIR1) the band is set to its clear-land 17.5th percentile on the image border,
    on nodata pixels and farther than ``maxdist`` pixels from any cloud, then filled by
    greyscale reconstruction; depth = filled − band (TOA ×10000, capped at 32767), min over
    the two bands (FORCE's 1-thread path uses SWIR1 only, a bug; §9 #13). The relative
    darkening (filled − band)/filled ×10000 (an l2ps addition telling opaque from
    semi-transparent shadows) is only ever compared with REL_PIXEL, so it is kept as one
    bit: ``dark`` (uint16) = depth (bits 0–14, DEPTH_MASK) | DARK_BIT where both bands'
    relative darkening ≥ REL_PIXEL.

    ``cloud``: the cloud mask for the distance test, or None when the FAR bit of ``bits``
    has been set already by :func:`mark_far` (it is cleared on return). Memory: ``dark`` and,
    with the floods side by side, a second uint16 array merged into it; per flood a visited
    bit per pixel and the small queues."""
    if cloud is not None:
        mark_far(bits, cloud, maxdist)
    stats = {}
    bcks = []
    lnd = int(P.OFF | P.PCP | P.SNOW | P.WATER)    # lnd: clear land (FAR plays no part)
    for name, band in (("nir", nir), ("swir1", swir1)):
        bck = int(math.trunc(quantile_int16_bits(band, bits, lnd, 0.175)))
        stats[f"background_{name}"] = bck
        bcks.append(np.int16(bck))
    nt = numba.get_num_threads() if threads is None else threads
    # the flood reads flat views (no copy when already C-contiguous, as the bands are)
    nir, swir1 = np.ascontiguousarray(nir), np.ascontiguousarray(swir1)
    dark = np.empty(bits.shape, np.uint16)
    if PARALLEL_FLOODS and nt >= 2:
        # the two floods side by side (numba releases the GIL), each writing its own
        # packed result directly (the flood's input is computed on the fly), then merged
        dark2 = np.empty(bits.shape, np.uint16)
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=2) as pool:
            jobs = [pool.submit(_flood_dark, nir, bits, bcks[0], dark, True),
                    pool.submit(_flood_dark, swir1, bits, bcks[1], dark2, True)]
            for j in jobs:
                j.result()
        _merge_dark(dark, dark2)
        del dark2
    else:
        # one flood after the other, the second merging into ``dark`` directly
        _flood_dark(nir, bits, bcks[0], dark, True)
        _flood_dark(swir1, bits, bcks[1], dark, False)
    _clear_bit(bits, FAR)
    return dark, stats


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


@njit(cache=True, inline="always")
def _is_inner(cloud, r, c):
    """The integer distance from (r, c) to the nearest non-cloud pixel of the image is
    ≥ CORE_DEPTH, i.e. no in-image non-cloud pixel at a squared distance < CORE_DEPTH²
    (the same test as ``distance_transform(~cloud) >= CORE_DEPTH``, without the image)."""
    ny, nx = cloud.shape
    d = CORE_DEPTH - 1
    for di in range(-d, d + 1):
        ii = r + di
        if ii < 0 or ii >= ny:
            continue
        for dj in range(-d, d + 1):
            jj = c + dj
            if jj < 0 or jj >= nx or di * di + dj * dj >= CORE_DEPTH * CORE_DEPTH:
                continue
            if not cloud[ii, jj]:
                return False
    return True


@njit(cache=True)
def _object_setup(pr, pc, temp, has_temp, lowtemp, hightemp, tk, cloud):
    """(basetemp, base_min, base_max) of one object (spec 01 §6.6 step 4); fills tk with its
    temperatures clamped at basetemp (K×100); ``temp[m]`` is the temperature of the object's
    pixel (pr[m], pc[m]). basetemp: the CORE_QUANTILE of the
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
        if _is_inner(cloud, pr[m], pc[m]):
            vals[nin] = temp[m]
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
            vals[m] = temp[m]
        vals.sort()
        idx = np.float64(np.float32(core)) * (n - 1)
        k0 = int(math.floor(idx))
        k1 = min(k0 + 1, n - 1)
        basetemp = vals[k0] + (idx - k0) * (vals[k1] - vals[k0])
    for m in range(n):
        t = np.float64(temp[m])
        tk[m] = basetemp if t > basetemp else t
    bmin = max(BASE_MIN, (lowtemp - 400.0 - basetemp) / LAPSE_DRY)
    bmax = min(BASE_MAX, (hightemp + 400.0 - basetemp) / LAPSE_REDUCED)
    return basetemp, bmin, bmax


@njit(cache=True, parallel=True)
def _match_objects(objs, start, pix, nx_img, temp, has_temp, lowtemp, hightemp, base_step,
                   crow, ccol, fx, fy, dark, thr, cloud, bits, slope0, has_slope,
                   max_samples, min_match, shadow, best_base, best_match, best_rel):
    """Per object (in parallel; each writes only its own result slots and only sets shadow
    pixels): the cloud base height whose projected sample pixels cover the largest capped
    depth sum among the heights with a match ≥ ``min_match``; then every pixel of the
    object is projected at that height and drawn where the fill depth is > ``thr`` and the
    relative darkening ≥ REL_PIXEL (flat water: only if ≥ WATER_LAND of the visible land
    sample positions pass). A projected position on the object itself is on a cloud and
    thus hidden. ``dark``: packed depth and DARK_BIT of :func:`shadow_probability`.
    best_rel: the share (×10000) of the visible projected samples with DARK_BIT."""
    ny, nx = dark.shape
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
        basetemp, bmin, bmax = _object_setup(pr, pc, temp[a:b], has_temp, lowtemp, hightemp,
                                             tk, cloud)
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
                    if y < 0 or y >= ny or x < 0 or x >= nx:
                        continue
                    if _hidden(y, x, cloud, bits, slope0, has_slope):
                        continue
                    vis += 1
                    s = np.int64(dark[y, x] & DEPTH_MASK)
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
            # visible projection at the chosen height: how many samples are darkened by
            # at least REL_PIXEL (DARK_BIT)
            nv = 0
            ndark = 0
            for m in range(0, n, stride):
                h = bbase
                if has_temp:
                    h = (basetemp - tk[m]) / LAPSE_WET + bbase
                y, x = _project(pr[m], pc[m], h, crow, ccol, fx, fy)
                if y < 0 or y >= ny or x < 0 or x >= nx:
                    continue
                if _hidden(y, x, cloud, bits, slope0, has_slope):
                    continue
                nv += 1
                if dark[y, x] & DARK_BIT:
                    ndark += 1
            water_ok = True
            if nv > 0:
                brel = (ndark * 10000) // nv
                # flat water is dark in NIR and SWIR1 with or without a shadow: it is drawn
                # only when the projection's visible land pixels show a shadow (at least
                # WATER_LAND of them darkened by REL_PIXEL; thin clouds darken by less):
                # the sorted sample's value at int((1 − WATER_LAND)·nv) is ≥ REL_PIXEL, i.e.
                # at most that many samples are below it
                water_ok = nv - ndark <= min(nv - 1, int((1.0 - WATER_LAND) * nv))
            for m in range(n):
                h = bbase
                if has_temp:
                    h = (basetemp - tk[m]) / LAPSE_WET + bbase
                y, x = _project(pr[m], pc[m], h, crow, ccol, fx, fy)
                if 0 <= y < ny and 0 <= x < nx:
                    dv = np.int64(dark[y, x])
                    if ((dv & DEPTH_MASK) > thr and (dv & DARK_BIT) != 0
                            and (water_ok or not _flat_water(y, x, bits, slope0, has_slope))):
                        shadow[y, x] = True
        best_base[k] = bbase
        best_match[k] = bmatch
        best_rel[k] = brel


def shadow_matching(cloud: np.ndarray, pix: np.ndarray, start: np.ndarray, nobj: int,
                    dark: np.ndarray, bits: np.ndarray, *, res: float, crow: np.ndarray,
                    ccol: np.ndarray, fx: np.ndarray, fy: np.ndarray, base_step: float,
                    shadow_threshold: float, temp: np.ndarray | None = None,
                    lowtemp: float = 0.0, hightemp: float = 0.0,
                    slope_zero: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Shadow mask (bool) from matching each cloud object's projected shadow with the fill
    depth of ``dark`` over a range of cloud heights (spec 01 §6.6, with the departures
    listed in the module docstring).

    ``pix``/``start``/``nobj``: the pixels of the 8-connected cloud objects of ≥ 3 pixels
    (1..nobj) from :func:`~.morphology.components8` (every object pixel is a ``cloud`` pixel).
    ``dark``: packed fill depth and DARK_BIT of :func:`shadow_probability`.
    ``crow``/``ccol``: coarse-cell row per image row and column per image column;
    ``fx``/``fy``: per coarse cell, the column/row shift (pixels) per metre of cloud height
    (parallax toward the sensor minus shadow cast away from the sun). ``base_step``: height
    step (m). ``temp``: BT (K×100) for the thermal height model (Landsat) per object pixel
    (aligned with ``pix``: ``band.ravel()[pix]``), or None.
    ``slope_zero``: bool, slope code == 0 (None: flat everywhere). stats["per_object"]:
    arrays (index = label) of the chosen base height (m, −1 none), its match, the share
    (×10000) of the visible projected samples darkened by ≥ REL_PIXEL and the size."""
    ny, nx = cloud.shape
    shadow = np.zeros((ny, nx), np.bool_)
    stats: dict = {"objects": nobj, "heights": {}, "matched": 0}
    if nobj == 0:
        return shadow, stats
    sizes = np.diff(start)              # sizes[k] = pixels of object k (k = 1..nobj)
    has_temp = temp is not None
    t = np.ascontiguousarray(temp) if has_temp else np.zeros(1, np.int16)
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
                   float(base_step), crow, ccol, fx, fy, dark, thr, cloud, bits,
                   s0, has_slope, MAX_SAMPLES, MIN_DRAW, shadow, best_base,
                   best_match, best_rel)
    found = best_base[1:] >= 0
    stats["matched"] = int(found.sum())
    stats["drawn"] = int(found.sum())
    stats["heights"] = {"objects_with_match": int(found.sum()),
                        "median_m": float(np.median(best_base[1:][found])) if found.any() else None,
                        "min_m": float(best_base[1:][found].min()) if found.any() else None,
                        "max_m": float(best_base[1:][found].max()) if found.any() else None}
    stats["max_samples"] = MAX_SAMPLES
    stats["per_object"] = {"base_m": best_base, "match": best_match, "rel": best_rel,
                           "size": sizes[:nobj + 1]}
    return shadow, stats
