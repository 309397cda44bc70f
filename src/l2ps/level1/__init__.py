"""Level-1 readers: archives, Landsat MTL (C1/C2), Sentinel-2 SAFE/zip/granule (spec 01 §1)."""
from __future__ import annotations

from .archive import TAR_EXCLUDE
from .landsat import MTL, landsat_calibration, landsat_sensor, landsat_tier, parse_mtl
from .model import Band, Calibration, Level1, ViewGrid
from .read import (band_window, check_tier, find_level1, is_level1, level1_kind, open_level1,
                   read_bands, read_dn, read_metadata)
from .sensors import SENSORS, SensorSpec, sensor_spec
from .sentinel2 import parse_product_xml, parse_tile_xml, s2_calibration, valid_subset

__all__ = [
    "Band", "Calibration", "Level1", "ViewGrid", "SensorSpec", "SENSORS", "sensor_spec",
    "open_level1", "read_metadata", "find_level1", "is_level1", "level1_kind", "check_tier",
    "read_dn", "read_bands", "band_window", "parse_mtl", "MTL", "landsat_calibration",
    "landsat_sensor", "landsat_tier", "parse_product_xml", "parse_tile_xml",
    "s2_calibration", "valid_subset", "TAR_EXCLUDE",
]
