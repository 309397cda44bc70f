"""Tiling, mosaicking, formats, locking/atomicity and provenance of the cube writer
(spec 03 §2.7–§2.11, §3; DESIGN.md "Mosaicking rule")."""
from __future__ import annotations

import errno
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import CRS

from l2ps import qai
from l2ps.cube import formats
from l2ps.cube.formats import is_cog
from l2ps.cube.grid import Datacube
from l2ps.cube.write import (append_provenance, rasterize_aoi, read_tile_allowlist,
                             write_cube)
from l2ps.errors import AuxiliaryError, GridError, OutputError
from l2ps.grid import Grid
from l2ps.products import Product

WKT = CRS.from_epsg(3035).to_wkt()
OX, OY, RES, TILE = 4000000.0, 3000000.0, 30.0, 900.0       # 30x30-pixel tiles
CUBE = Datacube.from_origin_map(WKT, OX, OY, TILE, TILE)
CANVAS = 120                                                 # 4x4 tiles of 30 px
BANDS = ("BLUE", "GREEN", "RED", "NIR", "SWIR1", "SWIR2")


def params(**kw):
    p = {"DO_REPROJ": True, "DO_TILE": True, "RESOLUTION_LANDSAT": RES,
         "RESOLUTION_SENTINEL2": 10.0, "OUTPUT_FORMAT": "GTiff", "OUTPUT_OVV": False,
         "MAX_CLOUD_COVER_TILE": 100.0, "FILE_TILE": "NULL", "DIR_PROVENANCE": None,
         "NTHREAD": 1, "TILE_SIZE": [TILE, TILE], "PROJECTION": WKT}
    p.update(kw)
    return p


class Image:
    """A synthetic image on the cube grid at pixel offset (row, col) of the canvas."""

    def __init__(self, row, col, ny=50, nx=60, seed=0, cloud=None):
        rng = np.random.default_rng(seed)
        self.row, self.col = row, col
        self.grid = Grid(WKT, OX + col * RES, OY - row * RES, RES, RES, nx, ny)
        self.boa = [rng.integers(-200, 4000, (ny, nx)).astype(np.int16) for _ in BANDS]
        self.qai = (rng.integers(0, 4, (ny, nx)).astype(np.uint16) << 11)   # illumination
        self.qai |= (rng.integers(0, 2, (ny, nx)).astype(np.uint16) << 5)   # water
        if cloud is not None:
            self.qai[cloud] |= np.uint16(2 << 1)
        self.qai[0, 0] = 1                                   # one nodata pixel
        for b in self.boa:
            b[0, 0] = -9999

    def products(self):
        g = self.grid
        return [Product("QAI", [self.qai.copy()], [g], ("QAI",), 1, 1.0, "nearest"),
                Product("BOA", [b.copy() for b in self.boa], [g] * len(BANDS), BANDS, -9999,
                        10000.0, "cubic", wavelengths=(0.48, 0.56, 0.66, 0.86, 1.6, 2.2))]

    def canvas(self):
        """(bands+1, CANVAS, CANVAS) int32: QAI then BOA, nodata outside."""
        c = np.full((1 + len(BANDS), CANVAS, CANVAS), -9999, np.int64)
        c[0] = 1
        ny, nx = self.qai.shape
        c[0, self.row:self.row + ny, self.col:self.col + nx] = self.qai
        for i, b in enumerate(self.boa):
            c[1 + i, self.row:self.row + ny, self.col:self.col + nx] = b
        return c


def write(img, out, level1_id, date="20200101", sensor="LND08", **kw):
    p = params(**kw.pop("params", {}))
    return write_cube(img.products(), level1_id=level1_id, date=date, sensor=sensor,
                      params=p, cubes=[CUBE], out_dir=out, **kw)


def read_canvas(out, date="20200101", sensor="LND08", ext="tif"):
    """Assemble all tiles back into one canvas: (1 + bands, CANVAS, CANVAS)."""
    c = np.full((1 + len(BANDS), CANVAS, CANVAS), -9999, np.int64)
    c[0] = 1
    for tdir in Path(out).glob("X*_Y*"):
        X, Y = Datacube.parse_tile_name(tdir.name)
        r, cc = Y * 30, X * 30
        with rasterio.open(tdir / f"{date}_LEVEL2_{sensor}_QAI.{ext}") as ds:
            c[0, r:r + 30, cc:cc + 30] = ds.read(1)
        with rasterio.open(tdir / f"{date}_LEVEL2_{sensor}_BOA.{ext}") as ds:
            c[1:, r:r + 30, cc:cc + 30] = ds.read()
    return c


def expected_mosaic(*imgs):
    cs = [i.canvas() for i in imgs]
    out = np.full_like(cs[0], -9999)
    q = np.stack([c[0] for c in cs])
    out[0] = qai.merge(q.astype(np.uint16))
    for b in range(1, out.shape[0]):
        st = np.stack([c[b] for c in cs])
        valid = st != -9999
        n = valid.sum(0)
        s = np.where(valid, st, 0).sum(0)
        ok = n > 0
        out[b][ok] = np.trunc(s[ok] / n[ok])
    return out


def no_temp_files(root):
    return not [p for p in Path(root).rglob("*") if ".tmp-" in p.name]


# ----------------------------------------------------------------------- tiling
def test_tiles_have_tile_ul_geotransforms_and_values(tmp_path):
    img = Image(10, 15)
    res = write(img, tmp_path, "LC08_A")
    # image rows 10..59, cols 15..74 → tiles X0..X2, Y0..Y1
    assert sorted(res.tiles_written) == sorted(
        f"X{x:04d}_Y{y:04d}" for x in range(3) for y in range(2))
    assert (tmp_path / "datacube-definition.prj").exists()
    for t in res.tiles_written:
        X, Y = Datacube.parse_tile_name(t)
        with rasterio.open(tmp_path / t / "20200101_LEVEL2_LND08_BOA.tif") as ds:
            assert ds.transform.c == OX + X * TILE and ds.transform.f == OY - Y * TILE
            assert ds.transform.a == RES and ds.transform.e == -RES
            assert (ds.width, ds.height, ds.count) == (30, 30, 6)
            assert ds.descriptions == BANDS and ds.nodata == -9999
            assert ds.dtypes[0] == "int16"
    np.testing.assert_array_equal(read_canvas(tmp_path), img.canvas())
    assert {f.mode for f in res.files} == {"create"}
    assert len(res.files) == 12
    assert no_temp_files(tmp_path)


def test_result_has_sub_stage_timings_and_consume_frees_the_bands(tmp_path):
    img = Image(10, 15)
    prods = img.products()
    res = write_cube(prods, level1_id="LC08_A", date="20200101", sensor="LND08",
                     params=params(OUTPUT_FORMAT="COG", OUTPUT_OVV=True), cubes=[CUBE],
                     out_dir=tmp_path, consume=True)
    assert {"warp", "write", "quicklook"} <= set(res.timings)
    assert all(isinstance(v, float) and v >= 0 for v in res.timings.values())
    assert all(b is None for p in prods for b in p.bands)
    np.testing.assert_array_equal(read_canvas(tmp_path), img.canvas())


def test_max_cloud_cover_tile_is_strictly_greater(tmp_path):
    cloud = np.zeros((30, 30), bool)
    cloud[:, :15] = True                     # exactly 50 % of the single tile
    img = Image(0, 0, ny=30, nx=30, cloud=cloud)
    img.qai[0, 0] = 2 << 1                   # valid and cloudy
    img.boa[0][0, 0] = 5
    r1 = write(img, tmp_path / "a", "L1", params={"MAX_CLOUD_COVER_TILE": 50.0})
    assert r1.tiles_written == ["X0000_Y0000"]
    r2 = write(img, tmp_path / "b", "L1", params={"MAX_CLOUD_COVER_TILE": 49.9})
    assert r2.tiles_written == [] and r2.tiles_skipped_cloud == {"X0000_Y0000": 50.0}
    assert not (tmp_path / "b" / "X0000_Y0000").exists()


def test_shadow_and_cirrus_count_as_cloud_snow_does_not(tmp_path):
    img = Image(0, 0, ny=30, nx=30)
    img.qai[:] = 0
    for b in img.boa:
        b[0, 0] = 5
    img.qai[:10] |= np.uint16(1 << 3)             # shadow: 1/3
    img.qai[10:20] |= np.uint16(3 << 1)           # cirrus: 1/3
    img.qai[20:] |= np.uint16(1 << 4)             # snow: not counted
    r = write(img, tmp_path, "L1", params={"MAX_CLOUD_COVER_TILE": 60.0})
    assert r.tiles_skipped_cloud["X0000_Y0000"] == pytest.approx(200 / 3)


def test_empty_tiles_are_not_written(tmp_path):
    img = Image(10, 15)
    img.qai[:, 45:] = 1                          # cols 60..74 of the canvas: tile X2
    r = write(img, tmp_path, "L1")
    assert "X0002_Y0000" in r.tiles_empty and "X0002_Y0001" in r.tiles_empty
    assert not (tmp_path / "X0002_Y0000").exists()


# -------------------------------------------------------------------- FILE_TILE
def test_allowlist_parsing(tmp_path):
    p = tmp_path / "allow.txt"
    p.write_text("3\n X0000_Y0001\t\nX-001_Y0003   X-1234_Y0000\nX0099_Y0099\n")
    assert read_tile_allowlist(p) == {(0, 1), (-1, 3), (-1234, 0)}
    p.write_text("3\nX0000_Y0001\n")
    with pytest.raises(GridError, match="announces 3 tiles but lists 1"):
        read_tile_allowlist(p)
    p.write_text("2\nX0000_Y0001\nfoo\n")
    with pytest.raises(GridError, match=r"allow\.txt, line 3.*'foo'"):
        read_tile_allowlist(p)
    p.write_text("0\n")
    with pytest.raises(GridError, match="> 0"):
        read_tile_allowlist(p)
    p.write_text("two\nX0000_Y0000\n")
    with pytest.raises(GridError, match="line 1"):
        read_tile_allowlist(p)


def test_allowlist_restricts_tiles(tmp_path):
    allow = tmp_path / "allow.txt"
    allow.write_text("2\nX0001_Y0000\nX0002_Y0001\n")
    r = write(Image(10, 15), tmp_path / "out", "L1", params={"FILE_TILE": str(allow)})
    assert sorted(r.tiles_written) == ["X0001_Y0000", "X0002_Y0001"]
    assert len(r.tiles_not_allowed) == 4
    assert sorted(p.name for p in (tmp_path / "out").glob("X*")) == sorted(r.tiles_written)


# ---------------------------------------------------------------------- untiled
def test_untiled_mode_writes_whole_image_into_refsys_folder(tmp_path):
    img = Image(10, 15)
    r = write_cube(img.products(), level1_id="L1", date="20200101", sensor="LND08",
                   params=params(DO_TILE=False, DO_REPROJ=False), out_dir=tmp_path,
                   refsys_id="193023")
    assert r.tiles_written == ["193023"]
    f = tmp_path / "193023" / "20200101_LEVEL2_LND08_BOA.tif"
    with rasterio.open(f) as ds:
        assert ds.shape == (50, 60) and ds.transform.c == img.grid.x0
        np.testing.assert_array_equal(ds.read(1), img.boa[0])
    assert not (tmp_path / "datacube-definition.prj").exists()
    assert not list(tmp_path.glob("X*"))


# ---------------------------------------------------------------------- formats
@pytest.mark.parametrize("fmt, ext", [("COG", "tif"), ("GTiff", "tif"), ("ENVI", "dat"),
                                      ("CUSTOM", "img")])
def test_output_formats_carry_names_and_metadata(tmp_path, fmt, ext):
    opts = tmp_path / "opts.txt"
    opts.write_text("DRIVER = HFA\nEXTENSION = img\nCOMPRESSED = YES\n")
    img = Image(0, 0, ny=30, nx=30)
    r = write(img, tmp_path / "out", "LC08_X", params={"OUTPUT_FORMAT": fmt,
                                                       "FILE_OUTPUT_OPTIONS": str(opts)},
              param_log="DIR_LEVEL2: /x, NTHREAD: 1")
    f = tmp_path / "out" / "X0000_Y0000" / f"20200101_LEVEL2_LND08_BOA.{ext}"
    assert f.exists() and f in [w.path for w in r.files]
    with rasterio.open(f) as ds:
        assert ds.descriptions == BANDS and ds.nodata == -9999
        md = ds.tags(ns="FORCE")
        assert md["FORCE_product"] == "BOA" and md["FORCE_param"].startswith("DIR_LEVEL2")
        assert md["FORCE_description"] == "FORCE Level 2 Processing System"
        assert md["FORCE_version"].startswith("l2ps ") and "Sys_host_name" in md
        b = ds.tags(3, ns="FORCE")
        assert b == {"Domain": "RED", "Wavelength": "0.660", "Wavelength_unit": "micrometers",
                     "Scale": "10000.000", "Sensor": "LND08", "Date": "2020-01-01T00:00:00.0Z"}
        np.testing.assert_array_equal(ds.read(3), img.boa[2])
    with rasterio.open(f.with_name(f"20200101_LEVEL2_LND08_QAI.{ext}")) as ds:
        assert ds.nodata == 1 and ds.tags(1, ns="FORCE")["Wavelength_unit"] == "unknown"


def test_cog_is_valid_and_qai_overviews_nearest(tmp_path):
    fmt = formats.output_format("COG")
    assert fmt.options["COMPRESS"] == "ZSTD" and fmt.options["PREDICTOR"] == "YES"
    assert ("INTERLEAVE" in fmt.options) == (formats.gdal_version() >= (3, 11, 0))
    assert fmt.options_for("QAI")["OVERVIEW_RESAMPLING"] == "NEAREST"
    assert fmt.options_for("BOA")["OVERVIEW_RESAMPLING"] == "AVERAGE"
    g = Grid(WKT, OX, OY, RES, RES, 600, 600)
    q = np.where(np.indices((600, 600)).sum(0) % 2 == 0, 2, 64).astype(np.int16)
    spec = formats.RasterSpec(("QAI",), 1, {"FORCE": {"FORCE_product": "QAI"}})
    formats.write_raster(tmp_path / "q.tif", q[None], g, fmt, spec, "QAI")
    assert is_cog(tmp_path / "q.tif")
    with rasterio.open(tmp_path / "q.tif") as ds:
        assert ds.overviews(1) and ds.block_shapes[0] == (256, 256)
        assert ds.tags(ns="FORCE")["FORCE_product"] == "QAI"
        ov = ds.read(1, out_shape=(300, 300))
        assert set(np.unique(ov).tolist()) <= {2, 64}      # no averaged bit fields
    r = write(Image(0, 0, ny=30, nx=30), tmp_path / "out", "L", params={"OUTPUT_FORMAT": "COG"})
    assert all(is_cog(w.path) for w in r.files)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_ovv_quicklook_is_8bit_jpeg(tmp_path):
    img = Image(0, 0, ny=30, nx=30)
    r = write(img, tmp_path, "L1", params={"OUTPUT_OVV": True})
    f = tmp_path / "X0000_Y0000" / "20200101_LEVEL2_LND08_OVV.jpg"
    assert f in [w.path for w in r.files]
    with rasterio.open(f) as ds:
        assert ds.count == 3 and ds.dtypes[0] == "uint8" and ds.shape == (6, 6)
    assert not list(tmp_path.rglob("*.aux.xml"))


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.parametrize("fmt", ["GTiff", "COG"])
def test_ovv_is_the_quicklook_of_the_written_files(tmp_path, fmt):
    """The OVV equals the quicklook sampled from the tile files (GTiff written directly
    keeps the samples while writing; COG and merged tiles read them back), also after a
    second image has been merged into the tiles."""
    from l2ps.cube.write import _ovv_colours, _ovv_indices
    for k, img in enumerate([Image(5, 7, ny=50, nx=60, seed=1), Image(20, 30, seed=2)]):
        r = write(img, tmp_path, f"L{k}", params={"OUTPUT_OVV": True, "OUTPUT_FORMAT": fmt})
        ovvs = [w.path for w in r.files if w.path.name.endswith("_OVV.jpg")]
        assert len(ovvs) == len(r.tiles_written) >= 2
        for f in ovvs:
            with rasterio.open(f.parent / "20200101_LEVEL2_LND08_QAI.tif") as ds:
                q = ds.read(1)
            with rasterio.open(f.parent / "20200101_LEVEL2_LND08_BOA.tif") as ds:
                rgb = ds.read([3, 2, 1])
            ii, jj = _ovv_indices(q.shape[0], q.shape[1], RES)
            want = _ovv_colours(rgb[:, ii[:, None], jj[None, :]], q[ii[:, None], jj[None, :]])
            with rasterio.open(f) as ds:
                got = ds.read()
            # JPEG is lossy: the same image compressed the same way
            ref = tmp_path / "ref.jpg"
            with rasterio.open(ref, "w", driver="JPEG", width=want.shape[2],
                               height=want.shape[1], count=3, dtype="uint8") as ds:
                ds.write(want)
            with rasterio.open(ref) as ds:
                assert np.array_equal(got, ds.read()), f


# ------------------------------------------------------------------- mosaicking
def test_mosaic_two_images_mean_and_qai_merge(tmp_path):
    a, b = Image(10, 15, seed=1), Image(25, 35, seed=2)
    ra = write(a, tmp_path, "LC08_A")
    rb = write(b, tmp_path, "LC08_B")
    np.testing.assert_array_equal(read_canvas(tmp_path), expected_mosaic(a, b))
    overlap = set(ra.tiles_written) & set(rb.tiles_written)
    assert overlap
    modes = {w.path.parent.name: w.mode for w in rb.files}
    assert all(modes[t] == "update" for t in overlap)
    # contributions only where two images met, hidden from cube readers
    for t in overlap:
        chips = sorted(p.name for p in (tmp_path / t / ".contrib" / "20200101_LEVEL2_LND08").iterdir()
                       if p.suffix == ".tif")
        assert chips == ["LC08_A_BOA.tif", "LC08_A_QAI.tif", "LC08_B_BOA.tif", "LC08_B_QAI.tif"]
        with rasterio.open(tmp_path / t / "20200101_LEVEL2_LND08_BOA.tif") as ds:
            assert ds.tags(ns="L2PS")["CONTRIBUTORS"] == "LC08_A;LC08_B"
    only_a = set(ra.tiles_written) - overlap
    for t in only_a:
        assert not (tmp_path / t / ".contrib").exists()
    assert not list(tmp_path.glob("*/*.tif.tif"))


def test_mosaic_is_order_independent(tmp_path):
    a, b, c = Image(10, 15, seed=1), Image(25, 35, seed=2), Image(0, 5, seed=3)
    write(a, tmp_path / "abc", "A"); write(b, tmp_path / "abc", "B"); write(c, tmp_path / "abc", "C")
    write(c, tmp_path / "cba", "C"); write(b, tmp_path / "cba", "B"); write(a, tmp_path / "cba", "A")
    x, y = read_canvas(tmp_path / "abc"), read_canvas(tmp_path / "cba")
    np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(x, expected_mosaic(a, b, c))     # not ((a+b)/2+c)/2
    for f in (tmp_path / "abc").glob("X*/*.tif"):
        g = tmp_path / "cba" / f.relative_to(tmp_path / "abc")
        with rasterio.open(f) as d1, rasterio.open(g) as d2:
            assert d1.tags(ns="L2PS") == d2.tags(ns="L2PS")
            assert d1.tags(1, ns="FORCE") == d2.tags(1, ns="FORCE")
        assert f.read_bytes() == g.read_bytes()


def test_reprocessing_replaces_own_contribution(tmp_path):
    a, b = Image(10, 15, seed=1), Image(25, 35, seed=2)
    write(a, tmp_path, "A")
    write(a, tmp_path, "A")                                  # single contributor: idempotent
    np.testing.assert_array_equal(read_canvas(tmp_path), a.canvas())
    write(b, tmp_path, "B")
    a2 = Image(10, 15, seed=11)                              # A reprocessed, new values
    write(a2, tmp_path, "A")
    np.testing.assert_array_equal(read_canvas(tmp_path), expected_mosaic(a2, b))
    write(a2, tmp_path, "A")                                 # and again: still the mean
    np.testing.assert_array_equal(read_canvas(tmp_path), expected_mosaic(a2, b))


def test_different_sensor_or_date_are_separate_files(tmp_path):
    a, b = Image(10, 15, seed=1), Image(10, 15, seed=2)
    write(a, tmp_path, "A")
    write(b, tmp_path, "B", sensor="LND09")
    write(b, tmp_path, "B", date="20200102")
    np.testing.assert_array_equal(read_canvas(tmp_path), a.canvas())
    np.testing.assert_array_equal(read_canvas(tmp_path, sensor="LND09"), b.canvas())
    np.testing.assert_array_equal(read_canvas(tmp_path, date="20200102"), b.canvas())


def test_incompatible_existing_file_is_output_error(tmp_path):
    write(Image(0, 0, ny=30, nx=30), tmp_path, "A")
    img = Image(0, 0, ny=30, nx=30)
    prods = img.products()
    prods[1] = Product("BOA", prods[1].bands[:3], prods[1].grids[:3], BANDS[:3], -9999, 1e4)
    with pytest.raises(OutputError, match="BOA.tif: existing file has 6 bands"):
        write_cube(prods, level1_id="B", date="20200101", sensor="LND08", params=params(),
                   cubes=[CUBE], out_dir=tmp_path)


# ------------------------------------------------------------ concurrency / atomicity
def _worker(out, which, delay, barrier):
    import time
    img = Image(10, 15, seed=1) if which == "A" else Image(25, 35, seed=2)
    barrier.wait()
    time.sleep(delay)
    write(img, out, which)


@pytest.mark.parametrize("delays", [(0.0, 0.3), (0.3, 0.0)])
def test_two_processes_writing_the_same_tiles(tmp_path, delays):
    ctx = mp.get_context("spawn")   # numba's OpenMP forbids fork
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_worker, args=(tmp_path, w, d, barrier))
             for w, d in zip("AB", delays)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    np.testing.assert_array_equal(read_canvas(tmp_path),
                                  expected_mosaic(Image(10, 15, seed=1), Image(25, 35, seed=2)))
    assert no_temp_files(tmp_path)


def test_enospc_keeps_existing_file_and_leaves_no_temp(tmp_path, monkeypatch):
    write(Image(10, 15, seed=1), tmp_path, "A")
    f = tmp_path / "X0001_Y0001" / "20200101_LEVEL2_LND08_QAI.tif"
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.tif")}

    def full_disk(path, *a, **k):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    for writer in ("write_raster", "write_tile", "write_window",       # every file writer
                   "write_tile_direct"):
        monkeypatch.setattr(formats, writer, full_disk)
    with pytest.raises(OutputError, match=r"LND08_QAI\.tif.*No space left"):
        write(Image(10, 15, seed=5), tmp_path, "A")
    assert f.read_bytes() == before[f]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.tif")} == before
    assert no_temp_files(tmp_path)


# ------------------------------------------------------------------- provenance
def test_provenance_rows(tmp_path):
    prov = tmp_path / "prov"
    img = Image(0, 0, ny=30, nx=30)
    write(img, tmp_path / "out", "LC08_A", params={"DIR_PROVENANCE": str(prov)},
          origin="/queue/LC08_A.tar")
    write(img, tmp_path / "out", "LC08_A", params={"DIR_PROVENANCE": str(prov)},
          origin="/queue/LC08_A.tar")
    [csvf] = list(prov.glob("provenance_*.csv"))
    lines = csvf.read_text().splitlines()
    assert lines[0] == "file,origin,mode,creation"
    assert len(lines) == 5
    assert [ln.split(",")[2] for ln in lines[1:]] == ["create", "create", "update", "update"]
    assert all(ln.split(",")[1] == "/queue/LC08_A.tar" for ln in lines[1:])
    assert lines[1].split(",")[0].endswith("X0000_Y0000/20200101_LEVEL2_LND08_QAI.tif")
    append_provenance(prov, "/x,y.tif", "o", "create")          # quoted, one line
    assert len(csvf.read_text().splitlines()) == 6


# ---------------------------------------------------------------------- FILE_AOI
def test_rasterize_aoi(tmp_path):
    g = Grid(CRS.from_epsg(32633).to_wkt(), 500000, 5800020, 30, 30, 60, 50)
    from pyproj import Transformer
    t = Transformer.from_crs(32633, 4326, always_xy=True)
    ring = [t.transform(x, y) for x, y in [(500000, 5800020), (500900, 5800020),
                                           (500900, 5799120), (500000, 5799120),
                                           (500000, 5800020)]]
    coords = ",".join(f"[{x:.9f},{y:.9f}]" for x, y in ring)
    f = tmp_path / "aoi.geojson"
    f.write_text('{"type":"FeatureCollection","features":[{"type":"Feature","properties":{},'
                 '"geometry":{"type":"Polygon","coordinates":[[' + coords + ']]}}]}')
    m = rasterize_aoi(f, g)
    assert m.shape == (50, 60) and m.dtype == bool
    assert m[:30, :30].all() and not m[:, 31:].any() and not m[31:, :].any()
    with pytest.raises(AuxiliaryError, match="nothing.geojson"):
        rasterize_aoi(tmp_path / "nothing.geojson", g)


# ---------------------------------------------------------- DO_REPROJ = FALSE (P6)
def test_no_reproj_tiles_native_grid_and_resamples_other_pixel_phases(tmp_path):
    utm = CRS.from_epsg(32633).to_wkt()
    p = params(DO_REPROJ=False, ORIGIN_LON=15.0, ORIGIN_LAT=52.0, TILE_SIZE="900 900",
               PROJECTION="ignored")

    def image(x0, y0, seed):
        g = Grid(utm, x0, y0, 30.0, 30.0, 60, 50)
        cols = np.broadcast_to((np.arange(60) * 10 + 100).astype(np.int16), (50, 60))
        boa = [cols.copy() for _ in BANDS]
        q = np.zeros((50, 60), np.uint16)
        return [Product("QAI", [q], [g], ("QAI",), 1, 1.0, "nearest"),
                Product("BOA", boa, [g] * 6, BANDS, -9999, 1e4, "nearest")]

    r1 = write_cube(image(500010.0, 5761020.0, 1), level1_id="A", date="20200101",
                    sensor="LND08", params=p, out_dir=tmp_path)
    [c] = r1.cubes
    assert CRS.from_wkt(c.wkt).to_epsg() == 32633
    assert ((c.origin_x - 500010.0) / 30.0) % 1 == pytest.approx(0, abs=1e-9)
    # image A is cut without resampling: tile chips equal the source pixels
    for t in r1.tiles_written:
        with rasterio.open(tmp_path / t / "20200101_LEVEL2_LND08_BOA.tif") as ds:
            ulx, uly = c.tile_ul(*Datacube.parse_tile_name(t))
            assert (ds.transform.c, ds.transform.f) == (ulx, uly)
            v = ds.read(1)
            jj = np.arange(30)
            src_col = np.round((ulx + (jj + 0.5) * 30 - 500010.0) / 30 - 0.5).astype(int)
            ok = (src_col >= 0) & (src_col < 60)
            row = v[np.argmax((v != -9999).any(axis=1))]
            assert np.all(row[ok & (row != -9999)] == (src_col * 10 + 100)[ok & (row != -9999)])
    # image B lies 10 m east of A's pixel grid: the cube of the .prj is kept (no error)
    # and B is resampled onto it instead of being cut with a sub-pixel shift
    r2 = write_cube(image(500020.0, 5761020.0, 2), level1_id="B", date="20200102",
                    sensor="LND08", params=p, out_dir=tmp_path)
    assert r2.cubes == [c]
    t = r2.tiles_written[0]
    ulx, uly = c.tile_ul(*Datacube.parse_tile_name(t))
    with rasterio.open(tmp_path / t / "20200102_LEVEL2_LND08_BOA.tif") as ds:
        v = ds.read(1)
    centres = ulx + (np.arange(30) + 0.5) * 30
    src_col = np.floor((centres - 500020.0) / 30).astype(int)
    row = v[np.argmax((v != -9999).all(axis=1))]
    ok = (src_col >= 0) & (src_col < 60)
    np.testing.assert_array_equal(row[ok], src_col[ok] * 10 + 100)
    # a different cube definition in the same folder is refused
    with pytest.raises(GridError, match="ORIGIN_MAP_X"):
        write_cube(image(500010.0, 5761020.0, 1), level1_id="C", date="20200103",
                   sensor="LND08", params=dict(p, ORIGIN_LON=15.5), out_dir=tmp_path)


# ------------------------------------------------- sparse tiles (data windows only)
BIG_PX = 4096                                                # one tile of 4096² px
BIG = Datacube.from_origin_map(WKT, OX, OY, BIG_PX * RES, BIG_PX * RES)


def write_big(img, out, level1_id, fmt="GTiff"):
    return write_cube(img.products(), level1_id=level1_id, date="20200101", sensor="LND08",
                      params=params(OUTPUT_FORMAT=fmt, TILE_SIZE=[BIG_PX * RES] * 2),
                      cubes=[BIG], out_dir=out)


def big_expected(*imgs):
    """Expected (1 + bands) values of the tile on the union box of the images, and the box."""
    r0, c0 = min(i.row for i in imgs), min(i.col for i in imgs)
    r1 = max(i.row + i.qai.shape[0] for i in imgs)
    c1 = max(i.col + i.qai.shape[1] for i in imgs)
    cs = []
    for i in imgs:
        c = np.full((1 + len(BANDS), r1 - r0, c1 - c0), -9999, np.int64)
        c[0] = 1
        sl = (slice(i.row - r0, i.row - r0 + i.qai.shape[0]), slice(i.col - c0, i.col - c0 + i.qai.shape[1]))
        c[0][sl] = i.qai
        for k, b in enumerate(i.boa):
            c[1 + k][sl] = b
        cs.append(c)
    out = np.full_like(cs[0], -9999)
    out[0] = qai.merge(np.stack([c[0] for c in cs]).astype(np.uint16))
    for b in range(1, out.shape[0]):
        st = np.stack([c[b] for c in cs])
        n = (st != -9999).sum(0)
        s = np.where(st != -9999, st, 0).sum(0)
        out[b][n > 0] = np.trunc(s[n > 0] / n[n > 0])
    return out, (r0, c0, r1, c1)


def read_full(path):
    with rasterio.open(path) as ds:
        return ds.read()


@pytest.mark.parametrize("fmt", ["COG", "GTiff"])
def test_sparse_tile_nodata_outside_data_window_and_data_inside(tmp_path, fmt):
    img = Image(1000, 1500, ny=100, nx=120, seed=4)
    r = write_big(img, tmp_path, "A", fmt)
    assert r.tiles_written == ["X0000_Y0000"]
    f = tmp_path / "X0000_Y0000" / "20200101_LEVEL2_LND08_BOA.tif"
    with rasterio.open(f) as ds:
        assert (ds.width, ds.height, ds.count) == (BIG_PX, BIG_PX, 6)      # tile-sized on disk
        assert ds.tags(ns="L2PS")["DATA_WINDOW"] == "768 1280 512 512"     # 256-aligned box
        if fmt == "COG":
            assert ds.overviews(1) == [2, 4, 8, 16]
    if fmt == "COG":
        assert is_cog(f)
    full = read_full(f)
    inside = np.zeros((BIG_PX, BIG_PX), bool)
    inside[1000:1100, 1500:1620] = True
    assert np.all(full[:, ~inside] == -9999)
    np.testing.assert_array_equal(full[:, 1000:1100, 1500:1620], np.stack(img.boa))
    q = read_full(f.with_name("20200101_LEVEL2_LND08_QAI.tif"))[0]
    assert np.all(q[~inside] == 1)
    np.testing.assert_array_equal(q[1000:1100, 1500:1620], img.qai.astype(np.int16))
    # sparse: far smaller than the 4096² x 6 x 2 bytes = 201 MB the tile holds
    assert f.stat().st_size < 2_000_000


def _same_files(a, b):
    """Every raster below ``a`` equals its twin below ``b``: pixels, georeferencing,
    names, nodata, metadata of every domain, and (within a few bytes) the file size."""
    files = sorted(p.relative_to(a) for p in a.rglob("*.tif"))
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*.tif"))
    for rel in files:
        with rasterio.open(a / rel) as x, rasterio.open(b / rel) as y:
            assert (x.profile["blockxsize"], x.count, x.shape, x.nodatavals, x.transform,
                    x.crs, x.descriptions) == (y.profile["blockxsize"], y.count, y.shape,
                                               y.nodatavals, y.transform, y.crs,
                                               y.descriptions)
            for ns in ("FORCE", "L2PS"):
                assert x.tags(ns=ns) == y.tags(ns=ns)
                assert [x.tags(i, ns=ns) for i in range(1, x.count + 1)] == \
                    [y.tags(i, ns=ns) for i in range(1, y.count + 1)]
            assert x.tags() == y.tags()
            assert np.array_equal(x.read(), y.read())
        assert abs((a / rel).stat().st_size - (b / rel).stat().st_size) < 64


def test_direct_gtiff_tiles_equal_the_vrt_assembled_ones(tmp_path, monkeypatch):
    """GTiff tile files written directly (create, same-contributor update; then a merge on
    top) equal those assembled from window files by GDAL (the COG/ENVI path)."""
    imgs = [Image(1000, 1500, ny=300, nx=420, seed=4), Image(1180, 1700, ny=200, nx=330,
                                                               seed=5)]

    def run(out):
        write_big(imgs[0], out, "A")
        write_big(imgs[0], out, "A")                          # same contributor: direct
        (out / "first").mkdir()
        for f in (out / "X0000_Y0000").glob("*.tif"):
            (out / "first" / f.name).write_bytes(f.read_bytes())
        write_big(imgs[1], out, "B")                          # merge path (unchanged)

    direct, vrt = tmp_path / "direct", tmp_path / "vrt"
    run(direct)
    monkeypatch.setattr(formats, "can_write_direct", lambda fmt: False)
    run(vrt)
    _same_files(direct, vrt)
    full = read_full(direct / "first" / "20200101_LEVEL2_LND08_BOA.tif")
    np.testing.assert_array_equal(full[:, 1000:1300, 1500:1920], np.stack(imgs[0].boa))


def test_contrib_chips_are_window_sized(tmp_path):
    a, b = Image(1000, 1500, ny=100, nx=120, seed=1), Image(1050, 1590, ny=300, nx=100, seed=2)
    write_big(a, tmp_path, "A")
    write_big(b, tmp_path, "B")
    cdir = tmp_path / "X0000_Y0000" / ".contrib" / "20200101_LEVEL2_LND08"
    with rasterio.open(cdir / "A_BOA.tif") as ds:
        assert (ds.height, ds.width, ds.count) == (512, 512, 6)
        assert (ds.transform.c, ds.transform.f) == (OX + 1280 * RES, OY - 768 * RES)
        assert ds.tags(ns="L2PS")["WINDOW"] == "768 1280 512 512"
        np.testing.assert_array_equal(ds.read()[:, 232:332, 220:340], np.stack(a.boa))
    with rasterio.open(cdir / "B_QAI.tif") as ds:
        assert (ds.height, ds.width) == (512, 256)                       # rows 1024..1536
        assert ds.tags(ns="L2PS")["WINDOW"] == "1024 1536 512 256"
    f = tmp_path / "X0000_Y0000" / "20200101_LEVEL2_LND08_BOA.tif"
    with rasterio.open(f) as ds:
        assert ds.tags(ns="L2PS")["DATA_WINDOW"] == "768 1280 768 512"
        assert ds.tags(ns="L2PS")["CONTRIBUTORS"] == "A;B"


@pytest.mark.parametrize("fmt", ["GTiff", "COG"])
def test_merge_into_big_tile_touches_only_the_window(tmp_path, fmt):
    import tracemalloc
    a, b = Image(1000, 1500, ny=100, nx=120, seed=1), Image(1050, 1590, ny=300, nx=100, seed=2)
    c = Image(3000, 300, ny=60, nx=50, seed=3)                 # far away: its own window
    write_big(a, tmp_path, "A", fmt)
    write_big(c, tmp_path, "C", fmt)
    tracemalloc.start()
    try:
        write_big(b, tmp_path, "B", fmt)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # one band of the tile is 4096² x 2 bytes = 32 MiB; the merge works on 768 x 512 windows
    assert peak < 8 * 2**20
    f = tmp_path / "X0000_Y0000" / "20200101_LEVEL2_LND08_BOA.tif"
    full = np.concatenate([read_full(f.with_name("20200101_LEVEL2_LND08_QAI.tif")),
                           read_full(f)]).astype(np.int64)
    exp_ab, (r0, c0, r1, c1) = big_expected(a, b)
    np.testing.assert_array_equal(full[:, r0:r1, c0:c1], exp_ab)
    exp_c, (s0, d0, s1, d1) = big_expected(c)
    np.testing.assert_array_equal(full[:, s0:s1, d0:d1], exp_c)
    outside = np.ones((BIG_PX, BIG_PX), bool)
    outside[r0:r1, c0:c1] = outside[s0:s1, d0:d1] = False
    assert np.all(full[0][outside] == 1) and np.all(full[1:, outside] == -9999)
    if fmt == "COG":
        assert is_cog(f)
        # the overviews assembled from window overviews equal GDAL's over the whole tile
        from rasterio.enums import Resampling
        g = tmp_path / "check.tif"
        with rasterio.open(f) as ds:
            prof = dict(ds.profile, driver="GTiff", tiled=True, blockxsize=256, blockysize=256)
            with rasterio.open(g, "w", **prof) as out:
                out.write(ds.read())
                out.build_overviews([2, 4, 8, 16], Resampling.average)
            levels = ds.overviews(1)
        for k, fct in enumerate(levels):
            with rasterio.open(f, overview_level=k) as o1, rasterio.open(g, overview_level=k) as o2:
                np.testing.assert_array_equal(o1.read(), o2.read())


def test_window_file_bands_stay_nodata_outside_the_window_with_a_tiny_block_cache(tmp_path):
    """Bands written one by one must not read back 0 outside their window when GDAL evicts
    partial blocks early (pixel-interleaved files did: the merge then averaged in zeros)."""
    import rasterio
    from l2ps.cube import formats
    from l2ps.cube.write import _CHIP_FORMAT       # the contribution chips' options
    rng = np.random.default_rng(3)
    bands = [rng.integers(100, 9000, (300, 260)).astype(np.int16) for _ in range(3)]
    path = tmp_path / "chip.tif"
    with rasterio.Env(GDAL_CACHEMAX=64):       # bytes: every block is evicted at once
        formats.write_window(path, bands, (100, 130), (512, 512), None, -9999,
                             options=_CHIP_FORMAT.options)
    with rasterio.open(path) as ds:
        for i, b in enumerate(bands, start=1):
            a = ds.read(i)
            assert np.array_equal(a[100:400, 130:390], b)
            outside = np.ones(a.shape, bool)
            outside[100:400, 130:390] = False
            assert (a[outside] == -9999).all(), f"band {i}: {np.count_nonzero(a[outside] != -9999)} px"
