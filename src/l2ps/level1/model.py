"""What a Level-1 reader returns: metadata of one image, and its bands (spec 01 §1).

``Level1`` is a small value object; reading the pixels is a separate step
(``l2ps.level1.read_dn``) so that metadata can be checked before any raster is decoded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from ..grid import Grid
from .sensors import SensorSpec


@dataclass(frozen=True)
class Calibration:
    """DN → TOA coefficients of one band (unused fields are None)."""
    refl_mult: float | None = None     # Landsat REFLECTANCE_MULT_BAND_n
    refl_add: float | None = None      # Landsat REFLECTANCE_ADD_BAND_n
    rad_mult: float | None = None      # Landsat radiance gain A = (Lmax−Lmin)/(Qmax−Qmin)
    rad_add: float | None = None       # Landsat radiance offset Lmin − A·Qmin
    k1: float | None = None            # thermal constants
    k2: float | None = None
    quantification: float | None = None  # Sentinel-2 QUANTIFICATION_VALUE (10000)
    add_offset: float = 0.0            # Sentinel-2 RADIO_ADD_OFFSET (−1000 from baseline 04.00)


@dataclass(frozen=True)
class Band:
    domain: str          # BLUE, ..., TEMP
    l1_name: str         # "1", "6_VCID_1", "B8A"
    path: Path           # raster file (GeoTIFF or JPEG 2000)
    grid: Grid           # native grid of this band file
    calibration: Calibration
    thermal: bool = False


@dataclass(frozen=True)
class ViewGrid:
    """Sentinel-2 view angles per 5 km cell (spec 01 §1.5), degrees, NaN = nodata.

    ``zenith``/``azimuth`` are the collapsed (mean over bands and detectors) cell values on
    a grid whose cell (0, 0) starts at ``origin`` (the tile UL corner) with ``cell`` metres.
    ``sun_zenith``/``sun_azimuth`` are the metadata sun grids (node values), for checks only.
    """
    zenith: np.ndarray
    azimuth: np.ndarray
    cell: float = 5000.0
    sun_zenith: np.ndarray | None = None
    sun_azimuth: np.ndarray | None = None
    origin: tuple[float, float] | None = None   # map (x, y) of cell (0, 0)'s UL corner;
    #                                             None = the Level1 grid's UL corner


@dataclass(frozen=True)
class Level1:
    """Metadata of one Level-1 image, as found in its MTL / MTD files."""
    source: Path                 # what the queue names (archive or folder)
    root: Path                   # extracted product folder (Landsat) or granule folder (S2)
    product_id: str              # LC08_L1TP_..., S2A_MSIL1C_...
    spec: SensorSpec
    acquired: datetime           # UTC; Landsat scene centre time, S2 PRODUCT_START_TIME
    tier: int                    # 1, 2 or 3 (Landsat), 1 for Sentinel-2
    refsys_type: str             # "WRS-2" | "MGRS"
    refsys_id: str               # "193024" | "T32UPC"
    grid: Grid                   # processing grid: the finest band's native grid
    bands: dict[str, Band]       # domain -> band, in internal order
    cloud_cover: float | None = None   # metadata cloud cover (%), for reports
    processing_baseline: str | None = None  # S2 "04.00"
    collection: int | None = None      # Landsat collection 1 / 2
    view: ViewGrid | None = None       # Sentinel-2 view angles
    extra: dict = field(default_factory=dict)

    @property
    def sensor(self) -> str:
        return self.spec.sensor

    @property
    def mission(self) -> str:
        return self.spec.mission

    @property
    def date_string(self) -> str:
        return self.acquired.strftime("%Y%m%d")
