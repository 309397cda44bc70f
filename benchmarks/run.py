#!/usr/bin/env python3
"""l2ps benchmark (issue 9): wall time, CPU time and peak RSS per image and per stage.

One command regenerates everything (``make bench`` runs exactly this, on an idle machine):

    .venv/bin/python benchmarks/run.py

It makes full-size synthetic scenes once (Landsat 9, Landsat 5, Sentinel-2; cached in
benchmarks/scenes/<NAME>-<fraction>/ with a DONE file), runs ``l2ps level2 IMAGE PRM
--no-queue --threads N`` in a fresh process per run, takes the median of ``--runs`` runs,
and writes benchmarks/results/bench.json and the generated section of benchmarks/README.md.

Parts (``--parts``, default all):
  matrix      configurations toa and full (+ full-nomerge on SEN2A) × scenes, NTHREAD = 2
  threads     full chain on LND09 with NTHREAD 1 and 2; asserts equal cloud cover
  scaling     toa on LND09 at ¼, ½ and 1 × ``--size`` (seconds per megapixel)
  throughput  two LND09 images through `snakemake --cores 2`: NTHREAD 1 (two jobs at once)
              vs NTHREAD 2 (one after the other); images per hour
  jit         first-call JIT cost: empty NUMBA_CACHE_DIR vs the same cache warm

    benchmarks/run.py --quick                      # all parts, LND09 at ¼ size, 1 run (~10 min idle)
    benchmarks/run.py --parts matrix --scenes SEN2A --config full
    benchmarks/run.py --report-only                # README from results/bench.json

Before anything is timed, each scene and configuration runs once on a 1/16-size scene
(unmeasured) so that the numba cache is complete (``--no-warmup`` skips it).
Results of a run are merged into the JSON (keyed by experiment), so parts can be rerun.
Full-size runs (``--size 1``) write results/bench.json and the README; other sizes write
results/bench-<size>.json (``--quick``: bench-quick.json) and leave the README alone unless
``--readme`` is given.

Configurations (FORCE's reference figures in ``FORCE`` below and in the README):
  toa          DO_ATMO = FALSE, clouds on, PROJECTION = GLANCE7 (reprojected, tiled), GTiff
  full         FORCE's default full chain: clouds, AOD estimation, adjacency, multiple
               scattering, RES_MERGE = IMPROPHE (Sentinel-2); no DEM, no topography, no BRDF;
               native grid (DO_REPROJ = FALSE, DO_TILE = FALSE), GTiff
  full-nomerge full with RES_MERGE = NONE (Sentinel-2 only)
Both set MAX_CLOUD_COVER_FRAME/TILE = 100 so that no image or tile is skipped.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))
BIN = Path(sys.executable).parent

SCENES = {
    "LND09": dict(kind="landsat", sensor="LND09", form="tar", date="2022-06-15"),
    "LND05": dict(kind="landsat", sensor="LND05", form="tar.gz", collection=1, date="2005-05-16"),
    "SEN2A": dict(kind="sentinel2", sensor="SEN2A", form="zip", baseline="04.00", date="2021-07-15"),
}
#: the second Landsat 9 image of the throughput test (another date: its own tile files)
EXTRA_SCENES = {
    "LND09B": dict(kind="landsat", sensor="LND09", form="tar", date="2022-07-01", seed=12),
}
FULL = {"landsat": (7800, 7700), "sentinel2": (10980, 10980)}

_COMMON = dict(MAX_CLOUD_COVER_FRAME=100, MAX_CLOUD_COVER_TILE=100, OUTPUT_FORMAT="GTiff",
               FILE_DEM="NULL", DO_TOPO="FALSE")
CONFIGS = {
    "toa": dict(_COMMON, DO_ATMO="FALSE", PROJECTION="GLANCE7", DO_REPROJ="TRUE",
                DO_TILE="TRUE"),
    "full": dict(_COMMON, DO_ATMO="TRUE", DO_AOD="TRUE", ADJACENCY_EFFECT="TRUE",
                 MULTI_SCATTERING="TRUE", DO_BRDF="FALSE", DO_REPROJ="FALSE", DO_TILE="FALSE",
                 RES_MERGE="IMPROPHE"),
}
CONFIGS["full-nomerge"] = dict(CONFIGS["full"], RES_MERGE="NONE")

#: FORCE 3.10.01 on a 2-core, 24 GB machine (issue 9): (config, scene, threads) →
#: (label, wall seconds (lo, hi), peak GB (lo, hi) or None)
FORCE = {
    ("toa", "LND09", 2): ("TOA cube, Landsat 7/9", (53, 62), (2.9, 3.3)),
    ("toa", "LND05", 2): ("TOA cube, Landsat 5", (152, 152), None),
    ("toa", "SEN2A", 2): ("TOA cube, Sentinel-2", (120, 120), (5.9, 5.9)),
    ("full", "LND09", 1): ("full chain, Landsat 9", (147, 147), (3.0, 3.0)),
    ("full", "LND09", 2): ("full chain, Landsat 9", (91, 91), (3.0, 3.0)),
    ("full-nomerge", "SEN2A", 2): ("full chain, Sentinel-2, RES_MERGE = NONE", (222, 222), (6.7, 6.7)),
    ("full", "SEN2A", 2): ("full chain, Sentinel-2, IMPROPHE", (241, 241), (6.7, 6.7)),
}

# --------------------------------------------------------------------------- stage profile
#: the issue's stage names, in its order; "other" takes whatever maps to none of them and
#: "start-up" is process wall time outside the timed stages (interpreter, imports, record)
STAGE_GROUPS = ("reading", "TOA", "clouds", "shadows", "AOD", "water vapour",
                "radiative transfer", "topography", "BRDF", "resolution merge", "warping",
                "writing", "other", "start-up")
#: top-level keys of the record's "stages" (l2ps.pipeline.StageTimer)
TOP_LEVEL = {"extract+metadata": "reading", "read": "reading", "cleanup": "reading",
             "qai": "TOA", "geometry": "TOA", "toa": "TOA", "topography": "topography",
             "resmerge": "resolution merge", "brdf": "BRDF"}
#: stages whose time is broken down into "<parent>.<sub>" keys: sub → group, and the group
#: of the parent's remainder (parent seconds − its mapped sub-stages)
SUB_STAGES = {
    "clouds": ({"potential": "clouds", "probability": "clouds", "parallax": "clouds",
                "finalize": "clouds", "objects": "shadows", "shadow_probability": "shadows",
                "shadow_matching": "shadows"}, "clouds"),
    "atmosphere": ({"aod": "AOD", "water_vapor": "water vapour", "radtran": "radiative transfer",
                    "adjacency": "radiative transfer", "inversion": "radiative transfer",
                    "topography": "topography", "brdf": "BRDF"}, "other"),
    "cube": ({"warp": "warping", "warping": "warping", "write": "writing",
              "writing": "writing", "tile": "writing", "tiling": "writing",
              "merge": "writing", "overviews": "writing", "quicklook": "writing",
              "analysis": "writing", "resmerge": "resolution merge"}, "writing"),
}
_IGNORED_SUBS = {"total"}


def stage_profile(stages: dict, process_wall: float | None = None) -> dict:
    """Seconds per issue stage group from a record's ``stages`` dict.

    Top-level stages map through ``TOP_LEVEL``; "clouds", "atmosphere" and "cube" are split
    by their "<parent>.<sub>" entries (which only have ``seconds``), the parent's remainder
    going to the parent's own group; sub-stages not known here, and top-level stages not
    known here, go to "other" (returned under ``"other_detail"`` by key). With
    ``process_wall`` the difference to the sum of the top-level stages is "start-up".
    Returns {group: seconds} for every group in ``STAGE_GROUPS`` plus ``other_detail``.
    """
    out = {g: 0.0 for g in STAGE_GROUPS}
    detail: dict[str, float] = {}

    def sec(v) -> float:
        try:
            return float(v.get("seconds", 0.0)) if isinstance(v, dict) else float(v)
        except (TypeError, ValueError):
            return 0.0

    top_total = 0.0
    for key, val in stages.items():
        if "." in key:
            continue
        s = sec(val)
        top_total += s
        if key in SUB_STAGES:
            table, rest_group = SUB_STAGES[key]
            used = 0.0
            for k2, v2 in stages.items():
                parent, _, sub = k2.partition(".")
                if parent != key or not sub or sub in _IGNORED_SUBS:
                    continue
                s2 = sec(v2)
                used += s2
                group = table.get(sub)
                if group is None:
                    group = "other"
                    detail[k2] = detail.get(k2, 0.0) + s2
                out[group] += s2
            rest = max(s - used, 0.0)
            out[rest_group] += rest
            if used > s:
                # a sub-stage ran in a worker thread beside the others (cube.resmerge:
                # the merge computed while the writer compresses): the parent's own group
                # gives up the overlap, so that the groups still add up to the wall time
                out[rest_group] -= min(used - s, out[rest_group])
            if rest_group == "other" and rest > 0:
                detail[f"{key} (rest)"] = detail.get(f"{key} (rest)", 0.0) + rest
        elif key in TOP_LEVEL:
            out[TOP_LEVEL[key]] += s
        else:
            out["other"] += s
            detail[key] = detail.get(key, 0.0) + s
    # sub-stages whose parent is missing (should not happen): count them as other
    for k2, v2 in stages.items():
        parent = k2.partition(".")[0]
        if "." in k2 and parent not in stages:
            out["other"] += sec(v2)
            detail[k2] = detail.get(k2, 0.0) + sec(v2)
    if process_wall is not None:
        out["start-up"] = max(float(process_wall) - top_total, 0.0)
    res = {g: round(v, 3) for g, v in out.items()}
    res["other_detail"] = {k: round(v, 3) for k, v in sorted(detail.items())}
    return res


def _median(values) -> float | None:
    vals = [float(v) for v in values if isinstance(v, (int, float))]
    return round(statistics.median(vals), 3) if vals else None


def summarize(runs: list[dict]) -> dict:
    """Medians over the DONE runs of one experiment: process wall/CPU/peak RSS (measured by
    the harness with wait4), the record's own numbers, every stage field that the runs
    have (sub-stages only have ``seconds``), and the grouped stage profile."""
    ok = [r for r in runs if r.get("status") == "DONE"]
    if not ok:
        return {"status": "FAIL", "runs": 0,
                "reason": str(runs[-1].get("reason", "?"))[-2000:] if runs else "no run"}
    stages: dict[str, dict] = {}
    names = []
    for r in ok:
        for n in r.get("stages", {}):
            if n not in names:
                names.append(n)
    for name in names:
        vals = [r["stages"][name] for r in ok if name in r.get("stages", {})]
        fields = {}
        for k in ("seconds", "cpu_seconds", "peak_rss_mb"):
            m = _median(v.get(k) for v in vals if isinstance(v, dict))
            if m is not None:
                fields[k] = m
        stages[name] = fields
    profiles = [stage_profile(r.get("stages", {}), r.get("process_wall_seconds")) for r in ok]
    profile = {g: _median(p[g] for p in profiles) for g in STAGE_GROUPS}
    detail_keys = sorted({k for p in profiles for k in p["other_detail"]})
    profile["other_detail"] = {k: _median(p["other_detail"].get(k, 0.0) for p in profiles)
                               for k in detail_keys}
    grid = ok[0].get("grid") or {}
    pixels = grid.get("nx", 0) * grid.get("ny", 0) if isinstance(grid, dict) else None
    covers = [r.get("cloud_cover") for r in ok]
    return {"status": "DONE", "runs": len(ok), "failed_runs": len(runs) - len(ok),
            "wall_seconds": _median(r.get("process_wall_seconds") for r in ok),
            "cpu_seconds": _median(r.get("process_cpu_seconds") for r in ok),
            "peak_rss_mb": _median(r.get("process_peak_rss_mb") for r in ok),
            "pipeline_seconds": _median(r.get("seconds") for r in ok),
            "record_peak_rss_mb": _median(r.get("peak_rss_mb") for r in ok),
            "grid": grid, "pixels": pixels, "cloud_cover": covers[0],
            "cloud_covers": covers, "wall_all": [r.get("process_wall_seconds") for r in ok],
            "stages": stages, "profile": profile}


# --------------------------------------------------------------------------- running
def make_scene(name: str, frac: float, root: Path) -> Path:
    """The synthetic Level-1 product of ``name`` at ``frac`` of the full size (made once,
    in a child process: see ``_make_scene``); returns its path."""
    root = Path(root).resolve()          # DONE files hold absolute paths
    done = root / f"{name}-{frac:g}" / "DONE"
    if not done.exists():
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "_make_scene", name,
                        repr(float(frac)), str(root)], check=True)
    return Path(done.read_text().strip())


def _make_scene(name: str, frac: float, root: Path) -> Path:
    """Make the scene in this process. The harness calls it in a child process because a
    child's peak RSS (``ru_maxrss``, from the record and from ``wait4``) starts at its
    parent's RSS at fork time on Linux: the harness must stay small (≈ 20 MB) so that it
    never shows in the measured peaks."""
    from l2ps.synth import make_landsat, make_sentinel2
    root = Path(root).resolve()
    spec = dict(SCENES.get(name) or EXTRA_SCENES[name])
    kind = spec.pop("kind")
    seed = spec.pop("seed", 11)
    ny, nx = FULL[kind]
    out = root / f"{name}-{frac:g}"
    done = out / "DONE"
    if done.exists():
        return Path(done.read_text().strip())
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if frac == 1:
        size_arg = "full"
    elif kind == "sentinel2":
        n = int(nx * frac) // 6 * 6
        size_arg = (n, n)
    else:           # (columns, rows)
        size_arg = (int(nx * frac) // 6 * 6, int(ny * frac) // 6 * 6)
    make = make_landsat if kind == "landsat" else make_sentinel2
    prod = make(out, size=size_arg, seed=seed, **spec)
    done.write_text(str(prod.path))
    print(f"made {name} at {frac:g} size in {time.time() - t0:.0f} s: {prod.path}", flush=True)
    return Path(prod.path)


def _prm(ws: Path, config: str, threads: int, queue: Path, extra: dict | None = None) -> Path:
    from l2ps.demo import set_parameter_values
    from l2ps.params import write_skeleton
    for d in ("cube", "log", "temp", "prov"):
        (ws / d).mkdir(parents=True, exist_ok=True)
    prm = ws / "level2.prm"
    write_skeleton(prm)
    vals = dict(DIR_LEVEL2=ws / "cube", DIR_LOG=ws / "log", DIR_TEMP=ws / "temp",
                DIR_PROVENANCE=ws / "prov", FILE_QUEUE=queue, NTHREAD=threads)
    vals.update(CONFIGS[config])
    vals.update(extra or {})
    prm.write_text(set_parameter_values(prm.read_text(), {k: str(v) for k, v in vals.items()}))
    return prm


def workspace(root: Path, config: str, threads: int, image: Path) -> Path:
    """A workspace (cube, log, temp, provenance folders, queue, parameter file) for one
    image, configuration and thread count; returns the parameter file."""
    ws = root / f"ws-{config}-{threads}-{image.name}"
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "queue.txt").write_text(f"{image} QUEUED\n")
    return _prm(ws, config, threads, ws / "queue.txt")


def _clean(ws: Path, dirs=("cube", "log", "prov", "temp")) -> None:
    for d in dirs:
        shutil.rmtree(ws / d, ignore_errors=True)
        (ws / d).mkdir()


def measure(cmd: list[str], env: dict, cwd: Path | None = None) -> dict:
    """Run ``cmd`` and return its wall seconds, CPU seconds (user + system of the process and
    its waited-for children) and peak RSS (MB, the largest single process), from wait4."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err)
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    return {"returncode": proc.returncode, "wall": round(wall, 3),
            "cpu": round(ru.ru_utime + ru.ru_stime, 3), "maxrss_mb": round(ru.ru_maxrss / 1024, 1),
            "stdout": stdout, "stderr": stderr}


def _env(threads: int, cache: Path | None = None) -> dict:
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), GDAL_NUM_THREADS=str(threads))
    env["NUMBA_CACHE_DIR"] = str(cache) if cache else env.get(
        "NUMBA_CACHE_DIR", str(REPO / ".venv" / "numba-cache"))
    return env


def run_once(image: Path, prm: Path, threads: int, cache: Path | None = None) -> dict:
    """One `l2ps level2` run in a fresh process; the image's record plus the process's own
    wall, CPU and peak RSS (``process_*``)."""
    ws = prm.parent
    _clean(ws)
    cmd = [sys.executable, "-m", "l2ps.cli", "level2", str(image), str(prm), "--no-queue",
           "--threads", str(threads)]
    m = measure(cmd, _env(threads, cache))
    rec_file = ws / "log" / f"{image.name}.json"
    rec = json.loads(rec_file.read_text()) if rec_file.exists() else {}
    rec.update(process_wall_seconds=m["wall"], process_cpu_seconds=m["cpu"],
               process_peak_rss_mb=m["maxrss_mb"])
    if m["returncode"] != 0 or rec.get("status") != "DONE":
        rec["status"] = rec.get("status") or "FAIL"
        if rec["status"] == "DONE":
            rec["status"] = "FAIL"
        rec["reason"] = (rec.get("reason") or "") + m["stderr"][-2000:]
    return rec


class Bench:
    """The experiments of one invocation; results keyed like "toa/LND09@1/2"."""

    def __init__(self, args):
        self.args = args
        self.root: Path = args.root
        self.work: Path = args.work
        self.results: dict = {}
        self.checks: list[dict] = []

    def log(self, key: str, res: dict) -> None:
        brief = {k: res.get(k) for k in ("status", "runs", "wall_seconds", "cpu_seconds",
                                          "peak_rss_mb", "cloud_cover", "images_per_hour")
                 if res.get(k) is not None}
        if res.get("status") != "DONE" and res.get("reason"):
            brief["reason"] = res["reason"][-300:]
        print(f"{key:32s} {json.dumps(brief)}", flush=True)

    def image(self, config: str, scene: str, frac: float, threads: int) -> dict:
        key = f"{config}/{scene}@{frac:g}/{threads}"
        if key in self.results:
            return self.results[key]
        image = make_scene(scene, frac, self.root)
        prm = workspace(self.work, config, threads, image)
        runs = [run_once(image, prm, threads) for _ in range(self.args.runs)]
        res = summarize(runs)
        res.update(config=config, scene=scene, fraction=frac, threads=threads)
        self.results[key] = res
        self.log(key, res)
        return res

    # ------------------------------------------------------------------ parts
    def warmup(self) -> None:
        """One unmeasured run per scene and configuration on a 1/16-size scene, so that
        every numba kernel (per sensor: uint8 or uint16 signatures) is in the cache before
        anything is timed — a kernel edited since the last run would otherwise be compiled
        inside the first measured run."""
        for scene in self.args.scenes:
            image = make_scene(scene, WARMUP_FRACTION, self.root)
            for config in self.args.config:
                if config == "full-nomerge" and not scene.startswith("SEN2"):
                    continue
                prm = workspace(self.work, config, 2, image)
                r = run_once(image, prm, 2)
                print(f"warm-up {config}/{scene}@{WARMUP_FRACTION:g}: {r.get('status')} "
                      f"{r['process_wall_seconds']:.1f} s", flush=True)

    def matrix(self) -> None:
        for scene in self.args.scenes:
            for config in self.args.config:
                if config == "full-nomerge" and not scene.startswith("SEN2"):
                    continue
                self.image(config, scene, self.args.size, 2)

    def threads(self) -> None:
        one = self.image("full", "LND09", self.args.size, 1)
        two = self.image("full", "LND09", self.args.size, 2)
        if one.get("status") != "DONE" or two.get("status") != "DONE":
            check = {"name": "cloud cover equal with NTHREAD 1 and 2", "ok": False,
                     "detail": "a run failed"}
        else:
            covers = set(one["cloud_covers"]) | set(two["cloud_covers"])
            check = {"name": "cloud cover equal with NTHREAD 1 and 2", "ok": len(covers) == 1,
                     "detail": f"NTHREAD 1: {one['cloud_covers']}, NTHREAD 2: {two['cloud_covers']}"}
        self.checks.append(check)
        self.results[f"threads/LND09@{self.args.size:g}"] = {
            "status": "DONE" if check["ok"] else "FAIL", "check": check,
            "speedup": (round(one["wall_seconds"] / two["wall_seconds"], 2)
                        if check["detail"] != "a run failed" else None)}
        print(("OK   " if check["ok"] else "FAIL ") + check["name"] + ": " + check["detail"],
              flush=True)

    def scaling(self) -> None:
        for f in (self.args.size / 4, self.args.size / 2, self.args.size):
            self.image("toa", "LND09", f, 2)

    def throughput(self) -> None:
        frac = self.args.size
        images = [make_scene("LND09", frac, self.root), make_scene("LND09B", frac, self.root)]
        for nthread in (1, 2):
            key = f"throughput/LND09x2@{frac:g}/{nthread}"
            ws = self.work / f"ws-throughput-{nthread}-{frac:g}"
            ws.mkdir(parents=True, exist_ok=True)
            queue = ws / "queue.txt"
            prm = _prm(ws, "full", nthread, queue)
            runs = []
            for _ in range(self.args.runs):
                _clean(ws)
                shutil.rmtree(ws / ".snakemake", ignore_errors=True)
                queue.write_text("".join(f"{im} QUEUED\n" for im in images))
                cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory",
                       str(ws), "--cores", "2", "--config", f"parameter_file={prm}"]
                m = measure(cmd, _env(nthread))
                status = [ln.split()[-1] for ln in queue.read_text().splitlines() if ln.strip()]
                ok = m["returncode"] == 0 and status == ["DONE", "DONE"]
                runs.append({"ok": ok, "wall": m["wall"], "cpu": m["cpu"],
                             "maxrss_mb": m["maxrss_mb"],
                             "reason": "" if ok else (m["stderr"] + m["stdout"])[-1500:]})
            good = [r for r in runs if r["ok"]]
            if good:
                wall = statistics.median(r["wall"] for r in good)
                res = {"status": "DONE", "runs": len(good), "nthread": nthread,
                       "jobs_at_once": 2 // nthread, "images": 2, "wall_seconds": round(wall, 2),
                       "cpu_seconds": round(statistics.median(r["cpu"] for r in good), 2),
                       "images_per_hour": round(2 * 3600 / wall, 1),
                       "wall_all": [r["wall"] for r in good]}
            else:
                res = {"status": "FAIL", "runs": 0, "nthread": nthread,
                       "reason": runs[-1]["reason"]}
            self.results[key] = res
            self.log(key, res)

    def jit(self) -> None:
        frac = self.args.size / 4
        image = make_scene("LND09", frac, self.root)
        prm = workspace(self.work, "full", 2, image)
        cold, warm = [], []
        for _ in range(self.args.runs):
            cache = Path(tempfile.mkdtemp(prefix="numba-cold-", dir=self.work))
            try:
                cold.append(run_once(image, prm, 2, cache=cache))
                warm.append(run_once(image, prm, 2, cache=cache))
            finally:
                shutil.rmtree(cache, ignore_errors=True)
        c, w = summarize(cold), summarize(warm)
        res = {"status": "DONE" if c["status"] == w["status"] == "DONE" else "FAIL",
               "config": "full", "scene": "LND09", "fraction": frac, "threads": 2,
               "cold": {k: c.get(k) for k in ("wall_seconds", "cpu_seconds", "peak_rss_mb",
                                              "reason") if c.get(k) is not None},
               "warm": {k: w.get(k) for k in ("wall_seconds", "cpu_seconds", "peak_rss_mb",
                                              "reason") if w.get(k) is not None}}
        if res["status"] == "DONE":
            res["compile_seconds"] = round(c["wall_seconds"] - w["wall_seconds"], 2)
            res["compile_cpu_seconds"] = round(c["cpu_seconds"] - w["cpu_seconds"], 2)
        key = f"jit/LND09@{frac:g}"
        self.results[key] = res
        self.log(key, res)


# --------------------------------------------------------------------------- report
def _machine() -> dict:
    info = {"python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        import l2ps
        info["l2ps"] = l2ps.__version__
    except Exception:   # noqa: BLE001
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem_gb"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def _f(v, nd=1, scale=1.0) -> str:
    return "–" if v is None else f"{v * scale:.{nd}f}"


def _ratio(ours, ref) -> str:
    return "–" if ours is None or not ref else f"{ours / ref:.2f}"


def _find(results: dict, config: str, scene: str, threads: int, frac: float = 1.0) -> dict | None:
    r = results.get(f"{config}/{scene}@{frac:g}/{threads}")
    return r if r and r.get("status") == "DONE" else None


def render(data: dict) -> str:
    """The generated Markdown section of benchmarks/README.md from the bench JSON."""
    results, meta = data.get("results", {}), data.get("meta", {})
    frac = float(meta.get("size", 1.0))
    L = []
    m = meta.get("machine", {})
    L.append(f"Generated {meta.get('finished', '?')} by `benchmarks/run.py` "
             f"({' '.join(meta.get('argv', [])) or 'no options'}); l2ps {m.get('l2ps', '?')}, "
             f"{m.get('cpus', '?')} CPUs ({m.get('cpu', '?')}), {m.get('mem_gb', '?')} GB; "
             f"load average at start {m.get('load_average_at_start', '?')}; medians of "
             f"{meta.get('runs', '?')} run(s); scenes at {frac:g} × full size.")
    if frac != 1.0:
        L.append("")
        L.append(f"**Not full size ({frac:g}): the FORCE figures below are for full-size "
                 "scenes and the ratios are not meaningful.**")
    L += ["", "### Against FORCE 3.10.01 (same image size, options and thread count)", "",
          "| run | NTHREAD | l2ps wall s | l2ps CPU s | l2ps peak RSS GB | FORCE wall s | "
          "FORCE peak GB | wall ratio | memory ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for (config, scene, threads), (label, wall, mem) in FORCE.items():
        r = _find(results, config, scene, threads, frac)
        w_ref = f"{wall[0]}" if wall[0] == wall[1] else f"{wall[0]}–{wall[1]}"
        m_ref = "–" if mem is None else (f"{mem[0]}" if mem[0] == mem[1] else f"{mem[0]}–{mem[1]}")
        ours_w = r["wall_seconds"] if r else None
        ours_m = r["peak_rss_mb"] / 1024 if r and r.get("peak_rss_mb") else None
        L.append(f"| {label} ({config}, {scene}) | {threads} | {_f(ours_w)} | "
                 f"{_f(r['cpu_seconds'] if r else None)} | {_f(ours_m, 2)} | {w_ref} | {m_ref} | "
                 f"{_ratio(ours_w, wall[0])} | {_ratio(ours_m, mem[0] if mem else None)} |")
    L += ["", "Ratios are l2ps / FORCE against the lower end of FORCE's range (the strict "
          "reading); the aim is ≤ 0.50 for both.", ""]
    # per-stage profile
    keys = [k for k, r in results.items()
            if r.get("status") == "DONE" and "profile" in r and r.get("fraction") == frac
            and k.split("/")[0] in CONFIGS]
    keys.sort(key=lambda k: (list(CONFIGS).index(k.split("/")[0]), k))
    if keys:
        L += ["### Per-stage profile (wall seconds, share of the process wall time)", ""]
        cols = [f"{results[k]['config']} {results[k]['scene']} T{results[k]['threads']}"
                for k in keys]
        L.append("| stage | " + " | ".join(cols) + " |")
        L.append("|---|" + "---|" * len(cols))
        for g in STAGE_GROUPS:
            cells = []
            for k in keys:
                r = results[k]
                s = r["profile"].get(g) or 0.0
                share = 100 * s / r["wall_seconds"] if r.get("wall_seconds") else 0
                cells.append("" if s < 0.05 else f"{s:.1f} ({share:.0f} %)")
            L.append(f"| {g} | " + " | ".join(cells) + " |")
        for label, field, nd, sc in (("**wall**", "wall_seconds", 1, 1.0),
                                     ("**CPU**", "cpu_seconds", 1, 1.0),
                                     ("**peak RSS GB**", "peak_rss_mb", 2, 1 / 1024),
                                     ("cloud cover %", "cloud_cover", 2, 1.0)):
            L.append(f"| {label} | " + " | ".join(_f(results[k].get(field), nd, sc) for k in keys)
                     + " |")
        L.append("")
        others = {}
        for k in keys:
            for name, s in (results[k]["profile"].get("other_detail") or {}).items():
                others.setdefault(name, []).append(f"{s:.1f}")
        if others:
            L.append("\"other\": " + "; ".join(f"{n} ({', '.join(v)} s)"
                                               for n, v in sorted(others.items())) + ".")
            L.append("")
        # wall, CPU and peak RSS of the record's top-level stages (sub-stages have only
        # wall time; "peak RSS" is the process's running maximum at the stage's end)
        tops = []
        for k in keys:
            for n in results[k]["stages"]:
                if "." not in n and n not in tops:
                    tops.append(n)
        order = ("extract+metadata", "read", "qai", "geometry", "toa", "topography", "clouds",
                 "coreg", "resmerge", "aoi", "atmosphere", "products", "cube", "cleanup")
        tops.sort(key=lambda n: order.index(n) if n in order else len(order))
        L += ["#### Per-stage wall s / CPU s / peak RSS GB (the record's top-level stages)", "",
              "| stage | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for n in tops:
            cells = []
            for k in keys:
                st = results[k]["stages"].get(n)
                cells.append("" if not st else
                             f"{_f(st.get('seconds'))} / {_f(st.get('cpu_seconds'))} / "
                             f"{_f(st.get('peak_rss_mb'), 2, 1 / 1024)}")
            L.append(f"| {n} | " + " | ".join(cells) + " |")
        L.append("")
        big = []
        for k in keys:
            r = results[k]
            for g in STAGE_GROUPS:
                s = r["profile"].get(g) or 0.0
                if r.get("wall_seconds") and s > 0.1 * r["wall_seconds"]:
                    big.append(f"{g} ({r['config']} {r['scene']} {100 * s / r['wall_seconds']:.0f} %)")
        if big:
            L += ["Stages over 10 % of the wall time: " + ", ".join(big) + ".", ""]
    # threads
    t = results.get(f"threads/LND09@{frac:g}")
    one, two = _find(results, "full", "LND09", 1, frac), _find(results, "full", "LND09", 2, frac)
    if one or two:
        L += ["### NTHREAD 1 vs 2 (full chain, LND09)", "",
              "| NTHREAD | wall s | CPU s | peak RSS GB | cloud cover % | FORCE wall s |",
              "|---|---|---|---|---|---|"]
        for n, r, ref in ((1, one, 147), (2, two, 91)):
            L.append(f"| {n} | {_f(r and r['wall_seconds'])} | {_f(r and r['cpu_seconds'])} | "
                     f"{_f(r and r['peak_rss_mb'], 2, 1 / 1024)} | "
                     f"{', '.join(f'{c:.4f}' for c in (r['cloud_covers'] if r else []))} | {ref} |")
        if t:
            ok = t["check"]["ok"]
            L += ["", f"Speed-up 1 → 2 threads: {_f(t.get('speedup'), 2)} × (FORCE: 1.62 ×). "
                  f"Cloud cover equal between 1 and 2 threads: **{'yes' if ok else 'NO'}** "
                  f"({t['check']['detail']}). FORCE's differs."]
        L.append("")
    # scaling
    sc = [(f, _find(results, "toa", "LND09", 2, f)) for f in (frac / 4, frac / 2, frac)]
    sc = [(f, r) for f, r in sc if r]
    if sc:
        L += ["### Scaling with image size (toa, LND09, NTHREAD 2)", "",
              "| fraction of full size | pixels (M) | wall s | CPU s | wall s / Mpx | "
              "CPU s / Mpx | peak RSS GB |", "|---|---|---|---|---|---|---|"]
        for f, r in sc:
            mpx = (r.get("pixels") or 0) / 1e6
            L.append(f"| {f:g} | {mpx:.1f} | {_f(r['wall_seconds'])} | {_f(r['cpu_seconds'])} | "
                     f"{_f(r['wall_seconds'] / mpx if mpx else None, 3)} | "
                     f"{_f(r['cpu_seconds'] / mpx if mpx else None, 3)} | "
                     f"{_f(r['peak_rss_mb'], 2, 1 / 1024)} |")
        L.append("")
    # throughput
    tp = [results.get(f"throughput/LND09x2@{frac:g}/{n}") for n in (1, 2)]
    if any(tp):
        L += ["### Throughput: two LND09 images, `snakemake --cores 2`, full chain", "",
              "| NTHREAD | jobs at once | wall s (both images) | CPU s | images / hour |",
              "|---|---|---|---|---|"]
        for n, r in zip((1, 2), tp):
            if r is None:
                continue
            if r.get("status") != "DONE":
                L.append(f"| {n} | {2 // n} | FAIL | | |")
                continue
            L.append(f"| {n} | {r['jobs_at_once']} | {_f(r['wall_seconds'])} | "
                     f"{_f(r['cpu_seconds'])} | {_f(r['images_per_hour'])} |")
        L += ["", "Wall time of the whole `snakemake` run (DAG, two jobs, report rule).", ""]
    # jit
    j = results.get(f"jit/LND09@{frac / 4:g}")
    if j:
        L += ["### First-call JIT compile cost (full chain, LND09 at "
              f"{frac / 4:g} × size, NTHREAD 2)", "",
              "| numba cache | wall s | CPU s |", "|---|---|---|",
              f"| empty `NUMBA_CACHE_DIR` | {_f(j['cold'].get('wall_seconds'))} | "
              f"{_f(j['cold'].get('cpu_seconds'))} |",
              f"| warm (same cache, second run) | {_f(j['warm'].get('wall_seconds'))} | "
              f"{_f(j['warm'].get('cpu_seconds'))} |", "",
              f"Compile cost, paid once per cache directory: {_f(j.get('compile_seconds'))} s "
              f"wall ({_f(j.get('compile_cpu_seconds'))} s CPU).", ""]
    checks = data.get("checks") or []
    if checks:
        L += ["Checks: " + "; ".join(f"{c['name']}: {'OK' if c['ok'] else 'FAILED'}"
                                     for c in checks) + "."]
    fails = [k for k, r in results.items() if r.get("status") != "DONE"]
    if fails:
        L += ["", "Failed: " + ", ".join(fails) + " (see the JSON for reasons)."]
    return "\n".join(L).rstrip() + "\n"


BEGIN = "<!-- BEGIN GENERATED: benchmarks/run.py -->"
END = "<!-- END GENERATED -->"


def update_readme(readme: Path, section: str) -> None:
    """Replace the text between the markers of ``readme`` with ``section``."""
    text = readme.read_text() if readme.exists() else f"# l2ps benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{section}{END}{tail}")


# --------------------------------------------------------------------------- main
PARTS = ("matrix", "threads", "scaling", "throughput", "jit")
WARMUP_FRACTION = 0.0625


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["_make_scene"]:           # internal: see make_scene
        _make_scene(argv[1], float(argv[2]), Path(argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    ap.add_argument("--config", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    ap.add_argument("--size", type=float, default=1.0, help="fraction of the full size")
    ap.add_argument("--runs", type=int, default=3, help="runs per experiment (median)")
    ap.add_argument("--quick", action="store_true",
                    help="--size 0.25 --runs 1 --scenes LND09 (every part, a few minutes)")
    ap.add_argument("--root", type=Path, default=HERE / "scenes", help="scene cache")
    ap.add_argument("--work", type=Path, default=None,
                    help="workspaces (default: <root>/work; outputs are deleted per run)")
    ap.add_argument("--out", type=Path, default=None, help="JSON (merged with an existing one)")
    ap.add_argument("--readme", action="store_true", help="update README.md also when not full size")
    ap.add_argument("--report-only", action="store_true", help="only regenerate the README")
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip the unmeasured 1/16-size run per scene and configuration")
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.runs, args.scenes = 0.25, 1, ["LND09"]
    args.work = args.work or args.root / "work"
    args.work.mkdir(parents=True, exist_ok=True)
    if args.out is None:
        name = "bench.json" if args.size == 1 else (
            "bench-quick.json" if args.quick else f"bench-{args.size:g}.json")
        args.out = HERE / "results" / name
    readme = HERE / "README.md"
    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.report_only:
        if not data.get("results"):
            print(f"{args.out}: no results to report", file=sys.stderr)
            return 2
        update_readme(readme, render(data))
        print(f"README: {readme}")
        return 0
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"note: load average {load:.2f} — the machine is not idle; timings are inflated",
              flush=True)
    bench = Bench(args)
    started = _dt.datetime.now().isoformat(timespec="seconds")
    machine = _machine()
    t0 = time.time()
    if not args.no_warmup:
        bench.warmup()
    for part in PARTS:
        if part in args.parts:
            getattr(bench, part)()
    data.setdefault("results", {})
    stamp = _dt.datetime.now().isoformat(timespec="seconds")
    for k, v in bench.results.items():
        v["measured"] = stamp
        data["results"][k] = v
    old_checks = [c for c in data.get("checks", []) if c["name"] not in
                  {c2["name"] for c2 in bench.checks}]
    data["checks"] = old_checks + bench.checks
    data["meta"] = {"started": started, "finished": stamp, "size": args.size, "runs": args.runs,
                    "argv": argv, "machine": machine,
                    "seconds": round(time.time() - t0, 1),
                    # must stay far below every measured peak (see _make_scene)
                    "harness_peak_rss_mb": round(
                        __import__("resource").getrusage(0).ru_maxrss / 1024, 1),
                    "force_reference": {f"{c}/{s}/{t}": {"label": v[0], "wall_s": v[1], "peak_gb": v[2]}
                                        for (c, s, t), v in FORCE.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1, default=str) + "\n")
    section = render(data)
    print(section)
    print(f"results: {args.out}")
    if args.size == 1 or args.readme:
        update_readme(readme, section)
        print(f"README: {readme}")
    failed = [k for k, r in bench.results.items() if r.get("status") != "DONE"]
    if failed or not all(c["ok"] for c in bench.checks):
        print("FAILED: " + ", ".join(failed + [c["name"] for c in bench.checks if not c["ok"]]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
