"""Gaseous absorption (spec 02 §2) and the Landsat water-vapour database (spec 02 §2.3, §9).

Transmittances are two-way (sun → surface → sensor) band values of 6S's band model for all
absorbers (H2O, O3 and the well-mixed O2, CO2, CH4, N2O, CO, NO2 that FORCE leaves out),
interpolated in the committed table (constants.py) on water vapour above the target (g cm⁻²),
two-way airmass m = 1/μs + 1/μv and target elevation (km), scaled for the ozone amount.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

from ..errors import L2psError
from .constants import BandOptics


class WaterVaporError(L2psError):
    """No usable water vapour value in DIR_WVPLUT for the scene."""


# --------------------------------------------------------------------------- ozone
def ozone_amount(lon, lat, doy) -> np.ndarray:
    """Van Heuklon (1979) ozone climatology in atm-cm (spec 02 §2.2; lon/lat in degrees).

    Longitude 0 takes the eastern constants (FORCE's catch-all I = −75 for lon == 0 in the
    north is a sign slip; deviation in docs/deviations.d/atmosphere.md)."""
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    doy = np.asarray(doy, dtype=np.float64)
    north = lat > 0
    a = np.where(north, 150.0, 100.0)
    beta = np.where(north, 1.28, 1.5)
    c = np.where(north, 40.0, 30.0)
    f = np.where(north, -30.0, 152.625)
    h = np.where(north, 3.0, 2.0)
    i = np.where(north, np.where(lon >= 0, 20.0, 0.0), -75.0)
    d, g = 0.9856, 20.0
    rad = np.pi / 180.0
    o = 235.0 + (a + c * np.sin(d * (doy + f) * rad) + g * np.sin(h * (lon + i) * rad)) \
        * np.sin(beta * lat * rad) ** 2
    return o / 1000.0


# --------------------------------------------------------------------------- transmittance
def _interp_axis(x, nodes):
    x = np.clip(np.asarray(x, dtype=np.float64), nodes[0], nodes[-1])
    i = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, len(nodes) - 2)
    w = (x - nodes[i]) / (nodes[i + 1] - nodes[i])
    return i, w


def gas_transmittance(optics: BandOptics, water_vapor, airmass, elevation_km=0.0,
                      ozone=0.3) -> np.ndarray:
    """Two-way band gas transmittance for water vapour above the target (g cm⁻²), two-way
    airmass 1/μs + 1/μv, target elevation (km) and ozone (atm-cm); arrays broadcast.
    Airmass and elevation outside the table are clamped to its edges (airmass 2–6, elevation
    0–2.5 km; the elevation dependence is linear); water vapour above the last node
    (5.5 g cm⁻²) is extrapolated with ln T ∝ √w."""
    wv, m, z = np.broadcast_arrays(np.asarray(water_vapor, float), np.asarray(airmass, float),
                                   np.asarray(elevation_km, float))
    iw, ww = _interp_axis(wv, optics.gas_wv)
    im, wm = _interp_axis(m, optics.gas_airmass)
    iz, wz = _interp_axis(z, optics.gas_elev)
    t = 0.0
    g = optics.gas
    for dw, fw in ((0, 1 - ww), (1, ww)):
        for dm, fm in ((0, 1 - wm), (1, wm)):
            for dz, fz in ((0, 1 - wz), (1, wz)):
                t = t + fw * fm * fz * g[iw + dw, im + dm, iz + dz]
    wmax = optics.gas_wv[-1]
    # beyond the table: strong-line regime, ln T ∝ sqrt(w)
    t = np.where(wv > wmax, t ** np.sqrt(np.maximum(wv, wmax) / wmax), t)
    return np.asarray(t * optics.ozone_factor(ozone, m))


# --------------------------------------------------------------------------- water vapour LUT
@dataclass(frozen=True)
class WaterVaporValue:
    value: float          # g cm-2
    source: str           # "MOD"/"MYD"/... (daily), "AVG" (climatology), "PARAMETER",
    #                       or "CLIMATOLOGY (…)" (standard atmosphere, WATER_VAPOR = NULL)


_FILL = 9999.0
_MAX_DIST_DEG = 1.5

#: column water vapour (g cm⁻², sea level) of the AFGL standard atmospheres (McClatchey et al.
#: 1972, as tabulated in 6S): tropical, midlatitude summer/winter, subarctic summer/winter
STANDARD_ATMOSPHERE_WV = {"tropical": 4.12, "midlatitude summer": 2.93,
                          "midlatitude winter": 0.85, "subarctic summer": 2.08,
                          "subarctic winter": 0.42}
#: scale height of water vapour (km) to move the column to the scene's elevation
WATER_VAPOR_SCALE_HEIGHT_KM = 2.0


def climatological_water_vapor(lat: float, month: int, elevation_km: float = 0.0) -> WaterVaporValue:
    """Water vapour for WATER_VAPOR = NULL without DIR_WVPLUT (l2ps; FORCE uses 0): the column
    of the standard atmosphere that 6S picks by latitude and season (|lat| < 15° tropical;
    < 50° midlatitude, otherwise subarctic; summer = April–September in the north, October–
    March in the south), reduced to the scene's mean elevation with a 2 km scale height."""
    north_summer = 4 <= int(month) <= 9
    summer = north_summer if lat >= 0 else not north_summer
    if abs(lat) < 15.0:
        name = "tropical"
    else:
        name = ("midlatitude " if abs(lat) < 50.0 else "subarctic ") + ("summer" if summer else "winter")
    w = STANDARD_ATMOSPHERE_WV[name] * math.exp(-max(elevation_km, 0.0) / WATER_VAPOR_SCALE_HEIGHT_KM)
    return WaterVaporValue(round(w, 3), f"CLIMATOLOGY ({name})")


def _nearest(path: Path, lon: float, lat: float, daily: bool) -> tuple[float, str] | None:
    """Nearest line within 1.5° (plain Euclidean in degrees) of a WVP table, or None.
    Blank lines and comments are skipped; tokens split on any whitespace."""
    best, best_d = None, _MAX_DIST_DEG
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            tok = line.split("#", 1)[0].split()
            if not tok:
                continue
            try:
                x, y, v = float(tok[0]), float(tok[1]), float(tok[2])
            except (IndexError, ValueError):
                raise WaterVaporError(f"{path}:{n}: expected 'lon lat value ...', got {line.strip()!r}")
            d = math.hypot(x - lon, y - lat)
            if d < best_d:
                best_d = d
                best = (v, tok[3] if daily and len(tok) > 3 else ("AVG" if not daily else "TBD"))
    return best


def water_vapor_from_lut(directory: Path | None, acquired: date, lon: float, lat: float, *,
                         default: float, strict: bool) -> WaterVaporValue:
    """Scene water vapour for Landsat (spec 02 §2.3, §9).

    ``directory`` None → ``default`` (WATER_VAPOR).  Otherwise the daily table
    WVP_YYYY-MM-DD.txt and the monthly climatology WVP_0000-MM-00.txt are searched for the
    nearest point within 1.5° of (lon, lat).  Values ≥ 9999, < 0 or > 10 are missing.
    A valid daily value wins; else, unless ``strict`` (STRICT_WATER_VAPOR: abort unless a valid
    daily value, as documented), the climatology; else the image fails.
    """
    if directory is None:
        return WaterVaporValue(float(default), "PARAMETER")
    directory = Path(directory)
    if not directory.is_dir():
        raise WaterVaporError(f"DIR_WVPLUT {directory}: not a directory")
    daily = directory / f"WVP_{acquired:%Y-%m-%d}.txt"
    clim = directory / f"WVP_0000-{acquired:%m}-00.txt"

    def ok(v):
        return v is not None and 0.0 <= v[0] <= 10.0 and v[0] < _FILL

    d = _nearest(daily, lon, lat, True) if daily.exists() else None
    if ok(d):
        return WaterVaporValue(d[0], d[1])
    if strict:
        raise WaterVaporError(
            f"STRICT_WATER_VAPOR = TRUE: no valid daily water vapour within {_MAX_DIST_DEG}° of "
            f"lon {lon:.4f} lat {lat:.4f} in {daily}")
    c = _nearest(clim, lon, lat, False) if clim.exists() else None
    if ok(c):
        return WaterVaporValue(c[0], "AVG")
    raise WaterVaporError(
        f"DIR_WVPLUT {directory}: no valid water vapour within {_MAX_DIST_DEG}° of lon {lon:.4f} "
        f"lat {lat:.4f} in {daily.name} or {clim.name}")
