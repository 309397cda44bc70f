"""The whole chain for one Level-1 image, in memory (DESIGN.md; spec 03 §1).

This is the only module that knows the order of the stages:

  open (extract) → metadata, tier → read DN → initial QAI (nodata, saturation, noise)
  → sun/view geometry → DN→TOA/BT → [topography] → [clouds, shadows, snow, water]
  → [co-registration] → [resolution merge] → [atmospheric correction] → AOI
  → products (BOA/TOA, QAI, HOT, VZN, ...) → cube (warp, tile, merge-on-write)

Stages in brackets are added by later work; each stage is a function from arrays to
arrays. ``process_image`` returns the job record fields (status details, covers, tiles and
files written, timings and peak memory per stage).
"""
from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np

from . import qai as Q
from .grid import Grid
from .level1.model import Level1
from .params import Parameters, format_force_param
from .products import RESAMPLING_NAMES, Product
from .scene import Scene, resample_nearest

TOA_NODATA = -9999


class StageTimer:
    """Wall time, CPU time and peak RSS per stage (for the record and the benchmarks).
    After each stage the freed C heap goes back to the system (``malloc_trim``: what a
    stage freed would otherwise stay resident; −95 MiB at a Sentinel-2 tile's peak)."""

    def __init__(self):
        self.stages: dict[str, dict] = {}

    @contextmanager
    def __call__(self, name: str):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            from .memory import release_free_heap
            release_free_heap()
            st = self.stages.setdefault(name, {"seconds": 0.0, "cpu_seconds": 0.0})
            st["seconds"] = round(st["seconds"] + time.perf_counter() - t0, 3)
            st["cpu_seconds"] = round(st["cpu_seconds"] + time.process_time() - c0, 3)
            st["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    def substages(self, stage: str, seconds: dict | None, cpu: dict | None = None) -> None:
        """Record a stage's own sub-stage timings as "<stage>.<name>": wall ``seconds`` and,
        where given, ``cpu`` seconds (numeric values only)."""
        cpu = cpu or {}
        for name, s in (seconds or {}).items():
            if isinstance(s, (int, float)):
                entry = self.stages[f"{stage}.{name}"] = {"seconds": round(float(s), 3)}
                if isinstance(cpu.get(name), (int, float)):
                    entry["cpu_seconds"] = round(float(cpu[name]), 3)


def process_image(source: Path, params: Parameters, *, log: Callable[[str], None] = print) -> dict:
    """Run the chain on one Level-1 image (archive or folder) and write its products.

    Raises an ``L2psError`` for bad input (the caller marks the queue line FAIL).
    """
    from .level1 import check_tier, open_level1

    timer = StageTimer()
    t_start = time.perf_counter()
    source = Path(source)
    record: dict = {}
    fragments: list[str] = []
    with timer("extract+metadata"):
        cm = open_level1(source, tempdir=params.dir_temp)
        level1 = cm.__enter__()
    try:
        check_tier(level1, params.tier)
        record.update(_level1_summary(level1))
        result = _process_level1(level1, params, timer, fragments)
        record.update(result)
    finally:
        with timer("cleanup"):
            cm.__exit__(None, None, None)
    elapsed = time.perf_counter() - t_start
    mins, secs = divmod(elapsed, 60)
    fragments.append(f"Success! Processing time: {int(mins):02d} mins {secs:02.0f} secs")
    record["log_line"] = " ".join(fragments)
    record["stages"] = timer.stages
    log(record["log_line"])
    return record


def _level1_summary(level1: Level1) -> dict:
    return {"product_id": level1.product_id, "sensor": level1.sensor,
            "date": level1.acquired.strftime("%Y-%m-%d"),
            "acquired": level1.acquired.isoformat(), "tier": level1.tier,
            "refsys": f"{level1.refsys_type} {level1.refsys_id}",
            "metadata_cloud_cover": level1.cloud_cover,
            "grid": {"nx": level1.grid.nx, "ny": level1.grid.ny, "dx": level1.grid.dx,
                     "dy": level1.grid.dy}}


def prepare_scene(level1: Level1, params: Parameters, timer: StageTimer | None = None) -> Scene:
    """The front half of the chain: read DN, initial QAI, geometry, DN→TOA/BT
    (spec 01 §1–§3), [topography]. Returns the Scene the later stages work on."""
    from .geometry import compute_geometry, update_qai
    from .level1 import read_bands
    from .toa import apply_toa_nodata, initial_qai, toa_in_place

    timer = timer or StageTimer()
    spec = level1.spec
    grid = level1.grid
    nthreads = max(1, int(params.nthread))
    with timer("read"):
        dn = read_bands(level1, workers=min(nthreads, len(level1.bands)) if params.parallel_reads
                        else 1, num_threads=1 if params.parallel_reads else nthreads)
    with timer("qai"):
        qai = initial_qai(level1, dn, grid, params.buffer_nodata, params.impulse_noise)
    with timer("geometry"):
        geometry = compute_geometry(level1, qai)
        update_qai(qai, geometry, grid)
    with timer("toa"):
        toa: dict[str, np.ndarray] = {}
        for domain in list(dn):
            band = level1.bands[domain]
            # Landsat reflective bands: cos θs per pixel, computed per row block inside
            geo = geometry if spec.mission == "landsat" and not band.thermal else None
            # in the DN's own buffer for 16-bit DNs: one copy of each band at any time
            toa[domain] = toa_in_place(dn.pop(domain), band, spec, geometry=geo)
        apply_toa_nodata(toa, qai, spec)
    scene = Scene(level1=level1, grid=grid, toa=toa,
                  grids={d: level1.bands[d].grid for d in toa}, qai=qai, geometry=geometry)
    with timer("topography"):
        from .topography import compile_topography
        # DEM (or flat 0 m), slope, aspect, illumination; QAI nodata/slope/illumination bits
        scene.topography = compile_topography(scene, params)
    return scene


def _process_level1(level1: Level1, params: Parameters, timer: StageTimer,
                    fragments: list[str]) -> dict:
    scene = prepare_scene(level1, params, timer)
    qai, grid = scene.qai, scene.grid
    # ULTRABLUE served the nodata footprint (spec 01 §9 item 7, done) and serves the AOD
    # estimation only: without DO_ATMO it is dropped now (Landsat 8/9: 2 bytes per pixel)
    _drop_bands(scene, () if params.do_atmo else ("ULTRABLUE",))
    nthreads = max(1, int(params.nthread))
    if Q.count_valid(qai) == 0:
        from .errors import ProcessingError
        raise ProcessingError(f"{level1.source}: no valid pixel in the image")
    with timer("clouds"):
        from .clouds import detect_clouds
        # bands only a later stage reads wait on disk while the cloud stage has its peak
        with _parked(scene, CLOUD_STAGE_PARKED.get(level1.mission, ()), params.dir_temp):
            clouds = detect_clouds(scene, params, release_bands=True)
    timer.substages("clouds", clouds.stats.get("timings"), clouds.stats.get("cpu_timings"))
    scene.extra.pop("cloud_objects", None)     # diagnostics only; a full-size int32 array
    # thermal and cirrus bands serve the cloud detection only (internal, spec 01 §8)
    _drop_bands(scene, ("TEMP", "CIRRUS"))
    fragments.append(clouds.log_fragment.strip())
    record = {"data_cover": round(clouds.data_cover, 2), "water_cover": round(clouds.water_cover, 2),
              "snow_cover": round(clouds.snow_cover, 2), "cloud_cover": round(clouds.cloud_cover, 2),
              "cloud_cover_unbuffered": round(clouds.cloud_cover_unbuffered, 2)}
    topo = scene.topography
    if topo is not None and getattr(topo, "source", None) is not None:
        record["dem"] = {"file": str(topo.source), "coverage": getattr(topo, "coverage", None),
                         "min_km": topo.dem_min_km, "max_km": topo.dem_max_km}
    if clouds.skip:
        fragments.append("Skip.")
        record.update({"skipped": True, "reason": f"too cloudy: {clouds.cloud_cover:.2f} % > "
                       f"MAX_CLOUD_COVER_FRAME {params.max_cloud_cover_frame:g}",
                       "tiles": [], "files": []})
        return record
    if params.dir_coreg_base is not None:
        with timer("coreg"):
            from .coreg import coregister
            cr = coregister(scene, params)
        fragments.append(cr.log_fragment.strip())
        record["coreg"] = {"n_ties": cr.n_ties, "shift_x_m": round(cr.shift_x_m, 3),
                           "shift_y_m": round(cr.shift_y_m, 3), "rmse_px": round(cr.rmse_px, 4),
                           "base_image": str(cr.base_image), "model": cr.model}
    merged_rows = None
    if level1.mission == "sentinel2" and params.res_merge != "NONE":
        # TOA only (no AOI, no cloud erasing: nothing changes the bands before the cube):
        # IMPROPHE's rows are computed as the cube writer reads them (memory)
        lazy = (params.res_merge == "IMPROPHE" and not params.do_atmo
                and params.file_aoi is None and not params.erase_clouds)
        with timer("resmerge"):
            from .resmerge import resolution_merge
            # BLUE is no predictor: on disk while the six 10 m bands are made (the peak of
            # the merge made now; the merge made when read has no such peak)
            with _parked(scene, () if lazy else ("BLUE",), params.dir_temp):
                record["res_merge"] = resolution_merge(scene, params.res_merge,
                                                       nthreads=nthreads, lazy=lazy)
        if lazy:
            merged_rows = scene.toa["REDEDGE1"].merged
    if params.file_aoi is not None:
        with timer("aoi"):
            from .cube import rasterize_aoi
            inside = rasterize_aoi(params.file_aoi, grid)
            Q.set_flag(qai, Q.NODATA, ~inside)
    atmo = None
    if params.do_atmo:
        with timer("atmosphere"):
            from .atmosphere import correct_atmosphere
            atmo = correct_atmosphere(scene, params, factor_hook=_factor_hook(scene, params))
        for name, seconds in (atmo.stats or {}).items():
            if isinstance(seconds, (int, float)):
                timer.stages.setdefault(f"atmosphere.{name}", {"seconds": round(float(seconds), 3)})
        fragments.append(atmo.log_fragment.strip())
        record.update({"aod550": round(float(atmo.aod550_scene), 4),
                       "water_vapor": round(float(atmo.water_vapor_scene), 3),
                       "dark_targets": list(atmo.n_targets),
                       "atmosphere": {k: v for k, v in (atmo.info or {}).items()
                                      if isinstance(v, (str, int, float, bool))}})
    with timer("products"):
        products = assemble_products(scene, params, reflectance=atmo.boa if atmo else None,
                                     aod=atmo.aod if atmo else None,
                                     wvp=atmo.wvp if atmo else None)
    del atmo
    # the products hold the only references now (write_cube frees them as it goes)
    scene.toa.clear()
    scene.qai = None
    del qai
    with timer("cube"):
        from .cube import write_cube
        result = write_cube(products, level1_id=level1.product_id, date=level1.date_string,
                            sensor=level1.sensor, params=params, origin=str(level1.source),
                            refsys_id=level1.refsys_id, acquired=level1.acquired,
                            param_log=format_force_param(params), num_threads=nthreads,
                            consume=True)
    timer.substages("cube", getattr(result, "timings", None),
                    getattr(result, "cpu_timings", None))
    if merged_rows is not None:
        # the merge ran inside the cube stage (its worker thread): seconds computing rows
        record["res_merge"]["pixels_merged"] = merged_rows.count_merged()
        timer.stages["cube.resmerge"] = {"seconds": round(merged_rows.seconds, 3)}
        del merged_rows
    fragments.append(f"{result.n_tiles:2d} product(s) written.")
    record.update({"tiles": list(result.tiles_written),
                   "files": [{"path": str(f.path), "mode": f.mode} for f in result.files],
                   "tiles_skipped_cloudy": dict(result.tiles_skipped_cloud),
                   "cubes": [c.name or "cube" for c in result.cubes]})
    return record


#: Bands the cloud stage does not read but a later stage does, per mission, kept in a file
#: of DIR_TEMP during the cloud stage: Landsat 8/9's ULTRABLUE (the AOD estimation's; 2
#: bytes per pixel, −0.11 GB at the cloud stage's peak for a full scene; the Sentinel-2
#: band is 60 m). Written and read back whole (≈ 0.1 s), so the values are unchanged.
#: Likewise the Sentinel-2 BLUE band during the resolution merge (−0.23 GB at its peak).
CLOUD_STAGE_PARKED = {"landsat": ("ULTRABLUE",)}


@contextmanager
def _parked(scene: Scene, domains: tuple[str, ...], directory: Path):
    """Move ``scene.toa[d]`` of ``domains`` to .npy files in ``directory`` for the body of
    the with-statement and back afterwards (also on errors; the files are removed). A band
    that cannot be written stays in memory."""
    import tempfile
    parked: dict[str, Path] = {}
    try:
        for d in domains:
            arr = scene.toa.get(d)
            if arr is None:
                continue
            path = None
            try:
                fd, name = tempfile.mkstemp(prefix=f"l2ps-{d}-", suffix=".npy", dir=directory)
                path = Path(name)
                with open(fd, "wb") as f:
                    np.save(f, arr, allow_pickle=False)
            except OSError:
                if path is not None:
                    path.unlink(missing_ok=True)
                continue
            parked[d] = path
            del arr
            scene.toa[d] = None
        yield
    finally:
        for d, path in parked.items():
            try:
                scene.toa[d] = np.load(path, allow_pickle=False)
            finally:
                path.unlink(missing_ok=True)


def _drop_bands(scene: Scene, domains: tuple[str, ...]) -> None:
    """Free the internal bands ``domains`` that no later stage reads (memory)."""
    for d in domains:
        scene.toa.pop(d, None)


def _factor_hook(scene: Scene, params: Parameters):
    """The multiplicative factor of spec 02 §1.9 (ρBOA = A·brdf·ρ) per band and row block:
    BRDF c-factor (DO_BRDF). The topographic factor A (DO_TOPO) needs the band's diffuse
    ratio from the RT and is applied inside the atmospheric correction."""
    if not params.do_brdf:
        return None
    from .brdf import brdf_factor

    def hook(domain: str, rows: slice):
        return brdf_factor(scene.geometry, domain, scene.grids.get(domain, scene.grid), rows)
    return hook


def _nodata_where_qai(arrays: list[np.ndarray], qai: np.ndarray, block_rows: int = 512) -> None:
    """In place: TOA_NODATA in ``arrays`` (on ``qai``'s grid) where QAI is nodata, in blocks
    of rows (masks of a few MB instead of full-size uint16 and boolean temporaries)."""
    for r0 in range(0, qai.shape[0], block_rows):
        rows = slice(r0, min(r0 + block_rows, qai.shape[0]))
        off = Q.get_flag(qai[rows], Q.NODATA)
        if off.any():
            for arr in arrays:
                arr[rows][off] = TOA_NODATA


def assemble_products(scene: Scene, params: Parameters,
                      reflectance: dict[str, np.ndarray] | None = None,
                      aod: np.ndarray | None = None,
                      wvp: np.ndarray | None = None) -> list[Product]:
    """Products in FORCE's order (spec 03 §1): QAI first, then BOA/TOA, DST, VZN, HOT,
    AOD, WVP (OVV is made by the cube writer from the merged BOA and QAI).

    ``reflectance``: BOA per output domain (default: the TOA of the scene)."""
    level1, qai, geometry, toa = scene.level1, scene.qai, scene.geometry, scene.toa
    spec = level1.spec
    grid = scene.grid
    refl = toa if reflectance is None else reflectance
    resampling = RESAMPLING_NAMES[params.resampling]
    cache: dict = {}

    def nodata_mask() -> np.ndarray:
        """The full-size nodata mask, made only when a coarser band, VZN or HOT needs it."""
        if "m" not in cache:
            cache["m"] = Q.is_nodata(qai)
        return cache["m"]

    out: list[Product] = [Product("QAI", [qai], [grid], ("QAI",), Q.QAI_NODATA, 1.0,
                                  resampling="nearest",
                                  description="Quality assurance information")]
    names = spec.output_domains
    if params.erase_clouds:
        from .clouds import erase_clouds
        erase_clouds({d: refl[d] for d in names}, {d: scene.grids.get(d, grid) for d in names},
                     qai, grid)
    bands, grids = [], []
    for d in names:
        arr = refl[d]
        g = scene.grids.get(d, level1.bands[d].grid)
        if arr.shape != qai.shape:
            # a coarser band's pixel is nodata when the QAI pixel under its centre is
            arr[resample_nearest(nodata_mask(), grid, g)] = TOA_NODATA
        bands.append(arr)
        grids.append(g)
    _nodata_where_qai([a for a in bands if isinstance(a, np.ndarray) and a.shape == qai.shape],
                      qai)
    for merged in {id(a.merged): a.merged for a in bands if hasattr(a, "merged")}.values():
        merged.capture_nodata(qai)       # bands computed when read (resolution merge)
    from .bandinfo import wavelength
    product_name = "BOA" if params.do_atmo else "TOA"
    out.append(Product(product_name, bands, grids, names, TOA_NODATA, 10000.0,
                       resampling=resampling,
                       wavelengths=tuple(wavelength(spec.sensor, d) for d in names),
                       description="Bottom-of-atmosphere reflectance" if params.do_atmo
                       else "Top-of-atmosphere reflectance"))
    if params.output_vzn:
        vzn = geometry.view_zenith_at(grid)
        v = np.where(nodata_mask(), TOA_NODATA, np.trunc(vzn * 100)).astype(np.int16)
        out.append(Product("VZN", [v], [grid], ("VZN",), TOA_NODATA, 100.0,
                           resampling=resampling, description="View zenith"))
    if params.output_aod and aod is not None:
        from .bandinfo import wavelength as _wl
        out.append(Product("AOD", [aod], [grid], ("AOD",), TOA_NODATA, 1000.0,
                           resampling=resampling, wavelengths=(_wl(spec.sensor, "GREEN"),),
                           description="Aerosol optical depth"))
    if params.output_wvp and wvp is not None:
        out.append(Product("WVP", [wvp], [grid], ("WVP",), TOA_NODATA, 1000.0,
                           resampling=resampling, description="Water vapor"))
    if params.output_hot:
        blue, red = toa["BLUE"], toa["RED"]
        if blue.shape == qai.shape and red.shape == qai.shape:
            # spec 02 §8.5: blue − 0.5·red − 800 on the ×10000 TOA, truncated toward zero
            hot = np.trunc(blue.astype(np.float32) - np.float32(0.5) * red - np.float32(800))
            hot = np.where(nodata_mask() | (blue == TOA_NODATA) | (red == TOA_NODATA), TOA_NODATA,
                           np.clip(hot, -32768, 32767)).astype(np.int16)
            out.append(Product("HOT", [hot], [grid], ("HOT",), TOA_NODATA, 10000.0,
                               resampling=resampling, description="Haze optimized transform"))
    return out
