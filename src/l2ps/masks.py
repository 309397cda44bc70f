"""The standalone masks of ``l2ps mask IMAGE PRM``: the QAI after cloud detection in the
image's native (processing) grid, plus a small JSON with the covers.

The chain up to here is the coordinator's: ``scene = prepare_scene(level1, params)``, then
``result = l2ps.clouds.detect_clouds(scene, params)``, then :func:`write_masks`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import qai as Q
from .errors import OutputError
from .scene import Scene


def write_masks(scene: Scene, params, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``<product_id>_QAI.tif`` (Int16, nodata 1, deflate, the scene's grid; nodata
    pixels normalised to exactly 1 as on output, spec 01 §7) and ``<product_id>_masks.json``
    (covers in %, skip decision, thresholds) into ``out_dir``. Needs
    :func:`l2ps.clouds.detect_clouds` to have run (``scene.extra["clouds"]``). Returns the
    paths written. Raises :class:`OutputError` naming the folder when it cannot write."""
    import rasterio

    result = scene.extra.get("clouds")
    if result is None:
        raise OutputError("write_masks: run l2ps.clouds.detect_clouds(scene, params) first")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{out}: cannot create the output folder: {e.strerror or e}") from e
    level1 = scene.level1
    stem = level1.product_id
    qai = scene.qai.copy()
    Q.normalize_nodata(qai)
    grid = scene.grid
    tif = out / f"{stem}_QAI.tif"
    profile = dict(driver="GTiff", width=grid.nx, height=grid.ny, count=1, dtype="int16",
                   crs=grid.crs, transform=grid.transform, nodata=Q.QAI_NODATA,
                   compress="deflate", predictor=2, tiled=True, blockxsize=256,
                   blockysize=256)
    try:
        with rasterio.open(tif, "w", **profile) as ds:
            ds.write(qai.view(np.int16), 1)
            ds.set_band_description(1, "QAI")
            ds.update_tags(PRODUCT="QAI", SENSOR=level1.sensor,
                           DATE=level1.acquired.strftime("%Y-%m-%dT%H:%M:%S"),
                           SOURCE=str(level1.source))
    except Exception as e:
        raise OutputError(f"{tif}: cannot write the QAI: {e}") from e
    st = result.stats
    doc = {
        "product_id": stem, "sensor": level1.sensor, "source": str(level1.source),
        "data_cover": round(result.data_cover, 4), "water_cover": round(result.water_cover, 4),
        "snow_cover": round(result.snow_cover, 4), "cloud_cover": round(result.cloud_cover, 4),
        "cloud_cover_unbuffered": round(result.cloud_cover_unbuffered, 4),
        "max_cloud_cover_frame": float(params.max_cloud_cover_frame), "skip": bool(result.skip),
        "metadata_cloud_cover": level1.cloud_cover,
        "log": result.log_fragment.strip(),
        "stats": {k: st.get(k) for k in ("work_grid", "lowtemp", "hightemp", "cc_cloud",
                                         "objects", "forced_full_cover", "timings")},
    }
    js = out / f"{stem}_masks.json"
    try:
        js.write_text(json.dumps(doc, indent=2, default=_jsonable) + "\n")
    except OSError as e:
        raise OutputError(f"{js}: cannot write: {e.strerror or e}") from e
    return [tif, js]


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return str(v)
