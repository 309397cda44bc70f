"""Real-data tier: every Level-1 product in ../shared/testdata runs end to end through the
workflow with the settings its README gives (L2PS_TESTDATA)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

PRODUCTS = [
    "landsat/LC08_L1GT_089074_20220506_20220512_02_T2",
    "landsat/LC08_L1TP_090084_20160121_20170405_01_T1.tar.gz",
    "sentinel2/S2A_MSIL1C_20180629T000241_N0206_R030_T56JMM_20180629T012042.zip",
]
README_SETTINGS = dict(RESOLUTION_LANDSAT=3000, RESOLUTION_SENTINEL2=250,
                       TILE_SIZE="150000 150000", TIER=2, MAX_CLOUD_COVER_FRAME=100,
                       MAX_CLOUD_COVER_TILE=100, DO_ATMO="FALSE", DO_TOPO="FALSE",
                       PROJECTION="GLANCE7", NTHREAD=1)


@pytest.fixture
def real_workspace(workspace, testdata):
    workspace.write_queue([(testdata / p, "QUEUED") for p in PRODUCTS])
    return workspace


def test_every_real_product_runs_end_to_end(real_workspace):
    ws = real_workspace
    ws.write_parameters(**README_SETTINGS)
    ws.snakemake("--cores", "2")
    statuses = dict(line.split() for line in ws.queue.read_text().splitlines())
    assert set(statuses.values()) == {"DONE"}, statuses
    # all three are in Australia: one GLANCE7 continent folder with its .prj
    prj = ws.cube / "oceania" / "datacube-definition.prj"
    assert prj.exists()
    sensors = {"LND08": 0, "SEN2A": 0}
    for rec_file in ws.log.glob("*.json"):
        rec = json.loads(rec_file.read_text())
        assert rec["status"] == "DONE"
        assert rec["tiles"], rec
        for f in rec["files"]:
            path = f["path"]
            assert "/oceania/X" in path
            if path.endswith("_TOA.tif"):
                sensors[rec["sensor"]] += 1
                with rasterio.open(path) as ds:
                    assert ds.dtypes[0] == "int16" and ds.nodata == -9999
                    assert ds.res == ((3000.0, 3000.0) if rec["sensor"] == "LND08" else (250.0, 250.0))
                    a = ds.read(1)
                    v = a[a != -9999]
                    # TOA reflectance of a real scene: physically sensible range
                    if v.size:
                        assert 0 < np.median(v) < 10000
                    assert ds.descriptions[0] == "BLUE"
    assert sensors["LND08"] >= 2 and sensors["SEN2A"] >= 1
    # every DONE image has its run record (the declared output) and a log
    assert len(list(ws.log.glob("records/*/run-0001.json"))) == 3


def test_force_defaults_reject_the_tier2_product(real_workspace, testdata):
    ws = real_workspace
    ws.write_queue([(testdata / PRODUCTS[0], "QUEUED")])
    ws.write_parameters(**{**README_SETTINGS, "TIER": 1})
    ws.snakemake("--cores", "1")
    assert ws.queue.read_text().split()[1] == "FAIL"
    rec = json.loads((ws.log / f"{(testdata / PRODUCTS[0]).name}.json").read_text())
    assert "Unacceptable tier" in rec["reason"] and "tier 2" in rec["reason"]
    log = (ws.log / f"{(testdata / PRODUCTS[0]).name}.log").read_text()
    assert "Core processing signaled FAIL" in log
    assert not list(ws.cube.rglob("*.tif"))
