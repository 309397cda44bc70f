"""Running at scale, when things go wrong: killed runs, a full disk, two workflows on one
cube, reprocessing (DESIGN.md "The workflow"; spec 03 §2.8, P1, P12, P13, P17;
docs/running.md "Failures" and "Reprocessing").

The images are tiny synthetic products (l2ps.synth). Three Landsat 8 images of the same
day overlap (different collection/tier → different ids, different sizes → partly
overlapping footprints), so their tiles are merged; one Sentinel-2A image stands alone.
Faults are injected deterministically through the test-only hook ``L2PS_FAULT_INJECTION``
of l2ps.job (a pause in the middle of a tile write or after the extraction, or an ENOSPC
of the n-th raster write).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import BIN, REPO, Workspace

# Parameters of every workspace of these tests: a TOA cube in EPSG:3035 with 3 km tiles
# (a 120 px Landsat image touches a few tiles), quicklooks on, all tiers accepted.
SETTINGS = {
    "DO_ATMO": "FALSE", "ORIGIN_LON": "-25", "ORIGIN_LAT": "60",
    "RESOLUTION_LANDSAT": "30", "RESOLUTION_SENTINEL2": "10", "TILE_SIZE": "3000 3000",
    "MAX_CLOUD_COVER_FRAME": "100", "MAX_CLOUD_COVER_TILE": "100", "OUTPUT_FORMAT": "COG",
    "OUTPUT_OVV": "TRUE", "NTHREAD": "1", "TIER": "3",
}


def settings(**extra) -> dict:
    from rasterio.crs import CRS
    out = dict(SETTINGS, PROJECTION=CRS.from_epsg(3035).to_wkt())
    out.update(extra)
    return out


def new_workspace(root: Path, queue: list[Path] = (), cube: Path | None = None,
                  **extra) -> Workspace:
    """A Workspace (tests/conftest.py) with the settings above and ``queue`` QUEUED;
    ``cube``: use this DIR_LEVEL2 (and DIR_PROVENANCE beside it) instead of its own."""
    root.mkdir(parents=True, exist_ok=True)
    ws = Workspace(root)
    if cube is not None:
        ws.dirs["DIR_LEVEL2"] = cube
        ws.dirs["DIR_PROVENANCE"] = cube.parent / "provenance"
        ws.dirs["DIR_PROVENANCE"].mkdir(parents=True, exist_ok=True)
        ws.cube = cube
    ws.write_queue([(p, "QUEUED") for p in queue])
    ws.write_parameters(**settings(**extra))
    return ws


# ----------------------------------------------------------------------------- inspection
def visible_files(cube: Path) -> list[Path]:
    """The files a reader of the cube sees (no hidden folder or file on the way)."""
    return sorted(p for p in cube.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(cube).parts))


def cube_pixels(cube: Path, name_filter: str = "") -> dict[str, np.ndarray]:
    """Relative path → pixel array of every visible raster (metadata not compared)."""
    import warnings

    import rasterio
    out = {}
    for p in visible_files(cube):
        if p.suffix not in (".tif", ".jpg", ".dat") or name_filter not in p.name:
            continue
        with warnings.catch_warnings():      # the OVV JPEG has no georeference
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(p) as ds:
                out[str(p.relative_to(cube))] = ds.read()
    return out


def assert_same_pixels(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b), (sorted(set(a) ^ set(b)))
    bad = [k for k in a if a[k].shape != b[k].shape or not np.array_equal(a[k], b[k])]
    assert not bad, f"pixel values differ in {bad}"


def file_hashes(cube: Path) -> dict[str, str]:
    """Relative path → sha256 of every file in the cube, hidden ones included."""
    return {str(p.relative_to(cube)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(cube.rglob("*")) if p.is_file()}


def temp_leftovers(cube: Path) -> list[Path]:
    """Hidden temporary files or folders of interrupted writes (``.<name>.tmp-*``)."""
    return sorted(p for p in cube.rglob(".*.tmp-*"))


def queue_status(queue: Path) -> dict[str, str]:
    out = {}
    for line in queue.read_text().splitlines():
        f = line.split("#")[0].split()
        if len(f) == 2:
            out[Path(f[0]).name] = f[1]
    return out


def set_queued(queue: Path, image: Path) -> None:
    from l2ps.queue import set_status
    assert set_status(queue, image, "QUEUED")


def record(ws: Workspace, image: Path) -> dict:
    return json.loads((ws.log / f"{image.name}.json").read_text())


def run(ws: Workspace, *images: Path, **env) -> list[int]:
    """``run_job`` in this process (as ``l2ps level2`` does) for each image in turn."""
    from l2ps.job import run_job
    codes = []
    old = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        for img in images:
            codes.append(run_job(img, ws.prm))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return codes


def child_env(**extra) -> dict:
    env = dict(os.environ)
    env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".venv" / "numba-cache"))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 600) -> str:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"process ended ({proc.returncode}) before the fault point:\n"
                                 f"{out[-4000:]}")
        time.sleep(0.2)
    raise AssertionError(f"fault point not reached within {timeout} s")


def paused_pid(signal_file: Path) -> int | None:
    try:
        return int(signal_file.read_text().strip())
    except (OSError, ValueError):
        return None


def kill_all(proc: subprocess.Popen, job_pid: int | None) -> None:
    """kill -9 the process group of ``proc`` (Snakemake and what runs in its group) and
    the paused job (Snakemake may start jobs in their own group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if job_pid:
        try:
            os.kill(job_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    if job_pid:   # the paused job is gone before the next run starts
        for _ in range(100):
            try:
                os.kill(job_pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)


def snakemake_until_done(ws: Workspace, *args: str) -> str:
    """Run the workflow; when Snakemake refuses because a killed run left its own lock,
    ``--unlock`` (as its message says) and run again."""
    res = ws.snakemake(*args, check=False)
    out = res.stdout + res.stderr
    if res.returncode != 0 and "--unlock" in out:
        ws.snakemake("--unlock")
        res = ws.snakemake(*args, check=False)
        out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    return out


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def images(tmp_path_factory) -> dict[str, Path]:
    """LA, LB, LC: Landsat 8 of 2021-07-15, path/row 193/024, overlapping, distinct ids
    (C2 T1 tar, C1 T1 tar.gz, C2 T2 tar); SA: Sentinel-2A zip of the same day."""
    from l2ps.synth import make_landsat, make_sentinel2
    d = tmp_path_factory.mktemp("level1")
    return {
        "LA": Path(make_landsat(d / "a", sensor="LND08", size=(120, 120), form="tar", seed=1).path),
        "LB": Path(make_landsat(d / "b", sensor="LND08", size=(150, 150), form="tar.gz",
                           collection=1, seed=2).path),
        "LC": Path(make_landsat(d / "c", sensor="LND08", size=(100, 100), form="tar", tier="T2",
                           seed=3).path),
        "SA": Path(make_sentinel2(d / "s", sensor="SEN2A", size=(120, 120), form="zip",
                             seed=4).path),
    }


@pytest.fixture(scope="session")
def reference(tmp_path_factory, images) -> dict[str, np.ndarray]:
    """The cube of LA, LB, LC, SA processed one after the other without any fault."""
    ws = new_workspace(tmp_path_factory.mktemp("reference"), list(images.values()))
    assert run(ws, *images.values()) == [0, 0, 0, 0]
    assert set(queue_status(ws.queue).values()) == {"DONE"}
    px = cube_pixels(ws.cube)
    # the three Landsat images really are merged somewhere
    merged = [r for r in (ws.cube).rglob(".contrib/*LND08*/*_QAI.tif")]
    assert len({p.name for p in merged}) == 3, merged
    assert any("SEN2A" in k for k in px) and any("LND08" in k for k in px)
    return px


# ============================================================================ temp sweep
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_sweep_removes_only_folders_of_dead_processes_of_this_host(tmp_path):
    from l2ps.job import OWNER_FILE, _hostname, make_job_temp, sweep_temp
    mine = make_job_temp(tmp_path, "live image")          # this (live) process
    (mine / "B4.TIF").write_bytes(b"x" * 100)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # a live process of this host, by name only (no marker yet)
        live = tmp_path / f"l2ps-job-{_hostname()}-{sleeper.pid}-0123abcd"
        live.mkdir()
        dead_pid = _dead_pid()
        dead = tmp_path / f"l2ps-job-{_hostname()}-{dead_pid}-deadbeef"
        dead.mkdir()
        (dead / OWNER_FILE).write_text(json.dumps({"host": _hostname(), "pid": dead_pid}))
        (dead / "extracted").mkdir()
        (dead / "extracted" / "B1.TIF").write_bytes(b"y")
        unmarked = tmp_path / f"l2ps-job-{_hostname()}-{_dead_pid()}-00000001"
        unmarked.mkdir()                                   # killed before the marker
        # the pid of this process, but another start time: the pid was reused
        reused = tmp_path / f"l2ps-job-{_hostname()}-{os.getpid()}-0000aaaa"
        reused.mkdir()
        (reused / OWNER_FILE).write_text(json.dumps(
            {"host": _hostname(), "pid": os.getpid(), "start_ticks": 1}))
        foreign = tmp_path / f"l2ps-job-othernode-{dead_pid}-feedf00d"
        foreign.mkdir()
        other = tmp_path / "l2ps-abc123"                    # not a job folder: never touched
        other.mkdir()
        removed = sweep_temp(tmp_path)
        assert sorted(removed) == sorted([dead, unmarked, reused])
        for d in (mine, live, foreign, other):
            assert d.is_dir(), d
        assert (mine / "B4.TIF").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


# ============================================================================ kill -9
def test_kill_during_a_tile_write_then_snakemake_completes(tmp_path, images, reference):
    """kill -9 of the whole run while LB writes into a tile it shares with LA: no broken
    tile file or provenance line, no lock left, LB stays QUEUED; the next `snakemake`
    (after --unlock) processes what is left and the cube equals the undisturbed one."""
    order = [images[k] for k in ("LA", "LB", "LC", "SA")]
    ws = new_workspace(tmp_path, order)
    signal_file = tmp_path / "paused"
    fault = {"at": "write", "action": "pause", "n": 5, "image": images["LB"].name,
             "signal_file": str(signal_file)}
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(ws.root),
           "--cores", "1", "--config", f"parameter_file={ws.prm}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True,
                            env=child_env(L2PS_FAULT_INJECTION=json.dumps(fault)))
    try:
        job_pid = int(wait_for_file(signal_file, proc))
    finally:
        kill_all(proc, paused_pid(signal_file))

    # --- the state right after the kill
    st = queue_status(ws.queue)
    assert st[images["LB"].name] == "QUEUED"
    assert set(st.values()) <= {"QUEUED", "DONE"}
    assert temp_leftovers(ws.cube), "the fault should have left a half-written temporary file"
    cube_pixels(ws.cube)                                 # every visible file is complete
    from filelock import FileLock
    for lock in ws.cube.rglob(".locks/*.lock"):          # flock died with the process
        FileLock(str(lock), timeout=0).acquire().lock.release()
    for prov in ws.dirs["DIR_PROVENANCE"].glob("*.csv"):
        rows = list(csv.reader(prov.read_text().splitlines()))
        assert rows[0] == ["file", "origin", "mode", "creation"]
        assert all(len(r) == 4 and r[2] in ("create", "update") for r in rows[1:]), rows
    leftover = [d for d in ws.dirs["DIR_TEMP"].iterdir() if d.name.startswith("l2ps-")]
    assert leftover and str(job_pid) in leftover[0].name

    # --- the next run completes the rest
    t0 = time.time()
    snakemake_until_done(ws, "--cores", "1")
    assert set(queue_status(ws.queue).values()) == {"DONE"}
    assert not [d for d in ws.dirs["DIR_TEMP"].iterdir() if d.name.startswith("l2ps-")]
    assert_same_pixels(cube_pixels(ws.cube), reference)
    assert time.time() - t0 < 600                        # no lock timeout was waited for


def test_rerun_removes_temporary_files_of_a_killed_write(tmp_path, images):
    ws = new_workspace(tmp_path, [images["LA"]])
    signal_file = tmp_path / "paused"
    fault = {"at": "write", "action": "pause", "n": 2, "signal_file": str(signal_file)}
    cmd = [str(BIN / "l2ps"), "level2", str(images["LA"]), str(ws.prm)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True,
                            env=child_env(L2PS_FAULT_INJECTION=json.dumps(fault)))
    try:
        wait_for_file(signal_file, proc)
    finally:
        kill_all(proc, paused_pid(signal_file))
    assert temp_leftovers(ws.cube)
    assert run(ws, images["LA"]) == [0]
    assert not temp_leftovers(ws.cube)


def test_kill_during_extraction_leaves_nothing_behind(tmp_path, images, reference):
    """kill -9 of `l2ps level2` right after the zip was unpacked into DIR_TEMP: the
    image stays QUEUED; the next job on this host removes the dead job's folder (and
    never one of a live process) and processes the image."""
    from l2ps.job import make_job_temp
    ws = new_workspace(tmp_path, [images["SA"]])
    signal_file = tmp_path / "paused"
    fault = {"at": "extract", "action": "pause", "signal_file": str(signal_file)}
    proc = subprocess.Popen([str(BIN / "l2ps"), "level2", str(images["SA"]), str(ws.prm)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True,
                            env=child_env(L2PS_FAULT_INJECTION=json.dumps(fault)))
    try:
        job_pid = int(wait_for_file(signal_file, proc))
    finally:
        kill_all(proc, paused_pid(signal_file))
    temp = ws.dirs["DIR_TEMP"]
    (dead,) = [d for d in temp.iterdir() if d.name.startswith("l2ps-job-")]
    assert str(job_pid) in dead.name
    assert list(dead.rglob("*.jp2")), "the archive was unpacked before the kill"
    assert queue_status(ws.queue)[images["SA"].name] == "QUEUED"
    assert not visible_files(ws.cube)
    live = make_job_temp(temp, "a job running right now")   # this process: alive
    assert run(ws, images["SA"]) == [0]
    assert not dead.exists()
    assert live.is_dir()
    assert "removed the temporary folder of a killed job" in (ws.log / f"{images['SA'].name}.log").read_text()
    assert queue_status(ws.queue)[images["SA"].name] == "DONE"
    assert_same_pixels(cube_pixels(ws.cube), {k: v for k, v in reference.items() if "SEN2A" in k})


def test_sigterm_during_a_tile_write_cleans_up(tmp_path, images):
    """SIGTERM (Snakemake cancelling, SLURM's time limit before SIGKILL) in the middle of
    a tile write: the temporary file and the job's temporary folder are removed on the way
    out, the queue line stays QUEUED, no visible file is left half-written."""
    ws = new_workspace(tmp_path, [images["LA"]])
    signal_file = tmp_path / "paused"
    fault = {"at": "write", "action": "pause", "n": 3, "signal_file": str(signal_file)}
    proc = subprocess.Popen([str(BIN / "l2ps"), "level2", str(images["LA"]), str(ws.prm)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True,
                            env=child_env(L2PS_FAULT_INJECTION=json.dumps(fault)))
    try:
        pid = int(wait_for_file(signal_file, proc))
        assert pid == proc.pid
        assert temp_leftovers(ws.cube)
        os.kill(pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        kill_all(proc, None)
    assert not temp_leftovers(ws.cube)
    assert not [d for d in ws.dirs["DIR_TEMP"].iterdir() if d.name.startswith("l2ps-")]
    assert queue_status(ws.queue)[images["LA"].name] == "QUEUED"
    cube_pixels(ws.cube)                                     # every visible file readable


# ============================================================================ disk full
def test_disk_full_fails_the_image_and_leaves_the_cube_intact(tmp_path, images):
    ws = new_workspace(tmp_path, [images["LA"], images["LB"]])
    assert run(ws, images["LA"]) == [0]
    before = file_hashes(ws.cube)
    fault = {"at": "write", "action": "enospc", "n": 1}
    assert run(ws, images["LB"], L2PS_FAULT_INJECTION=json.dumps(fault)) == [0]
    assert queue_status(ws.queue)[images["LB"].name] == "FAIL"
    rec = record(ws, images["LB"])
    assert rec["status"] == "FAIL"
    assert "No space left on device" in rec["reason"]
    assert f"{ws.cube}/X" in rec["reason"]                   # names the file
    assert "No space left on device" in (ws.log / f"{images['LB'].name}.log").read_text()
    after = file_hashes(ws.cube)
    assert {k: after[k] for k in before} == before           # byte-identical
    new = [k for k in after if k not in before]
    assert all("/.locks/" in f"/{k}" for k in new), new      # at most new empty lock files
    assert not temp_leftovers(ws.cube)
    assert not [d for d in ws.dirs["DIR_TEMP"].iterdir() if d.name.startswith("l2ps-")]


def test_file_size_limit_is_a_real_write_error(tmp_path):
    """A real I/O error from the OS (EFBIG: the job runs with RLIMIT_FSIZE = 10 kB, so
    the larger TOA tiles cannot be written) goes through GDAL and becomes FAIL with a
    reason naming the file; that file is unchanged and every visible file is readable."""
    import re
    import resource
    from l2ps.synth import make_landsat
    # folders (no extraction, which would hit the limit first), same content as LA and LB
    a = Path(make_landsat(tmp_path / "a", sensor="LND08", size=(120, 120), seed=1).path)
    b = Path(make_landsat(tmp_path / "b", sensor="LND08", size=(150, 150), collection=1,
                          seed=2).path)
    ws = new_workspace(tmp_path / "ws", [a, b])
    assert run(ws, a) == [0]
    before = file_hashes(ws.cube)
    limit = 10_000

    def limit_file_size():   # Python ignores SIGXFSZ: writes beyond the limit get EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    res = subprocess.run([str(BIN / "l2ps"), "level2", str(b), str(ws.prm)],
                         preexec_fn=limit_file_size, capture_output=True, text=True,
                         env=child_env(), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert queue_status(ws.queue)[b.name] == "FAIL"
    reason = record(ws, b)["reason"]
    m = re.match(rf"^({re.escape(str(ws.cube))}/\S+): write failed", reason)
    assert m, reason
    named = str(Path(m.group(1)).relative_to(ws.cube))
    assert file_hashes(ws.cube).get(named) == before.get(named)   # untouched
    assert not temp_leftovers(ws.cube)
    cube_pixels(ws.cube)                                     # every visible file readable


def test_disk_full_in_the_middle_then_reprocessing_repairs(tmp_path, images, reference):
    """ENOSPC after some of LB's files were written: FAIL, no broken file; setting the
    line back to QUEUED (after freeing space) gives the cube of an undisturbed run."""
    lnd = [images[k] for k in ("LA", "LB", "LC")]
    ws = new_workspace(tmp_path, lnd)
    assert run(ws, images["LA"], images["LC"]) == [0, 0]
    fault = {"at": "write", "action": "enospc", "n": 7}
    assert run(ws, images["LB"], L2PS_FAULT_INJECTION=json.dumps(fault)) == [0]
    assert record(ws, images["LB"])["status"] == "FAIL"
    assert not temp_leftovers(ws.cube)
    cube_pixels(ws.cube)                                     # every file readable
    set_queued(ws.queue, images["LB"])
    assert run(ws, images["LB"]) == [0]
    assert_same_pixels(cube_pixels(ws.cube),
                       {k: v for k, v in reference.items() if "LND08" in k})


# ============================================================================ two workflows
def test_two_workflows_on_one_cube_at_once(tmp_path, images, reference):
    """Two Snakemake processes (own queue, log and working directory) write the same
    merged tiles at the same time; the cube equals the sequential one."""
    cube = tmp_path / "shared" / "cube"
    cube.mkdir(parents=True)
    w1 = new_workspace(tmp_path / "w1", [images["LA"], images["SA"]], cube=cube)
    w2 = new_workspace(tmp_path / "w2", [images["LB"], images["LC"]], cube=cube)
    procs = []
    for ws in (w1, w2):
        cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory",
               str(ws.root), "--cores", "1", "--config", f"parameter_file={ws.prm}"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, env=child_env()))
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    for ws in (w1, w2):
        assert set(queue_status(ws.queue).values()) == {"DONE"}
    assert_same_pixels(cube_pixels(cube), reference)
    assert not temp_leftovers(cube)


# ============================================================================ reprocessing
def test_merged_cube_does_not_depend_on_the_order(tmp_path, images, reference):
    """Reverse order (SA, LC, LB, LA) gives the same pixels as LA, LB, LC, SA — with
    three contributors, where FORCE's running average would differ (spec 03 §2.8)."""
    order = [images[k] for k in ("SA", "LC", "LB", "LA")]
    ws = new_workspace(tmp_path, order)
    assert run(ws, *order) == [0, 0, 0, 0]
    assert_same_pixels(cube_pixels(ws.cube), reference)


def test_two_images_in_either_order(tmp_path, images):
    ab = new_workspace(tmp_path / "ab", [images["LA"], images["LB"]])
    ba = new_workspace(tmp_path / "ba", [images["LB"], images["LA"]])
    assert run(ab, images["LA"], images["LB"]) == [0, 0]
    assert run(ba, images["LB"], images["LA"]) == [0, 0]
    assert_same_pixels(cube_pixels(ab.cube), cube_pixels(ba.cube))


def test_reprocessing_replaces_its_own_contribution(tmp_path, images, reference):
    """Re-queue an image whose contribution is already merged with two others: the
    pixels stay exactly the same (no averaging with its own earlier contribution), also
    for an image that is alone in its tiles, and also when done twice."""
    order = [images[k] for k in ("LA", "LB", "LC", "SA")]
    ws = new_workspace(tmp_path, order)
    assert run(ws, *order) == [0, 0, 0, 0]
    for img in (images["LB"], images["SA"], images["LB"]):
        set_queued(ws.queue, img)
        assert run(ws, img) == [0]
        assert queue_status(ws.queue)[img.name] == "DONE"
        assert_same_pixels(cube_pixels(ws.cube), reference)
    import rasterio
    for p in ws.cube.rglob("*LND08_QAI.tif"):
        with rasterio.open(p) as ds:
            contributors = ds.tags(ns="L2PS")["CONTRIBUTORS"].split(";")
        assert len(contributors) == len(set(contributors))


def test_parked_bands_come_back_unchanged_and_leave_no_file(tmp_path):
    """The bands parked in DIR_TEMP during the cloud stage are back with the same values
    and order afterwards, also when the stage fails, and no file stays behind; a band
    that cannot be written stays in memory."""
    from types import SimpleNamespace

    from l2ps.pipeline import _parked
    rng = np.random.default_rng(3)
    toa = {"ULTRABLUE": rng.integers(-100, 12000, (70, 90)).astype(np.int16),
           "BLUE": rng.integers(-100, 12000, (70, 90)).astype(np.int16)}
    ref = {k: v.copy() for k, v in toa.items()}
    scene = SimpleNamespace(toa=toa)
    with _parked(scene, ("ULTRABLUE", "MISSING"), tmp_path):
        assert scene.toa["ULTRABLUE"] is None and len(list(tmp_path.iterdir())) == 1
    assert list(scene.toa) == ["ULTRABLUE", "BLUE"] and not list(tmp_path.iterdir())
    assert all(np.array_equal(scene.toa[k], ref[k]) and scene.toa[k].dtype == np.int16
               for k in ref)
    with pytest.raises(RuntimeError):
        with _parked(scene, ("ULTRABLUE",), tmp_path):
            raise RuntimeError("cloud stage failed")
    assert np.array_equal(scene.toa["ULTRABLUE"], ref["ULTRABLUE"])
    assert not list(tmp_path.iterdir())
    with _parked(scene, ("ULTRABLUE",), tmp_path / "missing-dir"):   # cannot write: kept
        assert np.array_equal(scene.toa["ULTRABLUE"], ref["ULTRABLUE"])
