"""Sun and view geometry on the 5 km coarse grid (spec 01 §3).

- ``sun_position``: NOAA solar position with refraction (§3.2), vectorised, float64.
- ``Geometry``: sun/view zenith and azimuth per 5 km cell (degrees, NaN = nodata) with
  per-pixel bilinear interpolation between cell centres (numba, block-wise, float32 output).
- ``compute_geometry``: the coarse grid of a ``Level1`` (sun at cell centres; Landsat view
  angles from the valid footprint, §3.3; Sentinel-2 view angles from the metadata, §3.4).
- ``update_qai``: Sentinel-2 pixels in nodata view cells become nodata (§3.4); valid pixels
  with a sun zenith > 75° get the high-sun-zenith bit (§3.5).

Deliberate differences to FORCE (docs/deviations.d/level1-toa.md): angles are evaluated at
cell centres (not UL corners) and interpolated bilinearly per pixel (not piecewise
constant); float64; the v3.9 y-sign regression (§3.7) is not reproduced.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from numba import njit, prange
from pyproj import Geod, Transformer

from . import qai as Q
from .errors import Level1Error
from .grid import Grid

COARSE_CELL = 5000.0          # m (§3.1)
LANDSAT_ALTITUDE = 705000.0   # m (§3.3)
SENTINEL2_ALTITUDE = 786000.0
HIGH_SUN_ZENITH = 75.0        # degrees (§3.5)

MODE_LINEAR, MODE_ANGULAR, MODE_COS = 0, 1, 2


# --------------------------------------------------------------------------- sun position
def _julian_day(when: datetime) -> float:
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc)
    y, m = when.year, when.month
    d = when.day
    th = (when.hour + when.minute / 60.0 + (when.second + when.microsecond * 1e-6) / 3600.0)
    if m <= 2:
        y -= 1
        m += 12
    a = math.floor(y / 100)
    b = 2 - a + math.floor(a / 4)
    return (math.floor(365.25 * (y + 4716)) + math.floor(30.6001 * (m + 1)) + d + b - 1524.5
            + th / 24.0)


def sun_position(lon, lat, when: datetime) -> tuple[np.ndarray, np.ndarray]:
    """Sun zenith and azimuth (degrees, azimuth clockwise from north in [0, 360)) at
    ``lon``/``lat`` (degrees, arrays broadcast) and UTC time ``when`` (naive = UTC).

    NOAA ESRL solar position algorithm (spec 01 §3.2) including the refraction correction of
    the zenith, computed in float64.
    """
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc)
    jd = _julian_day(when)
    t = (jd - 2451545.0) / 36525.0
    t_min = when.hour * 60.0 + when.minute + (when.second + when.microsecond * 1e-6) / 60.0

    l0 = (280.46646 + t * (36000.76983 + 0.0003032 * t)) % 360.0
    m = 357.52911 + t * (35999.05029 - 0.0001537 * t)
    e = 0.016708634 - t * (0.000042037 + 0.0000001267 * t)
    mr = math.radians(m)
    c = (math.sin(mr) * (1.914602 - t * (0.004817 + 0.000014 * t))
         + math.sin(2 * mr) * (0.019993 - 0.000101 * t) + math.sin(3 * mr) * 0.000289)
    omega = 125.04 - 1934.136 * t
    lam = l0 + c - 0.00569 - 0.00478 * math.sin(math.radians(omega))
    eps0 = 23.0 + (26.0 + (21.448 - t * (46.815 + t * (0.00059 - 0.001813 * t))) / 60.0) / 60.0
    eps = eps0 + 0.00256 * math.cos(math.radians(omega))
    decl = math.asin(math.sin(math.radians(eps)) * math.sin(math.radians(lam)))
    yv = math.tan(math.radians(eps) / 2.0) ** 2
    l0r = math.radians(l0)
    eot = 4.0 * math.degrees(yv * math.sin(2 * l0r) - 2 * e * math.sin(mr)
                             + 4 * e * yv * math.sin(mr) * math.cos(2 * l0r)
                             - 0.5 * yv * yv * math.sin(4 * l0r) - 1.25 * e * e * math.sin(2 * mr))

    tst = np.mod(t_min + eot + 4.0 * lon, 1440.0)
    ha = tst / 4.0 - 180.0
    ha = np.where(ha < -180.0, ha + 360.0, ha)
    phi = np.deg2rad(lat)
    har = np.deg2rad(ha)
    cosz = np.clip(np.sin(phi) * math.sin(decl) + np.cos(phi) * math.cos(decl) * np.cos(har),
                   -1.0, 1.0)
    z = np.arccos(cosz)
    denom = np.cos(phi) * np.sin(z)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.clip((np.sin(phi) * cosz - math.sin(decl)) / denom, -1.0, 1.0)
    az = 180.0 - np.rad2deg(np.arccos(a))
    az = np.where(ha > 0, -az, az)
    az = np.where(np.abs(denom) > 0.001, az, np.where(lat > 0, 180.0, 0.0))
    az = np.where(az < 0, az + 360.0, az)

    zdeg = np.rad2deg(z)
    elev = 90.0 - zdeg
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        te = np.tan(np.deg2rad(elev))
        r = np.where(
            elev > 85.0, 0.0,
            np.where(elev > 5.0, 58.1 / te - 0.07 / te ** 3 + 0.000086 / te ** 5,
                     np.where(elev > -0.575,
                              1735.0 + elev * (-518.2 + elev * (103.4 + elev * (-12.79
                                                                             + 0.711 * elev))),
                              -20.774 / te)))
    zdeg = zdeg - r / 3600.0
    return zdeg, np.mod(az, 360.0)


# --------------------------------------------------------------------------- interpolation
def _axis_weights(pos: np.ndarray, ncell: int):
    """For pixel-centre positions ``pos`` along one axis (in cells from the coarse grid's
    UL edge): own cell index, lower bilinear neighbour (cell centres at k + 0.5) and the
    weight of the upper neighbour."""
    own = np.clip(np.floor(pos), 0, ncell - 1).astype(np.int64)
    u = pos - 0.5
    lo = np.floor(u)
    return own, lo.astype(np.int64), (u - lo).astype(np.float64)


@njit(cache=True, parallel=True)
def _interp_kernel(values, values2, own_i, i0, wv, own_j, j0, wu, angular, out):
    """Bilinear interpolation between cell centres; NaN cells are skipped, a pixel whose
    own cell is NaN gets NaN; neighbour indices are clamped (constant extrapolation beyond
    the outermost centres). ``angular``: ``values``/``values2`` are sin/cos of an angle and
    the result is atan2 in degrees [0, 360)."""
    ncy, ncx = values.shape
    nr, nc = out.shape
    for r in prange(nr):
        oi = own_i[r]
        wi1 = wv[r]
        ia = min(max(i0[r], 0), ncy - 1)
        ib = min(max(i0[r] + 1, 0), ncy - 1)
        for c in range(nc):
            oj = own_j[c]
            if math.isnan(values[oi, oj]):
                out[r, c] = np.nan
                continue
            wj1 = wu[c]
            ja = min(max(j0[c], 0), ncx - 1)
            jb = min(max(j0[c] + 1, 0), ncx - 1)
            acc = 0.0
            acc2 = 0.0
            wsum = 0.0
            for k in range(4):
                ii = ia if k < 2 else ib
                jj = ja if (k % 2) == 0 else jb
                w = ((1.0 - wi1) if k < 2 else wi1) * ((1.0 - wj1) if (k % 2) == 0 else wj1)
                val = values[ii, jj]
                if w <= 0.0 or math.isnan(val):
                    continue
                acc += w * val
                if angular:
                    acc2 += w * values2[ii, jj]
                wsum += w
            if angular:
                res = math.degrees(math.atan2(acc, acc2))
                if res < 0.0:
                    res += 360.0
                out[r, c] = res
            else:
                out[r, c] = acc / wsum if wsum > 0.0 else values[oi, oj]


@njit(cache=True, parallel=True)
def _flag_kernel(qai, sun_z, view_z, own_i, i0, wv, own_j, j0, wu, view_nodata, threshold):
    """In place: nodata where the pixel's view cell is NaN (if view_nodata), then the
    high-sun bit where the interpolated sun zenith > threshold for valid pixels."""
    ncy, ncx = sun_z.shape
    nr, nc = qai.shape
    for r in prange(nr):
        oi = own_i[r]
        wi1 = wv[r]
        ia = min(max(i0[r], 0), ncy - 1)
        ib = min(max(i0[r] + 1, 0), ncy - 1)
        for c in range(nc):
            q = qai[r, c]
            oj = own_j[c]
            if view_nodata and math.isnan(view_z[oi, oj]):
                q = q | 1
            if (q & 1) == 0:
                wj1 = wu[c]
                ja = min(max(j0[c], 0), ncx - 1)
                jb = min(max(j0[c] + 1, 0), ncx - 1)
                acc = 0.0
                wsum = 0.0
                for k in range(4):
                    ii = ia if k < 2 else ib
                    jj = ja if (k % 2) == 0 else jb
                    w = ((1.0 - wi1) if k < 2 else wi1) * ((1.0 - wj1) if (k % 2) == 0 else wj1)
                    val = sun_z[ii, jj]
                    if w <= 0.0 or math.isnan(val):
                        continue
                    acc += w * val
                    wsum += w
                if wsum > 0.0 and acc / wsum > threshold:
                    q = q | (1 << 10)
            qai[r, c] = q


def _weights(coarse: Grid, grid: Grid, r0: int, r1: int):
    """Row (r0..r1) and column interpolation indices/weights of ``grid``'s pixel centres."""
    y = grid.y0 - (np.arange(r0, r1) + 0.5) * grid.dy
    x = grid.x0 + (np.arange(grid.nx) + 0.5) * grid.dx
    return (*_axis_weights((coarse.y0 - y) / coarse.dy, coarse.ny),
            *_axis_weights((x - coarse.x0) / coarse.dx, coarse.nx))


def _rows_range(grid: Grid, rows: slice | None) -> tuple[int, int]:
    if rows is None:
        return 0, grid.ny
    start, stop, step = rows.indices(grid.ny)
    if step != 1:
        raise ValueError("rows must be a contiguous slice")
    return start, max(stop, start)


# --------------------------------------------------------------------------- Geometry
@dataclass(frozen=True, eq=False)
class Geometry:
    """Sun and view angles per 5 km cell of ``grid`` (degrees, float32, NaN = nodata).

    ``grid`` is the coarse grid: 5000 m cells anchored at the image's UL corner. Values
    hold for the cell centres; the ``*_at`` methods interpolate them bilinearly to the pixel
    centres of any grid in the same CRS (e.g. the processing grid or a band grid).
    """
    grid: Grid
    sun_zenith: np.ndarray
    sun_azimuth: np.ndarray
    view_zenith: np.ndarray
    view_azimuth: np.ndarray
    acquired: datetime | None = None

    # ---------------------------------------------------------- per pixel
    def _at(self, values: np.ndarray, grid: Grid, rows: slice | None, mode: int) -> np.ndarray:
        r0, r1 = _rows_range(grid, rows)
        out = np.empty((r1 - r0, grid.nx), dtype=np.float32)
        if out.size:
            v = np.asarray(values, dtype=np.float64)
            if mode == MODE_ANGULAR:
                a, b = np.sin(np.deg2rad(v)), np.cos(np.deg2rad(v))
            elif mode == MODE_COS:     # cos interpolated between centres (no per-pixel trig)
                a, b = np.cos(np.deg2rad(v)), v
            else:
                a, b = v, v
            _interp_kernel(np.ascontiguousarray(a), np.ascontiguousarray(b),
                           *_weights(self.grid, grid, r0, r1), mode == MODE_ANGULAR, out)
        return out

    def sun_zenith_at(self, grid: Grid, rows: slice | None = None) -> np.ndarray:
        """Sun zenith (degrees, float32) at the pixel centres of ``grid`` rows ``rows``."""
        return self._at(self.sun_zenith, grid, rows, MODE_LINEAR)

    def cos_sun_zenith(self, grid: Grid, rows: slice | None = None) -> np.ndarray:
        """cos(sun zenith) (float32) at the pixel centres of ``grid`` rows ``rows``: the
        cells' cosines interpolated bilinearly (differs from cos of the interpolated zenith
        by < 1e-6 for real sun-zenith gradients of < 0.1° per 5 km cell)."""
        return self._at(self.sun_zenith, grid, rows, MODE_COS)

    def sun_azimuth_at(self, grid: Grid, rows: slice | None = None) -> np.ndarray:
        return self._at(self.sun_azimuth, grid, rows, MODE_ANGULAR)

    def view_zenith_at(self, grid: Grid, rows: slice | None = None) -> np.ndarray:
        """View zenith (degrees, float32); NaN where the pixel's 5 km cell is nodata."""
        return self._at(self.view_zenith, grid, rows, MODE_LINEAR)

    def cos_view_zenith(self, grid: Grid, rows: slice | None = None) -> np.ndarray:
        return self._at(self.view_zenith, grid, rows, MODE_COS)

    def view_azimuth_at(self, grid: Grid, rows: slice | None = None) -> np.ndarray:
        return self._at(self.view_azimuth, grid, rows, MODE_ANGULAR)

    # ---------------------------------------------------------- scalars (§3.5)
    @staticmethod
    def _cos_range(values: np.ndarray) -> tuple[float, float]:
        v = values[np.isfinite(values)]
        if v.size == 0:
            return float("nan"), float("nan")
        c = np.cos(np.deg2rad(v.astype(np.float64)))
        return float(c.min()), float(c.max())

    @property
    def cos_sun_min(self) -> float:
        return self._cos_range(self.sun_zenith)[0]

    @property
    def cos_sun_max(self) -> float:
        return self._cos_range(self.sun_zenith)[1]

    @property
    def cos_view_min(self) -> float:
        return self._cos_range(self.view_zenith)[0]

    @property
    def cos_view_max(self) -> float:
        return self._cos_range(self.view_zenith)[1]

    @property
    def mean_sun_zenith(self) -> float:
        return float(np.nanmean(self.sun_zenith.astype(np.float64)))

    @property
    def mean_view_zenith(self) -> float:
        return float(np.nanmean(self.view_zenith.astype(np.float64)))

    @staticmethod
    def _circmean(values: np.ndarray) -> float:
        v = np.deg2rad(values[np.isfinite(values)].astype(np.float64))
        if v.size == 0:
            return float("nan")
        return float(np.rad2deg(np.arctan2(np.sin(v).mean(), np.cos(v).mean())) % 360.0)

    @property
    def mean_sun_azimuth(self) -> float:
        return self._circmean(self.sun_azimuth)

    @property
    def mean_view_azimuth(self) -> float:
        return self._circmean(self.view_azimuth)


# --------------------------------------------------------------------------- construction
def coarse_grid(grid: Grid, cell: float = COARSE_CELL) -> Grid:
    """The 5 km grid anchored at ``grid``'s UL corner covering it (§3.1)."""
    nx = int(math.ceil(round(grid.nx * grid.dx / cell, 6)))
    ny = int(math.ceil(round(grid.ny * grid.dy / cell, 6)))
    return Grid(grid.crs_wkt, grid.x0, grid.y0, float(cell), float(cell), max(nx, 1),
                max(ny, 1))


def _lonlat(grid: Grid, x, y):
    tr = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    return tr.transform(x, y)


@njit(cache=True)
def _valid_extent(a, is_mask, rfirst, rlast, cfirst, clast):  # pragma: no cover
    """Per row the first/last valid column, per column the first/last valid row (−1: none)
    of a boolean valid mask (``is_mask``) or a QAI (valid: nodata bit 0 clear)."""
    ny, nx = a.shape
    for i in range(ny):
        for j in range(nx):
            v = (a[i, j] != 0) if is_mask else ((a[i, j] & 1) == 0)
            if v:
                if rfirst[i] < 0:
                    rfirst[i] = j
                rlast[i] = j
                if cfirst[j] < 0:
                    cfirst[j] = i
                clast[j] = i


def _extent(qai_or_valid: np.ndarray):
    """(rfirst, rlast, cfirst, clast) of :func:`_valid_extent` (no full-size temporaries)."""
    a = np.ascontiguousarray(qai_or_valid)
    ny, nx = a.shape
    ext = (np.full(ny, -1, np.int64), np.full(ny, -1, np.int64),
           np.full(nx, -1, np.int64), np.full(nx, -1, np.int64))
    is_mask = a.dtype == np.bool_
    _valid_extent(a.view(np.uint8) if is_mask else a, is_mask, *ext)
    return ext


def landsat_view(level1_grid: Grid, valid: np.ndarray, coarse: Grid,
                 altitude: float = LANDSAT_ALTITUDE) -> tuple[np.ndarray, np.ndarray]:
    """View zenith/azimuth per coarse cell centre from the valid footprint (§3.3).
    ``valid``: a boolean valid mask or the QAI (valid where the nodata bit is clear).

    Corners of the footprint from the raster scan (UL first valid pixel, UR first pixel of
    the rightmost column, LL last pixel of the leftmost column, LR last valid pixel); the
    nadir line joins the midpoints of UL–UR and LL–LR. Distances are in map metres (so
    non-square pixels are fine); the view azimuth points from the ground to the sensor,
    perpendicular to the track.
    """
    if valid.shape != level1_grid.shape:
        raise ValueError(f"valid mask shape {valid.shape} != grid shape {level1_grid.shape}")
    rfirst, rlast, cfirst, clast = _extent(valid)
    rows_any = np.flatnonzero(rfirst >= 0)
    cols_any = np.flatnonzero(cfirst >= 0)
    if rows_any.size == 0:
        raise Level1Error("no valid pixel in the image (every pixel is nodata); cannot "
                          "derive the Landsat view geometry")
    rt, rb = rows_any[0], rows_any[-1]
    cmin, cmax = cols_any[0], cols_any[-1]
    ul = (rt, rfirst[rt])
    ur = (cfirst[cmax], cmax)
    ll = (clast[cmin], cmin)
    lr = (rb, rlast[rb])
    px = np.array([ul, ur, ll, lr], dtype=np.float64)
    xs, ys = level1_grid.xy(px[:, 0], px[:, 1])
    top = np.array([(xs[0] + xs[1]) / 2, (ys[0] + ys[1]) / 2])
    bot = np.array([(xs[2] + xs[3]) / 2, (ys[2] + ys[3]) / 2])
    tvec = top - bot
    tlen = float(np.hypot(*tvec))
    cx, cy = coarse.xy(*np.meshgrid(np.arange(coarse.ny), np.arange(coarse.nx), indexing="ij"))
    if tlen <= 0:
        return (np.zeros(coarse.shape, np.float32), np.zeros(coarse.shape, np.float32))
    # signed distance to the nadir line, positive left of the track (west for north-up)
    d = (tvec[0] * (cy - bot[1]) - tvec[1] * (cx - bot[0])) / tlen
    vz = np.rad2deg(np.arctan(np.abs(d) / altitude))
    (lon_t, lon_b), (lat_t, lat_b) = _lonlat(level1_grid, [top[0], bot[0]], [top[1], bot[1]])
    track_az, _, _ = Geod(ellps="WGS84").inv(lon_b, lat_b, lon_t, lat_t)
    va = np.where(d > 0, track_az + 90.0, track_az - 90.0) % 360.0
    return vz.astype(np.float32), va.astype(np.float32)


def sentinel2_view(level1, coarse: Grid) -> tuple[np.ndarray, np.ndarray]:
    """View zenith/azimuth per coarse cell from the collapsed metadata grid (§3.4):
    each coarse cell takes the metadata cell containing its centre; outside → NaN."""
    view = level1.view
    if view is None:
        raise Level1Error(f"{level1.source}: no view angle grid in the metadata")
    ox, oy = view.origin if view.origin is not None else (level1.grid.x0, level1.grid.y0)
    cx, cy = coarse.xy(*np.meshgrid(np.arange(coarse.ny), np.arange(coarse.nx), indexing="ij"))
    j = np.floor((cx - ox) / view.cell).astype(np.int64)
    i = np.floor((oy - cy) / view.cell).astype(np.int64)
    ny, nx = view.zenith.shape
    inside = (i >= 0) & (i < ny) & (j >= 0) & (j < nx)
    ic, jc = np.clip(i, 0, ny - 1), np.clip(j, 0, nx - 1)
    vz = np.where(inside, view.zenith[ic, jc], np.nan).astype(np.float32)
    va = np.where(inside, view.azimuth[ic, jc], np.nan).astype(np.float32)
    bad = ~(np.isfinite(vz) & np.isfinite(va))
    vz[bad] = np.nan
    va[bad] = np.nan
    return vz, va


def compute_geometry(level1, qai_or_valid_mask: np.ndarray | None = None) -> Geometry:
    """Sun and view angles on the 5 km grid of ``level1.grid`` (spec 01 §3).

    Sun angles at the cell centres (NOAA, §3.2) for ``level1.acquired``. Landsat view angles
    need the valid footprint: pass the initial QAI (uint16, nodata bit 0) or a boolean
    valid mask on ``level1.grid``. Sentinel-2 uses ``level1.view`` and ignores the mask.
    """
    grid = level1.grid
    coarse = coarse_grid(grid)
    ii, jj = np.meshgrid(np.arange(coarse.ny), np.arange(coarse.nx), indexing="ij")
    cx, cy = coarse.xy(ii, jj)
    lon, lat = _lonlat(grid, cx, cy)
    sz, sa = sun_position(np.asarray(lon), np.asarray(lat), level1.acquired)
    if level1.mission == "sentinel2":
        vz, va = sentinel2_view(level1, coarse)
    else:
        if qai_or_valid_mask is None:
            raise ValueError("Landsat view geometry needs the QAI or a valid mask")
        try:
            vz, va = landsat_view(grid, qai_or_valid_mask, coarse)
        except Level1Error as exc:
            raise Level1Error(f"{level1.source}: {exc}") from None
    return Geometry(coarse, sz.astype(np.float32), sa.astype(np.float32), vz, va,
                    acquired=level1.acquired)


def update_qai(qai: np.ndarray, geometry: Geometry, grid: Grid,
               view_nodata: bool | None = None) -> None:
    """In place on a QAI on ``grid``: pixels whose 5 km view cell is nodata become nodata
    (Sentinel-2, §3.4; ``view_nodata`` None = whenever the view grid has NaN cells), then
    valid pixels with an interpolated sun zenith > 75° get the high-sun-zenith bit (§3.5)."""
    if qai.shape != grid.shape:
        raise ValueError(f"QAI shape {qai.shape} != grid shape {grid.shape}")
    if view_nodata is None:
        view_nodata = bool(np.isnan(geometry.view_zenith).any())
    _flag_kernel(qai, np.ascontiguousarray(geometry.sun_zenith, dtype=np.float64),
                 np.ascontiguousarray(geometry.view_zenith, dtype=np.float64),
                 *_weights(geometry.grid, grid, 0, grid.ny), bool(view_nodata),
                 HIGH_SUN_ZENITH)
    assert Q.HIGH_SUN_ZENITH == 10 and Q.NODATA == 0
