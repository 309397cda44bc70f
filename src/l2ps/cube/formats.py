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

import contextlib
import getpass
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numba import njit, prange
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


#: ZSTD level of COG/GTiff output (GDAL's default, FORCE's implicit choice, is 9): zstd's
#: own default level 3 compresses ~3.5x faster for ~5 % larger files; same pixels
#: (docs/deviations.d/cube-writer.md). OUTPUT_FORMAT = CUSTOM can set any level.
ZSTD_LEVEL = "3"


def output_format(name: str = "COG", options_file: str | os.PathLike | None = None,
                  gdal: tuple[int, int, int] | None = None) -> OutputFormat:
    """The output format for OUTPUT_FORMAT ``name`` (spec 03 §3.2)."""
    gdal = gdal or gdal_version()
    n = (name or "COG").strip()
    if n == "COG":
        opts = {"COMPRESS": "ZSTD", "PREDICTOR": "YES", "BLOCKSIZE": "256",
                "BIGTIFF": "YES", "OVERVIEW_RESAMPLING": "AVERAGE",
                "LEVEL": ZSTD_LEVEL}
        if gdal >= (3, 11, 0):
            opts["INTERLEAVE"] = "TILE"
        return OutputFormat("COG", "COG", "tif", opts)
    if n == "GTiff":
        return OutputFormat("GTiff", "GTiff", "tif",
                            {"COMPRESS": "ZSTD", "PREDICTOR": "2", "INTERLEAVE": "BAND",
                             "BIGTIFF": "YES", "TILED": "YES", "BLOCKXSIZE": "256",
                             "BLOCKYSIZE": "256", "ZSTD_LEVEL": ZSTD_LEVEL})
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


def _fill(ds, data: np.ndarray | None, spec: RasterSpec, nbands: int | None = None) -> None:
    """Set metadata, band descriptions (and nodata when ``data`` is None, i.e. on an
    existing file), then write ``data`` if given."""
    for domain, items in spec.dataset_md.items():
        if items:
            if domain:
                ds.update_tags(ns=domain, **items)
            else:
                ds.update_tags(**items)
    n = data.shape[0] if data is not None else int(nbands or ds.count)
    if data is None and spec.nodata is not None:
        ds.nodata = spec.nodata
    for b in range(n):
        if b < len(spec.band_names):
            ds.set_band_description(b + 1, spec.band_names[b])
        if b < len(spec.band_md):
            for domain, items in spec.band_md[b].items():
                if items:
                    if domain:
                        ds.update_tags(b + 1, ns=domain, **items)
                    else:
                        ds.update_tags(b + 1, **items)
    if data is not None:
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


# ============================================================== sparse tile files
#: GDAL block cache while tile files are assembled. rasterio.Env passes GDAL_CACHEMAX in
#: BYTES (the environment variable means MB), so this is a near-zero cache: the copy reads
#: every block once and keeps none. The benchmarks of 2026-11-24 were measured with it;
#: correctness does not depend on it (write_window writes band-interleaved files).
GDAL_CACHE_MB = 128
#: block size (pixels) of tile files, chips and temporary window files
BLOCK = 256
#: creation options of the temporary window files a tile file is assembled from
_TEMP_OPTIONS = {"COMPRESS": "ZSTD", "ZSTD_LEVEL": "1", "INTERLEAVE": "BAND"}


@dataclass(frozen=True)
class Window:
    """A rectangle of pixels (row, col of the upper-left pixel; height, width), in the
    pixel coordinates of a tile (or of the untiled output grid)."""
    row: int
    col: int
    height: int
    width: int

    @property
    def row1(self) -> int:
        return self.row + self.height

    @property
    def col1(self) -> int:
        return self.col + self.width

    @property
    def size(self) -> int:
        return self.height * self.width

    def union(self, other: "Window | None") -> "Window":
        """The bounding box of both windows."""
        if other is None:
            return self
        r0, c0 = min(self.row, other.row), min(self.col, other.col)
        return Window(r0, c0, max(self.row1, other.row1) - r0, max(self.col1, other.col1) - c0)

    def intersection(self, other: "Window") -> "Window | None":
        r0, c0 = max(self.row, other.row), max(self.col, other.col)
        r1, c1 = min(self.row1, other.row1), min(self.col1, other.col1)
        return Window(r0, c0, r1 - r0, c1 - c0) if r1 > r0 and c1 > c0 else None

    def contains(self, other: "Window") -> bool:
        return (self.row <= other.row and self.col <= other.col and
                other.row1 <= self.row1 and other.col1 <= self.col1)

    def snap(self, align: int, ny: int, nx: int) -> "Window":
        """Moved outward to multiples of ``align`` pixels, clipped to ``ny`` x ``nx``."""
        r0, c0 = (self.row // align) * align, (self.col // align) * align
        r1 = min(-(-self.row1 // align) * align, ny)
        c1 = min(-(-self.col1 // align) * align, nx)
        return Window(max(r0, 0), max(c0, 0), r1 - max(r0, 0), c1 - max(c0, 0))

    def shift(self, drow: int, dcol: int) -> "Window":
        return Window(self.row + drow, self.col + dcol, self.height, self.width)

    def slices(self) -> tuple[slice, slice]:
        return slice(self.row, self.row1), slice(self.col, self.col1)

    def rio(self):
        from rasterio.windows import Window as RioWindow
        return RioWindow(self.col, self.row, self.width, self.height)

    def tag(self) -> str:
        """As metadata item: ``"row col height width"``."""
        return f"{self.row} {self.col} {self.height} {self.width}"

    @classmethod
    def parse(cls, text: str | None) -> "Window | None":
        try:
            r, c, h, w = (int(v) for v in str(text).split())
        except (TypeError, ValueError):
            return None
        return cls(r, c, h, w) if h > 0 and w > 0 else None


def overview_factors(ny: int, nx: int, block: int = BLOCK) -> list[int]:
    """Decimation factors 2, 4, ... of the internal overviews of a COG of ``ny`` x
    ``nx`` pixels: halve until the coarsest level fits into one block (as GDAL's COG
    driver does)."""
    size, f, out = max(ny, nx), 1, []
    while -(-size // f) > block:
        f *= 2
        out.append(f)
    return out


def window_alignment(ny: int, nx: int) -> int:
    """Data windows of a tile file are aligned to this many pixels: whole blocks, and
    whole pixels of every overview level, so that a window's overviews are a window of
    the file's overviews."""
    return max([BLOCK] + overview_factors(ny, nx))


def _resampling(name: str):
    from rasterio.enums import Resampling
    try:
        return Resampling[name.lower()]
    except KeyError:
        return Resampling.average


# ------------------------------------------------------------------ overviews
@njit(cache=True, parallel=True)
def _halve(src, r0, c0, sny, snx, nodata, average, out):  # pragma: no cover
    """One overview level (GDAL's 2x decimation of a GTiff band, 3.10): ``src`` sits at
    (r0, c0) of a virtual ``sny`` x ``snx`` band that is nodata elsewhere; ``out`` has
    ceil(sny/2) x ceil(snx/2) pixels. Destination pixel i covers source pixels
    [int(0.5 + i·r), int(0.5 + (i+1)·r)) with r = source/destination size (exactly
    2i, 2i+1 unless the size is odd). AVERAGE: mean of the valid pixels, rounded half
    away from zero, nodata if none; NEAREST: the first pixel of the range."""
    dny, dnx = out.shape
    ry = sny / dny
    rx = snx / dnx
    h, w = src.shape
    for i in prange(dny):
        y0 = int(0.5 + i * ry)
        y1 = min(int(0.5 + (i + 1) * ry), sny)
        if y1 <= y0:
            y1 = y0 + 1
        for j in range(dnx):
            x0 = int(0.5 + j * rx)
            x1 = min(int(0.5 + (j + 1) * rx), snx)
            if x1 <= x0:
                x1 = x0 + 1
            if not average:
                y = y0 - r0
                x = x0 - c0
                if 0 <= y < h and 0 <= x < w:
                    out[i, j] = src[y, x]
                else:
                    out[i, j] = nodata
                continue
            if y1 - y0 == 2 and x1 - x0 == 2 and ry == 2.0 and rx == 2.0:
                s = 0.0
                n = 0
                for y in range(max(y0 - r0, 0), min(y1 - r0, h)):
                    for x in range(max(x0 - c0, 0), min(x1 - c0, w)):
                        v = src[y, x]
                        if v != nodata:
                            s += v
                            n += 1
                if n == 0:
                    out[i, j] = nodata
                else:
                    m = s / n
                    out[i, j] = np.floor(m + 0.5) if m >= 0 else -np.floor(-m + 0.5)
                continue
            # non-integer ratio (odd size): source pixels weighted by their overlap
            fy0 = i * ry
            fy1 = (i + 1) * ry
            fx0 = j * rx
            fx1 = (j + 1) * rx
            s = 0.0
            sw = 0.0
            for y in range(int(fy0), min(int(np.ceil(fy1)), sny)):
                wy = min(y + 1.0, fy1) - max(float(y), fy0)
                if wy <= 0.0 or y - r0 < 0 or y - r0 >= h:
                    continue
                for x in range(int(fx0), min(int(np.ceil(fx1)), snx)):
                    wx = min(x + 1.0, fx1) - max(float(x), fx0)
                    if wx <= 0.0 or x - c0 < 0 or x - c0 >= w:
                        continue
                    v = src[y - r0, x - c0]
                    if v != nodata:
                        s += wx * wy * v
                        sw += wx * wy
            if sw <= 0.0:
                out[i, j] = nodata
            else:
                m = s / sw
                out[i, j] = np.floor(m + 0.5) if m >= 0 else -np.floor(-m + 0.5)


def overview_levels(band: np.ndarray, offset: tuple[int, int], shape: tuple[int, int],
                    nlevels: int, nodata: float, resampling: str) -> list[np.ndarray]:
    """Overview levels 2, 4, ... (``nlevels`` of them) of a band of ``shape`` pixels that
    holds ``band`` at ``offset`` and nodata elsewhere, each computed from the previous
    one as GDAL's GTiff overview builder does (AVERAGE or NEAREST; bit-identical to
    ``build_overviews`` for Int16 with a nodata value)."""
    out = []
    src, (r0, c0), (sny, snx) = band, offset, shape
    nd = band.dtype.type(nodata)
    for _ in range(nlevels):
        o = np.empty((-(-sny // 2), -(-snx // 2)), dtype=band.dtype)
        _halve(src, r0, c0, sny, snx, nd, resampling.upper() == "AVERAGE", o)
        out.append(o)
        src, r0, c0, sny, snx = o, 0, 0, o.shape[0], o.shape[1]
    return out


def _own_overviews(overviews: tuple[list[int], str] | None) -> bool:
    """True if :func:`overview_levels` can make these overviews (2, 4, 8, ...; AVERAGE
    or NEAREST)."""
    if not overviews or not overviews[0]:
        return False
    f = list(overviews[0])
    return (f == [2 ** (k + 1) for k in range(len(f))] and
            str(overviews[1]).upper() in ("AVERAGE", "NEAREST"))


def write_window(path: str | os.PathLike, bands: list[np.ndarray], offset: tuple[int, int],
                 shape: tuple[int, int], grid: Grid | None, nodata: float | None, *,
                 options: dict[str, str] | None = None,
                 tags: dict[str, dict[str, str]] | None = None,
                 descriptions: tuple[str, ...] = (),
                 overviews: tuple[list[int], str] | None = None,
                 clock=None) -> tuple[str, ...]:
    """Write a tiled, sparse GeoTIFF of ``shape`` (rows, cols) pixels whose band ``i``
    holds ``bands[i]`` with its upper-left pixel at ``offset`` (row, col); everything
    else is nodata (empty blocks are not stored). Used for contribution chips and for
    the temporary window files a tile file is assembled from (:func:`write_tile`).

    ``bands`` may be lazily computed (``np.asarray`` is called once per band, and the
    band is dropped before the next one). ``overviews`` = (factors, resampling): with
    factors 2, 4, ... and AVERAGE or NEAREST (and a nodata value), the levels are
    computed here from the band in memory (:func:`overview_levels`) and written to
    separate files ``<path>.ovr<f>.tif`` whose paths are returned; otherwise GDAL builds
    internal overviews and () is returned. ``clock``: optional timer (see
    l2ps.cube.write), section "overviews"."""
    from rasterio.windows import Window as RioWindow
    # band by band into a pixel-interleaved file would be wrong: a partial block of band i
    # evicted from GDAL's block cache is written with 0 (not nodata) for the bands not yet
    # written, which then read 0 outside the window (depends on the cache size)
    options = {**(options or _TEMP_OPTIONS), "INTERLEAVE": "BAND"}
    profile = window_profile(shape, grid, nodata, len(bands), options)
    r, c = offset
    own = _own_overviews(overviews) and nodata is not None
    timer = clock or (lambda name: contextlib.nullcontext())
    ovr_paths: list[str] = []
    with contextlib.ExitStack() as stack:
        ds = stack.enter_context(rasterio.open(str(path), "w", **profile))
        ovr_ds = []
        if own:
            sny, snx = shape
            for f in overviews[0]:
                sny, snx = -(-sny // 2), -(-snx // 2)
                g = None
                if grid is not None:
                    g = Grid(grid.crs_wkt, grid.x0, grid.y0, grid.dx * f, grid.dy * f,
                             snx, sny)
                op = f"{path}.ovr{f}.tif"
                ovr_paths.append(op)
                ovr_ds.append(stack.enter_context(rasterio.open(
                    op, "w", **window_profile((sny, snx), g, nodata, len(bands), options))))
        for domain, items in (tags or {}).items():
            if items:
                ds.update_tags(ns=domain, **items)
        for i, b in enumerate(bands):
            if i < len(descriptions):
                ds.set_band_description(i + 1, descriptions[i])
            b = np.asarray(b)       # a lazily warped window is computed here
            if b.dtype == np.uint16:
                b = b.view(np.int16)
            h, w = b.shape
            if h and w:
                ds.write(b, i + 1, window=RioWindow(c, r, w, h))
            if own:
                with timer("overviews"):
                    levels = overview_levels(np.ascontiguousarray(b), offset, shape,
                                             len(ovr_ds), nodata, overviews[1])
                for o, lv in zip(ovr_ds, levels):
                    o.write(lv, i + 1)
                del levels
            del b
        if overviews and overviews[0] and not own:
            with timer("overviews"):
                ds.build_overviews(list(overviews[0]), _resampling(overviews[1]))
    return tuple(ovr_paths)


@dataclass(frozen=True)
class Layer:
    """Pixels for :func:`write_tile`: the region ``src`` of the raster file ``path``
    (all bands), placed with its upper-left pixel at (``row``, ``col``) of the output.
    ``overviews``: the overview factors the file has (used for COG output)."""
    path: str
    src: Window
    row: int
    col: int
    overviews: tuple[int, ...] = ()
    #: the overview levels as separate files (:func:`write_window`), else internal
    overview_paths: tuple[str, ...] = ()

    def aligned(self, f: int) -> bool:
        return all(v % f == 0 for v in (self.src.row, self.src.col, self.row, self.col))


def file_overviews(path: str | os.PathLike) -> tuple[int, ...]:
    with rasterio.open(str(path)) as ds:
        return tuple(ds.overviews(1))


def _xml_metadata(md: dict[str, dict[str, str]]) -> str:
    from xml.sax.saxutils import escape, quoteattr
    out = []
    for domain, items in md.items():
        if not items:
            continue
        d = f" domain={quoteattr(domain)}" if domain else ""
        out.append(f"<Metadata{d}>" + "".join(
            f"<MDI key={quoteattr(str(k))}>{escape(str(v))}</MDI>" for k, v in items.items())
            + "</Metadata>")
    return "".join(out)


def _vrt_xml(ny: int, nx: int, grid: Grid | None, nbands: int, spec: RasterSpec | None,
             layers: list[tuple[Layer, int | None, int]], overview_files: list[str]) -> str:
    """VRT of ``ny`` x ``nx`` Int16 pixels mosaicking ``layers`` (later ones win inside
    their rectangle; nodata elsewhere). ``layers`` = (layer, overview level index or
    None, decimation factor)."""
    from xml.sax.saxutils import escape
    parts = [f'<VRTDataset rasterXSize="{nx}" rasterYSize="{ny}">']
    if grid is not None:
        t = grid.transform
        parts.append(f"<SRS>{escape(grid.crs_wkt)}</SRS>")
        parts.append("<GeoTransform>" + ",".join(repr(float(v)) for v in (
            t.c, t.a * grid.nx / nx, t.b, t.f, t.d, t.e * grid.ny / ny)) + "</GeoTransform>")
    if spec is not None:
        parts.append(_xml_metadata(spec.dataset_md))
    for b in range(1, nbands + 1):
        parts.append(f'<VRTRasterBand dataType="Int16" band="{b}">')
        if spec is not None:
            if b - 1 < len(spec.band_names):
                parts.append(f"<Description>{escape(spec.band_names[b - 1])}</Description>")
            if spec.nodata is not None:
                parts.append(f"<NoDataValue>{spec.nodata:g}</NoDataValue>")
            if b - 1 < len(spec.band_md):
                parts.append(_xml_metadata(spec.band_md[b - 1]))
        for layer, level, f in layers:
            s = layer.src
            r0, c0 = s.row // f, s.col // f
            h, w = -(-s.row1 // f) - r0, -(-s.col1 // f) - c0
            src_path = layer.path
            oo = ("" if level is None else
                  f'<OpenOptions><OOI key="OVERVIEW_LEVEL">{level}</OOI></OpenOptions>')
            if level is not None and level < len(layer.overview_paths):
                src_path, oo = layer.overview_paths[level], ""
            parts.append(
                f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(src_path)}'
                f"</SourceFilename>{oo}<SourceBand>{b}</SourceBand>"
                f'<SrcRect xOff="{c0}" yOff="{r0}" xSize="{w}" ySize="{h}"/>'
                f'<DstRect xOff="{layer.col // f}" yOff="{layer.row // f}" xSize="{w}" '
                f'ySize="{h}"/></SimpleSource>')
        for ov in overview_files:
            parts.append(f'<Overview><SourceFilename relativeToVRT="0">{escape(ov)}'
                         f"</SourceFilename><SourceBand>{b}</SourceBand></Overview>")
        parts.append("</VRTRasterBand>")
    parts.append("</VRTDataset>")
    return "".join(parts)


def write_tile(path: str | os.PathLike, grid: Grid, nbands: int, fmt: OutputFormat,
               spec: RasterSpec, product: str, layers: list[Layer], tmpdir: str | os.PathLike,
               *, num_threads: int = 1) -> None:
    """Write a tile file of ``grid``'s full size from ``layers`` (not atomic: the caller
    writes to a temporary name and renames), with GDAL doing the pixel work in C.

    The file is assembled from a VRT (written into ``tmpdir``) in which each layer covers
    only its rectangle and everything else is nodata: GTiff and COG are written with
    ``SPARSE_OK=TRUE``, so nodata blocks are not stored and cost (almost) nothing. For
    COG the overviews come from the layers' own overviews (``OVERVIEWS=
    FORCE_USE_EXISTING``) when every layer has the file's overview factors and lies on
    the coarsest overview's pixel grid (:func:`window_alignment`); otherwise GDAL
    computes them over the whole file (slow for large tiles). Metadata: in the VRT and
    copied with ``COPY_SRC_MDD`` (COG, GTiff), otherwise set on the written file."""
    import rasterio.shutil as rshutil
    tmpdir = Path(tmpdir)
    ny, nx = grid.ny, grid.nx
    opts = fmt.options_for(product)
    sparse = fmt.driver in ("COG", "GTiff")
    overview_files: list[str] = []
    if sparse:
        opts.setdefault("SPARSE_OK", "TRUE")
        opts.setdefault("COPY_SRC_MDD", "YES")
        opts.setdefault("NUM_THREADS", str(max(int(num_threads), 1)))
    if fmt.driver == "COG":
        factors = overview_factors(ny, nx, int(opts.get("BLOCKSIZE", BLOCK)))
        if factors and all(tuple(lay.overviews[:len(factors)]) == tuple(factors) and
                           lay.aligned(factors[-1]) for lay in layers):
            for level, f in enumerate(factors):
                ov = tmpdir / f".ovr{f}-{os.getpid()}.vrt"
                ov.write_text(_vrt_xml(-(-ny // f), -(-nx // f), grid, nbands,
                                       RasterSpec((), spec.nodata),
                                       [(lay, level, f) for lay in layers], []))
                overview_files.append(str(ov))
            opts["OVERVIEWS"] = "FORCE_USE_EXISTING"
    vrt = tmpdir / f".tile-{os.getpid()}.vrt"
    vrt.write_text(_vrt_xml(ny, nx, grid, nbands, spec, [(lay, None, 1) for lay in layers],
                            overview_files))
    env: dict[str, Any] = {"GDAL_CACHEMAX": GDAL_CACHE_MB}
    if sparse:
        env["GDAL_PAM_ENABLED"] = "NO"
    with rasterio.Env(**env):
        rshutil.copy(str(vrt), str(path), driver=fmt.driver, strict=False, **opts)
        if not sparse:
            # drivers without COPY_SRC_MDD: set names, nodata and metadata afterwards
            try:
                with rasterio.open(str(path), "r+") as ds:
                    _fill(ds, None, spec, nbands)
            except Exception:     # copy-only drivers (PNG, ...) keep what CreateCopy gave
                pass


def can_write_direct(fmt: OutputFormat) -> bool:
    """True if tile files of ``fmt`` can be written directly (:func:`write_tile_direct`)
    instead of assembled from window files (:func:`write_tile`): OUTPUT_FORMAT = GTiff
    (band-interleaved, so that block-wise writes of all bands cannot lose nodata)."""
    return (fmt.name == "GTiff" and fmt.driver == "GTiff" and
            str(fmt.options.get("INTERLEAVE", "")).upper() == "BAND")


def write_tile_direct(path: str | os.PathLike, grid: Grid, nbands: int, fmt: OutputFormat,
                      spec: RasterSpec, product: str, rows, window: Window, aligned: Window,
                      *, num_threads: int = 1, clock=None) -> None:
    """Write a tile file of ``grid``'s full size whose only data are ``window`` (tile
    pixels), directly with GDAL's ``Create`` (not atomic: the caller writes to a temporary
    name and renames); the same file as :func:`write_tile` of a window file covering
    ``aligned`` (pixels, metadata, creation options), without the window file.

    ``rows(r0, r1, out, orow, ocol)`` writes rows ``r0``..``r1`` (relative to ``window``)
    of every band ``k`` (``window.width`` columns) to ``out[k, orow.., ocol..]`` (int16).
    The file is written in strips of :data:`BLOCK` rows of ``aligned`` (which is
    block-aligned), all bands of a strip at once, so every block is complete when
    written; blocks outside ``aligned`` and nodata-only blocks are not stored
    (``SPARSE_OK``); GDAL compresses with ``NUM_THREADS`` threads. The next strip is
    computed by ``rows`` in a second thread while GDAL writes the current one (``rows``
    must release the GIL to gain from it; the numba thread count of the caller is kept).
    ``clock``: optional timer; the time spent waiting for ``rows`` is section "warp".
    Only for :func:`can_write_direct` formats."""
    from concurrent.futures import ThreadPoolExecutor

    import numba
    from rasterio.windows import Window as RioWindow
    opts = fmt.options_for(product)
    opts.setdefault("SPARSE_OK", "TRUE")
    opts.setdefault("NUM_THREADS", str(max(int(num_threads), 1)))
    profile: dict[str, Any] = dict(driver=fmt.driver, count=nbands, width=grid.nx,
                                   height=grid.ny, dtype="int16", crs=grid.crs,
                                   transform=grid.transform)
    if spec.nodata is not None:
        profile["nodata"] = spec.nodata
    profile.update(opts)
    fill = spec.nodata if spec.nodata is not None else 0
    c0, c1 = window.col - aligned.col, window.col1 - aligned.col
    # empty items are not in the file write_tile makes from its VRT (they read as absent)
    spec = RasterSpec(spec.band_names, spec.nodata,
                      {d: {k: v for k, v in md.items() if v != ""}
                       for d, md in spec.dataset_md.items()},
                      [{d: {k: v for k, v in md.items() if v != ""} for d, md in bm.items()}
                       for bm in spec.band_md])
    timer = clock or (lambda name: contextlib.nullcontext())
    strips = [(s, min(s + BLOCK, aligned.row1))
              for s in range(aligned.row, aligned.row1, BLOCK)]
    buffers = [np.empty((nbands, BLOCK, aligned.width), dtype=np.int16) for _ in range(2)]
    nthreads = numba.get_num_threads()

    def compute(k: int) -> np.ndarray:
        """Strip ``k`` in buffer k % 2: nodata outside ``window``, the bands inside."""
        s, e = strips[k]
        buf = buffers[k % 2][:, :e - s]
        r0, r1 = max(s, window.row), min(e, window.row1)
        if r1 <= r0:
            buf[...] = fill
            return buf
        buf[:, :r0 - s] = fill
        buf[:, r1 - s:] = fill
        buf[:, r0 - s:r1 - s, :c0] = fill
        buf[:, r0 - s:r1 - s, c1:] = fill
        numba.set_num_threads(nthreads)
        rows(r0 - window.row, r1 - window.row, buffers[k % 2], r0 - s, c0)
        return buf

    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, GDAL_PAM_ENABLED="NO"), \
            ThreadPoolExecutor(max_workers=1) as pool:
        with rasterio.open(str(path), "w", **profile) as ds:
            _fill(ds, None, spec, nbands)
            nxt = pool.submit(compute, 0) if strips else None
            for k, (s, e) in enumerate(strips):
                with timer("warp"):
                    buf = nxt.result()
                # buffer (k + 1) % 2 was written in the previous iteration: free to fill
                nxt = pool.submit(compute, k + 1) if k + 1 < len(strips) else None
                try:
                    ds.write(buf, window=RioWindow(aligned.col, s, aligned.width, e - s))
                except BaseException:
                    if nxt is not None:
                        nxt.cancel()
                        with contextlib.suppress(BaseException):
                            nxt.result()
                    raise


def window_profile(shape: tuple[int, int], grid: Grid | None, nodata: float | None,
                   count: int, options: dict[str, str] | None = None) -> dict[str, Any]:
    """rasterio profile of a tiled, sparse Int16 GeoTIFF (window files, chips)."""
    ny, nx = shape
    profile: dict[str, Any] = dict(driver="GTiff", count=count, width=nx, height=ny,
                                   dtype="int16", TILED="YES", BLOCKXSIZE=str(BLOCK),
                                   BLOCKYSIZE=str(BLOCK), SPARSE_OK="TRUE", BIGTIFF="IF_SAFER")
    profile.update(options or _TEMP_OPTIONS)
    if grid is not None:
        profile.update(crs=grid.crs, transform=grid.transform)
    if nodata is not None:
        profile["nodata"] = nodata
    return profile
