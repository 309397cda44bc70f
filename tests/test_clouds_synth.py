"""Cloud, shadow, snow and water detection on synthetic scenes with known truth
(spec 01 §6; l2ps.synth writes the truth masks beside each product).

Scoring (independent of the code under test): truth cores and clear pixels away from them.
Pixels within CLOUD_BUFFER (+2 px) of a truth cloud, within SHADOW_BUFFER (+2 px) of a truth
shadow, thin clouds and cirrus are not part of the clear/cloud/shadow accuracy; thin cloud
and cirrus detection is reported. Truth shadow = synth's "direct beam transmission < 0.5";
a shadow pixel is scored as shadow only if it is not under any cloud, lies farther than
CLOUD_BUFFER + 2 px from every truth cloud, is not on the shadow's outer pixel, and the part
of the cloud that casts it is seen in valid pixels of the image (:func:`observable_shadow`:
shadows of clouds outside the image or in its nodata corners are not scored at all). Predicted class: cloud if the QAI cloud state > 0, else
shadow if the shadow bit is set, else clear. Run with ``-s`` to see the confusion matrices.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from l2ps import qai as Q

rasterio = pytest.importorskip("rasterio")

PARAMS = dict(cloud_buffer=300.0, cirrus_buffer=0.0, shadow_buffer=90.0, snow_buffer=30.0,
              cloud_threshold=0.225, shadow_threshold=0.02, max_cloud_cover_frame=100.0,
              max_cloud_cover_tile=100.0, nthread=2, parallel_reads=False,
              buffer_nodata=False, impulse_noise=True, erase_clouds=False)

LANDSAT = ("LND05", "LND07", "LND08")
CLASSES = ("clear", "cloud", "shadow")


def real_parameters(**kw):
    """A validated :class:`~l2ps.params.Parameters` (FORCE defaults, folders in a temporary
    directory) with ``kw`` (lower-case keys) replaced."""
    import tempfile
    import warnings
    from l2ps.demo import set_parameter_values
    from l2ps.params import read_parameters, write_skeleton
    d = Path(tempfile.mkdtemp(prefix="l2ps-clouds-prm-"))
    f = d / "level2.prm"
    write_skeleton(f)
    vals = {k: str(d) for k in ("DIR_LEVEL2", "DIR_LOG", "DIR_TEMP", "DIR_PROVENANCE")}
    vals["FILE_QUEUE"] = str(d / "queue.txt")
    f.write_text(set_parameter_values(f.read_text(), vals))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = read_parameters(f, check_paths=False)
    return p.replace(**kw)


def make_params(**kw):
    d = dict(PARAMS)
    d.update(kw)
    return real_parameters(**d)


def scene_of(path, params):
    """Scene of a Level-1 product (the front half of the chain, pipeline.prepare_scene);
    the extraction folder of archives lives as long as the returned context."""
    from l2ps.level1 import open_level1
    from l2ps.pipeline import prepare_scene
    cm = open_level1(Path(path))
    level1 = cm.__enter__()
    try:
        return prepare_scene(level1, params)
    finally:
        cm.__exit__(None, None, None)


def read_truth(truth_dir) -> dict:
    out = {}
    for name in ("cloud", "shadow", "snow", "water", "cover", "nodata", "dem", "sun_zenith",
                 "sun_azimuth", "view_zenith", "view_azimuth"):
        with rasterio.open(Path(truth_dir) / f"{name}.tif") as ds:
            out[name] = ds.read(1)
    out["json"] = json.loads((Path(truth_dir) / "truth.json").read_text())
    return out


def observable_shadow(truth: dict) -> np.ndarray:
    """Truth shadow pixels whose cause can be seen in the image (bool).

    A shadow pixel q is shaded by the point g of a cloud where the ray from q toward the sun
    meets the cloud's altitude H: g = q + (H − z(q))·tan θs·u_sun (synth's shadow model,
    docs/synth.md). The shading cloud is the one (of truth.json's list) whose noise-free
    footprint ellipse is nearest to g (smallest normalised radius). The sensor sees g at
    p = g − (H − z)·tan θv·u_view. q counts as an observable shadow only if p is a valid
    pixel of the image: shadows of clouds outside the image or in its nodata area cannot be
    attributed to any cloud by an Fmask-type method and are not scored."""
    ts = truth["shadow"].astype(bool)
    doc = truth["json"]
    clouds = doc["clouds"]
    out = np.zeros(ts.shape, bool)
    if not ts.any() or not clouds:
        return out
    g = doc["grid"]
    north = float(doc.get("grid_north_deg", 0.0))
    rows, cols = np.nonzero(ts)
    x = g["x0"] + (cols + 0.5) * g["dx"]
    y = g["y0"] - (rows + 0.5) * g["dy"]
    z = truth["dem"][rows, cols].astype(np.float64)
    tan_s = np.tan(np.radians(truth["sun_zenith"][rows, cols].astype(np.float64)))
    a_s = np.radians(truth["sun_azimuth"][rows, cols].astype(np.float64) + north)
    tan_v = np.tan(np.radians(truth["view_zenith"][rows, cols].astype(np.float64)))
    a_v = np.radians(truth["view_azimuth"][rows, cols].astype(np.float64) + north)
    best_r = np.full(rows.size, np.inf)
    px = np.full(rows.size, np.nan)
    py = np.full(rows.size, np.nan)
    for c in clouds:
        dh = np.maximum(c["height"] - z, 0.0)
        gx = x + dh * tan_s * np.sin(a_s)
        gy = y + dh * tan_s * np.cos(a_s)
        ca, sa = np.cos(np.radians(c["angle"])), np.sin(np.radians(c["angle"]))
        dx, dy = gx - c["x"], gy - c["y"]
        u = (dx * ca + dy * sa) / c["radius"]
        v = (-dx * sa + dy * ca) / (c["radius"] * c["elongation"])
        r = np.hypot(u, v)
        take = r < best_r
        best_r[take] = r[take]
        px[take] = (gx - dh * tan_v * np.sin(a_v))[take]
        py[take] = (gy - dh * tan_v * np.cos(a_v))[take]
    pc = np.floor((px - g["x0"]) / g["dx"])
    pr = np.floor((g["y0"] - py) / g["dy"])
    inside = (pc >= 0) & (pc < ts.shape[1]) & (pr >= 0) & (pr < ts.shape[0])
    ok = np.zeros(rows.size, bool)
    ok[inside] = truth["nodata"][pr[inside].astype(int), pc[inside].astype(int)] == 0
    out[rows[ok], cols[ok]] = True
    return out


def _dist_m(mask: np.ndarray, res: float) -> np.ndarray:
    """Distance (m) of every pixel to the nearest TRUE pixel of mask (inf if none)."""
    if not mask.any():
        return np.full(mask.shape, np.inf)
    return ndimage.distance_transform_edt(~mask) * res


def score(qai: np.ndarray, truth: dict, params, res: float) -> dict:
    """Confusion matrix of clear/cloud/shadow on the scored pixels, recalls and precision."""
    tc, ts = truth["cloud"], truth["shadow"].astype(bool)
    valid = (truth["nodata"] == 0) & Q.is_valid(qai)
    anycloud = tc > 0
    opaque = tc == 2
    shadow_t = ts & ~anycloud
    # shadows whose cloud is outside the image or in its nodata area: not scored (neither
    # shadow nor clear)
    unseen = ts & ~observable_shadow(truth)
    margin = 2 * res
    d_cloud = _dist_m(anycloud, res)
    d_shadow = _dist_m(ts, res)
    core_opaque = opaque & (_dist_m(~opaque, res) > margin) & valid
    core_shadow = (shadow_t & ~unseen & (_dist_m(~shadow_t, res) > res)
                   & (d_cloud > params.cloud_buffer + margin) & valid)
    clear = (~anycloud & ~ts & (d_cloud > params.cloud_buffer + margin)
             & (d_shadow > params.shadow_buffer + margin) & valid)
    state = Q.get_field(qai, Q.CLOUD)
    sbit = Q.get_flag(qai, Q.SHADOW)
    pred = np.where(state > 0, 1, np.where(sbit, 2, 0))
    truth_cls = np.full(qai.shape, -1)
    truth_cls[clear] = 0
    truth_cls[core_opaque] = 1
    truth_cls[core_shadow] = 2
    scored = truth_cls >= 0
    cm = np.zeros((3, 3), np.int64)
    np.add.at(cm, (truth_cls[scored], pred[scored]), 1)
    oa = float(np.trace(cm) / max(cm.sum(), 1))
    shadow_pool = clear | core_shadow
    pred_sh = sbit & shadow_pool
    out = {
        "confusion": cm, "overall_accuracy": oa,
        "opaque_recall": float(np.mean(state[core_opaque] >= 2)) if core_opaque.any() else None,
        "opaque_any_recall": float(np.mean(state[core_opaque] > 0)) if core_opaque.any() else None,
        "opaque_states": np.bincount(state[core_opaque], minlength=4).tolist(),
        "shadow_recall": float(np.mean(sbit[core_shadow])) if core_shadow.any() else None,
        "shadow_precision": float(np.mean(core_shadow[pred_sh])) if pred_sh.any() else None,
        "clear_false_cloud": float(np.mean(state[clear] > 0)) if clear.any() else None,
        "thin_detected": float(np.mean(state[(tc == 1) & valid] > 0)) if ((tc == 1) & valid).any() else None,
        "cirrus_detected": float(np.mean(state[(tc == 3) & valid] > 0)) if ((tc == 3) & valid).any() else None,
        "n": {"clear": int(clear.sum()), "opaque_core": int(core_opaque.sum()),
              "shadow_core": int(core_shadow.sum()),
              "shadow_unseen_cloud": int((unseen & valid).sum())},
    }
    return out


def report(name: str, s: dict, result=None) -> None:
    cm = s["confusion"]
    lines = [f"\n== {name}: confusion (rows truth, columns predicted) =="]
    lines.append("          " + "".join(f"{c:>9}" for c in CLASSES))
    for i, c in enumerate(CLASSES):
        lines.append(f"{c:>9} " + "".join(f"{v:9d}" for v in cm[i]))
    f = lambda v: "n/a" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    lines.append(f"OA {f(s['overall_accuracy'])}; opaque recall (state 2|3) "
                 f"{f(s['opaque_recall'])}, any state {f(s['opaque_any_recall'])}, states "
                 f"{s['opaque_states']}; shadow recall {f(s['shadow_recall'])}, precision "
                 f"{f(s['shadow_precision'])}; clear→cloud {f(s['clear_false_cloud'])}; thin "
                 f"detected {f(s['thin_detected'])}; cirrus detected {f(s['cirrus_detected'])}; "
                 f"n {s['n']}")
    if result is not None:
        lines.append(f"log: {result.log_fragment} unbuffered cc {result.cloud_cover_unbuffered:.2f} %")
    print("\n".join(lines))


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("clouds_synth")


_PRODUCTS: dict = {}


def product(synth_dir, sensor: str, **kw):
    key = (sensor, tuple(sorted(kw.items())))
    if key not in _PRODUCTS:
        from l2ps.synth import make_landsat, make_sentinel2
        out = synth_dir / f"{sensor}_{len(_PRODUCTS)}"
        if sensor.startswith("SEN2"):
            kw.setdefault("size", (600, 600))
            _PRODUCTS[key] = make_sentinel2(out, sensor=sensor, **kw)
        else:
            kw.setdefault("size", (400, 400))
            _PRODUCTS[key] = make_landsat(out, sensor=sensor, **kw)
    return _PRODUCTS[key]


# ----------------------------------------------------------------------------- accuracy
CASES = [("LND05", 3), ("LND07", 4), ("LND08", 1), ("SEN2A", 1)]
_SCORES: dict = {}


def scored(synth_dir, sensor, seed):
    """(scene, result, score) of one synthetic case (computed once per session)."""
    if (sensor, seed) not in _SCORES:
        from l2ps.clouds import detect_clouds
        kw = {"seed": seed, "relief": 0.3}
        if sensor == "LND07":
            kw["slc_off"] = False
        prod = product(synth_dir, sensor, **kw)
        params = make_params()
        scene = scene_of(prod.path, params)
        result = detect_clouds(scene, params)
        s = score(scene.qai, read_truth(prod.truth_dir), params, scene.grid.res)
        report(f"{sensor} seed {seed}", s, result)
        _SCORES[(sensor, seed)] = (scene, result, s)
    return _SCORES[(sensor, seed)]


@pytest.mark.parametrize("sensor,seed", CASES)
def test_masks_against_truth(synth_dir, sensor, seed):
    """Sanity of every case (the targets are in test_brief_targets); thin cloud and cirrus
    are reported and mostly flagged."""
    scene, result, s = scored(synth_dir, sensor, seed)
    assert s["n"]["opaque_core"] > 200 and s["n"]["shadow_core"] > 100
    assert s["opaque_any_recall"] >= 0.99
    assert s["opaque_recall"] >= 0.93
    assert s["clear_false_cloud"] <= 0.03
    assert s["thin_detected"] >= 0.9
    assert s["cirrus_detected"] is None or s["cirrus_detected"] >= 0.6
    assert not result.skip
    assert 0 < result.cloud_cover_unbuffered <= result.cloud_cover <= 100
    assert result.log_fragment.startswith("dc: ") and result.log_fragment.endswith("%. ")
    assert set(result.stats["timings"]) >= {"potential", "finalize", "total"}


@pytest.mark.parametrize("sensor,seed", CASES)
def test_brief_targets(synth_dir, sensor, seed):
    """The issue's acceptance targets: OA ≥ 95 %, opaque recall ≥ 95 %, shadow recall and
    precision ≥ 85 % (scored as the module docstring says)."""
    _, _, s = scored(synth_dir, sensor, seed)
    assert s["overall_accuracy"] >= 0.95
    assert s["opaque_recall"] >= 0.95
    assert s["shadow_recall"] >= 0.85
    assert s["shadow_precision"] >= 0.85


def test_single_cloud_shadow_geometry(synth_dir):
    """Two opaque clouds at known heights on flat ground: shadows found where they are."""
    from l2ps.clouds import detect_clouds
    from l2ps.synth import CloudSpec, make_landsat
    clouds = [CloudSpec(kind="opaque", col=0.5, row=0.5, radius=1500, height=2350),
              CloudSpec(kind="opaque", col=0.3, row=0.7, radius=900, height=5350)]
    prod = make_landsat(synth_dir / "two_clouds", sensor="LND08", size=(400, 400), seed=5,
                        clouds=clouds, relief=0.0)
    params = make_params()
    scene = scene_of(prod.path, params)
    result = detect_clouds(scene, params)
    s = score(scene.qai, read_truth(prod.truth_dir), params, scene.grid.res)
    report("LND08 two clouds", s, result)
    assert s["opaque_recall"] >= 0.99 and s["overall_accuracy"] >= 0.97
    assert s["shadow_recall"] >= 0.95 and s["shadow_precision"] >= 0.95


# ----------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("sensor", ["LND08", "SEN2A"])
def test_same_masks_with_one_or_two_threads(synth_dir, sensor):
    import numba
    from l2ps.clouds import detect_clouds
    prod = product(synth_dir, sensor, seed=11, relief=0.3,
                   size=(300, 300) if sensor != "SEN2A" else (360, 360))
    params = make_params()
    before = numba.get_num_threads()
    out = []
    try:
        for n in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(n)
            scene = scene_of(prod.path, params)
            r = detect_clouds(scene, params)
            out.append((scene.qai.copy(), r.cloud_cover, r.stats.get("shadow_matching")))
    finally:
        numba.set_num_threads(before)
    assert (out[0][0] == out[1][0]).all()
    assert out[0][1] == out[1][1] and out[0][2] == out[1][2]
    assert Q.get_field(out[0][0], Q.CLOUD).any()


def test_snow_and_sand_are_not_clouds_on_sentinel2(synth_dir):
    """A cloud-free Sentinel-2 scene with snow (low snow line) and sand: no cloud."""
    from l2ps.clouds import detect_clouds
    prod = product(synth_dir, "SEN2A", seed=21, clouds=False, relief=1.0, snow_line=385.0,
                   size=(360, 360))
    truth = read_truth(prod.truth_dir)
    params = make_params()
    scene = scene_of(prod.path, params)
    r = detect_clouds(scene, params)
    state = Q.get_field(scene.qai, Q.CLOUD)
    valid = Q.is_valid(scene.qai) & (truth["nodata"] == 0)
    snow = (truth["snow"] == 1) & valid
    sand = (truth["cover"] == 2) & valid
    bright = (truth["cover"] == 6) & valid
    print(f"\n== SEN2A snow/sand, no clouds: snow {snow.sum()} px, flagged cloud "
          f"{(state[snow] > 0).sum()}; snow bit on truth snow {Q.get_flag(scene.qai, Q.SNOW)[snow].mean():.3f}; "
          f"sand {sand.sum()} px, flagged cloud {(state[sand] > 0).sum()}; cloud state 2 "
          f"anywhere {(state == 2).sum()}; log {r.log_fragment}")
    assert snow.sum() > 1000
    assert (state[snow] == 2).mean() < 0.01
    if sand.any():
        assert (state[sand] == 2).mean() < 0.01
    # bright soil/urban texture gives a few CDI seeds (FORCE's smoothed-B08 ratio); bound it
    opaque_unbright = (state == 2) & valid & ~bright
    assert opaque_unbright.sum() <= 0.05 * valid.sum()
    assert Q.get_flag(scene.qai, Q.SNOW)[snow].mean() > 0.9
    assert r.snow_cover > 1.0


def test_frame_limit_decides_skip(synth_dir):
    from l2ps.clouds import detect_clouds
    prod = product(synth_dir, "LND08", seed=1, relief=0.3)
    params = make_params(max_cloud_cover_frame=10.0)
    scene = scene_of(prod.path, params)
    r = detect_clouds(scene, params)
    # 0.8 × 10 % is exceeded by the unbuffered clouds: shadow matching is not attempted,
    # every valid pixel is shadow and cc is 100 (spec 01 §6.1 step 2.4)
    assert r.skip and r.cloud_cover == 100.0
    assert r.stats["forced_full_cover"]
    assert Q.get_flag(scene.qai, Q.SHADOW)[Q.is_valid(scene.qai)].all()


def test_write_masks(synth_dir, tmp_path):
    from l2ps.clouds import detect_clouds
    from l2ps.masks import write_masks
    prod = product(synth_dir, "LND08", seed=11, relief=0.3, size=(300, 300))
    params = make_params()
    scene = scene_of(prod.path, params)
    r = detect_clouds(scene, params)
    paths = write_masks(scene, params, tmp_path / "out")
    assert [p.suffix for p in paths] == [".tif", ".json"]
    with rasterio.open(paths[0]) as ds:
        q = ds.read(1)
        assert ds.nodata == 1 and ds.dtypes[0] == "int16" and ds.shape == scene.grid.shape
        assert abs(ds.transform.c - scene.grid.x0) < 1e-6
    ref = scene.qai.copy()
    Q.normalize_nodata(ref)
    assert (q.view(np.uint16) == ref).all()
    doc = json.loads(paths[1].read_text())
    assert doc["cloud_cover"] == round(r.cloud_cover, 4) and doc["skip"] is False


# ----------------------------------------------------------------------------- real data
def _real_products(testdata: Path):
    out = [testdata / "landsat" / "LC08_L1GT_089074_20220506_20220512_02_T2",
           testdata / "landsat" / "LC08_L1TP_090084_20160121_20170405_01_T1.tar.gz"]
    out += sorted((testdata / "sentinel2").glob("*.zip"))
    return out


def test_real_products(testdata):
    """TIER 2, MAX_CLOUD_COVER_FRAME 100: runs; the unbuffered cloud % is compared with the
    metadata CLOUD_COVER for sanity only (kilometre pixels)."""
    from l2ps.clouds import detect_clouds
    params = make_params(tier=2)
    lines = ["\n== real products (unbuffered cc vs metadata) =="]
    for path in _real_products(testdata):
        scene = scene_of(path, params)
        r = detect_clouds(scene, params)
        meta = scene.level1.cloud_cover
        lines.append(f"{path.name[:60]}: {r.log_fragment}unbuffered {r.cloud_cover_unbuffered:.1f} %"
                     f", metadata {meta}")
        assert not r.skip
        assert 0 <= r.cloud_cover_unbuffered <= r.cloud_cover <= 100
        assert 0 < r.data_cover <= 100
        if meta is not None and meta > 80:
            assert r.cloud_cover_unbuffered > 30
    print("\n".join(lines))
