"""Readers → TOA → cube on synthetic products of every sensor and delivery form: the cube
holds the generator's TOA truth (written independently of l2ps, per pixel sun angle)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer

from l2ps.level1.sensors import sensor_spec
from l2ps.synth import make_landsat, make_sentinel2

CASES = [
    ("LND05", dict(form="tar.gz", collection=1, date="2005-05-16")),
    ("LND07", dict(form="tar", date="2002-04-20")),
    ("LND08", dict(form="folder", date="2020-05-09")),
    ("LND09", dict(form="tar", date="2022-06-15")),
    ("SEN2A", dict(form="zip", baseline="04.00", date="2021-07-15")),
    ("SEN2B", dict(form="safe", baseline="02.09", date="2020-04-06")),
    ("SEN2C", dict(form="zip", baseline="05.11", date="2025-03-01")),
]


def _make(sensor, kw, out, seed):
    if sensor.startswith("LND"):
        return make_landsat(out, sensor=sensor, size=(150, 150), seed=seed, **kw)
    return make_sentinel2(out, sensor=sensor, size=(180, 180), seed=seed, **kw)


def _index(ds, xs, ys):
    """Row, column of the pixels of ``ds`` containing map points (arrays)."""
    inv = ~ds.transform
    c, r = inv * (np.asarray(xs, dtype=float), np.asarray(ys, dtype=float))
    return np.floor(r).astype(np.int64), np.floor(c).astype(np.int64)


def _truth_name(sensor, domain):
    if sensor.startswith("SEN2"):
        return "B" + sensor_spec(sensor).band(domain).l1_name.lstrip("B")
    return domain


@pytest.fixture(scope="module")
def products(tmp_path_factory):
    out = tmp_path_factory.mktemp("l1")
    return {s: _make(s, kw, out, seed=i + 3) for i, (s, kw) in enumerate(CASES)}


def test_native_toa_cube_equals_truth(workspace, products):
    ws = workspace
    ws.write_queue([(p.path, "QUEUED") for p in products.values()])
    ws.write_parameters(DO_REPROJ="FALSE", DO_TILE="FALSE", DO_ATMO="FALSE", DO_TOPO="FALSE",
                        MAX_CLOUD_COVER_FRAME=100, MAX_CLOUD_COVER_TILE=100, RESAMPLING="NN",
                        OUTPUT_FORMAT="GTiff", NTHREAD=1, IMPULSE_NOISE="FALSE",
                        RES_MERGE="NONE")
    ws.snakemake("--cores", "2")
    statuses = dict(line.split() for line in ws.queue.read_text().splitlines())
    assert set(statuses.values()) == {"DONE"}, [json.loads(f.read_text()).get("reason")
                                                 for f in ws.log.glob("*.json")]
    for sensor, prod in products.items():
        rec = json.loads((ws.log / f"{Path(prod.path).name}.json").read_text())
        toa_file = next(f["path"] for f in rec["files"] if f["path"].endswith("_TOA.tif"))
        qai_file = toa_file.replace("_TOA.tif", "_QAI.tif")
        with rasterio.open(toa_file) as ds, rasterio.open(qai_file) as dq:
            names = ds.descriptions
            assert names == sensor_spec(sensor).output_domains
            qai = dq.read(1)
            cube = ds.read()
            tr = ds.transform
        valid = (qai & 1) == 0
        assert valid.mean() > 0.3, sensor
        truth_dir = Path(prod.truth_dir)
        with rasterio.open(truth_dir / "nodata.tif") as t:
            nodata_truth = t.read(1).astype(bool)
        with rasterio.open(truth_dir / "saturated.tif") as t:
            saturated = t.read(1).astype(bool)
        worst = 0
        for b, domain in enumerate(names):
            with rasterio.open(truth_dir / f"toa_{_truth_name(sensor, domain)}.tif") as t:
                truth = t.read(1)
                # nearest truth pixel of every cube pixel centre (same CRS, maybe coarser)
                rows, cols = np.mgrid[0:cube.shape[1], 0:cube.shape[2]]
                xs, ys = tr * (cols + 0.5, rows + 0.5)
                r, c = _index(t, xs.ravel(), ys.ravel())
                t_on = truth[np.clip(r, 0, t.height - 1), np.clip(c, 0, t.width - 1)].reshape(rows.shape)
            ok = valid & ~saturated & (t_on > 0) & (t_on < 30000)
            diff = np.abs(cube[b].astype(np.int32) - t_on)[ok]
            worst = max(worst, int(np.percentile(diff, 99.9)))
            # DN rounding of the product: 1 DN = 1 count for S2, ~0.2 counts for OLI,
            # up to ~100 counts for the 8-bit TM/ETM+ (1 DN ≈ 0.4–1 % reflectance)
            tol = 2 if sensor.startswith("SEN2") else (3 if sensor in ("LND08", "LND09") else 100)
            assert np.percentile(diff, 99.9) <= tol, (sensor, domain, np.percentile(diff, 99.9))
        # every pixel outside the footprint is nodata in the cube, and most inside are valid
        assert nodata_truth.shape == valid.shape
        assert not valid[nodata_truth].any(), sensor
        assert valid[~nodata_truth].mean() > 0.97, (sensor, valid[~nodata_truth].mean())


def test_tiled_reprojected_cube_picks_nearest_truth(workspace, products):
    """EPSG:3035 cube, 30 km tiles, NN: every valid cube pixel equals the truth pixel nearest
    to its centre (warp + tiling + chip offsets)."""
    from rasterio.crs import CRS
    ws = workspace
    prod = products["LND08"]
    ws.write_queue([(prod.path, "QUEUED")])
    ws.write_parameters(PROJECTION=CRS.from_epsg(3035).to_wkt(), TILE_SIZE="30000 30000",
                        RESOLUTION_LANDSAT=30, DO_ATMO="FALSE", DO_TOPO="FALSE",
                        MAX_CLOUD_COVER_FRAME=100, MAX_CLOUD_COVER_TILE=100, RESAMPLING="NN",
                        NTHREAD=1)
    ws.snakemake("--cores", "1")
    rec = json.loads((ws.log / f"{Path(prod.path).name}.json").read_text())
    assert rec["status"] == "DONE" and rec["tiles"]
    checked = 0
    with rasterio.open(Path(prod.truth_dir) / "toa_NIR.tif") as t:
        truth = t.read(1)
        to_utm = Transformer.from_crs(3035, t.crs, always_xy=True)
        for f in rec["files"]:
            if not f["path"].endswith("_TOA.tif"):
                continue
            with rasterio.open(f["path"]) as ds:
                nir = ds.read(ds.descriptions.index("NIR") + 1)
                rows, cols = np.nonzero(nir != -9999)
                xs, ys = ds.transform * (cols + 0.5, rows + 0.5)
            ux, uy = to_utm.transform(xs, ys)
            r, c = _index(t, ux, uy)
            inside = (r >= 1) & (r < t.height - 1) & (c >= 1) & (c < t.width - 1)
            got = nir[rows, cols][inside].astype(np.int32)
            exp = truth[r[inside], c[inside]].astype(np.int32)
            # exact pick except where a pixel centre lies within 1e-3 px of a boundary
            assert np.mean(np.abs(got - exp) <= 3) > 0.995
            checked += inside.sum()
    assert checked > 5000
