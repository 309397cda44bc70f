"""Benchmark of the Sentinel-2 resolution merge (l2ps.resmerge, spec 03 §4) on a full
10980² tile held in memory: per method wall time, CPU time and peak RSS.

The scene is random but structured (no files): smooth fields and sharp-edged parcels on the
10 m grid for GREEN/RED/BROADNIR, the six 20 m bands as 2×2 means of mixtures of them plus
an independent part, ~10 % cloud/shadow in the QAI and a nodata corner. Each method runs in
its own process (so that peak RSS is that method's), with ``--threads`` numba threads.
``--product`` runs on a Level-1 product instead (reader → initial QAI → TOA, no cloud
stage), e.g. the full-size synthetic tile benchmarks/scenes/SEN2A-1/*.zip. Results are
merged into ``--out``: entries of the same method, scene and thread count are replaced.

    nice .venv/bin/python benchmarks/bench_resmerge.py [--size 10980] [--threads 2]
        [--methods NONE,IMPROPHE,REGRESSION,STARFM] [--product PATH]
        [--out benchmarks/results/resmerge.json]
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
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _field(rng, ny: int, nx: int, cell: int) -> np.ndarray:
    """A blocky random field (values ~N(0,1) on cells of ``cell`` pixels), float32."""
    base = rng.standard_normal((-(-ny // cell), -(-nx // cell))).astype(np.float32)
    return np.repeat(np.repeat(base, cell, 0), cell, 1)[:ny, :nx]


def make_scene(n: int, seed: int = 0):
    """A Scene with int16 TOA (10 m predictors, 20 m targets) and a QAI; ``n`` even."""
    from l2ps.grid import Grid
    from l2ps.level1.sensors import sensor_spec
    from l2ps.resmerge import PREDICTORS, TARGETS
    from l2ps.scene import Scene

    rng = np.random.default_rng(seed)
    g10 = Grid("EPSG:32632", 600000.0, 5800020.0, 10.0, 10.0, n, n)
    g20 = Grid("EPSG:32632", 600000.0, 5800020.0, 20.0, 20.0, n // 2, n // 2)
    # land-cover factors: vegetation (parcels of 6 px + per pixel), brightness, and a
    # part of the 20 m bands the 10 m bands do not carry
    toa: dict[str, np.ndarray] = {}
    spec10 = {"GREEN": (900, -300, 250), "RED": (1100, -700, 300),
              "BROADNIR": (2600, 1500, 500)}
    spec20 = {"REDEDGE1": (1300, -200, 300), "REDEDGE2": (2000, 700, 400),
              "REDEDGE3": (2400, 1200, 450), "NIR": (2700, 1500, 500),
              "SWIR1": (2400, -800, 450), "SWIR2": (1600, -900, 350)}
    rows = 1830
    for d in list(spec10) + list(spec20):
        toa[d] = np.empty((n, n) if d in spec10 else (n // 2, n // 2), np.int16)
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        sub = np.random.default_rng([seed, r0])
        h = r1 - r0
        veg = 0.5 * _field(sub, h, n, 6) + 0.2 * _field(sub, h, n, 1)    # parcels + pixels
        bright = 0.15 * sub.standard_normal((h, n)).astype(np.float32)
        extra = 0.3 * _field(sub, h, n, 4)     # not in the 10 m bands
        for d, (a, b, c) in spec10.items():
            toa[d][r0:r1] = np.clip(a + b * veg + c * bright, -500, 10000).astype(np.int16)
        for d, (a, b, c) in spec20.items():
            v = a + b * veg + c * bright + 0.3 * c * extra
            v = v.reshape((r1 - r0) // 2, 2, n // 2, 2).mean(axis=(1, 3))
            toa[d][r0 // 2:r1 // 2] = np.clip(v, -500, 10000).astype(np.int16)
        del veg, bright, extra
    qai = np.zeros((n, n), np.uint16)
    clouds = _field(rng, n, n, 256) > 1.3
    qai[clouds] |= np.uint16(2 << 1)
    qai[np.roll(clouds, 40, axis=1) & ~clouds] |= np.uint16(1 << 3)
    corner = np.add.outer(np.arange(n), np.arange(n)) < n // 8
    qai[corner] = 1
    for d in spec10:
        toa[d][corner] = -9999
    grids = {d: (g20 if d in TARGETS else g10) for d in toa}
    level1 = SimpleNamespace(spec=sensor_spec("SEN2A"), sensor="SEN2A", source="benchmark")
    assert set(PREDICTORS) <= set(toa)
    return Scene(level1=level1, grid=g10, toa=toa, grids=grids, qai=qai, geometry=None)


def _status_mb(key: str) -> float:
    """VmRSS / VmHWM of this process from /proc (MB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def product_scene(path: Path):
    """The scene state before the resolution merge of a Sentinel-2 product, without cloud
    detection: TOA int16 of the nine bands the merge uses, initial QAI."""
    from l2ps.level1 import open_level1, read_bands
    from l2ps.resmerge import PREDICTORS, TARGETS
    from l2ps.scene import Scene
    from l2ps.toa import apply_toa_nodata, initial_qai, toa_reflectance
    with open_level1(Path(path)) as l1:
        dn = read_bands(l1, workers=1, num_threads=1)
        qai = initial_qai(l1, dn, l1.grid, False, True)
        for d in list(dn):
            if d not in PREDICTORS + TARGETS:
                del dn[d]
        toa = {d: toa_reflectance(dn.pop(d), l1.bands[d], None, l1.spec) for d in list(dn)}
        apply_toa_nodata(toa, qai, l1.spec)
        level1 = SimpleNamespace(spec=l1.spec, sensor=l1.spec.sensor, source=str(path))
        return Scene(level1=level1, grid=l1.grid, toa=toa,
                     grids={d: l1.bands[d].grid for d in toa}, qai=qai, geometry=None)


def run_one(method: str, n: int, threads: int, product: str | None = None) -> dict:
    import numba

    from l2ps.resmerge import resolution_merge
    numba.set_num_threads(threads)
    t0 = time.perf_counter()
    scene = product_scene(Path(product)) if product else make_scene(n)
    n = scene.qai.shape[0]
    t_make = time.perf_counter() - t0
    # warm-up (compile or load the cache) on a small scene, not timed
    resolution_merge(make_scene(64), method)
    rss_before = _status_mb("VmRSS")
    try:                      # reset the peak (Linux ≥ 4.0), so VmHWM is the merge's peak
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    load = os.getloadavg()
    c0 = time.process_time()
    stats = resolution_merge(scene, method)
    cpu = time.process_time() - c0
    return {"method": method, "scene": Path(product).name if product else "random",
            "size": n, "threads": threads, "seconds": stats["seconds"],
            "load_average_before": [round(v, 2) for v in load],
            "cpu_seconds": round(cpu, 2), "pixels_merged": stats["pixels_merged"],
            "scene_seconds": round(t_make, 1), "rss_before_mb": round(rss_before),
            "peak_rss_mb": round(_status_mb("VmHWM")),
            "peak_rss_process_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=10980)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default="NONE,IMPROPHE,REGRESSION,STARFM")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "resmerge.json"))
    ap.add_argument("--product", help="Sentinel-2 Level-1 product instead of the random scene")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one, a.size, a.threads, a.product)))
        return
    out = Path(a.out)
    doc = json.loads(out.read_text()) if out.exists() else {}
    results = doc.get("results", [])
    for m in a.methods.split(","):
        env = dict(os.environ, NUMBA_NUM_THREADS=str(max(a.threads, 1)))
        cmd = [sys.executable, __file__, "--one", m, "--size", str(a.size),
               "--threads", str(a.threads)] + (["--product", a.product] if a.product else [])
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        res = json.loads(p.stdout.strip().splitlines()[-1])
        res["when"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        print(json.dumps(res))
        key = (res["method"], res["scene"], res["size"], res["threads"])
        results = [r for r in results if (r.get("method"), r.get("scene", "random"),
                                          r.get("size"), r.get("threads")) != key] + [res]
    doc.update({"benchmark": "resmerge", "machine": platform.node(), "cpus": os.cpu_count(),
                "load_average": os.getloadavg(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "results": results})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
