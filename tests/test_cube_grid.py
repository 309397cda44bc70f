"""Cube definition, tile math, .prj files, cube selection and warping (spec 03 §2.2–§2.6)."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from pyproj import CRS, Transformer

from l2ps import qai
from l2ps.cube.grid import Datacube, cube_for_params, grid_footprint, read_prj
from l2ps.cube.warp import integer_offset, resync_nodata, warp_product, warp_products
from l2ps.errors import GridError
from l2ps.grid import Grid
from l2ps.products import Product

WKT_3035 = CRS.from_epsg(3035).to_wkt()
WKT_UTM33 = CRS.from_epsg(32633).to_wkt()


def cube(ox=0.0, oy=0.0, tx=30.0, ty=30.0, wkt=WKT_3035):
    return Datacube(wkt, 0.0, 0.0, ox, oy, tx, ty)


# --------------------------------------------------------------------------- origin
def test_origin_epsg3035_matches_force():
    c = Datacube.from_origin_geo(WKT_3035, -25.0, 60.0, 30000, 30000)
    assert f"{c.origin_x:f} {c.origin_y:f}" == "2456026.363042 4574919.607965"
    assert (c.origin_lon, c.origin_lat, c.tile_x, c.tile_y) == (-25.0, 60.0, 30000, 30000)


def test_origin_out_of_range_is_grid_error():
    with pytest.raises(GridError, match="outside"):
        Datacube.from_origin_geo(WKT_3035, -200, 60, 30000, 30000)


# ------------------------------------------------------------------------ tile_find
@pytest.mark.parametrize("dx, X", [
    (0.0, 0), (1e-3, 0), (29.999, 0), (30.0, 0),      # boundary, positive side → lower tile
    (30.001, 1), (60.0, 1), (60.5, 2),
    (-1e-3, -1), (-30.0, -1), (-30.001, -2), (-60.0, -2),   # negative side behaves like floor
])
def test_tile_find_boundary_rule(dx, X):
    c = cube(ox=1000.0, oy=5000.0)
    assert c.tile_find(1000.0 + dx, 5000.0)[0] == X
    assert c.tile_find(1000.0, 5000.0 - dx)[1] == X      # same rule for Y (dy = oy - y)


def test_tile_find_ignores_floating_point_noise():
    c = Datacube.from_origin_geo(WKT_3035, -25.0, 60.0, 30000, 30000)
    # dx = 3 tiles computed with floating-point noise ((0.1 + 0.2) * 300000 > 90000)
    x = c.origin_x + (0.1 + 0.2) * 300000.0
    assert (0.1 + 0.2) * 300000.0 > 90000.0
    assert c.tile_find(x, c.origin_y - 1)[0] == 2       # on the boundary → lower tile
    assert c.tile_find(c.origin_x + 90000.0 * (1 + 1e-15), c.origin_y - 1)[0] == 2


def test_tile_names_c_style_negative_padding():
    assert Datacube.tile_name(0, 0) == "X0000_Y0000"
    assert Datacube.tile_name(44, 14) == "X0044_Y0014"
    assert Datacube.tile_name(-1, 3) == "X-001_Y0003"
    assert Datacube.tile_name(-12, -123) == "X-012_Y-123"
    assert Datacube.tile_name(-1234, 5) == "X-1234_Y0005"
    for X, Y in [(0, 0), (-1, 3), (-1234, 99999), (12, -12)]:
        assert Datacube.parse_tile_name(Datacube.tile_name(X, Y)) == (X, Y)
    with pytest.raises(GridError):
        Datacube.parse_tile_name("X00a1_Y0001")


def test_tile_ul_and_range():
    c = cube(ox=100.0, oy=900.0, tx=30.0, ty=20.0)
    assert c.tile_ul(2, 3) == (160.0, 840.0)
    assert c.tile_ul(-1, -1) == (70.0, 920.0)
    r = c.tile_range([[95.0, 905.0], [161.0, 839.0]])
    assert (r.x_min, r.x_max, r.y_min, r.y_max) == (-1, 2, -1, 3)
    assert r.tiles()[:3] == [(-1, -1), (0, -1), (1, -1)]     # Y outer, X inner


# ---------------------------------------------------------------------- aligned grid
def test_aligned_grid_snaps_outward_to_tile_pixels():
    c = cube(ox=1000.0, oy=5000.0, tx=300.0, ty=300.0)
    g = c.aligned_grid(np.array([[1031.0, 4969.0], [1201.0, 4800.5]]), 30.0)
    assert (g.x0, g.y0, g.dx, g.dy) == (1030.0, 4970.0, 30.0, 30.0)
    assert (g.nx, g.ny) == (6, 6)          # x 1030..1210, y 4970..4790
    assert g.x1 >= 1201.0 and g.y1 <= 4800.5
    # edges exactly on pixel boundaries are not padded
    g2 = c.aligned_grid((1030.0, 4790.0, 1210.0, 4970.0), 30.0)
    assert (g2.x0, g2.y0, g2.nx, g2.ny) == (1030.0, 4970.0, 6, 6)
    # every tile UL is a pixel corner of the aligned grid
    for X, Y in [(0, 0), (1, 1), (-1, 2)]:
        ulx, uly = c.tile_ul(X, Y)
        assert ((ulx - g.x0) / g.dx) % 1 == 0 and ((g.y0 - uly) / g.dy) % 1 == 0


def test_tile_size_must_be_multiple_of_resolution():
    c = cube(tx=100000.0, ty=100000.0)
    with pytest.raises(GridError, match="multiple"):
        c.tile_pixels(30.0)
    assert c.tile_pixels(25.0) == (4000, 4000)


# ------------------------------------------------------------------------------ prj
def test_prj_write_read_new_format(tmp_path):
    c = Datacube.from_origin_geo(WKT_3035, -25.0, 60.0, 30000, 20000)
    stored = c.write_prj(tmp_path)
    assert stored.origin_x == pytest.approx(c.origin_x, abs=1e-6)
    text = (tmp_path / "datacube-definition.prj").read_text()
    lines = text.splitlines()
    assert len(lines) == 7
    assert lines[0] == f"PROJECTION = {WKT_3035}"          # WKT with spaces, whole line
    assert lines[3] == "ORIGIN_MAP_X = 2456026.363042"
    assert lines[6] == "TILE_SIZE_Y = 20000.000000"
    back = read_prj(tmp_path / "datacube-definition.prj")
    assert back.wkt == WKT_3035
    assert back.origin_x == pytest.approx(c.origin_x, abs=1e-6)
    assert (back.tile_x, back.tile_y) == (30000.0, 20000.0)
    assert not list(tmp_path.glob(".*tmp*"))


def test_prj_existing_is_kept_and_checked(tmp_path):
    c = Datacube.from_origin_geo(WKT_3035, -25.0, 60.0, 30000, 30000)
    c.write_prj(tmp_path)
    path = tmp_path / "datacube-definition.prj"
    before = path.read_bytes()
    c.write_prj(tmp_path)                                   # same cube: fine, untouched
    assert path.read_bytes() == before
    other = Datacube.from_origin_geo(WKT_3035, -20.0, 60.0, 30000, 30000)
    with pytest.raises(GridError, match=r"datacube-definition\.prj.*ORIGIN_MAP_X"):
        other.write_prj(tmp_path)
    with pytest.raises(GridError, match="TILE_SIZE_X"):
        Datacube.from_origin_geo(WKT_3035, -25.0, 60.0, 15000, 30000).write_prj(tmp_path)
    with pytest.raises(GridError, match="PROJECTION"):
        Datacube.from_origin_geo(WKT_UTM33, -25.0, 60.0, 30000, 30000).write_prj(tmp_path)
    assert path.read_bytes() == before


def test_prj_equivalent_wkt_without_spaces_matches(tmp_path):
    # FORCE's doc example: EPSG:3035 WKT with spaces removed (different names, same CRS)
    nospace = CRS.from_epsg(3035).to_wkt("WKT1_GDAL").replace(" ", "")
    Datacube.from_origin_geo(nospace, -25.0, 60.0, 30000, 30000).write_prj(tmp_path)
    c = Datacube.from_origin_geo(WKT_3035, -25.0, 60.0, 30000, 30000)
    assert c.write_prj(tmp_path).wkt == nospace


@pytest.mark.parametrize("extra", ["", "3000.000000\n"])
def test_prj_read_deprecated_format(tmp_path, extra):
    p = tmp_path / "datacube-definition.prj"
    nospace = CRS.from_epsg(3035).to_wkt("WKT1_GDAL").replace(" ", "")
    p.write_text(f"{nospace}\r\n-25.000000\n60.000000#\n2456026.363042\n4574919.607965\n"
                 f"30000.000000\n{extra}")
    c = read_prj(p)
    assert c.wkt == nospace
    assert (c.origin_lon, c.origin_lat) == (-25.0, 60.0)
    assert (c.origin_x, c.origin_y, c.tile_x, c.tile_y) == (2456026.363042, 4574919.607965,
                                                            30000.0, 30000.0)


def test_prj_read_garbage(tmp_path):
    p = tmp_path / "datacube-definition.prj"
    p.write_text("PROJECTION = x\nORIGIN_GEO_X = 1\nFOO = 2\n")
    with pytest.raises(GridError, match="line 3"):
        read_prj(p)
    p.write_text("PROJECTION = x\nORIGIN_GEO_X = 1\n")
    with pytest.raises(GridError, match="missing"):
        read_prj(p)


# ----------------------------------------------------------------- cube_for_params
def _native(x0=300000.0, y0=5800000.0, res=30.0, n=(60, 50)):
    return Grid(WKT_UTM33, x0, y0, res, res, n[0], n[1])


def test_cube_for_params_wkt():
    p = {"DO_REPROJ": "TRUE", "DO_TILE": "TRUE", "PROJECTION": WKT_3035,
         "ORIGIN_LON": -25.0, "ORIGIN_LAT": 60.0, "TILE_SIZE": "30000 30000"}
    [c] = cube_for_params(p, None, _native())
    assert c.origin_x == pytest.approx(2456026.363042, abs=1e-6)
    assert c.name == ""
    p["PROJECTION"] = "EPSG:3035"
    with pytest.raises(GridError, match="PROJECTION"):
        cube_for_params(p, None, _native())


def test_cube_for_params_no_reproj_snaps_origin_to_pixel_grid():
    nat = _native(x0=300015.0, y0=5800005.0)
    p = {"DO_REPROJ": False, "DO_TILE": True, "ORIGIN_LON": 10.0, "ORIGIN_LAT": 53.0,
         "TILE_SIZE": [30000, 30000], "PROJECTION": "ignored"}
    [c] = cube_for_params(p, None, nat)
    assert CRS.from_wkt(c.wkt).to_epsg() == 32633
    raw_x, raw_y = Transformer.from_crs(4326, 32633, always_xy=True).transform(10.0, 53.0)
    assert abs(c.origin_x - raw_x) <= 15.0 and abs(c.origin_y - raw_y) <= 15.0
    assert ((c.origin_x - nat.x0) / 30.0) % 1 == pytest.approx(0.0, abs=1e-9)
    assert ((nat.y0 - c.origin_y) / 30.0) % 1 == pytest.approx(0.0, abs=1e-9)
    # the .prj stays consistent: the geographic origin projects onto the map origin
    x, y = Transformer.from_crs(4326, 32633, always_xy=True).transform(c.origin_lon, c.origin_lat)
    assert (x, y) == pytest.approx((c.origin_x, c.origin_y), abs=1e-3)


def test_cube_for_params_continental_is_delegated(monkeypatch):
    calls = {}
    fake = types.ModuleType("l2ps.cube.continental")

    def covered(family, corners, continent=None):
        calls["args"] = (family, np.asarray(corners).shape, continent)
        return [Datacube(WKT_3035, 0, 0, 0, 0, 100000, 100000, "europe")]
    fake.covered_continents = covered
    monkeypatch.setitem(sys.modules, "l2ps.cube.continental", fake)
    import l2ps.cube
    monkeypatch.setattr(l2ps.cube, "continental", fake, raising=False)
    p = {"DO_REPROJ": True, "DO_TILE": True, "PROJECTION": "EQUI7-EU", "TILE_SIZE": "1 1"}
    [c] = cube_for_params(p, None, _native())
    assert c.name == "europe"
    assert calls["args"][0] == "EQUI7" and calls["args"][2] == "EU"
    fake.covered_continents = lambda *a, **k: []
    with pytest.raises(GridError, match="outside every continental grid"):
        cube_for_params(p, None, _native())


# ---------------------------------------------------------------------------- warp
def _product(name, bands, grid, nodata=-9999, resampling="nearest", names=None):
    return Product(name, bands, [grid] * len(bands),
                   tuple(names or [f"B{i}" for i in range(len(bands))]), nodata,
                   1.0 if name != "BOA" else 10000.0, resampling)


def test_warp_utm_to_3035_known_pixel_position():
    src = _native(n=(60, 50))
    band = np.full((50, 60), 100, np.int16)
    band[19:22, 29:32] = 7777    # a marked 3x3 block around source pixel (20, 30)
    target_c = Datacube.from_origin_geo(WKT_3035, -25.0, 60.0, 30000, 30000)
    target = target_c.aligned_grid(grid_footprint(src, WKT_3035), 30.0)
    out = warp_product(_product("BOA", [band], src), target)
    b = out.bands[0]
    assert out.grids[0] == target and b.dtype == np.int16 and b.shape == target.shape
    # the target pixel containing the projected centre of source pixel (20, 30) is marked
    x, y = Transformer.from_crs(32633, 3035, always_xy=True).transform(
        src.x0 + 30.5 * 30, src.y0 - 20.5 * 30)
    r, c = (int(v) for v in np.floor(target.rowcol(x, y)))
    assert b[r, c] == 7777
    # every marked target pixel has its centre inside the marked block
    rr, cc = np.nonzero(b == 7777)
    sx, sy = Transformer.from_crs(3035, 32633, always_xy=True).transform(*target.xy(rr, cc))
    srow, scol = np.floor(src.rowcol(sx, sy))
    assert np.all((srow >= 19) & (srow <= 21) & (scol >= 29) & (scol <= 31))
    # exactness: nearest neighbour equals a per-pixel pyproj evaluation
    rr, cc = np.meshgrid(np.arange(target.ny), np.arange(target.nx), indexing="ij")
    tx, ty = target.xy(rr, cc)
    sx, sy = Transformer.from_crs(3035, 32633, always_xy=True).transform(tx, ty)
    sr, sc = np.floor(src.rowcol(sx, sy)).astype(int)
    inside = (sr >= 0) & (sr < 50) & (sc >= 0) & (sc < 60)
    expect = np.full(target.shape, -9999, np.int16)
    expect[inside] = band[sr[inside], sc[inside]]
    assert np.array_equal(b, expect)
    # outside the footprint: nodata
    assert b[0, 0] == -9999 or inside[0, 0]


def test_warp_qai_is_nearest_and_normalised():
    src = _native(n=(60, 50))
    q = np.zeros((50, 60), np.uint16)
    q[:, :30] = 0b0000_0000_0010_0100          # cloud opaque + ... (valid)
    q[:, 30:] = (2 << 1) | (1 << 5)            # cloud + water (valid)
    q[10:15, 10:15] = 1 | (3 << 1)             # nodata with other bits set
    target = Datacube.from_origin_geo(WKT_3035, -25, 60, 30000, 30000).aligned_grid(
        grid_footprint(src, WKT_3035), 30.0)
    out = warp_product(_product("QAI", [q], src, nodata=1, resampling="cubic"), target)
    w = out.bands[0]
    assert set(np.unique(w).tolist()) <= {1, int(q[0, 0]), int(q[0, 59])}   # no interpolation
    assert np.all(w[qai.get_flag(w, qai.NODATA)] == 1)
    assert np.count_nonzero(w == 1) > 0 and not np.any((w & 1) & (w != 1))


def test_resync_nodata_between_qai_and_products():
    g = Grid(WKT_3035, 0, 100, 10, 10, 4, 3)
    q = np.zeros((3, 4), np.uint16)
    q[0, 0] = 1
    boa = [np.full((3, 4), 500, np.int16), np.full((3, 4), 600, np.int16)]
    boa[0][2, 3] = boa[1][2, 3] = -9999       # all BOA nodata → QAI nodata
    boa[0][1, 1] = -9999                      # only one band: QAI stays valid
    aod = np.full((3, 4), 100, np.int16)
    prods = [_product("QAI", [q], g, nodata=1), _product("BOA", boa, g),
             _product("AOD", [aod], g)]
    resync_nodata(prods)
    assert q[2, 3] == 1 and q[1, 1] == 0
    assert boa[0][0, 0] == -9999 and boa[1][0, 0] == -9999 and aod[0, 0] == -9999
    assert aod[2, 3] == -9999 and aod[1, 1] == 100


def test_warp_same_grid_is_integer_copy():
    c = Datacube(WKT_UTM33, 0, 0, 300000.0, 5800000.0, 900.0, 900.0)
    src = Grid(WKT_UTM33, 300000.0 + 45 * 30, 5800000.0 - 7 * 30, 30, 30, 20, 10)
    target = c.aligned_grid(grid_footprint(src), 30.0)
    assert integer_offset(src, target) == (0, 0)
    band = (np.arange(200).reshape(10, 20) * 7).astype(np.int16)
    out = warp_products([_product("QAI", [np.zeros((10, 20), np.uint16)], src, nodata=1),
                         _product("DST", [band], src, resampling="cubic")], target)
    assert np.array_equal(out[1].bands[0], band)
    half = Grid(WKT_UTM33, src.x0 + 15.0, src.y0, 30, 30, 20, 10)
    assert integer_offset(half, target) is None     # sub-pixel shift → resampled, not cut
