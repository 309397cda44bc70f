"""The data cube: grids and tile math, warping, tiling, mosaicking and writing (spec 03
§2, §3). See docs/cube.md.

Public API::

    Datacube, TileRange, read_prj, cube_for_params, grid_footprint   (cube.grid)
    warp_product, warp_products, resync_nodata                        (cube.warp)
    write_cube, CubeResult, WrittenFile, read_tile_allowlist,
    rasterize_aoi, quicklook, append_provenance                       (cube.write)
    OutputFormat, output_format, read_output_options, is_cog          (cube.formats)
    file_lock, file_locks, atomic_write                               (cube.lock)

``continental`` (EQUI7/GLANCE7) is imported lazily by :func:`cube_for_params`.
"""
from .formats import OutputFormat, is_cog, output_format, read_output_options
from .grid import (PRJ_NAME, Datacube, TileRange, cube_for_params, grid_footprint,
                   read_prj, target_resolution)
from .lock import atomic_write, file_lock, file_locks
from .warp import resync_nodata, warp_product, warp_products
from .write import (CubeResult, WrittenFile, append_provenance, quicklook,
                    rasterize_aoi, read_tile_allowlist, write_cube)

__all__ = [
    "Datacube", "TileRange", "read_prj", "cube_for_params", "grid_footprint",
    "target_resolution", "PRJ_NAME",
    "warp_product", "warp_products", "resync_nodata",
    "write_cube", "CubeResult", "WrittenFile", "read_tile_allowlist", "rasterize_aoi",
    "quicklook", "append_provenance",
    "OutputFormat", "output_format", "read_output_options", "is_cog",
    "file_lock", "file_locks", "atomic_write",
]
