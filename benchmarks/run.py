#!/usr/bin/env python3
"""l2ps benchmark: wall time, CPU time and peak RSS per image and per stage.

Makes full-size synthetic scenes once (Landsat 8/9, Landsat 5, Sentinel-2; cached in
benchmarks/scenes/), runs the pipeline on each in a fresh process (`l2ps level2`) with a
given configuration and thread count, repeats, and reports medians as a table
(benchmarks/README.md section) and JSON (benchmarks/results/bench-<config>.json).

    python benchmarks/run.py                       # both configurations, full size, 3 runs
    python benchmarks/run.py --config toa --size 0.25 --runs 1
    python benchmarks/run.py --scenes LND09 --threads 1 2

Configurations (FORCE's reference figures are in benchmarks/README.md):
  toa   DO_ATMO = FALSE, clouds on, GLANCE7, NTHREAD as given
  full  FORCE's default options: clouds, AOD estimation, adjacency, multiple scattering,
        no DEM/topography/BRDF, native grid (DO_REPROJ = FALSE, DO_TILE = FALSE), GTiff
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))

SCENES = {
    "LND09": dict(kind="landsat", sensor="LND09", form="tar", date="2022-06-15"),
    "LND05": dict(kind="landsat", sensor="LND05", form="tar.gz", collection=1, date="2005-05-16"),
    "SEN2A": dict(kind="sentinel2", sensor="SEN2A", form="zip", baseline="04.00", date="2021-07-15"),
}
FULL = {"landsat": (7800, 7700), "sentinel2": (10980, 10980)}

CONFIGS = {
    "toa": dict(DO_ATMO="FALSE", PROJECTION="GLANCE7", MAX_CLOUD_COVER_FRAME=100,
                MAX_CLOUD_COVER_TILE=100, OUTPUT_FORMAT="COG", DO_TOPO="FALSE"),
    "full": dict(DO_ATMO="TRUE", DO_AOD="TRUE", ADJACENCY_EFFECT="TRUE", MULTI_SCATTERING="TRUE",
                 DO_TOPO="FALSE", DO_BRDF="FALSE", DO_REPROJ="FALSE", DO_TILE="FALSE",
                 OUTPUT_FORMAT="GTiff", MAX_CLOUD_COVER_FRAME=100, MAX_CLOUD_COVER_TILE=100),
}


def make_scene(name: str, frac: float, root: Path) -> Path:
    from l2ps.synth import make_landsat, make_sentinel2
    spec = dict(SCENES[name])
    kind = spec.pop("kind")
    ny, nx = FULL[kind]
    size = (int(ny * frac) // 6 * 6, int(nx * frac) // 6 * 6)
    out = root / f"{name}-{frac:g}"
    done = out / "DONE"
    if done.exists():
        return Path(done.read_text().strip())
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    size_arg = "full" if frac == 1 else size
    make = make_landsat if kind == "landsat" else make_sentinel2
    prod = make(out, size=size_arg, seed=11, **spec)
    done.write_text(str(prod.path))
    print(f"made {name} at {frac:g} size in {time.time() - t0:.0f} s: {prod.path}", flush=True)
    return Path(prod.path)


def workspace(root: Path, config: str, threads: int, image: Path) -> Path:
    from l2ps.demo import set_parameter_values
    from l2ps.params import write_skeleton
    ws = root / f"ws-{config}-{threads}-{image.name}"
    for d in ("cube", "log", "temp", "prov"):
        (ws / d).mkdir(parents=True, exist_ok=True)
    (ws / "queue.txt").write_text(f"{image} QUEUED\n")
    prm = ws / "level2.prm"
    write_skeleton(prm)
    vals = dict(DIR_LEVEL2=ws / "cube", DIR_LOG=ws / "log", DIR_TEMP=ws / "temp",
                DIR_PROVENANCE=ws / "prov", FILE_QUEUE=ws / "queue.txt", NTHREAD=threads)
    vals.update(CONFIGS[config])
    prm.write_text(set_parameter_values(prm.read_text(), {k: str(v) for k, v in vals.items()}))
    return prm


def run_once(image: Path, prm: Path, threads: int) -> dict:
    import shutil
    ws = prm.parent
    for d in ("cube", "log", "prov"):
        shutil.rmtree(ws / d, ignore_errors=True)
        (ws / d).mkdir()
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), GDAL_NUM_THREADS=str(threads))
    env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".venv" / "numba-cache"))
    t0 = time.time()
    cmd = [sys.executable, "-m", "l2ps.cli", "level2", str(image), str(prm), "--no-queue",
           "--threads", str(threads)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    rec_file = ws / "log" / f"{image.name}.json"
    rec = json.loads(rec_file.read_text()) if rec_file.exists() else {}
    rec["process_wall_seconds"] = round(wall, 2)
    if res.returncode != 0 or rec.get("status") != "DONE":
        rec.setdefault("reason", res.stderr[-2000:])
    return rec


def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if r.get("status") == "DONE"]
    if not ok:
        return {"status": "FAIL", "reason": runs[-1].get("reason", "?")}
    stages = {}
    for name in ok[0].get("stages", {}):
        vals = [r["stages"][name] for r in ok if name in r.get("stages", {})]
        stages[name] = {k: round(statistics.median(v[k] for v in vals), 3)
                        for k in ("seconds", "cpu_seconds", "peak_rss_mb")}
    return {"status": "DONE", "runs": len(ok),
            "wall_seconds": round(statistics.median(r["process_wall_seconds"] for r in ok), 2),
            "pipeline_seconds": round(statistics.median(r["seconds"] for r in ok), 2),
            "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in ok), 1),
            "grid": ok[0].get("grid"), "cloud_cover": ok[0].get("cloud_cover"),
            "stages": stages}


def table(results: dict) -> str:
    lines = ["| config | scene | threads | wall s | peak RSS GB | largest stages (s) |",
             "|---|---|---|---|---|---|"]
    for key, r in results.items():
        config, scene, threads = key.split("/")
        if r.get("status") != "DONE":
            lines.append(f"| {config} | {scene} | {threads} | FAIL | | {r.get('reason', '')[:60]} |")
            continue
        top = sorted(r["stages"].items(), key=lambda kv: -kv[1]["seconds"])[:5]
        st = ", ".join(f"{k} {v['seconds']:.1f}" for k, v in top)
        lines.append(f"| {config} | {scene} | {threads} | {r['wall_seconds']:.1f} | "
                     f"{r['peak_rss_mb'] / 1024:.2f} | {st} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    ap.add_argument("--threads", nargs="+", type=int, default=[2])
    ap.add_argument("--size", type=float, default=1.0, help="fraction of the full size (0.25, 0.5, 1)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--root", type=Path, default=HERE / "scenes")
    args = ap.parse_args(argv)
    results = {}
    for name in args.scenes:
        image = make_scene(name, args.size, args.root)
        for config in args.config:
            for threads in args.threads:
                prm = workspace(args.root, config, threads, image)
                runs = [run_once(image, prm, threads) for _ in range(args.runs)]
                key = f"{config}/{name}@{args.size:g}/{threads}"
                results[key] = summarize(runs)
                print(key, json.dumps({k: v for k, v in results[key].items() if k != "stages"}),
                      flush=True)
    out = HERE / "results" / f"bench-{args.size:g}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
