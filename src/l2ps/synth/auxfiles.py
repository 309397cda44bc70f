"""Auxiliary files matching a synthetic scene (docs/synth.md "Auxiliary files"):

- a water vapour database (DIR_WVPLUT; spec 02 §2.3, §9): the daily table
  ``WVP_YYYY-MM-DD.txt`` ("lon lat wvp source") of the acquisition date and the twelve
  monthly climatology tables ``WVP_0000-MM-00.txt`` ("lon lat mean sd n");
- an AOD look-up file (DIR_AOD; spec 02 §3.1): ``AOD_DDD.txt`` ("lon lat a0 a1 a2") of the
  acquisition's day of year;
- DEMs of the scene in other CRSs and resolutions and with nodata holes (spec 01 §4.1).

The tables hold points on a 1° lattice centred on the scene centre; the centre point carries
the scene's truth value, the other points other values (so a reader that picks the wrong
point is caught). Written in FORCE's formats with single spaces.
"""
from __future__ import annotations

import math
import os
from datetime import date

import numpy as np

LATTICE_STEP_DEG = 1.0
LATTICE_HALF = 2                    # points at centre + (-2..2)·1° in lon and lat
DEM_NODATA = -32767.0               # FORCE's DEM_NODATA default
GEOGRAPHIC_RES_DEG = 0.0003
NEIGHBOUR_UTM_RES_M = 90.0


def _lattice(lon: float, lat: float):
    for i in range(-LATTICE_HALF, LATTICE_HALF + 1):          # rows: latitude
        for j in range(-LATTICE_HALF, LATTICE_HALF + 1):      # columns: longitude
            yield i, j, lon + j * LATTICE_STEP_DEG, lat + i * LATTICE_STEP_DEG


def write_wvp_database(folder, acquired: date, lon: float, lat: float, value: float) -> dict:
    """Write ``WVP_<date>.txt`` and ``WVP_0000-MM-00.txt`` (MM = 01..12) into ``folder``.

    Daily: the centre point holds ``value`` (g cm⁻², source MOD), the others
    value·(1 + 0.08·j − 0.05·i) (i, j lattice offsets; source MYD/MOD), and the point at
    (+2°, +2°) is fill (9999, TBD). Climatology of month m: value·(1 + 0.25·cos(2π(m − m0)/12))
    − 0.25·value at the centre (equal to ``value`` in the acquisition month m0), sd 0.3,
    n 20, with the same spatial pattern. Returns a description for truth.json."""
    os.makedirs(folder, exist_ok=True)
    daily = os.path.join(folder, f"WVP_{acquired:%Y-%m-%d}.txt")
    with open(daily, "w") as fh:
        for i, j, x, y in _lattice(lon, lat):
            if i == LATTICE_HALF and j == LATTICE_HALF:
                fh.write(f"{x:.4f} {y:.4f} {9999.0:f} TBD\n")
                continue
            v = value * (1 + 0.08 * j - 0.05 * i)
            fh.write(f"{x:.4f} {y:.4f} {v:f} {'MOD' if (i + j) % 2 == 0 else 'MYD'}\n")
    clim = {}
    for m in range(1, 13):
        season = 1 + 0.25 * math.cos(2 * math.pi * (m - acquired.month) / 12.0) - 0.25
        name = os.path.join(folder, f"WVP_0000-{m:02d}-00.txt")
        with open(name, "w") as fh:
            for i, j, x, y in _lattice(lon, lat):
                v = value * season * (1 + 0.08 * j - 0.05 * i)
                fh.write(f"{x:.4f} {y:.4f} {v:f} {0.3:f} {20:.0f}\n")
        clim[f"{m:02d}"] = round(value * season, 6)
    return {"folder": os.path.abspath(folder), "daily": os.path.basename(daily),
            "centre_lon": lon, "centre_lat": lat, "value_g_cm2": value,
            "climatology_centre_by_month": clim,
            "layout": f"{2 * LATTICE_HALF + 1}x{2 * LATTICE_HALF + 1} points, "
                      f"{LATTICE_STEP_DEG} deg apart, centred on the scene centre; the centre "
                      "holds the truth, other points differ; (+2,+2) deg is fill 9999 TBD"}


def write_aod_file(folder, acquired: date, lon: float, lat: float, aod550: float,
                   angstrom: float = 1.3) -> dict:
    """Write ``AOD_DDD.txt`` (DDD = day of year of ``acquired``) into ``folder``: lines
    "lon lat a0 a1 a2" with ln τ(λ) = a0 + a1·ln λ + a2·(ln λ)² (λ in µm), a2 = 0, a1 =
    −``angstrom`` (the generator's aerosol spectral slope) and a0 so that τ(0.55 µm) is
    ``aod550`` at the centre point, aod550·(1 + 0.1·j + 0.05·i) elsewhere. Returns a
    description for truth.json."""
    os.makedirs(folder, exist_ok=True)
    doy = acquired.timetuple().tm_yday
    name = os.path.join(folder, f"AOD_{doy:03d}.txt")
    with open(name, "w") as fh:
        for i, j, x, y in _lattice(lon, lat):
            tau = aod550 * (1 + 0.1 * j + 0.05 * i)
            a0 = math.log(tau) + angstrom * math.log(0.55)
            fh.write(f"{x:.4f} {y:.4f} {a0:.6f} {-angstrom:.6f} {0.0:.6f}\n")
    return {"folder": os.path.abspath(folder), "file": os.path.basename(name), "doy": doy,
            "centre_lon": lon, "centre_lat": lat, "aod550": aod550, "angstrom": angstrom}


# --------------------------------------------------------------------------- DEMs
def _keys(t: np.ndarray, o: int) -> np.ndarray:
    s = np.abs(t - o)
    a = -0.5
    return np.where(s <= 1, (a + 2) * s ** 3 - (a + 3) * s ** 2 + 1,
                    np.where(s < 2, a * s ** 3 - 5 * a * s ** 2 + 8 * a * s - 4 * a, 0.0))


def _lattice_points(lat, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A ``scene.Lattice`` field at scattered map points with the cubic convolution (Keys,
    a = −0.5, indices clamped) that ``Lattice.grid`` applies separably."""
    py = (lat.y0 - y) / lat.spacing
    px = (x - lat.x0) / lat.spacing
    iy, ix = np.floor(py).astype(np.int64), np.floor(px).astype(np.int64)
    ty, tx = py - iy, px - ix
    ny, nx = lat.values.shape
    vals = lat.values.astype(np.float64)
    out = np.zeros(x.shape, np.float64)
    for oy in (-1, 0, 1, 2):
        wy = _keys(ty, oy)
        ry = np.clip(iy + oy, 0, ny - 1)
        for ox in (-1, 0, 1, 2):
            out += wy * _keys(tx, ox) * vals[ry, np.clip(ix + ox, 0, nx - 1)]
    return out


def dem_points(scene, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The scene's terrain (``Scene.dem``) at scattered points of the product's map
    coordinates (content shift applied as in ``Scene.block``), float64 metres."""
    from .scene import CONTENT_SHIFT_M
    shift = scene.opt.shift_m if scene.opt.shift_m is not None else CONTENT_SHIFT_M.get()
    x = np.asarray(x, np.float64) - float(shift[0])
    y = np.asarray(y, np.float64) - float(shift[1])
    z = scene.z_base + 60.0 * _lattice_points(scene.lat_base, x, y)
    if scene.relief_amp > 0:
        ridged = np.zeros(x.shape, np.float64)
        amp = 1.0
        for lat in scene.lat_ridge:
            ridged += amp * (1.0 - np.minimum(np.abs(_lattice_points(lat, x, y)), 1.0)) ** 2
            amp *= 0.38
        m = _lattice_points(scene.lat_mask, x, y)
        c = np.clip((m + 0.1) / 0.8, 0, 1)
        z = z + scene.relief_amp * 0.55 * (c ** 2 * (3 - 2 * c)) * ridged
    return z


def _write_float(path, data, crs, transform):
    import rasterio
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0],
                       count=1, dtype="float32", crs=crs, transform=transform, tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate", predictor=3,
                       nodata=DEM_NODATA) as ds:
        ds.write(data.astype(np.float32), 1)


def _render(scene, path, crs, x0, y0, res_x, res_y, nx, ny, epsg_scene, strip_px=1_000_000):
    """Evaluate the terrain at the pixel centres of a north-up target grid and write it."""
    import rasterio
    from pyproj import Transformer
    tr = Transformer.from_crs(crs, f"EPSG:{epsg_scene}", always_xy=True)
    transform = rasterio.Affine(res_x, 0.0, x0, 0.0, -res_y, y0)
    rows = max(1, strip_px // max(nx, 1))
    with rasterio.open(path, "w", driver="GTiff", width=nx, height=ny, count=1,
                       dtype="float32", crs=crs, transform=transform, tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate", predictor=3,
                       nodata=DEM_NODATA) as ds:
        from rasterio.windows import Window
        for r0 in range(0, ny, rows):
            n = min(rows, ny - r0)
            xx, yy = np.meshgrid(x0 + (np.arange(nx) + 0.5) * res_x,
                                 y0 - (np.arange(r0, r0 + n) + 0.5) * res_y)
            sx, sy = tr.transform(xx, yy)
            ds.write(dem_points(scene, sx, sy).astype(np.float32), 1,
                     window=Window(0, r0, nx, n))


def hole_windows(nx: int, ny: int) -> list[dict]:
    """Nodata holes of the ``dem_holes.tif`` variant (pixel windows of the scene grid, rows
    [r0, r1), columns [c0, c1)): a block at 25–35 % of the rows and 20–35 % of the columns, a
    strip across 60–63 % of the rows over the middle half of the columns, and a notch at the
    left edge (rows 70–80 %, columns 0–5 %)."""
    def w(r0, r1, c0, c1):
        return {"r0": int(r0 * ny), "r1": int(r1 * ny), "c0": int(c0 * nx), "c1": int(c1 * nx)}
    return [w(0.25, 0.35, 0.20, 0.35), w(0.60, 0.63, 0.25, 0.75), w(0.70, 0.80, 0.0, 0.05)]


def write_dem_variants(folder, scene, grid, epsg: int, dem_truth_path) -> dict:
    """Write the scene DEM as (a) ``dem_geographic.tif`` (EPSG:4326, 0.0003°), (b)
    ``dem_utm<zone>_90m.tif`` (the neighbouring UTM zone on the side of the scene centre,
    90 m), both the terrain function evaluated at their own pixel centres, and (c)
    ``dem_holes.tif`` (the truth ``dem.tif`` on the scene grid with nodata −32767 in
    :func:`hole_windows`). Returns a description for truth.json."""
    import rasterio
    from rasterio.warp import transform_bounds
    os.makedirs(folder, exist_ok=True)
    b = grid.bounds
    out = {"folder": os.path.abspath(folder), "nodata": DEM_NODATA}
    # (a) geographic
    lo0, la0, lo1, la1 = transform_bounds(f"EPSG:{epsg}", "EPSG:4326", *b, densify_pts=21)
    r = GEOGRAPHIC_RES_DEG
    x0 = math.floor(lo0 / r) * r - 2 * r
    y0 = math.ceil(la1 / r) * r + 2 * r
    nx = int(math.ceil((lo1 - x0) / r)) + 2
    ny = int(math.ceil((y0 - la0) / r)) + 2
    _render(scene, os.path.join(folder, "dem_geographic.tif"), "EPSG:4326", x0, y0, r, r,
            nx, ny, epsg)
    out["geographic"] = {"file": "dem_geographic.tif", "crs": "EPSG:4326", "res_deg": r,
                         "size": [nx, ny]}
    # (b) neighbouring UTM zone, 90 m
    zone = epsg % 100
    south = epsg // 100 == 327
    lon_c = 0.5 * (lo0 + lo1)
    cm = -183.0 + 6.0 * zone
    nz = zone + 1 if lon_c >= cm else zone - 1
    nz = (nz - 1) % 60 + 1
    epsg_n = (32700 if south else 32600) + nz
    xa, ya, xb, yb = transform_bounds(f"EPSG:{epsg}", f"EPSG:{epsg_n}", *b, densify_pts=21)
    r = NEIGHBOUR_UTM_RES_M
    x0 = math.floor(xa / r) * r - 2 * r
    y0 = math.ceil(yb / r) * r + 2 * r
    nx = int(math.ceil((xb - x0) / r)) + 2
    ny = int(math.ceil((y0 - ya) / r)) + 2
    name = f"dem_utm{nz:02d}_90m.tif"
    _render(scene, os.path.join(folder, name), f"EPSG:{epsg_n}", x0, y0, r, r, nx, ny, epsg)
    out["neighbour_utm"] = {"file": name, "crs": f"EPSG:{epsg_n}", "res_m": r, "size": [nx, ny]}
    # (c) holes, on the scene grid
    with rasterio.open(dem_truth_path) as src:
        z = src.read(1)
        prof = (src.crs, src.transform)
    holes = hole_windows(grid.nx, grid.ny)
    for h in holes:
        z[h["r0"]:h["r1"], h["c0"]:h["c1"]] = DEM_NODATA
    _write_float(os.path.join(folder, "dem_holes.tif"), z, *prof)
    out["holes"] = {"file": "dem_holes.tif", "crs": f"EPSG:{epsg}", "windows": holes,
                    "note": "truth dem.tif with nodata -32767 in the windows (rows r0:r1, "
                            "columns c0:c1 of the scene grid)"}
    return out


# --------------------------------------------------------------------------- truth.json
def add_extras(doc: dict, scene, grid, epsg: int, truth_dir, day: date, lon: float, lat: float,
               *, brdf=None, wvp_db=False, aod_files=False, dem_variants=False,
               band_names=None) -> None:
    """Write the optional auxiliary files of a product and describe them (and the BRDF
    surface) in its truth document ``doc`` (in place). Nothing happens for the defaults."""
    if brdf is not None:
        from .brdf_surface import (COVER_MULTIPLIERS, HB, BR, PUBLISHED_WEIGHTS,
                                   VEGETATION_MULTIPLIER)
        from . import spectra
        doms = spectra.cover_table(scene.sensor)[0]
        names = band_names or doms
        doc["brdf"] = {
            "mode": brdf, "model": "RossThick-LiSparseReciprocal, h/b = %g, b/r = %g" % (HB, BR),
            "surface": "rho = rho0 * (1 + V*K_vol + G*K_geo) per cover and band, mixed "
                       "linearly; V = f_vol/f_iso, G = f_geo/f_iso",
            "published_weights": {d: PUBLISHED_WEIGHTS[d] for d in doms
                                  if d in PUBLISHED_WEIGHTS},
            "cover_multipliers": ({**COVER_MULTIPLIERS, "vegetation": VEGETATION_MULTIPLIER}
                                  if brdf == "cover" else "none (global ratios for every cover)"),
            "isotropic_bands": [n for n, d in zip(names, doms) if d not in PUBLISHED_WEIGHTS],
            "nbar_geometry": "nadir view, sun zenith at the mean Landsat/Sentinel-2 local "
                             "overpass time of the pixel's latitude (spec 02 par. 7), exact on "
                             "5 km nodes, bilinear between",
            "standard_sun_zenith_centre": float(scene._std_zenith(
                np.array([grid.x0 + grid.nx * grid.dx / 2]),
                np.array([grid.y0 - grid.ny * grid.dy / 2]))[0, 0]),
            "adjacency": "the environment term uses the isotropic base reflectance",
        }
        doc.setdefault("layers", {}).update(
            {f"nbar_{n}": "NBAR surface reflectance x10000 (int16, -9999 nodata)"
             for n in names})
        doc["layers"].update({f"surface_{n}": "directional surface reflectance x10000 at "
                              "the pixel's sun/view geometry (the TOA is made from it)"
                              for n in names})
    aux = {}
    if wvp_db:
        aux["wvp"] = write_wvp_database(os.path.join(truth_dir, "wvp"), day, lon, lat,
                                        float(scene.opt.water_vapor))
    if aod_files:
        aux["aod"] = write_aod_file(os.path.join(truth_dir, "aod"), day, lon, lat,
                                    float(scene.opt.aod))
    if dem_variants:
        aux["dem"] = write_dem_variants(os.path.join(truth_dir, "dem"), scene, grid, epsg,
                                        os.path.join(truth_dir, "dem.tif"))
    if aux:
        doc["aux"] = aux
