"""Numba kernels of the synthetic scene generator (:mod:`l2ps.synth.scene`).

Each kernel reproduces, value for value, the NumPy/SciPy expression it replaces (same
operations in the same order, same float32/float64 types), so that products stay
byte-identical for a seed whatever path renders them; ``tests/test_synth.py`` checks the
kernels against the reference expressions. Pixels are independent: results do not depend
on the number of threads.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

#: cloud kinds as kernel codes (order of scene.CLOUD_KINDS)
KIND_CODE = {"opaque": 0, "thin": 1, "cirrus": 2}


@njit(cache=True, inline="always")
def _bilinear_nearest(values, row, col):
    """``scipy.ndimage.map_coordinates(values, [[row], [col]], order=1, mode="nearest",
    prefilter=False)`` for a float32 array, as SciPy computes it: coordinates clamped to the
    array, weights 1 − f and 1 − (1 − f) in double, the four taps summed row-major from 0.0
    as value·w_row·w_col, the sum rounded to float32."""
    ny, nx = values.shape
    if row < 0.0:
        row = 0.0
    elif row > ny - 1:
        row = float(ny - 1)
    if col < 0.0:
        col = 0.0
    elif col > nx - 1:
        col = float(nx - 1)
    r0 = math.floor(row)
    c0 = math.floor(col)
    fr = row - r0
    fc = col - c0
    wr0 = 1.0 - fr
    wr1 = 1.0 - wr0
    wc0 = 1.0 - fc
    wc1 = 1.0 - wc0
    i0 = int(r0)
    j0 = int(c0)
    i1 = min(i0 + 1, ny - 1)
    j1 = min(j0 + 1, nx - 1)
    t = 0.0
    t += float(values[i0, j0]) * wr0 * wc0
    t += float(values[i0, j1]) * wr0 * wc1
    t += float(values[i1, j0]) * wr1 * wc0
    t += float(values[i1, j1]) * wr1 * wc1
    return np.float32(t)


@njit(cache=True, inline="always")
def _locate1(x, nodes):
    """``l2ps.synth.sixs._locate`` for one float32 value: (lower node index, float32 weight)."""
    n = nodes.shape[0]
    if n == 1:
        return 0, np.float32(0.0)
    k = 0                                   # searchsorted(nodes, x, side="right")
    while k < n and nodes[k] <= x:
        k += 1
    i = min(max(k - 1, 0), n - 2)
    w = np.float32(np.float32(x - nodes[i]) / np.float32(nodes[i + 1] - nodes[i]))
    if w < 0:
        w = np.float32(0.0)
    elif w > 1:
        w = np.float32(1.0)
    return i, w


@njit(cache=True, inline="always")
def _bilinear(tab, c, i0, i1, j0, j1, k, wi, wi0, wj, wj0):  # pragma: no cover
    """tab[c, ·, ·, k] bilinear between nodes (i0, i1) × (j0, j1) with upper weights wi, wj
    (lower wi0 = 1 − wi, wj0 = 1 − wj), in float32 and the corner order of
    sixs._multilinear (bit d of the corner = upper node in dim d)."""
    t = np.float32(tab[c, i0, j0, k] * np.float32(wi0 * wj0))
    t = np.float32(t + np.float32(tab[c, i1, j0, k] * np.float32(wi * wj0)))
    t = np.float32(t + np.float32(tab[c, i0, j1, k] * np.float32(wi0 * wj)))
    return np.float32(t + np.float32(tab[c, i1, j1, k] * np.float32(wi * wj)))


@njit(cache=True, parallel=True)
def surface_toa(cls, veg, bright, base_table, veg_refl, fine_w, fine_a, k_wet, k_abs,
                fdir, shade, cos_i_pos, mus, skyview, env, aod, wv, elev,
                row0, tile, tr0, nct, scat, gas, aod_nodes, elev_nodes, wv_nodes, tg_floor,
                rho_out, toa_out):
    """Surface and 6S TOA reflectance of one band for a block (all float32, row-major).

    Reproduces, value for value:

    * ``Scene.surface``: ρ = bright·((1 − veg)·base[cls] + veg·veg_refl), then with the fine
      texture (``fine_w.shape[0] > 0``) ρ·(1 − w·k_wet)·(1 + a·k_abs);
    * the illumination of ``Scene.toa_band``: I = fdir·shade·max(cos i, 0)/μs + (1 − fdir)·V;
    * ``BandTermsGrid.toa(ρ·I, env, aod, wv, elev)`` of ``l2ps.synth.sixs`` with the terms of
      the geometry tile of the pixel (``tile``² pixels; block row i is grid row row0 + i; tile
      index ((row0 + i)//tile − tr0)·nct + j//tile; ``scat[c]``: (n_aod, n_elev, 5),
      ``gas[c]``: (n_wv, n_elev, 3)): bilinear interpolation, path coupling and
      ρ_TOA = tg·[path + t_down·(t_up_dir·ρ + t_up_dif·ρ_env)/(1 − s·ρ_env)].
    """
    ny, nx = cls.shape
    one = np.float32(1.0)
    has_fine = fine_w.shape[0] > 0
    n_elev = elev_nodes.shape[0]
    for i in prange(ny):
        for j in range(nx):
            b = base_table[cls[i, j]]
            vg = veg[i, j]
            rho = bright[i, j] * np.float32(np.float32((one - vg) * b) + np.float32(vg * veg_refl))
            if has_fine:
                rho = np.float32(rho * np.float32(one - np.float32(fine_w[i, j] * k_wet)))
                rho = np.float32(rho * np.float32(one + np.float32(fine_a[i, j] * k_abs)))
            fd = fdir[i, j]
            ill = np.float32(np.float32(np.float32(fd * shade[i, j]) * cos_i_pos[i, j]) / mus[i, j])
            ill = np.float32(ill + np.float32(np.float32(one - fd) * skyview[i, j]))
            rho_out[i, j] = rho
            rs = np.float32(rho * ill)
            c = ((row0 + i) // tile - tr0) * nct + j // tile
            ia, wa = _locate1(aod[i, j], aod_nodes)
            iz, wz = _locate1(elev[i, j], elev_nodes)
            iw, ww = _locate1(wv[i, j], wv_nodes)
            ia1 = min(ia + 1, aod_nodes.shape[0] - 1)
            iz1 = min(iz + 1, n_elev - 1)
            iw1 = min(iw + 1, wv_nodes.shape[0] - 1)
            wa0 = np.float32(one - wa)
            wz0 = np.float32(one - wz)
            ww0 = np.float32(one - ww)
            sc = np.empty(5, np.float32)
            for k in range(5):
                sc[k] = _bilinear(scat, c, ia, ia1, iz, iz1, k, wa, wa0, wz, wz0)
            ray = np.float32(np.float32(scat[c, 0, iz, 0] * wz0)
                             + np.float32(scat[c, 0, iz1, 0] * wz))
            gs = np.empty(3, np.float32)
            for k in range(3):
                gs[k] = _bilinear(gas, c, iw, iw1, iz, iz1, k, ww, ww0, wz, wz0)
            tg = gs[0]
            path = sc[0]
            pe = np.float32(np.float32(gs[1] * ray) + np.float32(gs[2] * np.float32(path - ray)))
            pe = np.float32(pe / max(tg, tg_floor))
            e = env[i, j]
            surf = np.float32(sc[1] * np.float32(np.float32(sc[2] * rs) + np.float32(sc[3] * e)))
            surf = np.float32(surf / np.float32(one - np.float32(sc[4] * e)))
            toa_out[i, j] = np.float32(tg * np.float32(pe + surf))


@njit(cache=True)
def cell_maxabs(values):
    """Largest |value| of the 2×2 nodes of each lattice cell (bound of the bilinear field)."""
    ny, nx = values.shape
    out = np.empty((max(ny - 1, 1), max(nx - 1, 1)), np.float32)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            i1, j1 = min(i + 1, ny - 1), min(j + 1, nx - 1)
            out[i, j] = max(abs(values[i, j]), abs(values[i1, j]), abs(values[i, j1]),
                            abs(values[i1, j1]))
    return out


@njit(cache=True, inline="always")
def _cell_bound(mx, row, col):
    """Bound of |bilinear field| at a point (fractional node coordinates, clamped)."""
    ny, nx = mx.shape
    i = int(math.floor(min(max(row, 0.0), float(ny))))
    j = int(math.floor(min(max(col, 0.0), float(nx))))
    return mx[min(i, ny - 1), min(j, nx - 1)]


@njit(cache=True, parallel=True)
def cloud_alphas(xs, ys, z, vx, vy, params, kinds, windows, offsets,
                 e0, e0_x0, e0_y0, e0_step, e1, e1_x0, e1_y0, e1_step, r_skip, out,
                 m0, m1):
    """:func:`cloud_alpha` for many clouds in one parallel launch. Cloud k: ``params[k]`` =
    (height, cx, cy, a, b, ca, sa), ``kinds[k]``, window rows ``windows[k, 0]:windows[k, 1]``
    × columns ``windows[k, 2]:windows[k, 3]`` of the block arrays (xs, ys, z, vx, vy); its α
    goes row-major to ``out[offsets[k]:offsets[k + 1]]``. Returns the count of α > 0 per
    cloud."""
    nc = params.shape[0]
    nrows = 0
    for k in range(nc):
        nrows += windows[k, 1] - windows[k, 0]
    row_cloud = np.empty(nrows, np.int64)
    row_i = np.empty(nrows, np.int64)
    m = 0
    for k in range(nc):
        for i in range(windows[k, 0], windows[k, 1]):
            row_cloud[m] = k
            row_i[m] = i
            m += 1
    counts = np.zeros(nrows, np.int64)
    for q in prange(nrows):
        k = row_cloud[q]
        i = row_i[q]
        height, cx, cy, a, b, ca, sa = (params[k, 0], params[k, 1], params[k, 2], params[k, 3],
                                        params[k, 4], params[k, 5], params[k, 6])
        kind = kinds[k]
        h32 = np.float32(height)
        c0 = windows[k, 2]
        w = windows[k, 3] - c0
        base = offsets[k] + (i - windows[k, 0]) * w
        n = 0
        for jj in range(w):
            j = c0 + jj
            dh = h32 - z[i, j]
            if dh < 0:
                dh = np.float32(0.0)
            gx = xs[j] + float(dh * vx[i, j])
            gy = ys[i] + float(dh * vy[i, j])
            dx = gx - cx
            dy = gy - cy
            u = (dx * ca + dy * sa) / a
            v = (-dx * sa + dy * ca) / b
            r = math.sqrt(u * u + v * v)
            if r >= r_skip:
                out[base + jj] = 0.0
                continue
            y0r, x0c = (e0_y0 - gy) / e0_step, (gx - e0_x0) / e0_step
            y1r, x1c = (e1_y0 - gy) / e1_step, (gx - e1_x0) / e1_step
            # local bound of the edge terms (largest |node| of the cells): r ≥ 1 → α = 0
            bound = 0.22 * _cell_bound(m0, y0r, x0c) + 0.08 * _cell_bound(m1, y1r, x1c)
            if r >= 1.0 + bound * 1.001 + 1e-6:
                out[base + jj] = 0.0
                continue
            p0 = _bilinear_nearest(e0, y0r, x0c)
            p1 = _bilinear_nearest(e1, y1r, x1c)
            edge = np.float32(np.float32(0.22) * p0) + np.float32(np.float32(0.08) * p1)
            r = r + float(edge)
            if kind == 0:
                al = min(max((1.0 - r) / 0.25, 0.0), 1.0)
            elif kind == 1:
                al = 0.45 * min(max((1.0 - r) / 0.5, 0.0), 1.0)
            else:
                al = 0.35 * min(max((1.0 - r) / 0.6, 0.0), 1.0)
            out[base + jj] = np.float32(al)
            if al > 0:
                n += 1
        counts[q] = n
    per_cloud = np.zeros(nc, np.int64)
    for q in range(nrows):
        per_cloud[row_cloud[q]] += counts[q]
    return per_cloud
