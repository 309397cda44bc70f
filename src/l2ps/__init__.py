"""l2ps — Level 2 Processing System for Landsat 4–9 and Sentinel-2 A/B/C.

A re-implementation of FORCE L2PS (Frantz 2019) as an in-memory Python processing package
driven by a Snakemake workflow. See DESIGN.md (beside the repository) and docs/.
"""
import os as _os
from importlib.metadata import PackageNotFoundError, version as _version

# GDAL's block cache defaults to 5 % of RAM; l2ps holds its bands in numpy arrays and writes
# each tile file once, so a large cache only duplicates data (measured: Sentinel-2 TOA cube
# peak 3.9 GB with the default, 2.9 GB with 128 MB). Set before GDAL first uses the cache;
# a user's own GDAL_CACHEMAX wins.
_os.environ.setdefault("GDAL_CACHEMAX", "128")

try:
    __version__ = _version("l2ps")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
