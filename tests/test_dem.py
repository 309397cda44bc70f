"""DEM input: warping any DEM to the processing grid, nodata, coverage, database, ocean fill,
smoothing (spec 01 §4.1–§4.3, spec 02 §5)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.transform import from_origin

from l2ps.aux import dem as D
from l2ps.errors import AuxiliaryError
from l2ps.grid import Grid

UTM33 = CRS.from_epsg(32633)
# image: UTM 33N, 30 m, 6 km × 6 km near 52.3° N, 13.5° E
GRID = Grid(UTM33.to_wkt(), 400020.0, 5800020.0, 30.0, 30.0, 200, 200)


def surface(lon, lat):
    """Analytic terrain z = f(lon, lat) in m: waves of ≈3.4 km and ≈4.4 km."""
    lon = np.asarray(lon, np.float64)
    lat = np.asarray(lat, np.float64)
    return (500.0 + 200.0 * np.sin(2 * np.pi * (lon - 13.0) / 0.05)
            * np.cos(2 * np.pi * (lat - 52.0) / 0.04) + 1000.0 * (lat - 52.3))


def pixel_lonlat(grid: Grid):
    ii, jj = np.meshgrid(np.arange(grid.ny), np.arange(grid.nx), indexing="ij")
    x, y = grid.xy(ii, jj)
    tr = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    return tr.transform(x, y)


def write_tif(path, data, crs, transform, nodata=None, dtype=None):
    data = np.asarray(data)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0],
                       count=1, dtype=dtype or data.dtype, crs=crs, transform=transform,
                       nodata=nodata) as ds:
        ds.write(data.astype(dtype or data.dtype), 1)
    return path


def geographic_dem(path, res=0.0003, margin=0.01, nodata=None, hole=None, dtype="float32"):
    tr = Transformer.from_crs(GRID.crs, "EPSG:4326", always_xy=True)
    lo, la = tr.transform(GRID.corners()[:, 0], GRID.corners()[:, 1])
    west, east = min(lo) - margin, max(lo) + margin
    south, north = min(la) - margin, max(la) + margin
    nx = int(math.ceil((east - west) / res))
    ny = int(math.ceil((north - south) / res))
    lon = west + (np.arange(nx) + 0.5) * res
    lat = north - (np.arange(ny) + 0.5) * res
    z = surface(lon[None, :], lat[:, None])
    if hole is not None:                    # (lon0, lon1, lat0, lat1) set to nodata
        m = ((lon[None, :] > hole[0]) & (lon[None, :] < hole[1])
             & (lat[:, None] > hole[2]) & (lat[:, None] < hole[3]))
        z[m] = nodata
    return write_tif(path, z, "EPSG:4326", from_origin(west, north, res, res), nodata, dtype)


def utm_dem(path, epsg, res, margin=2000.0):
    """A DEM in another CRS (e.g. UTM 32N): z evaluated at its own pixel centres."""
    tr = Transformer.from_crs(GRID.crs, CRS.from_epsg(epsg), always_xy=True)
    x, y = tr.transform(GRID.corners()[:, 0], GRID.corners()[:, 1])
    x0 = math.floor((min(x) - margin) / res) * res
    y1 = math.ceil((max(y) + margin) / res) * res
    nx = int(math.ceil((max(x) + margin - x0) / res))
    ny = int(math.ceil((y1 - (min(y) - margin)) / res))
    xs = x0 + (np.arange(nx) + 0.5) * res
    ys = y1 - (np.arange(ny) + 0.5) * res
    back = Transformer.from_crs(CRS.from_epsg(epsg), "EPSG:4326", always_xy=True)
    lon, lat = back.transform(*np.meshgrid(xs, ys))
    return write_tif(path, surface(lon, lat).astype(np.float32), f"EPSG:{epsg}",
                     from_origin(x0, y1, res, res))


# ------------------------------------------------------------------ warping
@pytest.mark.parametrize("method, tol_rms, tol_max", [("BL", 0.2, 0.5), ("CC", 0.2, 0.5),
                                                      ("NN", 5.0, 12.0)])
def test_geographic_dem_warps_to_utm(tmp_path, method, tol_rms, tol_max):
    path = geographic_dem(tmp_path / "geo.tif")
    z = D.read_dem(path, GRID, resampling=method)
    assert z.dtype == np.float32 and z.shape == GRID.shape
    truth = surface(*pixel_lonlat(GRID))
    err = z - truth
    assert np.isfinite(z).all()
    # 0.0003° ≈ 20 × 33 m pixels; bilinear error ≤ h²/8·|z''| ≈ 0.3 m for these waves;
    # slopes up to ≈0.5 m/m: NN errs by up to half a source pixel
    assert float(np.sqrt(np.mean(err ** 2))) < tol_rms
    assert float(np.abs(err).max()) < tol_max


def test_utm_dem_of_another_zone_at_90m(tmp_path):
    path = utm_dem(tmp_path / "utm32.tif", 32632, 90.0)
    z = D.read_dem(path, GRID, resampling="BL")
    truth = surface(*pixel_lonlat(GRID))
    err = z - truth
    # bilinear between 90 m nodes of a 3.4 km wave of amplitude 200 m: |error| ≲ 2 m
    assert float(np.sqrt(np.mean(err ** 2))) < 1.0
    assert float(np.abs(err).max()) < 3.0
    # and the nearest grid cell would be far worse: this really interpolated
    z_nn = D.read_dem(path, GRID, resampling="NN")
    assert float(np.sqrt(np.mean((z_nn - truth) ** 2))) > 2 * float(np.sqrt(np.mean(err ** 2)))


def test_integer_dem_with_nodata_holes(tmp_path):
    lon, lat = pixel_lonlat(GRID)
    clon, clat = float(np.mean(lon)), float(np.mean(lat))
    hole = (clon - 0.005, clon + 0.005, clat - 0.004, clat + 0.004)
    path = geographic_dem(tmp_path / "holes.tif", nodata=-32767, hole=hole, dtype="int16")
    z = D.read_dem(path, GRID, nodata=-32767, resampling="BL")
    inside = (lon > hole[0] + 0.001) & (lon < hole[1] - 0.001) & \
        (lat > hole[2] + 0.001) & (lat < hole[3] - 0.001)
    outside = (lon < hole[0] - 0.001) | (lon > hole[1] + 0.001) | \
        (lat < hole[2] - 0.001) | (lat > hole[3] + 0.001)
    assert inside.sum() > 200 and np.isnan(z[inside]).all()
    assert np.isfinite(z[outside]).all()
    truth = surface(lon, lat)
    assert float(np.abs(z[outside] - truth[outside]).max()) < 1.5   # int16 truncation (≤ 1 m) + BL


def test_dem_nodata_parameter_without_file_nodata(tmp_path):
    # the file declares no nodata: DEM_NODATA decides
    z = np.full((50, 50), 300, np.int16)
    z[10:20, 10:20] = -9999
    path = write_tif(tmp_path / "nd.tif", z, UTM33, from_origin(GRID.x0 - 300, GRID.y0 + 300,
                                                                200, 200))
    small = GRID.window(0, 0, 150, 150)
    out = D.read_dem(path, small, nodata=-9999, resampling="NN")
    assert np.isnan(out).any() and np.nanmin(out) == 300


def test_dem_not_covering_the_image_is_an_error(tmp_path):
    far = write_tif(tmp_path / "far.tif", np.ones((20, 20), np.float32), UTM33,
                    from_origin(600000, 5900000, 90, 90))
    with pytest.raises(AuxiliaryError) as e:
        D.read_dem(far, GRID)
    msg = str(e.value)
    assert "far.tif" in msg and "does not cover" in msg and "600000" in msg and "400020" in msg


def test_dem_all_nodata_inside_the_image_is_an_error(tmp_path):
    path = write_tif(tmp_path / "empty.tif", np.full((80, 80), -32767, np.int16), UTM33,
                     from_origin(GRID.x0 - 600, GRID.y0 + 600, 90, 90), nodata=-32767)
    with pytest.raises(AuxiliaryError, match="no valid elevation"):
        D.read_dem(path, GRID)


def test_partial_cover_leaves_nodata(tmp_path):
    # DEM covers only the western half of the image
    path = write_tif(tmp_path / "west.tif", np.full((120, 60), 250.0, np.float32), UTM33,
                     from_origin(GRID.x0 - 300, GRID.y0 + 300, 60, 60))
    z = D.read_dem(path, GRID, resampling="BL")
    cols_cov = int(math.floor((GRID.x0 - 300 + 60 * 60 - GRID.x0) / 30))   # 110 columns
    assert np.isfinite(z[:, : cols_cov - 1]).all()
    assert np.isnan(z[:, cols_cov + 1:]).all()


def test_unreadable_dem(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_text("not a raster")
    with pytest.raises(AuxiliaryError, match="bad.tif"):
        D.read_dem(bad, GRID)


def test_fine_dem_is_read_decimated(tmp_path, monkeypatch):
    # 5 m DEM for a 30 m grid: read at ≈15 m, result still right
    path = utm_dem(tmp_path / "fine.tif", 32633, 5.0, margin=200.0)
    seen = {}
    orig = rasterio.io.DatasetReader.read

    def spy(self, *a, **k):
        seen["shape"] = k.get("out_shape")
        return orig(self, *a, **k)
    monkeypatch.setattr(rasterio.io.DatasetReader, "read", spy)
    z = D.read_dem(path, GRID, resampling="BL")
    assert seen["shape"][0] < 0.5 * (GRID.ny * 30 / 5)
    truth = surface(*pixel_lonlat(GRID))
    assert float(np.sqrt(np.mean((z - truth) ** 2))) < 1.5


# ------------------------------------------------------------------ database
def test_dem_database(tmp_path):
    db = tmp_path / "dem"
    db.mkdir()
    anchor = db / "global.vrt"
    anchor.write_text("")
    (db / "WRS-2_193024.tif").write_text("")
    (db / "MGRS_T32UPC.vrt").write_text("")
    assert D.dem_path(anchor, True, "WRS-2", "193024") == db / "WRS-2_193024.tif"
    assert D.dem_path(db, True, "MGRS", "T32UPC") == db / "MGRS_T32UPC.vrt"
    assert D.dem_path(anchor, False, "WRS-2", "193024") == anchor
    assert D.dem_path(None, False) is None
    with pytest.raises(AuxiliaryError) as e:
        D.dem_path(anchor, True, "WRS-2", "193025")
    assert "WRS-2_193025.vrt" in str(e.value) and str(db) in str(e.value)


def test_load_dem_flat_without_file():
    p = SimpleNamespace(file_dem=None, use_dem_database=False, dem_nodata=-32767,
                        dem_resampling="BL", nthread=1)
    z, path = D.load_dem(p, GRID)
    assert path is None and z.dtype == np.float32 and not z.any()


# ------------------------------------------------------------------ ocean fill, smoothing
def test_ocean_fill_sweeps():
    n = np.nan
    z = np.array([[n, n, n, n],
                  [n, 0, 5, n],
                  [n, n, 7, n],
                  [3, n, n, n]], np.float32)
    D.ocean_fill(z)
    # everything reachable from the 0 m pixel by column and row sweeps becomes 0
    # (a 0 m pixel spreads along its own column and row runs only: the pixels behind
    # 5 and 7 in row 1 and 2 stay nodata)
    expect = np.array([[0, 0, 0, 0],
                       [0, 0, 5, n],
                       [0, 0, 7, n],
                       [3, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(z, expect)
    # nodata not touching 0 m stays nodata
    z2 = np.array([[1, n, 2]], np.float32)
    D.ocean_fill(z2)
    assert np.isnan(z2[0, 1])


def test_smoothing_only_below_30m():
    rng = np.random.default_rng(1)
    z = rng.normal(500, 10, (40, 40)).astype(np.float32)
    z[5, 5] = np.nan
    g30 = Grid(UTM33.to_wkt(), 0, 0, 30, 30, 40, 40)
    assert D.smooth_dem(z, g30) is z
    g10 = Grid(UTM33.to_wkt(), 0, 0, 10, 10, 40, 40)
    s = D.smooth_dem(z, g10)
    # 7×7 box mean ignoring nodata, nodata kept
    i, j = 20, 21
    ref = np.nanmean(z[i - 3:i + 4, j - 3:j + 4])
    assert s[i, j] == pytest.approx(ref, rel=1e-6)
    assert s[8, 8] == pytest.approx(np.nanmean(z[5:12, 5:12]), rel=1e-6)
    assert np.isnan(s[5, 5])
    # edge: the window is cut at the border
    assert s[0, 0] == pytest.approx(np.nanmean(z[0:4, 0:4]), rel=1e-6)
    g20 = Grid(UTM33.to_wkt(), 0, 0, 20, 20, 40, 40)
    s20 = D.smooth_dem(z, g20)
    assert s20[20, 20] == pytest.approx(np.nanmean(z[19:22, 19:22]), rel=1e-6)
