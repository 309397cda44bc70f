"""Cloud, shadow, snow and water detection on synthetic scenes with known truth
(spec 01 §6; l2ps.synth writes the truth masks beside each product).

Scoring (independent of the code under test): truth cores and clear pixels away from them.
Pixels within CLOUD_BUFFER (+2 px) of a truth cloud, within SHADOW_BUFFER (+2 px) of a truth
shadow, thin clouds and cirrus are not part of the clear/cloud/shadow accuracy; thin cloud
and cirrus detection is reported. Predicted class: cloud if the QAI cloud state > 0, else
shadow if the shadow bit is set, else clear. Run with ``-s`` to see the confusion matrices.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

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


def make_params(**kw) -> SimpleNamespace:
    d = dict(PARAMS)
    d.update(kw)
    return SimpleNamespace(**d)


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
    for name in ("cloud", "shadow", "snow", "water", "cover", "nodata"):
        with rasterio.open(Path(truth_dir) / f"{name}.tif") as ds:
            out[name] = ds.read(1)
    out["json"] = json.loads((Path(truth_dir) / "truth.json").read_text())
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
    margin = 2 * res
    d_cloud = _dist_m(anycloud, res)
    d_shadow = _dist_m(ts, res)
    core_opaque = opaque & (_dist_m(~opaque, res) > margin) & valid
    core_shadow = shadow_t & (_dist_m(~shadow_t, res) > res) & (d_cloud > params.cloud_buffer + margin) & valid
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
              "shadow_core": int(core_shadow.sum())},
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
@pytest.mark.parametrize("sensor,seed", [("LND05", 3), ("LND07", 4), ("LND08", 1), ("SEN2A", 1)])
def test_masks_against_truth(synth_dir, sensor, seed):
    from l2ps.clouds import detect_clouds
    kw = {"seed": seed, "relief": 0.3}
    if sensor == "LND07":
        kw["slc_off"] = False
    prod = product(synth_dir, sensor, **kw)
    params = make_params()
    scene = scene_of(prod.path, params)
    result = detect_clouds(scene, params)
    truth = read_truth(prod.truth_dir)
    s = score(scene.qai, truth, params, scene.grid.res)
    report(f"{sensor} seed {seed}", s, result)
    assert s["n"]["opaque_core"] > 200 and s["n"]["shadow_core"] > 100
    assert s["overall_accuracy"] >= 0.95
    assert s["opaque_recall"] >= 0.95
    assert s["shadow_recall"] >= 0.85
    assert s["shadow_precision"] >= 0.85
    assert not result.skip
    assert 0 < result.cloud_cover_unbuffered <= result.cloud_cover <= 100
    assert result.log_fragment.startswith("dc: ") and result.log_fragment.endswith("%. ")
