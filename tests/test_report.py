"""The run report (l2ps.report) and the `report` rule (docs/report-stac.md; spec 03 §3.7)."""
from __future__ import annotations

import csv
import json
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from l2ps import report as R

LANDSAT = "LC08_L1TP_193024_202107{:02d}_20210710_02_T1.tar"


def rec(image_id, status="DONE", **kw):
    d = {"image": f"/data/{image_id}", "image_id": image_id, "status": status,
         "reason": "", "version": "0.1.0", "seconds": 61.0, "peak_rss_mb": 900.0}
    d.update(kw)
    return d


def fake_records(dir_log: Path, ovv: list[str] | None = None) -> dict[str, dict]:
    recs = {
        "LC08_L1TP_193024_20210701_20210710_02_T1.tar": rec(
            "LC08_L1TP_193024_20210701_20210710_02_T1.tar", sensor="LND08", date="2021-07-01",
            data_cover=99.0, cloud_cover=10.0, snow_cover=1.0, water_cover=5.0, aod550=0.12,
            tiles=["X0000_Y0000", "X0001_Y0000"],
            files=[{"path": p, "mode": "create"} for p in (ovv or [])],
            stages={"read": {"seconds": 2.0, "cpu_seconds": 1.5, "peak_rss_mb": 500.0}},
            log_line="dc:  99.00%. Success! Processing time: 01 mins 01 secs"),
        "S2A_MSIL1C_20210705T102021_N0301_R065_T32UPC_20210705T123456.zip": rec(
            "S2A_MSIL1C_20210705T102021_N0301_R065_T32UPC_20210705T123456.zip",
            sensor="SEN2A", date="2021-07-05", data_cover=80.0, cloud_cover=95.0,
            snow_cover=0.0, water_cover=0.0, skipped=True, tiles=[],
            reason="too cloudy: 95.00 % > MAX_CLOUD_COVER_FRAME 90", seconds=20.0),
        "LE07_L1TP_193024_20200802_20200828_02_T1.tar": rec(
            "LE07_L1TP_193024_20200802_20200828_02_T1.tar", status="FAIL",
            reason="Level1Error: <MTL> missing band B3 & more", seconds=1.0),
        "S2B_MSIL1C_20200803T102021_N0301_R065_T32UPC_20200803T123456.zip": rec(
            "S2B_MSIL1C_20200803T102021_N0301_R065_T32UPC_20200803T123456.zip",
            status="FAIL", sensor="SEN2B", date="2020-08-03",
            reason="co-registration failed: 3 tie points (need 12)", seconds=300.0),
        "LC09_L1TP_193024_20210101_20210110_02_T1.tar": rec(
            "LC09_L1TP_193024_20210101_20210110_02_T1.tar", sensor="LND09", date="2021-01-01",
            data_cover=50.0, cloud_cover=30.0, snow_cover=20.0, water_cover=0.0,
            tiles=["X0000_Y0000"], log_line="AOD: 0.2500. 1 product(s) written. Success!"),
    }
    dir_log.mkdir(parents=True, exist_ok=True)
    for name, r in recs.items():
        (dir_log / f"{name}.json").write_text(json.dumps(r))
    (dir_log / "broken.tar.json").write_text("{not json")      # unreadable record
    (dir_log / "settings.json").write_text(json.dumps({"foo": 1}))   # not a record
    return recs


def table_rows(html: str) -> list[str]:
    return re.findall(r'<tr class="s-[^"]*">.*?</tr>', html, re.S)


# --------------------------------------------------------------------------- unit
def test_report_rows_failures_first_counts_and_csv(tmp_path):
    recs = fake_records(tmp_path)
    out = R.write_report(tmp_path, current=["LE07_L1TP_193024_20200802_20200828_02_T1.tar"])
    assert out.parent == tmp_path / "report"
    assert re.fullmatch(r"l2ps-report-\d{8}-\d{6}\.html", out.name)
    html = out.read_text()
    rows = table_rows(html)
    assert len(rows) == len(recs) + 1                 # + the unreadable record
    # failures first: every Error/Coreg row before any Too cloudy/Success row
    kinds = [re.search(r'class="s-(\w+)', r).group(1) for r in rows]
    first_ok = min(i for i, k in enumerate(kinds) if k in ("Too", "Success"))
    assert all(k in ("Error", "Coregistration") for k in kinds[:first_ok])
    assert kinds[:first_ok] and all(k in ("Too", "Success") for k in kinds[first_ok:])
    # reasons, escaped
    assert "Level1Error: &lt;MTL&gt; missing band B3 &amp; more" in html
    assert "<MTL>" not in html
    assert "co-registration failed: 3 tie points" in html
    assert "unreadable record" in html
    # counts (FORCE classes)
    counts = dict(re.findall(r'data-status="([^"]+)">(\d+)<', html))
    assert counts == {"Success": "2", "Too cloudy": "1", "Error": "2",
                      "Coregistration failed": "1"}
    assert "★" in rows[0] or any("★" in r for r in rows[:3])
    assert "<svg" in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    # the CSV holds the same table in the same order
    with open(out.with_suffix(".csv")) as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(rows)
    ids = [re.search(r"</span>[^<]*</td><td>([^<]+)</td>", r).group(1) for r in rows]
    assert [t["image_id"] for t in table] == ids
    t = {x["image_id"]: x for x in table}
    assert t["LC09_L1TP_193024_20210101_20210110_02_T1.tar"]["aod"] == "0.25"   # from log line
    assert t["LC09_L1TP_193024_20210101_20210110_02_T1.tar"]["clear_scene"] == "50.00"
    assert t["LC08_L1TP_193024_20210701_20210710_02_T1.tar"]["clear_land"] == "84.00"
    # fallbacks for a record without metadata: sensor and date from the image id
    le07 = t["LE07_L1TP_193024_20200802_20200828_02_T1.tar"]
    assert (le07["sensor"], le07["date"], le07["status"]) == ("LND07", "2020-08-02", "Error")
    # index.html points to the latest report
    index = (tmp_path / "report" / "index.html").read_text()
    assert f'url={out.name}"' in index


def test_period_table_and_five_numbers():
    rows = [R.ImageRow("a", "Success", "DONE", sensor="LND08", date="2021-07-01", tiles=3),
            R.ImageRow("b", "Success", "DONE", sensor="LND08", date="2021-08-01", tiles=2),
            R.ImageRow("c", "Error", "FAIL", sensor="SEN2A", date="2021-08-09"),
            R.ImageRow("d", "Success", "DONE", sensor="SEN2A", date="2020-01-01", tiles=9)]
    periods, sensors, table = R.period_table(rows, "year")
    assert periods == ["2020", "2021"] and sensors == ["LND08", "SEN2A"]
    assert table[("2021", "LND08")] == (2, 5) and table[("2021", "SEN2A")] == (1, 0)
    assert table[("2020", "SEN2A")] == (1, 9) and ("2020", "LND08") not in table
    _, _, monthly = R.period_table(rows, "month")
    assert monthly[("2021-08", "LND08")] == (1, 2)
    v = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    s = R.five_numbers(v + [None])
    assert s["n"] == 8 and s["min"] == 1.0 and s["max"] == 9.0
    assert s["q1"] == pytest.approx(np.percentile(v, 25))
    assert s["median"] == pytest.approx(np.median(v))
    assert s["q3"] == pytest.approx(np.percentile(v, 75))
    assert R.five_numbers([None]) is None


def test_quicklooks_link_existing_ovv_files(tmp_path):
    from datetime import datetime as dt

    from test_stac import write
    cube = tmp_path / "cube"
    res = write(cube, "LC08_A", 10, 15, acquired=dt(2020, 1, 1))
    ovv = [str(f.path) for f in res.files if str(f.path).endswith("_OVV.jpg")]
    assert len(ovv) == len(res.tiles_written)
    fake_records(tmp_path / "log", ovv=ovv + [str(cube / "X0099_Y0099" / "gone_OVV.jpg")])
    out = R.write_report(tmp_path / "log")
    html = out.read_text()
    srcs = re.findall(r'<img loading="lazy"[^>]* src="([^"]+)"', html)
    assert len(srcs) == len(ovv)                       # the missing file is not linked
    assert all((out.parent / s).resolve().is_file() for s in srcs)


def test_report_is_written_atomically(tmp_path, monkeypatch):
    fake_records(tmp_path)
    out = tmp_path / "report" / "l2ps-report-20200101-000000.html"
    R.write_report(tmp_path, out)
    before = out.read_text()
    (tmp_path / "new.tar.json").write_text(json.dumps(rec("new.tar", status="FAIL",
                                                          reason="boom")))

    def fail(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(R.os, "replace", fail)
    with pytest.raises(OSError):
        R.write_report(tmp_path, out)
    assert out.read_text() == before                   # old report untouched
    assert not [p for p in (tmp_path / "report").iterdir() if p.name.endswith(".tmp")]


def test_report_of_empty_log_dir(tmp_path):
    out = R.write_report(tmp_path, tmp_path / "r.html")
    html = out.read_text()
    assert table_rows(html) == [] and "no values" in html
    assert not (tmp_path / "report").exists()          # index only in DIR_LOG/report


# --------------------------------------------------------------------------- workflow
def _queue(ws, statuses):
    (ws.root / "l1").mkdir(exist_ok=True)
    entries = []
    for i, st in enumerate(statuses):
        p = ws.root / "l1" / LANDSAT.format(i + 20)     # not one of fake_records()
        p.write_bytes(b"not really a product")
        entries.append((p, st))
    ws.write_queue(entries)
    return entries


def _jobs(stdout: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", stdout, re.M)}


def test_dry_run_has_one_report_job_only_when_something_is_queued(workspace):
    _queue(workspace, ["QUEUED", "QUEUED", "DONE"])
    workspace.write_parameters()
    jobs = _jobs(workspace.snakemake("-n").stdout)
    assert jobs.get("level2") == 2 and jobs.get("report") == 1
    _queue(workspace, ["DONE", "FAIL"])
    res = workspace.snakemake("-n")
    jobs = _jobs(res.stdout)
    assert not jobs.get("report") and not jobs.get("level2")


def test_report_rule_runs_at_the_end_of_a_run(workspace):
    from test_stac import write
    entries = _queue(workspace, ["QUEUED", "DONE"])
    workspace.write_parameters()
    # an earlier image: its record and tiles are already there
    res = write(workspace.cube, "LC08_OLD", 10, 15, acquired=datetime(2021, 7, 1))
    fake_records(workspace.log, ovv=[str(f.path) for f in res.files
                                     if str(f.path).endswith("_OVV.jpg")])
    workspace.snakemake("--cores", "1")
    reports = sorted((workspace.log / "report").glob("l2ps-report-*.html"))
    assert len(reports) == 1 and reports[0].with_suffix(".csv").exists()
    html = reports[0].read_text()
    rows = table_rows(html)
    assert len(rows) == 7                    # 5 fake + 1 unreadable + the queued image
    queued = entries[0][0].name
    row = next(r for r in rows if queued in r)
    assert 's-Error' in row and "★" in row
    assert rows.index(row) < 3                # failures first
    index = (workspace.log / "report" / "index.html").read_text()
    assert reports[0].name in index
    # the STAC catalog was built (no catalog before: full scan of the cube)
    cat = json.loads((workspace.cube / "catalog.json").read_text())
    assert any(l["rel"] == "child" for l in cat["links"])
    items = list((workspace.cube / "stac" / "cube").glob("*/*.json"))
    assert len(items) == len(res.tiles_written)
