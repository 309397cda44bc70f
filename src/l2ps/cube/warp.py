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

Lazy warping (:func:`warp_products_lazy`) resamples windows of all bands of a product
that share a source grid in one pass (:func:`_resample_multi`: source positions and
weights once per target pixel, the QAI resync inside the kernel), bit-identical to
:func:`_resample` band by band.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import replace

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioDeprecationWarning
from rasterio.vrt import WarpedVRT
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic

from .. import qai as qai_mod
from ..errors import GridError
from ..grid import Grid
from ..memory import lasting_zeros
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


def gdal_warp_band(band: np.ndarray, src: Grid, dst: Grid, resampling: Resampling, nodata,
                   num_threads: int = 1, tolerance: float = TOLERANCE) -> np.ndarray:
    """Warp one band with GDAL's warper (the reference for :func:`_warp_band`; used by the
    tests and benchmarks/bench_cube.py); GDAL reads the numpy array in place."""
    from rasterio._io import MemoryDataset     # rasterio's own no-copy wrapper (1.4)
    out = np.empty((1, dst.ny, dst.nx), dtype=band.dtype)
    with warnings.catch_warnings():
        # WarpedVRT prefers read-only datasets; MemoryDataset is opened for writing
        warnings.simplefilter("ignore", category=RasterioDeprecationWarning)
        with MemoryDataset(np.ascontiguousarray(band), transform=src.transform,
                           crs=src.crs) as ds, WarpedVRT(
                ds, crs=dst.crs, transform=dst.transform, width=dst.nx, height=dst.ny,
                resampling=resampling, tolerance=tolerance, src_nodata=nodata,
                nodata=nodata, init_dest_nodata=True, warp_mem_limit=MAX_MEM // 2**20,
                warp_extras={"NUM_THREADS": str(max(int(num_threads), 1))}) as vrt:
            vrt.read([1], out=out)
    return out[0]


# ------------------------------------------------------------------ own warper
#: target pixels between exact PROJ evaluations of the coordinate mesh (refined until the
#: interpolation error is below :data:`TOLERANCE`)
MESH_STEP = 32
_NEAREST, _BILINEAR, _CUBIC = 0, 1, 2
_KIND = {Resampling.nearest: _NEAREST, Resampling.bilinear: _BILINEAR,
         Resampling.cubic: _CUBIC}


def _mesh_nodes(n: int, step: int) -> np.ndarray:
    """Target pixel indices of the mesh nodes along one axis: 0, step, ..., one node
    beyond pixel n-1 (so that every pixel has a node on either side)."""
    return np.arange((max(n, 1) - 1) // step + 2, dtype=np.float64) * step


def _exact_source_coords(src: Grid, dst: Grid, rows: np.ndarray, cols: np.ndarray,
                         transformer) -> tuple[np.ndarray, np.ndarray]:
    """Continuous source pixel coordinates (col u, row v; pixel corners at integers) of
    the centres of target pixels ``rows`` x ``cols`` (2-D outer product), by PROJ; NaN
    where the transformation fails."""
    x = dst.x0 + (cols + 0.5) * dst.dx
    y = dst.y0 - (rows + 0.5) * dst.dy
    xx, yy = np.meshgrid(x, y)
    if transformer is None:
        sx, sy = xx, yy
    else:
        sx, sy = transformer.transform(xx, yy, errcheck=False)
        sx, sy = np.asarray(sx, np.float64), np.asarray(sy, np.float64)
    u = (sx - src.x0) / src.dx
    v = (src.y0 - sy) / src.dy
    bad = ~(np.isfinite(u) & np.isfinite(v))
    u[bad] = np.nan
    v[bad] = np.nan
    return u, v


def source_mesh(src: Grid, dst: Grid, step: int = MESH_STEP,
                tolerance: float = TOLERANCE) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Source pixel coordinates (u, v) of the target pixel centres at every ``step``-th
    row and column of ``dst`` (nodes anchored at target pixel (0, 0), so that any window
    of the target is resampled exactly as in the whole), evaluated exactly with PROJ.

    The error of bilinear interpolation between the nodes is checked at the centre of
    every mesh cell and at the midpoints of its edges against an exact evaluation; while
    it exceeds ``tolerance`` (source pixels) the step is halved (to 1 = exact at every
    pixel). Returns (u, v, step, max error found)."""
    from pyproj import Transformer
    t = None if src.same_crs(dst) else Transformer.from_crs(dst.crs_wkt, src.crs_wkt,
                                                             always_xy=True)
    while True:
        rows, cols = _mesh_nodes(dst.ny, step), _mesh_nodes(dst.nx, step)
        u, v = _exact_source_coords(src, dst, rows, cols, t)
        if step == 1 or t is None:
            return u, v, step, 0.0
        h = step / 2.0
        err = 0.0
        # cell centres and the midpoints of horizontal and vertical cell edges
        for ro, co in ((h, h), (0.0, h), (h, 0.0)):
            rr = rows[:-1] + ro if ro else rows
            cc = cols[:-1] + co if co else cols
            eu, ev = _exact_source_coords(src, dst, rr, cc, t)
            if ro and co:
                iu = 0.25 * (u[:-1, :-1] + u[1:, :-1] + u[:-1, 1:] + u[1:, 1:])
                iv = 0.25 * (v[:-1, :-1] + v[1:, :-1] + v[:-1, 1:] + v[1:, 1:])
            elif co:
                iu, iv = 0.5 * (u[:, :-1] + u[:, 1:]), 0.5 * (v[:, :-1] + v[:, 1:])
            else:
                iu, iv = 0.5 * (u[:-1] + u[1:]), 0.5 * (v[:-1] + v[1:])
            d = np.hypot(eu - iu, ev - iv)
            # only where the source is near: far outside, errors do not matter
            near = ((eu > -4) & (eu < src.nx + 4) & (ev > -4) & (ev < src.ny + 4))
            if d.size and np.any(near):
                e = np.nanmax(np.where(near, d, 0.0))
                err = max(err, float(e) if np.isfinite(e) else np.inf)
        if err <= tolerance:
            return u, v, step, err
        step = max(step // 2, 1)


@njit(cache=True)
def _cubic_w(t: float) -> float:
    """Cubic convolution kernel, a = -0.5 (Keys 1981; GDAL's "cubic")."""
    t = abs(t)
    if t <= 1.0:
        return (1.5 * t - 2.5) * t * t + 1.0
    if t < 2.0:
        return ((-0.5 * t + 2.5) * t - 4.0) * t + 2.0
    return 0.0


@njit(cache=True, inline="always")
def _mesh_row(mu, mv, a, b, fa, inv):
    """Source position (uL, vL) at the left node column ``b`` of mesh cell row ``a``,
    ``fa`` of the way down, and its change (du, dv) per target pixel along the row
    (``inv`` = 1 / mesh step): u and v are linear in the column inside a cell."""
    uL = (1.0 - fa) * mu[a, b] + fa * mu[a + 1, b]
    uR = (1.0 - fa) * mu[a, b + 1] + fa * mu[a + 1, b + 1]
    vL = (1.0 - fa) * mv[a, b] + fa * mv[a + 1, b]
    vR = (1.0 - fa) * mv[a, b + 1] + fa * mv[a + 1, b + 1]
    return uL, (uR - uL) * inv, vL, (vR - vL) * inv


@njit(cache=True, inline="always")
def _cubic4(f: float):
    """The four cubic-convolution weights (a = -0.5) of the taps at offsets -1, 0, 1, 2
    for the fractional position ``f`` in [0, 1) (= :func:`_cubic_w` of 1 + f, f, 1 - f,
    2 - f)."""
    return (((-0.5 * f + 1.0) * f - 0.5) * f, (1.5 * f - 2.5) * f * f + 1.0,
            ((-1.5 * f + 2.0) * f + 0.5) * f, (0.5 * f - 0.5) * f * f)


@njit(cache=True)
def _finish(acc, nodata, has_nodata, lo, hi):
    """Rounded half up, clamped to [lo, hi], moved off the nodata value by one (GDAL)."""
    val = np.floor(acc + 0.5)
    if val < lo:
        val = lo
    elif val > hi:
        val = hi
    if has_nodata and val == nodata:
        val = nodata + 1.0 if nodata + 1.0 <= hi else nodata - 1.0
    return val


@njit(cache=True)
def _weighted(src, ox, oy, wx, wy, nx_, ny_, nodata, has_nodata):
    """(sum of weight x value, sum of weights) over the valid pixels of the window
    ``nx_`` x ``ny_`` at (ox, oy) of ``src``; pixels outside ``src`` are invalid."""
    sny, snx = src.shape
    acc = 0.0
    wsum = 0.0
    for p in range(ny_):
        yy = oy + p
        if yy < 0 or yy >= sny or wy[p] == 0.0:
            continue
        for q in range(nx_):
            xx = ox + q
            w = wx[q] * wy[p]
            if xx < 0 or xx >= snx or w == 0.0:
                continue
            s = src[yy, xx]
            if has_nodata and s == nodata:
                continue
            acc += w * s
            wsum += w
    return acc, wsum


@njit(cache=True, parallel=True)
def _resample(src, mu, mv, step, r0, c0, kind, nodata, has_nodata, lo, hi, sx, sy,
              out):  # pragma: no cover
    """Resample ``src`` (int16/uint16) into ``out`` = rows r0.., cols c0.. of the target.

    Source positions: linear between the mesh nodes (mu, mv; spacing ``step``, anchored
    at target pixel (0, 0), so a window gives the same values as the whole). A target
    pixel is nodata when its source position lies outside the source or on a nodata
    source pixel. Otherwise (GDAL's warper with a source nodata value): nearest takes
    that pixel; bilinear uses the valid pixels of its 2x2 neighbourhood with renormalised
    weights; cubic (a = -0.5) uses the 4x4 neighbourhood and falls back to bilinear when
    one of those 16 pixels is invalid or outside. When downsampling (scale ``sx``/``sy``
    < 0.95), bilinear and cubic kernels are widened by 1/scale and renormalised over the
    valid pixels. Results are rounded half up, clamped, and moved off the nodata value."""
    ny, nx = out.shape
    sny, snx = src.shape
    inv = 1.0 / step
    nrb = (ny + 31) // 32
    wide = kind != 0 and (sx < 0.95 or sy < 0.95)
    rad = 1.0 if kind == 1 else 2.0
    rx = int(np.ceil(rad / sx)) if wide else 2
    ry = int(np.ceil(rad / sy)) if wide else 2
    for rb in prange(nrb):
        wx = np.empty(max(2 * rx, 4))
        wy = np.empty(max(2 * ry, 4))
        for i in range(rb * 32, min(ny, rb * 32 + 32)):
            gi = i + r0
            a = gi // step
            fa = (gi - a * step) * inv
            j = 0
            while j < nx:
                gj = j + c0
                b = gj // step
                # along this row inside mesh cell b, u and v are linear in the column
                uL, du, vL, dv = _mesh_row(mu, mv, a, b, fa, inv)
                jend = min(nx, (b + 1) * step - c0)
                for jj in range(j, jend):
                    k = jj + c0 - b * step
                    u = uL + k * du
                    v = vL + k * dv
                    out[i, jj] = nodata
                    if not (u >= 0.0 and u < snx and v >= 0.0 and v < sny):
                        continue
                    c = src[int(v), int(u)]
                    if has_nodata and c == nodata:
                        continue
                    if kind == 0:
                        out[i, jj] = c
                        continue
                    x = u - 0.5
                    y = v - 0.5
                    ix = int(np.floor(x))
                    iy = int(np.floor(y))
                    fx = x - ix
                    fy = y - iy
                    if wide:
                        for t in range(2 * rx):
                            d = (t - rx + 1 - fx) * sx
                            wx[t] = max(1.0 - abs(d), 0.0) if kind == 1 else _cubic_w(d)
                        for t in range(2 * ry):
                            d = (t - ry + 1 - fy) * sy
                            wy[t] = max(1.0 - abs(d), 0.0) if kind == 1 else _cubic_w(d)
                        acc, wsum = _weighted(src, ix - rx + 1, iy - ry + 1, wx, wy,
                                              2 * rx, 2 * ry, nodata, has_nodata)
                        if abs(wsum) >= 1e-5:
                            out[i, jj] = _finish(acc / wsum, nodata, has_nodata, lo, hi)
                        continue
                    if kind == 2 and ix >= 1 and iy >= 1 and ix + 2 < snx and iy + 2 < sny:
                        # interior 4x4: plain cubic unless a pixel is nodata
                        w0, w1, w2, w3 = _cubic4(fx)
                        wy[0], wy[1], wy[2], wy[3] = _cubic4(fy)
                        acc = 0.0
                        ok = True
                        for p in range(4):
                            yy = iy - 1 + p
                            s0 = src[yy, ix - 1]
                            s1 = src[yy, ix]
                            s2 = src[yy, ix + 1]
                            s3 = src[yy, ix + 2]
                            if has_nodata and (s0 == nodata or s1 == nodata or
                                               s2 == nodata or s3 == nodata):
                                ok = False
                                break
                            acc += wy[p] * (w0 * s0 + w1 * s1 + w2 * s2 + w3 * s3)
                        if ok:
                            out[i, jj] = _finish(acc, nodata, has_nodata, lo, hi)
                            continue
                    # bilinear (also cubic's fallback near edges and nodata)
                    wx[0] = 1.0 - fx
                    wx[1] = fx
                    wy[0] = 1.0 - fy
                    wy[1] = fy
                    acc, wsum = _weighted(src, ix, iy, wx, wy, 2, 2, nodata, has_nodata)
                    if abs(wsum) < 1e-5:
                        continue
                    if wsum != 1.0:
                        acc = acc / wsum
                    out[i, jj] = _finish(acc, nodata, has_nodata, lo, hi)
                j = jend


#: target pixels of one row whose positions and weights are computed together before
#: they are applied to every band (:func:`_resample_multi`)
_CHUNK = 256
#: largest float64 source box (elements) converted per chunk and band
_BOXMAX = 8192


@njit(cache=True, inline="always")
def _fin(acc, nodata, has_nodata, lo, hi, repl):
    """:func:`_finish` without branches (same value): floor(acc + 0.5) clamped to
    [lo, hi], ``repl`` where it equals nodata."""
    val = np.floor(acc + 0.5)
    val = lo if val < lo else val
    val = hi if val > hi else val
    if has_nodata:
        val = repl if val == nodata else val
    return val


@intrinsic
def _cubic16(typingctx, buf, f, bwid, cw, t):
    """sum_p cw[t, 4 + p] * (((cw[t,0]*b[p,0] + cw[t,1]*b[p,1]) + cw[t,2]*b[p,2]) + cw[t,3]*b[p,3])
    summed over p = 0..3 in order, b[p, q] = buf[f + p * bwid + q]; 4-wide vectors."""
    sig = types.float64(buf, f, bwid, cw, t)

    def codegen(context, builder, signature, args):
        bufv, fv, bwv, cwv, tv = args
        abuf = context.make_array(signature.args[0])(context, builder, bufv)
        W, WY = _cubic_weights(context, builder, signature.args[3], cwv, tv)
        rows = []
        idx = fv
        for p in range(4):
            rows.append(_load4d(builder, abuf.data, idx))
            idx = builder.add(idx, bwv)
        return _cubic_rows(builder, W, WY, rows)
    return sig, codegen


def _load4d(builder, ptr, idx):
    """<4 x double> at ptr[idx] (unaligned)."""
    p = builder.gep(ptr, [idx], inbounds=True)
    return builder.load(builder.bitcast(p, ir.VectorType(ir.DoubleType(), 4).as_pointer()),
                        align=8)


def _cubic_weights(context, builder, sig_cw, cwv, tv):
    """(cw[t, 0:4], cw[t, 4:8]) of the C-contiguous (n, 8) float64 array as <4 x double>."""
    acw = context.make_array(sig_cw)(context, builder, cwv)
    t8 = builder.mul(tv, ir.Constant(ir.IntType(64), 8))
    return (_load4d(builder, acw.data, t8),
            _load4d(builder, acw.data, builder.add(t8, ir.Constant(ir.IntType(64), 4))))


def _int_rows(context, builder, sig_arr, arr, f, step):
    """The 4 rows of 4 integers at flat offsets f, f + step, f + 2 step, f + 3 step of the
    1-D integer array ``arr`` as LLVM <4 x iN> vectors (unaligned loads)."""
    a = context.make_array(sig_arr)(context, builder, arr)
    et = context.get_data_type(sig_arr.dtype)
    vt = ir.VectorType(et, 4)
    rows = []
    idx = f
    for _ in range(4):
        p = builder.gep(a.data, [idx], inbounds=True)
        rows.append(builder.load(builder.bitcast(p, vt.as_pointer()),
                                 align=sig_arr.dtype.bitwidth // 8))
        idx = builder.add(idx, step)
    return rows


def _cubic_rows(builder, W, WY, rows):
    """The float64 operations of :func:`_cubic16` on 4 rows of 4 taps (<4 x double>)."""
    M = [builder.fmul(W, r) for r in rows]

    def shuf(a, b, mask):
        return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), 4), mask))
    T01 = shuf(M[0], M[1], [0, 4, 1, 5])
    T23 = shuf(M[2], M[3], [0, 4, 1, 5])
    U01 = shuf(M[0], M[1], [2, 6, 3, 7])
    U23 = shuf(M[2], M[3], [2, 6, 3, 7])
    Q0 = shuf(T01, T23, [0, 1, 4, 5])
    Q1 = shuf(T01, T23, [2, 3, 6, 7])
    Q2 = shuf(U01, U23, [0, 1, 4, 5])
    Q3 = shuf(U01, U23, [2, 3, 6, 7])
    R = builder.fadd(builder.fadd(builder.fadd(Q0, Q1), Q2), Q3)
    Z = builder.fmul(WY, R)
    acc = builder.extract_element(Z, ir.Constant(ir.IntType(32), 0))
    for k in (1, 2, 3):
        acc = builder.fadd(acc, builder.extract_element(Z, ir.Constant(ir.IntType(32), k)))
    return acc


@intrinsic
def _cubic16i(typingctx, src, f, snx, cw, t, ndi):
    """:func:`_cubic16` read from the integer source itself (1-D, flat offset ``f`` of the
    upper-left tap, rows of ``snx``; each row of 4 taps one vector load converted exactly
    to float64, the same float64 operations in the same order), and whether a tap equals
    ``ndi`` (a value of the source's dtype): returns (sum, 0 or 1)."""
    if not (isinstance(src, types.Array) and isinstance(src.dtype, types.Integer)):
        return None
    sig = types.Tuple((types.float64, types.uint8))(src, f, snx, cw, t, ndi)

    def codegen(context, builder, signature, args):
        srcv, fv, sv, cwv, tv, nv = args
        v4 = ir.VectorType(ir.DoubleType(), 4)
        irows = _int_rows(context, builder, signature.args[0], srcv, fv, sv)
        conv = builder.sitofp if signature.args[0].dtype.signed else builder.uitofp
        W, WY = _cubic_weights(context, builder, signature.args[3], cwv, tv)
        acc = _cubic_rows(builder, W, WY, [conv(r, v4) for r in irows])
        et = context.get_data_type(signature.args[0].dtype)
        nd = builder.trunc(nv, et) if et.width < nv.type.width else nv
        splat = builder.insert_element(ir.Constant(ir.VectorType(et, 4), ir.Undefined), nd,
                                       ir.Constant(ir.IntType(32), 0))
        splat = builder.shuffle_vector(splat, splat,
                                       ir.Constant(ir.VectorType(ir.IntType(32), 4), [0] * 4))
        hit = None
        for r in irows:
            c = builder.icmp_signed("==", r, splat)
            hit = c if hit is None else builder.or_(hit, c)
        m = builder.bitcast(hit, ir.IntType(4))
        flag = builder.zext(builder.icmp_unsigned("!=", m, ir.Constant(ir.IntType(4), 0)),
                            ir.IntType(8))
        return context.make_tuple(builder, signature.return_type, [acc, flag])
    return sig, codegen


@njit(cache=True, nogil=True, error_model="numpy")
def _src_cubic(sf, fl, cw, n, snx, nodata, has_nodata, lo, hi, repl, orow, base, bad, ndi,
               accs):
    """Plain cubic of the 4x4 at flat offsets fl[t] (upper-left tap) of the integer
    source ``sf`` (rows of ``snx``) for t < n into orow[base + t], 4-wide without a
    float64 copy of the source (:func:`_cubic16i`); bad[t] = 1 where a tap equals ``ndi``
    (the stored value is then wrong), else 0."""
    for t in range(n):
        acc, hit = _cubic16i(sf, fl[t], snx, cw, t, ndi)
        accs[t] = acc
        bad[t] = hit
    o = orow[base:base + n]
    for t in range(n):                          # vectorised
        o[t] = _fin(accs[t], nodata, has_nodata, lo, hi, repl)


@njit(cache=True, nogil=True, error_model="numpy")
def _box_cubic(buf, bwid, fb, cw, n, nodata, has_nodata, lo, hi, repl, orow, base, accs):
    """Plain cubic of the 4x4 at offsets fb[t] (upper left tap) of the float64 box
    ``buf`` (rows of ``bwid``) with the weights cw[t] for t < n into orow[base + t] (no
    nodata taps), by :func:`_cubic16`."""
    for t in range(n):
        accs[t] = _cubic16(buf, fb[t], bwid, cw, t)
    o = orow[base:base + n]
    for t in range(n):                          # vectorised
        o[t] = _fin(accs[t], nodata, has_nodata, lo, hi, repl)


@njit(cache=True, nogil=True, error_model="numpy")
def _box_bilinear(buf, bwid, fb, bw, n, nodata, has_nodata, lo, hi, repl, orow, base, bad,
                  accs):
    """Bilinear of the 2x2 at offsets fb[t] of the float64 box ``buf`` (no nodata taps)
    with the weights bw[0..3, t] and their sum bw[4, t] into orow[base + t]; bad[t] = 1
    where the sum of the weights is ~0 (the stored value is then wrong)."""
    u1 = np.uint64(1)
    s1 = np.uint64(bwid)
    for t in range(n):
        f = fb[t]
        acc = (bw[0, t] * buf[f] + bw[1, t] * buf[f + u1] + bw[2, t] * buf[f + s1] +
               bw[3, t] * buf[f + s1 + u1])
        accs[t] = acc
    o = orow[base:base + n]
    for t in range(n):                          # vectorised
        wsum = bw[4, t]
        acc = accs[t]
        acc = acc if wsum == 1.0 else acc / wsum
        bad[t] = np.uint8(abs(wsum) < 1e-5)
        o[t] = _fin(acc, nodata, has_nodata, lo, hi, repl)


@njit(cache=True, nogil=True, error_model="numpy")
def _fast_bilinear(sf, fl, bw, n, snx, nodata, has_nodata, lo, hi, repl, orow, base, bad,
                   chk, ndi):
    """Bilinear of the 2x2 at flat offsets fl[t] of the int source ``sf`` with the
    weights bw[0..3, t] (products wx * wy) and their sum bw[4, t], for t < n, into
    orow[base + t]; bad[t] = 1 where the sum of the weights is ~0 or (with ``chk``) a tap
    equals ``ndi`` (the stored value is then wrong)."""
    u1 = np.uint64(1)
    for t in range(n):
        f = fl[t]
        a0 = sf[f]
        a1 = sf[f + u1]
        b0 = sf[f + snx]
        b1 = sf[f + snx + u1]
        acc = bw[0, t] * a0 + bw[1, t] * a1 + bw[2, t] * b0 + bw[3, t] * b1
        wsum = bw[4, t]
        acc = acc if wsum == 1.0 else acc / wsum
        orow[base + t] = _fin(acc, nodata, has_nodata, lo, hi, repl)
        m = abs(wsum) < 1e-5
        if chk:
            m = m | (a0 == ndi) | (a1 == ndi) | (b0 == ndi) | (b1 == ndi)
        bad[t] = np.uint8(m)


@njit(cache=True, nogil=True)
def _load_box(src, r0, c0, bh, bwid, buf, chk, ndi):
    """buf = the float64 values of src[r0:r0 + bh, c0:c0 + bwid] (rows of ``bwid``);
    returns the number of them equal to ``ndi`` (0 unless ``chk``)."""
    cnt = 0
    for r in range(bh):
        row = src[r0 + r, c0:c0 + bwid]
        o = buf[r * bwid:(r + 1) * bwid]
        if chk:
            for c in range(bwid):
                v = row[c]
                o[c] = v
                cnt += v == ndi
        else:
            for c in range(bwid):
                o[c] = row[c]
    return cnt


@njit(cache=True, nogil=True, error_model="numpy")
def _fast_nearest(sf, fl, okv, n, nodata, has_nodata, ndv, orow, base):
    """Nearest: orow[base + t] = sf[fl[t]] where okv[t] and it is not nodata, else
    nodata (``ndv``: nodata in the output's dtype)."""
    for t in range(n):
        c = sf[fl[t]]
        good = okv[t] != 0
        if has_nodata:
            good = good & (c != nodata)
        orow[base + t] = c if good else ndv


@njit(cache=True, parallel=True, nogil=True)
def _resample_multi(srcs, mu, mv, step, r0, c0, kind, nodata, has_nodata, lo, hi, sx, sy,
                    qai, qr, qc, use_qai, ny, nx, out, bidx, orow, ocol, srow0,
                    sny):  # pragma: no cover
    """Several bands on the same source grid at once (``srcs``: a typed list of equally
    shaped 2-D arrays; ``out``: (bands, rows, cols)), band by band bit-identical to
    :func:`_resample` (target rows r0.., cols c0.., ``ny`` x ``nx`` pixels; band ``k``
    goes to ``out[bidx[k], orow:orow + ny, ocol:ocol + nx]``). ``use_qai``: every band is
    nodata where ``qai`` (the warped QAI; pixel (i, j) of ``out`` is its pixel (i + qr,
    j + qc)) has its nodata bit set (resync, spec 03 P4). ``srcs`` may be a block of rows
    of the source: its row 0 is source row ``srow0`` of a source of ``sny`` rows (every
    row a target pixel of the window reads must be in the block: :func:`source_window`).

    Per chunk of :data:`_CHUNK` pixels of a target row the positions and weights are
    computed once for all bands, with a class per pixel (1 = "fast": nearest inside and
    not masked; bilinear with its 2x2, cubic with its 4x4 inside the source) and the
    bounding box of the fast pixels' taps. Per band: nearest in one branch-free loop;
    bilinear/cubic convert the box (~8 x 260 pixels between grids of about the same
    orientation) to float64 once while counting its nodata pixels; without nodata in it
    the fast pixels need no nodata tests (cubic with 4-wide vectors, :func:`_cubic16`).
    Otherwise, and when the box exceeds :data:`_BOXMAX` (grids rotated by more than ~6
    degrees, e.g. a UTM tile in a continental cube), cubic reads the integer taps as
    4-wide vectors and flags a nodata tap per pixel (:func:`_src_cubic`), bilinear reads
    them one by one (:func:`_fast_bilinear`). The general per-pixel code
    handles what is left (outside, QAI-masked, edges, near nodata, the widened
    downsampling path). Per output pixel the float64 operations are those of
    :func:`_resample` in the same order (only the sign of an intermediate zero may differ,
    which floor(acc + 0.5) cannot see): 3.4x less CPU than the per-pixel kernel for
    cubic, 2.7x bilinear, 1.5x nearest (10 bands of a 10980² tile). Cubic per pixel and
    band, one thread: 3.4 ns with grids 1 degree apart (box), 5.3 ns at 8.6 degrees
    (integer taps; 8.9 ns when these were read one by one)."""
    nb = len(srcs)
    bny, snx = srcs[0].shape                    # bny: rows of the block
    inv = 1.0 / step
    nrb = (ny + 31) // 32
    wide = kind != 0 and (sx < 0.95 or sy < 0.95)
    rad = 1.0 if kind == 1 else 2.0
    rx = int(np.ceil(rad / sx)) if wide else 2
    ry = int(np.ceil(rad / sy)) if wide else 2
    nwx = max(2 * rx, 4)
    nwy = max(2 * ry, 4)
    # fast paths read at offset 0 for pixels they do not handle: the block must hold a
    # 4x4 (cubic), 2x2 (bilinear) or one pixel
    need = 4 if kind == 2 else (2 if kind == 1 else 1)
    fast = (not wide) and bny >= need and snx >= need
    ndbuf = np.empty(1, dtype=out.dtype)
    ndbuf[0] = nodata
    ndv = ndbuf[0]
    repl = nodata + 1.0 if nodata + 1.0 <= hi else nodata - 1.0
    snxu = np.uint64(snx)
    # nodata tests on the integer taps: only a value of the source's dtype can be equal
    chk = has_nodata and nodata == np.floor(nodata) and lo <= nodata <= hi
    ndi = np.int64(nodata) if chk else np.int64(0)
    off = 1 if kind == 2 else 0                 # first tap relative to (ix, iy)
    ext = 2 if kind == 2 else 1                 # last tap relative to (ix, iy)
    for rb in prange(nrb):
        okv = np.zeros(_CHUNK, dtype=np.uint8)
        cls = np.zeros(_CHUNK, dtype=np.uint8)     # 1: handled by the fast loop
        bad = np.zeros(_CHUNK, dtype=np.uint8)
        fl = np.zeros(_CHUNK, dtype=np.uint64)
        cu = np.empty(_CHUNK, dtype=np.int64)
        cv = np.empty(_CHUNK, dtype=np.int64)
        ixs = np.empty(_CHUNK, dtype=np.int64)
        iys = np.empty(_CHUNK, dtype=np.int64)
        inner = np.zeros(_CHUNK, dtype=np.bool_)
        cw = np.zeros((_CHUNK, 8))                 # cubic weights w0..w3 (x), wy0..wy3
        bw = np.zeros((5, _CHUNK))                 # bilinear products and their sum
        wxs = np.empty((_CHUNK, nwx))              # bilinear (2) or widened weights
        wys = np.empty((_CHUNK, nwy))
        fxs = np.empty(_CHUNK)                     # fractions (not wide)
        fys = np.empty(_CHUNK)
        fb = np.zeros(_CHUNK, dtype=np.uint64)
        sl = np.empty(_CHUNK, dtype=np.int64)      # pixels the fast loops do not handle
        sl2 = np.empty(_CHUNK, dtype=np.int64)
        buf = np.empty(_BOXMAX)
        accs = np.empty(_CHUNK)
        for i in range(rb * 32, min(ny, rb * 32 + 32)):
            gi = i + r0
            a = gi // step
            fa = (gi - a * step) * inv
            for j0 in range(0, nx, _CHUNK):
                j1 = min(nx, j0 + _CHUNK)
                n = j1 - j0
                bxmin = snx
                bxmax = -1
                bymin = sny
                bymax = -1
                # ---- positions and weights of the chunk (shared by all bands)
                j = j0
                while j < j1:
                    gj = j + c0
                    b = gj // step
                    uL, du, vL, dv = _mesh_row(mu, mv, a, b, fa, inv)
                    jend = min(j1, (b + 1) * step - c0)
                    for jj in range(j, jend):
                        t = jj - j0
                        k = jj + c0 - b * step
                        u = uL + k * du
                        v = vL + k * dv
                        okt = np.uint8(0)
                        clst = np.uint8(0)
                        if ((not use_qai or (qai[i + qr, jj + qc] & 1) == 0) and
                                u >= 0.0 and u < snx and v >= 0.0 and v < sny):
                            okt = np.uint8(1)
                            cut = int(u)
                            cvt = int(v)
                            if kind == 0 and fast:
                                fl[t] = np.uint64((cvt - srow0) * snx + cut)
                            else:
                                cu[t] = cut
                                cv[t] = cvt
                            if kind != 0:
                                x = u - 0.5
                                y = v - 0.5
                                ix = int(np.floor(x))
                                iy = int(np.floor(y))
                                fx = x - ix
                                fy = y - iy
                                ixs[t] = ix
                                iys[t] = iy
                                if wide:
                                    for q in range(2 * rx):
                                        d = (q - rx + 1 - fx) * sx
                                        wxs[t, q] = max(1.0 - abs(d), 0.0) if kind == 1 else _cubic_w(d)
                                    for q in range(2 * ry):
                                        d = (q - ry + 1 - fy) * sy
                                        wys[t, q] = max(1.0 - abs(d), 0.0) if kind == 1 else _cubic_w(d)
                                else:
                                    fxs[t] = fx
                                    fys[t] = fy
                                    if kind == 2:
                                        inn = (ix >= 1 and iy >= 1 and ix + 2 < snx and
                                               iy + 2 < sny)
                                        inner[t] = inn
                                        if inn:
                                            cw[t, 0], cw[t, 1], cw[t, 2], cw[t, 3] = _cubic4(fx)
                                            cw[t, 4], cw[t, 5], cw[t, 6], cw[t, 7] = _cubic4(fy)
                                            if fast:
                                                clst = np.uint8(1)
                                    elif (fast and ix >= 0 and iy >= 0 and ix + 1 < snx and
                                          iy + 1 < sny):
                                        clst = np.uint8(1)
                                        wx0 = 1.0 - fx
                                        wy0 = 1.0 - fy
                                        p00 = wx0 * wy0
                                        p01 = fx * wy0
                                        p10 = wx0 * fy
                                        p11 = fx * fy
                                        bw[0, t] = p00
                                        bw[1, t] = p01
                                        bw[2, t] = p10
                                        bw[3, t] = p11
                                        bw[4, t] = p00 + p01 + p10 + p11
                                    if clst == 1:
                                        bxmin = min(bxmin, ix)
                                        bxmax = max(bxmax, ix)
                                        bymin = min(bymin, iy)
                                        bymax = max(bymax, iy)
                        elif kind == 0:
                            fl[t] = 0
                        okv[t] = okt
                        if kind != 0:
                            cls[t] = clst
                    j = jend
                # ---- the source box of the fast pixels' taps, offsets in it
                anyfast = bxmax >= 0
                bc0 = bxmin - off
                br0 = bymin - off
                bwid = bxmax + ext - bc0 + 1
                bh = bymax + ext - br0 + 1
                usebox = anyfast and bwid * bh <= _BOXMAX
                flset = False
                nsl = 0
                for t in range(n if kind != 0 else 0):
                    if cls[t] != 1:
                        sl[nsl] = t
                        nsl += 1
                if usebox:
                    for t in range(n):
                        if cls[t] == 1:
                            fb[t] = np.uint64((iys[t] - off - br0) * bwid + ixs[t] - off - bc0)
                        else:
                            fb[t] = 0
                # ---- every band
                for bi in range(nb):
                    src = srcs[bi]
                    o = out[bidx[bi], i + orow]
                    base = j0 + ocol
                    usebad = True
                    if fast and kind == 0:
                        _fast_nearest(src.reshape(src.size), fl, okv, n, nodata, has_nodata,
                                      ndv, o, base)
                        continue
                    if anyfast:
                        cnt = 1
                        if usebox:
                            cnt = _load_box(src, br0 - srow0, bc0, bh, bwid, buf, chk, ndi)
                        if cnt != 0 and not flset:
                            flset = True
                            for t in range(n):
                                if cls[t] == 1:
                                    fl[t] = np.uint64((iys[t] - off - srow0) * snx + ixs[t] - off)
                                else:
                                    fl[t] = 0
                        if cnt == 0 and kind == 2:
                            _box_cubic(buf, np.uint64(bwid), fb, cw, n, nodata, has_nodata, lo, hi,
                                       repl, o, base, accs)
                            usebad = False
                        elif cnt == 0:
                            _box_bilinear(buf, bwid, fb, bw, n, nodata, has_nodata, lo, hi,
                                          repl, o, base, bad, accs)
                        elif kind == 2:
                            _src_cubic(src.reshape(src.size), fl, cw, n, snxu, nodata,
                                       has_nodata, lo, hi, repl, o, base, bad, ndi, accs)
                            usebad = chk
                        else:
                            _fast_bilinear(src.reshape(src.size), fl, bw, n, snxu, nodata,
                                           has_nodata, lo, hi, repl, o, base, bad, chk, ndi)
                    idx = sl
                    nidx = nsl
                    if usebad:
                        nidx = 0
                        for t in range(n):
                            if cls[t] != 1 or bad[t] != 0:
                                sl2[nidx] = t
                                nidx += 1
                        idx = sl2
                    for ii in range(nidx):
                        t = idx[ii]
                        jj = j0 + t
                        o[jj + ocol] = nodata
                        if okv[t] == 0:
                            continue
                        c = src[cv[t] - srow0, cu[t]]
                        if has_nodata and c == nodata:
                            continue
                        if kind == 0:
                            o[jj + ocol] = c
                            continue
                        ix = ixs[t]
                        iy = iys[t] - srow0         # row in the block
                        if wide:
                            acc, wsum = _weighted(src, ix - rx + 1, iy - ry + 1, wxs[t],
                                                  wys[t], 2 * rx, 2 * ry, nodata, has_nodata)
                            if abs(wsum) >= 1e-5:
                                o[jj + ocol] = _finish(acc / wsum, nodata, has_nodata, lo, hi)
                            continue
                        if inner[t]:
                            w0 = cw[t, 0]
                            w1 = cw[t, 1]
                            w2 = cw[t, 2]
                            w3 = cw[t, 3]
                            acc = 0.0
                            good = True
                            for p in range(4):
                                yy = iy - 1 + p
                                s0 = src[yy, ix - 1]
                                s1 = src[yy, ix]
                                s2 = src[yy, ix + 1]
                                s3 = src[yy, ix + 2]
                                if has_nodata and (s0 == nodata or s1 == nodata or
                                                   s2 == nodata or s3 == nodata):
                                    good = False
                                    break
                                acc += cw[t, 4 + p] * (w0 * s0 + w1 * s1 + w2 * s2 + w3 * s3)
                            if good:
                                o[jj + ocol] = _finish(acc, nodata, has_nodata, lo, hi)
                                continue
                        # bilinear: _weighted over the 2x2 neighbourhood, inlined
                        acc = 0.0
                        wsum = 0.0
                        fx = fxs[t]
                        fy = fys[t]
                        for p in range(2):
                            yy = iy + p
                            wyp = 1.0 - fy if p == 0 else fy
                            if yy + srow0 < 0 or yy + srow0 >= sny or wyp == 0.0:
                                continue
                            for q in range(2):
                                xx = ix + q
                                w = (1.0 - fx if q == 0 else fx) * wyp
                                if xx < 0 or xx >= snx or w == 0.0:
                                    continue
                                sv = src[yy, xx]
                                if has_nodata and sv == nodata:
                                    continue
                                acc += w * sv
                                wsum += w
                        if abs(wsum) < 1e-5:
                            continue
                        if wsum != 1.0:
                            acc = acc / wsum
                        o[jj + ocol] = _finish(acc, nodata, has_nodata, lo, hi)


def resample_bands(sources: list[np.ndarray], mesh, kind: int, nodata, row: int, col: int,
                   height: int, width: int, qai: np.ndarray | None = None, *,
                   out: np.ndarray | None = None, bands=None, orow: int = 0,
                   ocol: int = 0, srow0: int = 0,
                   source_height: int | None = None) -> np.ndarray:
    """Rows ``row``.. and columns ``col``.. (``height`` x ``width``) of the target of
    every band of ``sources`` (same shape and dtype, one source grid; ``mesh`` = (u, v,
    step, ...) of the whole target) as a (bands, height, width) array; each band equals
    :func:`_resample_window` of it. ``qai``: the warped QAI (whole target, or None); the
    bands are nodata where it is nodata (resync, spec 03 P4). With ``out`` (a C-contiguous
    3-D array of the sources' dtype), band ``k`` is written to ``out[bands[k], orow:orow +
    height, ocol:ocol + width]`` instead, and ``out`` is returned. ``sources`` may be rows
    ``srow0``.. of sources of ``source_height`` rows that hold :func:`source_window`."""
    from numba.typed import List
    dtype = sources[0].dtype
    if out is None:
        out = np.empty((len(sources), height, width), dtype=dtype)
        bands, orow, ocol = range(len(sources)), 0, 0
    if height == 0 or width == 0 or not sources:
        return out
    u, v, step = mesh[:3]
    has = nodata is not None
    nd = float(nodata) if has else 0.0
    info = np.iinfo(dtype)
    sx, sy = _mesh_scales(mesh)
    srcs = List()
    for s in sources:
        srcs.append(np.ascontiguousarray(s))
    use_qai = qai is not None
    q = np.ascontiguousarray(qai) if use_qai else np.zeros((1, 1), dtype=np.uint16)
    _resample_multi(srcs, u, v, int(step), int(row), int(col), kind, nd, has,
                    float(info.min), float(info.max), sx, sy, q, int(row), int(col),
                    use_qai, int(height), int(width), out, np.asarray(bands, dtype=np.int64),
                    int(orow), int(ocol), int(srow0),
                    int(sources[0].shape[0] if source_height is None else source_height))
    return out


def source_window(mesh, kind: int, row: int, col: int, height: int, width: int,
                  source_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The source rows [s0, s1) and columns [c0, c1) that resampling the target window (``row``, ``col``,
    ``height``, ``width``) with ``mesh`` and ``kind`` from a source of ``source_shape``
    can read. Positions are bilinear between the mesh nodes, so over a mesh cell they lie
    between its four nodes' extremes; cells that do not reach the source (or have a
    non-finite node: no pixel there reads) are left out; then the kernel's reach
    (widened when downsampling) and a margin are added."""
    u, v, step = mesh[:3]
    step = int(step)
    sny, snx = int(source_shape[0]), int(source_shape[1])
    if height <= 0 or width <= 0:
        return 0, 0, 0, 0
    a0, a1 = row // step, (row + height - 1) // step + 1
    b0, b1 = col // step, (col + width - 1) // step + 1
    reach = 0
    if kind != 0:
        sy = _mesh_scales(mesh)[1]
        rad = 1.0 if kind == 1 else 2.0
        reach = int(np.ceil(rad / sy)) if sy < 0.95 else 2
    m = reach + 2
    U, V = u[a0:a1 + 1, b0:b1 + 1], v[a0:a1 + 1, b0:b1 + 1]
    corners_u = (U[:-1, :-1], U[1:, :-1], U[:-1, 1:], U[1:, 1:])
    corners_v = (V[:-1, :-1], V[1:, :-1], V[:-1, 1:], V[1:, 1:])
    with np.errstate(invalid="ignore"):
        umin, umax = np.minimum.reduce(corners_u), np.maximum.reduce(corners_u)
        vmin, vmax = np.minimum.reduce(corners_v), np.maximum.reduce(corners_v)
        use = (np.isfinite(umin) & np.isfinite(umax) & np.isfinite(vmin) & np.isfinite(vmax)
               & (umax >= -m) & (umin <= snx + m) & (vmax >= -m) & (vmin <= sny + m))
    if not use.any():
        return 0, 0, 0, 0
    s0 = int(np.floor(vmin[use].min())) - m
    s1 = int(np.ceil(vmax[use].max())) + m + 1
    c0 = int(np.floor(umin[use].min())) - m
    c1 = int(np.ceil(umax[use].max())) + m + 1
    return (max(s0, 0), min(max(s1, 0), sny), max(c0, 0), min(max(c1, 0), snx))


@njit(cache=True, parallel=True, nogil=True)
def _or_valid(band, nodata, out):  # pragma: no cover
    """out = 1 where ``band`` is not ``nodata`` (out unchanged elsewhere). Branch-free
    inner loops here and below: they vectorise (a store per hit does not)."""
    ny, nx = out.shape
    for i in prange(ny):
        b = band[i]
        o = out[i]
        for j in range(nx):
            o[j] = o[j] | np.uint8(b[j] != nodata)


@njit(cache=True, parallel=True)
def _nodata_where_zero(q, valid, nodata):  # pragma: no cover
    """q = ``nodata`` where ``valid`` is 0 (in place)."""
    ny, nx = q.shape
    nd = q.dtype.type(nodata)
    for i in prange(ny):
        r = q[i]
        v = valid[i]
        for j in range(nx):
            r[j] = nd if v[j] == 0 else r[j]


@njit(cache=True, parallel=True)
def _normalize_nodata(q, nodata):  # pragma: no cover
    """q = ``nodata`` where its bit 0 (QAI nodata) is set (in place; no temporaries)."""
    ny, nx = q.shape
    nd = q.dtype.type(nodata)
    for i in prange(ny):
        r = q[i]
        for j in range(nx):
            r[j] = nd if (r[j] & 1) != 0 else r[j]


#: rows per strip of :func:`mark_no_band_valid` (its uint8 buffer: rows × columns)
_MARK_ROWS = 512


def mark_no_band_valid(q: np.ndarray, bands: list[np.ndarray], nodata) -> None:
    """QAI ``q`` = nodata (1) where every one of ``bands`` (on q's grid) is ``nodata``, in
    place, strip by strip (a uint8 buffer of _MARK_ROWS rows; no full-size temporaries)."""
    ny, nx = q.shape
    buf = np.empty((min(_MARK_ROWS, ny), nx), dtype=np.uint8)
    for r0 in range(0, ny, _MARK_ROWS):
        r1 = min(r0 + _MARK_ROWS, ny)
        b = buf[:r1 - r0]
        b[:] = 0
        done = set()
        for band in bands:
            if is_row_source(band):
                group = getattr(band, "merged", None)     # bands computed together:
                if group is not None and hasattr(group, "any_valid_rows"):
                    if id(group) not in done:             # their validity in one go
                        done.add(id(group))
                        _or_valid(group.any_valid_rows(r0, r1), float(nodata), b)
                    continue
                rows = band.valid_rows(r0, r1)
            else:
                rows = band[r0:r1]
            _or_valid(rows, float(nodata), b)
        _nodata_where_zero(q[r0:r1], b, qai_mod.QAI_NODATA)


def any_valid(bands: list[np.ndarray], nodata) -> np.ndarray:
    """uint8 mask: 1 where any of ``bands`` (same shape) is not ``nodata``. One pass per
    band (a typed list of arrays indexed per pixel inside a kernel costs ~40x more)."""
    out = np.zeros(bands[0].shape, dtype=np.uint8)
    for b in bands:
        b = b.valid_rows(0, b.shape[0]) if is_row_source(b) else b
        _or_valid(np.ascontiguousarray(b), float(nodata), out)
    return out


#: (mesh, scales) of recently used meshes (:func:`_mesh_scales`)
_SCALES: list[tuple[tuple, tuple[float, float]]] = []


def _mesh_scales(mesh) -> tuple[float, float]:
    """:func:`_scales` of ``mesh`` = (u, v, step, ...), remembered for the last few
    meshes (the same mesh is resampled strip by strip)."""
    for m, sc in _SCALES:
        if m is mesh:
            return sc
    sc = _scales(mesh[0], mesh[1], int(mesh[2]))
    _SCALES.insert(0, (mesh, sc))
    del _SCALES[8:]
    return sc


def _scales(u: np.ndarray, v: np.ndarray, step: int) -> tuple[float, float]:
    """GDAL's resampling scales (target pixels per source pixel, at most 1) along x and
    y, from the mesh: the median length, in source pixels, of one target pixel step."""
    du = np.hypot(np.diff(u, axis=1), np.diff(v, axis=1)) / step
    dv = np.hypot(np.diff(u, axis=0), np.diff(v, axis=0)) / step
    mx = float(np.nanmedian(du)) if np.isfinite(du).any() else 1.0
    my = float(np.nanmedian(dv)) if np.isfinite(dv).any() else 1.0
    return min(1.0, 1.0 / mx) if mx > 0 else 1.0, min(1.0, 1.0 / my) if my > 0 else 1.0


def _resample_window(band: np.ndarray, mesh, kind: int, nodata, row: int, col: int,
                     height: int, width: int) -> np.ndarray:
    """Rows ``row``.. and columns ``col``.. (``height`` x ``width``) of the target,
    resampled from ``band`` with ``mesh`` = (u, v, step, ...) of the whole target, by the
    per-pixel kernel :func:`_resample` (the tests' reference: the warper itself uses the
    faster :func:`resample_bands`, which gives the same pixels)."""
    u, v, step = mesh[:3]
    out = np.empty((height, width), dtype=band.dtype)
    if height == 0 or width == 0:
        return out
    has = nodata is not None
    nd = float(nodata) if has else 0.0
    info = np.iinfo(band.dtype)
    sx, sy = _scales(u, v, int(step))
    _resample(band, u, v, int(step), int(row), int(col), kind, nd, has, float(info.min),
              float(info.max), sx, sy, out)
    return out


def _warp_band(band: np.ndarray, src: Grid, dst: Grid, resampling: Resampling, nodata,
               num_threads: int = 1, mesh=None) -> np.ndarray:
    """Warp one band on ``src`` onto ``dst``; returns a new (ny, nx) array of ``band``'s
    dtype. ``mesh`` = (u, v, step, ...) from :func:`source_mesh` (computed when None).
    The thread count is numba's (results do not depend on it)."""
    if mesh is None:
        mesh = source_mesh(src, dst)
    out = lasting_zeros((1, dst.ny, dst.nx), band.dtype)     # kept: plain pages
    return resample_bands([band], mesh, _KIND[resampling], nodata, 0, 0, dst.ny, dst.nx,
                          out=out, bands=[0])[0]


def warp_product(product: Product, target: Grid, *, num_threads: int = 1,
                 max_mem: int = MAX_MEM, consume: bool = False,
                 meshes: dict[Grid, tuple] | None = None) -> Product:
    """``product`` with every band on ``target`` (same dtype; QAI nearest-neighbour and
    normalised: every nodata pixel is exactly 1), computed now, band by band.

    Each band's nodata is its own. ``consume=True`` drops each source band from
    ``product.bands`` (sets it to None, in place) once it is warped, so that its memory
    is freed as the warped bands are made (the caller must not need the source
    afterwards). ``max_mem`` is kept for compatibility (the warp needs no chunking).
    ``meshes``: the caller's coordinate meshes per source grid (used and filled), so
    that a mesh is computed once for all products on one grid."""
    nodata = product.nodata
    resampling = resampling_of(product)
    out_bands: list[np.ndarray | None] = [None] * product.nbands
    grids = list(product.grids)
    meshes = {} if meshes is None else meshes    # one coordinate mesh per source grid
    for i, g in enumerate(grids):
        band = product.bands[i]
        if band is None:
            raise GridError(f"product {product.name}: band {i + 1} was already consumed")
        if is_row_source(band):
            band = band.rows(0, band.shape[0])
        off = integer_offset(g, target)
        if off is not None:
            b = lasting_zeros(target.shape, band.dtype)
            b[...] = nodata
            paste(band, off[0], off[1], b)
        else:
            if g not in meshes:
                meshes[g] = source_mesh(g, target)
            b = _warp_band(band, g, target, resampling, nodata, num_threads, meshes[g])
        out_bands[i] = b
        del band
        if consume and isinstance(product.bands, list):
            product.bands[i] = None
    if product.name == "QAI":
        for b in out_bands:
            _normalize_nodata(b, qai_mod.QAI_NODATA)
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
    """Warp every product onto ``target`` now (band by band), then re-synchronise nodata
    between QAI and the other products (see module docstring). ``consume``: see
    :func:`warp_product`. :func:`warp_products_lazy` gives the same pixels without
    holding the warped products."""
    with _numba_threads(num_threads):
        out = [warp_product(p, target, num_threads=num_threads, max_mem=max_mem,
                            consume=consume) for p in products]
    if resync:
        resync_nodata(out)
    return out


# ----------------------------------------------------------------- lazy warping
@contextlib.contextmanager
def _numba_threads(n: int):
    """numba's thread count set to ``n`` (at most its pool size) inside the block."""
    import numba
    old = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(old)


def is_row_source(band) -> bool:
    """True for a band whose rows are computed when read instead of held in memory: an
    object with ``shape`` (rows, columns), ``dtype``, ``rows(r0, r1, c0=0, c1=None)``
    (the band's rows r0..r1 as a full-width array of which at least columns c0..c1 are
    set; it may be overwritten by the next call) and
    ``valid_rows(r0, r1)`` (an array of the same rows that is the band's nodata value
    exactly where the band is; cheaper to make). Bands sharing a ``merged`` object with
    ``any_valid_rows(r0, r1)`` (nodata where none of them is valid) are tested together
    (:func:`mark_no_band_valid`). Example: the Sentinel-2 resolution merge of a TOA-only
    run (:class:`l2ps.resmerge.MergedBand`)."""
    return not isinstance(band, np.ndarray) and hasattr(band, "rows")


class WarpedBand:
    """One band of a product on the target grid, resampled only when a window of it is
    used: ``band[rows, cols]`` (two slices) gives a :class:`WarpedWindow`, and
    ``np.asarray`` of that computes the pixels. Every window equals the same window of
    the whole warped band (the coordinate mesh is anchored at the target's pixel (0, 0)).
    Where ``qai`` (the warped QAI) is nodata, the band is nodata (resync, spec 03 P4)."""

    def __init__(self, source: np.ndarray, src: Grid, target: Grid, kind: int, nodata,
                 mesh, qai: np.ndarray | None, clock=None):
        self.source, self.src, self.target = source, src, target
        self.kind, self.nodata, self.mesh, self.qai = kind, nodata, mesh, qai
        self.clock = clock
        self.offset = integer_offset(src, target)
        self.shape = (target.ny, target.nx)
        self.dtype = source.dtype

    def __getitem__(self, key) -> "WarpedWindow":
        rows, cols = key
        r0, r1, _ = rows.indices(self.shape[0])
        c0, c1, _ = cols.indices(self.shape[1])
        return WarpedWindow(self, r0, c0, max(r1 - r0, 0), max(c1 - c0, 0))

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[:, :], dtype=dtype)

    def compute(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        return compute_group([self], row, col, height, width)[0]

    def group_key(self) -> tuple:
        """Bands with equal keys are resampled together (:func:`compute_group`)."""
        return (id(self.mesh) if self.offset is None else ("offset", self.offset),
                id(self.qai), self.kind, self.nodata, self.dtype.str, self.source.shape,
                id(self.clock))


def compute_group(bands: list[WarpedBand], row: int, col: int, height: int, width: int,
                  *, out: np.ndarray | None = None, index=None, orow: int = 0,
                  ocol: int = 0, timed: bool = True) -> list[np.ndarray] | None:
    """The window (``row``, ``col``, ``height``, ``width``) of every band of ``bands``
    (equal :meth:`WarpedBand.group_key`), resampled in one pass (:func:`resample_bands`)
    or pasted (integer offsets), then set to nodata where the warped QAI is nodata.
    Returns the windows, or, with ``out`` (3-D, C-contiguous, the bands' dtype), writes
    band ``k`` to ``out[index[k], orow:orow + height, ocol:ocol + width]`` and returns
    None. ``timed``: use the bands' clock (section "warp"; not from other threads)."""
    b0 = bands[0]
    with (b0.clock("warp") if b0.clock and timed else contextlib.nullcontext()):
        if out is None:
            outs = np.empty((len(bands), height, width), dtype=b0.dtype)
            compute_group(bands, row, col, height, width, out=outs,
                          index=range(len(bands)), timed=False)
            return list(outs)
        qw = None if b0.qai is None else b0.qai[row:row + height, col:col + width]
        if b0.offset is not None:
            for k, b in zip(index, bands):
                o = out[k, orow:orow + height, ocol:ocol + width]
                o[...] = b.nodata
                src, top = b.source, b.offset[0] - row
                if is_row_source(src):     # only the rows that land in the window
                    s0 = min(max(row - b.offset[0], 0), src.shape[0])
                    s1 = min(max(row - b.offset[0] + height, s0), src.shape[0])
                    src, top = src.rows(s0, s1), top + s0
                paste(src, top, b.offset[1] - col, o)
                if qw is not None:
                    o[qai_mod.is_nodata(qw)] = b.nodata
            return None
        srcs = [b.source for b in bands]
        srow0, height_src = 0, None
        if any(is_row_source(s) for s in srcs):
            # rows computed on demand: only the block of rows the window reads
            height_src = srcs[0].shape[0]
            srow0, s1, c0, c1 = source_window(b0.mesh, b0.kind, row, col, height, width,
                                              srcs[0].shape)
            s1 = max(s1, min(srow0 + 1, height_src))
            srcs = [s.rows(srow0, s1, c0, c1) if is_row_source(s) else s[srow0:s1]
                    for s in srcs]
        resample_bands(srcs, b0.mesh, b0.kind, b0.nodata, row, col, height, width, b0.qai,
                       out=out, bands=list(index), orow=orow, ocol=ocol, srow0=srow0,
                       source_height=height_src)
        return None


def compute_windows(windows: list, row0: int, row1: int, out: np.ndarray | None = None,
                    orow: int = 0, ocol: int = 0, timed: bool = True
                    ) -> list[np.ndarray] | None:
    """Rows ``row0``..``row1`` (relative to the windows) of every item of ``windows``
    (each a :class:`WarpedWindow` or an array; all of the same width), as arrays. Lazily
    warped bands that share a source grid are resampled together in one pass
    (:func:`compute_group`); the pixels equal those of ``np.asarray(window)``. With
    ``out`` (int16, (len(windows), rows, cols)): item ``k`` is written to ``out[k, orow..,
    ocol..]`` (uint16 as its int16 view) and None is returned. ``timed``: see
    :func:`compute_group`."""
    res: list[np.ndarray | None] = [None] * len(windows)
    groups: dict[tuple, list[int]] = {}
    for k, w in enumerate(windows):
        if isinstance(w, WarpedWindow) and (out is None or w.dtype == out.dtype):
            groups.setdefault((w.band.group_key(), w.row, w.col, w.shape[1]), []).append(k)
        else:
            res[k] = np.asarray(w[row0:row1])
    for (_, r, c, width), idx in groups.items():
        h = max(min(row1, windows[idx[0]].shape[0]) - row0, 0)
        bands = [windows[k].band for k in idx]
        if out is None:
            for k, a in zip(idx, compute_group(bands, r + row0, c, h, width, timed=timed)):
                res[k] = a
        else:
            compute_group(bands, r + row0, c, h, width, out=out, index=idx, orow=orow,
                          ocol=ocol, timed=timed)
    if out is None:
        return res  # type: ignore[return-value]
    for k, a in enumerate(res):
        if a is not None:
            if a.dtype == np.uint16 and out.dtype == np.int16:
                a = a.view(np.int16)
            out[k, orow:orow + a.shape[0], ocol:ocol + a.shape[1]] = a
    return None


class WarpedWindow:
    """A window of a :class:`WarpedBand`; ``np.asarray`` computes its pixels."""

    def __init__(self, band: WarpedBand, row: int, col: int, height: int, width: int):
        self.band, self.row, self.col = band, row, col
        self.shape = (height, width)
        self.dtype = band.dtype

    def __array__(self, dtype=None, copy=None):
        a = self.band.compute(self.row, self.col, *self.shape)
        return a if dtype is None else a.astype(dtype, copy=False)


def warp_products_lazy(products: list[Product], target: Grid, *, num_threads: int = 1,
                       clock=None, release_qai: bool = False) -> list[Product]:
    """The products on ``target`` as :func:`warp_products` gives them (resync included),
    but only QAI is warped now (nearest, in memory); every other band is a
    :class:`WarpedBand` resampled window by window when written, so that the memory
    beyond the source scene is the warped QAI plus one band window at a time.

    QAI becomes nodata where every BOA/TOA band would be nodata after warping: a warped
    band is valid exactly where the source pixel containing the target pixel centre is
    valid (for every resampling, :func:`_resample`), so this mask is the nearest-neighbour
    warp of "any band valid" per source grid, ANDed over the grids. The source arrays
    must stay unchanged while the returned products are used. ``release_qai``: the caller
    hands the source QAI over: when every BOA/TOA band is on the QAI's grid, the source
    QAI is first set to nodata where no band is valid (in place, strip by strip: the
    same result without the two full-size masks), on the target grid itself it becomes
    the warped QAI without a copy, and the QAI product's reference to its source band is
    dropped once it is warped (in place; memory)."""
    clock = clock or (lambda name: contextlib.nullcontext())
    meshes: dict[Grid, tuple] = {}

    def mesh(g: Grid):
        if g not in meshes and integer_offset(g, target) is None:
            meshes[g] = source_mesh(g, target)
        return meshes.get(g)

    with _numba_threads(num_threads), clock("warp"):
        qai_p = next(p for p in products if p.name == "QAI")
        refl = next((p for p in products if p.name in ("BOA", "TOA")), None)
        has_refl = refl is not None and refl.nbands > 0
        marked = (release_qai and isinstance(qai_p.bands, list) and has_refl
                  and all(g == qai_p.grids[0] for g in refl.grids))
        if marked:      # source and target QAI are nodata where no band is valid
            mark_no_band_valid(qai_p.bands[0], list(refl.bands), refl.nodata)
        src_q = qai_p.bands[0]
        if (marked and qai_p.grids[0] == target and src_q.dtype == qai_mod.QAI_DTYPE
                and src_q.flags.c_contiguous):
            q = src_q                       # already on the target: no copy
            _normalize_nodata(q, qai_mod.QAI_NODATA)
        else:
            q = warp_product(qai_p, target, num_threads=num_threads, meshes=meshes).bands[0]
        del src_q
        if release_qai and isinstance(qai_p.bands, list):
            qai_p.bands[0] = None           # only the warped QAI is read from now on
        if has_refl and not marked:
            # valid: 1 where the band of some source grid is valid (uint8, in place; no
            # boolean temporaries of the target's size)
            valid = None
            by_grid: dict[Grid, list[int]] = {}
            for i, g in enumerate(refl.grids):
                by_grid.setdefault(g, []).append(i)
            for g, idx in by_grid.items():
                anyv = any_valid([refl.bands[i] for i in idx], refl.nodata)
                off = integer_offset(g, target)
                if off is not None:
                    w = np.zeros(target.shape, dtype=np.uint8)
                    paste(anyv, off[0], off[1], w)
                else:
                    w = resample_bands([anyv], mesh(g), _NEAREST, 0, 0, 0, target.ny,
                                       target.nx)[0]
                del anyv
                if valid is None:
                    valid = w
                else:
                    np.bitwise_or(valid, w, out=valid)
                del w
            _nodata_where_zero(q, valid, qai_mod.QAI_NODATA)
            del valid
    out = []
    for p in products:
        if p.name == "QAI":
            out.append(replace(p, bands=[q], grids=[target]))
            continue
        kind = _KIND[resampling_of(p)]
        with clock("warp"):
            bands = [WarpedBand(b if is_row_source(b) else np.ascontiguousarray(b), g,
                                target, kind, p.nodata, mesh(g),
                                q if p.name != "OVV" else None, clock=clock)
                     for b, g in zip(p.bands, p.grids)]
        out.append(replace(p, bands=bands, grids=[target] * p.nbands))
    return out
