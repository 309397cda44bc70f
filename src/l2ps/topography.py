"""Terrain: slope, aspect, illumination, sky view, and the topographic C-correction.

Spec 01 §4 (DEM-derived inputs, QAI bits) and spec 02 §5–§6; the reasoning and the choices
are in docs/terrain.md, the differences to FORCE in docs/deviations.d/terrain.md.

- ``compile_topography(scene, params)``: DEM on the processing grid (``l2ps.aux.dem``), Horn
  slope/aspect (§4.4), illumination cos i per pixel from the bilinear per-pixel sun angles,
  elevation statistics; sets the QAI nodata (DEM nodata in the 3×3 window), slope (> 2°) and
  illumination bits (always, also without a DEM: flat → cos i = cos θs).
- ``estimate_c_factor``: the empirical C per pixel from TOA SWIR2 against cos i over a sparse
  neighbourhood of similar land cover (spec 02 §6.2), never below the theoretical C.
- ``topographic_factor``: the factor A of ρ_BOA = A·brdf·ρ (spec 02 §1.9, §6.3), with C
  propagated spectrally by the diffuse-to-direct ratio f of each band.

Model (Lambertian surface, isotropic sky; f = E_diffuse/E_direct on a horizontal surface,
μs = cos θs, V the sky-view factor): a tilted pixel sees ρ·(cos i/μs + f·V)/(1 + f) of what a
horizontal one would, so the exact correction is A = μs(1 + f)/(cos i + V·f·μs). In FORCE's
notation A = (μs + C/h0)/(cos i + V·C/h0) with h0 = (π + 2θs)/(2π) and C_theo = h0·f·μs, which
is the same formula; the empirical C (SWIR2) replaces C_theo where the surface scatters more
diffusely than Lambertian (C ≥ C_theo), and band b uses C·f_b/f_SWIR2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit, prange

from . import qai as Q
from .aux.dem import load_dem
from .errors import AuxiliaryError
from .grid import Grid

SLOPE_FLAG_DEG = 2.0                    # QAI slope bit: slope > 2° (spec 01 §4.4)
COS_80 = 0.1736482                      # illumination bit thresholds (spec 01 §4.6)
COS_55 = 0.5735764
C_MIN_SLOPE = 0.035                     # rad (FORCE: 350 rad·10⁴): empirical C only above
C_SEARCH_DISTANCE = 3000.0              # m, largest neighbourhood offset (spec 02 §6.2)
C_SEARCH_MIN = 100.0                    # m, offsets shrink by √2 while above this
NDSWIR_TOLERANCE = 0.025                # "same land cover" (spec 02 §6.2)
C_MAX = 6.5535                          # clamp (FORCE's uint16 ×10000 limit)
DEM_MIN_KM, DEM_MAX_KM = -0.5, 9.0      # plausible elevation range (spec 02 §5)
NO_CORRECTION_DOMAINS = frozenset({"TEMP"})
_BLOCK_ROWS = 512


# --------------------------------------------------------------------------- the result
@dataclass(eq=False)
class Topography:
    """Terrain on the processing grid ``grid`` (float32 arrays of ``grid.shape``).

    ``dem``: elevation in m (NaN where there is no DEM; those pixels are QAI nodata).
    ``slope``: rad. ``aspect``: rad clockwise from north, the direction the slope faces
    (0 where the slope is 0). ``cos_i``: cosine of the local solar incidence angle from the
    per-pixel sun angles (NaN where the DEM window has nodata). ``dem_min_km``,
    ``dem_max_km``, ``dem_mean_km``: statistics over the valid pixels (true min/max; the
    elevation bins of spec 02 §5 use max + 1 m, see ``elevation_bin``). ``coverage``: share
    of the image's valid pixels that had a DEM value. ``source``: the DEM file (None: flat).

    Flat terrain (no DEM) allocates nothing of the grid's size: ``dem``, ``slope`` and
    ``aspect`` are read-only broadcast zeros, and ``cos_i`` (= cos θs per pixel) is
    computed from ``geometry`` on first access (row block by row block) and then kept.
    """
    grid: Grid
    dem: np.ndarray
    slope: np.ndarray
    aspect: np.ndarray
    _cos_i: np.ndarray | None
    dem_min_km: float
    dem_max_km: float
    dem_mean_km: float
    source: Path | None = None
    coverage: float = 1.0
    geometry: object | None = None      # for the lazy cos i of flat terrain

    @property
    def cos_i(self) -> np.ndarray:
        """cos i per pixel (float32, ``grid.shape``); see the class docstring."""
        if self._cos_i is None:
            self._cos_i = _flat_cos_i(self.geometry, self.grid)
        return self._cos_i

    @property
    def flat(self) -> bool:
        """No DEM was given (0 m everywhere)."""
        return self.source is None

    def sky_view_rows(self, rows: slice | None = None) -> np.ndarray:
        """Sky-view factor V = (1 + cos slope)/2 (float32) of rows ``rows`` — the share of
        the isotropic sky seen by a tilted plane (FORCE: 1 − slope/π; docs/terrain.md)."""
        s = self.slope if rows is None else self.slope[rows]
        return ((np.float32(1) + np.cos(s)) * np.float32(0.5)).astype(np.float32)

    @property
    def sky_view(self) -> np.ndarray:
        """Sky-view factor of every pixel (computed on access from ``slope``)."""
        return self.sky_view_rows(None)

    # ------------------------------------------------------------- elevation bins (§5)
    @property
    def bin_step_km(self) -> float:
        """Width of the 255 elevation bins: (max + 0.001 − min)/255 km (spec 02 §5)."""
        return (self.dem_max_km + 0.001 - self.dem_min_km) / 255.0

    def elevation_bin(self, rows: slice | None = None) -> np.ndarray:
        """Elevation bin 0…254 (uint8) of each pixel of rows ``rows``: floor((z − min)/step)
        with z in km (spec 02 §5); pixels without DEM get bin 0."""
        z = self.dem if rows is None else self.dem[rows]
        b = np.floor((z * np.float32(0.001) - np.float32(self.dem_min_km))
                     / np.float32(self.bin_step_km))
        b = np.where(np.isfinite(b), np.clip(b, 0, 254), 0)
        return b.astype(np.uint8)

    def bin_centre_km(self, bins) -> np.ndarray:
        """Elevation (km) used by the radiative transfer for bin(s) ``bins``:
        min + step/2 + bin·step."""
        step = self.bin_step_km
        return self.dem_min_km + step / 2.0 + np.asarray(bins, dtype=np.float64) * step


# --------------------------------------------------------------------------- Horn (§4.4)
@njit(cache=True, parallel=True)
def _horn_kernel(z, dx, dy, slope, aspect, off):
    """Horn (1981) slope/aspect of the interior pixels; off = any NaN in the 3×3 window."""
    ny, nx = z.shape
    for i in prange(1, ny - 1):
        for j in range(1, nx - 1):
            a = z[i - 1, j - 1]
            b = z[i - 1, j]
            c = z[i - 1, j + 1]
            d = z[i, j - 1]
            e = z[i, j]
            f = z[i, j + 1]
            g = z[i + 1, j - 1]
            h = z[i + 1, j]
            k = z[i + 1, j + 1]
            if (math.isnan(a) or math.isnan(b) or math.isnan(c) or math.isnan(d)
                    or math.isnan(e) or math.isnan(f) or math.isnan(g) or math.isnan(h)
                    or math.isnan(k)):
                off[i, j] = 1
                slope[i, j] = 0.0
                aspect[i, j] = 0.0
                continue
            off[i, j] = 0
            dzdx = ((c + 2.0 * f + k) - (a + 2.0 * d + g)) / (8.0 * dx)
            dzdy = ((g + 2.0 * h + k) - (a + 2.0 * b + c)) / (8.0 * dy)   # south − north
            s = math.atan(math.sqrt(dzdx * dzdx + dzdy * dzdy))
            slope[i, j] = s
            if s > 0.0:
                asp = math.degrees(math.atan2(dzdy, -dzdx))
                if asp < 0.0:
                    asp = 90.0 - asp
                elif asp > 90.0:
                    asp = 450.0 - asp
                else:
                    asp = 90.0 - asp
                aspect[i, j] = math.radians(asp)
            else:
                aspect[i, j] = 0.0


def horn_slope_aspect(dem: np.ndarray, dx: float, dy: float):
    """Slope and aspect (float32 rad) and the off mask (bool) of a DEM (float32 m, NaN =
    nodata) with pixel sizes ``dx``/``dy`` in m (spec 01 §4.4).

    Interior pixels: Horn's 3×3 gradient; any nodata in the window → off. Aspect: clockwise
    from north, the direction the slope faces; 0 where the slope is 0. Borders, in this
    order: left column, right column, top row, bottom row copy their inward neighbour
    (slope, aspect and off). Grids with fewer than 3 rows or columns are flat (off where the
    DEM is nodata).
    """
    ny, nx = dem.shape
    slope = np.zeros(dem.shape, np.float32)
    aspect = np.zeros(dem.shape, np.float32)
    off = np.zeros(dem.shape, np.uint8)
    if ny < 3 or nx < 3:
        return slope, aspect, ~np.isfinite(dem)
    _horn_kernel(dem, float(dx), float(dy), slope, aspect, off)
    for arr in (slope, aspect, off):
        arr[:, 0] = arr[:, 1]
        arr[:, -1] = arr[:, -2]
        arr[0, :] = arr[1, :]
        arr[-1, :] = arr[-2, :]
    return slope, aspect, off.view(bool)


# --------------------------------------------------------------------------- illumination
@njit(cache=True, inline="always")
def _with_illumination(q, ci, cos80, cos55):
    """``q`` with the QAI illumination field (bits 11-12) of cos i: < 0 → 3 (shadow),
    < cos 80° → 2, < cos 55° → 1, else 0."""
    if ci < 0.0:
        ill = 3
    elif ci < cos80:
        ill = 2
    elif ci < cos55:
        ill = 1
    else:
        ill = 0
    return (q & ~(3 << 11)) | (ill << 11)


@njit(cache=True, parallel=True)
def _illumination_kernel(slope, aspect, off, sun_z, sun_a, qai, cos_i, cos80, cos55):
    """cos i per pixel (NaN where off) and QAI illumination bits 11–12 for valid pixels."""
    nr, nc = slope.shape
    for r in prange(nr):
        for c in range(nc):
            if off[r, c] or math.isnan(sun_z[r, c]):
                cos_i[r, c] = np.nan
                continue
            tz = math.radians(sun_z[r, c])
            s = slope[r, c]
            if s == 0.0:
                ci = math.cos(tz)
            else:
                ci = (math.cos(tz) * math.cos(s)
                      + math.sin(tz) * math.sin(s)
                      * math.cos(math.radians(sun_a[r, c]) - aspect[r, c]))
            cos_i[r, c] = ci
            q = qai[r, c]
            if q & 1:
                continue
            qai[r, c] = _with_illumination(q, ci, cos80, cos55)


def illumination(slope: np.ndarray, aspect: np.ndarray, off: np.ndarray, geometry,
                 grid: Grid, qai: np.ndarray | None = None,
                 block_rows: int = _BLOCK_ROWS) -> np.ndarray:
    """cos i = cos θs·cos s + sin θs·sin s·cos(φs − aspect) (float32; cos θs where the slope
    is 0; NaN where ``off``) with the per-pixel bilinear sun zenith/azimuth of ``geometry``
    (spec 01 §4.6, spec 02 §6.1). If ``qai`` is given, its illumination bits are set for
    valid pixels: cos i < 0 → 3 (shadow), < cos 80° → 2, < cos 55° → 1, else 0."""
    cos_i = np.empty(slope.shape, np.float32)
    q = qai if qai is not None else np.zeros(slope.shape, Q.QAI_DTYPE)
    offu = off.view(np.uint8) if off.dtype == bool else off
    for r0 in range(0, grid.ny, block_rows):
        rows = slice(r0, min(r0 + block_rows, grid.ny))
        sz = geometry.sun_zenith_at(grid, rows)
        sa = geometry.sun_azimuth_at(grid, rows)
        _illumination_kernel(slope[rows], aspect[rows], offu[rows], sz, sa, q[rows],
                             cos_i[rows], COS_80, COS_55)
    assert Q.ILLUMINATION == 11
    return cos_i


@njit(cache=True, parallel=True)
def _flat_kernel(sun_z, qai, cos_i, store, set_bits, cos80, cos55):
    """Flat terrain (slope 0): cos i = cos θs (same arithmetic as ``_illumination_kernel``
    for a zero slope); stored if ``store``; QAI illumination bits for valid pixels if
    ``set_bits``."""
    nr, nc = sun_z.shape
    for r in prange(nr):
        for c in range(nc):
            if math.isnan(sun_z[r, c]):
                if store:
                    cos_i[r, c] = np.nan
                continue
            ci = math.cos(math.radians(sun_z[r, c]))
            if store:
                cos_i[r, c] = ci
            if not set_bits:
                continue
            q = qai[r, c]
            if q & 1:
                continue
            qai[r, c] = _with_illumination(q, ci, cos80, cos55)


def _flat_pass(geometry, grid: Grid, qai: np.ndarray | None, store: bool,
               block_rows: int = _BLOCK_ROWS) -> np.ndarray | None:
    """cos i = cos θs of flat terrain (float32 on ``grid`` if ``store``) and/or the QAI
    illumination bits (if ``qai`` is given), row block by row block."""
    cos_i = np.empty(grid.shape, np.float32) if store else np.zeros((1, 1), np.float32)
    q = qai if qai is not None else np.zeros((1, 1), Q.QAI_DTYPE)
    for r0 in range(0, grid.ny, block_rows):
        rows = slice(r0, min(r0 + block_rows, grid.ny))
        sz = geometry.sun_zenith_at(grid, rows)
        _flat_kernel(sz, q[rows] if qai is not None else q,
                     cos_i[rows] if store else cos_i, store, qai is not None, COS_80, COS_55)
    assert Q.ILLUMINATION == 11
    return cos_i if store else None


def _flat_cos_i(geometry, grid: Grid) -> np.ndarray:
    if geometry is None:
        raise ValueError("flat Topography without geometry: cos i cannot be computed")
    return _flat_pass(geometry, grid, None, True)


def flat_topography(grid: Grid, geometry, qai: np.ndarray) -> Topography:
    """Flat terrain at 0 m without a DEM (spec 01 §4.1): the QAI illumination bits from
    cos θs per pixel (in place on ``qai``; no slope bit, no DEM nodata), statistics 0 km,
    and no array of the grid's size (see :class:`Topography`). Same bits and values as
    ``topography_from_dem`` on a DEM of zeros."""
    if qai.shape != grid.shape:
        raise ValueError(f"QAI {qai.shape} does not match the grid {grid.shape}")
    n_valid = Q.count_valid(qai)
    _flat_pass(geometry, grid, qai, False)
    zero = np.broadcast_to(np.float32(0.0), grid.shape)
    return Topography(grid, zero, zero, zero, None, 0.0, 0.0, 0.0, None,
                      1.0 if n_valid else 0.0, geometry)


# --------------------------------------------------------------------------- compile
def topography_from_dem(dem: np.ndarray, grid: Grid, geometry, qai: np.ndarray,
                        source: Path | None = None) -> Topography:
    """Slope, aspect, cos i and statistics of ``dem`` (float32 m on ``grid``, NaN = nodata,
    already ocean-filled and smoothed) and the QAI bits, in place on ``qai`` (uint16 on
    ``grid``): nodata where the 3×3 DEM window has nodata (borders: as their inward
    neighbour), slope bit where slope > 2°, illumination bits (spec 01 §4.4–§4.6).

    Raises ``AuxiliaryError`` if no valid image pixel has a DEM value, or if the elevations
    leave −0.5…9 km (spec 02 §5).
    """
    if dem.shape != grid.shape or qai.shape != grid.shape:
        raise ValueError(f"DEM {dem.shape} / QAI {qai.shape} do not match the grid "
                         f"{grid.shape}")
    name = str(source) if source is not None else "flat DEM"
    valid0 = Q.is_valid(qai)
    n_valid0 = int(np.count_nonzero(valid0))
    n_cov = int(np.count_nonzero(valid0 & np.isfinite(dem)))
    if n_valid0 and n_cov == 0:
        raise AuxiliaryError(f"FILE_DEM {name}: no valid image pixel has an elevation (the DEM "
                             f"covers only nodata parts of the image {grid!r})")
    coverage = n_cov / n_valid0 if n_valid0 else 0.0
    slope, aspect, off = horn_slope_aspect(dem, grid.dx, grid.dy)
    Q.set_flag(qai, Q.NODATA, off)
    valid = ~off & Q.is_valid(qai)
    Q.set_flag(qai, Q.SLOPE, valid & (slope > np.float32(math.radians(SLOPE_FLAG_DEG))))
    cos_i = illumination(slope, aspect, off, geometry, grid, qai)
    z = dem[valid]
    if z.size:
        zmin, zmax = float(z.min()) / 1000.0, float(z.max()) / 1000.0
        zmean = float(z.astype(np.float64).mean()) / 1000.0
    else:
        zmin = zmax = zmean = 0.0
    del z
    if zmin < DEM_MIN_KM or zmax > DEM_MAX_KM:
        raise AuxiliaryError(f"FILE_DEM {name}: elevations {zmin * 1000:.0f} … "
                             f"{zmax * 1000:.0f} m inside the image; expected metres within "
                             f"{DEM_MIN_KM * 1000:.0f} … {DEM_MAX_KM * 1000:.0f} (wrong unit or "
                             f"DEM_NODATA?)")
    dem = np.where(off, np.float32(np.nan), dem).astype(np.float32, copy=False)
    return Topography(grid, dem, slope, aspect, cos_i, zmin, zmax, zmean, source, coverage,
                      geometry)


def compile_topography(scene, params) -> Topography:
    """The terrain stage (spec 01 §4, spec 02 §5–§6.1): call right after TOA, before clouds,
    as ``scene.topography = compile_topography(scene, params)``.

    Reads FILE_DEM (or the USE_DEM_DATABASE file of ``scene.level1``'s WRS-2/MGRS id) onto
    ``scene.grid`` with DEM_RESAMPLING, fills oceans, smooths below 30 m, computes slope,
    aspect and cos i, and sets the QAI nodata, slope and illumination bits of ``scene.qai``
    in place. Without FILE_DEM the terrain is flat at 0 m (cos i = cos θs).
    """
    level1 = scene.level1
    if params.file_dem is None and not bool(getattr(params, "use_dem_database", False)):
        return flat_topography(scene.grid, scene.geometry, scene.qai)
    dem, path = load_dem(params, scene.grid, getattr(level1, "refsys_type", ""),
                         getattr(level1, "refsys_id", ""))
    return topography_from_dem(dem, scene.grid, scene.geometry, scene.qai, source=path)


# --------------------------------------------------------------------------- C factor (§6.2)
def c_offsets(pixel_size: float) -> np.ndarray:
    """Sparse neighbourhood offsets (pixels) along one axis (spec 02 §6.2): K0 =
    int(3000 m/size), then int(K/√2) while the previous K > 100 m/size, plus 0 and the
    negatives; e.g. 30 m → ±{100, 70, 49, 34, 24, 16, 11, 7, 4, 2}, 0."""
    ks = []
    k = int(C_SEARCH_DISTANCE / pixel_size)
    ks.append(k)
    while k > C_SEARCH_MIN / pixel_size:
        k = int(k / math.sqrt(2.0))
        ks.append(k)
    vals = sorted({0, *ks, *(-v for v in ks)})
    return np.asarray(vals, dtype=np.int64)


_ND_NONE = -32768                       # sample not eligible (int16 NDSWIR ×10000)


@njit(cache=True, parallel=True)
def _ndswir_kernel(cos_i, slope, qai, swir1, swir2, scale, toa_nodata, min_slope, nd, cs):
    """TOA NDSWIR ×10000 (int16, rounded) of pixels eligible as C samples (valid, not
    cloud or cloud shadow, cos i ≥ 0, slope ≥ min_slope, both TOA bands valid), else
    _ND_NONE; and cos(slope) ×65535 (uint16) for the samples' mean sky view."""
    ny, nx = cos_i.shape
    exclude = 1 | (3 << 1) | (1 << 3)          # nodata, cloud (any state), cloud shadow
    for i in prange(ny):
        for j in range(nx):
            x = cos_i[i, j]
            t1 = swir1[i, j]
            t2 = swir2[i, j]
            if ((qai[i, j] & exclude) or math.isnan(x) or x < 0.0 or slope[i, j] < min_slope
                    or t1 == toa_nodata or t2 == toa_nodata or math.isnan(t1)
                    or math.isnan(t2)):
                nd[i, j] = _ND_NONE
                continue
            b1 = t1 * scale
            b2 = t2 * scale
            v = (b1 - b2) / (b1 + b2) if (b1 + b2) != 0.0 else 0.0
            nd[i, j] = int(round(v * 10000.0))
            cs[i, j] = int(round(math.cos(slope[i, j]) * 65535.0))


@njit(cache=True, parallel=True)
def _c_kernel(cos_i, slope, qai, swir1, swir2, scale, toa_nodata, nd, cs, rho_p, f, mu,
              off_r, off_c, min_slope, tol, c_max, out):
    """Per row: centre eligibility, then every (row offset, column offset) pair streamed
    along the row into per-pixel float64 sums (n, Σx, Σy, Σx², Σxy, Σcos s) for the OLS;
    samples are visited in the same order for every pixel, so results do not depend on
    the thread count."""
    ny, nx = cos_i.shape
    tolq = int(round(tol * 10000.0))
    for i in prange(ny):
        ok = np.zeros(nx, np.bool_)
        nd0 = np.zeros(nx, np.int64)
        cnt = np.zeros(nx, np.int64)
        sx = np.zeros(nx, np.float64)
        sy = np.zeros(nx, np.float64)
        sxx = np.zeros(nx, np.float64)
        sxy = np.zeros(nx, np.float64)
        vsum = np.zeros(nx, np.float64)
        any_ok = False
        for j in range(nx):
            ci = cos_i[i, j]
            s1 = swir1[i, j]
            s2 = swir2[i, j]
            if ((qai[i, j] & 1) == 0 and not math.isnan(ci) and ci >= 0.0
                    and slope[i, j] > min_slope and s1 != toa_nodata and s2 != toa_nodata
                    and not math.isnan(s1) and not math.isnan(s2)):
                a1 = s1 * scale
                a2 = s2 * scale
                v = (a1 - a2) / (a1 + a2) if (a1 + a2) != 0.0 else 0.0
                nd0[j] = int(round(v * 10000.0))
                ok[j] = True
                any_ok = True
        if any_ok:
            for ro in off_r:
                ii = i + ro
                if ii < 0 or ii >= ny:
                    continue
                for co in off_c:
                    j0 = max(0, -co)
                    j1 = min(nx, nx - co)
                    for j in range(j0, j1):
                        if not ok[j]:
                            continue
                        jj = j + co
                        q = nd[ii, jj]
                        if q == _ND_NONE or abs(q - nd0[j]) > tolq:
                            continue
                        x = cos_i[ii, jj]
                        yv = swir2[ii, jj] * scale
                        cnt[j] += 1
                        sx[j] += x
                        sy[j] += yv
                        sxx[j] += x * x
                        sxy[j] += x * yv
                        vsum[j] += cs[ii, jj]
        for j in range(nx):
            ci = cos_i[i, j]
            if (qai[i, j] & 1) or math.isnan(ci) or ci < 0.0:
                out[i, j] = 0.0
                continue
            m_s = mu[i, j]
            ts = math.acos(min(max(m_s, -1.0), 1.0))
            h0 = (math.pi + 2.0 * ts) / (2.0 * math.pi)
            c_theo = h0 * f[i, j] * m_s
            cf = -1.0
            n = cnt[j]
            m2x = sxx[j] - sx[j] * sx[j] / n if n > 0 else 0.0
            if ok[j] and n > 2 and m2x > 1e-12 * n:
                mx = sx[j] / n
                my = sy[j] / n
                gain = (sxy[j] - sx[j] * sy[j] / n) / m2x
                offset = my - gain * mx
                rp = rho_p[i, j]
                if offset < rp and mx > 0.0:
                    offset = rp
                    gain = (my - offset) / mx
                diffuse = offset - rp              # surface part of the intercept
                if gain > 0.0 and diffuse > 0.0:
                    v_mean = 0.5 * (1.0 + vsum[j] / (65535.0 * n))
                    cf = h0 * diffuse / (gain * v_mean)
                else:
                    cf = 0.0
            if cf < c_theo:
                cf = c_theo
            if cf > c_max:
                cf = c_max
            out[i, j] = cf


@njit(cache=True, parallel=True)
def _mean3_kernel(c, cos_i, qai, out):
    ny, nx = c.shape
    for i in prange(ny):
        for j in range(nx):
            if c[i, j] <= 0.0:
                out[i, j] = c[i, j]
                continue
            acc = 0.0
            n = 0
            for ii in range(max(i - 1, 0), min(i + 2, ny)):
                for jj in range(max(j - 1, 0), min(j + 2, nx)):
                    x = cos_i[ii, jj]
                    if (qai[ii, jj] & 1) or math.isnan(x) or x < 0.0 or c[ii, jj] <= 0.0:
                        continue
                    acc += c[ii, jj]
                    n += 1
            out[i, j] = acc / n if n > 0 else c[i, j]


def _field(value, shape, name: str) -> np.ndarray:
    """A scalar or an array of ``shape`` as a float32 2-D array (broadcast, no copy)."""
    a = np.asarray(value, dtype=np.float32)
    try:
        return np.broadcast_to(a, shape)
    except ValueError:
        raise ValueError(f"{name}: shape {a.shape} does not broadcast to {shape}") from None


def _toa_scale(arr: np.ndarray) -> tuple[float, float]:
    """(scale to reflectance, nodata value) of a TOA band: int16 ×10000 with −9999, or
    float reflectance with NaN."""
    if np.issubdtype(arr.dtype, np.integer):
        return 1e-4, -9999.0
    return 1.0, float("nan")


def estimate_c_factor(topo: Topography, toa_swir2: np.ndarray, qai: np.ndarray,
                      path_reflectance_swir2, f_swir2, mu_s, *,
                      toa_swir1: np.ndarray) -> np.ndarray:
    """Empirical C factor per pixel (float32 on ``topo.grid``; 0 where not corrected:
    nodata or cos i < 0), spec 02 §6.2.

    ``toa_swir2``/``toa_swir1``: TOA SWIR2/SWIR1 on the processing grid (int16 ×10000 with
    nodata −9999, or float reflectance with NaN). ``qai``: the QAI on the grid (nodata,
    cloud and cloud-shadow pixels are not sampled). ``path_reflectance_swir2`` (ρp), ``f_swir2``
    (tss/tsd of SWIR2) and ``mu_s`` (cos θs): scalars or float arrays of the grid's shape.

    Per pixel: C_theo = h0·f·μs with h0 = (π + 2θs)/(2π). On slopes > 0.035 rad, an OLS of
    TOA SWIR2 on cos i over the sparse neighbourhood (``c_offsets``) of valid, sunlit
    (cos i ≥ 0), sloped samples whose TOA NDSWIR is within ±0.025 of the centre's; with more
    than 2 samples the intercept b (at least ρp, the gain refitted then) gives
    C = h0·(b − ρp)/(m·V̄) — the diffuse-to-direct term of the surface in the units of
    C_theo (V̄ = mean sky view of the samples). C := max(C, C_theo), ≤ 6.5535; then the 3×3
    mean over valid sunlit neighbours.
    """
    grid = topo.grid
    shape = grid.shape
    for name, arr in (("toa_swir2", toa_swir2), ("toa_swir1", toa_swir1), ("qai", qai)):
        if arr.shape != shape:
            raise ValueError(f"{name}: shape {arr.shape} != processing grid {shape}")
    if toa_swir1.dtype != toa_swir2.dtype:
        toa_swir1 = toa_swir1.astype(toa_swir2.dtype)
    scale, nodata = _toa_scale(toa_swir2)
    rho_p = _field(path_reflectance_swir2, shape, "path_reflectance_swir2")
    f = _field(f_swir2, shape, "f_swir2")
    mu = _field(mu_s, shape, "mu_s")
    off_r = c_offsets(grid.dy)
    off_c = c_offsets(grid.dx)
    nd = np.empty(shape, np.int16)
    cs = np.zeros(shape, np.uint16)
    _ndswir_kernel(topo.cos_i, topo.slope, qai, toa_swir1, toa_swir2, scale, nodata,
                   C_MIN_SLOPE, nd, cs)
    c = np.empty(shape, np.float32)
    _c_kernel(topo.cos_i, topo.slope, qai, toa_swir1, toa_swir2, scale, nodata, nd, cs, rho_p,
              f, mu, off_r, off_c, C_MIN_SLOPE, NDSWIR_TOLERANCE, C_MAX, c)
    del nd, cs
    out = np.empty(shape, np.float32)
    _mean3_kernel(c, topo.cos_i, qai, out)
    return out


# --------------------------------------------------------------------------- factor (§6.3)
@njit(cache=True, parallel=True)
def _factor_kernel(cos_i, slope, c, use_c, mu, f_band, f_sw2, out):
    nr, nc = cos_i.shape
    for r in prange(nr):
        for k in range(nc):
            ci = cos_i[r, k]
            s = slope[r, k]
            if s == 0.0 or math.isnan(ci) or ci <= 0.0:
                out[r, k] = 1.0
                continue
            m_s = mu[r, k]
            fb = f_band[r, k]
            if use_c:
                ts = math.acos(min(max(m_s, -1.0), 1.0))
                h0 = (math.pi + 2.0 * ts) / (2.0 * math.pi)
                f0 = f_sw2[r, k]
                ratio = fb / f0 if f0 > 0.0 else 1.0
                ceff = c[r, k] * ratio / h0
            else:
                ceff = fb * m_s                  # C_theo/h0 of this band
            v = 0.5 * (1.0 + math.cos(s))
            a = (m_s + ceff) / (ci + v * ceff)
            out[r, k] = a if a > 0.0 else 1.0


def topographic_factor(topo: Topography, c_factor: np.ndarray | None, domain: str, mu_s,
                       f_band, f_swir2, rows: slice | None = None) -> np.ndarray:
    """Topographic factor A (float32) of rows ``rows`` of the processing grid, to multiply
    onto the surface reflectance of band ``domain`` (ρ_BOA = A·brdf·ρ, spec 02 §1.9, §6.3).

    ``c_factor``: from ``estimate_c_factor`` (full grid) or None for the theoretical C of
    each band. ``mu_s`` (cos θs), ``f_band`` (tss/tsd of this band) and ``f_swir2``
    (tss/tsd of SWIR2): scalars or float arrays of the rows' shape.

    A = (μs + C'/h0)/(cos i + V·C'/h0) with C' = C·f_band/f_SWIR2 (the SWIR2 C propagated
    spectrally; FORCE applies the SWIR2 C to every band) and V = (1 + cos s)/2. A = 1 where
    the slope is 0, in shadow (cos i ≤ 0), on nodata, and for TEMP.
    """
    grid = topo.grid
    start, stop, step = (rows or slice(None)).indices(grid.ny)
    if step != 1:
        raise ValueError("rows must be a contiguous slice")
    shape = (max(stop - start, 0), grid.nx)
    rs = slice(start, start + shape[0])
    if domain in NO_CORRECTION_DOMAINS:
        return np.ones(shape, np.float32)
    out = np.empty(shape, np.float32)
    if out.size == 0:
        return out
    use_c = c_factor is not None
    c = c_factor[rs] if use_c else np.zeros((1, 1), np.float32)
    if use_c and c.shape != shape:
        raise ValueError(f"c_factor: shape {c_factor.shape} != processing grid {grid.shape}")
    _factor_kernel(topo.cos_i[rs], topo.slope[rs], c, use_c, _field(mu_s, shape, "mu_s"),
                   _field(f_band, shape, "f_band"), _field(f_swir2, shape, "f_swir2"), out)
    return out
