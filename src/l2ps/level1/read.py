"""Open a Level-1 product in any delivery form, check its tier, read its DNs (spec 01 §1).

- ``open_level1(path, tempdir)``: context manager yielding ``Level1``; archives are unpacked
  into a fresh ``l2ps-*`` folder under ``tempdir`` that is removed on exit, also on errors.
- ``read_metadata(folder)``: ``Level1`` of an already extracted product.
- ``is_level1`` / ``find_level1``: recognise products in directory listings (``l2ps queue``).
- ``check_tier(level1, tier)``: the TIER parameter (§1.3).
- ``read_dn(level1, domain, window)`` / ``read_bands``: DNs at each band's native grid.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import rasterio
from rasterio.windows import Window

from ..errors import Level1Error
from ..grid import Grid
from ..memory import lasting_zeros, release_free_heap
from . import archive
from .landsat import gdal_message, read_landsat
from .model import Band, Level1
from .sentinel2 import _tile_xml, read_sentinel2


# --------------------------------------------------------------------------- recognition
def _has_mtl(folder: Path) -> bool:
    try:
        return any(p.is_file() for p in folder.glob("*MTL*.txt"))
    except OSError:
        return False


def level1_kind(path: Path) -> str | None:
    """'landsat-folder', 'landsat-tar', 's2-safe', 's2-zip', 's2-granule' or None."""
    path = Path(path)
    name = path.name
    if path.is_dir():
        if archive.LANDSAT_NAME.match(name) and _has_mtl(path):
            return "landsat-folder"
        if archive.S2_PRODUCT_NAME.match(name) and name.endswith(".SAFE") \
                and (path / "GRANULE").is_dir():
            return "s2-safe"
        if archive.S2_GRANULE_NAME.match(name) and _tile_xml(path) is not None:
            return "s2-granule"
        return None
    if path.is_file():
        kind = archive.archive_kind(path)
        if kind == "tar" and archive.LANDSAT_NAME.match(name):
            return "landsat-tar"
        if kind == "zip" and archive.S2_PRODUCT_NAME.match(name):
            return "s2-zip"
    return None


def is_level1(path: Path) -> bool:
    """Is ``path`` a Level-1 product l2ps can process (by name, plus an MTL/XML for folders)?"""
    return level1_kind(Path(path)) is not None


def find_level1(paths: Iterable[Path]) -> list[Path]:
    """Level-1 products named by ``paths`` or found below them (sorted, no duplicates).

    A path that is a product is taken as is; a directory that is none is searched
    recursively, without descending into products (a .SAFE's granules are not listed).
    """
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if is_level1(p):
            found.append(p.absolute())
            continue
        if not p.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(p):
            d = Path(dirpath)
            keep = []
            for dn in sorted(dirnames):
                sub = d / dn
                if is_level1(sub):
                    found.append(sub.absolute())
                else:
                    keep.append(dn)
            dirnames[:] = keep
            for fn in sorted(filenames):
                f = d / fn
                if is_level1(f):
                    found.append(f.absolute())
    out, seen = [], set()
    for f in sorted(found):
        if f not in seen:
            seen.add(f)
            out.append(f)
    return out


# --------------------------------------------------------------------------- opening
def _folder_metadata(folder: Path, source: Path) -> Level1:
    if (folder / "GRANULE").is_dir() or _tile_xml(folder) is not None and \
            (folder / "IMG_DATA").is_dir():
        return read_sentinel2(folder, source=source)
    if _has_mtl(folder) or any(folder.glob("*/*MTL*.txt")):
        return read_landsat(folder, source=source)
    raise Level1Error(f"{folder}: not a Level-1 product (expected a Landsat folder with "
                      "*_MTL.txt, a Sentinel-2 .SAFE folder or a granule folder with "
                      "MTD_TL.xml)")


def read_metadata(path: Path, source: Path | None = None) -> Level1:
    """``Level1`` of an already extracted product folder (Landsat, .SAFE or granule).

    A path to an ``*_MTL.txt`` file stands for its folder.
    """
    path = Path(path)
    if path.is_file() and path.name.upper().endswith("MTL.TXT"):
        path = path.parent
    if not path.exists():
        raise Level1Error(f"{path}: not found")
    if not path.is_dir():
        raise Level1Error(f"{path}: not a folder (archives need open_level1)")
    return _folder_metadata(path, Path(source) if source is not None else path)


@contextmanager
def open_level1(path: Path, tempdir: Path | None = None) -> Iterator[Level1]:
    """Open a Level-1 product in any form and yield its ``Level1``.

    Archives (.tar, .tar.gz, .tgz, .zip) are unpacked into
    ``tempfile.mkdtemp(dir=tempdir, prefix="l2ps-")``, which is removed when the context
    ends, also when an exception leaves it. Folders are used in place.
    """
    path = Path(path)
    if not path.exists():
        raise Level1Error(f"{path}: not found")
    if path.is_dir() or (path.is_file() and path.name.upper().endswith("MTL.TXT")):
        yield read_metadata(path)
        return
    if archive.archive_kind(path) is None:
        raise Level1Error(f"{path}: not a Level-1 product (expected a folder, .tar, .tar.gz "
                          "or .zip)")
    if tempdir is not None:
        Path(tempdir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=tempdir, prefix="l2ps-"))
    try:
        folder = archive.extract(path, tmp)
        yield _folder_metadata(folder, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- tier
_TIER_ACCEPTS = {1: "tier 1 (L1T/L1TP, category T1)",
                 2: "tiers 1–2 (L1T/L1TP/L1GT/L1GS, categories T1 and T2)",
                 3: "tiers 1–3 (categories T1, T2 and RT)"}


def check_tier(level1: Level1, tier: int) -> None:
    """Raise Level1Error if the product's tier exceeds TIER (spec 01 §1.3; Landsat only)."""
    if level1.mission != "landsat":
        return
    if level1.tier > int(tier):
        lvl = level1.extra.get("processing_level") or "?"
        cat = level1.extra.get("collection_category") or "none"
        raise Level1Error(
            f"Unacceptable tier: product is tier {level1.tier} ({lvl}, category {cat}); "
            f"TIER = {tier} accepts only {_TIER_ACCEPTS.get(int(tier), 'tier ≤ ' + str(tier))}"
            f" ({level1.source})")


# --------------------------------------------------------------------------- reading
def band_window(band: Band, grid: Grid) -> tuple[Window, Grid]:
    """The window of ``band``'s native pixels covering ``grid`` (same CRS), and its grid.

    Uses coordinates, so non-integer band-to-band ratios are fine. The window is clipped
    to the band raster.
    """
    bg = band.grid
    c0 = int(np.floor((grid.x0 - bg.x0) / bg.dx + 1e-9))
    r0 = int(np.floor((bg.y0 - grid.y0) / bg.dy + 1e-9))
    c1 = int(np.ceil((grid.x1 - bg.x0) / bg.dx - 1e-9))
    r1 = int(np.ceil((bg.y0 - grid.y1) / bg.dy - 1e-9))
    c0, r0 = max(c0, 0), max(r0, 0)
    c1, r1 = min(c1, bg.nx), min(r1, bg.ny)
    if c1 <= c0 or r1 <= r0:
        raise Level1Error(f"{band.path}: requested area lies outside the band raster")
    return Window(c0, r0, c1 - c0, r1 - r0), bg.window(r0, c0, r1 - r0, c1 - c0)


#: GDAL block cache while a JPEG 2000 band is read (bytes; rasterio takes an int as bytes).
#: GDAL decodes the code-stream tiles of one read request in parallel (GDAL_NUM_THREADS)
#: only when the request's tiles fit in the block cache, and keeps them there: a whole
#: 10 m band read with the default cache (5 % of RAM) holds the band twice (+ 240 MB).
JP2_CACHE_BYTES = 128 * 2**20
#: JPEG 2000 bands are read in strips of whole tile rows of at most this size, so each
#: strip's tiles are decoded in parallel and the cache holds at most JP2_CACHE_BYTES.
JP2_STRIP_BYTES = 48 * 2**20


def _is_jp2(path: Path) -> bool:
    return str(path).lower().endswith((".jp2", ".j2k"))


def read_in_strips(ds, window: Window | None = None,
                   strip_bytes: int = JP2_STRIP_BYTES) -> np.ndarray:
    """Band 1 of an open dataset (``window`` or all), read in strips of whole block rows
    of at most ``strip_bytes`` (at least one block row) into one preallocated array.

    Same values as ``ds.read(1, window=window)``; with a JPEG 2000 file each strip's tiles
    are decoded in parallel while the block cache never holds more than a strip or two.
    """
    if window is None:
        c0, r0, w, h = 0, 0, ds.width, ds.height
    else:
        c0, r0 = int(window.col_off), int(window.row_off)
        w, h = int(window.width), int(window.height)
    bh, bw = ds.block_shapes[0]
    out = lasting_zeros((h, w), ds.dtypes[0])
    n_blk_x = (c0 + w - 1) // bw - c0 // bw + 1
    row_bytes = n_blk_x * bw * bh * out.itemsize
    k = max(1, int(strip_bytes) // max(row_bytes, 1))
    r = r0
    while r < r0 + h:
        r_end = min((r // bh + k) * bh, r0 + h)
        ds.read(1, window=Window(c0, r, w, r_end - r), out=out[r - r0:r_end - r0])
        r = r_end
    return out


def read_dn(level1: Level1, domain: str, window: Window | Grid | None = None,
            num_threads: int | None = None) -> np.ndarray:
    """DNs of one band at its native grid, uint8 (TM/ETM+) or uint16 (OLI, MSI).

    ``window``: None (whole band), a rasterio ``Window`` in the band's pixels, or a ``Grid``
    (e.g. a subset of ``level1.grid``) whose covering window is read (see ``band_window``).
    ``num_threads`` sets GDAL_NUM_THREADS for this read only (thread-local), so several bands
    can be read in a thread pool (GDAL releases the GIL); None leaves GDAL's setting.
    Tiled JPEG 2000 bands (Sentinel-2) are read in strips of tile rows with a bounded GDAL
    block cache (``read_in_strips``, ``JP2_CACHE_BYTES``): multithreaded decoding without a
    second copy of the band in the cache.
    GDAL errors (truncated or corrupt files) become a Level1Error naming the file.
    """
    try:
        band = level1.bands[domain]
    except KeyError:
        raise Level1Error(f"{level1.source}: band {domain} missing (the {level1.sensor} "
                          f"product has {', '.join(level1.bands)})") from None
    if isinstance(window, Grid):
        window = band_window(band, window)[0]
    env: dict = {} if num_threads is None else {"GDAL_NUM_THREADS": str(int(num_threads))}
    jp2 = _is_jp2(band.path)
    if jp2:
        env["GDAL_CACHEMAX"] = int(JP2_CACHE_BYTES)
    try:
        with rasterio.Env(**env):
            with rasterio.open(band.path) as ds:
                if (ds.width, ds.height) != (band.grid.nx, band.grid.ny):
                    raise Level1Error(f"{band.path}: size {ds.width}×{ds.height} changed "
                                      f"since the metadata was read ({band.grid.nx}×"
                                      f"{band.grid.ny})")
                if jp2 and ds.block_shapes[0][0] < ds.height:
                    data = read_in_strips(ds, window)
                else:
                    w = window if window is not None else Window(0, 0, ds.width, ds.height)
                    data = lasting_zeros((int(w.height), int(w.width)), ds.dtypes[0])
                    ds.read(1, window=window, out=data)
    except Level1Error:
        raise
    except (rasterio.errors.RasterioError, OSError) as exc:
        raise Level1Error(f"{band.path}: cannot be read: {gdal_message(exc)}") from None
    except Exception as exc:   # noqa: BLE001 - GDAL CPLE_* errors of a broken file
        if type(exc).__module__.startswith("rasterio"):
            raise Level1Error(f"{band.path}: cannot be read: {gdal_message(exc)}") from None
        raise
    if data.dtype not in (np.uint8, np.uint16):
        raise Level1Error(f"{band.path}: data type {data.dtype} (expected uint8 or uint16)")
    return data


def read_bands(level1: Level1, domains: Iterable[str] | None = None,
               window: Window | Grid | None = None, workers: int = 2,
               num_threads: int | None = 1) -> dict[str, np.ndarray]:
    """Read several bands concurrently (``workers`` threads, ``num_threads`` GDAL threads
    each); returns domain → DN array in internal band order."""
    domains = list(domains) if domains is not None else list(level1.bands)
    if workers <= 1 or len(domains) <= 1:
        out = {d: read_dn(level1, d, window, num_threads) for d in domains}
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futs = {d: pool.submit(read_dn, level1, d, window, num_threads) for d in domains}
            out = {d: futs[d].result() for d in domains}
    release_free_heap()
    return out
