"""Synthetic scene content with known truth: terrain, land cover, clouds and their shadows,
atmosphere, sun and view geometry — rendered block by block on a product's pixel grid.

Everything is a *function of map coordinates* built from random lattices that are drawn once
per scene from ``np.random.default_rng(seed)``. Rendering a block of rows therefore gives the
same numbers whatever the block size, and a full-size scene never needs more memory than one
block plus the lattices.

Model, in the order light takes it (see docs/synth.md for the reasoning):

* sun position: the Astronomical Almanac low-precision formulae (Michalsky 1988) with
  refraction, on a node grid, bilinearly interpolated to each pixel — independent of
  ``l2ps.geometry`` on purpose, since this module is the truth used to test it;
* terrain: a smooth base surface plus ridged fractal noise inside "mountain" regions (flat
  plains elsewhere); slopes reach ~40°; Lambertian illumination cos i / cos θs on the direct
  part of the irradiance and a sky-view factor on the diffuse part;
* land cover: soil / sand / urban backgrounds mixed with a vegetation fraction, lakes in the
  plains, snow above a snow line, a few very bright (saturating) targets; spectra from
  :mod:`.spectra`;
* atmosphere: :func:`surface_to_toa` — 6S look-up tables (``l2ps.synth.sixs``) when they are
  installed, else a clearly marked provisional single-scattering model; the environment
  reflectance ρ_env is the surface reflectance smoothed with a 1 km Gaussian;
* clouds: objects (opaque, thin, cirrus) at known altitudes. A pixel q shows cloud k where the
  line of sight from q toward the sensor, at the cloud's altitude, lies inside the cloud's
  ground footprint (parallax, per band for Sentinel-2), and lies in its shadow where the ray
  toward the sun does (shadow displaced by (H − z)·tan θs away from the sun; terrain-aware
  through z, no terrain occlusion);
* thermal: surface temperature by cover and elevation; clouds colder by 6.5 K/km.
"""
from __future__ import annotations

import math
import os
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np
import scipy.sparse as sp
from pyproj import Transformer
from scipy import ndimage

from ..grid import Grid
from ..level1.sensors import sensor_spec
from . import spectra

# --------------------------------------------------------------------------------------------
# sun position (Michalsky 1988, Astronomical Almanac low precision), vectorised
# --------------------------------------------------------------------------------------------


def julian_day(when: datetime) -> float:
    """Julian day of a UTC datetime."""
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc).replace(tzinfo=None)
    j2000 = datetime(2000, 1, 1, 12, 0, 0)
    return 2451545.0 + (when - j2000).total_seconds() / 86400.0


def sun_position(lat, lon, when: datetime):
    """Sun zenith and azimuth (degrees; azimuth clockwise from true north) at lat/lon (deg).

    Michalsky (1988), "The Astronomical Almanac's algorithm for approximate solar position
    (1950–2050)", with its refraction correction. Accuracy ~0.01°.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    jd = julian_day(when)
    n = jd - 2451545.0
    hour = (jd + 0.5) % 1.0 * 24.0
    L = (280.460 + 0.9856474 * n) % 360.0
    g = math.radians((357.528 + 0.9856003 * n) % 360.0)
    lam = math.radians(L + 1.915 * math.sin(g) + 0.020 * math.sin(2 * g))
    eps = math.radians(23.439 - 0.0000004 * n)
    ra = math.atan2(math.cos(eps) * math.sin(lam), math.cos(lam))
    dec = math.asin(math.sin(eps) * math.sin(lam))
    gmst = (6.697375 + 0.0657098242 * n + hour) % 24.0
    lmst = (gmst + lon / 15.0) % 24.0
    ha = np.radians(lmst * 15.0) - ra
    ha = (ha + np.pi) % (2 * np.pi) - np.pi
    phi = np.radians(lat)
    sin_el = np.sin(dec) * np.sin(phi) + np.cos(dec) * np.cos(phi) * np.cos(ha)
    el = np.degrees(np.arcsin(np.clip(sin_el, -1, 1)))
    az = np.degrees(np.arctan2(-np.cos(dec) * np.sin(ha),
                               np.sin(dec) * np.cos(phi) - np.cos(dec) * np.cos(ha) * np.sin(phi)))
    az = az % 360.0
    refr = np.where(el > -0.56,
                    3.51561 * (0.1594 + 0.0196 * el + 0.00002 * el ** 2)
                    / (1 + 0.505 * el + 0.0845 * el ** 2), 0.56)
    return 90.0 - (el + refr), az


def earth_sun_distance(when: datetime) -> float:
    """Earth–sun distance in AU (Astronomical Almanac)."""
    n = julian_day(when) - 2451545.0
    g = math.radians((357.528 + 0.9856003 * n) % 360.0)
    return 1.00014 - 0.01671 * math.cos(g) - 0.00014 * math.cos(2 * g)


# --------------------------------------------------------------------------------------------
# interpolation helpers and random lattices
# --------------------------------------------------------------------------------------------


def interp_matrix(pos: np.ndarray, n: int, order: int = 1) -> sp.csr_matrix:
    """Sparse matrix W (len(pos) × n) so that W @ v interpolates v at fractional indices pos.

    order 1: linear; order 3: cubic convolution (Keys, a = −0.5; C¹-continuous). Indices are
    clamped to the array (constant extension).
    """
    pos = np.asarray(pos, dtype=np.float64)
    m = len(pos)
    i0 = np.floor(pos).astype(np.int64)
    t = pos - i0
    if order == 1:
        offs = (0, 1)
        w = (1 - t, t)
    else:
        a = -0.5

        def k(s):
            s = np.abs(s)
            return np.where(s <= 1, (a + 2) * s ** 3 - (a + 3) * s ** 2 + 1,
                            np.where(s < 2, a * s ** 3 - 5 * a * s ** 2 + 8 * a * s - 4 * a, 0.0))
        offs = (-1, 0, 1, 2)
        w = tuple(k(t - o) for o in offs)
    rows = np.repeat(np.arange(m), len(offs))
    cols = np.clip(np.stack([i0 + o for o in offs], axis=1), 0, n - 1).ravel()
    vals = np.stack(w, axis=1).ravel()
    return sp.csr_matrix((vals, (rows, cols)), shape=(m, n))


def separable_interp(values: np.ndarray, ypos: np.ndarray, xpos: np.ndarray,
                     order: int = 1) -> np.ndarray:
    """values (ny, nx) sampled at the outer product of fractional row/col indices."""
    wy = interp_matrix(ypos, values.shape[0], order)
    wx = interp_matrix(xpos, values.shape[1], order)
    tmp = wy @ values.astype(np.float64)            # (len(y), nx)
    return np.asarray((wx @ tmp.T).T, dtype=np.float32)


class Lattice:
    """Standard-normal random values on a square lattice covering an area (plus margin)."""

    def __init__(self, rng: np.random.Generator, bounds, spacing: float, margin: float = 0.0):
        left, bottom, right, top = bounds
        self.spacing = float(spacing)
        self.x0 = left - margin - 2 * spacing
        self.y0 = top + margin + 2 * spacing
        nx = int(math.ceil((right - left + 2 * margin) / spacing)) + 5
        ny = int(math.ceil((top - bottom + 2 * margin) / spacing)) + 5
        self.values = rng.standard_normal((ny, nx)).astype(np.float32)

    def grid(self, xs: np.ndarray, ys: np.ndarray, order: int = 3) -> np.ndarray:
        """Field on the outer product of map coordinates ys (rows) × xs (columns)."""
        return separable_interp(self.values, (self.y0 - ys) / self.spacing,
                                (xs - self.x0) / self.spacing, order)

    def points(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Field at scattered map points (bilinear)."""
        coords = np.stack([(self.y0 - y) / self.spacing, (x - self.x0) / self.spacing])
        return ndimage.map_coordinates(self.values, coords, order=1, mode="nearest",
                                       prefilter=False).astype(np.float32)


def hash_noise(rows: np.ndarray, cols: np.ndarray, seed: int) -> np.ndarray:
    """Per-pixel uniform noise in [−1, 1) from a hash of (row, col, seed) (splitmix64)."""
    r = rows.astype(np.uint64)[:, None]
    c = cols.astype(np.uint64)[None, :]
    z = r * np.uint64(0x9E3779B97F4A7C15) ^ (c * np.uint64(0xBF58476D1CE4E5B9)) \
        ^ np.uint64((seed * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(40)).astype(np.float32) / np.float32(2 ** 23)) - np.float32(1.0)


def _substream(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), *name.encode()])


# --------------------------------------------------------------------------------------------
# atmosphere: 6S tables (l2ps.synth.sixs) or the provisional stand-in
# --------------------------------------------------------------------------------------------

_SIXS_STATE: dict = {}
SIXS_CHUNK = 128   # pixels per 6S geometry: surface_to_toa column chunks; Scene tiles of 128²


def sixs_tables():
    """The 6S tables of ``l2ps.synth.sixs`` if that module and its data are installed, else
    None. ``L2PS_SYNTH_ATMOSPHERE=provisional`` forces the stand-in."""
    if os.environ.get("L2PS_SYNTH_ATMOSPHERE", "").lower() == "provisional":
        return None
    if "tables" not in _SIXS_STATE:
        try:
            from . import sixs  # noqa: WPS433 — optional, written by another module owner
            _SIXS_STATE["tables"] = sixs.load_tables()
        except Exception:  # missing module or data: use the stand-in
            _SIXS_STATE["tables"] = None
    return _SIXS_STATE["tables"]


def _clip_axis(values, axis: str):
    """Clip a field to the 6S table grid (so that the truth is what was used)."""
    tables = sixs_tables()
    if tables is None or axis not in getattr(tables, "axes", {}):
        return values
    ax = tables.axes[axis]
    return np.clip(values, float(ax[0]), float(ax[-1]))


def atmosphere_name() -> str:
    return "6S tables (l2ps.synth.sixs)" if sixs_tables() is not None else \
        "PROVISIONAL single-scattering stand-in (6S tables not installed)"


def _optical_depths(wl_um: float, aod550, elevation_km):
    tau_r = 0.008569 * wl_um ** -4 * (1 + 0.0113 * wl_um ** -2 + 0.00013 * wl_um ** -4) \
        * np.exp(-np.asarray(elevation_km, dtype=np.float32) / 8.0)
    tau_a = np.asarray(aod550, dtype=np.float32) * (wl_um / 0.55) ** -1.3
    return tau_r.astype(np.float32), tau_a.astype(np.float32)


def direct_fraction(wl_um: float, sun_zenith, aod550, elevation_km):
    """Fraction of the downward irradiance at the ground that is direct sunlight (used to
    apply terrain illumination and cloud shadows to the direct part only)."""
    mu = np.cos(np.radians(sun_zenith)).astype(np.float32)
    tau_r, tau_a = _optical_depths(wl_um, aod550, elevation_km)
    direct = np.exp(-(tau_r + tau_a) / mu)
    total = np.exp(-(0.5 * tau_r + 0.22 * tau_a) / mu)
    return (direct / total).astype(np.float32)


def _provisional_toa(wl_um, rho_s, rho_env, sza, vza, raa, aod550, wv, elev_km):
    """PROVISIONAL stand-in for the 6S tables: single scattering (Rayleigh + Henyey–Greenstein
    aerosol), two-stream-like transmittances, exponential gas transmittance. Not 6S; only used
    until ``l2ps.synth.sixs`` and its tables are installed."""
    f32 = np.float32
    mus = np.cos(np.radians(sza)).astype(f32)
    muv = np.cos(np.radians(vza)).astype(f32)
    tau_r, tau_a = _optical_depths(wl_um, aod550, elev_km)
    cos_sc = -mus * muv + np.sqrt(1 - mus ** 2) * np.sqrt(1 - muv ** 2) * np.cos(np.radians(raa))
    p_r = 0.75 * (1 + cos_sc ** 2)
    g = f32(0.65)
    p_a = (1 - g ** 2) / (1 + g ** 2 - 2 * g * cos_sc) ** 1.5
    path = (tau_r * p_r + 0.92 * tau_a * p_a) / (4 * mus * muv)
    t_s = np.exp(-(0.5 * tau_r + 0.22 * tau_a) / mus)
    t_v_dir = np.exp(-(tau_r + tau_a) / muv)
    t_v = np.exp(-(0.5 * tau_r + 0.22 * tau_a) / muv)
    s = (0.92 * tau_r + 0.18 * tau_a) * np.exp(-(tau_r + tau_a))
    m = 1 / mus + 1 / muv
    k = spectra.water_vapour_absorption(wl_um)
    o3 = 0.035 * np.exp(-((wl_um - 0.60) / 0.08) ** 2)
    tg = np.exp(-k * (np.asarray(wv, dtype=f32) * m) ** 0.6) * np.exp(-o3 * m)
    toa = tg * (path + t_s * (rho_s * t_v_dir + rho_env * (t_v - t_v_dir)) / (1 - s * rho_env))
    return toa.astype(f32)


def surface_to_toa(sensor: str, domain: str, wl_um: float, rho_surface, rho_env, sun_zenith,
                   view_zenith, rel_azimuth, aod550, water_vapor, elevation_km) -> np.ndarray:
    """TOA reflectance from surface reflectance — the ONE place where the atmosphere enters.

    Uses the 6S tables (``l2ps.synth.sixs``) when installed; otherwise the PROVISIONAL
    stand-in above. Angles in degrees, water vapour in g/cm², elevation in km; arrays
    broadcast; float32 result. Never uses l2ps.atmosphere.
    """
    tables = sixs_tables()
    if tables is not None:
        ax = tables.axes
        rho_surface, rho_env, sun_zenith, view_zenith, rel_azimuth, aod550, water_vapor, \
            elevation_km = np.broadcast_arrays(*(np.asarray(v, dtype=np.float32) for v in (
                rho_surface, rho_env, sun_zenith, view_zenith, rel_azimuth, aod550, water_vapor,
                elevation_km)))
        clip = lambda v, k: np.clip(v, ax[k][0], ax[k][-1])  # noqa: E731
        aod550, water_vapor, elevation_km = clip(aod550, "aod"), clip(water_vapor, "wv"), \
            clip(elevation_km, "elev")
        if rho_surface.ndim < 2:
            return np.asarray(tables.toa(sensor, domain, rho_surface, rho_env,
                                         clip(sun_zenith, "sza"), clip(view_zenith, "vza"),
                                         rel_azimuth, aod550, water_vapor, elevation_km),
                              dtype=np.float32)
        # the geometry varies slowly: one 6S geometry per chunk of SIXS_CHUNK columns (its
        # mean), per-pixel interpolation in AOD, water vapour and elevation
        out = np.empty(rho_surface.shape, np.float32)
        for c0 in range(0, rho_surface.shape[-1], SIXS_CHUNK):
            sl = (..., slice(c0, c0 + SIXS_CHUNK))
            g = tables.terms_grid(sensor, domain,
                                  float(np.clip(sun_zenith[sl].mean(), ax["sza"][0], ax["sza"][-1])),
                                  float(np.clip(view_zenith[sl].mean(), ax["vza"][0], ax["vza"][-1])),
                                  float(rel_azimuth[sl].mean()))
            out[sl] = g.toa(rho_surface[sl], rho_env[sl], aod550[sl], water_vapor[sl],
                            elevation_km[sl])
        return out
    return _provisional_toa(wl_um, rho_surface, rho_env, sun_zenith, view_zenith, rel_azimuth,
                            aod550, water_vapor, elevation_km)


def above_cloud_transmittance(wl_um: float, altitude_m: float, water_vapor: float, sza, vza):
    """Two-way gas and Rayleigh transmittance above a cloud top (simple exponential model)."""
    m = 1 / np.cos(np.radians(sza)) + 1 / np.cos(np.radians(vza))
    wv_above = water_vapor * math.exp(-altitude_m / 2000.0)
    tau_r = 0.008569 * wl_um ** -4 * math.exp(-altitude_m / 8000.0)
    k = spectra.water_vapour_absorption(wl_um)
    return (np.exp(-k * (wv_above * m) ** 0.6) * np.exp(-0.5 * tau_r * m)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------


@dataclass
class Geometry:
    """Sun and sensor geometry of a scene on its UTM grid.

    ``heading`` is the flight direction as a grid azimuth (degrees clockwise from grid north);
    the ground track passes through ``nadir_xy``; ``north_grid`` is the grid azimuth of true
    north (to turn grid azimuths into true azimuths for metadata).
    """
    grid: Grid
    epsg: int
    acquired: datetime
    sat_height: float
    heading: float
    nadir_xy: tuple[float, float]
    north_grid: float
    sun_step: float = 1000.0
    _sun: tuple = field(default=None, repr=False)

    def lonlat(self, x, y):
        t = Transformer.from_crs(self.epsg, 4326, always_xy=True)
        return t.transform(x, y)

    def sun_at(self, x, y):
        """Exact sun zenith/azimuth (true north) at map points (degrees)."""
        lon, lat = self.lonlat(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
        return sun_position(lat, lon, self.acquired)

    def _sun_nodes(self):
        if self._sun is None:
            g = self.grid
            s = self.sun_step
            nx = int(math.ceil(g.nx * g.dx / s)) + 3
            ny = int(math.ceil(g.ny * g.dy / s)) + 3
            xs = g.x0 - s + np.arange(nx) * s
            ys = g.y0 + s - np.arange(ny) * s
            xx, yy = np.meshgrid(xs, ys)
            zen, az = self.sun_at(xx, yy)
            az = np.degrees(np.unwrap(np.unwrap(np.radians(az), axis=0), axis=1))
            self._sun = (xs[0], ys[0], zen, az)
        return self._sun

    def sun_grid(self, xs: np.ndarray, ys: np.ndarray):
        """Per-pixel sun zenith/azimuth (bilinear from the node grid), float32 degrees."""
        x0, y0, zen, az = self._sun_nodes()
        yp = (y0 - ys) / self.sun_step
        xp = (xs - x0) / self.sun_step
        return separable_interp(zen, yp, xp, 1), separable_interp(az, yp, xp, 1) % 360.0

    def _axes(self):
        h = math.radians(self.heading)
        ua = np.array([math.sin(h), math.cos(h)])          # along track (flight direction)
        uc = np.array([math.cos(h), -math.sin(h)])         # cross track, right of flight
        return ua, uc

    def cross_track(self, x, y):
        """Signed cross-track distance (m) from the ground track, positive right of flight."""
        _, uc = self._axes()
        return (x - self.nadir_xy[0]) * uc[0] + (y - self.nadir_xy[1]) * uc[1]

    def along_track(self, x, y):
        ua, _ = self._axes()
        return (x - self.nadir_xy[0]) * ua[0] + (y - self.nadir_xy[1]) * ua[1]

    def to_sensor(self, x, y, beta_deg: float = 0.0):
        """Horizontal components (grid east, grid north) of tan(view) toward the sensor.

        The line of sight of a pixel at cross-track distance c rises toward the track
        (−c/H across) and, for a band looking ``beta_deg`` forward, backward along the track.
        """
        ua, uc = self._axes()
        c = self.cross_track(x, y) / self.sat_height
        tb = math.tan(math.radians(beta_deg))
        vx = -c * uc[0] - tb * ua[0]
        vy = -c * uc[1] - tb * ua[1]
        return np.asarray(vx, dtype=np.float32), np.asarray(vy, dtype=np.float32)

    def view_angles(self, x, y, beta_deg: float = 0.0):
        """View zenith and azimuth (true north, direction ground → sensor), degrees."""
        vx, vy = self.to_sensor(x, y, beta_deg)
        zen = np.degrees(np.arctan(np.hypot(vx, vy)))
        az = (np.degrees(np.arctan2(vx, vy)) - self.north_grid) % 360.0
        return zen.astype(np.float32), az.astype(np.float32)

    def sun_vector(self, sun_az_true):
        """Grid unit vector toward the sun from its true azimuth (degrees)."""
        a = np.radians(np.asarray(sun_az_true) + self.north_grid)
        return np.sin(a).astype(np.float32), np.cos(a).astype(np.float32)


def grid_north(epsg: int, x: float, y: float) -> float:
    """Grid azimuth (deg) of true north at a map point."""
    to_ll = Transformer.from_crs(epsg, 4326, always_xy=True)
    to_xy = Transformer.from_crs(4326, epsg, always_xy=True)
    lon, lat = to_ll.transform(x, y)
    x2, y2 = to_xy.transform(lon, lat + 0.01)
    return math.degrees(math.atan2(x2 - x, y2 - y))


# --------------------------------------------------------------------------------------------
# clouds
# --------------------------------------------------------------------------------------------

CLOUD_KINDS = ("opaque", "thin", "cirrus")
CLOUD_CLEAR, CLOUD_THIN, CLOUD_OPAQUE, CLOUD_CIRRUS = 0, 1, 2, 3


@dataclass
class CloudSpec:
    """One cloud. ``col``/``row`` place the centre of its ground footprint as fractions (0..1)
    of the image width/height; ``radius`` (m) is the semi-major axis; ``height`` (m) the
    altitude above sea level of the cloud layer."""
    kind: str = "opaque"
    col: float = 0.5
    row: float = 0.5
    radius: float = 1500.0
    height: float = 2000.0
    elongation: float = 0.75
    angle: float = 0.0
    brightness: float = 1.0
    # filled in by the scene
    x: float | None = None
    y: float | None = None

    def __post_init__(self):
        if self.kind not in CLOUD_KINDS:
            raise ValueError(f"cloud kind {self.kind!r}; expected one of {CLOUD_KINDS}")


def _cloud_alpha(kind: str, r: np.ndarray) -> np.ndarray:
    if kind == "opaque":
        return np.clip((1.0 - r) / 0.25, 0, 1)
    if kind == "thin":
        return 0.45 * np.clip((1.0 - r) / 0.5, 0, 1)
    return 0.35 * np.clip((1.0 - r) / 0.6, 0, 1)


# --------------------------------------------------------------------------------------------
# the scene
# --------------------------------------------------------------------------------------------


# default of SceneOptions.shift_m, so that l2ps.synth.coreg can shift the content of a product
# made by make_landsat/make_sentinel2 (which build their SceneOptions themselves)
CONTENT_SHIFT_M: ContextVar[tuple[float, float]] = ContextVar("content_shift_m",
                                                             default=(0.0, 0.0))


@dataclass
class SceneOptions:
    seed: int = 0
    relief: float = 1.0              # scale of the mountains (0 = plains only)
    clouds: object = True            # True / False / list[CloudSpec]
    cloud_fraction: float = 0.15     # target share of the image under cloud when clouds=True
    cirrus_fraction: float = 0.1     # cap on the share of the image under cirrus (clouds=True)
    aod: float = 0.15                # AOD at 550 nm (scene mean at the base elevation)
    water_vapor: float = 1.5         # g/cm² (scene mean at the base elevation)
    surface_temperature: float = 295.0   # K at the base elevation (thermal bands)
    snow_line: float | None = None   # m a.s.l.; default: high parts of the mountains
    bright_targets: int | None = None  # number of saturating targets (default: by area)
    # ground content displaced by (east, north) metres relative to the pixel grid (a product
    # misregistered by a known offset, for co-registration tests); None: CONTENT_SHIFT_M
    shift_m: tuple[float, float] | None = None
    fine_texture: float = 0.0        # sub-20 m surface texture amplitude (0 = off; see covers)
    # kernel-driven BRDF surface (l2ps.synth.brdf_surface): None = isotropic (default scene),
    # "global" = Roy et al. (2017) ratios for every cover, "cover" = per-cover ratios
    brdf: str | None = None


def _win_size(win) -> int:
    rs, cs = win
    return (rs.stop - rs.start) * (cs.stop - cs.start)


class CloudCover(tuple):
    """(cloud, window, α) of one cloud on a block: α > 0 only inside ``window`` (the bounding
    box of its coverage); ``full`` is the search window the coverage was evaluated on (the
    thermal mixing applies to all of it, as it always has)."""

    def __new__(cls, cloud, window, alpha, full):
        self = super().__new__(cls, (cloud, window, alpha))
        self.full = full
        return self


class Scene:
    """A synthetic scene on ``geometry.grid`` (the product's finest grid)."""

    ENV_SIGMA = 1000.0   # m, adjacency (environment) Gaussian

    def __init__(self, sensor: str, geometry: Geometry, options: SceneOptions,
                 band_beta: dict[str, float] | None = None):
        self.sensor = sensor
        self.spec = sensor_spec(sensor)
        self.geo = geometry
        self.opt = options
        self.band_beta = band_beta or {}
        g = geometry.grid
        self.grid = g
        b = g.bounds
        seed = options.seed
        L = lambda name, s, margin=0.0: Lattice(_substream(seed, name), b, s, margin)  # noqa
        # terrain
        self.lat_base = L("base", 9000.0)
        self.lat_mask = L("mountain-mask", 6000.0)
        self.lat_ridge = [L(f"ridge{i}", s) for i, s in enumerate((6000, 3000, 1500, 750, 375, 190))]
        # covers
        self.lat_lake = L("lake", 2000.0)
        self.lat_urban = L("urban", 1500.0)
        self.lat_sand = L("sand", 3000.0)
        self.lat_veg = [L("veg0", 900.0), L("veg1", 220.0)]
        self.lat_bright = L("brightness", 150.0)
        # optional sub-20 m texture (vegetation fraction, brightness, wetness, a band-specific
        # absorption): drawn only when asked for, from their own substreams, so default
        # scenes are unchanged
        self.lat_fine = [L("fine-veg", 40.0), L("fine-bright", 50.0), L("fine-wet", 60.0),
                         L("fine-spec", 30.0)] if options.fine_texture > 0 else None
        self.lat_aod = L("aod", 20000.0)
        self.lat_wv = L("wv", 25000.0)
        self.lat_temp = L("temp", 1200.0)
        # cloud edges (evaluated at displaced points, so with a margin)
        self.lat_edge = [L("edge0", 400.0, 15000.0), L("edge1", 120.0, 15000.0)]
        self.z_base = 350.0
        self.relief_amp = 900.0 * options.relief
        self.snow_line = options.snow_line if options.snow_line is not None else \
            self.z_base + 250.0 + 0.45 * self.relief_amp
        self.centres = spectra.domain_centres(sensor)
        self.doms, self.cover_table, self.veg_spec = spectra.cover_table(sensor)
        self._place_targets()
        self.clouds = self._place_clouds()
        self._env = None
        self._brdf = None
        if options.brdf is not None:
            from .brdf_surface import kernel_ratios
            self._brdf = {"ratios": kernel_ratios(sensor, options.brdf)}
        self.stats = {"max_slope": 0.0}

    # ------------------------------------------------------------------ placement
    def _place_targets(self):
        g = self.grid
        rng = _substream(self.opt.seed, "targets")
        area_km2 = g.nx * g.dx * g.ny * g.dy / 1e6
        n = self.opt.bright_targets if self.opt.bright_targets is not None else \
            max(3, int(area_km2 / 400))
        size = max(3 * g.dx, 60.0)
        self.targets = []
        for _ in range(n):
            cx = g.x0 + (0.1 + 0.8 * rng.random()) * g.nx * g.dx
            cy = g.y0 - (0.1 + 0.8 * rng.random()) * g.ny * g.dy
            self.targets.append((cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2))

    def _place_clouds(self) -> list[CloudSpec]:
        g = self.grid
        w, h = g.nx * g.dx, g.ny * g.dy
        sza, saz = self.geo.sun_at(g.x0 + w / 2, g.y0 - h / 2)
        sx, sy = self.geo.sun_vector(saz)
        tan_s = math.tan(math.radians(float(sza)))
        if self.opt.clouds is False or self.opt.clouds is None:
            clouds = []
        elif self.opt.clouds is True:
            rng = _substream(self.opt.seed, "clouds")
            clouds = []
            target = self.opt.cloud_fraction * w * h
            area = cirrus_area = 0.0
            cirrus_cap = self.opt.cirrus_fraction * w * h
            scale = min(w, h)
            while area < target and len(clouds) < 400:
                kind = rng.choice(["opaque", "opaque", "opaque", "thin", "cirrus"])
                if kind == "cirrus":
                    height = rng.uniform(8000, 11000)
                    # sheets of a few to ~15 km radius: a full-size scene needs hundreds of
                    # cumulus objects, and uncapped cirrus would then cover most of it
                    radius = min(rng.uniform(0.08, 0.2) * scale, 15000.0)
                else:
                    height = self.z_base + rng.uniform(800, 6000)
                    radius = min(rng.uniform(0.03, 0.1) * scale, rng.uniform(300, 4000))
                off = (height - self.z_base) * tan_s
                # keep the footprint and its shadow inside the image where possible
                col = rng.uniform(0.15, 0.85)
                row = rng.uniform(0.15, 0.85)
                col = float(np.clip(col + 0.5 * off * float(sx) / w, 0.05, 0.95))
                row = float(np.clip(row - 0.5 * off * float(sy) / h, 0.05, 0.95))
                c = CloudSpec(kind=str(kind), col=col, row=row, radius=float(radius),
                              height=float(height), elongation=float(rng.uniform(0.5, 1.0)),
                              angle=float(rng.uniform(0, 180)),
                              brightness=float(rng.uniform(0.85, 1.1)))
                if kind == "cirrus":
                    a_c = math.pi * radius ** 2 * c.elongation
                    if cirrus_area > 0 and cirrus_area + a_c > cirrus_cap:
                        continue          # random draws consumed: other clouds unchanged
                    cirrus_area += a_c
                clouds.append(c)
                if kind != "cirrus":
                    area += math.pi * radius ** 2 * c.elongation
        else:
            clouds = [CloudSpec(**asdict(c)) if isinstance(c, CloudSpec) else CloudSpec(**c)
                      for c in self.opt.clouds]
        for c in clouds:
            c.x = g.x0 + c.col * w
            c.y = g.y0 - c.row * h
        return sorted(clouds, key=lambda c: c.height)

    # ------------------------------------------------------------------ terrain & covers
    def _mountain_mask(self, xs, ys):
        m = self.lat_mask.grid(xs, ys)
        return np.clip((m + 0.1) / 0.8, 0, 1) ** 2 * (3 - 2 * np.clip((m + 0.1) / 0.8, 0, 1))

    def dem(self, xs, ys):
        """Elevation (m a.s.l.) on rows ys × columns xs (float32)."""
        z = self.z_base + 60.0 * self.lat_base.grid(xs, ys)
        if self.relief_amp > 0:
            ridged = np.zeros(z.shape, np.float32)
            amp = 1.0
            for lat in self.lat_ridge:
                ridged += amp * (1.0 - np.minimum(np.abs(lat.grid(xs, ys)), 1.0)) ** 2
                amp *= 0.38
            z = z + self.relief_amp * 0.55 * self._mountain_mask(xs, ys) * ridged
        return z.astype(np.float32)

    def covers(self, xs, ys, z, rows=None, cols=None):
        """(class code, vegetation fraction, brightness factor) per pixel."""
        code = spectra.COVER_CODE
        mask = self._mountain_mask(xs, ys)
        cls = np.full(z.shape, code["soil"], np.uint8)
        sand = self.lat_sand.grid(xs, ys, 1)
        cls[sand > 1.3] = code["sand"]
        urban = self.lat_urban.grid(xs, ys, 1)
        cls[(urban > 1.1) & (mask < 0.3)] = code["urban"]
        lake = self.lat_lake.grid(xs, ys, 3)
        cls[(lake > 0.9) & (mask < 0.03)] = code["water"]
        cls[z > self.snow_line] = code["snow"]
        veg = 0.6 + 0.35 * self.lat_veg[0].grid(xs, ys, 1) + 0.2 * self.lat_veg[1].grid(xs, ys, 1)
        veg -= 0.5 * mask * np.clip((z - self.z_base) / max(self.relief_amp, 1.0), 0, 1)
        veg[cls == code["urban"]] *= 0.35
        veg[cls == code["sand"]] *= 0.15
        if self.lat_fine is not None:     # sub-20 m vegetation texture (fields, crowns)
            veg += self.opt.fine_texture * (0.05 * self.lat_fine[0].grid(xs, ys, 3)
                                            + 0.35 * self._parcels(xs, ys))
        veg = np.clip(veg, 0, 1)
        veg[(cls == code["water"]) | (cls == code["snow"])] = 0
        bright = 1.0 + 0.08 * self.lat_bright.grid(xs, ys, 1)
        if self.lat_fine is not None:     # sub-20 m brightness texture (all bands alike)
            bright *= 1.0 + 0.04 * self.opt.fine_texture * self.lat_fine[1].grid(xs, ys, 3)
        if rows is not None:
            bright += 0.02 * hash_noise(rows, cols, self.opt.seed)
        for (x0, y0, x1, y1) in self.targets:
            inside = (xs[None, :] >= x0) & (xs[None, :] < x1) & (ys[:, None] >= y0) & (ys[:, None] < y1)
            cls[inside] = code["bright"]
            veg[inside] = 0
            bright[inside] = 1.0
        return cls, veg.astype(np.float32), bright.astype(np.float32)

    def surface(self, band_idx: int, cls, veg, bright, fine=None) -> np.ndarray:
        """Surface reflectance of reflective band ``band_idx`` (index into self.doms).

        ``fine`` (optional, from :meth:`fine_fields`): wetness w darkens by 1 − w·k(λ), k from
        0.3 (blue) to 1 (SWIR); an absorption texture a scales by 1 + a·cos(2π(λ − 0.49)/0.8),
        a factor the 10 m bands do not fully span (as real red-edge/SWIR detail)."""
        base = self.cover_table[:, band_idx][cls]
        rho = bright * ((1 - veg) * base + veg * self.veg_spec[band_idx])
        if fine is not None:
            wl = self.centres[self.doms[band_idx]]
            rho = rho * (1.0 - fine[0] * (0.3 + 0.7 * min(max((wl - 0.45) / 1.2, 0.0), 1.0)))
            rho = rho * (1.0 + fine[1] * math.cos(2 * math.pi * (wl - 0.49) / 0.8))
        return rho.astype(np.float32)

    # ------------------------------------------------------------------ BRDF surface
    BRDF_STD_STEP = 5000.0   # m, node spacing of the normalisation sun zenith

    def _std_zenith(self, xs, ys):
        """Normalisation sun zenith (degrees, spec 02 §7) per pixel: exact on 5 km nodes
        (:func:`l2ps.synth.brdf_surface.standard_sun_zenith`), bilinear in between."""
        if "std" not in self._brdf:
            from .brdf_surface import standard_sun_zenith
            g, s = self.grid, self.BRDF_STD_STEP
            nx = int(math.ceil(g.nx * g.dx / s)) + 3
            ny = int(math.ceil(g.ny * g.dy / s)) + 3
            nxs = g.x0 - s + np.arange(nx) * s
            nys = g.y0 + s - np.arange(ny) * s
            lon, lat = self.geo.lonlat(*np.meshgrid(nxs, nys))
            z = np.array([[standard_sun_zenith(float(la), float(lo), self.geo.acquired)
                           for la, lo in zip(rla, rlo)] for rla, rlo in zip(lat, lon)])
            self._brdf["std"] = (nxs[0], nys[0], z)
        x0, y0, z = self._brdf["std"]
        s = self.BRDF_STD_STEP
        return separable_interp(z, (y0 - ys) / s, (xs - x0) / s, 1)

    def _brdf_kernels(self, blk: dict):
        """(K_vol, K_geo) at the pixel geometry and at the NBAR geometry (θs_std, 0, 0) of a
        block (float32, cached in the block). φ = sun azimuth − view azimuth (0 = hot spot)."""
        k = blk.get("_brdf")
        if k is None:
            from .brdf_surface import geometric_kernel, volumetric_kernel
            sz = np.radians(blk["sza"].astype(np.float64))
            vz = np.radians(blk["vza"].astype(np.float64))
            phi = np.radians(blk["saa"].astype(np.float64) - blk["vaa"].astype(np.float64))
            std = np.radians(self._std_zenith(blk["xs"], blk["ys"]).astype(np.float64))
            k = {"dir": (volumetric_kernel(sz, vz, phi).astype(np.float32),
                         geometric_kernel(sz, vz, phi).astype(np.float32)),
                 "nbar": (volumetric_kernel(std, 0.0, 0.0).astype(np.float32),
                          geometric_kernel(std, 0.0, 0.0).astype(np.float32)),
                 "std": std}
            blk["_brdf"] = k
        return k

    def surface_brdf(self, band_idx: int, blk: dict, nbar: bool = False) -> np.ndarray:
        """Directional surface reflectance (``nbar`` False: at the pixel's sun and view
        geometry) or the NBAR truth (True: nadir view, normalisation sun zenith) of reflective
        band ``band_idx`` on a block: each cover's (and the vegetation end member's) spectrum
        times 1 + V·K_vol + G·K_geo, mixed as :meth:`surface`."""
        kv, kg = self._brdf_kernels(blk)["nbar" if nbar else "dir"]
        V, Gm = self._brdf["ratios"]
        cls, veg, bright = blk["cls"], blk["veg"], blk["bright"]
        f32 = np.float32
        shape_cov = 1 + V[:, band_idx].astype(f32)[cls] * kv + Gm[:, band_idx].astype(f32)[cls] * kg
        nv = len(spectra.COVERS)
        shape_veg = 1 + f32(V[nv, band_idx]) * kv + f32(Gm[nv, band_idx]) * kg
        base = self.cover_table[:, band_idx][cls]
        rho = bright * ((1 - veg) * base * shape_cov + veg * self.veg_spec[band_idx] * shape_veg)
        fine = blk.get("fine")
        if fine is not None:
            wl = self.centres[self.doms[band_idx]]
            rho = rho * (1.0 - fine[0] * (0.3 + 0.7 * min(max((wl - 0.45) / 1.2, 0.0), 1.0)))
            rho = rho * (1.0 + fine[1] * math.cos(2 * math.pi * (wl - 0.49) / 0.8))
        return rho.astype(np.float32)

    def fine_fields(self, xs, ys):
        """(wetness 0..~0.3, absorption texture ±~0.03) when ``fine_texture`` > 0, else None."""
        if self.lat_fine is None:
            return None
        ft = self.opt.fine_texture
        w = 0.12 * ft * np.maximum(self.lat_fine[2].grid(xs, ys, 3), 0)
        a = 0.03 * ft * self.lat_fine[3].grid(xs, ys, 3)
        return np.stack([w, a]).astype(np.float32)

    PARCEL = 80.0   # m, mean spacing of the Voronoi field parcels of the fine texture

    def _parcels(self, xs, ys):
        """Piecewise-constant field parcels (Voronoi cells of a jittered PARCEL lattice, sharp
        edges at arbitrary positions), value in [−1, 1) per parcel; a function of map
        coordinates only (block independent)."""
        s = self.PARCEL
        x0, _, _, y0 = self.grid.bounds
        ix = np.floor((xs - x0) / s).astype(np.int64) + 4
        iy = np.floor((y0 - ys) / s).astype(np.int64) + 4
        seed = self.opt.seed * 7919 + 17
        best = np.full((len(ys), len(xs)), np.inf, np.float32)
        val = np.zeros((len(ys), len(xs)), np.float32)
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                cy, cx = iy + di, ix + dj
                px = x0 + (cx[None, :] - 4 + 0.5 + 0.45 * hash_noise(cy, cx, seed)) * s
                py = y0 - (cy[:, None] - 4 + 0.5 + 0.45 * hash_noise(cy, cx, seed + 1)) * s
                d2 = (xs[None, :] - px) ** 2 + (ys[:, None] - py) ** 2
                closer = d2 < best
                best = np.where(closer, d2, best)
                val = np.where(closer, hash_noise(cy, cx, seed + 2), val)
        return val

    def aod_field(self, xs, ys, z):
        """AOD at 550 nm: scene value ±15 % (50 km structures), less over mountains."""
        a = self.opt.aod * (1 + 0.15 * self.lat_aod.grid(xs, ys, 1)) \
            * np.exp(-(z - self.z_base) / 2500.0)
        return _clip_axis(a, "aod").astype(np.float32)

    def wv_field(self, xs, ys, z):
        """Water vapour (g/cm²): scene value ±10 %, less over mountains."""
        w = self.opt.water_vapor * (1 + 0.1 * self.lat_wv.grid(xs, ys, 1)) \
            * np.exp(-(z - self.z_base) / 2200.0)
        return _clip_axis(w, "wv").astype(np.float32)

    # ------------------------------------------------------------------ environment
    def _env_fields(self):
        """Smoothed surface reflectance per reflective band on a coarse grid (adjacency)."""
        if self._env is None:
            g = self.grid
            step = max(4 * g.dx, 100.0)
            nx = int(math.ceil(g.nx * g.dx / step)) + 1
            ny = int(math.ceil(g.ny * g.dy / step)) + 1
            xs = g.x0 + (np.arange(nx) + 0.5) * step
            ys = g.y0 - (np.arange(ny) + 0.5) * step
            z = self.dem(xs, ys)
            cls, veg, bright = self.covers(xs, ys, z)
            sigma = self.ENV_SIGMA / step
            env = np.stack([ndimage.gaussian_filter(self.surface(i, cls, veg, bright), sigma,
                                                    mode="nearest")
                            for i in range(len(self.doms))])
            self._env = (step, g.x0 + 0.5 * step, g.y0 - 0.5 * step, env)
        return self._env

    def env(self, band_idx, xs, ys):
        step, x0, y0, env = self._env_fields()
        return separable_interp(env[band_idx], (y0 - ys) / step, (xs - x0) / step, 1)

    # ------------------------------------------------------------------ clouds per block
    def _cloud_r(self, c: CloudSpec, gx, gy):
        a = c.radius
        b = c.radius * c.elongation
        ca, sa = math.cos(math.radians(c.angle)), math.sin(math.radians(c.angle))
        dx, dy = gx - c.x, gy - c.y
        u = (dx * ca + dy * sa) / a
        v = (-dx * sa + dy * ca) / b
        r = np.sqrt(u * u + v * v)
        r += 0.22 * self.lat_edge[0].points(gx, gy) + 0.08 * self.lat_edge[1].points(gx, gy)
        return r

    def _window(self, c: CloudSpec, xs, ys, shift_max: float):
        ext = 1.8 * c.radius + shift_max
        cols = np.nonzero((xs > c.x - ext) & (xs < c.x + ext))[0]
        rows = np.nonzero((ys > c.y - ext) & (ys < c.y + ext))[0]
        if len(cols) == 0 or len(rows) == 0:
            return None
        return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)

    def _edge_skip(self) -> float:
        """Elliptic radius beyond which no edge perturbation can bring r below 1."""
        m0 = float(np.abs(self.lat_edge[0].values).max())
        m1 = float(np.abs(self.lat_edge[1].values).max())
        return 1.0 + (0.22 * m0 + 0.08 * m1) * 1.001 + 1e-6

    def _edge_bounds(self):
        """Per-cell largest |node| of the two edge lattices (cached)."""
        if getattr(self, "_edge_mx", None) is None:
            from ._kernels import cell_maxabs
            self._edge_mx = tuple(cell_maxabs(lat.values) for lat in self.lat_edge)
        return self._edge_mx

    def cloud_alphas(self, xs, ys, z, vx, vy, scale=None):
        """Per-cloud coverage α (list of (cloud, window, α)) for a line of sight with horizontal
        tan-components (vx, vy) per pixel (toward the sensor or the sun).

        α is :func:`_cloud_alpha` of :meth:`_cloud_r` at the displaced ground points, computed
        by the numba kernel :func:`l2ps.synth._kernels.cloud_alphas` (same numbers)."""
        from ._kernels import KIND_CODE, cloud_alphas
        vmax = float(np.max(np.hypot(vx, vy))) if np.size(vx) else 0.0
        zmin = float(z.min())
        e0, e1 = self.lat_edge
        vx = np.broadcast_to(np.asarray(vx, np.float32), z.shape)
        vy = np.broadcast_to(np.asarray(vy, np.float32), z.shape)
        z = np.asarray(z, np.float32)
        todo = []
        for c in self.clouds:
            win = self._window(c, xs, ys, (c.height - zmin) * vmax + 200.0)
            if win is not None:
                todo.append((c, win))
        out = []
        xs64, ys64 = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
        skip = self._edge_skip()
        # clouds in batches of at most ~16 M window pixels (bounded scratch memory)
        k0 = 0
        while k0 < len(todo):
            k1, total = k0, 0
            while k1 < len(todo) and (k1 == k0 or total + _win_size(todo[k1][1]) <= 2 ** 24):
                total += _win_size(todo[k1][1])
                k1 += 1
            batch = todo[k0:k1]
            k0 = k1
            params = np.array([(c.height, c.x, c.y, c.radius, c.radius * c.elongation,
                                math.cos(math.radians(c.angle)), math.sin(math.radians(c.angle)))
                               for c, _w in batch], np.float64)
            kinds = np.array([KIND_CODE[c.kind] for c, _w in batch], np.int64)
            windows = np.array([(rs.start, rs.stop, cs.start, cs.stop)
                                for _c, (rs, cs) in batch], np.int64)
            sizes = (windows[:, 1] - windows[:, 0]) * (windows[:, 3] - windows[:, 2])
            offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            flat = np.empty(int(offsets[-1]), np.float32)
            counts = cloud_alphas(xs64, ys64, z, vx, vy, params, kinds, windows, offsets,
                                  e0.values, float(e0.x0), float(e0.y0), e0.spacing,
                                  e1.values, float(e1.x0), float(e1.y0), e1.spacing, skip, flat,
                                  *self._edge_bounds())
            for k, (c, (rs, cs)) in enumerate(batch):
                if not counts[k]:
                    continue
                alpha = flat[offsets[k]:offsets[k + 1]].reshape(rs.stop - rs.start,
                                                               cs.stop - cs.start)
                # keep the bounding box of α > 0 only (α is 0 elsewhere in the window)
                rows = np.nonzero(alpha.any(axis=1))[0]
                cols = np.nonzero(alpha.any(axis=0))[0]
                r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
                tight = (slice(rs.start + r0, rs.start + r1), slice(cs.start + c0, cs.start + c1))
                out.append(CloudCover(c, tight, alpha[r0:r1, c0:c1].copy(), (rs, cs)))
        return out

    # ------------------------------------------------------------------ a block
    def block(self, row0: int, nrows: int) -> dict:
        """Common fields of rows [row0, row0+nrows) of the grid (all columns)."""
        self._mix_key = self._mix = self._mix_alphas = None   # caches of the previous block
        g = self.grid
        rows = np.arange(row0, row0 + nrows)
        cols = np.arange(g.nx)
        shift = self.opt.shift_m if self.opt.shift_m is not None else CONTENT_SHIFT_M.get()
        xs = g.x0 + (cols + 0.5) * g.dx - float(shift[0])   # content at (x − Δx, y − Δy)
        ys = g.y0 - (rows + 0.5) * g.dy - float(shift[1])
        # DEM with a one-pixel halo for slopes
        xh = np.concatenate([[xs[0] - g.dx], xs, [xs[-1] + g.dx]])
        yh = np.concatenate([[ys[0] + g.dy], ys, [ys[-1] - g.dy]])
        zh = self.dem(xh, yh)
        z = zh[1:-1, 1:-1]
        dzdx = (zh[1:-1, 2:] - zh[1:-1, :-2]) / (2 * g.dx)
        dzdy = (zh[:-2, 1:-1] - zh[2:, 1:-1]) / (2 * g.dy)   # north positive
        slope = np.arctan(np.hypot(dzdx, dzdy))
        self.stats["max_slope"] = max(self.stats["max_slope"], float(np.degrees(slope.max())))
        sza, saz = self.geo.sun_grid(xs, ys)
        sx, sy = self.geo.sun_vector(saz)
        # unit normal n = (−dz/dx, −dz/dy, 1)/|..|; sun s = (sin θs·sx, sin θs·sy, cos θs)
        ts = np.radians(sza)
        norm = np.sqrt(1 + dzdx ** 2 + dzdy ** 2)
        cos_i = ((-dzdx * np.sin(ts) * sx - dzdy * np.sin(ts) * sy + np.cos(ts)) / norm)
        cos_i = cos_i.astype(np.float32)
        skyview = ((1 + np.cos(slope)) / 2).astype(np.float32)
        cls, veg, bright = self.covers(xs, ys, z, rows, cols)
        aod = self.aod_field(xs, ys, z)
        wv = self.wv_field(xs, ys, z)
        # cloud shadows: direct-beam transmission through the clouds toward the sun
        tan_s = np.tan(ts).astype(np.float32)
        shade = np.ones(z.shape, np.float32)
        for c, (rs, cs), a in self.cloud_alphas(xs, ys, z, tan_s * sx, tan_s * sy):
            k = {"opaque": 0.97, "thin": 0.8, "cirrus": 0.4}[c.kind]
            shade[rs, cs] *= 1 - k * a
        vza, vaa = self.geo.view_angles(xs[None, :], ys[:, None])
        return dict(row0=row0, rows=rows, cols=cols, xs=xs, ys=ys, z=z, slope=slope, cos_i=cos_i,
                    skyview=skyview, cls=cls, veg=veg, bright=bright, aod=aod, wv=wv,
                    sza=sza, saa=saz, shade=shade, vza=vza, vaa=vaa, fine=self.fine_fields(xs, ys))

    def cloud_cover(self, blk: dict, beta: float = 0.0):
        """(list of cloud alphas, class mask) for the view geometry of a band."""
        vx, vy = self.geo.to_sensor(blk["xs"][None, :], blk["ys"][:, None], beta)
        alphas = self.cloud_alphas(blk["xs"], blk["ys"], blk["z"], vx, vy)
        mask = np.zeros(blk["z"].shape, np.uint8)
        for c, (rs, cs), a in alphas:
            sub = mask[rs, cs]
            if c.kind == "opaque":
                sub[a >= 0.5] = CLOUD_OPAQUE
                sub[(a > 0.05) & (a < 0.5) & (sub != CLOUD_OPAQUE)] = CLOUD_THIN
            elif c.kind == "thin":
                sub[(a > 0.05) & (sub != CLOUD_OPAQUE)] = CLOUD_THIN
            else:
                sub[(a > 0.05) & (sub == CLOUD_CLEAR)] = CLOUD_CIRRUS
        return alphas, mask

    # fast path of toa_band (numba kernel + 6S terms per column chunk); False after a
    # verification against the reference path failed (then the reference path is used)
    FAST_TOA = True

    def _block_cache(self, blk: dict) -> dict:
        """Band-independent fields of a block used by every band (computed once per block)."""
        cache = blk.get("_cache")
        if cache is None:
            f32 = np.float32
            z_km = blk["z"] / 1000.0
            mus = np.cos(np.radians(blk["sza"]))
            cache = dict(
                z_km=z_km, mus=mus,
                ez8=np.exp(-np.asarray(z_km, dtype=f32) / 8.0),
                cos_i_pos=np.maximum(blk["cos_i"], 0),
                raa=np.abs((blk["saa"] - blk["vaa"] + 180.0) % 360.0 - 180.0),
                airmass=1 / np.cos(np.radians(blk["sza"])) + 1 / np.cos(np.radians(blk["vza"])))
            blk["_cache"] = cache
        return cache

    def _direct_fraction(self, wl: float, cache: dict, aod) -> np.ndarray:
        """:func:`direct_fraction` with the band-independent parts taken from the block cache
        (same numbers)."""
        f32 = np.float32
        tau_r = (0.008569 * wl ** -4 * (1 + 0.0113 * wl ** -2 + 0.00013 * wl ** -4)
                 * cache["ez8"]).astype(f32)
        tau_a = (np.asarray(aod, dtype=f32) * (wl / 0.55) ** -1.3).astype(f32)
        mu = cache["mus"].astype(f32, copy=False)
        direct = tau_r + tau_a
        np.negative(direct, out=direct)
        np.divide(direct, mu, out=direct)
        np.exp(direct, out=direct)
        tau_r *= f32(0.5)
        tau_a *= f32(0.22)
        total = np.add(tau_r, tau_a, out=tau_r)
        np.negative(total, out=total)
        np.divide(total, mu, out=total)
        np.exp(total, out=total)
        np.divide(direct, total, out=direct)
        return direct

    def _sixs_tiles(self, blk: dict, dom: str, tables):
        """6S terms of ``dom`` per geometry tile (SIXS_CHUNK² pixels of the grid, fixed in the
        grid so that a block renders the same whatever its rows): the terms at the sun and
        view angles of the tile's centre. Returns (scattering (n, n_aod, n_elev, 5), gas
        (n, n_wv, n_elev, 3), BandTermsGrids, (tr0, tr1, nct)) with tiles row-major over
        tile rows tr0..tr1 and nct tile columns."""
        cache = blk["_cache"]
        geo = cache.get("tile_geometry")
        T = SIXS_CHUNK
        g = self.grid
        r0, n = int(blk["row0"]), len(blk["rows"])
        tr0, tr1 = r0 // T, (r0 + n - 1) // T
        nct = -(-g.nx // T)
        if geo is None:
            ax = tables.axes
            shift = self.opt.shift_m if self.opt.shift_m is not None else CONTENT_SHIFT_M.get()
            rc = np.arange(tr0, tr1 + 1) * T + (T - 1) / 2.0
            cc = np.arange(nct) * T + (T - 1) / 2.0
            xs = g.x0 + (cc + 0.5) * g.dx - float(shift[0])
            ys = g.y0 - (rc + 0.5) * g.dy - float(shift[1])
            sza, saa = self.geo.sun_grid(xs, ys)
            vza, vaa = self.geo.view_angles(xs[None, :], ys[:, None])
            raa = np.abs((saa - vaa + 180.0) % 360.0 - 180.0)
            sza = np.clip(sza, ax["sza"][0], ax["sza"][-1])
            vza = np.clip(vza, ax["vza"][0], ax["vza"][-1])
            geo = [(float(a), float(b), float(c)) for a, b, c in
                   zip(sza.ravel(), vza.ravel(), raa.ravel())]
            cache["tile_geometry"] = geo
        grids = [tables.terms_grid(self.sensor, dom, *t) for t in geo]
        scat = np.ascontiguousarray(np.stack([t.scattering for t in grids]), np.float32)
        gas = np.ascontiguousarray(np.stack([t.gas for t in grids]), np.float32)
        return scat, gas, grids, (tr0, tr1, nct)

    def _tile_slices(self, blk: dict, layout):
        """(tile index, block rows slice, columns slice) of every geometry tile in a block."""
        tr0, tr1, nct = layout
        T = SIXS_CHUNK
        r0, n = int(blk["row0"]), len(blk["rows"])
        for tr in range(tr0, tr1 + 1):
            rs = slice(max(tr * T, r0) - r0, min((tr + 1) * T, r0 + n) - r0)
            for tc in range(nct):
                yield (tr - tr0) * nct + tc, rs, slice(tc * T, (tc + 1) * T)

    def toa_band(self, blk: dict, band_idx: int, alphas) -> tuple[np.ndarray, np.ndarray]:
        """(surface reflectance, TOA reflectance) of a reflective band for a block.

        Surface, illumination and the 6S tables are evaluated in one numba kernel
        (:func:`l2ps.synth._kernels.surface_toa`), checked on the block's first rows against
        :meth:`toa_band_reference` (the NumPy expressions of the model), which is used instead
        when they differ or when the 6S tables are not installed."""
        tables = sixs_tables()
        if tables is None or not Scene.FAST_TOA or self._brdf is not None:
            return self.toa_band_reference(blk, band_idx, alphas)
        from ._kernels import surface_toa
        f32 = np.float32
        cache = self._block_cache(blk)
        dom = self.doms[band_idx]
        wl = self.centres[dom]
        ax = tables.axes
        if "aod_c" not in cache:
            clip = lambda v, k: np.ascontiguousarray(  # noqa: E731
                np.clip(np.asarray(v, dtype=f32), ax[k][0], ax[k][-1]))
            cache.update(aod_c=clip(blk["aod"], "aod"), wv_c=clip(blk["wv"], "wv"),
                         elev_c=clip(np.asarray(cache["z_km"], dtype=f32), "elev"))
        env = np.ascontiguousarray(self.env(band_idx, blk["xs"], blk["ys"]), f32)
        fdir = self._direct_fraction(wl, cache, blk["aod"])
        scat, gas, grids, layout = self._sixs_tiles(blk, dom, tables)
        fine = blk.get("fine")
        if fine is not None:
            k_wet = f32(0.3 + 0.7 * min(max((wl - 0.45) / 1.2, 0.0), 1.0))
            k_abs = f32(math.cos(2 * math.pi * (wl - 0.49) / 0.8))
            fw, fa = np.ascontiguousarray(fine[0], f32), np.ascontiguousarray(fine[1], f32)
        else:
            k_wet = k_abs = f32(0.0)
            fw = fa = np.zeros((0, 0), f32)
        # ρ in the memory layout NumPy gives the reference expression (the block means of the
        # 20/60 m Sentinel-2 bands sum in memory order); it depends on the layouts of the
        # block's fields only, so the reference surface of one band tells it for all
        if "rho_order" not in cache:
            r = self.surface(band_idx, blk["cls"], blk["veg"], blk["bright"], fine)
            cache["rho_order"] = "F" if r.flags.f_contiguous and not r.flags.c_contiguous \
                else "C"
        order = cache["rho_order"]
        rho = np.empty(blk["z"].shape, f32, order=order)
        toa = np.empty(blk["z"].shape, f32)
        if "contig" not in cache:    # row-major copies of the kernel inputs, once per block
            cache["contig"] = {k: np.ascontiguousarray(v, f32) for k, v in (
                ("veg", blk["veg"]), ("bright", blk["bright"]), ("shade", blk["shade"]),
                ("cos_i_pos", cache["cos_i_pos"]), ("mus", cache["mus"]),
                ("skyview", blk["skyview"]))}
            cache["contig"]["cls"] = np.ascontiguousarray(blk["cls"])
        cc = cache["contig"]
        c = lambda name: cc[name]  # noqa: E731
        surface_toa(cc["cls"], c("veg"), c("bright"),
                    np.ascontiguousarray(self.cover_table[:, band_idx], f32),
                    f32(self.veg_spec[band_idx]), fw, fa, k_wet, k_abs, fdir, c("shade"),
                    c("cos_i_pos"), c("mus"), c("skyview"), env,
                    cache["aod_c"], cache["wv_c"], cache["elev_c"], int(blk["row0"]),
                    SIXS_CHUNK, layout[0], layout[2], scat, gas,
                    ax["aod"].astype(f32), ax["elev"].astype(f32), ax["wv"].astype(f32),
                    f32(1e-6), rho, toa)
        if not self._check_fast_toa(blk, band_idx, rho, toa, env, fdir, grids, layout):
            Scene.FAST_TOA = False
            return self.toa_band_reference(blk, band_idx, alphas)
        self._mix_clouds(toa, wl, alphas, cache["airmass"])
        return rho, toa

    def _check_fast_toa(self, blk, band_idx, rho, toa, env, fdir, grids, layout,
                        nrows: int = 2) -> bool:
        """The kernel's ρ and ρ_TOA on the first ``nrows`` rows equal the reference NumPy
        expressions (``surface`` and ``BandTermsGrid.toa`` per geometry tile)."""
        n = min(nrows, rho.shape[0], SIXS_CHUNK - int(blk["row0"]) % SIXS_CHUNK)
        sub = {k: (v[:n] if isinstance(v, np.ndarray) and v.shape[:1] == (rho.shape[0],)
                   and v.ndim == 2 else v) for k, v in blk.items()}
        fine = blk.get("fine")
        ref_rho = self.surface(band_idx, sub["cls"], sub["veg"], sub["bright"],
                               None if fine is None else fine[:, :n])
        if not np.array_equal(ref_rho, rho[:n]):
            return False
        cache = blk["_cache"]
        illum = fdir[:n] * sub["shade"] * np.maximum(sub["cos_i"], 0) / cache["mus"][:n] \
            + (1 - fdir[:n]) * sub["skyview"]
        rs = ref_rho * illum
        for k, _rows, cols in self._tile_slices(blk, layout):
            if k >= layout[2]:
                break                                   # first tile row only
            sl = (slice(0, n), cols)
            ref = grids[k].toa(rs[sl], env[sl], cache["aod_c"][sl], cache["wv_c"][sl],
                               cache["elev_c"][sl])
            if not np.array_equal(np.asarray(ref, np.float32), toa[sl]):
                return False
        return True

    def _mix_clouds(self, toa, wl: float, alphas, airmass) -> None:
        """Clouds over the clear-sky TOA: (1 − α)·ρ_TOA + α·ρ_cloud·T_above (in place), only
        where α > 0 (elsewhere the expression leaves ρ_TOA unchanged); the pixels with α > 0
        and their air mass are gathered once per list of clouds (shared by the bands)."""
        key = id(alphas)
        if getattr(self, "_mix_key", None) != key:
            self._mix = []
            for c, (rs, cs), a in alphas:
                nz = a > 0
                if nz.any():
                    self._mix.append((c, rs, cs, nz, a[nz], airmass[rs, cs][nz]))
            self._mix_key, self._mix_alphas = key, alphas   # keep alphas alive (id stays valid)
        wv = self.opt.water_vapor
        k = spectra.water_vapour_absorption(wl)
        for c, rs, cs, nz, an, m in self._mix:
            rc = spectra.reflectance("cirrus" if c.kind == "cirrus" else "cloud", wl) \
                * c.brightness
            wv_above = wv * math.exp(-c.height / 2000.0)
            tau_r = 0.008569 * wl ** -4 * math.exp(-c.height / 8000.0)
            tr = (np.exp(-k * (wv_above * m) ** 0.6) * np.exp(-0.5 * tau_r * m)).astype(np.float32)
            sub = toa[rs, cs]
            sub[nz] = (1 - an) * sub[nz] + an * rc * tr

    def toa_band_reference(self, blk: dict, band_idx: int, alphas) -> tuple[np.ndarray, np.ndarray]:
        """(surface reflectance, TOA reflectance) of a reflective band for a block — the model
        in NumPy expressions (reference of the fast path, and the path without 6S tables)."""
        dom = self.doms[band_idx]
        wl = self.centres[dom]
        if self._brdf is not None:
            rho = self.surface_brdf(band_idx, blk)
        else:
            rho = self.surface(band_idx, blk["cls"], blk["veg"], blk["bright"], blk.get("fine"))
        env = self.env(band_idx, blk["xs"], blk["ys"])
        z_km = blk["z"] / 1000.0
        fdir = direct_fraction(wl, blk["sza"], blk["aod"], z_km)
        mus = np.cos(np.radians(blk["sza"]))
        illum = fdir * blk["shade"] * np.maximum(blk["cos_i"], 0) / mus + (1 - fdir) * blk["skyview"]
        raa = np.abs((blk["saa"] - blk["vaa"] + 180.0) % 360.0 - 180.0)
        tables = sixs_tables()
        if tables is None:
            toa = surface_to_toa(self.sensor, dom, wl, rho * illum, env, blk["sza"],
                                 blk["vza"], raa, blk["aod"], blk["wv"], z_km)
        else:       # 6S terms per geometry tile (block independent), per-pixel AOD/WV/z
            cache = self._block_cache(blk)
            ax = tables.axes
            clip = lambda v, k: np.clip(np.asarray(v, np.float32), ax[k][0], ax[k][-1])  # noqa
            aod, wv, elev = clip(blk["aod"], "aod"), clip(blk["wv"], "wv"), clip(z_km, "elev")
            _s, _g, grids, layout = self._sixs_tiles(blk, dom, tables)
            rs_ = rho * illum
            toa = np.empty(rho.shape, np.float32)
            for k, rows, cols in self._tile_slices(blk, layout):
                sl = (rows, cols)
                toa[sl] = grids[k].toa(rs_[sl], env[sl], aod[sl], wv[sl], elev[sl])
            del cache
        for c, (rs, cs), a in alphas:
            spec = "cirrus" if c.kind == "cirrus" else "cloud"
            rc = spectra.reflectance(spec, wl) * c.brightness
            tr = above_cloud_transmittance(wl, c.height, self.opt.water_vapor,
                                           blk["sza"][rs, cs], blk["vza"][rs, cs])
            sub = toa[rs, cs]
            toa[rs, cs] = (1 - a) * sub + a * rc * tr
        return rho, toa

    def brightness_temperature(self, blk: dict, alphas) -> tuple[np.ndarray, np.ndarray]:
        """(surface temperature K, TOA brightness temperature K) for a block."""
        code = spectra.COVER_CODE
        t0 = self.opt.surface_temperature
        cls = blk["cls"]
        ts = t0 + 6.0 * (1 - blk["veg"]) - 3.0 * blk["veg"] \
            - 6.5e-3 * (blk["z"] - self.z_base) + 1.5 * self.lat_temp.grid(blk["xs"], blk["ys"], 1)
        ts = np.where(cls == code["water"], t0 - 7.0, ts)
        ts = np.where(cls == code["urban"], ts + 4.0, ts)
        ts = np.where(cls == code["snow"], np.minimum(ts, 272.0), ts)
        ts = ts - 4.0 * (1 - blk["shade"])     # cloud shadows are cooler
        ts = ts.astype(np.float32)
        bt = ts.copy()
        for cover in alphas:
            c, (rs_t, cs_t), a_t = cover
            # α on the whole search window (0 outside its bounding box): the radiance mixing
            # below is applied to all of the window, as before the bounding boxes
            rs, cs = getattr(cover, "full", (rs_t, cs_t))
            a = np.zeros((rs.stop - rs.start, cs.stop - cs.start), np.float32)
            a[rs_t.start - rs.start:rs_t.stop - rs.start,
              cs_t.start - cs.start:cs_t.stop - cs.start] = a_t
            tc = t0 + 6.5e-3 * self.z_base - 6.5e-3 * c.height
            eps = np.minimum(1.0, a * (1.0 if c.kind == "opaque" else 1.6))
            # mix in radiance space with a generic 11 µm Planck function
            bt[rs, cs] = _planck_mix(bt[rs, cs], tc, eps)
        return ts, bt


def _planck_mix(t1, t2, w):
    c2 = 1.4388e4 / 11.0
    l1 = 1.0 / (np.exp(c2 / t1) - 1)
    l2 = 1.0 / (np.exp(c2 / t2) - 1)
    lm = (1 - w) * l1 + w * l2
    return (c2 / np.log(1 + 1 / lm)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# truth writing
# --------------------------------------------------------------------------------------------

TRUTH_LAYERS = {
    # name: (dtype, nodata, description)
    "cloud": ("uint8", None, "0 clear, 1 thin cloud, 2 opaque cloud, 3 cirrus"),
    "shadow": ("uint8", None, "1 = cloud shadow (direct beam transmission < 0.5)"),
    "snow": ("uint8", None, "1 = snow cover"),
    "water": ("uint8", None, "1 = water"),
    "cover": ("uint8", None, "land cover class code (see truth.json covers)"),
    "saturated": ("uint8", None, "1 = saturated in at least one band"),
    "nodata": ("uint8", None, "1 = outside the footprint / no data"),
    "dem": ("float32", None, "elevation, m a.s.l."),
    "aod550": ("float32", None, "aerosol optical depth at 550 nm"),
    "water_vapor": ("float32", None, "precipitable water vapour, g/cm2"),
    "sun_zenith": ("float32", None, "sun zenith, degrees (per pixel, as used for the DN)"),
    "sun_azimuth": ("float32", None, "sun azimuth, degrees clockwise from true north"),
    "view_zenith": ("float32", None, "view zenith, degrees"),
    "view_azimuth": ("float32", None, "view azimuth (ground to sensor), degrees from true north"),
}


class WriteQueue:
    """Raster writes done in order by one background thread, so that GDAL compresses a strip
    while the next one is rendered (rasterio releases the GIL while GDAL works). At most one
    finished strip waits (:meth:`end_strip`), which bounds the memory. The files are the same
    as with direct writes: one thread, submission order. ``threaded=False`` writes at once."""

    def __init__(self, threaded: bool = True):
        from concurrent.futures import ThreadPoolExecutor
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="l2ps-synth-write") \
            if threaded else None
        self._current: list = []
        self._previous: list = []

    #: GDAL block cache (MB) while writing: tiles that a strip fills only partly stay in the
    #: cache until the next strip completes them; GDAL's default (5 % of the RAM) lets them
    #: pile up to gigabytes
    GDAL_CACHEMAX_MB = 256

    def env(self):
        """The GDAL configuration of the writes (enter it around the strip loop too)."""
        import rasterio
        return rasterio.Env(GDAL_CACHEMAX=self.GDAL_CACHEMAX_MB)

    def _run(self, fn, args, kwargs):
        with self.env():
            fn(*args, **kwargs)

    def submit(self, fn, *args, **kwargs):
        if self._pool is None:
            fn(*args, **kwargs)
        else:
            self._current.append(self._pool.submit(self._run, fn, args, kwargs))

    def end_strip(self) -> None:
        """Wait for the writes of the strip before the one just submitted."""
        for f in self._previous:
            f.result()
        self._previous, self._current = self._current, []

    def close(self) -> None:
        """Wait for every write (re-raising the first error) and stop the thread."""
        futures, self._previous, self._current = self._previous + self._current, [], []
        try:
            for f in futures:
                f.result()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def proxy(self, ds) -> "_QueuedDataset":
        return _QueuedDataset(self, ds)


class _QueuedDataset:
    """A rasterio dataset whose ``write`` goes through a :class:`WriteQueue`."""

    def __init__(self, queue: WriteQueue, ds):
        self._queue = queue
        self.ds = ds

    def write(self, *args, **kwargs):
        self._queue.submit(self.ds.write, *args, **kwargs)

    def close(self):
        self.ds.close()


class TruthWriter:
    """Writes truth rasters (tiled, deflate GeoTIFFs) strip by strip."""

    def __init__(self, folder, grid: Grid, epsg: int, queue: WriteQueue | None = None):
        import rasterio
        self.rasterio = rasterio
        self.folder = folder
        self.grid = grid
        self.epsg = epsg
        self.files = {}
        self.queue = queue
        os.makedirs(folder, exist_ok=True)

    def _open(self, name, dtype, grid, nodata=None):
        if name not in self.files:
            profile = dict(driver="GTiff", width=grid.nx, height=grid.ny, count=1, dtype=dtype,
                           crs=f"EPSG:{self.epsg}", transform=grid.transform, tiled=True,
                           blockxsize=256, blockysize=256, compress="deflate",
                           predictor=3 if dtype == "float32" else 2, nodata=nodata)
            self.files[name] = self.rasterio.open(os.path.join(self.folder, name + ".tif"), "w",
                                                  **profile)
        return self.files[name]

    def write(self, name, row0, data, dtype=None, grid=None, nodata=None):
        from rasterio.windows import Window
        dtype = dtype or TRUTH_LAYERS[name][0]
        grid = grid or self.grid
        ds = self._open(name, dtype, grid, nodata)
        args = (np.asarray(data).astype(dtype), 1)
        window = Window(0, row0, data.shape[1], data.shape[0])
        if self.queue is None:
            ds.write(*args, window=window)
        else:
            self.queue.submit(ds.write, *args, window=window)

    def close(self):
        for ds in self.files.values():
            ds.close()
        self.files = {}


def refl_int16(rho: np.ndarray) -> np.ndarray:
    """Reflectance → int16 ×10000 (rounded, clipped to the int16 range)."""
    return np.clip(np.rint(rho * 10000.0), -32767, 32767).astype(np.int16)


@dataclass
class SynthProduct:
    """A written synthetic product: ``path`` is what a queue line names (folder, .tar,
    .tar.gz, .SAFE or .zip), ``truth_dir`` the folder beside it with the truth rasters and
    ``truth.json``, ``truth`` the parsed truth.json."""
    path: str
    truth_dir: str
    truth: dict

    def __fspath__(self) -> str:
        return self.path


def add_strip_counts(counts: dict, inside, cm, shadow, snow, water, sat_any, cls) -> None:
    """Accumulate the cover statistics of one strip into ``counts`` (truth.json)."""
    counts["pixels"] += int(inside.sum())
    counts["cloud"] += np.bincount(cm[inside], minlength=4)[:4]
    counts["shadow"] += int(shadow.sum())
    counts["snow"] += int(snow.sum())
    counts["water"] += int(water.sum())
    counts["saturated"] += int(sat_any.sum())
    from . import spectra
    counts["cover"] += np.bincount((cls[inside] + 1).ravel(), minlength=len(spectra.COVERS) + 1)


def write_angles(truth, r0: int, blk: dict) -> None:
    """Write the per-pixel sun and view angle truth layers of one strip."""
    for layer, key in (("sun_zenith", "sza"), ("sun_azimuth", "saa"),
                       ("view_zenith", "vza"), ("view_azimuth", "vaa")):
        truth.write(layer, r0, blk[key])
