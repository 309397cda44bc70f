"""The benchmark harness's bookkeeping (benchmarks/run.py) on fake job records: the mapping
of the record's stages to the issue's stage names, medians, the README section. No runs."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("l2ps_bench_run", REPO / "benchmarks" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _stages(scale: float = 1.0) -> dict:
    s = lambda x: {"seconds": x * scale, "cpu_seconds": 1.5 * x * scale, "peak_rss_mb": 900.0}  # noqa: E731
    return {
        "extract+metadata": s(2.0), "read": s(4.0), "qai": s(1.0), "geometry": s(0.5),
        "toa": s(1.5), "topography": s(0.25),
        "clouds": s(10.0),
        "clouds.potential": {"seconds": 3.0 * scale},
        "clouds.probability": {"seconds": 2.0 * scale},
        "clouds.shadow_probability": {"seconds": 1.0 * scale},
        "clouds.shadow_matching": {"seconds": 2.0 * scale},
        "clouds.finalize": {"seconds": 1.0 * scale},
        "clouds.total": {"seconds": 10.0 * scale},          # must not be counted twice
        "atmosphere": s(20.0),
        "atmosphere.water_vapor": {"seconds": 1.0 * scale},
        "atmosphere.aod": {"seconds": 5.0 * scale},
        "atmosphere.radtran": {"seconds": 2.0 * scale},
        "atmosphere.adjacency": {"seconds": 3.0 * scale},
        "atmosphere.inversion": {"seconds": 6.0 * scale},
        "atmosphere.total": {"seconds": 20.0 * scale},
        "products": s(1.0),
        "cube": s(8.0),
        "cube.warp": {"seconds": 3.0 * scale},
        "cube.write": {"seconds": 4.0 * scale},
        "cube.mystery": {"seconds": 0.5 * scale},
        "cleanup": s(0.25),
        "newstage": s(0.75),
    }


def _record(scale=1.0, cover=12.5, wall=55.0):
    return {"status": "DONE", "seconds": 50.0 * scale, "peak_rss_mb": 1000.0,
            "grid": {"nx": 100, "ny": 200}, "cloud_cover": cover, "stages": _stages(scale),
            "process_wall_seconds": wall * scale, "process_cpu_seconds": 80.0 * scale,
            "process_peak_rss_mb": 1100.0 * scale}


def test_stage_profile_maps_and_adds_up(bench):
    p = bench.stage_profile(_stages(), process_wall=55.0)
    assert p["reading"] == pytest.approx(2.0 + 4.0 + 0.25)
    assert p["TOA"] == pytest.approx(1.0 + 0.5 + 1.5)
    assert p["topography"] == pytest.approx(0.25)
    assert p["shadows"] == pytest.approx(3.0)
    assert p["clouds"] == pytest.approx(7.0)             # 10 − shadows, total not counted
    assert p["water vapour"] == pytest.approx(1.0)
    assert p["AOD"] == pytest.approx(5.0)
    assert p["radiative transfer"] == pytest.approx(2.0 + 3.0 + 6.0)
    assert p["warping"] == pytest.approx(3.0)
    assert p["writing"] == pytest.approx(4.0 + 0.5)     # cube.write + cube's rest
    # other: products, unknown top-level stage, unknown cube sub-stage, atmosphere's rest
    assert p["other_detail"] == {"atmosphere (rest)": 3.0, "cube.mystery": 0.5,
                                 "newstage": 0.75, "products": 1.0}
    assert p["other"] == pytest.approx(5.25)
    top = sum(v["seconds"] for k, v in _stages().items() if "." not in k)
    assert p["start-up"] == pytest.approx(55.0 - top)
    total = sum(p[g] for g in bench.STAGE_GROUPS)
    assert total == pytest.approx(55.0)                  # shares add up to the wall time


def test_stage_profile_without_substages(bench):
    p = bench.stage_profile({"read": {"seconds": 3.0}, "clouds": {"seconds": 4.0},
                             "cube": {"seconds": 2.0}})
    assert p["reading"] == 3.0 and p["clouds"] == 4.0 and p["writing"] == 2.0
    assert p["start-up"] == 0.0 and p["other"] == 0.0


def test_summarize_medians_and_substages_without_cpu(bench):
    runs = [_record(1.0, wall=50.0), _record(2.0, wall=50.0), _record(3.0, wall=50.0),
            {"status": "FAIL", "reason": "boom"}]
    s = bench.summarize(runs)
    assert s["status"] == "DONE" and s["runs"] == 3 and s["failed_runs"] == 1
    assert s["wall_seconds"] == pytest.approx(100.0)     # median of 50, 100, 150
    assert s["cpu_seconds"] == pytest.approx(160.0)
    assert s["peak_rss_mb"] == pytest.approx(2200.0)
    assert s["pixels"] == 20000
    assert s["stages"]["clouds.potential"] == {"seconds": 6.0}     # no cpu field: no KeyError
    assert s["stages"]["read"]["cpu_seconds"] == pytest.approx(12.0)
    assert s["profile"]["AOD"] == pytest.approx(10.0)
    assert s["cloud_covers"] == [12.5, 12.5, 12.5]


def test_summarize_all_failed(bench):
    s = bench.summarize([{"status": "FAIL", "reason": "x" * 5000}])
    assert s["status"] == "FAIL" and len(s["reason"]) == 2000


def test_render_and_readme_markers(bench, tmp_path):
    res = bench.summarize([_record()])
    res.update(config="toa", scene="LND09", fraction=1.0, threads=2)
    one = dict(bench.summarize([_record(2.0)]), config="full", scene="LND09", fraction=1.0,
               threads=1)
    data = {"meta": {"size": 1.0, "runs": 1}, "results": {"toa/LND09@1/2": res,
                                                          "full/LND09@1/1": one},
            "checks": [{"name": "cloud cover equal with NTHREAD 1 and 2", "ok": True}]}
    text = bench.render(data)
    row = next(ln for ln in text.splitlines() if ln.startswith("| TOA cube, Landsat 7/9"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "55.0"                  # our wall
    assert cells[5] == "53–62"                 # FORCE's range
    assert cells[7] == f"{55 / 53:.2f}"        # ratio to the lower end
    assert "| AOD |" in text and "| start-up |" in text
    assert "products" in text                  # the "other" breakdown is listed
    # top-level stages with wall / CPU / peak RSS, in chain order
    assert "| read | 4.0 / 6.0 / 0.88 |" in text
    assert text.index("| read |") < text.index("| atmosphere |") < text.index("| cube |")
    readme = tmp_path / "README.md"
    readme.write_text(f"# prose before\n\n{bench.BEGIN}\nold table\n{bench.END}\n\nprose after\n")
    bench.update_readme(readme, text)
    out = readme.read_text()
    assert "old table" not in out and "prose before" in out and "prose after" in out
    assert out.count(bench.BEGIN) == 1 and "| AOD |" in out
