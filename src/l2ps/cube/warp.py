"""Warping products onto the cube grid (spec 03 §2.4).

Every band of a :class:`~l2ps.products.Product` may have its own source grid (Sentinel-2
10/20 m); all are warped onto ONE target :class:`~l2ps.grid.Grid` that covers the whole
scene and is aligned with the tile grid, once per product (tiles are then integer
windows of it).

GDAL's warper is called through :class:`rasterio.vrt.WarpedVRT` with the approximate
transformer at a maximum error of :data:`TOLERANCE` = 1e-3 pixel (deviation from FORCE,
which uses the exact transformer, ``error_threshold = 0``; rasterio 1.4's
``WarpedVRT(tolerance=0)`` fails, and ``reproject()`` hard-codes 0.125 pixel). A 1e-3
pixel error is far below the resampling itself; it changes a nearest-neighbour pick only
where the exact source position lies within 1e-3 pixel of a pixel edge (measured: 0.03 %
of the pixels of a 3000² UTM→EPSG:3035 warp; none in the per-pixel pyproj test), and it
makes the warp ~17x faster than a 1e-9 threshold (which evaluates PROJ at every pixel:
8.1 s vs 0.47 s per 3000² pass; benchmarks/bench_cube.py).
Resampling: nearest/bilinear/cubic from ``Product.resampling``; QAI always nearest.
Destination initialised with the product's nodata; source and destination nodata = the
product's nodata; ``NUM_THREADS`` from the caller. Bands sharing a source grid are warped
together (the coordinate transformation is computed once per pass), in passes of at
most ``max_mem`` bytes of source (FORCE: 0.75 GB).

Source bands that already lie on the target's pixel grid (same CRS and pixel size,
integer offset: DO_REPROJ = FALSE) are copied with integer offsets, no resampling.

After warping (deviation from FORCE, spec 03 P4): QAI nodata pixels become exactly 1,
every other product is set to nodata where the warped QAI is nodata, and QAI is set to
nodata where all BOA/TOA bands are nodata, so that products and QAI agree pixel by pixel
at the scene edges (FORCE does not re-synchronise after warping).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioDeprecationWarning
from rasterio.vrt import WarpedVRT

from .. import qai as qai_mod
from ..errors import GridError
from ..grid import Grid
from ..products import Product

#: largest source bytes warped in one pass (FORCE's max_mem)
MAX_MEM = 805_306_368
#: maximum error (pixels) of GDAL's approximate transformer used by the warp
TOLERANCE = 1e-3
#: a threshold that amounts to exact evaluation at every pixel (FORCE), ~17x slower
EXACT_TOLERANCE = 1e-9

_RESAMPLING = {"nearest": Resampling.nearest, "bilinear": Resampling.bilinear,
               "cubic": Resampling.cubic, "NN": Resampling.nearest,
               "BL": Resampling.bilinear, "CC": Resampling.cubic}


def resampling_of(product: Product) -> Resampling:
    if product.name == "QAI":
        return Resampling.nearest
    try:
        return _RESAMPLING[product.resampling]
    except KeyError as e:
        raise GridError(f"product {product.name}: unknown resampling "
                        f"{product.resampling!r} (nearest, bilinear or cubic)") from e


def integer_offset(src: Grid, dst: Grid, tol: float = 1e-6) -> tuple[int, int] | None:
    """(row, col) of ``src``'s UL pixel in ``dst`` if ``src`` lies on ``dst``'s pixel grid
    (same CRS and pixel size, offset an integer number of pixels), else None."""
    if not (math.isclose(src.dx, dst.dx, rel_tol=1e-9) and
            math.isclose(src.dy, dst.dy, rel_tol=1e-9)):
        return None
    c = (src.x0 - dst.x0) / dst.dx
    r = (dst.y0 - src.y0) / dst.dy
    if abs(c - round(c)) > tol or abs(r - round(r)) > tol:
        return None
    if not src.same_crs(dst):
        return None
    return int(round(r)), int(round(c))


def paste(src: np.ndarray, row: int, col: int, dst: np.ndarray) -> None:
    """Copy ``src`` into ``dst`` with its UL pixel at (row, col); parts outside ``dst``
    are dropped (in place)."""
    h, w = src.shape[-2:]
    H, W = dst.shape[-2:]
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + h, H), min(col + w, W)
    if r1 <= r0 or c1 <= c0:
        return
    dst[..., r0:r1, c0:c1] = src[..., r0 - row:r1 - row, c0 - col:c1 - col]


def _warp_band(band: np.ndarray, src: Grid, dst: Grid, resampling: Resampling, nodata,
               num_threads: int) -> np.ndarray:
    """Warp one band on ``src`` onto ``dst`` (GDAL reads the numpy array in place: no copy
    of the source is made); returns a new (ny, nx) array of ``band``'s dtype."""
    from rasterio._io import MemoryDataset     # rasterio's own no-copy wrapper (1.4)
    out = np.empty((1, dst.ny, dst.nx), dtype=band.dtype)
    with warnings.catch_warnings():
        # WarpedVRT prefers read-only datasets; MemoryDataset is opened for writing
        warnings.simplefilter("ignore", category=RasterioDeprecationWarning)
        with MemoryDataset(np.ascontiguousarray(band), transform=src.transform,
                           crs=src.crs) as ds, WarpedVRT(
                ds, crs=dst.crs, transform=dst.transform, width=dst.nx, height=dst.ny,
                resampling=resampling, tolerance=TOLERANCE, src_nodata=nodata,
                nodata=nodata, init_dest_nodata=True, warp_mem_limit=MAX_MEM // 2**20,
                warp_extras={"NUM_THREADS": str(max(int(num_threads), 1))}) as vrt:
            vrt.read([1], out=out)
    return out[0]


def _warp_pass(bands: list[np.ndarray], src: Grid, dst: Grid, resampling: Resampling,
               nodata, num_threads: int) -> np.ndarray:
    """Warp bands sharing the grid ``src`` onto ``dst``; returns (n, ny, nx). Each band is
    warped on its own (see :func:`warp_product`)."""
    out = np.empty((len(bands), dst.ny, dst.nx), dtype=bands[0].dtype)
    for i, b in enumerate(bands):
        out[i] = _warp_band(b, src, dst, resampling, nodata, num_threads)
    return out


def warp_product(product: Product, target: Grid, *, num_threads: int = 1,
                 max_mem: int = MAX_MEM, consume: bool = False) -> Product:
    """``product`` with every band on ``target`` (same dtype; QAI nearest-neighbour and
    normalised: every nodata pixel is exactly 1).

    Band by band: GDAL reads each source band in place and writes one target band, so the
    memory beyond the source and the result is one warped band (``max_mem`` is GDAL's
    warp memory limit per chunk). Each band's nodata is its own (a pass over several bands
    made GDAL treat a pixel as nodata only where every band of the pass was nodata, so a
    band's own nodata value could enter the cubic kernel as a value). ``consume=True``
    drops each source band from ``product.bands`` (sets it to None, in place) once it is
    warped, so that its memory is freed as the warped bands are made (the caller must not
    need the source afterwards)."""
    nodata = product.nodata
    resampling = resampling_of(product)
    out_bands: list[np.ndarray | None] = [None] * product.nbands
    grids = list(product.grids)
    for i, g in enumerate(grids):
        band = product.bands[i]
        if band is None:
            raise GridError(f"product {product.name}: band {i + 1} was already consumed")
        off = integer_offset(g, target)
        if off is not None:
            b = np.full(target.shape, nodata, dtype=band.dtype)
            paste(band, off[0], off[1], b)
        else:
            b = _warp_band(band, g, target, resampling, nodata, num_threads)
        out_bands[i] = b
        del band
        if consume and isinstance(product.bands, list):
            product.bands[i] = None
    if product.name == "QAI":
        for b in out_bands:
            qai_mod.normalize_nodata(b)
    return replace(product, bands=out_bands, grids=[target] * product.nbands)


def resync_nodata(products: list[Product]) -> None:
    """Make products and QAI agree on nodata after warping (in place; deviation from
    FORCE, spec 03 P4): every product is nodata where QAI is nodata, and QAI is nodata (1)
    where every BOA/TOA band is nodata."""
    qai = next((p for p in products if p.name == "QAI"), None)
    if qai is None:
        return
    q = qai.bands[0]
    refl = next((p for p in products if p.name in ("BOA", "TOA")), None)
    if refl is not None and refl.nbands:
        all_nd = np.ones(q.shape, dtype=bool)
        for b in refl.bands:
            all_nd &= b == refl.nodata
        q[all_nd] = qai_mod.QAI_NODATA
    off = qai_mod.is_nodata(q)
    for p in products:
        if p.name in ("QAI", "OVV"):
            continue
        for b in p.bands:
            if b.shape == q.shape:
                b[off] = p.nodata


def warp_products(products: list[Product], target: Grid, *, num_threads: int = 1,
                  resync: bool = True, max_mem: int = MAX_MEM,
                  consume: bool = False) -> list[Product]:
    """Warp every product onto ``target`` (band by band), then re-synchronise nodata
    between QAI and the other products (see module docstring). ``consume``: see
    :func:`warp_product`."""
    with rasterio.Env(GDAL_NUM_THREADS=str(max(int(num_threads), 1))):
        out = [warp_product(p, target, num_threads=num_threads, max_mem=max_mem,
                            consume=consume) for p in products]
    if resync:
        resync_nodata(out)
    return out
