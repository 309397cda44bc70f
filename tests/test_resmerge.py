"""Sentinel-2 resolution merge (l2ps.resmerge, spec 03 §4).

Unit tests on small arrays (exact linear relation, skipped pixels, thread independence) and
a test against the 10 m truth of a synthetic Sentinel-2 product (l2ps.synth with
``fine_texture`` and ``truth_10m``): the scene's 20 m bands are the 2×2 means of their 10 m
rendering, so the 10 m TOA truth of REDEDGE1–3, NIR, SWIR1/2 is known. Run with ``-s`` to
see the RMSE table.
"""
from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from l2ps import qai as Q
from l2ps import resmerge as RM
from l2ps.errors import ParameterError
from l2ps.grid import Grid
from l2ps.level1.sensors import sensor_spec
from l2ps.scene import Scene

S2_BAND = {"REDEDGE1": "B05", "REDEDGE2": "B06", "REDEDGE3": "B07", "NIR": "B8A",
           "SWIR1": "B11", "SWIR2": "B12"}


# ------------------------------------------------------------------------------ helpers
def small_scene(ny=48, nx=40, seed=0, sensor="SEN2A"):
    """Random 10 m predictors; 20 m targets = 2×2 means of 1000 + quarter-integer
    combinations of them (exact integers: every 2×2 block sum is a multiple of 16). Returns
    (scene, 10 m truth per target, float64)."""
    rng = np.random.default_rng(seed)
    g10 = Grid("EPSG:32632", 600000.0, 5800020.0, 10.0, 10.0, nx, ny)
    g20 = Grid("EPSG:32632", 600000.0, 5800020.0, 20.0, 20.0, nx // 2, ny // 2)
    toa, truth = {}, {}
    for d in RM.PREDICTORS:
        x = rng.integers(300, 5000, (ny, nx)).astype(np.int64)
        blocks = x.reshape(ny // 2, 2, nx // 2, 2)
        blocks[:, 1, :, 1] -= blocks.sum(axis=(1, 3)) % 16      # block sums ≡ 0 (mod 16)
        toa[d] = x.astype(np.int16)
    toa["BLUE"] = toa["GREEN"].copy()
    coef = rng.integers(-4, 5, (len(RM.TARGETS), 3)) / 4.0
    for k, d in enumerate(RM.TARGETS):
        y = 1000.0 + sum(coef[k, i] * toa[p].astype(np.float64)
                         for i, p in enumerate(RM.PREDICTORS))
        truth[d] = y
        toa[d] = y.reshape(ny // 2, 2, nx // 2, 2).mean(axis=(1, 3)).astype(np.int16)
        assert np.array_equal(toa[d], y.reshape(ny // 2, 2, nx // 2, 2).mean(axis=(1, 3)))
    grids = {d: (g20 if d in RM.TARGETS else g10) for d in toa}
    level1 = SimpleNamespace(spec=sensor_spec(sensor), sensor=sensor, source="test")
    return Scene(level1=level1, grid=g10, toa=toa, grids=grids,
                 qai=np.zeros((ny, nx), np.uint16), geometry=None), truth


def clone(scene: Scene) -> Scene:
    s = copy.copy(scene)
    s.toa, s.grids, s.qai = dict(scene.toa), dict(scene.grids), scene.qai.copy()
    return s


def replicated(scene: Scene, d: str) -> np.ndarray:
    return np.repeat(np.repeat(scene.toa[d], 2, 0), 2, 1)


# ------------------------------------------------------------------------------ unit tests
def test_regression_recovers_exact_linear_relation():
    scene, truth = small_scene()
    stats = RM.resolution_merge(scene, "REGRESSION")
    assert stats["method"] == "REGRESSION" and stats["pixels_merged"] == scene.qai.size
    for d in RM.TARGETS:
        assert scene.toa[d].shape == scene.qai.shape and scene.toa[d].dtype == np.int16
        assert scene.grids[d] == scene.grid
        # the truth is a multiple of 0.25; the result is rounded: within 0.5 everywhere,
        # also at the image edges (clipped windows)
        err = np.abs(scene.toa[d] - truth[d])
        assert err.max() <= 0.5 + 1e-6, (d, err.max())


def test_none_replicates():
    scene, truth = small_scene()
    ref = {d: replicated(scene, d) for d in RM.TARGETS}
    s = clone(scene)
    stats = RM.resolution_merge(s, "none")
    assert stats["pixels_merged"] == 0
    for d in RM.TARGETS:
        assert np.array_equal(s.toa[d], ref[d]) and s.grids[d] == s.grid


@pytest.mark.parametrize("method", RM.METHODS)
def test_cloud_shadow_nodata_keep_replicated_values(method):
    scene, _ = small_scene(ny=40, nx=40, seed=3)
    rng = np.random.default_rng(1)
    qai = scene.qai
    cloud = rng.random(qai.shape) < 0.1
    shadow = rng.random(qai.shape) < 0.1
    buffer = rng.random(qai.shape) < 0.05
    off = np.zeros(qai.shape, bool)
    off[:6, :9] = True
    Q.set_field(qai, Q.CLOUD, Q.CLOUD_OPAQUE, cloud)
    Q.set_field(qai, Q.CLOUD, Q.CLOUD_BUFFER, buffer & ~cloud)
    Q.set_flag(qai, Q.SHADOW, shadow)
    Q.set_flag(qai, Q.NODATA, off)
    for d in RM.PREDICTORS:
        scene.toa[d][off] = -9999
    ref = {d: replicated(scene, d) for d in RM.TARGETS}
    skip = cloud | shadow | buffer | off
    stats = RM.resolution_merge(scene, method)
    if method != "NONE":
        assert stats["pixels_merged"] == int((~skip).sum())
    changed = np.zeros(qai.shape, bool)
    for d in RM.TARGETS:
        assert np.array_equal(scene.toa[d][skip], ref[d][skip]), d
        changed |= scene.toa[d] != ref[d]
    if method in ("REGRESSION", "STARFM"):
        assert changed[~skip].mean() > 0.5      # and the others were merged


def test_missing_20m_value_is_not_used_and_kept():
    scene, truth = small_scene(seed=4)
    scene.toa["SWIR2"][3, 4] = -9999                 # one 20 m pixel without a value
    RM.resolution_merge(scene, "REGRESSION")
    assert (scene.toa["SWIR2"][6:8, 8:10] == -9999).all()
    # the other bands there keep their replicated values (the pixel is not merged)
    assert (scene.toa["NIR"] != -9999).all()
    far = np.ones(scene.qai.shape, bool)
    far[2:12, 6:14] = False
    for d in RM.TARGETS:
        assert np.abs(scene.toa[d] - truth[d])[far].max() <= 0.5 + 1e-6


@pytest.mark.parametrize("method", RM.METHODS)
def test_same_result_with_one_and_two_threads(method):
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here (NUMBA_NUM_THREADS < 2)")
    rng = np.random.default_rng(7)
    base, _ = small_scene(ny=200, nx=180, seed=5)
    # smooth structure so that IMPROPHE and STARFM find similar neighbours
    yy, xx = np.mgrid[0:200, 0:180]
    for k, d in enumerate(RM.PREDICTORS + RM.TARGETS):
        f = 1500 + 600 * np.sin(xx / (7 + k)) * np.cos(yy / 11) + rng.normal(0, 20, xx.shape)
        if d in RM.TARGETS:
            f = f.reshape(100, 2, 90, 2).mean(axis=(1, 3))
        base.toa[d] = f.astype(np.int16)
    Q.set_field(base.qai, Q.CLOUD, Q.CLOUD_OPAQUE, rng.random(base.qai.shape) < 0.05)
    results = []
    for nt in (1, 2):
        s = clone(base)
        RM.resolution_merge(s, method, nthreads=nt)
        results.append({d: s.toa[d].copy() for d in RM.TARGETS})
    for d in RM.TARGETS:
        assert np.array_equal(results[0][d], results[1][d]), d


def _improphe_reference(scene: Scene) -> dict:
    """IMPROPHE per pixel as in the module docstring, straightforward Python (no numba):
    13-pixel circular kernel (centre first, then row-major), class limits 75 … 750 on the
    sum of |ΔG|+|ΔR|+|ΔBNIR|, ≥ 3 neighbours, sigmoid weights, rounding half away from 0."""
    import math
    g, r, n = (scene.toa[d].astype(np.int64) for d in RM.PREDICTORS)
    qai = scene.qai
    ny, nx = qai.shape
    rep = {d: replicated(scene, d).astype(np.int64) for d in RM.TARGETS}
    cval = np.ones(qai.shape, bool)
    for d in RM.TARGETS:
        cval &= rep[d] != -9999
    usable = ((qai & 0b1111) == 0) & cval & (g != -9999) & (r != -9999) & (n != -9999)
    offs = [(0, 0)] + [(a, b) for a in range(-2, 3) for b in range(-2, 3)
                       if (a or b) and a * a + b * b <= 4]
    thr = (75, 150, 300, 600, 750)
    out = {d: rep[d].copy() for d in RM.TARGETS}
    for i in range(ny):
        for j in range(nx):
            if not usable[i, j]:
                continue
            nb = []
            for a, b in offs:
                ii, jj = i + a, j + b
                if 0 <= ii < ny and 0 <= jj < nx and usable[ii, jj]:
                    s = (abs(g[i, j] - g[ii, jj]) + abs(r[i, j] - r[ii, jj])
                         + abs(n[i, j] - n[ii, jj]))
                    if s < thr[-1]:
                        nb.append((s, ii, jj))
            lim = next((t for t in thr if sum(s < t for s, _, _ in nb) >= 3), thr[-1])
            nb = [x for x in nb if x[0] < lim]
            pos = [s for s, _, _ in nb if s > 0]
            lo, hi = (min(pos), max(pos)) if pos else (0, 0)
            ws = [1.0 if s == 0 or hi <= lo else
                  1.0 / (1.0 + math.exp(25.0 * (s - lo) / (hi - lo) - 7.5)) for s, _, _ in nb]
            for d in RM.TARGETS:
                acc = 0.0
                for w, (_, ii, jj) in zip(ws, nb):
                    acc += w * rep[d][ii, jj]
                v = acc / sum(ws)
                k = math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)
                out[d][i, j] = -9998 if k == -9999 else max(-32767, min(32767, k))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_improphe_equals_straightforward_reference(seed):
    """The vectorised IMPROPHE kernel (row blocks, column strips, weight table) gives the
    same int16 values as the per-pixel definition, with clouds, nodata, a missing 20 m
    value, ties (S = 0, max = min) and blocks/strips that do not divide the image."""
    rng = np.random.default_rng(seed)
    scene, _ = small_scene(ny=38, nx=34, seed=seed)
    for d in RM.PREDICTORS:        # near values: sums spread over all similarity classes
        step = 25 if seed else 1
        scene.toa[d] = (1000 + step * rng.integers(0, 200 // step, scene.qai.shape)
                        ).astype(np.int16)
    for d in RM.TARGETS:
        scene.toa[d] = rng.integers(-300, 9000, scene.toa[d].shape).astype(np.int16)
    scene.toa["SWIR1"][5, 7] = -9999
    scene.toa["RED"][20, 3] = -9999
    Q.set_field(scene.qai, Q.CLOUD, Q.CLOUD_OPAQUE, rng.random(scene.qai.shape) < 0.08)
    Q.set_flag(scene.qai, Q.SHADOW, rng.random(scene.qai.shape) < 0.05)
    Q.set_flag(scene.qai, Q.NODATA, np.add.outer(np.arange(38), np.arange(34)) < 6)
    ref = _improphe_reference(scene)
    for chunk, strip in ((RM._IMPROPHE_CHUNK, RM._IMPROPHE_STRIP), (3, 7), (1, 34)):
        s = clone(scene)
        old = RM._IMPROPHE_CHUNK, RM._IMPROPHE_STRIP
        RM._IMPROPHE_CHUNK, RM._IMPROPHE_STRIP = chunk, strip
        try:
            stats = RM.resolution_merge(s, "IMPROPHE")
        finally:
            RM._IMPROPHE_CHUNK, RM._IMPROPHE_STRIP = old
        for d in RM.TARGETS:
            assert np.array_equal(s.toa[d], ref[d]), (chunk, strip, d,
                                                      int((s.toa[d] != ref[d]).sum()))
    merged = sum(1 for i in range(38) for j in range(34) if
                 any(ref[d][i, j] != replicated(scene, d)[i, j] for d in RM.TARGETS))
    assert 0.5 * scene.qai.size < stats["pixels_merged"] and merged > 0.5 * scene.qai.size


def test_improphe_weight_table_is_the_formula():
    import math
    tab = RM._improphe_weights(750)
    assert tab[0] == 0.0 and tab[1] == 1.0
    for d in (1, 2, 7, 100, 749):
        for t in sorted({0, 1, d // 3, d // 2, d}):
            assert tab[2 + d * (d + 1) // 2 + t] == 1.0 / (1.0 + math.exp(25.0 * t / d - 7.5))


def test_errors_and_other_sensors():
    scene, _ = small_scene()
    with pytest.raises(ParameterError, match="RES_MERGE"):
        RM.resolution_merge(scene, "BICUBIC")
    landsat, _ = small_scene(sensor="LND08")
    before = landsat.toa["NIR"].copy()
    stats = RM.resolution_merge(landsat, "IMPROPHE")
    assert "skipped" in stats and np.array_equal(landsat.toa["NIR"], before)
    from l2ps.errors import Level1Error
    del scene.toa["SWIR1"]
    with pytest.raises(Level1Error, match="SWIR1"):
        RM.resolution_merge(scene, "IMPROPHE")


# ---------------------------------------------------------------- synthetic Sentinel-2
rasterio = pytest.importorskip("rasterio")


@pytest.fixture(scope="module")
def s2_fine(tmp_path_factory):
    from l2ps.synth import make_sentinel2
    out = tmp_path_factory.mktemp("resmerge")
    return make_sentinel2(out, sensor="SEN2A", size=(480, 480), seed=11, fine_texture=1.0,
                          truth_10m=True)


def _read(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def _toa_scene(product) -> Scene:
    """Reader → initial QAI → TOA (the front of the chain, without topography)."""
    from l2ps.level1 import open_level1, read_bands
    from l2ps.toa import apply_toa_nodata, initial_qai, toa_reflectance
    with open_level1(Path(product.path)) as l1:
        dn = read_bands(l1, workers=1, num_threads=1)
        qai = initial_qai(l1, dn, l1.grid, False, True)
        toa = {d: toa_reflectance(dn.pop(d), l1.bands[d], None, l1.spec) for d in list(dn)}
        apply_toa_nodata(toa, qai, l1.spec)
        return Scene(level1=l1, grid=l1.grid, toa=toa,
                     grids={d: l1.bands[d].grid for d in toa}, qai=qai, geometry=None)


def test_synthetic_10m_truth_is_consistent(s2_fine):
    """The 20 m truth is the 2×2 mean of the 10 m truth (±1 for the two roundings), and
    the fine texture gives the 10 m truth real sub-20 m detail."""
    t = Path(s2_fine.truth_dir)
    for b in S2_BAND.values():
        fine = _read(t / f"toa_10m_{b}.tif").astype(np.float64)
        coarse = _read(t / f"toa_{b}.tif").astype(np.float64)
        ok = (fine != -9999).reshape(240, 2, 240, 2).all(axis=(1, 3)) & (coarse != -9999)
        mean = fine.reshape(240, 2, 240, 2).mean(axis=(1, 3))
        assert np.abs(mean - coarse)[ok].max() <= 1.0
        detail = fine - np.repeat(np.repeat(mean, 2, 0), 2, 1)
        assert np.sqrt(np.mean(detail[np.repeat(np.repeat(ok, 2, 0), 2, 1)] ** 2)) > 30
    assert s2_fine.truth["fine_texture"] == 1.0


def test_methods_beat_nearest_neighbour_on_synthetic_s2(s2_fine):
    from scipy import ndimage
    base = _toa_scene(s2_fine)
    t = Path(s2_fine.truth_dir)
    # clouds and shadows from the truth (independent of the cloud detector), with margins
    # for the band-to-band parallax of clouds and the shadow edges
    cloud = ndimage.binary_dilation(_read(t / "cloud.tif") > 0, iterations=10)
    shadow = ndimage.binary_dilation(_read(t / "shadow.tif") > 0, iterations=3)
    Q.set_field(base.qai, Q.CLOUD, Q.CLOUD_OPAQUE, cloud)
    Q.set_flag(base.qai, Q.SHADOW, shadow)
    # the saturating 60 m "bright targets" are no land surface: leave them out of the score
    bright = ndimage.binary_dilation(_read(t / "cover.tif") == 6, iterations=3)
    truth = {d: _read(t / f"toa_10m_{b}.tif").astype(np.float64) for d, b in S2_BAND.items()}
    ok = ((base.qai & 0b1111) == 0) & ~bright
    for d in RM.TARGETS:
        ok &= truth[d] != -9999
    assert ok.mean() > 0.3
    rmse, merged = {}, {}
    for method in RM.METHODS:
        s = clone(base)
        stats = RM.resolution_merge(s, method)
        merged[method] = stats["pixels_merged"]
        rmse[method] = {d: float(np.sqrt(np.mean((s.toa[d] - truth[d])[ok] ** 2)))
                        for d in RM.TARGETS}
    pooled = {m: float(np.sqrt(np.mean([v ** 2 for v in rmse[m].values()])))
              for m in RM.METHODS}
    lines = [f"RMSE vs 10 m TOA truth (x10000), {int(ok.sum())} clear pixels",
             f"{'method':11s}" + "".join(f"{d:>10s}" for d in RM.TARGETS) + "    pooled  vs NONE"]
    for m in RM.METHODS:
        lines.append(f"{m:11s}" + "".join(f"{rmse[m][d]:10.1f}" for d in RM.TARGETS)
                     + f"{pooled[m]:10.1f}  {100 * (pooled[m] / pooled['NONE'] - 1):+6.1f} %")
    print("\n" + "\n".join(lines))
    for m in ("REGRESSION", "IMPROPHE"):
        for d in RM.TARGETS:
            assert rmse[m][d] <= 0.8 * rmse["NONE"][d], (m, d, rmse[m][d], rmse["NONE"][d])
    # STARFM transfers the (G+R)/2 and BNIR detail additively: better than NONE overall
    assert pooled["STARFM"] < pooled["NONE"]
    assert merged["IMPROPHE"] == merged["REGRESSION"] == merged["STARFM"] > 0


def test_fine_texture_is_block_independent_and_optional(tmp_path):
    from l2ps.synth import make_sentinel2
    kw = dict(size=(120, 120), seed=2, clouds=False, fine_texture=1.0, truth_10m=True)
    a = make_sentinel2(tmp_path / "a", **kw)
    b = make_sentinel2(tmp_path / "b", block_rows=36, **kw)
    for name in ("toa_10m_B8A", "surface_10m_B11", "toa_B05"):
        assert np.array_equal(_read(Path(a.truth_dir) / f"{name}.tif"),
                              _read(Path(b.truth_dir) / f"{name}.tif")), name
    c = make_sentinel2(tmp_path / "c", size=(120, 120), seed=2, clouds=False)
    assert not list(Path(c.truth_dir).glob("*_10m_*")) and "fine_texture" not in c.truth
    # the texture changes the surface, not the geometry
    assert not np.array_equal(_read(Path(a.truth_dir) / "surface_B05.tif"),
                              _read(Path(c.truth_dir) / "surface_B05.tif"))


# ------------------------------------------------------------------ merged when read
def _masked_scene(ny, nx, seed):
    """small_scene with clouds, shadows, QAI nodata, predictor and 20 m nodata."""
    scene, _ = small_scene(ny=ny, nx=nx, seed=seed)
    rng = np.random.default_rng(seed + 100)
    qai = scene.qai
    Q.set_field(qai, Q.CLOUD, Q.CLOUD_OPAQUE, rng.random(qai.shape) < 0.08)
    Q.set_flag(qai, Q.SHADOW, rng.random(qai.shape) < 0.05)
    off = np.zeros(qai.shape, bool)
    off[: ny // 5, : nx // 3] = True
    Q.set_flag(qai, Q.NODATA, off)
    for d in RM.PREDICTORS:
        scene.toa[d][off] = -9999
    scene.toa["RED"][rng.random(qai.shape) < 0.01] = -9999
    scene.toa["SWIR1"][rng.random(scene.toa["SWIR1"].shape) < 0.02] = -9999
    for d in RM.TARGETS:                       # no 20 m band valid there
        scene.toa[d][ny // 4:ny // 4 + 5, nx // 4:nx // 4 + 6] = -9999
    return scene


@pytest.mark.parametrize("seed", [0, 1])
def test_merged_when_read_equals_the_merge(seed):
    """Blocks of rows and columns read in any order (down the image, jumps back, wider
    and narrower, partial columns at both edges) equal the eager merge, with the
    products' nodata applied; the count of merged pixels is the eager one."""
    ny, nx = 120, 96
    eager, lazy = _masked_scene(ny, nx, seed), _masked_scene(ny, nx, seed)
    stats = RM.resolution_merge(eager, "IMPROPHE")
    ls = RM.resolution_merge(lazy, "IMPROPHE", lazy=True)
    assert ls["lazy"] and all(lazy.grids[d] == lazy.grid for d in RM.TARGETS)
    bands = [lazy.toa[d] for d in RM.TARGETS]
    merged = bands[0].merged
    assert all(isinstance(b, RM.MergedBand) and b.shape == (ny, nx) for b in bands)
    # the products' QAI: more nodata than at the merge (the reader must apply it)
    final = lazy.qai.copy()
    Q.set_flag(final, Q.NODATA, np.add.outer(np.arange(ny), np.arange(nx)) % 17 == 0)
    merged.capture_nodata(final)
    off = Q.is_nodata(final)
    ref = {d: eager.toa[d].copy() for d in RM.TARGETS}
    for d in RM.TARGETS:
        ref[d][off] = -9999
    rng = np.random.default_rng(seed)
    windows = [(0, 30, 0, nx), (10, 45, 0, nx), (40, 90, 5, 60), (41, 95, 3, 61),
               (90, 120, 50, 96), (0, 5, 90, 96), (60, 61, 0, 1), (100, 120, 0, 96)]
    windows += [tuple(sorted(rng.integers(0, ny + 1, 2))) + tuple(sorted(rng.integers(0, nx + 1, 2)))
                for _ in range(40)]
    for s0, s1, c0, c1 in windows:
        for k, d in enumerate(RM.TARGETS):
            got = bands[k].rows(s0, s1, c0, c1)
            assert got.shape == (s1 - s0, nx)
            assert np.array_equal(got[:, c0:c1], ref[d][s0:s1, c0:c1]), (d, s0, s1, c0, c1)
    for k, d in enumerate(RM.TARGETS):
        assert np.array_equal(np.asarray(bands[k]), ref[d])
        # valid_rows: nodata exactly where the merged band is, outside the products' nodata
        v = bands[k].valid_rows(0, ny)
        assert np.array_equal((v == -9999)[~off], (ref[d] == -9999)[~off])
    none = np.all([b.valid_rows(0, ny) == -9999 for b in bands], axis=0)
    assert none.any() and not none.all()
    assert np.array_equal(merged.any_valid_rows(0, ny) == -9999, none)
    assert np.array_equal(merged.any_valid_rows(30, 70) == -9999, none[30:70])
    assert merged.count_merged() == stats["pixels_merged"] > 0
