"""Synthetic Level-1 products (Landsat Collection 1/2, Sentinel-2 L1C) with known truth.

    >>> from l2ps.synth import make_landsat, make_sentinel2
    >>> p = make_landsat("/tmp/x", sensor="LND08", size=(400, 400), form="tar")
    >>> p.path, p.truth_dir, p.truth["cloud_cover_percent"]

See docs/synth.md for the scene model, the formats and the truth layers.
"""
from __future__ import annotations

from .scene import CloudSpec, SynthProduct, sun_position

__all__ = ["make_landsat", "make_sentinel2", "SynthProduct", "CloudSpec", "sun_position"]


def make_landsat(out_dir, **kwargs) -> SynthProduct:
    """Synthetic Landsat Level-1 product; see :func:`l2ps.synth.landsat.make_landsat`."""
    from .landsat import make_landsat as _make
    return _make(out_dir, **kwargs)


def make_sentinel2(out_dir, **kwargs) -> SynthProduct:
    """Synthetic Sentinel-2 L1C product; see :func:`l2ps.synth.sentinel2.make_sentinel2`."""
    from .sentinel2 import make_sentinel2 as _make
    return _make(out_dir, **kwargs)
