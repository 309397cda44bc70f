"""A north-up raster grid as a value object (odc-geo style): CRS, upper-left corner, pixel
size and shape. Pixel (row i, column j) covers x ∈ [x0 + j·dx, x0 + (j+1)·dx),
y ∈ (y0 − (i+1)·dy, y0 − i·dy]; ``dx`` and ``dy`` are positive sizes in map units and may
differ (the decimated test products have non-square pixels).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from affine import Affine
from rasterio.crs import CRS


@dataclass(frozen=True)
class Grid:
    crs_wkt: str
    x0: float          # map x of the upper-left corner
    y0: float          # map y of the upper-left corner
    dx: float          # pixel width (> 0)
    dy: float          # pixel height (> 0; rows go south)
    nx: int            # columns
    ny: int            # rows

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_transform(cls, crs, transform: Affine, width: int, height: int) -> "Grid":
        """From a rasterio CRS (or WKT) and a north-up affine transform."""
        if abs(transform.b) > 1e-12 or abs(transform.d) > 1e-12 or transform.e >= 0:
            raise ValueError(f"not a north-up transform: {transform}")
        wkt = crs if isinstance(crs, str) else CRS.from_user_input(crs).to_wkt()
        return cls(wkt, float(transform.c), float(transform.f), float(transform.a),
                   float(-transform.e), int(width), int(height))

    # ---------------------------------------------------------------- properties
    @property
    def shape(self) -> tuple[int, int]:
        return (self.ny, self.nx)

    @property
    def transform(self) -> Affine:
        return Affine(self.dx, 0.0, self.x0, 0.0, -self.dy, self.y0)

    @cached_property
    def crs(self) -> CRS:
        return CRS.from_wkt(self.crs_wkt)

    @property
    def res(self) -> float:
        """Nominal pixel size (the mean of dx and dy) for metric parameters (buffers, ...)."""
        return 0.5 * (self.dx + self.dy)

    @property
    def x1(self) -> float:
        return self.x0 + self.nx * self.dx

    @property
    def y1(self) -> float:
        return self.y0 - self.ny * self.dy

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in map units."""
        return (self.x0, self.y1, self.x1, self.y0)

    # ---------------------------------------------------------------- derived grids
    def with_shape(self, nx: int, ny: int) -> "Grid":
        return replace(self, nx=int(nx), ny=int(ny))

    def window(self, row0: int, col0: int, nrows: int, ncols: int) -> "Grid":
        """Sub-grid starting at (row0, col0) with the given size (may extend outside)."""
        return replace(self, x0=self.x0 + col0 * self.dx, y0=self.y0 - row0 * self.dy,
                       nx=int(ncols), ny=int(nrows))

    def resampled(self, dx: float, dy: float | None = None) -> "Grid":
        """Same extent (upper-left corner kept) at another pixel size; size rounded up."""
        dy = dx if dy is None else dy
        nx = int(np.ceil(round(self.nx * self.dx / dx, 6)))
        ny = int(np.ceil(round(self.ny * self.dy / dy, 6)))
        return replace(self, dx=float(dx), dy=float(dy), nx=nx, ny=ny)

    # ---------------------------------------------------------------- coordinates
    def xy(self, rows, cols, offset: float = 0.5):
        """Map coordinates of pixel positions (offset 0.5 = centres, 0 = UL corners)."""
        rows = np.asarray(rows, dtype=np.float64)
        cols = np.asarray(cols, dtype=np.float64)
        return self.x0 + (cols + offset) * self.dx, self.y0 - (rows + offset) * self.dy

    def rowcol(self, x, y):
        """Fractional (row, col) of map coordinates (0 = UL edge of pixel 0)."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        return (self.y0 - y) / self.dy, (x - self.x0) / self.dx

    def corners(self) -> np.ndarray:
        """The 4 corner coordinates (UL, UR, LR, LL) as a (4, 2) array."""
        return np.array([[self.x0, self.y0], [self.x1, self.y0],
                         [self.x1, self.y1], [self.x0, self.y1]])

    def same_crs(self, other: "Grid") -> bool:
        return self.crs_wkt == other.crs_wkt or self.crs == other.crs

    def __repr__(self) -> str:  # short: the WKT is long
        epsg = self.crs.to_epsg()
        tag = f"EPSG:{epsg}" if epsg else "custom CRS"
        return (f"Grid({tag}, x0={self.x0}, y0={self.y0}, dx={self.dx}, dy={self.dy}, "
                f"nx={self.nx}, ny={self.ny})")
