"""Atmospheric correction (spec 02): radiative transfer, gases, water vapour, aerosol,
adjacency.  The stage: :func:`l2ps.atmosphere.correct.correct_atmosphere` (docs/atmosphere.md)."""
from __future__ import annotations


def __getattr__(name):       # lazy: importing the package does not compile numba kernels
    if name in ("correct_atmosphere", "AtmoResult"):
        from . import correct
        return getattr(correct, name)
    raise AttributeError(name)
