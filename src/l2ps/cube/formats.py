"""Output formats, GDAL creation options and the low-level raster writer (spec 03 §3.2,
§3.3).

``OUTPUT_FORMAT``: COG (default), GTiff, ENVI, CUSTOM (a FILE_OUTPUT_OPTIONS tag/value
file with DRIVER, EXTENSION and creation options); JPEG is used for the OVV quicklook
only. Deviations from FORCE:

* COG: ``INTERLEAVE=TILE`` is only passed with GDAL ≥ 3.11 (older GDAL warns and ignores
  it); overviews of QAI use NEAREST instead of AVERAGE (an average of bit fields is
  meaningless).
* metadata is attached to the source dataset before the COG copy, so it is inside the
  file and the COG layout stays clean.
* OVV is written as an 8-bit RGB JPEG on purpose (FORCE writes 12-bit where libjpeg-12
  is available, which many viewers cannot display).
"""
from __future__ import annotations

import getpass
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.io import MemoryFile
import rasterio.shutil

from ..errors import OutputError, ParameterError
from ..grid import Grid

FORCE_DESCRIPTION = "FORCE Level 2 Processing System"


def gdal_version() -> tuple[int, int, int]:
    parts = [int("".join(c for c in p if c.isdigit()) or 0)
             for p in rasterio.__gdal_version__.split(".")[:3]]
    return tuple((parts + [0, 0, 0])[:3])  # type: ignore[return-value]


@dataclass(frozen=True)
class OutputFormat:
    """A GDAL driver, the file extension and the creation options."""
    name: str                    # COG, GTiff, ENVI, JPEG, CUSTOM
    driver: str
    extension: str               # without dot
    options: dict[str, str] = field(default_factory=dict)

    def options_for(self, product: str) -> dict[str, str]:
        """Creation options for one product (QAI overviews: NEAREST)."""
        opts = dict(self.options)
        if self.driver == "COG" and product == "QAI" and "OVERVIEW_RESAMPLING" in opts:
            opts["OVERVIEW_RESAMPLING"] = "NEAREST"
        return opts


def output_format(name: str = "COG", options_file: str | os.PathLike | None = None,
                  gdal: tuple[int, int, int] | None = None) -> OutputFormat:
    """The output format for OUTPUT_FORMAT ``name`` (spec 03 §3.2)."""
    gdal = gdal or gdal_version()
    n = (name or "COG").strip()
    if n == "COG":
        opts = {"COMPRESS": "ZSTD", "PREDICTOR": "YES", "BLOCKSIZE": "256",
                "BIGTIFF": "YES", "OVERVIEW_RESAMPLING": "AVERAGE"}
        if gdal >= (3, 11, 0):
            opts["INTERLEAVE"] = "TILE"
        return OutputFormat("COG", "COG", "tif", opts)
    if n == "GTiff":
        return OutputFormat("GTiff", "GTiff", "tif",
                            {"COMPRESS": "ZSTD", "PREDICTOR": "2", "INTERLEAVE": "BAND",
                             "BIGTIFF": "YES", "TILED": "YES", "BLOCKXSIZE": "256",
                             "BLOCKYSIZE": "256"})
    if n == "ENVI":
        return OutputFormat("ENVI", "ENVI", "dat", {})
    if n == "JPEG":
        return OutputFormat("JPEG", "JPEG", "jpg", {})
    if n == "CUSTOM":
        if not options_file:
            raise ParameterError("OUTPUT_FORMAT = CUSTOM needs FILE_OUTPUT_OPTIONS")
        return read_output_options(options_file)
    raise ParameterError(f"OUTPUT_FORMAT = {name!r}: expected COG, GTiff, ENVI, JPEG or CUSTOM")


def read_output_options(path: str | os.PathLike) -> OutputFormat:
    """FILE_OUTPUT_OPTIONS: ``TAG = VALUE`` lines; DRIVER and EXTENSION are required,
    every other line is a creation option (passed unchecked to GDAL). Blank lines and
    ``#`` comments are tolerated (FORCE rejects them)."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ParameterError(f"{p}: cannot read FILE_OUTPUT_OPTIONS: {e.strerror or e}") from e
    vals: dict[str, str] = {}
    for i, ln in enumerate(lines, 1):
        ln = ln.split("#", 1)[0].strip()
        if not ln:
            continue
        tag, eq, value = ln.partition("=")
        if not eq:
            toks = ln.split()
            if len(toks) != 2:
                raise ParameterError(f"{p}, line {i}: expected TAG = VALUE, got {ln!r}")
            tag, value = toks
        tag, value = tag.strip(), value.strip()
        if not tag or not value:
            raise ParameterError(f"{p}, line {i}: expected TAG = VALUE, got {ln!r}")
        vals[tag] = value
    driver = vals.pop("DRIVER", None)
    ext = vals.pop("EXTENSION", None)
    if not driver or not ext:
        raise ParameterError(f"{p}: DRIVER and EXTENSION are required")
    try:
        with rasterio.Env() as env:
            drivers = env.drivers()
    except Exception:   # pragma: no cover
        drivers = {driver: ""}
    if driver not in drivers:
        raise ParameterError(f"{p}: DRIVER = {driver} is not a GDAL driver of this installation")
    return OutputFormat("CUSTOM", driver, ext.lstrip("."), vals)


# ------------------------------------------------------------------- metadata
def system_metadata() -> dict[str, str]:
    """Sys_* items (spec 03 §3.3) from ``platform.uname`` and the login name."""
    u = platform.uname()
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return {"Sys_system_name": u.system or "unknown", "Sys_host_name": u.node or "unknown",
            "Sys_OS_release": u.release or "unknown", "Sys_OS_version": u.version or "unknown",
            "Sys_machine": u.machine or "unknown", "Sys_operator": user or "unknown"}


def version_string() -> str:
    from .. import __version__
    return f"l2ps {__version__}"


def dataset_metadata(product: str, param_log: str = "") -> dict[str, str]:
    """Dataset items of domain FORCE."""
    md = system_metadata()
    md.update({"FORCE_version": version_string(), "FORCE_description": FORCE_DESCRIPTION,
               "FORCE_product": product, "FORCE_param": param_log or ""})
    return md


def band_metadata(domain: str, wavelength: float, wavelength_unit: str, scale: float,
                  sensor: str, date_time: str) -> dict[str, str]:
    """Band items of domain FORCE (``Date`` like ``2020-07-01T10:20:30.0Z``)."""
    return {"Domain": domain, "Wavelength": f"{wavelength:.3f}",
            "Wavelength_unit": wavelength_unit, "Scale": f"{scale:.3f}",
            "Sensor": sensor, "Date": date_time}


# ------------------------------------------------------------------- writing
@dataclass
class RasterSpec:
    """Everything written besides the pixels."""
    band_names: tuple[str, ...]
    nodata: float | None
    dataset_md: dict[str, dict[str, str]] = field(default_factory=dict)   # domain -> items
    band_md: list[dict[str, dict[str, str]]] = field(default_factory=list)  # per band


def _fill(ds, data: np.ndarray, spec: RasterSpec) -> None:
    for domain, items in spec.dataset_md.items():
        if items:
            if domain:
                ds.update_tags(ns=domain, **items)
            else:
                ds.update_tags(**items)
    for b in range(data.shape[0]):
        if b < len(spec.band_names):
            ds.set_band_description(b + 1, spec.band_names[b])
        if b < len(spec.band_md):
            for domain, items in spec.band_md[b].items():
                if items:
                    if domain:
                        ds.update_tags(b + 1, ns=domain, **items)
                    else:
                        ds.update_tags(b + 1, **items)
    ds.write(data)


def write_raster(path: str | os.PathLike, data: np.ndarray, grid: Grid | None,
                 fmt: OutputFormat, spec: RasterSpec, product: str = "") -> None:
    """Write ``data`` (bands, rows, cols) to ``path`` (not atomic: the caller writes to a
    temporary name and renames). Drivers with ``Create`` are written directly, others
    (COG, JPEG) through an in-memory GTiff and ``CreateCopy`` with the metadata attached
    beforehand."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    nb, ny, nx = data.shape
    opts = fmt.options_for(product)
    profile: dict[str, Any] = dict(count=nb, width=nx, height=ny, dtype=data.dtype.name)
    if grid is not None:
        profile.update(crs=grid.crs, transform=grid.transform)
    if spec.nodata is not None:
        profile["nodata"] = spec.nodata
    env = {"GDAL_PAM_ENABLED": "NO"} if fmt.driver == "JPEG" else {}
    with rasterio.Env(**env):
        if fmt.driver in ("COG", "JPEG") or not _can_create(fmt.driver):
            with MemoryFile() as mf:
                with mf.open(driver="GTiff", **profile) as mem:
                    _fill(mem, data, spec)
                if fmt.driver == "COG":
                    # without it the COG driver copies only the default metadata domain
                    opts.setdefault("COPY_SRC_MDD", "YES")
                with mf.open() as mem:
                    rasterio.shutil.copy(mem, str(path), driver=fmt.driver, strict=False,
                                         **opts)
        else:
            with rasterio.open(str(path), "w", driver=fmt.driver, **profile, **opts) as ds:
                _fill(ds, data, spec)


_COPY_ONLY = frozenset({"COG", "JPEG", "PNG", "WEBP", "JP2OpenJPEG", "JPEGXL"})


def _can_create(driver: str) -> bool:
    """False for drivers that only implement CreateCopy."""
    return driver not in _COPY_ONLY


def read_raster(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, str]]:
    """Pixels (bands, rows, cols) and the L2PS-domain metadata of an existing file."""
    try:
        with rasterio.open(str(path)) as ds:
            return ds.read(), dict(ds.tags(ns="L2PS"))
    except Exception as e:
        raise OutputError(f"{path}: cannot read existing file for merging: {e}") from e


def is_cog(path: str | os.PathLike) -> bool:
    """True if GDAL recognises ``path`` as a Cloud Optimized GeoTIFF (GDAL ≥ 3.1 sets
    ``LAYOUT=COG`` in IMAGE_STRUCTURE when the IFD/data order follows the COG layout)."""
    with rasterio.open(str(path)) as ds:
        return ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
