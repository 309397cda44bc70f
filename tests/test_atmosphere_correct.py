"""correct_atmosphere on scenes of synthetic Level-1 products whose TOA is replaced by the l2ps
forward model of known surfaces (checks the plumbing: RT grid, block-wise kernel, water vapour,
flags, scaling, products, factor hook).  Closure of the RT itself against 6S:
test_atmosphere_closure.py."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from l2ps import qai as Q

pytest.importorskip("rasterio")
constants = pytest.importorskip("l2ps.atmosphere.constants")
if not constants.CONSTANTS_FILE.exists():
    pytest.skip("atmosphere constants not generated", allow_module_level=True)

from l2ps.atmosphere import grid as G                       # noqa: E402
from l2ps.atmosphere.aerosol import fallback_spectrum        # noqa: E402
from l2ps.atmosphere.correct import correct_atmosphere as _correct_atmosphere  # noqa: E402
from l2ps.geometry import Geometry                           # noqa: E402

PARAMS = dict(cloud_buffer=300.0, cirrus_buffer=0.0, shadow_buffer=90.0, snow_buffer=30.0,
              nthread=2, parallel_reads=False, buffer_nodata=False, impulse_noise=True,
              erase_clouds=False, do_aod=False, dir_aod=None, dir_wvplut=None, water_vapor=2.0,
              strict_water_vapor=False, multi_scattering=True, adjacency_effect=False,
              file_dem=None, use_dem_database=False, do_topo=False)
SZA, SAZ, VZA, VAZ = 40.0, 150.0, 3.0, 100.0


def correct_atmosphere(scene, params, factor_hook=None, reuse_toa=False):
    """The module's scenes are shared between tests: keep their TOA (reuse_toa=False)."""
    return _correct_atmosphere(scene, params, factor_hook=factor_hook, reuse_toa=reuse_toa)


def params(**kw):
    d = dict(PARAMS)
    d.update(kw)
    return SimpleNamespace(**d)


@pytest.fixture(scope="module")
def landsat_scene(tmp_path_factory):
    return _scene(tmp_path_factory.mktemp("lnd"), "landsat")


@pytest.fixture(scope="module")
def s2_scene(tmp_path_factory):
    return _scene(tmp_path_factory.mktemp("s2"), "sentinel2")


def _scene(out: Path, kind: str):
    from l2ps.level1 import open_level1
    from l2ps.pipeline import prepare_scene
    from l2ps.synth import make_landsat, make_sentinel2
    if kind == "landsat":
        p = make_landsat(out, sensor="LND08", size=(90, 120), clouds=False, relief=0.0, seed=3)
    else:
        p = make_sentinel2(out, sensor="SEN2A", size=(120, 120), clouds=False, relief=0.0, seed=3)
    cm = open_level1(Path(p.path))
    level1 = cm.__enter__()
    try:
        scene = prepare_scene(level1, params())
    finally:
        cm.__exit__(None, None, None)
    g = scene.geometry
    shape = g.sun_zenith.shape
    # constant geometry: bilinear interpolation of the RT terms is then exact
    scene.geometry = Geometry(g.grid, np.full(shape, SZA, np.float32), np.full(shape, SAZ, np.float32),
                              np.full(shape, VZA, np.float32), np.full(shape, VAZ, np.float32),
                              g.acquired)
    scene.qai[:] = 0
    return scene


def _surface(shape, lo=0.02, hi=0.5):
    ny, nx = shape
    return np.linspace(lo, hi, nx)[None, :].repeat(ny, axis=0)


def _forward(scene, domain, rho, wv, wv_nodes, aod550=None):
    """TOA ×10000 (int16) of surface ``rho`` with the scene's (constant) atmosphere (AOD: the
    fallback spectrum, or ``aod550`` with the continental spectral shape)."""
    from l2ps.atmosphere.constants import band_optics
    from l2ps.atmosphere.gas import ozone_amount
    from l2ps.atmosphere.correct import _cell_lonlat
    g = scene.geometry
    opt = band_optics(scene.sensor, domain)
    doy = scene.level1.acquired.timetuple().tm_yday
    lon, lat = _cell_lonlat(g.grid)
    spec = fallback_spectrum(None, doy, 0, 0)
    aod = float(spec.tau(opt.wavelength)) / opt.tau_a_per_aod550 if aod550 is None else aod550
    brt = G.compute_band_rt(opt, g.sun_zenith, g.sun_azimuth, g.view_zenith, g.view_azimuth,
                            np.array([0.0]), aod, 0.0, wv_nodes, ozone_amount(lon, lat, doy))
    k = int(np.argmin(np.abs(np.atleast_1d(wv_nodes) - wv)))
    toa = G.toa_from_boa(brt, rho, wv_index=k)
    return np.round(toa * 10000).astype(np.int16)


def test_landsat_recovers_surface_and_sets_flags(landsat_scene):
    scene = landsat_scene
    truth = {}
    for d in scene.spec.output_domains:
        rho = _surface(scene.toa[d].shape)
        rho[0, :3] = (-0.05, 1.2, 0.3)
        truth[d] = rho
        scene.toa[d] = _forward(scene, d, rho, 2.0, 2.0)
    scene.toa["BLUE"][0, 3] = -9999
    res = correct_atmosphere(scene, params())
    assert set(res.boa) == set(scene.spec.output_domains)
    for d, rho in truth.items():
        b = res.boa[d].astype(np.float64) / 10000
        ok = res.boa[d] != -9999
        assert b.dtype == np.float64 and res.boa[d].dtype == np.int16
        np.testing.assert_allclose(b[ok], rho[ok], atol=3e-4, err_msg=d)
    assert res.boa["BLUE"][0, 3] == -9999
    assert Q.get_flag(scene.qai[0:1, 0:1], Q.SUBZERO).all()
    assert Q.get_flag(scene.qai[0:1, 1:2], Q.SATURATION).all()
    assert not Q.get_flag(scene.qai[5:, :], Q.SUBZERO).any()
    assert (Q.get_field(scene.qai, Q.AEROSOL)[scene.qai & 1 == 0] == 3).all()
    assert (res.wvp[scene.qai & 1 == 0] == 2000).all()
    tau_g = fallback_spectrum(None, 1, 0, 0).tau(constants.band_optics("LND08", "GREEN").wavelength)
    assert abs(int(res.aod[10, 10]) - int(tau_g * 1000)) <= 1
    assert res.water_vapor_scene == 2.0 and res.n_targets == (0, 0)
    assert res.log_fragment.startswith("AOD: ")
    assert {"water_vapor", "aod", "radtran", "adjacency", "inversion", "products"} <= set(res.stats)


def test_factor_hook_multiplies_and_single_scattering_differs(landsat_scene):
    scene = landsat_scene
    for d in scene.spec.output_domains:
        scene.toa[d] = _forward(scene, d, np.full(scene.toa[d].shape, 0.2), 2.0, 2.0)
    scene.qai[:] = 0
    calls = []

    def hook(domain, rows):
        calls.append((domain, rows.start, rows.stop))
        return np.full((rows.stop - rows.start, scene.grids[domain].nx), 1.5, np.float32)

    res = correct_atmosphere(scene, params(), factor_hook=hook)
    assert abs(res.boa["RED"][20, 20] - 3000) <= 3
    assert {c[0] for c in calls} == set(scene.spec.output_domains)
    scene.qai[:] = 0
    ss = correct_atmosphere(scene, params(multi_scattering=False))
    assert abs(int(ss.boa["BLUE"][20, 20]) - 2000) > 20     # other path reflectance


def test_sentinel2_water_vapour_is_retrieved(s2_scene):
    scene = s2_scene
    w_true = 2.5
    for d in set(scene.spec.output_domains) | {"NIR", "VAPOR"}:
        rho = np.full(scene.toa[d].shape, 0.3)
        scene.toa[d] = _forward(scene, d, rho, w_true, G.WV_NODES)
    # a dark corner: B8A TOA < 0.15 → no reference → filled with the scene mean, flagged
    scene.toa["NIR"][:12, :12] = 500
    res = correct_atmosphere(scene, params())
    valid = (scene.qai & 1) == 0
    w = res.wvp[valid] / 1000.0
    assert np.median(w) == pytest.approx(w_true, abs=0.05)
    fill = Q.get_flag(scene.qai, Q.WATER_VAPOR_FILL)
    assert fill[:30, :30].any() and not fill[60:, 60:].any()
    b = res.boa["GREEN"][60:, 60:] / 10000
    assert np.median(b) == pytest.approx(0.3, abs=0.002)
    assert res.boa["SWIR1"].shape == scene.toa["SWIR1"].shape    # native 20 m grid
    # deterministic whatever the thread count
    import numba
    n = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        scene.qai[:] = 0
        res1 = correct_atmosphere(scene, params())
    finally:
        numba.set_num_threads(n)
    assert np.array_equal(res1.wvp, res.wvp)
    assert all(np.array_equal(res1.boa[d], res.boa[d]) for d in res.boa)


def test_adjacency_on_uniform_surface_equals_homogeneous(landsat_scene):
    scene = landsat_scene
    for d in scene.spec.output_domains:
        scene.toa[d] = _forward(scene, d, np.full(scene.toa[d].shape, 0.25), 2.0, 2.0)
    scene.qai[:] = 0
    res = correct_atmosphere(scene, params(adjacency_effect=True))
    for d in scene.spec.output_domains:
        assert np.abs(res.boa[d].astype(int) - 2500).max() <= 5, d
    assert res.stats["adjacency"] > 0


def test_boa_written_into_toa_arrays_is_identical(landsat_scene):
    """reuse_toa=True (the pipeline's call) writes BOA into the TOA arrays of the output bands,
    removes them from scene.toa except BLUE/RED when HOT is wanted, and changes no value."""
    scene = landsat_scene
    for d in scene.spec.output_domains:
        scene.toa[d] = _forward(scene, d, _surface(scene.toa[d].shape), 2.0, 2.0)
    scene.qai[:] = 0
    keep = {d: a.copy() for d, a in scene.toa.items()}
    ref = correct_atmosphere(scene, params(adjacency_effect=True, output_aod=False,
                                           output_wvp=False))
    assert all(np.array_equal(scene.toa[d], keep[d]) for d in keep)
    assert ref.aod is None and ref.wvp is None
    qai_ref = scene.qai.copy()
    arrays = {d: scene.toa[d] for d in scene.spec.output_domains}
    scene.qai[:] = 0
    res = correct_atmosphere(scene, params(adjacency_effect=True, output_hot=True), reuse_toa=True)
    assert np.array_equal(scene.qai, qai_ref)
    for d in scene.spec.output_domains:
        assert np.array_equal(res.boa[d], ref.boa[d]), d
        if d in ("BLUE", "RED"):                    # HOT reads them: still TOA
            assert res.boa[d] is not arrays[d] and np.array_equal(scene.toa[d], keep[d])
        else:
            assert res.boa[d] is arrays[d] and d not in scene.toa
    for d in scene.spec.output_domains:             # restore for the other tests
        scene.toa[d] = keep[d]


VEGETATION = {"ULTRABLUE": 0.03, "BLUE": 0.03, "GREEN": 0.05, "RED": 0.03, "NIR": 0.35,
              "CIRRUS": 0.01, "SWIR1": 0.15, "SWIR2": 0.04}


def test_dark_vegetation_aod_is_retrieved(landsat_scene):
    scene = landsat_scene
    for d in scene.toa:
        if d in VEGETATION:
            scene.toa[d] = _forward(scene, d, np.full(scene.toa[d].shape, VEGETATION[d]), 2.0, 2.0,
                                    aod550=0.3)
    scene.qai[:] = 0
    res = correct_atmosphere(scene, params(do_aod=True))
    assert res.n_targets[1] > 0
    assert res.aod550_scene == pytest.approx(0.3, abs=0.03)
    assert (Q.get_field(scene.qai, Q.AEROSOL) < 3).all()
    assert res.log_fragment.endswith(f"# of targets: 0/{res.n_targets[1]}. ")
    assert np.median(res.boa["RED"]) == pytest.approx(300, abs=30)


def test_dark_water_aod_is_retrieved(landsat_scene):
    """A lake of a library spectrum (plus the skylight reflected by its surface) under a known
    AOD: the water branch of the dark-target retrieval finds it (spec 02 §3.3–§3.4)."""
    from l2ps.atmosphere import darktarget as DT
    from l2ps.atmosphere import radtran as rt
    scene = landsat_scene
    lib = DT.water_library(scene.sensor, DT.WATER_BANDS)
    k = 9                                          # Chl 0.3 mg m-3, TSM 2 g m-3
    water = dict(zip(DT.WATER_BANDS, lib[k]))
    water.update({"ULTRABLUE": water["BLUE"], "CIRRUS": 0.0, "SWIR1": 0.002, "SWIR2": 0.001})
    g = scene.geometry
    rho_f = float(rt.fresnel_reflection(SZA))
    from l2ps.atmosphere.constants import band_optics
    for d in scene.toa:
        if d in water:
            opt = band_optics(scene.sensor, d)
            brt = G.compute_band_rt(opt, g.sun_zenith, g.sun_azimuth, g.view_zenith,
                                    g.view_azimuth, np.array([0.0]), 0.3, 0.0, 2.0, 0.3)
            sky = rho_f * (brt.t_sun[0, 0, 0] - brt.tdir_sun[0, 0, 0]) / brt.t_sun[0, 0, 0]
            scene.toa[d] = _forward(scene, d, np.full(scene.toa[d].shape, water[d] + sky), 2.0,
                                    2.0, aod550=0.3)
    scene.qai[:] = 0
    res = correct_atmosphere(scene, params(do_aod=True))
    assert res.n_targets[0] > 0 and res.n_targets[1] == 0
    assert res.aod550_scene == pytest.approx(0.3, abs=0.03)
    assert (Q.get_field(scene.qai, Q.AEROSOL) == 0).all()


def test_water_library_is_physical():
    """Clear water is black in the NIR; sediment brightens the red; the band values are
    response-weighted means of the 400–900 nm spectra."""
    from l2ps.atmosphere import darktarget as DT
    lib = DT.water_library("SEN2A", ("BLUE", "GREEN", "RED", "NIR"))
    assert lib.shape == (40, 4) and (lib >= 0).all() and lib.max() < 0.15
    clear, turbid = lib[0], lib[16]                # Chl 0.03 / TSM 0 and TSM 20
    assert clear[3] < 0.001 and clear[0] > clear[2]
    assert turbid[2] > 5 * clear[2] and turbid[3] > 0.003


def test_aerosol_scale_height_fit():
    """§3.7: τ = τ0·exp(−z/H) at target elevations gives back H; too few targets, too small an
    elevation range or an AOD that does not decrease give None; the minimum is 1.2 km."""
    from l2ps.atmosphere.darktarget import fit_scale_height
    rng = np.random.default_rng(0)
    z = rng.uniform(0.2, 2.0, 12)
    for h in (1.5, 2.5, 6.0):
        tau = 0.3 * np.exp(-z / h) * (1 + 0.01 * rng.standard_normal(z.size))
        assert fit_scale_height(z, tau, 2.0) == pytest.approx(h, rel=0.15)
    assert fit_scale_height(z[:3], 0.3 * np.exp(-z[:3] / 2), 2.0) is None
    assert fit_scale_height(0.2 + 0.05 * z / 2, 0.3 * np.exp(-z / 2), 2.0) is None
    assert fit_scale_height(z, 0.3 * np.exp(-z / 2), 0.05) is None
    assert fit_scale_height(z, 0.2 + 0.01 * z, 2.0) is None
    assert fit_scale_height(z, 0.3 * np.exp(-z / 0.3), 2.0) == 1.2
