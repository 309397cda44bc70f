"""Digital elevation model on the processing grid (spec 01 §4.1–§4.3, spec 02 §5).

- ``dem_path``: which file FILE_DEM / USE_DEM_DATABASE selects for an image.
- ``read_dem``: any GDAL-readable DEM (any CRS, resolution, data type) warped to a ``Grid``
  with DEM_RESAMPLING (NN/BL/CC); only the part of the file that covers the grid is read
  (a window, decimated when the DEM is much finer than the grid). Result: float32 metres,
  NaN where there is no elevation (DEM_NODATA, the file's own nodata, NaN, or outside the
  DEM).
- ``ocean_fill``: nodata runs touching pixels of exactly 0 m become 0 m (§4.2).
- ``smooth_dem``: box mean of half-width int(30 m / pixel size) for grids finer than 30 m,
  nodata ignored and kept (§4.3).
- ``load_dem``: the above chained for an image (``None`` FILE_DEM → flat at 0 m).

Coverage (a decision FORCE leaves open; docs/terrain.md): a DEM whose bounds do not meet the
image, or that has no valid elevation inside it, is an ``AuxiliaryError`` naming the file,
its bounds and the image bounds. A DEM that covers part of the image is accepted; the
uncovered pixels are NaN here and become nodata in every product (QAI nodata bit) in
``l2ps.topography``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import rasterio
from numba import njit, prange
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window, from_bounds

from ..errors import AuxiliaryError
from ..grid import Grid

DEM_RESAMPLING = {"NN": Resampling.nearest, "BL": Resampling.bilinear,
                  "CC": Resampling.cubic}
DATABASE_SUFFIXES = (".vrt", ".tif", ".tiff")
SMOOTH_DISTANCE = 30.0          # m; smoothing half-width = int(30 / pixel size) (§4.3)
_PAD = 4                        # source pixels read beyond the needed bounds (cubic needs 2)


# --------------------------------------------------------------------------- which file
def dem_path(file_dem: Path | None, use_database: bool = False, refsys_type: str = "",
             refsys_id: str = "") -> Path | None:
    """The DEM file of an image (spec 01 §1.4, spec 03 §1 step 2).

    Without the database this is FILE_DEM (``None`` = no DEM). With USE_DEM_DATABASE the
    DEM is ``<dir>/<refsys_type>_<refsys_id>.vrt`` (``.tif``/``.tiff`` are accepted too,
    tried in that order), where ``<dir>`` is FILE_DEM itself if it is a directory, else the
    directory holding FILE_DEM, e.g. ``/dem/WRS-2_193024.vrt`` or ``/dem/MGRS_T32UPC.vrt``.
    """
    if file_dem is None:
        if use_database:
            raise AuxiliaryError("USE_DEM_DATABASE = TRUE but FILE_DEM is NULL: no directory "
                                 "to look for the per-image DEM in")
        return None
    file_dem = Path(file_dem)
    if not use_database:
        return file_dem
    folder = file_dem if file_dem.is_dir() else file_dem.parent
    stem = f"{refsys_type}_{refsys_id}"
    tried = [folder / (stem + s) for s in DATABASE_SUFFIXES]
    for cand in tried:
        if cand.is_file():
            return cand
    near = sorted(p.name for p in folder.glob(f"*{refsys_id}*"))[:5] if folder.is_dir() else []
    hint = f"; files with the id in that folder: {', '.join(near)}" if near else ""
    raise AuxiliaryError(
        f"USE_DEM_DATABASE: no DEM for {refsys_type} {refsys_id} in {folder} (FILE_DEM = "
        f"{file_dem}); expected one of {', '.join(p.name for p in tried)}{hint}")


# --------------------------------------------------------------------------- reading
def _fmt_bounds(b) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in b) + ")"


def _crs_name(crs) -> str:
    if crs is None:
        return "no CRS"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else "custom CRS"


def read_dem(path: Path, grid: Grid, *, nodata: float = -32767, resampling: str = "BL",
             num_threads: int = 1) -> np.ndarray:
    """The DEM in ``path`` (band 1, metres) on ``grid``: float32, NaN = no elevation.

    Source pixels equal to ``nodata`` (DEM_NODATA), to the file's own nodata value, or not
    finite are nodata. Only the window of the file covering ``grid`` (plus a few pixels for
    the resampling kernel) is read; a DEM more than twice as fine as the grid is read
    decimated (nearest) to about two source pixels per grid pixel before the warp.
    ``resampling``: DEM_RESAMPLING (NN, BL, CC). Raises ``AuxiliaryError`` if the file
    cannot be read, does not overlap the grid, or has no valid elevation inside it.
    """
    path = Path(path)
    if resampling not in DEM_RESAMPLING:
        raise AuxiliaryError(f"DEM_RESAMPLING = {resampling!r}: expected one of "
                             f"{', '.join(DEM_RESAMPLING)}")
    try:
        src = rasterio.open(path)
    except (RasterioError, OSError) as exc:
        raise AuxiliaryError(f"FILE_DEM {path}: cannot be read as a raster ({exc})") from None
    with src:
        if src.crs is None:
            raise AuxiliaryError(f"FILE_DEM {path}: has no coordinate reference system")
        img_bounds = grid.bounds
        try:
            need = transform_bounds(grid.crs, src.crs, *img_bounds, densify_pts=21)
        except Exception as exc:   # noqa: BLE001 - PROJ errors come in several types
            raise AuxiliaryError(f"FILE_DEM {path}: the image bounds cannot be transformed "
                                 f"to the DEM's CRS {_crs_name(src.crs)} ({exc})") from None
        have = src.bounds
        left, bottom = max(need[0], have.left), max(need[1], have.bottom)
        right, top = min(need[2], have.right), min(need[3], have.top)
        if not (left < right and bottom < top):
            raise AuxiliaryError(
                f"FILE_DEM {path}: does not cover the image: DEM bounds "
                f"{_fmt_bounds(have)} ({_crs_name(src.crs)}), image bounds "
                f"{_fmt_bounds(need)} in the DEM's CRS = {_fmt_bounds(img_bounds)} "
                f"({_crs_name(grid.crs)}) (left, bottom, right, top)")
        t = src.transform
        if abs(t.b) > 0 or abs(t.d) > 0:        # rotated DEM: read it all
            win = Window(0, 0, src.width, src.height)
        else:
            w = from_bounds(left, bottom, right, top, transform=t)
            c0 = max(int(math.floor(w.col_off)) - _PAD, 0)
            r0 = max(int(math.floor(w.row_off)) - _PAD, 0)
            c1 = min(int(math.ceil(w.col_off + w.width)) + _PAD, src.width)
            r1 = min(int(math.ceil(w.row_off + w.height)) + _PAD, src.height)
            win = Window(c0, r0, max(c1 - c0, 1), max(r1 - r0, 1))
        # decimate a much finer DEM: keep about two source pixels per grid pixel
        src_px = math.sqrt(abs(t.a * t.e - t.b * t.d))
        dst_px_in_src = math.sqrt((need[2] - need[0]) * (need[3] - need[1])
                                  / max(grid.nx * grid.ny, 1))
        factor = int(dst_px_in_src / src_px / 2.0) if src_px > 0 else 1
        factor = max(factor, 1)
        out_h = max(int(math.ceil(win.height / factor)), 1)
        out_w = max(int(math.ceil(win.width / factor)), 1)
        try:
            data = src.read(1, window=win, out_shape=(out_h, out_w),
                            resampling=Resampling.nearest, out_dtype="float32")
        except (RasterioError, OSError) as exc:
            raise AuxiliaryError(f"FILE_DEM {path}: reading failed ({exc})") from None
        src_transform = src.window_transform(win) @ rasterio.Affine.scale(
            win.width / out_w, win.height / out_h)
        file_nodata = src.nodata
        bad = ~np.isfinite(data)
        bad |= data == np.float32(nodata)
        if file_nodata is not None and np.isfinite(file_nodata):
            bad |= data == np.float32(file_nodata)
        data[bad] = np.nan
        src_crs = src.crs
    out = np.full(grid.shape, np.nan, dtype=np.float32)
    reproject(source=data, destination=out, src_transform=src_transform, src_crs=src_crs,
              src_nodata=np.nan, dst_transform=grid.transform, dst_crs=grid.crs,
              dst_nodata=np.nan, resampling=DEM_RESAMPLING[resampling],
              num_threads=max(int(num_threads), 1))
    del data
    if not np.isfinite(out).any():
        raise AuxiliaryError(
            f"FILE_DEM {path}: has no valid elevation inside the image (every DEM pixel there "
            f"is nodata: DEM_NODATA = {nodata:g}, file nodata = {file_nodata}); DEM bounds "
            f"{_fmt_bounds(have)} ({_crs_name(src_crs)}), image bounds "
            f"{_fmt_bounds(img_bounds)} ({_crs_name(grid.crs)})")
    return out


# --------------------------------------------------------------------------- ocean fill
@njit(cache=True, parallel=True)
def _ocean_columns(z):
    ny, nx = z.shape
    for j in prange(nx):
        for i in range(ny - 1):                 # down the column
            if z[i, j] == 0.0 and math.isnan(z[i + 1, j]):
                z[i + 1, j] = 0.0
        for i in range(ny - 1, 0, -1):          # up the column
            if z[i, j] == 0.0 and math.isnan(z[i - 1, j]):
                z[i - 1, j] = 0.0


@njit(cache=True, parallel=True)
def _ocean_rows(z):
    ny, nx = z.shape
    for i in prange(ny):
        for j in range(nx - 1):                 # right along the row
            if z[i, j] == 0.0 and math.isnan(z[i, j + 1]):
                z[i, j + 1] = 0.0
        for j in range(nx - 1, 0, -1):          # left along the row
            if z[i, j] == 0.0 and math.isnan(z[i, j - 1]):
                z[i, j - 1] = 0.0


def ocean_fill(dem: np.ndarray) -> None:
    """In place (float32, NaN = nodata): four sweeps — down and up the columns, then right
    and left along the rows; a nodata pixel next (in the sweep direction) to a pixel of
    exactly 0 m becomes 0 m, so nodata seas adjoining a 0 m coast become sea level
    (spec 01 §4.2). Each sweep is sequential along its line, as FORCE's."""
    if dem.size:
        _ocean_columns(dem)
        _ocean_rows(dem)


# --------------------------------------------------------------------------- smoothing
@njit(cache=True, parallel=True)
def _box_rows(z, k, s, n):
    ny, nx = z.shape
    for i in prange(ny):
        for j in range(nx):
            acc = 0.0
            cnt = 0
            for jj in range(max(j - k, 0), min(j + k + 1, nx)):
                v = z[i, jj]
                if not math.isnan(v):
                    acc += v
                    cnt += 1
            s[i, j] = acc
            n[i, j] = cnt


@njit(cache=True, parallel=True)
def _box_cols(z, k, s, n, out):
    ny, nx = z.shape
    for i in prange(ny):
        i0 = max(i - k, 0)
        i1 = min(i + k + 1, ny)
        for j in range(nx):
            if math.isnan(z[i, j]):
                out[i, j] = np.nan
                continue
            acc = 0.0
            cnt = 0
            for ii in range(i0, i1):
                acc += s[ii, j]
                cnt += n[ii, j]
            out[i, j] = acc / cnt


def smooth_dem(dem: np.ndarray, grid: Grid) -> np.ndarray:
    """Box mean of the DEM for grids finer than 30 m (spec 01 §4.3, spec 02 §5): half-width
    int(30 m / pixel size) per axis (10 m → 7×7, 20 m → 3×3), nodata (NaN) ignored in the
    mean and kept. Returns ``dem`` itself when no axis is finer than 30 m."""
    kx = int(SMOOTH_DISTANCE / grid.dx) if grid.dx < SMOOTH_DISTANCE else 0
    ky = int(SMOOTH_DISTANCE / grid.dy) if grid.dy < SMOOTH_DISTANCE else 0
    if (kx == 0 and ky == 0) or dem.size == 0:
        return dem
    s = np.empty(dem.shape, np.float32)
    n = np.empty(dem.shape, np.uint16)
    _box_rows(dem, kx, s, n)
    out = np.empty(dem.shape, np.float32)
    _box_cols(dem, ky, s, n, out)
    return out


# --------------------------------------------------------------------------- all together
def load_dem(params, grid: Grid, refsys_type: str = "", refsys_id: str = "",
             num_threads: int | None = None) -> tuple[np.ndarray, Path | None]:
    """The image's DEM on ``grid`` after ocean fill and smoothing, and the file it came
    from: (float32 metres with NaN = nodata, path or None).

    ``params``: ``l2ps.params.Parameters`` (FILE_DEM, USE_DEM_DATABASE, DEM_NODATA,
    DEM_RESAMPLING, NTHREAD). No FILE_DEM → a flat DEM of 0 m everywhere (spec 01 §4.1).
    """
    path = dem_path(params.file_dem, bool(getattr(params, "use_dem_database", False)),
                    refsys_type, refsys_id)
    if path is None:
        return np.zeros(grid.shape, np.float32), None
    if num_threads is None:
        num_threads = int(getattr(params, "nthread", 1) or 1)
    dem = read_dem(path, grid, nodata=float(getattr(params, "dem_nodata", -32767)),
                   resampling=str(getattr(params, "dem_resampling", "BL")),
                   num_threads=num_threads)
    ocean_fill(dem)
    dem = smooth_dem(dem, grid)
    return dem, path
