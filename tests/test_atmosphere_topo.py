"""Topographic correction inside the atmospheric correction (DO_TOPO, spec 02 §6) on synthetic
Landsat scenes with relief.  The synthetic generator lights the surface by the local incidence
angle with its own direct/diffuse split (``l2ps.synth.scene.direct_fraction``) and its TOA comes
from 6S tables, so this is an independent check of C estimation, spectral propagation and the
factor A.

Measure: for one land cover (soil background), the median of BOA/truth on sun-facing slopes
(top 5 % of cos i/μs) and on shaded slopes (bottom 5 %, incidence < 80°) of slopes > 10°;
their relative difference must fall below 10 % in NIR and SWIR after the correction (and be
large before it).  Flat pixels (slope < 0.5°) change only by the cosine of their tiny slope.
Run with ``-s`` for the numbers per band."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
from l2ps.atmosphere import constants  # noqa: E402

PARAMS = dict(cloud_buffer=300.0, nthread=2, parallel_reads=False, buffer_nodata=False,
              impulse_noise=True, erase_clouds=False, do_aod=False, dir_aod=None, dir_wvplut=None,
              water_vapor=1.5, strict_water_vapor=False, multi_scattering=True,
              adjacency_effect=True, use_dem_database=False, do_topo=False, dem_nodata=-32767,
              dem_resampling="BL", do_brdf=False)
# (WRS-2 row, date) → sun zenith ≈ 30° and ≈ 65° at path 193
CASES = {"sun30": (30, "2021-05-10"), "sun65": (24, "2021-10-25")}
SOIL = 1            # truth cover.tif code of the soil background (0 = outside the footprint)


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.mark.parametrize("case", sorted(CASES))
def test_sun_facing_and_shaded_slopes_agree(tmp_path, case):
    from l2ps.atmosphere.correct import correct_atmosphere
    from l2ps.level1 import open_level1
    from l2ps.pipeline import prepare_scene
    from l2ps.synth import make_landsat
    if not constants.CONSTANTS_FILE.exists():
        pytest.skip("atmosphere constants not generated")
    row, date = CASES[case]
    p = make_landsat(tmp_path, sensor="LND08", size=(500, 500), clouds=False, relief=1.0,
                     aod=0.2, water_vapor=1.5, seed=7, row=row, date=date)
    if "PROVISIONAL" in str(p.truth.get("atmosphere", "")):
        pytest.skip("6S tables of l2ps.synth not installed: synthetic atmosphere is provisional")
    truth = Path(p.truth_dir)
    res = {}
    for topo in (False, True):
        params = SimpleNamespace(**{**PARAMS, "do_topo": topo, "file_dem": truth / "dem.tif"})
        with open_level1(Path(p.path)) as level1:
            scene = prepare_scene(level1, params)
            res[topo] = correct_atmosphere(scene, params)
    assert "topography" in res[True].info and "topography" not in res[False].info
    tp = scene.topography
    cos_i, slope = tp.cos_i, tp.slope
    mu = scene.geometry.cos_sun_zenith(scene.grid)
    clear = (_read(truth / "cover.tif") == SOIL) & (_read(truth / "nodata.tif") == 0) \
        & ((scene.qai & 1) == 0)
    lit = clear & (cos_i > np.cos(np.radians(80.0))) & (slope > np.radians(10.0))
    q = cos_i / mu
    lo, hi = np.percentile(q[lit], [5, 95])
    sun, shade = lit & (q >= hi), lit & (q <= lo)
    flat = clear & (slope < np.radians(0.5))
    assert sun.sum() > 100 and shade.sum() > 100 and flat.sum() > 1000
    sza = float(np.degrees(np.arccos(np.mean(mu[clear]))))
    print(f"\n{case}: sun zenith {sza:.1f}°, cos i/μs sun-facing ≥ {hi:.2f} (n={sun.sum()}), "
          f"shaded ≤ {lo:.2f} (n={shade.sum()}); {res[True].info['topography']}")
    for d in res[True].boa:
        t = _read(truth / f"surface_{d}.tif").astype(np.float64)
        rel = {}
        for topo in (False, True):
            b = res[topo].boa[d].astype(np.float64)
            rs, rh = np.median(b[sun] / t[sun]), np.median(b[shade] / t[shade])
            rel[topo] = abs(rs - rh) / (0.5 * (rs + rh))
        change = np.abs(res[True].boa[d][flat].astype(np.float64) / res[False].boa[d][flat] - 1)
        print(f"  {d:6s} sun-facing vs shaded: before {100 * rel[False]:5.1f} %, after "
              f"{100 * rel[True]:5.1f} %; flat pixels |ΔBOA|/BOA median {100 * np.median(change):.2f} %"
              f" p99 {100 * np.percentile(change, 99):.2f} %")
        if d in ("NIR", "SWIR1", "SWIR2"):
            assert rel[True] < 0.10, d
            assert rel[False] > (0.30 if case == "sun65" else 0.15), d
        # slope < 0.5°: |cos i/μs − 1| ≤ tan θs·0.0087 (1.9 % at 65°)
        assert np.median(change) < 0.01 and np.percentile(change, 99) < 0.025, d
