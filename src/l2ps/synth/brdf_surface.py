"""Kernel-driven BRDF surface for synthetic scenes (option ``brdf`` of make_landsat /
make_sentinel2; docs/synth.md "BRDF surface").

Deliberately independent of ``l2ps.brdf`` (which is what it is meant to test): the
RossThick–LiSparse-Reciprocal kernels (Wanner et al. 1995, Lucht et al. 2000; MODIS
MCD43/AMBRALS form, crown shape b/r = 1, relative height h/b = 2) are written here again
from the formulas, the standard sun zenith of the normalisation geometry (spec 02 §7: nadir
view, sun at the mean local overpass time of Landsat and Sentinel-2 at the pixel's latitude)
uses the generator's own sun position (``l2ps.synth.scene.sun_position``).

A surface of base reflectance ρ0 (the scene's ordinary, isotropic spectrum) seen at sun
zenith θs, view zenith θv and relative azimuth φ = φs − φv (φ = 0: sun behind the sensor,
the hot spot) has

    ρ(θs, θv, φ) = ρ0 · (1 + V·K_vol(θs, θv, φ) + G·K_geo(θs, θv, φ)),

V = f_vol/f_iso, G = f_geo/f_iso per cover and band; a mixed pixel mixes the covers'
directional reflectances linearly. The NBAR truth is the same surface at (θs_std, 0, 0).
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np

from . import spectra

BRDF_MODES = ("global", "cover")

#: published global kernel weights f_iso, f_vol, f_geo (reflectance units) of Roy et al.
#: (2017, Remote Sens. Environ. 199:25, Table 1; the MODIS-derived "c-factor" values) per
#: band domain; bands without an entry (ULTRABLUE, VAPOR, CIRRUS) are isotropic here.
PUBLISHED_WEIGHTS = {
    "BLUE": (0.0774, 0.0372, 0.0079), "GREEN": (0.1306, 0.0580, 0.0178),
    "RED": (0.1690, 0.0574, 0.0227), "REDEDGE1": (0.2085, 0.0845, 0.0256),
    "REDEDGE2": (0.2316, 0.1003, 0.0273), "REDEDGE3": (0.2599, 0.1197, 0.0294),
    "BROADNIR": (0.3093, 0.1535, 0.0330), "NIR": (0.3093, 0.1535, 0.0330),
    "SWIR1": (0.3430, 0.1154, 0.0453), "SWIR2": (0.2658, 0.0639, 0.0387),
}

#: mode "cover": multipliers (on V, on G) of the global ratios per cover — our choice, after
#: the contrasts MCD43 retrievals show between cover types: vegetation canopies volume-
#: scattering dominated, bare soil, sand and built-up surfaces dominated by shadow hiding
#: (geometric), snow and water close to isotropic in this kernel model (snow's forward
#: scattering and water's specular glint are not representable by RTLSR and not modelled).
COVER_MULTIPLIERS = {"soil": (0.6, 1.5), "sand": (0.4, 1.8), "water": (0.0, 0.0),
                     "urban": (0.4, 2.0), "snow": (0.25, 0.3), "bright": (0.0, 0.0)}
VEGETATION_MULTIPLIER = (1.3, 0.8)

HB, BR = 2.0, 1.0          # LiSparse crown relative height h/b and shape b/r

#: local overpass model of the normalisation sun (spec 02 §7): (equator crossing local time
#: h, inclination deg) of Landsat and Sentinel-2
_OVERPASS = ((10.0 + 11.0 / 60.0, 98.2), (10.5, 98.62))


def volumetric_kernel(sz, vz, phi):
    """RossThick kernel; sun/view zenith and relative azimuth in radians (float64)."""
    sz, vz, phi = (np.asarray(a, np.float64) for a in (sz, vz, phi))
    cs, cv = np.cos(sz), np.cos(vz)
    c_phase = np.clip(cs * cv + np.sin(sz) * np.sin(vz) * np.cos(phi), -1.0, 1.0)
    phase = np.arccos(c_phase)
    return (c_phase * (0.5 * math.pi - phase) + np.sin(phase)) / (cs + cv) - 0.25 * math.pi


def geometric_kernel(sz, vz, phi):
    """LiSparse-Reciprocal kernel (h/b = 2, b/r = 1); radians (float64)."""
    sz, vz, phi = (np.asarray(a, np.float64) for a in (sz, vz, phi))
    ts, tv = BR * np.tan(sz), BR * np.tan(vz)
    sz_p, vz_p = np.arctan(ts), np.arctan(tv)
    sec_s, sec_v = 1.0 / np.cos(sz_p), 1.0 / np.cos(vz_p)
    c_phase = np.cos(sz_p) * np.cos(vz_p) + np.sin(sz_p) * np.sin(vz_p) * np.cos(phi)
    dist2 = np.maximum(ts * ts + tv * tv - 2.0 * ts * tv * np.cos(phi), 0.0)
    cos_t = HB * np.sqrt(dist2 + (ts * tv * np.sin(phi)) ** 2) / (sec_s + sec_v)
    t = np.arccos(np.clip(cos_t, -1.0, 1.0))
    overlap = np.maximum((t - np.sin(t) * np.cos(t)) * (sec_s + sec_v) / math.pi, 0.0)
    return overlap - sec_s - sec_v + 0.5 * (1.0 + c_phase) * sec_s * sec_v


def kernel_ratios(sensor: str, mode: str):
    """(V, G) arrays of shape (len(COVERS) + 1, n_bands): rows = covers in
    ``spectra.COVERS`` order, last row = the vegetation end member; columns = the
    reflective band domains of ``sensor`` (``spectra.cover_table`` order)."""
    if mode not in BRDF_MODES:
        raise ValueError(f"brdf={mode!r}: expected one of {', '.join(BRDF_MODES)} or None")
    doms = spectra.cover_table(sensor)[0]
    n = len(spectra.COVERS) + 1
    v = np.zeros((n, len(doms)), np.float64)
    g = np.zeros((n, len(doms)), np.float64)
    mult = [COVER_MULTIPLIERS[c] for c in spectra.COVERS] + [VEGETATION_MULTIPLIER]
    for j, d in enumerate(doms):
        if d not in PUBLISHED_WEIGHTS:
            continue
        fi, fv, fg = PUBLISHED_WEIGHTS[d]
        for i, (mv, mg) in enumerate(mult):
            if mode == "global":
                mv = mg = 1.0
            v[i, j], g[i, j] = mv * fv / fi, mg * fg / fi
    return v, g


def standard_sun_zenith(lat: float, lon: float, acquired: datetime) -> float:
    """Normalisation sun zenith (degrees) at lat/lon (deg) for an acquisition (UTC): the sun
    at local solar time ½·Σ (t0 − asin(tan φ / tan i)/15°) over the Landsat and Sentinel-2
    orbits (spec 02 §7), on the local calendar day of the acquisition."""
    if acquired.tzinfo is not None:
        acquired = acquired.astimezone(timezone.utc).replace(tzinfo=None)
    hours = 0.0
    for t0, inc in _OVERPASS:
        s = max(-1.0, min(1.0, math.tan(math.radians(lat)) / math.tan(math.radians(inc))))
        hours += 0.5 * (t0 - math.degrees(math.asin(s)) / 15.0)
    local = acquired + timedelta(hours=lon / 15.0)
    when = datetime(local.year, local.month, local.day) + timedelta(hours=hours - lon / 15.0)
    z, _ = sun_position_(lat, lon, when)
    return float(z)


def sun_position_(lat, lon, when):
    from .scene import sun_position
    return sun_position(lat, lon, when)
