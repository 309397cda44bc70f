"""Synthetic material for co-registration tests (spec 03 §5): misregistered products and
monthly NIR base images made from the same ground content.

* :func:`make_shifted_landsat` / :func:`make_shifted_sentinel2`: a product whose ground
  content is displaced by ``shift_m = (east, north)`` metres relative to its pixel grid
  (``SceneOptions.shift_m``); everything else (grid, metadata, clouds relative to the
  content) as the unshifted product with the same arguments.
* :func:`content_scene` rebuilds the synthetic scene of a product from its ``truth.json``
  (same seed, grid and options → the same random lattices), and :func:`render_surface`
  evaluates its clear-sky surface reflectance — without the per-pixel sensor noise and
  without any shift — at the pixel centres of any grid in the product's CRS.
* :func:`write_base_image` writes what FORCE's ``DIR_COREG_BASE`` holds: a 12-band raster
  whose band m is a mean NIR reflectance ×10000 of month m (here the surface NIR times a
  smooth seasonal factor), on a grid of its own (default: 30 m, in the product's CRS or
  any other), made by block-averaging a fine render. Its file name starts with the year.

Nothing here uses ``l2ps.coreg``: the truth is the shift the product was made with.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np

from ..grid import Grid
from .scene import CONTENT_SHIFT_M, Geometry, Scene, SceneOptions, SynthProduct

#: seasonal factor of the monthly NIR base bands (band m = NIR × factor[m − 1])
MONTHLY_FACTOR = tuple(round(0.8 + 0.2 * math.sin(math.pi * (m - 1) / 11.0), 4)
                       for m in range(1, 13))
BASE_NODATA = -9999


@contextmanager
def content_shift(shift_m: tuple[float, float]):
    """Within the block, synthetic products are made with their ground content displaced by
    ``shift_m`` = (east, north) metres relative to the pixel grid."""
    token = CONTENT_SHIFT_M.set((float(shift_m[0]), float(shift_m[1])))
    try:
        yield
    finally:
        CONTENT_SHIFT_M.reset(token)


def make_shifted_landsat(out_dir, shift_m=(0.0, 0.0), **kwargs) -> SynthProduct:
    """:func:`l2ps.synth.make_landsat` with the content displaced by ``shift_m`` (east,
    north; metres). ``truth.json`` gets ``content_shift_m``."""
    from .landsat import make_landsat
    with content_shift(shift_m):
        p = make_landsat(out_dir, **kwargs)
    return _note_shift(p, shift_m)


def make_shifted_sentinel2(out_dir, shift_m=(0.0, 0.0), **kwargs) -> SynthProduct:
    """:func:`l2ps.synth.make_sentinel2` with the content displaced by ``shift_m``."""
    from .sentinel2 import make_sentinel2
    with content_shift(shift_m):
        p = make_sentinel2(out_dir, **kwargs)
    return _note_shift(p, shift_m)


def _note_shift(p: SynthProduct, shift_m) -> SynthProduct:
    import json
    p.truth["content_shift_m"] = [float(shift_m[0]), float(shift_m[1])]
    (Path(p.truth_dir) / "truth.json").write_text(json.dumps(p.truth, indent=1, default=str))
    return p


# ----------------------------------------------------------------------------- rendering
def _product_grid(truth: dict) -> Grid:
    from rasterio.crs import CRS
    g = truth["grid"]
    return Grid(CRS.from_epsg(int(truth["epsg"])).to_wkt(), float(g["x0"]), float(g["y0"]),
                float(g["dx"]), float(g["dy"]), int(g["nx"]), int(g["ny"]))


def content_scene(truth: dict, *, snow_line: float | None = None) -> Scene:
    """The synthetic scene of a product (from its parsed ``truth.json``), without clouds and
    without content shift. ``snow_line``: as passed to make_landsat/make_sentinel2."""
    grid = _product_grid(truth)
    when = truth.get("acquired") or truth.get("sensing_time")
    acquired = datetime.fromisoformat(str(when))
    cx, cy = grid.x0 + grid.nx * grid.dx / 2, grid.y0 - grid.ny * grid.dy / 2
    geo = Geometry(grid=grid, epsg=int(truth["epsg"]), acquired=acquired,
                   sat_height=float(truth.get("satellite_height_m", 705000.0)),
                   heading=float(truth.get("heading_grid_deg", 180.0)), nadir_xy=(cx, cy),
                   north_grid=float(truth.get("grid_north_deg", 0.0)))
    opts = SceneOptions(seed=int(truth["seed"]), relief=float(truth.get("relief", 1.0)),
                        clouds=False, snow_line=snow_line, shift_m=(0.0, 0.0),
                        bright_targets=len(truth.get("bright_targets", [])) or None)
    scene = Scene(truth["sensor"], geo, opts)
    if "bright_targets" in truth:
        scene.targets = [tuple(map(float, t)) for t in truth["bright_targets"]]
    return scene


def render_surface(truth: dict, domain: str, grid: Grid, *, illuminated: bool = True,
                   snow_line: float | None = None, block_rows: int = 512) -> np.ndarray:
    """Clear-sky surface reflectance (float32, 0–1) of band ``domain`` (e.g. "NIR",
    "BROADNIR") at the pixel centres of ``grid`` (in the product's CRS), unshifted, without
    the per-pixel noise of the product.

    ``illuminated``: times the terrain illumination of the product's sun (at the scene
    centre) as the product renders it — Lambertian direct part plus sky-view diffuse part —
    i.e. the reflectance a sensor would see at the ground without atmosphere (what a mean
    NIR base image made from images of the same month shows in mountains).
    """
    from .scene import direct_fraction
    scene = content_scene(truth, snow_line=snow_line)
    if domain not in scene.doms:
        raise ValueError(f"{truth['sensor']} has no reflective band {domain!r}")
    bi = scene.doms.index(domain)
    out = np.empty(grid.shape, np.float32)
    xs = grid.x0 + (np.arange(grid.nx) + 0.5) * grid.dx
    if illuminated:
        sza, saz = scene.geo.sun_at(grid.x0 + grid.nx * grid.dx / 2,
                                    grid.y0 - grid.ny * grid.dy / 2)
        sza = float(sza)
        sx, sy = (float(v) for v in scene.geo.sun_vector(float(saz)))
        ts = math.radians(sza)
        wl = scene.centres[domain]
    for r0 in range(0, grid.ny, block_rows):
        ys = grid.y0 - (np.arange(r0, min(r0 + block_rows, grid.ny)) + 0.5) * grid.dy
        if illuminated:
            xh = np.concatenate([[xs[0] - grid.dx], xs, [xs[-1] + grid.dx]])
            yh = np.concatenate([[ys[0] + grid.dy], ys, [ys[-1] - grid.dy]])
            zh = scene.dem(xh, yh)
            z = zh[1:-1, 1:-1]
            dzdx = (zh[1:-1, 2:] - zh[1:-1, :-2]) / (2 * grid.dx)
            dzdy = (zh[:-2, 1:-1] - zh[2:, 1:-1]) / (2 * grid.dy)
        else:
            z = scene.dem(xs, ys)
        cls, veg, bright = scene.covers(xs, ys, z)
        rho = scene.surface(bi, cls, veg, bright)
        if illuminated:
            norm = np.sqrt(1 + dzdx ** 2 + dzdy ** 2)
            cos_i = (-dzdx * math.sin(ts) * sx - dzdy * math.sin(ts) * sy + math.cos(ts)) / norm
            skyview = (1 + 1 / norm) / 2
            fdir = direct_fraction(wl, sza, scene.opt.aod, z / 1000.0)
            rho = rho * (fdir * np.maximum(cos_i, 0) / math.cos(ts) + (1 - fdir) * skyview)
        out[r0:r0 + len(ys)] = rho
    return out


def base_grid(truth: dict, *, res: float = 30.0, crs=None, margin_m: float = 1500.0) -> Grid:
    """A north-up grid of pixel size ``res`` (in the units of ``crs``; default: the product's
    CRS) covering the product plus ``margin_m``, with its origin on a multiple of ``res``."""
    from rasterio.crs import CRS
    from rasterio.warp import transform_bounds
    pg = _product_grid(truth)
    left, bottom, right, top = pg.bounds
    left, bottom, right, top = left - margin_m, bottom - margin_m, right + margin_m, top + margin_m
    dst = pg.crs if crs is None else CRS.from_user_input(crs)
    if dst != pg.crs:
        left, bottom, right, top = transform_bounds(pg.crs, dst, left, bottom, right, top,
                                                    densify_pts=21)
    x0 = math.floor(left / res) * res
    y0 = math.ceil(top / res) * res
    nx = int(math.ceil((right - x0) / res))
    ny = int(math.ceil((y0 - bottom) / res))
    return Grid(dst.to_wkt(), x0, y0, float(res), float(res), nx, ny)


def write_base_image(path, truth: dict, *, domain: str | None = None, grid: Grid | None = None,
                     res: float = 30.0, crs=None, nodata: int = BASE_NODATA,
                     factors=MONTHLY_FACTOR, nodata_box=None,
                     snow_line: float | None = None) -> Path:
    """Write a 12-band monthly NIR base image (int16, band m = NIR ×10000 × ``factors[m−1]``)
    for the product described by ``truth`` (its parsed truth.json).

    ``domain``: the band whose surface reflectance is used (default: Landsat NIR,
    Sentinel-2 BROADNIR). ``grid``: the base grid (default :func:`base_grid` with ``res``
    and ``crs``). The render is made on a grid of the product's CRS at the product's pixel
    size, then averaged onto the base grid (rasterio ``average``). ``nodata_box``: optional
    (left, bottom, right, top) in the base CRS set to ``nodata``. Returns ``path``.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.warp import reproject, transform_bounds
    path = Path(path)
    if domain is None:
        domain = "BROADNIR" if truth["mission"] == "sentinel2" else "NIR"
    bg = grid or base_grid(truth, res=res, crs=crs)
    pg = _product_grid(truth)
    # fine render in the product's CRS covering the base grid
    left, bottom, right, top = transform_bounds(bg.crs, pg.crs, *bg.bounds, densify_pts=21) \
        if bg.crs != pg.crs else bg.bounds
    d = pg.dx
    fx0 = pg.x0 + math.floor((left - pg.x0) / d - 2) * d
    fy0 = pg.y0 - math.floor((pg.y0 - top) / d - 2) * d
    fine = Grid(pg.crs_wkt, fx0, fy0, d, d, int(math.ceil((right - fx0) / d)) + 2,
                int(math.ceil((fy0 - bottom) / d)) + 2)
    rho = render_surface(truth, domain, fine, snow_line=snow_line)
    mean = np.full(bg.shape, np.nan, np.float32)
    reproject(rho, mean, src_transform=fine.transform, src_crs=fine.crs, src_nodata=np.nan,
              dst_transform=bg.transform, dst_crs=bg.crs, dst_nodata=np.nan,
              resampling=Resampling.average)
    bad = ~np.isfinite(mean)
    if nodata_box is not None:
        xs = bg.x0 + (np.arange(bg.nx) + 0.5) * bg.dx
        ys = bg.y0 - (np.arange(bg.ny) + 0.5) * bg.dy
        bad |= ((xs[None, :] >= nodata_box[0]) & (xs[None, :] <= nodata_box[2])
                & (ys[:, None] >= nodata_box[1]) & (ys[:, None] <= nodata_box[3]))
    bands = np.empty((12,) + bg.shape, np.int16)
    for m in range(12):
        v = np.rint(np.nan_to_num(mean) * 10000.0 * float(factors[m]))
        bands[m] = np.where(bad, nodata, np.clip(v, -32767, 32767)).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=bg.nx, height=bg.ny, count=12,
                       dtype="int16", crs=bg.crs, transform=bg.transform, nodata=nodata,
                       tiled=True, blockxsize=256, blockysize=256, compress="deflate",
                       predictor=2) as ds:
        ds.write(bands)
        for m in range(12):
            ds.set_band_description(m + 1, f"NIR month {m + 1:02d}")
    return path
