"""Synthetic Landsat 4/5 TM, 7 ETM+, 8/9 OLI/TIRS Level-1 products in the USGS delivery
formats: Collection 2 (folder or ``.tar``: ``<ID>_MTL.txt/.xml/.json``, ``<ID>_B<n>.TIF``,
``QA_PIXEL``, ``QA_RADSAT``, ``ANG.txt``) and Collection 1 (``.tar.gz``: MTL under
``L1_METADATA_FILE``, ``_BQA.TIF``).

Geometry: the WRS-2 scene centre from an analytic circular-orbit model (inclination 98.2°,
233 paths, 248 rows, row 60 on the descending equator crossing, calibrated so that path 193
crosses the equator at 1.2° W), the scene centre time from the mission's mean local time at
the descending node, the heading from the ground track. Small scenes (``size=(nx, ny)``) are a
miniature of the scene around its centre: same place, time and rotation, with a footprint
scaled to fit the grid. See docs/synth.md.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tarfile
from dataclasses import asdict
from datetime import date as _date, datetime, timedelta, timezone

import numpy as np
from pyproj import Transformer

from ..grid import Grid
from ..level1.sensors import sensor_spec
from . import spectra
from .scene import (add_strip_counts, write_angles, CLOUD_CIRRUS, CLOUD_OPAQUE, CLOUD_THIN, Geometry, Scene, SceneOptions,
                    SynthProduct, TruthWriter, WriteQueue, atmosphere_name, earth_sun_distance,
                    grid_north,
                    refl_int16, sun_position)

# ------------------------------------------------------------------------------ constants

_INCL = 98.2            # degrees
_PERIOD = 98.884 * 60   # s
_NPATH, _NROW = 233, 248
_NODE_LON_P193 = -1.2   # descending-node longitude of path 193 (calibrated on real MTLs)
_SIDEREAL_DAY = 86164.0905
_SAT_HEIGHT = 705000.0

#: mean local time (hours) of the descending node
_LTDN = {"LND04": 9.75, "LND05": 9.75, "LND07": 10.0, "LND08": 10.18, "LND09": 10.18}

_MISSION = {
    "LND04": dict(prefix="LT04", spacecraft="LANDSAT_4", sensor_id="TM", qmax=255),
    "LND05": dict(prefix="LT05", spacecraft="LANDSAT_5", sensor_id="TM", qmax=255),
    "LND07": dict(prefix="LE07", spacecraft="LANDSAT_7", sensor_id="ETM", qmax=255),
    "LND08": dict(prefix="LC08", spacecraft="LANDSAT_8", sensor_id="OLI_TIRS", qmax=65535),
    "LND09": dict(prefix="LC09", spacecraft="LANDSAT_9", sensor_id="OLI_TIRS", qmax=65535),
}

# Radiometric ranges (Lmin, Lmax in W m⁻² sr⁻¹ µm⁻¹) of the 8-bit sensors, and band solar
# irradiances used to turn radiance scaling into reflectance scaling (published calibration
# summaries of TM/ETM+, rounded).
_TM5_L = {"1": (-1.52, 193.0), "2": (-2.84, 365.0), "3": (-1.17, 264.0), "4": (-1.51, 221.0),
          "5": (-0.37, 30.2), "6": (1.238, 15.303), "7": (-0.15, 16.5)}
_TM4_L = {"1": (-1.52, 171.0), "2": (-2.84, 336.0), "3": (-1.17, 254.0), "4": (-1.51, 221.0),
          "5": (-0.37, 31.4), "6": (1.238, 15.303), "7": (-0.15, 16.6)}
_ETM_L = {"1": (-6.2, 191.6), "2": (-6.4, 196.5), "3": (-5.0, 152.9), "4": (-5.1, 241.1),
          "5": (-1.0, 31.06), "6_VCID_1": (0.0, 17.04), "6_VCID_2": (3.2, 12.65),
          "7": (-0.35, 10.8), "8": (-4.7, 158.3)}
_ESUN = {
    "TM": {"1": 1983.0, "2": 1796.0, "3": 1536.0, "4": 1031.0, "5": 220.0, "7": 83.44},
    "ETM+": {"1": 1997.0, "2": 1812.0, "3": 1533.0, "4": 1039.0, "5": 230.8, "7": 84.90,
             "8": 1362.0},
    "OLI": {"1": 1972.0, "2": 2020.0, "3": 1860.0, "4": 1570.0, "5": 955.0, "6": 239.0,
            "7": 80.4, "8": 1751.0, "9": 366.9},
}
_K = {"LND04": {"6": (671.62, 1284.30)}, "LND05": {"6": (607.76, 1260.56)},
      "LND07": {"6_VCID_1": (666.09, 1282.71), "6_VCID_2": (666.09, 1282.71)},
      "LND08": {"10": (774.8853, 1321.0789), "11": (480.8883, 1201.1442)},
      "LND09": {"10": (799.0284, 1329.2405), "11": (475.6581, 1198.3494)}}

#: files of each sensor in delivery order: (L1 band name, resolution, thermal)
_FILES = {
    "TM": [("1", 30, False), ("2", 30, False), ("3", 30, False), ("4", 30, False),
           ("5", 30, False), ("6", 30, True), ("7", 30, False)],
    "ETM+": [("1", 30, False), ("2", 30, False), ("3", 30, False), ("4", 30, False),
             ("5", 30, False), ("6_VCID_1", 30, True), ("6_VCID_2", 30, True), ("7", 30, False),
             ("8", 15, False)],
    "OLI": [("1", 30, False), ("2", 30, False), ("3", 30, False), ("4", 30, False),
            ("5", 30, False), ("6", 30, False), ("7", 30, False), ("8", 15, False),
            ("9", 30, False), ("10", 30, True), ("11", 30, True)],
}


def _family(sensor):
    return spectra._family(sensor)


# ------------------------------------------------------------------------------ WRS-2


def wrs2_position(path: int, row: float, sensor: str, day: _date):
    """(lat, lon, UTC datetime) of the WRS-2 scene centre on a given day (circular orbit)."""
    alpha = math.radians((row - 60.0) * 360.0 / _NROW)
    inc = math.radians(_INCL)
    lat = -math.degrees(math.asin(math.sin(inc) * math.sin(alpha)))
    dlon = math.atan2(-math.sin(alpha) * math.cos(inc), -math.cos(alpha)) - math.pi
    dlon = (math.degrees(dlon) + 180.0) % 360.0 - 180.0
    t = (row - 60.0) / _NROW * _PERIOD                       # s after the node
    node_lon = _NODE_LON_P193 - (path - 193) * 360.0 / _NPATH
    node_lon = (node_lon + 180.0) % 360.0 - 180.0
    lon = node_lon + dlon - 360.0 * t / _SIDEREAL_DAY
    lon = (lon + 180.0) % 360.0 - 180.0
    node_utc_h = _LTDN[sensor] - node_lon / 15.0
    when = datetime(day.year, day.month, day.day, tzinfo=timezone.utc) \
        + timedelta(hours=node_utc_h, seconds=t)
    # keep the acquisition on the requested UTC day
    if when.date() != day:
        when = when - timedelta(days=(when.date() - day).days)
    return lat, lon, when


def _utm_epsg(lon: float) -> tuple[int, int]:
    zone = int((lon + 180.0) // 6.0) + 1
    return zone, 32600 + zone     # USGS: always the northern zone (negative northings south)


# ------------------------------------------------------------------------------ calibration


def calibration(sensor: str, when: datetime) -> dict[str, dict]:
    """Per L1 band file: qmin, qmax, lmin, lmax, rad_mult, rad_add, refl_mult, refl_add, k1, k2."""
    fam = _family(sensor)
    d = earth_sun_distance(when)
    out = {}
    for name, _res, thermal in _FILES[fam]:
        c = {"qmin": 1}
        if fam == "OLI":
            c["qmax"] = 65535
            if thermal:
                c["rad_mult"], c["rad_add"] = 3.3420e-04, 0.1
            else:
                c["refl_mult"], c["refl_add"] = 2.0e-05, -0.1
                esun = _ESUN["OLI"][name]
                c["rad_mult"] = c["refl_mult"] * esun / (math.pi * d * d)
                c["rad_add"] = c["refl_add"] * esun / (math.pi * d * d)
            c["lmin"] = c["rad_add"] + c["rad_mult"] * 1
            c["lmax"] = c["rad_add"] + c["rad_mult"] * 65535
        else:
            table = _ETM_L if fam == "ETM+" else (_TM4_L if sensor == "LND04" else _TM5_L)
            lmin, lmax = table[name]
            c.update(qmax=255, lmin=lmin, lmax=lmax)
            c["rad_mult"] = (lmax - lmin) / 254.0
            c["rad_add"] = lmin - c["rad_mult"] * 1
            if not thermal:
                esun = _ESUN[fam][name]
                c["refl_mult"] = math.pi * d * d * c["rad_mult"] / esun
                c["refl_add"] = math.pi * d * d * c["rad_add"] / esun
        if thermal:
            c["k1"], c["k2"] = _K[sensor][name]
        out[name] = c
    return out


# ------------------------------------------------------------------------------ MTL writing


class Raw(str):
    """A value written without quotes in ODL."""


def _odl(root: str, groups) -> str:
    lines = [f"GROUP = {root}"]
    for gname, items in groups:
        lines.append(f"  GROUP = {gname}")
        for k, v in items:
            lines.append(f"    {k} = {v}" if isinstance(v, Raw) else f'    {k} = "{v}"')
        lines.append(f"  END_GROUP = {gname}")
    lines += [f"END_GROUP = {root}", "END", ""]
    return "\n".join(lines)


def _xml(root: str, groups) -> str:
    from xml.sax.saxutils import escape
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', f"<{root}>"]
    for gname, items in groups:
        lines.append(f"  <{gname}>")
        for k, v in items:
            lines.append(f"    <{k}>{escape(str(v))}</{k}>")
        lines.append(f"  </{gname}>")
    lines.append(f"</{root}>")
    return "\n".join(lines) + "\n"


def _json(root: str, groups) -> str:
    return json.dumps({root: {g: {k: str(v) for k, v in items} for g, items in groups}},
                      indent=2) + "\n"


def _f(v, fmt):
    return Raw(format(v, fmt))


# ------------------------------------------------------------------------------ the product


def make_landsat(out_dir, *, sensor: str = "LND08", size=(400, 400), form: str = "folder",
                 collection: int = 2, seed: int = 0, date="2021-07-15", path: int = 193,
                 row: int = 24, clouds=True, aod: float = 0.15, water_vapor: float = 1.5,
                 relief: float = 1.0, tier: str = "T1", slc_off: bool | None = None,
                 cloud_fraction: float = 0.15, surface_temperature: float = 295.0,
                 snow_line: float | None = None, bright_targets: int | None = None,
                 block_rows: int | None = None, brdf: str | None = None,
                 wvp_db: bool = False, aod_files: bool = False,
                 dem_variants: bool = False) -> SynthProduct:
    """Write a synthetic Landsat Level-1 product and its truth into ``out_dir``.

    ``size`` is (columns, rows) at 30 m or "full" (the whole WRS-2 frame, ~7700×7800).
    ``form``: "folder", "tar" (C2 delivery) or "tar.gz" (C1 delivery). ``collection`` 1 or 2.
    ``clouds``: True (random clouds covering ~``cloud_fraction``), False, or a list of
    :class:`~l2ps.synth.scene.CloudSpec`. ``slc_off`` (LND07): scan-line-corrector gaps;
    default True for dates after 2003-05-31. ``brdf``: None (isotropic surface, the default
    scene), "global" or "cover" (kernel-driven BRDF surface; truth ``surface_*`` directional,
    ``nbar_*`` at the normalisation geometry). ``wvp_db``, ``aod_files``, ``dem_variants``:
    write the water vapour database, the AOD look-up file and the DEM variants into
    ``<truth>/wvp``, ``<truth>/aod``, ``<truth>/dem`` (:mod:`l2ps.synth.auxfiles`).
    Returns a :class:`SynthProduct`.
    """
    spec = sensor_spec(sensor)
    if spec.mission != "landsat":
        raise ValueError(f"{sensor} is not a Landsat sensor")
    if form not in ("folder", "tar", "tar.gz"):
        raise ValueError(f"form {form!r}; expected folder, tar or tar.gz")
    if collection not in (1, 2):
        raise ValueError("collection must be 1 or 2")
    fam = _family(sensor)
    mission = _MISSION[sensor]
    day = date if isinstance(date, _date) else _date.fromisoformat(str(date))
    if slc_off is None:
        slc_off = sensor == "LND07" and day >= _date(2003, 5, 31)
    lat, lon, when = wrs2_position(path, row, sensor, day)
    zone, epsg = _utm_epsg(lon)
    to_xy = Transformer.from_crs(4326, epsg, always_xy=True)
    cx, cy = to_xy.transform(lon, lat)
    # heading from two points of the ground track
    lat1, lon1, _ = wrs2_position(path, row - 0.05, sensor, day)
    lat2, lon2, _ = wrs2_position(path, row + 0.05, sensor, day)
    (x1, y1), (x2, y2) = to_xy.transform(lon1, lat1), to_xy.transform(lon2, lat2)
    heading = math.degrees(math.atan2(x2 - x1, y2 - y1)) % 360.0
    rot = math.radians(heading - 180.0)
    c, s = abs(math.cos(rot)), abs(math.sin(rot))
    res = 30.0
    if size == "full":
        wc, la = 185000.0, 180000.0
        nx = int(math.ceil((wc * c + la * s) / res)) + 2
        ny = int(math.ceil((wc * s + la * c) / res)) + 2
    else:
        nx, ny = int(size[0]), int(size[1])
        a, b = nx * res * 0.96, ny * res * 0.96
        det = c * c - s * s
        wc, la = (c * a - s * b) / det, (c * b - s * a) / det
        if wc <= 0 or la <= 0:
            raise ValueError(f"size {size} too elongated for a rotated footprint")
    # pixel-centre coordinates on a 30 m lattice (as USGS): UL centre
    ulc_x = round((cx - (nx - 1) / 2 * res) / res) * res
    ulc_y = round((cy + (ny - 1) / 2 * res) / res) * res
    grid = Grid(f"EPSG:{epsg}", ulc_x - res / 2, ulc_y + res / 2, res, res, nx, ny)
    # use a proper WKT for the shared Grid type
    from rasterio.crs import CRS
    grid = Grid(CRS.from_epsg(epsg).to_wkt(), grid.x0, grid.y0, res, res, nx, ny)
    geo = Geometry(grid=grid, epsg=epsg, acquired=when, sat_height=_SAT_HEIGHT,
                   heading=heading, nadir_xy=(cx, cy),
                   north_grid=grid_north(epsg, cx, cy), sun_step=max(1000.0, 8 * res))
    opts = SceneOptions(seed=seed, relief=relief, clouds=clouds, cloud_fraction=cloud_fraction,
                        aod=aod, water_vapor=water_vapor, surface_temperature=surface_temperature,
                        snow_line=snow_line, bright_targets=bright_targets, brdf=brdf)
    scene = Scene(sensor, geo, opts)

    # ---------------- names
    acq = day.strftime("%Y%m%d")
    proc = (day + timedelta(days=6)).strftime("%Y%m%d")
    level = "L1TP"
    pid = f"{mission['prefix']}_{level}_{path:03d}{row:03d}_{acq}_{proc}_{collection:02d}_{tier}"
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    folder = os.path.join(out_dir, pid)
    truth_dir = os.path.join(out_dir, pid + "_truth")
    for p in (folder, truth_dir):
        if os.path.exists(p):
            shutil.rmtree(p)
    os.makedirs(folder)
    cal = calibration(sensor, when)
    files = _FILES[fam]
    band_file = {name: f"{pid}_B{name}.TIF" for name, _r, _t in files}
    qa_name = f"{pid}_QA_PIXEL.TIF" if collection == 2 else f"{pid}_BQA.TIF"
    radsat_name = f"{pid}_QA_RADSAT.TIF"

    # ---------------- rasters
    import rasterio
    from rasterio.windows import Window
    pan_grid = Grid(grid.crs_wkt, ulc_x - 7.5, ulc_y + 7.5, 15.0, 15.0, 2 * nx - 1, 2 * ny - 1)
    dtype = "uint16" if mission["qmax"] == 65535 else "uint8"

    def _open(name, g, dt, nodata):
        prof = dict(driver="GTiff", width=g.nx, height=g.ny, count=1, dtype=dt,
                    crs=f"EPSG:{epsg}", transform=g.transform, tiled=True, blockxsize=256,
                    blockysize=256, compress="deflate", predictor=2, nodata=nodata)
        ds = rasterio.open(os.path.join(folder, name), "w", **prof)
        ds.update_tags(AREA_OR_POINT="Point")
        return ds

    queue = WriteQueue(threaded=nx * ny > 1_000_000)
    dsets = {name: queue.proxy(_open(band_file[name], pan_grid if r == 15 else grid, dtype, 0))
             for name, r, _t in files}
    ds_qa = queue.proxy(_open(qa_name, grid, "uint16", None))
    ds_rs = queue.proxy(_open(radsat_name, grid, "uint16", None)) if collection == 2 else None
    truth = TruthWriter(truth_dir, grid, epsg, queue)
    refl_names = [b.l1_name for b in spec.bands if not b.thermal]
    doms = scene.doms
    therm = [(name) for name, _r, t in files if t]
    counts = {"pixels": 0, "cloud": np.zeros(4, np.int64), "shadow": 0, "snow": 0, "water": 0,
              "saturated": 0, "cover": np.zeros(len(spectra.COVERS) + 1, np.int64)}
    # rows per strip: ~2.5 M pixels per strip bound the memory (≈ 1.5 GB for a full scene)
    strip = block_rows or (256 if nx * ny <= 4_000_000 else 320)
    half_w, half_l = wc / 2, la / 2
    period = 16 * res
    gdal_env = queue.env()
    gdal_env.__enter__()
    try:
        for r0 in range(0, ny, strip):
            n = min(strip, ny - r0)
            blk = scene.block(r0, n)
            xx, yy = blk["xs"][None, :], blk["ys"][:, None]
            ct = geo.cross_track(xx, yy)
            at = geo.along_track(xx, yy)
            inside = (np.abs(ct) <= half_w) & (np.abs(at) <= half_l)
            if slc_off:
                gap = period * 0.45 * np.abs(ct) / half_w
                inside &= (at % period) >= gap
            alphas, cmask = scene.cloud_cover(blk)
            mus = np.cos(np.radians(blk["sza"]))
            sat_any = np.zeros((n, nx), bool)
            radsat = np.zeros((n, nx), np.uint16)
            toa_by_name = {}
            for bi, dom in enumerate(doms):
                name = refl_names[bi]
                rho, toa = scene.toa_band(blk, bi, alphas)
                toa_by_name[name] = toa
                truth.write(f"surface_{dom}", r0, np.where(inside, refl_int16(rho), -9999),
                            "int16", nodata=-9999)
                truth.write(f"toa_{dom}", r0, np.where(inside, refl_int16(toa), -9999),
                            "int16", nodata=-9999)
                if brdf is not None:
                    truth.write(f"nbar_{dom}", r0, np.where(
                        inside, refl_int16(scene.surface_brdf(bi, blk, nbar=True)), -9999),
                        "int16", nodata=-9999)
            # reflective bands in file order (incl. extra bands not in the internal order)
            for fi, (name, r, thermal) in enumerate(files):
                if thermal or r == 15:
                    continue
                cb = cal[name]
                toa = toa_by_name[name]
                dn_f = (toa * mus - cb["refl_add"]) / cb["refl_mult"]
                sat = dn_f >= cb["qmax"] + 0.5
                dn = np.clip(np.rint(dn_f), cb["qmin"], cb["qmax"])
                dn = np.where(inside, dn, 0).astype(dtype)
                sat &= inside
                sat_any |= sat
                radsat |= (sat.astype(np.uint16) << fi)
                dsets[name].write(dn, 1, window=Window(0, r0, nx, n))
            # panchromatic (15 m): mean of green/red (OLI) or green/red/NIR (ETM+) TOA
            for name, r, _t in files:
                if r != 15:
                    continue
                if fam == "OLI":
                    ptoa = (toa_by_name["3"] + toa_by_name["4"]) / 2
                else:
                    ptoa = (toa_by_name["2"] + toa_by_name["3"] + toa_by_name["4"]) / 3
                cb = cal[name]
                dn = np.clip(np.rint((ptoa * mus - cb["refl_add"]) / cb["refl_mult"]),
                             cb["qmin"], cb["qmax"])
                dn = np.where(inside, dn, 0).astype(dtype)
                p0 = max(2 * r0 - 1, 0)
                p1 = min(2 * (r0 + n) - 1, pan_grid.ny)
                prow = (np.arange(p0, p1) + 1) // 2 - r0
                pcol = np.minimum((np.arange(pan_grid.nx) + 1) // 2, nx - 1)
                dsets[name].write(dn[prow][:, pcol], 1,
                                  window=Window(0, p0, pan_grid.nx, p1 - p0))
            # thermal
            if therm:
                ts, bt = scene.brightness_temperature(blk, alphas)
                truth.write("bt_TEMP", r0, np.where(inside, np.rint(bt * 100), -9999), "int16",
                            nodata=-9999)
                truth.write("surface_temperature", r0, np.where(inside, np.rint(ts * 100), -9999),
                            "int16", nodata=-9999)
                for name in therm:
                    cb = cal[name]
                    k1, k2 = cb["k1"], cb["k2"]
                    # TIRS band 11 (12 µm) sees slightly colder than band 10
                    t = bt - (0.8 if name == "11" else 0.0)
                    rad = k1 / (np.exp(k2 / t) - 1)
                    dn = np.clip(np.rint((rad - cb["rad_add"]) / cb["rad_mult"]), cb["qmin"], cb["qmax"])
                    dsets[name].write(np.where(inside, dn, 0).astype(dtype), 1,
                                      window=Window(0, r0, nx, n))
            # truth masks and fields
            code = spectra.COVER_CODE
            shadow = (blk["shade"] < 0.5) & inside
            snow = (blk["cls"] == code["snow"]) & inside
            water = (blk["cls"] == code["water"]) & inside
            cm = np.where(inside, cmask, 0)
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
            ds_qa.write(_qa_pixel(inside, cm, shadow, snow, water, collection, radsat),
                        1, window=Window(0, r0, nx, n))
            if ds_rs is not None:
                ds_rs.write(radsat, 1, window=Window(0, r0, nx, n))
            add_strip_counts(counts, inside, cm, shadow, snow, water, sat_any, blk["cls"])
            queue.end_strip()
    finally:
        try:
            queue.close()
        finally:
            for ds in dsets.values():
                ds.close()
            ds_qa.close()
            if ds_rs is not None:
                ds_rs.close()
            truth.close()
            gdal_env.__exit__(None, None, None)

    npx = max(counts["pixels"], 1)
    cloud_cover = 100.0 * (counts["cloud"][1] + counts["cloud"][2]) / npx
    # ---------------- metadata
    sza_c, saa_c = sun_position(lat, lon, when)
    mtl_groups, root = _mtl(sensor, collection, pid, tier, level, path, row, day, when, proc,
                            grid, pan_grid, zone, epsg, cal, files, band_file, qa_name,
                            radsat_name, cloud_cover, float(sza_c), float(saa_c))
    with open(os.path.join(folder, f"{pid}_MTL.txt"), "w") as f:
        f.write(_odl(root, mtl_groups))
    if collection == 2:
        with open(os.path.join(folder, f"{pid}_MTL.xml"), "w") as f:
            f.write(_xml(root, mtl_groups))
        with open(os.path.join(folder, f"{pid}_MTL.json"), "w") as f:
            f.write(_json(root, mtl_groups))
    with open(os.path.join(folder, f"{pid}_ANG.txt"), "w") as f:
        f.write(_ang(pid, mission, files, grid, zone, day, when))

    truth_doc = {
        "product_id": pid, "sensor": sensor, "mission": "landsat", "collection": collection,
        "tier": tier, "form": form, "size": [nx, ny], "seed": seed,
        "date": day.isoformat(), "acquired": when.isoformat(),
        "wrs2": {"path": path, "row": row}, "utm_zone": zone, "epsg": epsg,
        "grid": {"x0": grid.x0, "y0": grid.y0, "dx": res, "dy": res, "nx": nx, "ny": ny},
        "scene_centre": {"lat": lat, "lon": lon, "x": cx, "y": cy},
        "sun_centre": {"zenith": float(sza_c), "azimuth": float(saa_c)},
        "heading_grid_deg": heading, "grid_north_deg": geo.north_grid,
        "satellite_height_m": _SAT_HEIGHT,
        "footprint": {"cross_track_m": wc, "along_track_m": la, "slc_off": bool(slc_off)},
        "earth_sun_distance": earth_sun_distance(when),
        "atmosphere": atmosphere_name(),
        "aod550": aod, "water_vapor": water_vapor, "relief": relief,
        "base_elevation_m": scene.z_base,
        "dn_model": "DN = round((rho_toa * cos(sun_zenith_pixel) - REFLECTANCE_ADD) / "
                    "REFLECTANCE_MULT), sun_zenith_pixel = truth/sun_zenith.tif",
        "clouds": [_cloud_doc(c) for c in scene.clouds],
        "cloud_cover_percent": cloud_cover,
        "fractions": _fractions(counts),
        "max_slope_deg": scene.stats["max_slope"],
        "bright_targets": [list(t) for t in scene.targets],
        "layers": _layer_doc(doms, bool(therm)),
        "covers": {str(i + 1): c for i, c in enumerate(spectra.COVERS)},
    }
    from .auxfiles import add_extras
    add_extras(truth_doc, scene, grid, epsg, truth_dir, day, lon, lat, brdf=brdf,
               wvp_db=wvp_db, aod_files=aod_files, dem_variants=dem_variants)
    with open(os.path.join(truth_dir, "truth.json"), "w") as f:
        json.dump(truth_doc, f, indent=2)

    # ---------------- packaging
    product_path = folder
    if form in ("tar", "tar.gz"):
        product_path = os.path.join(out_dir, pid + (".tar" if form == "tar" else ".tar.gz"))
        with tarfile.open(product_path, "w:gz" if form == "tar.gz" else "w") as tf:
            for name in sorted(os.listdir(folder)):
                tf.add(os.path.join(folder, name), arcname=name)
        shutil.rmtree(folder)
    return SynthProduct(path=product_path, truth_dir=truth_dir, truth=truth_doc)


def _cloud_doc(c):
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


def _layer_doc(doms, thermal):
    from .scene import TRUTH_LAYERS
    d = {k: v[2] for k, v in TRUTH_LAYERS.items()}
    for dom in doms:
        d[f"surface_{dom}"] = "surface reflectance x10000 (int16, -9999 nodata)"
        d[f"toa_{dom}"] = "TOA reflectance x10000 (int16, -9999 nodata)"
    if thermal:
        d["bt_TEMP"] = "TOA brightness temperature K x100 (int16)"
        d["surface_temperature"] = "surface temperature K x100 (int16)"
    return d


def _qa_pixel(inside, cm, shadow, snow, water, collection, radsat):
    qa = np.zeros(inside.shape, np.uint16)
    cloud = (cm == CLOUD_OPAQUE) | (cm == CLOUD_THIN)
    cirrus = cm == CLOUD_CIRRUS
    if collection == 2:
        conf_c = np.where(cm == CLOUD_OPAQUE, 3, np.where(cm == CLOUD_THIN, 2, 1))
        qa |= (cloud.astype(np.uint16) << 3) | (cirrus.astype(np.uint16) << 2)
        qa |= (shadow.astype(np.uint16) << 4) | (snow.astype(np.uint16) << 5)
        clear = ~(cloud | shadow | cirrus | snow)
        qa |= (clear.astype(np.uint16) << 6) | (water.astype(np.uint16) << 7)
        qa |= conf_c.astype(np.uint16) << 8
        qa |= np.where(shadow, 3, 1).astype(np.uint16) << 10
        qa |= np.where(snow, 3, 1).astype(np.uint16) << 12
        qa |= np.where(cirrus, 3, 1).astype(np.uint16) << 14
        return np.where(inside, qa, 1).astype(np.uint16)
    # Collection 1 BQA
    conf_c = np.where(cm == CLOUD_OPAQUE, 3, np.where(cm == CLOUD_THIN, 2, 1))
    nsat = np.zeros(inside.shape, np.uint16)
    for b in range(16):
        nsat += (radsat >> b) & 1
    qa |= np.minimum(nsat, 3).astype(np.uint16) << 2
    qa |= cloud.astype(np.uint16) << 4
    qa |= conf_c.astype(np.uint16) << 5
    qa |= np.where(shadow, 3, 1).astype(np.uint16) << 7
    qa |= np.where(snow, 3, 1).astype(np.uint16) << 9
    qa |= np.where(cirrus, 3, 1).astype(np.uint16) << 11
    return np.where(inside, qa, 1).astype(np.uint16)


def _corner_ll(epsg, x, y):
    t = Transformer.from_crs(epsg, 4326, always_xy=True)
    lon, lat = t.transform(x, y)
    return lat, lon


def _mtl(sensor, collection, pid, tier, level, path, row, day, when, proc, grid, pan_grid, zone,
         epsg, cal, files, band_file, qa_name, radsat_name, cloud_cover, sza, saa):
    m = _MISSION[sensor]
    fam = _family(sensor)
    res = grid.dx
    ulx, uly = grid.x0 + res / 2, grid.y0 - res / 2          # pixel centres (as USGS)
    lrx, lry = ulx + (grid.nx - 1) * res, uly - (grid.ny - 1) * res
    corners = {"UL": (ulx, uly), "UR": (lrx, uly), "LL": (ulx, lry), "LR": (lrx, lry)}
    doy = day.timetuple().tm_yday
    scene_id = f"{m['prefix'][0]}{m['prefix'][1]}{int(m['prefix'][2:])}{path:03d}{row:03d}" \
               f"{day.year}{doy:03d}LGN00"
    t = when
    sct = Raw(f'"{t.strftime("%H:%M:%S")}.{t.microsecond:06d}0Z"')
    corner_items_ll = []
    for k, (x, y) in corners.items():
        la, lo = _corner_ll(epsg, x, y)
        corner_items_ll += [(f"CORNER_{k}_LAT_PRODUCT", _f(la, ".5f")),
                            (f"CORNER_{k}_LON_PRODUCT", _f(lo, ".5f"))]
    corner_items_xy = []
    for k, (x, y) in corners.items():
        corner_items_xy += [(f"CORNER_{k}_PROJECTION_X_PRODUCT", _f(x, ".3f")),
                            (f"CORNER_{k}_PROJECTION_Y_PRODUCT", _f(y, ".3f"))]
    size_items = []
    if any(r == 15 for _n, r, _t in files):
        size_items += [("PANCHROMATIC_LINES", Raw(str(pan_grid.ny))),
                       ("PANCHROMATIC_SAMPLES", Raw(str(pan_grid.nx)))]
    size_items += [("REFLECTIVE_LINES", Raw(str(grid.ny))),
                   ("REFLECTIVE_SAMPLES", Raw(str(grid.nx))),
                   ("THERMAL_LINES", Raw(str(grid.ny))), ("THERMAL_SAMPLES", Raw(str(grid.nx)))]
    cell_items = []
    if any(r == 15 for _n, r, _t in files):
        cell_items.append(("GRID_CELL_SIZE_PANCHROMATIC", Raw("15.00")))
    cell_items += [("GRID_CELL_SIZE_REFLECTIVE", Raw("30.00")),
                   ("GRID_CELL_SIZE_THERMAL", Raw("30.00"))]
    names = [n for n, _r, _t in files]
    file_items = [(f"FILE_NAME_BAND_{n}", band_file[n]) for n in names]
    rad_mm, refl_mm, pix_mm, resc, therm = [], [], [], [], []
    for n, _r, thermal in files:
        c = cal[n]
        rad_mm += [(f"RADIANCE_MAXIMUM_BAND_{n}", _f(c["lmax"], ".5f")),
                   (f"RADIANCE_MINIMUM_BAND_{n}", _f(c["lmin"], ".5f"))]
        if not thermal:
            refl_mm += [(f"REFLECTANCE_MAXIMUM_BAND_{n}",
                         _f(c["refl_add"] + c["refl_mult"] * c["qmax"], ".6f")),
                        (f"REFLECTANCE_MINIMUM_BAND_{n}",
                         _f(c["refl_add"] + c["refl_mult"] * c["qmin"], ".6f"))]
        pix_mm += [(f"QUANTIZE_CAL_MAX_BAND_{n}", Raw(str(c["qmax"]))),
                   (f"QUANTIZE_CAL_MIN_BAND_{n}", Raw(str(c["qmin"])))]
    resc += [(f"RADIANCE_MULT_BAND_{n}", _f(cal[n]["rad_mult"], ".4E")) for n in names]
    resc += [(f"RADIANCE_ADD_BAND_{n}", _f(cal[n]["rad_add"], ".5f")) for n in names]
    resc += [(f"REFLECTANCE_MULT_BAND_{n}", _f(cal[n]["refl_mult"], ".4E"))
             for n, _r, t in files if not t]
    resc += [(f"REFLECTANCE_ADD_BAND_{n}", _f(cal[n]["refl_add"], ".6f"))
             for n, _r, t in files if not t]
    for n, _r, t in files:
        if t:
            therm += [(f"K1_CONSTANT_BAND_{n}", _f(cal[n]["k1"], ".4f")),
                      (f"K2_CONSTANT_BAND_{n}", _f(cal[n]["k2"], ".4f"))]
    sat_items = [(f"SATURATION_BAND_{n}", "N") for n, _r, t in files if not t]
    proj = [("MAP_PROJECTION", "UTM"), ("DATUM", "WGS84"), ("ELLIPSOID", "WGS84"),
            ("UTM_ZONE", Raw(str(zone)))]
    attrs_common = [("CLOUD_COVER", _f(cloud_cover, ".2f")),
                    ("CLOUD_COVER_LAND", _f(cloud_cover, ".2f"))]
    sun_items = [("SUN_AZIMUTH", _f(saa, ".8f")), ("SUN_ELEVATION", _f(90.0 - sza, ".8f")),
                 ("EARTH_SUN_DISTANCE", _f(earth_sun_distance(when), ".7f"))]
    if collection == 2:
        root = "LANDSAT_METADATA_FILE"
        contents = [("ORIGIN", "Image courtesy of the U.S. Geological Survey"),
                    ("DIGITAL_OBJECT_IDENTIFIER", "https://doi.org/10.5066/P975CC9B"),
                    ("LANDSAT_PRODUCT_ID", pid), ("PROCESSING_LEVEL", level),
                    ("COLLECTION_NUMBER", Raw("02")), ("COLLECTION_CATEGORY", tier),
                    ("OUTPUT_FORMAT", "GEOTIFF")] + file_items + [
                    ("FILE_NAME_QUALITY_L1_PIXEL", qa_name),
                    ("FILE_NAME_QUALITY_L1_RADIOMETRIC_SATURATION", radsat_name),
                    ("FILE_NAME_ANGLE_COEFFICIENT", f"{pid}_ANG.txt"),
                    ("FILE_NAME_METADATA_ODL", f"{pid}_MTL.txt"),
                    ("FILE_NAME_METADATA_XML", f"{pid}_MTL.xml")]
        contents += [(f"DATA_TYPE_BAND_{n}", "UINT16" if fam == "OLI" else "UINT8") for n in names]
        contents += [("DATA_TYPE_QUALITY_L1_PIXEL", "UINT16"),
                     ("DATA_TYPE_QUALITY_L1_RADIOMETRIC_SATURATION", "UINT16")]
        image = [("SPACECRAFT_ID", m["spacecraft"]), ("SENSOR_ID", m["sensor_id"]),
                 ("WRS_TYPE", Raw("2")), ("WRS_PATH", Raw(str(path))), ("WRS_ROW", Raw(str(row))),
                 ("NADIR_OFFNADIR", "NADIR"), ("TARGET_WRS_PATH", Raw(str(path))),
                 ("TARGET_WRS_ROW", Raw(str(row))), ("DATE_ACQUIRED", Raw(day.isoformat())),
                 ("SCENE_CENTER_TIME", sct), ("STATION_ID", "LGN")] + attrs_common + \
            ([("IMAGE_QUALITY_OLI", Raw("9")), ("IMAGE_QUALITY_TIRS", Raw("9"))]
             if fam == "OLI" else [("IMAGE_QUALITY", Raw("9"))]) + sat_items + \
            [("ROLL_ANGLE", Raw("-0.001"))] + sun_items
        proj_attrs = proj + cell_items + size_items + [("ORIENTATION", "NORTH_UP")] + \
            corner_items_ll + corner_items_xy
        record = [("ORIGIN", "Image courtesy of the U.S. Geological Survey"),
                  ("DIGITAL_OBJECT_IDENTIFIER", "https://doi.org/10.5066/P975CC9B"),
                  ("REQUEST_ID", "L2PS_SYNTHETIC_00001"), ("LANDSAT_SCENE_ID", scene_id),
                  ("LANDSAT_PRODUCT_ID", pid), ("PROCESSING_LEVEL", level),
                  ("COLLECTION_CATEGORY", tier), ("OUTPUT_FORMAT", "GEOTIFF"),
                  ("DATE_PRODUCT_GENERATED",
                   Raw(f"{proc[:4]}-{proc[4:6]}-{proc[6:]}T12:00:00Z")),
                  ("PROCESSING_SOFTWARE_VERSION", "L2PS_SYNTH")] + file_items + [
                  ("FILE_NAME_QUALITY_L1_PIXEL", qa_name),
                  ("FILE_NAME_QUALITY_L1_RADIOMETRIC_SATURATION", radsat_name),
                  ("FILE_NAME_ANGLE_COEFFICIENT", f"{pid}_ANG.txt"),
                  ("FILE_NAME_METADATA_ODL", f"{pid}_MTL.txt"),
                  ("FILE_NAME_METADATA_XML", f"{pid}_MTL.xml"),
                  ("DATA_SOURCE_ELEVATION", "SYNTHETIC")]
        groups = [("PRODUCT_CONTENTS", contents), ("IMAGE_ATTRIBUTES", image),
                  ("PROJECTION_ATTRIBUTES", proj_attrs), ("LEVEL1_PROCESSING_RECORD", record),
                  ("LEVEL1_MIN_MAX_RADIANCE", rad_mm), ("LEVEL1_MIN_MAX_REFLECTANCE", refl_mm),
                  ("LEVEL1_MIN_MAX_PIXEL_VALUE", pix_mm),
                  ("LEVEL1_RADIOMETRIC_RESCALING", resc),
                  ("LEVEL1_THERMAL_CONSTANTS", therm),
                  ("LEVEL1_PROJECTION_PARAMETERS", proj + cell_items + [
                      ("ORIENTATION", "NORTH_UP"), ("RESAMPLING_OPTION", "CUBIC_CONVOLUTION")])]
        return groups, root
    root = "L1_METADATA_FILE"
    info = [("ORIGIN", "Image courtesy of the U.S. Geological Survey"),
            ("REQUEST_ID", "L2PS_SYNTHETIC_00001"), ("LANDSAT_SCENE_ID", scene_id),
            ("LANDSAT_PRODUCT_ID", pid), ("COLLECTION_NUMBER", Raw("01")),
            ("FILE_DATE", Raw(f"{proc[:4]}-{proc[4:6]}-{proc[6:]}T12:00:00Z")),
            ("STATION_ID", "LGN"), ("PROCESSING_SOFTWARE_VERSION", "L2PS_SYNTH")]
    pm = [("DATA_TYPE", level), ("COLLECTION_CATEGORY", tier), ("ELEVATION_SOURCE", "SYNTHETIC"),
          ("OUTPUT_FORMAT", "GEOTIFF"), ("SPACECRAFT_ID", m["spacecraft"]),
          ("SENSOR_ID", m["sensor_id"]), ("WRS_PATH", Raw(str(path))),
          ("WRS_ROW", Raw(str(row))), ("NADIR_OFFNADIR", "NADIR"),
          ("TARGET_WRS_PATH", Raw(str(path))), ("TARGET_WRS_ROW", Raw(str(row))),
          ("DATE_ACQUIRED", Raw(day.isoformat())), ("SCENE_CENTER_TIME", sct)] + \
        corner_items_ll + corner_items_xy + size_items + file_items + [
        ("FILE_NAME_BAND_QUALITY", qa_name),
        ("ANGLE_COEFFICIENT_FILE_NAME", f"{pid}_ANG.txt"),
        ("METADATA_FILE_NAME", f"{pid}_MTL.txt")]
    image = attrs_common + [("IMAGE_QUALITY", Raw("9"))] + sun_items + sat_items
    groups = [("METADATA_FILE_INFO", info), ("PRODUCT_METADATA", pm), ("IMAGE_ATTRIBUTES", image),
              ("MIN_MAX_RADIANCE", rad_mm), ("MIN_MAX_REFLECTANCE", refl_mm),
              ("MIN_MAX_PIXEL_VALUE", pix_mm), ("RADIOMETRIC_RESCALING", resc),
              ("TIRS_THERMAL_CONSTANTS" if fam == "OLI" else "THERMAL_CONSTANTS", therm),
              ("PROJECTION_PARAMETERS", proj + cell_items + [("ORIENTATION", "NORTH_UP"),
                                                             ("RESAMPLING_OPTION",
                                                              "CUBIC_CONVOLUTION")])]
    return groups, root


def _ang(pid, mission, files, grid, zone, day, when):
    ulx, uly = grid.x0 + grid.dx / 2, grid.y0 - grid.dy / 2
    lrx, lry = ulx + (grid.nx - 1) * grid.dx, uly - (grid.ny - 1) * grid.dy
    bands = ", ".join(n.split("_")[0] for n, _r, _t in files)
    return "\n".join([
        "GROUP = FILE_HEADER",
        f'  LANDSAT_PRODUCT_ID = "{pid}"',
        f'  SPACECRAFT_ID = "{mission["spacecraft"]}"',
        f"  NUMBER_OF_BANDS = {len(files)}",
        f"  BAND_LIST = ({bands})",
        "END_GROUP = FILE_HEADER",
        "GROUP = PROJECTION",
        "  ELLIPSOID_AXES = (6378137.000000, 6356752.314200)",
        '  MAP_PROJECTION = "UTM"', '  PROJECTION_UNITS = "METERS"', '  DATUM = "WGS84"',
        '  ELLIPSOID = "WGS84"', f"  UTM_ZONE = {zone}",
        f"  UL_CORNER = ( {ulx:.3f}, {uly:.3f})", f"  UR_CORNER = ( {lrx:.3f}, {uly:.3f})",
        f"  LL_CORNER = ( {ulx:.3f}, {lry:.3f})", f"  LR_CORNER = ( {lrx:.3f}, {lry:.3f})",
        "END_GROUP = PROJECTION",
        "GROUP = EPHEMERIS",
        f"  EPHEMERIS_EPOCH_YEAR = {day.year}",
        f"  EPHEMERIS_EPOCH_DAY = {day.timetuple().tm_yday}",
        f"  EPHEMERIS_EPOCH_SECONDS = {when.hour * 3600 + when.minute * 60 + when.second:.6f}",
        "  NUMBER_OF_POINTS = 0",
        "END_GROUP = EPHEMERIS",
        "END", ""])
