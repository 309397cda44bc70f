"""The built-in demo of ``make run``: a small queue of synthetic Level-1 images (one
Landsat 8 tar, one Sentinel-2A zip of baseline 04.00), a parameter file and the folders
it names."""
from __future__ import annotations

import re
from pathlib import Path

DEMO_SETTINGS = {
    "DO_ATMO": "FALSE",          # this slice makes a TOA cube; later issues switch it on
    # ETRS89 / LAEA Europe (EPSG:3035), FORCE's documentation example, 30 km tiles
    "PROJECTION": None,          # filled in by make_demo (WKT from EPSG:3035)
    "ORIGIN_LON": "-25",
    "ORIGIN_LAT": "60",
    "RESOLUTION_LANDSAT": "30",
    "RESOLUTION_SENTINEL2": "10",
    "TILE_SIZE": "30000 30000",
    "MAX_CLOUD_COVER_FRAME": "100",
    "MAX_CLOUD_COVER_TILE": "100",
    "OUTPUT_FORMAT": "COG",
    "OUTPUT_OVV": "TRUE",
    "NTHREAD": "1",
}


def set_parameter_values(text: str, values: dict[str, str]) -> str:
    """Replace the values of existing ``KEY = value`` lines (first occurrence); append keys
    that are missing before the end marker."""
    for key, value in values.items():
        pat = re.compile(rf"^(\s*{re.escape(key)}\s*=).*$", re.M)
        if pat.search(text):
            text = pat.sub(lambda m: f"{m.group(1)} {value}", text, count=1)
        else:
            text = text.replace("++PARAM_LEVEL2_END++", f"{key} = {value}\n++PARAM_LEVEL2_END++")
    return text


def make_demo(root: Path, seed: int = 1) -> Path:
    from .params import write_skeleton
    from .queue import append_entries
    from .synth import make_landsat, make_sentinel2

    root = root.absolute()
    dirs = {k: root / v for k, v in {"DIR_LEVEL2": "cube", "DIR_LOG": "log", "DIR_TEMP": "temp",
                                     "DIR_PROVENANCE": "provenance"}.items()}
    for d in [*dirs.values(), root / "level1"]:
        d.mkdir(parents=True, exist_ok=True)
    images = []
    ls = root / "level1" / "landsat"
    s2 = root / "level1" / "sentinel2"
    existing = list(ls.glob("*.tar")) + list(s2.glob("*.zip"))
    if len(existing) >= 2:
        images = sorted(existing)
    else:
        images.append(make_landsat(ls, sensor="LND08", form="tar", seed=seed).path)
        images.append(make_sentinel2(s2, sensor="SEN2A", form="zip", baseline="04.00",
                                     seed=seed + 1).path)
    queue = root / "queue.txt"
    # every `make run` processes the demo again (a reprocessing replaces, never blends)
    queue.write_text("".join(f"{p} QUEUED\n" for p in images))
    prm = root / "level2.prm"
    write_skeleton(prm)
    values = {k: str(v) for k, v in dirs.items()}
    values["FILE_QUEUE"] = str(queue)
    values.update(DEMO_SETTINGS)
    from rasterio.crs import CRS
    values["PROJECTION"] = CRS.from_epsg(3035).to_wkt()
    prm.write_text(set_parameter_values(prm.read_text(), values))
    return prm


def summarize_demo(root: Path) -> str:
    from .queue import read_queue
    root = root.absolute()
    cube = root / "cube"
    files = sorted(p for p in cube.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(cube).parts))
    q = read_queue(root / "queue.txt")
    c = q.counts()
    lines = [f"The demo cube is in {cube}",
             f"  {len(files)} files; queue: {c['DONE']} DONE, {c['FAIL']} FAIL, {c['QUEUED']} QUEUED"]
    for p in files[:40]:
        lines.append(f"  {p.relative_to(cube)}")
    if len(files) > 40:
        lines.append(f"  ... and {len(files) - 40} more")
    lines.append(f"Logs and per-image records: {root / 'log'}")
    return "\n".join(lines)
