"""Data cube definition and tile math (spec 03 §2.2, §2.3, §2.6).

A :class:`Datacube` is the projection (WKT), the origin (WGS84 lon/lat and its map
coordinates) and the tile size of one tiled output directory. Tiles are named
``X####_Y####``; X grows east and Y grows south from the origin, which is the upper-left
corner of tile ``X0000_Y0000``.

``datacube-definition.prj`` is written in FORCE's current tag/value format (7 lines,
``TAG = value``, numbers with ``%f``) and read in that format or in the deprecated
positional format. Unlike FORCE, l2ps checks an existing definition against the current
parameters (:class:`~l2ps.errors.GridError` naming the file and the field).

Note on WKT with spaces (spec 03 P9): the WKT is written as given. FORCE's own tag/value
reader keeps only the first blank-separated token of a value, so a WKT containing spaces
(GLANCE7, most EPSG-derived WKT) cannot be read back by FORCE's higher-level tools; l2ps'
reader takes the whole rest of the line. Give PROJECTION without spaces if FORCE tools
must read the cube.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pyproj import CRS as ProjCRS
from pyproj import Transformer

from ..errors import GridError
from ..grid import Grid

PRJ_NAME = "datacube-definition.prj"
PRJ_TAGS = ("PROJECTION", "ORIGIN_GEO_X", "ORIGIN_GEO_Y", "ORIGIN_MAP_X", "ORIGIN_MAP_Y",
            "TILE_SIZE_X", "TILE_SIZE_Y")

# relative tolerance (in tile or pixel units) below which a coordinate counts as lying
# exactly on a tile/pixel boundary: absorbs floating-point noise of projections
_EPS = 1e-9

_TILE_RE = re.compile(r"^X(-?\d+)_Y(-?\d+)$")


# ============================================================================ params
_MISSING = object()


def param(params: Any, key: str, default: Any = _MISSING) -> Any:
    """Value of parameter ``key`` (FORCE name, e.g. ``DO_TILE``) from a mapping or an
    object with attributes (upper- or lower-case names). Literal ``NULL`` → None."""
    val = _MISSING
    if isinstance(params, Mapping):
        for k in (key, key.lower()):
            if k in params:
                val = params[k]
                break
    else:
        for k in (key, key.lower()):
            if hasattr(params, k):
                val = getattr(params, k)
                break
    if val is _MISSING:
        if default is _MISSING:
            raise GridError(f"parameter {key} is not set")
        return default
    if isinstance(val, str) and val.strip() == "NULL":
        return None
    return val


def as_bool(value: Any) -> bool:
    if isinstance(value, str):
        v = value.strip().upper()
        if v in ("TRUE", "YES", "1"):
            return True
        if v in ("FALSE", "NO", "0", ""):
            return False
        raise GridError(f"not a boolean: {value!r} (expected TRUE or FALSE)")
    return bool(value)


def as_floats(value: Any) -> list[float]:
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if np.isscalar(value):
        return [float(value)]
    return [float(v) for v in value]


def projection_string(value: Any) -> str:
    """PROJECTION as one string (a list of tokens is re-joined with single spaces)."""
    if value is None:
        raise GridError("parameter PROJECTION is not set")
    if not isinstance(value, str):
        value = " ".join(str(v) for v in value)
    return value.strip()


# ======================================================================= projections
def lonlat_to_map(wkt: str, lon, lat):
    """WGS84 lon/lat (traditional GIS order) → map x/y of ``wkt``."""
    try:
        t = Transformer.from_crs("EPSG:4326", ProjCRS.from_user_input(wkt), always_xy=True)
    except Exception as e:
        raise GridError(f"invalid projection (WKT): {e}") from e
    return t.transform(lon, lat)


def map_to_lonlat(wkt: str, x, y):
    t = Transformer.from_crs(ProjCRS.from_user_input(wkt), "EPSG:4326", always_xy=True)
    return t.transform(x, y)


def grid_footprint(grid: Grid, dst_wkt: str | None = None, densify: int = 21) -> np.ndarray:
    """The outline of ``grid`` as (N, 2) points in ``dst_wkt`` (None = the grid's CRS;
    ``"EPSG:4326"`` = lon/lat). Every edge is densified with ``densify`` points, so that
    reprojected edges that bulge beyond the corners are covered (fixes spec 03 P7)."""
    t = np.linspace(0.0, 1.0, max(int(densify), 2))
    x0, y0, x1, y1 = grid.x0, grid.y0, grid.x1, grid.y1
    xs = np.concatenate([x0 + (x1 - x0) * t, np.full_like(t, x1),
                         x1 - (x1 - x0) * t, np.full_like(t, x0)])
    ys = np.concatenate([np.full_like(t, y0), y0 - (y0 - y1) * t,
                         np.full_like(t, y1), y1 + (y0 - y1) * t])
    if dst_wkt is None:
        return np.column_stack([xs, ys])
    src = ProjCRS.from_user_input(grid.crs_wkt)
    dst = ProjCRS.from_user_input(dst_wkt)
    if src == dst:
        return np.column_stack([xs, ys])
    tx, ty = Transformer.from_crs(src, dst, always_xy=True).transform(xs, ys)
    pts = np.column_stack([tx, ty])
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if len(pts) == 0:
        raise GridError(f"image footprint cannot be projected into the cube projection "
                        f"({dst.name})")
    return pts


def _snap(q: np.ndarray | float):
    """Round values within a relative ``_EPS`` of an integer to that integer."""
    q = np.asarray(q, dtype=np.float64)
    r = np.round(q)
    return np.where(np.abs(q - r) <= _EPS * np.maximum(1.0, np.abs(q)), r, q)


def _crs_equivalent(a: str, b: str) -> bool:
    """Same CRS, also when names differ (e.g. FORCE's space-free WKT1 of EPSG:3035 vs
    WKT2 from the EPSG database): equal per PROJ, or equal PROJ.4 definitions."""
    if a == b:
        return True
    try:
        ca, cb = ProjCRS.from_user_input(a), ProjCRS.from_user_input(b)
        if ca.equals(cb, ignore_axis_order=True):
            return True
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pa, pb = ca.to_proj4(), cb.to_proj4()
        norm = lambda s: " ".join(sorted(t for t in s.split() if t not in ("+type=crs", "+no_defs")))
        return bool(pa) and norm(pa) == norm(pb)
    except Exception:
        return False


# ========================================================================= Datacube
@dataclass(frozen=True)
class TileRange:
    """Inclusive range of tile indices."""
    x_min: int
    x_max: int
    y_min: int
    y_max: int

    def tiles(self) -> list[tuple[int, int]]:
        """All (X, Y) in FORCE's write order: Y outer loop, X inner loop."""
        return [(x, y) for y in range(self.y_min, self.y_max + 1)
                for x in range(self.x_min, self.x_max + 1)]


@dataclass(frozen=True)
class Datacube:
    """One cube: projection (WKT), origin (geographic and map), tile size (map units)."""
    wkt: str
    origin_lon: float
    origin_lat: float
    origin_x: float
    origin_y: float
    tile_x: float
    tile_y: float
    name: str = ""          # continent folder name for EQUI7/GLANCE7 cubes ("europe"), else ""

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_origin_geo(cls, wkt: str, lon: float, lat: float, tile_x: float,
                        tile_y: float | None = None, name: str = "") -> "Datacube":
        """Cube whose origin is given in WGS84 lon/lat; the map origin is its projection
        into ``wkt`` (traditional lon/lat axis order, spec 03 §2.3)."""
        if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
            raise GridError(f"cube origin ({lon}, {lat}) is outside ±180/±90 degrees")
        tile_y = tile_x if tile_y is None else tile_y
        if tile_x <= 0 or tile_y <= 0:
            raise GridError(f"TILE_SIZE must be positive, got {tile_x} {tile_y}")
        x, y = lonlat_to_map(wkt, lon, lat)
        if not (math.isfinite(x) and math.isfinite(y)):
            raise GridError(f"cube origin ({lon}, {lat}) cannot be projected into {wkt[:60]}...")
        return cls(wkt, float(lon), float(lat), float(x), float(y), float(tile_x),
                   float(tile_y), name)

    @classmethod
    def from_origin_map(cls, wkt: str, x: float, y: float, tile_x: float,
                        tile_y: float | None = None, name: str = "") -> "Datacube":
        """Cube whose origin is given in map units; lon/lat are derived."""
        tile_y = tile_x if tile_y is None else tile_y
        lon, lat = map_to_lonlat(wkt, x, y)
        return cls(wkt, float(lon), float(lat), float(x), float(y), float(tile_x),
                   float(tile_y), name)

    @cached_property
    def crs(self) -> ProjCRS:
        return ProjCRS.from_user_input(self.wkt)

    # ------------------------------------------------------------ tile math
    def tile_find(self, x: float, y: float) -> tuple[int, int]:
        """Tile (X, Y) containing map point (x, y) with FORCE's boundary rule (§2.3):
        with ``dx = x − origin_x``: ``X = ceil(dx/TX) − 1`` if dx > 0, ``floor(dx/TX)``
        if dx < 0, 0 if dx == 0 (same for Y with ``dy = origin_y − y``). A point exactly
        on a boundary at positive offset belongs to the lower-index tile."""
        X, Y = self.tile_find_many(np.array([x], float), np.array([y], float))
        return int(X[0]), int(Y[0])

    def tile_find_many(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised :meth:`tile_find`."""
        qx = _snap((np.asarray(x, float) - self.origin_x) / self.tile_x)
        qy = _snap((self.origin_y - np.asarray(y, float)) / self.tile_y)
        X = np.where(qx > 0, np.ceil(qx) - 1, np.floor(qx)).astype(np.int64)
        Y = np.where(qy > 0, np.ceil(qy) - 1, np.floor(qy)).astype(np.int64)
        return X, Y

    def tile_ul(self, X: int, Y: int) -> tuple[float, float]:
        """Map coordinates of the upper-left corner of tile (X, Y)."""
        return self.origin_x + X * self.tile_x, self.origin_y - Y * self.tile_y

    @staticmethod
    def tile_name(X: int, Y: int) -> str:
        """``X%04d_Y%04d`` with C-style negative padding (−1 → ``X-001``)."""
        return "X%04d_Y%04d" % (X, Y)

    @staticmethod
    def parse_tile_name(name: str) -> tuple[int, int]:
        m = _TILE_RE.match(name.strip())
        if not m:
            raise GridError(f"not a tile name: {name!r} (expected X####_Y####)")
        return int(m.group(1)), int(m.group(2))

    def tile_range(self, corners_xy: Iterable) -> TileRange:
        """Range of tiles touched by the given map points (e.g. a densified footprint)."""
        pts = np.asarray(corners_xy, dtype=np.float64).reshape(-1, 2)
        X, Y = self.tile_find_many(pts[:, 0], pts[:, 1])
        return TileRange(int(X.min()), int(X.max()), int(Y.min()), int(Y.max()))

    def tile_pixels(self, res: float) -> tuple[int, int]:
        """(nx, ny) pixels of one tile at pixel size ``res``; raises GridError unless the
        tile size is a multiple of ``res`` (tolerance 0.005 map units, as FORCE)."""
        for t in (self.tile_x, self.tile_y):
            if math.fmod(t, res) > 0.005 and res - math.fmod(t, res) > 0.005:
                raise GridError(f"TILE_SIZE ({self.tile_x:g} {self.tile_y:g}) must be a "
                                f"multiple of the resolution ({res:g})")
        return int(round(self.tile_x / res)), int(round(self.tile_y / res))

    def tile_grid(self, X: int, Y: int, res: float) -> Grid:
        """The pixel grid of tile (X, Y) at resolution ``res``."""
        nx, ny = self.tile_pixels(res)
        ulx, uly = self.tile_ul(X, Y)
        return Grid(self.wkt, ulx, uly, float(res), float(res), nx, ny)

    def aligned_grid(self, footprint: Iterable, res: float) -> Grid:
        """Smallest grid covering ``footprint`` ((N, 2) map points, or bounds
        ``(left, bottom, right, top)``) whose pixel edges lie on ``tile_ul + k·res``.

        Replaces FORCE's ``tile_align`` (GDAL-suggested UL moved outward, +10 pixels): the
        result covers the whole footprint, and every tile chip is an integer window."""
        fp = np.asarray(footprint, dtype=np.float64)
        if fp.ndim == 1 and fp.size == 4:
            left, bottom, right, top = fp
        else:
            fp = fp.reshape(-1, 2)
            left, right = fp[:, 0].min(), fp[:, 0].max()
            bottom, top = fp[:, 1].min(), fp[:, 1].max()
        self.tile_pixels(res)
        k0 = int(np.floor(_snap((left - self.origin_x) / res)))
        k1 = int(np.ceil(_snap((right - self.origin_x) / res)))
        m0 = int(np.floor(_snap((self.origin_y - top) / res)))
        m1 = int(np.ceil(_snap((self.origin_y - bottom) / res)))
        nx, ny = max(k1 - k0, 1), max(m1 - m0, 1)
        return Grid(self.wkt, self.origin_x + k0 * res, self.origin_y - m0 * res,
                    float(res), float(res), nx, ny)

    def directory(self, root: str | os.PathLike) -> Path:
        """The cube's folder: ``root`` or ``root/<name>`` for continental cubes."""
        return Path(root) / self.name if self.name else Path(root)

    # ------------------------------------------------------------ .prj
    def prj_text(self) -> str:
        """The 7-line tag/value definition (spec 03 §2.6)."""
        return (f"PROJECTION = {self.wkt}\n"
                f"ORIGIN_GEO_X = {self.origin_lon:f}\n"
                f"ORIGIN_GEO_Y = {self.origin_lat:f}\n"
                f"ORIGIN_MAP_X = {self.origin_x:f}\n"
                f"ORIGIN_MAP_Y = {self.origin_y:f}\n"
                f"TILE_SIZE_X = {self.tile_x:f}\n"
                f"TILE_SIZE_Y = {self.tile_y:f}\n")

    def write_prj(self, directory: str | os.PathLike, *,
                  origin_tolerance: float = 1e-5, timeout: float = 60.0) -> "Datacube":
        """Write ``<directory>/datacube-definition.prj`` if it does not exist (under a lock,
        atomically); if it exists, check that it matches this cube. Returns the cube as
        stored in the file (which then governs the tile grid, for every image alike).

        ``origin_tolerance``: largest accepted difference of the map origin (map units).
        Raises :class:`GridError` naming the file and the differing field."""
        from .lock import atomic_write, file_lock, makedirs

        d = makedirs(directory)
        path = d / PRJ_NAME
        with file_lock(path, timeout):
            if path.exists():
                existing = read_prj(path, name=self.name)
                self.check_matches(existing, path, origin_tolerance=origin_tolerance)
                return existing
            text = self.prj_text()

            def _write(tmp: Path) -> None:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
            atomic_write(path, _write)
            # every writer, the first included, uses the cube as stored (%f-rounded)
            return read_prj(path, name=self.name)

    def check_matches(self, other: "Datacube", path: str | os.PathLike = PRJ_NAME, *,
                      origin_tolerance: float = 1e-5) -> None:
        """Raise :class:`GridError` if ``other`` (read from ``path``) is a different cube."""
        if not _crs_equivalent(self.wkt, other.wkt):
            raise GridError(f"{path}: PROJECTION differs from the current parameters "
                            f"(file: {other.wkt[:80]}..., parameters: {self.wkt[:80]}...)")
        for tag, a, b, tol in (
                ("ORIGIN_MAP_X", self.origin_x, other.origin_x, origin_tolerance),
                ("ORIGIN_MAP_Y", self.origin_y, other.origin_y, origin_tolerance),
                ("TILE_SIZE_X", self.tile_x, other.tile_x, 1e-5),
                ("TILE_SIZE_Y", self.tile_y, other.tile_y, 1e-5)):
            if not abs(a - b) <= tol:
                raise GridError(f"{path}: {tag} is {b:f} in the file but {a:f} with the "
                                f"current parameters")
        geo_tol = max(1e-5, origin_tolerance * 1e-5)
        for tag, a, b in (("ORIGIN_GEO_X", self.origin_lon, other.origin_lon),
                          ("ORIGIN_GEO_Y", self.origin_lat, other.origin_lat)):
            if not abs(a - b) <= geo_tol:
                raise GridError(f"{path}: {tag} is {b:f} in the file but {a:f} with the "
                                f"current parameters")


def read_prj(path: str | os.PathLike, name: str = "") -> Datacube:
    """Read ``datacube-definition.prj`` in the current tag/value format or in the
    deprecated positional format (WKT, origin lon, lat, map x, y, tile size[, ignored
    block size]). The WKT is the whole rest of its line (spaces kept)."""
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise GridError(f"{p}: cannot read cube definition: {e.strerror or e}") from e
    lines = [ln.rstrip("\r\n") for ln in raw.splitlines()]
    content = [ln for ln in lines if ln.strip()]
    if not content:
        raise GridError(f"{p}: empty cube definition")
    if re.match(r"^\s*PROJECTION\s*=", content[0]):
        vals: dict[str, str] = {}
        for i, ln in enumerate(lines, 1):
            if not ln.strip():
                continue
            tag, eq, value = ln.partition("=")
            tag = tag.strip()
            if not eq or tag not in PRJ_TAGS:
                raise GridError(f"{p}, line {i}: unknown or malformed entry {ln[:60]!r} "
                                f"(expected one of {', '.join(PRJ_TAGS)})")
            if tag in vals:
                raise GridError(f"{p}, line {i}: {tag} given twice")
            vals[tag] = value.strip()
        missing = [t for t in PRJ_TAGS if t not in vals]
        if missing:
            raise GridError(f"{p}: missing {', '.join(missing)}")
        try:
            nums = [float(vals[t]) for t in PRJ_TAGS[1:]]
        except ValueError as e:
            raise GridError(f"{p}: not a number: {e}") from e
        return Datacube(vals["PROJECTION"], *nums, name=name)
    # deprecated positional format
    if len(content) < 6:
        raise GridError(f"{p}: neither the tag/value format nor the deprecated 6-line "
                        f"format ({len(content)} lines)")
    f = [ln.rstrip("\r\n#").strip() for ln in content[:6]]
    try:
        lon, lat, x, y, ts = (float(v) for v in f[1:6])
    except ValueError as e:
        raise GridError(f"{p}: deprecated format, lines 2-6 must be numbers: {e}") from e
    return Datacube(f[0], lon, lat, x, y, ts, ts, name=name)


# ============================================================ cubes from parameters
def target_resolution(params: Any, sensor: str) -> float:
    """RESOLUTION_LANDSAT for ``LND*`` sensors, else RESOLUTION_SENTINEL2."""
    key = "RESOLUTION_LANDSAT" if sensor.upper().startswith("LND") else "RESOLUTION_SENTINEL2"
    res = float(param(params, key))
    if not res > 0:
        raise GridError(f"{key} must be positive, got {res}")
    return res


def cube_for_params(params: Any, footprint_lonlat: Iterable | None,
                    native_grid: Grid) -> list[Datacube]:
    """The target cube(s) of one image (spec 03 §2.1, §2.2, §2.5).

    * PROJECTION = WKT → one cube with ORIGIN_LON/LAT and TILE_SIZE;
    * PROJECTION = EQUI7[-XX] / GLANCE7[-XX] → every continental cube the image's
      footprint (lon/lat points) touches (``l2ps.cube.continental``);
    * DO_REPROJ = FALSE → projection of the image; with DO_TILE = TRUE the map origin is
      moved to the nearest pixel corner of the image grid (spec 03 P6; the geographic
      origin written to the .prj is the back-projection of the moved origin), so that
      tiles are cut from the image without resampling.
    """
    do_reproj = as_bool(param(params, "DO_REPROJ", True))
    do_tile = as_bool(param(params, "DO_TILE", True))
    ts = as_floats(param(params, "TILE_SIZE", [30000.0, 30000.0]))
    if len(ts) == 1:
        ts = ts * 2
    if len(ts) != 2:
        raise GridError(f"TILE_SIZE must have 2 values (X Y), got {ts}")
    lon = float(param(params, "ORIGIN_LON", -25.0))
    lat = float(param(params, "ORIGIN_LAT", 60.0))

    if not do_reproj:
        wkt = native_grid.crs_wkt
        cube = Datacube.from_origin_geo(wkt, lon, lat, ts[0], ts[1])
        if do_tile:
            ox = native_grid.x0 + round((cube.origin_x - native_grid.x0) / native_grid.dx) * native_grid.dx
            oy = native_grid.y0 + round((cube.origin_y - native_grid.y0) / native_grid.dy) * native_grid.dy
            cube = Datacube.from_origin_map(wkt, ox, oy, ts[0], ts[1])
        return [cube]

    proj = projection_string(param(params, "PROJECTION"))
    key = proj.upper()
    for family in ("EQUI7", "GLANCE7"):
        if key == family or key.startswith(family + "-"):
            continent = key[len(family) + 1:] or None
            from . import continental   # lazy: separate module, separate owner
            if footprint_lonlat is None:
                footprint_lonlat = grid_footprint(native_grid, "EPSG:4326")
            pts = np.asarray(footprint_lonlat, dtype=np.float64).reshape(-1, 2)
            cubes = continental.covered_continents(family, pts, continent)
            if not cubes:
                raise GridError(f"PROJECTION = {proj}: the image lies outside every "
                                f"continental grid")
            return list(cubes)
    try:
        ProjCRS.from_wkt(proj)
    except Exception as e:
        raise GridError(f"PROJECTION is not a valid WKT ({e}); EPSG codes and PROJ strings "
                        f"are not accepted, use WKT, EQUI7 or GLANCE7") from e
    return [Datacube.from_origin_geo(proj, lon, lat, ts[0], ts[1])]


__all__ = ["Datacube", "TileRange", "read_prj", "cube_for_params", "grid_footprint",
           "lonlat_to_map", "map_to_lonlat", "target_resolution", "param", "as_bool",
           "PRJ_NAME"]
