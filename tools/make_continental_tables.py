#!/usr/bin/env python
"""Derive the EQUI7 and GLANCE7 continental tile tables of l2ps (spec 03 §2.5).

Writes ``src/l2ps/data/continental_tiles.npz`` (or ``--out``) and prints a comparison with
the tile counts and ranges of spec 03 §2.5. See docs/grids.md for the rule and its
justification. Deterministic: the same ``equi7grid`` data give the same arrays (the zip
member timestamps of the .npz differ between runs).

Rule (both families, per continent AB):

1. Zone polygon = ``equi7grid`` (PyPI, TU Wien) projection zone of AB, unbuffered, in
   lon/lat (``equi7grid._create_grids.get_system_definitions()[AB].proj_zone_geog``).
2. Densify its edges to <= 0.05° and transform it into the continent's cube projection
   (the exact WKT of ``l2ps.cube.continental.continental_wkt``; for GLANCE7 the LAEA of
   the same continent).
3. A tile (X, Y) — upper-left ``(ox + X*T, oy - Y*T)`` with the §2.5 origin (ox, oy) and
   tile size T — is in the table when its intersection with the projected zone has an
   area > ``MIN_OVERLAP_M2`` (1 ha; drops slivers from numeric noise along the zone
   edges, which lie on or within a metre of the grid lines x = 0 / y = 0).
4. Tiles outside the rectangular X/Y ranges of §2.5 are kept (the current zones extend
   a little beyond the Equi7 V13 zones behind FORCE's tables; dropping them would leave
   parts of the globe — e.g. Java in EQUI7 — in no continent at all).

Storage: per table the bounding box (X0, Y0, nx, ny) and the bit-packed presence mask
(row = Y - Y0, column = X - X0), plus a JSON metadata string.

Usage::

    .venv/bin/python tools/make_continental_tables.py [--out PATH] [--check-only]
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import shapely
from pyproj import CRS, Transformer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from l2ps.cube import continental as C  # noqa: E402

SEGMENT_DEG = 0.05
MIN_OVERLAP_M2 = 1.0e4


def zone_lonlat(abbr: str):
    """The unbuffered equi7grid zone of one continent (shapely geometry, lon/lat)."""
    from equi7grid._create_grids import get_system_definitions
    return get_system_definitions(buffered=False)[abbr].proj_zone_geog.geom


def project(geom, family: str, abbr: str):
    g = shapely.segmentize(geom, SEGMENT_DEG)
    tr = Transformer.from_crs(CRS.from_epsg(4326), CRS.from_wkt(C.continental_wkt(family, abbr)),
                              always_xy=True)

    def f(a):
        x, y = tr.transform(a[:, 0], a[:, 1])
        return np.column_stack([x, y])

    p = shapely.make_valid(shapely.transform(g, f))
    # keep the areal part only (make_valid may add degenerate lines at the pole/seams)
    polys = [q for q in shapely.get_parts(p) if q.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(polys)


def table_for(family: str, abbr: str) -> np.ndarray:
    cube = C.continental_cube(family, abbr)
    ts = cube.tile_x
    zone = project(zone_lonlat(abbr), family, abbr)
    minx, miny, maxx, maxy = zone.bounds
    xs = np.arange(int(np.floor((minx - cube.origin_x) / ts)) - 1,
                   int(np.floor((maxx - cube.origin_x) / ts)) + 2)
    ys = np.arange(int(np.floor((cube.origin_y - maxy) / ts)) - 1,
                   int(np.floor((cube.origin_y - miny) / ts)) + 2)
    gx, gy = np.meshgrid(xs, ys)
    gx, gy = gx.ravel(), gy.ravel()
    ulx = cube.origin_x + gx * ts
    uly = cube.origin_y - gy * ts
    boxes = shapely.box(ulx, uly - ts, ulx + ts, uly)
    shapely.prepare(zone)
    hit = shapely.intersects(zone, boxes)
    area = np.zeros(len(boxes))
    area[hit] = shapely.area(shapely.intersection(zone, boxes[hit]))
    sel = area > MIN_OVERLAP_M2
    t = np.column_stack([gx[sel], gy[sel]]).astype(np.int32)
    return t[np.lexsort((t[:, 1], t[:, 0]))]


def pack(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x0, y0 = t.min(axis=0)
    nx, ny = t.max(axis=0) - (x0, y0) + 1
    mask = np.zeros((ny, nx), np.uint8)
    mask[t[:, 1] - y0, t[:, 0] - x0] = 1
    return np.array([x0, y0, nx, ny], np.int32), np.packbits(mask.ravel())


def compare(family: str, abbr: str, t: np.ndarray) -> dict:
    n, (xa, xb), (ya, yb) = C.SPEC_TABLES[(family, abbr)]
    inr = (t[:, 0] >= xa) & (t[:, 0] <= xb) & (t[:, 1] >= ya) & (t[:, 1] <= yb)
    ti = t[inr]
    return {
        "spec_n": n, "n": int(len(t)), "n_in_spec_range": int(inr.sum()),
        "n_outside_spec_range": int((~inr).sum()),
        "diff_in_range": int(inr.sum()) - n,
        "x_range": [int(t[:, 0].min()), int(t[:, 0].max())],
        "y_range": [int(t[:, 1].min()), int(t[:, 1].max())],
        "x_range_in_spec": [int(ti[:, 0].min()), int(ti[:, 0].max())],
        "y_range_in_spec": [int(ti[:, 1].min()), int(ti[:, 1].max())],
        "spec_x_range": [xa, xb], "spec_y_range": [ya, yb],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "src/l2ps/data/continental_tiles.npz")
    ap.add_argument("--check-only", action="store_true", help="print the comparison only")
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    arrays: dict[str, np.ndarray] = {}
    report: dict[str, dict] = {}
    for fam in C.FAMILIES:
        for ab, _ in C.CONTINENTS:
            t = table_for(fam, ab)
            box, bits = pack(t)
            arrays[f"{fam}_{ab}_box"] = box
            arrays[f"{fam}_{ab}_mask"] = bits
            report[f"{fam}_{ab}"] = r = compare(fam, ab, t)
            print(f"{fam:8s}{ab}  n={r['n']:6d}  in §2.5 range {r['n_in_spec_range']:6d} "
                  f"vs spec {r['spec_n']:6d} ({r['diff_in_range']:+5d}, "
                  f"{100 * r['diff_in_range'] / r['spec_n']:+6.2f}%)  outside range "
                  f"{r['n_outside_spec_range']:4d}  X {r['x_range']} Y {r['y_range']}  "
                  f"(in range: X {r['x_range_in_spec']} Y {r['y_range_in_spec']}; "
                  f"spec X {r['spec_x_range']} Y {r['spec_y_range']})")
    meta = {
        "source": "equi7grid (PyPI) unbuffered projection zones, "
                  "get_system_definitions()[AB].proj_zone_geog",
        "equi7grid_version": version("equi7grid"),
        "pyproj_version": version("pyproj"), "shapely_version": version("shapely"),
        "segment_deg": SEGMENT_DEG, "min_overlap_m2": MIN_OVERLAP_M2,
        "rule": "tile in table iff area(tile ∩ projected zone) > min_overlap_m2; "
                "GLANCE7 uses the Equi7 zone of the same continent in the GLANCE LAEA; "
                "origins of spec 03 §2.5; tiles outside the §2.5 ranges are kept",
        "script": "tools/make_continental_tables.py",
        "comparison": report,
    }
    if a.check_only:
        return 0
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True, ensure_ascii=False))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(a.out, **arrays)
    print(f"wrote {a.out} ({a.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
