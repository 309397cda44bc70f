"""Radiative transfer: FORCE's 5S formulation against the verification vectors of spec 02 §11,
and physical checks of the l2ps doubling–adding solver."""
from __future__ import annotations

import math

import numpy as np
import pytest

from l2ps.atmosphere import radtran as rt
from l2ps.atmosphere.gas import ozone_amount

# spec 02 §11: θs = 35°, θv = 5°, φs = 150°, φv = 100°; z = 0.5 km; τa = 0.15 (λ/0.55)^−1.3;
# r0 = 0.045 km.  Columns: λb, τr0, τr(z), τa, T, Ts, Tv, tsd, tss, tvd, tvs, ρp multi,
# ρp single, s, F
SPEC11 = {
    "GREEN": (0.56088, 0.090884, 0.085609, 0.146227, 0.857825, 0.919288, 0.933140, 0.753506,
              0.165783, 0.792375, 0.140766, 0.043183, 0.044135, 0.101080, 0.048477),
    "RED": (0.65416, 0.048449, 0.045637, 0.119722, 0.907311, 0.948022, 0.957058, 0.817204,
            0.130817, 0.847054, 0.110003, 0.025909, 0.026474, 0.069378, 0.049695),
    "NIR": (0.86412, 0.015730, 0.014817, 0.083371, 0.953026, 0.973943, 0.978523, 0.887039,
            0.086903, 0.906138, 0.072385, 0.011403, 0.011734, 0.037523, 0.051176),
    "SWIR2": (2.20080, 0.000472, 0.000444, 0.024729, 0.990346, 0.994691, 0.995632, 0.969736,
              0.024954, 0.975047, 0.020585, 0.001879, 0.001920, 0.008429, 0.052590),
}
MU_S, MU_V = math.cos(math.radians(35.0)), math.cos(math.radians(5.0))
TOL = 1e-5   # the vectors are printed with 6 decimals: allow the last digit's rounding


def test_geometry_and_phase_functions():
    c = rt.scattering_cosine(MU_S, MU_V, 150.0, 100.0)
    assert c == pytest.approx(-0.848168, abs=TOL)
    assert rt.rayleigh_phase(c) == pytest.approx(1.289542, abs=TOL)
    assert rt.aerosol_phase_tthg(c) == pytest.approx(0.230239, abs=TOL)
    assert rt.mod_elev_factor(0.5) == pytest.approx(0.941953, abs=TOL)
    assert rt.fresnel_reflection(35.0) == pytest.approx(0.022572, abs=TOL)
    assert rt.SOBOLEV == pytest.approx(2.187564, abs=TOL)


@pytest.mark.parametrize("band", list(SPEC11))
def test_spec11_band_terms(band):
    (lam, tr0, trz, ta, t, ts, tv, tsd, tss, tvd, tvs, pm, ps, s, f) = SPEC11[band]
    assert rt.molecular_optical_depth(lam) == pytest.approx(tr0, abs=TOL)
    tau_r = rt.molecular_optical_depth(lam) * rt.mod_elev_factor(0.5)
    assert tau_r == pytest.approx(trz, abs=TOL)
    tau_a = rt.angstrom_aod(lam, math.log(0.15) + 1.3 * math.log(0.55), -1.3)
    assert tau_a == pytest.approx(ta, abs=TOL)
    tr = rt.scattering_transmittances(tau_a, tau_r, MU_S, MU_V)
    for key, want in (("T", t), ("Ts", ts), ("Tv", tv), ("tsd", tsd), ("tss", tss),
                      ("tvd", tvd), ("tvs", tvs)):
        assert tr[key] == pytest.approx(want, abs=TOL), key
    c = rt.scattering_cosine(MU_S, MU_V, 150.0, 100.0)
    pa, pr = rt.aerosol_phase_tthg(c), rt.rayleigh_phase(c)
    assert rt.path_reflectance_multi(tau_a, tau_r, pa, pr, MU_S, MU_V) == pytest.approx(pm, abs=TOL)
    assert rt.path_reflectance_single(tau_a, tau_r, pa, pr, MU_S, MU_V) == pytest.approx(ps, abs=TOL)
    assert rt.spherical_albedo(tau_a, tau_r) == pytest.approx(s, abs=TOL)
    w = rt.env_weight(tau_a, tau_r, rt.env_aerosol(0.045), rt.env_rayleigh(0.045))
    assert w == pytest.approx(f, abs=TOL)


def test_environment_constants():
    assert rt.env_rayleigh(0.045) == pytest.approx(0.03627, abs=1e-5)
    assert rt.env_aerosol(0.045) == pytest.approx(0.05277, abs=1e-5)
    np.testing.assert_allclose(rt.env_rayleigh([0.25, 1.0, 4.5]), [0.18541, 0.55882, 0.97409], atol=1e-5)
    np.testing.assert_allclose(rt.env_aerosol([0.25, 1.0, 4.5]), [0.24775, 0.59272, 0.84737], atol=1e-5)


def test_ozone_van_heuklon():
    assert ozone_amount(10.0, 50.0, 180) == pytest.approx(0.3895, abs=1e-4)
    # southern hemisphere uses its own constants: amplitude stays within a plausible range
    assert 0.23 < float(ozone_amount(-60.0, -30.0, 10)) < 0.40


def test_inversions_are_inverse_of_forward_model():
    rho = np.array([0.02, 0.1, 0.5])
    rho_p, t, s, tg = 0.05, 0.8, 0.12, 0.93
    toa = tg * rho_p + tg * t * rho / (1 - s * rho)
    # FORCE's homogeneous inversion divides (ρTOA − ρp) by Tg: feed it a gas-free path
    y = (toa / tg - rho_p)
    np.testing.assert_allclose(rt.invert_homogeneous(y * tg + rho_p, rho_p, t, s, tg), rho, rtol=1e-12)
    ts, tvd, tvs = 0.9, 0.8, 0.09
    toa_adj = tg * (rho_p + ts * (tvd * rho + tvs * rho) / (1 - rho * s))
    np.testing.assert_allclose(rt.invert_adjacency(toa_adj, rho_p, ts, tvd, tvs, s, tg, rho), rho,
                               rtol=1e-12)


# ------------------------------------------------------------------ l2ps solver
def _hg_moments(g, n):
    return g ** np.arange(n)


def test_doubling_conserves_energy_without_absorption():
    mu = np.array([0.5, 0.8, 1.0])
    solver = rt.DoublingSolver(_hg_moments(0.7, 40), 1.0, mu)
    out = solver.solve(np.array([0.1, 0.0]), np.array([0.5, 1.0]))
    # flux reflected + flux transmitted = 1 for every incidence (no absorption)
    refl = np.einsum("bij,i->bj", out["R"][0], solver.d)
    np.testing.assert_allclose(refl + out["t_total"], 1.0, atol=2e-4)


def test_doubling_rayleigh_thin_layer_is_single_scattering():
    mu = np.array([0.6, 0.9])
    solver = rt.DoublingSolver(_hg_moments(0.0, 40), 1.0, mu, frac_r=[1.0], frac_a=[1.0])
    tau = 1e-4
    out = solver.solve(np.array([tau]), np.array([0.0]))
    n = solver.n
    # azimuth-averaged Rayleigh single scattering: (1 + 0.1·(3μ²−1)(3μ0²−1)/4·... ) via moments
    r = out["R"][0][0, n + 1, n]
    p0 = 1 + 5 * solver.chi_r[2] * 0.25 * (3 * 0.81 - 1) * (3 * 0.36 - 1)
    assert r == pytest.approx(tau * p0 / (4 * 0.6 * 0.9), rel=1e-3)


def test_doubling_absorption_reduces_spherical_albedo():
    mu = np.array([0.7])
    chi = _hg_moments(0.65, 40)
    a = rt.DoublingSolver(chi, 1.0, mu).solve([0.05], [0.5])
    b = rt.DoublingSolver(chi, 0.9, mu).solve([0.05], [0.5])
    assert b["s"][0] < a["s"][0]
    assert b["t_total"][0, -1] < a["t_total"][0, -1]
