"""EQUI7 / GLANCE7 continental grids (spec 03 §2.5; docs/grids.md)."""
from __future__ import annotations

import re
import warnings
from importlib import resources

import numpy as np
import pytest
from pyproj import CRS, Transformer

from l2ps.cube import continental as C
from l2ps.cube.grid import Datacube
from l2ps.errors import GridError

ABBRS = [a for a, _ in C.CONTINENTS]
ALL = [(f, a) for f in C.FAMILIES for a in ABBRS]


def scene(lon, lat, half=0.9):
    """4 corners (ring order) of a ~200 km lon/lat box around (lon, lat)."""
    return np.array([[lon - half, lat - half], [lon + half, lat - half],
                     [lon + half, lat + half], [lon - half, lat + half]])


def names(cubes):
    return [c.name for c in cubes]


# ------------------------------------------------------------------ constants, names
def test_families_and_continents_in_force_order():
    assert C.FAMILIES == ("EQUI7", "GLANCE7")
    assert [a for a, _ in C.CONTINENTS] == ["AF", "AN", "AS", "EU", "NA", "OC", "SA"]
    assert [n for _, n in C.CONTINENTS] == ["africa", "antarctica", "asia", "europe",
                                            "n-america", "oceania", "s-america"]


@pytest.mark.parametrize("s,expected", [
    ("EQUI7", ("EQUI7", None)), ("EQUI7-EU", ("EQUI7", "EU")), ("GLANCE7", ("GLANCE7", None)),
    ("GLANCE7-AF", ("GLANCE7", "AF")), (" glance7-sa ", ("GLANCE7", "SA")),
    ("GLANCE-AF", None), ("EQUI7-XX", None), ("EQUI7EU", None), ("PROJCS[...]", None),
    ("", None), (None, None)])
def test_parse_projection_name(s, expected):
    assert C.parse_projection_name(s) == expected


# ------------------------------------------------------------------ cubes: WKT and origins
def test_cube_fields_and_tile_sizes():
    for fam, ab in ALL:
        c = C.continental_cube(fam, ab)
        assert isinstance(c, Datacube)
        assert c.name == dict(C.CONTINENTS)[ab]
        assert c.tile_x == c.tile_y == {"EQUI7": 100000.0, "GLANCE7": 150000.0}[fam]
    assert [c.name for c in C.continental_cubes("GLANCE7")][3] == "europe"


def test_map_origins_of_spec_tables():
    # spec 03 §2.5, ORIGIN_MAP columns
    equi7_y = dict(AF=9400000, AN=8800000, AS=9700000, EU=5600000, NA=9900000, OC=12200000,
                   SA=10600000)
    glance = dict(AF=(-5312270, 3707205), AN=(-3662210, 5169375), AS=(-4805840, 5190735),
                  EU=(-5505560, 3346245), NA=(-6961010, 4078425), OC=(-7633670, 5076465),
                  SA=(-6918770, 4899705))
    for ab in ABBRS:
        c = C.continental_cube("EQUI7", ab)
        assert (c.origin_x, c.origin_y) == (0.0, float(equi7_y[ab]))
        g = C.continental_cube("GLANCE7", ab)
        assert (g.origin_x, g.origin_y) == tuple(map(float, glance[ab]))


def test_geo_origins_by_inverse_projection_match_spec():
    for (fam, ab), (lon, lat) in C.SPEC_ORIGIN_GEO.items():
        c = C.continental_cube(fam, ab)
        assert abs(c.origin_lon - lon) < 1e-4 and abs(c.origin_lat - lat) < 1e-4, (fam, ab)


def test_equi7_wkt_is_the_exact_template():
    eu = ('PROJCS["Azimuthal_Equidistant",GEOGCS["GCS_WGS_1984",DATUM["D_WGS_1984",SPHEROID'
          '["WGS_1984",6378137.0,298.257223563]],PRIMEM["Greenwich",0.0],UNIT["Degree",'
          '0.0174532925199433]],PROJECTION["Azimuthal_Equidistant"],PARAMETER["false_easting",'
          '5837287.81977],PARAMETER["false_northing",2121415.69617],PARAMETER['
          '"longitude_of_center",24.0],PARAMETER["latitude_of_center",53.0],UNIT["Meter",1.0]]')
    assert C.continental_cube("EQUI7", "EU").wkt == eu
    oc = C.continental_wkt("EQUI7", "OC")
    assert 'UNIT["Degree",0.017453292519943295]' in oc
    assert 'PARAMETER["false_easting",6988408.5356]' in oc
    assert 'PARAMETER["longitude_of_center",-97.5]' in C.continental_wkt("EQUI7", "NA")
    assert 'PARAMETER["latitude_of_center",-90.0]' in C.continental_wkt("EQUI7", "AN")
    for ab in ABBRS:
        w = C.continental_wkt("EQUI7", ab)
        assert " " not in w
        assert ("0.017453292519943295" in w) == (ab == "OC")


def test_glance7_wkt_is_the_exact_template():
    w = C.continental_wkt("GLANCE7", "NA")
    assert w.startswith('PROJCS["BU MEaSUREs Lambert Azimuthal Equal Area - NA - V01",'
                        'GEOGCS["GCS_WGS_1984",')
    assert 'UNIT["degree",0.0174532925199433]],PROJECTION["Lambert_Azimuthal_Equal_Area"]' in w
    assert w.endswith('PARAMETER["false_easting",0.0],PARAMETER["false_northing",0.0],'
                      'PARAMETER["longitude_of_center",-100],'
                      'PARAMETER["latitude_of_center",50],UNIT["meter",1.0]]')
    assert 'PARAMETER["latitude_of_center",-90]' in C.continental_wkt("GLANCE7", "AN")


@pytest.mark.parametrize("fam,ab", ALL)
def test_wkt_parses_and_round_trips(fam, ab):
    crs = CRS.from_wkt(C.continental_wkt(fam, ab))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pj = crs.to_dict()
    assert pj["proj"] == {"EQUI7": "aeqd", "GLANCE7": "laea"}[fam]
    lon0, lat0 = C.projection_centre(fam, ab)
    assert (pj["lon_0"], pj["lat_0"]) == (lon0, lat0)
    fwd = Transformer.from_crs(4326, crs, always_xy=True)
    inv = Transformer.from_crs(crs, 4326, always_xy=True)
    c = C.continental_cube(fam, ab)
    x, y = fwd.transform(c.origin_lon, c.origin_lat)
    # PROJ's LAEA inverse (authalic-latitude series) is good to ~2 mm 9000 km off centre
    assert abs(x - c.origin_x) < 1e-2 and abs(y - c.origin_y) < 1e-2
    lon, lat = lon0 + 3.0, (lat0 + 2.0 if lat0 < 80 else 85.0)
    if lat0 == -90:
        lat = -80.0
    x, y = fwd.transform(lon, lat)
    assert np.allclose(inv.transform(x, y), (lon, lat), atol=1e-9)
    if fam == "GLANCE7":           # LAEA, FE = FN = 0: the centre is the map origin (0, 0)
        assert np.allclose(fwd.transform(lon0, lat0), (0, 0), atol=1e-6)


# ------------------------------------------------------------------ tile tables vs spec
#: |count − spec| / spec allowed, per table (docs/grids.md explains every value above 0.5 %).
COUNT_TOL = {("EQUI7", "EU"): 0.021, ("EQUI7", "OC"): 0.011, ("GLANCE7", "AS"): 0.006,
             ("GLANCE7", "EU"): 0.017, ("GLANCE7", "NA"): 0.044, ("GLANCE7", "OC"): 0.037}
#: Ranges (inside the spec rectangle) that differ from spec 03 §2.5: (Xmin, Xmax, Ymin, Ymax).
RANGE_DEVIATIONS = {("EQUI7", "OC"): (6, 187, 0, 121), ("GLANCE7", "AS"): (1, 75, 2, 63),
                    ("GLANCE7", "NA"): (0, 80, 0, 57), ("GLANCE7", "OC"): (7, 112, 7, 74)}


def _in_spec_range(fam, ab):
    n, (xa, xb), (ya, yb) = C.SPEC_TABLES[(fam, ab)]
    t = C.tile_table(fam, ab)
    sel = (t[:, 0] >= xa) & (t[:, 0] <= xb) & (t[:, 1] >= ya) & (t[:, 1] <= yb)
    return n, t, t[sel]


def test_spec_reference_counts():
    assert [C.SPEC_TABLES[("EQUI7", a)][0] for a in ABBRS] == [8603, 6793, 7089, 2823, 9185,
                                                              13829, 8645]
    assert [C.SPEC_TABLES[("GLANCE7", a)][0] for a in ABBRS] == [3623, 2909, 3040, 1248,
                                                                3853, 5359, 3648]


@pytest.mark.parametrize("fam,ab", ALL)
def test_table_counts_within_tolerance(fam, ab):
    n, t, ti = _in_spec_range(fam, ab)
    assert t.dtype.kind == "i" and t.shape[1] == 2
    assert len(np.unique(t, axis=0)) == len(t)
    tol = COUNT_TOL.get((fam, ab), 0.005)
    assert abs(len(ti) - n) / n <= tol, (fam, ab, len(ti), n)
    # the tolerance is not slack: the worst table uses most of it
    if (fam, ab) in COUNT_TOL:
        assert abs(len(ti) - n) / n > tol - 0.005


@pytest.mark.parametrize("fam,ab", ALL)
def test_table_ranges_match_spec(fam, ab):
    _, (xa, xb), (ya, yb) = C.SPEC_TABLES[(fam, ab)]
    _, _, ti = _in_spec_range(fam, ab)
    got = (int(ti[:, 0].min()), int(ti[:, 0].max()), int(ti[:, 1].min()), int(ti[:, 1].max()))
    assert got == RANGE_DEVIATIONS.get((fam, ab), (xa, xb, ya, yb))


def test_equi7_origin_rule_reproduces_spec_origins():
    # origin_map.y = (max V13 row + 1) * 1e5, rows counted from the bottom (lly / 1e5):
    # the top table row of the spec range is FORCE Y = 0 and the bottom row has lly = 0.
    for ab in ABBRS:
        c = C.continental_cube("EQUI7", ab)
        _, _, ti = _in_spec_range("EQUI7", ab)
        rows = (c.origin_y - (ti[:, 1] + 1) * c.tile_y) / 1e5
        assert rows.min() == 0 and (rows.max() + 1) * 1e5 == c.origin_y


def test_glance7_origins_are_not_tile_multiples():
    # GLANCE origins are the published grid corners, not (max Y + 1) * tile size
    for ab in ABBRS:
        c = C.continental_cube("GLANCE7", ab)
        assert c.origin_y % 150000 != 0 and c.origin_x % 150000 != 0


def test_table_file_is_small_and_documented():
    ref = resources.files("l2ps") / "data" / C.TABLE_FILE
    assert ref.is_file() and len(ref.read_bytes()) < 100_000
    meta = C.table_metadata()
    assert meta["script"] == "tools/make_continental_tables.py"
    assert "equi7grid_version" in meta and meta["min_overlap_m2"] > 0


def test_tables_cover_the_whole_globe():
    # The Equi7 zones partition the globe, so (like FORCE's V13 tables, 112 % of the
    # Earth's area) every point lies in some continent's table.
    lon, lat = np.meshgrid(np.arange(-178.5, 180, 3.0), np.arange(-88.5, 90, 3.0))
    lon, lat = lon.ravel(), lat.ravel()
    for fam in C.FAMILIES:
        covered = np.zeros(lon.size, bool)
        for ab in ABBRS:
            x, y = C.lonlat_to_tile(fam, ab, lon, lat)
            covered |= C.in_table(fam, ab, x, y)
        assert covered.all(), (fam, lon[~covered][:5], lat[~covered][:5])


# ------------------------------------------------------------------ points in EU tiles
@pytest.mark.parametrize("place,lon,lat", [
    ("Berlin", 13.405, 52.52), ("Sicily", 14.0, 37.6), ("Lisbon", -9.14, 38.72),
    ("Nordkapp", 25.78, 71.17)])
@pytest.mark.parametrize("fam", C.FAMILIES)
def test_european_places_in_eu_table(place, lon, lat, fam):
    x, y = C.lonlat_to_tile(fam, "EU", lon, lat)
    assert C.in_table(fam, "EU", x, y).all()
    c = C.continental_cube(fam, "EU")
    # the tile really contains the point
    px, py = Transformer.from_crs(4326, CRS.from_wkt(c.wkt), always_xy=True).transform(lon, lat)
    assert c.origin_x + x[()] * c.tile_x <= px < c.origin_x + (x[()] + 1) * c.tile_x
    assert c.origin_y - (y[()] + 1) * c.tile_y <= py < c.origin_y - y[()] * c.tile_y


def test_berlin_equi7_tile_id_and_dictionary_entry():
    x, y = C.lonlat_to_tile("EQUI7", "EU", 13.405, 52.52)
    assert (int(x), int(y)) == (51, 34)
    assert "X0051_Y0034 E7G_EU_051_021_T1" in C.equi7_dictionary_lines("EU")


def test_tile_find_boundary_rule():
    assert list(C._tile_index(np.array([0.0, 1.0, 30.0, 31.0, -1.0, -30.0, -31.0]), 30.0)) \
        == [0, 0, 0, 1, -1, -1, -2]
    assert C._tile_index(np.array([np.inf, np.nan]), 30.0).tolist() == [C.NO_TILE] * 2
    assert not C.in_table("EQUI7", "EU", C.NO_TILE, 0).any()
    assert C.tile_id(-1, 12) == "X-001_Y0012" and C.tile_id(3, 4) == "X0003_Y0004"


def test_equi7_dictionary_lines():
    for ab in ABBRS:
        lines = C.equi7_dictionary_lines(ab)
        t = C.tile_table("EQUI7", ab)
        assert len(lines) == len(t)
    lines = C.equi7_dictionary_lines("SA")
    pat = re.compile(r"^X(\d{4})_Y(\d{4}) E7G_SA_(\d{3})_(\d{3})_T1$")
    oy = C.continental_cube("EQUI7", "SA").origin_y
    for line in lines:
        m = pat.match(line)
        assert m, line
        x, y, llx, lly = map(int, m.groups())
        assert llx == x and lly * 1e5 == oy - (y + 1) * 1e5
    with pytest.raises(GridError):
        C.equi7_dictionary_lines("XX")


# ------------------------------------------------------------------ continent assignment
@pytest.mark.parametrize("fam", C.FAMILIES)
def test_scene_in_germany_is_europe_only(fam):
    cubes = C.covered_continents(fam, scene(10.0, 51.0))
    assert names(cubes) == ["europe"]
    assert cubes[0] == C.continental_cube(fam, "EU")


@pytest.mark.parametrize("fam", C.FAMILIES)
def test_strait_of_gibraltar_is_africa_and_europe(fam):
    assert names(C.covered_continents(fam, scene(-5.6, 35.95))) == ["africa", "europe"]


@pytest.mark.parametrize("fam", C.FAMILIES)
def test_mid_pacific_scene(fam):
    # The zones partition the globe (as FORCE's tables do): the open Pacific is Oceania.
    # Outside the selected continent(s) the result is empty.
    pac = scene(-150.0, -10.0)
    assert names(C.covered_continents(fam, pac)) == ["oceania"]
    assert C.covered_continents(fam, pac, "EU") == []
    assert C.covered_continents(f"{fam}-NA", pac) == []
    with pytest.raises(GridError, match=r"lon -150\.9000\.\.-149\.1000.*outside every"):
        C.require_continents(f"{fam}-EU", pac, image="LC08_X")


def test_glance7_suffix_selects_one_continent():
    # FORCE's bug (GLANCE7-XX matches nothing) is fixed
    assert names(C.covered_continents("GLANCE7-EU", scene(10.0, 51.0))) == ["europe"]
    assert names(C.covered_continents("GLANCE7", scene(-5.6, 35.95), "EU")) == ["europe"]
    assert names(C.covered_continents("GLANCE7-AF", scene(-5.6, 35.95))) == ["africa"]
    assert C.covered_continents("GLANCE7-EU", scene(10.0, 20.0)) == []   # Sahara
    assert names(C.covered_continents("EQUI7", scene(10.0, 51.0), "EQUI7-EU")) == ["europe"]
    with pytest.raises(GridError):
        C.covered_continents("EQUI7-EU", scene(10.0, 51.0), "AF")
    with pytest.raises(GridError):
        C.covered_continents("UTM", scene(10.0, 51.0))


def test_antipode_of_a_projection_centre_is_not_covered():
    # (−158.5, −8.5) is the antipode of the EQUI7 AF centre: the azimuthal projection
    # spreads a small scene around a 20 000 km circle whose bounding box holds all of
    # Africa's tiles; FORCE would call that "covered".
    sc = scene(-158.5, -8.5, 0.5)
    pts = C.footprint_lonlat(sc)
    assert C.scene_tile_range("EQUI7", "AF", pts) is None
    assert "africa" not in names(C.covered_continents("EQUI7", sc))


def test_antimeridian_scene():
    sc = np.array([[179.2, -17.5], [-179.2, -17.5], [-179.2, -16.0], [179.2, -16.0]])
    pts = C.footprint_lonlat(sc)
    assert np.ptp(pts[:, 0]) < 2.0                      # unwrapped, not around the globe
    x0, x1, _, _ = C.scene_tile_range("EQUI7", "OC", pts)
    assert x1 - x0 <= 3
    assert names(C.covered_continents("EQUI7", sc)) == ["oceania"]


def test_utm_corners_with_src_crs_and_polygon_input():
    shapely = pytest.importorskip("shapely")
    # Sentinel-2 tile 32UQD (UTM 32N), Berlin area
    x0, y0 = 699960.0, 5800020.0
    corners = np.array([[x0, y0], [x0 + 109800, y0], [x0 + 109800, y0 - 109800],
                        [x0, y0 - 109800]])
    assert names(C.covered_continents("EQUI7", corners, src_crs="EPSG:32632")) == ["europe"]
    poly = shapely.Polygon(scene(10.0, 51.0))
    assert names(C.covered_continents("GLANCE7", poly)) == ["europe"]


def test_densified_edges_catch_a_bulging_edge():
    # A wide scene at high latitude: its southern edge (a parallel) bulges south of the
    # corners in the EU projection, so corners alone (FORCE, spec 03 P7) miss a tile row.
    sc = np.array([[0.0, 66.0], [40.0, 66.0], [40.0, 70.0], [0.0, 70.0]])
    r0 = C.scene_tile_range("EQUI7", "EU", C.footprint_lonlat(sc, densify=0))
    r1 = C.scene_tile_range("EQUI7", "EU", C.footprint_lonlat(sc))
    assert r0 == (47, 65, 14, 19)
    assert r1 == (47, 65, 14, 20)
