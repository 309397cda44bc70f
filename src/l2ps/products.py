"""Level-2 products before they go into the cube (spec 03 §3.1): BOA/TOA, QAI, DST, VZN,
HOT, AOD, WVP, OVV.

A :class:`Product` is a list of 2-D bands, each on its own grid (Sentinel-2 bands may stay
at their native 10/20 m grid until the warp into the cube, which reads each band once).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .grid import Grid

RESAMPLING_NAMES = {"NN": "nearest", "BL": "bilinear", "CC": "cubic"}


@dataclass
class Product:
    name: str                          # BOA, TOA, QAI, DST, VZN, HOT, AOD, WVP, OVV
    bands: list[np.ndarray]            # 2-D arrays, int16 (QAI: uint16)
    grids: list[Grid]                  # grid of each band
    band_names: tuple[str, ...]        # band descriptions (domain names, or the product name)
    nodata: int                        # -9999 (QAI: 1)
    scale: float                       # 10000 for BOA/TOA, 1 for QAI, 1000 for AOD/WVP, ...
    resampling: str = "cubic"          # nearest | bilinear | cubic (QAI is always nearest)
    wavelengths: tuple[float, ...] | None = None   # µm, per band
    wavelength_unit: str = "micrometers"
    description: str = ""
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        if len(self.bands) != len(self.grids) or len(self.bands) != len(self.band_names):
            raise ValueError(f"product {self.name}: bands, grids and names differ in length")

    @property
    def nbands(self) -> int:
        return len(self.bands)
