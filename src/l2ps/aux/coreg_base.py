"""Co-registration base images: which file of DIR_COREG_BASE, and its month on a grid
(spec 03 §5 "Base image selection").

A base image is a raster of 12 bands; band m is a (multi-year) mean NIR reflectance ×10000
of month m (FORCE: HLPS TSA with ``INDEX = NIR``, ``FOLD_TYPE = AVG``, ``OUTPUT_FBM``,
then ``force-mosaic``). Its nodata value is COREG_BASE_NODATA.

Discovery (:func:`find_base_image`) is deterministic, unlike FORCE's first ``readdir`` entry
(spec 03 §8 P15): among the *raster files* of DIR_COREG_BASE (suffixes
:data:`RASTER_SUFFIXES`; sidecars such as ``.ovr``, ``.aux.xml``, ``.msk`` and folders are
ignored) whose name starts with the 4-digit acquisition year, the first in sorted name
order; if there is none, the same for year − 1, … down to year − 49.
"""
from __future__ import annotations

import math
from datetime import date, datetime
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window

from ..errors import AuxiliaryError
from ..grid import Grid

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".bsq", ".bil", ".bip", ".jp2", ".nc")
YEARS_BACK = 49                 # year, year−1, …, year−49 (spec 03 §5)
N_MONTHS = 12
BASE_NODATA_OUT = -9999         # nodata of the warped base band
_PAD = 4                        # source pixels read beyond the needed bounds (cubic needs 2)


def find_base_image(folder: Path, acquired: date | datetime) -> Path:
    """The base image for an acquisition date: the first raster file (sorted by name) of
    ``folder`` whose name starts with the acquisition year, else year − 1, … year − 49.

    Raises ``AuxiliaryError`` if ``folder`` is not a directory or holds no such file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise AuxiliaryError(f"DIR_COREG_BASE {folder}: not a directory")
    rasters = sorted(p.name for p in folder.iterdir()
                     if p.is_file() and p.name.lower().endswith(RASTER_SUFFIXES))
    year = acquired.year
    for y in range(year, year - YEARS_BACK - 1, -1):
        hits = [n for n in rasters if n.startswith(f"{y:04d}")]
        if hits:
            return folder / hits[0]
    others = ", ".join(rasters[:5]) if rasters else "none"
    raise AuxiliaryError(
        f"DIR_COREG_BASE {folder}: could not retrieve a base image for {year}: expected a "
        f"raster file ({', '.join(RASTER_SUFFIXES)}) whose name starts with a year from "
        f"{year} back to {year - YEARS_BACK} (e.g. {year}_NIR-AVG.tif); raster files found: "
        f"{others}")


def _fmt_bounds(b) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in b) + ")"


def read_base_band(path: Path, month: int, grid: Grid, *, nodata: int = -9999,
                   num_threads: int = 1) -> np.ndarray:
    """Band ``month`` (1–12) of the base image ``path`` on ``grid``: int16 ×10000, −9999 =
    no data (spec 03 §5: cubic resampling, Float32 working type, source nodata
    ``nodata`` = COREG_BASE_NODATA and the file's own nodata, values truncated to int16).

    Only the window of the file covering ``grid`` (plus a few pixels) is read. Raises
    ``AuxiliaryError`` if the file cannot be read, has fewer than 12 bands or no CRS, does
    not overlap the grid, or has no valid pixel inside it.
    """
    path = Path(path)
    if not 1 <= int(month) <= N_MONTHS:
        raise ValueError(f"month {month}: expected 1–12")
    try:
        src = rasterio.open(path)
    except (RasterioError, OSError) as exc:
        raise AuxiliaryError(f"DIR_COREG_BASE: base image {path} cannot be read as a raster "
                             f"({exc})") from None
    with src:
        if src.count < N_MONTHS:
            raise AuxiliaryError(f"DIR_COREG_BASE: base image {path} has {src.count} band(s); "
                                 f"expected 12 (mean NIR of each month)")
        if src.crs is None:
            raise AuxiliaryError(f"DIR_COREG_BASE: base image {path} has no coordinate "
                                 f"reference system")
        try:
            need = transform_bounds(grid.crs, src.crs, *grid.bounds, densify_pts=21)
        except Exception as exc:  # noqa: BLE001 - PROJ errors come in several types
            raise AuxiliaryError(f"DIR_COREG_BASE: base image {path}: the image bounds cannot "
                                 f"be transformed to its CRS ({exc})") from None
        have = src.bounds
        left, bottom = max(need[0], have.left), max(need[1], have.bottom)
        right, top = min(need[2], have.right), min(need[3], have.top)
        if not (left < right and bottom < top):
            raise AuxiliaryError(
                f"DIR_COREG_BASE: base image {path} does not overlap the image: base bounds "
                f"{_fmt_bounds(have)}, image bounds in the base's CRS {_fmt_bounds(need)} "
                f"(left, bottom, right, top)")
        t = src.transform
        if abs(t.b) > 0 or abs(t.d) > 0:
            win = Window(0, 0, src.width, src.height)
        else:
            ca, cb = sorted(((left - t.c) / t.a, (right - t.c) / t.a))
            ra, rb = sorted(((top - t.f) / t.e, (bottom - t.f) / t.e))
            c0 = max(int(math.floor(ca)) - _PAD, 0)
            r0 = max(int(math.floor(ra)) - _PAD, 0)
            c1 = min(int(math.ceil(cb)) + _PAD, src.width)
            r1 = min(int(math.ceil(rb)) + _PAD, src.height)
            win = Window(c0, r0, max(c1 - c0, 1), max(r1 - r0, 1))
        try:
            data = src.read(int(month), window=win, out_dtype="float32")
        except (RasterioError, OSError) as exc:
            raise AuxiliaryError(f"DIR_COREG_BASE: base image {path}: reading band {month} "
                                 f"failed ({exc})") from None
        bad = ~np.isfinite(data) | (data == np.float32(nodata))
        if src.nodata is not None and np.isfinite(src.nodata):
            bad |= data == np.float32(src.nodata)
        data[bad] = np.nan
        src_transform = t @ Affine.translation(win.col_off, win.row_off)
        src_crs = src.crs
        file_nodata = src.nodata
    out = np.full(grid.shape, np.nan, np.float32)
    reproject(source=data, destination=out, src_transform=src_transform, src_crs=src_crs,
              src_nodata=np.nan, dst_transform=grid.transform, dst_crs=grid.crs,
              dst_nodata=np.nan, resampling=Resampling.cubic,
              num_threads=max(int(num_threads), 1))
    del data
    valid = np.isfinite(out)
    if not valid.any():
        raise AuxiliaryError(
            f"DIR_COREG_BASE: base image {path} has no valid pixel inside the image (band "
            f"{month}; COREG_BASE_NODATA = {nodata}, file nodata = {file_nodata})")
    res = np.full(grid.shape, BASE_NODATA_OUT, np.int16)
    np.trunc(out, out=out, where=valid)
    np.clip(out, -32767, 32767, out=out, where=valid)
    res[valid] = out[valid].astype(np.int16)
    return res
