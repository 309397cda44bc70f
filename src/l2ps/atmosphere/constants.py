"""Per-band constants of the atmospheric correction (spec 02 §1.11), read from committed data.

``l2ps/data/atmosphere_constants.npz`` is generated from 6SV1.1 by
``tools/make_atmosphere_constants.py`` (DESIGN.md "Dependencies"): per table sensor and band the
E0·RSR-weighted sea-level Rayleigh optical depth, the continental aerosol optical depth per unit
AOD(550 nm) and single-scattering albedo, the continental phase function at the band's effective
wavelength, and the band-integrated gas transmittance (H2O + O3 + O2, CO2, CH4, N2O, CO, NO2) on
(water vapour, two-way airmass, elevation) plus an ozone table.  ``band_constants.json`` gives λb
and E0.  Sensors without their own response use a stand-in (LND04 → TM, LND09 → OLI,
SEN2C/SEN2D → MSI-A), as FORCE does (spec 02 §1.11).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import L2psError
from . import radtran as rt

DATA = Path(__file__).resolve().parents[1] / "data"
CONSTANTS_FILE = DATA / "atmosphere_constants.npz"

#: l2ps sensor id → table sensor of the spectral responses
SENSOR_TABLE = {"LND04": "TM", "LND05": "TM", "LND07": "ETM", "LND08": "OLI", "LND09": "OLI",
                "SEN2A": "MSIA", "SEN2B": "MSIB", "SEN2C": "MSIA", "SEN2D": "MSIA"}
#: number of Legendre moments kept for the aerosol phase function
NMOM = 40


class AtmosphereConstantsError(L2psError):
    """The atmosphere constants file is missing or lacks a sensor/band."""


@dataclass(frozen=True, eq=False)
class BandOptics:
    """Optics of one band.  Optical depths are for the whole column at sea level (Rayleigh) or
    per unit AOD at 550 nm (aerosol)."""
    sensor: str
    domain: str
    wavelength: float          # µm, RSR-weighted mean
    e0: float                  # W m-2 µm-1 at 1 AU
    tau_r0: float              # sea-level Rayleigh optical depth
    tau_a_per_aod550: float    # continental aerosol optical depth for AOD(550) = 1
    ssa: float                 # aerosol single-scattering albedo
    phase_angle: np.ndarray    # degrees
    phase: np.ndarray          # aerosol phase function at phase_angle (1 over the sphere)
    chi: np.ndarray            # Legendre moments of the aerosol phase function
    gas: np.ndarray            # total gas transmittance on (gas_wv, gas_airmass, gas_elev), O3 ref
    gas_wv: np.ndarray
    gas_airmass: np.ndarray
    gas_elev: np.ndarray
    o3_u: np.ndarray           # ozone amount × airmass (atm-cm)
    o3_t: np.ndarray           # 6S ozone transmittance at o3_u
    o3_ref: float

    def aerosol_phase(self, cos_psi) -> np.ndarray:
        """Continental phase function at cos ψ (log-linear in angle)."""
        psi = np.degrees(np.arccos(np.clip(np.asarray(cos_psi, dtype=np.float64), -1, 1)))
        return np.exp(np.interp(psi, self.phase_angle, np.log(self.phase)))

    def ozone_factor(self, ozone, airmass) -> np.ndarray:
        """Ratio of the ozone transmittance for ``ozone`` (atm-cm) to the tabulated reference."""
        num = np.interp(np.asarray(ozone) * airmass, self.o3_u, self.o3_t)
        den = np.interp(self.o3_ref * np.asarray(airmass), self.o3_u, self.o3_t)
        return num / np.maximum(den, 1e-12)


@lru_cache(maxsize=1)
def _load() -> dict:
    if not CONSTANTS_FILE.exists():
        raise AtmosphereConstantsError(
            f"{CONSTANTS_FILE}: atmosphere constants not found; generate them with "
            "tools/make_atmosphere_constants.py")
    with np.load(CONSTANTS_FILE) as z:
        data = {k: z[k] for k in z.files}
    data["meta"] = json.loads(bytes(data["meta"]).decode())
    data["bands"] = json.loads((DATA / "band_constants.json").read_text())["sensors"]
    return data


@lru_cache(maxsize=None)
def band_optics(sensor: str, domain: str) -> BandOptics:
    """Optics of band ``domain`` of ``sensor`` (l2ps sensor id, e.g. "LND08", "SEN2A")."""
    data = _load()
    ts = SENSOR_TABLE.get(sensor)
    key = f"{ts}.{domain}"
    if ts is None or f"{key}.tau_r" not in data:
        raise AtmosphereConstantsError(
            f"{CONSTANTS_FILE.name}: no atmosphere constants for sensor {sensor!r} band "
            f"{domain!r}")
    bc = data["bands"][sensor]["bands"][domain]
    angle = data["axis.phase_angle"].astype(np.float64)
    phase = data[f"{key}.phase"].astype(np.float64)
    return BandOptics(
        sensor=sensor, domain=domain, wavelength=float(bc["wavelength_um"]), e0=float(bc["e0"]),
        tau_r0=float(data[f"{key}.tau_r"]), tau_a_per_aod550=float(data[f"{key}.tau_a"]),
        ssa=float(data[f"{key}.ssa"]), phase_angle=angle, phase=phase,
        chi=rt.phase_moments(angle, phase, NMOM),
        gas=data[f"{key}.gas"].astype(np.float64), gas_wv=data["axis.gas_wv"].astype(np.float64),
        gas_airmass=data["axis.gas_airmass"].astype(np.float64),
        gas_elev=data["axis.gas_elev"].astype(np.float64),
        o3_u=data[f"{key}.gas_o3_u"].astype(np.float64), o3_t=data[f"{key}.gas_o3"].astype(np.float64),
        o3_ref=float(data["meta"]["o3_reference_atm_cm"]))


def aod_spectrum_ratio(sensor: str, domain: str) -> float:
    """τa(band)/τa(550 nm) of the continental model."""
    return band_optics(sensor, domain).tau_a_per_aod550
