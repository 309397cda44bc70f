"""Aerosol optical depth: fallback spectrum and DIR_AOD look-up files (spec 02 §3.1).

The dark-target retrieval (DO_AOD = TRUE) is in darktarget.py; without valid targets the
correction falls back to this spectrum and flags the aerosol QAI field as "fill" (3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import L2psError

#: global default spectrum ("median AERONET", spec 02 §3.1): ln τ = a0 + a1 ln λ + a2 (ln λ)²
DEFAULT_COEFFICIENTS = (-2.8665, -1.4787, -0.0486)


class AodFileError(L2psError):
    """DIR_AOD lacks the day's file or the file is malformed."""


@dataclass(frozen=True)
class AodSpectrum:
    """τa(λ) = exp(a0 + a1 ln λ + a2 (ln λ)²), λ in µm."""
    a0: float
    a1: float
    a2: float
    source: str = "default"

    def tau(self, wavelength_um) -> np.ndarray:
        ll = np.log(np.asarray(wavelength_um, dtype=np.float64))
        return np.exp(self.a0 + self.a1 * ll + self.a2 * ll * ll)

    @property
    def aod550(self) -> float:
        return float(self.tau(0.55))


def fallback_spectrum(dir_aod: Path | None, doy: int, lon: float, lat: float) -> AodSpectrum:
    """Fallback AOD spectrum (spec 02 §3.1): the global default, or the coefficients of the
    line nearest to (lon, lat) (plain Euclidean distance in degrees, no limit) of
    ``DIR_AOD/AOD_DDD.txt`` (DDD = 3-digit day of year; lines "lon lat a0 a1 a2"; blank lines
    and ``#`` comments skipped, any whitespace separates)."""
    if dir_aod is None:
        return AodSpectrum(*DEFAULT_COEFFICIENTS)
    path = Path(dir_aod) / f"AOD_{int(doy):03d}.txt"
    if not path.exists():
        raise AodFileError(f"DIR_AOD: {path} does not exist (one file per day of year expected)")
    best, best_d = None, math.inf
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            tok = line.split("#", 1)[0].split()
            if not tok:
                continue
            try:
                x, y, a0, a1, a2 = (float(t) for t in tok[:5])
            except ValueError:
                raise AodFileError(f"{path}:{n}: expected 'lon lat a0 a1 a2', got {line.strip()!r}")
            if len(tok) < 5:
                raise AodFileError(f"{path}:{n}: expected 'lon lat a0 a1 a2', got {line.strip()!r}")
            d = math.hypot(x - lon, y - lat)
            if d < best_d:
                best, best_d = (a0, a1, a2), d
    if best is None:
        raise AodFileError(f"{path}: no coefficient line")
    return AodSpectrum(*best, source=path.name)
