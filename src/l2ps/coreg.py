"""Co-registration of an image to a monthly NIR base image (spec 03 §5; FORCE's adaptation
of LSReg v2.0, Yan & Roy 2016) — a robust re-implementation, not a port.

Chain (:func:`coregister`, after cloud detection and before the resolution merge):

1. *Base*: the base image of DIR_COREG_BASE for the acquisition year
   (:func:`l2ps.aux.coreg_base.find_base_image`), band = acquisition month, warped onto the
   grid of the target band (Sentinel-2 BROADNIR/B8, Landsat NIR) with cubic resampling.
2. *Target*: the target band with nodata, cloud (any cloud state) and cloud-shadow pixels
   of the QAI set to nodata.
3. *Pyramids* (:func:`pyramid`): nodata-aware Gaussian (σ = 1 fine pixel) reduction by 2,
   up to :data:`N_LEVELS` levels (fewer for small images: the top level keeps ≥
   :data:`MIN_TOP_SIZE` pixels per side).
4. *Points of interest* on the top level (:func:`points_of_interest`): Förstner interest
   ``det(S)/trace(S)`` of the structure tensor, the strongest local maximum per cell of a
   regular grid, so that the points spread over the image.
5. *Initial matching* on the top level: integer search of the normalised cross-correlation
   (NCC) within ±(:data:`SEARCH_PX`/2^level + 1) pixels, then least-squares matching (LSM:
   translation + radiometric gain/offset, bicubic resampling of the base, Gauss–Newton) for
   the sub-pixel position. A robust translation (median, MAD, iterative 2σ) keeps the ties.
6. *Depth-first matching*: the ties are followed down the pyramid; at every level the
   current transform predicts each position, the search is ±1 pixel plus LSM, and the
   transform is refitted (:func:`choose_model`: translation, or affine with ≥ 18 spread
   ties that it explains significantly better) with iterative 2·RMSE outlier removal.
   Failure (< 12 ties) retries with the top level one lower, down to full resolution for
   small images (FORCE's retry schedule, extended).
7. *Dense matching* at full resolution on a regular grid of ~:data:`N_DENSE` points with
   41×41 windows (±1 pixel around the depth-first prediction + LSM); a tie is accepted when
   NCC ≥ :data:`NCC_MIN` and it lies within clamp(3·RMSE, 0.5, 2) pixels of the prediction.
   The final transform (base pixel → image pixel) is fitted to them as in 6; < 12 ties is
   a failure (FORCE's [BUG?] accepts an all-zero affine here).
8. *Acceptance*: the displacement at every image corner and the centre must be ≤
   :data:`MAX_SHIFT_PX`.
9. *Apply* (:func:`apply_transform`): every TOA/BT band on its own grid (Sentinel-2 10, 20,
   60 m) is resampled with the same map-unit transform by nodata-aware bilinear
   interpolation (weights renormalised over the valid corners, rounded to nearest); the QAI
   by nearest neighbour (outside → nodata). Then the QAI nodata bit is set wherever the
   registered target band is nodata, for *all* pixels (FORCE's loop only touches the
   first rows), and every band on the processing grid gets −9999 where the QAI is nodata.

Every failure (no overlap, no texture, too few tie points, shift > 6 px) raises
``ProcessingError("co-registration failed: …")``; the scene is left unmodified, so no
shifted product is ever written.

Conventions: pixel positions in the matching are *centre indices* (x = column, y = row;
pixel (i, j) has its centre at (x = j, y = i)); a pixel of level k covers 2^k pixels of
level 0, so x₀ = 2^k·(x_k + 0.5) − 0.5. The fitted transform ``A`` maps a position of the
base (= of the registered output) to the position of the same ground in the unregistered
image: output(p) = image(A(p)). Shifts are A(centre) − centre: x in columns (east
positive), y in rows (south positive, FORCE's c0/c3 convention), times the pixel size.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numba import njit, prange

from . import qai as Q
from .errors import ProcessingError
from .grid import Grid

NODATA = -9999
TARGET_DOMAIN = {"landsat": "NIR", "sentinel2": "BROADNIR"}

N_LEVELS = 4              # pyramid levels incl. full resolution (FORCE: 4, scales 1,2,2,2)
MIN_TOP_SIZE = 96         # top pyramid level keeps at least this many pixels per side
MIN_TIES = 12             # FORCE MIN_TIES_NUM
MAX_SHIFT_PX = 6.0        # acceptance (spec 03 §5 step 8)
SEARCH_PX = 12            # displacement searched at the top level, in full-res pixels
LAND_MIN = 1000           # target and base > 0.1 reflectance at a tie (FORCE: no water)
H_COARSE = 10             # half window on the pyramid (21×21; FORCE h = 10)
H_DENSE = 20              # half window of the dense matching (41×41; FORCE h = 20)
N_POI = 600               # points of interest on the top level (at most)
N_DENSE = 1500            # dense-matching grid points over the usable area (about)
MAX_POI_PIXELS = 16_000_000   # lower top levels tried on failure only up to this size
NCC_MIN = 0.75            # normalised cross-correlation for a tie (FORCE: SAM ≥ 0.985)
MIN_STD = 10.0            # ×10000; a target window flatter than this has no texture
MIN_EIG_RATIO = 0.05      # λmin/λmax of the window's structure tensor (no bare edges)
LSM_MAX_ITER = 20
LSM_EPS = 1e-3            # px; LSM converged when the update is smaller
AFFINE_MIN_TIES = 18      # FORCE choose_transform: > 18 → affine
AFFINE_F_MIN = 25.0       # F statistic an affine needs over a translation
REJECT_ROUNDS = 5         # iterative 2·RMSE outlier removal

# status codes of the matching kernel
OK, BAD_TARGET, FLAT, BAD_BASE, DIVERGED, LOW_NCC, FLAT_BASE = 0, 1, 2, 3, 4, 5, 6
STATUS_NAMES = ("ok", "no clear land window", "no texture", "no base data",
                "no convergence", "low correlation", "no texture in the base")


# =============================================================================== results
@dataclass
class Fit:
    """A transform fitted to ties: ``matrix`` (2×3) maps base (x, y) centre indices of
    level 0 to image positions; ``model`` "translation" or "affine"; ``rmse`` in pixels
    (√(Σr²/(n − ncoef)) over the inliers); ``src``/``dst`` the inlier ties (base, image)."""
    matrix: np.ndarray
    model: str
    rmse: float
    src: np.ndarray
    dst: np.ndarray

    @property
    def n(self) -> int:
        return len(self.src)

    def apply(self, pts: np.ndarray) -> np.ndarray:
        return pts @ self.matrix[:, :2].T + self.matrix[:, 2]


@dataclass
class CoregResult:
    """Outcome of :func:`coregister`.

    ``shift_x_m``/``shift_y_m``: displacement of the image relative to the base at the
    image centre, columns × dx (east positive) and rows × dy (south positive), as FORCE's
    log. ``transform``: 2×3 affine on edge-based pixel coordinates (col + 0.5 = centre) of
    the target band's grid mapping an output pixel to its source position in the
    unregistered image. ``rmse_px``: residual RMSE of the final fit in pixels.
    """
    n_ties: int
    shift_x_m: float
    shift_y_m: float
    rmse_px: float
    transform: np.ndarray
    log_fragment: str
    seconds: float
    model: str = "translation"
    base_image: Path | None = None
    target_domain: str = ""
    stats: dict = field(default_factory=dict)


# =============================================================================== pyramids
@njit(cache=True, inline="always")
def _ok(v) -> bool:
    return v == v and v > -9998.5


@njit(cache=True, parallel=True)
def _reduce2(src, out):
    """out (ny//2, nx//2) float32: nodata-aware Gaussian (σ = 1 source pixel) at the centre
    of each 2×2 block; nodata (NaN) where less than half of the kernel weight is valid."""
    w = np.array([0.04393693, 0.32465247, 0.8824969, 0.8824969, 0.32465247, 0.04393693])
    tot = w.sum() ** 2
    ny, nx = src.shape
    oy, ox = out.shape
    for i in prange(oy):
        for j in range(ox):
            acc = 0.0
            ws = 0.0
            for a in range(6):
                r = 2 * i - 2 + a
                if r < 0 or r >= ny:
                    continue
                for b in range(6):
                    c = 2 * j - 2 + b
                    if c < 0 or c >= nx:
                        continue
                    v = src[r, c]
                    if _ok(v):
                        ww = w[a] * w[b]
                        acc += ww * v
                        ws += ww
            out[i, j] = acc / ws if ws >= 0.5 * tot else np.nan


def pyramid(img: np.ndarray, n_levels: int) -> list[np.ndarray]:
    """[img, level 1, …]: level 0 is ``img`` itself (int16 with −9999 or float32 with NaN),
    coarser levels float32 with NaN = nodata."""
    out = [img]
    for _ in range(1, n_levels):
        prev = out[-1]
        nxt = np.empty((prev.shape[0] // 2, prev.shape[1] // 2), np.float32)
        _reduce2(prev, nxt)
        out.append(nxt)
    return out


def n_levels_for(shape: tuple[int, int]) -> int:
    """Number of pyramid levels (≤ N_LEVELS) so that the top keeps ≥ MIN_TOP_SIZE px."""
    n = 1
    while n < N_LEVELS and min(shape) // 2 ** n >= MIN_TOP_SIZE:
        n += 1
    return n


# =============================================================================== POIs
def points_of_interest(tgt: np.ndarray, base: np.ndarray, h: int, n_max: int = N_POI,
                       margin: int = 0) -> np.ndarray:
    """Points of interest (rows, cols) on one pyramid level (float32, NaN = nodata).

    Förstner interest ``(SxxSyy − Sxy²)/(Sxx + Syy)`` of the target (σ 0.7 pre-smoothing,
    σ 2 tensor window) where both images are valid; local maxima (7×7) whose whole
    (2h+1)² window is valid, with a centre above LAND_MIN in both images; the strongest per
    cell of a grid with about ``n_max`` cells. Returned as an (n, 2) int64 array, sorted
    by row and column (deterministic).
    """
    from scipy import ndimage
    valid = np.isfinite(tgt) & np.isfinite(base)
    if not valid.any():
        return np.zeros((0, 2), np.int64)
    mean = float(tgt[valid].mean())
    img = np.where(valid, tgt, mean).astype(np.float32)
    img = ndimage.gaussian_filter(img, 0.7, mode="nearest")
    gy, gx = np.gradient(img)
    sxx = ndimage.gaussian_filter(gx * gx, 2.0, mode="nearest")
    syy = ndimage.gaussian_filter(gy * gy, 2.0, mode="nearest")
    sxy = ndimage.gaussian_filter(gx * gy, 2.0, mode="nearest")
    den = sxx + syy
    interest = np.where(den > 1e-6, (sxx * syy - sxy * sxy) / np.maximum(den, 1e-6), 0.0)
    inner = ndimage.binary_erosion(valid, np.ones((2 * h + 1, 2 * h + 1), bool),
                                   border_value=0)
    m = margin + h
    if m > 0:
        inner[:m] = inner[-m:] = False
        inner[:, :m] = inner[:, -m:] = False
    land = np.where(valid, tgt, 0) > LAND_MIN
    land &= np.where(valid, base, 0) > LAND_MIN
    peak = (interest == ndimage.maximum_filter(interest, size=7)) & (interest > 0)
    cand = inner & land & peak
    rows, cols = np.nonzero(cand)
    if len(rows) == 0:
        return np.zeros((0, 2), np.int64)
    vals = interest[rows, cols]
    # relative floor: ignore very weak maxima (flat areas with noise)
    floor = 0.02 * float(np.percentile(vals, 95))
    keep = vals > floor
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    ny, nx = tgt.shape
    cell = max(int(math.sqrt(ny * nx / max(n_max, 1))), h, 6)
    cid = (rows // cell) * (nx // cell + 1) + cols // cell
    order = np.lexsort((-vals, cid))          # by cell, strongest first
    first = np.ones(len(order), bool)
    first[1:] = cid[order][1:] != cid[order][:-1]
    sel = order[first]
    pts = np.stack([rows[sel], cols[sel]], axis=1).astype(np.int64)
    return pts[np.lexsort((pts[:, 1], pts[:, 0]))]


# =============================================================================== matching
@njit(cache=True, inline="always")
def _keys_w(t, w, dw):
    """Keys cubic-convolution weights (a = −0.5) of taps −1..2 at fraction t ∈ [0, 1) and
    their derivatives with respect to t."""
    a = -0.5
    for k in range(4):
        s = t - (k - 1)            # distance from tap k−1
        sg = 1.0 if s >= 0 else -1.0
        u = abs(s)
        if u <= 1.0:
            w[k] = (a + 2) * u ** 3 - (a + 3) * u ** 2 + 1
            dw[k] = sg * (3 * (a + 2) * u ** 2 - 2 * (a + 3) * u)
        elif u < 2.0:
            w[k] = a * u ** 3 - 5 * a * u ** 2 + 8 * a * u - 4 * a
            dw[k] = sg * (3 * a * u ** 2 - 10 * a * u + 8 * a)
        else:
            w[k] = 0.0
            dw[k] = 0.0


@njit(cache=True)
def _solve4(a, b):
    """Solve the 4×4 system a·x = b in place (partial pivoting); False if singular."""
    n = 4
    for k in range(n):
        p = k
        for i in range(k + 1, n):
            if abs(a[i, k]) > abs(a[p, k]):
                p = i
        if abs(a[p, k]) < 1e-12:
            return False
        if p != k:
            for j in range(n):
                tmp = a[k, j]
                a[k, j] = a[p, j]
                a[p, j] = tmp
            tmp = b[k]
            b[k] = b[p]
            b[p] = tmp
        for i in range(k + 1, n):
            f = a[i, k] / a[k, k]
            for j in range(k, n):
                a[i, j] -= f * a[k, j]
            b[i] -= f * b[k]
    for k in range(n - 1, -1, -1):
        s = b[k]
        for j in range(k + 1, n):
            s -= a[k, j] * b[j]
        b[k] = s / a[k, k]
    return True


@njit(cache=True)
def _match_one(tgt, base, r, c, pr, pc, h, R, ncc_min, res):
    """Match the (2h+1)² target window centred at (r, c) in the base around the predicted
    position (r + pr, c + pc). res[:] = (base row, base col, ncc, status)."""
    ny, nx = tgt.shape
    bny, bnx = base.shape
    res[0] = 0.0
    res[1] = 0.0
    res[2] = 0.0
    n = (2 * h + 1) ** 2
    if r - h < 1 or c - h < 1 or r + h >= ny - 1 or c + h >= nx - 1:
        res[3] = BAD_TARGET
        return
    if not (tgt[r, c] > LAND_MIN):
        res[3] = BAD_TARGET
        return
    T = np.empty((2 * h + 1, 2 * h + 1))
    st = 0.0
    for i in range(-h, h + 1):
        for j in range(-h, h + 1):
            v = tgt[r + i, c + j]
            if not _ok(v):
                res[3] = BAD_TARGET
                return
            T[i + h, j + h] = v
            st += v
    mt = st / n
    vt = 0.0
    for i in range(2 * h + 1):
        for j in range(2 * h + 1):
            T[i, j] -= mt
            vt += T[i, j] * T[i, j]
    if math.sqrt(vt / n) < MIN_STD:
        res[3] = FLAT
        return
    # structure tensor of the window: reject bare edges (aperture problem)
    sxx = 0.0
    syy = 0.0
    sxy = 0.0
    for i in range(1, 2 * h):
        for j in range(1, 2 * h):
            gx = 0.5 * (T[i, j + 1] - T[i, j - 1])
            gy = 0.5 * (T[i + 1, j] - T[i - 1, j])
            sxx += gx * gx
            syy += gy * gy
            sxy += gx * gy
    tr = 0.5 * (sxx + syy)
    dis = math.sqrt(0.25 * (sxx - syy) ** 2 + sxy * sxy)
    if tr <= 0 or (tr - dis) < MIN_EIG_RATIO * (tr + dis):
        res[3] = FLAT
        return
    # ---- integer search of the NCC around the prediction
    r0 = int(math.floor(r + pr + 0.5))
    c0 = int(math.floor(c + pc + 0.5))
    best = -2.0
    bi = 0
    bj = 0
    n_flat = 0
    for oy in range(-R, R + 1):
        for ox in range(-R, R + 1):
            rr = r0 + oy
            cc = c0 + ox
            if rr - h < 0 or cc - h < 0 or rr + h >= bny or cc + h >= bnx:
                continue
            sb = 0.0
            sbb = 0.0
            stb = 0.0
            good = True
            for i in range(-h, h + 1):
                for j in range(-h, h + 1):
                    v = base[rr + i, cc + j]
                    if not _ok(v):
                        good = False
                        break
                    sb += v
                    sbb += v * v
                    stb += T[i + h, j + h] * v
                if not good:
                    break
            if not good:
                continue
            vb = sbb - sb * sb / n
            if vb <= MIN_STD * MIN_STD * n:
                n_flat += 1
                continue
            ncc = stb / math.sqrt(vt * vb)
            if ncc > best:
                best = ncc
                bi = rr
                bj = cc
    if best < -1.5:
        res[3] = FLAT_BASE if n_flat > 0 else BAD_BASE
        return
    if not (base[bi, bj] > LAND_MIN):
        res[3] = BAD_BASE
        return
    # ---- least-squares matching: T ≈ g·B(bi + i + dy, bj + j + dx) + o
    dy = 0.0
    dx = 0.0
    B = np.empty((2 * h + 1, 2 * h + 1))
    By = np.empty((2 * h + 1, 2 * h + 1))
    Bx = np.empty((2 * h + 1, 2 * h + 1))
    wy = np.empty(4)
    wx = np.empty(4)
    dwy = np.empty(4)
    dwx = np.empty(4)
    N = np.empty((4, 4))
    rhs = np.empty(4)
    g = 1.0
    o = 0.0
    converged = False
    for it in range(LSM_MAX_ITER + 1):
        fy = math.floor(dy)
        fx = math.floor(dx)
        _keys_w(dy - fy, wy, dwy)
        _keys_w(dx - fx, wx, dwx)
        ry = bi + int(fy)
        cx = bj + int(fx)
        if ry - h - 1 < 0 or cx - h - 1 < 0 or ry + h + 2 >= bny or cx + h + 2 >= bnx:
            res[3] = BAD_BASE
            return
        sb = 0.0
        for i in range(-h, h + 1):
            for j in range(-h, h + 1):
                v = 0.0
                vy = 0.0
                vx = 0.0
                for a in range(4):
                    ra = ry + i + a - 1
                    rowv = 0.0
                    rowd = 0.0
                    for b in range(4):
                        q = base[ra, cx + j + b - 1]
                        if not _ok(q):
                            res[3] = BAD_BASE
                            return
                        rowv += wx[b] * q
                        rowd += dwx[b] * q
                    v += wy[a] * rowv
                    vy += dwy[a] * rowv
                    vx += wy[a] * rowd
                B[i + h, j + h] = v
                By[i + h, j + h] = vy
                Bx[i + h, j + h] = vx
                sb += v
        if it == 0:   # radiometric start: match the means and deviations
            mb = sb / n
            vb = 0.0
            for i in range(2 * h + 1):
                for j in range(2 * h + 1):
                    vb += (B[i, j] - mb) ** 2
            if vb <= 1e-9 * n:
                res[3] = BAD_BASE
                return
            g = math.sqrt(vt / vb)
            o = mt - g * mb
        if it == LSM_MAX_ITER or converged:
            break
        for k in range(4):
            rhs[k] = 0.0
            for m in range(4):
                N[k, m] = 0.0
        for i in range(2 * h + 1):
            for j in range(2 * h + 1):
                e = T[i, j] + mt - (g * B[i, j] + o)
                j0 = g * By[i, j]
                j1 = g * Bx[i, j]
                j2 = B[i, j]
                jac = (j0, j1, j2, 1.0)
                for k in range(4):
                    rhs[k] += jac[k] * e
                    for m in range(k, 4):
                        N[k, m] += jac[k] * jac[m]
        for k in range(4):
            for m in range(k):
                N[k, m] = N[m, k]
        if not _solve4(N, rhs):
            res[3] = DIVERGED
            return
        dy += rhs[0]
        dx += rhs[1]
        g += rhs[2]
        o += rhs[3]
        if abs(dy) > 1.5 or abs(dx) > 1.5 or g <= 0:
            res[3] = DIVERGED
            return
        if abs(rhs[0]) < LSM_EPS and abs(rhs[1]) < LSM_EPS:
            converged = True      # one more pass to resample at the final position
    if not converged:
        res[3] = DIVERGED
        return
    # NCC at the final position
    sb = 0.0
    for i in range(2 * h + 1):
        for j in range(2 * h + 1):
            sb += B[i, j]
    mb = sb / n
    vb = 0.0
    stb = 0.0
    for i in range(2 * h + 1):
        for j in range(2 * h + 1):
            d = B[i, j] - mb
            vb += d * d
            stb += T[i, j] * d
    ncc = stb / math.sqrt(vt * vb) if vb > 0 else 0.0
    res[0] = bi + dy
    res[1] = bj + dx
    res[2] = ncc
    res[3] = OK if ncc >= ncc_min else LOW_NCC


@njit(cache=True, parallel=True)
def _match_points(tgt, base, rows, cols, pred_r, pred_c, h, R, ncc_min, out):
    for k in prange(rows.shape[0]):
        _match_one(tgt, base, rows[k], cols[k], pred_r[k], pred_c[k], h, R, ncc_min, out[k])


def match_points(tgt: np.ndarray, base: np.ndarray, pts: np.ndarray, pred: np.ndarray,
                 h: int, search: int, ncc_min: float = NCC_MIN) -> np.ndarray:
    """Match target windows at integer ``pts`` (n, 2: row, col) in ``base``.

    ``pred`` (n, 2): predicted displacement (base − target; rows, cols). Returns (n, 4):
    base row, base col (sub-pixel), NCC, status (OK = 0).
    """
    out = np.zeros((len(pts), 4), np.float64)
    if len(pts):
        _match_points(tgt, base, np.ascontiguousarray(pts[:, 0], np.int64),
                      np.ascontiguousarray(pts[:, 1], np.int64),
                      np.ascontiguousarray(pred[:, 0], np.float64),
                      np.ascontiguousarray(pred[:, 1], np.float64), int(h), int(search),
                      float(ncc_min), out)
    return out


# =============================================================================== fitting
def _design(src: np.ndarray, model: str) -> np.ndarray:
    if model == "translation":
        return np.ones((len(src), 1))
    return np.column_stack([src[:, 0], src[:, 1], np.ones(len(src))])


def _lsq(src: np.ndarray, dst: np.ndarray, model: str) -> np.ndarray:
    """2×3 matrix mapping src (x, y) → dst by least squares (model translation/affine)."""
    if model == "translation":
        t = (dst - src).mean(axis=0)
        return np.array([[1.0, 0.0, t[0]], [0.0, 1.0, t[1]]])
    # centre the coordinates for conditioning
    c = src.mean(axis=0)
    a = _design(src - c, "affine")
    coef, *_ = np.linalg.lstsq(a, dst, rcond=None)     # (3, 2)
    m = coef.T.copy()                                  # dst = M (src − c) + t
    m[:, 2] -= m[:, :2] @ c
    return m


def _ncoef(model: str) -> int:
    return 1 if model == "translation" else 3


def _rss(src: np.ndarray, dst: np.ndarray, m: np.ndarray) -> float:
    pred = src @ m[:, :2].T + m[:, 2]
    return float(((dst - pred) ** 2).sum())


def choose_model(src: np.ndarray, dst: np.ndarray, shape=None) -> tuple[str, float]:
    """Translation or affine for ties base → image, and the F statistic of the affine's
    four extra coefficients.

    Affine only with ≥ AFFINE_MIN_TIES ties that spread over at least a third of the image
    in both directions (an affine fitted to a small cluster extrapolates badly), and only
    when it explains significantly more than a translation: F =
    ((RSS_t − RSS_a)/4)/(RSS_a/(2n − 6)) > AFFINE_F_MIN (conservative, since the windows of
    neighbouring ties overlap and their errors are not independent).
    """
    n = len(src)
    if n < AFFINE_MIN_TIES:
        return "translation", 0.0
    if shape is not None:
        span = src.max(axis=0) - src.min(axis=0)
        if span[0] < shape[1] / 3 or span[1] < shape[0] / 3:
            return "translation", 0.0
    rss_t = _rss(src, dst, _lsq(src, dst, "translation"))
    rss_a = _rss(src, dst, _lsq(src, dst, "affine"))
    f = ((rss_t - rss_a) / 4.0) / max(rss_a / (2 * n - 6), 1e-12)
    return ("affine" if f > AFFINE_F_MIN else "translation"), float(f)


def robust_fit(src: np.ndarray, dst: np.ndarray, model: str | None = None,
               shape=None) -> Fit | None:
    """Fit base → image positions (x, y) with outlier removal: ties farther than
    max(3·1.4826·MAD, 0.5 px) from the median displacement go first; then up to
    REJECT_ROUNDS rounds of fit and removal of residuals > 2·RMSE (FORCE's rule, iterated).
    ``model`` None: :func:`choose_model` on the inliers. None if < 3 ties remain."""
    if len(src) < 3:
        return None
    d = dst - src
    med = np.median(d, axis=0)
    dev = np.hypot(*(d - med).T)
    mad = 1.4826 * float(np.median(dev))
    keep = dev <= max(3.0 * mad, 0.5)
    if keep.sum() < 3:
        return None
    m = None
    mdl = "translation"
    rmse = 0.0
    for _ in range(REJECT_ROUNDS + 1):
        mdl = model or choose_model(src[keep], dst[keep], shape)[0]
        m = _lsq(src[keep], dst[keep], mdl)
        pred = src @ m[:, :2].T + m[:, 2]
        r = np.hypot(*(dst - pred).T)
        dof = max(int(keep.sum()) - _ncoef(mdl), 1)
        rmse = math.sqrt(float((r[keep] ** 2).sum()) / dof)
        new = keep & (r <= max(2.0 * rmse, 1e-3))
        if new.sum() < 3:
            break
        if (new == keep).all():
            break
        keep = new
    return Fit(m, mdl, rmse, src[keep], dst[keep])


# =============================================================================== estimation
def _to_level0(pts: np.ndarray, k: int) -> np.ndarray:
    return (2 ** k) * (pts + 0.5) - 0.5


def _from_level0(pts: np.ndarray, k: int) -> np.ndarray:
    return (pts + 0.5) / (2 ** k) - 0.5


def _level_prediction(fit: Fit | None, pts_rc: np.ndarray, k: int) -> np.ndarray:
    """Predicted displacement base − image (rows, cols) at level k for image points."""
    if fit is None:
        return np.zeros((len(pts_rc), 2))
    img0 = _to_level0(pts_rc[:, ::-1].astype(np.float64), k)   # (x, y) level 0
    # base position b with A(b) = img  →  b = A⁻¹(img)
    m = fit.matrix
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    b0 = img0 @ inv[:, :2].T + inv[:, 2]
    bk = _from_level0(b0, k)
    return (bk - pts_rc[:, ::-1])[:, ::-1]


def _ties(res: np.ndarray, pts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(base, image) level-0 (x, y) positions of the accepted matches."""
    ok = res[:, 3] == OK
    img = _to_level0(pts[ok][:, ::-1].astype(np.float64), k)
    base = _to_level0(res[ok][:, 1::-1].copy(), k)
    return base, img


@dataclass
class Estimate:
    fit: Fit
    depth_first: Fit
    top_level: int
    stats: dict


def _fail(msg: str) -> ProcessingError:
    return ProcessingError(f"co-registration failed: {msg}")


def estimate_transform(target: np.ndarray, base: np.ndarray) -> Estimate:
    """Ties and transform (base → image) between two co-gridded images (int16 ×10000 with
    −9999, or float32 with NaN = nodata). Raises ``ProcessingError`` on failure."""
    if target.shape != base.shape:
        raise ValueError("target and base must be on the same grid")
    both = (target > LAND_MIN) & (base > LAND_MIN)
    if target.dtype.kind == "f":
        both &= np.isfinite(target) & np.isfinite(base)
    n_land = int(np.count_nonzero(both))
    del both
    if n_land < (2 * H_COARSE + 1) ** 2:
        raise _fail(f"no overlap of clear land pixels (NIR > {LAND_MIN / 10000:g}) of the "
                    f"image with valid pixels of the base image ({n_land} pixels)")
    nlev = n_levels_for(target.shape)
    pt = pyramid(target, nlev)
    pb = pyramid(base, nlev)
    stats: dict = {"levels": nlev, "land_pixels": n_land}
    # FORCE retries with a lower top level; here every lower level is tried while its
    # size stays moderate (the points of interest need a few full-size filters)
    tops = [k for k in range(nlev - 1, -1, -1)
            if k == nlev - 1 or pt[k].size <= MAX_POI_PIXELS]
    depth = None
    reasons = []
    used_top = tops[0]
    for top in tops:
        used_top = top
        depth, why = _depth_first(pt, pb, top, stats)
        if depth is not None:
            break
        reasons.append(why)
    if depth is None:
        raise _fail(reasons[-1])
    # dense matching at full resolution
    ny, nx = target.shape
    step = max(3, int(math.sqrt(n_land / N_DENSE)))
    rr = np.arange(H_DENSE + 1, ny - H_DENSE - 1, step)
    cc = np.arange(H_DENSE + 1, nx - H_DENSE - 1, step)
    grid_pts = np.stack(np.meshgrid(rr, cc, indexing="ij"), axis=-1).reshape(-1, 2)
    if len(grid_pts):
        grid_pts = grid_pts[(target[grid_pts[:, 0], grid_pts[:, 1]] > LAND_MIN)
                            & (base[grid_pts[:, 0], grid_pts[:, 1]] > LAND_MIN)]
    pred = _level_prediction(depth, grid_pts, 0)
    res = match_points(target, base, grid_pts.astype(np.int64), pred, H_DENSE, 1)
    # where the large window is not all clear land (clouds, coast, image edge), a
    # smaller one (fragmented clear areas of cloudy images keep their ties)
    again = np.nonzero(res[:, 3] == BAD_TARGET)[0]
    if len(again):
        res[again] = match_points(target, base, grid_pts[again].astype(np.int64),
                                  pred[again], H_COARSE, 1)
    tol = min(max(3.0 * depth.rmse, 0.5), 2.0)
    moved = np.hypot(res[:, 0] - (grid_pts[:, 0] + pred[:, 0]),
                     res[:, 1] - (grid_pts[:, 1] + pred[:, 1]))
    res[(res[:, 3] == OK) & (moved > tol), 3] = LOW_NCC
    src, dst = _ties(res, grid_pts, 0)
    stats["dense_points"] = int(len(grid_pts))
    stats["dense_matched"] = int(len(src))
    stats["dense_status"] = _status_text(res)
    if len(src) < MIN_TIES:
        raise _fail(f"{len(src)} tie points ({MIN_TIES} needed) in the dense matching of "
                    f"{len(grid_pts)} grid points ({_status_text(res)})")
    fit = robust_fit(src, dst, shape=target.shape)
    if fit is None or fit.n < MIN_TIES:
        n = 0 if fit is None else fit.n
        raise _fail(f"{n} tie points ({MIN_TIES} needed) after outlier removal in the dense "
                    f"matching")
    stats["affine_F"] = round(choose_model(fit.src, fit.dst, target.shape)[1], 2)
    return Estimate(fit, depth, used_top, stats)


def _status_text(res: np.ndarray) -> str:
    """Counts of the matching outcomes, e.g. "ok 7, low correlation 30"."""
    cnt = np.bincount(res[:, 3].astype(np.int64), minlength=len(STATUS_NAMES))
    return ", ".join(f"{STATUS_NAMES[i]} {int(c)}" for i, c in enumerate(cnt) if c)


def _depth_first(pt: list, pb: list, top: int, stats: dict) -> tuple[Fit | None, str]:
    """Initial matching at level ``top`` and depth-first matching down to level 0."""
    R = int(math.ceil(SEARCH_PX / 2 ** top)) + 1
    pois = points_of_interest(np.asarray(pt[top], np.float32) if top else
                              np.where(pt[0] > -9999, pt[0], np.nan).astype(np.float32),
                              np.asarray(pb[top], np.float32) if top else
                              np.where(pb[0] > -9999, pb[0], np.nan).astype(np.float32),
                              H_COARSE, margin=R)
    stats[f"poi_level{top}"] = int(len(pois))
    if len(pois) < MIN_TIES:
        return None, (f"{len(pois)} points of interest ({MIN_TIES} needed) on pyramid level "
                      f"{top}: too little texture in the clear land of the image")
    res = match_points(pt[top], pb[top], pois, np.zeros((len(pois), 2)), H_COARSE, R)
    src, dst = _ties(res, pois, top)
    stats[f"initial_level{top}"] = int(len(src))
    fit = robust_fit(src, dst, model="translation") if len(src) >= MIN_TIES else None
    if fit is None or fit.n < MIN_TIES:
        n = len(src) if fit is None else fit.n
        return None, (f"{n} tie points ({MIN_TIES} needed) in the initial matching on pyramid "
                      f"level {top} of {len(pois)} points of interest ({_status_text(res)})")
    # follow the ties down the pyramid
    img_pts = fit.dst
    for k in range(top - 1, -1, -1):
        pts = np.rint(_from_level0(img_pts, k)[:, ::-1]).astype(np.int64)
        pts = np.unique(pts, axis=0)
        pred = _level_prediction(fit, pts, k)
        res = match_points(pt[k], pb[k], pts, pred, H_COARSE, 1)
        src, dst = _ties(res, pts, k)
        stats[f"depth_level{k}"] = int(len(src))
        new = robust_fit(src, dst, shape=pt[0].shape) if len(src) >= MIN_TIES else None
        if new is None or new.n < MIN_TIES:
            n = len(src) if new is None else new.n
            return None, (f"{n} tie points ({MIN_TIES} needed) in the depth-first matching on "
                          f"pyramid level {k} ({_status_text(res)})")
        fit = new
        img_pts = fit.dst
    return fit, ""


# =============================================================================== applying
def _edge_matrix(fit: Fit) -> np.ndarray:
    """3×3 matrix of the fit on edge-based coordinates (u = x + 0.5)."""
    m = np.vstack([fit.matrix, [0.0, 0.0, 1.0]])
    sh = np.array([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1.0]])
    return sh @ m @ np.linalg.inv(sh)


def band_matrix(a_edge: np.ndarray, target_grid: Grid, band_grid: Grid) -> np.ndarray:
    """The 3×3 edge-coordinate transform ``a_edge`` of the target grid expressed on another
    grid of the same CRS (same map-unit displacement field)."""
    def to_map(g: Grid) -> np.ndarray:       # edge coords (u, v) → map (x, y)
        return np.array([[g.dx, 0.0, g.x0], [0.0, -g.dy, g.y0], [0.0, 0.0, 1.0]])
    mt, mb = to_map(target_grid), to_map(band_grid)
    return np.linalg.inv(mb) @ mt @ a_edge @ np.linalg.inv(mt) @ mb


@njit(cache=True, parallel=True)
def _warp_bilinear(src, out, m, nodata):
    ny, nx = src.shape
    oy, ox = out.shape
    for i in prange(oy):
        for j in range(ox):
            u = j + 0.5
            v = i + 0.5
            x = m[0, 0] * u + m[0, 1] * v + m[0, 2] - 0.5
            y = m[1, 0] * u + m[1, 1] * v + m[1, 2] - 0.5
            x0 = int(math.floor(x))
            y0 = int(math.floor(y))
            fx = x - x0
            fy = y - y0
            acc = 0.0
            ws = 0.0
            for a in range(2):
                r = y0 + a
                if r < 0 or r >= ny:
                    continue
                wy = fy if a == 1 else 1.0 - fy
                for b in range(2):
                    c = x0 + b
                    if c < 0 or c >= nx:
                        continue
                    q = src[r, c]
                    if q == nodata:
                        continue
                    w = wy * (fx if b == 1 else 1.0 - fx)
                    acc += w * q
                    ws += w
            if ws > 1e-9:
                out[i, j] = np.int16(math.floor(acc / ws + 0.5))
            else:
                out[i, j] = nodata


@njit(cache=True, parallel=True)
def _warp_nearest(src, out, m, outside):
    ny, nx = src.shape
    oy, ox = out.shape
    for i in prange(oy):
        for j in range(ox):
            u = j + 0.5
            v = i + 0.5
            x = m[0, 0] * u + m[0, 1] * v + m[0, 2]
            y = m[1, 0] * u + m[1, 1] * v + m[1, 2]
            c = int(math.floor(x))
            r = int(math.floor(y))
            if r < 0 or r >= ny or c < 0 or c >= nx:
                out[i, j] = outside
            else:
                out[i, j] = src[r, c]


def warp_band(band: np.ndarray, m_edge: np.ndarray, nodata: int = NODATA) -> np.ndarray:
    """int16 band resampled with the 3×3 edge-coordinate matrix (output → source),
    nodata-aware bilinear."""
    out = np.empty_like(band)
    _warp_bilinear(band, out, np.ascontiguousarray(m_edge[:2], np.float64), np.int16(nodata))
    return out


def warp_qai(qai: np.ndarray, m_edge: np.ndarray) -> np.ndarray:
    """QAI resampled by nearest neighbour (outside → QAI nodata)."""
    out = np.empty_like(qai)
    _warp_nearest(qai, out, np.ascontiguousarray(m_edge[:2], np.float64),
                  qai.dtype.type(Q.QAI_NODATA))
    return out


def apply_transform(scene, a_edge: np.ndarray, target_grid: Grid, target_domain: str) -> None:
    """Register every band of ``scene.toa`` (on its own grid) and the QAI in place with the
    edge-coordinate transform ``a_edge`` of ``target_grid`` (spec 03 §5 step 9–10)."""
    for dom in list(scene.toa):
        m = band_matrix(a_edge, target_grid, scene.grids[dom])
        scene.toa[dom] = warp_band(scene.toa[dom], m)
    scene.qai = warp_qai(scene.qai, band_matrix(a_edge, target_grid, scene.grid))
    # QAI nodata wherever the registered target band is nodata (all pixels)
    tgt = scene.band(target_domain, scene.grid)
    Q.set_flag(scene.qai, Q.NODATA, tgt == NODATA)
    off = Q.is_nodata(scene.qai)
    for arr in scene.toa.values():
        if arr.shape == scene.qai.shape:
            arr[off] = NODATA


# =============================================================================== the stage
def target_domain(scene) -> str:
    """The band matched to the base: Sentinel-2 BROADNIR (B8), Landsat NIR."""
    mission = scene.level1.spec.mission
    dom = TARGET_DOMAIN.get(mission)
    if dom is None or dom not in scene.toa:
        raise ProcessingError(f"co-registration failed: no {dom or 'NIR'} band in the image "
                              f"(sensor {scene.level1.sensor})")
    return dom


def usable_target(scene, domain: str) -> np.ndarray:
    """Copy of the target band with nodata, cloud (any state) and shadow pixels → −9999."""
    g = scene.grids[domain]
    qai = scene.qai_on(g)
    bad = (qai & Q.QAI_DTYPE(1 << Q.NODATA | 3 << Q.CLOUD | 1 << Q.SHADOW)) != 0
    out = scene.toa[domain].copy()
    out[bad] = NODATA
    return out


def coregister(scene, params) -> CoregResult:
    """Co-register ``scene`` to its base image of ``params.dir_coreg_base`` (spec 03 §5).

    Modifies ``scene.toa`` (every band, on its own grid) and ``scene.qai`` in place and
    returns a :class:`CoregResult` with the log fragment
    ``coreg (#tie, x/y shift, rmse): n/x/y/rmse - good,``. Raises ``AuxiliaryError`` when
    no base image exists or it does not overlap the image, ``ProcessingError`` when the
    co-registration fails (the scene is then unchanged).
    """
    from .aux.coreg_base import find_base_image, read_base_band
    t0 = time.perf_counter()
    level1 = scene.level1
    dom = target_domain(scene)
    g = scene.grids[dom]
    path = find_base_image(Path(params.dir_coreg_base), level1.acquired)
    nthreads = max(1, int(getattr(params, "nthread", 1) or 1))
    base = read_base_band(path, level1.acquired.month, g,
                          nodata=int(getattr(params, "coreg_base_nodata", NODATA)),
                          num_threads=nthreads)
    target = usable_target(scene, dom)
    try:
        est = estimate_transform(target, base)
    except ProcessingError as exc:
        raise ProcessingError(f"{exc} (base image {path.name}, band {level1.acquired.month})") \
            from None
    del target, base
    fit = est.fit
    # acceptance: displacement at the image corners and the centre
    ny, nx = g.ny, g.nx
    probe = np.array([[0, 0], [nx - 1, 0], [0, ny - 1], [nx - 1, ny - 1],
                      [(nx - 1) / 2, (ny - 1) / 2]], np.float64)
    disp = fit.apply(probe) - probe
    worst = float(np.hypot(*disp.T).max())
    if worst > MAX_SHIFT_PX:
        raise ProcessingError(
            f"co-registration failed: shift of {worst:.2f} px > {MAX_SHIFT_PX:g} px "
            f"(centre {disp[4, 0]:.2f}/{disp[4, 1]:.2f} px; {fit.n} tie points; base image "
            f"{path.name})")
    a_edge = _edge_matrix(fit)
    apply_transform(scene, a_edge, g, dom)
    sx, sy = float(disp[4, 0] * g.dx), float(disp[4, 1] * g.dy)
    frag = f"coreg (#tie, x/y shift, rmse): {fit.n}/{sx:.2f}/{sy:.2f}/{fit.rmse:.2f} - good,"
    stats = dict(est.stats, top_level=est.top_level, depth_first_ties=est.depth_first.n,
                 depth_first_rmse=round(est.depth_first.rmse, 4))
    return CoregResult(n_ties=fit.n, shift_x_m=sx, shift_y_m=sy, rmse_px=float(fit.rmse),
                       transform=a_edge[:2].copy(), log_fragment=frag,
                       seconds=time.perf_counter() - t0, model=fit.model, base_image=path,
                       target_domain=dom, stats=stats)
