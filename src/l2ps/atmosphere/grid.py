"""The coarse RT grid: radiative-transfer terms per 5 km cell × elevation level × band
(spec 02 §1.10, with the l2ps formulation of radtran.py).

Per band the terms are computed once per scene: the doubling–adding solver runs for every
elevation level (× a few AOD nodes when an AOD map varies over the scene) on a handful of μ
nodes spanning the scene's sun and view cosines; per cell the multiple-scattering part is
interpolated in (μs, μv) and the single scattering is evaluated exactly at the cell's scattering
angle.  Elevation levels replace FORCE's 255 DEM bins: terms are linear in elevation between
levels spaced ≤ 100 m (deviation, docs/deviations.d/atmosphere.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import radtran as rt
from .constants import BandOptics
from .gas import gas_transmittance

#: water-vapour nodes (g cm-2) of the per-cell gas tables used when water vapour varies per pixel
WV_NODES = np.round(np.arange(0.0, 7.0001, 0.25), 4)
#: aerosol scale height (km) used to move an AOD between elevations (continental profile of 6S)
AEROSOL_SCALE_HEIGHT_KM = 2.0
#: Fourier components of the multiple scattering (azimuth dependence)
NFOURIER = 3
#: AOD nodes of the solver when the AOD varies over the scene (spacing, maximum count)
AOD_NODE_STEP = 0.02
AOD_NODES_MAX = 40
#: maximum spacing of the elevation levels (km)
LEVEL_SPACING_KM = 0.1


def elevation_levels(zmin_km: float, zmax_km: float, spacing: float = LEVEL_SPACING_KM) -> np.ndarray:
    """Equally spaced elevation levels covering [zmin, zmax] (one level if flat)."""
    if not np.isfinite(zmin_km) or not np.isfinite(zmax_km) or zmax_km - zmin_km < 1e-6:
        z = 0.0 if not np.isfinite(zmin_km) else zmin_km
        return np.array([z], dtype=np.float64)
    n = int(math.ceil((zmax_km - zmin_km) / spacing)) + 1
    return np.linspace(zmin_km, zmax_km, n)


def pressure_factor(z_km):
    """Rayleigh optical depth scaling with elevation (FORCE's Hr(z), spec 02 §1.2)."""
    return rt.mod_elev_factor(z_km)


@dataclass
class BandRT:
    """RT terms of one band on (ncy, ncx, nlev) [× nw for the gas tables], float32.

    path_r / path_a: gas-free Rayleigh / aerosol parts of the path reflectance;
    t_sun, t_view: total (direct + diffuse) scattering transmittances; tdir_view: direct
    upward; tdir_sun: direct downward (t_sun − tdir_sun is the diffuse part, spec 02 §6);
    s: spherical albedo; tg: two-way gas transmittance at ``wv`` (nw nodes);
    tg_aer: gas transmittance with half the water vapour (couples the aerosol path);
    tg_ray: without water vapour (couples the Rayleigh path); tau_a: aerosol optical depth.
    """
    domain: str
    levels: np.ndarray
    wv: np.ndarray
    path_r: np.ndarray
    path_a: np.ndarray
    t_sun: np.ndarray
    t_view: np.ndarray
    tdir_view: np.ndarray
    tdir_sun: np.ndarray
    s: np.ndarray
    tau_a: np.ndarray
    tau_r: np.ndarray
    tg: np.ndarray
    tg_aer: np.ndarray
    tg_ray: np.ndarray


def _nodes(lo: float, hi: float, step: float = 0.02) -> np.ndarray:
    if hi - lo < 1e-4:
        return np.array([lo - 5e-5, min(hi + 5e-5, 1.0)]) if hi < 1 else np.array([lo - 1e-4, 1.0])
    n = max(2, int(math.ceil((hi - lo) / step)) + 1)
    return np.linspace(lo, hi, n)


def _bilinear_nodes(nodes: np.ndarray, x: np.ndarray):
    i = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, len(nodes) - 2)
    w = np.clip((x - nodes[i]) / (nodes[i + 1] - nodes[i]), 0.0, 1.0)
    return i, w


def compute_band_rt(optics: BandOptics, sun_zenith: np.ndarray, sun_azimuth: np.ndarray,
                    view_zenith: np.ndarray, view_azimuth: np.ndarray, levels: np.ndarray,
                    aod550: np.ndarray | float, aod_elevation: float, wv: np.ndarray | float,
                    ozone: np.ndarray | float, multi_scattering: bool = True,
                    nstreams: int = 12,
                    aerosol_scale_height_km: float = AEROSOL_SCALE_HEIGHT_KM) -> BandRT:
    """RT terms of one band for every coarse cell (angles in degrees, NaN = nodata cell) and
    elevation level (km).

    ``aod550``: AOD at 550 nm of the column above ``aod_elevation`` (km), scalar or per cell;
    at level z it is scaled by exp(−(z − aod_elevation)/H), H = ``aerosol_scale_height_km``
    (2 km, or the scene's fit of spec 02 §3.7).  ``wv``: water vapour above the
    target (g cm⁻²), scalar (Landsat) or an array of nodes (per-pixel water vapour, S2).
    ``ozone``: atm-cm, scalar or per cell.
    """
    shape = sun_zenith.shape
    valid = np.isfinite(sun_zenith) & np.isfinite(view_zenith)
    szen = np.where(valid, sun_zenith, 0.0).astype(np.float64)
    vzen = np.where(valid, view_zenith, 0.0).astype(np.float64)
    mus, muv = np.cos(np.radians(szen)), np.cos(np.radians(vzen))
    cpsi = rt.scattering_cosine(mus, muv, np.where(valid, sun_azimuth, 0.0),
                                np.where(valid, view_azimuth, 0.0))
    levels = np.asarray(levels, dtype=np.float64)
    nlev = levels.size
    aod_cell = np.broadcast_to(np.asarray(aod550, dtype=np.float64), shape)
    scale = np.exp(-(levels - aod_elevation) / aerosol_scale_height_km)        # (nlev,)
    tau_a = optics.tau_a_per_aod550 * aod_cell[..., None] * scale              # (ncy, ncx, nlev)
    tau_r = optics.tau_r0 * pressure_factor(levels)                           # (nlev,)

    ms = _nodes(float(mus[valid].min()) if valid.any() else 0.5, float(mus[valid].max()) if valid.any() else 0.5)
    mv = _nodes(float(muv[valid].min()) if valid.any() else 1.0, float(muv[valid].max()) if valid.any() else 1.0)
    solver = rt.DoublingSolver(optics.chi, optics.ssa, np.concatenate([ms, mv]), nstreams=nstreams,
                               nfourier=NFOURIER)
    n_g = solver.n
    i_s = n_g + np.arange(ms.size)
    i_v = n_g + ms.size + np.arange(mv.size)

    # AOD nodes per level (nlev, na): exact when the AOD is one value per scene, else nodes
    # ≤ AOD_NODE_STEP apart between the level's min and max
    if np.ndim(aod550) == 0 or not valid.any():
        a_nodes = tau_a.reshape(-1, nlev)[0][:, None]
    else:
        lo = np.min(np.where(valid[..., None], tau_a, np.inf), axis=(0, 1))
        hi = np.max(np.where(valid[..., None], tau_a, -np.inf), axis=(0, 1))
        hi = np.maximum(hi, lo + 1e-4)
        n = int(min(AOD_NODES_MAX, max(2, math.ceil(float(np.max(hi - lo)) / AOD_NODE_STEP) + 1)))
        a_nodes = lo[:, None] + (hi - lo)[:, None] * np.linspace(0.0, 1.0, n)[None, :]
    na = a_nodes.shape[1]
    tr_b = np.repeat(tau_r, na)
    ta_b = a_nodes.ravel()
    sol = solver.solve(np.concatenate([tr_b, tau_r]), np.concatenate([ta_b, np.zeros(nlev)]))
    # multiple scattering per Fourier component (B, nv, ns)
    rms = [(sol["R"][k] - sol["R1"][k])[:, i_v][:, :, i_s] for k in range(NFOURIER)]
    dphi = np.radians(np.where(valid, view_azimuth, 0.0) - np.where(valid, sun_azimuth, 0.0))
    # photon azimuth difference = φv − φs − 180°: cos(mΔ) = (−1)^m cos(m(φv − φs))
    fourier = [(1.0 if k == 0 else 2.0) * (-1.0) ** k * np.cos(k * dphi) for k in range(NFOURIER)]
    tt_s = sol["t_total"][:, i_s]
    tt_v = sol["t_total"][:, i_v]
    nb = nlev * na

    # interpolation weights per cell
    js, ws = _bilinear_nodes(ms, mus)
    jv, wv_ = _bilinear_nodes(mv, muv)

    def mu2(arr):   # arr (B', nv, ns) -> (B', ncy, ncx)
        return ((1 - wv_) * (1 - ws) * arr[:, jv, js] + (1 - wv_) * ws * arr[:, jv, js + 1]
                + wv_ * (1 - ws) * arr[:, jv + 1, js] + wv_ * ws * arr[:, jv + 1, js + 1])

    def mu1(arr, j, w):   # arr (B', n) -> (B', ncy, ncx)
        return (1 - w) * arr[:, j] + w * arr[:, j + 1]

    ms_aer = sum(fourier[k] * mu2(rms[k][:nb]) for k in range(NFOURIER)).reshape(nlev, na, *shape)
    ms_ray = sum(fourier[k] * mu2(rms[k][nb:]) for k in range(NFOURIER))    # (nlev, ncy, ncx)
    # polarisation correction of the Rayleigh multiple scattering (radtran docstring)
    pol = rt.rayleigh_polarization_correction(tau_r, np.concatenate([ms, mv]), nstreams)
    pol = mu2(pol[:, ms.size + np.arange(mv.size)][:, :, np.arange(ms.size)])
    ms_ray = ms_ray + pol
    ts_aer = mu1(tt_s[:nb], js, ws).reshape(nlev, na, *shape)
    tv_aer = mu1(tt_v[:nb], jv, wv_).reshape(nlev, na, *shape)
    s_aer = sol["s"][:nb].reshape(nlev, na)

    # linear interpolation in the AOD nodes per cell and level
    ia = np.zeros(tau_a.shape, np.intp)
    wa = np.zeros(tau_a.shape)
    if na > 1:
        for k in range(nlev):
            ia[..., k], wa[..., k] = _bilinear_nodes(a_nodes[k], tau_a[..., k])
    ia1 = np.minimum(ia + 1, na - 1)
    lev = np.arange(nlev)[None, None, :]
    cy, cx = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    cy, cx = cy[..., None], cx[..., None]

    def pick(arr):     # arr (nlev, na, ncy, ncx) -> (ncy, ncx, nlev)
        return (1 - wa) * arr[lev, ia, cy, cx] + wa * arr[lev, ia1, cy, cx]

    ms_tot = pick(ms_aer) + np.moveaxis(pol, 0, -1)
    t_sun = pick(ts_aer)
    t_view = pick(tv_aer)
    s = (1 - wa) * s_aer[lev, ia] + wa * s_aer[lev, ia1]
    ms_r = np.moveaxis(ms_ray, 0, -1)

    pa = optics.aerosol_phase(cpsi)[..., None]
    pr = rt.rayleigh_phase_depolarized(cpsi)[..., None]
    m3, v3 = mus[..., None], muv[..., None]
    ss_r, ss_a = rt.single_scattering_layered(tau_r, tau_a, optics.ssa, pa, pr, m3, v3)
    ss_r0, _ = rt.single_scattering_layered(tau_r + 0 * tau_a, 0.0 * tau_a, optics.ssa, pa, pr, m3, v3)
    if multi_scattering:
        path_r = ms_r + ss_r0
        path_a = ms_tot + ss_r + ss_a - path_r
    else:
        path_r = ss_r0
        path_a = ss_r + ss_a - ss_r0
    tdir_view = np.exp(-(tau_r + tau_a) / v3)
    tdir_sun = np.exp(-(tau_r + tau_a) / m3)

    airmass = 1.0 / mus + 1.0 / muv
    wv_nodes = np.atleast_1d(np.asarray(wv, dtype=np.float64))
    oz = np.broadcast_to(np.asarray(ozone, dtype=np.float64), shape)
    m4, z4, o4 = airmass[..., None, None], levels[None, None, :, None], oz[..., None, None]
    tg = gas_transmittance(optics, wv_nodes[None, None, None, :], m4, z4, o4)
    tg_aer = gas_transmittance(optics, 0.5 * wv_nodes[None, None, None, :], m4, z4, o4)
    tg_ray = gas_transmittance(optics, 0.0, m4[..., 0], z4[..., 0], o4[..., 0])

    def f32(a):
        a = np.array(np.broadcast_to(a, np.broadcast_shapes(np.shape(a), shape + (nlev,)) if np.ndim(a) <= 3 else np.shape(a)), dtype=np.float32)
        return a

    nan = ~valid
    out = BandRT(domain=optics.domain, levels=levels, wv=wv_nodes,
                 path_r=f32(path_r), path_a=f32(path_a), t_sun=f32(t_sun), t_view=f32(t_view),
                 tdir_view=f32(tdir_view), tdir_sun=f32(tdir_sun), s=f32(s), tau_a=f32(tau_a),
                 tau_r=f32(np.broadcast_to(tau_r, shape + (nlev,))),
                 tg=np.asarray(tg, np.float32), tg_aer=np.asarray(tg_aer, np.float32),
                 tg_ray=f32(tg_ray))
    for a in (out.path_r, out.path_a, out.t_sun, out.t_view, out.tdir_view, out.tdir_sun, out.s,
              out.tau_a,
              out.tg, out.tg_aer, out.tg_ray):
        a[nan] = np.nan
    return out


def toa_from_boa(rt_: BandRT, rho, cell=(0, 0), level: int = 0, wv_index: int = 0):
    """Forward model for a homogeneous Lambertian surface (for tests):
    ρTOA = tg_ray·ρp_r + tg_aer·ρp_a + tg·T↓T↑·ρ/(1 − s·ρ)."""
    i, j = cell
    t = rt_.t_sun[i, j, level] * rt_.t_view[i, j, level]
    return (rt_.tg_ray[i, j, level] * rt_.path_r[i, j, level]
            + rt_.tg_aer[i, j, level, wv_index] * rt_.path_a[i, j, level]
            + rt_.tg[i, j, level, wv_index] * t * rho / (1.0 - rt_.s[i, j, level] * rho))


def boa_from_toa(rt_: BandRT, rho_toa, cell=(0, 0), level: int = 0, wv_index: int = 0):
    """Homogeneous inversion with the gas-coupled path (scalar helper for tests):
    y = (ρTOA − ρp,g)/tg, ρ = y/(T + s·y)."""
    i, j = cell
    pg = (rt_.tg_ray[i, j, level] * rt_.path_r[i, j, level]
          + rt_.tg_aer[i, j, level, wv_index] * rt_.path_a[i, j, level])
    y = (rho_toa - pg) / rt_.tg[i, j, level, wv_index]
    return y / (rt_.t_sun[i, j, level] * rt_.t_view[i, j, level] + rt_.s[i, j, level] * y)
