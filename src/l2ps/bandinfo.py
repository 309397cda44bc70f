"""Per-band constants (effective wavelength, solar irradiance) of every sensor.

Derived from public spectral responses (Py6S/6S) by ``tools/make_band_constants.py`` into
``l2ps/data/band_constants.json`` (DESIGN.md, "Dependencies"). Where that file is not
available the nominal band centres (mid-points of the published band limits, spec 01 §8)
are used for the wavelength metadata.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

# nominal band limits in µm (public sensor specifications; spec 01 §8 "nominal µm")
_NOMINAL = {
    "TM": {"BLUE": (0.45, 0.52), "GREEN": (0.52, 0.60), "RED": (0.63, 0.69),
           "NIR": (0.76, 0.90), "SWIR1": (1.55, 1.75), "SWIR2": (2.08, 2.35)},
    "ETM+": {"BLUE": (0.45, 0.52), "GREEN": (0.52, 0.60), "RED": (0.63, 0.69),
             "NIR": (0.77, 0.90), "SWIR1": (1.55, 1.75), "SWIR2": (2.09, 2.35)},
    "OLI": {"ULTRABLUE": (0.435, 0.451), "BLUE": (0.452, 0.512), "GREEN": (0.533, 0.590),
            "RED": (0.636, 0.673), "NIR": (0.851, 0.879), "CIRRUS": (1.363, 1.384),
            "SWIR1": (1.566, 1.651), "SWIR2": (2.107, 2.294)},
    "MSI": {"ULTRABLUE": (0.430, 0.457), "BLUE": (0.440, 0.538), "GREEN": (0.537, 0.582),
            "RED": (0.646, 0.684), "REDEDGE1": (0.694, 0.713), "REDEDGE2": (0.731, 0.749),
            "REDEDGE3": (0.769, 0.797), "BROADNIR": (0.760, 0.908), "NIR": (0.848, 0.881),
            "VAPOR": (0.932, 0.958), "CIRRUS": (1.337, 1.412), "SWIR1": (1.539, 1.682),
            "SWIR2": (2.078, 2.320)},
}
_FAMILY = {"LND04": "TM", "LND05": "TM", "LND07": "ETM+", "LND08": "OLI", "LND09": "OLI",
           "SEN2A": "MSI", "SEN2B": "MSI", "SEN2C": "MSI", "SEN2D": "MSI"}


@lru_cache(maxsize=1)
def band_constants() -> dict:
    """sensor → domain → {"wavelength": µm, "E0": W m⁻² µm⁻¹, ...}; {} if not generated."""
    try:
        text = resources.files("l2ps").joinpath("data/band_constants.json").read_text()
    except (FileNotFoundError, OSError):
        return {}
    data = json.loads(text)
    return data.get("sensors", data)


def wavelength(sensor: str, domain: str) -> float:
    """Band centre wavelength in µm (thermal bands: 11.0 as FORCE)."""
    if domain == "TEMP":
        return 11.0
    table = band_constants().get(sensor, {})
    entry = table.get(domain)
    if isinstance(entry, dict):
        for key in ("wavelength", "wavelength_um", "lambda_eff"):
            if key in entry:
                return float(entry[key])
    lo, hi = _NOMINAL[_FAMILY[sensor]][domain]
    return round(0.5 * (lo + hi), 5)
