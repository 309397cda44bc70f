"""Predefined continental grids EQUI7 and GLANCE7 (spec 03 §2.2, §2.5).

Seven continents per family, in FORCE's fixed order and with its folder names
(``CONTINENTS``). Each continent is a :class:`~l2ps.cube.grid.Datacube` with the exact WKT
template of spec 03 §2.5, the map origin of the §2.5 tables and the geographic origin
obtained by inverse projection of that map origin.

The per-continent tile tables (FORCE-style ``(X, Y)``, Y counted from the top) are *not*
taken from FORCE: ``tools/make_continental_tables.py`` derives them from the zone polygons
of the public ``equi7grid`` package and stores them in ``l2ps/data/continental_tiles.npz``.
``docs/grids.md`` explains the rule and how close the tables come to the counts of §2.5.
The tables only serve continent assignment (``covered_continents``) and the EQUI7 tile
dictionary; they never restrict which tiles are written (§2.5).

Only numpy and pyproj are needed at run time.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
from pyproj import CRS, Geod, Transformer

from ..errors import GridError
from .grid import Datacube

#: The two families of predefined continental grids.
FAMILIES: tuple[str, ...] = ("EQUI7", "GLANCE7")

#: The seven continents in FORCE's order: (abbreviation, cube folder name) (spec 03 §2.5).
CONTINENTS: tuple[tuple[str, str], ...] = (
    ("AF", "africa"),
    ("AN", "antarctica"),
    ("AS", "asia"),
    ("EU", "europe"),
    ("NA", "n-america"),
    ("OC", "oceania"),
    ("SA", "s-america"),
)
_ABBRS = tuple(a for a, _ in CONTINENTS)
_FOLDER = dict(CONTINENTS)

#: Tile size (m, square tiles) of each family.
TILE_SIZE: dict[str, float] = {"EQUI7": 100000.0, "GLANCE7": 150000.0}

#: Resource name of the derived tile tables.
TABLE_FILE = "continental_tiles.npz"

# ------------------------------------------------------------------ spec 03 §2.5 constants
# EQUI7 (TU Wien Equi7Grid; Azimuthal Equidistant): FE, FN, LON0, LAT0 kept as text so
# that the WKT carries the decimals exactly as FORCE writes them.
_EQUI7_PARAMS: dict[str, tuple[str, str, str, str]] = {
    "AF": ("5621452.01998", "5990638.42298", "21.5", "8.5"),
    "AN": ("3714266.97719", "3402016.50625", "0.0", "-90.0"),
    "AS": ("4340913.84808", "4812712.92347", "94.0", "47.0"),
    "EU": ("5837287.81977", "2121415.69617", "24.0", "53.0"),
    "NA": ("8264722.17686", "4867518.35323", "-97.5", "52.0"),
    "OC": ("6988408.5356", "7654884.53733", "131.5", "-19.5"),
    "SA": ("7257179.23559", "5592024.44605", "-60.5", "-14.0"),
}
# EQUI7 map origins: x = 0, y = (max Y of FORCE's table + 1) * 100000.
_EQUI7_ORIGIN: dict[str, tuple[float, float]] = {
    "AF": (0.0, 9400000.0),
    "AN": (0.0, 8800000.0),
    "AS": (0.0, 9700000.0),
    "EU": (0.0, 5600000.0),
    "NA": (0.0, 9900000.0),
    "OC": (0.0, 12200000.0),
    "SA": (0.0, 10600000.0),
}
# GLANCE7 (BU MEaSUREs GLANCE grids V01; Lambert Azimuthal Equal Area): LON0, LAT0 as
# integers in the WKT.
_GLANCE7_PARAMS: dict[str, tuple[str, str]] = {
    "AF": ("20", "5"),
    "AN": ("0", "-90"),
    "AS": ("100", "45"),
    "EU": ("20", "55"),
    "NA": ("-100", "50"),
    "OC": ("135", "-15"),
    "SA": ("-60", "-15"),
}
# GLANCE7 map origins: the published upper-left corners of the GLANCE continental grids;
# they are not multiples of the tile size (see docs/grids.md).
_GLANCE7_ORIGIN: dict[str, tuple[float, float]] = {
    "AF": (-5312270.0, 3707205.0),
    "AN": (-3662210.0, 5169375.0),
    "AS": (-4805840.0, 5190735.0),
    "EU": (-5505560.0, 3346245.0),
    "NA": (-6961010.0, 4078425.0),
    "OC": (-7633670.0, 5076465.0),
    "SA": (-6918770.0, 4899705.0),
}

#: Reference numbers of FORCE's tables (spec 03 §2.5): (#tiles, (Xmin, Xmax), (Ymin, Ymax)).
#: Used to check the derived tables (tests, tools/make_continental_tables.py), never to
#: build them.
SPEC_TABLES: dict[tuple[str, str], tuple[int, tuple[int, int], tuple[int, int]]] = {
    ("EQUI7", "AF"): (8603, (0, 114), (0, 93)),
    ("EQUI7", "AN"): (6793, (0, 97), (0, 87)),
    ("EQUI7", "AS"): (7089, (0, 115), (0, 96)),
    ("EQUI7", "EU"): (2823, (0, 82), (0, 55)),
    ("EQUI7", "NA"): (9185, (0, 133), (0, 98)),
    ("EQUI7", "OC"): (13829, (0, 187), (0, 121)),
    ("EQUI7", "SA"): (8645, (0, 116), (0, 105)),
    ("GLANCE7", "AF"): (3623, (0, 73), (0, 60)),
    ("GLANCE7", "AN"): (2909, (0, 62), (0, 56)),
    ("GLANCE7", "AS"): (3040, (0, 75), (2, 63)),
    ("GLANCE7", "EU"): (1248, (0, 54), (1, 37)),
    ("GLANCE7", "NA"): (3853, (0, 84), (0, 64)),
    ("GLANCE7", "OC"): (5359, (0, 112), (0, 74)),
    ("GLANCE7", "SA"): (3648, (0, 74), (0, 67)),
}

#: Approximate geographic origins of spec 03 §2.5 ([verified, approx.]); a check only —
#: the cube's origin_lon/lat come from the inverse projection.
SPEC_ORIGIN_GEO: dict[tuple[str, str], tuple[float, float]] = {
    ("EQUI7", "AF"): (-37.39300, 31.15469),
    ("EQUI7", "AN"): (-34.53124, -31.16764),
    ("EQUI7", "AS"): (-7.13432, 54.71382),
    ("EQUI7", "EU"): (-70.92315, 41.06467),
    ("EQUI7", "NA"): (148.80281, 21.21492),
    ("EQUI7", "OC"): (68.95709, 24.36981),
    ("EQUI7", "SA"): (-129.18508, 29.93507),
    ("GLANCE7", "AF"): (-38.58488, 32.92045),
    ("GLANCE7", "AN"): (-35.31542, -30.48401),
    ("GLANCE7", "AS"): (-8.23220, 48.81299),
    ("GLANCE7", "EU"): (-76.85236, 41.47756),
    ("GLANCE7", "NA"): (153.45668, 28.22935),
    ("GLANCE7", "OC"): (52.50486, 33.09897),
    ("GLANCE7", "SA"): (-132.23869, 31.83464),
}

#: A footprint point farther than this from a continent's projection centre disqualifies
#: that continent for the scene. Every table tile lies within ~12 000 km of its centre;
#: near the antipode of the centre the azimuthal projections blow a small scene up into a
#: huge (or wrapped-around) tile range that would "cover" the whole table (a FORCE
#: artefact we do not replicate; docs/grids.md).
MAX_CENTRE_DISTANCE_M = 15_000_000.0

#: Points inserted per footprint edge before the tile range is computed (FORCE: corners
#: only, spec 03 P7).
DENSIFY = 20

#: Tile index returned for points that cannot be projected (never in a table).
NO_TILE = -(2 ** 40)

_GEOD = Geod(ellps="WGS84")


# ------------------------------------------------------------------ names and WKT
def _check(family: str, abbr: str) -> tuple[str, str]:
    fam = str(family).strip().upper()
    ab = str(abbr).strip().upper()
    if fam not in FAMILIES:
        raise GridError(f"unknown continental grid family {family!r}: expected one of "
                        f"{', '.join(FAMILIES)}")
    if ab not in _ABBRS:
        raise GridError(f"unknown continent {abbr!r}: expected one of {' '.join(_ABBRS)}")
    return fam, ab


def parse_projection_name(s: Any) -> tuple[str, str | None] | None:
    """``'EQUI7'`` → ``('EQUI7', None)``, ``'GLANCE7-AF'`` → ``('GLANCE7', 'AF')``.

    Anything else (a WKT, an unknown suffix, ``'GLANCE-AF'``) → ``None``. Case and
    surrounding blanks are ignored. Unlike FORCE, ``GLANCE7-XX`` selects that continent
    (spec 03 §2.5 [BUG?]).
    """
    if not isinstance(s, str):
        return None
    key = s.strip().upper()
    for fam in FAMILIES:
        if key == fam:
            return fam, None
        if key.startswith(fam + "-") and key[len(fam) + 1:] in _ABBRS:
            return fam, key[len(fam) + 1:]
    return None


def continental_wkt(family: str, abbr: str) -> str:
    """The exact WKT template of spec 03 §2.5 for one continent (no spaces for EQUI7;
    the GLANCE7 name contains spaces, as in FORCE)."""
    fam, ab = _check(family, abbr)
    if fam == "EQUI7":
        fe, fn, lon0, lat0 = _EQUI7_PARAMS[ab]
        deg = "0.017453292519943295" if ab == "OC" else "0.0174532925199433"
        return ('PROJCS["Azimuthal_Equidistant",GEOGCS["GCS_WGS_1984",DATUM["D_WGS_1984",'
                'SPHEROID["WGS_1984",6378137.0,298.257223563]],PRIMEM["Greenwich",0.0],'
                f'UNIT["Degree",{deg}]],PROJECTION["Azimuthal_Equidistant"],'
                f'PARAMETER["false_easting",{fe}],PARAMETER["false_northing",{fn}],'
                f'PARAMETER["longitude_of_center",{lon0}],'
                f'PARAMETER["latitude_of_center",{lat0}],UNIT["Meter",1.0]]')
    lon0, lat0 = _GLANCE7_PARAMS[ab]
    return (f'PROJCS["BU MEaSUREs Lambert Azimuthal Equal Area - {ab} - V01",'
            'GEOGCS["GCS_WGS_1984",DATUM["D_WGS_1984",'
            'SPHEROID["WGS_1984",6378137.0,298.257223563]],PRIMEM["Greenwich",0.0],'
            'UNIT["degree",0.0174532925199433]],PROJECTION["Lambert_Azimuthal_Equal_Area"],'
            'PARAMETER["false_easting",0.0],PARAMETER["false_northing",0.0],'
            f'PARAMETER["longitude_of_center",{lon0}],PARAMETER["latitude_of_center",{lat0}],'
            'UNIT["meter",1.0]]')


def projection_centre(family: str, abbr: str) -> tuple[float, float]:
    """(lon, lat) of the projection centre of one continent."""
    fam, ab = _check(family, abbr)
    if fam == "EQUI7":
        return float(_EQUI7_PARAMS[ab][2]), float(_EQUI7_PARAMS[ab][3])
    return float(_GLANCE7_PARAMS[ab][0]), float(_GLANCE7_PARAMS[ab][1])


def origin_map(family: str, abbr: str) -> tuple[float, float]:
    """Map origin (x, y) of one continent (spec 03 §2.5 tables)."""
    fam, ab = _check(family, abbr)
    return (_EQUI7_ORIGIN if fam == "EQUI7" else _GLANCE7_ORIGIN)[ab]


@lru_cache(maxsize=None)
def _crs(family: str, abbr: str) -> CRS:
    return CRS.from_wkt(continental_wkt(family, abbr))


@lru_cache(maxsize=None)
def _to_map(family: str, abbr: str) -> Transformer:
    return Transformer.from_crs(CRS.from_epsg(4326), _crs(family, abbr), always_xy=True)


@lru_cache(maxsize=None)
def _to_geo(family: str, abbr: str) -> Transformer:
    return Transformer.from_crs(_crs(family, abbr), CRS.from_epsg(4326), always_xy=True)


@lru_cache(maxsize=None)
def continental_cube(family: str, abbr: str) -> Datacube:
    """The cube of one continent: exact WKT, map origin of spec 03 §2.5, geographic origin
    by inverse projection, square tiles of ``TILE_SIZE[family]``, name = folder name."""
    fam, ab = _check(family, abbr)
    ox, oy = origin_map(fam, ab)
    lon, lat = _to_geo(fam, ab).transform(ox, oy)
    ts = TILE_SIZE[fam]
    return Datacube(wkt=continental_wkt(fam, ab), origin_lon=float(lon),
                    origin_lat=float(lat), origin_x=float(ox), origin_y=float(oy),
                    tile_x=ts, tile_y=ts, name=_FOLDER[ab])


def continental_cubes(family: str) -> list[Datacube]:
    """All seven cubes of a family, in FORCE's order."""
    return [continental_cube(family, ab) for ab in _ABBRS]


# ------------------------------------------------------------------ tile tables
@lru_cache(maxsize=1)
def _tables() -> dict[str, np.ndarray]:
    try:
        ref = resources.files("l2ps") / "data" / TABLE_FILE
        with resources.as_file(ref) as path, np.load(path) as z:
            raw = {k: z[k] for k in z.files}
    except FileNotFoundError as e:     # pragma: no cover - packaging error
        raise GridError(f"the continental tile tables ({TABLE_FILE}) are missing from the "
                        f"l2ps package; run tools/make_continental_tables.py") from e
    out: dict[str, np.ndarray] = {"_meta": raw["meta"]}
    for fam in FAMILIES:
        for ab in _ABBRS:
            key = f"{fam}_{ab}"
            x0, y0, nx, ny = (int(v) for v in raw[key + "_box"])
            mask = np.unpackbits(raw[key + "_mask"], count=nx * ny).reshape(ny, nx)
            yy, xx = np.nonzero(mask)
            t = np.column_stack([xx + x0, yy + y0]).astype(np.int32)
            t = t[np.lexsort((t[:, 1], t[:, 0]))]
            t.setflags(write=False)
            out[key] = t
    return out


def table_metadata() -> dict:
    """How the tables were derived (rule, equi7grid version, thresholds, counts)."""
    return json.loads(str(_tables()["_meta"]))


def tile_table(family: str, abbr: str) -> np.ndarray:
    """The continent's tile table: (n, 2) int32 array of FORCE-style (X, Y), sorted by X
    then Y (read-only)."""
    fam, ab = _check(family, abbr)
    return _tables()[f"{fam}_{ab}"]


def tile_id(x: int, y: int) -> str:
    """FORCE tile name ``X%04d_Y%04d`` (C zero padding of negative numbers, spec 03 §2.3)."""
    return f"X{int(x):04d}_Y{int(y):04d}"


def _tile_index(d: np.ndarray, size: float) -> np.ndarray:
    """FORCE ``tile_find`` (spec 03 §2.3): ceil(d/T)-1 for d>0, floor(d/T) for d<0, 0 at 0
    (the boundary with positive offset belongs to the lower index). Non-finite offsets
    (a point that cannot be projected) give ``NO_TILE``."""
    d = np.asarray(d, dtype=np.float64)
    ok = np.isfinite(d)
    q = np.where(ok, d, 0.0) / size
    idx = np.where(d > 0, np.ceil(q) - 1, np.floor(q)).astype(np.int64)
    return np.where(ok, idx, NO_TILE)


def lonlat_to_tile(family: str, abbr: str, lon, lat) -> tuple[np.ndarray, np.ndarray]:
    """Tile (X, Y) of lon/lat points in one continent's grid (FORCE's boundary rule);
    ``NO_TILE`` where a point cannot be projected."""
    fam, ab = _check(family, abbr)
    cube = continental_cube(fam, ab)
    x, y = _to_map(fam, ab).transform(np.asarray(lon, float), np.asarray(lat, float))
    return (_tile_index(np.asarray(x) - cube.origin_x, cube.tile_x),
            _tile_index(cube.origin_y - np.asarray(y), cube.tile_y))


def in_table(family: str, abbr: str, x, y) -> np.ndarray:
    """True where tile (x, y) is in the continent's table."""
    t = tile_table(family, abbr)
    x = np.atleast_1d(np.asarray(x, np.int64))
    y = np.atleast_1d(np.asarray(y, np.int64))
    code = t[:, 0].astype(np.int64) * 100003 + t[:, 1]
    ok = (x != NO_TILE) & (y != NO_TILE)
    return ok & np.isin(x * 100003 + y, code)


# ------------------------------------------------------------------ continent assignment
def _ring(footprint: Any) -> np.ndarray:
    """(n, 2) float array of the footprint's outer ring (no closing duplicate)."""
    if hasattr(footprint, "exterior"):                       # shapely Polygon
        pts = np.asarray(footprint.exterior.coords, dtype=np.float64)[:, :2]
    elif hasattr(footprint, "geoms"):                        # MultiPolygon: all rings
        return np.concatenate([_ring(g) for g in footprint.geoms])
    else:
        pts = np.asarray(footprint, dtype=np.float64).reshape(-1, 2)
    if len(pts) > 1 and np.array_equal(pts[0], pts[-1]):
        pts = pts[:-1]
    if len(pts) == 0:
        raise GridError("empty image footprint")
    return pts


def _densify(pts: np.ndarray, n: int) -> np.ndarray:
    """Insert ``n`` points per edge of the closed ring ``pts`` (linear)."""
    if n <= 0 or len(pts) < 2:
        return pts
    nxt = np.roll(pts, -1, axis=0)
    t = (np.arange(n + 1) / (n + 1))[None, :, None]
    return (pts[:, None, :] + (nxt - pts)[:, None, :] * t).reshape(-1, 2)


def footprint_lonlat(footprint: Any, *, src_crs: Any = None, densify: int = DENSIFY) -> np.ndarray:
    """Densified footprint ring as lon/lat points.

    ``footprint``: (n, 2) points (e.g. the 4 corners of the image bounding box, in ring
    order) or a shapely polygon, in lon/lat or — with ``src_crs`` — in that CRS (then the
    edges are densified in the source CRS, where they are straight, and transformed).
    Lon/lat rings crossing the antimeridian are unwrapped before densifying.
    """
    pts = _ring(footprint)
    if src_crs is not None:
        pts = _densify(pts, densify)
        lon, lat = Transformer.from_crs(CRS.from_user_input(src_crs), CRS.from_epsg(4326),
                                        always_xy=True).transform(pts[:, 0], pts[:, 1])
        pts = np.column_stack([lon, lat])
        pts = pts[np.all(np.isfinite(pts), axis=1)]
    else:
        lon = np.degrees(np.unwrap(np.radians(pts[:, 0])))
        pts = _densify(np.column_stack([lon, pts[:, 1]]), densify)
    if len(pts) == 0:
        raise GridError("image footprint cannot be transformed to lon/lat")
    return pts


def _selection(family: str, continent: str | None) -> tuple[str, list[str]]:
    parsed = parse_projection_name(family)
    if parsed is None:
        raise GridError(f"unknown continental grid {family!r}: expected EQUI7, GLANCE7 or "
                        f"one continent of them, e.g. EQUI7-EU or GLANCE7-AF")
    fam, suffix = parsed
    if continent is not None:
        ab = str(continent).strip().upper()
        if ab.startswith(fam + "-"):
            ab = ab[len(fam) + 1:]
        if ab not in _ABBRS:
            raise GridError(f"unknown continent {continent!r}: expected one of "
                            f"{' '.join(_ABBRS)}")
        if suffix is not None and suffix != ab:
            raise GridError(f"conflicting continents: {family!r} and {continent!r}")
        suffix = ab
    return fam, [suffix] if suffix else list(_ABBRS)


def scene_tile_range(family: str, abbr: str, lonlat: np.ndarray) -> tuple[int, int, int, int] | None:
    """(Xmin, Xmax, Ymin, Ymax) of lon/lat points in one continent's grid, or None when the
    points are unusable there (non-finite, or farther than ``MAX_CENTRE_DISTANCE_M`` from
    the projection centre)."""
    fam, ab = _check(family, abbr)
    lon0, lat0 = projection_centre(fam, ab)
    n = len(lonlat)
    _, _, dist = _GEOD.inv(np.full(n, lon0), np.full(n, lat0), lonlat[:, 0], lonlat[:, 1])
    if not np.all(np.isfinite(dist)) or np.max(dist) > MAX_CENTRE_DISTANCE_M:
        return None
    cube = continental_cube(fam, ab)
    x, y = _to_map(fam, ab).transform(lonlat[:, 0], lonlat[:, 1])
    x, y = np.asarray(x, float), np.asarray(y, float)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return None
    tx = _tile_index(x - cube.origin_x, cube.tile_x)
    ty = _tile_index(cube.origin_y - y, cube.tile_y)
    return int(tx.min()), int(tx.max()), int(ty.min()), int(ty.max())


def covered_continents(family: str, corners_lonlat: Any, continent: str | None = None, *,
                       src_crs: Any = None, densify: int = DENSIFY) -> list[Datacube]:
    """The continental cubes a scene belongs to (spec 03 §2.5 "Continent assignment").

    For each continent (all seven, or only ``continent`` / the suffix of ``family``, e.g.
    ``'GLANCE7-EU'``), the scene's tile range is the min/max tile of its densified
    footprint (``densify`` points per edge; FORCE uses the 4 corners only) and the
    continent is covered when any tile of its table lies inside that range. Returns the
    covered cubes in FORCE's order; an empty list when the scene lies outside every
    selected continent (see :func:`require_continents`).
    """
    fam, abbrs = _selection(family, continent)
    pts = footprint_lonlat(corners_lonlat, src_crs=src_crs, densify=densify)
    out = []
    for ab in abbrs:
        rng = scene_tile_range(fam, ab, pts)
        if rng is None:
            continue
        x0, x1, y0, y1 = rng
        t = tile_table(fam, ab)
        if np.any((t[:, 0] >= x0) & (t[:, 0] <= x1) & (t[:, 1] >= y0) & (t[:, 1] <= y1)):
            out.append(continental_cube(fam, ab))
    return out


def require_continents(family: str, corners_lonlat: Any, continent: str | None = None, *,
                       src_crs: Any = None, densify: int = DENSIFY,
                       image: str = "image") -> list[Datacube]:
    """Like :func:`covered_continents`, but raises :class:`GridError` naming the image and
    its lon/lat bounding box when no continent is covered."""
    cubes = covered_continents(family, corners_lonlat, continent, src_crs=src_crs,
                               densify=densify)
    if not cubes:
        pts = footprint_lonlat(corners_lonlat, src_crs=src_crs, densify=0)
        lon = (pts[:, 0] + 180.0) % 360.0 - 180.0
        sel = family if continent is None else f"{family} continent {continent}"
        raise GridError(
            f"{image} (footprint lon {lon.min():.4f}..{lon.max():.4f}, lat "
            f"{pts[:, 1].min():.4f}..{pts[:, 1].max():.4f}) lies outside every continental "
            f"grid of PROJECTION = {sel}")
    return cubes


# ------------------------------------------------------------------ EQUI7 tile dictionary
def equi7_dictionary_lines(abbr: str) -> list[str]:
    """Content of ``<cube>/equi7-tile-dictionary.txt`` (spec 03 §2.5): one line per table
    tile, ``X%04d_Y%04d E7G_<AB>_%03.0f_%03.0f_T1`` with the tile's lower-left x and y
    divided by 1e5 (lly = oy - (Y+1)*1e5)."""
    _, ab = _check("EQUI7", abbr)
    cube = continental_cube("EQUI7", ab)
    ts = cube.tile_x
    lines = []
    for x, y in tile_table("EQUI7", ab):
        llx = (cube.origin_x + int(x) * ts) / 1e5
        lly = (cube.origin_y - (int(y) + 1) * ts) / 1e5
        lines.append(f"{tile_id(x, y)} E7G_{ab}_{llx:03.0f}_{lly:03.0f}_T1")
    return lines


__all__ = [
    "FAMILIES", "CONTINENTS", "TILE_SIZE", "SPEC_TABLES", "SPEC_ORIGIN_GEO", "NO_TILE",
    "parse_projection_name", "continental_wkt", "continental_cube", "continental_cubes",
    "projection_centre", "origin_map", "tile_table", "table_metadata", "tile_id",
    "lonlat_to_tile", "in_table", "footprint_lonlat", "scene_tile_range",
    "covered_continents", "require_continents", "equi7_dictionary_lines",
]
