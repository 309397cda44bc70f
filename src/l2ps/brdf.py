"""c-factor BRDF correction to nadir-view, standard-sun reflectance (NBAR), spec 02 §7.

Model: RossThick–LiSparse-Reciprocal kernels (Wanner et al. 1995, Lucht et al. 2000) with
the global fixed coefficients of Roy et al. (2016, 2017) per band domain (published
values, table of spec 02 §7). Per 5 km cell the factor

    c = R(θs_std, 0, 0) / R(θs, θv, φs − φv)

brings the observed geometry to a nadir view and the latitude-dependent standard sun zenith
θs_std (Zhang et al. 2016, Li et al. 2019): the sun zenith at the mean local overpass time
of Landsat and Sentinel-2 at that latitude on the acquisition day. ``brdf_factor`` gives the
factor per pixel by bilinear interpolation between cell centres (as ``l2ps.geometry``).

Angles follow ``l2ps.geometry``: azimuths clockwise from north, the sun azimuth from the
target to the sun, the view azimuth from the target to the sensor; so φs − φv = 0 is the
backscatter (hot-spot) side.
"""
from __future__ import annotations

import math
import weakref
from datetime import datetime, timedelta, timezone

import numpy as np
from pyproj import Transformer

from . import geometry as G
from .grid import Grid

# f_iso, f_vol, f_geo (Roy et al. 2017, Table 1; reflectance units)
BRDF_COEFFICIENTS: dict[str, tuple[float, float, float]] = {
    "BLUE": (0.0774, 0.0372, 0.0079),
    "GREEN": (0.1306, 0.0580, 0.0178),
    "RED": (0.1690, 0.0574, 0.0227),
    "REDEDGE1": (0.2085, 0.0845, 0.0256),
    "REDEDGE2": (0.2316, 0.1003, 0.0273),
    "REDEDGE3": (0.2599, 0.1197, 0.0294),
    "BROADNIR": (0.3093, 0.1535, 0.0330),
    "NIR": (0.3093, 0.1535, 0.0330),
    "SWIR1": (0.3430, 0.1154, 0.0453),
    "SWIR2": (0.2658, 0.0639, 0.0387),
}
HB_RATIO = 2.0          # Li-Sparse crown relative height h/b
BR_RATIO = 1.0          # Li-Sparse crown shape b/r (spherical crowns)

# local overpass time model (spec 02 §7): equator crossing time (h), inclination (deg)
_ORBITS = ((10.18333333333, 98.2), (10.5, 98.62))      # Landsat, Sentinel-2


# --------------------------------------------------------------------------- kernels
def ross_thick(sun_zenith, view_zenith, rel_azimuth) -> np.ndarray:
    """RossThick volumetric kernel; angles in radians (arrays broadcast), float64."""
    ti, tv, phi = (np.asarray(a, dtype=np.float64) for a in (sun_zenith, view_zenith,
                                                             rel_azimuth))
    cos_xi = np.clip(np.cos(ti) * np.cos(tv) + np.sin(ti) * np.sin(tv) * np.cos(phi), -1, 1)
    xi = np.arccos(cos_xi)
    return ((np.pi / 2 - xi) * cos_xi + np.sin(xi)) / (np.cos(ti) + np.cos(tv)) - np.pi / 4


def li_sparse(sun_zenith, view_zenith, rel_azimuth, hb: float = HB_RATIO,
              br: float = BR_RATIO) -> np.ndarray:
    """LiSparse-Reciprocal geometric kernel; angles in radians, float64."""
    ti, tv, phi = (np.asarray(a, dtype=np.float64) for a in (sun_zenith, view_zenith,
                                                             rel_azimuth))
    tan_i = br * np.tan(ti)                 # primed angles: tan θ' = (b/r)·tan θ
    tan_v = br * np.tan(tv)
    cos_i = 1.0 / np.sqrt(1.0 + tan_i ** 2)
    cos_v = 1.0 / np.sqrt(1.0 + tan_v ** 2)
    sin_i = tan_i * cos_i
    sin_v = tan_v * cos_v
    cos_phi = np.cos(phi)
    cos_xi_p = cos_i * cos_v + sin_i * sin_v * cos_phi
    d2 = np.maximum(tan_i ** 2 + tan_v ** 2 - 2.0 * tan_i * tan_v * cos_phi, 0.0)
    sec_sum = 1.0 / cos_i + 1.0 / cos_v
    cos_t = np.clip(hb * np.sqrt(d2 + (tan_i * tan_v * np.sin(phi)) ** 2) / sec_sum, -1, 1)
    t = np.arccos(cos_t)
    overlap = np.maximum((t - np.sin(t) * cos_t) * sec_sum / np.pi, 0.0)
    return overlap - sec_sum + 0.5 * (1.0 + cos_xi_p) / (cos_i * cos_v)


def brdf_model(domain: str, sun_zenith, view_zenith, rel_azimuth) -> np.ndarray:
    """R = f_iso + f_vol·K_vol + f_geo·K_geo of ``domain`` (angles in radians)."""
    f_iso, f_vol, f_geo = BRDF_COEFFICIENTS[domain]
    return (f_iso + f_vol * ross_thick(sun_zenith, view_zenith, rel_azimuth)
            + f_geo * li_sparse(sun_zenith, view_zenith, rel_azimuth))


# --------------------------------------------------------------------------- standard sun
def standard_overpass_time(lat) -> np.ndarray:
    """Local solar time (h) of the standard sun (spec 02 §7): the mean of Landsat's
    (10:11, 98.2°) and Sentinel-2's (10:30, 98.62°) local overpass time at latitude ``lat``
    (degrees), t = t0 − asin(tan φ/tan i)·(180/π)/15. Beyond |lat| ≈ 81.8° the asin argument
    is clamped to ±1 (FORCE gives NaN there)."""
    lat = np.asarray(lat, dtype=np.float64)
    tl = np.tan(np.radians(lat))
    acc = 0.0
    for t0, inc in _ORBITS:
        arg = np.clip(tl / math.tan(math.radians(inc)), -1.0, 1.0)
        acc = acc + (t0 - np.degrees(np.arcsin(arg)) / 15.0)
    return 0.5 * acc


def standard_sun_zenith(lon, lat, acquired: datetime) -> np.ndarray:
    """Standard sun zenith (degrees) at ``lon``/``lat`` (degrees) for the acquisition
    ``acquired`` (UTC): the sun position (``l2ps.geometry.sun_position``) at the standard
    local solar time on the local day of the acquisition (UTC = local − lon/15 h)."""
    lon = np.atleast_1d(np.asarray(lon, dtype=np.float64))
    lat = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    lon, lat = np.broadcast_arrays(lon, lat)
    if acquired.tzinfo is not None:
        acquired = acquired.astimezone(timezone.utc).replace(tzinfo=None)
    t_loc = standard_overpass_time(lat)
    out = np.empty(lon.shape, np.float64)
    for idx in np.ndindex(lon.shape):
        lo = float(lon[idx])
        local_day = (acquired + timedelta(hours=lo / 15.0)).date()
        when = datetime(local_day.year, local_day.month, local_day.day) \
            + timedelta(hours=float(t_loc[idx]) - lo / 15.0)
        z, _ = G.sun_position(lo, float(lat[idx]), when)
        out[idx] = float(z)
    return out


# --------------------------------------------------------------------------- factors
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cell_lonlat(coarse: Grid) -> tuple[np.ndarray, np.ndarray]:
    ii, jj = np.meshgrid(np.arange(coarse.ny), np.arange(coarse.nx), indexing="ij")
    x, y = coarse.xy(ii, jj)
    tr = Transformer.from_crs(coarse.crs, "EPSG:4326", always_xy=True)
    lon, lat = tr.transform(x, y)
    return np.asarray(lon, np.float64), np.asarray(lat, np.float64)


def _standard_zenith_cells(geometry) -> np.ndarray:
    entry = _CACHE.setdefault(geometry, {})
    if "std" not in entry:
        if geometry.acquired is None:
            raise ValueError("Geometry.acquired is needed for the standard sun zenith")
        lon, lat = _cell_lonlat(geometry.grid)
        entry["std"] = standard_sun_zenith(lon, lat, geometry.acquired)
    return entry["std"]


def brdf_cell_factors(geometry, domains) -> dict[str, np.ndarray]:
    """c-factor per 5 km cell of ``geometry.grid`` (float32; NaN where the view angles are
    nodata) for each of ``domains``; 1 for domains without coefficients (UB, VAPOR, CIRRUS,
    TEMP). Cell values use the sun/view angles at the cell centres and the standard sun
    zenith at the cell centre's latitude/longitude (spec 02 §7)."""
    entry = _CACHE.setdefault(geometry, {})
    out: dict[str, np.ndarray] = {}
    std = None
    for d in domains:
        key = ("cells", d)
        if key not in entry:
            if d not in BRDF_COEFFICIENTS:
                entry[key] = np.ones(geometry.grid.shape, np.float32)
            else:
                if std is None:
                    std = np.radians(_standard_zenith_cells(geometry))
                ts = np.radians(geometry.sun_zenith.astype(np.float64))
                tv = np.radians(geometry.view_zenith.astype(np.float64))
                phi = np.radians(geometry.sun_azimuth.astype(np.float64)
                                 - geometry.view_azimuth.astype(np.float64))
                with np.errstate(invalid="ignore"):
                    c = brdf_model(d, std, 0.0, 0.0) / brdf_model(d, ts, tv, phi)
                entry[key] = c.astype(np.float32)
        out[d] = entry[key]
    return out


def brdf_factor(geometry, domain: str, grid: Grid, rows: slice | None = None) -> np.ndarray:
    """c-factor (float32) at the pixel centres of ``grid`` rows ``rows`` for band
    ``domain``: the cell factors interpolated bilinearly between cell centres (NaN cells
    skipped); 1 where the pixel's cell is nodata and for domains without coefficients."""
    if domain not in BRDF_COEFFICIENTS:
        r0, r1 = G._rows_range(grid, rows)
        return np.ones((r1 - r0, grid.nx), np.float32)
    cells = brdf_cell_factors(geometry, [domain])[domain]
    out = geometry._at(cells, grid, rows, G.MODE_LINEAR)
    out[~np.isfinite(out)] = 1.0
    return out
