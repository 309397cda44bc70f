"""Dark-target AOD over dense dark vegetation (spec 02 §3.2–§3.6, vegetation branch).

Steps (processing grid):
1. candidates (§3.3): SWIR2 < 0.05, RED < 0.2, BLUE < NIR, NDVI(TOA) > 0.4, slope < 15°, valid,
   not cloud (any state), not shadow; cut along the coarse-grid lines every floor(5000/res)
   pixels; 8-connected objects; distance of each pixel to the nearest non-candidate;
   lapse test (TOA BLUE ≥ GREEN ≥ RED, SWIR2 exempt); edge pixels (distance < 2) excluded;
   objects need ≥ 10 pixels and a radius ≥ 3 pixels; environment = mean TOA of the
   non-candidate pixels in the bounding box grown by 3 radii (≥ 10 pixels, else the scene mean).
2. per object and library spectrum (81 spectra: BLUE = RED = rb, GREEN = rb + g, rb, g =
   0.01 … 0.05 step 0.005, §3.4) and band (BLUE, GREEN, RED): the AOD(550) at which the l2ps
   forward model (grid.py terms at the object's cell geometry and elevation; background =
   F·ρ_target + (1 − F)·ρ_environment) reproduces the target TOA;
3. the spectrum whose three AOD(550) estimates agree best (smallest spread) gives the object's
   AOD(550) (their mean) and its weight 1/(0.01 + spread)²; objects with a spread > 0.1 or
   any estimate outside 0–2 are rejected (replaces FORCE's Ångström fit of §3.5: l2ps's
   aerosol has the continental spectral shape);
4. map (§3.6): per coarse cell the weighted mean of its objects (normalised to the scene's mean
   elevation with the 2 km aerosol scale height), inverse-distance (power 2) interpolation
   into the other valid cells, 3×3 mean.

Water targets (§3.3, needing a water-reflectance library from a bio-optical model) and shadow
targets (disabled in FORCE) are not implemented: n_targets reports (0, n_vegetation).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .. import qai as Q
from . import grid as G
from . import radtran as rt
from .constants import band_optics

AOD_NODES = np.round(np.arange(0.0, 2.0001, 0.05), 4)
BANDS = ("BLUE", "GREEN", "RED")
_LIB = np.round(np.arange(0.01, 0.05001, 0.005), 4)
#: vegetation library (81 spectra; BLUE, GREEN, RED)
VEG_LIBRARY = np.array([(rb, rb + g, rb) for rb in _LIB for g in _LIB])
MAX_SPREAD = 0.1


@dataclass
class AodMap:
    aod550: np.ndarray          # (ncy, ncx) at the scene's mean elevation; NaN = invalid cell
    measured: np.ndarray        # bool: cell had targets
    n_water: int
    n_vegetation: int


def _targets(scene, dem_km, zmean):
    g = scene.grid
    toa = {d: scene.band(d).astype(np.float32) / 10000.0 for d in ("BLUE", "GREEN", "RED", "NIR", "SWIR2")}
    q = scene.qai
    ok = ((q & 1) == 0) & (Q.get_field(q, Q.CLOUD) == 0) & ~Q.get_flag(q, Q.SHADOW)
    topo = scene.topography
    slope = getattr(topo, "slope", None) if topo is not None else None
    b, gr, r, n, s2 = toa["BLUE"], toa["GREEN"], toa["RED"], toa["NIR"], toa["SWIR2"]
    with np.errstate(invalid="ignore", divide="ignore"):
        ndvi = (n - r) / (n + r)
    cand = ok & (s2 < 0.05) & (r < 0.2) & (b < n) & (ndvi > 0.4) & (b > 0) & (r > 0)
    if slope is not None:
        cand &= ~(slope >= np.radians(15.0))
    step = int(5000 // g.res)
    cut = cand.copy()
    cut[::step, :] = False
    cut[:, ::step] = False
    labels, num = ndimage.label(cut, structure=np.ones((3, 3), bool))
    if num == 0:
        return []
    dist = np.floor(ndimage.distance_transform_edt(cand)).astype(np.int32)
    lapse = (b >= gr) & (gr >= r)
    use = (labels > 0) & lapse & (dist >= 2)
    lab_use = np.where(use, labels, 0)
    idx = np.arange(1, num + 1)
    k = ndimage.sum_labels(use, labels, idx)
    rmax = ndimage.maximum(dist, labels, idx)
    good = np.nonzero((k >= 10) & (rmax >= 3))[0]
    if good.size == 0:
        return []
    means = {d: ndimage.mean(toa[d], lab_use, idx[good]) for d in BANDS}
    zt = (ndimage.mean(dem_km, lab_use, idx[good]) if dem_km is not None else np.zeros(good.size))
    env_ok = ok & (labels == 0)
    scene_env = {d: float(np.mean(toa[d][ok])) if ok.any() else 0.0 for d in BANDS}
    slices = ndimage.find_objects(labels)
    out = []
    for j, li in enumerate(good):
        sl = slices[li]
        rr = int(rmax[li])
        y0, y1 = max(0, sl[0].start - 3 * rr), min(g.ny, sl[0].stop + 3 * rr)
        x0, x1 = max(0, sl[1].start - 3 * rr), min(g.nx, sl[1].stop + 3 * rr)
        e = env_ok[y0:y1, x0:x1]
        if e.sum() >= 10:
            etoa = [float(np.mean(toa[d][y0:y1, x0:x1][e])) for d in BANDS]
        else:
            etoa = [scene_env[d] for d in BANDS]
        cy = (sl[0].start + sl[0].stop - 1) // 2
        cx = (sl[1].start + sl[1].stop - 1) // 2
        out.append(dict(row=cy, col=cx, z=float(zt[j]), radius=rr,
                        ttoa=[float(means[d][j]) for d in BANDS], etoa=etoa))
    return out


def retrieve_aod(scene, dem_km, levels, zmean, wv, ozone, multi_scattering=True) -> AodMap | None:
    """AOD(550) map from dense dark vegetation, or None without valid targets."""
    geom = scene.geometry
    coarse = geom.grid
    objs = _targets(scene, dem_km, zmean)
    if not objs:
        return None
    g = scene.grid
    ci = np.clip(np.array([int((o["row"] + 0.5) * g.dy // coarse.dy) for o in objs]), 0, coarse.ny - 1)
    cj = np.clip(np.array([int((o["col"] + 0.5) * g.dx // coarse.dx) for o in objs]), 0, coarse.nx - 1)
    sz = np.asarray(geom.sun_zenith, float)[ci, cj]
    keep = np.isfinite(sz) & np.isfinite(np.asarray(geom.view_zenith, float)[ci, cj])
    if not keep.any():
        return None
    objs = [o for o, k_ in zip(objs, keep) if k_]
    ci, cj = ci[keep], cj[keep]
    npt = len(objs)
    zt = np.array([o["z"] for o in objs])
    ttoa = np.array([o["ttoa"] for o in objs])          # (npt, 3)
    etoa = np.array([o["etoa"] for o in objs])
    radius_km = np.array([o["radius"] for o in objs]) * g.res / 1000.0 + g.res / 2000.0
    # RT terms: rows = AOD nodes, columns = objects
    rep = lambda a: np.repeat(np.asarray(a, float)[ci, cj][None, :], AOD_NODES.size, axis=0)  # noqa: E731
    angles = [rep(geom.sun_zenith), rep(geom.sun_azimuth), rep(geom.view_zenith), rep(geom.view_azimuth)]
    oz = rep(ozone) if np.ndim(ozone) == 2 else ozone
    lev = np.clip(np.searchsorted(levels, zt) - 1, 0, max(levels.size - 2, 0))
    fz = np.zeros(npt) if levels.size == 1 else np.clip((zt - levels[lev]) / (levels[lev + 1] - levels[lev]), 0, 1)
    lev1 = np.minimum(lev + 1, levels.size - 1)
    cols = np.arange(npt)
    est = np.full((npt, VEG_LIBRARY.shape[0], len(BANDS)), np.nan)
    for bi, d in enumerate(BANDS):
        opt = band_optics(scene.sensor, d)
        aod_at_levels = AOD_NODES[:, None] * np.ones((1, npt))
        brt = G.compute_band_rt(opt, *angles, levels, aod_at_levels, 0.0, wv, oz, multi_scattering)
        # AOD nodes are given for the column above each level (aod_elevation 0 → scale per level);
        # undo the elevation scaling so that node i means AOD(550) = AOD_NODES[i] at the object

        def term(a):
            a = np.asarray(a, float)
            if a.ndim == 4:
                a = a[..., 0]
            return (1 - fz) * a[:, cols, lev] + fz * a[:, cols, lev1]        # (naod, npt)
        scale0 = np.exp(-levels / G.AEROSOL_SCALE_HEIGHT_KM)
        tau_scale = (1 - fz) * scale0[lev] + fz * scale0[lev1]
        aod_obj = AOD_NODES[:, None] * tau_scale[None, :]                      # AOD at the object
        pr_, pa_ = term(brt.path_r), term(brt.path_a)
        ts, tv, tdv, s = term(brt.t_sun), term(brt.t_view), term(brt.tdir_view), term(brt.s)
        tg, tga, tgr = term(brt.tg), term(brt.tg_aer), term(brt.tg_ray)
        ta, tr_ = term(brt.tau_a), term(brt.tau_r)
        pg = tgr * pr_ + tga * pa_
        f = rt.env_weight(np.maximum(ta, 1e-6), tr_, rt.env_aerosol(radius_km)[None, :],
                          rt.env_rayleigh(radius_km)[None, :])
        y = (etoa[None, :, bi] - pg) / tg
        rho_e = y / (ts * tv + s * y)                                          # (naod, npt)
        lib = VEG_LIBRARY[:, bi]                                               # (nlib,)
        rho_b = f[..., None] * lib + (1 - f[..., None]) * rho_e[..., None]     # (naod, npt, nlib)
        model = pg[..., None] + tg[..., None] * ts[..., None] * (
            tdv[..., None] * lib + (tv - tdv)[..., None] * rho_b) / (1 - s[..., None] * rho_b)
        diff = model - ttoa[None, :, bi, None]                                 # increasing in AOD
        for p in range(npt):
            dd = diff[:, p, :]                                                 # (naod, nlib)
            sign = dd >= 0
            first = np.argmax(sign, axis=0)
            ok = sign.any(axis=0) & (first > 0)
            k1 = np.maximum(first, 1)
            d0, d1 = dd[k1 - 1, np.arange(lib.size)], dd[k1, np.arange(lib.size)]
            a0, a1 = aod_obj[k1 - 1, p], aod_obj[k1, p]
            with np.errstate(invalid="ignore", divide="ignore"):
                a = a0 + (a1 - a0) * (-d0) / (d1 - d0)
            est[p, :, bi] = np.where(ok, a, np.nan)
    complete = ~np.isnan(est).any(axis=2)
    e0 = np.where(complete[..., None], est, 0.0)
    spread = np.where(complete, e0.max(axis=2) - e0.min(axis=2), np.inf)
    best = np.argmin(spread, axis=1)
    sp = spread[np.arange(npt), best]
    val = e0[np.arange(npt), best].mean(axis=1)
    good = np.isfinite(sp) & (sp <= MAX_SPREAD)
    if not good.any():
        return None
    # normalise to the scene's mean elevation and average per cell
    a550 = val[good] * np.exp((zt[good] - zmean) / G.AEROSOL_SCALE_HEIGHT_KM)
    w = 1.0 / (0.01 + sp[good]) ** 2
    shape = (coarse.ny, coarse.nx)
    wsum = np.zeros(shape)
    vsum = np.zeros(shape)
    np.add.at(wsum, (ci[good], cj[good]), w)
    np.add.at(vsum, (ci[good], cj[good]), w * a550)
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
    return AodMap(aod550=out, measured=measured & valid, n_water=0, n_vegetation=int(good.sum()))
