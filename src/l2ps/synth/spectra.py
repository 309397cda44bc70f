"""Surface and cloud spectra for synthetic scenes, and the band centre wavelengths they are
evaluated at.

Each cover type is a reflectance spectrum given at a few anchor wavelengths (µm) and linearly
interpolated in between; a band's surface reflectance is the spectrum at the band's nominal
centre wavelength (no spectral-response weighting: the scene only has to be *plausible*, the
truth is whatever we put in). The numbers are rounded, generic shapes of the kind found in
any spectral library (green peak and red edge of vegetation, rising soil/sand spectra, dark
water, flat grey urban, bright snow that drops in the SWIR), not copies of library spectra.
"""
from __future__ import annotations

import numpy as np

from ..level1.sensors import sensor_spec

#: anchor wavelengths in µm
ANCHORS = np.array([0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.68, 0.70, 0.72, 0.75, 0.80, 0.87,
                    0.95, 1.10, 1.38, 1.60, 1.80, 2.00, 2.20, 2.40])

#: cover name -> reflectance at ANCHORS
SPECTRA: dict[str, np.ndarray] = {k: np.asarray(v, dtype=np.float64) for k, v in {
    "vegetation": [.030, .035, .045, .090, .070, .045, .035, .060, .180, .350, .420, .440,
                   .430, .400, .250, .260, .220, .100, .120, .100],
    "soil":       [.060, .080, .100, .130, .160, .190, .200, .210, .220, .240, .260, .280,
                   .290, .310, .300, .340, .350, .300, .330, .300],
    "sand":       [.150, .200, .250, .320, .380, .420, .440, .450, .460, .480, .500, .520,
                   .530, .550, .500, .580, .580, .500, .520, .480],
    "water":      [.060, .060, .055, .050, .035, .020, .015, .012, .010, .008, .006, .005,
                   .004, .003, .002, .002, .002, .001, .001, .001],
    "urban":      [.080, .090, .100, .110, .120, .130, .135, .140, .145, .150, .160, .170,
                   .180, .190, .190, .210, .210, .190, .190, .180],
    "snow":       [.950, .960, .960, .950, .940, .920, .910, .900, .890, .870, .840, .780,
                   .680, .550, .250, .080, .050, .020, .040, .030],
    # very bright artificial targets (glint off roofs/greenhouses): saturate the sensor
    "bright":     [1.50] * 20,
    # top of an opaque water cloud (as seen from space, Lambertian equivalent)
    "cloud":      [.760, .770, .770, .770, .770, .760, .760, .760, .760, .760, .750, .740,
                   .720, .680, .560, .560, .500, .350, .400, .350],
    # thin ice cloud (cirrus) at optical thickness ~1: faint in the VNIR, visible at 1.38 µm
    "cirrus":     [.300, .300, .300, .300, .300, .300, .300, .300, .300, .300, .300, .290,
                   .280, .270, .260, .240, .200, .150, .150, .120],
}.items()}

#: land cover classes of the synthetic scene (uint8 codes in the truth); vegetation enters
#: as a per-pixel fraction mixed into the soil/sand/urban background (see scene.py)
COVERS = ("soil", "sand", "water", "urban", "snow", "bright")
COVER_CODE = {name: i for i, name in enumerate(COVERS)}

#: nominal band centres in µm by sensor and L1 band name (mid-points of the published
#: nominal band ranges, rounded).
_CENTRES = {
    "TM": {"1": .485, "2": .570, "3": .660, "4": .838, "5": 1.677, "7": 2.217, "6": 11.45},
    "ETM+": {"1": .478, "2": .560, "3": .661, "4": .834, "5": 1.650, "7": 2.208,
             "6_VCID_1": 11.34, "6_VCID_2": 11.34, "8": .706},
    "OLI": {"1": .443, "2": .482, "3": .561, "4": .654, "5": .865, "6": 1.609, "7": 2.201,
            "8": .590, "9": 1.373, "10": 10.90, "11": 12.00},
    "MSI": {"B01": .443, "B02": .492, "B03": .560, "B04": .665, "B05": .704, "B06": .740,
            "B07": .783, "B08": .833, "B8A": .865, "B09": .945, "B10": 1.374, "B11": 1.612,
            "B12": 2.194},
}


def _family(sensor: str) -> str:
    inst = sensor_spec(sensor).instrument
    return {"TM": "TM", "ETM+": "ETM+", "OLI/TIRS": "OLI", "OLI-2/TIRS-2": "OLI",
            "MSI": "MSI"}[inst]


def band_centre(sensor: str, l1_name: str) -> float:
    """Nominal centre wavelength (µm) of a Level-1 band ("4", "6_VCID_1", "B8A")."""
    return _CENTRES[_family(sensor)][l1_name]


def domain_centres(sensor: str) -> dict[str, float]:
    """Centre wavelength (µm) of every band domain of a sensor (internal band order)."""
    spec = sensor_spec(sensor)
    return {b.domain: band_centre(sensor, b.l1_name) for b in spec.bands}


def reflectance(cover: str, wavelength_um: float) -> float:
    """Reflectance of a cover type at a wavelength (linear between anchors)."""
    return float(np.interp(wavelength_um, ANCHORS, SPECTRA[cover]))


# Water-vapour absorption strength by wavelength (dimensionless, used by the provisional
# atmosphere and the above-cloud transmittance): windows ~0, 0.94 µm and 1.13 µm moderate,
# 1.38 µm and 1.85 µm saturated.
_WV_WL = np.array([0.40, 0.70, 0.72, 0.76, 0.82, 0.86, 0.90, 0.94, 0.98, 1.05, 1.13, 1.20,
                   1.30, 1.38, 1.45, 1.55, 1.70, 1.80, 1.87, 1.95, 2.05, 2.20, 2.40])
_WV_K = np.array([0.0, 0.0, 0.02, 0.01, 0.02, 0.003, 0.03, 0.35, 0.05, 0.01, 0.20, 0.02,
                  0.30, 3.00, 0.60, 0.01, 0.01, 0.30, 2.00, 0.50, 0.03, 0.01, 0.08])


def water_vapour_absorption(wavelength_um: float) -> float:
    """Absorption coefficient k with transmittance exp(-k·(u·m)^0.6), u in g/cm²."""
    return float(np.interp(wavelength_um, _WV_WL, _WV_K))


def cover_table(sensor: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(domains, table[cover, band], vegetation[band]) for the reflective bands of a sensor.

    Thermal bands are skipped. Row order of ``table`` is :data:`COVERS`.
    """
    spec = sensor_spec(sensor)
    doms = [b.domain for b in spec.bands if not b.thermal]
    wl = [band_centre(sensor, spec.band(d).l1_name) for d in doms]
    table = np.array([[reflectance(c, w) for w in wl] for c in COVERS], dtype=np.float32)
    veg = np.array([reflectance("vegetation", w) for w in wl], dtype=np.float32)
    return doms, table, veg
