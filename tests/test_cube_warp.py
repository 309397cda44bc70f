"""The cube's own warper (l2ps.cube.warp: PROJ on a coarse mesh + numba resampling) against
per-pixel PROJ and GDAL's warper, its window/thread independence, the lazy warp used by
write_cube, and the overview levels (l2ps.cube.formats.overview_levels) against GDAL
(spec 03 §2.4, §3.2; docs/cube.md)."""
from __future__ import annotations

import numba
import numpy as np
import pytest
import rasterio
from pyproj import CRS, Transformer

from l2ps import qai
from l2ps.cube import formats
from l2ps.cube.grid import Datacube, grid_footprint
from l2ps.cube.warp import (TOLERANCE, Resampling, _exact_source_coords, _KIND,
                            _resample_window, _warp_band, gdal_warp_band, resample_bands,
                            source_mesh, source_window,
                            warp_products, warp_products_lazy)
from l2ps.grid import Grid
from l2ps.products import Product

UTM = CRS.from_epsg(32632).to_wkt()
LAEA = CRS.from_epsg(3035).to_wkt()
CUBE = Datacube.from_origin_geo(LAEA, -25.0, 60.0, 30000, 30000)


def _scene(n=400, seed=0, holes=True):
    """A smooth int16 band with noise on a 10 m UTM grid, with nodata holes and edges."""
    src = Grid(UTM, 600000.0, 5600040.0, 10.0, 10.0, n, n - 40)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:src.ny, 0:src.nx].astype(np.float32)
    band = (1500 + 800 * np.sin(yy / 37.0) * np.cos(xx / 23.0)
            + rng.normal(0, 50, yy.shape)).astype(np.int16)
    if holes:
        band[100:140, 200:260] = -9999
        band[:, :5] = -9999
        band[300:302, :] = -9999
        band[rng.random(band.shape) < 0.002] = -9999
    return src, band


def _target(src, res):
    return CUBE.aligned_grid(grid_footprint(src, LAEA), res)


def test_mesh_error_bound_holds_at_every_pixel():
    src, _ = _scene()
    tgt = _target(src, 10.0)
    u, v, step, err = source_mesh(src, tgt)
    assert step >= 16 and err <= TOLERANCE
    # interpolate the mesh at every pixel and compare with PROJ at every pixel
    rows, cols = np.arange(tgt.ny, dtype=float), np.arange(tgt.nx, dtype=float)
    t = Transformer.from_crs(tgt.crs_wkt, src.crs_wkt, always_xy=True)
    eu, ev = _exact_source_coords(src, tgt, rows, cols, t)
    a, b = (rows // step).astype(int), (cols // step).astype(int)
    fa, fb = ((rows - a * step) / step)[:, None], ((cols - b * step) / step)[None, :]
    A, B = a[:, None], b[None, :]
    iu = ((1 - fa) * ((1 - fb) * u[A, B] + fb * u[A, B + 1])
          + fa * ((1 - fb) * u[A + 1, B] + fb * u[A + 1, B + 1]))
    iv = ((1 - fa) * ((1 - fb) * v[A, B] + fb * v[A, B + 1])
          + fa * ((1 - fb) * v[A + 1, B] + fb * v[A + 1, B + 1]))
    assert np.nanmax(np.hypot(iu - eu, iv - ev)) <= TOLERANCE


def test_a_too_coarse_mesh_is_refined():
    src, _ = _scene(200)
    tgt = _target(src, 10.0)
    *_, step, err = source_mesh(src, tgt, step=32, tolerance=1e-9)
    assert step < 32 and (err <= 1e-9 or step == 1)


def test_nearest_is_the_pixel_containing_the_exact_source_position():
    src, band = _scene(holes=False)
    tgt = _target(src, 10.0)
    out = _warp_band(band, src, tgt, Resampling.nearest, -9999)
    rr, cc = np.meshgrid(np.arange(tgt.ny), np.arange(tgt.nx), indexing="ij")
    sx, sy = Transformer.from_crs(3035, 32632, always_xy=True).transform(*tgt.xy(rr, cc))
    sr, sc = np.floor(src.rowcol(sx, sy)).astype(int)
    inside = (sr >= 0) & (sr < src.ny) & (sc >= 0) & (sc < src.nx)
    expect = np.full(tgt.shape, -9999, np.int16)
    expect[inside] = band[sr[inside], sc[inside]]
    assert np.mean(out == expect) >= 0.9999


@pytest.mark.parametrize("res", [10.0, 30.0])
@pytest.mark.parametrize("rs", [Resampling.nearest, Resampling.bilinear, Resampling.cubic])
def test_agrees_with_gdal_warper(rs, res):
    """Same valid pixels as GDAL; NN identical on >= 99.9 %, BL/CC within 1 DN on
    >= 99 % (also when downsampling 10 m -> 30 m, where GDAL widens the kernel)."""
    src, band = _scene()
    tgt = _target(src, res)
    own = _warp_band(band, src, tgt, rs, -9999)
    ref = gdal_warp_band(band, src, tgt, rs, -9999)
    assert np.array_equal(own == -9999, ref == -9999)
    both = own != -9999
    d = np.abs(own.astype(np.int32) - ref)[both]
    if rs == Resampling.nearest:
        assert np.mean(d == 0) >= 0.999
    else:
        assert np.mean(d <= 1) >= 0.99
        assert np.mean(d == 0) > 0.5


def test_valid_exactly_where_the_centre_source_pixel_is_valid():
    src, band = _scene()
    tgt = _target(src, 10.0)
    valid = (band != -9999).astype(np.uint8)
    nn = _warp_band(valid, src, tgt, Resampling.nearest, 0)
    for rs in (Resampling.bilinear, Resampling.cubic):
        out = _warp_band(band, src, tgt, rs, -9999)
        assert np.array_equal(out != -9999, nn == 1)


@pytest.mark.parametrize("kind", ["nearest", "bilinear", "cubic"])
def test_windows_and_threads_do_not_change_pixels(kind):
    src, band = _scene(300)
    tgt = _target(src, 10.0)
    mesh = source_mesh(src, tgt)
    k = _KIND[Resampling[kind]]
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        whole = _resample_window(band, mesh, k, -9999, 0, 0, tgt.ny, tgt.nx)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        again = _resample_window(band, mesh, k, -9999, 0, 0, tgt.ny, tgt.nx)
    finally:
        numba.set_num_threads(old)
    assert np.array_equal(whole, again)
    for r0, c0, h, w in [(0, 0, 17, 33), (45, 70, 100, 3), (tgt.ny - 31, tgt.nx - 65, 31, 65),
                         (1, 31, 64, 64)]:
        win = _resample_window(band, mesh, k, -9999, r0, c0, h, w)
        assert np.array_equal(win, whole[r0:r0 + h, c0:c0 + w])


@pytest.mark.parametrize("kind", ["nearest", "bilinear", "cubic"])
@pytest.mark.parametrize("res", [10.0, 25.0])             # 25 m: widened kernels
def test_multi_band_kernel_equals_single_band_kernel_with_qai_resync(kind, res):
    src, band = _scene(240)
    tgt = _target(src, res)
    mesh = source_mesh(src, tgt)
    k = _KIND[Resampling[kind]]
    rng = np.random.default_rng(3)
    bands = [band]
    for _ in range(3):
        b = rng.integers(-3000, 12000, band.shape).astype(np.int16)
        b[rng.random(b.shape) < 0.05] = -9999
        bands.append(b)
    bands[2][:60] = -9999
    q = (rng.integers(0, 8, tgt.shape).astype(np.uint16) << 1)
    q[rng.random(tgt.shape) < 0.1] |= 1                       # QAI nodata bit
    off = qai.is_nodata(q)
    assert off.any() and (~off).any()
    for r0, c0, h, w in [(0, 0, tgt.ny, tgt.nx), (13, 29, 40, tgt.nx - 29), (5, 0, 1, 7)]:
        multi = resample_bands(bands, mesh, k, -9999, r0, c0, h, w, q)
        plain = resample_bands(bands, mesh, k, -9999, r0, c0, h, w)
        for i, b in enumerate(bands):
            single = _resample_window(b, mesh, k, -9999, r0, c0, h, w)
            assert np.array_equal(plain[i], single)
            assert h < tgt.ny or np.count_nonzero(single != -9999) > 1000
            single[off[r0:r0 + h, c0:c0 + w]] = -9999
            assert np.array_equal(multi[i], single)


def _products(src, band):
    q = np.zeros(band.shape, np.uint16)
    q[band == -9999] = 1
    q[50:60, 50:60] = 1                          # QAI nodata, reflectance valid
    b2 = band.copy()
    b2[150:160, 10:30] = -9999                   # one band only: QAI stays valid
    g20 = Grid(src.crs_wkt, src.x0, src.y0, 20.0, 20.0, src.nx // 2, src.ny // 2)
    b20 = band[::2, ::2].copy()
    return [Product("QAI", [q], [src], ("QAI",), 1, 1.0, "nearest"),
            Product("TOA", [band.copy(), b2, b20], [src, src, g20], ("BLUE", "GREEN", "SWIR1"),
                    -9999, 10000.0, "cubic"),
            Product("HOT", [band.copy()], [src], ("HOT",), -9999, 1.0, "bilinear")]


@pytest.mark.parametrize("release", [False, True])
def test_lazy_warp_equals_eager_warp_with_resync(release):
    src, band = _scene(300)
    tgt = _target(src, 10.0)
    eager = warp_products(_products(src, band), tgt)
    prods = _products(src, band)
    lazy = warp_products_lazy(prods, tgt, release_qai=release)
    # released: the QAI product no longer holds its source band (memory), else unchanged
    assert (prods[0].bands[0] is None) == release
    assert np.array_equal(lazy[0].bands[0], eager[0].bands[0])
    assert np.count_nonzero(qai.is_nodata(lazy[0].bands[0])) > 0
    for pl, pe in zip(lazy[1:], eager[1:]):
        for bl, be in zip(pl.bands, pe.bands):
            assert np.array_equal(np.asarray(bl), be)
            assert np.array_equal(np.asarray(bl[10:50, 20:90]), be[10:50, 20:90])


@pytest.mark.parametrize("resampling", ["AVERAGE", "NEAREST"])
def test_overview_levels_equal_gdal_for_aligned_windows(tmp_path, resampling):
    g = Grid(LAEA, 4e6, 3e6, 10, 10, 1024, 768)
    rng = np.random.default_rng(1)
    a = rng.integers(-300, 4000, (700, 1000)).astype(np.int16)
    a[rng.random(a.shape) < 0.2] = -9999
    p = tmp_path / "w.tif"
    formats.write_window(p, [a], (30, 10), (768, 1024), g, -9999, overviews=([2, 4, 8], resampling),
                         options={"COMPRESS": "NONE"})
    levels = formats.overview_levels(a, (30, 10), (768, 1024), 3, -9999, resampling)
    # the same window written with GDAL's overview builder (a factor list GDAL must build)
    q = tmp_path / "gdal.tif"
    with rasterio.open(q, "w", **formats.window_profile((768, 1024), g, -9999, 1)) as ds:
        full = np.full((768, 1024), -9999, np.int16)
        full[30:730, 10:1010] = a
        ds.write(full, 1)
        ds.build_overviews([2, 4, 8], rasterio.enums.Resampling[resampling.lower()])
    for lvl in range(3):
        with rasterio.open(q, overview_level=lvl) as ds:
            assert np.array_equal(ds.read(1), levels[lvl])
        with rasterio.open(f"{p}.ovr{2 ** (lvl + 1)}.tif") as ds:
            assert np.array_equal(ds.read(1), levels[lvl])


def test_overview_levels_of_odd_sizes_within_one_dn_of_gdal(tmp_path):
    g = Grid(LAEA, 4e6, 3e6, 10, 10, 235, 469)
    rng = np.random.default_rng(2)
    a = rng.integers(-300, 4000, (469, 235)).astype(np.int16)
    a[rng.random(a.shape) < 0.2] = -9999
    q = tmp_path / "gdal.tif"
    with rasterio.open(q, "w", **formats.window_profile((469, 235), g, -9999, 1)) as ds:
        ds.write(a, 1)
        ds.build_overviews([2, 4], rasterio.enums.Resampling.average)
    levels = formats.overview_levels(a, (0, 0), (469, 235), 2, -9999, "AVERAGE")
    for lvl in range(2):
        with rasterio.open(q, overview_level=lvl) as ds:
            ref = ds.read(1)
        assert ref.shape == levels[lvl].shape
        assert np.array_equal(ref == -9999, levels[lvl] == -9999)
        d = np.abs(ref.astype(int) - levels[lvl])
        assert d.max() <= 1 and np.mean(d == 0) >= 0.99


class _RowSource:
    """A band served as a row source (as the Sentinel-2 merge of a TOA run): rows() fills
    every column it was not asked for with garbage, so a read outside source_window's
    rectangle shows up in the pixels."""

    def __init__(self, band):
        self.band, self.shape, self.dtype = band, band.shape, band.dtype
        self.rng = np.random.default_rng(7)
        self.asked = []

    def rows(self, r0, r1, c0=0, c1=None):
        c1 = self.shape[1] if c1 is None else c1
        self.asked.append((r0, r1, c0, c1))
        out = self.rng.integers(-9999, 20000, (r1 - r0, self.shape[1])).astype(self.dtype)
        out[:, c0:c1] = self.band[r0:r1, c0:c1]
        return out

    def valid_rows(self, r0, r1):
        return self.band[r0:r1]


@pytest.mark.parametrize("res", [10.0, 25.0])
@pytest.mark.parametrize("kind", ["nearest", "bilinear", "cubic"])
def test_row_sources_warp_like_arrays_reading_only_their_window(kind, res):
    src, band = _scene(300)
    tgt = _target(src, res)
    prods = _products(src, band)
    prods[1] = Product("TOA", prods[1].bands, prods[1].grids, prods[1].band_names,
                       -9999, 10000.0, kind)
    eager = warp_products(prods, tgt)
    prods = _products(src, band)
    prods[1] = Product("TOA", [_RowSource(b) if b.shape == band.shape else b
                               for b in prods[1].bands], prods[1].grids,
                       prods[1].band_names, -9999, 10000.0, kind)
    lazy = warp_products_lazy(prods, tgt, release_qai=True)
    assert np.array_equal(lazy[0].bands[0], eager[0].bands[0])
    for r0, c0, h, w in [(0, 0, tgt.ny, tgt.nx), (10, 20, 40, 70), (tgt.ny - 7, 3, 7, 50),
                         (33, tgt.nx - 9, 60, 9)]:
        for bl, be in zip(lazy[1].bands, eager[1].bands):
            assert np.array_equal(np.asarray(bl[r0:r0 + h, c0:c0 + w]),
                                  be[r0:r0 + h, c0:c0 + w]), (r0, c0, h, w)
    rs = prods[1].bands[0]
    assert rs.asked and all(0 <= a < b <= src.ny for a, b, _, _ in rs.asked)
    # a small window asks for a few rows and columns, not the whole source
    assert min((b - a) * (d - c) for a, b, c, d in rs.asked) < src.ny * src.nx // 8


def test_source_window_has_nothing_for_a_window_off_the_source():
    src, _ = _scene(200)
    tgt = _target(src, 10.0)
    mesh = source_mesh(src, tgt)
    far = Grid(tgt.crs_wkt, tgt.x0 - 50000.0, tgt.y0, 10.0, 10.0, 300, 300)
    assert source_window(source_mesh(src, far), 2, 0, 0, 300, 300, (src.ny, src.nx)) == (0, 0, 0, 0)
    s0, s1, c0, c1 = source_window(mesh, 2, 0, 0, tgt.ny, tgt.nx, (src.ny, src.nx))
    assert (s0, c0) == (0, 0) and (s1, c1) == (src.ny, src.nx)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multi_band_kernel_fast_paths_equal_the_per_pixel_kernel(seed):
    """The multi-band kernel's fast paths (source boxes without nodata, integer-tap
    checks, vectorised cubic) against the per-pixel single-band kernel: random windows,
    nodata scattered, in blocks and in every box, uint16 sources, rotated, up- and
    downsampling meshes, and source row blocks (srow0 > 0)."""
    rng = np.random.default_rng(seed)
    src, band = _scene(260, seed=seed, holes=bool(seed % 2))
    for res in (5.0, 10.0, 30.0):
        tgt = _target(src, res)
        mesh = source_mesh(src, tgt)
        bands = [band]
        b = rng.integers(-9999, -9990, band.shape).astype(np.int16)   # values near nodata
        bands.append(b)
        b = rng.integers(0, 20000, band.shape).astype(np.int16)
        b[rng.random(b.shape) < 0.2] = -9999                            # nodata in every box
        bands.append(b)
        u16 = rng.integers(0, 60000, band.shape).astype(np.uint16)
        for kind in (0, 1, 2):
            for _ in range(12):
                h, w = int(rng.integers(1, min(80, tgt.ny) + 1)), int(rng.integers(1, tgt.nx + 1))
                r0, c0 = int(rng.integers(0, tgt.ny - h + 1)), int(rng.integers(0, tgt.nx - w + 1))
                got = resample_bands(bands, mesh, kind, -9999, r0, c0, h, w)
                for k, bb in enumerate(bands):
                    want = _resample_window(bb, mesh, kind, -9999, r0, c0, h, w)
                    assert np.array_equal(got[k], want), (res, kind, k, r0, c0, h, w)
                got16 = resample_bands([u16], mesh, kind, None, r0, c0, h, w)[0]
                assert np.array_equal(got16, _resample_window(u16, mesh, kind, None, r0, c0, h, w))
                s0, s1, _, _ = source_window(mesh, kind, r0, c0, h, w, band.shape)
                if s1 > s0:
                    blk = resample_bands([bb[s0:s1] for bb in bands], mesh, kind, -9999, r0,
                                         c0, h, w, srow0=s0, source_height=band.shape[0])
                    assert np.array_equal(blk, got)


@pytest.mark.parametrize("lon0", [20.0, 40.0])
def test_cubic_of_rotated_grids_equals_the_per_pixel_kernel(lon0):
    """A target grid rotated against the source (8-20 degrees: a chunk's taps span more
    source rows than its float64 box holds, so the cubic reads the integer taps as
    vectors): int16, uint16 and uint8 sources, with and without nodata in the taps,
    against the per-pixel kernel."""
    rng = np.random.default_rng(int(lon0))
    src, band = _scene(300, seed=3, holes=True)
    laea = CRS.from_proj4(f"+proj=laea +lat_0=55 +lon_0={lon0} +datum=WGS84").to_wkt()
    tgt = Datacube.from_origin_geo(laea, -25.0, 60.0, 30000, 30000).aligned_grid(
        grid_footprint(src, laea), 10.0)
    mesh = source_mesh(src, tgt)
    # the rotation between the grids (degrees), from the mesh
    u, v = mesh[0], mesh[1]
    ang = np.degrees(np.arctan2(v[0, -1] - v[0, 0], u[0, -1] - u[0, 0]))
    assert abs(ang) > 7.0, ang
    u16 = rng.integers(0, 65535, band.shape).astype(np.uint16)
    u16n = u16.copy()
    u16n[rng.random(u16.shape) < 0.01] = 65535
    u8 = rng.integers(0, 256, band.shape).astype(np.uint8)
    u8[rng.random(u8.shape) < 0.01] = 0
    cases = [([band, band // 3], -9999), ([u16], None), ([u16n], 65535), ([u8], 0)]
    for _ in range(6):
        h, w = int(rng.integers(1, min(120, tgt.ny) + 1)), int(rng.integers(1, tgt.nx + 1))
        r0, c0 = int(rng.integers(0, tgt.ny - h + 1)), int(rng.integers(0, tgt.nx - w + 1))
        for bands, nd in cases:
            got = resample_bands(bands, mesh, 2, nd, r0, c0, h, w)
            for k, bb in enumerate(bands):
                want = _resample_window(bb, mesh, 2, nd, r0, c0, h, w)
                assert np.array_equal(got[k], want), (bb.dtype, nd, k, r0, c0, h, w)


def test_row_sources_pasted_on_their_own_grid():
    """Bands already on the target's pixel grid (DO_REPROJ = FALSE) are pasted from the
    rows the window needs, as arrays are."""
    src, band = _scene(200)
    tgt = Grid(src.crs_wkt, src.x0 - 30.0, src.y0 + 50.0, 10.0, 10.0, src.nx + 7, src.ny + 9)
    eager = warp_products(_products(src, band), tgt)
    prods = _products(src, band)
    prods[1] = Product("TOA", [_RowSource(b) if b.shape == band.shape else b
                               for b in prods[1].bands], prods[1].grids,
                       prods[1].band_names, -9999, 10000.0, "cubic")
    lazy = warp_products_lazy(prods, tgt, release_qai=True)
    for r0, c0, h, w in [(0, 0, tgt.ny, tgt.nx), (3, 1, 20, 30), (tgt.ny - 6, 0, 6, tgt.nx)]:
        for bl, be in zip(lazy[1].bands, eager[1].bands):
            assert np.array_equal(np.asarray(bl[r0:r0 + h, c0:c0 + w]), be[r0:r0 + h, c0:c0 + w])
    asked = prods[1].bands[0].asked
    assert asked and min(b - a for a, b, _, _ in asked) < 25      # the small windows
