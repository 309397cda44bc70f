"""Sun position, coarse-grid geometry and its per-pixel interpolation (spec 01 §3)."""
from __future__ import annotations

import math
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from rasterio.crs import CRS

import l2ps.level1 as L
from l2ps import geometry as G
from l2ps import qai as Q
from l2ps import toa as T
from l2ps.grid import Grid

TESTDATA = os.environ.get("L2PS_TESTDATA")
needs_data = pytest.mark.skipif(not TESTDATA, reason="L2PS_TESTDATA not set "
                                "(real Level-1 products in ../shared/testdata)")
UTM33 = CRS.from_epsg(32633).to_wkt()

CASES = [  # lon, lat, UTC time
    (13.4, 52.5, datetime(2020, 5, 9, 10, 2, 20, tzinfo=timezone.utc)),
    (152.5, -30.3, datetime(2018, 6, 29, 0, 2, 41, tzinfo=timezone.utc)),
    (-120.0, 35.0, datetime(2021, 12, 21, 19, 0, 0, tzinfo=timezone.utc)),
    (25.0, -70.0, datetime(2016, 1, 21, 12, 0, 0, tzinfo=timezone.utc)),
    (-60.0, 5.0, datetime(2024, 3, 20, 14, 30, 0, tzinfo=timezone.utc)),
    (170.0, 65.0, datetime(2019, 7, 1, 23, 30, 0, tzinfo=timezone.utc)),
    (-179.0, -10.0, datetime(1990, 2, 28, 22, 0, 0, tzinfo=timezone.utc)),
    # zenith ≈ 86°: refraction ≈ 0.19° here, so this case fails without it
    (10.0, 45.0, datetime(2023, 9, 1, 17, 30, 0, tzinfo=timezone.utc)),
]


# ------------------------------------------------------------------ sun position
@pytest.mark.parametrize("lon, lat, when", CASES)
def test_sun_position_vs_pysolar(lon, lat, when):
    solar = pytest.importorskip("pysolar.solar", reason="pysolar not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_z = 90.0 - solar.get_altitude(lat, lon, when)     # with refraction
        ref_a = solar.get_azimuth(lat, lon, when)
    z, a = G.sun_position(lon, lat, when)
    tol = 0.02 if ref_z < 80 else 0.05
    assert float(z) == pytest.approx(ref_z, abs=tol)
    assert (float(a) - ref_a + 180.0) % 360.0 - 180.0 == pytest.approx(0.0, abs=0.05)


def test_sun_position_vectorised_and_naive_utc():
    lon = np.array([[10.0, 11.0], [12.0, 13.0]])
    lat = np.full((2, 2), 50.0)
    t = datetime(2020, 6, 21, 11, 0, 0)
    z, a = G.sun_position(lon, lat, t)
    assert z.shape == (2, 2) and z.dtype == np.float64
    z2, a2 = G.sun_position(lon, lat, t.replace(tzinfo=timezone.utc))
    np.testing.assert_array_equal(z, z2)
    # noon at 15°E on the June solstice: zenith ≈ 50 − 23.44 (+ ≈0 refraction), azimuth ≈ 180
    zn, an = G.sun_position(15.0 + 1.6 / 4, 50.0, datetime(2020, 6, 21, 11, 0, 0))
    assert float(zn) == pytest.approx(50.0 - 23.44, abs=0.05)
    assert float(an) == pytest.approx(180.0, abs=0.5)


def test_refraction_branches_continuous_near_horizon():
    """Equator, equinox, around sunrise: the zenith crosses the refraction branches at
    elevations 85°, 5° and −0.575°; values must not jump between the branches (the NOAA
    formula has a kink, not a step, at −0.575°). pysolar agrees at 86° zenith (above)."""
    t = datetime(2024, 3, 20, 6, 0, 0, tzinfo=timezone.utc)
    lon = np.arange(-10.0, 10.0, 0.01)
    z, _ = G.sun_position(lon, 0.0, t)
    assert z.min() < 84.0 and z.max() > 91.0
    step = np.diff(z)
    assert np.all(step < 0)                              # rising eastwards
    assert np.all(np.abs(step) < 0.021)                  # ≈ 0.01° of hour angle per step


# ------------------------------------------------------------------ interpolation
def _geom(values: np.ndarray, x0=0.0, y0=50000.0) -> G.Geometry:
    ny, nx = values.shape
    cg = Grid(UTM33, x0, y0, 5000.0, 5000.0, nx, ny)
    v = values.astype(np.float32)
    return G.Geometry(cg, v, np.zeros_like(v), v.copy(), np.zeros_like(v))


def test_bilinear_reproduces_linear_field_between_centres():
    ny, nx = 6, 8
    cy, cx = np.meshgrid(np.arange(ny) + 0.5, np.arange(nx) + 0.5, indexing="ij")
    values = 30.0 + 2.0 * cx + 0.5 * cy       # linear in cell coordinates
    g = _geom(values)
    pix = Grid(UTM33, 0.0, 50000.0, 30.0, 30.0, 40000 // 30, 30000 // 30)
    out = g.sun_zenith_at(pix)
    assert out.dtype == np.float32 and out.shape == pix.shape
    px = (np.arange(pix.nx) + 0.5) * 30.0 / 5000.0
    py = (np.arange(pix.ny) + 0.5) * 30.0 / 5000.0
    PX, PY = np.meshgrid(np.clip(px, 0.5, nx - 0.5), np.clip(py, 0.5, ny - 0.5))
    np.testing.assert_allclose(out, 30.0 + 2.0 * PX + 0.5 * PY, atol=1e-4)
    # not piecewise constant: neighbouring pixels inside one cell differ
    assert out[300, 400] != out[300, 401] and out[300, 400] != out[301, 400]
    # rows= gives the same rows as the full computation
    np.testing.assert_array_equal(g.sun_zenith_at(pix, rows=slice(100, 130)), out[100:130])
    cos = g.cos_sun_zenith(pix, rows=slice(0, 10))
    # cos is interpolated itself: second-order difference only (steep 2°/cell field here)
    np.testing.assert_allclose(cos, np.cos(np.deg2rad(out[:10])), atol=2e-4)
    real = _geom(45.0 + 0.05 * cx + 0.02 * cy)        # realistic gradient: 0.05° per cell
    np.testing.assert_allclose(real.cos_sun_zenith(pix),
                               np.cos(np.deg2rad(real.sun_zenith_at(pix))), atol=1e-6)


def test_interpolation_nan_cells_and_azimuth_wrap():
    values = np.full((3, 3), 10.0)
    values[1, 1] = np.nan
    g = _geom(values, y0=15000.0)
    pix = Grid(UTM33, 0.0, 15000.0, 500.0, 500.0, 30, 30)
    vz = g.view_zenith_at(pix)
    assert np.isnan(vz[10:20, 10:20]).all()            # the nodata cell
    assert np.isfinite(vz[:10]).all() and np.allclose(vz[:10], 10.0)   # neighbours skip NaN
    az = np.array([[350.0, 10.0], [350.0, 10.0]], np.float32)
    cg = Grid(UTM33, 0.0, 10000.0, 5000.0, 5000.0, 2, 2)
    geo = G.Geometry(cg, az, az, az, az)
    mid = geo.view_azimuth_at(Grid(UTM33, 4990.0, 10000.0, 20.0, 20.0, 1, 1))
    assert min(mid[0, 0], 360 - mid[0, 0]) < 0.5       # circular: ≈ 0°, not 180°


def test_update_qai_high_sun_and_view_nodata():
    sz = np.array([[70.0, 70.0], [80.0, 80.0]])
    cg = Grid(UTM33, 0.0, 10000.0, 5000.0, 5000.0, 2, 2)
    vz = np.array([[5.0, np.nan], [5.0, 5.0]], np.float32)
    geo = G.Geometry(cg, sz.astype(np.float32), np.zeros((2, 2), np.float32), vz,
                     np.zeros((2, 2), np.float32))
    pix = Grid(UTM33, 0.0, 10000.0, 1000.0, 1000.0, 10, 10)
    qai = Q.empty(pix.shape)
    qai[9, 0] = 1                                      # already nodata: no high-sun bit
    G.update_qai(qai, geo, pix)
    nod = Q.is_nodata(qai)
    assert nod[:5, 5:].all() and nod.sum() == 26       # the NaN view cell + the old pixel
    hi = Q.get_flag(qai, Q.HIGH_SUN_ZENITH)
    # sun zenith interpolated between centres at y = 2.5 km (70°) and 7.5 km (80°)
    assert not hi[:5].any()
    assert hi[6:9, :5].all() and not hi[9, 0] and hi[9, 1]
    assert not (hi & nod).any()


# ------------------------------------------------------------------ Landsat view
def test_landsat_view_from_tilted_footprint():
    # 185 km wide footprint, tilted like a descending pass (track azimuth ≈ 12°)
    res = 300.0
    n = 800
    grid = Grid(UTM33, 300000.0, 5800000.0, res, res, n, n)
    rr, cc = np.mgrid[0:n, 0:n]
    shift = (n - rr) * math.tan(math.radians(12.0))
    centre = n / 2 - 0.5 * n * math.tan(math.radians(12.0)) + shift
    valid = np.abs(cc - centre) * res <= 92500.0
    geo = G.compute_geometry(_FakeL1(grid), valid)
    vz = geo.view_zenith_at(grid)
    assert np.nanmax(vz[valid]) == pytest.approx(math.degrees(math.atan(92.5 / 705.0)),
                                                 abs=0.3)
    mid_row = n // 2
    cols = np.flatnonzero(valid[mid_row])
    assert vz[mid_row, cols[len(cols) // 2]] < 0.3      # near nadir in the middle
    va = geo.view_azimuth_at(grid)
    west, east = va[mid_row, cols[5]], va[mid_row, cols[-5]]
    assert 90.0 < west < 115.0          # sensor to the east of a west pixel
    assert 270.0 < east < 295.0


class _FakeL1:
    mission = "landsat"

    def __init__(self, grid):
        self.grid = grid
        self.acquired = datetime(2020, 5, 9, 10, 0, 0, tzinfo=timezone.utc)
        self.source = Path("fake")
        self.view = None


@needs_data
def test_landsat_geometry_real_c2():
    l1 = L.read_metadata(Path(TESTDATA) / "landsat/LC08_L1GT_089074_20220506_20220512_02_T2")
    dn = L.read_bands(l1)
    qai = T.initial_qai(l1, dn, l1.grid, False, True)
    geo = G.compute_geometry(l1, qai)
    assert geo.grid.dx == geo.grid.dy == 5000.0
    assert (geo.grid.x0, geo.grid.y0) == (l1.grid.x0, l1.grid.y0)
    assert geo.grid.shape == (math.ceil(60 * 3910.5 / 5000), math.ceil(60 * 3860.5 / 5000))
    # scene-centre sun elevation of the MTL: 43.244° → zenith 46.756°
    sz = geo.sun_zenith_at(l1.grid)
    valid = Q.is_valid(qai)
    assert abs(float(np.mean(sz[valid])) - (90 - 43.24426868)) < 0.3
    assert geo.mean_sun_azimuth == pytest.approx(39.81, abs=1.0)
    vz = geo.view_zenith_at(l1.grid)
    assert np.nanmax(vz[valid]) < 8.5 and np.nanmin(vz[valid]) < 1.0
    assert 0.6 < geo.cos_sun_min <= geo.cos_sun_max < 0.75
    G.update_qai(qai, geo, l1.grid)
    assert not Q.get_flag(qai, Q.HIGH_SUN_ZENITH).any()


@needs_data
def test_sentinel2_geometry_real(tmp_path):
    z = "sentinel2/S2A_MSIL1C_20180629T000241_N0206_R030_T56JMM_20180629T012042.zip"
    with L.open_level1(Path(TESTDATA) / z, tempdir=tmp_path) as l1:
        geo = G.compute_geometry(l1, None)
        assert geo.grid.shape == (22, 22)
        np.testing.assert_array_equal(np.isnan(geo.view_zenith), np.isnan(l1.view.zenith))
        # metadata sun grid: node means per cell ≈ ours (PRODUCT_START_TIME is the datatake
        # start, the metadata uses the tile's own sensing times → ≈ 0.25° apart here)
        s = l1.view.sun_zenith
        cell = (s[:-1, :-1] + s[1:, :-1] + s[:-1, 1:] + s[1:, 1:]) / 4
        assert np.abs(geo.sun_zenith - cell).max() < 0.4
        qai = Q.empty(l1.grid.shape)
        G.update_qai(qai, geo, l1.grid)
        vz = geo.view_zenith_at(l1.grid)
        np.testing.assert_array_equal(Q.is_nodata(qai), np.isnan(vz))
        assert 0.05 < Q.is_nodata(qai).mean() < 0.5


def test_valid_extent_matches_numpy_on_masks_and_qai():
    """The footprint corners come from per-row/column first and last valid pixels computed
    without full-size temporaries; they must equal numpy's flatnonzero on the valid mask,
    for a boolean mask and for a QAI whose other bits are random."""
    from l2ps.geometry import _extent
    rng = np.random.default_rng(1)
    for _ in range(100):
        ny, nx = (int(v) for v in rng.integers(1, 30, 2))
        valid = rng.random((ny, nx)) < rng.random()
        other = rng.integers(0, 2 ** 15, (ny, nx)).astype(np.uint16) & np.uint16(0xFFFE)
        qai = np.where(valid, 0, 1).astype(np.uint16) | other
        for a in (valid, qai):
            rf, rl, cf, cl = _extent(a)
            for i in range(ny):
                nz = np.flatnonzero(valid[i])
                assert (rf[i], rl[i]) == ((nz[0], nz[-1]) if nz.size else (-1, -1))
            for j in range(nx):
                nz = np.flatnonzero(valid[:, j])
                assert (cf[j], cl[j]) == ((nz[0], nz[-1]) if nz.size else (-1, -1))
