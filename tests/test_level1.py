"""Level-1 readers: containers, Landsat MTL (C1/C2), Sentinel-2 SAFE/zip/granule, errors."""
from __future__ import annotations

import io
import os
import shutil
import tarfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

import l2ps.level1 as L
from l2ps.errors import Level1Error
from l2ps.level1.archive import excluded
from l2ps.level1.landsat import MTL, landsat_tier
from l2ps.level1.sentinel2 import collapse_view, mgrs_id, nodes_to_cells

TESTDATA = os.environ.get("L2PS_TESTDATA")
needs_data = pytest.mark.skipif(not TESTDATA, reason="L2PS_TESTDATA not set "
                                "(real Level-1 products in ../shared/testdata)")

C2 = "landsat/LC08_L1GT_089074_20220506_20220512_02_T2"
C1 = "landsat/LC08_L1TP_090084_20160121_20170405_01_T1.tar.gz"
S2 = "sentinel2/S2A_MSIL1C_20180629T000241_N0206_R030_T56JMM_20180629T012042.zip"


def td(rel: str) -> Path:
    return Path(TESTDATA) / rel


def l2ps_dirs(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith("l2ps-")]


def copy_c2(tmp_path: Path) -> Path:
    dst = tmp_path / Path(C2).name
    shutil.copytree(td(C2), dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


# ------------------------------------------------------------------ Landsat C2 folder
@needs_data
def test_c2_l1gt_folder_metadata():
    l1 = L.read_metadata(td(C2))
    assert l1.sensor == "LND08" and l1.mission == "landsat"
    assert l1.tier == 2 and l1.collection == 2
    assert l1.refsys_type == "WRS-2" and l1.refsys_id == "089074"
    assert l1.acquired == datetime(2022, 5, 6, 23, 39, 59, 285133, tzinfo=timezone.utc)
    assert l1.date_string == "20220506"
    assert list(l1.bands) == ["ULTRABLUE", "BLUE", "GREEN", "RED", "NIR", "CIRRUS", "SWIR1",
                              "SWIR2", "TEMP"]
    assert l1.bands["CIRRUS"].l1_name == "9" and l1.bands["TEMP"].l1_name == "10"
    for b in l1.bands.values():
        assert (b.grid.nx, b.grid.ny) == (60, 60)
        assert (b.grid.dx, b.grid.dy) == (3860.5, 3910.5)
    g = l1.grid
    assert (g.x0, g.y0, g.dx, g.dy, g.nx, g.ny) == (594285.0, -2121285.0, 3860.5, 3910.5, 60, 60)
    assert g.crs.to_epsg() == 32656
    red = l1.bands["RED"].calibration
    assert red.refl_mult == pytest.approx(2e-5) and red.refl_add == pytest.approx(-0.1)
    tc = l1.bands["TEMP"].calibration
    assert (tc.k1, tc.k2) == (774.8853, 1321.0789)
    assert tc.rad_mult == pytest.approx(3.3420e-4, rel=1e-3)
    assert l1.cloud_cover == pytest.approx(86.35)


@needs_data
def test_c2_tier_filter():
    l1 = L.read_metadata(td(C2))
    with pytest.raises(Level1Error, match=r"Unacceptable tier: product is tier 2 .*TIER = 1"):
        L.check_tier(l1, 1)
    L.check_tier(l1, 2)
    L.check_tier(l1, 3)


@needs_data
def test_read_dn_and_window():
    l1 = L.read_metadata(td(C2))
    b4 = L.read_dn(l1, "RED", num_threads=2)
    assert b4.dtype == np.uint16 and b4.shape == (60, 60)
    sub = l1.grid.window(10, 20, 5, 7)
    part = L.read_dn(l1, "RED", window=sub)
    np.testing.assert_array_equal(part, b4[10:15, 20:27])
    allb = L.read_bands(l1, workers=3)
    assert list(allb) == list(l1.bands)
    np.testing.assert_array_equal(allb["RED"], b4)
    with pytest.raises(Level1Error, match="band REDEDGE1 missing"):
        L.read_dn(l1, "REDEDGE1")


# ------------------------------------------------------------------ Landsat C1 tar.gz
@needs_data
def test_c1_targz_extracted_and_removed(tmp_path):
    with L.open_level1(td(C1), tempdir=tmp_path) as l1:
        assert l1.sensor == "LND08" and l1.tier == 1 and l1.collection == 1
        assert l1.refsys_id == "090084"
        assert l1.source == td(C1)
        assert tmp_path in l1.root.parents
        names = {p.name for p in l1.root.iterdir()}
        # FORCE's tar exclusions (spec 01 §1.1)
        assert not any(n.endswith(("_BQA.TIF", "_B8.TIF", "_B11.TIF")) for n in names)
        assert any(n.endswith("_B10.TIF") for n in names)
        assert L.read_dn(l1, "NIR").shape == (60, 60)
        assert (l1.grid.dx, l1.grid.dy) == pytest.approx((3955.5, 3975.5))
        L.check_tier(l1, 1)
    assert l2ps_dirs(tmp_path) == []


@needs_data
def test_temp_folder_removed_on_exception(tmp_path):
    with pytest.raises(RuntimeError):
        with L.open_level1(td(C1), tempdir=tmp_path):
            assert len(l2ps_dirs(tmp_path)) == 1
            raise RuntimeError("boom")
    assert l2ps_dirs(tmp_path) == []


def test_tar_exclusion_patterns():
    assert excluded("LC08_X_BQA.TIF") and excluded("gap_mask/a.TIF")
    assert excluded("LE07_X_B6_VCID_2.TIF") and excluded("LC08_X_B8.TIF")
    assert not excluded("LC08_X_B1.TIF") and not excluded("LE07_X_B6_VCID_1.TIF")
    assert not excluded("LC09_X_B11.TIF")          # L9 B11 not excluded (§1.1)


# ------------------------------------------------------------------ Sentinel-2 zip
@needs_data
def test_s2_zip_metadata(tmp_path):
    with L.open_level1(td(S2), tempdir=tmp_path) as l1:
        assert l1.sensor == "SEN2A" and l1.mission == "sentinel2" and l1.tier == 1
        assert l1.refsys_type == "MGRS" and l1.refsys_id == "T56JMM"
        assert l1.processing_baseline == "02.06"
        assert l1.root.name == "L1C_T56JMM_A015757_20180629T000241"   # not the _null folder
        assert l1.acquired == datetime(2018, 6, 29, 0, 2, 41, 24000, tzinfo=timezone.utc)
        assert l1.product_id == "S2A_MSIL1C_20180629T000241_N0206_R030_T56JMM_20180629T012042"
        assert len(l1.bands) == 13
        sizes = {b.l1_name: (b.grid.nx, b.grid.ny) for b in l1.bands.values()}
        for n in ("B02", "B03", "B04", "B08"):
            assert sizes[n] == (439, 439)
        for n in ("B05", "B06", "B07", "B8A", "B11", "B12"):
            assert sizes[n] == (219, 219)
        for n in ("B01", "B09", "B10"):
            assert sizes[n] == (73, 73)
        assert l1.bands["NIR"].l1_name == "B8A" and l1.bands["BROADNIR"].l1_name == "B08"
        assert l1.grid == l1.bands["BLUE"].grid
        assert l1.grid.dx == pytest.approx(250.1139, abs=1e-3)
        assert (l1.grid.x0, l1.grid.y0) == (399960.0, 6700000.0)
        for b in l1.bands.values():
            assert b.calibration.quantification == 10000 and b.calibration.add_offset == 0
        assert l1.view.zenith.shape == (22, 22) and l1.view.azimuth.shape == (22, 22)
        assert l1.view.sun_zenith.shape == (23, 23)
        vz = l1.view.zenith
        assert np.isnan(vz).any() and np.isfinite(vz).sum() > 300
        assert 0 < np.nanmin(vz) and np.nanmax(vz) < 13
        dn = L.read_dn(l1, "CIRRUS")
        assert dn.shape == (73, 73) and dn.dtype == np.uint16
        # valid view cells: columns 0..18 → snapped to 21 cells (105 km) from the left edge
        sub = L.valid_subset(l1)
        assert (sub.x0, sub.y0, sub.ny) == (l1.grid.x0, l1.grid.y0, 439)
        assert sub.nx == 420 and sub.nx * sub.dx == pytest.approx(105000, abs=sub.dx)
        part = L.read_dn(l1, "CIRRUS", window=sub)
        assert part.shape == (73, 70)
        np.testing.assert_array_equal(part, dn[:, :70])
    assert l2ps_dirs(tmp_path) == []


@needs_data
def test_s2_safe_and_granule_folders(tmp_path):
    with zipfile.ZipFile(td(S2)) as zf:
        zf.extractall(tmp_path)
    safe = tmp_path / (Path(S2).stem + ".SAFE")
    a = L.read_metadata(safe)
    gran = safe / "GRANULE" / "L1C_T56JMM_A015757_20180629T000241"
    b = L.read_metadata(gran)
    assert a.root == b.root == gran
    assert a.grid == b.grid and a.acquired == b.acquired
    np.testing.assert_array_equal(a.view.zenith, b.view.zenith)
    assert L.is_level1(safe) and L.is_level1(gran)
    assert not L.is_level1(safe / "GRANULE" / "L1C_T56JMM_A015757_null")
    found = L.find_level1([tmp_path])
    assert found == [safe.absolute()]          # granules of a .SAFE are not listed again
    # missing band → error naming the band
    next((gran / "IMG_DATA").glob("*_B8A.jp2")).unlink()
    with pytest.raises(Level1Error, match="band B8A missing"):
        L.read_metadata(safe)


@needs_data
def test_find_level1_in_testdata():
    found = L.find_level1([Path(TESTDATA)])
    names = [p.name for p in found]
    assert names == [Path(C2).name, Path(C1).name, Path(S2).name]


# ------------------------------------------------------------------ errors
@needs_data
@pytest.mark.parametrize("which", [C1, S2])
def test_truncated_archive(tmp_path, which):
    src = td(which)
    bad = tmp_path / src.name
    data = src.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    tmp = tmp_path / "tmp"
    with pytest.raises(Level1Error) as ei:
        with L.open_level1(bad, tempdir=tmp):
            pass
    msg = str(ei.value)
    assert src.name in msg and "corrupt archive" in msg
    assert l2ps_dirs(tmp) == []


def test_garbage_archive(tmp_path):
    bad = tmp_path / "LC08_L1TP_193024_20200509_20200509_02_T1.tar"
    bad.write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(Level1Error, match=r"LC08_L1TP_193024_20200509_20200509_02_T1\.tar: "
                                          r"corrupt archive"):
        with L.open_level1(bad, tempdir=tmp_path / "t"):
            pass


def test_tar_member_outside_target_refused(tmp_path):
    arc = tmp_path / "LC08_L1TP_193024_20200509_20200509_02_T1.tar"
    with tarfile.open(arc, "w") as tar:
        for name in ("ok_MTL.txt", "../evil.txt"):
            data = b"x"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    work = tmp_path / "work"
    with pytest.raises(Level1Error, match="unsafe archive member"):
        with L.open_level1(arc, tempdir=work):
            pass
    assert not (work / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert l2ps_dirs(work) == []


def test_zip_member_outside_target_refused(tmp_path):
    arc = tmp_path / "S2A_MSIL1C_20180629T000241_N0206_R030_T56JMM_20180629T012042.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        zf.writestr("../evil.txt", "x")
    with pytest.raises(Level1Error, match="unsafe archive member"):
        with L.open_level1(arc, tempdir=tmp_path / "w"):
            pass
    assert not (tmp_path / "evil.txt").exists()


def _edit_mtl(folder: Path, drop: str | None = None, replace: tuple[str, str] | None = None):
    mtl = next(folder.glob("*_MTL.txt"))
    lines = mtl.read_text().splitlines()
    if drop:
        lines = [ln for ln in lines if ln.strip().split(" ")[0] != drop]
    text = "\n".join(lines) + "\n"
    if replace:
        text = text.replace(*replace)
    mtl.write_text(text)
    return mtl


@needs_data
def test_mtl_missing_key(tmp_path):
    folder = copy_c2(tmp_path)
    mtl = _edit_mtl(folder, drop="REFLECTANCE_MULT_BAND_4")
    with pytest.raises(Level1Error) as ei:
        L.read_metadata(folder)
    msg = str(ei.value)
    assert mtl.name in msg and "REFLECTANCE_MULT_BAND_4 missing" in msg
    assert "DN→TOA of band 4" in msg


@needs_data
def test_unknown_spacecraft(tmp_path):
    folder = copy_c2(tmp_path)
    _edit_mtl(folder, replace=('SPACECRAFT_ID = "LANDSAT_8"', 'SPACECRAFT_ID = "LANDSAT_6"'))
    with pytest.raises(Level1Error, match=r"SPACECRAFT_ID 'LANDSAT_6' is not a supported"):
        L.read_metadata(folder)


@needs_data
def test_unknown_s2_spacecraft(tmp_path):
    with zipfile.ZipFile(td(S2)) as zf:
        zf.extractall(tmp_path)
    safe = tmp_path / (Path(S2).stem + ".SAFE")
    mtd = safe / "MTD_MSIL1C.xml"
    mtd.write_text(mtd.read_text().replace("Sentinel-2A", "Sentinel-3A"))
    with pytest.raises(Level1Error, match=r"MTD_MSIL1C\.xml: SPACECRAFT_NAME 'Sentinel-3A'"):
        L.read_metadata(safe)


@needs_data
def test_truncated_raster(tmp_path):
    folder = copy_c2(tmp_path)
    b5 = next(folder.glob("*_B5.TIF"))
    data = b5.read_bytes()
    b5.write_bytes(data[: len(data) // 2])
    with pytest.raises(Level1Error) as ei:
        l1 = L.read_metadata(folder)
        L.read_dn(l1, "NIR")
    msg = str(ei.value)
    assert b5.name in msg and "cannot be read" in msg
    assert "See previous exception" not in msg and "TIFF" in msg     # GDAL's own message


@needs_data
def test_missing_band_file(tmp_path):
    folder = copy_c2(tmp_path)
    next(folder.glob("*_B7.TIF")).unlink()
    with pytest.raises(Level1Error, match=r"_B7\.TIF: band 7 \(SWIR2\) file named in"):
        L.read_metadata(folder)


def test_not_a_product(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(Level1Error, match="not a Level-1 product"):
        with L.open_level1(tmp_path / "x"):
            pass
    assert not L.is_level1(tmp_path / "x")


# ------------------------------------------------------------------ small units
@pytest.mark.parametrize("items, tier", [
    ({"PROCESSING_LEVEL": "L1TP", "COLLECTION_CATEGORY": "T1"}, 1),     # C2 T1 (FORCE: SHRT_MIN)
    ({"PROCESSING_LEVEL": "L1GT", "COLLECTION_CATEGORY": "T2"}, 2),
    ({"PROCESSING_LEVEL": "L1TP", "COLLECTION_CATEGORY": "RT"}, 3),
    ({"DATA_TYPE": "L1TP", "COLLECTION_CATEGORY": "T1"}, 1),            # C1
    ({"DATA_TYPE": "L1GS", "COLLECTION_CATEGORY": "T2"}, 2),
    ({"DATA_TYPE": "L1T"}, 1),                                          # pre-collection
    ({"PRODUCT_TYPE": "L1G"}, 2),
])
def test_tier_rule(items, tier):
    assert landsat_tier(MTL(Path("x_MTL.txt"), items))[0] == tier


@pytest.mark.parametrize("items, match", [
    ({"SPACECRAFT_ID": "LANDSAT_5", "SENSOR_ID": "MSS"}, "MSS is not supported"),
    ({"SPACECRAFT_ID": "LANDSAT_8", "SENSOR_ID": "OLI"}, "OLI-only or TIRS-only"),
    ({"SPACECRAFT_ID": "LANDSAT_1"}, "not a supported Landsat"),
    ({"SENSOR_ID": "TM"}, "SPACECRAFT_ID missing"),
])
def test_landsat_sensor_errors(items, match):
    with pytest.raises(Level1Error, match=match):
        L.landsat_sensor(MTL(Path("x_MTL.txt"), items))


def test_parse_mtl_first_wins_and_c1_end(tmp_path):
    p = tmp_path / "a_MTL.txt"
    p.write_text('GROUP = L1_METADATA_FILE\n  A = "1"\n  A = 2\n  T = "10:01:23.12Z"\n'
                 'END_GROUP = L1_METADATA_FILE\n  B = 3\nEND\n')
    m = L.parse_mtl(p)
    assert m["A"] == "1" and m["T"] == "10:01:23.12Z" and "B" not in m


def test_nodes_to_cells_circular_and_positive():
    z = np.array([[5.0, 5.0], [0.0, np.nan]])
    a = np.array([[350.0, 10.0], [100.0, 100.0]])
    zc, ac = nodes_to_cells(z, a)
    assert zc[0, 0] == pytest.approx(5.0)               # zero and NaN corners ignored
    assert ac[0, 0] == pytest.approx(0.0, abs=1e-9) or ac[0, 0] == pytest.approx(360.0)
    zc2, _ = nodes_to_cells(np.zeros((2, 2)), np.zeros((2, 2)))
    assert np.isnan(zc2[0, 0])
    # collapse over two detectors: azimuths 355 and 15 → 5 (arithmetic mean would give 185)
    g1 = (None, None, np.full((2, 2), 4.0), np.full((2, 2), 355.0))
    g2 = (None, None, np.full((2, 2), 6.0), np.full((2, 2), 15.0))
    vz, va = collapse_view([g1, g2])
    assert vz[0, 0] == pytest.approx(5.0) and va[0, 0] == pytest.approx(5.0)


def test_mgrs_id():
    assert mgrs_id("L1C_T33UUU_A012345_20180101T100000") == "T33UUU"
    assert mgrs_id("S2A_OPER_MSI_L1C_TL_SGS__20160101T120000_A002621_T20LKP_N02.01") == "T20LKP"


# --------------------------------------------------------------------------- JPEG 2000 strips
def _tiled_jp2(path: Path, ny: int = 600, nx: int = 520, block: int = 128) -> np.ndarray:
    import rasterio
    from rasterio.transform import from_origin
    rng = np.random.default_rng(5)
    data = rng.integers(1, 60000, (ny, nx)).astype(np.uint16)
    with rasterio.open(path, "w", driver="JP2OpenJPEG", width=nx, height=ny, count=1,
                       dtype="uint16", crs="EPSG:32632", transform=from_origin(0, 0, 10, 10),
                       QUALITY="100", REVERSIBLE="YES", BLOCKXSIZE=str(block),
                       BLOCKYSIZE=str(block)) as ds:
        ds.write(data, 1)
    return data


def test_read_in_strips_equals_whole_read(tmp_path):
    """Strips of whole tile rows (one tile row per strip, and a window not on tile
    boundaries) give exactly the lossless file's values."""
    import rasterio
    from rasterio.windows import Window
    from l2ps.level1.read import read_in_strips
    path = tmp_path / "B02.jp2"
    truth = _tiled_jp2(path)
    with rasterio.Env(GDAL_NUM_THREADS="2"), rasterio.open(path) as ds:
        bh = ds.block_shapes[0][0]
        assert bh < ds.height                                  # several tile rows
        whole = read_in_strips(ds, strip_bytes=1)              # one tile row per strip
        win = read_in_strips(ds, Window(13, 150, 400, 371), strip_bytes=1)
    assert whole.dtype == np.uint16 and (whole == truth).all()
    assert (win == truth[150:521, 13:413]).all()


def test_read_dn_of_bands_on_their_own_mapping(tmp_path):
    """Bands of ≥ 1 MiB are read into a private mapping (``lasting_zeros``): the same values
    as rasterio's own read, whole and windowed, writable and independent of each other."""
    import rasterio
    from types import SimpleNamespace
    from rasterio.transform import from_origin
    from rasterio.windows import Window
    from l2ps.memory import lasting_zeros
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 65535, (900, 1100), dtype=np.uint16)       # 1.9 MiB
    path = tmp_path / "B4.TIF"
    with rasterio.open(path, "w", driver="GTiff", width=1100, height=900, count=1,
                       dtype="uint16", crs="EPSG:32632",
                       transform=from_origin(600000, 5800000, 30, 30)) as ds:
        ds.write(truth, 1)
    band = SimpleNamespace(path=path, grid=SimpleNamespace(nx=1100, ny=900))
    l1 = SimpleNamespace(bands={"RED": band}, source=path, sensor="LND08")
    whole = L.read_dn(l1, "RED")
    part = L.read_dn(l1, "RED", window=Window(17, 300, 1001, 550))
    assert whole.dtype == np.uint16 and whole.flags.c_contiguous and whole.flags.writeable
    assert not whole.flags.owndata                      # on the mapping, not numpy's heap
    np.testing.assert_array_equal(whole, truth)
    np.testing.assert_array_equal(part, truth[300:850, 17:1018])
    whole[:] = 7                            # private mappings: the other read is unchanged
    np.testing.assert_array_equal(part, truth[300:850, 17:1018])
    small = lasting_zeros((10, 10), np.uint8)
    assert small.shape == (10, 10) and small.flags.owndata and not small.any()
    big = lasting_zeros((3, 700, 500), np.int16)
    assert big.shape == (3, 700, 500) and not big.flags.owndata and not big.any()
