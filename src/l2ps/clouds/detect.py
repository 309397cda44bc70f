"""``detect_clouds``: FORCE's modified Fmask for one scene (spec 01 §6.1, the control flow).

Work grid: Landsat works on its 30 m image grid. Sentinel-2 works on the 20 m grid of B8A
(FORCE works on 10 m with the 20 m bands replicated; see docs/deviations.d/clouds.md): the
10 m bands are averaged over each 20 m cell, the CDI's smoothed B08 is computed at 10 m and
averaged, and the masks are mapped back onto the 10 m QAI where the buffers are drawn.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange
from scipy import ndimage

from ..grid import Grid
from ..memory import release_free_heap
from ..scene import Scene, nearest_index, resample_nearest
from . import potential as P
from .finalize import GridMap, bin_centre_elevation_km, cirrus_candidates, finalize, radius_px
from .morphology import components8, drop_small_objects, mark_beyond, split_object_lists
from .parallax import cloud_parallax, smoothed_broadnir, smoothed_broadnir_rows
from .probability import cloud_probability
from .shadows import MIN_OBJECT, mark_far, shadow_matching, shadow_probability

FMASK_BANDS = ("BLUE", "GREEN", "RED", "NIR", "SWIR1", "SWIR2")
MAX_CLOUD_HEIGHT = 12000.0      # m, for the shadow search distance (spec 01 §6.5)
SPLIT_OBJECTS = True            # split touching objects at their necks (deviation)
HEIGHT_STEP_SHIFT = 50.0        # m of shadow displacement per height step (spec 01 §6.6)


@dataclass
class CloudResult:
    """Covers in % (cloud_cover: buffered clouds + shadows of the valid pixels, as FORCE's
    "cc:"; cloud_cover_unbuffered: confident (opaque) clouds before buffering), the frame
    decision (skip: cloud_cover > MAX_CLOUD_COVER_FRAME), FORCE's log fragment and the
    statistics of the sub-stages (thresholds, counts, heights, timings in s)."""
    cloud_cover: float
    cloud_cover_unbuffered: float
    water_cover: float
    snow_cover: float
    data_cover: float
    skip: bool
    log_fragment: str
    stats: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- grids
def _ratio(fine: Grid, coarse: Grid) -> int:
    """Integer k if ``coarse`` is ``fine`` aggregated k×k with the same UL corner, else 0."""
    if fine.dx <= 0 or coarse.dx <= fine.dx:
        return 0
    k = coarse.dx / fine.dx
    ky = coarse.dy / fine.dy
    kk = int(round(k))
    if (kk < 2 or abs(k - kk) > 1e-6 or abs(ky - kk) > 1e-6 or abs(coarse.x0 - fine.x0) > 1e-3 * fine.dx
            or abs(coarse.y0 - fine.y0) > 1e-3 * fine.dy):
        return 0
    return kk


@njit(cache=True, parallel=True)
def _block_mean(src, k, out):
    ny, nx = src.shape
    cy, cx = out.shape
    for ci in prange(cy):
        for cj in range(cx):
            s = 0.0
            n = 0
            for a in range(k):
                i = ci * k + a
                if i >= ny:
                    continue
                for b in range(k):
                    j = cj * k + b
                    if j < nx:
                        s += src[i, j]
                        n += 1
            v = s / n if n > 0 else -9999.0
            out[ci, cj] = np.int16(math.trunc(v))


@njit(cache=True, parallel=True)
def _block_bits(qai, k, out):
    """OFF if any fine pixel is nodata (or missing); SATURATED if any is saturated."""
    ny, nx = qai.shape
    cy, cx = out.shape
    for ci in prange(cy):
        for cj in range(cx):
            c = np.uint8(0)
            n = 0
            for a in range(k):
                i = ci * k + a
                if i >= ny:
                    continue
                for b in range(k):
                    j = cj * k + b
                    if j >= nx:
                        continue
                    n += 1
                    q = qai[i, j]
                    if q & 1:
                        c |= np.uint8(1)
                    if q & (1 << 9):
                        c |= np.uint8(64)
            if n < k * k:
                c |= np.uint8(1)
            out[ci, cj] = c


@njit(cache=True, parallel=True)
def _bits_from_qai(qai, out):
    ny, nx = qai.shape
    for i in prange(ny):
        for j in range(nx):
            q = qai[i, j]
            c = np.uint8(0)
            if q & 1:
                c |= np.uint8(1)
            if q & (1 << 9):
                c |= np.uint8(64)
            out[i, j] = c


def _band_on(scene: Scene, domain: str, work: Grid) -> np.ndarray:
    src = scene.grids[domain]
    arr = scene.toa[domain]
    if src == work:
        return np.ascontiguousarray(arr)
    k = _ratio(src, work)
    if k:
        out = np.empty(work.shape, np.int16)
        _block_mean(np.ascontiguousarray(arr), k, out)
        return out
    return np.ascontiguousarray(resample_nearest(arr, src, work))


def _work_bits(qai: np.ndarray, qgrid: Grid, work: Grid) -> np.ndarray:
    out = np.empty(work.shape, np.uint8)
    if work == qgrid:
        _bits_from_qai(qai, out)
        return out
    k = _ratio(qgrid, work)
    if k:
        _block_bits(qai, k, out)
    else:
        _bits_from_qai(np.ascontiguousarray(resample_nearest(qai, qgrid, work)), out)
    return out


@njit(cache=True, parallel=True)
def _slope_code(slope, rows, cols, identity, out):
    """trunc(slope·10000) (float32 arithmetic, NaN → 0) of the nearest ``slope`` pixel."""
    ny, nx = out.shape
    for i in prange(ny):
        r = i if identity else rows[i]
        for j in range(nx):
            v = slope[r, j if identity else cols[j]]
            if math.isnan(v):
                out[i, j] = 0
            else:
                out[i, j] = np.int16(math.trunc(np.float32(v) * np.float32(10000.0)))


def _topography(scene: Scene, work: Grid) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(slope code trunc(rad·10000) as int16, DEM in m as float32) on the work grid, or
    None each when the scene has no topography or flat terrain (0 m, slope 0: every test
    then takes its flat branch, the same as with zero arrays)."""
    topo = scene.topography
    if topo is None or getattr(topo, "flat", False):
        return None, None
    slope = getattr(topo, "slope", None)
    dem = getattr(topo, "dem", None)
    code = None
    if slope is not None:
        s = np.asarray(slope, dtype=np.float32)
        code = np.empty(work.shape, np.int16)
        if s.shape == work.shape and scene.grid == work:
            _slope_code(s, np.zeros(1, np.int64), np.zeros(1, np.int64), True, code)
        else:
            r, c = nearest_index(scene.grid, work)
            _slope_code(s, r, c, False, code)
    if dem is not None:
        dem = np.ascontiguousarray(resample_nearest(np.asarray(dem, dtype=np.float32),
                                                    scene.grid, work))
    return code, dem


# ----------------------------------------------------------------------------- geometry
def _cells(work: Grid, coarse: Grid) -> tuple[np.ndarray, np.ndarray]:
    y = work.y0 - (np.arange(work.ny) + 0.5) * work.dy
    x = work.x0 + (np.arange(work.nx) + 0.5) * work.dx
    rows = np.clip(np.floor((coarse.y0 - y) / coarse.dy), 0, coarse.ny - 1).astype(np.int64)
    cols = np.clip(np.floor((x - coarse.x0) / coarse.dx), 0, coarse.nx - 1).astype(np.int64)
    return rows, cols


def _shift_factors(geometry, res: float) -> tuple[np.ndarray, np.ndarray]:
    """Per coarse cell: column and row shift (pixels per metre of cloud height) from the
    pixel where a cloud is seen to its shadow: parallax toward the sensor, then the shadow
    cast away from the sun (spec 01 §6.6; y grows southward, azimuths clockwise from north)."""
    ts = np.tan(np.deg2rad(geometry.sun_zenith.astype(np.float64)))
    ps = np.deg2rad(geometry.sun_azimuth.astype(np.float64))
    tv = np.tan(np.deg2rad(geometry.view_zenith.astype(np.float64)))
    pv = np.deg2rad(geometry.view_azimuth.astype(np.float64))
    fx = (tv * np.sin(pv) - ts * np.sin(ps)) / res
    fy = (-tv * np.cos(pv) + ts * np.cos(ps)) / res
    return np.nan_to_num(fx), np.nan_to_num(fy)


def _base_step(geometry) -> float:
    sz = geometry.sun_zenith
    v = float(sz[sz.shape[0] // 2, sz.shape[1] // 2])
    if not np.isfinite(v):
        v = geometry.mean_sun_zenith
    t = math.tan(math.radians(v))
    return HEIGHT_STEP_SHIFT / t if t > 1e-6 and np.isfinite(t) else HEIGHT_STEP_SHIFT


def _maxdist(geometry, res: float) -> float:
    c = geometry.cos_sun_min
    if not np.isfinite(c):
        c = math.cos(math.radians(geometry.mean_sun_zenith))
    c = min(max(c, 1e-6), 1.0)
    return MAX_CLOUD_HEIGHT * math.tan(math.acos(c)) / res


# ----------------------------------------------------------------------------- CDI growth
CDI_GROW_M = 100.0              # m: reach of the growth of CDI clouds into PCP pixels
CDI_GROW_MIN_M2 = 5.0e5         # m²: only CDI clouds at least this large grow


@njit(cache=True, parallel=True)
def _grow_candidates(bits, far, seeds, out):
    """Bright, non-snow potential-cloud pixels near the seeds, or the seeds themselves."""
    ny, nx = bits.shape
    for i in prange(ny):
        for j in range(nx):
            c = bits[i, j]
            out[i, j] = seeds[i, j] or ((c & 2) != 0 and (c & 32) != 0 and (c & 16) == 0
                                        and (c & 1) == 0 and far[i, j] == 0)


def grow_clouds(cloud: np.ndarray, bits: np.ndarray, radius: int, min_px: int) -> int:
    """In place (Sentinel-2, an l2ps addition to spec 01 §6.4): extend the CDI clouds into
    the 8-connected bright, non-snow potential-cloud pixels that are at most ``radius``
    pixels from CDI clouds of at least ``min_px`` pixels (CDI_GROW_MIN_M2; the few small
    CDI seeds on bright textured ground do not grow). Parts of a cloud without parallax texture (a smooth side
    of the cloud) stop the CDI region growing although they are as white as the rest.
    Returns the number of pixels added."""
    if radius <= 0 or not cloud.any():
        return 0
    pix, start, n = components8(cloud)
    size = np.diff(start)[1:]               # pixels of objects 1..n
    big = size >= min_px
    if not big.any():
        return 0
    seeds = np.zeros(cloud.shape, np.bool_)
    seeds.reshape(-1)[pix[np.repeat(big, size)]] = True
    del pix, start
    far = np.zeros(cloud.shape, np.uint8)       # 1: farther than radius from the seeds
    mark_beyond(seeds, radius, far, 1)
    cand = np.empty(cloud.shape, np.bool_)
    _grow_candidates(bits, far, seeds, cand)
    del far
    grown = ndimage.binary_propagation(seeds, structure=np.ones((3, 3), bool), mask=cand)
    del cand
    added = int(np.count_nonzero(grown & ~cloud))
    cloud |= grown
    return added


# ----------------------------------------------------------------------------- saturation
SATURATED_SPECK_M2 = 1.0e5      # saturated cloud objects smaller than this (m²) are dropped


@njit(cache=True, parallel=True)
def _and_valid(cloud, bits):
    """cloud &= not OFF, in place."""
    ny, nx = cloud.shape
    for i in prange(ny):
        for j in range(nx):
            if bits[i, j] & 1:
                cloud[i, j] = False


def drop_saturated_specks(cloud: np.ndarray, bits: np.ndarray, res: float) -> int:
    """In place: remove 8-connected cloud objects smaller than SATURATED_SPECK_M2 (10 ha)
    of which at least half of the pixels are saturated (an l2ps addition to spec 01 §6.3
    and §6.4, where every saturated pixel is cloud): bright sand, roofs and other saturating
    targets are small; saturated clouds are large. Returns the number of objects removed.
    The objects are :func:`~.morphology.components8`'s pixel lists (no label image)."""
    pix, start, n = components8(cloud)
    if n == 0:
        return 0
    size = np.diff(start)[1:]
    nsat = np.add.reduceat((bits.reshape(-1)[pix] & P.SATURATED) != 0, start[1:n + 1])
    drop = (size * float(res) ** 2 < SATURATED_SPECK_M2) & (2 * nsat >= size)
    gone = pix[np.repeat(drop, size)]
    cloud[gone // cloud.shape[1], gone % cloud.shape[1]] = False
    return int(drop.sum())


# ----------------------------------------------------------------------------- main
def _now() -> tuple[float, float]:
    """(wall clock, CPU time of the process: all threads) in s."""
    return time.perf_counter(), time.process_time()


def _lap(stats: dict, name: str, t0: tuple[float, float]) -> None:
    """stats["timings"][name] = wall s since ``t0``; stats["cpu_timings"][name] = CPU s."""
    w, c = _now()
    stats["timings"][name] = round(w - t0[0], 3)
    stats.setdefault("cpu_timings", {})[name] = round(c - t0[1], 3)


def _pct(n: int, d: int) -> float:
    return 100.0 * n / d if d else 0.0


def work_grid(scene: Scene) -> Grid:
    """The grid the masks are computed on: Sentinel-2 the NIR (B8A) grid, else the scene's."""
    if scene.spec.mission == "sentinel2" and "NIR" in scene.grids:
        return scene.grids["NIR"]
    return scene.grid


def _cirrus_packed(cirrus: np.ndarray, bits: np.ndarray, z: np.ndarray | None,
                   rows: int = 512) -> np.ndarray:
    """``np.packbits`` of :func:`~.finalize.cirrus_candidates` (one bit per pixel, raster
    order), computed in strips of ``rows`` rows (a multiple of 8, so that the strips'
    packed bytes join exactly): no full-size boolean mask."""
    ny, nx = bits.shape
    out = np.empty((ny * nx + 7) // 8, np.uint8)
    for r0 in range(0, ny, rows):
        r1 = min(r0 + rows, ny)
        pk = np.packbits(cirrus_candidates(cirrus[r0:r1], bits[r0:r1],
                                           None if z is None else z[r0:r1]))
        out[r0 * nx // 8:r0 * nx // 8 + pk.size] = pk
    return out


def detect_clouds(scene: Scene, params, *, release_bands: bool = False) -> CloudResult:
    """Clouds, cloud shadows, snow and water (spec 01 §6): sets the QAI bits 1–5 of
    ``scene.qai`` in place and returns the covers and the frame decision. The result is
    also kept in ``scene.extra["clouds"]``; the cloud objects of the shadow matching in
    ``scene.extra["cloud_objects"]`` (diagnostics: ``pix``/``start``/``n`` of
    :func:`~.morphology.components8` — object k is the flat work-grid indices
    pix[start[k]:start[k + 1]] — ``work_grid`` and the per-object arrays of
    :func:`~.shadows.shadow_matching`).

    ``params``: a :class:`~l2ps.params.Parameters` (or any object with the attributes
    cloud_buffer, cirrus_buffer, shadow_buffer, snow_buffer (m), cloud_threshold,
    shadow_threshold, max_cloud_cover_frame). ``scene.topography`` (optional) provides
    ``dem`` (m) and ``slope`` (rad) on the processing grid; without it the ground is flat at
    0 m. ``stats["timings"]``: wall s per sub-stage (potential, probability | parallax,
    objects, shadow_probability, shadow_matching, finalize, total); ``stats["cpu_timings"]``: the
    same in CPU s of the process (all threads).

    ``release_bands``: drop TEMP and CIRRUS from ``scene.toa`` as soon as this stage is done
    with them (the pipeline's choice: no later stage reads them), i.e. before the shadow
    floods: the cirrus test (whose candidates are kept bit-packed until the finalisation)
    is made right after the snow buffer, and the object pixels' temperatures are gathered
    along the pixel lists (−0.2 GB at the stage's peak for a Landsat scene)."""
    t_all = _now()
    timings: dict[str, float] = {}
    stats: dict = {"timings": timings}
    t0 = _now()
    spec = scene.spec
    is_s2 = spec.mission == "sentinel2"
    qgrid = scene.grid
    work = work_grid(scene)
    stats["work_grid"] = {"nx": work.nx, "ny": work.ny, "res": work.res}
    max_frame = float(params.max_cloud_cover_frame)

    # ---------------------------------------------------------------- potential clouds
    bands = {d: _band_on(scene, d, work) for d in FMASK_BANDS}
    has_temp = spec.has_thermal and "TEMP" in scene.toa
    if has_temp:
        bands["TEMP"] = _band_on(scene, "TEMP", work)
    bits = _work_bits(scene.qai, qgrid, work)
    slope_code, dem = _topography(scene, work)
    vprob = P.potential_cloud(bands, bits, slope_code)
    for d in ("BLUE", "GREEN", "RED"):     # Sentinel-2: 20 m copies of the 10 m bands
        del bands[d]
    P.buffer_snow(bits, radius_px(params.snow_buffer, work.res))
    # the cirrus candidates of the finalisation: they read only the OFF and SNOW bits, final
    # now, and nothing else reads CIRRUS (kept bit-packed until then)
    cirrus = None
    if "CIRRUS" in scene.toa:
        z = None
        if dem is not None:
            z = bin_centre_elevation_km(dem, (bits & P.OFF) == 0)
        cirrus = _cirrus_packed(_band_on(scene, "CIRRUS", work), bits, z)
        del z
        if release_bands:
            scene.toa.pop("CIRRUS", None)
    counts = P.class_counts(bits)
    stats.update({k: v for k, v in counts.items()})
    npix = counts["npix"]
    _lap(stats, "potential", t0)

    cloud: np.ndarray
    shadow: np.ndarray | None = None      # None: every valid pixel is shadow
    forced = False
    lowtemp = hightemp = -1.0
    cdi_cloud = None        # Sentinel-2: the CDI clouds before their growth
    t0 = _now()
    if npix > 0 and 100.0 * counts["nclear"] / npix > 0.1:
        if is_s2:
            k = _ratio(scene.grids["BROADNIR"], work)
            if k:
                gb8 = smoothed_broadnir_rows(scene.toa["BROADNIR"], scene.qai, k, bits)
            else:
                b8 = _band_on(scene, "BROADNIR", work)
                q_w = np.where(bits & P.OFF, np.uint16(1), np.uint16(0))
                gb8 = smoothed_broadnir(b8, q_w, 1, bits)
            cloud, st = cloud_parallax(bits, _band_on(scene, "REDEDGE3", work), bands["NIR"],
                                       gb8, vprob)
            del gb8
            cdi_cloud = cloud.copy()
            st["grown_px"] = grow_clouds(cloud, bits, radius_px(CDI_GROW_M, work.res),
                                         int(CDI_GROW_MIN_M2 / work.res ** 2))
            stats["parallax"] = st
        else:
            if not has_temp:
                from ..errors import ProcessingError
                raise ProcessingError(f"{scene.level1.source}: {spec.sensor} has no TEMP band; "
                                      "the Landsat cloud probability needs it")
            cloud, st = cloud_probability(bits, bands, vprob, counts, float(params.cloud_threshold))
            lowtemp, hightemp = st["lowtemp"], st["hightemp"]
            stats["probability"] = st
        del vprob
        _and_valid(cloud, bits)
        stats["saturated_objects_dropped"] = drop_saturated_specks(cloud, bits, work.res)
        ncloud = int(np.count_nonzero(cloud))
        cc_cloud = _pct(ncloud, npix)
        stats.update({"ncloud": ncloud, "cc_cloud": round(cc_cloud, 4)})
        _lap(stats, "parallax" if is_s2 else "probability", t0)
        if cc_cloud <= 0.8 * max_frame:
            if ncloud > 0:
                # objects first (their pixel lists are small, the label image is not), with
                # the distance test of the shadow fill on the clouds before the removal of
                # the small objects (spec 01 §6.5 precedes §6.6)
                t0 = _now()
                mark_far(bits, cloud, _maxdist(scene.geometry, work.res))
                # components as pixel lists (no full-size label image)
                pix, start, n = components8(cloud)
                n_all = n
                rebuild = cdi_cloud is None
                if rebuild:
                    # Landsat: the objects are the cloud mask's components, so the mask
                    # after the removal of the small objects is the objects' support: it is
                    # dropped here and redrawn from the objects' pixel lists after the floods
                    del cloud
                    pix, start, n = drop_small_objects(pix, start, n, MIN_OBJECT)
                else:
                    pix, start, n = drop_small_objects(pix, start, n, MIN_OBJECT, mask=cloud)
                n_kept = n
                if cdi_cloud is not None:
                    # the shadows are matched with the CDI objects (the growth can join
                    # clouds at different heights); the grown pixels still hide shadows
                    del pix, start
                    pix, start, n = components8(cdi_cloud & cloud)
                    pix, start, n = drop_small_objects(pix, start, n, MIN_OBJECT)
                    cdi_cloud = None
                if SPLIT_OBJECTS:
                    pix, start, n = split_object_lists(pix, start, n, work.shape)
                    release_free_heap()     # the split's many small arrays, before the floods
                tpix = None
                if has_temp:        # per object pixel, so that TEMP can go before the floods
                    tpix = bands["TEMP"].ravel()[pix]
                    if release_bands:
                        del bands["TEMP"]
                        scene.toa.pop("TEMP", None)
                stats["objects"] = {"all": n_all, "kept": n_kept, "after_split": n}
                _lap(stats, "objects", t0)
                t0 = _now()
                dark, st = shadow_probability(bits, bands["NIR"], bands["SWIR1"], None,
                                              _maxdist(scene.geometry, work.res))
                stats["shadow_probability"] = st
                if rebuild:         # after the floods: one full-size array less during them
                    cloud = np.zeros(work.shape, np.bool_)
                    cloud.ravel()[pix] = True
                _lap(stats, "shadow_probability", t0)
                t0 = _now()
                crow, ccol = _cells(work, scene.geometry.grid)
                fx, fy = _shift_factors(scene.geometry, work.res)
                shadow, st = shadow_matching(
                    cloud, pix, start, n, dark, bits, res=work.res, crow=crow, ccol=ccol, fx=fx,
                    fy=fy, base_step=_base_step(scene.geometry),
                    shadow_threshold=float(params.shadow_threshold),
                    temp=tpix, lowtemp=lowtemp,
                    hightemp=hightemp, slope_zero=None if slope_code is None else slope_code == 0)
                del dark, tpix
                per_object = st.pop("per_object", None)
                scene.extra["cloud_objects"] = {"pix": pix, "start": start, "n": n,
                                                "work_grid": work, **(per_object or {})}
                del pix, start
                stats["shadow_matching"] = st
                _lap(stats, "shadow_matching", t0)
            else:
                shadow = np.zeros(work.shape, np.bool_)
        else:
            forced = True
    else:
        del vprob
        cloud = (bits & P.PCP) != 0
        forced = True
        stats.update({"ncloud": int(np.count_nonzero(cloud)), "cc_cloud": None})
    stats["forced_full_cover"] = forced
    stats["lowtemp"], stats["hightemp"] = lowtemp, hightemp

    # ---------------------------------------------------------------- finalisation
    t0 = _now()
    if release_bands:
        scene.toa.pop("TEMP", None)
    cirrus_mask = None
    if cirrus is not None:
        cirrus_mask = np.unpackbits(cirrus, count=bits.size).view(np.bool_).reshape(bits.shape)
        cirrus = None
    gmap = GridMap(work, qgrid)
    cnt = finalize(scene.qai, gmap, bits, cloud, None if forced else shadow, cirrus_mask,
                   cloud_buffer=float(params.cloud_buffer),
                   cirrus_buffer=float(params.cirrus_buffer),
                   shadow_buffer=float(params.shadow_buffer),
                   snow_buffer=float(params.snow_buffer),
                   snow_from_bits=True)
    _lap(stats, "finalize", t0)
    nvalid = cnt["valid"]
    dc = _pct(nvalid, scene.qai.size)
    wc = _pct(cnt["water"], nvalid)
    sc = _pct(cnt["snow"], nvalid)
    cc = 100.0 if forced else _pct(cnt["cloud_or_shadow"], nvalid)
    ccu = _pct(cnt["opaque_unbuffered"], nvalid)
    stats["counts_qai"] = cnt
    _lap(stats, "total", t_all)
    result = CloudResult(cloud_cover=cc, cloud_cover_unbuffered=ccu, water_cover=wc,
                         snow_cover=sc, data_cover=dc, skip=cc > max_frame,
                         log_fragment=f"dc: {dc:6.2f}%. wc: {wc:6.2f}%. sc: {sc:6.2f}%. "
                                      f"cc: {cc:6.2f}%. ",
                         stats=stats)
    scene.extra["clouds"] = result
    return result
