"""Generate ``src/l2ps/data/water_library.npz``: water-leaving reflectance spectra for the
dark-target AOD retrieval over water (spec 02 §3.3–§3.4; replaces FORCE's WASI library, see
docs/atmosphere.md and DESIGN.md "Dependencies").

Bio-optical model (inherent optical properties → above-water reflectance), 400–900 nm, 5 nm:

- pure water absorption a_w: published values rounded to 2–3 digits, Pope & Fry (1997) for
  400–720 nm, Kou, Labrie & Chylek (1993) beyond (where water is nearly black anyway);
- pure (fresh) water scattering b_w = 0.00222·(λ/500)^−4.32 m⁻¹ (Morel 1974), b_bw = b_w/2;
- phytoplankton absorption a_ph = 0.06·Chl^0.65·a*_c(λ) (Prieur & Sathyendranath 1981,
  Morel 1991) with the normalised shape a*_c (1 at 440 nm) written as Gaussian pigment bands
  (Hoepffner & Sathyendranath 1991: Chl-a Soret 435 nm and red 675 nm, Chl-b/c 465, 585 and
  630 nm, carotenoids 490 and 530 nm) — an approximation of the tabulated shape;
- coloured dissolved + detrital matter a_dg(λ) = (0.2·a_ph(440) + a_g440)·e^(−0.014(λ−440))
  (Morel & Maritorena 2001 use 0.2·a_ph-like coupling; a_g440 extra CDOM for humic lakes);
- mineral particles (TSM g m⁻³): a_nap = 0.031·TSM·e^(−0.0123(λ−443)) and
  b_bp,min = 0.0102·TSM·(555/λ)^0.5 (mass-specific values of Babin et al. 2003, rounded);
- phytoplankton backscattering b_bp,ph = 0.416·Chl^0.766·(0.002 + 0.01(0.5 − 0.25 log10 Chl)
  ·(λ/550)^ν), ν = 0.5(log10 Chl − 0.3) for Chl < 2, else 0 (Morel & Maritorena 2001);
- u = b_b/(a + b_b); below-surface remote-sensing reflectance r_rs = 0.0949u + 0.0794u²
  (Gordon et al. 1988); above surface R_rs = 0.52 r_rs/(1 − 1.7 r_rs) (Lee et al. 2002);
  reflectance ρ_w = π·R_rs (no sky glint: the forward model adds the Fresnel sky term).

Grid: Chl ∈ {0.03, 0.3, 3, 30} mg m⁻³ × TSM ∈ {0, 0.5, 2, 6, 20} g m⁻³ × a_g440 ∈ {0, 0.5} m⁻¹
= 40 spectra (20 kB).  Run: ``python tools/make_water_library.py`` (under a second).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "src" / "l2ps" / "data" / "water_library.npz"

#: pure-water absorption (m⁻¹) at 400, 410, …, 900 nm
_AW_WL = np.arange(400, 901, 10)
_AW = np.array([
    0.0066, 0.0047, 0.0045, 0.0050, 0.0064, 0.0092, 0.0098, 0.0106, 0.0127, 0.0150,  # 400–490
    0.0204, 0.0325, 0.0409, 0.0434, 0.0474, 0.0565, 0.0619, 0.0695, 0.0896, 0.1351,  # 500–590
    0.2224, 0.2644, 0.2755, 0.2916, 0.3108, 0.340, 0.410, 0.439, 0.465, 0.516,       # 600–690
    0.624, 0.827, 1.231, 1.60, 2.38, 2.62, 2.55, 2.50, 2.40, 2.20,                   # 700–790
    2.05, 2.30, 2.70, 2.95, 3.60, 4.30, 4.60, 4.90, 5.30, 6.00, 6.80])                # 800–900

CHL = (0.03, 0.3, 3.0, 30.0)
TSM = (0.0, 0.5, 2.0, 6.0, 20.0)
CDOM = (0.0, 0.5)


def pure_water_absorption(wl_nm: np.ndarray) -> np.ndarray:
    return np.interp(wl_nm, _AW_WL, _AW)


def phytoplankton_shape(wl_nm: np.ndarray) -> np.ndarray:
    """Normalised phytoplankton absorption (1 at 440 nm) as Gaussian pigment bands."""
    bands = ((435.0, 1.00, 24.0), (465.0, 0.42, 18.0), (490.0, 0.30, 18.0),
             (530.0, 0.16, 35.0), (585.0, 0.09, 25.0), (630.0, 0.10, 14.0),
             (675.0, 0.48, 11.0))
    s = sum(h * np.exp(-0.5 * ((wl_nm - c) / w) ** 2) for c, h, w in bands)
    s440 = sum(h * np.exp(-0.5 * ((440.0 - c) / w) ** 2) for c, h, w in bands)
    return s / s440


def reflectance(wl_nm: np.ndarray, chl: float, tsm: float, ag440: float) -> np.ndarray:
    """Above-water water-leaving reflectance ρ_w = π·R_rs (module docstring)."""
    aw = pure_water_absorption(wl_nm)
    bbw = 0.5 * 0.00222 * (wl_nm / 500.0) ** -4.32
    aph440 = 0.06 * chl ** 0.65
    aph = aph440 * phytoplankton_shape(wl_nm)
    adg = (0.2 * aph440 + ag440) * np.exp(-0.014 * (wl_nm - 440.0))
    anap = 0.031 * tsm * np.exp(-0.0123 * (wl_nm - 443.0))
    lc = np.log10(chl)
    nu = 0.5 * (lc - 0.3) if chl < 2.0 else 0.0
    bbp = 0.416 * chl ** 0.766 * (0.002 + 0.01 * (0.5 - 0.25 * lc) * (wl_nm / 550.0) ** nu)
    bbp = bbp + 0.0102 * tsm * (555.0 / wl_nm) ** 0.5
    a = aw + aph + adg + anap
    bb = bbw + bbp
    u = bb / (a + bb)
    rrs_below = 0.0949 * u + 0.0794 * u * u
    rrs = 0.52 * rrs_below / (1.0 - 1.7 * rrs_below)
    return np.pi * rrs


def main() -> None:
    wl = np.arange(400.0, 900.1, 5.0)
    spectra, params = [], []
    for ag in CDOM:
        for tsm in TSM:
            for chl in CHL:
                spectra.append(reflectance(wl, chl, tsm, ag))
                params.append((chl, tsm, ag))
    meta = {"model": "Case-1/2 bio-optical model, see tools/make_water_library.py",
            "columns": ["chl_mg_m3", "tsm_g_m3", "ag440_per_m"],
            "reflectance": "pi * Rrs above the surface (no sky glint)"}
    np.savez_compressed(OUT, wavelength_um=(wl / 1000.0).astype(np.float32),
                        reflectance=np.asarray(spectra, np.float32),
                        parameters=np.asarray(params, np.float32),
                        meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    print(f"{OUT}: {len(spectra)} spectra; ρw(440/560/660/860 nm) range:")
    for k in (440, 560, 660, 860):
        i = int(np.argmin(np.abs(wl - k)))
        r = np.asarray(spectra)[:, i]
        print(f"  {k} nm: {r.min():.4f} … {r.max():.4f}")


if __name__ == "__main__":
    main()
