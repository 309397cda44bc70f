"""Benchmark of the cube writer (not a test): wall time and peak RSS of
:func:`l2ps.cube.write_cube` on synthetic products.

Cases (each in its own process, so that peak RSS is per case):

* ``s2_600``     600x600 px Sentinel-2-like scene (10 bands + QAI, 10 m UTM) into GLANCE7
                 at 10 m, placed across a tile boundary (touches 2 tiles of 15000² px);
* ``full_glance7`` / ``full_wkt30``  a 10980² x 10-band int16 scene into GLANCE7 at 10 m
                 and into a 30 km EPSG:3035 WKT cube;
* ``merge``      the 10980² scene into GLANCE7, then the same image again (reprocessing,
                 single contributor) and a second same-day image shifted by 3 km (merge
                 of two contributors);
* ``cog_floor``  one mostly-empty 15000² x 10-band COG tile (a 768² window of data);
* ``scene:LND09-1`` / ``scene:SEN2A-1``  the cube stage of the pipeline on the coordinator's
                 full-size synthetic scenes (benchmarks/scenes/<name>/DONE): products are
                 made once (read, QAI, geometry, TOA, no cloud detection; default
                 outputs: QAI, TOA, OVV) and cached in $BENCH_CACHE (default
                 /tmp/l2ps_bench_cube), then ``write_cube(..., consume=True)`` into
                 GLANCE7 COG as ``pipeline.py`` calls it; ``scene-gtiff:<name>`` the
                 same with OUTPUT_FORMAT = GTiff. Reported: wall and CPU seconds of
                 the call, its sub-stage timings, the RSS before and the peak RSS during
                 the call (VmHWM reset before it), the load average;
* ``warp:LND09-1`` / ``warp:SEN2A-1``  per band, the own warper against GDAL's
                 (rasterio WarpedVRT, 1e-3 px) on the same scene: seconds and agreement.

Run: ``nice .venv/bin/python benchmarks/bench_cube.py [case ...]`` (e.g.
``scene:LND09-1 scene:SEN2A-1``); results are merged into
benchmarks/results/cube.json. NTHREAD = 2.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "cube.json"
NTHREAD = 2
S2_BANDS = ("BLUE", "GREEN", "RED", "REDEDGE1", "REDEDGE2", "REDEDGE3", "BROADNIR",
            "NIR", "SWIR1", "SWIR2")


def _products(n: int, x0: float, y0: float, seed: int = 0):
    """QAI + 10-band BOA on a 10 m UTM 32N grid of n x n pixels: smooth fields plus
    noise (compresses like imagery, not like random numbers)."""
    import numpy as np
    from pyproj import CRS

    from l2ps.grid import Grid
    from l2ps.products import Product
    g = Grid(CRS.from_epsg(32632).to_wkt(), x0, y0, 10.0, 10.0, n, n)
    rng = np.random.default_rng(seed)
    yy = np.linspace(0, 6, n, dtype=np.float32)[:, None]
    xx = np.linspace(0, 6, n, dtype=np.float32)[None, :]
    bands = []
    for k in range(len(S2_BANDS)):
        b = (1500 + 800 * np.sin(yy + k) * np.cos(xx * 1.3 - k)).astype(np.int16)
        b += rng.integers(-40, 40, size=(1, n), dtype=np.int16)
        bands.append(b)
    q = np.zeros((n, n), np.uint16)
    q[: n // 8] |= np.uint16(2 << 1)              # some cloud
    return [Product("QAI", [q], [g], ("QAI",), 1, 1.0, "nearest"),
            Product("BOA", bands, [g] * len(bands), S2_BANDS, -9999, 10000.0, "cubic",
                    wavelengths=tuple(0.4 + 0.1 * i for i in range(len(S2_BANDS))))]


def _params(out: Path, projection: str, tile: float = 30000.0) -> dict:
    return {"DO_REPROJ": True, "DO_TILE": True, "RESOLUTION_SENTINEL2": 10.0,
            "RESOLUTION_LANDSAT": 30.0, "OUTPUT_FORMAT": "COG", "OUTPUT_OVV": True,
            "MAX_CLOUD_COVER_TILE": 100.0, "FILE_TILE": "NULL", "DIR_PROVENANCE": None,
            "NTHREAD": NTHREAD, "TILE_SIZE": [tile, tile], "PROJECTION": projection,
            "ORIGIN_LON": -25.0, "ORIGIN_LAT": 60.0, "DIR_LEVEL2": str(out)}


def _write(prods, params, ident, date="20200701"):
    from l2ps.cube import write_cube
    t = time.perf_counter()
    r = write_cube(prods, level1_id=ident, date=date, sensor="SEN2A", params=params,
                   num_threads=NTHREAD)
    return {"seconds": round(time.perf_counter() - t, 2), "tiles": r.n_tiles,
            "modes": sorted({f.mode for f in r.files})}


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _boundary_origin(n: int) -> tuple[float, float]:
    """UTM 32N (x0, y0) of an n x n 10 m scene centred on a GLANCE7 tile corner."""
    from pyproj import Transformer

    from l2ps.cube.continental import covered_continents
    import numpy as np
    cube = covered_continents("GLANCE7", np.array([[9.0, 50.0]]), None)[0]
    to_cube = Transformer.from_crs("EPSG:32632", cube.wkt, always_xy=True)
    X, Y = cube.tile_find(*to_cube.transform(500000.0, 5540000.0))
    ulx, uly = cube.tile_ul(X, Y)
    x, y = Transformer.from_crs(cube.wkt, "EPSG:32632", always_xy=True).transform(ulx, uly)
    return float(round(x / 10) * 10 - n * 5), float(round(y / 10) * 10 + n * 5)


# ---------------------------------------------------------------- real scenes
SCENES = HERE / "scenes"
CACHE = Path(os.environ.get("BENCH_CACHE", "/tmp/l2ps_bench_cube"))


def _scene_params(out: Path):
    """The TOA-cube parameters of benchmarks/profile_toa.py (GLANCE7 COG, DO_ATMO FALSE)."""
    sys.path.insert(0, str(HERE))
    import profile_toa
    profile_toa.NTHREAD = NTHREAD
    return profile_toa.parameters(out)


def _scene_products(scene: str, params):
    """(products, level1 summary) of a coordinator scene, cached as a pickle."""
    import pickle
    cache = CACHE / f"{scene}.pkl"
    if cache.exists():
        with open(cache, "rb") as fh:
            return pickle.load(fh)
    from l2ps import pipeline
    from l2ps.level1 import open_level1
    src = Path((SCENES / scene / "DONE").read_text().split()[0])
    with open_level1(src) as level1:
        sc = pipeline.prepare_scene(level1, params)
        prods = pipeline.assemble_products(sc, params)
        meta = dict(level1_id=level1.product_id, date=level1.date_string,
                    sensor=level1.sensor, origin=str(level1.source),
                    refsys_id=level1.refsys_id, acquired=level1.acquired)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump((prods, meta), fh, protocol=5)
    os.replace(tmp, cache)
    return prods, meta


def _vm(key: str) -> float:
    for ln in Path("/proc/self/status").read_text().splitlines():
        if ln.startswith(key + ":"):
            return round(int(ln.split()[1]) / 1024, 1)
    return float("nan")


def _scene_case(scene: str, out: Path, output_format: str = "COG") -> dict:
    import dataclasses

    import numba
    numba.set_num_threads(NTHREAD)
    os.environ.setdefault("GDAL_NUM_THREADS", str(NTHREAD))
    from l2ps.cube import write_cube
    params = _scene_params(out)
    prods, meta = _scene_products(scene, params)
    if output_format != "COG":
        params = dataclasses.replace(params, output_format=output_format)
    res: dict = {"scene": scene, "output_format": output_format,
                 "products": [f"{p.name}x{p.nbands}" for p in prods],
                 "scene_mb": round(sum(b.nbytes for p in prods for b in p.bands) / 2**20, 1),
                 "grid": list(prods[0].grids[0].shape)}
    res["rss_before_mb"] = _vm("VmRSS")
    try:                                    # reset the peak (VmHWM) to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    load0 = os.getloadavg()
    t, c = time.perf_counter(), time.process_time()
    r = write_cube(prods, params=params, num_threads=NTHREAD, consume=True, **meta)
    res["cube_seconds"] = round(time.perf_counter() - t, 2)
    res["cube_cpu_seconds"] = round(time.process_time() - c, 2)
    res["cube_peak_rss_mb"] = _vm("VmHWM")
    res["timings"] = r.timings
    res["cpu_timings"] = getattr(r, "cpu_timings", {})
    res["tiles"] = r.n_tiles
    res["load_avg_before_after"] = [round(v, 2) for v in load0 + os.getloadavg()]
    return res


def _warp_case(scene: str, out: Path) -> dict:
    """Own warper vs GDAL's, band by band, on the scene's products."""
    import numba
    import numpy as np
    numba.set_num_threads(NTHREAD)
    from l2ps.cube.continental import covered_continents  # noqa: F401
    from l2ps.cube.grid import cube_for_params, grid_footprint, target_resolution
    from l2ps.cube.warp import (_warp_band, gdal_warp_band, resampling_of,
                                source_mesh)
    params = _scene_params(out)
    prods, meta = _scene_products(scene, params)
    native = prods[0].grids[0]
    cube = cube_for_params(params, grid_footprint(native, "EPSG:4326"), native)[0]
    res_m = target_resolution(params, meta["sensor"])
    cube.tile_pixels(res_m)
    target = cube.aligned_grid(grid_footprint(native, cube.wkt), res_m)
    rows = []
    for p in prods:
        rs = resampling_of(p)
        meshes = {}
        for i, (b, g) in enumerate(zip(p.bands, p.grids)):
            if i > 2 and p.name != "QAI":
                break                        # three bands are enough
            t, c = time.perf_counter(), time.process_time()
            if g not in meshes:
                meshes[g] = source_mesh(g, target)
            own = _warp_band(b, g, target, rs, p.nodata, NTHREAD, meshes[g])
            t_own, c_own = time.perf_counter() - t, time.process_time() - c
            t, c = time.perf_counter(), time.process_time()
            ref = gdal_warp_band(b, g, target, rs, p.nodata, NTHREAD)
            t_ref, c_ref = time.perf_counter() - t, time.process_time() - c
            both = (own != p.nodata) & (ref != p.nodata)
            d = np.abs(own.astype(np.int32) - ref)[both]
            rows.append({"product": p.name, "band": p.band_names[i], "src": list(g.shape),
                         "resampling": rs.name, "mesh_step": meshes[g][2],
                         "mesh_max_error_px": float(f"{meshes[g][3]:.2e}"),
                         "own_s": round(t_own, 2), "own_cpu_s": round(c_own, 2),
                         "gdal_s": round(t_ref, 2), "gdal_cpu_s": round(c_ref, 2),
                         "valid_mismatch": int(np.count_nonzero((own != p.nodata) !=
                                                                (ref != p.nodata))),
                         "equal_pct": round(100 * float(np.mean(d == 0)), 4) if d.size else None,
                         "within_1_pct": round(100 * float(np.mean(d <= 1)), 4) if d.size else None})
            del own, ref
    return {"scene": scene, "target": list(target.shape), "bands": rows,
            "load_avg": [round(v, 2) for v in os.getloadavg()]}


def case(name: str) -> dict:
    from l2ps.cube.warp import warp_products  # noqa: F401  (import time not measured)
    out = Path(tempfile.mkdtemp(prefix=f"bench_cube_{name}_", dir=os.environ.get("BENCH_TMP")))
    res: dict = {"case": name, "nthread": NTHREAD}
    if name.startswith("scene:"):
        res.update(_scene_case(name.split(":", 1)[1], out))
    elif name.startswith("scene-gtiff:"):
        res.update(_scene_case(name.split(":", 1)[1], out, "GTiff"))
    elif name.startswith("warp:"):
        res.update(_warp_case(name.split(":", 1)[1], out))
    elif name == "s2_600":
        x0, y0 = _boundary_origin(600)
        res["write"] = _write(_products(600, x0, y0), _params(out, "GLANCE7"), "S2_A")
    elif name in ("full_glance7", "full_wkt30"):
        from pyproj import CRS
        proj = "GLANCE7" if name == "full_glance7" else CRS.from_epsg(3035).to_wkt()
        t = time.perf_counter()
        prods = _products(10980, 399960.0, 5600040.0)
        res["make_products_s"] = round(time.perf_counter() - t, 2)
        res["scene_mb"] = round(sum(b.nbytes for p in prods for b in p.bands) / 2**20, 1)
        res["write"] = _write(prods, _params(out, proj), "S2_A")
    elif name == "merge":
        n = int(os.environ.get("BENCH_N", "10980"))        # scene size (px)
        res["scene_px"] = n
        prods = _products(n, 399960.0, 5600040.0)
        p = _params(out, "GLANCE7")
        res["first"] = _write(prods, p, "S2_A")
        res["same_image_again"] = _write(prods, p, "S2_A")
        del prods
        res["second_image_shifted_3km"] = _write(_products(n, 402960.0, 5597040.0, seed=1),
                                                 p, "S2_B")
    elif name == "cog_floor":
        import numpy as np
        from pyproj import CRS

        from l2ps.cube import formats
        from l2ps.grid import Grid
        g = Grid(CRS.from_epsg(3035).to_wkt(), 4e6, 3e6, 10.0, 10.0, 15000, 15000)
        spec = formats.RasterSpec(S2_BANDS, -9999)
        data = [np.full((768, 768), 1000 + k, np.int16) for k in range(10)]
        t = time.perf_counter()
        win = formats.Window(0, 0, 768, 768)
        formats.write_window(out / "w.tif", data, (0, 0), (768, 768), g, -9999,
                             overviews=(formats.overview_factors(15000, 15000), "AVERAGE"))
        res["window_file_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        formats.write_tile(out / "cog.tif", g, 10, formats.output_format("COG"), spec, "BOA",
                           [formats.Layer(str(out / "w.tif"), win, 5120, 2560,
                                          tuple(formats.overview_factors(15000, 15000)))],
                           out, num_threads=NTHREAD)
        res["cog_15000x15000x10_s"] = round(time.perf_counter() - t, 2)
        res["is_cog"] = formats.is_cog(out / "cog.tif")
        res["bytes"] = (out / "cog.tif").stat().st_size
    ru = resource.getrusage(resource.RUSAGE_SELF)
    res["cpu_s"] = round(ru.ru_utime + ru.ru_stime, 1)     # the machine is shared: see both
    res["peak_rss_mb"] = _rss_mb()
    res["files_mb"] = round(sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20, 1)
    import shutil
    shutil.rmtree(out, ignore_errors=True)
    return res


def main(argv: list[str]) -> None:
    if argv[:1] == ["--case"]:
        print(json.dumps(case(argv[1])))
        return
    cases = argv or ["cog_floor", "s2_600", "full_wkt30", "full_glance7", "merge"]
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    env = dict(os.environ, NUMBA_CACHE_DIR=os.environ.get(
        "NUMBA_CACHE_DIR", str(HERE.parent / ".venv" / "numba-cache")))
    for c in cases:
        t = time.perf_counter()
        p = subprocess.run([sys.executable, __file__, "--case", c], capture_output=True,
                           text=True, env=env)
        if p.returncode:
            print(p.stderr[-3000:], file=sys.stderr)
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        r["process_s"] = round(time.perf_counter() - t, 1)
        results.setdefault(os.environ.get("BENCH_LABEL", "after"), {})[c] = r
        print(json.dumps(r))
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
