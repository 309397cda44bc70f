"""The in-memory state of one image between stages (pipeline.py passes it along).

Bands stay at their native grid (Sentinel-2: 10, 20 or 60 m) as int16 (TOA ×10000,
brightness temperature ×100 K); the QAI is on the processing grid (the finest band's grid).
``band(domain, grid)`` gives a band on another grid of the same CRS by nearest neighbour
(coordinates, so non-integer ratios work), without a copy when the grids are equal.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .grid import Grid
from .level1.model import Level1


def nearest_index(src: Grid, dst: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Row and column index into ``src`` of every pixel centre of ``dst`` (clipped)."""
    y = dst.y0 - (np.arange(dst.ny) + 0.5) * dst.dy
    x = dst.x0 + (np.arange(dst.nx) + 0.5) * dst.dx
    r = np.clip(np.floor((src.y0 - y) / src.dy + 1e-9).astype(np.int64), 0, src.ny - 1)
    c = np.clip(np.floor((x - src.x0) / src.dx + 1e-9).astype(np.int64), 0, src.nx - 1)
    return r, c


def resample_nearest(arr: np.ndarray, src: Grid, dst: Grid) -> np.ndarray:
    """``arr`` (on ``src``) on ``dst`` by nearest neighbour; no copy if the grids are equal."""
    if src == dst:
        return arr
    r, c = nearest_index(src, dst)
    return arr[r[:, None], c[None, :]]


@dataclass
class Scene:
    level1: Level1
    grid: Grid                                 # processing grid (finest band)
    toa: dict[str, np.ndarray]                 # domain -> int16 on grids[domain]
    grids: dict[str, Grid]                     # domain -> native grid of that band
    qai: np.ndarray                            # uint16 on grid
    geometry: object                           # l2ps.geometry.Geometry
    topography: object | None = None           # l2ps.topography.Topography (DEM, slope, ...)
    extra: dict = field(default_factory=dict)  # stage outputs worth keeping (covers, AOD ...)

    @property
    def spec(self):
        return self.level1.spec

    @property
    def sensor(self) -> str:
        return self.level1.sensor

    def has(self, domain: str) -> bool:
        return domain in self.toa

    def band(self, domain: str, grid: Grid | None = None) -> np.ndarray:
        """Band ``domain`` on ``grid`` (default: the processing grid), nearest neighbour."""
        g = self.grid if grid is None else grid
        return resample_nearest(self.toa[domain], self.grids[domain], g)

    def qai_on(self, grid: Grid) -> np.ndarray:
        """The QAI on another grid of the same CRS (nearest; coarser grids take the pixel
        under each centre)."""
        return resample_nearest(self.qai, self.grid, grid)
