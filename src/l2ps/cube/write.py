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
<level1_id>_<PRODUCT>.tif``; the tile file is then recomputed from all chips. OVV is
recomputed from the merged BOA/TOA and QAI. See docs/cube.md.

Every file is written under its lock (all files of one tile/date/sensor group are locked
together, in sorted order) and atomically (temporary file + rename).
"""
from __future__ import annotations

import csv
import io
import logging
import os
import re
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
from .lock import (DEFAULT_LOCK_TIMEOUT, append_line, atomic_write, file_locks, makedirs,
                   remove_quietly)
from .warp import warp_products

log = logging.getLogger(__name__)

CONTRIB_DIR = ".contrib"
CONTRIB_KEY = "CONTRIBUTORS"
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

    @property
    def n_tiles(self) -> int:
        return len(self.tiles_written)


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
def quicklook(refl: Product | None, red: np.ndarray | None, green: np.ndarray | None,
              blue: np.ndarray | None, qai: np.ndarray, res: float) -> np.ndarray:
    """The OVV quicklook (spec 03 §3.4) of one chip as uint8 (3, rows, cols): pixel size
    150 map units (0.0015 if res < 1), nearest sampling, flag colours first."""
    ovv_res = OVV_PIXEL if res >= 1 else OVV_PIXEL / 1e5
    ny, nx = qai.shape
    step = ovv_res / res
    oy, ox = max(int(ny * res / ovv_res), 1), max(int(nx * res / ovv_res), 1)
    ii = np.minimum((np.arange(oy) * step).astype(np.int64), ny - 1)
    jj = np.minimum((np.arange(ox) * step).astype(np.int64), nx - 1)
    q = qai[np.ix_(ii, jj)].astype(np.uint16)
    out = np.zeros((3, oy, ox), dtype=np.uint8)
    if red is not None:
        for k, b in enumerate((red, green, blue)):
            v = b[np.ix_(ii, jj)].astype(np.float32)
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
class _Contribution:
    ident: str
    data: np.ndarray            # (bands, rows, cols) on-disk dtype
    date: str = ""              # FORCE band "Date" of this contributor
    param: str = ""             # FORCE_param of this contributor


def _safe_id(level1_id: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(str(level1_id).rstrip("/")))
    if not s:
        raise OutputError(f"invalid level1_id {level1_id!r}")
    return s


def _mean(stacks: list[np.ndarray], nodata: int) -> np.ndarray:
    """Per-pixel mean of the valid values of several (bands, rows, cols) int16 arrays,
    truncated toward zero; nodata where no contribution is valid."""
    out = np.empty_like(stacks[0])
    for b in range(out.shape[0]):
        s = np.zeros(out.shape[1:], dtype=np.int64)
        n = np.zeros(out.shape[1:], dtype=np.int32)
        for a in stacks:
            v = a[b] != nodata
            s += np.where(v, a[b], 0)
            n += v
        ok = n > 0
        ob = np.full(out.shape[1:], nodata, dtype=out.dtype)
        ob[ok] = np.trunc(s[ok] / n[ok]).astype(out.dtype)
        out[b] = ob
    return out


def _combine(product: str, contributions: list[_Contribution], nodata: int) -> np.ndarray:
    if product == "QAI":
        layers = [c.data[0].view(np.uint16) if c.data.dtype == np.int16 else c.data[0]
                  for c in contributions]
        return qai_mod.merge(layers).astype(np.int16)[None]
    return _mean([c.data for c in contributions], nodata)


class _GroupWriter:
    """Writes the products of one image into one tile folder (or untiled folder)."""

    def __init__(self, folder: Path, prefix: str, fmt: formats.OutputFormat, *,
                 level1_id: str, sensor: str, date_time: str, param_log: str,
                 origin: str, provenance_dir: str | None, lock_timeout: float):
        self.folder, self.prefix, self.fmt = folder, prefix, fmt
        self.ident = _safe_id(level1_id)
        self.sensor, self.date_time, self.param_log = sensor, date_time, param_log
        self.origin, self.provenance_dir = origin, provenance_dir
        self.lock_timeout = lock_timeout
        self.contrib = folder / CONTRIB_DIR / prefix

    def path(self, product: str) -> Path:
        ext = "jpg" if product == "OVV" else self.fmt.extension
        return self.folder / f"{self.prefix}_{product}.{ext}"

    def chip_path(self, ident: str, product: str) -> Path:
        return self.contrib / f"{ident}_{product}.tif"

    # ------------------------------------------------------------------ metadata
    def _spec(self, product: Product, date_time: str, param_log: str,
              contributors: list[str] | None) -> formats.RasterSpec:
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
        return formats.RasterSpec(tuple(product.band_names), product.nodata, ds_md, band_md)

    def _write(self, path: Path, data: np.ndarray, grid: Grid, fmt: formats.OutputFormat,
               spec: formats.RasterSpec, product: str) -> None:
        atomic_write(path, lambda tmp: formats.write_raster(tmp, data, grid, fmt, spec, product))

    def _write_chip(self, c: _Contribution, product: Product, grid: Grid) -> None:
        spec = formats.RasterSpec(tuple(product.band_names), product.nodata,
                                  {"L2PS": {"DATE": c.date, "PARAM": c.param,
                                            "CONTRIBUTOR": c.ident}})
        makedirs(self.contrib)
        self._write(self.chip_path(c.ident, product.name), c.data, grid, _CHIP_FORMAT, spec,
                    product.name)

    def _read_chip(self, ident: str, product: str) -> _Contribution:
        import rasterio
        p = self.chip_path(ident, product)
        try:
            with rasterio.open(str(p)) as ds:
                tags = ds.tags(ns="L2PS")
                return _Contribution(ident, ds.read(), tags.get("DATE", ""), tags.get("PARAM", ""))
        except Exception as e:
            raise OutputError(f"{p}: contribution chip missing or unreadable ({e}); the tile "
                              f"file {self.path(product)} lists {ident} as contributor") from e

    # ------------------------------------------------------------------ one product
    def _update_product(self, product: Product, data: np.ndarray, grid: Grid
                        ) -> tuple[np.ndarray, str]:
        """Write ``data`` (this image's chip) into the product file; returns the merged
        content and the mode (create/update)."""
        import rasterio
        path = self.path(product.name)
        new = _Contribution(self.ident, data, self.date_time, self.param_log)
        if not path.exists():
            # chips without their tile file belong to a deleted file: drop them
            remove_quietly(self.contrib.glob(f"*_{product.name}.tif") if self.contrib.exists() else [])
            self._write(path, data, grid, self.fmt,
                        self._spec(product, self.date_time, self.param_log, [self.ident]),
                        product.name)
            return data, "create"
        try:
            with rasterio.open(str(path)) as ds:
                old = ds.read()
                contrib_tag = ds.tags(ns="L2PS").get(CONTRIB_KEY)
                old_date = ds.tags(1, ns="FORCE").get("Date", "")
                old_param = ds.tags(ns="FORCE").get("FORCE_param", "")
        except Exception as e:
            raise OutputError(f"{path}: existing file cannot be read for merging: {e}") from e
        if old.shape != data.shape:
            raise OutputError(f"{path}: existing file has {old.shape[0]} bands of "
                              f"{old.shape[1]}x{old.shape[2]} pixels, the new chip "
                              f"{data.shape[0]} bands of {data.shape[1]}x{data.shape[2]}; "
                              f"remove it or use a new DIR_LEVEL2")
        contributors = [c for c in (contrib_tag or "").split(";") if c] or [UNKNOWN_CONTRIBUTOR]
        if contributors == [self.ident]:
            self._write(path, data, grid, self.fmt,
                        self._spec(product, self.date_time, self.param_log, [self.ident]),
                        product.name)
            return data, "update"
        others = [c for c in contributors if c != self.ident]
        if len(contributors) == 1:
            # second distinct image: the file content is the first contributor's chip
            first = _Contribution(others[0], old.astype(data.dtype, copy=False), old_date, old_param)
            self._write_chip(first, product, grid)
            contribs = [first]
        else:
            contribs = [self._read_chip(c, product.name) for c in others]
            for c in contribs:
                if c.data.shape != data.shape:
                    raise OutputError(f"{self.chip_path(c.ident, product.name)}: shape "
                                      f"{c.data.shape} differs from the tile's {data.shape}")
        self._write_chip(new, product, grid)
        contribs.append(new)
        contribs.sort(key=lambda c: c.ident)
        merged = _combine(product.name, contribs, product.nodata).astype(data.dtype, copy=False)
        primary = min(contribs, key=lambda c: (c.date or "~", c.ident))
        self._write(path, merged, grid, self.fmt,
                    self._spec(product, primary.date or self.date_time, primary.param,
                               [c.ident for c in contribs]), product.name)
        return merged, "update"

    # ------------------------------------------------------------------ all products
    def write(self, products: list[Product], chips: list[np.ndarray], grid: Grid,
              ovv: bool, res: float) -> list[WrittenFile]:
        makedirs(self.folder)
        paths = [self.path(p.name) for p in products]
        if ovv:
            paths.append(self.path("OVV"))
        written: list[WrittenFile] = []
        merged: dict[str, np.ndarray] = {}
        with file_locks(paths, self.lock_timeout):
            for p, chip in zip(products, chips):
                data, mode = self._update_product(p, chip, grid)
                merged[p.name] = data
                written.append(WrittenFile(self.path(p.name), mode))
            if ovv:
                refl = next((p for p in products if p.name in ("BOA", "TOA")), None)
                rgb = [None, None, None]
                if refl is not None and all(n in refl.band_names for n in ("RED", "GREEN", "BLUE")):
                    arr = merged[refl.name]
                    rgb = [arr[refl.band_names.index(n)] for n in ("RED", "GREEN", "BLUE")]
                img = quicklook(refl, *rgb, merged["QAI"][0].view(np.uint16), res)
                path = self.path("OVV")
                mode = "update" if path.exists() else "create"
                ovv_grid = Grid(grid.crs_wkt, grid.x0, grid.y0, grid.dx * grid.nx / img.shape[2],
                                grid.dy * grid.ny / img.shape[1], img.shape[2], img.shape[1])
                spec = formats.RasterSpec(("RED", "GREEN", "BLUE"), None,
                                          {"FORCE": formats.dataset_metadata("OVV", self.param_log)})
                self._write(path, img, ovv_grid, formats.output_format("JPEG"), spec, "OVV")
                written.append(WrittenFile(path, mode))
        if self.provenance_dir:
            for w in written:
                append_provenance(self.provenance_dir, w.path, self.origin, w.mode)
        return written


# ========================================================================= write_cube
def _chip(band: np.ndarray, row: int, col: int, ny: int, nx: int, nodata) -> np.ndarray:
    H, W = band.shape
    if row >= 0 and col >= 0 and row + ny <= H and col + nx <= W:
        return band[row:row + ny, col:col + nx]
    out = np.full((ny, nx), nodata, dtype=band.dtype)
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + ny, H), min(col + nx, W)
    if r1 > r0 and c1 > c0:
        out[r0 - row:r1 - row, c0 - col:c1 - col] = band[r0:r1, c0:c1]
    return out


def _stack(product: Product, row: int, col: int, ny: int, nx: int) -> np.ndarray:
    """(bands, ny, nx) chip in the on-disk type (QAI: uint16 in memory, Int16 on disk;
    bit 15 is never set, so the values are identical)."""
    arr = np.stack([_chip(b, row, col, ny, nx, product.nodata) for b in product.bands])
    if arr.dtype == np.uint16:
        arr = arr.view(np.int16)
    return arr


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
               lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> CubeResult:
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
    """
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
    nthread = int(num_threads if num_threads is not None else param(params, "NTHREAD", 1))
    prov = param(params, "DIR_PROVENANCE", None)
    acquired = acquired or datetime.strptime(str(date), "%Y%m%d")
    date_time = acquired.strftime("%Y-%m-%dT%H:%M:%S") + ".0Z"
    res = target_resolution(params, sensor) if do_reproj else native.dx
    prefix = f"{date}_LEVEL2_{sensor}"
    result = CubeResult()

    def group(folder: Path) -> _GroupWriter:
        return _GroupWriter(folder, prefix, fmt, level1_id=level1_id, sensor=sensor,
                            date_time=date_time, param_log=param_log,
                            origin=str(origin or level1_id), provenance_dir=prov,
                            lock_timeout=lock_timeout)

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
        warped = warp_products(prods, target, num_threads=nthread)
        chips = [_stack(p, 0, 0, target.ny, target.nx) for p in warped]
        result.files += group(out_dir / refsys_id).write(warped, chips, target, ovv, res)
        result.tiles_written.append(refsys_id)
        return result

    # ------------------------------------------------------------------ tiled
    if cubes is None:
        cubes = cube_for_params(params, grid_footprint(native, "EPSG:4326"), native)
    allow = None
    ftile = param(params, "FILE_TILE", None)
    if ftile:
        allow = read_tile_allowlist(ftile)
    max_cc = float(param(params, "MAX_CLOUD_COVER_TILE", 100.0))
    for cube in cubes:
        cdir = cube.directory(out_dir)
        cube.tile_pixels(res)
        # DO_REPROJ = FALSE: the origin was snapped to this image's pixel grid, another
        # image may have snapped it elsewhere by less than one pixel: the file wins
        cube = cube.write_prj(cdir, origin_tolerance=(res if not do_reproj else 1e-5))
        result.cubes.append(cube)
        fp = grid_footprint(native, cube.wkt)
        target = cube.aligned_grid(fp, res)
        warped = warp_products(prods, target, num_threads=nthread)
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
            qchip = _chip(q, row, col, tny, tnx, qai_mod.QAI_NODATA)
            valid = qai_mod.is_valid(qchip)
            ndata = int(np.count_nonzero(valid))
            if ndata == 0:
                result.tiles_empty.append(label)
                continue
            ncld = int(np.count_nonzero(qai_mod.cloud_or_shadow(qchip)))
            cc = 100.0 * ncld / ndata
            if cc > max_cc:
                result.tiles_skipped_cloud[label] = cc
                continue
            tgrid = cube.tile_grid(X, Y, res)
            chips = [_stack(p, row, col, tny, tnx) for p in warped]
            result.files += group(cdir / tname).write(warped, chips, tgrid, ovv, res)
            result.tiles_written.append(label)
    return result
