"""Background reflectance of the adjacency correction (spec 02 §4)."""
from __future__ import annotations

import numpy as np
import pytest

from l2ps.atmosphere import adjacency as A


def test_ring_weights_spec_constants():
    # spec 02 §4: α_k = 2/(r_k + 1), r_k = km·1000/res
    for res, alphas in ((30.0, (0.214286, 0.058252, 0.013245)), (10.0, (0.076923, 0.019802, 0.004435))):
        got = [2.0 / (km * 1000.0 / res + 1.0) for km in A.RING_KM]
        np.testing.assert_allclose(got, alphas, atol=1e-6)
    w = A.ring_weights(0.15, 0.09)
    assert w.sum() == pytest.approx(1.0) and (w > 0).all()
    assert 0.03 < A.self_weight(0.15, 0.09, 30.0) < 0.06
    assert A.self_weight(0.15, 0.09, 10.0) < A.self_weight(0.15, 0.09, 30.0)


def test_uniform_surface_background_is_the_surface():
    rho0 = np.full((60, 80), 1234, np.int16)
    skip = np.zeros(rho0.shape, bool)
    skip[5, 5] = True
    b = A.background_reflectance(rho0, skip, np.zeros(rho0.shape, bool), 30.0, 0.2, 0.09)
    assert b[5, 5] == -9999
    assert np.abs(b[~skip].astype(int) - 1234).max() <= 1


def test_step_is_smoothed_and_clouds_are_bridged():
    ny, nx = 40, 400
    rho0 = np.full((ny, nx), 500, np.int16)
    rho0[:, nx // 2:] = 3000
    cloud = np.zeros((ny, nx), bool)
    cloud[:, 100:110] = True
    rho0[cloud] = 9000                      # a bright cloud must not leak into the background
    b = A.background_reflectance(rho0, np.zeros((ny, nx), bool), cloud, 30.0, 0.2, 0.09)
    row = b[ny // 2].astype(float)
    assert 500 < row[nx // 2 - 1] < 3000 and 500 < row[nx // 2] < 3000     # mixed at the edge
    assert row[nx // 2 - 1] < row[nx // 2]
    assert row[105] < 1500                  # cloud bridged: dark background around it
    # symmetric rows: every row has the same result (no row-order dependence)
    assert (b == b[0]).all()
