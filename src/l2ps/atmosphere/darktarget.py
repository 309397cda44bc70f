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

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from .. import qai as Q
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


def _edge_distance(cand: np.ndarray) -> np.ndarray:
    """Euclidean distance (pixels, truncated, int32) of every candidate pixel to the nearest
    non-candidate (§3.3 step 4), computed per 8-connected candidate component inside its
    bounding box + 1 pixel: the straight line from a pixel to its nearest non-candidate leaves
    the component through a pixel that is not a candidate, so that pixel lies in the window
    (same result as a transform of the whole grid, without its full-grid index arrays)."""
    comp, _ = ndimage.label(cand, structure=np.ones((3, 3), bool))
    dist = np.zeros(cand.shape, np.int32)
    ny, nx = cand.shape
    for i, sl in enumerate(ndimage.find_objects(comp)):
        if sl is None:
            continue
        win = (slice(max(sl[0].start - 1, 0), min(sl[0].stop + 1, ny)),
               slice(max(sl[1].start - 1, 0), min(sl[1].stop + 1, nx)))
        sub = cand[win]
        mine = comp[win] == i + 1
        if sub.all():                      # no non-candidate in reach: as the whole grid
            d = ndimage.distance_transform_edt(cand)
            return np.floor(d).astype(np.int32)
        d = ndimage.distance_transform_edt(sub)
        dist[win][mine] = np.floor(d[mine]).astype(np.int32)
    return dist


def _targets(scene, dem_km, kind: str, bands: tuple[str, ...]):
    """Dark-target objects of ``kind`` ("water" or "vegetation") with their mean target and
    environment TOA in ``bands`` (§3.3)."""
    g = _target_grid(scene)
    need = sorted(set(bands) | {"BLUE", "GREEN", "RED", "NIR", "SWIR2"})
    toa = {d: scene.band(d, g) for d in need}                      # int16 ×10000
    q = scene.qai_on(g)
    ok = ((q & 1) == 0) & (Q.get_field(q, Q.CLOUD) == 0) & ~Q.get_flag(q, Q.SHADOW)
    for d in need:
        ok &= toa[d] != -9999
    topo = scene.topography
    slope = getattr(topo, "slope", None) if topo is not None else None
    if slope is not None and not getattr(topo, "flat", False):
        slope = np.asarray(slope)
        slope = slope if g == scene.grid else \
            slope[tuple(np.ix_(*nearest_index(scene.grid, g)))]
    else:
        slope = None
    z = None
    if dem_km is not None:
        z = dem_km if g == scene.grid else dem_km[tuple(np.ix_(*nearest_index(scene.grid, g)))]
        z = np.asarray(z, np.float32) / 1000.0
    b, gr, r, n, s2 = (toa[d] for d in ("BLUE", "GREEN", "RED", "NIR", "SWIR2"))
    if kind == "water":
        cand = ok & (s2 < WATER_SWIR2 * 1e4) & (r < WATER_RED * 1e4) & (b > n) & (b > 0)
        if slope is not None:
            zz = z if z is not None else np.zeros(slope.shape, np.float32)
            zz = np.where(np.isfinite(zz), zz, 0.0)
            cand &= ((zz < WATER_SLOPE_Z_KM) & (slope < WATER_SLOPE_LOW)) | \
                ((zz > WATER_SLOPE_Z_KM) & (slope < WATER_SLOPE_HIGH))
        min_dist = 0
    else:
        bf, rf, nf = b.astype(np.float32), r.astype(np.float32), n.astype(np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            ndvi = (nf - rf) / (nf + rf)
        cand = ok & (s2 < 500) & (r < 2000) & (b < n) & (ndvi > 0.4) & (bf > 0) & (rf > 0)
        del bf, rf, nf, ndvi
        if slope is not None:
            cand &= ~(slope >= np.radians(15.0))
        min_dist = 2
    step = int(5000 // g.res)
    cut = cand.copy()
    cut[::step, :] = False
    cut[:, ::step] = False
    labels, num = ndimage.label(cut, structure=np.ones((3, 3), bool))
    if num == 0:
        return [], g
    dist = _edge_distance(cand)
    lapse = (b >= gr) & (gr >= r)
    use = (labels > 0) & lapse & (dist >= min_dist)
    # per-object statistics from the labelled pixels only (bincount; scipy's labelled
    # max/mean sort or scan the whole grid)
    lab_px = labels[labels > 0]
    k = np.bincount(labels[use], minlength=num + 1)[1:]
    rmax = np.zeros(num + 1, np.int32)
    np.maximum.at(rmax, lab_px, dist[labels > 0])
    rmax = rmax[1:]
    del lab_px
    good = np.nonzero((k >= 10) & (rmax >= 3))[0]
    if good.size == 0:
        return [], g
    lab_use = labels[use]
    cnt = np.maximum(k, 1)

    def obj_mean(arr):
        return (np.bincount(lab_use, weights=arr[use].astype(np.float64), minlength=num + 1)[1:]
                / cnt)[good]

    means = {d: obj_mean(toa[d]) / 1e4 for d in bands}
    zt = obj_mean(np.where(np.isfinite(z), z, 0.0)) if z is not None else np.zeros(good.size)
    env_ok = ok & (labels == 0)
    scene_env = {d: float(np.mean(toa[d][ok])) / 1e4 if ok.any() else 0.0 for d in bands}
    slices = ndimage.find_objects(labels)
    out = []
    for j, li in enumerate(good):
        sl = slices[li]
        rr = int(rmax[li])
        y0, y1 = max(0, sl[0].start - 3 * rr), min(g.ny, sl[0].stop + 3 * rr)
        x0, x1 = max(0, sl[1].start - 3 * rr), min(g.nx, sl[1].stop + 3 * rr)
        e = env_ok[y0:y1, x0:x1]
        if e.sum() >= 10:
            etoa = [float(np.mean(toa[d][y0:y1, x0:x1][e])) / 1e4 for d in bands]
        else:
            etoa = [scene_env[d] for d in bands]
        cy = (sl[0].start + sl[0].stop - 1) // 2
        cx = (sl[1].start + sl[1].stop - 1) // 2
        out.append(dict(row=cy, col=cx, z=float(zt[j]), radius=rr,
                        ttoa=[float(means[d][j]) for d in bands], etoa=etoa))
    return out, g


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
    for kind, bands in (("water", WATER_BANDS), ("vegetation", VEG_BANDS)):
        counts[kind] = 0
        if not all(scene.has(d) for d in bands):
            continue
        objs, g = _targets(scene, dem_km, kind, bands)
        if not objs:
            continue
        library = water_library(scene.sensor, bands) if kind == "water" else VEG_LIBRARY
        r = _estimates(scene, objs, g, kind, bands, library, levels, wv, ozone, multi_scattering)
        if r is None:
            continue
        ci, cj, zt, val, sp = r
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
