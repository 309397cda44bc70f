"""l2ps — Level 2 Processing System for Landsat 4–9 and Sentinel-2 A/B/C.

A re-implementation of FORCE L2PS (Frantz 2019) as an in-memory Python processing package
driven by a Snakemake workflow. See DESIGN.md (beside the repository) and docs/.
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("l2ps")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
