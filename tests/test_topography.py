"""Slope/aspect/illumination, QAI bits, and the topographic C-correction
(spec 01 §4, spec 02 §5–§6).

The relief test scene is built here, independently of the code under test: an analytic DEM
with slopes in every direction next to a flat plain, one land cover, and the reflectance a
Lambertian surface shows under direct sun on the tilted plane (cos i from the analytic
gradient) plus isotropic diffuse sky light (sky-view factor of a tilted plane).
"""
from __future__ import annotations

import math
from datetime import datetime
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS

from l2ps import geometry as G
from l2ps import qai as Q
from l2ps import topography as T
from l2ps.errors import AuxiliaryError
from l2ps.grid import Grid

UTM33 = CRS.from_epsg(32633).to_wkt()
SUN_AZIMUTH = 150.0
# diffuse/direct irradiance ratio f = tss/tsd on a horizontal surface at θs = 35° (spec 02
# §11, L8); scaled with 1/μs for other sun zeniths (longer path, more diffuse light)
F35 = {"RED": 0.160, "NIR": 0.098, "SWIR1": 0.045, "SWIR2": 0.026}
RHO = {"RED": 0.05, "NIR": 0.30, "SWIR1": 0.20, "SWIR2": 0.10}
PATH = {"SWIR1": 0.004, "SWIR2": 0.002}      # TOA path reflectance


def make_geometry(grid: Grid, sun_zenith, sun_azimuth=SUN_AZIMUTH, view_zenith=0.0,
                  view_azimuth=0.0) -> G.Geometry:
    cg = G.coarse_grid(grid)
    full = lambda v: np.broadcast_to(np.asarray(v, np.float32), cg.shape).copy()  # noqa
    return G.Geometry(cg, full(sun_zenith), full(sun_azimuth), full(view_zenith),
                      full(view_azimuth), datetime(2021, 7, 15, 10, 0))


def write_dem(path, z, grid: Grid, nodata=None):
    with rasterio.open(path, "w", driver="GTiff", width=grid.nx, height=grid.ny, count=1,
                       dtype="float32", crs=grid.crs, transform=grid.transform,
                       nodata=nodata) as ds:
        ds.write(z.astype(np.float32), 1)
    return path


def params(file_dem=None, **kw):
    base = dict(file_dem=file_dem, use_dem_database=False, dem_nodata=-32767,
                dem_resampling="BL", nthread=1)
    base.update(kw)
    return SimpleNamespace(**base)


def fake_scene(grid, geometry, qai=None):
    return SimpleNamespace(level1=SimpleNamespace(refsys_type="WRS-2", refsys_id="193024"),
                           grid=grid, geometry=geometry,
                           qai=Q.empty(grid.shape) if qai is None else qai)


# ------------------------------------------------------------------ the relief scene
class Relief:
    """Analytic terrain on a 30 m grid: flat plain in the west (x < 1500 m), egg-crate
    hills (±400 m, 3.6 km wavelength, slopes up to ≈35°) in the east."""
    N = 240
    RES = 30.0
    L = 3600.0
    AMP = 400.0

    def __init__(self):
        self.grid = Grid(UTM33, 500010.0, 5200020.0, self.RES, self.RES, self.N, self.N)
        c = (np.arange(self.N) + 0.5) * self.RES
        self.x = c[None, :]                    # m east of the UL corner
        self.y = -c[:, None]                   # m north of the UL corner (negative)

    def _w(self):
        t = np.clip((self.x - 1500.0) / 900.0, 0, 1)
        dt = np.where((self.x > 1500.0) & (self.x < 2400.0), 1 / 900.0, 0.0)
        return t * t * (3 - 2 * t), 6 * t * (1 - t) * dt

    def z(self):
        w, _ = self._w()
        k = 2 * np.pi / self.L
        return 800.0 + self.AMP * w * np.sin(k * self.x) * np.sin(k * self.y)

    def gradient(self):
        """(dz/dx east, dz/dy north), analytic."""
        w, dw = self._w()
        k = 2 * np.pi / self.L
        sx, sy = np.sin(k * self.x), np.sin(k * self.y)
        zx = self.AMP * (dw * sx * sy + w * k * np.cos(k * self.x) * sy)
        zy = self.AMP * w * sx * k * np.cos(k * self.y)
        return zx, zy

    def true_terrain(self, sun_zenith, sun_azimuth=SUN_AZIMUTH):
        """(cos i, slope rad, sky view) from the analytic normal and the sun vector."""
        zx, zy = self.gradient()
        norm = np.sqrt(1 + zx ** 2 + zy ** 2)
        ts, ps = math.radians(sun_zenith), math.radians(sun_azimuth)
        sun = (math.sin(ts) * math.sin(ps), math.sin(ts) * math.cos(ps), math.cos(ts))
        cos_i = (-zx * sun[0] - zy * sun[1] + sun[2]) / norm
        slope = np.arctan(np.hypot(zx, zy))
        return cos_i, slope, (1 + np.cos(slope)) / 2


def f_ratio(band, sun_zenith):
    return F35[band] * math.cos(math.radians(35.0)) / math.cos(math.radians(sun_zenith))


def observed(rho, f, cos_i, sky, mu_s, noise=None):
    """Reflectance a Lambertian surface shows (what the atmospheric correction yields before
    the topographic factor): direct light ∝ cos i/μs, diffuse ∝ sky view, normalised to a
    horizontal surface."""
    r = rho * (np.maximum(cos_i, 0) / mu_s + f * sky) / (1 + f)
    return r if noise is None else r * noise


def groups(cos_i_true, slope_true, valid):
    """Sun-facing (lowest incidence decile) and shaded (highest decile with incidence < 80°)
    sloped (> 10°) pixels."""
    ok = valid & (slope_true > math.radians(10)) & (cos_i_true > math.cos(math.radians(80)))
    lo, hi = np.quantile(cos_i_true[ok], [0.1, 0.9])
    return ok & (cos_i_true >= hi), ok & (cos_i_true <= lo)


def rel_diff(a, b):
    return abs(a - b) / (0.5 * (a + b))


@pytest.fixture(scope="module")
def relief():
    return Relief()


def run_relief(relief, tmp_path, sun_zenith, surface_f=None):
    """Compile topography from a DEM file, estimate C from TOA SWIR, correct every band.
    ``surface_f``: per band extra "diffuse" response of a non-Lambertian surface."""
    grid = relief.grid
    dem_file = write_dem(tmp_path / f"dem{sun_zenith}.tif", relief.z(), grid)
    geo = make_geometry(grid, sun_zenith)
    scene = fake_scene(grid, geo)
    topo = T.compile_topography(scene, params(dem_file))
    cos_i, slope, sky = relief.true_terrain(sun_zenith)
    mu_s = math.cos(math.radians(sun_zenith))
    rng = np.random.default_rng(7)
    obs, f = {}, {}
    for b in RHO:
        f[b] = f_ratio(b, sun_zenith)
        g = f[b] if surface_f is None else surface_f.get(b, f[b])
        obs[b] = observed(RHO[b], g, cos_i, sky, mu_s,
                          1 + 0.005 * rng.standard_normal(cos_i.shape))
    toa = {b: np.trunc((PATH[b] + 0.92 * obs[b]) * 10000).astype(np.int16)
           for b in ("SWIR1", "SWIR2")}
    c = T.estimate_c_factor(topo, toa["SWIR2"], scene.qai, PATH["SWIR2"], f["SWIR2"], mu_s,
                            toa_swir1=toa["SWIR1"])
    corr = {b: obs[b] * T.topographic_factor(topo, c, b, mu_s, f[b], f["SWIR2"]) for b in RHO}
    return SimpleNamespace(topo=topo, qai=scene.qai, obs=obs, corr=corr, c=c, f=f,
                           cos_i=cos_i, slope=slope, sky=sky, mu_s=mu_s)


@pytest.mark.parametrize("sun_zenith", [30.0, 65.0])
def test_c_correction_equalises_sunny_and_shaded_slopes(relief, tmp_path, sun_zenith):
    r = run_relief(relief, tmp_path, sun_zenith)
    valid = Q.is_valid(r.qai)
    sunny, shaded = groups(r.cos_i, r.slope, valid)
    assert sunny.sum() > 500 and shaded.sum() > 500
    report = {}
    for b in RHO:
        before = rel_diff(r.obs[b][sunny].mean(), r.obs[b][shaded].mean())
        after = rel_diff(r.corr[b][sunny].mean(), r.corr[b][shaded].mean())
        bias = max(abs(r.corr[b][m].mean() / RHO[b] - 1) for m in (sunny, shaded))
        report[b] = (before, after, bias)
    print(f"\nθs={sun_zenith}: " + "; ".join(f"{b} before {v[0]:.1%} after {v[1]:.2%} "
                                          f"|bias| {v[2]:.2%}" for b, v in report.items()))
    for b in ("NIR", "SWIR1", "SWIR2", "RED"):
        before, after, bias = report[b]
        assert before > 0.30, b
        assert after < 0.10, b
        assert bias < 0.10, b          # and both groups come back to the true reflectance
    # flat pixels (slope exactly 0) are left unchanged
    flat = valid & (r.topo.slope == 0)
    assert flat.sum() > 5000
    for b in RHO:
        np.testing.assert_array_equal(r.corr[b][flat], r.obs[b][flat])


def test_empirical_c_follows_a_more_diffuse_surface(relief, tmp_path):
    """A canopy-like surface whose SWIR2 signal depends on cos i less than a Lambertian one
    (as if f were 0.4 instead of 0.03): the SWIR2 regression finds that C, C_theo would
    over-correct the shaded slopes."""
    sz = 45.0
    g = {"SWIR2": 0.4, "SWIR1": 0.4}
    r = run_relief(relief, tmp_path, sz, surface_f=g)
    valid = Q.is_valid(r.qai)
    ts = math.radians(sz)
    h0 = (math.pi + 2 * ts) / (2 * math.pi)
    sloped = valid & (r.topo.slope > math.radians(10)) & (r.topo.cos_i > 0)
    c_med = float(np.median(r.c[sloped]))
    assert c_med == pytest.approx(h0 * g["SWIR2"] * r.mu_s, rel=0.15)
    c_theo = h0 * r.f["SWIR2"] * r.mu_s
    assert c_med > 5 * c_theo
    sunny, shaded = groups(r.cos_i, r.slope, valid)
    after = rel_diff(r.corr["SWIR2"][sunny].mean(), r.corr["SWIR2"][shaded].mean())
    a_theo = T.topographic_factor(r.topo, None, "SWIR2", r.mu_s, r.f["SWIR2"], r.f["SWIR2"])
    theo = r.obs["SWIR2"] * a_theo
    after_theo = rel_diff(theo[sunny].mean(), theo[shaded].mean())
    print(f"\nnon-Lambertian SWIR2: median C {c_med:.4f} (h0·g·μs {h0 * g['SWIR2'] * r.mu_s:.4f}, "
          f"C_theo {c_theo:.4f}); sunny/shaded after {after:.2%}, with C_theo {after_theo:.2%}")
    assert after < 0.05 < after_theo


# ------------------------------------------------------------------ Horn, bits, illumination
def plane(grid, gx, gy):
    """z of a plane rising gx m/m to the east and gy m/m to the north."""
    ii, jj = np.meshgrid(np.arange(grid.ny), np.arange(grid.nx), indexing="ij")
    x, y = grid.xy(ii, jj)
    return (1000.0 + gx * (x - grid.x0) + gy * (y - grid.y0)).astype(np.float32)


@pytest.mark.parametrize("gx, gy, aspect_deg", [
    (0.2, 0.0, 270.0),       # rises to the east → faces west
    (-0.2, 0.0, 90.0),
    (0.0, 0.2, 180.0),       # rises to the north → faces south
    (0.0, -0.2, 0.0),
    (0.1, 0.1, 225.0),
    (-0.1, -0.1, 45.0),
])
def test_horn_plane_slope_and_aspect(gx, gy, aspect_deg):
    grid = Grid(UTM33, 0.0, 3000.0, 30.0, 20.0, 12, 10)     # non-square pixels on purpose
    z = plane(grid, gx, gy)
    slope, aspect, off = T.horn_slope_aspect(z, grid.dx, grid.dy)
    assert not off.any()
    np.testing.assert_allclose(slope, math.atan(math.hypot(gx, gy)), rtol=1e-5)
    d = (np.degrees(aspect) - aspect_deg + 180) % 360 - 180
    assert np.abs(d).max() < 1e-3


def test_horn_nodata_window_and_borders():
    grid = Grid(UTM33, 0.0, 3000.0, 30.0, 30.0, 8, 8)
    z = plane(grid, 0.1, 0.0)
    z[4, 4] = np.nan
    z[0, 7] = np.nan                    # a nodata corner: off through its inner neighbour
    slope, aspect, off = T.horn_slope_aspect(z, 30.0, 30.0)
    expect = np.zeros((8, 8), bool)
    expect[3:6, 3:6] = True
    expect[0:2, 6:8] = True             # (1,6) has the corner in its window; borders copy
    np.testing.assert_array_equal(off, expect)
    # borders copy their inward neighbour
    np.testing.assert_array_equal(slope[0, :], slope[1, :])
    np.testing.assert_array_equal(slope[:, -1], slope[:, -2])


def test_compile_topography_bits_and_stats(tmp_path):
    grid = Grid(UTM33, 500000.0, 5200000.0, 30.0, 30.0, 40, 40)
    z = np.full(grid.shape, 700.0, np.float32)
    z[:, 20:] = plane(grid, 0.0, 0.3)[:, 20:] - 300.0   # north-rising slope (faces south)
    z[30, 5] = -32767                                    # a DEM hole
    dem_file = write_dem(tmp_path / "dem.tif", z, grid, nodata=-32767)
    geo = make_geometry(grid, 40.0, 180.0)               # sun from the south
    qai = Q.empty(grid.shape)
    qai[0, 0] = Q.QAI_NODATA                             # Level-1 nodata stays
    topo = T.compile_topography(fake_scene(grid, geo, qai), params(dem_file, dem_resampling="NN"))
    assert topo.dem.dtype == np.float32 and topo.cos_i.dtype == np.float32
    nod = Q.is_nodata(qai)
    assert nod[29:32, 4:7].all() and nod.sum() == 9 + 1
    assert np.isnan(topo.dem[30, 5]) and np.isnan(topo.cos_i[30, 5])
    slope_bit = Q.get_flag(qai, Q.SLOPE)
    assert slope_bit[5:35, 22:39].all() and not slope_bit[5:35, 1:18].any()
    # flat part: cos i = cos θs (40° → good illumination); slope facing the sun: cos(40−16.7°)
    assert topo.cos_i[10, 10] == pytest.approx(math.cos(math.radians(40)), abs=1e-6)
    assert topo.cos_i[10, 30] == pytest.approx(math.cos(math.radians(40) - math.atan(0.3)),
                                               abs=1e-5)
    assert topo.coverage == pytest.approx(1 - 1 / (40 * 40 - 1))
    valid = ~nod
    assert topo.dem_min_km == pytest.approx(float(np.nanmin(np.where(valid, z, np.nan))) / 1000)
    assert topo.dem_max_km == pytest.approx(float(np.nanmax(np.where(valid, z, np.nan))) / 1000)
    b = topo.elevation_bin()
    assert b.dtype == np.uint8 and b[valid].min() == 0 and b[valid].max() == 254
    assert topo.bin_centre_km(0) == pytest.approx(topo.dem_min_km + topo.bin_step_km / 2)
    assert topo.sky_view[10, 10] == 1.0
    assert topo.sky_view[10, 30] == pytest.approx((1 + math.cos(math.atan(0.3))) / 2, abs=1e-6)


def test_flat_without_dem_illumination_bits_from_sun():
    grid = Grid(UTM33, 500000.0, 5200000.0, 500.0, 500.0, 40, 30)
    cg = G.coarse_grid(grid)
    # sun zenith from 50° (west) to 85° (east) across the 4 cells
    sz = np.tile(np.linspace(50, 85, cg.nx, dtype=np.float32), (cg.ny, 1))
    geo = G.Geometry(cg, sz, np.full(cg.shape, 150, np.float32), np.zeros(cg.shape, np.float32),
                     np.zeros(cg.shape, np.float32), datetime(2021, 1, 5, 10))
    qai = Q.empty(grid.shape)
    topo = T.compile_topography(fake_scene(grid, geo, qai), params(None))
    assert topo.flat and topo.dem_max_km == 0 and not topo.slope.any()
    ref = np.cos(np.radians(geo.sun_zenith_at(grid).astype(np.float64)))
    np.testing.assert_allclose(topo.cos_i, ref, atol=1e-6)
    ill = Q.get_field(qai, Q.ILLUMINATION)
    expect = np.where(ref < math.cos(math.radians(80)), 2,
                      np.where(ref < math.cos(math.radians(55)), 1, 0))
    np.testing.assert_array_equal(ill, expect)
    assert {0, 1, 2} <= set(np.unique(ill).tolist())
    assert not Q.get_flag(qai, Q.SLOPE).any() and not Q.is_nodata(qai).any()


def test_shadow_bit_and_no_correction_in_shadow():
    grid = Grid(UTM33, 500000.0, 5200000.0, 30.0, 30.0, 20, 20)
    z = plane(grid, 0.0, -1.0)              # 45° slope facing north, sun from the south
    geo = make_geometry(grid, 60.0, 180.0)
    qai = Q.empty(grid.shape)
    topo = T.topography_from_dem(z, grid, geo, qai)
    assert (topo.cos_i < 0).all()
    assert (Q.get_field(qai, Q.ILLUMINATION) == Q.ILLUMINATION_SHADOW).all()
    mu = math.cos(math.radians(60))
    toa = np.full(grid.shape, 800, np.int16)
    c = T.estimate_c_factor(topo, toa, qai, 0.002, 0.03, mu, toa_swir1=toa)
    assert not c.any()
    a = T.topographic_factor(topo, c, "NIR", mu, 0.1, 0.03)
    assert (a == 1).all()


def test_factor_propagates_c_spectrally():
    """With C = C_theo of SWIR2 every band gets its own Lambertian factor
    μs(1+f_b)/(cos i + V·f_b·μs) — not the SWIR2 diffuse ratio (FORCE's f0 bug)."""
    grid = Grid(UTM33, 500000.0, 5200000.0, 30.0, 30.0, 30, 30)
    z = plane(grid, 0.05, -0.5)             # faces north, away from the sun: cos i ≈ 0.25
    geo = make_geometry(grid, 50.0, 170.0)
    qai = Q.empty(grid.shape)
    topo = T.topography_from_dem(z, grid, geo, qai)
    mu = math.cos(math.radians(50))
    h0 = (math.pi + 2 * math.radians(50)) / (2 * math.pi)
    f_sw2, f_blue = 0.04, 0.45
    c = np.full(grid.shape, h0 * f_sw2 * mu, np.float32)
    a = T.topographic_factor(topo, c, "BLUE", mu, f_blue, f_sw2)
    ci = topo.cos_i.astype(np.float64)
    v = (1 + np.cos(topo.slope.astype(np.float64))) / 2
    np.testing.assert_allclose(a, mu * (1 + f_blue) / (ci + v * f_blue * mu), rtol=2e-6)
    forced = mu * (1 + f_sw2) / (ci + v * f_sw2 * mu)          # what the bug would give
    assert np.abs(a / forced - 1).min() > 0.15
    # c_factor None = the theoretical C of each band
    np.testing.assert_allclose(T.topographic_factor(topo, None, "BLUE", mu, f_blue, f_sw2), a,
                               rtol=2e-6)
    # rows: a block of the full result; TEMP is never corrected
    np.testing.assert_array_equal(
        T.topographic_factor(topo, c, "BLUE", mu, f_blue, f_sw2, rows=slice(10, 17)), a[10:17])
    assert (T.topographic_factor(topo, c, "TEMP", mu, 1, 1) == 1).all()


def test_c_offsets():
    assert T.c_offsets(30.0).tolist() == sorted(
        {0, *[s * k for k in (100, 70, 49, 34, 24, 16, 11, 7, 4, 2) for s in (1, -1)]})
    assert T.c_offsets(10.0).tolist() == sorted(
        {0, *[s * k for k in (300, 212, 149, 105, 74, 52, 36, 25, 17, 12, 8) for s in (1, -1)]})
    assert T.c_offsets(20.0).tolist() == sorted(
        {0, *[s * k for k in (150, 106, 74, 52, 36, 25, 17, 12, 8, 5) for s in (1, -1)]})
    assert T.c_offsets(5000.0).tolist() == [0]


def test_implausible_elevations_are_an_error():
    grid = Grid(UTM33, 500000.0, 5200000.0, 30.0, 30.0, 10, 10)
    geo = make_geometry(grid, 40.0)
    with pytest.raises(AuxiliaryError, match="elevations"):
        T.topography_from_dem(np.full(grid.shape, 12000, np.float32), grid, geo,
                              Q.empty(grid.shape), source="dem_in_feet.tif")


def test_dem_covering_only_nodata_is_an_error():
    grid = Grid(UTM33, 500000.0, 5200000.0, 30.0, 30.0, 10, 10)
    geo = make_geometry(grid, 40.0)
    z = np.full(grid.shape, np.nan, np.float32)
    z[:, :3] = 100
    qai = Q.empty(grid.shape)
    qai[:, :5] = Q.QAI_NODATA
    with pytest.raises(AuxiliaryError, match="no valid image pixel"):
        T.topography_from_dem(z, grid, geo, qai, source="x.tif")


# ------------------------------------------------------------------ a synthetic Level-1 product
def test_compile_topography_on_a_synthetic_landsat_product(tmp_path):
    """The real chain (Level-1 → QAI → geometry → topography) on an l2ps.synth product with
    relief, with its truth DEM as FILE_DEM; cos i compared with the synth's own illumination
    model (central differences of the truth DEM, truth per-pixel sun angles)."""
    from l2ps.level1 import open_level1, read_bands
    from l2ps.scene import Scene
    from l2ps.synth import make_landsat
    from l2ps.toa import initial_qai
    prod = make_landsat(tmp_path / "l1", size=(160, 160), seed=3, clouds=False, relief=1.5)
    truth_dir = prod.truth_dir
    with open_level1(prod.path) as l1:
        dn = read_bands(l1)
        qai = initial_qai(l1, dn, l1.grid, False, False)
        geo = G.compute_geometry(l1, qai)
        G.update_qai(qai, geo, l1.grid)
        scene = Scene(l1, l1.grid, {}, {d: l1.bands[d].grid for d in dn}, qai, geo)
        nodata_before = Q.is_nodata(qai).copy()
        topo = T.compile_topography(scene, params(f"{truth_dir}/dem.tif"))
    read = lambda n: rasterio.open(f"{truth_dir}/{n}.tif").read(1).astype(np.float64)  # noqa
    z, sz, sa = read("dem"), read("sun_zenith"), read("sun_azimuth")
    valid = Q.is_valid(qai)
    assert topo.coverage == 1.0
    # only the one-pixel rim of the Horn window may have become nodata (image border)
    new = valid ^ ~nodata_before
    assert not new[1:-1, 1:-1].any()
    np.testing.assert_array_equal(topo.dem[valid], z[valid].astype(np.float32))
    res = l1.grid.dx
    zx = (z[1:-1, 2:] - z[1:-1, :-2]) / (2 * res)
    zy = (z[:-2, 1:-1] - z[2:, 1:-1]) / (2 * res)
    ts, ps = np.radians(sz[1:-1, 1:-1]), np.radians(sa[1:-1, 1:-1])
    ref = (-zx * np.sin(ts) * np.sin(ps) - zy * np.sin(ts) * np.cos(ps) + np.cos(ts)) \
        / np.sqrt(1 + zx ** 2 + zy ** 2)
    v = valid[1:-1, 1:-1]
    err = topo.cos_i[1:-1, 1:-1][v] - ref[v]
    assert float(np.median(np.abs(err))) < 0.01 and float(np.quantile(np.abs(err), 0.99)) < 0.08
    slope_true = np.degrees(np.arctan(np.hypot(zx, zy)))[v]
    bit = Q.get_flag(qai, Q.SLOPE)[1:-1, 1:-1][v]
    clear = np.abs(slope_true - 2.0) > 1.0          # away from the 2° threshold
    assert np.mean(bit[clear] == (slope_true[clear] > 2.0)) > 0.98
    ill = Q.get_field(qai, Q.ILLUMINATION)[valid]
    ci = topo.cos_i[valid]
    np.testing.assert_array_equal(ill == 3, ci < 0)


def test_c_factor_independent_of_thread_count(relief):
    import numba
    grid = relief.grid
    topo = T.topography_from_dem(relief.z().astype(np.float32), grid, make_geometry(grid, 40.0),
                                 Q.empty(grid.shape))
    rng = np.random.default_rng(3)
    sw2 = (900 + 400 * np.nan_to_num(topo.cos_i) + rng.normal(0, 30, grid.shape)).astype(np.int16)
    sw1 = (sw2 * 1.6 + rng.normal(0, 30, grid.shape)).astype(np.int16)
    qai = Q.empty(grid.shape)
    run = lambda: T.estimate_c_factor(topo, sw2, qai, 0.002, 0.03, 0.77, toa_swir1=sw1)  # noqa
    n0 = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = run()
    finally:
        numba.set_num_threads(n0)
    np.testing.assert_array_equal(one, run())
