"""A STAC catalog of the data cube, rebuilt from the files on disk (docs/report-stac.md).

Layout (all links relative, catalog type "self-contained", STAC 1.1 via pystac)::

    DIR_LEVEL2/catalog.json                                   # the Catalog
    DIR_LEVEL2/stac/<collection>/collection.json              # one Collection per cube
    DIR_LEVEL2/stac/<collection>/<tile>/<item>.json           # one Item per product group

A *cube* is ``DIR_LEVEL2`` itself (collection ``cube``; also holds untiled
``<refsys_id>`` folders, spec 03 §2.11) or a continental folder ``DIR_LEVEL2/<name>/``
with its own ``datacube-definition.prj`` (EQUI7/GLANCE7, spec 03 §2.5; collection
``<name>``). An *Item* is one product group of one tile: the files
``<tile>/<YYYYMMDD>_LEVEL2_<SENSOR>_<PRODUCT>.<ext>`` sharing date and sensor (spec 03
§3.1), id ``<tile>_<YYYYMMDD>_LEVEL2_<SENSOR>``. Its assets are the products (BOA/TOA
with role ``data`` and eo/raster bands, QAI ``metadata``, OVV ``overview``, DST/VZN/HOT/
AOD/WVP ``data``), with the file (size, sha2-256 multihash), projection (code or WKT2,
shape, transform, bbox) and raster (nodata, 1/scale, data type) extensions; the datetime
is the band metadata ``Date`` of domain FORCE (spec 03 §3.3), the cover properties are
computed from the QAI file (``eo:cloud_cover`` = cloud state > 0 or shadow among valid
pixels, spec 03 §2.7).

Everything is derived from the files, never from job state, so :func:`update_catalog`
is idempotent and consistent with merge-on-write: a tile rewritten by a later image gets
its items rebuilt; the STAC files are written atomically under a lock on
``DIR_LEVEL2/.locks/catalog.json.lock``. Hidden folders (``.contrib``, ``.locks``) and
hidden files (temporary files of a writer) are never looked at. The STAC tree lives in
``stac/`` (not beside the tiles) so that FORCE's tools, which scan tile folders, never
see it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from . import qai as Q
from .bandinfo import wavelength as band_wavelength
from .cube.lock import DEFAULT_LOCK_TIMEOUT, atomic_write, file_lock, file_locks, makedirs
from .errors import OutputError

log = logging.getLogger(__name__)

CATALOG_NAME = "catalog.json"
COLLECTION_NAME = "collection.json"
STAC_DIR = "stac"
ROOT_COLLECTION = "cube"
PRJ_NAME = "datacube-definition.prj"

#: ``<YYYYMMDD>_LEVEL2_<SENSOR>_<PRODUCT>.<ext>`` (spec 03 §3.1)
PRODUCT_RE = re.compile(r"^(?P<date>\d{8})_LEVEL2_(?P<sensor>[A-Z0-9]+)_(?P<product>[A-Z0-9]+)"
                        r"\.(?P<ext>[A-Za-z0-9]+)$")

#: FORCE sensor → (platform, instruments, constellation)
PLATFORMS = {
    "LND04": ("landsat-4", ["tm"], "landsat"), "LND05": ("landsat-5", ["tm"], "landsat"),
    "LND07": ("landsat-7", ["etm+"], "landsat"), "LND08": ("landsat-8", ["oli"], "landsat"),
    "LND09": ("landsat-9", ["oli"], "landsat"),
    "SEN2A": ("sentinel-2a", ["msi"], "sentinel-2"), "SEN2B": ("sentinel-2b", ["msi"], "sentinel-2"),
    "SEN2C": ("sentinel-2c", ["msi"], "sentinel-2"), "SEN2D": ("sentinel-2d", ["msi"], "sentinel-2"),
}

#: FORCE band domain → eo common name (eo extension v1.1 list)
COMMON_NAMES = {
    "ULTRABLUE": "coastal", "BLUE": "blue", "GREEN": "green", "RED": "red",
    "REDEDGE1": "rededge071", "REDEDGE2": "rededge075", "REDEDGE3": "rededge078",
    "BROADNIR": "nir", "NIR": "nir08", "VAPOR": "nir09", "CIRRUS": "cirrus",
    "SWIR1": "swir16", "SWIR2": "swir22", "TEMP": "lwir",
}

#: product → (asset title, roles)
PRODUCTS = {
    "BOA": ("Bottom-of-atmosphere reflectance", ["data", "reflectance"]),
    "TOA": ("Top-of-atmosphere reflectance", ["data", "reflectance"]),
    "QAI": ("Quality assurance information (16-bit flags)", ["metadata", "quality"]),
    "OVV": ("Quicklook (RGB, clouds and flags in colour)", ["overview", "visual"]),
    "DST": ("Cloud/shadow/snow distance", ["data"]),
    "VZN": ("View zenith", ["data"]),
    "HOT": ("Haze optimized transform", ["data"]),
    "AOD": ("Aerosol optical depth", ["data"]),
    "WVP": ("Water vapor", ["data"]),
}
_ORDER = {p: i for i, p in enumerate(("BOA", "TOA", "QAI", "DST", "VZN", "HOT", "AOD", "WVP", "OVV"))}


# =========================================================================== helpers
def _write_json(path: Path, data: dict) -> None:
    def writer(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
            fh.write("\n")
    makedirs(path.parent)
    atomic_write(path, writer)


def _rel(target: Path, start_dir: Path) -> str:
    r = os.path.relpath(target, start_dir).replace(os.sep, "/")
    return r if r.startswith(".") else "./" + r


def _sha256_multihash(path: Path) -> str:
    """file:checksum as a multihash: 0x12 (sha2-256), 0x20 (32 bytes), digest, in hex."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "1220" + h.hexdigest()


def _mtime_iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_force_date(text: str | None, fallback: str) -> datetime:
    """``YYYY-MM-DDTHH:MM:SS[.f][Z]`` (FORCE band metadata ``Date``, spec 03 §3.3) as an
    aware UTC datetime; ``fallback`` is the file name's ``YYYYMMDD`` (00:00 UTC)."""
    if text:
        m = re.match(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?", text.strip())
        if m:
            y, mo, d, H, M, S = (int(g) for g in m.groups()[:6])
            frac = m.group(7) or "0"
            us = int(round(float("0." + frac) * 1e6))
            try:
                return datetime(y, mo, d, H, M, min(S, 59), min(us, 999999), tzinfo=timezone.utc)
            except ValueError:
                pass
    return datetime.strptime(fallback, "%Y%m%d").replace(tzinfo=timezone.utc)


def _crs_fields(crs) -> dict:
    """proj:code (``EPSG:n`` when the CRS matches an EPSG definition) or proj:wkt2."""
    from pyproj import CRS
    c = CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    epsg = c.to_epsg(min_confidence=90)
    if epsg is not None:
        return {"code": f"EPSG:{epsg}"}
    return {"code": None, "wkt2": c.to_wkt(version="WKT2_2019")}


def _footprint_lonlat(crs, transform, width: int, height: int, n: int = 9) -> dict:
    """GeoJSON polygon of the raster's outline in WGS84 (lon/lat; each edge densified
    with ``n`` points; exterior ring counter-clockwise as RFC 7946 asks)."""
    from pyproj import Transformer
    x0, y0 = transform.c, transform.f
    x1, y1 = x0 + transform.a * width, y0 + transform.e * height
    t = np.linspace(0.0, 1.0, n)[:-1]
    # upper left → lower left → lower right → upper right (counter-clockwise, north up)
    xs = np.concatenate([np.full(n - 1, x0), x0 + (x1 - x0) * t, np.full(n - 1, x1),
                         x1 - (x1 - x0) * t, [x0]])
    ys = np.concatenate([y0 + (y1 - y0) * t, np.full(n - 1, y1), y1 - (y1 - y0) * t,
                         np.full(n - 1, y0), [y0]])
    tr = Transformer.from_crs(crs.to_wkt(), "EPSG:4326", always_xy=True)
    lon, lat = tr.transform(xs, ys)
    ring = [[round(float(a), 7), round(float(b), 7)] for a, b in zip(lon, lat)
            if np.isfinite(a) and np.isfinite(b)]
    if len(ring) < 4:
        raise OutputError(f"raster outline {x0, y0, x1, y1} cannot be projected to lon/lat")
    if ring[-1] != ring[0]:
        ring.append(ring[0])
    return {"type": "Polygon", "coordinates": [ring]}


def _bbox(geometry: dict) -> list[float]:
    pts = np.asarray(geometry["coordinates"][0], float)
    return [float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()),
            float(pts[:, 1].max())]


def _is_visible_dir(p: Path) -> bool:
    return p.is_dir() and not p.name.startswith(".")


def product_groups(tile_dir: Path) -> dict[tuple[str, str], dict[str, Path]]:
    """``(date, sensor) → {product or product-ext: path}`` of the product files in one
    tile folder; hidden files (temporaries) and folders are ignored."""
    groups: dict[tuple[str, str], dict[str, Path]] = {}
    if not tile_dir.is_dir():
        return groups
    for p in sorted(tile_dir.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        m = PRODUCT_RE.match(p.name)
        if not m:
            continue
        key = m["product"] if m["ext"].lower() != "hdr" else f"{m['product']}-header"
        groups.setdefault((m["date"], m["sensor"]), {})[key] = p
    return groups


# =========================================================================== cubes
def _cube_dirs(root: Path) -> dict[str, Path]:
    """collection id → cube folder: continental folders with their own .prj, and the root
    (``cube``) when it has a .prj or product tile folders of its own."""
    cubes: dict[str, Path] = {}
    continental = {p.name: p for p in sorted(root.iterdir())
                   if _is_visible_dir(p) and p.name != STAC_DIR and (p / PRJ_NAME).exists()}
    if (root / PRJ_NAME).exists() or any(_tile_dirs(root, set(continental))):
        cubes[ROOT_COLLECTION] = root
    cubes.update(continental)
    return cubes


def _tile_dirs(cube_dir: Path, exclude: set[str] = frozenset()) -> list[Path]:
    """Visible sub-folders of a cube that hold at least one product file."""
    out = []
    for p in sorted(cube_dir.iterdir()):
        if not _is_visible_dir(p) or p.name == STAC_DIR or p.name in exclude:
            continue
        if (p / PRJ_NAME).exists():
            continue
        try:
            if any(PRODUCT_RE.match(f.name) and not f.name.startswith(".") for f in p.iterdir()):
                out.append(p)
        except OSError:
            continue
    return out


def _collection_for_tile(root: Path, label: str) -> tuple[str, Path]:
    """A record's tile label (``X0001_Y0002``, ``europe/X0001_Y0002`` or a refsys id) →
    (collection id, tile folder)."""
    parts = [s for s in label.replace("\\", "/").split("/") if s]
    if not parts or any(s in (".", "..") or s.startswith(".") for s in parts) or len(parts) > 2:
        raise OutputError(f"update_catalog: not a tile of {root}: {label!r} (expected "
                          f"X####_Y####, <continent>/X####_Y#### or a refsys id)")
    if len(parts) == 2:
        return parts[0], root / parts[0] / parts[1]
    return ROOT_COLLECTION, root / parts[0]


# =========================================================================== items
def _read_raster_info(path: Path, *, covers: bool) -> dict:
    import rasterio
    with rasterio.open(str(path)) as ds:
        info = {"crs": ds.crs, "transform": ds.transform, "width": ds.width,
                "height": ds.height, "count": ds.count, "dtypes": list(ds.dtypes),
                "nodata": ds.nodata, "descriptions": list(ds.descriptions),
                "band_tags": [ds.tags(i + 1, ns="FORCE") for i in range(ds.count)],
                "tags": ds.tags(ns="FORCE"), "l2ps": ds.tags(ns="L2PS"),
                "cog": ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT", "").upper() == "COG"}
        if covers:
            q = ds.read(1).view(np.uint16)
            valid = Q.is_valid(q)
            n = int(np.count_nonzero(valid))
            if n:
                info["covers"] = {
                    "data": 100.0 * n / q.size,
                    "cloud": 100.0 * np.count_nonzero(Q.cloud_or_shadow(q)) / n,
                    "snow": 100.0 * np.count_nonzero(Q.get_flag(q, Q.SNOW) & valid) / n,
                    "water": 100.0 * np.count_nonzero(Q.get_flag(q, Q.WATER) & valid) / n}
            else:
                info["covers"] = {"data": 0.0}
    return info


def _media_type(path: Path, info: dict | None) -> str | None:
    import pystac
    ext = path.suffix.lower()
    if ext in (".jpg", ".jpeg"):
        return pystac.MediaType.JPEG
    if ext in (".tif", ".tiff"):
        return pystac.MediaType.COG if info and info.get("cog") else pystac.MediaType.GEOTIFF
    if ext == ".hdr":
        return pystac.MediaType.TEXT
    return None


def _signature(files: dict[str, Path]) -> dict[str, tuple[int, int]]:
    out = {}
    for k, p in files.items():
        st = p.stat()
        out[k] = (st.st_size, st.st_mtime_ns)
    return out


def _is_current(existing: dict | None, files: dict[str, Path], sig: dict,
                checksum: bool = True) -> bool:
    """True if an item JSON written earlier describes exactly these files unchanged
    (same assets, sizes and newest modification time; checksums present if asked for)."""
    if not existing:
        return False
    assets = existing.get("assets", {})
    if set(assets) != {k.lower() for k in files}:
        return False
    for k in files:
        if assets[k.lower()].get("file:size") != sig[k][0]:
            return False
        if checksum and "file:checksum" not in assets[k.lower()]:
            return False
    newest = max(s[1] for s in sig.values())
    return existing.get("properties", {}).get("updated") == _mtime_iso(newest) and \
        existing.get("properties", {}).get("l2ps:version") == __version__


def build_item(tile_dir: Path, date: str, sensor: str, files: dict[str, Path], *,
               item_dir: Path, root: Path, collection_id: str, checksum: bool = True,
               covers: bool = True) -> "pystac.Item":  # noqa: F821
    """The STAC Item of one product group (files of one tile, date and sensor).

    ``item_dir`` is where the item JSON will live (asset hrefs are relative to it).
    Raises :class:`OutputError` naming the file if a raster cannot be read.
    """
    import pystac
    from pystac.extensions.eo import Band, EOExtension
    from pystac.extensions.file import FileExtension
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import DataType, RasterBand, RasterExtension

    keys = sorted(files, key=lambda k: (_ORDER.get(k.split("-")[0], 50), k))
    infos: dict[str, dict] = {}
    for k in keys:
        p = files[k]
        if p.suffix.lower() in (".jpg", ".jpeg", ".hdr"):
            continue
        try:
            infos[k] = _read_raster_info(p, covers=(k == "QAI" and covers))
        except Exception as e:  # rasterio errors
            raise OutputError(f"{p}: cannot read for the STAC item: {e}") from e
    primary_key = next((k for k in ("BOA", "TOA", "QAI") if k in infos), next(iter(infos), None))
    if primary_key is None:
        raise OutputError(f"{tile_dir}: {date}_LEVEL2_{sensor}: no readable raster product "
                          f"(only {', '.join(p.name for p in files.values())})")
    prim = infos[primary_key]
    if prim["crs"] is None:
        raise OutputError(f"{files[primary_key]}: no coordinate reference system")
    when = parse_force_date(prim["band_tags"][0].get("Date") if prim["band_tags"] else None, date)
    geometry = _footprint_lonlat(prim["crs"], prim["transform"], prim["width"], prim["height"])
    sig = _signature(files)
    platform, instruments, constellation = PLATFORMS.get(sensor, (None, None, None))
    props: dict[str, Any] = {"l2ps:sensor": sensor, "l2ps:tile": tile_dir.name,
                             "l2ps:version": __version__,
                             "updated": _mtime_iso(max(s[1] for s in sig.values())),
                             "gsd": float(abs(prim["transform"].a))}
    if platform:
        props.update(platform=platform, instruments=list(instruments),
                     constellation=constellation)
    contributors = prim["l2ps"].get("CONTRIBUTORS")
    if contributors:
        props["l2ps:contributors"] = [c for c in contributors.split(";") if c]
    item = pystac.Item(id=f"{tile_dir.name}_{date}_LEVEL2_{sensor}", geometry=geometry,
                       bbox=_bbox(geometry), datetime=when, properties=props,
                       collection=collection_id)
    # projection: item level from the primary raster
    t = prim["transform"]
    crsf = _crs_fields(prim["crs"])
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.apply(code=crsf.get("code"), wkt2=crsf.get("wkt2"),
               shape=[prim["height"], prim["width"]],
               transform=[t.a, t.b, t.c, t.d, t.e, t.f],
               bbox=[t.c, t.f + t.e * prim["height"], t.c + t.a * prim["width"], t.f])
    eo = EOExtension.ext(item, add_if_missing=True)
    qinfo = infos.get("QAI", {})
    cov = qinfo.get("covers")
    if cov:
        if "cloud" in cov:
            eo.cloud_cover = round(cov["cloud"], 2)
            eo.snow_cover = round(cov["snow"], 2)
            item.properties["l2ps:water_cover"] = round(cov["water"], 2)
        item.properties["l2ps:data_cover"] = round(cov["data"], 2)
    RasterExtension.add_to(item)
    FileExtension.add_to(item)

    for k in keys:
        p = files[k]
        product = k.split("-")[0]
        title, roles = PRODUCTS.get(product, (product, ["data"]))
        info = infos.get(k)
        if k.endswith("-header"):
            title, roles = f"{title} (ENVI header)", ["metadata"]
        asset = pystac.Asset(href=_rel(p, item_dir), title=title,
                             media_type=_media_type(p, info), roles=list(roles))
        item.add_asset(k.lower(), asset)
        fx = FileExtension.ext(asset)
        fx.size = sig[k][0]
        if checksum:
            fx.checksum = _sha256_multihash(p)
        if info is None:
            continue
        if (info["width"], info["height"]) != (prim["width"], prim["height"]) or \
                info["transform"] != prim["transform"]:
            at = info["transform"]
            ProjectionExtension.ext(asset).apply(
                shape=[info["height"], info["width"]],
                transform=[at.a, at.b, at.c, at.d, at.e, at.f])
        rbands = []
        for i in range(info["count"]):
            tags = info["band_tags"][i] if i < len(info["band_tags"]) else {}
            try:
                scale = float(tags.get("Scale", "1"))
            except ValueError:
                scale = 1.0
            rb = RasterBand.create(nodata=info["nodata"], data_type=DataType(info["dtypes"][i]),
                                   spatial_resolution=float(abs(info["transform"].a)))
            if scale not in (0.0, 1.0):
                rb.scale = 1.0 / scale
            rbands.append(rb)
        RasterExtension.ext(asset).bands = rbands
        if product in ("BOA", "TOA"):
            bands = []
            for i, name in enumerate(info["descriptions"]):
                domain = name or info["band_tags"][i].get("Domain", f"B{i + 1}")
                try:
                    wl = round(band_wavelength(sensor, domain), 4)
                except KeyError:
                    try:
                        wl = float(info["band_tags"][i].get("Wavelength"))
                    except (TypeError, ValueError):
                        wl = None
                bands.append(Band.create(name=domain, common_name=COMMON_NAMES.get(domain),
                                         center_wavelength=wl))
            EOExtension.ext(asset).bands = bands
    return item


def _item_links(item_dir: Path, root: Path, collection_json: Path) -> list[dict]:
    return [{"rel": "root", "href": _rel(root / CATALOG_NAME, item_dir),
             "type": "application/json"},
            {"rel": "parent", "href": _rel(collection_json, item_dir),
             "type": "application/json"},
            {"rel": "collection", "href": _rel(collection_json, item_dir),
             "type": "application/json"}]


def _load_json(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _update_tile(root: Path, collection_id: str, tile_dir: Path, *, checksum: bool,
                 covers: bool, lock_timeout: float) -> int:
    """Rebuild the items of one tile folder; return the number of items it has now."""
    stac_coll = root / STAC_DIR / collection_id
    item_dir = stac_coll / tile_dir.name
    wanted: set[str] = set()
    for (date, sensor), files in sorted(product_groups(tile_dir).items()):
        item_id = f"{tile_dir.name}_{date}_LEVEL2_{sensor}"
        path = item_dir / f"{item_id}.json"
        wanted.add(path.name)
        # a writer replaces the group's files under these locks: read a consistent group
        with file_locks([p for k, p in files.items() if not k.endswith("-header")],
                        lock_timeout):
            files = {k: p for k, p in files.items() if p.exists()}
            if not files:
                wanted.discard(path.name)
                continue
            sig = _signature(files)
            if _is_current(_load_json(path), files, sig, checksum):
                continue
            item = build_item(tile_dir, date, sensor, files, item_dir=item_dir, root=root,
                              collection_id=collection_id, checksum=checksum, covers=covers)
        d = item.to_dict(include_self_link=False, transform_hrefs=False)
        d["links"] = _item_links(item_dir, root, stac_coll / COLLECTION_NAME)
        _write_json(path, d)
    if item_dir.is_dir():
        for p in item_dir.glob("*.json"):
            if p.name not in wanted:
                p.unlink(missing_ok=True)
        if not any(item_dir.glob("*.json")):
            shutil.rmtree(item_dir, ignore_errors=True)
    return len(wanted)


# =========================================================================== collection
def _write_collection(root: Path, collection_id: str, cube_dir: Path | None) -> bool:
    """Rewrite ``stac/<id>/collection.json`` from the item JSONs on disk; False (and the
    folder removed) when the collection has no items."""
    import pystac
    from pystac.extensions.projection import ProjectionExtension

    coll_dir = root / STAC_DIR / collection_id
    items = sorted(coll_dir.glob("*/*.json")) if coll_dir.is_dir() else []
    bboxes, times, links = [], [], []
    platforms, instruments, constellations, gsds, codes, sensors = (set() for _ in range(6))
    for p in items:
        d = _load_json(p)
        if not d or d.get("type") != "Feature":
            continue
        props = d.get("properties", {})
        if d.get("bbox"):
            bboxes.append(d["bbox"])
        if props.get("datetime"):
            times.append(props["datetime"])
        for key, acc in (("platform", platforms), ("constellation", constellations),
                         ("gsd", gsds), ("proj:code", codes), ("l2ps:sensor", sensors)):
            if props.get(key) is not None:
                acc.add(props[key])
        instruments.update(props.get("instruments") or [])
        links.append({"rel": "item", "href": _rel(p, coll_dir), "type": "application/geo+json",
                      "title": d.get("id")})
    if not links:
        if coll_dir.is_dir():
            shutil.rmtree(coll_dir, ignore_errors=True)
        return False
    b = np.asarray(bboxes, float)
    spatial = [[float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()),
                float(b[:, 3].max())]]
    dts = sorted(pystac.utils.str_to_datetime(t) for t in times)
    extent = pystac.Extent(pystac.SpatialExtent(spatial),
                           pystac.TemporalExtent([[dts[0], dts[-1]]]))
    name = "the data cube" if collection_id == ROOT_COLLECTION else f"the {collection_id} cube"
    coll = pystac.Collection(
        id=collection_id,
        description=(f"Level-2 Analysis Ready Data of {name} (FORCE-compatible data cube; "
                     f"bottom-of-atmosphere reflectance, quality bits, quicklooks) written "
                     f"by l2ps. One item per tile, date and sensor."),
        extent=extent, license="other",
        title=f"l2ps Level 2 ARD: {collection_id}",
        providers=[pystac.Provider("l2ps", roles=[pystac.ProviderRole.PROCESSOR])])
    coll.summaries = pystac.Summaries({k: sorted(v) for k, v in (
        ("platform", platforms), ("instruments", instruments),
        ("constellation", constellations), ("gsd", gsds), ("l2ps:sensor", sensors)) if v})
    if codes:
        ProjectionExtension.add_to(coll)
        coll.summaries.add("proj:code", sorted(codes))
    if cube_dir is not None and (cube_dir / PRJ_NAME).exists():
        coll.add_asset("datacube-definition", pystac.Asset(
            href=_rel(cube_dir / PRJ_NAME, coll_dir), title="Data cube definition (FORCE)",
            media_type=pystac.MediaType.TEXT, roles=["metadata"]))
    d = coll.to_dict(include_self_link=False, transform_hrefs=False)
    d["links"] = [{"rel": "root", "href": _rel(root / CATALOG_NAME, coll_dir),
                   "type": "application/json"},
                  {"rel": "parent", "href": _rel(root / CATALOG_NAME, coll_dir),
                   "type": "application/json"}] + links
    _write_json(coll_dir / COLLECTION_NAME, d)
    return True


def _write_catalog(root: Path) -> Path:
    import pystac
    cat = pystac.Catalog(id="l2ps", title="l2ps Level 2 data cube",
                         description="Level-2 Analysis Ready Data (FORCE-compatible data "
                                     "cube) written by l2ps; one collection per cube.")
    d = cat.to_dict(include_self_link=False, transform_hrefs=False)
    links = [{"rel": "root", "href": "./" + CATALOG_NAME, "type": "application/json"}]
    stac_dir = root / STAC_DIR
    if stac_dir.is_dir():
        for c in sorted(stac_dir.iterdir()):
            if (c / COLLECTION_NAME).exists():
                links.append({"rel": "child", "href": _rel(c / COLLECTION_NAME, root),
                              "type": "application/json", "title": c.name})
    d["links"] = links
    path = root / CATALOG_NAME
    _write_json(path, d)
    return path


# =========================================================================== entry
def update_catalog(dir_level2: str | os.PathLike, tiles: Iterable[str] | None = None, *,
                   checksum: bool = True, covers: bool = True,
                   lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> Path:
    """Bring the STAC catalog of the cube(s) in ``dir_level2`` up to date; return the path
    of ``catalog.json``.

    tiles    -- tile labels as in the job records (``X0001_Y0002``, ``europe/X0001_Y0002``,
                untiled refsys ids): only their items are rebuilt (and the collections
                they belong to). ``None`` (or no catalog yet): rescan every tile; items
                whose files are unchanged (size, newest mtime) are kept as they are.
    checksum -- add ``file:checksum`` (sha2-256 multihash; reads every rebuilt file once)
    covers   -- compute ``eo:cloud_cover``/``eo:snow_cover`` from each rebuilt QAI file
    """
    root = Path(dir_level2)
    if not root.is_dir():
        raise OutputError(f"{root}: DIR_LEVEL2 does not exist (no cube to catalog)")
    with file_lock(root / CATALOG_NAME, timeout=lock_timeout):
        cubes = _cube_dirs(root)
        full = tiles is None or not (root / CATALOG_NAME).exists()
        touched: set[str] = set()
        if full:
            stac_dir = root / STAC_DIR
            existing = {c.name for c in stac_dir.iterdir() if c.is_dir()} if stac_dir.is_dir() else set()
            for cid, cdir in cubes.items():
                exclude = {n for n in cubes if n != ROOT_COLLECTION} if cid == ROOT_COLLECTION else set()
                present = _tile_dirs(cdir, exclude)
                for tdir in present:
                    _update_tile(root, cid, tdir, checksum=checksum, covers=covers,
                                 lock_timeout=lock_timeout)
                # item folders of tiles that are gone
                names = {t.name for t in present}
                coll_dir = stac_dir / cid
                if coll_dir.is_dir():
                    for d in coll_dir.iterdir():
                        if d.is_dir() and d.name not in names:
                            shutil.rmtree(d, ignore_errors=True)
                touched.add(cid)
            touched |= existing
        else:
            for label in sorted(set(tiles)):
                cid, tdir = _collection_for_tile(root, label)
                _update_tile(root, cid, tdir, checksum=checksum, covers=covers,
                             lock_timeout=lock_timeout)
                touched.add(cid)
        for cid in sorted(touched):
            cdir = cubes.get(cid) or (root if cid == ROOT_COLLECTION else root / cid)
            _write_collection(root, cid, cdir)
        return _write_catalog(root)
