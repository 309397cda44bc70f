"""Data cube definition and tile math (spec 03 §2.2, §2.3, §2.6).

Placeholder interface: the full implementation (tile_find with FORCE's boundary rule,
alignment, .prj read/write in new and deprecated format) lives here.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Datacube:
    """One cube: projection (WKT), origin (geographic and map), tile size (map units)."""
    wkt: str
    origin_lon: float
    origin_lat: float
    origin_x: float
    origin_y: float
    tile_x: float
    tile_y: float
    name: str = ""          # continent folder name for EQUI7/GLANCE7 cubes ("europe"), else ""
