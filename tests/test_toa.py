"""DN → TOA/BT (spec 01 §2) and the initial QAI (§1.7, §1.8)."""
from __future__ import annotations

import math
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from rasterio.crs import CRS

import l2ps.level1 as L
from l2ps import qai as Q
from l2ps import toa as T
from l2ps.errors import Level1Error
from l2ps.grid import Grid
from l2ps.level1.model import Band, Calibration, Level1

TESTDATA = os.environ.get("L2PS_TESTDATA")
needs_data = pytest.mark.skipif(not TESTDATA, reason="L2PS_TESTDATA not set "
                                "(real Level-1 products in ../shared/testdata)")
rasterio = pytest.importorskip("rasterio")

CROPS_LANDSAT = {
    "LC08_L1TP_193024_20200509_20200509_01_RT": ["1", "2", "3", "4", "5", "6", "7", "9", "10",
                                                 "11"],
    "LE07_L1TP_193024_20100420_20161215_01_T1": ["1", "2", "3", "4", "5", "6_VCID_1",
                                                 "6_VCID_2", "7"],
    "LT05_L1TP_193024_20050516_20161127_01_T1": ["1", "2", "3", "4", "5", "6", "7"],
}
CROPS_S2 = ["S2B_MSIL1C_20200406T101559_N0209_R065_T32UPC_20200406T130159",
            "S2B_MSIL1C_20220615T101559_N0400_R065_T32UPC_20220615T122549"]
WKT = CRS.from_epsg(32633).to_wkt()


def crops() -> Path:
    return Path(TESTDATA) / "toa-crops"


def _read(p: Path) -> np.ndarray:
    with rasterio.open(p) as ds:
        return ds.read()


# ------------------------------------------------------------------ toa-crops
@needs_data
@pytest.mark.parametrize("stem", list(CROPS_LANDSAT))
def test_landsat_crops_against_reference(stem):
    """Our formula fed with the MTL scene-centre sun angle (as the reference library) agrees
    within 0.1 % relative, plus the one count that truncation to int16 may cost."""
    mtl = L.parse_mtl(crops() / f"{stem}_MTL.txt")
    spec = L.landsat_sensor(mtl)
    cal = L.landsat_calibration(mtl, spec)
    dn, ref = _read(crops() / f"{stem}.tif"), _read(crops() / f"{stem}_toa.tif")
    cos_sun = math.cos(math.radians(90.0 - float(mtl["SUN_ELEVATION"])))
    checked = 0
    for k, name in enumerate(CROPS_LANDSAT[stem]):
        bs = [b for b in spec.bands if b.l1_name == name]
        if not bs:          # B11 (OLI), B6_VCID_2 (ETM+) are not used (spec 01 §8)
            continue
        b = bs[0]
        band = Band(b.domain, name, crops() / f"{stem}.tif", None, cal[b.domain], b.thermal)
        out = T.toa_reflectance(dn[k], band, cos_sun, spec)
        assert out.dtype == np.int16
        if b.thermal:
            bt = out / T.BT_SCALE
            assert np.all(np.abs(bt - ref[k]) <= 0.011 + 1e-4 * ref[k]), name
            assert np.all(bt <= ref[k] + 1e-3)         # truncation, never rounding up
        else:
            pos = ref[k] > 0
            r = ref[k][pos] * T.TOA_SCALE
            assert np.all(np.abs(out[pos] - r) <= 1e-3 * r + 1.0), name
            assert np.all(out[~pos] == T.NODATA)       # ρ ≤ 0 → nodata (non-cirrus)
        checked += 1
    assert checked == len(spec.bands)


@needs_data
@pytest.mark.parametrize("stem", CROPS_S2)
def test_s2_crops_against_reference(stem):
    info = L.parse_product_xml(crops() / f"{stem}_MTD.xml")
    assert info.sensor == "SEN2B"
    n400 = "_N0400_" in stem
    assert info.baseline == ("04.00" if n400 else "02.09")
    assert set(info.add_offset) == ({-1000.0} if n400 else {0.0})
    spec = L.sensor_spec(info.sensor)
    cal = L.s2_calibration(info)
    dn, ref = _read(crops() / f"{stem}.tif"), _read(crops() / f"{stem}_toa.tif")
    worst = 0.0
    for k, b in enumerate(spec.bands):
        band = Band(b.domain, b.l1_name, crops(), None, cal[b.domain])
        out = T.toa_reflectance(dn[k], band, None, spec)
        ok = dn[k] > 0
        diff = np.abs(out[ok].astype(np.float64) - ref[k][ok].astype(np.float64) * 1e4)
        worst = max(worst, diff.max())
        assert np.all(out[~ok] == T.NODATA)            # DN 0 → nodata (deliberate fix)
    assert worst <= 1.0


# ------------------------------------------------------------------ formula details
def _s2band(offset=-1000.0, q=10000.0, domain="BLUE"):
    return Band(domain, "B02", Path("x.jp2"), None, Calibration(quantification=q,
                                                                add_offset=offset))


def test_s2_float32_order_and_clipping():
    spec = L.sensor_spec("SEN2B")
    dn = np.array([[0, 1, 999, 1000, 1007, 33767, 33768, 65535]], np.uint16)
    out = T.toa_reflectance(dn, _s2band(), None, spec)
    # 1007 → 6 (float32 add, divide, multiply, truncation); no int16 wrap above 32767
    assert out.tolist() == [[-9999, -999, -1, 0, 6, 32767, 32767, 32767]]
    assert T.s2_saturation_dn(_s2band()) == 33768
    assert T.s2_saturation_dn(_s2band(offset=0.0)) == 32768


def test_landsat_nonpositive_reflectance():
    spec = L.sensor_spec("LND08")
    cal = Calibration(refl_mult=2e-5, refl_add=-0.1)
    dn = np.array([[0, 4999, 5000, 5001, 65535]], np.uint16)
    red = Band("RED", "4", Path("b4"), None, cal)
    cirrus = Band("CIRRUS", "9", Path("b9"), None, cal)
    cos = np.full(dn.shape, 0.3, np.float32)     # 65535 → ρ = 4.04: clipped, no wrap
    assert T.toa_reflectance(dn, red, cos, spec).tolist() == [[-9999, -9999, -9999, 0, 32767]]
    assert T.toa_reflectance(dn, cirrus, cos, spec).tolist() == [[-9999, 0, 0, 0, 32767]]
    # truncation toward zero, not rounding: (−0.1 + 2e-5·5012)/0.5·10000 = 4.8 → 4
    assert T.toa_reflectance(np.array([[5012]], np.uint16), red, 0.5, spec)[0, 0] == 4


def test_apply_toa_nodata():
    spec = L.sensor_spec("LND08")
    qai = Q.empty((1, 3))
    toa = {"RED": np.array([[100, -9999, 200]], np.int16),
           "CIRRUS": np.array([[0, 5, 7]], np.int16),
           "NIR": np.array([[300, 400, 500]], np.int16)}
    qai[0, 2] = 1
    T.apply_toa_nodata(toa, qai, spec)
    assert Q.is_nodata(qai).tolist() == [[False, True, True]]
    assert toa["NIR"].tolist() == [[300, -9999, -9999]]
    assert toa["CIRRUS"].tolist() == [[0, -9999, -9999]]



def test_apply_toa_nodata_blockwise_matches_whole():
    """Row blocks (here 2 rows) give what the whole-array rule gives; bands of another
    shape (coarse S2 bands) are left alone."""
    spec = L.sensor_spec("LND08")
    rng = np.random.default_rng(3)
    red = rng.integers(0, 4, (7, 5)).astype(np.int16)
    red[red == 0] = -9999
    nir = rng.integers(1, 100, (7, 5)).astype(np.int16)
    coarse = np.ones((2, 2), np.int16)
    qai = Q.empty((7, 5))
    qai[6, 4] = 1
    expect_off = (red == -9999)
    expect_off[6, 4] = True
    toa = {"RED": red, "NIR": nir, "X": coarse}
    T.apply_toa_nodata(toa, qai, spec, block_rows=2)
    assert (Q.is_nodata(qai) == expect_off).all()
    assert (nir[expect_off] == -9999).all() and (nir[~expect_off] > 0).all()
    assert (coarse == 1).all()

# ------------------------------------------------------------------ initial QAI
def _fake_level1(sensor: str, grids: dict[str, Grid], cal=None) -> Level1:
    spec = L.sensor_spec(sensor)
    bands = {}
    for b in spec.bands:
        g = grids.get(b.domain, grids["default"])
        bands[b.domain] = Band(b.domain, b.l1_name, Path(f"B{b.l1_name}.tif"), g,
                               cal or Calibration(quantification=10000.0), b.thermal)
    base = grids["default"]
    return Level1(Path("x"), Path("x"), "x", spec, datetime(2020, 1, 1, tzinfo=timezone.utc),
                  1, "WRS-2", "000000", base, bands)


def test_initial_qai_nodata_saturation_no_short_circuit():
    g = Grid(WKT, 0.0, 300.0, 30.0, 30.0, 4, 3)
    l1 = _fake_level1("LND05", {"default": g})
    dn = {d: np.full(g.shape, 100, np.uint8) for d in l1.bands}
    dn["BLUE"][0, 0] = 255          # saturated in BLUE ...
    dn["GREEN"][0, 0] = 0           # ... and zero in a later band: both flags (no break)
    dn["TEMP"][1, 1] = 0            # thermal zero → nodata
    dn["SWIR2"][2, 3] = 255         # saturation in a later band
    qai = T.initial_qai(l1, dn, g, buffer_nodata=False, impulse_noise=False)
    assert qai.dtype == np.uint16
    nod = Q.is_nodata(qai)
    sat = Q.get_flag(qai, Q.SATURATION)
    assert np.argwhere(nod).tolist() == [[0, 0], [1, 1]]
    assert np.argwhere(sat).tolist() == [[0, 0], [2, 3]]


def test_initial_qai_cirrus_zero_is_valid_and_thermal_zero_filled():
    g = Grid(WKT, 0.0, 300.0, 30.0, 30.0, 3, 3)
    l1 = _fake_level1("LND08", {"default": g})
    dn = {d: np.full(g.shape, 7000, np.uint16) for d in l1.bands}
    dn["CIRRUS"][:] = 0
    qai = T.initial_qai(l1, dn, g, False, True)
    assert not Q.is_nodata(qai).any()
    dn["TEMP"][:] = 0
    with pytest.raises(Level1Error, match="zero-filled temperature"):
        T.initial_qai(l1, dn, g, False, True)


def test_initial_qai_coarse_bands_by_coordinates():
    """Decimated S2-like grids with non-integer ratios (439/219/73 px over 109800 m):
    a processing pixel takes the coarse pixel containing its centre."""
    ext = 109800.0
    fine = Grid(WKT, 399960.0, 6700000.0, ext / 439, ext / 439, 439, 439)
    mid = Grid(WKT, 399960.0, 6700000.0, ext / 219, ext / 219, 219, 219)
    coarse = Grid(WKT, 399960.0, 6700000.0, ext / 73, ext / 73, 73, 73)
    res = {"ULTRABLUE": coarse, "VAPOR": coarse, "CIRRUS": coarse, "REDEDGE1": mid,
           "REDEDGE2": mid, "REDEDGE3": mid, "NIR": mid, "SWIR1": mid, "SWIR2": mid,
           "default": fine}
    l1 = _fake_level1("SEN2A", res)
    dn = {d: np.full(b.grid.shape, 1500, np.uint16) for d, b in l1.bands.items()}
    dn["VAPOR"][10, 20] = 0            # one 60 m-like pixel
    dn["SWIR1"][100, 50] = 0
    dn["CIRRUS"][30, 30] = 0           # cirrus zero: not nodata
    dn["NIR"][5, 5] = 65535
    qai = T.initial_qai(l1, dn, fine, False, True)
    nod = Q.is_nodata(qai)
    # brute-force reference from pixel-centre coordinates
    x = fine.x0 + (np.arange(439) + 0.5) * fine.dx
    y = fine.y0 - (np.arange(439) + 0.5) * fine.dy
    X, Y = np.meshgrid(x, y)
    in_vap = (np.floor((X - coarse.x0) / coarse.dx) == 20) & \
             (np.floor((coarse.y0 - Y) / coarse.dy) == 10)
    in_sw = (np.floor((X - mid.x0) / mid.dx) == 50) & (np.floor((mid.y0 - Y) / mid.dy) == 100)
    np.testing.assert_array_equal(nod, in_vap | in_sw)
    # with a ratio of 6.014 the 60 m pixel covers 6 or 7 processing pixels per direction
    assert in_vap.sum() in (36, 42, 49)
    sat = Q.get_flag(qai, Q.SATURATION)
    in_sat = (np.floor((X - mid.x0) / mid.dx) == 5) & (np.floor((mid.y0 - Y) / mid.dy) == 5)
    np.testing.assert_array_equal(sat, in_sat)


def test_s2_saturation_from_int16_clipping():
    g = Grid(WKT, 0.0, 20.0, 10.0, 10.0, 2, 2)
    l1 = _fake_level1("SEN2B", {"default": g}, Calibration(quantification=10000.0,
                                                             add_offset=-1000.0))
    dn = {d: np.full(g.shape, 2000, np.uint16) for d in l1.bands}
    dn["RED"][0, 0] = 33767       # TOA 32767: fits
    dn["RED"][0, 1] = 33768       # TOA 32768: clipped → saturated
    qai = T.initial_qai(l1, dn, g, False, False)
    assert Q.get_flag(qai, Q.SATURATION).tolist() == [[False, True], [False, False]]


def test_buffer_plus_shape():
    m = np.zeros((5, 5), bool)
    m[2, 2] = True
    b = T.buffer_plus(m)
    assert b.sum() == 5
    assert np.argwhere(b).tolist() == [[1, 2], [2, 1], [2, 2], [2, 3], [3, 2]]
    e = np.zeros((3, 3), bool)
    e[0, 0] = True                 # at the edge: kept and buffered (FORCE drops it)
    assert np.argwhere(T.buffer_plus(e)).tolist() == [[0, 0], [0, 1], [1, 0]]


def test_buffer_nodata_in_initial_qai():
    g = Grid(WKT, 0.0, 150.0, 30.0, 30.0, 5, 5)
    l1 = _fake_level1("LND08", {"default": g})
    dn = {d: np.full(g.shape, 8000, np.uint16) for d in l1.bands}
    dn["RED"][2, 2] = 0
    assert Q.is_nodata(T.initial_qai(l1, dn, g, False, False)).sum() == 1
    assert Q.is_nodata(T.initial_qai(l1, dn, g, True, False)).sum() == 5


def test_impulse_noise_sequential_hand_computed():
    """3×4 image, RED spike of 100 at (1,1) among 10s, BLUE/GREEN flat.

    Pixel (1,1): 9 pixels, RED mean 20, SD √(7200/8) = 30; BLUE/GREEN SD 0 → 30 − 0 > 15:
    flagged. Pixel (1,2): (1,1) is now off and excluded → RED all 10, SD 0: not flagged.
    (A non-in-place version would flag (1,2) too: its window still holds the spike.)"""
    blue = np.full((3, 4), 10, np.uint8)
    green = blue.copy()
    red = blue.copy()
    red[1, 1] = 100
    off = np.zeros((3, 4), np.bool_)
    n = T.impulse_noise_mask(blue, green, red, off, 15.0)
    assert n == 1 and np.argwhere(off).tolist() == [[1, 1]]
    # the same spike in BLUE is never flagged (running max starts at BLUE, §1.8)
    off2 = np.zeros((3, 4), np.bool_)
    assert T.impulse_noise_mask(red, green, blue, off2, 15.0) == 0
    # a spike whose SD is only 15 (not > 15) is not flagged: values 10…, centre 55
    red2 = blue.copy()
    red2[1, 1] = 55              # mean 15, SD √((8·25 + 1600)/8) = 15
    off3 = np.zeros((3, 4), np.bool_)
    assert T.impulse_noise_mask(blue, green, red2, off3, 15.0) == 0


def test_impulse_noise_only_for_8bit():
    g = Grid(WKT, 0.0, 90.0, 30.0, 30.0, 4, 3)
    for sensor, dtype, expect in (("LND07", np.uint8, 1), ("LND08", np.uint16, 0)):
        l1 = _fake_level1(sensor, {"default": g})
        dn = {d: np.full(g.shape, 10, dtype) for d in l1.bands}
        dn["RED"][1, 1] = 100
        qai = T.initial_qai(l1, dn, g, False, True)
        assert Q.is_nodata(qai).sum() == expect


@needs_data
def test_initial_qai_real_s2(tmp_path):
    zipname = "S2A_MSIL1C_20180629T000241_N0206_R030_T56JMM_20180629T012042.zip"
    with L.open_level1(Path(TESTDATA) / "sentinel2" / zipname, tempdir=tmp_path) as l1:
        dn = L.read_bands(l1, workers=2)
        qai = T.initial_qai(l1, dn, l1.grid, False, True)
        nod = Q.is_nodata(qai)
        assert qai.shape == (439, 439)
        assert 0.15 < nod.mean() < 0.45           # ≈ 26 % nodata edge (README)
        # where BLUE is 0 the pixel is nodata
        assert nod[dn["BLUE"] == 0].all()
        for d, b in l1.bands.items():
            toa = T.toa_reflectance(dn[d], b, None, l1.spec)
            assert toa.shape == dn[d].shape
            assert np.all((toa == T.NODATA) == (dn[d] == 0))


# ------------------------------------------------------------------ in place (memory)
def test_toa_in_place_s2_reuses_the_dn_buffer():
    """uint16 DN → int16 TOA in the same buffer gives the hand-computed values above."""
    spec = L.sensor_spec("SEN2B")
    dn = np.array([[0, 1, 999, 1000, 1007, 33767, 33768, 65535]], np.uint16)
    out = T.toa_in_place(dn, _s2band(), spec)
    assert out.dtype == np.int16 and np.shares_memory(out, dn)
    assert out.tolist() == [[-9999, -999, -1, 0, 6, 32767, 32767, 32767]]


class _FlatSun:
    """Geometry stand-in: cos θs = 0.3 everywhere, asked for per row block."""

    def __init__(self):
        self.blocks = []

    def cos_sun_zenith(self, grid, rows):
        self.blocks.append((rows.start, rows.stop))
        return np.full((rows.stop - rows.start, grid.nx), 0.3, np.float32)


def test_toa_in_place_landsat_blockwise_and_8bit():
    spec = L.sensor_spec("LND08")
    cal = Calibration(refl_mult=2e-5, refl_add=-0.1)
    ny = 2100                                   # more than two blocks of 1024 rows
    grid = Grid(WKT, 0.0, ny * 30.0, 30.0, 30.0, 5, ny)
    red = Band("RED", "4", Path("b4"), grid, cal)
    dn = np.tile(np.array([[0, 4999, 5000, 5001, 65535]], np.uint16), (ny, 1))
    sun = _FlatSun()
    out = T.toa_in_place(dn, red, spec, geometry=sun)
    assert np.shares_memory(out, dn)
    assert sun.blocks == [(0, 1024), (1024, 2048), (2048, 2100)]
    assert (out == np.array([-9999, -9999, -9999, 0, 32767], np.int16)).all()
    # 8-bit DNs cannot hold int16: a new array, the DN left as it was
    spec5 = L.sensor_spec("LND05")
    dn8 = np.tile(np.array([[0, 10, 255]], np.uint8), (3, 1))
    red5 = Band("RED", "3", Path("b3"), Grid(WKT, 0.0, 90.0, 30.0, 30.0, 3, 3),
                Calibration(refl_mult=1e-3, refl_add=0.0))
    out8 = T.toa_in_place(dn8, red5, spec5, cos_sun=0.5)
    assert not np.shares_memory(out8, dn8) and dn8[0, 2] == 255
    # ρ = 1e-3·DN / 0.5: DN 10 → 0.02 → 200; DN 255 → 0.51 → 5100
    assert out8[0].tolist() == [-9999, 200, 5100]
