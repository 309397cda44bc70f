"""Tiling, mosaicking and writing Level-2 products into the data cube (spec 03 §2.7–§2.11,
§3; DESIGN.md "Mosaicking rule").

:func:`write_cube` takes the products of one image on the image grid (QAI first), warps
each product once onto a scene-wide grid aligned with the tile grid, and writes, tile by
tile (Y outer, X inner), ``<cube>/<X####_Y####>/<YYYYMMDD>_LEVEL2_<SENSOR>_<PRODUCT>.<ext>``
(untiled: ``<DIR_LEVEL2>/<refsys_id>/...``).

Mosaicking (deviation from FORCE §2.8, which averages the new chip with whatever is in
the file): a tile file holds the per-pixel mean of the contributions of the distinct
images of that day and sensor (float mean truncated toward zero, nodata ignored; QAI
merged bitwise with :func:`l2ps.qai.merge`), independent of the order in which images
were written; writing an image again replaces its own contribution. The tile file's
metadata (domain ``L2PS``, item ``CONTRIBUTORS``) lists its contributors. As long as
there is one, nothing else is stored. When a second image arrives, the current content is
saved as the first contributor's chip, and every contribution is kept as a compressed
GeoTIFF in the hidden folder ``<tile>/.contrib/<YYYYMMDD>_LEVEL2_<SENSOR>/
<level1_id>_<PRODUCT>.tif`` (window-sized); the tile file is then recomputed from them. OVV is
recomputed from the merged BOA/TOA and QAI. See docs/cube.md.

Cost proportional to the data, not to the tile area: only the image's data window in a
tile (valid QAI box, aligned to :func:`formats.window_alignment`) is handled; tile files
are tile-sized but sparse (nodata blocks are not stored; GTiff tile files of a single
contributor are written directly, strip by strip, while the next strip is warped; other
formats and merges are assembled by GDAL from window files, COG overviews come from the
windows' overviews); chips hold only their window;
merging recomputes only the window that can change and lets GDAL copy the rest.

Every file is written under its lock (all files of one tile/date/sensor group are locked
together, in sorted order) and atomically (temporary file + rename).
"""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .. import qai as qai_mod
from ..errors import AuxiliaryError, GridError, OutputError
from ..grid import Grid
from ..products import Product
from . import formats
from .grid import (Datacube, as_bool, cube_for_params, grid_footprint, param,
                   target_resolution)
from .lock import _is_gdal_error
from .lock import (DEFAULT_LOCK_TIMEOUT, append_line, atomic_write, file_locks, makedirs,
                   remove_quietly)
from .warp import (_numba_threads, compute_windows, warp_products,  # noqa: F401
                   warp_products_lazy)

log = logging.getLogger(__name__)

CONTRIB_DIR = ".contrib"
CONTRIB_KEY = "CONTRIBUTORS"
WINDOW_KEY = "DATA_WINDOW"            # "row col height width": no valid pixel outside
UNKNOWN_CONTRIBUTOR = "_unknown_"     # content of a file without contributor record
_CHIP_FORMAT = formats.OutputFormat("GTiff", "GTiff", "tif",
                                    {"COMPRESS": "ZSTD", "PREDICTOR": "2", "TILED": "YES",
                                     "BLOCKXSIZE": "256", "BLOCKYSIZE": "256",
                                     "BIGTIFF": "IF_SAFER"})
PROVENANCE_HEADER = "file,origin,mode,creation"

# spec 03 §3.4 quicklook colours, first match wins
OVV_PIXEL = 150.0
_OVV_RED, _OVV_PINK, _OVV_CYAN = (255, 0, 0), (255, 0, 255), (0, 255, 255)
_OVV_YELLOW, _OVV_ORANGE, _OVV_GREEN = (255, 255, 0), (255, 127, 39), (34, 177, 76)


# ============================================================================ results
@dataclass(frozen=True)
class WrittenFile:
    path: Path
    mode: str          # "create" | "update"


@dataclass
class CubeResult:
    """What :func:`write_cube` did for one image."""
    tiles_written: list[str] = field(default_factory=list)   # "X0001_Y0002", "europe/X..", refsys id
    files: list[WrittenFile] = field(default_factory=list)
    tiles_skipped_cloud: dict[str, float] = field(default_factory=dict)  # tile -> cloud cover %
    tiles_empty: list[str] = field(default_factory=list)
    tiles_not_allowed: list[str] = field(default_factory=list)
    cubes: list[Datacube] = field(default_factory=list)
    #: seconds per sub-stage (exclusive, wall): "warp", "write" (tile files and chips,
    #: compression), "overviews", "merge", "quicklook", "analysis" (data windows, cloud
    #: cover, DST)
    timings: dict[str, float] = field(default_factory=dict)
    #: CPU seconds (all threads of the process) per sub-stage, as ``timings``
    cpu_timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_tiles(self) -> int:
        return len(self.tiles_written)


class _Clock:
    """Exclusive wall time per named section: ``with clock("warp"): ...``; a nested
    section pauses the enclosing one, so the times add up to the total."""

    def __init__(self, times: dict[str, float], cpu: dict[str, float] | None = None):
        self.times = times
        self.cpu = cpu if cpu is not None else {}
        self._stack: list[list] = []

    def _add(self, entry: list, now: float, cnow: float) -> None:
        self.times[entry[0]] = self.times.get(entry[0], 0.0) + now - entry[1]
        self.cpu[entry[0]] = self.cpu.get(entry[0], 0.0) + cnow - entry[2]

    @contextlib.contextmanager
    def __call__(self, name: str):
        now, cnow = time.perf_counter(), time.process_time()
        if self._stack:
            self._add(self._stack[-1], now, cnow)
        self._stack.append([name, now, cnow])
        try:
            yield
        finally:
            end, cend = time.perf_counter(), time.process_time()
            self._add(self._stack.pop(), end, cend)
            if self._stack:
                self._stack[-1][1:] = [end, cend]


_NO_CLOCK = _Clock({})


# ======================================================================= FILE_TILE
def read_tile_allowlist(path: str | os.PathLike) -> frozenset[tuple[int, int]]:
    """FILE_TILE (spec 03 §2.9): first entry = number of tiles k (> 0), then k tile IDs
    ``X####_Y####``. More robust than FORCE's fixed-column parser: any whitespace (also
    several IDs per line), 5-character negatives; entries beyond k are ignored as in
    FORCE. Raises :class:`GridError` naming file and line on malformed content."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise GridError(f"{p}: cannot read FILE_TILE: {e.strerror or e}") from e
    tokens = [(i, t) for i, ln in enumerate(text.splitlines(), 1) for t in ln.split()]
    if not tokens:
        raise GridError(f"{p}: FILE_TILE is empty (expected the number of tiles)")
    line, first = tokens[0]
    try:
        k = int(first)
    except ValueError:
        raise GridError(f"{p}, line {line}: expected the number of tiles, got {first!r}") from None
    if k <= 0:
        raise GridError(f"{p}, line {line}: the number of tiles must be > 0, got {k}")
    ids = tokens[1:1 + k]
    if len(ids) < k:
        raise GridError(f"{p}: announces {k} tiles but lists {len(ids)}")
    out = set()
    for line, t in ids:
        try:
            out.add(Datacube.parse_tile_name(t))
        except GridError:
            raise GridError(f"{p}, line {line}: not a tile ID: {t!r} (expected X####_Y####)") from None
    return frozenset(out)


# ========================================================================= FILE_AOI
def rasterize_aoi(path: str | os.PathLike, grid: Grid) -> np.ndarray:
    """Rasterise the polygons of layer 0 of the vector file ``path`` onto ``grid``: True
    inside (pixel centre inside a polygon, no ALL_TOUCHED; spec 03 §2.10). The vector is
    reprojected to the grid's CRS when its CRS differs. Raises :class:`AuxiliaryError`
    naming the file on failure."""
    import shapely
    from pyproj import CRS as ProjCRS
    from pyproj import Transformer
    from rasterio.features import rasterize

    p = Path(path)
    try:
        import pyogrio
        meta, _fids, wkb, _fields = pyogrio.raw.read(str(p), layer=0, read_geometry=True)
    except ImportError as e:  # pragma: no cover
        raise AuxiliaryError(f"{p}: reading FILE_AOI needs pyogrio") from e
    except Exception as e:
        raise AuxiliaryError(f"{p}: cannot read FILE_AOI: {e}") from e
    if wkb is None or len(wkb) == 0:
        raise AuxiliaryError(f"{p}: FILE_AOI has no features in its first layer")
    crs = meta.get("crs")
    if not crs:
        raise AuxiliaryError(f"{p}: FILE_AOI has no coordinate reference system")
    try:
        geoms = shapely.from_wkb(wkb)
        src, dst = ProjCRS.from_user_input(crs), ProjCRS.from_user_input(grid.crs_wkt)
        if not src.equals(dst, ignore_axis_order=True):
            t = Transformer.from_crs(src, dst, always_xy=True)
            geoms = shapely.transform(geoms, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))
        shapes = [(g, 1) for g in geoms if g is not None and not g.is_empty]
        if not shapes:
            return np.zeros(grid.shape, dtype=bool)
        r = rasterize(shapes, out_shape=grid.shape, transform=grid.transform, fill=0,
                      dtype="uint8", all_touched=False)
    except Exception as e:
        raise AuxiliaryError(f"{p}: cannot rasterise FILE_AOI onto the image grid: {e}") from e
    return r.astype(bool)


# =========================================================================== OVV
def _ovv_indices(ny: int, nx: int, res: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the full-resolution pixels the OVV samples (spec 03 §3.4):
    pixel size 150 map units (0.0015 if res < 1), pixel ``(int)(i·step)``."""
    ovv_res = OVV_PIXEL if res >= 1 else OVV_PIXEL / 1e5
    step = ovv_res / res
    oy, ox = max(int(ny * res / ovv_res), 1), max(int(nx * res / ovv_res), 1)
    ii = np.minimum((np.arange(oy) * step).astype(np.int64), ny - 1)
    jj = np.minimum((np.arange(ox) * step).astype(np.int64), nx - 1)
    return ii, jj


def _ovv_colours(rgb: np.ndarray | None, q: np.ndarray) -> np.ndarray:
    """uint8 (3, rows, cols) quicklook from sampled RED/GREEN/BLUE (or None) and QAI."""
    q = q.astype(np.uint16)
    out = np.zeros((3,) + q.shape, dtype=np.uint8)
    if rgb is not None:
        for k in range(3):
            v = rgb[k].astype(np.float32)
            out[k] = np.where(v < 0, 0, np.where(v > 2500, 255, (v / 2500.0 * 255.0))).astype(np.uint8)
    cloud = qai_mod.get_field(q, qai_mod.CLOUD)
    rules = [  # applied last-first so that the first rule wins
        (qai_mod.get_flag(q, qai_mod.SUBZERO), _OVV_GREEN),
        (qai_mod.get_flag(q, qai_mod.SATURATION), _OVV_ORANGE),
        (qai_mod.get_flag(q, qai_mod.SNOW), _OVV_YELLOW),
        (qai_mod.get_flag(q, qai_mod.SHADOW), _OVV_CYAN),
        ((cloud == 1) | (cloud == 2), _OVV_PINK),
        (cloud == 3, _OVV_RED),
        (qai_mod.get_flag(q, qai_mod.NODATA), (0, 0, 0)),
    ]
    for mask, colour in rules:
        for k in range(3):
            out[k][mask] = colour[k]
    return out


def quicklook(refl: Product | None, red: np.ndarray | None, green: np.ndarray | None,
              blue: np.ndarray | None, qai: np.ndarray, res: float) -> np.ndarray:
    """The OVV quicklook (spec 03 §3.4) of one chip as uint8 (3, rows, cols): pixel size
    150 map units (0.0015 if res < 1), nearest sampling, flag colours first."""
    ii, jj = _ovv_indices(qai.shape[0], qai.shape[1], res)
    sel = np.ix_(ii, jj)
    rgb = None if red is None else np.stack([red[sel], green[sel], blue[sel]])
    return _ovv_colours(rgb, qai[sel])


# ======================================================================= provenance
def append_provenance(directory: str | os.PathLike, file: str | os.PathLike, origin: str,
                      mode: str, when: datetime | None = None) -> Path:
    """Append one row to ``<directory>/provenance_<YYYYMMDD>.csv`` (local processing
    date; header ``file,origin,mode,creation`` once), under a lock, as one write."""
    when = when or datetime.now()
    d = makedirs(directory)
    path = d / f"provenance_{when:%Y%m%d}.csv"
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(
        [str(file), origin, mode, when.strftime("%Y-%m-%dT%H:%M:%S")])
    append_line(path, buf.getvalue(), header=PROVENANCE_HEADER)
    return path


# ==================================================================== contributions
@dataclass
class _Chip:
    """One image's contribution to a tile file, stored on disk: ``path`` holds its
    pixels of ``window`` (tile pixel coordinates; nodata elsewhere in the tile)."""
    ident: str
    path: Path
    window: formats.Window
    date: str = ""              # FORCE band "Date" of this contributor
    param: str = ""             # FORCE_param of this contributor


def _safe_id(level1_id: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(str(level1_id).rstrip("/")))
    if not s:
        raise OutputError(f"invalid level1_id {level1_id!r}")
    return s


#: rows of a tile combined at a time when contributions are merged (bounds the memory)
_STRIP = 4 * formats.BLOCK


def _mean(layers: list[np.ndarray], nodata: int) -> np.ndarray:
    """Per-pixel mean of the valid values of several int16 arrays of the same shape,
    truncated toward zero (integer arithmetic); nodata where no layer is valid."""
    s = np.zeros(layers[0].shape, dtype=np.int32)   # |sum| < 2^31 for < 65536 layers
    n = np.zeros(layers[0].shape, dtype=np.int32)
    for a in layers:
        v = a != nodata
        s += np.where(v, a, 0)
        n += v
    q = np.abs(s) // np.maximum(n, 1)
    np.negative(q, out=q, where=s < 0)
    return np.where(n > 0, q, nodata).astype(np.int16)


def _combine(product: str, layers: list[np.ndarray], nodata: int) -> np.ndarray:
    """Merged value of several contributions (int16 on-disk values): QAI bitwise
    (:func:`l2ps.qai.merge`), every other product the mean of the valid values."""
    if product == "QAI":
        return qai_mod.merge([a.view(np.uint16) for a in layers]).view(np.int16)
    return _mean(layers, nodata)


def _sample_file(path: Path, bands: list[int], window: formats.Window, ii: np.ndarray,
                 jj: np.ndarray, nodata: int) -> np.ndarray:
    """Pixels (rows ``ii``, cols ``jj``) of ``bands`` (1-based) of a tile file whose data
    lie inside ``window``; nodata elsewhere. Reads only the window, in strips."""
    import rasterio
    out = np.full((len(bands), len(ii), len(jj)), nodata, dtype=np.int16)
    ri = np.nonzero((ii >= window.row) & (ii < window.row1))[0]
    cj = np.nonzero((jj >= window.col) & (jj < window.col1))[0]
    if not len(ri) or not len(cj):
        return out
    c0, c1 = int(jj[cj].min()), int(jj[cj].max()) + 1
    with rasterio.open(str(path)) as ds:
        for s in range(window.row, window.row1, _STRIP):
            sel = ri[(ii[ri] >= s) & (ii[ri] < s + _STRIP)]
            if not len(sel):
                continue
            r1 = int(ii[sel].max()) + 1
            a = ds.read(bands, window=formats.Window(s, c0, r1 - s, c1 - c0).rio())
            out[:, sel[:, None], cj[None, :]] = a[:, (ii[sel] - s)[:, None], (jj[cj] - c0)[None, :]]
    return out


class _GroupWriter:
    """Writes the products of one image into one tile folder (or untiled folder).

    Only the data window of the image in the tile is ever held in memory: tile files
    are assembled by GDAL from window files (:func:`formats.write_tile`), contribution
    chips are window-sized, and merging reads the contributions strip by strip over the
    window that changes."""

    def __init__(self, folder: Path, prefix: str, fmt: formats.OutputFormat, *,
                 level1_id: str, sensor: str, date_time: str, param_log: str,
                 origin: str, provenance_dir: str | None, lock_timeout: float,
                 num_threads: int = 1, clock: _Clock = _NO_CLOCK):
        self.clock = clock
        self.folder, self.prefix, self.fmt = folder, prefix, fmt
        self.ident = _safe_id(level1_id)
        self.sensor, self.date_time, self.param_log = sensor, date_time, param_log
        self.origin, self.provenance_dir = origin, provenance_dir
        self.lock_timeout = lock_timeout
        self.num_threads = max(int(num_threads), 1)
        self.contrib = folder / CONTRIB_DIR / prefix
        self._ovv: tuple[np.ndarray, np.ndarray] | None = None
        self._ovv_samples: dict[str, np.ndarray] = {}

    def path(self, product: str) -> Path:
        ext = "jpg" if product == "OVV" else self.fmt.extension
        return self.folder / f"{self.prefix}_{product}.{ext}"

    def chip_path(self, ident: str, product: str) -> Path:
        return self.contrib / f"{ident}_{product}.tif"

    # ------------------------------------------------------------------ metadata
    def _spec(self, product: Product, date_time: str, param_log: str,
              contributors: list[str] | None, window: formats.Window | None = None
              ) -> formats.RasterSpec:
        wl = product.wavelengths
        unit = product.wavelength_unit if wl is not None else "unknown"
        band_md = []
        for i, name in enumerate(product.band_names):
            w = float(wl[i]) if wl is not None else 1.0
            band_md.append({"FORCE": formats.band_metadata(
                name, w, unit, float(product.scale), self.sensor, date_time)})
        ds_md = {"FORCE": formats.dataset_metadata(product.name, param_log)}
        if contributors is not None:
            ds_md["L2PS"] = {CONTRIB_KEY: ";".join(contributors)}
            if window is not None:
                ds_md["L2PS"][WINDOW_KEY] = window.tag()
        return formats.RasterSpec(tuple(product.band_names), product.nodata, ds_md, band_md)

    # ------------------------------------------------------------------ files
    def _overviews(self, product: Product, grid: Grid) -> tuple[list[int], str] | None:
        """(factors, resampling) of the internal overviews of a COG tile file."""
        if self.fmt.driver != "COG":
            return None
        opts = self.fmt.options_for(product.name)
        f = formats.overview_factors(grid.ny, grid.nx, int(opts.get("BLOCKSIZE", formats.BLOCK)))
        return (f, opts.get("OVERVIEW_RESAMPLING", "AVERAGE")) if f else None

    def _write_tile(self, path: Path, grid: Grid, product: Product, spec: formats.RasterSpec,
                    layers: list[formats.Layer], tmp: Path) -> None:
        with self.clock("write"):
            atomic_write(path, lambda t: formats.write_tile(
                t, grid, product.nbands, self.fmt, spec, product.name, layers, tmp,
                num_threads=self.num_threads))

    def _write_tile_direct(self, path: Path, grid: Grid, product: Product,
                           spec: formats.RasterSpec, bands: list[np.ndarray],
                           win: formats.Window, aligned: formats.Window) -> None:
        """This image's data as the only content of the tile file, written directly
        (:func:`formats.write_tile_direct`; GTiff): the bands are resampled strip by
        strip, all bands sharing a source grid in one pass."""
        capture = self._ovv_capture(product, win)

        def rows(r0, r1, out, orow, ocol):
            compute_windows(bands, r0, r1, out, orow, ocol, timed=False)
            if capture is not None:
                capture(r0, r1, out, orow, ocol)

        with self.clock("write"):
            atomic_write(path, lambda t: formats.write_tile_direct(
                t, grid, product.nbands, self.fmt, spec, product.name, rows,
                win, aligned, num_threads=self.num_threads, clock=self.clock))

    def _ovv_capture(self, product: Product, win: formats.Window):
        """While a tile file is written directly (its only content: this image inside
        ``win``, nodata elsewhere), keep the pixels the OVV samples of it (QAI; RED,
        GREEN, BLUE of BOA/TOA): the quicklook then reads nothing back. Returns the
        ``rows`` hook, or None when no OVV is made or the product has none of those."""
        if self._ovv is None:
            return None
        if product.name == "QAI":
            idx = [0]
        elif product.name in ("BOA", "TOA") and all(
                n in product.band_names for n in ("RED", "GREEN", "BLUE")):
            idx = [product.band_names.index(n) for n in ("RED", "GREEN", "BLUE")]
        else:
            return None
        ii, jj = self._ovv
        got = np.full((len(idx), len(ii), len(jj)), product.nodata, dtype=np.int16)
        cj = np.nonzero((jj >= win.col) & (jj < win.col1))[0]
        cols = jj[cj] - win.col
        self._ovv_samples[product.name] = got

        def capture(r0, r1, out, orow, ocol):
            sel = np.nonzero((ii >= win.row + r0) & (ii < win.row + r1))[0]
            if len(sel) and len(cj):
                got[:, sel[:, None], cj[None, :]] = out[np.ix_(
                    idx, orow + ii[sel] - win.row - r0, ocol + cols)]
        return capture

    def _single(self, path: Path, product: Product, bands: list[np.ndarray],
                win: formats.Window, aligned: formats.Window, grid: Grid, tmp: Path) -> None:
        """Write the tile file with this image as its only contributor."""
        spec = self._spec(product, self.date_time, self.param_log, [self.ident], aligned)
        if formats.can_write_direct(self.fmt):
            self._write_tile_direct(path, grid, product, spec, bands, win, aligned)
            return
        layer = self._window_layer(product, bands, win, aligned, grid, tmp)
        self._write_tile(path, grid, product, spec, [layer], tmp)

    def _window_layer(self, product: Product, bands: list[np.ndarray], win: formats.Window,
                      aligned: formats.Window, grid: Grid, tmp: Path) -> formats.Layer:
        """This image's data (``bands``, covering ``win``) as a temporary window file
        covering ``aligned`` (with the tile file's overviews for COG)."""
        ovr = self._overviews(product, grid)
        p = tmp / f"{product.name}.new.tif"
        with _temp_errors(self.path(product.name)), self.clock("write"):
            ovr_files = formats.write_window(
                p, bands, (win.row - aligned.row, win.col - aligned.col),
                (aligned.height, aligned.width), _window_grid(grid, aligned),
                product.nodata, overviews=ovr, clock=self.clock)
        return formats.Layer(str(p), formats.Window(0, 0, aligned.height, aligned.width),
                             aligned.row, aligned.col, tuple(ovr[0]) if ovr else (),
                             ovr_files)

    def _chip_tags(self, ident: str, date: str, param_: str, window: formats.Window):
        return {"L2PS": {"DATE": date, "PARAM": param_, "CONTRIBUTOR": ident,
                         "WINDOW": window.tag()}}

    def _write_chip(self, product: Product, bands: list[np.ndarray], win: formats.Window,
                    aligned: formats.Window, grid: Grid) -> _Chip:
        """This image's contribution chip: the aligned data window only."""
        makedirs(self.contrib)
        path = self.chip_path(self.ident, product.name)
        with self.clock("merge"):
            atomic_write(path, lambda t: formats.write_window(
                t, bands, (win.row - aligned.row, win.col - aligned.col),
                (aligned.height, aligned.width), _window_grid(grid, aligned),
                product.nodata, options=_CHIP_FORMAT.options,
                descriptions=tuple(product.band_names),
                tags=self._chip_tags(self.ident, self.date_time, self.param_log, aligned)))
        return _Chip(self.ident, path, aligned, self.date_time, self.param_log)

    def _extract_chip(self, ident: str, product: Product, source: Path,
                      window: formats.Window, date: str, param_: str, grid: Grid,
                      tmp: Path) -> _Chip:
        """Save ``window`` of the existing tile file ``source`` (the content of its only
        contributor ``ident``) as that contributor's chip; GDAL copies the pixels."""
        makedirs(self.contrib)
        path = self.chip_path(ident, product.name)
        spec = formats.RasterSpec(tuple(product.band_names), product.nodata,
                                  self._chip_tags(ident, date, param_, window))
        layer = formats.Layer(str(source), window, 0, 0)
        with self.clock("merge"):
            atomic_write(path, lambda t: formats.write_tile(
                t, _window_grid(grid, window), product.nbands, _CHIP_FORMAT, spec,
                product.name, [layer], tmp, num_threads=self.num_threads))
        return _Chip(ident, path, window, date, param_)

    def _read_chip(self, ident: str, product: Product, grid: Grid) -> _Chip:
        """Header of a stored contribution chip (its window from its geotransform)."""
        import rasterio
        p = self.chip_path(ident, product.name)
        try:
            with rasterio.open(str(p)) as ds:
                tags = ds.tags(ns="L2PS")
                t = ds.transform
                win = formats.Window(int(round((grid.y0 - t.f) / grid.dy)),
                                     int(round((t.c - grid.x0) / grid.dx)), ds.height, ds.width)
                count = ds.count
        except Exception as e:
            raise OutputError(f"{p}: contribution chip missing or unreadable ({e}); the tile "
                              f"file {self.path(product.name)} lists {ident} as contributor") from e
        if count != product.nbands or not formats.Window(0, 0, grid.ny, grid.nx).contains(win):
            raise OutputError(f"{p}: {count} bands at window ({win.tag()}) do not fit the "
                              f"tile's {product.nbands} bands of {grid.ny}x{grid.nx} pixels")
        return _Chip(ident, p, win, tags.get("DATE", ""), tags.get("PARAM", ""))

    def _merge_window(self, product: Product, chips: list[_Chip], region: formats.Window,
                      grid: Grid, tmp: Path) -> formats.Layer:
        """The merged content of ``region`` from all ``chips``, as a temporary window file
        (with overviews for COG); computed strip by strip, band by band."""
        import rasterio
        ovr = self._overviews(product, grid)
        p = tmp / f"{product.name}.merged.tif"
        nodata = product.nodata
        profile = formats.window_profile((region.height, region.width),
                                         _window_grid(grid, region), nodata, product.nbands)
        with _temp_errors(self.path(product.name)), contextlib.ExitStack() as stack, \
                self.clock("merge"):
            srcs = [(c, stack.enter_context(rasterio.open(str(c.path)))) for c in chips]
            with rasterio.open(str(p), "w", **profile) as out:
                for s in range(region.row, region.row1, _STRIP):
                    strip = formats.Window(s, region.col, min(_STRIP, region.row1 - s),
                                           region.width)
                    for b in range(1, product.nbands + 1):
                        layers = []
                        for c, ds in srcs:
                            a = np.full((strip.height, strip.width), nodata, dtype=np.int16)
                            i = strip.intersection(c.window)
                            if i is not None:
                                a[i.shift(-strip.row, -strip.col).slices()] = ds.read(
                                    b, window=i.shift(-c.window.row, -c.window.col).rio())
                            layers.append(a)
                        out.write(_combine(product.name, layers, nodata), b,
                                  window=strip.shift(-region.row, -region.col).rio())
                if ovr:
                    out.build_overviews(ovr[0], formats._resampling(ovr[1]))
        return formats.Layer(str(p), formats.Window(0, 0, region.height, region.width),
                             region.row, region.col, tuple(ovr[0]) if ovr else ())

    # ------------------------------------------------------------------ one product
    def _update_product(self, product: Product, bands: list[np.ndarray], win: formats.Window,
                        grid: Grid, tmp: Path) -> tuple[str, formats.Window]:
        """Write this image's ``bands`` (covering ``win`` of the tile) into the product
        file; returns the mode (create/update) and the file's data window."""
        import rasterio
        path = self.path(product.name)
        aligned = win.snap(formats.window_alignment(grid.ny, grid.nx), grid.ny, grid.nx)
        if not path.exists():
            # chips without their tile file belong to a deleted file: drop them
            remove_quietly(self.contrib.glob(f"*_{product.name}.tif") if self.contrib.exists() else [])
            self._single(path, product, bands, win, aligned, grid, tmp)
            return "create", aligned
        try:
            with rasterio.open(str(path)) as ds:
                shape = (ds.count, ds.height, ds.width)
                l2ps_tags = ds.tags(ns="L2PS")
                old_date = ds.tags(1, ns="FORCE").get("Date", "")
                old_param = ds.tags(ns="FORCE").get("FORCE_param", "")
                old_ovr = tuple(ds.overviews(1))
        except Exception as e:
            raise OutputError(f"{path}: existing file cannot be read for merging: {e}") from e
        if shape != (product.nbands, grid.ny, grid.nx):
            raise OutputError(f"{path}: existing file has {shape[0]} bands of "
                              f"{shape[2]}x{shape[1]} pixels, the new chip "
                              f"{product.nbands} bands of {grid.nx}x{grid.ny}; "
                              f"remove it or use a new DIR_LEVEL2")
        tile = formats.Window(0, 0, grid.ny, grid.nx)
        old_window = formats.Window.parse(l2ps_tags.get(WINDOW_KEY)) or tile
        contributors = ([c for c in (l2ps_tags.get(CONTRIB_KEY) or "").split(";") if c]
                        or [UNKNOWN_CONTRIBUTOR])
        if contributors == [self.ident]:
            self._single(path, product, bands, win, aligned, grid, tmp)
            return "update", aligned
        others = [c for c in contributors if c != self.ident]
        if len(contributors) == 1:
            # second distinct image: the file content is the first contributor's chip
            chips = [self._extract_chip(others[0], product, path, old_window, old_date,
                                        old_param, grid, tmp)]
        else:
            chips = [self._read_chip(c, product, grid) for c in others]
        changed = aligned
        if self.ident in contributors and self.chip_path(self.ident, product.name).exists():
            changed = changed.union(self._read_chip(self.ident, product, grid).window)
        changed = changed.snap(formats.window_alignment(grid.ny, grid.nx), grid.ny, grid.nx)
        chips.append(self._write_chip(product, bands, win, aligned, grid))
        chips.sort(key=lambda c: c.ident)
        layers = []
        if not changed.contains(old_window):
            # unchanged pixels: copied from the existing file by GDAL
            layers.append(formats.Layer(str(path), old_window, old_window.row,
                                        old_window.col, old_ovr))
        layers.append(self._merge_window(product, chips, changed, grid, tmp))
        primary = min(chips, key=lambda c: (c.date or "~", c.ident))
        self._write_tile(path, grid, product, self._spec(
            product, primary.date or self.date_time, primary.param,
            [c.ident for c in chips], old_window.union(changed)), layers, tmp)
        return "update", old_window.union(changed)

    def _sweep_stale_temporaries(self) -> None:
        """Remove hidden temporary files/folders of this group left by a killed writer
        (``.<prefix>.tmp-*``, ``.<prefix>_<PRODUCT>.tmp-*``, and those of its contribution
        chips). Only called while the group's locks are held, so no live writer owns them."""
        import shutil
        for folder in (self.folder, getattr(self, "contrib", None)):
            if folder is None or not Path(folder).is_dir():
                continue
            for p in Path(folder).glob(".*.tmp-*"):
                if folder == self.folder and not p.name.startswith(f".{self.prefix}"):
                    continue
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    try:
                        p.unlink()
                    except FileNotFoundError:
                        pass

    # ------------------------------------------------------------------ all products
    def write(self, products: list[Product], bands: list[list[np.ndarray]],
              window: formats.Window, grid: Grid, ovv: bool, res: float) -> list[WrittenFile]:
        """Write ``products`` into this folder's tile files of ``grid``; ``bands[k]`` are
        the bands of ``products[k]`` inside ``window`` (tile pixels; views are fine)."""
        import shutil
        import tempfile
        makedirs(self.folder)
        paths = [self.path(p.name) for p in products]
        if ovv:
            paths.append(self.path("OVV"))
        written: list[WrittenFile] = []
        windows: dict[str, formats.Window] = {}
        # the OVV's sample positions, and the samples kept while files are written directly
        self._ovv = _ovv_indices(grid.ny, grid.nx, res) if ovv else None
        self._ovv_samples = {}
        with file_locks(paths, self.lock_timeout):
            self._sweep_stale_temporaries()
            tmp = Path(tempfile.mkdtemp(prefix=f".{self.prefix}.tmp-", dir=self.folder))
            try:
                for p, bl in zip(products, bands):
                    mode, windows[p.name] = self._update_product(p, bl, window, grid, tmp)
                    written.append(WrittenFile(self.path(p.name), mode))
                if ovv:
                    with self.clock("quicklook"):
                        written.append(self._write_ovv(products, windows, grid, res))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        if self.provenance_dir:
            for w in written:
                append_provenance(self.provenance_dir, w.path, self.origin, w.mode)
        return written

    def _write_ovv(self, products: list[Product], windows: dict[str, formats.Window],
                   grid: Grid, res: float) -> WrittenFile:
        """OVV (spec 03 §3.4) sampled from the merged BOA/TOA and QAI files (the samples
        kept while a file was written directly, :meth:`_ovv_capture`, are the same)."""
        ii, jj = _ovv_indices(grid.ny, grid.nx, res)
        kept = self._ovv_samples            # pixels kept while writing (the same values)
        q = kept["QAI"][0] if "QAI" in kept else _sample_file(
            self.path("QAI"), [1], windows["QAI"], ii, jj, qai_mod.QAI_NODATA)[0]
        refl = next((p for p in products if p.name in ("BOA", "TOA")), None)
        rgb = None
        if refl is not None and all(n in refl.band_names for n in ("RED", "GREEN", "BLUE")):
            idx = [refl.band_names.index(n) + 1 for n in ("RED", "GREEN", "BLUE")]
            rgb = kept[refl.name] if refl.name in kept else _sample_file(
                self.path(refl.name), idx, windows[refl.name], ii, jj, refl.nodata)
        img = _ovv_colours(rgb, q.view(np.uint16))
        path = self.path("OVV")
        mode = "update" if path.exists() else "create"
        ovv_grid = Grid(grid.crs_wkt, grid.x0, grid.y0, grid.dx * grid.nx / img.shape[2],
                        grid.dy * grid.ny / img.shape[1], img.shape[2], img.shape[1])
        spec = formats.RasterSpec(("RED", "GREEN", "BLUE"), None,
                                  {"FORCE": formats.dataset_metadata("OVV", self.param_log)})
        atomic_write(path, lambda t: formats.write_raster(
            t, img, ovv_grid, formats.output_format("JPEG"), spec, "OVV"))
        return WrittenFile(path, mode)


@contextlib.contextmanager
def _temp_errors(target: Path):
    """Failures while writing temporary files for ``target`` (ENOSPC, GDAL errors)
    become an :class:`OutputError` naming ``target``, as those of the file itself."""
    try:
        yield
    except OutputError:
        raise
    except Exception as e:
        if isinstance(e, OSError) or _is_gdal_error(e):
            reason = (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
            raise OutputError(f"{target}: write failed ({reason}); the existing file, if "
                              f"any, is unchanged") from e
        raise


def _window_grid(grid: Grid, window: formats.Window) -> Grid:
    """The pixel grid of ``window`` of ``grid``."""
    return Grid(grid.crs_wkt, grid.x0 + window.col * grid.dx, grid.y0 - window.row * grid.dy,
                grid.dx, grid.dy, window.width, window.height)


# ========================================================================= write_cube
def _data_window(q: np.ndarray, window: formats.Window) -> tuple[formats.Window | None, int, int]:
    """Bounding box (in ``q``'s pixels) of the valid QAI pixels inside ``window`` of the
    warped QAI ``q``, with the number of valid and of cloudy pixels (spec 03 §2.7).
    Works in strips: no temporary of the window's size."""
    rows = np.zeros(window.height, dtype=bool)
    cols = np.zeros(window.width, dtype=bool)
    ndata = ncld = 0
    for s in range(window.row, window.row1, _STRIP):
        qs = q[s:min(s + _STRIP, window.row1), window.col:window.col1]
        v = qai_mod.is_valid(qs)
        ndata += int(np.count_nonzero(v))
        ncld += int(np.count_nonzero(qai_mod.cloud_or_shadow(qs)))
        rows[s - window.row:s - window.row + qs.shape[0]] = v.any(axis=1)
        cols |= v.any(axis=0)
    if not ndata:
        return None, 0, 0
    r = np.nonzero(rows)[0]
    c = np.nonzero(cols)[0]
    return (formats.Window(window.row + int(r[0]), window.col + int(c[0]),
                           int(r[-1] - r[0]) + 1, int(c[-1] - c[0]) + 1), ndata, ncld)


def _views(products: list[Product], window: formats.Window) -> list[list[np.ndarray]]:
    """Every band of every product inside ``window`` (views, no copies)."""
    return [[b[window.slices()] for b in p.bands] for p in products]


def _with_dst(warped: list[Product], target: Grid, enabled: bool,
              clock: _Clock = _NO_CLOCK) -> list[Product]:
    """Add the DST product (spec 02 §8.6) computed on the warped QAI (``warped[0]``) when
    OUTPUT_DST and the caller did not pass one: distance in m to the nearest cloud > 0,
    shadow or snow pixel, capped at 32767, nodata −9999. Kept in FORCE's product order."""
    if not enabled or any(p.name == "DST" for p in warped):
        return warped
    from ..clouds.finalize import cloud_distance
    with clock("analysis"):
        d = cloud_distance(warped[0].bands[0], target.res)
    dst = Product("DST", [d], [target], ("DST",),
                  -9999, 1.0, resampling="nearest",
                  description="Distance to the nearest cloud, cloud shadow or snow (m)")
    return _order(warped + [dst])


def _order(products: list[Product]) -> list[Product]:
    order = {"QAI": 0, "BOA": 1, "TOA": 1, "DST": 2, "VZN": 3, "HOT": 4, "AOD": 5, "WVP": 6}
    prods = [p for p in products if p.name != "OVV"]
    if not any(p.name == "QAI" for p in prods):
        raise OutputError("write_cube: the products contain no QAI (needed for tile "
                          "emptiness and cloud cover)")
    names = [p.name for p in prods]
    if len(set(names)) != len(names):
        raise OutputError(f"write_cube: duplicate products {names}")
    return sorted(prods, key=lambda p: order.get(p.name, 99))


def write_cube(products: list[Product], *, level1_id: str, date: str, sensor: str,
               params: Any, cubes: list[Datacube] | None = None,
               out_dir: str | os.PathLike | None = None, origin: str | None = None,
               refsys_id: str | None = None, acquired: datetime | None = None,
               param_log: str = "", num_threads: int | None = None,
               lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
               consume: bool = False) -> CubeResult:
    """Warp, tile, mosaic and write the products of one image (spec 03 §2.7–§2.11).

    products   -- on the image grid, one of them QAI (an OVV product is ignored: the
                  quicklook is computed from the merged BOA/TOA and QAI when OUTPUT_OVV)
    level1_id  -- identifies the image's contribution (reprocessing replaces it)
    date       -- acquisition date YYYYMMDD; ``acquired`` the full UTC time (metadata)
    sensor     -- LND04..LND09, SEN2A..SEN2D
    params     -- parameter mapping/object (DO_REPROJ, DO_TILE, PROJECTION, TILE_SIZE,
                  ORIGIN_LON/LAT, RESOLUTION_*, FILE_TILE, MAX_CLOUD_COVER_TILE,
                  OUTPUT_FORMAT, FILE_OUTPUT_OPTIONS, OUTPUT_OVV, DIR_LEVEL2,
                  DIR_PROVENANCE, NTHREAD)
    cubes      -- target cubes (default: :func:`cube_for_params`)
    out_dir    -- default DIR_LEVEL2
    origin     -- the queue path of the Level-1 input (provenance)
    refsys_id  -- WRS-2 PPPRRR or MGRS Txxxxx, the folder of untiled output
    consume    -- free the products' bands when done (in place: every
                  ``product.bands[i]`` becomes None); the caller must not use
                  ``products`` afterwards. The warped scene is never held: only the
                  warped QAI, and one band window at a time (see
                  :func:`l2ps.cube.warp.warp_products_lazy`), so the peak memory is
                  about the scene plus the warped QAI and one window

    The returned :class:`CubeResult` has ``timings`` (seconds per sub-stage).
    """
    result = CubeResult()
    clock = _Clock(result.timings, result.cpu_timings)
    nthread = int(num_threads if num_threads is not None else param(params, "NTHREAD", 1))
    try:
        with _numba_threads(nthread):
            _write_cube(result, clock, products, level1_id=level1_id, date=date,
                        sensor=sensor, params=params, cubes=cubes, out_dir=out_dir,
                        origin=origin, refsys_id=refsys_id, acquired=acquired,
                        param_log=param_log, nthread=nthread, lock_timeout=lock_timeout,
                        consume=consume)
    finally:
        if consume:
            for p in products:
                if isinstance(p.bands, list):
                    p.bands[:] = [None] * len(p.bands)
    result.timings = {k: round(v, 3) for k, v in result.timings.items()}
    result.cpu_timings = {k: round(v, 3) for k, v in result.cpu_timings.items()}
    return result


def _write_cube(result: CubeResult, clock: _Clock, products: list[Product], *,
                level1_id: str, date: str, sensor: str, params: Any,
                cubes: list[Datacube] | None, out_dir, origin: str | None,
                refsys_id: str | None, acquired: datetime | None, param_log: str,
                nthread: int, lock_timeout: float, consume: bool = False) -> None:
    """The body of :func:`write_cube` (fills ``result``). With ``consume`` the source
    QAI is released as soon as it has been warped for the last cube (the warped QAI
    replaces it; the caller must hold no other reference for the memory to be freed)."""
    if not re.fullmatch(r"\d{8}", str(date)):
        raise OutputError(f"write_cube: date must be YYYYMMDD, got {date!r}")
    prods = _order(products)
    qai_p = prods[0]
    native = qai_p.grids[0]
    do_reproj = as_bool(param(params, "DO_REPROJ", True))
    do_tile = as_bool(param(params, "DO_TILE", True))
    out_dir = Path(out_dir if out_dir is not None else param(params, "DIR_LEVEL2"))
    fmt = formats.output_format(str(param(params, "OUTPUT_FORMAT", "COG")),
                                param(params, "FILE_OUTPUT_OPTIONS", None))
    ovv = as_bool(param(params, "OUTPUT_OVV", False))
    dst = as_bool(param(params, "OUTPUT_DST", False))
    prov = param(params, "DIR_PROVENANCE", None)
    acquired = acquired or datetime.strptime(str(date), "%Y%m%d")
    date_time = acquired.strftime("%Y-%m-%dT%H:%M:%S") + ".0Z"
    res = target_resolution(params, sensor) if do_reproj else native.dx
    prefix = f"{date}_LEVEL2_{sensor}"

    def group(folder: Path) -> _GroupWriter:
        return _GroupWriter(folder, prefix, fmt, level1_id=level1_id, sensor=sensor,
                            date_time=date_time, param_log=param_log,
                            origin=str(origin or level1_id), provenance_dir=prov,
                            lock_timeout=lock_timeout, num_threads=nthread, clock=clock)

    # ------------------------------------------------------------------ untiled
    if not do_tile:
        if not refsys_id:
            raise OutputError("write_cube: DO_TILE = FALSE needs refsys_id (output folder)")
        if do_reproj:
            cube = (cubes or cube_for_params(params, None, native))[0]
            fp = grid_footprint(native, cube.wkt)
            left, top = fp[:, 0].min(), fp[:, 1].max()
            nx = int(np.ceil((fp[:, 0].max() - left) / res - 1e-9))
            ny = int(np.ceil((top - fp[:, 1].min()) / res - 1e-9))
            target = Grid(cube.wkt, float(left), float(top), res, res, max(nx, 1), max(ny, 1))
        else:
            target = native
        warped = _with_dst(warp_products_lazy(prods, target, num_threads=nthread,
                                              clock=clock, release_qai=consume),
                           target, dst, clock)
        win, _, _ = _data_window(warped[0].bands[0], formats.Window(0, 0, target.ny, target.nx))
        if win is None:         # no valid pixel: written anyway (no filters, §2.11)
            win = formats.Window(0, 0, 1, 1)
        result.files += group(out_dir / refsys_id).write(warped, _views(warped, win), win,
                                                         target, ovv, res)
        result.tiles_written.append(refsys_id)
        return

    # ------------------------------------------------------------------ tiled
    if cubes is None:
        cubes = cube_for_params(params, grid_footprint(native, "EPSG:4326"), native)
    allow = None
    ftile = param(params, "FILE_TILE", None)
    if ftile:
        allow = read_tile_allowlist(ftile)
    max_cc = float(param(params, "MAX_CLOUD_COVER_TILE", 100.0))
    for k_cube, cube in enumerate(cubes):
        cdir = cube.directory(out_dir)
        cube.tile_pixels(res)
        # DO_REPROJ = FALSE: the origin was snapped to this image's pixel grid, another
        # image may have snapped it elsewhere by less than one pixel: the file wins
        cube = cube.write_prj(cdir, origin_tolerance=(res if not do_reproj else 1e-5))
        result.cubes.append(cube)
        fp = grid_footprint(native, cube.wkt)
        target = cube.aligned_grid(fp, res)
        # the source QAI is released once warped for the last cube
        warped = _with_dst(warp_products_lazy(
            prods, target, num_threads=nthread, clock=clock,
            release_qai=consume and k_cube == len(cubes) - 1), target, dst, clock)
        q = warped[0].bands[0]
        tnx, tny = cube.tile_pixels(res)
        for X, Y in cube.tile_range(fp).tiles():
            tname = Datacube.tile_name(X, Y)
            label = f"{cube.name}/{tname}" if cube.name else tname
            if allow is not None and (X, Y) not in allow:
                result.tiles_not_allowed.append(label)
                continue
            ulx, uly = cube.tile_ul(X, Y)
            col = int(round((ulx - target.x0) / res))
            row = int(round((target.y0 - uly) / res))
            # the tile in target pixels, clipped to the target: outside, all is nodata
            inside = formats.Window(row, col, tny, tnx).intersection(
                formats.Window(0, 0, target.ny, target.nx))
            with clock("analysis"):
                win, ndata, ncld = _data_window(q, inside) if inside else (None, 0, 0)
            if win is None:
                result.tiles_empty.append(label)
                continue
            cc = 100.0 * ncld / ndata
            if cc > max_cc:
                result.tiles_skipped_cloud[label] = cc
                continue
            tgrid = cube.tile_grid(X, Y, res)
            result.files += group(cdir / tname).write(warped, _views(warped, win),
                                                      win.shift(-row, -col), tgrid, ovv, res)
            result.tiles_written.append(label)
        del warped, q
