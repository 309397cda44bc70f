#!/usr/bin/env python3
"""Benchmark of the synthetic Level-1 generator (l2ps.synth): full-size scenes per sensor.

Generates the scenes `benchmarks/run.py` uses (same names, arguments and layout:
benchmarks/scenes/<NAME>-<fraction>/ with a DONE file naming the product), each in a fresh
process, and records wall time, CPU time, peak RSS and the time per generation stage
(scene_fields = Scene.block: terrain, covers, sun/view, cloud shadows; waiting_for_writer =
main thread blocked on GDAL compression in the writer thread; jp2_encoding = Sentinel-2
JPEG 2000; bands_and_rest = cloud coverage per band, band kernels (surface, 6S), DN,
metadata, tar/zip) in benchmarks/results/synth.json.

    nice python benchmarks/bench_synth.py                 # LND09, LND05, SEN2A at full size
    python benchmarks/bench_synth.py --size 0.25 --scenes LND09 SEN2A
    python benchmarks/bench_synth.py --force              # remake scenes that exist

Not a test: timings depend on the machine and its load (CPU seconds are the fairer number).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "src"))

from run import FULL, SCENES, make_scene  # noqa: E402  (benchmarks/run.py: names and layout)


def _child(name: str, frac: float, root: Path) -> dict:
    """Make one scene in this process and return its measurements."""
    import shutil

    import numpy as np

    from l2ps.synth import scene as synth_scene
    stage = {"render": 0.0, "write_wait": 0.0}
    # time the stages by wrapping the generator's entry points (no change to the products)
    orig_block, orig_end = synth_scene.Scene.block, synth_scene.WriteQueue.end_strip
    orig_close = synth_scene.WriteQueue.close

    def block(self, *a, **k):
        t = time.perf_counter()
        try:
            return orig_block(self, *a, **k)
        finally:
            stage["render"] += time.perf_counter() - t

    def end_strip(self):
        t = time.perf_counter()
        try:
            return orig_end(self)
        finally:
            stage["write_wait"] += time.perf_counter() - t

    def close(self):
        t = time.perf_counter()
        try:
            return orig_close(self)
        finally:
            stage["write_wait"] += time.perf_counter() - t

    synth_scene.Scene.block, synth_scene.WriteQueue.end_strip = block, end_strip
    synth_scene.WriteQueue.close = close
    jp2 = {"seconds": 0.0}
    try:
        import rasterio.shutil as rshutil
        from l2ps.synth import sentinel2 as s2mod  # noqa: F401
        orig_copy = rshutil.copy

        def copy(*a, **k):
            t = time.perf_counter()
            try:
                return orig_copy(*a, **k)
            finally:
                jp2["seconds"] += time.perf_counter() - t
        rshutil.copy = copy
    except ImportError:
        pass
    out = root / f"{name}-{frac:g}"
    if out.exists():
        shutil.rmtree(out)
    t0, c0 = time.perf_counter(), time.process_time()
    path = make_scene(name, frac, root)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    kind = SCENES[name]["kind"]
    ny, nx = FULL[kind]
    truth = json.loads(next(out.glob("*_truth/truth.json")).read_text())
    g = truth["grid"]
    return {
        "scene": name, "fraction": frac, "product": str(path), "grid": [g["nx"], g["ny"]],
        "pixels": g["nx"] * g["ny"], "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0),
        "stages_wall_seconds": {
            "scene_fields (Scene.block)": round(stage["render"], 1),
            "waiting_for_writer": round(stage["write_wait"], 1),
            "jp2_encoding": round(jp2["seconds"], 1),
            "bands_and_rest": round(wall - stage["render"] - stage["write_wait"]
                                    - jp2["seconds"], 1)},
        "cloud_cover_percent": truth.get("cloud_cover_percent"),
        "atmosphere": truth.get("atmosphere"),
        "full_size_nominal": [nx, ny],
        "bytes_on_disk_with_truth": _size(out),
        "numpy": np.__version__,
    }


def _size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    ap.add_argument("--size", type=float, default=1.0, help="fraction of the full size (1, 0.25)")
    ap.add_argument("--root", type=Path, default=HERE / "scenes")
    ap.add_argument("--force", action="store_true", help="remake scenes that already exist")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "synth.json")
    ap.add_argument("--child", nargs=2, metavar=("NAME", "FRACTION"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        rec = _child(args.child[0], float(args.child[1]), args.root)
        print("RESULT " + json.dumps(rec), flush=True)
        return 0
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results.setdefault("runs", {})
    for name in args.scenes:
        key = f"{name}@{args.size:g}"
        done = args.root / f"{name}-{args.size:g}" / "DONE"
        if done.exists() and not args.force:
            print(f"{key}: exists ({done.read_text().strip()}); --force to remake", flush=True)
            continue
        env = dict(os.environ)
        env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".venv" / "numba-cache"))
        t0 = time.time()
        res = subprocess.run([sys.executable, __file__, "--root", str(args.root), "--child",
                              name, str(args.size)], env=env, capture_output=True, text=True)
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
        if res.returncode != 0 or not lines:
            rec = {"status": "FAIL", "reason": res.stderr[-2000:],
                   "wall_seconds": round(time.time() - t0, 1)}
        else:
            rec = {"status": "DONE", **json.loads(lines[-1][7:])}
        rec["host"] = {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
                       "python": platform.python_version()}
        results["runs"][key] = rec
        print(key, json.dumps({k: v for k, v in rec.items() if k != "reason"}), flush=True)
        if rec["status"] != "DONE":
            print(rec["reason"], file=sys.stderr)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
