"""Water-vapour database (spec 02 §2.3, §9) and AOD look-up files (spec 02 §3.1)."""
from __future__ import annotations

from datetime import date

import math
import pytest

from l2ps.atmosphere.aerosol import DEFAULT_COEFFICIENTS, AodFileError, fallback_spectrum
from l2ps.atmosphere.gas import WaterVaporError, water_vapor_from_lut
from l2ps.errors import L2psError

DAY = date(2021, 7, 14)


def _write(d, name, lines):
    (d / name).write_text("\n".join(lines) + "\n")


def test_parameter_when_no_database():
    v = water_vapor_from_lut(None, DAY, 10.0, 50.0, default=1.7, strict=True)
    assert (v.value, v.source) == (1.7, "PARAMETER")


def test_daily_value_wins_and_blank_lines_and_tabs_are_fine(tmp_path):
    _write(tmp_path, "WVP_0000-07-00.txt", ["10.0000 50.0000 2.000000 0.3 20"])
    _write(tmp_path, "WVP_2021-07-14.txt", ["", "# comment", "20.0000\t60.0000\t0.500000 MOD",
                                            "10.2000 50.1000 1.250000 MYD", ""])
    v = water_vapor_from_lut(tmp_path, DAY, 10.0, 50.0, default=9.0, strict=True)
    assert (v.value, v.source) == (1.25, "MYD")


def test_daily_fill_falls_back_to_climatology(tmp_path):
    _write(tmp_path, "WVP_0000-07-00.txt", ["10.0000 50.0000 2.000000 0.3 20"])
    _write(tmp_path, "WVP_2021-07-14.txt", ["10.0000 50.0000 9999.000000 TBD"])
    v = water_vapor_from_lut(tmp_path, DAY, 10.0, 50.0, default=9.0, strict=False)
    assert (v.value, v.source) == (2.0, "AVG")


def test_strict_means_a_valid_daily_value(tmp_path):
    # documented semantics: the climatology is not enough (FORCE's code accepts it)
    _write(tmp_path, "WVP_0000-07-00.txt", ["10.0000 50.0000 2.000000 0.3 20"])
    with pytest.raises(WaterVaporError, match="STRICT_WATER_VAPOR"):
        water_vapor_from_lut(tmp_path, DAY, 10.0, 50.0, default=9.0, strict=True)


def test_climatology_fill_is_missing_not_9999(tmp_path):
    _write(tmp_path, "WVP_0000-07-00.txt", ["10.0000 50.0000 9999.000000 9999.0 0"])
    with pytest.raises(WaterVaporError) as e:
        water_vapor_from_lut(tmp_path, DAY, 10.0, 50.0, default=9.0, strict=False)
    assert isinstance(e.value, L2psError)


def test_points_farther_than_1_5_degrees_are_ignored(tmp_path):
    _write(tmp_path, "WVP_0000-07-00.txt", ["12.0000 50.0000 2.000000 0.3 20",
                                            "10.0000 51.4000 3.000000 0.3 20"])
    v = water_vapor_from_lut(tmp_path, DAY, 10.0, 50.0, default=9.0, strict=False)
    assert v.value == 3.0


def test_fallback_spectrum_default_values():
    s = fallback_spectrum(None, 100, 0.0, 0.0)
    assert (s.a0, s.a1, s.a2) == DEFAULT_COEFFICIENTS
    assert s.aod550 == pytest.approx(0.1354, abs=1e-4)        # spec 02 §3.1
    assert float(s.tau(2.2008)) == pytest.approx(0.0172, abs=1e-4)


def test_dir_aod_nearest_line(tmp_path):
    _write(tmp_path, "AOD_045.txt", ["0 0 -2.0 -1.0 0.0", "", "10 50 -1.5 -1.2 -0.1", "40 10 -3 -1 0"])
    s = fallback_spectrum(tmp_path, 45, 9.0, 49.0)
    assert (s.a0, s.a1, s.a2) == (-1.5, -1.2, -0.1)
    assert s.aod550 == pytest.approx(math.exp(-1.5 - 1.2 * math.log(0.55) - 0.1 * math.log(0.55) ** 2))
    with pytest.raises(AodFileError, match="AOD_046.txt"):
        fallback_spectrum(tmp_path, 46, 9.0, 49.0)


def test_water_vapor_null_means_the_standard_atmosphere():
    """WATER_VAPOR = NULL without DIR_WVPLUT: the standard atmosphere of latitude and season
    (not FORCE's 0 g/cm2), reduced to the scene elevation."""
    from l2ps.atmosphere.gas import climatological_water_vapor
    assert climatological_water_vapor(45.0, 7).value == pytest.approx(2.93)
    assert climatological_water_vapor(51.5, 7).value == pytest.approx(2.08)
    assert climatological_water_vapor(51.5, 1).source == "CLIMATOLOGY (subarctic winter)"
    assert climatological_water_vapor(-35.0, 1).source == "CLIMATOLOGY (midlatitude summer)"
    assert climatological_water_vapor(5.0, 12).value == pytest.approx(4.12)
    assert climatological_water_vapor(45.0, 7, 2.0).value == pytest.approx(2.93 * math.exp(-1), abs=1e-3)


def test_parameters_record_null_keys(tmp_path):
    from l2ps.params import read_parameters, write_skeleton
    prm = tmp_path / "level2.prm"
    write_skeleton(prm)
    for d in ("level2", "temp", "log", "prov"):
        (tmp_path / d).mkdir()
    text = prm.read_text()
    for key, v in (("DIR_LEVEL2", tmp_path / "level2"), ("DIR_TEMP", tmp_path / "temp"),
                   ("DIR_LOG", tmp_path / "log"), ("DIR_PROVENANCE", tmp_path / "prov"),
                   ("FILE_QUEUE", "NULL")):
        text = "\n".join(f"{key} = {v}" if ln.startswith(f"{key} ") else ln
                          for ln in text.splitlines())
    prm.write_text(text + "\n")
    p = read_parameters(prm)
    assert p.water_vapor == 0.0 and "WATER_VAPOR" in p.nulls and "DIR_WVPLUT" in p.nulls
    prm.write_text(text.replace("WATER_VAPOR = NULL", "WATER_VAPOR = 0") + "\n")
    assert "WATER_VAPOR" not in read_parameters(prm).nulls
