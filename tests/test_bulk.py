"""Many images: SLURM submissions (profiles/slurm, checked without SLURM) and, in the slow
tier, a queue of more than 200 small synthetic images of every sensor, with overlapping
same-day footprints and broken products among them (docs/running.md).

SLURM is not available here. The profile is checked (a) by a dry-run, whose output lists
the jobs and group jobs with their resources, and (b) by a run against fake SLURM
commands (``sbatch`` records its arguments and prints a job id, the query tools print
nothing), which shows the real ``sbatch`` calls: --cpus-per-task, --mem, -t, -p, -A per
submission. The run is killed as soon as everything is submitted.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO
from test_faults import (cube_pixels, assert_same_pixels, child_env, new_workspace,
                         queue_status, temp_leftovers)

SLURM = REPO / "profiles" / "slurm"
MEM = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["mem_mb"]
LANDSAT = "LC08_L1TP_193024_202107{:02d}_20210720_02_T1.tar"
S2 = "S2A_MSIL1C_20210705T102021_N0400_R065_T32UPC_20210705T1234{:02d}.zip"


def dummy_queue(ws_root: Path, n_landsat: int, n_s2: int) -> list[Path]:
    """Empty files with Level-1 names: enough for dry-runs and submissions."""
    d = ws_root / "l1"
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n_landsat):
        out.append(d / LANDSAT.format(i + 1))
    for i in range(n_s2):
        out.append(d / S2.format(i + 1))
    for p in out:
        p.write_bytes(b"")
    return out


def family(name: str) -> str:
    return "sentinel2" if name.startswith("S2") else "landsat"


def dry_run_groups(stdout: str) -> list[list[dict]]:
    """The group jobs of a dry-run, each a list of its jobs (image, resources)."""
    groups: list[list[dict]] = []
    current: list[dict] | None = None
    job: dict | None = None
    for line in stdout.splitlines():
        if "Group job" in line:
            current = []
            groups.append(current)
        elif re.match(r"^\S", line) and not line.startswith("["):
            current = None                           # a top-level line ends the group
        m = re.search(r"wildcards: image=([^,\s]+)", line)
        if m and current is not None:
            job = {"image": m.group(1)}
            current.append(job)
        m = re.search(r"resources: (.*)$", line)
        if m and job is not None and current is not None:
            job["resources"] = dict(kv.split("=", 1) for kv in m.group(1).split(", "))
            job = None
    return groups


# =============================================================================== dry-run
def test_slurm_dry_run_lists_groups_and_resources(tmp_path):
    images = dummy_queue(tmp_path, 11, 6)
    ws = new_workspace(tmp_path, images, NTHREAD="2")
    res = ws.snakemake("--profile", str(SLURM), "-n", "--groups", "level2=l2",
                       "--group-components", "l2=8")
    groups = dry_run_groups(res.stdout)
    assert len(groups) == math.ceil(17 / 8)
    listed = [j["image"] for g in groups for j in g]
    assert sorted(listed) == sorted(p.name for p in images)      # each image once
    for g in groups:
        assert 1 <= len(g) <= 8
        for j in g:
            r = j["resources"]
            assert int(r["mem_mb"]) == MEM[family(j["image"])]
            assert r["slurm_partition"] == "compute" and r["slurm_account"] == "my_account"
            assert r["runtime"] == "60"


# ====================================================================== fake submissions
FAKE_SBATCH = """#!/bin/sh
# fake sbatch: record the arguments (one per line), print a job id (as --parsable does)
printf '%s\\n' "$@" > "$FAKE_SLURM_DIR/call-$$"
echo $$
"""
FAKE_QUIET = "#!/bin/sh\nexit 0\n"


def fake_slurm(tmp_path: Path) -> dict:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch-calls"
    calls.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    for tool in ("sacct", "squeue", "sinfo", "scontrol", "sacctmgr", "sshare", "scancel"):
        (bin_dir / tool).write_text(FAKE_QUIET)
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SLURM_DIR": str(calls)}


def submissions(ws, env: dict, expected: int, *args: str, timeout: float = 300) -> list[dict]:
    """Run the workflow with the SLURM profile against fake SLURM until ``expected``
    sbatch calls were made, then kill it; return the parsed calls."""
    calls = Path(env["FAKE_SLURM_DIR"])
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(ws.root),
           "--profile", str(SLURM), *args, "--config", f"parameter_file={ws.prm}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=child_env(**env))
    t0 = time.time()
    try:
        while len(list(calls.glob("call-*"))) < expected:
            if proc.poll() is not None:
                raise AssertionError(f"snakemake ended ({proc.returncode}):\n"
                                     f"{proc.stdout.read()[-4000:]}")
            if time.time() - t0 > timeout:
                raise AssertionError("not all jobs were submitted in time")
            time.sleep(0.3)
        time.sleep(3)                    # a further (double) submission would show now
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)
    out = []
    for f in sorted(calls.glob("call-*")):
        argv = f.read_text().splitlines()
        opts = {}
        for a in argv:
            m = re.match(r"^--?([\w-]+)[= ](.*)$", a)
            if m:
                opts[m.group(1)] = m.group(2)
        joined = " ".join(argv)
        for flag in ("-p", "-A", "-t", "--mem"):
            m = re.search(rf"(?:^| ){flag} (\S+)", joined)
            if m:
                opts[flag.lstrip("-")] = m.group(1)
        images = re.findall(r"level2:image=([^,'\\\s]+)", joined)
        out.append({"opts": opts, "images": images, "argv": argv})
    return out


def test_slurm_submissions_one_per_image(tmp_path):
    images = dummy_queue(tmp_path, 3, 2)
    ws = new_workspace(tmp_path, images, NTHREAD="3")
    subs = submissions(ws, fake_slurm(tmp_path), 5)
    assert len(subs) == 5
    assert sorted(i for s in subs for i in s["images"]) == sorted(p.name for p in images)
    for s in subs:
        (img,) = s["images"]
        o = s["opts"]
        assert o["cpus-per-task"] == "3"                        # NTHREAD
        assert int(o["mem"]) == MEM[family(img)]                # per sensor family
        assert (o["p"], o["A"], o["t"]) == ("compute", "my_account", "60")


def test_slurm_grouped_submissions_pack_memory(tmp_path):
    """--groups/--group-components put many images into one submission, each image in
    exactly one; with a per-submission limit (--resources mem_mb, --cores) the group
    runs in layers and asks for the memory and cores of its widest layer and the wall time
    of all layers."""
    images = dummy_queue(tmp_path, 10, 6)
    ws = new_workspace(tmp_path, images, NTHREAD="2")
    env = fake_slurm(tmp_path)
    subs = submissions(ws, env, 2, "--groups", "level2=l2", "--group-components", "l2=8",
                       "--resources", "mem_mb=15000", "--cores", "8")
    assert len(subs) == 2
    listed = [i for s in subs for i in s["images"]]
    assert sorted(listed) == sorted(p.name for p in images)    # no double submission
    for s in subs:
        o = s["opts"]
        mem = [MEM[family(i)] for i in s["images"]]
        assert len(s["images"]) == 8
        assert int(o["mem"]) <= 15000 and int(o["mem"]) >= max(mem)
        assert int(o["cpus-per-task"]) <= 8
        layers = int(o["t"]) // 60
        assert int(o["t"]) % 60 == 0 and layers >= math.ceil(sum(mem) / 15000)
        assert (o["p"], o["A"]) == ("compute", "my_account")


# ============================================================================= slow: bulk
# Landsat: per sensor and date, 6 distinct products of one footprint (collection 1/2 ×
# tier T1/T2/RT, different sizes → partly overlapping), on two WRS-2 rows; Sentinel-2: per
# sensor and date, 6 products of one tile corner (baseline × datatake start, different
# sizes), on two MGRS tiles.
LANDSAT_DATES = {"LND04": ("1988-07-15", "1988-08-16"), "LND05": ("1995-07-15", "1995-08-16"),
                 "LND07": ("2001-07-15", "2001-08-16"), "LND08": ("2021-07-15", "2021-08-16"),
                 "LND09": ("2022-07-15", "2022-08-16")}
S2_DATES = {"SEN2A": ("2021-07-15", "2021-08-14"), "SEN2B": ("2021-07-16", "2021-08-15"),
            "SEN2C": ("2025-07-15", "2025-08-14")}


def make_bulk(l1: Path, rows=(24, 25), tiles=("T32UPC", "T32UQC"), variants: int = 6,
              n_dates: int = 2, broken: bool = True) -> tuple[list[Path], dict[Path, str]]:
    """Good images (5 Landsat sensors × 2 rows, 3 Sentinel-2 sensors × 2 tiles, × 2
    dates × 6 overlapping variants = 192) and broken ones (path → expected text of the
    reason)."""
    from l2ps.synth import make_landsat, make_sentinel2
    good: list[Path] = []
    seed = 100
    landsat = [(s, r, d, v) for s, dates in LANDSAT_DATES.items() for r in rows
               for d in dates[:n_dates] for v in range(variants)]
    for sensor, row, date, v in landsat:
        collection, tier = (1, 2)[v % 2], ("T1", "T2", "RT")[v // 2 % 3]
        seed += 1
        good.append(Path(make_landsat(
            l1 / f"{sensor}-{row}-{date}-{v}", sensor=sensor, size=(60 + 6 * v,) * 2,
            form="tar.gz" if collection == 1 else "tar", collection=collection, tier=tier,
            row=row, date=date, seed=seed).path))
    s2 = [(s, t, d, v) for s, dates in S2_DATES.items() for t in tiles
          for d in dates[:n_dates] for v in range(variants)]
    for sensor, tile, date, v in s2:
        seed += 1
        good.append(Path(make_sentinel2(
            l1 / f"{sensor}-{tile}-{date}-{v}", sensor=sensor, size=(60 + 6 * v,) * 2,
            form="zip", baseline=("02.09", "04.00", "05.10")[v % 3],
            datatake_lead_s=30 + v // 3, tile=tile, date=date, seed=seed).path))
    bad: dict[Path, str] = {}
    if broken:
        for i, sensor in enumerate(("LND05", "LND08", "LND09")):
            p = Path(make_landsat(l1 / f"bad-tar-{i}", sensor=sensor, size=(60, 60),
                                  form="tar", row=30 + i, seed=900 + i,
                                  date=LANDSAT_DATES[sensor][0]).path)
            p.write_bytes(p.read_bytes()[:p.stat().st_size // 2])
            bad[p] = "corrupt archive"
        for i, sensor in enumerate(("SEN2A", "SEN2C")):
            p = Path(make_sentinel2(l1 / f"bad-zip-{i}", sensor=sensor, size=(60, 60),
                                    form="zip", tile="T33UUP", seed=910 + i,
                                    date=S2_DATES[sensor][0]).path)
            p.write_bytes(p.read_bytes()[:p.stat().st_size // 2])
            bad[p] = "corrupt archive"
        p = Path(make_sentinel2(l1 / "bad-jp2", sensor="SEN2B", size=(60, 60), form="safe",
                                tile="T33UUP", seed=920, date=S2_DATES["SEN2B"][0]).path)
        (jp2,) = p.rglob("IMG_DATA/*_B03.jp2")
        jp2.write_bytes(jp2.read_bytes()[: jp2.stat().st_size // 2])
        bad[p] = "cannot be read"
        p = Path(make_landsat(l1 / "bad-band", sensor="LND07", size=(60, 60), form="folder",
                              row=33, seed=930, date=LANDSAT_DATES["LND07"][0]).path)
        next(p.glob("*_B3.TIF")).unlink()
        bad[p] = "not found"
        bad[l1 / "LT04_L1TP_193024_19880716_19880722_02_T1.tar"] = "not found"
    return good, bad


@pytest.mark.slow
def test_bulk_queue_of_200_images(tmp_path):
    from l2ps.job import run_job
    l1 = tmp_path / "level1"
    good, bad = make_bulk(l1)
    assert len(good) + len(bad) >= 200
    extra = dict(OUTPUT_FORMAT="GTiff", NTHREAD="1")
    # interleave the broken images with the good ones
    queue = list(good)
    for k, p in enumerate(bad):
        queue.insert(17 * k + 5, p)
    ws = new_workspace(tmp_path / "bulk", queue, **extra)

    # a dry-run of the SLURM profile lists the expected submissions
    res = ws.snakemake("--profile", str(SLURM), "-n", "--groups", "level2=l2",
                       "--group-components", "l2=8")
    groups = dry_run_groups(res.stdout)
    assert len(groups) == math.ceil(len(queue) / 8)
    assert sorted(j["image"] for g in groups for j in g) == sorted(p.name for p in queue)

    # the real run on 2 cores
    res = ws.snakemake("--profile", str(REPO / "profiles" / "local"), "--cores", "2",
                       timeout=3600, check=False)
    out = res.stdout + res.stderr
    st = queue_status(ws.queue)
    not_done = {p.name: st[p.name] for p in good if st[p.name] != "DONE"}
    reasons = {n: json.loads(f.read_text()).get("reason", "")[:2000]
               for n in not_done if (f := ws.log / f"{n}.json").exists()}
    assert not not_done and res.returncode == 0, (not_done, reasons, out[-3000:])
    for p, reason in bad.items():
        assert st[p.name] == "FAIL", p.name
        rec = json.loads((ws.log / f"{p.name}.json").read_text())
        assert rec["status"] == "FAIL" and reason in rec["reason"], rec["reason"]
    assert f"{len(good)} DONE, {len(bad)} FAIL, 0 QUEUED" in out
    assert not temp_leftovers(ws.cube)
    assert not [d for d in ws.dirs["DIR_TEMP"].iterdir() if d.name.startswith("l2ps-")]
    merged = list(ws.cube.rglob(".contrib/*/*_QAI.tif"))
    assert len(merged) >= 50                       # plenty of same-day overlaps

    # the cube equals a run of the good images alone (one after the other, in another
    # order, without Snakemake)
    ref = new_workspace(tmp_path / "reference", sorted(good, key=lambda p: p.name[::-1]),
                        **extra)
    for p in sorted(good, key=lambda p: p.name[::-1]):
        assert run_job(p, ref.prm) == 0
    assert_same_pixels(cube_pixels(ws.cube), cube_pixels(ref.cube))
