"""Synthetic Sentinel-2A/B/C Level-1C products in the ESA delivery format: a ``.SAFE`` folder
(or its ``.zip``) with ``MTD_MSIL1C.xml``, ``GRANULE/L1C_T<MGRS>_A<orbit>_<time>/MTD_TL.xml``
(tile geocoding, sun and per band × detector view angle grids on 5 km nodes) and JPEG 2000
bands ``IMG_DATA/T<MGRS>_<time>_B01.jp2 …`` at 10/20/60 m (lossless, GDAL JP2OpenJPEG).

Baselines before 04.00: DN = round(ρ_TOA·10000); from 04.00: DN = round(ρ_TOA·10000) + 1000
with ``RADIO_ADD_OFFSET = -1000``. DN 0 is no data, 65535 saturated.

Geometry: the tile's UTM origin from its MGRS id; a descending sun-synchronous orbit
(98.62°, 786 km, 10:30 at the descending node) whose ground track passes ``nadir_offset_km``
east of the tile centre; per-band along-track viewing angles (:data:`BAND_BETA`) make clouds
appear displaced between bands in proportion to their height (band-to-band parallax).
Small tiles (``size=(n, n)`` in 10 m pixels, n divisible by 6) are the UL corner region's
miniature: same origin, place and time, fewer pixels. See docs/synth.md.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import zipfile
from datetime import date as _date, datetime, timedelta, timezone
from xml.sax.saxutils import escape

import numpy as np
from pyproj import Transformer
from rasterio.crs import CRS

from ..grid import Grid
from ..level1.sensors import sensor_spec
from . import spectra
from .scene import (add_strip_counts, write_angles, Geometry, Scene, SceneOptions, SynthProduct, TruthWriter, TRUTH_LAYERS,
                    WriteQueue,
                    atmosphere_name, earth_sun_distance, grid_north, refl_int16)

BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
RES = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10,
       "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20}
#: along-track viewing angle of each band (degrees, + = forward). A model of the MSI focal
#: plane layout (bands sit at different along-track positions), not the instrument's
#: calibrated values: B07/B8A close together, B08 far from both (what the CDI relies on).
BAND_BETA = {"B01": 0.90, "B02": -0.55, "B03": -0.20, "B04": -0.05, "B05": 0.10, "B06": 0.25,
             "B07": 0.40, "B08": -0.40, "B8A": 0.75, "B09": 1.05, "B10": -0.30, "B11": 0.00,
             "B12": 0.20}
_WAVE = {  # nominal (min, max, central) nm
    "B01": (412, 456, 442.7), "B02": (456, 533, 492.4), "B03": (538, 583, 559.8),
    "B04": (646, 684, 664.6), "B05": (695, 714, 704.1), "B06": (731, 749, 740.5),
    "B07": (769, 797, 782.8), "B08": (760, 907, 832.8), "B8A": (848, 881, 864.7),
    "B09": (932, 958, 945.1), "B10": (1337, 1412, 1373.5), "B11": (1539, 1682, 1613.7),
    "B12": (2078, 2320, 2202.4)}
#: approximate band solar irradiances (W m-2 µm-1) for the Reflectance_Conversion list
_E0 = (1884.7, 1959.7, 1823.2, 1512.1, 1424.6, 1287.6, 1162.1, 1041.6, 955.3, 812.9, 367.2,
       245.6, 85.3)
_MISSION = {"SEN2A": ("S2A", "Sentinel-2A", datetime(2015, 6, 23, tzinfo=timezone.utc)),
            "SEN2B": ("S2B", "Sentinel-2B", datetime(2017, 3, 7, tzinfo=timezone.utc)),
            "SEN2C": ("S2C", "Sentinel-2C", datetime(2024, 9, 5, tzinfo=timezone.utc)),
            "SEN2D": ("S2D", "Sentinel-2D", datetime(2028, 1, 1, tzinfo=timezone.utc))}
_INCL, _HEIGHT, _LTDN = 98.62, 786000.0, 10.5
_PERIOD = 86400.0 * 10 / 143   # s (143 orbits in 10 days)
_SIDEREAL_DAY = 86164.0905
_NODE_LON_R1 = 0.0     # reference longitude for relative orbit numbers
_R_CAL = 64
_SWATH_HALF = 145000.0
_DETECTORS = 12


# ------------------------------------------------------------------------------ MGRS


def mgrs_tile(tile: str):
    """(zone, south, epsg, ULX, ULY) of a Sentinel-2 tile id "T32UPC" / "32UPC"."""
    t = tile[1:] if tile.upper().startswith("T") else tile
    t = t.upper()
    zone, band, col, row = int(t[:2]), t[2], t[3], t[4]
    bands = "CDEFGHJKLMNPQRSTUVWX"
    if band not in bands or len(t) != 5:
        raise ValueError(f"not an MGRS tile id: {tile!r}")
    south = band < "N"
    epsg = (32700 if south else 32600) + zone
    cols = {1: "ABCDEFGH", 2: "JKLMNPQR", 0: "STUVWXYZ"}[zone % 3]
    if col not in cols:
        raise ValueError(f"column letter {col!r} not valid in zone {zone}: {tile!r}")
    e_sw = (cols.index(col) + 1) * 100000.0
    rows = "ABCDEFGHJKLMNPQRSTUV"
    n_base = ((rows.index(row) - (5 if zone % 2 == 0 else 0)) % 20) * 100000.0
    lat_min = -80.0 + 8.0 * bands.index(band)
    to_xy = Transformer.from_crs(4326, epsg, always_xy=True)
    _, n_min = to_xy.transform(zone * 6.0 - 183.0, lat_min)
    n_sw = n_base
    while n_sw + 100000.0 <= n_min:
        n_sw += 2000000.0
    ulx = math.floor(e_sw / 60.0) * 60.0
    uly = n_sw + 100000.0
    if not south:
        uly = math.ceil(uly / 60.0) * 60.0
    return zone, south, epsg, ulx, uly


# ------------------------------------------------------------------------------ orbit


def _track_point(alpha_deg: float, node_lon: float):
    inc = math.radians(_INCL)
    a = math.radians(alpha_deg)
    lat = -math.degrees(math.asin(math.sin(inc) * math.sin(a)))
    dlon = math.degrees(math.atan2(-math.sin(a) * math.cos(inc), -math.cos(a)) - math.pi)
    t = alpha_deg / 360.0 * _PERIOD
    lon = node_lon + ((dlon + 180.0) % 360.0 - 180.0) - 360.0 * t / _SIDEREAL_DAY
    return lat, (lon + 180.0) % 360.0 - 180.0, t


def orbit_for(lat: float, lon: float, offset_m: float):
    """Descending-node longitude, seconds after the node, and heading (true, deg) of a
    descending pass whose ground track passes ``offset_m`` east of (lat, lon)."""
    inc = math.radians(_INCL)
    alpha = math.degrees(math.asin(-math.sin(math.radians(lat)) / math.sin(inc)))
    _, lon0, t = _track_point(alpha, 0.0)
    la1, lo1, _ = _track_point(alpha - 0.01, 0.0)
    la2, lo2, _ = _track_point(alpha + 0.01, 0.0)
    heading = math.degrees(math.atan2((lo2 - lo1) * math.cos(math.radians(lat)), la2 - la1)) % 360
    # shift east by the offset (across a track that runs at `heading`)
    dlon = offset_m / (111320.0 * math.cos(math.radians(lat))) / abs(math.cos(math.radians(heading)))
    node_lon = lon + dlon - lon0
    return (node_lon + 180.0) % 360.0 - 180.0, t, heading


def relative_orbit(node_lon: float, day: _date) -> int:
    """A plausible relative orbit number (1..143) for a descending node longitude and day:
    orbits ~25.2° apart, +14.3 orbits per day of the 10-day cycle (calibrated so that tile
    T32UPC on 2022-06-15 gets R065, as the real product of that day)."""
    step = 360.0 * _PERIOD / _SIDEREAL_DAY
    k = round(((_NODE_LON_R1 - node_lon) % 360.0) / step)
    dd = (day - _date(2022, 6, 15)).days % 10
    return int((k + round(14.3 * dd) + _R_CAL) % 143) + 1


# ------------------------------------------------------------------------------ writer


def make_sentinel2(out_dir, *, sensor: str = "SEN2A", size=(600, 600), form: str = "safe",
                   baseline: str = "04.00", seed: int = 0, date="2021-07-15",
                   tile: str = "T32UPC", clouds=True, aod: float = 0.15,
                   water_vapor: float = 1.5, relief: float = 1.0, nadir_offset_km: float = 60.0,
                   datatake_lead_s: float = 30.0, cloud_fraction: float = 0.15,
                   snow_line: float | None = None, bright_targets: int | None = None,
                   block_rows: int | None = None, fine_texture: float = 0.0,
                   truth_10m: bool = False, brdf: str | None = None, wvp_db: bool = False,
                   aod_files: bool = False, dem_variants: bool = False) -> SynthProduct:
    """Write a synthetic Sentinel-2 L1C product (SAFE folder or zip) and its truth.

    ``size``: (n, n) in 10 m pixels (n divisible by 6) or "full" (10980). ``form``: "safe" or
    "zip". ``baseline``: processing baseline ("02.09", "04.00", ...). ``nadir_offset_km``:
    cross-track distance of the tile centre west of the ground track (larger values push the
    swath edge into the tile). ``fine_texture``: amplitude of sub-20 m surface texture
    (vegetation fraction, brightness, wetness; spectrally correlated), 0 = off (default scene).
    ``truth_10m``: also write the 20 m and 60 m bands' truth as rendered at 10 m
    (``surface_10m_Bxx.tif``, ``toa_10m_Bxx.tif``; their 20/60 m DN are the block means of
    it), the reference for the resolution merge. Returns a :class:`SynthProduct`
    (``path`` = .SAFE or .zip). ``brdf``, ``wvp_db``, ``aod_files``, ``dem_variants``: as
    :func:`l2ps.synth.landsat.make_landsat` (``nbar_Bxx`` at the band's resolution).
    """
    spec = sensor_spec(sensor)
    if spec.mission != "sentinel2":
        raise ValueError(f"{sensor} is not a Sentinel-2 sensor")
    if form not in ("safe", "zip"):
        raise ValueError(f"form {form!r}; expected safe or zip")
    n = 10980 if size == "full" else int(size[0])
    if size != "full" and int(size[1]) != n:
        raise ValueError(f"Sentinel-2 tiles are square: size={size}")
    if n % 6 or n <= 0:
        raise ValueError(f"size {n} is not divisible by 6 (60 m bands)")
    bl = float(baseline)
    offset = 1000.0 if bl >= 4.0 else 0.0
    day = date if isinstance(date, _date) else _date.fromisoformat(str(date))
    zone, south, epsg, ulx, uly = mgrs_tile(tile)
    tile = "T" + (tile[1:] if tile.upper().startswith("T") else tile).upper()
    grid = Grid(CRS.from_epsg(epsg).to_wkt(), ulx, uly, 10.0, 10.0, n, n)
    cx, cy = ulx + n * 5.0, uly - n * 5.0
    to_ll = Transformer.from_crs(epsg, 4326, always_xy=True)
    to_xy = Transformer.from_crs(4326, epsg, always_xy=True)
    lon_c, lat_c = to_ll.transform(cx, cy)
    # the ground track, referred to the full tile's centre so small tiles share the geometry
    fcx, fcy = ulx + 54900.0, uly - 54900.0
    flon, flat = to_ll.transform(fcx, fcy)
    node_lon, t_after, heading_true = orbit_for(flat, flon, nadir_offset_km * 1000.0)
    rel_orbit = relative_orbit(node_lon, day)
    node_utc = datetime(day.year, day.month, day.day, tzinfo=timezone.utc) \
        + timedelta(hours=_LTDN - node_lon / 15.0)
    sensing = node_utc + timedelta(seconds=t_after)
    if sensing.date() != day:
        sensing -= timedelta(days=(sensing.date() - day).days)
    start = sensing - timedelta(seconds=datatake_lead_s)
    # heading in grid coordinates and a point of the ground track
    ng = grid_north(epsg, fcx, fcy)
    heading = (heading_true + ng) % 360.0
    h = math.radians(heading)
    uc = (math.cos(h), -math.sin(h))           # right of flight (west for descending)
    # the tile centre lies nadir_offset_km west of the track: track point = centre + off·(−uc)
    off = nadir_offset_km * 1000.0
    nadir_xy = (fcx - off * uc[0], fcy - off * uc[1])
    geo = Geometry(grid=grid, epsg=epsg, acquired=sensing, sat_height=_HEIGHT, heading=heading,
                   nadir_xy=nadir_xy, north_grid=ng, sun_step=500.0)
    opts = SceneOptions(seed=seed, relief=relief, clouds=clouds, cloud_fraction=cloud_fraction,
                        aod=aod, water_vapor=water_vapor, snow_line=snow_line,
                        bright_targets=bright_targets, fine_texture=fine_texture, brdf=brdf)
    scene = Scene(sensor, geo, opts, band_beta=BAND_BETA)

    # ---------------- names
    short, sc_name, launch = _MISSION[sensor]
    abs_orbit = int((sensing - launch).total_seconds() / _PERIOD) + 1
    nbl = f"N{baseline.replace('.', '')}"
    gen = sensing + timedelta(hours=2, minutes=7)
    f = "%Y%m%dT%H%M%S"
    name = f"{short}_MSIL1C_{start.strftime(f)}_{nbl}_R{rel_orbit:03d}_{tile}_{gen.strftime(f)}"
    granule = f"L1C_{tile}_A{abs_orbit:06d}_{sensing.strftime(f)}"
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    safe = os.path.join(out_dir, name + ".SAFE")
    truth_dir = os.path.join(out_dir, name + "_truth")
    for p in (safe, truth_dir):
        if os.path.exists(p):
            shutil.rmtree(p)
    gdir = os.path.join(safe, "GRANULE", granule)
    img = os.path.join(gdir, "IMG_DATA")
    for d in (img, os.path.join(gdir, "QI_DATA"), os.path.join(gdir, "AUX_DATA"),
              os.path.join(safe, "AUX_DATA"), os.path.join(safe, "HTML"),
              os.path.join(safe, "rep_info"),
              os.path.join(safe, "DATASTRIP", f"DS_L2PS_{gen.strftime(f)}_S{sensing.strftime(f)}",
                           "QI_DATA")):
        os.makedirs(d)
    stem = f"{tile}_{start.strftime(f)}"

    # ---------------- rasters: temporary GeoTIFFs written in strips, then JPEG 2000
    import rasterio
    from rasterio.windows import Window
    tmp = os.path.join(out_dir, f".{name}.tmp")
    os.makedirs(tmp, exist_ok=True)
    grids = {r: Grid(grid.crs_wkt, ulx, uly, float(r), float(r), n * 10 // r, n * 10 // r)
             for r in (10, 20, 60)}

    def _gtiff(path, g, dtype="uint16", count=1):
        return rasterio.open(path, "w", driver="GTiff", width=g.nx, height=g.ny, count=count,
                             dtype=dtype, crs=f"EPSG:{epsg}", transform=g.transform, tiled=True,
                             blockxsize=256, blockysize=256, compress="zstd")

    queue = WriteQueue(threaded=n * n > 1_000_000)
    dsets = {b: queue.proxy(_gtiff(os.path.join(tmp, b + ".tif"), grids[RES[b]])) for b in BANDS}
    tci = queue.proxy(_gtiff(os.path.join(tmp, "TCI.tif"), grids[10], "uint8", 3))
    truth = TruthWriter(truth_dir, grid, epsg, queue)
    doms = scene.doms
    # rows per strip: ≤ 1200 px one strip; else 240 rows (2.6 M pixels, bounded memory)
    strip = block_rows or (n if n <= 1200 else 240)
    strip = max(6, strip - strip % 6)
    counts = {"pixels": 0, "cloud": np.zeros(4, np.int64), "shadow": 0, "snow": 0, "water": 0,
              "saturated": 0, "cover": np.zeros(len(spectra.COVERS) + 1, np.int64)}
    code = spectra.COVER_CODE
    gdal_env = queue.env()
    gdal_env.__enter__()
    try:
        for r0 in range(0, n, strip):
            nr = min(strip, n - r0)
            blk = scene.block(r0, nr)
            ct = geo.cross_track(blk["xs"][None, :], blk["ys"][:, None])
            inside = np.abs(ct) <= _SWATH_HALF
            sat_any = np.zeros((nr, n), bool)
            cmask_ref = None
            rgb = {}
            for bi, b in enumerate(BANDS):
                alphas, cmask = scene.cloud_cover(blk, BAND_BETA[b])
                if b == "B8A":
                    cmask_ref = cmask
                rho, toa = scene.toa_band(blk, bi, alphas)
                k = RES[b] // 10
                ins = inside
                nbar = scene.surface_brdf(bi, blk, nbar=True) if brdf is not None else None
                if k > 1 and truth_10m:
                    truth.write(f"surface_10m_{b}", r0, np.where(inside, refl_int16(rho), -9999),
                                "int16", nodata=-9999)
                    truth.write(f"toa_10m_{b}", r0, np.where(inside, refl_int16(toa), -9999),
                                "int16", nodata=-9999)
                if k > 1:
                    rho, toa = _block_mean(rho, k), _block_mean(toa, k)
                    ins = _block_mean(inside.astype(np.float32), k) > 0.999
                    if nbar is not None:
                        nbar = _block_mean(nbar, k)
                if nbar is not None:
                    truth.write(f"nbar_{b}", r0 // k, np.where(ins, refl_int16(nbar), -9999),
                                "int16", grid=grids[RES[b]], nodata=-9999)
                sat = (toa >= 1.6) & ins
                dn = np.clip(np.rint(toa * 10000.0) + offset, 1, 65534)
                dn = np.where(sat, 65535, dn)
                dn = np.where(ins, dn, 0).astype(np.uint16)
                w = Window(0, r0 // k, dn.shape[1], dn.shape[0])
                dsets[b].write(dn, 1, window=w)
                g = grids[RES[b]]
                dom = doms[bi]
                truth.write(f"surface_{b}", r0 // k, np.where(ins, refl_int16(rho), -9999),
                            "int16", grid=g, nodata=-9999)
                truth.write(f"toa_{b}", r0 // k, np.where(ins, refl_int16(toa), -9999),
                            "int16", grid=g, nodata=-9999)
                if k == 1:
                    sat_any |= sat
                else:
                    sat_any |= np.repeat(np.repeat(sat, k, 0), k, 1)
                if b in ("B02", "B03", "B04"):
                    rgb[b] = toa
                del dom
            tci.write(np.stack([np.clip(rgb[b] / 0.3 * 255, 1, 255) * inside
                                for b in ("B04", "B03", "B02")]).astype(np.uint8),
                      window=Window(0, r0, n, nr))
            shadow = (blk["shade"] < 0.5) & inside
            snow = (blk["cls"] == code["snow"]) & inside
            water = (blk["cls"] == code["water"]) & inside
            cm = np.where(inside, cmask_ref, 0).astype(np.uint8)
            truth.write("cloud", r0, cm)
            truth.write("shadow", r0, shadow)
            truth.write("snow", r0, snow)
            truth.write("water", r0, water)
            truth.write("cover", r0, np.where(inside, blk["cls"] + 1, 0))
            truth.write("saturated", r0, sat_any)
            truth.write("nodata", r0, ~inside)
            truth.write("dem", r0, blk["z"])
            truth.write("aod550", r0, blk["aod"])
            truth.write("water_vapor", r0, blk["wv"])
            write_angles(truth, r0, blk)
            add_strip_counts(counts, inside, cm, shadow, snow, water, sat_any, blk["cls"])
            queue.end_strip()
    finally:
        try:
            queue.close()
        finally:
            for ds in dsets.values():
                ds.close()
            tci.close()
            truth.close()
            gdal_env.__exit__(None, None, None)
    from rasterio.shutil import copy as rio_copy
    jp2_opts = dict(QUALITY="100", REVERSIBLE="YES", YCBCR420="NO")
    # JPEG 2000 encoding: GDAL encodes the 1024² code-stream tiles of a band in parallel
    # (GDAL_NUM_THREADS; the files are the same whatever the thread count)
    with rasterio.Env(GDAL_NUM_THREADS=str(max(1, len(os.sched_getaffinity(0))))):
        for b in BANDS + ("TCI",):
            src = os.path.join(tmp, b + ".tif")
            opts = dict(jp2_opts)
            if n >= 2048:
                opts.update(BLOCKXSIZE="1024", BLOCKYSIZE="1024")
            rio_copy(src, os.path.join(img, f"{stem}_{b}.jp2"), driver="JP2OpenJPEG", **opts)
            os.remove(src)
    shutil.rmtree(tmp, ignore_errors=True)
    for aux in os.listdir(img):
        if aux.endswith(".aux.xml"):
            os.remove(os.path.join(img, aux))

    npx = max(counts["pixels"], 1)
    cloud_cover = 100.0 * (counts["cloud"][1] + counts["cloud"][2]) / npx
    snow_cover = 100.0 * counts["snow"] / npx
    # ---------------- metadata
    corners = [(ulx, uly), (ulx + n * 10, uly), (ulx + n * 10, uly - n * 10), (ulx, uly - n * 10)]
    foot = [to_ll.transform(x, y) for x, y in corners + corners[:1]]
    with open(os.path.join(safe, "MTD_MSIL1C.xml"), "w") as fh:
        fh.write(_mtd_product(name, sc_name, start, gen, baseline, rel_orbit, granule, stem,
                              sensing, offset, foot, cloud_cover, snow_cover, abs_orbit, short))
    with open(os.path.join(gdir, "MTD_TL.xml"), "w") as fh:
        fh.write(_mtd_tile(geo, scene, short, gen, sensing, abs_orbit, tile, baseline, epsg,
                           zone, south, ulx, uly, n, cloud_cover))
    ds_dir = os.path.join(safe, "DATASTRIP", os.listdir(os.path.join(safe, "DATASTRIP"))[0])
    with open(os.path.join(ds_dir, "MTD_DS.xml"), "w") as fh:
        fh.write(f'<?xml version="1.0" encoding="UTF-8"?>\n<n1:Level-1C_DataStrip_ID '
                 f'xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-1C_Datastrip_Metadata.xsd">\n'
                 f'  <n1:General_Info>\n    <DATASTRIP_ID>{short}_OPER_MSI_L1C_DS_L2PS_'
                 f'{gen.strftime(f)}_S{sensing.strftime(f)}_{nbl}</DATASTRIP_ID>\n'
                 f'    <SPACECRAFT_NAME>{sc_name}</SPACECRAFT_NAME>\n'
                 f'  </n1:General_Info>\n</n1:Level-1C_DataStrip_ID>\n')
    with open(os.path.join(safe, "INSPIRE.xml"), "w") as fh:
        fh.write('<?xml version="1.0" encoding="UTF-8"?>\n<gmd:MD_Metadata '
                 'xmlns:gmd="http://www.isotc211.org/2005/gmd"/>\n')
    with open(os.path.join(safe, "manifest.safe"), "w") as fh:
        fh.write(_manifest(safe))

    truth_doc = {
        "product_id": name, "sensor": sensor, "mission": "sentinel2", "baseline": baseline,
        "radio_add_offset": -offset, "quantification_value": 10000, "form": form,
        "size": [n, n], "seed": seed, "date": day.isoformat(), "tile": tile,
        "relative_orbit": rel_orbit, "absolute_orbit": abs_orbit,
        "sensing_time": sensing.isoformat(), "product_start_time": start.isoformat(),
        "epsg": epsg, "utm_zone": zone,
        "grid": {"x0": ulx, "y0": uly, "dx": 10.0, "dy": 10.0, "nx": n, "ny": n},
        "tile_centre": {"lat": lat_c, "lon": lon_c},
        "heading_grid_deg": heading, "grid_north_deg": ng, "satellite_height_m": _HEIGHT,
        "nadir_offset_km": nadir_offset_km, "band_along_track_deg": BAND_BETA,
        "parallax_model": "a cloud at altitude H seen in band b at pixel q lies over the ground "
                          "point q + (H - z(q)) * (cross-track tan(view) toward the track "
                          "- tan(beta_b) along the flight direction)",
        "earth_sun_distance": earth_sun_distance(sensing),
        "atmosphere": atmosphere_name(), "aod550": aod, "water_vapor": water_vapor,
        "relief": relief, "base_elevation_m": scene.z_base,
        **({"fine_texture": fine_texture} if fine_texture else {}),
        "dn_model": ("DN = round(rho_toa * 10000) + 1000" if offset else
                     "DN = round(rho_toa * 10000)") + "; 0 = nodata, 65535 = saturated",
        "clouds": [_cloud(c) for c in scene.clouds],
        "cloud_cover_percent": cloud_cover,
        "cloud_mask_band": "B8A",
        "fractions": _fractions(counts),
        "max_slope_deg": scene.stats["max_slope"],
        "bright_targets": [list(t) for t in scene.targets],
        "layers": {**{k: v[2] for k, v in TRUTH_LAYERS.items()},
                   **{f"surface_{b}": f"surface reflectance x10000 at {RES[b]} m" for b in BANDS},
                   **{f"toa_{b}": f"TOA reflectance x10000 at {RES[b]} m" for b in BANDS},
                   **({f"{k}_10m_{b}": f"{k} reflectance x10000 rendered at 10 m"
                       for b in BANDS if RES[b] > 10 for k in ("surface", "toa")}
                      if truth_10m else {})},
        "covers": {str(i + 1): c for i, c in enumerate(spectra.COVERS)},
    }
    from .auxfiles import add_extras
    add_extras(truth_doc, scene, grid, epsg, truth_dir, day, lon_c, lat_c, brdf=brdf,
               wvp_db=wvp_db, aod_files=aod_files, dem_variants=dem_variants,
               band_names=list(BANDS))
    with open(os.path.join(truth_dir, "truth.json"), "w") as fh:
        json.dump(truth_doc, fh, indent=2)
    path = safe
    if form == "zip":
        path = os.path.join(out_dir, name + ".zip")
        with zipfile.ZipFile(path, "w") as zf:
            for root, dirs, files in os.walk(safe):
                dirs.sort()
                rel = os.path.relpath(root, out_dir)
                zf.write(root, rel + "/")
                for fn in sorted(files):
                    comp = zipfile.ZIP_STORED if fn.endswith(".jp2") else zipfile.ZIP_DEFLATED
                    zf.write(os.path.join(root, fn), os.path.join(rel, fn), compress_type=comp)
        shutil.rmtree(safe)
    return SynthProduct(path=path, truth_dir=truth_dir, truth=truth_doc)


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
    ny, nx = a.shape
    return a.reshape(ny // k, k, nx // k, k).mean(axis=(1, 3)).astype(np.float32)


def _cloud(c):
    from dataclasses import asdict
    return asdict(c)


def _fractions(counts):
    npx = max(counts["pixels"], 1)
    cov = counts["cover"]
    return {
        "cloud_thin": counts["cloud"][1] / npx, "cloud_opaque": counts["cloud"][2] / npx,
        "cirrus": counts["cloud"][3] / npx, "shadow": counts["shadow"] / npx,
        "snow": counts["snow"] / npx, "water": counts["water"] / npx,
        "saturated": counts["saturated"] / npx,
        "covers": {c: float(cov[i + 1]) / npx for i, c in enumerate(spectra.COVERS)},
    }


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _mtd_product(name, sc_name, start, gen, baseline, rel_orbit, granule, stem, sensing,
                 offset, foot, cloud_cover, snow_cover, abs_orbit, short):
    nbl = baseline.replace(".", "")
    f = "%Y%m%dT%H%M%S"
    files = "\n".join(f"            <IMAGE_FILE>GRANULE/{granule}/IMG_DATA/{stem}_{b}</IMAGE_FILE>"
                      for b in BANDS + ("TCI",))
    radio = ""
    if offset:
        radio = "            <Radiometric_Offset_List>\n" + "\n".join(
            f'        <RADIO_ADD_OFFSET band_id="{i}">-{int(offset)}</RADIO_ADD_OFFSET>'
            for i in range(13)) + "\n      </Radiometric_Offset_List>\n"
    irr = "\n".join(f'          <SOLAR_IRRADIANCE bandId="{i}" unit="W/m²/µm">{e}</SOLAR_IRRADIANCE>'
                    for i, e in enumerate(_E0))
    d = earth_sun_distance(sensing)
    spec = "\n".join(
        f'        <Spectral_Information bandId="{i}" physicalBand="{b.replace("B0", "B")}">\n'
        f"          <RESOLUTION>{RES[b]}</RESOLUTION>\n          <Wavelength>\n"
        f'            <MIN unit="nm">{_WAVE[b][0]}</MIN>\n            <MAX unit="nm">{_WAVE[b][1]}</MAX>\n'
        f'            <CENTRAL unit="nm">{_WAVE[b][2]}</CENTRAL>\n          </Wavelength>\n'
        f"        </Spectral_Information>" for i, b in enumerate(BANDS))
    pos = " ".join(f"{lat!r} {lon!r}" for lon, lat in foot)
    doi = "            <PRODUCT_DOI>https://doi.org/10.5270/S2_-742ikth</PRODUCT_DOI>\n" \
        if float(baseline) >= 4 else ""
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-1C_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-1C.xsd" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-1C.xsd">
    <n1:General_Info>
        <Product_Info>
            <PRODUCT_START_TIME>{_iso(start)}</PRODUCT_START_TIME>
            <PRODUCT_STOP_TIME>{_iso(start)}</PRODUCT_STOP_TIME>
            <PRODUCT_URI>{name}.SAFE</PRODUCT_URI>
            <PROCESSING_LEVEL>Level-1C</PROCESSING_LEVEL>
            <PRODUCT_TYPE>S2MSI1C</PRODUCT_TYPE>
            <PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
{doi}            <GENERATION_TIME>{gen.strftime("%Y-%m-%dT%H:%M:%S")}.000000Z</GENERATION_TIME>
            <PREVIEW_IMAGE_URL>Not applicable</PREVIEW_IMAGE_URL>
            <PREVIEW_GEO_INFO>Not applicable</PREVIEW_GEO_INFO>
            <Datatake datatakeIdentifier="G{short}_{start.strftime(f)}_{abs_orbit:06d}_N{baseline}">
      <SPACECRAFT_NAME>{sc_name}</SPACECRAFT_NAME>
      <DATATAKE_TYPE>INS-NOBS</DATATAKE_TYPE>
      <DATATAKE_SENSING_START>{_iso(start)}</DATATAKE_SENSING_START>
      <SENSING_ORBIT_NUMBER>{rel_orbit}</SENSING_ORBIT_NUMBER>
      <SENSING_ORBIT_DIRECTION>DESCENDING</SENSING_ORBIT_DIRECTION>
    </Datatake>
<Query_Options completeSingleTile="true">
<PRODUCT_FORMAT>SAFE_COMPACT</PRODUCT_FORMAT>
</Query_Options>

<Product_Organisation>
    <Granule_List>
        <Granule datastripIdentifier="{short}_OPER_MSI_L1C_DS_L2PS_{gen.strftime(f)}_S{sensing.strftime(f)}_N{nbl[:2]}.{nbl[2:]}" granuleIdentifier="{short}_OPER_MSI_L1C_TL_L2PS_{gen.strftime(f)}_A{abs_orbit:06d}_{granule.split("_")[1]}_N{nbl[:2]}.{nbl[2:]}" imageFormat="JPEG2000">
{files}
        </Granule>
    </Granule_List>
</Product_Organisation>
</Product_Info>
        <Product_Image_Characteristics>
            <Special_Values>
                <SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
                <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX>
            </Special_Values>
            <Special_Values>
                <SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>
                <SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX>
            </Special_Values>
            <Image_Display_Order>
                <RED_CHANNEL>3</RED_CHANNEL>
                <GREEN_CHANNEL>2</GREEN_CHANNEL>
                <BLUE_CHANNEL>1</BLUE_CHANNEL>
            </Image_Display_Order>
            <QUANTIFICATION_VALUE unit="none">10000</QUANTIFICATION_VALUE>
{radio}            <Reflectance_Conversion>
        <U>{1.0 / d ** 2!r}</U>
        <Solar_Irradiance_List>
{irr}
        </Solar_Irradiance_List>
      </Reflectance_Conversion>
            <Spectral_Information_List>
{spec}
      </Spectral_Information_List>
            <REFERENCE_BAND>3</REFERENCE_BAND>
        </Product_Image_Characteristics>
    </n1:General_Info>
    <n1:Geometric_Info>
        <Product_Footprint>
            <Product_Footprint>
                <Global_Footprint>
                    <EXT_POS_LIST>{pos} </EXT_POS_LIST>
                </Global_Footprint>
            </Product_Footprint>
            <RASTER_CS_TYPE>POINT</RASTER_CS_TYPE>
            <PIXEL_ORIGIN>1</PIXEL_ORIGIN>
        </Product_Footprint>
        <Coordinate_Reference_System>
            <GEO_TABLES version="1">EPSG</GEO_TABLES>
            <HORIZONTAL_CS_TYPE>GEOGRAPHIC</HORIZONTAL_CS_TYPE>
        </Coordinate_Reference_System>
    </n1:Geometric_Info>
    <n1:Auxiliary_Data_Info>
        <GIPP_List>
</GIPP_List>
        <PRODUCTION_DEM_TYPE>SYNTHETIC</PRODUCTION_DEM_TYPE>
    </n1:Auxiliary_Data_Info>
    <n1:Quality_Indicators_Info>
        <Cloud_Coverage_Assessment>{cloud_cover!r}</Cloud_Coverage_Assessment>
        <Snow_Coverage_Assessment>{snow_cover!r}</Snow_Coverage_Assessment>
        <Technical_Quality_Assessment>
            <DEGRADED_ANC_DATA_PERCENTAGE>0.0</DEGRADED_ANC_DATA_PERCENTAGE>
            <DEGRADED_MSI_DATA_PERCENTAGE>0</DEGRADED_MSI_DATA_PERCENTAGE>
        </Technical_Quality_Assessment>
    </n1:Quality_Indicators_Info>
</n1:Level-1C_User_Product>
"""


def _values(a: np.ndarray) -> str:
    rows = []
    for r in a:
        rows.append("            <VALUES>" + " ".join("NaN" if not np.isfinite(v) else f"{v:.6g}"
                                                        for v in r) + "</VALUES>")
    return "\n".join(rows)


def _angle_block(tag: str, zen: np.ndarray, az: np.ndarray, attrs: str = "") -> str:
    return (f"      <{tag}{attrs}>\n        <Zenith>\n          <COL_STEP unit=\"m\">5000</COL_STEP>\n"
            f"          <ROW_STEP unit=\"m\">5000</ROW_STEP>\n          <Values_List>\n"
            f"{_values(zen)}\n          </Values_List>\n        </Zenith>\n        <Azimuth>\n"
            f"          <COL_STEP unit=\"m\">5000</COL_STEP>\n          <ROW_STEP unit=\"m\">5000</ROW_STEP>\n"
            f"          <Values_List>\n{_values(az)}\n          </Values_List>\n        </Azimuth>\n"
            f"      </{tag}>\n")


def detector_strips():
    """Cross-track intervals (m, right of flight positive) of the 12 detectors, 1 = leftmost."""
    w = 2 * _SWATH_HALF / _DETECTORS
    return [(-_SWATH_HALF + i * w - 1000.0, -_SWATH_HALF + (i + 1) * w + 1000.0)
            for i in range(_DETECTORS)]


def angle_grids(geo: Geometry, ulx: float, uly: float, n: int):
    """Node coordinates and angle grids of MTD_TL: sun (zen, az), and per band and detector
    view (zen, az) with NaN outside the detector's strip."""
    nn = int(math.ceil(n * 10 / 5000.0)) + 1
    xs = ulx + np.arange(nn) * 5000.0
    ys = uly - np.arange(nn) * 5000.0
    xx, yy = np.meshgrid(xs, ys)
    szen, saz = geo.sun_at(xx, yy)
    ct = geo.cross_track(xx, yy)
    view = {}
    for b in BANDS:
        zen, az = geo.view_angles(xx, yy, BAND_BETA[b])
        for d, (c0, c1) in enumerate(detector_strips(), start=1):
            m = (ct >= c0) & (ct <= c1)
            if m.any():
                view[b, d] = (np.where(m, zen, np.nan), np.where(m, az, np.nan))
    return szen, saz, view


def _mtd_tile(geo, scene, short, gen, sensing, abs_orbit, tile, baseline, epsg, zone, south,
              ulx, uly, n, cloud_cover):
    f = "%Y%m%dT%H%M%S"
    nbl = baseline.replace(".", "")
    szen, saz, view = angle_grids(geo, ulx, uly, n)
    sizes = "\n".join(f'      <Size resolution="{r}">\n        <NROWS>{n * 10 // r}</NROWS>\n'
                      f"        <NCOLS>{n * 10 // r}</NCOLS>\n      </Size>" for r in (10, 20, 60))
    geop = "\n".join(f'      <Geoposition resolution="{r}">\n        <ULX>{ulx:.0f}</ULX>\n'
                     f"        <ULY>{uly:.0f}</ULY>\n        <XDIM>{r}</XDIM>\n"
                     f"        <YDIM>-{r}</YDIM>\n      </Geoposition>" for r in (10, 20, 60))
    sun = _angle_block("Sun_Angles_Grid", szen, saz)
    vblocks = "".join(_angle_block("Viewing_Incidence_Angles_Grids", z, a,
                                   f' bandId="{BANDS.index(b)}" detectorId="{d}"')
                      for (b, d), (z, a) in view.items())
    means = []
    for i, b in enumerate(BANDS):
        zs = [np.nanmean(z) for (bb, _d), (z, _a) in view.items() if bb == b]
        az = [np.nanmean(a) for (bb, _d), (_z, a) in view.items() if bb == b]
        means.append(f'        <Mean_Viewing_Incidence_Angle bandId="{i}">\n'
                     f'          <ZENITH_ANGLE unit="deg">{np.mean(zs)!r}</ZENITH_ANGLE>\n'
                     f'          <AZIMUTH_ANGLE unit="deg">{np.mean(az)!r}</AZIMUTH_ANGLE>\n'
                     f"        </Mean_Viewing_Incidence_Angle>")
    cs_name = f"WGS84 / UTM zone {zone}{'S' if south else 'N'}"
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-1C_Tile_ID xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-1C_Tile_Metadata.xsd" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-1C_Tile_Metadata.xsd">

  <n1:General_Info>
    <TILE_ID metadataLevel="Brief">{short}_OPER_MSI_L1C_TL_L2PS_{gen.strftime(f)}_A{abs_orbit:06d}_{tile}_N{nbl[:2]}.{nbl[2:]}</TILE_ID>
    <DATASTRIP_ID metadataLevel="Standard">{short}_OPER_MSI_L1C_DS_L2PS_{gen.strftime(f)}_S{sensing.strftime(f)}_N{nbl[:2]}.{nbl[2:]}</DATASTRIP_ID>
    <DOWNLINK_PRIORITY metadataLevel="Standard">NOMINAL</DOWNLINK_PRIORITY>
    <SENSING_TIME metadataLevel="Standard">{_iso(sensing)}</SENSING_TIME>
    <Archiving_Info metadataLevel="Expertise">
      <ARCHIVING_CENTRE>L2PS</ARCHIVING_CENTRE>
      <ARCHIVING_TIME>{gen.strftime("%Y-%m-%dT%H:%M:%S")}.000000Z</ARCHIVING_TIME>
    </Archiving_Info>
  </n1:General_Info>

  <n1:Geometric_Info>
    <Tile_Geocoding metadataLevel="Brief">
      <HORIZONTAL_CS_NAME>{escape(cs_name)}</HORIZONTAL_CS_NAME>
      <HORIZONTAL_CS_CODE>EPSG:{epsg}</HORIZONTAL_CS_CODE>
{sizes}
{geop}
    </Tile_Geocoding>
    <Tile_Angles metadataLevel="Standard">
{sun}      <Mean_Sun_Angle>
        <ZENITH_ANGLE unit="deg">{float(np.mean(szen))!r}</ZENITH_ANGLE>
        <AZIMUTH_ANGLE unit="deg">{float(np.mean(saz))!r}</AZIMUTH_ANGLE>
      </Mean_Sun_Angle>
{vblocks}      <Mean_Viewing_Incidence_Angle_List>
{chr(10).join(means)}
      </Mean_Viewing_Incidence_Angle_List>
    </Tile_Angles>
  </n1:Geometric_Info>

  <n1:Quality_Indicators_Info metadataLevel="Standard">
    <Image_Content_QI>
      <CLOUDY_PIXEL_PERCENTAGE>{cloud_cover:.4f}</CLOUDY_PIXEL_PERCENTAGE>
      <DEGRADED_MSI_DATA_PERCENTAGE>0</DEGRADED_MSI_DATA_PERCENTAGE>
    </Image_Content_QI>
  </n1:Quality_Indicators_Info>

</n1:Level-1C_Tile_ID>
"""


def _manifest(safe: str) -> str:
    objs = []
    for root, _dirs, files in sorted(os.walk(safe)):
        for fn in sorted(files):
            rel = "./" + os.path.relpath(os.path.join(root, fn), safe)
            size = os.path.getsize(os.path.join(root, fn))
            objs.append(f'<dataObject ID="{escape(fn)}"><byteStream mimeType="application/octet-stream" '
                        f'size="{size}"><fileLocation locatorType="URL" href="{escape(rel)}"/>'
                        f"</byteStream></dataObject>")
    return ('<?xml version="1.0" encoding="UTF-8"?><xfdu:XFDU xmlns:xfdu="urn:ccsds:schema:xfdu:1" '
            'version="esa/safe/sentinel/1.1/sentinel-2/msi/archive_l1c_user_product">'
            "<dataObjectSection>" + "".join(objs) + "</dataObjectSection></xfdu:XFDU>\n")
