"""Clouds, cloud shadows, snow and water: FORCE's modified Fmask with the Sentinel-2
parallax index, and the QAI bits it sets (spec 01 §6–§7).

    >>> from l2ps.clouds import detect_clouds
    >>> result = detect_clouds(scene, params)     # sets scene.qai bits 1–5 in place
    >>> result.skip, result.log_fragment

Modules: :mod:`.potential` (PCP, snow, water), :mod:`.probability` (Landsat thermal and
variability probabilities), :mod:`.parallax` (Sentinel-2 CDI), :mod:`.shadows`
(flood-fill probability and matching), :mod:`.finalize` (cirrus, buffers, QAI, ERASE_CLOUDS,
DST), :mod:`.morphology` (the image operators), :mod:`.detect` (the control flow).
"""
from __future__ import annotations

from .detect import CloudResult, detect_clouds, work_grid
from .finalize import cloud_distance, erase_clouds

__all__ = ["detect_clouds", "CloudResult", "cloud_distance", "erase_clouds", "work_grid"]
