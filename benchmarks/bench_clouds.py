"""Benchmark of l2ps.clouds.detect_clouds on a large synthetic Landsat scene and Sentinel-2
tile: wall time and peak RSS per sub-stage (potential, probability/parallax,
shadow_probability, shadow_matching, finalize) on NTHREAD threads.

    .venv/bin/python benchmarks/bench_clouds.py [--size full|half] [--threads 2]

Scenes are generated once into benchmarks/scenes/ (git-ignored) with l2ps.synth (seed 7);
results go to benchmarks/results/clouds.json. ``--size half`` uses half the side length
(a quarter of the pixels); the report extrapolates linearly in the pixel count.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCENES = HERE / "scenes"
RESULTS = HERE / "results"
STAGES = ("potential", "probability", "parallax", "shadow_probability", "shadow_matching",
          "finalize")


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Sampler(threading.Thread):
    """Samples the resident set size every ``dt`` seconds: list of (time, MB)."""

    def __init__(self, dt: float = 0.01):
        super().__init__(daemon=True)
        self.dt, self.samples, self.stop = dt, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.samples.append((time.perf_counter(), rss_mb()))
            time.sleep(self.dt)

    def peak(self, t0: float, t1: float) -> float:
        v = [m for t, m in self.samples if t0 <= t <= t1]
        return round(max(v), 1) if v else float("nan")


def scene_path(sensor: str, size: str) -> Path:
    from l2ps.synth import make_landsat, make_sentinel2
    SCENES.mkdir(parents=True, exist_ok=True)
    tag = f"{sensor}_{size}"
    marker = SCENES / f"{tag}.path"
    if marker.exists() and Path(marker.read_text().strip()).exists():
        return Path(marker.read_text().strip())
    out = SCENES / tag
    if sensor.startswith("SEN2"):
        p = make_sentinel2(out, sensor=sensor, seed=7,
                           size="full" if size == "full" else (5490, 5490))
    else:
        p = make_landsat(out, sensor=sensor, seed=7,
                         size="full" if size == "full" else (3860, 3900))
    marker.write_text(p.path)
    return Path(p.path)


def params(threads: int):
    """FORCE's default LEVEL2 parameters with MAX_CLOUD_COVER_FRAME 100 and NTHREAD."""
    import sys
    sys.path.insert(0, str(HERE.parent / "tests"))
    from test_clouds_synth import real_parameters
    return real_parameters(max_cloud_cover_frame=100.0, nthread=threads)


def run_one(path: Path, threads: int) -> dict:
    from l2ps.clouds import detect_clouds
    from l2ps.level1 import open_level1
    from l2ps.pipeline import prepare_scene
    prm = params(threads)
    with open_level1(path) as level1:
        t = time.perf_counter()
        scene = prepare_scene(level1, prm)
        t_prep = time.perf_counter() - t
        base = rss_mb()
        sampler = Sampler()
        sampler.start()
        t0 = time.perf_counter()
        result = detect_clouds(scene, prm)
        t1 = time.perf_counter()
        sampler.stop.set()
        sampler.join()
    tim = result.stats["timings"]
    stages, t = {}, t0
    for name in STAGES:
        if name in tim:
            stages[name] = {"seconds": tim[name], "peak_rss_mb": sampler.peak(t, t + tim[name] + 0.02)}
            t += tim[name]
    return {"product": path.name, "sensor": scene.sensor, "pixels_qai": int(scene.qai.size),
            "work_grid": result.stats["work_grid"], "prepare_scene_s": round(t_prep, 2),
            "rss_before_mb": round(base, 1), "detect_s": round(t1 - t0, 2),
            "peak_rss_mb": sampler.peak(t0, t1), "stages": stages,
            "log": result.log_fragment.strip(), "objects": result.stats.get("objects"),
            "shadow_matching": {k: v for k, v in (result.stats.get("shadow_matching") or {}).items() if k != "heights"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("full", "half"), default="half")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sensors", nargs="*", default=["LND08", "SEN2A"])
    ap.add_argument("--merge", action="store_true",
                    help="keep the runs of other sensors already in results/clouds.json")
    a = ap.parse_args()
    import numba
    numba.set_num_threads(min(a.threads, numba.config.NUMBA_NUM_THREADS))
    out = {"size": a.size, "threads": a.threads, "machine": platform.node(),
           "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": []}
    for sensor in a.sensors:
        path = scene_path(sensor, a.size)
        run_one(path, a.threads)                  # warm-up: numba compilation / cache load
        r = run_one(path, a.threads)
        if a.size == "half":
            full = 10980 * 10980 if sensor.startswith("SEN2") else 7721 * 7861
            r["extrapolated_full_detect_s"] = round(r["detect_s"] * full / r["pixels_qai"], 1)
        out["runs"].append(r)
        print(json.dumps(r, indent=1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    old = RESULTS / "clouds.json"
    if a.merge and old.exists():
        prev = json.loads(old.read_text())
        if prev.get("size") == a.size:
            out["runs"] = [r for r in prev.get("runs", []) if r["sensor"] not in a.sensors] + out["runs"]
    (RESULTS / "clouds.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
