"""Benchmark of the atmospheric correction (l2ps.atmosphere.correct_atmosphere: water vapour,
dark-target AOD, RT grid, adjacency, block-wise inversion with the BRDF factor hook) on a full
Sentinel-2 tile (10980² at 10 m) and a full Landsat scene (7800² at 30 m) held in memory:
wall time, process CPU time, wall/CPU seconds and peak RSS per sub-stage.

Sub-stages (``AtmoResult.stats``): water_vapor, aod, radtran, adjacency, inversion, products.
Peak RSS: the child process resets its high-water mark (``/proc/self/clear_refs``) after the
scene is built, so ``peak_rss_mb − rss_before_mb`` is the atmosphere stage's own increase;
per sub-stage the parent samples the child's RSS every 10 ms and takes the maximum within the
sub-stage's time spans (``info["profile"]``, perf_counter = CLOCK_MONOTONIC, shared by both
processes).  Each case first runs on a 600² cut of the scene (JIT cache warm-up, not timed).

The scenes are random but structured (no files): soil/vegetation mixtures on blocky fields,
lakes (dark targets for the AOD), a nodata corner; flat terrain (DEM 0 m), constant-ish
geometry with a view-zenith gradient across the swath.  Each case runs in its own process
with ``--threads`` numba threads (peak RSS is that case's).

    nice .venv/bin/python benchmarks/bench_atmosphere.py [--cases sentinel2,landsat]
        [--threads 2] [--out benchmarks/results/atmosphere.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIZES = {"sentinel2": ("SEN2A", 10980, 10.0), "landsat": ("LND08", 7800, 30.0)}
# TOA reflectance ×10000 of soil, vegetation and water per domain
SPECTRA = {"ULTRABLUE": (1300, 1100, 1000), "BLUE": (1200, 900, 900), "GREEN": (1300, 1000, 650),
           "RED": (1500, 600, 380), "REDEDGE1": (1800, 1400, 260), "REDEDGE2": (2100, 2800, 200),
           "REDEDGE3": (2300, 3300, 180), "BROADNIR": (2500, 3800, 160), "NIR": (2500, 3800, 160),
           "VAPOR": (1500, 2200, 60), "CIRRUS": (10, 10, 10), "SWIR1": (3000, 1800, 40),
           "SWIR2": (2500, 900, 30)}


def _blocky(rng, n: int, cell: int) -> np.ndarray:
    base = rng.standard_normal((-(-n // cell), -(-n // cell))).astype(np.float32)
    return np.repeat(np.repeat(base, cell, 0), cell, 1)[:n, :n]


def make_scene(kind: str, seed: int = 0, size: int | None = None):
    from l2ps.geometry import Geometry
    from l2ps.grid import Grid
    from l2ps.level1.sensors import sensor_spec
    from l2ps.scene import Scene

    sensor, n, res = SIZES[kind]
    n = n if size is None else size
    spec = sensor_spec(sensor)
    from rasterio.crs import CRS
    crs = CRS.from_epsg(32632).to_wkt()
    x0, y0 = 600000.0, 5800020.0
    grid = Grid(crs, x0, y0, res, res, n, n)
    rng = np.random.default_rng(seed)
    # fields at 60 m (S2) / 30 m (Landsat) — veg fraction, brightness, lakes, nodata corner
    base_res = 60.0 if kind == "sentinel2" else 30.0
    nb = int(round(n * res / base_res))
    veg = np.clip(0.5 + 0.3 * _blocky(rng, nb, 40) + 0.15 * _blocky(rng, nb, 7), 0, 1)
    bright = 1.0 + 0.08 * _blocky(rng, nb, 5)
    lake = _blocky(rng, nb, 25) > 1.8
    corner = (np.arange(nb)[:, None] + np.arange(nb)[None, :]) < nb // 5
    toa, grids = {}, {}
    for b in spec.bands:
        if b.thermal or b.domain not in SPECTRA:
            continue
        soil, vg, water = SPECTRA[b.domain]
        v = np.where(lake, water, bright * ((1 - veg) * soil + veg * vg))
        v = np.where(corner, -9999, v).astype(np.int16)
        r = float(getattr(b, "resolution", res)) if kind == "sentinel2" else res
        k = int(round(base_res / r))
        arr = np.repeat(np.repeat(v, k, 0), k, 1) if k > 1 else v
        m = int(round(n * res / r))
        toa[b.domain] = np.ascontiguousarray(arr[:m, :m])
        grids[b.domain] = Grid(crs, x0, y0, r, r, m, m)
    qai = np.zeros((n, n), np.uint16)
    kq = int(round(base_res / res))
    qai[np.repeat(np.repeat(corner, kq, 0), kq, 1)[:n, :n]] = 1
    coarse = Grid(crs, x0, y0, 5000.0, 5000.0, -(-int(n * res) // 5000), -(-int(n * res) // 5000))
    shape = (coarse.ny, coarse.nx)
    jj = np.arange(coarse.nx)[None, :] * np.ones(shape)
    geom = Geometry(coarse, np.full(shape, 38.0, np.float32) + 0.05 * jj.astype(np.float32),
                    np.full(shape, 155.0, np.float32),
                    (np.abs(jj - coarse.nx / 2) * 0.4).astype(np.float32),
                    np.where(jj < coarse.nx / 2, 100.0, 280.0).astype(np.float32),
                    datetime(2021, 7, 15, 10, 30))
    level1 = SimpleNamespace(sensor=sensor, spec=spec, acquired=datetime(2021, 7, 15, 10, 30),
                             path=Path(f"synthetic-{kind}"))
    return Scene(level1=level1, grid=grid, toa=toa, grids=grids, qai=qai, geometry=geom,
                 topography=None)


def _status_mb(key: str, pid: str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024
    return 0


PARAMS = dict(do_aod=True, dir_aod=None, dir_wvplut=None, water_vapor=1.5,
              strict_water_vapor=False, multi_scattering=True, adjacency_effect=True,
              erase_clouds=False, do_topo=False, do_brdf=True, output_aod=False,
              output_wvp=False, output_hot=False, nulls=frozenset())


def run_case(kind: str, threads: int) -> dict:
    import numba
    numba.set_num_threads(threads)
    from l2ps.atmosphere.correct import correct_atmosphere
    from l2ps.pipeline import _factor_hook
    params = SimpleNamespace(**PARAMS)
    small = make_scene(kind, size=600)                    # JIT warm-up (cache load/compile)
    correct_atmosphere(small, params, factor_hook=_factor_hook(small, params))
    del small
    t = time.perf_counter()
    scene = make_scene(kind)
    t_scene = time.perf_counter() - t
    try:                                                  # reset the peak RSS (Linux ≥ 4.0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    rss0 = _status_mb("VmRSS")
    c0 = time.process_time()
    t0 = time.perf_counter()
    res = correct_atmosphere(scene, params, factor_hook=_factor_hook(scene, params))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    prof = res.info.get("profile", {})
    return {"case": kind, "sensor": scene.sensor, "size": scene.grid.nx, "threads": threads,
            "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
            "stages": {k: round(float(v), 2) for k, v in res.stats.items()},
            "stages_cpu": {k: round(float(v), 2) for k, v in prof.get("cpu", {}).items()},
            "spans": prof.get("spans", []), "start": t0,
            "aod550": round(res.aod550_scene, 3), "targets": list(res.n_targets),
            "pixel_bands": int(sum(a.size for a in res.boa.values())),
            "scene_seconds": round(t_scene, 1), "rss_before_mb": int(rss0),
            "peak_rss_mb": _status_mb("VmHWM")}


def _run_child(kind: str, threads: int, env: dict) -> dict:
    """Run one case in a child process, sampling its RSS every 10 ms."""
    proc = subprocess.Popen([sys.executable, __file__, "--one", kind, "--threads", str(threads)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    samples = []
    while proc.poll() is None:
        try:
            samples.append((time.perf_counter(), _status_mb("VmRSS", str(proc.pid))))
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{kind}: child failed\n{err[-3000:]}")
    r = json.loads(out.strip().splitlines()[-1])
    peaks: dict[str, int] = {}
    for name, a, b in r.pop("spans"):
        m = max((v for t, v in samples if a <= t <= b), default=0)
        peaks[name] = max(peaks.get(name, 0), m - r["rss_before_mb"])
    r.pop("start", None)
    r["stages_rss_increase_mb"] = peaks
    r["rss_increase_mb"] = r["peak_rss_mb"] - r["rss_before_mb"]
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="sentinel2,landsat")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "atmosphere.json"))
    ap.add_argument("--label", default="after",
                    help="key under 'runs' in the JSON file (other labels are kept)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_case(a.one, a.threads)))
        return
    results = []
    load0 = list(os.getloadavg())
    for kind in a.cases.split(","):
        env = dict(os.environ, NUMBA_CACHE_DIR=os.environ.get(
            "NUMBA_CACHE_DIR", str(REPO / ".venv" / "numba-cache")))
        r = _run_child(kind, a.threads, env)
        r["pixel_bands_per_cpu_second"] = round(r["pixel_bands"] / max(r["cpu_seconds"], 1e-9))
        print(json.dumps(r), flush=True)
        results.append(r)
    out = Path(a.out)
    try:
        doc = json.loads(out.read_text())
    except (OSError, ValueError):
        doc = {}
    doc = {"benchmark": "atmosphere", "machine": platform.node() or "vm", "cpus": os.cpu_count(),
           "note": "correct_atmosphere on in-memory synthetic scenes (flat, DO_AOD with lakes, "
                   "ADJACENCY_EFFECT, DO_BRDF hook, OUTPUT_AOD/WVP/HOT off = FORCE defaults); "
                   "numba kernels warmed up on a 600² cut; cpu_seconds = process CPU time of "
                   "all threads; stages = wall s, stages_cpu = CPU s, stages_rss_increase_mb = "
                   "peak RSS within the sub-stage over the loaded scene; the machine is shared, "
                   "compare CPU seconds",
           "runs": {k: v for k, v in doc.get("runs", {}).items() if k != a.label}}
    doc["runs"][a.label] = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_average_start":
                            load0, "load_average_end": list(os.getloadavg()),
                            "results": results}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"written {a.out}")


if __name__ == "__main__":
    main()
