"""Dark-target AOD over water and dense dark vegetation (spec 02 §3.2–§3.6).

Steps (on the processing grid, or for Sentinel-2 on the 20 m grid of SWIR2, to keep the
masks small; all distances use that grid's pixel size):
1. candidates (§3.3), all valid, not cloud (any state), not cloud shadow:
   - water: TOA SWIR2 < 0.025, RED < 0.2, BLUE > NIR, and a slope below 0.087 rad (≈ 5°) under
     1 km elevation or below 0.0175 rad (≈ 1°) above (FORCE's code; its comments say the
     opposite);
   - dense dark vegetation: SWIR2 < 0.05, RED < 0.2, BLUE < NIR, NDVI(TOA) > 0.4, slope < 15°;
   cut along the coarse-grid lines every floor(5000/res) pixels; 8-connected objects;
   distance of each pixel to the nearest non-candidate; lapse test (TOA BLUE ≥ GREEN ≥ RED);
   vegetation edge pixels (distance < 2) excluded; objects need ≥ 10 pixels and a radius
   ≥ 3 pixels; environment = mean TOA of the non-candidate pixels in the bounding box grown by
   3 radii (≥ 10 pixels, else the scene mean).
2. per object, library spectrum and band the AOD(550) at which the l2ps forward model (grid.py
   terms at the object's cell geometry and elevation; background = F·ρ_target + (1 − F)·
   ρ_environment) reproduces the target TOA:
   - water: 40 water-leaving reflectance spectra of a bio-optical model
     (``data/water_library.npz``, tools/make_water_library.py) convolved with the band
     responses, plus the skylight reflected by the flat surface ρF(θs)·t↓dif/T↓ (§3.4);
     bands BLUE, GREEN, RED, NIR;
   - vegetation: 81 spectra BLUE = RED = rb, GREEN = rb + g, rb, g = 0.01 … 0.05 step 0.005;
     bands BLUE, GREEN, RED;
3. the spectrum whose per-band AOD(550) estimates agree best (smallest spread) gives the
   object's AOD(550) (their mean) and its weight 1/(0.01 + spread)²; objects with a spread
   > 0.1 or any estimate outside 0–2 are rejected (replaces FORCE's Ångström fit of §3.5:
   l2ps's aerosol has the continental spectral shape);
4. aerosol scale height (§3.7, ``fit_scale_height``): fitted from the objects' AODs and
   elevations when they span > 0.1 km (> 3 objects), else 2 km;
5. map (§3.6): per coarse cell the weighted mean of its objects (normalised to the scene's mean
   elevation with that scale height), inverse-distance (power 2) interpolation into the other
   valid cells, 3×3 mean.

Shadow targets are disabled in FORCE and not implemented.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numba import njit, prange
from scipy import ndimage

from ..scene import nearest_index
from . import grid as G
from . import radtran as rt
from .constants import DATA, SENSOR_TABLE, band_optics

AOD_NODES = np.round(np.arange(0.0, 2.0001, 0.05), 4)
VEG_BANDS = ("BLUE", "GREEN", "RED")
WATER_BANDS = ("BLUE", "GREEN", "RED", "NIR")
_LIB = np.round(np.arange(0.01, 0.05001, 0.005), 4)
#: vegetation library (81 spectra; BLUE, GREEN, RED)
VEG_LIBRARY = np.array([(rb, rb + g, rb) for rb in _LIB for g in _LIB])
MAX_SPREAD = 0.1
WATER_LIBRARY_FILE = DATA / "water_library.npz"
#: water mask thresholds (spec 02 §3.3): TOA SWIR2, RED; slope (rad) below/above 1 km
WATER_SWIR2, WATER_RED = 0.025, 0.2
WATER_SLOPE_LOW, WATER_SLOPE_HIGH, WATER_SLOPE_Z_KM = 0.087, 0.0175, 1.0
MAX_TARGET_PIXEL = 20.0          # m: S2 targets on the 20 m grid
OBJECT_CHUNK = 1024              # objects per call of the forward-model search


#: aerosol scale-height fit (spec 02 §3.7): bounds and minimum (km), minimum elevation ranges
SCALE_HEIGHT_BOUNDS_KM = (0.1, 1000.0)
SCALE_HEIGHT_MIN_KM = 1.2
SCALE_HEIGHT_MIN_RANGE_KM = 0.1


@dataclass
class AodMap:
    aod550: np.ndarray          # (ncy, ncx) at the scene's mean elevation; NaN = invalid cell
    measured: np.ndarray        # bool: cell had targets
    n_water: int
    n_vegetation: int
    scale_height_km: float = G.AEROSOL_SCALE_HEIGHT_KM   # of the AOD with elevation (§3.7)


def fit_scale_height(z_km: np.ndarray, aod: np.ndarray, dem_range_km: float) -> float | None:
    """Aerosol scale height H (km) from dark-target AODs at different elevations (spec 02
    §3.7): the H for which τ·exp(z/H) (the AOD brought to sea level) does not depend on z,
    i.e. the root of the OLS slope of τ·exp(z/H) on z (bracketed on a log grid of H in
    0.1–1000 km, then bisection; FORCE minimises |slope| with Brent from 50 km). Needs more
    than 3 targets, a DEM range and a target elevation range > 0.1 km; None otherwise or
    when the AOD does not decrease with elevation (the caller keeps 2 km; FORCE would go to
    its 1000 km bound). Result at least 1.2 km."""
    z = np.asarray(z_km, float)
    a = np.asarray(aod, float)
    ok = np.isfinite(z) & np.isfinite(a) & (a > 0)
    z, a = z[ok], a[ok]
    if z.size <= 3 or dem_range_km <= SCALE_HEIGHT_MIN_RANGE_KM or np.ptp(z) <= SCALE_HEIGHT_MIN_RANGE_KM:
        return None
    zc = z - z.mean()

    def slope(h):
        y = a * np.exp((z - z.min()) / h)
        return float(np.sum(zc * (y - y.mean())) / np.sum(zc * zc))

    hs = np.geomspace(*SCALE_HEIGHT_BOUNDS_KM, 60)
    sl = np.array([slope(h) for h in hs])
    # small H over-corrects (slope > 0), large H leaves the decrease (slope < 0)
    if sl[0] <= 0:                        # decreasing faster than any H in the bounds
        return SCALE_HEIGHT_MIN_KM
    idx = np.nonzero((sl[:-1] > 0) & (sl[1:] <= 0))[0]
    if idx.size == 0:                     # not decreasing with elevation: keep the default
        return None
    lo, hi = hs[idx[0]], hs[idx[0] + 1]
    for _ in range(50):
        mid = np.sqrt(lo * hi)
        if slope(mid) > 0:
            lo = mid
        else:
            hi = mid
    return max(float(np.sqrt(lo * hi)), SCALE_HEIGHT_MIN_KM)


@lru_cache(maxsize=None)
def water_library(sensor: str, bands: tuple[str, ...] = WATER_BANDS) -> np.ndarray:
    """(nlib, nbands) band reflectances of the water library: the spectra (400–900 nm,
    0 beyond) weighted with the band's spectral response from ``data/rsr.npz``."""
    with np.load(WATER_LIBRARY_FILE) as z:
        wl, spec = z["wavelength_um"].astype(np.float64), z["reflectance"].astype(np.float64)
    out = np.zeros((spec.shape[0], len(bands)))
    with np.load(DATA / "rsr.npz") as rsr:
        for j, d in enumerate(bands):
            key = f"{SENSOR_TABLE[sensor]}.{d}"
            w, r = rsr[f"{key}.wavelength"].astype(np.float64), rsr[f"{key}.rsr"].astype(np.float64)
            vals = np.array([np.interp(w, wl, s, left=s[0], right=0.0) for s in spec])
            out[:, j] = (vals * r).sum(axis=1) / r.sum()
    return out


def _target_grid(scene):
    """The grid of the dark-target masks: the processing grid, or the SWIR2 grid when that is
    coarser but at most 20 m (Sentinel-2)."""
    g = scene.grid
    g2 = scene.grids.get("SWIR2", g)
    return g2 if g.res < g2.res <= MAX_TARGET_PIXEL else g


# bits of the per-pixel class array of the candidate kernel
_OK, _LAPSE, _WATER, _VEG, _WATER_CUT, _VEG_CUT = 1, 2, 4, 8, 16, 32


@njit(cache=True, parallel=True)
def _classes_kernel(b, br, bc, gr, gr_r, gr_c, r, rr, rc, n, nr_, nc_, s2, sr, sc, qai, qr, qc,
                    slope, z, step, out, sums, cnts):
    """Per pixel of the target grid (§3.3): bit 0 valid (not nodata/cloud/shadow, all five
    bands valid), 1 lapse (BLUE ≥ GREEN ≥ RED), 2 water candidate, 3 vegetation candidate,
    4/5 the same off the cut lines (every ``step`` rows/columns).  Each band array is read at
    its nearest pixel (``xr[row]``, ``xc[col]``); ``slope`` (rad) and ``z`` (m) on the QAI grid
    (empty = none).  ``sums[row, k]``/``cnts[row]``: per-row sums of the valid pixels' TOA
    (BLUE, GREEN, RED, NIR) for the scene environment (exact integers)."""
    ny, nx = out.shape
    has_slope = slope.size > 0
    has_z = z.size > 0
    for i in prange(ny):
        for k in range(4):
            sums[i, k] = 0
        cnts[i] = 0
        for j in range(nx):
            vb = b[br[i], bc[j]]
            vg = gr[gr_r[i], gr_c[j]]
            vr = r[rr[i], rc[j]]
            vn = n[nr_[i], nc_[j]]
            vs = s2[sr[i], sc[j]]
            q = qai[qr[i], qc[j]]
            m = 0
            if ((q & 1) == 0 and ((q >> 1) & 3) == 0 and ((q >> 3) & 1) == 0 and vb != -9999
                    and vg != -9999 and vr != -9999 and vn != -9999 and vs != -9999):
                m = 1
                sums[i, 0] += vb
                sums[i, 1] += vg
                sums[i, 2] += vr
                sums[i, 3] += vn
                cnts[i] += 1
            if vb >= vg and vg >= vr:
                m |= 2
            if m & 1:
                sl = slope[qr[i], qc[j]] if has_slope else 0.0
                # water (§3.3; slope limits by elevation)
                if vs < 250.0 and vr < 2000.0 and vb > vn and vb > 0:
                    w_ok = True
                    if has_slope:
                        zz = z[qr[i], qc[j]] / 1000.0 if has_z else 0.0
                        if math.isnan(zz):
                            zz = 0.0
                        w_ok = (zz < 1.0 and sl < 0.087) or (zz > 1.0 and sl < 0.0175)
                    if w_ok:
                        m |= 4
                # dense dark vegetation
                if vs < 500 and vr < 2000 and vb < vn and vb > 0 and vr > 0 and vn + vr != 0:
                    ndvi = np.float32(vn - vr) / np.float32(vn + vr)
                    if ndvi > np.float32(0.4) and not (has_slope and sl >= 0.2617993877991494):
                        m |= 8
            if i % step != 0 and j % step != 0:
                if m & 4:
                    m |= 16
                if m & 8:
                    m |= 32
            out[i, j] = m


def _object_distance(cls: np.ndarray, bit: int, sl, mine_local: np.ndarray) -> np.ndarray:
    """Euclidean distance (pixels, floored) of the object's pixels to the nearest
    non-candidate (§3.3 step 4), exact: computed in the object's bounding box grown by a margin
    that is doubled until every pixel's distance is at most its distance to the window's edge
    (a nearer non-candidate outside the window is then impossible).  ``mine_local``: the
    object's pixels in its bounding box ``sl``.  Returns the distances in that box."""
    ny, nx = cls.shape
    y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
    m = 8
    while True:
        wy0, wy1, wx0, wx1 = max(y0 - m, 0), min(y1 + m, ny), max(x0 - m, 0), min(x1 + m, nx)
        cand = (cls[wy0:wy1, wx0:wx1] & bit) != 0
        if cand.all():
            d = np.full(cand.shape, np.inf)        # no non-candidate in reach
        else:
            d = ndimage.distance_transform_edt(cand)
        d = d[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0]
        iy, ix = np.nonzero(mine_local)
        iy = iy + y0
        ix = ix + x0
        inf = np.inf
        edge = np.minimum.reduce([np.where(wy0 > 0, iy - wy0 + 1, inf), np.where(wy1 < ny, wy1 - iy, inf),
                                  np.where(wx0 > 0, ix - wx0 + 1, inf), np.where(wx1 < nx, wx1 - ix, inf)])
        whole = wy0 == 0 and wx0 == 0 and wy1 == ny and wx1 == nx
        if whole or np.all(d[mine_local] <= edge):
            if not np.isfinite(d).all():           # the whole grid is candidate: as scipy does
                d = np.floor(ndimage.distance_transform_edt((cls & bit) != 0))[y0:y1, x0:x1]
            return np.floor(d).astype(np.int32)
        m *= 2


def _targets(scene, dem_km, kind: str, bands: tuple[str, ...], cache: dict | None = None):
    """Dark-target objects of ``kind`` ("water" or "vegetation") with their mean target and
    environment TOA in ``bands`` (§3.3).  One numba pass classifies every pixel of the target
    grid (uint8, shared by both kinds through ``cache``); objects never cross the cut lines, so
    they are labelled strip by strip (rows between two cut lines) and measured in their own
    windows: no full-grid label, distance or resampled-band arrays."""
    g = _target_grid(scene)
    cache = {} if cache is None else cache
    if "cls" not in cache:
        cache["cls"] = _classify(scene, dem_km, g)
    cls, env_sum, env_n, idx = cache["cls"]
    bit, cut_bit = (_WATER, _WATER_CUT) if kind == "water" else (_VEG, _VEG_CUT)
    min_dist = 0 if kind == "water" else 2
    step = int(5000 // g.res)
    scene_env = {d: (env_sum[k] / env_n / 1e4 if env_n else 0.0)
                 for k, d in enumerate(("BLUE", "GREEN", "RED", "NIR")) if d in bands}
    z_src = None
    if dem_km is not None:
        z_src = np.asarray(dem_km)
    qr, qc = idx["QAI"]

    def window(arr_key, y0, y1, x0, x1):
        ri, ci = idx[arr_key]
        return scene.toa[arr_key][ri[y0:y1][:, None], ci[None, x0:x1]]

    out = []
    eight = np.ones((3, 3), bool)
    for s0 in range(1, g.ny, step):                   # rows between two cut lines
        s1 = min(g.ny, s0 + step - 1)
        if s1 <= s0:
            continue
        strip = (cls[s0:s1] & cut_bit) != 0
        if not strip.any():
            continue
        labels, num = ndimage.label(strip, structure=eight)
        if num == 0:
            continue
        size = np.bincount(labels.ravel(), minlength=num + 1)
        for li, sl in enumerate(ndimage.find_objects(labels)):
            if sl is None or size[li + 1] < 10:    # fewer than 10 usable pixels for sure
                continue
            mine = labels[sl] == li + 1
            gsl = (slice(sl[0].start + s0, sl[0].stop + s0), sl[1])
            dist = _object_distance(cls, bit, gsl, mine)
            cl = cls[gsl]
            use = mine & ((cl & _LAPSE) != 0) & (dist >= min_dist)
            k = int(use.sum())
            rr = int(dist[mine].max())
            if k < 10 or rr < 3:
                continue
            y0, y1, x0, x1 = gsl[0].start, gsl[0].stop, gsl[1].start, gsl[1].stop
            ttoa = [float(window(d, y0, y1, x0, x1)[use].astype(np.float64).sum() / k) / 1e4
                    for d in bands]
            if z_src is not None:
                zz = z_src[qr[y0:y1][:, None], qc[None, x0:x1]][use].astype(np.float32) / 1000.0
                zt = float(np.where(np.isfinite(zz), zz, 0.0).astype(np.float64).sum() / k)
            else:
                zt = 0.0
            ey0, ey1 = max(0, y0 - 3 * rr), min(g.ny, y1 + 3 * rr)
            ex0, ex1 = max(0, x0 - 3 * rr), min(g.nx, x1 + 3 * rr)
            ce = cls[ey0:ey1, ex0:ex1]
            e = ((ce & _OK) != 0) & ((ce & cut_bit) == 0)
            if e.sum() >= 10:
                etoa = [float(np.mean(window(d, ey0, ey1, ex0, ex1)[e])) / 1e4 for d in bands]
            else:
                etoa = [scene_env[d] for d in bands]
            cy = (y0 + y1 - 1) // 2
            cx = (x0 + x1 - 1) // 2
            out.append(dict(row=cy, col=cx, z=zt, radius=rr, ttoa=ttoa, etoa=etoa))
    return out, g


def _classify(scene, dem_km, g):
    """The candidate kernel's class array on the target grid ``g``, the scene sums of the
    valid pixels' TOA (BLUE, GREEN, RED, NIR), their count and the nearest-pixel indices
    (band or "QAI" → row index, column index) from ``g`` to each array's grid."""
    idx = {}
    for d in ("BLUE", "GREEN", "RED", "NIR", "SWIR2"):
        r, c = nearest_index(scene.grids[d], g)
        idx[d] = (np.asarray(r, np.int64), np.asarray(c, np.int64))
    r, c = nearest_index(scene.grid, g)
    idx["QAI"] = (np.asarray(r, np.int64), np.asarray(c, np.int64))
    topo = scene.topography
    slope = getattr(topo, "slope", None) if topo is not None else None
    if slope is not None and not getattr(topo, "flat", False):
        slope = np.asarray(slope, np.float32)
    else:
        slope = np.zeros((0, 0), np.float32)
    z = np.zeros((0, 0), np.float32) if dem_km is None else np.asarray(dem_km, np.float32)
    cls = np.empty((g.ny, g.nx), np.uint8)
    sums = np.empty((g.ny, 4), np.int64)
    cnts = np.empty(g.ny, np.int64)
    t = scene.toa
    step = int(5000 // g.res)
    _classes_kernel(t["BLUE"], *idx["BLUE"], t["GREEN"], *idx["GREEN"], t["RED"], *idx["RED"],
                    t["NIR"], *idx["NIR"], t["SWIR2"], *idx["SWIR2"], scene.qai, *idx["QAI"],
                    slope, z, step, cls, sums, cnts)
    return cls, sums.sum(axis=0).astype(np.float64), int(cnts.sum()), idx


def _estimates(scene, objs, g, kind, bands, library, levels, wv, ozone, multi_scattering):
    """Per object: (cell row, cell column, elevation km, AOD(550) at the object, spread) of the
    best library spectrum (§3.4–§3.5 as described in the module docstring)."""
    geom = scene.geometry
    coarse = geom.grid
    # cell of the object's centre (map coordinates; the coarse grid starts at the image's UL)
    yc = g.y0 - (np.array([o["row"] for o in objs]) + 0.5) * g.dy
    xc = g.x0 + (np.array([o["col"] for o in objs]) + 0.5) * g.dx
    ci = np.clip(np.floor((coarse.y0 - yc) / coarse.dy).astype(int), 0, coarse.ny - 1)
    cj = np.clip(np.floor((xc - coarse.x0) / coarse.dx).astype(int), 0, coarse.nx - 1)
    sz = np.asarray(geom.sun_zenith, float)[ci, cj]
    keep = np.isfinite(sz) & np.isfinite(np.asarray(geom.view_zenith, float)[ci, cj])
    if not keep.any():
        return None
    objs = [o for o, k_ in zip(objs, keep) if k_]
    ci, cj, sz = ci[keep], cj[keep], sz[keep]
    npt = len(objs)
    zt = np.array([o["z"] for o in objs])
    ttoa = np.array([o["ttoa"] for o in objs])          # (npt, nbands)
    etoa = np.array([o["etoa"] for o in objs])
    radius_km = np.array([o["radius"] for o in objs]) * g.res / 1000.0 + g.res / 2000.0
    rho_f = rt.fresnel_reflection(sz)[None, :] if kind == "water" else None
    # RT terms: rows = AOD nodes, columns = objects
    rep = lambda a: np.repeat(np.asarray(a, float)[ci, cj][None, :], AOD_NODES.size, axis=0)  # noqa: E731
    angles = [rep(geom.sun_zenith), rep(geom.sun_azimuth), rep(geom.view_zenith), rep(geom.view_azimuth)]
    oz = rep(ozone) if np.ndim(ozone) == 2 else ozone
    lev = np.clip(np.searchsorted(levels, zt) - 1, 0, max(levels.size - 2, 0))
    fz = np.zeros(npt) if levels.size == 1 else np.clip((zt - levels[lev]) / (levels[lev + 1] - levels[lev]), 0, 1)
    lev1 = np.minimum(lev + 1, levels.size - 1)
    cols = np.arange(npt)
    nlib = library.shape[0]
    est = np.full((npt, nlib, len(bands)), np.nan)
    scale0 = np.exp(-levels / G.AEROSOL_SCALE_HEIGHT_KM)
    tau_scale = (1 - fz) * scale0[lev] + fz * scale0[lev1]
    aod_obj = AOD_NODES[:, None] * tau_scale[None, :]                          # AOD at the object

    def term(a):
        a = np.asarray(a, float)
        if a.ndim == 4:
            a = a[..., 0]
        return (1 - fz) * a[:, cols, lev] + fz * a[:, cols, lev1]            # (naod, npt)

    for bi, d in enumerate(bands):
        opt = band_optics(scene.sensor, d)
        # AOD nodes are given for the column above each level (aod_elevation 0 → scaled per
        # level); aod_obj is the AOD(550) of node i at the object's elevation
        brt = G.compute_band_rt(opt, *angles, levels, AOD_NODES[:, None] * np.ones((1, npt)), 0.0,
                                wv, oz, multi_scattering)
        pr_, pa_ = term(brt.path_r), term(brt.path_a)
        ts, tv, tdv, s = term(brt.t_sun), term(brt.t_view), term(brt.tdir_view), term(brt.s)
        tg, tga, tgr = term(brt.tg), term(brt.tg_aer), term(brt.tg_ray)
        ta, tr_ = term(brt.tau_a), term(brt.tau_r)
        pg = tgr * pr_ + tga * pa_
        f = rt.env_weight(np.maximum(ta, 1e-6), tr_, rt.env_aerosol(radius_km)[None, :],
                          rt.env_rayleigh(radius_km)[None, :])
        y = (etoa[None, :, bi] - pg) / tg
        rho_e = y / (ts * tv + s * y)                                          # (naod, npt)
        lib = np.broadcast_to(library[:, bi], (AOD_NODES.size, npt, nlib))
        if kind == "water":
            # skylight reflected by the flat surface, relative to the total irradiance
            sky = rho_f * (ts - term(brt.tdir_sun)) / ts                        # (naod, npt)
            lib = lib + sky[..., None]
        rho_b = f[..., None] * lib + (1 - f[..., None]) * rho_e[..., None]     # (naod, npt, nlib)
        model = pg[..., None] + tg[..., None] * ts[..., None] * (
            tdv[..., None] * lib + (tv - tdv)[..., None] * rho_b) / (1 - s[..., None] * rho_b)
        diff = model - ttoa[None, :, bi, None]                                 # increasing in AOD
        # first AOD node where the model reaches the target, linear root between nodes
        sign = diff >= 0
        first = np.argmax(sign, axis=0)                                        # (npt, nlib)
        ok = sign.any(axis=0) & (first > 0)
        k1 = np.maximum(first, 1)[None]
        d0 = np.take_along_axis(diff, k1 - 1, axis=0)[0]
        d1 = np.take_along_axis(diff, k1, axis=0)[0]
        pcol = np.arange(npt)[:, None]
        a0, a1 = aod_obj[k1[0] - 1, pcol], aod_obj[k1[0], pcol]                # (npt, nlib)
        with np.errstate(invalid="ignore", divide="ignore"):
            a = a0 + (a1 - a0) * (-d0) / (d1 - d0)
        est[:, :, bi] = np.where(ok, a, np.nan)
    complete = ~np.isnan(est).any(axis=2)
    e0 = np.where(complete[..., None], est, 0.0)
    spread = np.where(complete, e0.max(axis=2) - e0.min(axis=2), np.inf)
    best = np.argmin(spread, axis=1)
    sp = spread[np.arange(npt), best]
    val = e0[np.arange(npt), best].mean(axis=1)
    return ci, cj, zt, val, sp


def retrieve_aod(scene, dem_km, levels, zmean, wv, ozone, multi_scattering=True) -> AodMap | None:
    """AOD(550) map from water and dense dark vegetation targets (module docstring), or None
    without valid targets."""
    geom = scene.geometry
    coarse = geom.grid
    parts = []
    counts = {}
    cache: dict = {}
    for kind, bands in (("water", WATER_BANDS), ("vegetation", VEG_BANDS)):
        counts[kind] = 0
        if not all(scene.has(d) for d in bands):
            continue
        objs, g = _targets(scene, dem_km, kind, bands, cache)
        if not objs:
            continue
        library = water_library(scene.sensor, bands) if kind == "water" else VEG_LIBRARY
        # objects in chunks: the per-object RT and library arrays are (AOD nodes × objects ×
        # spectra) float64, a few hundred MB for thousands of objects at once
        rs = [_estimates(scene, objs[k:k + OBJECT_CHUNK], g, kind, bands, library, levels, wv,
                         ozone, multi_scattering) for k in range(0, len(objs), OBJECT_CHUNK)]
        rs = [x for x in rs if x is not None]
        if not rs:
            continue
        ci, cj, zt, val, sp = (np.concatenate(x) for x in zip(*rs))
        good = np.isfinite(sp) & (sp <= MAX_SPREAD)
        counts[kind] = int(good.sum())
        if good.any():
            parts.append((ci[good], cj[good], zt[good], val[good], sp[good]))
    if not parts:
        return None
    ci, cj, zt, val, sp = (np.concatenate(x) for x in zip(*parts))
    dem_range = float(levels[-1] - levels[0]) if levels.size > 1 else 0.0
    hp = fit_scale_height(zt, val, dem_range) or G.AEROSOL_SCALE_HEIGHT_KM
    # normalise to the scene's mean elevation and average per cell
    a550 = val * np.exp((zt - zmean) / hp)
    w = 1.0 / (0.01 + sp) ** 2
    shape = (coarse.ny, coarse.nx)
    wsum = np.zeros(shape)
    vsum = np.zeros(shape)
    np.add.at(wsum, (ci, cj), w)
    np.add.at(vsum, (ci, cj), w * a550)
    measured = wsum > 0
    valid = np.isfinite(np.asarray(geom.sun_zenith, float)) & np.isfinite(np.asarray(geom.view_zenith, float))
    cell = np.full(shape, np.nan)
    cell[measured] = vsum[measured] / wsum[measured]
    yy, xx = np.nonzero(measured)
    gy, gx = np.mgrid[0:shape[0], 0:shape[1]]
    d2 = (gy[..., None] - yy) ** 2 + (gx[..., None] - xx) ** 2
    with np.errstate(divide="ignore"):
        wi = np.where(d2 == 0, 1e12, 1.0 / np.maximum(d2, 1e-12))
    idw = (wi * cell[yy, xx]).sum(-1) / wi.sum(-1)
    filled = np.where(measured, cell, idw)
    sm = ndimage.uniform_filter(filled, size=3, mode="nearest")
    out = np.where(valid, sm, np.nan)
    return AodMap(aod550=out, measured=measured & valid, n_water=counts["water"],
                  n_vegetation=counts["vegetation"], scale_height_km=float(hp))
