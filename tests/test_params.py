"""The LEVEL2 parameter file (l2ps.params; spec 03 §6.1, §3.3)."""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest

from l2ps import params as P
from l2ps.errors import L2psError, ParameterError
from l2ps.params import (DEFAULTS, KEYS, Parameters, format_force_param, grid_family,
                         parse_parameter_text, read_parameters, write_skeleton)

REPO = Path(__file__).resolve().parents[1]
DIR_KEYS = ("DIR_LEVEL2", "DIR_TEMP", "DIR_LOG", "DIR_PROVENANCE")

# EPSG:3035 as WKT without blanks (the FORCE docs' datacube-definition.prj example style)
WKT_3035_NOSPACE = (
    'PROJCS["ETRS89-extended/LAEAEurope",GEOGCS["ETRS89",DATUM["European_Terrestrial_Reference_'
    'System_1989",SPHEROID["GRS1980",6378137,298.257222101]],PRIMEM["Greenwich",0],'
    'UNIT["degree",0.0174532925199433]],PROJECTION["Lambert_Azimuthal_Equal_Area"],'
    'PARAMETER["latitude_of_center",52],PARAMETER["longitude_of_center",10],'
    'PARAMETER["false_easting",4321000],PARAMETER["false_northing",3210000],'
    'UNIT["metre",1],AUTHORITY["EPSG","3035"]]')
WKT_3035_SPACES = WKT_3035_NOSPACE.replace(
    '"ETRS89-extended/LAEAEurope"', '"ETRS89-extended / LAEA Europe"').replace(
    '"GRS1980"', '"GRS 1980"')


# ----------------------------------------------------------------------------- helpers
@pytest.fixture
def dirs(tmp_path):
    """Existing directories and a queue file for the required paths."""
    out = {}
    for key in DIR_KEYS:
        d = tmp_path / key.lower()
        d.mkdir()
        out[key] = str(d)
    queue = tmp_path / "queue.txt"
    queue.write_text("")
    out["FILE_QUEUE"] = str(queue)
    return out


def values(dirs, **changes):
    """FORCE defaults with valid paths and DO_TOPO = FALSE, plus changes (None removes)."""
    v = dict(DEFAULTS)
    v.update(dirs)
    v["DO_TOPO"] = "FALSE"
    for k, x in changes.items():
        if x is None:
            v.pop(k, None)
        else:
            v[k] = x
    return v


def prm_text(v: dict, *, eol="\n", end=True) -> str:
    """One key per line: the key at position i of the dict is on line i + 2."""
    lines = [P.START_MARKER] + [f"{k} = {x}" for k, x in v.items()]
    if end:
        lines.append(P.END_MARKER)
    return eol.join(lines) + eol


def write(tmp_path, text, name="level2.prm") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def line_of(v: dict, key: str) -> int:
    return list(v).index(key) + 2


def problems_of(path, **kw) -> list[str]:
    with pytest.raises(ParameterError) as exc:
        read_parameters(path, **kw)
    return exc.value.problems


# ----------------------------------------------------------------------------- key table
def test_keys_are_the_58_force_keys_in_registration_order():
    assert len(KEYS) == 58 == len(set(KEYS))
    assert KEYS[:5] == ("DIR_LEVEL2", "DIR_TEMP", "DIR_LOG", "DIR_PROVENANCE", "FILE_AOI")
    assert KEYS[11:14] == ("TILE_SIZE", "RESOLUTION_LANDSAT", "RESOLUTION_SENTINEL2")
    assert KEYS[-8:-6] == ("FILE_OUTPUT_OPTIONS", "OUTPUT_FORMAT")
    assert KEYS[-1] == "OUTPUT_OVV"
    fields = [f.name for f in dataclasses.fields(Parameters)]
    assert fields[:58] == [k.lower() for k in KEYS]
    assert set(DEFAULTS) == set(KEYS)
    assert DEFAULTS["RESAMPLING"] == "CC" and DEFAULTS["PROJECTION"] == "GLANCE7"
    assert DEFAULTS["TILE_SIZE"] == "30000 30000" and DEFAULTS["DEM_NODATA"] == "-32767"


# ----------------------------------------------------------------------------- FORCE's skeleton
@pytest.fixture
def force_skeleton():
    root = os.environ.get("L2PS_TESTDATA")
    if not root:
        pytest.skip("L2PS_TESTDATA is not set (needs ../shared/testdata)")
    path = Path(root) / "params" / "force-level2-skeleton.prm"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


def test_force_skeleton_reports_exactly_the_missing_paths_and_dem(force_skeleton):
    raw, syntax = parse_parameter_text(force_skeleton.read_text(), force_skeleton.name)
    assert syntax == []
    assert set(raw) == set(KEYS)
    problems = problems_of(force_skeleton)
    assert len(problems) == 5, problems
    for key in DIR_KEYS:
        assert sum(f": {key} = 'NULL': expected an existing directory" in p
                   for p in problems) == 1, (key, problems)
    topo = [p for p in problems if "DO_TOPO" in p]
    assert len(topo) == 1
    assert "DO_TOPO = TRUE needs FILE_DEM (a DEM file); FILE_DEM is NULL" in topo[0]
    # every message carries file name and line number
    assert all(re.match(r"force-level2-skeleton\.prm:\d+: ", p) for p in problems)
    # check_paths=False does not hide NULL directories or the missing DEM
    assert len(problems_of(force_skeleton, check_paths=False)) == 5


@pytest.mark.parametrize("dem", ["no_topo", "dem_file"])
def test_force_skeleton_filled_in_validates(force_skeleton, tmp_path, dirs, dem):
    text = force_skeleton.read_text()
    for key in DIR_KEYS:
        text, n = re.subn(rf"^{key} = NULL$", f"{key} = {dirs[key]}", text, flags=re.M)
        assert n == 1
    if dem == "no_topo":
        text, n = re.subn(r"^DO_TOPO = TRUE$", "DO_TOPO = FALSE", text, flags=re.M)
    else:
        (tmp_path / "dem.tif").write_bytes(b"")
        text, n = re.subn(r"^FILE_DEM = NULL$", f"FILE_DEM = {tmp_path / 'dem.tif'}", text,
                          flags=re.M)
    assert n == 1
    p = read_parameters(write(tmp_path, text))
    assert p.dir_level2 == Path(dirs["DIR_LEVEL2"])
    assert p.file_queue is None and p.file_aoi is None
    assert p.do_topo is (dem == "dem_file")
    assert p.projection == "GLANCE7" and p.resampling == "CC" and p.res_merge == "IMPROPHE"
    assert p.tile_size == (30000.0, 30000.0)
    assert p.water_vapor == 0.0                 # NULL → 0, as in FORCE
    assert p.do_aod is True and p.dir_aod is None
    assert p.source == tmp_path / "level2.prm"


# ----------------------------------------------------------------------------- our skeleton
def fill_skeleton(text: str, dirs: dict) -> str:
    for key, value in dirs.items():
        text, n = re.subn(rf"^{key} = \S+$", f"{key} = {value}", text, flags=re.M)
        assert n == 1, key
    return text


def test_write_skeleton_round_trip(tmp_path, dirs):
    write_skeleton(tmp_path / "skel.prm")
    text = (tmp_path / "skel.prm").read_text()
    assert text.split()[0] == P.START_MARKER
    assert text.rstrip().endswith(P.END_MARKER)
    assert all(re.search(rf"^{k} = ", text, flags=re.M) for k in KEYS)
    assert text.count("\n# ") > 2 * len(KEYS)            # explained, not just listed
    # unfilled: the placeholder directories do not exist
    problems = problems_of(tmp_path / "skel.prm")
    assert {re.search(r": (\w+) = ", p).group(1) for p in problems} == set(DIR_KEYS) | {
        "FILE_QUEUE"}
    # filled: validates cleanly, values are FORCE's defaults (DO_TOPO off without a DEM)
    p = read_parameters(write(tmp_path, fill_skeleton(text, dirs)))
    for key in KEYS:
        if key in dirs or key == "DO_TOPO":
            continue
        expected = P.validate_parameter_text(prm_text(values(dirs)), check_paths=False)
        assert getattr(p, key.lower()) == getattr(expected, key.lower()), key
    assert p.do_topo is False and DEFAULTS["DO_TOPO"] == "TRUE"
    # write_parameters → read back equal
    P.write_parameters(p, tmp_path / "again.prm")
    assert read_parameters(tmp_path / "again.prm") == p
    P.write_parameters(p, tmp_path / "bare.prm", comments=False)
    assert read_parameters(tmp_path / "bare.prm") == p


def test_config_example_is_the_skeleton():
    path = REPO / "config" / "level2.prm"
    p = read_parameters(path, check_paths=False)
    q = P.validate_parameter_text(P.skeleton_text(), check_paths=False)
    assert p == q


# ----------------------------------------------------------------------------- syntax
def test_comments_anywhere_and_separators(tmp_path, dirs):
    v = values(dirs)
    text = prm_text(v)
    text = text.replace("RESAMPLING = CC", "RESAMPLING=BL# cubic is too slow = yes")
    text = text.replace("NTHREAD = 2", "  NTHREAD\t 4   # threads # more")
    text = text.replace("TIER = 1", "# TIER = 3\nTIER 2")
    text = text.replace(P.START_MARKER, "\n\n" + P.START_MARKER + "   # comment")
    p = read_parameters(write(tmp_path, text))
    assert p.resampling == "BL" and p.nthread == 4 and p.tier == 2


def test_crlf_is_tolerated(tmp_path, dirs):
    v = values(dirs, RESAMPLING="NN # comment")
    p_lf = read_parameters(write(tmp_path, prm_text(v), "lf.prm"))
    p_crlf = read_parameters(write(tmp_path, prm_text(v, eol="\r\n"), "crlf.prm"))
    assert p_crlf == p_lf
    assert p_crlf.resampling == "NN"
    assert p_crlf.dir_level2 == Path(dirs["DIR_LEVEL2"])        # no trailing \r


def test_missing_start_marker(tmp_path, dirs):
    text = prm_text(values(dirs)).replace(P.START_MARKER + "\n", "")
    problems = problems_of(write(tmp_path, text))
    assert len(problems) == 1
    assert problems[0].startswith("level2.prm:1: the file must start with ++PARAM_LEVEL2_START++")
    # a comment before the marker is not allowed either (the marker is the first token)
    problems = problems_of(write(tmp_path, "# my file\n" + prm_text(values(dirs))))
    assert len(problems) == 1 and "must start with" in problems[0]
    # another module's file
    tsa = prm_text(values(dirs)).replace(P.START_MARKER, "++PARAM_TSA_START++")
    problems = problems_of(write(tmp_path, tsa))
    assert problems == [problems[0]] and "TSA" in problems[0]
    # empty file
    assert "empty file" in problems_of(write(tmp_path, "\n \n"))[0]


def test_leading_blank_lines_and_no_end_marker(tmp_path, dirs):
    p = read_parameters(write(tmp_path, "\n\n  \n" + prm_text(values(dirs), end=False)))
    assert any("no ++PARAM_LEVEL2_END++" in w for w in p.warnings)
    assert p.lines["DIR_LEVEL2"] == 5


def test_duplicate_key_first_wins_with_warning(tmp_path, dirs):
    v = values(dirs)
    text = prm_text(v).replace(P.END_MARKER, "RESAMPLING = NN\n" + P.END_MARKER)
    p = read_parameters(write(tmp_path, text))
    assert p.resampling == "CC"
    dup = [w for w in p.warnings if "RESAMPLING" in w]
    assert len(dup) == 1
    assert f"first at line {line_of(v, 'RESAMPLING')}" in dup[0]
    assert dup[0].startswith(f"level2.prm:{len(v) + 2}: ")


def test_unknown_key_is_an_error_with_suggestion(tmp_path, dirs):
    v = values(dirs)
    text = prm_text(v).replace("RESAMPLING = CC", "RESAMPLING = CC\nRESAMPLNG = NN\n"
                                                  "max_cloud_cover_tile = 50\nFOO_BAR = 1")
    problems = problems_of(write(tmp_path, text))
    n = line_of(v, "RESAMPLING")
    assert problems == [
        f"level2.prm:{n + 1}: unknown key 'RESAMPLNG' (did you mean RESAMPLING?)",
        f"level2.prm:{n + 2}: unknown key 'max_cloud_cover_tile' "
        f"(did you mean MAX_CLOUD_COVER_TILE?)",
        f"level2.prm:{n + 3}: unknown key 'FOO_BAR' (not a key of FORCE's LEVEL2 file)",
    ]


def test_old_block_size_file(tmp_path, dirs):
    v = values(dirs, TILE_SIZE="30000")
    v["BLOCK_SIZE"] = "3000"
    problems = problems_of(write(tmp_path, prm_text(v)))
    assert len(problems) == 2
    assert "TILE_SIZE = '30000': expected 2 numbers (X Y), found 1" in problems[0]
    assert "BLOCK_SIZE is no longer a LEVEL2 key" in problems[1]


def test_missing_key(tmp_path, dirs):
    problems = problems_of(write(tmp_path, prm_text(values(dirs, NTHREAD=None))))
    assert len(problems) == 1
    assert problems[0].startswith("level2.prm: NTHREAD is missing")
    assert "NTHREAD = 2" in problems[0]


# ----------------------------------------------------------------------------- values
def test_bad_enum_message_names_file_line_key_value_and_choices(tmp_path, dirs):
    v = values(dirs, RESAMPLING="cubic")
    problems = problems_of(write(tmp_path, prm_text(v)))
    assert problems == [f"level2.prm:{line_of(v, 'RESAMPLING')}: RESAMPLING = 'cubic': "
                        f"expected one of NN, BL, CC"]
    # enums are case-sensitive, as in FORCE
    v = values(dirs, OUTPUT_FORMAT="GTIFF")
    (problem,) = problems_of(write(tmp_path, prm_text(v)))
    assert "expected one of ENVI, GTiff, COG, JPEG, CUSTOM" in problem
    assert "did you mean GTiff?" in problem


@pytest.mark.parametrize("key, value, expected", [
    ("TIER", "4", "expected an integer 1 to 3"),
    ("TIER", "1.5", "expected an integer 1 to 3"),
    ("MAX_CLOUD_COVER_FRAME", "0.5", "expected a number 1 to 100"),
    ("ORIGIN_LAT", "91", "expected a number -90 to 90"),
    ("WATER_VAPOR", "16", "expected a number 0 to 15"),
    ("CLOUD_BUFFER", "-1", "expected a number 0 to 10000"),
    ("DEM_NODATA", "40000", "expected an integer -32768 to 32767"),
    ("NTHREAD", "0", "expected an integer >= 1"),
    ("RESOLUTION_LANDSAT", "0", "expected a number > 0"),
    ("SHADOW_THRESHOLD", "abc", "expected a number 0 to 1"),
    ("DO_BRDF", "true", "expected TRUE or FALSE (upper case)"),
    ("DO_BRDF", "1", "expected TRUE or FALSE"),
])
def test_out_of_range_and_bad_types(tmp_path, dirs, key, value, expected):
    v = values(dirs, **{key: value})
    (problem,) = problems_of(write(tmp_path, prm_text(v)))
    assert problem == f"level2.prm:{line_of(v, key)}: {key} = {value!r}: {expected}"


def test_scalar_with_extra_tokens_is_an_error(tmp_path, dirs):
    v = values(dirs, DIR_LEVEL2=dirs["DIR_LEVEL2"] + " copy")
    (problem,) = problems_of(write(tmp_path, prm_text(v)))
    assert "expected a single value, found 2 tokens (a path cannot contain blanks)" in problem


def test_null_handling(tmp_path, dirs):
    v = values(dirs, FILE_AOI="NULL", DIR_COREG_BASE="NULL", WATER_VAPOR="NULL",
               FILE_QUEUE="NULL")
    p = read_parameters(write(tmp_path, prm_text(v)))
    assert p.file_aoi is None and p.dir_coreg_base is None and p.file_queue is None
    assert p.water_vapor == 0.0
    assert "WATER_VAPOR: 0.000000" in format_force_param(p)
    # NULL for a number without a documented meaning, for a directory, a bool, a vector
    v = values(dirs, NTHREAD="NULL", DIR_TEMP="NULL", DO_BRDF="NULL", TILE_SIZE="NULL")
    problems = problems_of(write(tmp_path, prm_text(v)))
    assert len(problems) == 4
    assert any("NTHREAD = 'NULL': expected an integer >= 1 (NULL is not a number)" in p
               for p in problems)
    assert any("DIR_TEMP = 'NULL': expected an existing directory" in p for p in problems)
    assert any("DO_BRDF = 'NULL': expected TRUE or FALSE" in p for p in problems)
    assert any("TILE_SIZE = 'NULL'" in p for p in problems)
    # a key without a value
    (problem,) = problems_of(write(tmp_path, prm_text(values(dirs, NPROC=""))))
    assert "NPROC has no value" in problem


def test_tile_size_needs_two_values(tmp_path, dirs):
    v = values(dirs, TILE_SIZE="30000 30000 30000")
    (problem,) = problems_of(write(tmp_path, prm_text(v)))
    assert problem == (f"level2.prm:{line_of(v, 'TILE_SIZE')}: TILE_SIZE = '30000 30000 30000': "
                       f"expected 2 numbers (X Y), found 3")


def test_projection_wkt_with_blanks(tmp_path, dirs):
    raw = WKT_3035_SPACES.replace(" / ", "  /   ")           # several blanks collapse to one
    v = values(dirs, PROJECTION=raw)
    p = read_parameters(write(tmp_path, prm_text(v)))
    assert p.projection == WKT_3035_SPACES
    assert p.grid_family is None and p.continent is None and not p.is_continental
    assert p.cube_tile_size == (30000.0, 30000.0)
    assert f"PROJECTION: {WKT_3035_SPACES}," in format_force_param(p)
    v = values(dirs, PROJECTION=WKT_3035_NOSPACE)
    assert read_parameters(write(tmp_path, prm_text(v))).projection == WKT_3035_NOSPACE


@pytest.mark.parametrize("value, expected", [
    ("+proj=laea +lat_0=52 +lon_0=10 +x_0=4321000 +y_0=3210000 +ellps=GRS80",
     "a PROJ string does not work here"),
    ("EPSG:3035", "an EPSG code does not work here"),
    ('PROJCS["broken",GEOGCS[', "not a valid WKT"),
    ("LAEA", "expected a WKT, EQUI7, GLANCE7"),
    ("EQUI7-XX", "unknown continent 'XX'"),
    ("NULL", "expected a WKT, EQUI7, GLANCE7"),
])
def test_bad_projection(tmp_path, dirs, value, expected):
    v = values(dirs, PROJECTION=value)
    (problem,) = problems_of(write(tmp_path, prm_text(v)))
    assert problem.startswith(f"level2.prm:{line_of(v, 'PROJECTION')}: PROJECTION = ")
    assert expected in problem


def test_tile_size_must_be_a_multiple_of_the_resolution(tmp_path, dirs):
    v = values(dirs, PROJECTION=WKT_3035_NOSPACE, TILE_SIZE="30000 25000",
               RESOLUTION_LANDSAT="30", RESOLUTION_SENTINEL2="20")
    (problem,) = problems_of(write(tmp_path, prm_text(v)))
    assert problem.startswith(f"level2.prm:{line_of(v, 'TILE_SIZE')}: TILE_SIZE = '30000 25000'")
    assert "the Y size 25000 must be a multiple of the resolution (RESOLUTION_LANDSAT = 30)" \
        in problem
    # within the tolerance of 0.005 m
    v = values(dirs, PROJECTION=WKT_3035_NOSPACE, TILE_SIZE="30000.004 30000")
    read_parameters(write(tmp_path, prm_text(v)))
    # DO_REPROJ = FALSE: the images' own 30/10 m count, RESOLUTION_* are ignored
    v = values(dirs, PROJECTION=WKT_3035_NOSPACE, DO_REPROJ="FALSE", RESOLUTION_LANDSAT="70")
    p = read_parameters(write(tmp_path, prm_text(v)))
    assert p.resolution("landsat") == 30.0 and p.resolution("sentinel2") == 10.0
    v = values(dirs, PROJECTION=WKT_3035_NOSPACE, DO_REPROJ="FALSE", TILE_SIZE="1005 1500")
    (problem,) = problems_of(write(tmp_path, prm_text(v)))
    assert "must be a multiple" in problem and "Landsat's own resolution = 30" in problem


def test_continental_grids_fix_the_tile_size(tmp_path, dirs):
    v = values(dirs, PROJECTION="EQUI7", RESOLUTION_LANDSAT="30")
    (problem,) = problems_of(write(tmp_path, prm_text(v)))
    assert problem.startswith(f"level2.prm:{line_of(v, 'RESOLUTION_LANDSAT')}: "
                              f"RESOLUTION_LANDSAT = '30': EQUI7 tiles are 100000 m")
    assert "(e.g. 25)" in problem
    v = values(dirs, PROJECTION="EQUI7-EU", RESOLUTION_LANDSAT="25", TILE_SIZE="123 456")
    p = read_parameters(write(tmp_path, prm_text(v)))       # TILE_SIZE is ignored
    assert (p.grid_family, p.continent, p.is_continental) == ("EQUI7", "EU", True)
    assert p.cube_tile_size == (100000.0, 100000.0)
    v = values(dirs, PROJECTION="GLANCE7-AF")                # FORCE's suffix bug is fixed
    p = read_parameters(write(tmp_path, prm_text(v)))
    assert (p.grid_family, p.continent) == ("GLANCE7", "AF")
    assert p.cube_tile_size == (150000.0, 150000.0)


def test_grid_family():
    assert grid_family("EQUI7") == ("EQUI7", None)
    assert grid_family("GLANCE7") == ("GLANCE7", None)
    assert grid_family("EQUI7-OC") == ("EQUI7", "OC")
    assert grid_family(WKT_3035_NOSPACE) == (None, None)
    with pytest.raises(ValueError):
        grid_family("GLANCE7-EUROPE")


# ----------------------------------------------------------------------------- couplings
def test_do_topo_without_dem(tmp_path, dirs):
    v = values(dirs, DO_TOPO="TRUE", FILE_DEM="NULL")
    (problem,) = problems_of(write(tmp_path, prm_text(v)))
    assert problem.startswith(f"level2.prm:{line_of(v, 'DO_TOPO')}: DO_TOPO = TRUE needs "
                              f"FILE_DEM (a DEM file); FILE_DEM is NULL")
    # a DEM that does not exist
    v = values(dirs, DO_TOPO="TRUE", FILE_DEM=str(tmp_path / "nodem.tif"))
    (problem,) = problems_of(write(tmp_path, prm_text(v)))
    assert "FILE_DEM = " in problem and "does not exist (needed for DO_TOPO = TRUE)" in problem


def test_do_atmo_false_switches_off_the_rest(tmp_path, dirs):
    v = values(dirs, DO_ATMO="FALSE", DO_TOPO="TRUE", FILE_DEM="NULL")
    p = read_parameters(write(tmp_path, prm_text(v)))
    assert (p.do_atmo, p.do_aod, p.do_brdf, p.do_topo, p.adjacency_effect) == (False,) * 5
    assert p.multi_scattering is True                       # not part of the override
    assert any("DO_ATMO = FALSE switches off" in w for w in p.warnings)
    # FORCE_param logs the values of the file, before the override
    fp = format_force_param(p)
    assert "DO_TOPO: 1" in fp and "DO_ATMO: 0" in fp and "DO_BRDF: 1" in fp


def test_do_aod_false_needs_no_dir_aod(tmp_path, dirs):
    p = read_parameters(write(tmp_path, prm_text(values(dirs, DO_AOD="FALSE", DIR_AOD="NULL"))))
    assert p.do_aod is False and p.dir_aod is None


def test_dem_database_and_custom_format(tmp_path, dirs):
    v = values(dirs, USE_DEM_DATABASE="TRUE", OUTPUT_FORMAT="CUSTOM")
    problems = problems_of(write(tmp_path, prm_text(v)))
    assert len(problems) == 2
    assert "USE_DEM_DATABASE = TRUE needs FILE_DEM" in problems[0]
    assert "OUTPUT_FORMAT = CUSTOM needs FILE_OUTPUT_OPTIONS" in problems[1]
    (tmp_path / "dem").mkdir()
    (tmp_path / "opts.txt").write_text("DRIVER = GTiff\nEXTENSION = tif\n")
    v = values(dirs, USE_DEM_DATABASE="TRUE", FILE_DEM=str(tmp_path / "dem" / "dem.vrt"))
    (problem,) = problems_of(write(tmp_path, prm_text(v)))
    assert "does not exist" in problem
    v = values(dirs, USE_DEM_DATABASE="TRUE", FILE_DEM=str(tmp_path / "dem"),
               OUTPUT_FORMAT="CUSTOM", FILE_OUTPUT_OPTIONS=str(tmp_path / "opts.txt"))
    p = read_parameters(write(tmp_path, prm_text(v)))
    assert p.output_format == "CUSTOM" and p.file_output_options == tmp_path / "opts.txt"


def test_paths_must_exist_unless_check_paths_is_false(tmp_path, dirs):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    v = values(dirs, FILE_QUEUE=str(tmp_path / "missing_queue.txt"), DIR_LOG=str(a_file),
               DIR_WVPLUT=str(tmp_path / "nowvp"), FILE_TILE=str(tmp_path))
    path = write(tmp_path, prm_text(v))
    problems = problems_of(path)
    assert len(problems) == 4
    assert any("FILE_QUEUE = " in p and "does not exist" in p for p in problems)
    assert any("DIR_LOG = " in p and "is not a directory" in p for p in problems)
    assert any("DIR_WVPLUT = " in p and "does not exist" in p for p in problems)
    assert any("FILE_TILE = " in p and "is a directory" in p for p in problems)
    p = read_parameters(path, check_paths=False)
    assert p.file_queue == tmp_path / "missing_queue.txt"


def test_all_problems_are_reported_at_once_in_file_order(tmp_path, dirs):
    v = values(dirs, TIER="7", RESAMPLING="CUBIC", DO_TOPO="TRUE")
    text = prm_text(v).replace("NPROC = 32", "NPROCS = 32")
    with pytest.raises(ParameterError) as exc:
        read_parameters(write(tmp_path, text))
    problems = exc.value.problems
    assert len(problems) == 5          # TIER, RESAMPLING, DO_TOPO, NPROCS unknown, NPROC missing
    lines = [int(m.group(1)) for p in problems if (m := re.match(r"level2\.prm:(\d+):", p))]
    assert lines == sorted(lines) and len(lines) == 4
    assert lines == sorted([line_of(v, "TIER"), line_of(v, "RESAMPLING"),
                            line_of(v, "DO_TOPO"), line_of(v, "NPROC")])
    assert problems[-1].startswith("level2.prm: NPROC is missing")
    message = str(exc.value)
    assert str(tmp_path / "level2.prm") in message and "5 problems" in message
    assert isinstance(exc.value, L2psError)


def test_three_problems_three_reports(tmp_path, dirs):
    v = values(dirs, RESAMPLING="XX", TILE_SIZE="30000", CLOUD_THRESHOLD="2")
    assert len(problems_of(write(tmp_path, prm_text(v)))) == 3


def test_unreadable_file(tmp_path):
    with pytest.raises(ParameterError, match="cannot read parameter file"):
        read_parameters(tmp_path / "nope.prm")


# ----------------------------------------------------------------------------- FORCE_param
def test_format_force_param_codes_and_order(tmp_path, dirs):
    v = values(dirs, RESAMPLING="CC", RES_MERGE="STARFM", OUTPUT_FORMAT="GTiff",
               DEM_RESAMPLING="NN", OUTPUT_DST="TRUE", NTHREAD="8", CLOUD_THRESHOLD="0.3",
               FILE_AOI="NULL")
    p = read_parameters(write(tmp_path, prm_text(v)))
    text = format_force_param(p)
    items = text.split(", ")
    assert [i.split(": ", 1)[0] for i in items] == list(KEYS)
    d = dict(i.split(": ", 1) for i in items)
    assert d["RESAMPLING"] == "2"
    assert d["RES_MERGE"] == "3"
    assert d["OUTPUT_FORMAT"] == "1"
    assert d["DEM_RESAMPLING"] == "0"
    assert d["OUTPUT_DST"] == "1" and d["OUTPUT_AOD"] == "0"
    assert d["NTHREAD"] == "8" and d["TIER"] == "1"
    assert d["CLOUD_THRESHOLD"] == "0.300000"
    assert d["TILE_SIZE"] == "30000.000000 30000.000000"
    assert d["FILE_AOI"] == "NULL"
    assert d["DIR_LEVEL2"] == dirs["DIR_LEVEL2"]
    assert d["PROJECTION"] == "GLANCE7"


# ----------------------------------------------------------------------------- API helpers
def test_replace_to_dict_resolution_and_validate(tmp_path, dirs):
    p = read_parameters(write(tmp_path, prm_text(values(dirs))))
    assert p.lines["RESAMPLING"] == line_of(values(dirs), "RESAMPLING")
    q = p.replace(nthread=8)
    assert q.nthread == 8 and p.nthread == 2 and q != p
    d = p.to_dict()
    assert list(d) == [k.lower() for k in KEYS]
    assert d["tile_size"] == [30000.0, 30000.0] and d["dir_level2"] == dirs["DIR_LEVEL2"]
    assert d["file_aoi"] is None and d["do_atmo"] is True
    json.dumps(d)
    assert p.resolution("landsat") == 30.0 and p.resolution("sentinel2") == 10.0
    assert p.resolution("Sentinel-2") == 10.0
    with pytest.raises(ValueError):
        p.resolution("modis")
    assert P.validate(q) == q
    with pytest.raises(ParameterError, match="TIER = '5'"):
        P.validate(p.replace(tier=5))
    # equality ignores the bookkeeping
    assert p == p.replace(source=None, lines={}, warnings=("x",))
    hash(p)
