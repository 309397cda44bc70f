"""The LEVEL2 parameter file: parse, validate, write a commented skeleton.

l2ps reads FORCE's LEVEL2 parameter file unchanged (spec 03 §6.1): the file starts with the
token ``++PARAM_LEVEL2_START++`` (blank lines before it are allowed), then one ``KEY = value``
per line. ``#`` starts a comment anywhere on a line; blanks and ``=`` both separate tokens, so
``KEY = value``, ``KEY value`` and ``KEY=value`` are the same. Multi-token values are
``TILE_SIZE`` (two numbers, X and Y) and ``PROJECTION`` (tokens re-joined with single blanks,
so a WKT with blanks survives). ``NULL`` means "not given" for a path. CRLF line ends are
tolerated. ``++PARAM_LEVEL2_END++`` closes the file (optional, as in FORCE).

Every key of FORCE's LEVEL2 file is required (as in FORCE). All problems of a file are
collected and raised together as one :class:`~l2ps.errors.ParameterError`; every message names
the file, the line, the key, the value found and what is allowed, e.g.::

    level2.prm:41: RESAMPLING = 'cubic': expected one of NN, BL, CC

Deliberate differences from FORCE (see docs/deviations.md):

* an unknown key is an error with a "did you mean …?" suggestion (FORCE ignores it, so a
  typo silently left the key unset or — for duplicated keys — used another value);
* ``DO_AOD = FALSE`` does not need ``DIR_AOD`` (spec 02 §3.1: the fallback spectrum is used);
* ``GLANCE7-XX`` selects one GLANCE7 continent (spec 03 §2.5 [BUG?]: FORCE matches none);
* a scalar value with extra tokens is an error (FORCE silently uses the first token, which
  truncates paths with blanks); numbers must be complete numbers (FORCE's ``atoi``/``atof``
  read ``12abc`` as 12); resolutions and tile sizes must be > 0;
* paths are checked for their kind (directory or file), not only for existence;
* ``TILE_SIZE`` is checked against both resolutions when the file is read, not per image.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from l2ps.errors import ParameterError

__all__ = [
    "KEYS", "DEFAULTS", "KEY_TABLE", "EXTENSION_KEYS", "START_MARKER", "END_MARKER",
    "CONTINENTS", "GRID_TILE_SIZE", "NATIVE_RESOLUTION", "ENUM_CODES",
    "Key", "Parameters", "read_parameters", "parse_parameter_text", "validate_parameter_text",
    "write_skeleton", "skeleton_text", "format_parameter_file", "write_parameters",
    "format_force_param", "grid_family", "validate",
]

log = logging.getLogger(__name__)

START_MARKER = "++PARAM_LEVEL2_START++"
END_MARKER = "++PARAM_LEVEL2_END++"

INT_MAX = 2147483647

#: The seven continents of the EQUI7 and GLANCE7 grid families, in FORCE's order (spec 03 §2.5).
CONTINENTS = ("AF", "AN", "AS", "EU", "NA", "OC", "SA")
#: Tile size (m) fixed by a continental grid family; it overrides TILE_SIZE (spec 03 §2.2, §2.5).
GRID_TILE_SIZE = {"EQUI7": 100000.0, "GLANCE7": 150000.0}
#: Cube resolution when DO_REPROJ = FALSE: the image's own resolution (spec 03 §2.1).
NATIVE_RESOLUTION = {"landsat": 30.0, "sentinel2": 10.0}
#: Integer codes of the enumerations, as FORCE writes them into FORCE_param (spec 03 §3.3).
ENUM_CODES = {
    "RESAMPLING": ("NN", "BL", "CC"),
    "DEM_RESAMPLING": ("NN", "BL", "CC"),
    "RES_MERGE": ("NONE", "REGRESSION", "IMPROPHE", "STARFM"),
    "OUTPUT_FORMAT": ("ENVI", "GTiff", "COG", "JPEG", "CUSTOM"),
}
#: Tile-size / resolution tolerance (m), spec 03 §2.3.
_TILE_TOL = 0.005

_NULL = "NULL"
_MISSING = object()


# ---------------------------------------------------------------------------- key table
@dataclass(frozen=True)
class Key:
    """One key of the parameter file.

    ``kind``: ``dir`` (an existing directory, never NULL), ``path`` (NULL or an existing
    path; ``must`` says ``file``, ``dir`` or ``any``), ``float``, ``int``, ``bool``, ``enum``,
    ``floatvec`` (``length`` numbers) or ``projection``. ``default`` is the value of FORCE's
    template as text. ``null_value`` (numbers only) is what ``NULL`` means for keys whose NULL
    has a documented meaning; otherwise NULL for a number is an error. ``required=False`` marks
    an l2ps-only extension key, which may be left out (``default`` then applies).
    """

    name: str
    kind: str
    default: str
    section: str
    help: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False            # lo itself is not allowed (lo < value)
    choices: tuple[str, ...] = ()
    length: int | None = None
    must: str = "any"                # for paths: file | dir | any
    null_value: Any = _MISSING
    required: bool = True

    @property
    def attr(self) -> str:
        return self.name.lower()


_S_IO = "INPUT AND OUTPUT"
_S_AOI = "AREA OF INTEREST"
_S_DEM = "DIGITAL ELEVATION MODEL"
_S_CUBE = "DATA CUBE"
_S_RAD = "RADIOMETRIC CORRECTION"
_S_WVP = "WATER VAPOUR"
_S_AOD = "AEROSOL OPTICAL DEPTH"
_S_CLD = "CLOUDS, CLOUD SHADOWS AND SNOW"
_S_RES = "SENTINEL-2 RESOLUTION MERGE"
_S_COREG = "CO-REGISTRATION"
_S_INP = "INPUT QUALITY"
_S_PAR = "PARALLEL PROCESSING"
_S_OUT = "OUTPUT"

_BOOL = "TRUE or FALSE"

# FORCE's keys in registration order (= the order of FORCE_param, spec 03 §6.1 / §3.3).
_FORCE_KEY_TABLE: tuple[Key, ...] = (
    Key("DIR_LEVEL2", "dir", "NULL", _S_IO,
        "Directory of the output data cube (tiles X####_Y#### and datacube-definition.prj).\n"
        "An existing directory."),
    Key("DIR_TEMP", "dir", "NULL", _S_IO,
        "Directory for temporary files, e.g. unpacked Level-1 archives. An existing directory."),
    Key("DIR_LOG", "dir", "NULL", _S_IO,
        "Directory for one log file per processed image. An existing directory."),
    Key("DIR_PROVENANCE", "dir", "NULL", _S_IO,
        "Directory for the provenance tables (which input made which output).\n"
        "An existing directory."),
    Key("FILE_AOI", "path", "NULL", _S_AOI,
        "Vector file (one layer of polygons) with the area of interest. Pixels outside it\n"
        "become nodata, tiles without a valid pixel are not written. NULL: the whole image."),
    Key("FILE_QUEUE", "path", "NULL", _S_IO,
        "The queue: a text file with one Level-1 image per line, '/absolute/path STATUS',\n"
        "STATUS one of QUEUED, DONE, FAIL. Every QUEUED image is processed; the line becomes\n"
        "DONE or FAIL afterwards. An existing file (NULL only when no queue is used).",
        must="file"),
    Key("DIR_WVPLUT", "path", "NULL", _S_WVP,
        "Directory of the water vapour database (daily WVP_YYYY-MM-DD.txt and monthly\n"
        "climatology WVP_0000-MM-00.txt tables), used for Landsat. NULL: WATER_VAPOR is used.\n"
        "Sentinel-2 retrieves water vapour from its own bands and ignores this.",
        must="dir"),
    Key("DIR_AOD", "path", "NULL", _S_AOD,
        "Directory of the aerosol fallback tables AOD_DDD.txt (DDD = day of year), used where\n"
        "no aerosol can be estimated from the image. NULL: a built-in fallback spectrum.",
        must="dir"),
    Key("FILE_TILE", "path", "NULL", _S_CUBE,
        "Allow-list of tiles: first line the number of tiles, then one tile ID (X####_Y####)\n"
        "per line. Only these tiles are written. NULL: every tile with data is written.",
        must="file"),
    Key("FILE_DEM", "path", "NULL", _S_DEM,
        "Digital elevation model in metres (any raster GDAL reads, e.g. a VRT mosaic), used for\n"
        "the atmospheric and the topographic correction and for cloud detection. NULL: a flat\n"
        "surface at sea level (then DO_TOPO must be FALSE).\n"
        "With USE_DEM_DATABASE = TRUE the DEM of an image is <directory of FILE_DEM>/<WRS-2 or\n"
        "MGRS id>.vrt."),
    Key("DIR_COREG_BASE", "path", "NULL", _S_COREG,
        "Directory with base images for co-registering Sentinel-2 (and Landsat) to a reference,\n"
        "e.g. a near-infrared Landsat composite. NULL: no co-registration.",
        must="dir"),
    Key("TILE_SIZE", "floatvec", "30000 30000", _S_CUBE,
        "Tile size in projection units (metres): two numbers, X then Y. Each must be a multiple\n"
        "of RESOLUTION_LANDSAT and RESOLUTION_SENTINEL2. Ignored with PROJECTION = EQUI7\n"
        "(100000 m) or GLANCE7 (150000 m).",
        lo=0, hi=INT_MAX, lo_open=True, length=2),
    Key("RESOLUTION_LANDSAT", "float", "30", _S_CUBE,
        "Pixel size of Landsat products in the cube, in projection units (> 0).\n"
        "Ignored when DO_REPROJ = FALSE (the image's own 30 m is kept).",
        lo=0, hi=INT_MAX, lo_open=True),
    Key("RESOLUTION_SENTINEL2", "float", "10", _S_CUBE,
        "Pixel size of Sentinel-2 products in the cube, in projection units (> 0).\n"
        "Ignored when DO_REPROJ = FALSE (the image's own 10 m is kept).",
        lo=0, hi=INT_MAX, lo_open=True),
    Key("DO_REPROJ", "bool", "TRUE", _S_CUBE,
        "Warp the products to PROJECTION and RESOLUTION_LANDSAT/_SENTINEL2 (TRUE), or keep\n"
        "each image in its own UTM grid (FALSE). Anything but DO_REPROJ = DO_TILE = TRUE\n"
        "gives data that FORCE's higher-level tools cannot use."),
    Key("DO_TILE", "bool", "TRUE", _S_CUBE,
        "Cut the products into the tiles of the data cube (TRUE), or write whole images into\n"
        "DIR_LEVEL2/<WRS-2 or MGRS id>/ (FALSE)."),
    Key("ORIGIN_LAT", "float", "60", _S_CUBE,
        "Latitude (decimal degrees, WGS84, -90 to 90) of the upper-left corner of tile\n"
        "X0000_Y0000. Ignored with PROJECTION = EQUI7 or GLANCE7.",
        lo=-90, hi=90),
    Key("ORIGIN_LON", "float", "-25", _S_CUBE,
        "Longitude (decimal degrees, WGS84, -180 to 180) of the upper-left corner of tile\n"
        "X0000_Y0000. Ignored with PROJECTION = EQUI7 or GLANCE7.",
        lo=-180, hi=180),
    Key("PROJECTION", "projection", "GLANCE7", _S_CUBE,
        "Projection of the data cube: a WKT string (one line; PROJ strings and EPSG codes do\n"
        "not work, '=' and '#' are separators/comments here), or a predefined continental grid:\n"
        "EQUI7 or GLANCE7 (all seven continents, one cube per continent below DIR_LEVEL2), or\n"
        "one continent, e.g. EQUI7-EU or GLANCE7-AF (AF AN AS EU NA OC SA). Their tile size and\n"
        "origin are fixed by the grid; with EQUI7 the resolutions must divide 100000 m (use 25\n"
        "instead of 30 for Landsat), with GLANCE7 150000 m."),
    Key("RESAMPLING", "enum", "CC", _S_CUBE,
        "Resampling for warping reflectance and the continuous layers: NN (nearest\n"
        "neighbour), BL (bilinear) or CC (cubic convolution). The quality layer is always\n"
        "warped with nearest neighbour.",
        choices=ENUM_CODES["RESAMPLING"]),
    Key("RES_MERGE", "enum", "IMPROPHE", _S_RES,
        "How the 20 m Sentinel-2 bands are brought to 10 m: NONE (pixels are repeated),\n"
        "REGRESSION, IMPROPHE or STARFM (predicted from the 10 m bands).",
        choices=ENUM_CODES["RES_MERGE"]),
    Key("TIER", "int", "1", _S_INP,
        "Lowest acceptable Landsat collection tier: 1 accepts only Tier 1, 2 also Tier 2,\n"
        "3 also Real-Time images. Integer 1 to 3. Not used for Sentinel-2.",
        lo=1, hi=3),
    Key("DO_TOPO", "bool", "TRUE", _S_RAD,
        "Topographic correction (C-correction of illumination effects). Needs FILE_DEM."),
    Key("DO_ATMO", "bool", "TRUE", _S_RAD,
        "Atmospheric correction: TRUE gives bottom-of-atmosphere reflectance (BOA), FALSE\n"
        "top-of-atmosphere reflectance (TOA); FALSE also switches off DO_AOD, DO_BRDF, DO_TOPO\n"
        "and ADJACENCY_EFFECT."),
    Key("DO_AOD", "bool", "TRUE", _S_AOD,
        "Estimate the aerosol optical depth from dark objects in the image (TRUE), or use\n"
        "only the fallback (DIR_AOD tables, or the built-in spectrum when DIR_AOD is NULL)."),
    Key("DO_BRDF", "bool", "TRUE", _S_RAD,
        "Adjust the reflectance to nadir view and a standard sun position (NBAR, c-factor)."),
    Key("MULTI_SCATTERING", "bool", "TRUE", _S_RAD,
        "Model multiple scattering in the atmosphere (TRUE) or single scattering only."),
    Key("ADJACENCY_EFFECT", "bool", "TRUE", _S_RAD,
        "Correct the adjacency effect (light scattered in from the surroundings)."),
    Key("WATER_VAPOR", "float", "NULL", _S_WVP,
        "Water vapour (g/cm2, 0 to 15) for Landsat when DIR_WVPLUT is NULL. NULL: the water\n"
        "vapour of the standard atmosphere for the scene's latitude and season (l2ps; FORCE\n"
        "uses 0, i.e. no water vapour absorption would be corrected).",
        lo=0, hi=15, null_value=0.0),
    Key("STRICT_WATER_VAPOR", "bool", "FALSE", _S_WVP,
        "With DIR_WVPLUT: fail for an image without a daily water vapour value (TRUE), or fall\n"
        "back to the monthly climatology (FALSE)."),
    Key("IMPULSE_NOISE", "bool", "TRUE", _S_INP,
        "Detect impulse noise (bad DNs) in 8-bit Landsat data and mark it in the quality layer."),
    Key("BUFFER_NODATA", "bool", "FALSE", _S_INP,
        "Grow the nodata area of the image by one pixel (removes unreliable edge pixels)."),
    Key("USE_DEM_DATABASE", "bool", "FALSE", _S_DEM,
        "Use one DEM per WRS-2 path/row or MGRS tile: <directory of FILE_DEM>/<id>.vrt."),
    Key("DEM_NODATA", "int", "-32767", _S_DEM,
        "Nodata value of the DEM (integer, -32768 to 32767). 0 is a bad choice.",
        lo=-32768, hi=32767),
    Key("DEM_RESAMPLING", "enum", "BL", _S_DEM,
        "Resampling of the DEM to the image grid: NN, BL or CC.",
        choices=ENUM_CODES["DEM_RESAMPLING"]),
    Key("COREG_BASE_NODATA", "int", "-9999", _S_COREG,
        "Nodata value of the co-registration base images (integer, -32768 to 32767).",
        lo=-32768, hi=32767),
    Key("ERASE_CLOUDS", "bool", "FALSE", _S_CLD,
        "Set the reflectance of confidently cloudy pixels to nodata (the quality layer still\n"
        "marks them)."),
    Key("MAX_CLOUD_COVER_FRAME", "float", "75", _S_CLD,
        "Skip an image whose cloud cover (%) is above this value (1 to 100). A skipped image\n"
        "counts as done.",
        lo=1, hi=100),
    Key("MAX_CLOUD_COVER_TILE", "float", "75", _S_CLD,
        "Do not write a tile whose cloud and shadow cover (%) is above this value (1 to 100).",
        lo=1, hi=100),
    Key("CLOUD_BUFFER", "float", "300", _S_CLD,
        "Buffer around clouds, in metres (0 to 10000).", lo=0, hi=10000),
    Key("CIRRUS_BUFFER", "float", "0", _S_CLD,
        "Buffer around cirrus clouds, in metres (0 to 10000).", lo=0, hi=10000),
    Key("SHADOW_BUFFER", "float", "90", _S_CLD,
        "Buffer around cloud shadows, in metres (0 to 10000).", lo=0, hi=10000),
    Key("SNOW_BUFFER", "float", "30", _S_CLD,
        "Buffer around snow, in metres (0 to 10000).", lo=0, hi=10000),
    Key("CLOUD_THRESHOLD", "float", "0.225", _S_CLD,
        "Cloud probability threshold (0 to 1) added to the clear-sky percentile; Landsat only.",
        lo=0, hi=1),
    Key("SHADOW_THRESHOLD", "float", "0.02", _S_CLD,
        "Minimum darkening (0 to 1, reflectance) for a pixel to count as cloud shadow.",
        lo=0, hi=1),
    Key("NPROC", "int", "32", _S_PAR,
        "How many images are processed at the same time (FORCE's bulk driver; integer >= 1).\n"
        "With l2ps the workflow's own job count applies; this value is read and validated.",
        lo=1, hi=INT_MAX),
    Key("NTHREAD", "int", "2", _S_PAR,
        "Threads per image (integer >= 1).", lo=1, hi=INT_MAX),
    Key("PARALLEL_READS", "bool", "FALSE", _S_PAR,
        "Read the bands of an image in parallel."),
    Key("DELAY", "int", "3", _S_PAR,
        "Seconds between the starts of two jobs in FORCE's bulk driver (integer >= 0).",
        lo=0, hi=INT_MAX),
    Key("TIMEOUT_ZIP", "int", "30", _S_PAR,
        "Grace period in seconds before unpacking an archive is killed (integer >= 0).",
        lo=0, hi=INT_MAX),
    Key("FILE_OUTPUT_OPTIONS", "path", "NULL", _S_OUT,
        "For OUTPUT_FORMAT = CUSTOM: a text file with 'DRIVER = <GDAL driver>',\n"
        "'EXTENSION = <file extension>' and one GDAL creation option per line. NULL otherwise.",
        must="file"),
    Key("OUTPUT_FORMAT", "enum", "COG", _S_OUT,
        "File format: COG (cloud-optimised GeoTIFF), GTiff, ENVI, JPEG or CUSTOM (see\n"
        "FILE_OUTPUT_OPTIONS).",
        choices=ENUM_CODES["OUTPUT_FORMAT"]),
    Key("OUTPUT_DST", "bool", "FALSE", _S_OUT,
        "Write the distance to the next cloud, cloud shadow or snow pixel (DST)."),
    Key("OUTPUT_AOD", "bool", "FALSE", _S_OUT,
        "Write the aerosol optical depth at 550 nm (AOD)."),
    Key("OUTPUT_WVP", "bool", "FALSE", _S_OUT,
        "Write the water vapour (WVP)."),
    Key("OUTPUT_VZN", "bool", "FALSE", _S_OUT,
        "Write the view zenith angle (VZN)."),
    Key("OUTPUT_HOT", "bool", "FALSE", _S_OUT,
        "Write the haze optimised transformation (HOT)."),
    Key("OUTPUT_OVV", "bool", "TRUE", _S_OUT,
        "Write a small RGB quicklook of each image (OVV)."),
)

# l2ps-only optional keys (required=False, with a default). None yet; later issues add them
# here (and a matching field with a default in Parameters, after the FORCE fields). They are
# written to the skeleton in a separate "l2ps extensions" block and never into FORCE_param.
_EXTENSION_KEY_TABLE: tuple[Key, ...] = ()

#: FORCE's LEVEL2 keys, in registration order (the order of FORCE_param).
KEYS: tuple[str, ...] = tuple(k.name for k in _FORCE_KEY_TABLE)
#: l2ps-only optional keys.
EXTENSION_KEYS: tuple[str, ...] = tuple(k.name for k in _EXTENSION_KEY_TABLE)
#: Every key by name.
KEY_TABLE: Mapping[str, Key] = MappingProxyType(
    {k.name: k for k in _FORCE_KEY_TABLE + _EXTENSION_KEY_TABLE})
#: Default of every key as it is written in a parameter file (FORCE's template values).
DEFAULTS: Mapping[str, str] = MappingProxyType({k.name: k.default for k in KEY_TABLE.values()})

# What write_skeleton writes where it differs from DEFAULTS: placeholder paths (a NULL output
# directory can never be valid) and DO_TOPO = FALSE, because DO_TOPO needs a DEM and the
# skeleton cannot know one (FORCE's template has TRUE together with FILE_DEM = NULL, which
# FORCE itself rejects).
_SKELETON_VALUES = {
    "FILE_QUEUE": "/data/level1/queue.txt",
    "DIR_LEVEL2": "/data/level2",
    "DIR_LOG": "/data/log",
    "DIR_PROVENANCE": "/data/provenance",
    "DIR_TEMP": "/data/temp",
    "DO_TOPO": "FALSE",
}

# Order of sections and keys in a written parameter file (grouped by topic, not by
# registration order).
_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (_S_IO, ("FILE_QUEUE", "DIR_LEVEL2", "DIR_LOG", "DIR_PROVENANCE", "DIR_TEMP")),
    (_S_AOI, ("FILE_AOI",)),
    (_S_DEM, ("FILE_DEM", "DEM_RESAMPLING", "USE_DEM_DATABASE", "DEM_NODATA")),
    (_S_CUBE, ("DO_REPROJ", "DO_TILE", "FILE_TILE", "TILE_SIZE", "RESOLUTION_LANDSAT",
               "RESOLUTION_SENTINEL2", "ORIGIN_LON", "ORIGIN_LAT", "PROJECTION", "RESAMPLING")),
    (_S_RAD, ("DO_ATMO", "DO_TOPO", "DO_BRDF", "ADJACENCY_EFFECT", "MULTI_SCATTERING")),
    (_S_WVP, ("DIR_WVPLUT", "STRICT_WATER_VAPOR", "WATER_VAPOR")),
    (_S_AOD, ("DO_AOD", "DIR_AOD")),
    (_S_CLD, ("ERASE_CLOUDS", "MAX_CLOUD_COVER_FRAME", "MAX_CLOUD_COVER_TILE", "CLOUD_BUFFER",
              "CIRRUS_BUFFER", "SHADOW_BUFFER", "SNOW_BUFFER", "CLOUD_THRESHOLD",
              "SHADOW_THRESHOLD")),
    (_S_RES, ("RES_MERGE",)),
    (_S_COREG, ("DIR_COREG_BASE", "COREG_BASE_NODATA")),
    (_S_INP, ("IMPULSE_NOISE", "BUFFER_NODATA", "TIER")),
    (_S_PAR, ("NPROC", "NTHREAD", "PARALLEL_READS", "DELAY", "TIMEOUT_ZIP")),
    (_S_OUT, ("OUTPUT_FORMAT", "FILE_OUTPUT_OPTIONS", "OUTPUT_DST", "OUTPUT_AOD", "OUTPUT_WVP",
              "OUTPUT_VZN", "OUTPUT_HOT", "OUTPUT_OVV")),
)

# Former or foreign keys that deserve a specific hint instead of "unknown key".
_RETIRED_KEYS = {
    "BLOCK_SIZE": "BLOCK_SIZE is no longer a LEVEL2 key (FORCE >= 3.8 dropped it): remove the "
                  "line and give TILE_SIZE as two numbers, X and Y",
}


# ---------------------------------------------------------------------------- grid family
def grid_family(projection: str) -> tuple[str | None, str | None]:
    """Split a PROJECTION value into (grid family, continent).

    ``'EQUI7'`` → ``('EQUI7', None)``, ``'GLANCE7-EU'`` → ``('GLANCE7', 'EU')``; a WKT or any
    other text → ``(None, None)``. An unknown suffix (``'EQUI7-XX'``) raises ``ValueError``.
    Spec 03 §2.2, §2.5.
    """
    text = projection.strip()
    for family in GRID_TILE_SIZE:
        if text == family:
            return family, None
        if text.startswith(family + "-"):
            cont = text[len(family) + 1:]
            if cont not in CONTINENTS:
                raise ValueError(f"unknown continent {cont!r} in {text!r}: expected one of "
                                 + ", ".join(f"{family}-{c}" for c in CONTINENTS))
            return family, cont
    return None, None


# ---------------------------------------------------------------------------- the value object
@dataclass(frozen=True)
class Parameters:
    """The validated content of a LEVEL2 parameter file, one attribute per key (lower case).

    Paths that may be NULL are ``Path | None``. Enumerations are kept as FORCE spells them
    (e.g. ``resampling`` in ``{'NN', 'BL', 'CC'}``). Values are those after FORCE's derived
    overrides (DO_ATMO = FALSE switches DO_AOD, DO_BRDF, DO_TOPO, ADJACENCY_EFFECT off); the
    values as written in the file are kept in ``overrides`` for FORCE_param.
    ``source``, ``lines`` (key → line number), ``warnings``, ``overrides`` and ``nulls`` (keys
    written as NULL) do not take part in equality.
    """

    dir_level2: Path
    dir_temp: Path
    dir_log: Path
    dir_provenance: Path
    file_aoi: Path | None
    file_queue: Path | None
    dir_wvplut: Path | None
    dir_aod: Path | None
    file_tile: Path | None
    file_dem: Path | None
    dir_coreg_base: Path | None
    tile_size: tuple[float, float]
    resolution_landsat: float
    resolution_sentinel2: float
    do_reproj: bool
    do_tile: bool
    origin_lat: float
    origin_lon: float
    projection: str
    resampling: str
    res_merge: str
    tier: int
    do_topo: bool
    do_atmo: bool
    do_aod: bool
    do_brdf: bool
    multi_scattering: bool
    adjacency_effect: bool
    water_vapor: float
    strict_water_vapor: bool
    impulse_noise: bool
    buffer_nodata: bool
    use_dem_database: bool
    dem_nodata: int
    dem_resampling: str
    coreg_base_nodata: int
    erase_clouds: bool
    max_cloud_cover_frame: float
    max_cloud_cover_tile: float
    cloud_buffer: float
    cirrus_buffer: float
    shadow_buffer: float
    snow_buffer: float
    cloud_threshold: float
    shadow_threshold: float
    nproc: int
    nthread: int
    parallel_reads: bool
    delay: int
    timeout_zip: int
    file_output_options: Path | None
    output_format: str
    output_dst: bool
    output_aod: bool
    output_wvp: bool
    output_vzn: bool
    output_hot: bool
    output_ovv: bool
    # --- l2ps extension keys go here (each with a default) ---------------------------
    # --- bookkeeping (not part of equality) ----------------------------------------------
    source: Path | None = field(default=None, compare=False)
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)
    overrides: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    nulls: frozenset[str] = field(default=frozenset(), compare=False)   # keys written as NULL

    # ------------------------------------------------------------------ helpers
    def replace(self, **changes: Any) -> "Parameters":
        """A copy with some attributes changed (no re-validation; see :func:`validate`)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every key (lower case) → a JSON-serialisable value: paths as ``str`` (or None),
        TILE_SIZE as a list of two floats, booleans, numbers and strings as they are."""
        out: dict[str, Any] = {}
        for key in KEY_TABLE.values():
            value = getattr(self, key.attr)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[key.attr] = value
        return out

    def resolution(self, mission: str) -> float:
        """Cube pixel size (m) for ``'landsat'`` or ``'sentinel2'``.

        With DO_REPROJ = FALSE the image keeps its own resolution (30 m / 10 m) and
        RESOLUTION_* are ignored (spec 03 §2.1).
        """
        m = _mission(mission)
        if not self.do_reproj:
            return NATIVE_RESOLUTION[m]
        return self.resolution_landsat if m == "landsat" else self.resolution_sentinel2

    @property
    def grid_family(self) -> str | None:
        """'EQUI7', 'GLANCE7' or None (a user WKT)."""
        return grid_family(self.projection)[0]

    @property
    def continent(self) -> str | None:
        """The continent suffix of EQUI7-XX / GLANCE7-XX, or None."""
        return grid_family(self.projection)[1]

    @property
    def is_continental(self) -> bool:
        """True for the predefined continental grids (EQUI7, GLANCE7 and their -XX variants)."""
        return self.grid_family is not None

    @property
    def cube_tile_size(self) -> tuple[float, float]:
        """The tile size in effect: fixed by EQUI7/GLANCE7, else TILE_SIZE."""
        fam = self.grid_family
        if fam is not None:
            return (GRID_TILE_SIZE[fam], GRID_TILE_SIZE[fam])
        return self.tile_size


def _mission(mission: str) -> str:
    m = mission.strip().lower().replace("-", "").replace("_", "")
    if m in ("landsat",) or m.startswith("landsat"):
        return "landsat"
    if m in ("sentinel2", "s2") or m.startswith("sentinel2"):
        return "sentinel2"
    raise ValueError(f"unknown mission {mission!r}: expected 'landsat' or 'sentinel2'")


# ---------------------------------------------------------------------------- parsing
_SEPARATORS = re.compile(r"[\s=]+")


def _suggest(tag: str) -> str | None:
    names = list(KEY_TABLE)
    hit = difflib.get_close_matches(tag, names, n=1, cutoff=0.6)
    if not hit:
        hit = difflib.get_close_matches(tag.upper(), names, n=1, cutoff=0.6)
    return hit[0] if hit else None


def parse_parameter_text(
    text: str, source: str = "<string>", *, warnings_out: list[str] | None = None,
) -> tuple[dict[str, tuple[list[str], int]], list[str]]:
    """Split a parameter file into raw values, without interpreting them.

    Returns ``(raw, problems)``: ``raw`` maps each key found to ``(tokens, line number)``
    (first occurrence wins); ``problems`` lists the syntax problems (missing start marker,
    unknown keys with a suggestion). Warnings (duplicate keys, missing end marker) are
    appended to ``warnings_out`` when given. Spec 03 §6.1.
    """
    raw, problems, _ = _parse(text, source, warnings_out if warnings_out is not None else [])
    return raw, problems


def _parse(text: str, source: str, warn: list[str],
           ) -> tuple[dict[str, tuple[list[str], int]], list[str], bool]:
    """parse_parameter_text; the third value says the file is not a LEVEL2 file at all (so
    that the keys it lacks are not worth listing)."""
    problems: list[str] = []
    raw: dict[str, tuple[list[str], int]] = {}
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")

    # the first token of the file must be the start marker (blank lines before it are fine)
    start_line = None
    for i, line in enumerate(lines):
        content = line.split("\r", 1)[0]
        if content.strip():
            first = content.split()[0]
            if first == START_MARKER:
                start_line = i
                # the rest of the marker line is parsed like any other line
                lines[i] = content.split(START_MARKER, 1)[1]
            else:
                m = re.fullmatch(r"\+\+PARAM_(\w+?)_START\+\+", first)
                if m:
                    problems.append(
                        f"{source}:{i + 1}: found {first}: this is a parameter file for FORCE's "
                        f"{m.group(1)} module; expected {START_MARKER} (a LEVEL2 file)")
                    return raw, problems, True
                problems.append(
                    f"{source}:{i + 1}: the file must start with {START_MARKER}, found "
                    f"{first!r}")
                start_line = i - 1
            break
    if start_line is None:
        problems.append(f"{source}: empty file: expected {START_MARKER} and the parameters")
        return raw, problems, True

    seen_end = False
    for i in range(start_line + 1, len(lines)):
        lineno = i + 1
        content = re.split(r"[\r#]", lines[i], maxsplit=1)[0]
        tokens = [t for t in _SEPARATORS.split(content) if t]
        if not tokens:
            continue
        tag, values = tokens[0], tokens[1:]
        if tag == END_MARKER:
            seen_end = True
            continue
        if tag == START_MARKER:
            warn.append(f"{source}:{lineno}: a second {START_MARKER} is ignored")
            continue
        if tag not in KEY_TABLE:
            if tag in _RETIRED_KEYS:
                problems.append(f"{source}:{lineno}: {_RETIRED_KEYS[tag]}")
                continue
            hint = _suggest(tag)
            problems.append(
                f"{source}:{lineno}: unknown key {tag!r}"
                + (f" (did you mean {hint}?)" if hint else " (not a key of FORCE's LEVEL2 file)"))
            continue
        if seen_end:
            warn.append(f"{source}:{lineno}: {tag} comes after {END_MARKER} "
                        f"(it is used, as FORCE does)")
        if tag in raw:
            warn.append(f"{source}:{lineno}: {tag} is given again (first at line "
                        f"{raw[tag][1]}); the first occurrence is used")
            continue
        raw[tag] = (values, lineno)
    if not seen_end:
        warn.append(f"{source}: no {END_MARKER} at the end of the file")
    return raw, problems, False


# ---------------------------------------------------------------------------- conversion
def _fmt_range(key: Key) -> str:
    lo = _num_text(key.lo) if key.lo is not None else None
    hi = _num_text(key.hi) if key.hi is not None else None
    if key.lo_open and key.hi == INT_MAX:
        return "> " + lo
    if key.hi == INT_MAX:
        return ">= " + lo
    if key.lo_open:
        return f"> {lo} and <= {hi}"
    return f"{lo} to {hi}"


def _num_text(v: float | int) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _in_range(key: Key, v: float) -> bool:
    if key.lo is not None and (v < key.lo or (key.lo_open and v == key.lo)):
        return False
    if key.hi is not None and v > key.hi:
        return False
    return True


def _to_float(tok: str) -> float | None:
    try:
        v = float(tok)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _to_int(tok: str) -> int | None:
    if re.fullmatch(r"[+-]?\d+", tok):
        return int(tok)
    return None


def _convert(key: Key, tokens: list[str], problem) -> Any:
    """Convert raw tokens of one key; report via ``problem(text)``; return the value or
    ``_MISSING`` when invalid."""
    shown = " ".join(tokens)
    if not tokens:
        problem(f"{key.name} has no value: {_expected(key)}")
        return _MISSING

    if key.kind == "projection":
        value = " ".join(tokens)
        if value == _NULL:
            problem(f"{key.name} = 'NULL': {_expected(key)}")
            return _MISSING
        return value

    if key.kind == "floatvec":
        if tokens == [_NULL]:
            problem(f"{key.name} = 'NULL': {_expected(key)}")
            return _MISSING
        if key.length is not None and len(tokens) != key.length:
            extra = ""
            if key.name == "TILE_SIZE" and len(tokens) == 1:
                extra = (f" (old FORCE files had one TILE_SIZE and a BLOCK_SIZE: write "
                         f"'TILE_SIZE = {tokens[0]} {tokens[0]}')")
            problem(f"{key.name} = {shown!r}: expected {key.length} numbers (X Y), found "
                    f"{len(tokens)}{extra}")
            return _MISSING
        values = [_to_float(t) for t in tokens]
        if any(v is None for v in values) or not all(_in_range(key, v) for v in values):
            problem(f"{key.name} = {shown!r}: {_expected(key)}")
            return _MISSING
        return tuple(values)

    if len(tokens) > 1:
        what = " (a path cannot contain blanks)" if key.kind in ("dir", "path") else ""
        problem(f"{key.name} = {shown!r}: expected a single value, found {len(tokens)} "
                f"tokens{what}")
        return _MISSING
    tok = tokens[0]

    if key.kind in ("dir", "path"):
        if tok == _NULL:
            if key.kind == "dir":
                problem(f"{key.name} = 'NULL': {_expected(key)}")
                return _MISSING
            return None
        return Path(tok)

    if key.kind == "bool":
        if tok in ("TRUE", "FALSE"):
            return tok == "TRUE"
        hint = " (upper case)" if tok.upper() in ("TRUE", "FALSE") else ""
        problem(f"{key.name} = {tok!r}: expected TRUE or FALSE{hint}")
        return _MISSING

    if key.kind == "enum":
        if tok in key.choices:
            return tok
        hint = ""
        for c in key.choices:
            if c.lower() == tok.lower():
                hint = f" (values are case-sensitive: did you mean {c}?)"
        problem(f"{key.name} = {tok!r}: expected one of {', '.join(key.choices)}{hint}")
        return _MISSING

    if key.kind in ("int", "float"):
        if tok == _NULL:
            if key.null_value is not _MISSING:
                return key.null_value
            problem(f"{key.name} = 'NULL': {_expected(key)} (NULL is not a number)")
            return _MISSING
        v = _to_int(tok) if key.kind == "int" else _to_float(tok)
        if v is None or not _in_range(key, v):
            problem(f"{key.name} = {tok!r}: {_expected(key)}")
            return _MISSING
        return v

    raise AssertionError(f"unhandled kind {key.kind}")  # pragma: no cover


def _expected(key: Key) -> str:
    if key.kind == "dir":
        return "expected an existing directory"
    if key.kind == "path":
        what = {"file": "an existing file", "dir": "an existing directory"}.get(
            key.must, "an existing file")
        return f"expected {what} or NULL"
    if key.kind == "bool":
        return "expected TRUE or FALSE"
    if key.kind == "enum":
        return "expected one of " + ", ".join(key.choices)
    if key.kind == "int":
        return f"expected an integer {_fmt_range(key)}"
    if key.kind == "float":
        return f"expected a number {_fmt_range(key)}"
    if key.kind == "floatvec":
        return f"expected {key.length} numbers (X Y), each {_fmt_range(key)}"
    if key.kind == "projection":
        return ("expected a WKT, EQUI7, GLANCE7 or one continent of them "
                "(e.g. EQUI7-EU, GLANCE7-AF)")
    return "expected a value"  # pragma: no cover


def _is_multiple(size: float, res: float) -> bool:
    """size is an integer multiple of res within the tolerance of spec 03 §2.3."""
    r = math.fmod(size, res)
    return r <= _TILE_TOL or res - r <= _TILE_TOL


def _suggest_resolution(size: float, res: float) -> float | None:
    candidates = [c for c in (5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 100, 120, 150, 200, 250)
                  if _is_multiple(size, c)]
    if not candidates:
        return None
    return min(candidates, key=lambda c: (abs(c - res), c))


# ---------------------------------------------------------------------------- validation
def validate_parameter_text(
    text: str, source: str = "<string>", *, check_paths: bool = True,
    base_dir: Path | None = None, _header: str | None = None,
) -> Parameters:
    """Parse and validate the text of a parameter file; raise one :class:`ParameterError`
    with every problem found. ``source`` names the file in messages. ``check_paths=False``
    skips the existence checks of paths. Relative paths are taken relative to the current
    directory (as FORCE does), or to ``base_dir`` when given.

    The tile-grid checks (TILE_SIZE a multiple of both resolutions, or the resolutions
    dividing the EQUI7/GLANCE7 tile size) apply when DO_TILE = TRUE; with DO_REPROJ = FALSE
    the images' own resolutions (30 m, 10 m) are checked instead of RESOLUTION_*."""
    name = source
    warnings: list[str] = []
    raw, problems, fatal = _parse(text, name, warnings)
    if fatal:
        raise ParameterError(f"parameter file {_header or source}: not a LEVEL2 parameter file",
                             problems)

    values: dict[str, Any] = {}
    lines: dict[str, int] = {}

    def loc(key: str) -> str:
        return f"{name}:{lines[key]}" if key in lines else name

    for key in KEY_TABLE.values():
        if key.name not in raw:
            if key.required:
                suggestion = _SKELETON_VALUES.get(key.name, key.default)
                problems.append(
                    f"{name}: {key.name} is missing: every key of the LEVEL2 file is required "
                    f"({_expected(key)}; e.g. '{key.name} = {suggestion}')")
            else:
                values[key.name] = _convert(key, key.default.split(), problems.append)
            continue
        tokens, lineno = raw[key.name]
        lines[key.name] = lineno
        v = _convert(key, tokens, lambda msg, _l=lineno: problems.append(f"{name}:{_l}: {msg}"))
        if v is not _MISSING:
            values[key.name] = v

    def have(*keys: str) -> bool:
        return all(k in values for k in keys)

    def show(key: str) -> str:
        return " ".join(raw[key][0]) if key in raw else ""

    # --- projection: a continental grid name, or a WKT (spec 03 §2.2)
    if "PROJECTION" in values:
        proj = values["PROJECTION"]
        try:
            family, _ = grid_family(proj)
        except ValueError as exc:
            problems.append(f"{loc('PROJECTION')}: PROJECTION = {proj!r}: {exc}")
            del values["PROJECTION"]
        else:
            if family is None:
                msg = _check_wkt(proj)
                if msg:
                    problems.append(f"{loc('PROJECTION')}: PROJECTION = {_short(proj)!r}: {msg}")
                    del values["PROJECTION"]

    # --- tile size and resolutions (spec 03 §2.3, §2.5)
    if have("DO_REPROJ", "PROJECTION", "RESOLUTION_LANDSAT", "RESOLUTION_SENTINEL2"):
        family = grid_family(values["PROJECTION"])[0] if values["DO_REPROJ"] else None
        if values["DO_REPROJ"]:
            resolutions = {"RESOLUTION_LANDSAT": values["RESOLUTION_LANDSAT"],
                           "RESOLUTION_SENTINEL2": values["RESOLUTION_SENTINEL2"]}
        else:
            resolutions = {"Landsat's own resolution": NATIVE_RESOLUTION["landsat"],
                           "Sentinel-2's own resolution": NATIVE_RESOLUTION["sentinel2"]}
        if not values.get("DO_TILE", True):
            pass  # no tile grid: tile size and grid family do not constrain the resolution
        elif family is not None:
            size = GRID_TILE_SIZE[family]
            for rkey, res in resolutions.items():
                if not _is_multiple(size, res):
                    better = _suggest_resolution(size, res)
                    hint = f" (e.g. {_num_text(float(better))})" if better else ""
                    problems.append(
                        f"{loc(rkey)}: {rkey} = {_num_text(res)!r}: {family} tiles are "
                        f"{_num_text(size)} m wide, and {_num_text(res)} does not divide "
                        f"{_num_text(size)}: choose a resolution that does{hint}")
        elif "TILE_SIZE" in values:
            for axis, size in zip("XY", values["TILE_SIZE"]):
                bad = [f"{rkey} = {_num_text(res)}" for rkey, res in resolutions.items()
                       if not _is_multiple(size, res)]
                if bad:
                    problems.append(
                        f"{loc('TILE_SIZE')}: TILE_SIZE = {show('TILE_SIZE')!r}: the {axis} size "
                        f"{_num_text(size)} must be a multiple of the resolution "
                        f"({'; '.join(bad)})")

    # --- derived overrides (spec 03 §6.1 post-checks, spec 02 §0)
    overrides: dict[str, Any] = {}
    if values.get("DO_ATMO") is False:
        for k in ("DO_AOD", "DO_BRDF", "DO_TOPO", "ADJACENCY_EFFECT"):
            if values.get(k) is True:
                overrides[k] = True
                values[k] = False
        if overrides:
            warnings.append(f"{loc('DO_ATMO')}: DO_ATMO = FALSE switches off "
                            f"{', '.join(overrides)} (set to TRUE in the file)")

    if values.get("DO_TOPO") is True and "FILE_DEM" in values and values["FILE_DEM"] is None:
        problems.append(f"{loc('DO_TOPO')}: DO_TOPO = TRUE needs FILE_DEM (a DEM file); "
                        f"FILE_DEM is NULL (set DO_TOPO = FALSE for a flat surface at 0 m)")
    if values.get("USE_DEM_DATABASE") is True and "FILE_DEM" in values \
            and values["FILE_DEM"] is None:
        problems.append(f"{loc('USE_DEM_DATABASE')}: USE_DEM_DATABASE = TRUE needs FILE_DEM "
                        f"(a path in the directory of the DEM database); FILE_DEM is NULL")
    if values.get("OUTPUT_FORMAT") == "CUSTOM" and "FILE_OUTPUT_OPTIONS" in values \
            and values["FILE_OUTPUT_OPTIONS"] is None:
        problems.append(f"{loc('OUTPUT_FORMAT')}: OUTPUT_FORMAT = CUSTOM needs "
                        f"FILE_OUTPUT_OPTIONS (a file with the GDAL driver and options); "
                        f"FILE_OUTPUT_OPTIONS is NULL")

    # --- paths that must exist
    if check_paths:
        for key in KEY_TABLE.values():
            if key.kind not in ("dir", "path") or values.get(key.name) is None:
                continue
            path = values[key.name]
            full = path if base_dir is None or path.is_absolute() else base_dir / path
            must = "dir" if key.kind == "dir" else key.must
            why = ""
            if key.name == "FILE_DEM" and values.get("DO_TOPO"):
                why = " (needed for DO_TOPO = TRUE)"
            if not full.exists():
                problems.append(f"{loc(key.name)}: {key.name} = {str(path)!r}: does not exist"
                                f"{why}; {_expected(key)}")
            elif must == "dir" and not full.is_dir():
                problems.append(f"{loc(key.name)}: {key.name} = {str(path)!r}: is not a "
                                f"directory; {_expected(key)}")
            elif must == "file" and full.is_dir():
                problems.append(f"{loc(key.name)}: {key.name} = {str(path)!r}: is a "
                                f"directory; {_expected(key)}")

    # --- warnings FORCE also gives, and a few of our own
    for k in ("DEM_NODATA", "COREG_BASE_NODATA"):
        if values.get(k) == 0:
            warnings.append(f"{loc(k)}: {k} = 0: 0 is a bad choice of nodata value")
    if "WATER_VAPOR" in raw and raw["WATER_VAPOR"][0] == [_NULL] \
            and values.get("DIR_WVPLUT", 1) is None and values.get("DO_ATMO"):
        warnings.append(f"{loc('WATER_VAPOR')}: WATER_VAPOR = NULL and DIR_WVPLUT = NULL: "
                        f"Landsat images are corrected with the water vapour of the standard "
                        f"atmosphere for their latitude and season (FORCE: 0 g/cm2)")

    if problems:
        problems = _by_line(problems, name)
        n = len(problems)
        raise ParameterError(
            f"parameter file {_header or source}: {n} problem{'s' if n != 1 else ''}",
            problems)

    for w in warnings:
        log.warning(w)
    kwargs = {KEY_TABLE[k].attr: v for k, v in values.items()}
    nulls = frozenset(k for k in values if (raw[k][0] == [_NULL] if k in raw
                                            else KEY_TABLE[k].default == _NULL))
    return Parameters(**kwargs, lines=MappingProxyType(lines), warnings=tuple(warnings),
                      overrides=MappingProxyType(overrides), nulls=nulls)


def _by_line(problems: list[str], name: str) -> list[str]:
    """Problems in file order; those without a line (missing keys) last."""
    prefix = re.compile(re.escape(name) + r":(\d+):")

    def line_of(msg: str) -> int:
        m = prefix.match(msg)
        return int(m.group(1)) if m else 1 << 30

    return sorted(problems, key=line_of)


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _check_wkt(text: str) -> str | None:
    """None if ``text`` is a WKT that PROJ understands, else what is wrong."""
    stripped = text.strip()
    if stripped.startswith("+") or "+proj" in stripped:
        return ("a PROJ string does not work here ('=' separates tokens in a parameter file): "
                "give the projection as WKT, or EQUI7/GLANCE7")
    if re.fullmatch(r"(?i)epsg:\s*\d+", stripped) or stripped.isdigit():
        return ("an EPSG code does not work here (as in FORCE): give the projection as WKT "
                "(e.g. from 'gdalsrsinfo -o wkt1 EPSG:3035'), or EQUI7/GLANCE7")
    if "[" not in stripped:
        return ("expected a WKT, EQUI7, GLANCE7 or one continent of them "
                "(e.g. EQUI7-EU, GLANCE7-AF)")
    try:
        from pyproj import CRS
        from pyproj.exceptions import CRSError
    except ImportError:  # pragma: no cover - pyproj is a dependency
        return None
    try:
        CRS.from_wkt(stripped)
    except CRSError as exc:
        return f"not a valid WKT ({str(exc).splitlines()[0][:120]})"
    return None


def read_parameters(path: str | os.PathLike, *, check_paths: bool = True) -> Parameters:
    """Read and validate a LEVEL2 parameter file.

    Raises :class:`~l2ps.errors.ParameterError` with every problem found (file, line, key,
    value, what is allowed). ``check_paths=False`` skips the existence checks of paths (dry
    runs, tests). Warnings (duplicate keys, derived overrides, ...) are logged and kept in
    ``Parameters.warnings``.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ParameterError(f"cannot read parameter file {path}: {exc.strerror or exc}") \
            from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    params = validate_parameter_text(text, source=path.name, check_paths=check_paths,
                                     _header=str(path))
    return params.replace(source=path)


# ---------------------------------------------------------------------------- FORCE_param
def _force_value(key: Key, value: Any) -> str:
    if value is None:
        return _NULL
    if key.kind == "bool":
        return "1" if value else "0"
    if key.kind == "enum":
        return str(ENUM_CODES[key.name].index(value))
    if key.kind == "int":
        return "%d" % value
    if key.kind == "float":
        return "%f" % value
    if key.kind == "floatvec":
        return " ".join("%f" % v for v in value)
    return str(value)


def format_force_param(p: Parameters) -> str:
    """The ``FORCE_param`` metadata string (spec 03 §3.3): every FORCE key in registration
    order as ``NAME: value`` joined by ``', '``; ints ``%d``, floats ``%f``, enumerations and
    booleans as integer codes (TRUE = 1, NN/BL/CC = 0/1/2, ...), vectors space-separated,
    paths and strings verbatim, NULL as ``NULL``. Values are those of the file, i.e. before
    the DO_ATMO = FALSE overrides (as FORCE logs them)."""
    parts = []
    for name in KEYS:
        key = KEY_TABLE[name]
        value = p.overrides.get(name, getattr(p, key.attr))
        parts.append(f"{name}: {_force_value(key, value)}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------- writing
def _file_value(key: Key, value: Any) -> str:
    if value is None:
        return _NULL
    if key.kind == "bool":
        return "TRUE" if value else "FALSE"
    if key.kind == "floatvec":
        return " ".join(_num_repr(v) for v in value)
    if key.kind == "float":
        return _num_repr(value)
    return str(value)


def _num_repr(v: float) -> str:
    s = repr(float(v))
    return s[:-2] if s.endswith(".0") else s


_RULE = "# " + "-" * 76


def format_parameter_file(p: Parameters | None = None, *, comments: bool = True) -> str:
    """The text of a complete parameter file with every key, grouped by topic.

    With ``p`` the values of ``p`` (as in the file: before derived overrides); without, the
    skeleton values (FORCE's defaults, placeholder directories, DO_TOPO = FALSE).
    ``comments`` adds a few explanatory lines per key.
    """
    def value_of(name: str) -> str:
        key = KEY_TABLE[name]
        if p is None:
            return _SKELETON_VALUES.get(name, key.default)
        return _file_value(key, p.overrides.get(name, getattr(p, key.attr)))

    out: list[str] = [START_MARKER, ""]
    if comments:
        out += [
            "# l2ps / FORCE LEVEL2 parameter file",
            "#",
            "# One 'KEY = value' per line. '#' starts a comment anywhere on a line; blanks and '='",
            "# separate tokens, so values cannot contain '#', '=' or (paths) blanks. Booleans are",
            "# TRUE or FALSE, choices are case-sensitive, NULL means 'not given' for a path. Every",
            "# key below is required (as in FORCE); relative paths are relative to the directory",
            "# the processing is started in. The default of each key is FORCE's default.",
            "",
        ]
    listed = [k for _, keys in _SECTIONS for k in keys]
    assert sorted(listed) == sorted(KEYS), "every FORCE key must be in exactly one section"
    sections = list(_SECTIONS)
    if EXTENSION_KEYS:
        sections.append(("L2PS EXTENSIONS (optional; FORCE does not know these keys)",
                         EXTENSION_KEYS))
    for title, keys in sections:
        if comments:
            out += [_RULE, f"# {title}", _RULE, ""]
        for name in keys:
            key = KEY_TABLE[name]
            if comments:
                out += [f"# {line}".rstrip() for line in key.help.split("\n")]
                out.append(f"# {_default_note(key)}")
            out.append(f"{name} = {value_of(name)}")
            if comments:
                out.append("")
        if not comments:
            out.append("")
    out.append(END_MARKER)
    return "\n".join(out) + "\n"


def _default_note(key: Key) -> str:
    if key.kind == "dir" or key.name == "FILE_QUEUE":
        return "No default: replace the placeholder."
    if key.name in _SKELETON_VALUES:
        return (f"Default: {key.default} (FORCE's template; written as "
                f"{_SKELETON_VALUES[key.name]} here because FILE_DEM is NULL)")
    return f"Default: {key.default}"


def skeleton_text() -> str:
    """The text :func:`write_skeleton` writes."""
    return format_parameter_file(None)


def write_skeleton(path: str | os.PathLike) -> None:
    """Write a complete, commented parameter file with every key and its default.

    Paths are NULL or placeholder directories under /data (fill in DIR_LEVEL2, DIR_LOG,
    DIR_PROVENANCE, DIR_TEMP and FILE_QUEUE); DO_TOPO is FALSE until a DEM is given."""
    Path(path).write_text(skeleton_text(), encoding="utf-8")


def write_parameters(p: Parameters, path: str | os.PathLike, *, comments: bool = True) -> None:
    """Write ``p`` as a parameter file that :func:`read_parameters` reads back equal."""
    Path(path).write_text(format_parameter_file(p, comments=comments), encoding="utf-8")


def validate(p: Parameters, *, check_paths: bool = True) -> Parameters:
    """Re-validate a (possibly :meth:`Parameters.replace`-d) parameter set; returns a fresh
    :class:`Parameters` (with the same ``source``) or raises :class:`ParameterError`."""
    name = p.source.name if p.source is not None else "<parameters>"
    q = validate_parameter_text(format_parameter_file(p, comments=False), source=name,
                                check_paths=check_paths)
    return q.replace(source=p.source)
