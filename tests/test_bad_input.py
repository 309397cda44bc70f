"""The bad-input catalogue (docs/running.md "Failures"): every broken or unacceptable input
gives a clear, specific reason in the image's log (``DIR_LOG/<image>.log``) and record
(``<image>.json``), FAIL in the queue, exit status 0 (a retry would fail the same way),
and leaves the cube byte-identical; a run goes on with the other images.

The broken inputs are made from small synthetic products (l2ps.synth). A parameter-file
error is not an image's fault: the workflow refuses to start and marks nothing FAIL.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test_faults import (file_hashes, new_workspace, queue_status, settings,
                         visible_files)


def write_prm(ws, path: Path, **extra) -> Path:
    """A parameter file for the workspace ``ws`` with some values changed."""
    from l2ps.demo import set_parameter_values
    from l2ps.params import write_skeleton
    write_skeleton(path)
    vals = {k: str(v) for k, v in ws.dirs.items()}
    vals["FILE_QUEUE"] = str(ws.queue)
    vals.update(settings(**extra))
    path.write_text(set_parameter_values(path.read_text(), vals))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A workspace whose cube already holds one good image (so that "unchanged" means
    something)."""
    from l2ps.job import run_job
    from l2ps.synth import make_landsat
    root = tmp_path_factory.mktemp("bad-input")
    good = Path(make_landsat(root / "good", sensor="LND08", size=(60, 60), form="tar",
                             seed=11).path)
    ws = new_workspace(root / "ws", [good])
    assert run_job(good, ws.prm) == 0
    assert visible_files(ws.cube)
    ws.level1 = root / "level1"
    return ws


def expect_fail(ws, image: Path, *expected: str, prm: Path | None = None) -> dict:
    """Queue ``image``, run its job as `l2ps level2` does, and check the outcome."""
    from l2ps.job import run_job
    from l2ps.queue import append_entries
    append_entries(ws.queue, [image])
    before = file_hashes(ws.cube)
    assert run_job(image, prm or ws.prm) == 0            # an input error is no crash
    assert queue_status(ws.queue)[image.name] == "FAIL"
    rec = json.loads((ws.log / f"{image.name}.json").read_text())
    assert rec["status"] == "FAIL"
    for text in expected:
        assert text in rec["reason"], rec["reason"]
    log = (ws.log / f"{image.name}.log").read_text()
    assert "Core processing signaled FAIL" in log
    assert rec["reason"].splitlines()[0] in log
    assert "Traceback" not in log                        # a reason, not a stack trace
    assert file_hashes(ws.cube) == before                # nothing in the cube changed
    assert not [d for d in ws.dirs["DIR_TEMP"].iterdir() if d.name.startswith("l2ps-")]
    return rec


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ----------------------------------------------------------------------------- containers
def test_truncated_tar(base):
    from l2ps.synth import make_landsat
    p = Path(make_landsat(base.level1 / "tar", sensor="LND08", size=(60, 60), form="tar",
                          seed=1, date="2021-07-16").path)
    cut_in_half(p)
    expect_fail(base, p, str(p), "corrupt archive")


def test_truncated_targz(base):
    from l2ps.synth import make_landsat
    p = Path(make_landsat(base.level1 / "targz", sensor="LND05", size=(60, 60),
                          form="tar.gz", collection=1, seed=1, date="1995-07-15").path)
    cut_in_half(p)
    expect_fail(base, p, str(p), "corrupt archive")


def test_truncated_zip(base):
    from l2ps.synth import make_sentinel2
    p = Path(make_sentinel2(base.level1 / "zip", sensor="SEN2A", size=(60, 60), form="zip",
                            seed=1).path)
    cut_in_half(p)
    expect_fail(base, p, str(p), "corrupt archive")


def test_jp2_cut_in_half(base):
    from l2ps.synth import make_sentinel2
    p = Path(make_sentinel2(base.level1 / "jp2", sensor="SEN2B", size=(60, 60), form="safe",
                            seed=1).path)
    (band,) = p.rglob("IMG_DATA/*_B04.jp2")
    cut_in_half(band)
    expect_fail(base, p, str(band), "cannot be read")


# ----------------------------------------------------------------------------- metadata
def _landsat_folder(base, name: str, **kw) -> Path:
    from l2ps.synth import make_landsat
    return Path(make_landsat(base.level1 / name, size=(60, 60), form="folder", **kw).path)


def test_mtl_missing_a_key(base):
    p = _landsat_folder(base, "mtl", sensor="LND09", seed=1)
    (mtl,) = p.glob("*_MTL.txt")
    mtl.write_text("".join(line for line in mtl.read_text().splitlines(True)
                           if "REFLECTANCE_MULT_BAND_4 " not in line))
    expect_fail(base, p, str(mtl), "REFLECTANCE_MULT_BAND_4", "missing")


def test_band_file_missing(base):
    p = _landsat_folder(base, "band", sensor="LND07", seed=1, date="2001-07-15")
    (b4,) = p.glob("*_B4.TIF")
    b4.unlink()
    expect_fail(base, p, b4.name, "band 4", "not found")


def test_unknown_spacecraft(base):
    p = _landsat_folder(base, "spacecraft", sensor="LND05", seed=1, date="1995-07-15")
    (mtl,) = p.glob("*_MTL.txt")
    mtl.write_text(mtl.read_text().replace('"LANDSAT_5"', '"LANDSAT_10"'))
    expect_fail(base, p, str(mtl), "SPACECRAFT_ID", "LANDSAT_10")


def test_tier2_product_with_tier_1(base):
    from l2ps.synth import make_landsat
    p = Path(make_landsat(base.level1 / "tier2", sensor="LND08", size=(60, 60), form="tar",
                          tier="T2", seed=1, date="2021-07-17").path)
    prm = write_prm(base, base.root / "tier1.prm", TIER="1")
    expect_fail(base, p, str(p), "tier 2", "TIER = 1", prm=prm)


def test_image_outside_every_continent_of_the_grid(base):
    """GLANCE7-EU covers Europe only; path/row 090/084 is in Australia."""
    from l2ps.synth import make_landsat
    p = Path(make_landsat(base.level1 / "australia", sensor="LND08", size=(60, 60),
                          form="tar", path=90, row=84, seed=1).path)
    prm = write_prm(base, base.root / "glance7-eu.prm", PROJECTION="GLANCE7-EU")
    expect_fail(base, p, "GLANCE7-EU", "outside", prm=prm)


def test_dem_that_does_not_cover_the_image(base):
    import rasterio
    from affine import Affine
    try:
        import l2ps.aux.dem  # noqa: F401
    except ImportError:
        pytest.xfail("l2ps.aux.dem is not importable yet")
    from l2ps.synth import make_landsat
    p = Path(make_landsat(base.level1 / "dem", sensor="LND08", size=(60, 60), form="tar",
                          seed=1, date="2021-07-18").path)
    dem = base.root / "dem_africa.tif"                 # 20–20.5° E at the equator
    with rasterio.open(dem, "w", driver="GTiff", width=50, height=50, count=1, dtype="int16",
                       crs="EPSG:4326", transform=Affine(0.01, 0, 20.0, 0, -0.01, 0.0),
                       nodata=-32767) as ds:
        ds.write(np.full((1, 50, 50), 300, np.int16))
    prm = write_prm(base, base.root / "dem.prm", DO_TOPO="TRUE", FILE_DEM=str(dem))
    expect_fail(base, p, str(dem), "does not cover", prm=prm)


def test_queue_entry_that_does_not_exist(base):
    p = base.level1 / "LC08_L1TP_193024_20210719_20210725_02_T1.tar"
    assert not p.exists()
    expect_fail(base, p, str(p), "not found")


# ----------------------------------------------------------------------------- parameters
def test_parameter_key_typo_is_reported_by_the_job(base):
    """`l2ps level2` with a typo'd key: the reason names the file, the key and the
    probable intent; no queue line is touched (the image is not at fault)."""
    from l2ps.job import run_job
    from l2ps.synth import make_landsat
    p = Path(make_landsat(base.level1 / "typo", sensor="LND08", size=(60, 60), form="tar",
                          seed=1, date="2021-07-20").path)
    from l2ps.queue import append_entries
    append_entries(base.queue, [p])
    prm = write_prm(base, base.root / "typo.prm", CLOUD_BUFER="300")
    log = base.root / "typo-job.log"
    before = file_hashes(base.cube)
    assert run_job(p, prm, log=log) == 0
    text = log.read_text()
    assert "CLOUD_BUFER" in text and "CLOUD_BUFFER" in text and str(prm) in text
    assert "Core processing signaled FAIL" in text
    assert queue_status(base.queue)[p.name] == "QUEUED"
    assert file_hashes(base.cube) == before


def test_parameter_key_typo_stops_the_workflow_before_any_job(tmp_path, base):
    ws = new_workspace(tmp_path, [base.level1 / "whatever.tar"])
    write_prm(ws, ws.prm, CLOUD_BUFER="300")
    res = ws.snakemake("--cores", "1", check=False)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "CLOUD_BUFER" in out and "did you mean CLOUD_BUFFER" in out
    assert set(queue_status(ws.queue).values()) == {"QUEUED"}
    assert not visible_files(ws.cube)


# ----------------------------------------------------------------------------- workflow
def test_empty_queue_is_nothing_to_do(tmp_path):
    ws = new_workspace(tmp_path, [])
    res = ws.snakemake("--cores", "1")
    out = res.stdout + res.stderr
    assert "nothing to do" in out and "the queue is empty" in out
    assert "level2" not in out.split("Job stats:")[-1]
    ws.write_queue([(tmp_path / "LC08_L1TP_193024_20210715_20210721_02_T1.tar", "DONE")])
    res = ws.snakemake("--cores", "1")
    assert "nothing to do" in res.stdout + res.stderr and "1 DONE" in res.stdout + res.stderr


def test_a_run_goes_on_with_the_other_images(tmp_path):
    """Bad images among good ones in one `snakemake` run: exit 0, every bad image FAIL
    with its reason, the good ones DONE, and the summary says where the reasons are."""
    from l2ps.synth import make_landsat, make_sentinel2
    l1 = tmp_path / "level1"
    good = [Path(make_landsat(l1 / "g1", sensor="LND08", size=(60, 60), form="tar",
                              seed=21).path),
            Path(make_sentinel2(l1 / "g2", sensor="SEN2B", size=(60, 60), form="zip",
                                seed=22).path)]
    trunc = Path(make_landsat(l1 / "b1", sensor="LND09", size=(60, 60), form="tar",
                              seed=23).path)
    cut_in_half(trunc)
    zipped = Path(make_sentinel2(l1 / "b2", sensor="SEN2A", size=(60, 60), form="zip",
                                 seed=24).path)
    cut_in_half(zipped)
    missing = l1 / "LC08_L1TP_193024_20210721_20210727_02_T1.tar"
    bad = [trunc, zipped, missing]
    ws = new_workspace(tmp_path / "ws", [good[0], trunc, zipped, missing, good[1]])
    res = ws.snakemake("--cores", "2")
    out = res.stdout + res.stderr
    st = queue_status(ws.queue)
    assert {p.name: st[p.name] for p in good} == {p.name: "DONE" for p in good}
    assert {p.name: st[p.name] for p in bad} == {p.name: "FAIL" for p in bad}
    for p in bad:
        rec = json.loads((ws.log / f"{p.name}.json").read_text())
        assert str(p) in rec["reason"]
    assert "2 DONE, 3 FAIL" in out and "reasons of failures" in out
    assert any("LND08" in f.name for f in visible_files(ws.cube))
    assert any("SEN2B" in f.name for f in visible_files(ws.cube))
