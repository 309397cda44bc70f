"""Landsat 4–9 Level-1 metadata (MTL.txt) of Collection 1 and 2 (spec 01 §1.3).

``parse_mtl`` reads an MTL file alone (e.g. the MTLs beside the toa-crops); ``read_landsat``
builds the ``Level1`` of an extracted product folder. Band grids come from the raster files
(x and y pixel size separately), never from the MTL sizes.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import rasterio

from ..errors import Level1Error
from ..grid import Grid
from .model import Band, Calibration, Level1
from .sensors import SensorSpec, sensor_spec

# spec 01 §1.3: thermal constants used only when K1/K2 are missing from the MTL
FALLBACK_K = {"LND07": (666.09, 1282.71), "LND05": (607.76, 1260.56),
              "LND04": (671.62, 1284.30)}


class MTL(dict):
    """Key → value (str, quotes removed) of an MTL file; the first occurrence of a key wins.

    ``require(keys, why)`` returns the first present key's value or raises a Level1Error
    naming the file, the key and what it is needed for.
    """

    def __init__(self, path: Path, items: dict[str, str]):
        super().__init__(items)
        self.path = Path(path)

    def first(self, *keys: str) -> str | None:
        for k in keys:
            if k in self:
                return self[k]
        return None

    def require(self, keys: str | tuple[str, ...], why: str) -> str:
        keys = (keys,) if isinstance(keys, str) else tuple(keys)
        v = self.first(*keys)
        if v is None or v == "":
            alt = f" (or {', '.join(keys[1:])})" if len(keys) > 1 else ""
            raise Level1Error(f"{self.path}: key {keys[0]}{alt} missing (needed for {why})")
        return v

    def number(self, keys: str | tuple[str, ...], why: str) -> float:
        v = self.require(keys, why)
        try:
            return float(v)
        except ValueError:
            k = keys if isinstance(keys, str) else keys[0]
            raise Level1Error(f"{self.path}: key {k} = {v!r} is not a number "
                              f"(needed for {why})") from None

    def optional_number(self, *keys: str) -> float | None:
        v = self.first(*keys)
        if v is None:
            return None
        try:
            return float(v)
        except ValueError:
            return None


_LINE = re.compile(r"^\s*([A-Za-z0-9_]+)\s*=\s*(.*?)\s*$")


def parse_mtl(path: Path) -> MTL:
    """Parse an MTL.txt (ODL ``KEY = VALUE`` lines) into an :class:`MTL`.

    Reading stops at ``END_GROUP = L1_METADATA_FILE`` (pre-collection/C1 root); a C2 file
    (root ``LANDSAT_METADATA_FILE``) is read to its end. Keys repeated in later groups keep
    their first value.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise Level1Error(f"{path}: cannot be read ({exc.strerror or exc})") from None
    items: dict[str, str] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        key, val = m.group(1), m.group(2)
        if key == "END_GROUP" and val.strip('"') == "L1_METADATA_FILE":
            break
        if key in ("GROUP", "END_GROUP"):
            continue
        val = val.strip().strip('"').strip()
        items.setdefault(key, val)
    if not items:
        raise Level1Error(f"{path}: not an MTL file (no KEY = VALUE lines)")
    return MTL(path, items)


def landsat_sensor(mtl: MTL) -> SensorSpec:
    """SPACECRAFT_ID LANDSAT_4/5/7/8/9 → the sensor spec (spec 01 §1.3)."""
    sc = mtl.require("SPACECRAFT_ID", "the sensor")
    lid = sc.strip()[-1:]
    if lid not in ("4", "5", "7", "8", "9") or not sc.upper().startswith("LANDSAT"):
        raise Level1Error(f"{mtl.path}: SPACECRAFT_ID {sc!r} is not a supported Landsat "
                          "(expected LANDSAT_4, LANDSAT_5, LANDSAT_7, LANDSAT_8 or LANDSAT_9)")
    instrument = (mtl.first("SENSOR_ID") or "").upper()
    if "MSS" in instrument:
        raise Level1Error(f"{mtl.path}: SENSOR_ID {instrument!r}: MSS is not supported "
                          "(expected TM, ETM+ or OLI_TIRS)")
    if lid in ("8", "9") and instrument and instrument != "OLI_TIRS":
        raise Level1Error(f"{mtl.path}: SENSOR_ID {instrument!r}: an OLI-only or TIRS-only "
                          "product cannot be processed (expected OLI_TIRS)")
    return sensor_spec(f"LND0{lid}")


def _old_band_id(l1_name: str) -> str:
    return "61" if l1_name == "6_VCID_1" else l1_name


def landsat_calibration(mtl: MTL, spec: SensorSpec | None = None) -> dict[str, Calibration]:
    """Per-domain DN→TOA/BT coefficients from the MTL (spec 01 §1.3 "Per-band keys").

    Missing mandatory keys raise a Level1Error naming the key and band. Unlike FORCE, Lmin
    is checked as well (FORCE repeats the Lmax test).
    """
    spec = spec or landsat_sensor(mtl)
    out: dict[str, Calibration] = {}
    for b in spec.bands:
        n, o = b.l1_name, _old_band_id(b.l1_name)
        why = f"DN→{'BT' if b.thermal else 'TOA'} of band {n}"
        lmax = mtl.number((f"RADIANCE_MAXIMUM_BAND_{n}", f"LMAX_BAND{o}"), why)
        lmin = mtl.number((f"RADIANCE_MINIMUM_BAND_{n}", f"LMIN_BAND{o}"), why)
        qmax = mtl.number((f"QUANTIZE_CAL_MAX_BAND_{n}", f"QCALMAX_BAND{o}"), why)
        qmin = mtl.number((f"QUANTIZE_CAL_MIN_BAND_{n}", f"QCALMIN_BAND{o}"), why)
        if qmax == qmin:
            raise Level1Error(f"{mtl.path}: QUANTIZE_CAL_MAX_BAND_{n} equals "
                              f"QUANTIZE_CAL_MIN_BAND_{n} (needed for {why})")
        gain = (lmax - lmin) / (qmax - qmin)
        rad_add = lmin - gain * qmin
        if b.thermal:
            k1 = mtl.optional_number(f"K1_CONSTANT_BAND_{n}")
            k2 = mtl.optional_number(f"K2_CONSTANT_BAND_{n}")
            if k1 is None or k2 is None:
                if spec.sensor not in FALLBACK_K:
                    mtl.require(f"K1_CONSTANT_BAND_{n}" if k1 is None
                                else f"K2_CONSTANT_BAND_{n}", why)
                k1, k2 = FALLBACK_K[spec.sensor]
            out[b.domain] = Calibration(rad_mult=gain, rad_add=rad_add, k1=k1, k2=k2)
        else:
            mult = mtl.number(f"REFLECTANCE_MULT_BAND_{n}", why)
            add = mtl.number(f"REFLECTANCE_ADD_BAND_{n}", why)
            out[b.domain] = Calibration(refl_mult=mult, refl_add=add, rad_mult=gain,
                                        rad_add=rad_add)
    return out


def landsat_tier(mtl: MTL) -> tuple[int, str, str]:
    """(tier, processing level, category) — spec 01 §1.3 "Product type", computed properly.

    COLLECTION_CATEGORY T1 → 1, T2 → 2, RT → 3 (Collection 1 and 2). Without a category
    (pre-collection) the processing level decides: L1T/L1TP → 1, anything else → 2.
    FORCE leaves C2 T1 at SHRT_MIN (always accepted); here it is tier 1.
    """
    level = mtl.first("DATA_TYPE", "PRODUCT_TYPE", "PROCESSING_LEVEL") or ""
    cat = (mtl.first("COLLECTION_CATEGORY") or "").upper()
    if "RT" in cat:
        return 3, level, cat
    if "T2" in cat:
        return 2, level, cat
    if "T1" in cat:
        return 1, level, cat
    tier = 1 if ("L1T" in level.upper()) else 2
    return tier, level, cat


def landsat_time(mtl: MTL) -> datetime:
    """UTC acquisition time: DATE_ACQUIRED + SCENE_CENTER_TIME (fractional seconds kept)."""
    why = "the acquisition time (sun position)"
    date = mtl.require(("DATE_ACQUIRED", "ACQUISITION_DATE"), why)
    tstr = mtl.require(("SCENE_CENTER_TIME", "SCENE_CENTER_SCAN_TIME"), why)
    try:
        d = datetime.strptime(date.strip(), "%Y-%m-%d")
        m = re.match(r"^(\d{1,2}):(\d{1,2}):(\d{1,2}(?:\.\d*)?)", tstr.strip())
        if not m:
            raise ValueError(tstr)
        h, mi, s = int(m.group(1)), int(m.group(2)), float(m.group(3))
    except ValueError:
        raise Level1Error(f"{mtl.path}: cannot parse acquisition time {date!r} {tstr!r} "
                          "(expected YYYY-MM-DD and hh:mm:ss.sssZ)") from None
    return (d + timedelta(hours=h, minutes=mi, seconds=s)).replace(tzinfo=timezone.utc)


def gdal_message(exc: BaseException) -> str:
    """The messages of a rasterio/GDAL exception chain, innermost (most specific) last,
    without rasterio's "See previous exception" boilerplate."""
    msgs: list[str] = []
    seen = set()
    c: BaseException | None = exc
    while c is not None and id(c) not in seen:
        seen.add(id(c))
        m = str(c).strip()
        if m and "See previous exception" not in m and m not in msgs:
            msgs.append(m)
        c = c.__cause__ or c.__context__
    return "; ".join(msgs[-2:]) if msgs else exc.__class__.__name__


def raster_grid(path: Path) -> tuple[Grid, str]:
    """Native grid and data type of a raster file (header only)."""
    try:
        with rasterio.open(path) as ds:
            if ds.crs is None:
                raise Level1Error(f"{path}: raster has no coordinate reference system")
            try:
                grid = Grid.from_transform(ds.crs, ds.transform, ds.width, ds.height)
            except ValueError as exc:
                raise Level1Error(f"{path}: {exc} (expected a north-up image)") from None
            return grid, ds.dtypes[0]
    except Level1Error:
        raise
    except rasterio.errors.RasterioError as exc:
        raise Level1Error(f"{path}: cannot be read: {gdal_message(exc)}") from None


def find_mtl(folder: Path) -> Path:
    """The ``*_MTL.txt`` of a Landsat product folder (sorted first; one level down too)."""
    cands = sorted(folder.glob("*MTL*.txt")) or sorted(folder.glob("*/*MTL*.txt"))
    if not cands:
        raise Level1Error(f"{folder}: no *_MTL.txt found (expected a Landsat product folder)")
    return cands[0]


def finest_grid(bands: dict[str, Band]) -> Grid:
    """The grid of the band with the smallest pixel area (first in internal order on ties)."""
    best = None
    for b in bands.values():
        if best is None or b.grid.dx * b.grid.dy < best.dx * best.dy * (1 - 1e-9):
            best = b.grid
    return best


def read_landsat(folder: Path, source: Path | None = None) -> Level1:
    """Metadata of an extracted Landsat product folder (spec 01 §1.3)."""
    folder = Path(folder)
    mtl_path = find_mtl(folder)
    mtl = parse_mtl(mtl_path)
    root = mtl_path.parent
    spec = landsat_sensor(mtl)
    cal = landsat_calibration(mtl, spec)

    bands: dict[str, Band] = {}
    for b in spec.bands:
        n, o = b.l1_name, _old_band_id(b.l1_name)
        keys = (f"FILE_NAME_BAND_{n}", f"BAND{o}_FILE_NAME")
        fname = mtl.require(keys, f"the image file of band {n}")
        path = root / fname
        if not path.is_file():
            # some repackaged products change the case of the suffix
            alt = [p for p in root.iterdir() if p.name.lower() == fname.lower()]
            if not alt:
                raise Level1Error(f"{path}: band {n} ({b.domain}) file named in "
                                  f"{mtl_path.name} ({keys[0]}) not found")
            path = alt[0]
        grid, dtype = raster_grid(path)
        if dtype not in ("uint8", "uint16"):
            raise Level1Error(f"{path}: data type {dtype} (expected uint8 or uint16 DN)")
        bands[b.domain] = Band(b.domain, n, path, grid, cal[b.domain], thermal=b.thermal)

    ref = next(iter(bands.values())).grid
    for b in bands.values():
        if not b.grid.same_crs(ref):
            raise Level1Error(f"{b.path}: coordinate reference system differs from band "
                              f"{next(iter(bands.values())).l1_name}")

    tier, level, cat = landsat_tier(mtl)
    path_ = mtl.require("WRS_PATH", "the WRS-2 reference")
    row_ = mtl.require(("WRS_ROW", "STARTING_ROW"), "the WRS-2 reference")
    try:
        refsys = f"{int(float(path_)):03d}{int(float(row_)):03d}"
    except ValueError:
        raise Level1Error(f"{mtl_path}: WRS_PATH/WRS_ROW {path_!r}/{row_!r} are not "
                          "numbers") from None
    coll = mtl.first("COLLECTION_NUMBER")
    try:
        collection = int(coll) if coll is not None else None
    except ValueError:
        collection = None
    product_id = (mtl.first("LANDSAT_PRODUCT_ID")
                  or mtl_path.name.replace("_MTL.txt", "").replace("MTL.txt", ""))
    cc = mtl.optional_number("CLOUD_COVER")
    return Level1(
        source=Path(source) if source is not None else folder,
        root=root,
        product_id=product_id,
        spec=spec,
        acquired=landsat_time(mtl),
        tier=tier,
        refsys_type="WRS-2",
        refsys_id=refsys,
        grid=finest_grid(bands),
        bands=bands,
        cloud_cover=cc,
        collection=collection,
        extra={"mtl": mtl_path, "processing_level": level, "collection_category": cat,
               "sun_elevation": mtl.optional_number("SUN_ELEVATION"),
               "sun_azimuth": mtl.optional_number("SUN_AZIMUTH"),
               "landsat_scene_id": mtl.first("LANDSAT_SCENE_ID")},
    )
