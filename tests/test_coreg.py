"""Co-registration to a monthly NIR base image (spec 03 §5; l2ps.coreg, l2ps.aux.coreg_base).

Truth: synthetic products whose ground content is displaced by a known offset relative to
their pixel grid (``l2ps.synth.coreg.make_shifted_*``), and base images rendered from the
same content without shift on grids of their own (``write_base_image``). The recovered shift
must match the offset within 0.1 pixel; the registered NIR band must agree with an
unshifted render of the content much better than before.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from l2ps import qai as Q
from l2ps.aux.coreg_base import find_base_image, read_base_band
from l2ps import coreg as C
from l2ps.coreg import (CoregResult, apply_transform, coregister, estimate_transform,
                        target_domain)
from l2ps.errors import AuxiliaryError, L2psError, ProcessingError
from l2ps.grid import Grid
from l2ps.scene import Scene
from l2ps.synth.coreg import (MONTHLY_FACTOR, base_grid, make_shifted_landsat,
                              make_shifted_sentinel2, render_surface, write_base_image)

LOG_RE = r"^coreg \(#tie, x/y shift, rmse\): \d+/-?\d+\.\d\d/-?\d+\.\d\d/\d+\.\d\d - good,$"


# ------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def prm(tmp_path_factory):
    from l2ps.params import read_parameters, write_skeleton
    path = tmp_path_factory.mktemp("prm") / "level2.prm"
    write_skeleton(path)
    return read_parameters(path, check_paths=False).replace(nthread=2)


def scene_of(path, params):
    from l2ps.level1 import open_level1
    from l2ps.pipeline import prepare_scene
    with open_level1(Path(path)) as level1:
        return prepare_scene(level1, params)


def mask_truth_clouds(scene: Scene, truth_dir) -> None:
    """QAI cloud/shadow bits from the truth masks (+2 px), as cloud detection would."""
    from scipy import ndimage
    with rasterio.open(Path(truth_dir) / "cloud.tif") as ds:
        cloud = ndimage.binary_dilation(ds.read(1) > 0, iterations=2)
    with rasterio.open(Path(truth_dir) / "shadow.tif") as ds:
        shadow = ndimage.binary_dilation(ds.read(1) > 0, iterations=2)
    Q.set_field(scene.qai, Q.CLOUD, Q.CLOUD_OPAQUE, cloud)
    Q.set_flag(scene.qai, Q.SHADOW, shadow)


def agreement(band: np.ndarray, ref: np.ndarray, ok: np.ndarray) -> float:
    """1 − Pearson r between a band and a reference over the pixels ``ok`` (0 = perfect)."""
    m = ok & (band != -9999)
    return 1.0 - float(np.corrcoef(band[m].astype(np.float64), ref[m].astype(np.float64))[0, 1])


def valid_inner(scene: Scene, domain: str, margin: int = 8) -> np.ndarray:
    """Clear, valid pixels of a band's grid away from the image edge and from clouds (the
    cloud truth is that of B8A; other bands see clouds elsewhere by parallax)."""
    from scipy import ndimage
    g = scene.grids[domain]
    qai = scene.qai_on(g)
    cloudy = ndimage.binary_dilation(Q.cloud_or_shadow(qai), iterations=margin)
    ok = Q.is_valid(qai) & ~cloudy
    ok[:margin] = ok[-margin:] = False
    ok[:, :margin] = ok[:, -margin:] = False
    return ok


# ------------------------------------------------------------------------------ the cases
# (family, shift in pixels (east, north), clouds, base CRS)
CASES = {
    "landsat-subpixel": ("landsat", (0.4, -0.7), False, "EPSG:3035"),
    "landsat-3x2": ("landsat", (3.0, 2.0), False, None),
    "sentinel2-cloudy": ("sentinel2", (-2.6, 1.3), True, "EPSG:3035"),
}


class Case:
    """A shifted product, its base image, the scene before and after coregister."""

    def __init__(self, root: Path, prm, family, shift_px, clouds, base_crs):
        res = 30.0 if family == "landsat" else 10.0
        self.shift_px = shift_px
        self.res = res
        shift_m = (shift_px[0] * res, shift_px[1] * res)
        if family == "landsat":
            self.product = make_shifted_landsat(root, shift_m, sensor="LND08", size=(400, 400),
                                                seed=11, clouds=clouds)
        else:
            self.product = make_shifted_sentinel2(root, shift_m, sensor="SEN2B", size=(360, 360),
                                                  seed=12, clouds=clouds)
        self.truth = self.product.truth
        self.base_dir = root / "base"
        write_base_image(self.base_dir / "2021_NIR-AVG_FBM.tif", self.truth, res=30.0,
                         crs=base_crs)
        self.params = prm.replace(dir_coreg_base=self.base_dir)
        self.scene = scene_of(self.product.path, self.params)
        if clouds:
            mask_truth_clouds(self.scene, self.product.truth_dir)
        self.before = {d: a.copy() for d, a in self.scene.toa.items()}
        self.qai_before = self.scene.qai.copy()
        self.result = coregister(self.scene, self.params)


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory, prm) -> Case:
    fam, shift, clouds, crs = CASES[request.param]
    return Case(tmp_path_factory.mktemp(request.param), prm, fam, shift, clouds, crs)


def test_shift_recovered_within_a_tenth_of_a_pixel(case):
    r = case.result
    assert isinstance(r, CoregResult)
    # content displaced east by sx px → image columns +sx; north by sy px → rows −sy
    err_x = r.shift_x_m / case.res - case.shift_px[0]
    err_y = r.shift_y_m / case.res + case.shift_px[1]
    print(f"\n{case.truth['sensor']} shift {case.shift_px}: {r.log_fragment} model {r.model} "
          f"error {err_x:+.3f}/{err_y:+.3f} px, {r.seconds:.2f} s, {r.stats}")
    assert abs(err_x) < 0.1 and abs(err_y) < 0.1
    assert r.n_ties >= 100
    assert r.rmse_px < 0.5
    # the transform is (nearly) the translation at every corner too
    g = case.scene.grids[r.target_domain]
    for u, v in ((0, 0), (g.nx, 0), (0, g.ny), (g.nx, g.ny)):
        su, sv = r.transform @ np.array([u, v, 1.0])
        assert abs(su - u - case.shift_px[0]) < 0.15 and abs(sv - v + case.shift_px[1]) < 0.15


def test_log_fragment(case):
    import re
    r = case.result
    assert re.match(LOG_RE, r.log_fragment), r.log_fragment
    assert r.log_fragment.startswith(f"coreg (#tie, x/y shift, rmse): {r.n_ties}/"
                                     f"{r.shift_x_m:.2f}/{r.shift_y_m:.2f}/")
    assert r.target_domain == ("NIR" if case.truth["mission"] == "landsat" else "BROADNIR")
    assert r.base_image.name == "2021_NIR-AVG_FBM.tif"
    assert r.seconds > 0


@pytest.mark.parametrize("which", ["target", "other"])
def test_bands_agree_with_the_unshifted_content(case, which):
    """The registered band matches a render of the unshifted content much better; for
    Sentinel-2 also a 20 m band (its own grid, same map shift)."""
    scene = case.scene
    dom = case.result.target_domain if which == "target" else "SWIR1"
    g = scene.grids[dom]
    ref = render_surface(case.truth, dom, g)
    ok = valid_inner(scene, dom, margin=int(math.ceil(8 * max(map(abs, case.shift_px)) + 4)))
    before = agreement(case.before[dom], ref, ok)
    after = agreement(scene.toa[dom], ref, ok)
    print(f"\n{dom} at {g.dx:g} m: 1 - r before {before:.4f}, after {after:.4f}")
    assert after < 0.5 * before


def test_qai_and_bands_consistent(case):
    scene = case.scene
    off = Q.is_nodata(scene.qai)
    for dom, arr in scene.toa.items():
        if arr.shape == scene.qai.shape:
            assert (arr[off] == -9999).all(), dom
    tgt = scene.band(case.result.target_domain)
    assert not Q.is_valid(scene.qai)[tgt == -9999].any()
    # the QAI moved with the image: same number of cloudy pixels within a few %
    c0 = int(np.count_nonzero(Q.cloud_or_shadow(case.qai_before)))
    c1 = int(np.count_nonzero(Q.cloud_or_shadow(scene.qai)))
    assert abs(c1 - c0) <= 0.05 * max(c0, 1) + 50


# ------------------------------------------------------------------------------ failures
@pytest.fixture(scope="module")
def landsat(tmp_path_factory, prm):
    """An unshifted Landsat product (no clouds) and its truth, for the failure tests."""
    root = tmp_path_factory.mktemp("landsat0")
    p = make_shifted_landsat(root, (0.0, 0.0), sensor="LND08", size=(300, 300), seed=11,
                             clouds=False)
    return p


def _fresh_scene(landsat, params):
    return scene_of(landsat.path, params)


def _write(path, arr, grid: Grid, nodata=-9999):
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=grid.nx, height=grid.ny,
                       count=arr.shape[0], dtype="int16", crs=grid.crs,
                       transform=grid.transform, nodata=nodata) as ds:
        ds.write(arr.astype(np.int16))
    return path


def test_shift_beyond_6_pixels_fails(landsat, prm, tmp_path):
    """A base whose georeference is off by 8 px: the image is 8 px off → FAIL."""
    src = write_base_image(tmp_path / "b0" / "2021_nir.tif", landsat.truth)
    with rasterio.open(src) as ds:
        data, t, crs = ds.read(), ds.transform, ds.crs
    g = Grid.from_transform(crs, t @ Affine.translation(-8, 0), data.shape[2], data.shape[1])
    _write(tmp_path / "b8" / "2021_nir.tif", data, g)
    params = prm.replace(dir_coreg_base=tmp_path / "b8")
    scene = _fresh_scene(landsat, params)
    before = scene.toa["NIR"].copy()
    with pytest.raises(ProcessingError,
                       match=r"co-registration failed: shift of 8\.\d\d px > 6 px"):
        coregister(scene, params)
    assert (scene.toa["NIR"] == before).all()          # nothing was shifted


def test_no_texture_fails(landsat, prm, tmp_path):
    bg = base_grid(landsat.truth)
    _write(tmp_path / "flat" / "2021_flat.tif", np.full((12,) + bg.shape, 3000), bg)
    params = prm.replace(dir_coreg_base=tmp_path / "flat")
    scene = _fresh_scene(landsat, params)
    qai = scene.qai.copy()
    with pytest.raises(ProcessingError,
                       match=r"co-registration failed: \d+ tie points \(12 needed\).*no texture in "
                             r"the base"):
        coregister(scene, params)
    assert (scene.qai == qai).all()


def test_no_overlap_fails(landsat, prm, tmp_path):
    far = base_grid(landsat.truth)
    far = Grid(far.crs_wkt, far.x0 + 200_000.0, far.y0, far.dx, far.dy, far.nx, far.ny)
    write_base_image(tmp_path / "far" / "2021_far.tif", landsat.truth, grid=far)
    params = prm.replace(dir_coreg_base=tmp_path / "far")
    with pytest.raises(AuxiliaryError, match="does not overlap the image"):
        coregister(_fresh_scene(landsat, params), params)


def test_base_without_valid_land_fails(landsat, prm, tmp_path):
    """The base covers the image, but only with nodata (and water-dark values)."""
    bg = base_grid(landsat.truth)
    arr = np.full((12,) + bg.shape, -9999)
    arr[:, :, : bg.nx // 4] = 500                      # water-dark strip in the west
    _write(tmp_path / "dark" / "2021_dark.tif", arr, bg)
    params = prm.replace(dir_coreg_base=tmp_path / "dark")
    with pytest.raises(L2psError, match="co-registration failed: no overlap of clear land"):
        coregister(_fresh_scene(landsat, params), params)


def test_no_base_image(landsat, prm, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "2021_notes.txt").write_text("x")
    params = prm.replace(dir_coreg_base=tmp_path / "empty")
    with pytest.raises(AuxiliaryError, match="could not retrieve a base image for 2021"):
        coregister(_fresh_scene(landsat, params), params)


def texture(shape, seed, sigma=2.5, offset=(0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """(base, image) int16 ×10000: a smooth random texture, and the same displaced by
    ``offset`` = (columns, rows): image(p) = base(p − offset)."""
    from scipy import ndimage
    rng = np.random.default_rng(seed)
    ny, nx = shape
    field = ndimage.gaussian_filter(rng.standard_normal((ny + 20, nx + 20)), sigma)
    field = 3000 + 900 * field / field.std()
    base = np.rint(field[10:ny + 10, 10:nx + 10]).astype(np.int16)
    moved = ndimage.shift(field, (offset[1], offset[0]), order=3, mode="nearest")
    return base, np.rint(moved[10:ny + 10, 10:nx + 10]).astype(np.int16)


def test_too_few_points_is_a_failure():
    """Texture only in a small patch → too few points of interest / tie points."""
    base, _ = texture((300, 300), 3)
    target = np.full((300, 300), 3000, np.int16)
    target[140:156, 140:156] = base[140:156, 140:156]
    base = target.copy()
    with pytest.raises(ProcessingError, match=r"co-registration failed: \d+ (tie points|points "
                                              r"of interest) \(12 needed\)"):
        estimate_transform(target, base)


def test_dense_matching_with_few_ties_is_a_failure(monkeypatch):
    """< 12 dense ties → FAIL (FORCE's [BUG?] accepts an all-zero affine there)."""
    base, target = texture((400, 400), 5, offset=(1.3, -0.6))
    monkeypatch.setattr(C, "N_DENSE", 4)              # a 2×2 dense grid
    with pytest.raises(ProcessingError, match=r"co-registration failed: \d tie points \(12 "
                                              r"needed\) in the dense matching"):
        estimate_transform(target, base)


def test_estimate_on_arrays_subpixel():
    """Pure arrays: a smooth random texture sampled at a known sub-pixel offset."""
    base, target = texture((400, 400), 5, offset=(1.3, -0.6))
    est = estimate_transform(target, base)
    centre = np.array([[199.5, 199.5]])
    d = est.fit.apply(centre) - centre
    assert abs(d[0, 0] - 1.3) < 0.05 and abs(d[0, 1] + 0.6) < 0.05
    assert est.fit.n >= 100


# ------------------------------------------------------------------------------ applying
def test_apply_transform_moves_every_grid_by_the_same_map_offset():
    crs = CRS.from_epsg(32632).to_wkt()
    g10 = Grid(crs, 600000.0, 5800020.0, 10.0, 10.0, 60, 60)
    g20 = Grid(crs, 600000.0, 5800020.0, 20.0, 20.0, 30, 30)
    rng = np.random.default_rng(0)
    b10 = rng.integers(100, 5000, g10.shape).astype(np.int16)
    b20 = rng.integers(100, 5000, g20.shape).astype(np.int16)
    b10[5, 7] = -9999
    qai = rng.integers(0, 2 ** 14, g10.shape).astype(np.uint16) & ~np.uint16(1)
    scene = Scene(level1=None, grid=g10, toa={"BROADNIR": b10.copy(), "SWIR1": b20.copy()},
                  grids={"BROADNIR": g10, "SWIR1": g20}, qai=qai.copy(), geometry=None)
    # output(p) = image(p + (2, 4) px of the 10 m grid): 20 m east, 40 m south
    a = np.array([[1.0, 0, 2.0], [0, 1.0, 4.0], [0, 0, 1.0]])
    apply_transform(scene, a, g10, "BROADNIR")
    exp10 = b10[4:, 2:]
    got10 = scene.toa["BROADNIR"][:56, :58]
    assert (got10 == exp10).all()
    assert (scene.toa["SWIR1"][:28, :29] == b20[2:, 1:]).all()
    out10 = scene.toa["BROADNIR"]
    assert (out10[56:] == -9999).all() and (out10[:, 58:] == -9999).all()
    assert (scene.qai[:56, :58] & ~np.uint16(1) == qai[4:, 2:]).all()
    assert Q.is_nodata(scene.qai)[56:].all() and Q.is_nodata(scene.qai)[:, 58:].all()
    assert Q.is_nodata(scene.qai)[1, 5]               # the nodata pixel moved to (5−4, 7−2)
    # half a pixel east: bilinear mean of two neighbours, nodata-aware
    scene = Scene(level1=None, grid=g10, toa={"BROADNIR": b10.copy()},
                  grids={"BROADNIR": g10}, qai=qai.copy(), geometry=None)
    apply_transform(scene, np.array([[1.0, 0, 0.5], [0, 1.0, 0.0], [0, 0, 1.0]]), g10,
                    "BROADNIR")
    out = scene.toa["BROADNIR"]
    assert out[10, 10] == np.floor((int(b10[10, 10]) + int(b10[10, 11])) / 2 + 0.5)
    assert out[5, 6] == b10[5, 6] and out[5, 7] == b10[5, 8]   # the nodata neighbour skipped


# ------------------------------------------------------------------------------ the base
def test_discovery_is_sorted_raster_only_and_goes_back_in_years(tmp_path):
    d = tmp_path / "base"
    d.mkdir()
    for name in ("2021_b.tif", "2021_a.vrt", "2019_x.tif", "2022_a.tif", "2021.tif.ovr",
                 "2021_0.tif.aux.xml", "2021_notes.txt", "2020-readme.md"):
        (d / name).write_text("")
    (d / "2021_00.tif").mkdir()                       # a folder is not a raster
    from datetime import date
    assert find_base_image(d, date(2021, 7, 1)).name == "2021_a.vrt"
    assert find_base_image(d, date(2020, 1, 1)).name == "2019_x.tif"
    assert find_base_image(d, date(2068, 1, 1)).name == "2022_a.tif"      # 46 years back
    with pytest.raises(AuxiliaryError, match="could not retrieve a base image for 2018"):
        find_base_image(d, date(2018, 5, 1))
    with pytest.raises(AuxiliaryError, match="not a directory"):
        find_base_image(tmp_path / "missing", date(2021, 1, 1))


def test_read_base_band_month_nodata_and_band_count(tmp_path):
    crs = CRS.from_epsg(32633).to_wkt()
    src = Grid(crs, 500000.0, 5600000.0, 30.0, 30.0, 40, 40)
    arr = np.stack([np.full(src.shape, 1000 * (m + 1)) for m in range(12)])
    arr[:, :10, :] = -5                                # COREG_BASE_NODATA
    _write(tmp_path / "2021.tif", arr, src, nodata=None)
    dst = Grid(crs, 500300.0, 5599850.0, 10.0, 10.0, 60, 60)
    out = read_base_band(tmp_path / "2021.tif", 7, dst, nodata=-5)
    assert out.dtype == np.int16
    assert (out[20:] == 7000).all()                   # band 7, cubic of a constant
    assert (out[:12] == -9999).all()                  # north of y = 5599700: COREG_BASE_NODATA
    _write(tmp_path / "few.tif", arr[:3], src)
    with pytest.raises(AuxiliaryError, match="3 band\\(s\\); expected 12"):
        read_base_band(tmp_path / "few.tif", 1, dst)


def test_synthetic_base_image_has_monthly_bands(tmp_path, landsat):
    path = write_base_image(tmp_path / "2021_nir.tif", landsat.truth, res=60.0)
    with rasterio.open(path) as ds:
        assert ds.count == 12 and ds.nodata == -9999 and ds.res == (60.0, 60.0)
        a1, a7 = ds.read(1).astype(float), ds.read(7).astype(float)
    m = (a1 > 0) & (a7 > 0)
    ratio = np.median(a7[m] / a1[m])
    assert ratio == pytest.approx(MONTHLY_FACTOR[6] / MONTHLY_FACTOR[0], rel=0.01)
    assert 1000 < np.median(a7[m]) < 6000             # NIR of land ×10000
    info = json.loads((Path(landsat.truth_dir) / "truth.json").read_text())
    assert info["content_shift_m"] == [0.0, 0.0]


def test_target_domain():
    from types import SimpleNamespace
    s2 = SimpleNamespace(level1=SimpleNamespace(spec=SimpleNamespace(mission="sentinel2"),
                                                sensor="SEN2A"), toa={"BROADNIR": 0})
    ls = SimpleNamespace(level1=SimpleNamespace(spec=SimpleNamespace(mission="landsat"),
                                                sensor="LND08"), toa={"NIR": 0})
    assert target_domain(s2) == "BROADNIR" and target_domain(ls) == "NIR"


def test_result_does_not_depend_on_the_thread_count():
    import numba
    base, target = texture((300, 300), 8, offset=(-0.35, 2.2))
    n0 = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = estimate_transform(target, base).fit
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = estimate_transform(target, base).fit
    finally:
        numba.set_num_threads(n0)
    assert one.n == two.n and np.array_equal(one.matrix, two.matrix)
