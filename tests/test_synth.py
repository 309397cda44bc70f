"""Synthetic Level-1 products (l2ps.synth): formats, radiometry and geometry of the truth."""
from __future__ import annotations

import json
import math
import re
import tarfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import rasterio

from l2ps.synth import CloudSpec, make_landsat, make_sentinel2, sun_position

LANDSAT_KEYS = [
    "SPACECRAFT_ID", "SENSOR_ID", "WRS_PATH", "WRS_ROW", "DATE_ACQUIRED", "SCENE_CENTER_TIME",
    "COLLECTION_CATEGORY", "REFLECTIVE_SAMPLES", "REFLECTIVE_LINES", "GRID_CELL_SIZE_REFLECTIVE",
    "CORNER_UL_PROJECTION_X_PRODUCT", "CORNER_UL_PROJECTION_Y_PRODUCT", "UTM_ZONE",
    "SUN_AZIMUTH", "SUN_ELEVATION", "CLOUD_COVER",
]
BAND_KEYS = ["FILE_NAME_BAND_{b}", "RADIANCE_MULT_BAND_{b}", "RADIANCE_ADD_BAND_{b}",
             "RADIANCE_MAXIMUM_BAND_{b}", "RADIANCE_MINIMUM_BAND_{b}", "QUANTIZE_CAL_MAX_BAND_{b}",
             "QUANTIZE_CAL_MIN_BAND_{b}"]


def parse_mtl(text: str) -> dict[str, str]:
    """Tiny ODL parser: KEY = VALUE lines (quotes removed), plus the root group name."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"\s*([A-Z0-9_]+)\s*=\s*(.*)$", line)
        if m:
            key, val = m.group(1), m.group(2).strip().strip('"')
            if key == "GROUP" and "ROOT" not in out:
                out["ROOT"] = val
            out.setdefault(key, val)
    return out


def read(path, band=1):
    with rasterio.open(path) as ds:
        return ds.read(band)


def truth(prod, name):
    return read(Path(prod.truth_dir) / f"{name}.tif")


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def l8(tmp_path_factory):
    return make_landsat(tmp_path_factory.mktemp("l8"), sensor="LND08", size=(240, 220),
                        form="folder", seed=3)


@pytest.fixture(scope="module")
def s2(tmp_path_factory):
    return make_sentinel2(tmp_path_factory.mktemp("s2"), sensor="SEN2A", size=(300, 300),
                          form="safe", baseline="04.00", seed=4)


# ---------------------------------------------------------------------------------- Landsat
def test_landsat_c2_folder_files_and_mtl(l8):
    folder = Path(l8.path)
    pid = folder.name
    assert re.fullmatch(r"LC08_L1TP_193024_20210715_\d{8}_02_T1", pid)
    names = {p.name for p in folder.iterdir()}
    for b in range(1, 12):
        assert f"{pid}_B{b}.TIF" in names
    for extra in ("QA_PIXEL.TIF", "QA_RADSAT.TIF", "ANG.txt", "MTL.txt", "MTL.xml", "MTL.json"):
        assert f"{pid}_{extra}" in names
    mtl = parse_mtl((folder / f"{pid}_MTL.txt").read_text())
    assert mtl["ROOT"] == "LANDSAT_METADATA_FILE"
    for k in LANDSAT_KEYS:
        assert k in mtl, k
    for b in range(1, 12):
        for k in BAND_KEYS:
            assert k.format(b=b) in mtl, k.format(b=b)
    for b in (1, 2, 3, 4, 5, 6, 7, 9):
        assert f"REFLECTANCE_MULT_BAND_{b}" in mtl and f"REFLECTANCE_ADD_BAND_{b}" in mtl
    assert "K1_CONSTANT_BAND_10" in mtl and "K2_CONSTANT_BAND_10" in mtl
    assert mtl["SPACECRAFT_ID"] == "LANDSAT_8" and mtl["PROCESSING_LEVEL"] == "L1TP"
    # XML and JSON carry the same values
    import xml.etree.ElementTree as ET
    root = ET.parse(folder / f"{pid}_MTL.xml").getroot()
    assert root.tag == "LANDSAT_METADATA_FILE"
    assert root.find("IMAGE_ATTRIBUTES/SUN_ELEVATION").text == mtl["SUN_ELEVATION"]
    js = json.loads((folder / f"{pid}_MTL.json").read_text())
    assert js["LANDSAT_METADATA_FILE"]["PROJECTION_ATTRIBUTES"]["UTM_ZONE"] == mtl["UTM_ZONE"]
    # rasters: uint16, north-up UTM, MTL corner = centre of the UL pixel
    with rasterio.open(folder / f"{pid}_B4.TIF") as ds:
        assert ds.dtypes[0] == "uint16" and ds.nodata == 0
        assert ds.crs.to_epsg() == 32600 + int(mtl["UTM_ZONE"])
        assert (ds.width, ds.height) == (int(mtl["REFLECTIVE_SAMPLES"]), int(mtl["REFLECTIVE_LINES"]))
        assert ds.transform.c + 15 == pytest.approx(float(mtl["CORNER_UL_PROJECTION_X_PRODUCT"]))
        assert ds.transform.f - 15 == pytest.approx(float(mtl["CORNER_UL_PROJECTION_Y_PRODUCT"]))
        assert ds.transform.b == 0 and ds.transform.e == -30
    with rasterio.open(folder / f"{pid}_B8.TIF") as ds:   # panchromatic at 15 m
        assert ds.res == (15.0, 15.0) and ds.width == 2 * 240 - 1


def test_landsat_rotated_footprint(l8):
    folder = Path(l8.path)
    dn = read(folder / f"{folder.name}_B4.TIF")
    valid = dn > 0
    assert not valid[0, 0] and not valid[-1, -1] and not valid[0, -1] and not valid[-1, 0]
    assert valid[110, 120]
    rows = np.nonzero(valid.any(axis=1))[0]
    top = np.nonzero(valid[rows[0]])[0]
    # the top of the footprint is a corner, not an edge of the grid: its first row is short
    assert len(top) < 0.3 * dn.shape[1]
    heading = l8.truth["heading_grid_deg"]
    assert 190 < heading < 205     # descending pass, image rotated by 10–25° (latitude 51.5°)
    # truth nodata mask agrees with DN 0
    assert np.array_equal(truth(l8, "nodata") == 1, ~valid)


def test_landsat_dn_to_toa_recovers_truth(l8):
    folder = Path(l8.path)
    mtl = parse_mtl((folder / f"{folder.name}_MTL.txt").read_text())
    sza = truth(l8, "sun_zenith").astype(np.float64)
    mus = np.cos(np.radians(sza))
    for b, dom in ((1, "ULTRABLUE"), (2, "BLUE"), (4, "RED"), (5, "NIR"), (7, "SWIR2"),
                   (9, "CIRRUS")):
        dn = read(folder / f"{folder.name}_B{b}.TIF").astype(np.float64)
        mult = float(mtl[f"REFLECTANCE_MULT_BAND_{b}"])
        add = float(mtl[f"REFLECTANCE_ADD_BAND_{b}"])
        ok = (dn > 0) & (dn < 65535)
        rho = (mult * dn + add) / mus
        want = truth(l8, f"toa_{dom}").astype(np.float64) / 10000
        err = np.abs(rho - want)[ok]
        assert ok.sum() > 1000
        # DN rounding (mult/2/cos) plus the int16 rounding of the truth (0.5e-4)
        assert err.max() <= mult / 2 / mus[ok].min() + 0.5e-4 + 1e-7, (b, err.max())
    # thermal: K2 / ln(K1/L + 1) recovers the brightness temperature within a DN step
    dn = read(folder / f"{folder.name}_B10.TIF").astype(np.float64)
    ml, al = float(mtl["RADIANCE_MULT_BAND_10"]), float(mtl["RADIANCE_ADD_BAND_10"])
    k1, k2 = float(mtl["K1_CONSTANT_BAND_10"]), float(mtl["K2_CONSTANT_BAND_10"])
    ok = dn > 0
    bt = k2 / np.log(k1 / (ml * dn + al) + 1)
    want = truth(l8, "bt_TEMP") / 100.0
    assert np.abs(bt - want)[ok].max() < 0.05
    assert 280 < np.median(want[ok]) < 310


def test_landsat_truth_layers_and_json(l8):
    t = l8.truth
    assert json.loads((Path(l8.truth_dir) / "truth.json").read_text())["seed"] == 3
    assert t["sensor"] == "LND08" and t["wrs2"] == {"path": 193, "row": 24}
    for name in ("cloud", "shadow", "snow", "water", "dem", "aod550", "water_vapor", "sun_zenith",
                 "surface_RED", "toa_RED", "cover", "saturated"):
        assert (Path(l8.truth_dir) / f"{name}.tif").exists(), name
    sr = truth(l8, "surface_NIR")
    assert sr.dtype == np.int16
    cloud = truth(l8, "cloud")
    assert set(np.unique(cloud)) <= {0, 1, 2, 3} and (cloud == 2).any()
    dem = truth(l8, "dem")
    assert dem.max() - dem.min() > 50
    # sun at the scene centre: July, 51.5° N, ~10 UTC → zenith ~33°, azimuth ~150°
    assert 25 < t["sun_centre"]["zenith"] < 40 and 135 < t["sun_centre"]["azimuth"] < 165
    assert t["atmosphere"]


@pytest.mark.parametrize("sensor,form,collection", [("LND05", "tar", 2), ("LND07", "tar.gz", 1),
                                                     ("LND09", "tar", 2)])
def test_landsat_archives(tmp_path, sensor, form, collection):
    p = make_landsat(tmp_path, sensor=sensor, size=(150, 150), form=form, collection=collection,
                     seed=1, date="2012-06-01" if sensor != "LND09" else "2022-06-01",
                     clouds=False)
    path = Path(p.path)
    assert path.is_file() and path.name.endswith("." + form)
    mode = "r:gz" if form == "tar.gz" else "r"
    with tarfile.open(path, mode) as tf:
        names = tf.getnames()
        assert all("/" not in n for n in names)      # files at the top level, as USGS
        mtl_name = next(n for n in names if n.endswith("_MTL.txt"))
        mtl = parse_mtl(tf.extractfile(mtl_name).read().decode())
    pid = mtl_name[:-8]
    if collection == 1:
        assert mtl["ROOT"] == "L1_METADATA_FILE" and f"{pid}_BQA.TIF" in names
        assert mtl["DATA_TYPE"] == "L1TP" and "FILE_NAME_BAND_QUALITY" in mtl
    else:
        assert mtl["ROOT"] == "LANDSAT_METADATA_FILE" and f"{pid}_QA_PIXEL.TIF" in names
    if sensor == "LND07":
        assert f"{pid}_B6_VCID_1.TIF" in names and f"{pid}_B6_VCID_2.TIF" in names
        assert "FILE_NAME_BAND_6_VCID_1" in mtl and "K1_CONSTANT_BAND_6_VCID_1" in mtl
    vsi = ("/vsitar/" if form == "tar" else "/vsitar/") + str(path)
    with rasterio.open(f"{vsi}/{pid}_B1.TIF") as ds:
        assert ds.dtypes[0] == ("uint16" if sensor == "LND09" else "uint8")
        dn = ds.read(1)
    assert dn.max() > 0 and (dn == 0).any()
    if sensor == "LND07":      # SLC-off (2012): gaps inside the footprint, widest at the edges
        nodata = read(Path(p.truth_dir) / "nodata.tif")
        assert p.truth["footprint"]["slc_off"]
        rows, cols = np.nonzero(nodata == 0)
        inner = nodata[rows.min() + 20:rows.max() - 20, cols.min() + 30:cols.max() - 30]
        assert 0.03 < inner.mean() < 0.4


def test_deterministic_and_block_independent(tmp_path):
    kw = dict(sensor="LND08", size=(120, 100), seed=7)
    a = make_landsat(tmp_path / "a", **kw)
    b = make_landsat(tmp_path / "b", **kw)
    c = make_landsat(tmp_path / "c", block_rows=32, **kw)
    d = make_landsat(tmp_path / "d", sensor="LND08", size=(120, 100), seed=8)
    name = Path(a.path).name + "_B5.TIF"
    bytes_a = (Path(a.path) / name).read_bytes()
    assert bytes_a == (Path(b.path) / name).read_bytes()
    assert np.array_equal(read(Path(a.path) / name), read(Path(c.path) / name))
    assert not np.array_equal(read(Path(a.path) / name), read(Path(d.path) / name))


def _centroid(mask):
    r, c = np.nonzero(mask)
    return r.mean(), c.mean()


def test_shadow_displaced_along_sun_azimuth(tmp_path):
    h = 3000.0
    p = make_landsat(tmp_path, sensor="LND08", size=(300, 300), relief=0.0, seed=2,
                     clouds=[CloudSpec(kind="opaque", col=0.45, row=0.6, radius=1500,
                                       height=h, elongation=0.8)])
    cloud = truth(p, "cloud") == 2
    shadow = truth(p, "shadow") == 1
    assert cloud.sum() > 200 and shadow.sum() > 200
    sza = p.truth["sun_centre"]["zenith"]
    saz = p.truth["sun_centre"]["azimuth"] + p.truth["grid_north_deg"]    # grid azimuth
    z = truth(p, "dem")[shadow].mean()
    d = (h - z) * math.tan(math.radians(sza)) / 30.0                      # pixels
    want = (d * math.cos(math.radians(saz)), -d * math.sin(math.radians(saz)))  # (rows, cols)
    (rc, cc), (rs, cs) = _centroid(cloud), _centroid(shadow)
    assert abs((rs - rc) - want[0]) < 1.5 and abs((cs - cc) - want[1]) < 1.5, \
        ((rs - rc, cs - cc), want)


def test_sun_position_against_usgs_mtl():
    # LC08_L1TP_193024_20200509 (shared testdata toa-crops): centre ~51.68 N 12.83 E,
    # 10:02:20.67 UTC; USGS: SUN_AZIMUTH 154.204, SUN_ELEVATION 53.651
    zen, az = sun_position(51.6787, 12.8273,
                           datetime(2020, 5, 9, 10, 2, 20, 671097, tzinfo=timezone.utc))
    assert float(90 - zen) == pytest.approx(53.651, abs=0.1)
    assert float(az) == pytest.approx(154.204, abs=0.2)


# ---------------------------------------------------------------------------------- Sentinel-2
def test_s2_safe_structure_and_gdal_driver(s2):
    safe = Path(s2.path)
    assert safe.name.endswith(".SAFE") and "_N0400_" in safe.name
    mtd = (safe / "MTD_MSIL1C.xml").read_text()
    for key in ("SPACECRAFT_NAME>Sentinel-2A", "PROCESSING_LEVEL>Level-1C", "PRODUCT_START_TIME",
                "PROCESSING_BASELINE>04.00", "QUANTIFICATION_VALUE", "Cloud_Coverage_Assessment"):
        assert key in mtd, key
    offsets = re.findall(r'<RADIO_ADD_OFFSET band_id="(\d+)">(-?\d+)<', mtd)
    assert len(offsets) == 13 and all(v == "-1000" for _i, v in offsets)
    granules = list((safe / "GRANULE").iterdir())
    assert len(granules) == 1 and granules[0].name.startswith("L1C_T32UPC_A")
    img = sorted(p.name for p in (granules[0] / "IMG_DATA").iterdir())
    assert len(img) == 14 and all(re.fullmatch(r"T32UPC_\d{8}T\d{6}_(B\d[\dA]|TCI)\.jp2", n)
                                  for n in img)
    with rasterio.open(safe / "MTD_MSIL1C.xml") as ds:
        subs = ds.subdatasets
    assert any(s.endswith(":10m:EPSG_32632") for s in subs)
    for res, count, size in (("10m", 4, 300), ("20m", 6, 150), ("60m", 3, 50)):
        with rasterio.open(f"SENTINEL2_L1C:{safe}/MTD_MSIL1C.xml:{res}:EPSG_32632") as ds:
            assert ds.count == count and ds.width == size
            assert ds.bounds.left == 600000 and ds.bounds.top == 5800020
            assert ds.read(1).max() > 1000
    with rasterio.open(next((granules[0] / "IMG_DATA").glob("*_B8A.jp2"))) as ds:
        assert ds.driver == "JP2OpenJPEG" and ds.dtypes[0] == "uint16" and ds.res == (20, 20)


def test_s2_tile_metadata_angles(s2):
    safe = Path(s2.path)
    import xml.etree.ElementTree as ET
    tl = ET.parse(next((safe / "GRANULE").iterdir()) / "MTD_TL.xml").getroot()
    assert tl.find(".//HORIZONTAL_CS_CODE").text == "EPSG:32632"
    sizes = {e.get("resolution"): int(e.find("NROWS").text) for e in tl.iter("Size")}
    assert sizes == {"10": 300, "20": 150, "60": 50}
    assert tl.find(".//Geoposition/ULX").text == "600000"
    sun = tl.find(".//Sun_Angles_Grid/Zenith")
    assert sun.find("COL_STEP").text == "5000"
    rows = [[float(v) for v in e.text.split()] for e in sun.iter("VALUES")]
    assert len(rows) == 2 and len(rows[0]) == 2       # ceil(3 km / 5 km) + 1 nodes
    # the node at the tile's UL corner and the truth of the UL pixel agree
    assert rows[0][0] == pytest.approx(float(truth(s2, "sun_zenith")[0, 0]), abs=0.02)
    assert 20 < rows[0][0] < 45
    grids = tl.findall(".//Viewing_Incidence_Angles_Grids")
    bands = {g.get("bandId") for g in grids}
    assert bands == {str(i) for i in range(13)}
    zen = [float(v) for g in grids for e in g.find("Zenith").iter("VALUES")
           for v in e.text.split() if v != "NaN"]
    assert 0 < min(zen) and max(zen) < 13


def test_s2_dn_recovers_toa_truth(s2):
    safe = Path(s2.path)
    img = next((safe / "GRANULE").iterdir()) / "IMG_DATA"
    for b in ("B02", "B8A", "B10", "B12"):
        dn = read(next(img.glob(f"*_{b}.jp2"))).astype(np.float64)
        toa = truth(s2, f"toa_{b}").astype(np.float64) / 10000
        assert dn.shape == toa.shape
        ok = (dn > 0) & (dn < 65535)
        assert ok.all()
        assert np.abs((dn - 1000) / 10000 - toa)[ok].max() <= 1e-4 + 1e-9
        assert dn.min() >= 1000     # offset present (no negative TOA in this scene)


def test_s2_zip_and_old_baseline(tmp_path):
    p = make_sentinel2(tmp_path, sensor="SEN2B", size=(120, 120), form="zip", baseline="02.09",
                       seed=1, clouds=False)
    path = Path(p.path)
    assert path.suffix == ".zip" and "_N0209_" in path.name and path.name.startswith("S2B_")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        mtd = zf.read(next(n for n in names if n.endswith("MTD_MSIL1C.xml"))).decode()
    assert names[0].endswith(".SAFE/")
    assert "RADIO_ADD_OFFSET" not in mtd and "Sentinel-2B" in mtd
    with rasterio.open(f"/vsizip/{path}/{path.stem}.SAFE/MTD_MSIL1C.xml") as ds:
        sub = [s for s in ds.subdatasets if ":10m:" in s][0]
    with rasterio.open(sub) as ds:
        dn = ds.read(3).astype(np.float64)        # B02
    toa = truth(p, "toa_B02") / 10000
    assert np.abs(dn / 10000 - toa).max() <= 1e-4 + 1e-9


def test_s2_band_parallax_proportional_to_height(tmp_path):
    """A cloud appears displaced between B07 and B8A along the track by
    (H − z)·(tan β_B07 − tan β_B8A) — non-zero and proportional to its height."""
    shifts = []
    for height in (4000.0, 10000.0):
        p = make_sentinel2(tmp_path / str(int(height)), sensor="SEN2A", size=(600, 600),
                           relief=0.0, seed=5, bright_targets=0,
                           clouds=[CloudSpec(kind="opaque", col=0.55, row=0.5, radius=700,
                                             height=height, elongation=1.0)])
        beta = p.truth["band_along_track_deg"]
        h = math.radians(p.truth["heading_grid_deg"])
        ua = (math.sin(h), math.cos(h))                  # flight direction (grid east, north)
        r07, c07 = _weighted_centroid(truth(p, "toa_B07") / 1e4 - 0.6)
        r8a, c8a = _weighted_centroid(truth(p, "toa_B8A") / 1e4 - 0.6)
        d_east, d_north = (c07 - c8a) * 20.0, -(r07 - r8a) * 20.0
        shift = d_east * ua[0] + d_north * ua[1]         # metres along the flight direction
        across = d_east * ua[1] - d_north * ua[0]
        z = float(truth(p, "dem").mean())
        want = (height - z) * (math.tan(math.radians(beta["B07"]))
                               - math.tan(math.radians(beta["B8A"])))
        assert abs(shift - want) < 5.0, (height, shift, want)
        assert abs(across) < 5.0
        shifts.append((shift, want))
    assert abs(shifts[0][0]) > 10 and abs(shifts[1][0]) > 40
    assert shifts[1][0] / shifts[0][0] == pytest.approx(shifts[1][1] / shifts[0][1], rel=0.2)


def _weighted_centroid(excess):
    """Sub-pixel centroid (row, col) of the positive part of ``excess`` (cloud above land)."""
    w = np.maximum(excess, 0)
    r, c = np.indices(w.shape)
    return (r * w).sum() / w.sum(), (c * w).sum() / w.sum()


# ---------------------------------------------------------------------------------- CLI, readers
def test_cli(tmp_path, capsys):
    import argparse
    from l2ps.synth import cli
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli.add_parser(sub)
    args = parser.parse_args(["synth", "sentinel2", str(tmp_path), "--size", "60", "--form",
                              "zip", "--seed", "2", "--baseline", "05.10", "--no-clouds"])
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(".zip") and "_N0510_" in out[0] and Path(out[0]).is_file()
    args = parser.parse_args(["synth", "sentinel2", str(tmp_path), "--size", "61"])
    assert args.func(args) == 2


def test_level1_reader_reads_synthetic_products(l8, s2, tmp_path):
    level1 = pytest.importorskip("l2ps.level1")
    if not hasattr(level1, "open_level1"):
        pytest.skip("l2ps.level1.open_level1 not available")
    p5 = make_landsat(tmp_path, sensor="LND05", size=(90, 90), form="tar", seed=1, clouds=False,
                      date="2005-05-16")
    for prod, sensor in ((l8, "LND08"), (s2, "SEN2A"), (p5, "LND05")):
        with level1.open_level1(Path(prod.path), tempdir=tmp_path) as l1:
            assert l1.sensor == sensor
            assert l1.grid.nx == prod.truth["grid"]["nx"] and l1.grid.ny == prod.truth["grid"]["ny"]
            assert l1.grid.x0 == pytest.approx(prod.truth["grid"]["x0"])
            assert l1.grid.y0 == pytest.approx(prod.truth["grid"]["y0"])
            assert set(l1.bands) == set(l1.spec.domains)
            if sensor == "SEN2A":
                assert l1.bands["BLUE"].calibration.add_offset == -1000
                assert l1.processing_baseline == "04.00"
            else:
                acq = datetime.fromisoformat(prod.truth["acquired"])
                assert abs((l1.acquired.replace(tzinfo=timezone.utc) - acq).total_seconds()) < 1.5


def test_surface_to_toa_uses_6s_tables_when_present(monkeypatch):
    """With tables installed, TOA comes from them (one geometry per column chunk)."""
    from l2ps.synth import scene

    class FakeGrid:
        def toa(self, rho, env, aod, wv, elev):
            return 0.05 + 0.8 * np.asarray(rho, np.float32) + 0 * aod

    class FakeTables:
        axes = {k: np.array([0.0, 90.0], np.float32) for k in ("sza", "vza", "raa")}
        axes.update(aod=np.array([0.0, 2.0], np.float32), wv=np.array([0.0, 5.0], np.float32),
                    elev=np.array([0.0, 4.0], np.float32))
        calls = []

        def bands(self, sensor):
            return ("BLUE", "RED")

        def terms_grid(self, sensor, domain, sza, vza, raa):
            self.calls.append((sensor, domain, sza, vza, raa))
            return FakeGrid()

    fake = FakeTables()
    monkeypatch.setitem(scene._SIXS_STATE, "tables", fake)
    rho = np.full((4, 300), 0.2, np.float32)
    one = np.ones_like(rho)
    toa = scene.surface_to_toa("LND08", "RED", 0.65, rho, rho, 30 * one, 5 * one, 120 * one,
                               0.1 * one, 1.0 * one, 0.3 * one)
    assert np.allclose(toa, 0.21) and len(fake.calls) == 3       # 300 columns / 128
    assert fake.calls[0][:2] == ("LND08", "RED") and fake.calls[0][2] == pytest.approx(30)
    assert scene.atmosphere_name().startswith("6S")


# ---------------------------------------------------------------------------------- fast paths
def _block_scene(tmp_path, fine_texture=0.0):
    """A small Sentinel-2 scene with three clouds (geometry of a real product) and a block."""
    from l2ps.synth.coreg import content_scene
    from l2ps.synth.scene import Scene, SceneOptions
    from l2ps.synth.sentinel2 import BAND_BETA
    p = make_sentinel2(tmp_path, sensor="SEN2A", size=(180, 180), seed=9, clouds=False)
    geo = content_scene(p.truth).geo
    clouds = [CloudSpec(kind="opaque", col=0.5, row=0.5, radius=300, height=3000),
              CloudSpec(kind="cirrus", col=0.3, row=0.6, radius=450, height=9000),
              CloudSpec(kind="thin", col=0.7, row=0.3, radius=250, height=2000)]
    scene = Scene("SEN2A", geo, SceneOptions(seed=9, clouds=clouds, bright_targets=2,
                                             fine_texture=fine_texture), band_beta=BAND_BETA)
    return scene, scene.block(0, 180)


def test_cloud_kernel_equals_reference_expressions(tmp_path):
    """The numba cloud coverage equals _cloud_alpha(_cloud_r(...)) (scipy bilinear edges)."""
    from l2ps.synth.scene import _cloud_alpha
    scene, blk = _block_scene(tmp_path)
    vx, vy = scene.geo.to_sensor(blk["xs"][None, :], blk["ys"][:, None], 0.4)
    covers = scene.cloud_alphas(blk["xs"], blk["ys"], blk["z"], vx, vy)
    assert {c.kind for c, _w, _a in covers} == {"opaque", "cirrus", "thin"}
    for c, (rs, cs), a in covers:
        dh = np.maximum(c.height - blk["z"], 0.0)
        gx = blk["xs"][None, :] + dh * vx
        gy = blk["ys"][:, None] + dh * vy
        ref = _cloud_alpha(c.kind, scene._cloud_r(c, gx, gy)).astype(np.float32)
        assert (ref > 0).sum() > 50
        want = np.zeros_like(ref)
        want[rs, cs] = a
        assert np.array_equal(ref, want), c.kind          # bit for bit, zero outside the box


@pytest.mark.parametrize("fine", [0.0, 1.0])
def test_fast_toa_equals_reference(tmp_path, fine):
    """The numba surface/6S kernel gives the same bits as the NumPy model (6S tables or the
    provisional stand-in, whichever is installed)."""
    from l2ps.synth.scene import Scene
    scene, blk = _block_scene(tmp_path, fine_texture=fine)
    alphas, _mask = scene.cloud_cover(blk, 0.75)
    assert Scene.FAST_TOA
    for bi in range(len(scene.doms)):
        rho, toa = scene.toa_band(blk, bi, alphas)
        ref_rho, ref_toa = scene.toa_band_reference(blk, bi, alphas)
        assert np.array_equal(rho, ref_rho) and np.array_equal(toa, ref_toa), scene.doms[bi]
        assert rho.flags.f_contiguous == ref_rho.flags.f_contiguous    # same block means
    assert Scene.FAST_TOA


def test_cli_fine_texture_truth_10m_and_shift(tmp_path, capsys):
    import argparse
    from l2ps.synth import cli
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli.add_parser(sub)
    args = parser.parse_args(["synth", "sentinel2", str(tmp_path), "--size", "60",
                              "--no-clouds", "--fine-texture", "1", "--truth-10m",
                              "--shift-m", "12,-7"])
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    truth_dir = Path(out[1].split(": ", 1)[1])
    doc = json.loads((truth_dir / "truth.json").read_text())
    assert doc["content_shift_m"] == [12.0, -7.0] and doc["fine_texture"] == 1.0
    assert (truth_dir / "surface_10m_B8A.tif").exists()
    for bad in (["--fine-texture", "1"], ["--shift-m", "3"]):
        try:
            args = parser.parse_args(["synth", "landsat", str(tmp_path), "--size", "60", *bad])
        except SystemExit:          # argparse rejects a malformed shift
            continue
        assert args.func(args) == 2
