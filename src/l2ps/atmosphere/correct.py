"""Atmospheric correction of a scene: TOA → BOA (spec 02 §0 steps 1–6, §1.9, §3.8, §8).

``correct_atmosphere(scene, params)`` is the stage called by the pipeline after cloud detection
(and co-registration/resolution merge, if any) and before the cube writer.  It

1. builds the elevation levels from ``scene.topography.dem`` (metres on the processing grid;
   no topography → flat 0 m),
2. gets the water vapour: Landsat from DIR_WVPLUT / WATER_VAPOR (§2.3), Sentinel-2 per pixel
   from B8A/B09 (§2.4),
3. gets the aerosol: DO_AOD → dark dense vegetation targets (darktarget.py, an AOD(550) map on
   the coarse grid, aerosol QAI 0/1/2), else or without targets the fallback spectrum of §3.1
   (default or DIR_AOD file; aerosol QAI = 3 "fill"),
   (ADJACENCY_EFFECT: background reflectance of §4 from a provisional homogeneous BOA),
4. computes the RT terms per 5 km cell × elevation level × band (grid.py),
5. inverts every output band block-wise on its native grid with a numba kernel
   (ρ = y/(T + s·y), y = (ρTOA − ρp,g)/Tg, gas-coupled path; optional multiplicative factor
   hook for the BRDF c-factor: ρBOA = A·factor·ρ, §1.9), flags subzero/saturation, applies
   §8.1's scaling and clipping; DO_TOPO multiplies the topographic factor A of §6 (C from
   SWIR2 once per scene, spectrally propagated with the band's diffuse ratio from the RT).
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from numba import njit, prange
from pyproj import Transformer

from .. import qai as Q
from ..errors import L2psError
from ..geometry import _weights
from ..grid import Grid
from ..scene import nearest_index
from . import grid as G
from .adjacency import background_inplace, background_mask, self_weight
from .aerosol import fallback_spectrum
from .constants import band_optics
from .darktarget import retrieve_aod
from .gas import climatological_water_vapor, ozone_amount, water_vapor_from_lut
from .watervapor import retrieve_water_vapor, water_vapor_fill

log = logging.getLogger(__name__)

NODATA = -9999
ROWS = 512                                   # strip height of the block-wise inversion
FactorHook = Callable[[str, slice], "np.ndarray | None"]


class AtmosphereError(L2psError):
    """The scene cannot be corrected (e.g. no valid geometry cell)."""


@dataclass
class AtmoResult:
    """Output of :func:`correct_atmosphere`.

    boa: domain → int16 BOA ×10000 on ``scene.grids[domain]`` (−9999 nodata), output domains only
    aod: int16 ×1000 green-band AOD on ``scene.grid`` (−9999 nodata)
    wvp: int16 ×1000 water vapour (g cm⁻²) on ``scene.grid`` (−9999 nodata)
    """
    boa: dict[str, np.ndarray]
    aod: np.ndarray | None
    wvp: np.ndarray | None
    aod550_scene: float
    water_vapor_scene: float
    n_targets: tuple[int, int]
    log_fragment: str
    stats: dict = field(default_factory=dict)          # seconds per sub-stage
    info: dict = field(default_factory=dict)           # sources of water vapour / AOD, levels


class _Clock:
    """Wall and process-CPU seconds per sub-stage (accumulated over repeated entries) and the
    (name, start, end) perf_counter spans, for ``AtmoResult.stats`` / ``info["profile"]``."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.spans: list[tuple[str, float, float]] = []

    @contextmanager
    def __call__(self, name: str):
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            t = time.perf_counter()
            self.wall[name] = self.wall.get(name, 0.0) + t - w
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c
            self.spans.append((name, w, t))


# --------------------------------------------------------------------------------- kernels
NT = 8          # scalar terms stacked for the kernel: pr, pa, T↓T↑, s, tg_ray, T↓, T↑, t↑dir
NG = 2          # water-vapour dependent gas terms: tg_aer, tg


@njit(cache=True)
def _level_weight(zz, levels):
    """Lower level index and weight of the upper one for elevation ``zz`` (km); levels are
    equally spaced; constant beyond the ends."""
    nlev = levels.size
    if nlev < 2:
        return 0, 0.0
    if zz <= levels[0]:
        return 0, 0.0
    if zz >= levels[nlev - 1]:
        return nlev - 2, 1.0
    k0 = min(int((zz - levels[0]) / (levels[1] - levels[0])), nlev - 2)
    return k0, (zz - levels[k0]) / (levels[k0 + 1] - levels[k0])


@njit(cache=True)
def _row_terms(terms, gas, valid, ia, ib, w1, rowt, rowg, roww):
    """Pre-interpolation of one image row: the two coarse-cell rows ``ia``/``ib`` blended
    with weight ``w1`` (invalid cells skipped; ``roww`` = sum of the weights used)."""
    ncx = terms.shape[1]
    rowt[:] = 0.0
    rowg[:] = 0.0
    roww[:] = 0.0
    for jj in range(ncx):
        for m in range(2):
            ii = ia if m == 0 else ib
            w = (1.0 - w1) if m == 0 else w1
            if w <= 0.0 or not valid[ii, jj]:
                continue
            roww[jj] += w
            rowt[jj] += w * terms[ii, jj]
            rowg[jj] += w * gas[ii, jj]


@njit(cache=True, parallel=True)
def _invert_kernel(toa, qai, erase_clouds, z, wv, wr, wc, i0, wi, j0, wj, levels, wv_nodes, terms,
                   gas, valid, rho_b, br, bc, f_self, factor, out, flags, accumulate):
    """Per pixel: bilinear in the coarse cells (invalid cells skipped), linear in elevation
    levels and water-vapour nodes; homogeneous inversion with the gas-coupled path, or with
    a background reflectance ``rho_b`` (int16 ×10000, empty = homogeneous; spec 02 §1.9, §4);
    factor; §8.1 scaling.  flags: bit 0 subzero, bit 1 saturation, bit 2 ρ < −1 (→ nodata);
    ``accumulate``: OR into ``flags`` (else overwrite); empty ``flags``: none.  ``out`` may be
    ``toa`` itself (each pixel is read before it is written).

    ``qai``: the QAI of each pixel (nodata bit 0 → nodata; ``erase_clouds``: confident cloud →
    nodata); ``z``: elevation in m (NaN → 0 km; empty = flat); ``wv``: water vapour int16
    ×1000 on its own grid, pixel (r, c) reads ``wv[wr[r], wc[c]]`` (empty = one node);
    ``rho_b``: the ring part of the background (Σ w_k·avg_k, int16 ×10000) on its own grid,
    read at ``rho_b[br[r], bc[c]]``; the background is F_self·ρ0 + (1 − F_self)·ring with the
    pixel's own homogeneous ρ0 (spec 02 §4).  ``terms`` (ncy, ncx, nlev, NT) and ``gas`` (ncy, ncx, nlev, nw, NG) are first blended
    between the two cell rows of each image row (row-wise pre-interpolation), so a pixel
    only combines 2 cells × 2 levels."""
    ncy, ncx, nlev, nt = terms.shape
    nw = wv_nodes.size
    nr, nc = toa.shape
    has_flags = flags.size > 0
    for r in prange(nr):
        ia = min(max(i0[r], 0), ncy - 1)
        ib = min(max(i0[r] + 1, 0), ncy - 1)
        rowt = np.empty((ncx, nlev, nt), np.float32)
        rowg = np.empty((ncx, nlev, nw, NG), np.float32)
        roww = np.empty(ncx, np.float32)
        _row_terms(terms, gas, valid, ia, ib, wi[r], rowt, rowg, roww)
        for c in range(nc):
            if has_flags and not accumulate:
                flags[r, c] = 0
            v = toa[r, c]
            q = qai[r, c]
            if (q & 1) or v == -9999:
                out[r, c] = -9999
                continue
            k0 = 0
            fk = 0.0
            if z.size > 0:
                zz = z[r, c]
                k0, fk = _level_weight(0.0 if math.isnan(zz) else zz * 0.001, levels)
            k1 = min(k0 + 1, nlev - 1)
            q0 = 0
            fq = 0.0
            if wv.size > 0 and nw > 1:
                ww = wv[wr[r], wc[c]] * 0.001
                if ww >= wv_nodes[nw - 1]:
                    q0 = nw - 2
                    fq = 1.0
                elif ww > wv_nodes[0]:
                    q0 = min(int((ww - wv_nodes[0]) / (wv_nodes[1] - wv_nodes[0])), nw - 2)
                    fq = (ww - wv_nodes[q0]) / (wv_nodes[q0 + 1] - wv_nodes[q0])
            q1 = min(q0 + 1, nw - 1)
            ja = min(max(j0[c], 0), ncx - 1)
            jb = min(max(j0[c] + 1, 0), ncx - 1)
            u1 = wj[c]
            wa = (1.0 - u1) * roww[ja]
            wb = u1 * roww[jb]
            wsum = wa + wb
            if wsum <= 0.0:
                out[r, c] = -9999          # no valid cell around the pixel: nodata
                if has_flags:
                    flags[r, c] |= 4
                continue
            ca = (1.0 - u1) / wsum
            cb = u1 / wsum
            w00 = ca * (1.0 - fk)
            w01 = ca * fk
            w10 = cb * (1.0 - fk)
            w11 = cb * fk
            a_pr = w00 * rowt[ja, k0, 0] + w01 * rowt[ja, k1, 0] + w10 * rowt[jb, k0, 0] + w11 * rowt[jb, k1, 0]
            a_pa = w00 * rowt[ja, k0, 1] + w01 * rowt[ja, k1, 1] + w10 * rowt[jb, k0, 1] + w11 * rowt[jb, k1, 1]
            a_tt = w00 * rowt[ja, k0, 2] + w01 * rowt[ja, k1, 2] + w10 * rowt[jb, k0, 2] + w11 * rowt[jb, k1, 2]
            a_s = w00 * rowt[ja, k0, 3] + w01 * rowt[ja, k1, 3] + w10 * rowt[jb, k0, 3] + w11 * rowt[jb, k1, 3]
            a_tgr = w00 * rowt[ja, k0, 4] + w01 * rowt[ja, k1, 4] + w10 * rowt[jb, k0, 4] + w11 * rowt[jb, k1, 4]
            g_a = 0.0
            g_t = 0.0
            for m in range(4):
                jj = ja if m < 2 else jb
                k = k0 if (m % 2) == 0 else k1
                wm = (w00 if m == 0 else (w01 if m == 1 else (w10 if m == 2 else w11)))
                g_a += wm * ((1.0 - fq) * rowg[jj, k, q0, 0] + fq * rowg[jj, k, q1, 0])
                g_t += wm * ((1.0 - fq) * rowg[jj, k, q0, 1] + fq * rowg[jj, k, q1, 1])
            y = (v / 10000.0 - (a_tgr * a_pr + g_a * a_pa)) / g_t
            rbv = rho_b[br[r], bc[c]] if rho_b.size > 0 else -9999
            if rbv != -9999:
                rho0 = y / (a_tt + a_s * y)
                rb = f_self * rho0 + (1.0 - f_self) * (rbv / 10000.0)
                a_ts = w00 * rowt[ja, k0, 5] + w01 * rowt[ja, k1, 5] + w10 * rowt[jb, k0, 5] + w11 * rowt[jb, k1, 5]
                a_tv = w00 * rowt[ja, k0, 6] + w01 * rowt[ja, k1, 6] + w10 * rowt[jb, k0, 6] + w11 * rowt[jb, k1, 6]
                tdv_ = w00 * rowt[ja, k0, 7] + w01 * rowt[ja, k1, 7] + w10 * rowt[jb, k0, 7] + w11 * rowt[jb, k1, 7]
                rho = (y * (1.0 - a_s * rb) / a_ts - (a_tv - tdv_) * rb) / tdv_
            else:
                rho = y / (a_tt + a_s * y)
            if factor.size > 0:
                rho = rho * factor[r, c]
            f = 0
            if rho < 0.0:
                f |= 1
            if rho > 1.0:
                f |= 2
            if erase_clouds and ((q >> 1) & 3) == 2:
                out[r, c] = -9999
            elif rho < -1.0:
                out[r, c] = -9999
                f |= 4
            elif rho * 10000.0 > 32767.0:
                out[r, c] = 32767
            else:
                out[r, c] = np.int16(rho * 10000.0)     # truncation toward zero (spec 02 §8.1)
            if has_flags:
                if accumulate:
                    flags[r, c] |= f
                else:
                    flags[r, c] = f


@njit(cache=True, parallel=True)
def _interp_fields_kernel(fields, valid, z, levels, i0, wi, j0, wj, out):
    """Per pixel value of cell × level fields (ncy, ncx, nlev, nf): bilinear in the cells
    (invalid skipped; NaN where none is valid), linear in elevation → out (nr, nc, nf)."""
    ncy, ncx, nlev, nf = fields.shape
    nr, nc = out.shape[0], out.shape[1]
    for r in prange(nr):
        ia = min(max(i0[r], 0), ncy - 1)
        ib = min(max(i0[r] + 1, 0), ncy - 1)
        for c in range(nc):
            k0 = 0
            fk = 0.0
            if z.size > 0:
                k0, fk = _level_weight(z[r, c], levels)
            k1 = min(k0 + 1, nlev - 1)
            ja = min(max(j0[c], 0), ncx - 1)
            jb = min(max(j0[c] + 1, 0), ncx - 1)
            for t in range(nf):
                out[r, c, t] = 0.0
            wsum = 0.0
            for m in range(4):
                ii = ia if m < 2 else ib
                jj = ja if (m % 2) == 0 else jb
                wc = ((1.0 - wi[r]) if m < 2 else wi[r]) * ((1.0 - wj[c]) if (m % 2) == 0 else wj[c])
                if wc <= 0.0 or not valid[ii, jj]:
                    continue
                wsum += wc
                for t in range(nf):
                    out[r, c, t] += wc * ((1.0 - fk) * fields[ii, jj, k0, t] + fk * fields[ii, jj, k1, t])
            for t in range(nf):
                out[r, c, t] = out[r, c, t] / wsum if wsum > 0.0 else np.nan


# --------------------------------------------------------------------------------- helpers
def _record(clock: _Clock, name: str, t1: float, c1: float) -> None:
    t = time.perf_counter()
    clock.wall[name] = clock.wall.get(name, 0.0) + t - t1
    clock.cpu[name] = clock.cpu.get(name, 0.0) + time.process_time() - c1
    clock.spans.append((name, t1, t))


def _cell_lonlat(coarse) -> tuple[np.ndarray, np.ndarray]:
    x = coarse.x0 + (np.arange(coarse.nx) + 0.5) * coarse.dx
    y = coarse.y0 - (np.arange(coarse.ny) + 0.5) * coarse.dy
    xx, yy = np.meshgrid(x, y)
    tr = Transformer.from_crs(coarse.crs, "EPSG:4326", always_xy=True)
    lon, lat = tr.transform(xx, yy)
    return np.asarray(lon), np.asarray(lat)


def _dem_km(scene) -> np.ndarray | None:
    """The DEM (metres, NaN = nodata) on the processing grid, or None for flat 0 m terrain
    (no topography stage, or a flat DEM without a file)."""
    topo = scene.topography
    dem = getattr(topo, "dem", None) if topo is not None else None
    if dem is None or getattr(topo, "flat", False):
        return None
    return np.asarray(dem)


def _dem_stats(dem, qai) -> tuple[float, float, float]:
    if dem is None:
        return 0.0, 0.0, 0.0
    zmin, zmax, zsum, n = math.inf, -math.inf, 0.0, 0
    for r0 in range(0, dem.shape[0], ROWS):
        d = dem[r0:r0 + ROWS].astype(np.float32)
        ok = np.isfinite(d) & ((qai[r0:r0 + ROWS] & 1) == 0)
        if ok.any():
            v = d[ok]
            zmin, zmax = min(zmin, float(v.min())), max(zmax, float(v.max()))
            zsum += float(v.sum(dtype=np.float64))
            n += v.size
    if n == 0:
        return 0.0, 0.0, 0.0
    return zmin / 1000.0, zmax / 1000.0, zsum / n / 1000.0


def correct_atmosphere(scene, params, factor_hook: FactorHook | None = None,
                       reuse_toa: bool = True) -> AtmoResult:
    """Atmospheric correction of ``scene`` (see module docstring).  Sets QAI bits in
    ``scene.qai``: aerosol (6–7), subzero (8), saturation (9), water-vapour fill (14, S2), and
    nodata where ρ < −1.  ``factor_hook(domain, rows)`` may return a float32 array (rows of the
    band's native grid × its columns) multiplied onto ρ (topographic × BRDF factor), or None.

    ``reuse_toa``: the BOA of an output band is written into its (writable int16) TOA array,
    which is then removed from ``scene.toa`` (saves one band-sized array per band; TOA BLUE and
    RED stay when ``params.output_hot``).  Pass False to keep ``scene.toa`` intact.
    The AOD / WVP maps are only built when ``params.output_aod`` / ``output_wvp``."""
    clock = _Clock()
    t0, c0 = time.perf_counter(), time.process_time()
    geom = scene.geometry
    coarse = geom.grid
    sensor = scene.sensor
    acquired = scene.level1.acquired
    doy = int(acquired.timetuple().tm_yday)
    sz, sa = np.asarray(geom.sun_zenith, float), np.asarray(geom.sun_azimuth, float)
    vz, va = np.asarray(geom.view_zenith, float), np.asarray(geom.view_azimuth, float)
    valid_cells = np.isfinite(sz) & np.isfinite(vz)
    if not valid_cells.any():
        raise AtmosphereError(f"{scene.level1.path if hasattr(scene.level1, 'path') else sensor}: "
                              "no coarse cell with valid sun/view geometry")
    lon, lat = _cell_lonlat(coarse)
    clon, clat = float(np.mean(lon[valid_cells])), float(np.mean(lat[valid_cells]))
    ozone = ozone_amount(lon, lat, doy)

    dem = _dem_km(scene)
    topo = scene.topography
    if dem is not None and hasattr(topo, "dem_min_km"):
        zmin, zmax, zmean = float(topo.dem_min_km), float(topo.dem_max_km), float(topo.dem_mean_km)
    else:
        zmin, zmax, zmean = _dem_stats(dem, scene.qai)
    levels = G.elevation_levels(zmin, zmax)

    # aerosol: fallback spectrum (DO_AOD = TRUE falls back too until dark targets exist)
    spectrum = fallback_spectrum(getattr(params, "dir_aod", None), doy, clon, clat)
    aod_note = ""

    is_s2 = sensor.startswith("SEN2")
    domains = [d for d in scene.spec.output_domains if d in scene.toa]
    multi = bool(params.multi_scattering)

    amap = None

    def scale_height() -> float:
        return amap.scale_height_km if amap is not None else G.AEROSOL_SCALE_HEIGHT_KM

    def band_rt(domain, wv):
        opt = band_optics(sensor, domain)
        if amap is not None:
            aod_eq = amap_cells
        else:
            aod_eq = float(spectrum.tau(opt.wavelength)) / opt.tau_a_per_aod550
        return G.compute_band_rt(opt, sz, sa, vz, va, levels, aod_eq, zmean, wv, ozone, multi,
                                 aerosol_scale_height_km=scale_height())

    # water vapour; WATER_VAPOR = NULL means the standard atmosphere of latitude and season
    # (FORCE: 0 g cm-2) where it is used (Landsat without DIR_WVPLUT, S2 fill)
    t1, c1 = time.perf_counter(), time.process_time()
    wv_default, wv_default_source = float(params.water_vapor), "PARAMETER"
    if "WATER_VAPOR" in getattr(params, "nulls", ()):
        clim = climatological_water_vapor(clat, acquired.month, zmean)
        wv_default, wv_default_source = clim.value, clim.source
    w_cells = None
    if is_s2:
        if not (scene.has("NIR") and scene.has("VAPOR")):
            raise AtmosphereError(f"{sensor}: water vapour retrieval needs bands B8A (NIR) and B09 (VAPOR)")
        rt8, rt9 = band_rt("NIR", G.WV_NODES), band_rt("VAPOR", G.WV_NODES)
        w09 = retrieve_water_vapor(scene, rt8, rt9, lambda g: _level_index(scene, dem, levels, g),
                                   lambda g: _cell_index(coarse, g))
        w_cells, wv_scene, n_fill = water_vapor_fill(scene, w09, wv_default)
        wv_source = f"S2 B8A/B09 ({int(np.isfinite(w09).sum())} retrievals, {n_fill} pixels filled)"
        wv_nodes = G.WV_NODES
    else:
        wvv = water_vapor_from_lut(getattr(params, "dir_wvplut", None), acquired.date(), clon, clat,
                                   default=wv_default, strict=params.strict_water_vapor)
        wv_scene, wv_source, wv_nodes = wvv.value, wvv.source, float(wvv.value)
        if wv_source == "PARAMETER":
            wv_source = wv_default_source
    _record(clock, "water_vapor", t1, c1)

    # aerosol: dark targets (DO_AOD), else the fallback spectrum
    t1, c1 = time.perf_counter(), time.process_time()
    if params.do_aod and all(scene.has(d) for d in ("BLUE", "GREEN", "RED", "NIR", "SWIR2")):
        amap = retrieve_aod(scene, dem, levels, zmean, float(wv_scene), ozone, multi)
        if amap is not None:
            amap_cells = np.where(np.isfinite(amap.aod550), amap.aod550, np.nanmean(amap.aod550))
            aod_note = f": {amap.n_water} water, {amap.n_vegetation} vegetation objects"
        else:
            aod_note = " (no valid dark target: fallback)"
    _record(clock, "aod", t1, c1)

    # RT grid
    with clock("radtran"):
        rts = {d: band_rt(d, wv_nodes) for d in domains}

    # topographic correction (DO_TOPO): C per pixel from SWIR2, A per band and row block
    hook = factor_hook
    if getattr(params, "do_topo", False):
        with clock("topography"):
            hook, topo_info = _topographic_hook(scene, rts, dem, levels, zmean, coarse,
                                                factor_hook)
    else:
        topo_info = None

    # inversion, block-wise on each band's native grid; BOA written into the TOA arrays of
    # the bands nobody reads afterwards (HOT reads TOA BLUE and RED)
    keep_toa = {"BLUE", "RED"} if getattr(params, "output_hot", True) else set()
    boa: dict[str, np.ndarray] = {}
    sub = np.zeros(scene.grid.shape, np.uint8)      # bit 0 subzero, 1 saturation, 2 → nodata
    erase_clouds = bool(getattr(params, "erase_clouds", False))
    adjacency = bool(getattr(params, "adjacency_effect", False))
    wv_px = _WaterVapourIndex(scene, w_cells) if w_cells is not None else None
    for d in domains:
        g = scene.grids[d]
        brt = rts[d]
        rho_b = None
        if adjacency:
            with clock("adjacency"):
                rho_b = _background(scene, d, g, brt, dem, levels, zmean, wv_px, coarse)
        with clock("inversion"):
            toa = scene.toa[d]
            out = toa if (reuse_toa and d not in keep_toa and _writable_int16(toa)
                          and sum(a is toa for a in scene.toa.values()) == 1) else None
            boa[d] = _invert_band(scene, d, g, brt, dem, levels, wv_px, coarse, hook,
                                  erase_clouds, rho_b, out=out, sub=sub)
            if out is not None:
                del scene.toa[d]                  # now BOA: no one may read it as TOA
        del rho_b
    with clock("inversion"):
        # QAI: subzero, saturation, ρ < −1 → nodata; then all bands nodata where OFF
        any_off = _apply_flags(scene.qai, sub)
        del sub
        if any_off:
            for d in domains:
                g = scene.grids[d]
                rq, cq = nearest_index(scene.grid, g)
                for r0 in range(0, g.ny, ROWS):
                    offb = (scene.qai[rq[r0:r0 + ROWS][:, None], cq[None, :]] & 1) != 0
                    boa[d][r0:r0 + ROWS][offb] = NODATA

    # aerosol QAI (§3.8: no AOD map → 3 fill; else high > 0.6 → 2, interpolated → 1, else 0)
    # and the products AOD (green band at the pixel's elevation, nearest cell) and WVP
    with clock("products"):
        green = "GREEN" if "GREEN" in rts else domains[0]
        opt_g = band_optics(sensor, green)
        if amap is None:
            tau_green = float(spectrum.tau(opt_g.wavelength))
            green_cells = np.full(sz.shape, tau_green)
        else:
            green_cells = amap_cells * opt_g.tau_a_per_aod550
            tau_green = float(np.mean(green_cells[valid_cells]))
        ci, cj = _cell_index(coarse, scene.grid)
        want_aod = bool(getattr(params, "output_aod", True))
        want_wvp = bool(getattr(params, "output_wvp", True))
        aod = np.empty(scene.grid.shape, np.int16) if want_aod else None
        wvp_map = np.empty(scene.grid.shape, np.int16) if want_wvp else None
        wv_scene_i16 = np.int16(min(32767, int(wv_scene * 1000.0)))
        for r0 in range(0, scene.grid.ny, ROWS):
            r1 = min(scene.grid.ny, r0 + ROWS)
            blk = green_cells[ci[r0:r1][:, None], cj[None, :]].astype(np.float32)
            if dem is not None:
                z = np.asarray(dem[r0:r1], np.float32) / 1000.0
                blk = (blk * np.exp(-(np.where(np.isfinite(z), z, zmean) - zmean)
                                    / scale_height())).astype(np.float32)
            v = (scene.qai[r0:r1] & 1) == 0
            if amap is None:
                fld = np.full(blk.shape, 3, np.uint8)
            else:
                fld = np.where(amap.measured[ci[r0:r1][:, None], cj[None, :]], 0, 1).astype(np.uint8)
                fld[blk > 0.6] = 2
            Q.set_field(scene.qai[r0:r1], Q.AEROSOL, fld, v)
            if aod is not None:
                a = (blk * 1000.0).astype(np.int16)
                a[~v] = NODATA
                aod[r0:r1] = a
            if wvp_map is not None:
                w = wv_px.rows(r0, r1) if wv_px is not None else np.full(v.shape, wv_scene_i16)
                wvp_map[r0:r1] = np.where(v, w, np.int16(NODATA))
    stats = dict(clock.wall)
    for name in ("water_vapor", "aod", "radtran", "adjacency", "inversion", "products"):
        stats.setdefault(name, 0.0)
    stats["total"] = time.perf_counter() - t0
    profile = {"cpu": {**clock.cpu, "total": time.process_time() - c0},
               "spans": clock.spans}
    n_targets = (amap.n_water, amap.n_vegetation) if amap is not None else (0, 0)
    frag = f"AOD: {tau_green:.4f}. # of targets: {n_targets[0]}/{n_targets[1]}. "
    info = {"water_vapor_source": wv_source,
            "aod_source": (spectrum.source if amap is None else "dark targets") + aod_note,
            "elevation_levels": int(levels.size),
            "aerosol_scale_height_km": round(scale_height(), 3),
            "diffuse_ratio": {d: round(float(np.nanmean(_diffuse_ratio(b)[..., int(np.argmin(
                np.abs(levels - zmean)))])), 4) for d, b in rts.items()},
            "profile": profile}
    if topo_info is not None:
        info["topography"] = topo_info
    aod550_scene = (float(np.mean(amap_cells[valid_cells])) if amap is not None else spectrum.aod550)
    return AtmoResult(boa=boa, aod=aod, wvp=wvp_map, aod550_scene=aod550_scene,
                      water_vapor_scene=float(wv_scene), n_targets=n_targets, log_fragment=frag,
                      stats=stats, info=info)


ADJACENCY_MIN_PIXEL = 40.0     # m: ring backgrounds of finer bands are computed on a 2× coarser grid


def _background(scene, d, g, brt, dem, levels, zmean, wv_px, coarse):
    """Ring part of the background reflectance of band ``d`` (spec 02 §4): provisional
    homogeneous BOA, three EMA rings, ring weights.  Bands finer than ADJACENCY_MIN_PIXEL
    (Sentinel-2 10/20 m, Landsat 30 m) do this on a grid of twice the pixel size from the 2×2
    mean TOA (the rings are ≥ 250 m wide; 4× less work and memory); the pixel's own weight
    F_self (radius 1.5 of its own pixels) is mixed in by the inversion kernel with the pixel's
    own ρ0.  Returns (ring part int16 ×10000, row index, column index, F_self) with the
    indices mapping the band's rows/columns to the ring grid's."""
    lev0 = int(np.argmin(np.abs(levels - zmean)))
    ok = np.isfinite(brt.tau_a[..., lev0])
    tau_a = float(np.mean(brt.tau_a[..., lev0][ok]))
    tau_r = float(np.mean(brt.tau_r[..., lev0][ok]))
    coarse_grid = g.res < ADJACENCY_MIN_PIXEL and g.nx >= 4 and g.ny >= 4
    if coarse_grid:
        gb = Grid(g.crs_wkt, g.x0, g.y0, 2 * g.dx, 2 * g.dy, g.nx // 2, g.ny // 2)
        toa_b = _mean2x2(scene.toa[d])
        qai_b = scene.qai_on(gb)
    else:
        gb, toa_b = g, scene.toa[d]
        qai_b = scene.qai_on(g)
    rho = _invert_band(scene, d, gb, brt, dem, levels, wv_px, coarse, None, False, None,
                       toa=toa_b, qai=qai_b)
    del toa_b
    mask = background_mask(rho, qai_b)
    del qai_b                       # before the three ring fields (memory)
    rho = background_inplace(rho, mask, gb.res, tau_a, tau_r, own=False)
    del mask
    if coarse_grid:
        rr = np.minimum(np.arange(g.ny) // 2, gb.ny - 1).astype(np.int64)
        cc = np.minimum(np.arange(g.nx) // 2, gb.nx - 1).astype(np.int64)
    else:
        rr, cc = np.arange(g.ny, dtype=np.int64), np.arange(g.nx, dtype=np.int64)
    return rho, rr, cc, self_weight(tau_a, tau_r, g.res)


@njit(cache=True, parallel=True)
def _mean2x2_kernel(src, out):
    nr, nc = out.shape
    for r in prange(nr):
        for c in range(nc):
            acc = 0
            n = 0
            for i in range(2):
                for j in range(2):
                    v = src[2 * r + i, 2 * c + j]
                    if v != -9999:
                        acc += v
                        n += 1
            out[r, c] = np.int16(acc // n) if n > 0 else np.int16(-9999)


def _mean2x2(toa: np.ndarray) -> np.ndarray:
    """2×2 block mean of an int16 band (nodata −9999 ignored; a block without data is
    nodata); odd trailing rows/columns are dropped."""
    out = np.empty((toa.shape[0] // 2, toa.shape[1] // 2), np.int16)
    _mean2x2_kernel(toa, out)
    return out


def _stack_terms(brt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kernel's (ncy, ncx, nlev, NT) scalar terms, (ncy, ncx, nlev, nw, NG) gas terms and
    the valid-cell mask of a band's RT grid."""
    tt = brt.t_sun * brt.t_view
    terms = np.ascontiguousarray(np.stack(
        [brt.path_r, brt.path_a, tt, brt.s, brt.tg_ray, brt.t_sun, brt.t_view, brt.tdir_view],
        axis=-1), dtype=np.float32)
    tga = brt.tg_aer if brt.tg_aer.ndim == 4 else brt.tg_aer[..., None]
    tg = brt.tg if brt.tg.ndim == 4 else brt.tg[..., None]
    gas = np.ascontiguousarray(np.stack([tga, tg], axis=-1), dtype=np.float32)
    valid = np.isfinite(tt[..., 0]) & np.isfinite(gas[..., 0, 0, 1])
    terms[~valid] = 0.0
    gas[~valid] = 0.0
    return terms, gas, valid


class _WaterVapourIndex:
    """Per-pixel water vapour (int16 ×1000) kept on the B09 grid; nearest B09 pixel of any
    grid's rows/columns."""

    def __init__(self, scene, w: np.ndarray) -> None:
        self.scene, self.w, self._idx = scene, w, {}

    def index(self, g) -> tuple[np.ndarray, np.ndarray]:
        key = (g.x0, g.y0, g.dx, g.dy, g.nx, g.ny)
        if key not in self._idx:
            r, c = nearest_index(self.scene.grids["VAPOR"], g)
            self._idx[key] = (np.asarray(r, np.int64), np.asarray(c, np.int64))
        return self._idx[key]

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """Water vapour of processing-grid rows r0:r1 (int16 ×1000)."""
        r, c = self.index(self.scene.grid)
        return self.w[r[r0:r1][:, None], c[None, :]]


def _writable_int16(a: np.ndarray) -> bool:
    return isinstance(a, np.ndarray) and a.dtype == np.int16 and a.flags.writeable \
        and a.flags.c_contiguous


@njit(cache=True, parallel=True)
def _apply_flags_kernel(qai, sub, bits):
    """QAI bits from the inversion flags: subzero (bit 0), saturation (bit 1), nodata (bit 2)."""
    nr, nc = qai.shape
    for r in prange(nr):
        for c in range(nc):
            f = sub[r, c]
            if f == 0:
                continue
            q = qai[r, c]
            if f & 1:
                q |= bits[0]
            if f & 2:
                q |= bits[1]
            if f & 4:
                q |= bits[2]
            qai[r, c] = q


def _apply_flags(qai: np.ndarray, sub: np.ndarray) -> bool:
    """Set the QAI subzero / saturation / nodata bits from ``sub``; True if any nodata."""
    bits = np.array([1 << Q.SUBZERO, 1 << Q.SATURATION, 1 << Q.NODATA], np.uint16)
    _apply_flags_kernel(qai, sub, bits)
    return bool(np.any(sub >= 4)) if sub.size else False


def _invert_band(scene, d, g, brt, dem, levels, wv_px, coarse, factor_hook, erase_clouds: bool,
                 rho_b, toa: np.ndarray | None = None, qai: np.ndarray | None = None,
                 out: np.ndarray | None = None, sub: np.ndarray | None = None) -> np.ndarray:
    """BOA (int16) of band ``d`` on its grid ``g``, strip by strip (``toa``/``qai``: TOA and
    QAI already on ``g``, else the scene's band and QAI; ``out``: output array, may be the TOA
    itself; ``sub``: uint8 flags on the processing grid to OR the band's flags into (None:
    no flags); ``rho_b``: None or (background, row index, column index) of ``_background``)."""
    toa = scene.toa[d] if toa is None else toa
    out = np.empty(toa.shape, np.int16) if out is None else out
    terms, gas, valid = _stack_terms(brt)
    wv_nodes = np.atleast_1d(np.asarray(brt.wv, np.float64))
    same = g == scene.grid
    rq, cq = (None, None) if same else nearest_index(scene.grid, g)
    assert Q.NODATA == 0 and Q.CLOUD == 1 and Q.CLOUD_OPAQUE == 2     # bits read by the kernel
    empty_f, empty_i = np.zeros((0, 0), np.float32), np.zeros((0, 0), np.int16)
    empty_u8, empty_ix = np.zeros((0, 0), np.uint8), np.zeros(0, np.int64)
    if wv_px is not None:
        wv = wv_px.w
        wr, wc = wv_px.index(g)
    else:
        wv, wr, wc = empty_i, empty_ix, empty_ix
    if rho_b is not None:
        rb_arr, br, bc, f_self = rho_b
    else:
        rb_arr, br, bc, f_self = empty_i, empty_ix, empty_ix, 0.0
    if sub is None:
        flags, accumulate = empty_u8, False
    elif same:
        flags, accumulate = sub, True
    else:
        flags, accumulate = np.zeros(toa.shape, np.uint8), False

    def rows_of(arr, r0, r1, empty):
        if arr is None:
            return empty
        if same:                                  # a view: no per-block copy
            return arr[r0:r1]
        return arr[rq[r0:r1][:, None], cq[None, :]]

    dem32 = None if dem is None else dem
    if dem32 is not None and dem32.dtype != np.float32:
        dem32 = dem32.astype(np.float32)
    for r0 in range(0, g.ny, ROWS):
        r1 = min(g.ny, r0 + ROWS)
        qb = rows_of(scene.qai, r0, r1, None) if qai is None else qai[r0:r1]
        zb = rows_of(dem32, r0, r1, empty_f)
        fac = factor_hook(d, slice(r0, r1)) if factor_hook is not None else None
        fac = empty_f if fac is None else np.asarray(fac, np.float32)
        fb = flags[r0:r1] if flags.size else flags
        _, i0, wi, _, j0, wj = _weights(coarse, g, r0, r1)
        _invert_kernel(toa[r0:r1], qb, erase_clouds, zb, wv, wr[r0:r1] if wr.size else wr, wc,
                       i0, wi, j0, wj, levels, wv_nodes, terms, gas, valid, rb_arr,
                       br[r0:r1] if br.size else br, bc, np.float32(f_self), fac, out[r0:r1], fb,
                       accumulate)
    if sub is not None and not same:
        # flags back to the processing grid (nearest: the band pixel under each centre)
        rb, cb = nearest_index(g, scene.grid)
        for r0 in range(0, scene.grid.ny, ROWS):
            sub[r0:r0 + ROWS] |= flags[rb[r0:r0 + ROWS][:, None], cb[None, :]]
    return out


def _diffuse_ratio(brt) -> np.ndarray:
    """f = tss/tsd (diffuse/direct downward transmittance on a horizontal surface) per cell ×
    level (float32, NaN on invalid cells), spec 02 §6.2."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((brt.t_sun - brt.tdir_sun) / brt.tdir_sun).astype(np.float32)


def _topographic_hook(scene, rts, dem, levels, zmean, coarse, factor_hook):
    """DO_TOPO (spec 02 §6): the empirical C factor once per scene from TOA SWIR2
    (``topography.estimate_c_factor``), then a factor hook returning A·brdf per band and row
    block, A = ``topography.topographic_factor`` with the per-pixel μs and the band's C
    C_b = C + h0·μs·(f_b − f_SWIR2) (f = tss/tsd per pixel from the RT grid, elevation-
    dependent): the Lambertian C of the band plus the SWIR2 excess over its Lambertian C.

    Returns ``factor_hook`` unchanged when the scene has no terrain (flat, no DEM)."""
    from ..topography import estimate_c_factor, topographic_factor
    topo = scene.topography
    if topo is None or getattr(topo, "flat", False) or "SWIR2" not in rts or not scene.has("SWIR1"):
        log.warning("DO_TOPO: no DEM / SWIR bands: topographic correction skipped")
        return factor_hook, {"skipped": "no DEM or no SWIR1/SWIR2"}
    sw2 = rts["SWIR2"]
    f_sw2 = _diffuse_ratio(sw2)
    lev0 = int(np.argmin(np.abs(levels - zmean)))
    ok = np.isfinite(f_sw2[..., lev0])
    # scene values for the C regression (it runs over 3 km neighbourhoods; per pixel and band
    # C_b = C + h0·μs·(f_b − f_SWIR2) when applied)
    tga = sw2.tg_aer[..., lev0, 0] if sw2.tg_aer.ndim == 4 else sw2.tg_aer[..., lev0]
    rho_p = float(np.mean((sw2.tg_ray[..., lev0] * sw2.path_r[..., lev0]
                           + tga * sw2.path_a[..., lev0])[ok]))
    mu_scene = float(np.mean(np.cos(np.radians(np.asarray(scene.geometry.sun_zenith, float)))[ok]))
    toa2 = scene.band("SWIR2")
    # the environment's contribution T↓·t↑dif·ρenv does not depend on cos i: it belongs to the
    # intercept floor with ρp, else it is read as diffuse sky light and C comes out too large
    # (in SWIR2 it is as large as the diffuse term); ρenv ≈ the scene's mean reflectance
    sub = (slice(None, None, 4), slice(None, None, 4))
    q4 = scene.qai[sub]
    t4 = toa2[sub]
    good = ((q4 & 1) == 0) & (Q.get_field(q4, Q.CLOUD) == 0) & (t4 != NODATA)
    if good.any():
        t_up = float(np.mean(sw2.t_view[..., lev0][ok]))
        t_dir = float(np.mean(sw2.tdir_view[..., lev0][ok]))
        mean_toa = float(np.mean(t4[good], dtype=np.float64)) / 10000.0
        rho_p += max(mean_toa - rho_p, 0.0) * (t_up - t_dir) / t_up
    c_factor = estimate_c_factor(topo, toa2, scene.qai, rho_p,
                                 float(np.mean(f_sw2[..., lev0][ok])), mu_scene,
                                 toa_swir1=scene.band("SWIR1"))
    del toa2
    f_scene = float(np.mean(f_sw2[..., lev0][ok]))
    h0 = (math.pi + 2.0 * math.acos(mu_scene)) / (2.0 * math.pi)
    sloped = (topo.slope[sub] > 0.035) & good
    c_med = float(np.median(c_factor[sub][sloped])) if sloped.any() else float("nan")
    summary = {"c_theo_swir2": round(h0 * f_scene * mu_scene, 5), "c_median_sloped": round(c_med, 5),
               "f_swir2": round(f_scene, 5), "intercept_floor": round(rho_p, 5)}
    ratios = {d: _diffuse_ratio(b) for d, b in rts.items()}
    pgrid = scene.grid
    index: dict = {}
    stacked: dict = {}

    def hook(domain: str, rows: slice):
        g = scene.grids.get(domain, pgrid)
        r0, r1, _ = rows.indices(g.ny)
        if g == pgrid:
            p0, p1, sub = r0, r1, None
        else:
            if domain not in index:
                index[domain] = nearest_index(pgrid, g)
            rq, cq = index[domain]
            p0, p1 = int(rq[r0:r1].min()), int(rq[r0:r1].max()) + 1
            sub = (rq[r0:r1] - p0, cq)
        prow = slice(p0, p1)
        if domain not in stacked:
            fields = np.ascontiguousarray(np.stack([ratios[domain], f_sw2], axis=-1))
            valid = np.isfinite(fields[..., 0, 0]) & np.isfinite(fields[..., 0, 1])
            fields[~valid] = 0.0
            stacked[domain] = (fields, valid)
        fields, valid = stacked[domain]
        zb = _z_block(dem, np.arange(p0, p1), np.arange(pgrid.nx))
        _, i0, wi, _, j0, wj = _weights(coarse, pgrid, p0, p1)
        fpx = np.empty((p1 - p0, pgrid.nx, 2), np.float32)
        _interp_fields_kernel(fields, valid, zb, levels, i0, wi, j0, wj, fpx)
        mu = scene.geometry.cos_sun_zenith(pgrid, prow)
        # C of the band: C_b = C + C_theo,b − C_theo,SWIR2 = C + h0·μs·(f_b − f_SWIR2): the
        # Lambertian (theoretical) C of the band plus the empirical excess of SWIR2, taken as
        # spectrally flat (docs/atmosphere.md); passed to topographic_factor (which uses
        # C·f_band/f_swir2) as the ratio C_b/C
        c_rows = c_factor[prow]
        h0 = (np.float32(math.pi) + np.float32(2.0) * np.arccos(np.clip(mu, -1.0, 1.0))) \
            / np.float32(2.0 * math.pi)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(c_rows > 0, (c_rows + h0 * mu * (fpx[..., 0] - fpx[..., 1])) / c_rows,
                             np.float32(1.0)).astype(np.float32)
        a = topographic_factor(topo, c_factor, domain, mu, ratio, np.float32(1.0), prow)
        a = np.where(np.isfinite(a), a, np.float32(1.0)).astype(np.float32)
        if sub is not None:
            a = a[sub[0][:, None], sub[1][None, :]]
        if factor_hook is not None:
            b = factor_hook(domain, rows)
            if b is not None:
                a = a * np.asarray(b, np.float32)
        return a

    return hook, summary


def _z_block(dem, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    if dem is None:
        return np.zeros((0, 0), np.float32)
    z = np.asarray(dem[rows[:, None], cols[None, :]], np.float32) / 1000.0
    return np.where(np.isfinite(z), z, 0.0).astype(np.float32)


def _level_index(scene, dem, levels, g) -> np.ndarray:
    """Nearest elevation level per pixel of grid ``g``."""
    if dem is None or levels.size == 1:
        return np.zeros(g.shape, np.int64)
    rq, cq = nearest_index(scene.grid, g)
    z = _z_block(dem, rq, cq)
    step = levels[1] - levels[0]
    return np.clip(np.rint((z - levels[0]) / step), 0, levels.size - 1).astype(np.int64)


def _cell_index(coarse, g) -> tuple[np.ndarray, np.ndarray]:
    """Nearest coarse cell (row index per row, column index per column) of grid ``g``."""
    own_i, _, _, own_j, _, _ = _weights(coarse, g, 0, g.ny)
    return own_i.astype(np.int64), own_j.astype(np.int64)
