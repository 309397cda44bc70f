"""Sentinel-2 A/B/C/D L1C metadata: MTD_MSIL1C (product) and MTD_TL (granule), spec 01 §1.4–1.5.

``parse_product_xml`` reads an MTD_MSIL1C.xml alone (e.g. the MTDs beside the toa-crops);
``read_sentinel2`` builds the ``Level1`` of a ``.SAFE`` folder or one granule folder.

Deliberate differences to FORCE (docs/deviations.d/level1-toa.md):
- granule folders without a tile XML are skipped, the choice among granules is sorted;
- azimuths (nodes → cells and the collapse over bands/detectors) use a circular mean;
- band grids come from the raster files, so decimated rasters and non-integer band
  ratios work.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import Level1Error
from .landsat import finest_grid, raster_grid
from ..grid import Grid
from .model import Band, Calibration, Level1, ViewGrid
from .sensors import sensor_spec

ANGLE_STEP = 5000.0          # m, the only COL_STEP FORCE accepts (§1.4)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _parse_xml(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise Level1Error(f"{path}: not a readable XML file ({exc})") from None
    except OSError as exc:
        raise Level1Error(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _find_all(root: ET.Element, name: str) -> list[ET.Element]:
    return [e for e in root.iter() if _local(e.tag) == name]


def _find_text(root: ET.Element, name: str) -> str | None:
    for e in root.iter():
        if _local(e.tag) == name and e.text is not None and e.text.strip():
            return e.text.strip()
    return None


# --------------------------------------------------------------------------- product XML
@dataclass(frozen=True)
class ProductInfo:
    path: Path
    sensor: str                      # SEN2A ...
    start_time: datetime             # PRODUCT_START_TIME (UTC)
    quantification: float            # QUANTIFICATION_VALUE
    add_offset: tuple[float, ...]    # RADIO_ADD_OFFSET per band index 0..12 (0 before 04.00)
    baseline: str | None
    product_uri: str | None
    cloud_cover: float | None
    processing_level: str


def _parse_time(path: Path, key: str, s: str) -> datetime:
    m = re.match(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2}(?:\.\d+)?)", s)
    if not m:
        raise Level1Error(f"{path}: {key} {s!r} is not a time (expected "
                          "YYYY-MM-DDThh:mm:ss.sssZ)")
    y, mo, d, h, mi = (int(m.group(i)) for i in range(1, 6))
    sec = float(m.group(6))
    whole = int(sec)
    return datetime(y, mo, d, h, mi, whole, int(round((sec - whole) * 1e6)) % 1000000,
                    tzinfo=timezone.utc)


def parse_product_xml(path: Path) -> ProductInfo:
    """Parse the product-level MTD_MSIL1C.xml (or old ``S2?_OPER_MTD_SAFL1C_*.xml``)."""
    path = Path(path)
    root = _parse_xml(path)
    name = _find_text(root, "SPACECRAFT_NAME")
    if name is None:
        raise Level1Error(f"{path}: key SPACECRAFT_NAME missing (needed for the sensor)")
    m = re.match(r"^Sentinel-(2[ABCD])$", name.strip())
    if not m:
        raise Level1Error(f"{path}: SPACECRAFT_NAME {name!r} is not a supported satellite "
                          "(expected Sentinel-2A, Sentinel-2B, Sentinel-2C or Sentinel-2D)")
    sensor = "SEN" + m.group(1)
    level = _find_text(root, "PROCESSING_LEVEL") or ""
    if "1C" not in level:
        raise Level1Error(f"{path}: PROCESSING_LEVEL {level!r} is not Level-1C")
    st = _find_text(root, "PRODUCT_START_TIME")
    if st is None:
        raise Level1Error(f"{path}: key PRODUCT_START_TIME missing (needed for the sun "
                          "position)")
    start = _parse_time(path, "PRODUCT_START_TIME", st)
    q = _find_text(root, "QUANTIFICATION_VALUE")
    if q is None:
        raise Level1Error(f"{path}: key QUANTIFICATION_VALUE missing (needed for DN→TOA)")
    try:
        quant = float(q)
        if quant <= 0:
            raise ValueError
    except ValueError:
        raise Level1Error(f"{path}: QUANTIFICATION_VALUE {q!r} is not a positive "
                          "number") from None
    offsets = [0.0] * 13
    for e in _find_all(root, "RADIO_ADD_OFFSET"):
        bid = e.get("band_id", e.get("bandId"))
        try:
            i = int(bid)
            v = float((e.text or "").strip())
        except (TypeError, ValueError):
            raise Level1Error(f"{path}: RADIO_ADD_OFFSET band_id={bid!r} value "
                              f"{e.text!r} is not readable") from None
        if not 0 <= i < 13:
            raise Level1Error(f"{path}: RADIO_ADD_OFFSET band_id={i} out of range 0..12")
        offsets[i] = v
    baseline = _find_text(root, "PROCESSING_BASELINE")
    uri = _find_text(root, "PRODUCT_URI")
    if baseline is None and uri:
        mb = re.search(r"_N(\d{2})(\d{2})_", uri)
        baseline = f"{mb.group(1)}.{mb.group(2)}" if mb else None
    cc = _find_text(root, "Cloud_Coverage_Assessment")
    try:
        cloud = float(cc) if cc is not None else None
    except ValueError:
        cloud = None
    return ProductInfo(path, sensor, start, quant, tuple(offsets), baseline, uri, cloud, level)


def s2_calibration(info: ProductInfo) -> dict[str, Calibration]:
    """Per-domain Calibration (Q and RADIO_ADD_OFFSET) in internal band order (§1.4)."""
    spec = sensor_spec(info.sensor)
    return {b.domain: Calibration(quantification=info.quantification,
                                  add_offset=info.add_offset[i])
            for i, b in enumerate(spec.bands)}


# --------------------------------------------------------------------------- granule XML
@dataclass
class TileInfo:
    path: Path
    epsg: int | None
    ulx: float
    uly: float
    sensing_time: str | None
    tile_id: str | None
    sun_zenith: np.ndarray          # node grids, NaN = missing
    sun_azimuth: np.ndarray
    view: list = field(default_factory=list)   # [(band, detector, zenith, azimuth)] node grids


def _values_grid(path: Path, elem: ET.Element, what: str) -> np.ndarray:
    step = None
    for e in elem.iter():
        if _local(e.tag) == "COL_STEP":
            step = float(e.text)
        elif _local(e.tag) == "ROW_STEP" and step is not None and float(e.text) != step:
            step = -1.0
    if step != ANGLE_STEP:
        raise Level1Error(f"{path}: {what} COL_STEP/ROW_STEP is {step} (expected 5000 m; "
                          "SUN_VIEW_GRID is incompatible)")
    rows = []
    for e in elem.iter():
        if _local(e.tag) == "VALUES":
            vals = []
            for tok in (e.text or "").split():
                try:
                    vals.append(float(tok))
                except ValueError:
                    vals.append(np.nan)
            rows.append(vals)
    if not rows or len({len(r) for r in rows}) != 1:
        raise Level1Error(f"{path}: {what} angle grid has no or ragged VALUES rows")
    return np.asarray(rows, dtype=np.float64)


def _child(elem: ET.Element, name: str) -> ET.Element | None:
    for c in elem:
        if _local(c.tag) == name:
            return c
    return None


def parse_tile_xml(path: Path) -> TileInfo:
    """Parse a granule MTD_TL.xml: geocoding and the sun / per-band-detector view grids."""
    path = Path(path)
    root = _parse_xml(path)
    code = _find_text(root, "HORIZONTAL_CS_CODE")
    epsg = None
    if code:
        m = re.search(r"(\d+)$", code)
        epsg = int(m.group(1)) if m else None
    ulx = uly = None
    best = None
    for g in _find_all(root, "Geoposition"):
        try:
            res = float(g.get("resolution", "nan"))
        except ValueError:
            res = np.nan
        x, y = _find_text(g, "ULX"), _find_text(g, "ULY")
        if x is None or y is None:
            continue
        if best is None or res < best:
            best, ulx, uly = res, float(x), float(y)
    if ulx is None:
        raise Level1Error(f"{path}: key Geoposition/ULX missing (needed for the angle grids)")
    sun = _find_all(root, "Sun_Angles_Grid")
    if not sun:
        raise Level1Error(f"{path}: key Sun_Angles_Grid missing (needed for the geometry)")
    sz_e, sa_e = _child(sun[0], "Zenith"), _child(sun[0], "Azimuth")
    if sz_e is None or sa_e is None:
        raise Level1Error(f"{path}: Sun_Angles_Grid without Zenith/Azimuth")
    info = TileInfo(path, epsg, ulx, uly, _find_text(root, "SENSING_TIME"),
                    _find_text(root, "TILE_ID"),
                    _values_grid(path, sz_e, "Sun_Angles_Grid/Zenith"),
                    _values_grid(path, sa_e, "Sun_Angles_Grid/Azimuth"))
    for v in _find_all(root, "Viewing_Incidence_Angles_Grids"):
        z, a = _child(v, "Zenith"), _child(v, "Azimuth")
        if z is None or a is None:
            continue
        band, det = v.get("bandId"), v.get("detectorId")
        what = f"Viewing_Incidence_Angles_Grids bandId={band} detectorId={det}"
        zg, ag = _values_grid(path, z, what), _values_grid(path, a, what)
        if zg.shape != ag.shape or zg.shape != info.sun_zenith.shape:
            raise Level1Error(f"{path}: {what}: grid shape {zg.shape} differs from the sun "
                              f"grid {info.sun_zenith.shape}")
        info.view.append((band, det, zg, ag))
    if not info.view:
        raise Level1Error(f"{path}: no Viewing_Incidence_Angles_Grids (needed for the view "
                          "geometry)")
    return info


def nodes_to_cells(zenith: np.ndarray, azimuth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Node grids (n+1)² → cell grids n² (spec 01 §1.5 step 1).

    A node counts where its zenith is finite and > 0 (as FORCE) and its azimuth is finite.
    Zenith = mean of the counted corners; azimuth = their circular mean (a deliberate fix:
    FORCE averages azimuths arithmetically). No counted corner → NaN.
    """
    ok = np.isfinite(zenith) & (zenith > 0) & np.isfinite(azimuth)
    z = np.where(ok, zenith, 0.0)
    ar = np.deg2rad(np.where(ok, azimuth, 0.0))
    s, c = np.where(ok, np.sin(ar), 0.0), np.where(ok, np.cos(ar), 0.0)
    okf = ok.astype(np.float64)

    def corners(a):
        return a[:-1, :-1] + a[1:, :-1] + a[:-1, 1:] + a[1:, 1:]

    n = corners(okf)
    with np.errstate(invalid="ignore", divide="ignore"):
        zc = np.where(n > 0, corners(z) / n, np.nan)
        ac = np.where(n > 0, np.rad2deg(np.arctan2(corners(s), corners(c))) % 360.0, np.nan)
    return zc, ac


def collapse_view(view: list) -> tuple[np.ndarray, np.ndarray]:
    """Per-band/per-detector node grids → one cell grid (§1.5 steps 1–2).

    Zenith: arithmetic mean over bands × detectors of the valid cell values; azimuth: circular
    mean (deliberate fix). Cells valid in no grid are NaN.
    """
    zs, ss, cs, ns = None, None, None, None
    for _b, _d, zg, ag in view:
        zc, ac = nodes_to_cells(zg, ag)
        ok = np.isfinite(zc) & np.isfinite(ac)
        ar = np.deg2rad(np.where(ok, ac, 0.0))
        if zs is None:
            zs, ss, cs, ns = (np.zeros_like(zc) for _ in range(4))
        zs += np.where(ok, zc, 0.0)
        ss += np.where(ok, np.sin(ar), 0.0)
        cs += np.where(ok, np.cos(ar), 0.0)
        ns += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        zen = np.where(ns > 0, zs / ns, np.nan)
        azi = np.where(ns > 0, np.rad2deg(np.arctan2(ss, cs)) % 360.0, np.nan)
    return zen, azi


# --------------------------------------------------------------------------- folders
def _tile_xml(granule: Path) -> Path | None:
    for pat in ("MTD_TL.xml", "S2*_MTD_*TL*.xml", "S2*.xml", "MTD*.xml"):
        c = sorted(p for p in granule.glob(pat) if p.is_file())
        if c:
            return c[0]
    return None


def choose_granule(safe: Path) -> Path:
    """The granule folder of a .SAFE: sorted first ``*L1C*`` folder that has a tile XML."""
    gdir = safe / "GRANULE"
    if not gdir.is_dir():
        raise Level1Error(f"{safe}: no GRANULE folder (expected a Sentinel-2 L1C .SAFE)")
    cands = sorted(p for p in gdir.iterdir() if p.is_dir() and "L1C" in p.name)
    for g in cands:
        if _tile_xml(g) is not None:
            return g
    raise Level1Error(f"{gdir}: no granule folder with a MTD_TL.xml "
                      f"(found: {', '.join(p.name for p in cands) or 'none'})")


def product_xml(safe: Path) -> Path:
    for pat in ("MTD_MSIL1C.xml", "S2*_OPER_MTD_SAFL1C*.xml", "MTD*.xml", "S2*.xml"):
        c = sorted(p for p in safe.glob(pat) if p.is_file())
        if c:
            return c[0]
    raise Level1Error(f"{safe}: no MTD_MSIL1C.xml (expected the product metadata of a "
                      "Sentinel-2 L1C .SAFE)")


def mgrs_id(granule_name: str) -> str:
    """``L1C_T33UUU_A…`` or the old long name ``…_A002621_T20LKP_N02.01`` → ``T33UUU``."""
    m = re.search(r"(?:^|_)(T\d{2}[A-Z]{3})(?:_|$)", granule_name)
    if not m:
        raise Level1Error(f"{granule_name}: no MGRS tile id (T##XXX) in the granule name")
    return m.group(1)


def band_file(granule: Path, l1_name: str) -> Path:
    img = granule / "IMG_DATA"
    for ext in ("jp2", "tif", "TIF"):
        c = sorted(img.glob(f"*_{l1_name}.{ext}"))
        if c:
            return c[0]
    raise Level1Error(f"{img}: band {l1_name} missing (expected a file *_{l1_name}.jp2)")


def read_sentinel2(path: Path, source: Path | None = None) -> Level1:
    """Metadata of a Sentinel-2 L1C ``.SAFE`` folder or granule folder (spec 01 §1.4–1.5)."""
    path = Path(path)
    if (path / "GRANULE").is_dir():
        safe, granule = path, choose_granule(path)
    else:
        granule = path
        if _tile_xml(granule) is None:
            raise Level1Error(f"{granule}: no MTD_TL.xml (expected a Sentinel-2 L1C granule "
                              "folder)")
        safe = granule.parent.parent
    info = parse_product_xml(product_xml(safe))
    tile = parse_tile_xml(_tile_xml(granule))
    spec = sensor_spec(info.sensor)
    cal = s2_calibration(info)

    bands: dict[str, Band] = {}
    for b in spec.bands:
        f = band_file(granule, b.l1_name)
        grid, dtype = raster_grid(f)
        if dtype != "uint16":
            raise Level1Error(f"{f}: data type {dtype} (expected uint16 DN)")
        bands[b.domain] = Band(b.domain, b.l1_name, f, grid, cal[b.domain])
    ref = bands["BLUE"].grid
    for b in bands.values():
        if not b.grid.same_crs(ref):
            raise Level1Error(f"{b.path}: coordinate reference system differs from band B02")
    grid = finest_grid(bands)
    if abs(grid.x0 - tile.ulx) > 0.5 * grid.dx or abs(grid.y0 - tile.uly) > 0.5 * grid.dy:
        raise Level1Error(f"{bands['BLUE'].path}: raster UL corner ({grid.x0}, {grid.y0}) "
                          f"differs from the tile ULX/ULY ({tile.ulx}, {tile.uly}) of "
                          f"{tile.path.name}")
    vz, va = collapse_view(tile.view)
    view = ViewGrid(zenith=vz.astype(np.float32), azimuth=va.astype(np.float32),
                    cell=ANGLE_STEP, sun_zenith=tile.sun_zenith, sun_azimuth=tile.sun_azimuth,
                    origin=(tile.ulx, tile.uly))
    product_id = (info.product_uri or safe.name)
    if product_id.endswith(".SAFE"):
        product_id = product_id[:-5]
    return Level1(
        source=Path(source) if source is not None else path,
        root=granule,
        product_id=product_id,
        spec=spec,
        acquired=info.start_time,
        tier=1,
        refsys_type="MGRS",
        refsys_id=mgrs_id(granule.name),
        grid=grid,
        bands=bands,
        cloud_cover=info.cloud_cover,
        processing_baseline=info.baseline,
        view=view,
        extra={"safe": safe, "product_xml": info.path, "tile_xml": tile.path,
               "sensing_time": tile.sensing_time, "tile_id": tile.tile_id,
               "quantification": info.quantification, "add_offset": info.add_offset},
    )


def valid_subset(level1: Level1) -> Grid | None:
    """The part of ``level1.grid`` covered by valid view-angle cells (spec 01 §1.5 step 3–5).

    Bounding box of the cells with a valid collapsed view zenith and azimuth, widened by one
    cell on the left (FORCE's "missing left edge"), snapped outwards to multiples of 3 cells
    (15 km, a multiple of 60 m), clipped to the image. Returned as a sub-grid of the
    processing grid (pixel bounds by coordinates, so decimated grids work), or None when no
    cell is valid (FORCE then ends without output). Optional: processing the full grid
    (DO_REPROJ = DO_TILE = FALSE in FORCE) is equally correct, only slower.
    """
    view = level1.view
    if view is None:
        return level1.grid
    ok = np.isfinite(view.zenith) & np.isfinite(view.azimuth)
    rows, cols = np.flatnonzero(ok.any(axis=1)), np.flatnonzero(ok.any(axis=0))
    if rows.size == 0:
        return None
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    left, right = int(cols[0]), int(cols[-1]) + 1
    if left > 0:
        left -= 1
    left, top = 3 * (left // 3), 3 * (top // 3)
    right, bottom = -(-right // 3) * 3, -(-bottom // 3) * 3
    g = level1.grid
    ox, oy = view.origin if view.origin is not None else (g.x0, g.y0)
    c0 = max(int(np.floor((ox + left * view.cell - g.x0) / g.dx + 1e-9)), 0)
    r0 = max(int(np.floor((g.y0 - (oy - top * view.cell)) / g.dy + 1e-9)), 0)
    c1 = min(int(np.ceil((ox + right * view.cell - g.x0) / g.dx - 1e-9)), g.nx)
    r1 = min(int(np.ceil((g.y0 - (oy - bottom * view.cell)) / g.dy - 1e-9)), g.ny)
    if c1 <= c0 or r1 <= r0:
        return None
    return g.window(r0, c0, r1 - r0, c1 - c0)
