#!/usr/bin/env python3
"""Profile of the TOA chain on full-size scenes (not a test): wall time, CPU time and peak
RSS per stage of ``pipeline.prepare_scene`` (read, qai, geometry, toa, topography),
``clouds.detect_clouds`` (with its sub-stages), ``pipeline.assemble_products`` and
``cube.write_cube`` (GLANCE7, COG, DO_ATMO = FALSE), NTHREAD = 2.

No synthetic Level-1 generation at full size (tens of minutes): a small ``l2ps.synth``
product supplies real metadata (calibration, sensor, date), and full-size DN rasters are
synthesised with numpy (smooth random land fields, a valid footprint with nodata corners
for Landsat, ~40 cloud blobs with colder brightness temperature and their displaced
shadows) and written once as uncompressed GeoTIFFs into ``$PROFILE_DIR`` (default
/tmp/l2ps-profile); the real readers then read them. Sentinel-2 bands are at their native
10/20/60 m grids; the view-angle grid covers the whole tile. Reading GeoTIFFs is not
reading JPEG 2000 (≈ 6.5 s per 10 m band on 2 threads, DESIGN.md): the S2 "read" stage
here is the floor without JP2 decoding.

Per-stage peak RSS comes from a sampler thread (/proc/self/statm every 10 ms) reset at
each stage; ``peak_rss_mb`` of the whole run from getrusage. ``substages``: wall, CPU and
peak RSS of the main cloud and cube functions (wrapped for the run). ``write_cube`` is
called with ``consume=True`` (the recommended pipeline call; PROFILE_CONSUME=0: without).
The machine is shared: compare CPU seconds; run it under ``nice``.

    nice .venv/bin/python benchmarks/profile_toa.py LND08 SEN2A [--label after]

Each sensor runs in its own process; results are merged into
benchmarks/results/profile.json under ``label`` (default "after").
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "profile.json"
ROOT = Path(os.environ.get("PROFILE_DIR", "/tmp/l2ps-profile"))
NTHREAD = 2
LANDSAT_SHAPE = (7800, 7700)        # rows, columns at 30 m
S2_N = 10980                        # 10 m pixels per side
SEED = 7
#: pass write_cube(consume=True) (the recommended pipeline call; env PROFILE_CONSUME=0: off)
CONSUME = os.environ.get("PROFILE_CONSUME", "1") != "0"


# ============================================================================ RSS sampler
class RssSampler:
    """Peak resident set size since the last ``reset`` (sampled every ``dt`` s)."""

    def __init__(self, dt: float = 0.01):
        self.dt = dt
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self.marks: dict = {}
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self):
        while not self._stop:
            r = self.rss()
            if r > self.peak:
                self.peak = r
            for k, v in list(self.marks.items()):
                if r > v:
                    self.marks[k] = r
            time.sleep(self.dt)

    def mark(self, key) -> None:
        """Start tracking the peak under ``key`` (independent of ``reset``)."""
        self.marks[key] = self.rss()

    def unmark(self, key) -> int:
        return max(self.marks.pop(key, 0), self.rss())

    def reset(self) -> None:
        self.peak = self.rss()

    def stop(self) -> None:
        self._stop = True


class Timer:
    """Like pipeline.StageTimer, with the per-stage peak RSS from a sampler."""

    def __init__(self, sampler: RssSampler):
        self.sampler = sampler
        self.stages: dict[str, dict] = {}

    @contextmanager
    def __call__(self, name: str):
        self.sampler.reset()
        rss0 = self.sampler.rss()
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            wall = time.perf_counter() - t0
            cpu = time.process_time() - c0
            peak = max(self.sampler.peak, self.sampler.rss())
            st = self.stages.setdefault(name, {"seconds": 0.0, "cpu_seconds": 0.0,
                                               "rss_before_mb": round(rss0 / 2**20, 1),
                                               "peak_rss_mb": 0.0})
            st["seconds"] = round(st["seconds"] + wall, 3)
            st["cpu_seconds"] = round(st["cpu_seconds"] + cpu, 3)
            st["peak_rss_mb"] = max(st["peak_rss_mb"], round(peak / 2**20, 1))
            print(f"  {name:<12s} wall {wall:7.2f} s  cpu {cpu:7.2f} s  peak "
                  f"{peak / 2**20:7.0f} MB", flush=True)


# ============================================================================ synthetic DN
def _smooth(rng, shape, cell: int, lo: float, hi: float):
    """float32 field of ``shape``: uniform random values on a grid of ``cell`` px,
    bilinearly interpolated (block-wise, so the temporary is one band)."""
    import numpy as np
    from scipy import ndimage
    ny, nx = shape
    cy, cx = ny // cell + 2, nx // cell + 2
    coarse = rng.uniform(lo, hi, (cy, cx)).astype(np.float32)
    return ndimage.zoom(coarse, (ny / (cy - 1), nx / (cx - 1)), order=1,
                        output=np.float32, grid_mode=False)[:ny, :nx]


def _blobs(rng, shape, n: int, rmin: float, rmax: float, cell: int):
    """bool mask of ``n`` random ellipses with ragged edges, computed on a grid of ``cell``
    px and replicated (nearest) to ``shape``."""
    import numpy as np
    ny, nx = shape
    cy, cx = -(-ny // cell), -(-nx // cell)
    yy, xx = np.mgrid[0:cy, 0:cx].astype(np.float32)
    m = np.zeros((cy, cx), bool)
    noise = rng.uniform(0.75, 1.25, (cy, cx)).astype(np.float32)
    for _ in range(n):
        y0, x0 = rng.uniform(0, cy), rng.uniform(0, cx)
        a = rng.uniform(rmin, rmax) / cell
        b = a * rng.uniform(0.4, 1.0)
        t = rng.uniform(0, np.pi)
        u = ((xx - x0) * np.cos(t) + (yy - y0) * np.sin(t)) / a
        v = (-(xx - x0) * np.sin(t) + (yy - y0) * np.cos(t)) / b
        m |= (u * u + v * v) * noise < 1.0
    return np.repeat(np.repeat(m, cell, 0), cell, 1)[:ny, :nx]


def _footprint(shape, angle_deg: float = 12.0, margin: float = 0.08):
    """Landsat-like valid area: a rectangle rotated by ``angle_deg`` inside the raster."""
    import numpy as np
    ny, nx = shape
    out = np.empty(shape, bool)
    t = np.deg2rad(angle_deg)
    c, s = np.cos(t), np.sin(t)
    xx = np.arange(nx, dtype=np.float32) - nx / 2
    hx, hy = nx * (0.5 - margin), ny * (0.5 - margin)
    for r0 in range(0, ny, 512):
        yy = (np.arange(r0, min(r0 + 512, ny), dtype=np.float32) - ny / 2)[:, None]
        u = xx[None, :] * c + yy * s
        v = -xx[None, :] * s + yy * c
        out[r0:r0 + yy.shape[0]] = (np.abs(u) < hx) & (np.abs(v) < hy)
    return out


def _write_gtiff(path: Path, arr, grid) -> None:
    import rasterio
    with rasterio.open(path, "w", driver="GTiff", width=grid.nx, height=grid.ny, count=1,
                       dtype=arr.dtype.name, crs=grid.crs, transform=grid.transform,
                       TILED="YES", BLOCKXSIZE=512, BLOCKYSIZE=512) as ds:
        ds.write(arr, 1)


# reflectance of land (lo, hi) and cloud per domain; BT in K
_LAND = {"ULTRABLUE": (0.08, 0.12), "BLUE": (0.05, 0.10), "GREEN": (0.05, 0.12),
         "RED": (0.03, 0.14), "REDEDGE1": (0.08, 0.18), "REDEDGE2": (0.15, 0.30),
         "REDEDGE3": (0.18, 0.35), "BROADNIR": (0.18, 0.38), "NIR": (0.18, 0.38),
         "VAPOR": (0.05, 0.12), "CIRRUS": (0.0005, 0.002), "SWIR1": (0.12, 0.25),
         "SWIR2": (0.06, 0.15)}
_CLOUD = {"CIRRUS": 0.004, "VAPOR": 0.3}


def _small_product(sensor: str) -> Path:
    """A small synthetic product of ``sensor`` (for its metadata), cached."""
    from l2ps.synth import make_landsat, make_sentinel2
    out = ROOT / f"small-{sensor}"
    done = out / "DONE"
    if done.exists():
        return Path(done.read_text().strip())
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if sensor.startswith("SEN2"):
        prod = make_sentinel2(out, sensor=sensor, size=(120, 120), seed=1)
    else:
        prod = make_landsat(out, sensor=sensor, size=(120, 120), seed=1)
    done.write_text(str(prod.path))
    return Path(prod.path)


def full_level1(sensor: str):
    """A ``Level1`` of a full-size scene: metadata of the small product, bands replaced by
    full-size GeoTIFFs of synthetic DN (written once into ROOT/<sensor>-full)."""
    import numpy as np
    from l2ps.grid import Grid
    from l2ps.level1 import read_metadata
    from l2ps.level1.model import ViewGrid
    small = read_metadata(_small_product(sensor))
    spec = small.spec
    s2 = spec.mission == "sentinel2"
    g0 = small.grid
    if s2:
        grid = Grid(g0.crs_wkt, g0.x0, g0.y0, 10.0, 10.0, S2_N, S2_N)
    else:
        grid = Grid(g0.crs_wkt, g0.x0, g0.y0, 30.0, 30.0, LANDSAT_SHAPE[1], LANDSAT_SHAPE[0])
    folder = ROOT / f"{sensor}-full"
    folder.mkdir(parents=True, exist_ok=True)
    bands = {}
    todo = []
    for d, b in small.bands.items():
        res = b.grid.dx if s2 else 30.0
        k = int(round(res / grid.dx))
        bg = Grid(grid.crs_wkt, grid.x0, grid.y0, res, res, grid.nx // k, grid.ny // k)
        path = folder / f"{d}.tif"
        bands[d] = replace(b, path=path, grid=bg)
        if not path.exists():
            todo.append(d)
    if todo:
        t0 = time.perf_counter()
        _make_dn(spec, grid, {d: bands[d] for d in todo}, small)
        print(f"wrote {len(todo)} full-size bands of {sensor} in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    view = None
    if s2:
        nc = int(np.ceil(grid.nx * grid.dx / 5000.0)) + 1
        jj = np.arange(nc, dtype=np.float32)[None, :].repeat(nc, 0)
        view = ViewGrid(zenith=(2.0 + 0.45 * jj).astype(np.float32),
                        azimuth=np.full((nc, nc), 104.0, np.float32), cell=5000.0,
                        origin=(grid.x0, grid.y0))
    return replace(small, grid=grid, bands=bands, view=view, root=folder, source=folder)


def _make_dn(spec, grid, bands, small) -> None:
    """Write the DN rasters of ``bands`` (domain → Band with its full-size grid)."""
    import numpy as np
    rng = np.random.default_rng(SEED)
    s2 = spec.mission == "sentinel2"
    shape = grid.shape
    # clouds (ragged ellipses, 1.5–9 km) and shadows displaced by ~1.5 km to the NW
    cell = 8 if s2 else 4
    cloud = _blobs(np.random.default_rng(SEED + 1), shape, 40, 1500 / grid.dx,
                   9000 / grid.dx, cell)
    sh = int(round(1500 / grid.dx))
    shadow = np.zeros(shape, bool)
    shadow[:-sh, :-sh] = cloud[sh:, sh:]
    shadow &= ~cloud
    valid = np.ones(shape, bool) if s2 else _footprint(shape)
    for d, b in bands.items():
        k = int(round(b.grid.dx / grid.dx))
        bshape = b.grid.shape
        sl = (slice(0, bshape[0] * k, k), slice(0, bshape[1] * k, k))
        c, s, v = cloud[sl], shadow[sl], valid[sl]
        cal = b.calibration
        if b.thermal:
            t = _smooth(rng, bshape, 256 // k + 1, 290.0, 302.0)
            t[c] = 255.0
            L = cal.k1 / (np.exp(cal.k2 / t) - 1.0)
            dn = (L - cal.rad_add) / cal.rad_mult
        else:
            lo, hi = _LAND[d]
            rho = _smooth(rng, bshape, max(256 // k, 8), lo, hi)
            rho += rng.normal(0, 0.004, bshape).astype(np.float32)
            rho[s] *= 0.35
            rho[c] = _CLOUD.get(d, 0.45)
            if s2:
                q = cal.quantification or 10000.0
                dn = rho * q - cal.add_offset
            else:
                dn = (rho * 0.85 - cal.refl_add) / cal.refl_mult   # cos(sun zenith) ≈ 0.85
        hi_dn = 255 if spec.eight_bit else 65535
        dn = np.clip(np.rint(dn), 1, hi_dn - 1).astype(np.uint8 if spec.eight_bit else np.uint16)
        dn[~v] = 0
        _write_gtiff(b.path, dn, b.grid)
        del dn


# ============================================================================ run
def parameters(out: Path):
    import warnings
    from l2ps.demo import set_parameter_values
    from l2ps.params import read_parameters, write_skeleton
    d = out / "prm"
    d.mkdir(parents=True, exist_ok=True)
    f = d / "level2.prm"
    write_skeleton(f)
    vals = {k: str(d) for k in ("DIR_LOG", "DIR_TEMP", "DIR_PROVENANCE")}
    vals.update(DIR_LEVEL2=str(out / "cube"), FILE_QUEUE=str(d / "queue.txt"),
                NTHREAD=str(NTHREAD), DO_ATMO="FALSE", PROJECTION="GLANCE7",
                MAX_CLOUD_COVER_FRAME="100", MAX_CLOUD_COVER_TILE="100", OUTPUT_FORMAT="COG",
                DO_TOPO="FALSE")
    (out / "cube").mkdir(parents=True, exist_ok=True)
    f.write_text(set_parameter_values(f.read_text(), vals))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_parameters(f, check_paths=False)


_SUB: dict[str, list[float]] = {}
SAMPLER: "RssSampler | None" = None


def _timed(mod, name: str, label: str) -> None:
    """Wrap ``mod.name`` to accumulate its wall and CPU seconds under ``label``."""
    fn = getattr(mod, name)

    def wrapper(*a, **k):
        key = object()
        if SAMPLER is not None:
            SAMPLER.mark(key)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return fn(*a, **k)
        finally:
            acc = _SUB.setdefault(label, [0.0, 0.0, 0, 0])
            acc[0] += time.perf_counter() - t0
            acc[1] += time.process_time() - c0
            acc[2] += 1
            if SAMPLER is not None:
                acc[3] = max(acc[3], SAMPLER.unmark(key))
    setattr(mod, name, wrapper)


def run(sensor: str, stop_after: str | None = None) -> dict:
    import numba
    numba.set_num_threads(NTHREAD)
    os.environ.setdefault("GDAL_NUM_THREADS", str(NTHREAD))
    from l2ps import pipeline
    from l2ps.clouds import detect_clouds
    from l2ps.cube import write_cube
    from l2ps.params import format_force_param
    from l2ps.cube import formats as cube_formats
    from l2ps.cube import write as cube_write
    _timed(cube_write, "warp_products", "cube.warp")
    _timed(cube_formats, "write_window", "cube.write_window")
    _timed(cube_formats, "write_tile", "cube.write_tile")
    _timed(cube_write, "_data_window", "cube.data_window")
    from l2ps.clouds import detect as cdet
    for fn in ("shadow_probability", "shadow_matching", "finalize", "cloud_probability",
               "cloud_parallax", "split_object_lists", "grow_clouds", "components8",
               "drop_small_objects", "buffer_disk", "smoothed_broadnir"):
        _timed(cdet, fn, f"clouds.{fn}")
    from l2ps.clouds import potential as cpot
    _timed(cpot, "potential_cloud", "clouds.potential_cloud")
    from l2ps.cube import warp as cwarp
    _timed(cwarp, "resync_nodata", "cube.resync")
    level1 = full_level1(sensor)
    out = ROOT / f"run-{sensor}"
    shutil.rmtree(out / "cube", ignore_errors=True)
    params = parameters(out)
    global SAMPLER
    sampler = SAMPLER = RssSampler()
    timer = Timer(sampler)
    t_all = time.perf_counter()
    c_all = time.process_time()
    res: dict = {"sensor": sensor, "nthread": NTHREAD, "consume": CONSUME, "grid": {"nx": level1.grid.nx,
                 "ny": level1.grid.ny, "res": level1.grid.dx},
                 "rss_start_mb": round(sampler.rss() / 2**20, 1)}
    scene = pipeline.prepare_scene(level1, params, timer)
    res["scene_mb"] = round((sum(a.nbytes for a in scene.toa.values()) + scene.qai.nbytes)
                            / 2**20, 1)
    if stop_after != "prepare":
        with timer("clouds"):
            clouds = detect_clouds(scene, params)
        res["clouds_substages"] = clouds.stats.get("timings")
        res["clouds_log"] = clouds.log_fragment.strip()
        res["clouds_objects"] = clouds.stats.get("objects")
        scene.extra.pop("cloud_objects", None)
        if stop_after != "clouds":
            with timer("products"):
                products = pipeline.assemble_products(scene, params)
            scene.toa.clear()
            with timer("cube"):
                r = write_cube(products, level1_id=level1.product_id,
                               date=level1.date_string, sensor=level1.sensor, params=params,
                               origin=str(level1.source), refsys_id=level1.refsys_id,
                               acquired=level1.acquired,
                               param_log=format_force_param(params), num_threads=NTHREAD,
                               **({"consume": True} if CONSUME else {}))
            res["tiles"] = r.n_tiles
            del products
    res["total_seconds"] = round(time.perf_counter() - t_all, 2)
    res["total_cpu_seconds"] = round(time.process_time() - c_all, 2)
    res["stages"] = timer.stages
    res["substages"] = {k: {"seconds": round(v[0], 2), "cpu_seconds": round(v[1], 2),
                            "calls": v[2], "peak_rss_mb": round(v[3] / 2**20, 1)}
                        for k, v in _SUB.items()}
    ru = resource.getrusage(resource.RUSAGE_SELF)
    res["peak_rss_mb"] = round(ru.ru_maxrss / 1024, 1)
    res["load_avg"] = os.getloadavg()
    sampler.stop()
    return res


def main(argv: list[str]) -> None:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sensors", nargs="*", default=["LND08", "SEN2A"])
    ap.add_argument("--label", default="after")
    ap.add_argument("--stop-after", choices=["prepare", "clouds"], default=None)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        r = run(a.sensors[0], a.stop_after)
        print("RESULT " + json.dumps(r), flush=True)
        return
    env = dict(os.environ, NUMBA_CACHE_DIR=os.environ.get(
        "NUMBA_CACHE_DIR", str(REPO / ".venv" / "numba-cache")))
    for s in a.sensors:
        cmd = [sys.executable, __file__, s, "--one"]
        if a.stop_after:
            cmd += ["--stop-after", a.stop_after]
        p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        sys.stdout.write("\n".join(ln for ln in p.stdout.splitlines()
                                   if not ln.startswith("RESULT ")) + "\n")
        if p.returncode:
            print(f"{s}: failed ({p.returncode})", file=sys.stderr)
            continue
        r = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        results.setdefault(a.label, {})[s] = r
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        print(json.dumps({k: r[k] for k in ("sensor", "total_seconds", "total_cpu_seconds",
                                             "peak_rss_mb")}))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    main(sys.argv[1:])
