"""Benchmark of l2ps.clouds.detect_clouds on full-size synthetic scenes: wall time, CPU time
and peak RSS per sub-stage (potential, probability | parallax, objects, shadow_probability,
shadow_matching, finalize: the order they run in) on NTHREAD threads, and the accuracy of
the masks against the scenes' truth rasters.

    nice .venv/bin/python benchmarks/bench_clouds.py [--scenes LND09-1 SEN2A-1] [--threads 2]

Scenes: benchmarks/scenes/<NAME>/DONE holds the path of a product made with l2ps.synth
(the coordinator's full-size scenes: LND09-1 Landsat 9 7677×7568, SEN2A-1 Sentinel-2A
10980², LND05-1); its truth rasters are in the ``*_truth`` folder beside the product. A
name without a DONE file is skipped; ``--generate SENSOR`` makes a scene of its own
(seed 7, full size) into benchmarks/scenes/<SENSOR>_full as a fallback.

Each scene runs in its own subprocess (the RSS of one does not leak into the other):
prepare_scene (the front half of the chain), one warm-up detect_clouds (numba cache load),
then the measured detect_clouds. Memory is reported as the peak RSS increase over the
loaded scene (``peak_increase_mb``; the scene's own arrays are ``rss_scene_mb``, taken
after the warm-up's freed heap is returned to the system) — the full-size scene alone
takes about as much as the limit. The machine is shared: CPU seconds
(time.process_time, all threads) are the comparable figure; the load average is recorded.
Results: benchmarks/results/clouds.json (``--merge`` keeps other scenes' entries).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCENES = HERE / "scenes"
RESULTS = HERE / "results"
STAGES = ("potential", "probability", "parallax", "objects", "shadow_probability",
          "shadow_matching", "finalize")
DEFAULT_SCENES = ("LND09-1", "SEN2A-1", "LND05-1")


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def release_heap() -> None:
    """Collect garbage and hand the C heap's free memory back to the system (glibc
    ``malloc_trim``), so that the scene's RSS before the measured run holds no memory freed
    by the warm-up (which the run would reuse, understating its increase)."""
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


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


def product_of(name: str) -> Path | None:
    """The product path in scenes/<name>/DONE, or None while it is not there."""
    done = SCENES / name / "DONE"
    if not done.exists():
        return None
    p = Path(done.read_text().strip())
    return p if p.exists() else None


def generate(sensor: str) -> Path:
    """Fallback: a full-size scene of our own (seed 7) in scenes/<sensor>_full."""
    from l2ps.synth import make_landsat, make_sentinel2
    out = SCENES / f"{sensor}_full"
    marker = out / "DONE"
    if marker.exists():
        return Path(marker.read_text().strip())
    make = make_sentinel2 if sensor.startswith("SEN2") else make_landsat
    p = make(out, sensor=sensor, seed=7, size="full")
    marker.write_text(str(p.path))
    return Path(p.path)


def truth_dir(product: Path) -> Path:
    name = product.name
    for suffix in (".tar.gz", ".tar", ".zip", ".SAFE"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return product.parent / f"{name}_truth"


def params(threads: int):
    """FORCE's default LEVEL2 parameters with MAX_CLOUD_COVER_FRAME 100 and NTHREAD."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from test_clouds_synth import real_parameters
    return real_parameters(max_cloud_cover_frame=100.0, nthread=threads)


def accuracy(qai, product: Path, prm, res: float) -> dict | None:
    """Scores of tests/test_clouds_synth.score (truth cores, clear pixels away from truth
    edges by the buffers): OA, opaque recall, shadow recall/precision, confusion matrix."""
    td = truth_dir(product)
    if not (td / "cloud.tif").exists():
        return None
    sys.path.insert(0, str(HERE.parent / "tests"))
    import test_clouds_synth as T
    from l2ps.clouds.morphology import distance_float

    def dist_m(mask, res):          # exact EDT as scipy's, float32, without its float64
        import numpy as np          # feature transform (minutes on a 10980² tile)
        return distance_float(mask) * np.float32(res) if mask.any() else np.full(mask.shape, np.inf)
    T._dist_m = dist_m
    read_truth, score = T.read_truth, T.score
    truth = read_truth(td)
    if truth["cloud"].shape != qai.shape:
        return {"error": f"truth {truth['cloud'].shape} != QAI {qai.shape}"}
    s = score(qai, truth, prm, res)
    r = lambda v: None if v is None else round(100.0 * v, 2)  # noqa: E731
    return {"overall_accuracy_pct": r(s["overall_accuracy"]),
            "opaque_recall_pct": r(s["opaque_recall"]),
            "opaque_any_state_recall_pct": r(s["opaque_any_recall"]),
            "opaque_states": s["opaque_states"],
            "shadow_recall_pct": r(s["shadow_recall"]),
            "shadow_precision_pct": r(s["shadow_precision"]),
            "clear_false_cloud_pct": r(s["clear_false_cloud"]),
            "thin_detected_pct": r(s["thin_detected"]),
            "cirrus_detected_pct": r(s["cirrus_detected"]),
            "confusion_clear_cloud_shadow": s["confusion"].tolist(), "n": s["n"]}


def save_output(save: Path, qai, stats: dict) -> None:
    """QAI (npy) and the stats without timings, plus the objects (pickle), for identity
    checks."""
    import pickle
    import numpy as np
    save.parent.mkdir(parents=True, exist_ok=True)
    np.save(str(save) + ".qai.npy", qai)
    keep = {k: v for k, v in stats.items() if k not in ("timings", "cpu_timings")}
    with open(str(save) + ".stats.pkl", "wb") as fh:
        pickle.dump(keep, fh)


def run_one(path: Path, threads: int, warmup: bool = True, score: bool = True,
            save: Path | None = None) -> dict:
    """prepare_scene, [warm-up], measured detect_clouds, accuracy; one dict. ``save``: path
    prefix for the QAI and stats of the measured run (:func:`save_output`)."""
    import numba
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    from l2ps.clouds import detect_clouds
    from l2ps.level1 import open_level1
    from l2ps.pipeline import prepare_scene
    prm = params(threads)
    with open_level1(path) as level1:
        t = time.perf_counter()
        scene = prepare_scene(level1, prm)
        t_prep = time.perf_counter() - t
        if warmup:
            detect_clouds(scene, prm, release_bands=False)
            scene.extra.clear()
        release_heap()
        load0 = loadavg()
        base = rss_mb()
        sampler = Sampler()
        sampler.start()
        c0, t0 = time.process_time(), time.perf_counter()
        result = detect_clouds(scene, prm, release_bands=True)
        t1, c1 = time.perf_counter(), time.process_time()
        sampler.stop.set()
        sampler.join()
        load1 = loadavg()
    tim = result.stats["timings"]
    cpu = result.stats.get("cpu_timings", {})
    stages, t = {}, t0
    for name in STAGES:
        if name in tim:
            pk = sampler.peak(t, t + tim[name] + 0.02)
            stages[name] = {"seconds": tim[name], "cpu_s": cpu.get(name),
                            "peak_increase_mb": round(pk - base, 1)}
            t += tim[name]
    peak = sampler.peak(t0, t1)
    out = {"product": path.name, "sensor": scene.sensor, "qai_shape": list(scene.qai.shape),
           "work_grid": result.stats["work_grid"], "threads": threads,
           "prepare_scene_s": round(t_prep, 2), "detect_s": round(t1 - t0, 2),
           "detect_cpu_s": round(c1 - c0, 2), "rss_scene_mb": round(base, 1),
           "peak_rss_mb": peak, "peak_increase_mb": round(peak - base, 1),
           "loadavg_before": load0, "loadavg_after": load1, "stages": stages,
           "log": result.log_fragment.strip(),
           "cloud_cover_unbuffered": round(result.cloud_cover_unbuffered, 2),
           "objects": result.stats.get("objects"),
           "shadow_matching": {k: v for k, v in (result.stats.get("shadow_matching") or {}).items()
                               if k not in ("heights", "per_object")}}
    if save is not None:
        save_output(save, scene.qai, {**result.stats,
                                      "cloud_objects": scene.extra.get("cloud_objects")})
    del result
    scene.extra.clear()
    if score:
        t = time.perf_counter()
        out["accuracy"] = accuracy(scene.qai, path, prm, scene.grid.res)
        out["accuracy_s"] = round(time.perf_counter() - t, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", nargs="*", default=list(DEFAULT_SCENES),
                    help="folder names under benchmarks/scenes with a DONE file")
    ap.add_argument("--generate", nargs="*", default=[],
                    help="sensors (e.g. LND08 SEN2A) to generate a full-size scene for")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--no-score", action="store_true")
    ap.add_argument("--merge", action="store_true",
                    help="keep the runs of other scenes already in results/clouds.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)       # subprocess: one product path
    ap.add_argument("--save", help="with --one: path prefix for <prefix>.qai.npy and "
                    "<prefix>.stats.pkl of the measured run (identity checks)")
    a = ap.parse_args()
    if a.one:
        r = run_one(Path(a.one), a.threads, warmup=not a.no_warmup, score=not a.no_score,
                    save=Path(a.save) if a.save else None)
        print("RESULT " + json.dumps(r))
        return
    todo = [(n, product_of(n)) for n in a.scenes] + [(s, generate(s)) for s in a.generate]
    out = {"threads": a.threads, "machine": platform.node(), "cpus": os.cpu_count(),
           "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "note": "shared machine (other sessions use the 2 cores): compare cpu_s; run "
                   "under nice; memory = peak RSS increase of detect_clouds over the loaded "
                   "scene", "runs": []}
    for name, path in todo:
        if path is None:
            print(f"{name}: no DONE file (skipped)", file=sys.stderr)
            continue
        cmd = [sys.executable, __file__, "--one", str(path), "--threads", str(a.threads)]
        cmd += ["--no-warmup"] if a.no_warmup else []
        cmd += ["--no-score"] if a.no_score else []
        env = dict(os.environ, NUMBA_NUM_THREADS=str(max(a.threads, 1)))
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not line:
            print(f"{name}: failed\n{p.stderr[-3000:]}", file=sys.stderr)
            continue
        r = json.loads(line[-1][7:])
        r["scene"] = name
        out["runs"].append(r)
        print(json.dumps(r, indent=1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    old = RESULTS / "clouds.json"
    if a.merge and old.exists():
        prev = json.loads(old.read_text())
        names = {r["scene"] for r in out["runs"]}
        out["runs"] = [r for r in prev.get("runs", []) if r.get("scene") not in names] + out["runs"]
    old.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
