"""STAC catalog of the cube (l2ps.stac; docs/report-stac.md): offline core validation,
extension fields, hrefs, merge-on-write consistency, idempotence, hidden folders."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from pyproj import CRS
from pystac.extensions.eo import EOExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from pystac.validation.stac_validator import JsonSchemaSTACValidator

from l2ps.cube.grid import Datacube
from l2ps.cube.write import write_cube
from l2ps.grid import Grid
from l2ps.products import Product
from l2ps.stac import update_catalog

WKT = CRS.from_epsg(3035).to_wkt()
OX, OY, RES, TILE = 4000000.0, 3000000.0, 30.0, 900.0       # 30x30-pixel tiles
BANDS = ("BLUE", "GREEN", "RED", "NIR", "SWIR1", "SWIR2")


def products(row, col, ny=50, nx=60, seed=0):
    """QAI (random cloud/snow bits) + BOA on the cube grid at pixel offset (row, col)."""
    rng = np.random.default_rng(seed)
    g = Grid(WKT, OX + col * RES, OY - row * RES, RES, RES, nx, ny)
    q = (rng.integers(0, 3, (ny, nx)).astype(np.uint16) << 1)
    q |= rng.integers(0, 2, (ny, nx)).astype(np.uint16) << 4
    q[:3, :3] = 1
    boa = [rng.integers(0, 3000, (ny, nx)).astype(np.int16) for _ in BANDS]
    return [Product("QAI", [q], [g], ("QAI",), 1, 1.0, "nearest"),
            Product("BOA", boa, [g] * len(BANDS), BANDS, -9999, 10000.0, "nearest",
                    wavelengths=(0.48, 0.56, 0.66, 0.86, 1.6, 2.2))]


def params(**kw):
    p = {"DO_REPROJ": True, "DO_TILE": True, "RESOLUTION_LANDSAT": RES,
         "RESOLUTION_SENTINEL2": 10.0, "OUTPUT_FORMAT": "COG", "OUTPUT_OVV": True,
         "MAX_CLOUD_COVER_TILE": 100.0, "FILE_TILE": "NULL", "DIR_PROVENANCE": None,
         "NTHREAD": 1, "TILE_SIZE": [TILE, TILE], "PROJECTION": WKT}
    p.update(kw)
    return p


def write(out, level1_id, row, col, date="20200101", seed=0, acquired=None, name="", **kw):
    cube = Datacube.from_origin_map(WKT, OX, OY, TILE, TILE, name=name)
    return write_cube(products(row, col, seed=seed), level1_id=level1_id, date=date,
                      sensor="LND08", params=params(**kw), cubes=[cube], out_dir=out,
                      acquired=acquired)


@pytest.fixture
def offline(monkeypatch):
    """Fail any attempt of pystac to read over the network (schemas must be local)."""
    class NoNetwork(pystac.stac_io.DefaultStacIO):
        def read_text_from_href(self, href: str) -> str:
            if href.startswith(("http://", "https://")):
                raise AssertionError(f"network access attempted: {href}")
            return super().read_text_from_href(href)
    old = pystac.StacIO._default_io
    pystac.StacIO.set_default(NoNetwork)
    yield
    pystac.StacIO._default_io = old


def groups_on_disk(root: Path) -> set[tuple[str, str]]:
    """(tile folder relative to root, '<date>_LEVEL2_<sensor>') of every product file,
    found with a plain glob (truth independent of l2ps.stac)."""
    out = set()
    for f in root.glob("**/*_LEVEL2_*_*.*"):
        rel = f.relative_to(root)
        if any(p.startswith(".") for p in rel.parts) or rel.parts[0] == "stac":
            continue
        out.add((str(rel.parent), "_".join(f.name.split("_")[:3])))
    return out


def all_items(catalog_path: Path):
    cat = pystac.Catalog.from_file(str(catalog_path))
    return cat, [(c, it) for c in cat.get_collections() for it in c.get_items()]


def validate_offline(cat):
    v = JsonSchemaSTACValidator()
    v.validate_core(cat.to_dict(), pystac.STACObjectType.CATALOG, "1.1.0")
    for c in cat.get_collections():
        v.validate_core(c.to_dict(), pystac.STACObjectType.COLLECTION, "1.1.0")
        for it in c.get_items():
            v.validate_core(it.to_dict(), pystac.STACObjectType.ITEM, "1.1.0")


# ------------------------------------------------------------------------------ tests
def test_catalog_validates_offline_and_assets_resolve(tmp_path, offline):
    r1 = write(tmp_path, "LC08_A", 10, 15, acquired=datetime(2020, 1, 1, 10, 20, 30))
    r2 = write(tmp_path, "LC08_C", 0, 0, date="20200105", seed=2,
               acquired=datetime(2020, 1, 5, 9, 8, 7))
    path = update_catalog(tmp_path)
    assert path == tmp_path / "catalog.json"
    cat, items = all_items(path)
    validate_offline(cat)
    # exactly one item per tile x date x sensor found on disk
    assert len(items) == len(groups_on_disk(tmp_path)) == len(r1.tiles_written) + len(r2.tiles_written)
    assert len({it.id for _, it in items}) == len(items)
    for coll, it in items:
        assert it.collection_id == coll.id == "cube"
        for key, asset in it.assets.items():
            href = Path(asset.get_absolute_href())
            assert href.is_file(), href
            assert ".contrib" not in href.parts and ".locks" not in href.parts
            assert FileExtension.ext(asset).size == href.stat().st_size
            assert FileExtension.ext(asset).checksum.startswith("1220")
        # relative links only (self-contained)
        raw = json.loads(Path(it.get_self_href()).read_text())
        assert all(not link["href"].startswith(("/", "http")) for link in raw["links"])
        assert all(not a["href"].startswith("/") for a in raw["assets"].values())
    # roles
    _, it = items[0]
    assert "data" in it.assets["boa"].roles
    assert "metadata" in it.assets["qai"].roles
    assert "overview" in it.assets["ovv"].roles


def test_item_fields_from_the_files(tmp_path):
    write(tmp_path, "LC08_C", 0, 0, date="20200105", seed=2,
          acquired=datetime(2020, 1, 5, 9, 8, 7))
    update_catalog(tmp_path)
    _, items = all_items(tmp_path / "catalog.json")
    it = next(i for _, i in items if i.id == "X0000_Y0000_20200105_LEVEL2_LND08")
    # datetime from the FORCE band metadata Date, not from the file name
    assert it.datetime == datetime(2020, 1, 5, 9, 8, 7, tzinfo=timezone.utc)
    assert it.properties["platform"] == "landsat-8"
    # projection
    proj = ProjectionExtension.ext(it)
    assert proj.epsg == 3035
    assert proj.shape == [30, 30]
    assert proj.transform[:6] == [RES, 0.0, OX, 0.0, -RES, OY]
    assert proj.bbox == [OX, OY - TILE, OX + TILE, OY]
    # eo bands with common names and centre wavelengths
    bands = EOExtension.ext(it).bands
    assert [b.name for b in bands] == list(BANDS)
    assert [b.common_name for b in bands] == ["blue", "green", "red", "nir08", "swir16", "swir22"]
    wl = [b.center_wavelength for b in bands]
    assert all(a < b for a, b in zip(wl, wl[1:])) and 0.43 < wl[0] < 0.52 and 2.1 < wl[-1] < 2.3
    # raster: nodata, scale, data type per band
    rb = RasterExtension.ext(it.assets["boa"]).bands
    assert len(rb) == 6 and all(b.nodata == -9999 and b.scale == pytest.approx(1e-4)
                                and b.data_type == "int16" for b in rb)
    assert RasterExtension.ext(it.assets["qai"]).bands[0].nodata == 1
    # cloud/snow cover from the QAI file, truth computed here with plain bit arithmetic
    with rasterio.open(Path(it.assets["qai"].get_absolute_href())) as ds:
        q = ds.read(1).astype(np.int32)
    valid = (q & 1) == 0
    cloud = ((q & 0b1110) != 0) & valid
    snow = ((q & 0b10000) != 0) & valid
    assert EOExtension.ext(it).cloud_cover == pytest.approx(100 * cloud.sum() / valid.sum(), abs=0.01)
    assert EOExtension.ext(it).snow_cover == pytest.approx(100 * snow.sum() / valid.sum(), abs=0.01)
    # geometry: the tile outline in lon/lat, counter-clockwise
    ring = np.asarray(it.geometry["coordinates"][0])
    area2 = np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1])
    assert area2 > 0
    assert it.bbox[0] <= ring[:, 0].min() and it.bbox[2] >= ring[:, 0].max()


def test_merge_keeps_one_item_per_group_and_updates_touched_tiles(tmp_path, offline):
    r1 = write(tmp_path, "LC08_A", 10, 15, acquired=datetime(2020, 1, 1, 10, 0, 0))
    write(tmp_path, "LC08_C", 0, 0, date="20200105", seed=2)
    update_catalog(tmp_path)
    coll0 = json.loads((tmp_path / "stac/cube/collection.json").read_text())
    untouched = tmp_path / "stac/cube/X0000_Y0000/X0000_Y0000_20200105_LEVEL2_LND08.json"
    before = untouched.read_text()
    # a second image of the same day overlapping the first (merge-on-write)
    r2 = write(tmp_path, "LC08_B", 40, 40, seed=1, acquired=datetime(2020, 1, 1, 10, 0, 5))
    shared = sorted(set(r1.tiles_written) & set(r2.tiles_written))
    assert shared and set(r2.tiles_written) - set(r1.tiles_written)
    update_catalog(tmp_path, tiles=r2.tiles_written)
    cat, items = all_items(tmp_path / "catalog.json")
    validate_offline(cat)
    ids = [it.id for _, it in items]
    assert len(ids) == len(set(ids)) == len(groups_on_disk(tmp_path))
    by_id = {it.id: it for _, it in items}
    for t in shared:
        it = by_id[f"{t}_20200101_LEVEL2_LND08"]
        assert it.properties["l2ps:contributors"] == ["LC08_A", "LC08_B"]
        for a in it.assets.values():      # sizes describe the merged files
            assert FileExtension.ext(a).size == Path(a.get_absolute_href()).stat().st_size
    assert untouched.read_text() == before          # tiles not touched are left alone
    coll = json.loads((tmp_path / "stac/cube/collection.json").read_text())
    b0, b1 = coll0["extent"]["spatial"]["bbox"][0], coll["extent"]["spatial"]["bbox"][0]
    assert b1[2] > b0[2] and b1[1] < b0[1]          # B reaches further east and south
    # a full rescan reproduces exactly the same files (idempotent)
    files = sorted((tmp_path / "stac").rglob("*.json")) + [tmp_path / "catalog.json"]
    snapshot = {p: p.read_bytes() for p in files}
    update_catalog(tmp_path)
    assert sorted((tmp_path / "stac").rglob("*.json")) + [tmp_path / "catalog.json"] == files
    assert all(p.read_bytes() == b for p, b in snapshot.items())


def test_deleted_tile_and_hidden_folders(tmp_path):
    r = write(tmp_path, "LC08_A", 10, 15)
    write(tmp_path, "LC08_B", 40, 40, seed=1)
    # a stray hidden temporary file and an unrelated file are not products
    t0 = tmp_path / r.tiles_written[0]
    (t0 / ".20200101_LEVEL2_LND08_BOA.tmp-1-ab.tif").write_bytes(b"partial")
    (t0 / "notes.txt").write_text("x")
    update_catalog(tmp_path)
    _, items = all_items(tmp_path / "catalog.json")
    hrefs = {Path(a.get_absolute_href()).name for _, it in items for a in it.assets.values()}
    assert not any(h.startswith(".") or h == "notes.txt" for h in hrefs)
    assert not (tmp_path / "stac/cube/.contrib").exists()
    # the user removes one tile: a rescan drops its item, the collection follows
    import shutil
    gone = r.tiles_written[0]
    shutil.rmtree(tmp_path / gone)
    update_catalog(tmp_path)
    _, items = all_items(tmp_path / "catalog.json")
    assert not any(it.id.startswith(gone) for _, it in items)
    assert not (tmp_path / "stac/cube" / gone).exists()
    assert len(items) == len(groups_on_disk(tmp_path))


def test_continental_cube_is_its_own_collection(tmp_path, offline):
    r = write(tmp_path, "LC08_A", 0, 0, name="europe")
    assert all(t.startswith("europe/") for t in r.tiles_written)
    update_catalog(tmp_path, tiles=r.tiles_written)   # no catalog yet: full scan
    cat, items = all_items(tmp_path / "catalog.json")
    validate_offline(cat)
    assert [c.id for c in cat.get_collections()] == ["europe"]
    assert len(items) == len(r.tiles_written)
    coll = next(cat.get_collections())
    prj = Path(coll.assets["datacube-definition"].get_absolute_href())
    assert prj == tmp_path / "europe" / "datacube-definition.prj" and prj.exists()


def test_bad_tile_label_names_it(tmp_path):
    from l2ps.errors import OutputError
    write(tmp_path, "LC08_A", 0, 0)
    update_catalog(tmp_path)
    with pytest.raises(OutputError, match=r"\.\./X0000"):
        update_catalog(tmp_path, tiles=["../X0000_Y0000"])
