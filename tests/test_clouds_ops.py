"""Image operators of the cloud module (spec 01 §6.9), DST, ERASE_CLOUDS and the QAI bits,
against hand-computed results or independent brute-force definitions."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from l2ps import qai as Q
from l2ps.clouds import cloud_distance, erase_clouds
from l2ps.clouds.finalize import GridMap, bin_centre_elevation_km, finalize
from l2ps.clouds.morphology import (buffer_disk, components8, disk_footprint,
                                    distance_transform, drop_small_objects, fill_holes,
                                    majority_fill, split_object_lists)
from l2ps.clouds.stats import quantile_float, quantile_int16
from l2ps.grid import Grid


# ----------------------------------------------------------------------------- footprint
@pytest.mark.parametrize("r,n", [(1, 5), (2, 13), (3, 29), (9, 261), (10, 333), (30, 2869)])
def test_footprint_pixel_counts(r, n):
    assert disk_footprint(r).sum() == n


def test_footprint_radius_one_is_a_plus_and_two_by_hand():
    assert (disk_footprint(1) == np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)).all()
    # d = 1: x=0,y=2 draws the column j (5 px) and (0, ±2); then y=1, x=1 draws the
    # 3×3 around the centre; then x=2 > y stops: a 13-pixel diamond
    two = np.array([[0, 0, 1, 0, 0],
                    [0, 1, 1, 1, 0],
                    [1, 1, 1, 1, 1],
                    [0, 1, 1, 1, 0],
                    [0, 0, 1, 0, 0]], bool)
    assert (disk_footprint(2) == two).all()


def _brute_buffer(mask, r, drop_border=False):
    """Stamp the footprint on every TRUE pixel (the definition of FORCE's buffer_)."""
    fp = disk_footprint(r)
    ny, nx = mask.shape
    out = np.zeros_like(mask)
    for i, j in zip(*np.nonzero(mask)):
        if drop_border and not (r <= i < ny - r and r <= j < nx - r):
            continue
        for di, dj in zip(*np.nonzero(fp)):
            ii, jj = i + di - r, j + dj - r
            if 0 <= ii < ny and 0 <= jj < nx:
                out[ii, jj] = True
    return out


@pytest.mark.parametrize("r", [1, 2, 3, 4, 7, 11, 14])
def test_buffer_equals_footprint_stamping(r):
    rng = np.random.default_rng(r)
    mask = rng.random((61, 47)) > 0.985
    mask[30, 0] = True                      # a pixel on the edge
    assert (buffer_disk(mask, r) == _brute_buffer(mask, r)).all()
    assert (buffer_disk(mask, r, drop_border=True) == _brute_buffer(mask, r, True)).all()


def test_buffer_zero_and_empty():
    m = np.zeros((5, 6), bool)
    m[2, 3] = True
    assert (buffer_disk(m, 0) == m).all()
    assert not buffer_disk(np.zeros((4, 4), bool), 3).any()
    # FORCE's border quirk drops a lone edge pixel; l2ps keeps it
    e = np.zeros((7, 7), bool)
    e[0, 3] = True
    assert buffer_disk(e, 1)[0, 3] and not buffer_disk(e, 1, drop_border=True).any()


# ----------------------------------------------------------------------------- distance
def test_distance_transform_matches_scipy_truncated():
    rng = np.random.default_rng(1)
    m = rng.random((83, 71)) > 0.99
    ref = np.trunc(ndimage.distance_transform_edt(~m) + 1e-9).astype(np.uint16)
    assert (distance_transform(m) == ref).all()


def test_distance_transform_hand_values_and_empty():
    m = np.zeros((5, 5), bool)
    m[0, 0] = True
    d = distance_transform(m)
    assert d[0, 4] == 4 and d[3, 4] == 5 and d[1, 1] == 1 and d[4, 4] == 5  # √32 = 5.66
    assert (distance_transform(np.zeros((3, 4), bool)) == 7).all()           # nx + ny


# ----------------------------------------------------------------------------- majority
def test_majority_fill_is_sequential_in_raster_order():
    m = np.zeros((4, 4), bool)
    m[0, :3] = True
    m[1, 0] = True
    m[2, 0] = True
    m[1, 2] = True
    # (1,1) has 6 TRUE neighbours → TRUE; then (2,1) sees (1,0),(1,1),(1,2),(2,0) + ... = 4
    # in a parallel (non in-place) version (2,1) stays FALSE; sequentially it has 4 → FALSE
    # too; (1,1) filled before (2,1) is visited is what the sequential order gives.
    a = m.copy()
    majority_fill(a)
    assert a[1, 1]
    # a case where order matters: a diagonal staircase
    s = np.zeros((3, 3), bool)
    s[0, :] = True
    s[1, 0] = True
    s[1, 2] = True
    seq = s.copy()
    majority_fill(seq)       # (1,1): 5 neighbours → TRUE
    assert seq[1, 1] and not seq[2, 1]   # (2,1): neighbours (1,0),(1,1),(1,2) = 3 → FALSE
    # compare with a brute-force sequential implementation on random data
    rng = np.random.default_rng(7)
    r = rng.random((40, 37)) > 0.45
    ref = r.copy()
    for i in range(ref.shape[0]):
        for j in range(ref.shape[1]):
            if not ref[i, j]:
                win = ref[max(0, i - 1):i + 2, max(0, j - 1):j + 2]
                if win.sum() >= 5:
                    ref[i, j] = True
    got = r.copy()
    majority_fill(got)
    assert (got == ref).all()
    # and it differs from the non-in-place version
    par = r | (ndimage.convolve(r.astype(int), np.ones((3, 3), int), mode="constant") >= 5)
    assert not (par == got).all()


# ----------------------------------------------------------------------------- reconstruction
def _brute_reconstruct(img):
    marker = np.full(img.shape, img.max(), img.dtype)
    marker[0, :], marker[-1, :], marker[:, 0], marker[:, -1] = img[0, :], img[-1, :], img[:, 0], img[:, -1]
    while True:
        new = np.maximum(ndimage.grey_erosion(marker, footprint=np.ones((3, 3)), mode="nearest"), img)
        new = np.minimum(new, marker)
        if (new == marker).all():
            return marker
        marker = new


def test_split_objects_at_a_neck():
    """Two discs joined by a 3-pixel bridge become two objects; a single disc stays one."""
    yy, xx = np.mgrid[0:40, 0:70]
    a = (yy - 20) ** 2 + (xx - 15) ** 2 <= 100
    b = (yy - 20) ** 2 + (xx - 52) ** 2 <= 144
    bridge = (abs(yy - 20) <= 1) & (xx >= 15) & (xx <= 52)
    m = a | b | bridge
    pix, start, n = components8(m)
    assert n == 1
    pix, start, k = split_object_lists(pix, start, n, m.shape)
    assert k == 2
    out = _label_image(pix, start, k, m.shape)
    assert ((out > 0) == m).all()
    assert out[20, 15] != out[20, 52]
    assert np.mean(out[a] == out[20, 15]) > 0.9 and np.mean(out[b] == out[20, 52]) > 0.9
    pix1, start1, n1 = components8(a)
    pix1, start1, k1 = split_object_lists(pix1, start1, n1, a.shape)
    assert k1 == 1 and ((_label_image(pix1, start1, k1, a.shape) > 0) == a).all()


def _label_image(pix, start, n, shape):
    """Label image (0 background, 1..n) of the pixel lists; fails if the lists overlap."""
    lab = np.zeros(shape, np.int32)
    flat = lab.reshape(-1)
    for k in range(1, n + 1):
        p = pix[start[k]:start[k + 1]]
        assert p.size > 0 and (np.diff(p) > 0).all()       # raster order, no repeats
        assert (flat[p] == 0).all()
        flat[p] = k
    return lab


# ----------------------------------------------------------------------------- labels
def _bfs_labels(m):
    lab = np.zeros(m.shape, np.int32)
    n = 0
    for i, j in zip(*np.nonzero(m)):
        if lab[i, j]:
            continue
        n += 1
        stack = [(i, j)]
        lab[i, j] = n
        while stack:
            a, b = stack.pop()
            for da in (-1, 0, 1):
                for db in (-1, 0, 1):
                    x, y = a + da, b + db
                    if 0 <= x < m.shape[0] and 0 <= y < m.shape[1] and m[x, y] and not lab[x, y]:
                        lab[x, y] = n
                        stack.append((x, y))
    return lab, n


def test_components_raster_order_and_small_object_removal():
    rng = np.random.default_rng(5)
    m = rng.random((50, 40)) > 0.8
    pix, start, n = components8(m)
    ref, nref = _bfs_labels(m)
    assert n == nref and (_label_image(pix, start, n, m.shape) == ref).all()
    mm = m.copy()
    pix, start, k = drop_small_objects(pix, start, n, 3, mask=mm)
    sizes = np.bincount(ref.ravel())
    big = sizes >= 3
    big[0] = False
    assert k == int(big[1:].sum())
    assert (mm == (m & big[ref])).all()
    # the kept objects in their previous order, renumbered 1..k
    lut = np.zeros(n + 1, np.int32)
    lut[big] = np.arange(1, k + 1)
    assert (_label_image(pix, start, k, m.shape) == lut[ref]).all()
    # pixel (0, 0) is not special (FORCE clears it)
    z = np.zeros((4, 4), bool)
    z[0:2, 0:2] = True
    pix, start, n = components8(z)
    _, _, k = drop_small_objects(pix, start, n, 3, mask=z)
    assert z[0, 0] and k == 1


# ----------------------------------------------------------------------------- quantiles
def test_quantiles_match_numpy_linear():
    rng = np.random.default_rng(2)
    v = rng.integers(-2000, 30000, (30, 40)).astype(np.int16)
    m = rng.random(v.shape) > 0.3
    for p in (0.175, 0.825):
        ref = np.quantile(v[m].astype(np.float64), float(np.float32(p)))
        assert abs(quantile_int16(v, m, p) - ref) < 1e-6
        f = v.astype(np.float32) / 7
        assert abs(quantile_float(f, m, p) - np.quantile(f[m].astype(np.float64),
                                                          float(np.float32(p)))) < 1e-3
    assert quantile_int16(v, np.zeros_like(m), 0.5) == 0.0


# ----------------------------------------------------------------------------- QAI bits
WKT = 'PROJCS["x",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",9],PARAMETER["scale_factor",0.9996],PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1]]'


def test_finalize_states_and_bits():
    g = Grid(WKT, 0.0, 0.0, 30.0, 30.0, 20, 20)
    qai = Q.empty(g.shape)
    qai[0, 0] = 1                                   # nodata stays untouched
    bits = np.zeros(g.shape, np.uint8)
    bits[0, 0] = 1
    bits[15, 15] |= 4                               # water
    bits[18, 2] |= 8                                # snow candidate
    cloud = np.zeros(g.shape, bool)
    cloud[5, 5] = True
    cirrus = np.zeros(g.shape, bool)
    cirrus[5, 5] = cirrus[5, 6] = cirrus[12, 12] = True
    shadow = np.zeros(g.shape, bool)
    shadow[10, 3] = True
    cnt = finalize(qai, GridMap(g, g), bits, cloud, shadow, cirrus, cloud_buffer=30.0,
                   cirrus_buffer=0.0, shadow_buffer=30.0, snow_buffer=30.0)
    st = Q.get_field(qai, Q.CLOUD)
    assert qai[0, 0] == 1
    assert st[5, 5] == 2          # opaque inside the cirrus mask stays opaque (deviation
    #                               from §6.7's "else if", which makes it 3)
    assert st[5, 6] == 1 and st[4, 5] == 1 and st[4, 4] == 0   # radius-1 plus buffer
    assert st[12, 12] == 3
    sh = Q.get_flag(qai, Q.SHADOW)
    assert sh[10, 3] and sh[9, 3] and sh[10, 4] and not sh[9, 4]
    assert Q.get_flag(qai, Q.WATER)[15, 15] and Q.get_flag(qai, Q.WATER).sum() == 1
    assert Q.get_flag(qai, Q.SNOW)[18, 2] and Q.get_flag(qai, Q.SNOW)[17, 2]
    assert cnt["opaque_unbuffered"] == 1 and cnt["valid"] == 399
    # forced path: every valid pixel shadow
    q2 = Q.empty(g.shape)
    finalize(q2, GridMap(g, g), np.zeros(g.shape, np.uint8), cloud, None, None,
             cloud_buffer=0.0, cirrus_buffer=0.0, shadow_buffer=0.0, snow_buffer=0.0)
    assert Q.get_flag(q2, Q.SHADOW).all() and Q.get_field(q2, Q.CLOUD)[5, 5] == 2


@pytest.mark.parametrize("threads,strip", [(1, 7), (2, 7), (2, 5000)])
def test_finalize_strips_on_threads_equal_full_size_masks(threads, strip):
    """Strip-wise finalize (strips side by side on a thread pool) on a coarser work grid
    equals the bits drawn from full-size nearest-neighbour masks buffered as a whole."""
    import numba
    rng = np.random.default_rng(11)
    work = Grid(WKT, 0.0, 0.0, 20.0, 20.0, 31, 29)
    qg = Grid(WKT, 0.0, 0.0, 10.0, 10.0, 62, 58)
    gm = GridMap(work, qg)
    bits = rng.choice(np.array([0, 1, 4, 8, 12], np.uint8), size=work.shape,
                      p=[0.7, 0.05, 0.1, 0.1, 0.05])
    cloud = rng.random(work.shape) < 0.04
    shadow = rng.random(work.shape) < 0.03
    cirrus = rng.random(work.shape) < 0.03
    q0 = rng.integers(0, 2, qg.shape).astype(np.uint16) | np.uint16(1 << Q.SHADOW)
    qai = q0.copy()
    old = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        cnt = finalize(qai, gm, bits, cloud, shadow, cirrus, cloud_buffer=30.0,
                       cirrus_buffer=20.0, shadow_buffer=20.0, snow_buffer=10.0, strip=strip)
    finally:
        numba.set_num_threads(old)
    # reference: full-size masks on the QAI grid, per-pixel rules of spec 01 §6.7
    valid = (q0 & 1) == 0
    up = gm.up
    snow = buffer_disk(up((bits & 8) != 0), 1) & valid
    c10 = up(cloud) & valid
    cb = buffer_disk(up(cloud), 3)
    cirb = buffer_disk(up(cirrus), 2)
    state = np.where(c10, 2, 0)
    state = np.where((state == 0) & cb, 1, np.where(cirb & (state != 2) & ~(cb & (state == 0)),
                                                    3, state))
    state[~valid] = 0
    sh = buffer_disk(up(shadow), 2) & valid
    water = up((bits & 4) != 0) & valid
    assert np.array_equal(Q.get_field(qai, Q.CLOUD)[valid], state[valid])
    assert np.array_equal(Q.get_flag(qai, Q.SNOW), snow)
    assert np.array_equal(Q.get_flag(qai, Q.SHADOW)[valid], sh[valid])
    assert np.array_equal(Q.get_flag(qai, Q.WATER), water)
    keep = np.uint16(~np.uint16((3 << Q.CLOUD) | (1 << Q.SHADOW) | (1 << Q.SNOW)
                                | (1 << Q.WATER)) & 0xFFFF)
    assert np.array_equal(qai[~valid], q0[~valid] & keep)     # nodata: bits cleared only
    assert cnt["opaque_unbuffered"] == int(c10.sum()) and cnt["valid"] == int(valid.sum())
    assert (state == 1).any() and (state == 3).any() and snow.any() and sh.any()


def test_bin_centre_elevation():
    dem = np.array([[0.0, 255.0], [510.0, np.nan]], np.float32)
    z = bin_centre_elevation_km(dem, np.ones(dem.shape, bool))
    step = 0.511 / 255
    assert abs(z[0, 0] - step / 2) < 1e-6
    assert abs(z[1, 0] - (step / 2 + 254 * step)) < 1e-5


# ----------------------------------------------------------------------------- DST, erase
def test_cloud_distance():
    q = Q.empty((6, 8))
    Q.set_field(q, Q.CLOUD, 1, np.pad(np.ones((1, 1), bool), ((2, 3), (2, 5))))
    q[5, 7] = 1
    d = cloud_distance(q, 30.0)
    assert d.dtype == np.int16
    assert d[2, 2] == 0 and d[2, 5] == 90 and d[5, 7] == -9999
    assert d[0, 0] == int(np.sqrt(8) // 1) * 30        # trunc(2.83) = 2 px
    Q.set_flag(q, Q.SNOW, np.eye(6, 8, dtype=bool))
    assert cloud_distance(q, 30.0)[3, 3] == 0
    none = cloud_distance(Q.empty((4, 5)), 10.0)
    assert (none == 90).all()
    big = cloud_distance(Q.empty((400, 500)), 100.0)
    assert (big == 32767).all()


def test_erase_clouds_native_and_coarse_bands():
    g10 = Grid(WKT, 0.0, 40.0, 10.0, 10.0, 4, 4)
    g20 = Grid(WKT, 0.0, 40.0, 20.0, 20.0, 2, 2)
    q = Q.empty(g10.shape)
    Q.set_field(q, Q.CLOUD, 2, np.array([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0],
                                        [0, 0, 0, 1]], bool))
    Q.set_field(q, Q.CLOUD, 1, np.array([[1, 0, 0, 0]] + [[0] * 4] * 3, bool))
    a = np.full(g10.shape, 100, np.int16)
    b = np.full(g20.shape, 100, np.int16)
    erase_clouds({"BLUE": a, "NIR": b}, {"BLUE": g10, "NIR": g20}, q, g10)
    assert (a == -9999).sum() == 2 and a[1, 1] == -9999 and a[0, 0] == 100
    assert b[0, 0] == -9999 and b[1, 1] == -9999 and b[0, 1] == 100


def test_write_cube_adds_dst(tmp_path):
    """OUTPUT_DST: DST (m) from the warped QAI, written beside QAI and BOA in every tile."""
    import rasterio
    from test_cube_write import CUBE, Image, params
    from l2ps.cube.write import write_cube
    cloud = np.zeros((50, 60), bool)
    cloud[20:24, 30:33] = True
    img = Image(0, 0, seed=3, cloud=cloud)
    img.qai &= ~np.uint16((1 << 4) | (1 << 3))                # no snow / shadow bits
    res = write_cube(img.products(), level1_id="A", date="20200101", sensor="LND08",
                     params=params(OUTPUT_DST=True), cubes=[CUBE], out_dir=tmp_path)
    dst_files = sorted(tmp_path.rglob("*_DST.tif"))
    assert dst_files and len(dst_files) == res.n_tiles
    assert all(f.with_name(f.name.replace("DST", "QAI")).exists() for f in dst_files)
    full = np.full((120, 120), -32768, np.int32)
    for f in dst_files:
        with rasterio.open(f) as ds:
            r = int(round((3000000.0 - ds.transform.f) / 30.0))
            c = int(round((ds.transform.c - 4000000.0) / 30.0))
            full[r:r + ds.height, c:c + ds.width] = ds.read(1)
            assert ds.nodata == -9999
    assert (full[20:24, 30:33] == 0).all()
    assert full[20, 35] == 90 and full[0, 0] == -9999        # 3 px east; QAI nodata pixel
    ref = np.trunc(ndimage.distance_transform_edt(~cloud) + 1e-9) * 30
    sub = full[:50, :60]
    ok = sub != -9999
    assert (sub[ok] == np.minimum(ref, 32767)[ok]).all()
    res2 = write_cube(img.products(), level1_id="B", date="20200102", sensor="LND08",
                      params=params(), cubes=[CUBE], out_dir=tmp_path)
    assert res2.n_tiles and not list(tmp_path.rglob("20200102*_DST.tif"))


# ----------------------------------------------------------------------------- memory-lean variants
# (issue 9: the strip-wise, in-place and packed forms must equal the plain definitions)
def test_buffer_in_strips_equals_footprint_stamping():
    rng = np.random.default_rng(11)
    for shape, dens in (((61, 47), 0.01), ((90, 33), 0.15), ((1, 30), 0.2)):
        m = rng.random(shape) < dens
        for r in (1, 3, 10):
            ref = _brute_buffer(m, r)
            for strip in (1, 4, 17):
                assert (buffer_disk(m, r, strip=strip) == ref).all(), (shape, r, strip)


def test_mark_beyond_equals_distance_threshold():
    from l2ps.clouds.morphology import mark_beyond
    rng = np.random.default_rng(12)
    m = rng.random((70, 55)) < 0.003
    m[5, 5] = True
    d = distance_transform(m)
    for limit in (0.0, 2.5, 7.0, 11.9):
        bits = rng.integers(0, 128, m.shape).astype(np.uint8)
        before = bits.copy()
        mark_beyond(m, limit, bits, 128)
        assert ((bits & 128) != 0).tolist() == (d > limit).tolist()
        assert ((bits & 127) == before).all()


def test_fill_holes_equals_scipy():
    """fill_holes (union-find over runs of FALSE pixels) against
    scipy.ndimage.binary_fill_holes: random masks of every density (diagonal gaps, which
    a 4-connected background does not cross), rings, blobs touching each border, and
    degenerate shapes."""
    rng = np.random.default_rng(21)
    masks = []
    for shape in [(1, 1), (1, 9), (9, 1), (2, 2), (3, 3), (40, 55), (120, 90)]:
        for p in (0.0, 0.3, 0.5, 0.6, 0.75, 1.0):
            masks += [rng.random(shape) < p for _ in range(4)]
    ring = np.zeros((30, 40), bool)
    ring[5:20, 5:30] = True
    ring[7:18, 7:28] = False                     # a hole
    ring[10:12, 10:12] = True                    # an island in the hole
    masks.append(ring)
    cut = ring.copy()
    cut[5:7, 15] = False                         # the hole opens to the outside
    masks.append(cut)
    diag = np.zeros((5, 5), bool)
    diag[[0, 1, 1, 2, 3, 3, 4], [1, 0, 2, 1, 3, 4, 3]] = True   # a diagonal-only gap
    masks.append(diag)
    for m in masks:
        assert np.array_equal(fill_holes(m), ndimage.binary_fill_holes(m)), m.shape
    assert fill_holes(ring)[7:18, 7:28].all()
    assert np.array_equal(fill_holes(cut), cut)        # no hole left to fill


@pytest.mark.parametrize("seed", [13, 14, 15])
def test_components_equal_scipy_and_the_split_partitions_each_object(seed):
    """components8 (union-find over runs) numbers and fills the objects exactly as
    scipy.ndimage.label with an 8-neighbourhood; split_object_lists cuts every object into
    disjoint pieces that cover it, in object order, and leaves the small ones whole."""
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(60, 130)), int(rng.integers(60, 130)))
    m = ndimage.binary_dilation(rng.random(shape) < 0.01, iterations=4)
    m |= ndimage.binary_dilation(rng.random(shape) < 0.002, iterations=9)
    m[rng.random(shape) < 0.01] = True           # specks for the removal
    m[:, -1] |= rng.random(shape[0]) < 0.5       # objects on the image border
    ref, nref = ndimage.label(m, structure=np.ones((3, 3), bool))
    pix, start, n = components8(m)
    assert n == nref and (_label_image(pix, start, n, shape) == ref).all()
    pix, start, k = drop_small_objects(pix, start, n, 3)
    kept = _label_image(pix, start, k, shape)
    spix, sstart, sk = split_object_lists(pix.copy(), start, k, shape)
    pieces = _label_image(spix, sstart, sk, shape)
    assert ((pieces > 0) == (kept > 0)).all() and sk > k
    # each piece lies inside one object, the objects' pieces come in object order
    owner = [int(np.unique(kept[pieces == j])[0]) for j in range(1, sk + 1)]
    assert all(len(np.unique(kept[pieces == j])) == 1 for j in range(1, sk + 1))
    assert owner == sorted(owner) and set(owner) == set(range(1, k + 1))
    sizes = np.diff(start)[1:]
    # a core pixel (distance ≥ 3 to the background) needs ≥ 9 object pixels around it
    # (9 in an image corner, 29 inside), so smaller objects are never split
    for obj in np.flatnonzero(sizes < 9) + 1:
        assert owner.count(int(obj)) == 1


def test_shadow_floods_equal_the_fill_of_the_prepared_bands():
    """The packed depth/DARK_BIT written by the direct floods equals the definition:
    depth = min over the bands of fill(prepared band) − prepared band (capped at 32767),
    DARK_BIT where both bands' relative darkening (depth/fill ×10000) ≥ REL_PIXEL."""
    from l2ps.clouds import shadows as S
    rng = np.random.default_rng(14)
    ny, nx = 80, 90
    bands = [(ndimage.gaussian_filter(rng.normal(0, 1, (ny, nx)), 2) * 3000 + 2500)
             .astype(np.int16) for _ in range(2)]
    for b in bands:                      # a deep shadow (rel ≥ 0.4) and a shallow one
        b[42:50, 22:30] = 700
        b[20:26, 40:46] -= 300
    cloud = np.zeros((ny, nx), bool)
    cloud[30:40, 20:35] = True
    cloud[60:64, 70:80] = True
    bits = np.zeros((ny, nx), np.uint8)
    bits[rng.random((ny, nx)) < 0.02] |= 1
    maxdist = 15.0
    far = distance_transform(cloud) > maxdist
    bcks = [2000, 2200]
    depth = np.full((ny, nx), 32767, np.int64)
    dark = np.ones((ny, nx), bool)
    for band, bck in zip(bands, bcks):
        prep = band.astype(np.int64)
        inside = np.zeros((ny, nx), bool)
        inside[1:-1, 1:-1] = True
        prep[~inside | ((bits & 1) != 0) | far] = bck
        f = _brute_reconstruct(prep)
        d = np.minimum(f - prep, 32767)
        depth = np.minimum(depth, d)
        rel = np.where((f > 0) & (d > 0), np.minimum(10000, (d * 10000) // np.maximum(f, 1)), 0)
        dark &= rel >= S.REL_PIXEL
    expect = depth | np.where(dark, S.DARK_BIT, 0)
    for parallel in (False, True):                  # both modes of PARALLEL_FLOODS
        b = bits.copy()
        S.mark_far(b, cloud, maxdist)
        out = np.empty((ny, nx), np.uint16)
        if parallel:
            other = np.empty((ny, nx), np.uint16)
            S._flood_dark(bands[0], b, np.int16(bcks[0]), out, True)
            S._flood_dark(bands[1], b, np.int16(bcks[1]), other, True)
            S._merge_dark(out, other)
        else:
            S._flood_dark(bands[0], b, np.int16(bcks[0]), out, True)
            S._flood_dark(bands[1], b, np.int16(bcks[1]), out, False)
        assert (out.astype(np.int64) == expect).all(), parallel
    assert (expect & S.DARK_BIT).any() and (expect & S.DEPTH_MASK).max() > 0


def test_quantile_of_bits_mask():
    from l2ps.clouds.stats import quantile_int16_bits
    rng = np.random.default_rng(15)
    v = rng.integers(-2000, 30000, (30, 40)).astype(np.int16)
    bits = rng.integers(0, 64, v.shape).astype(np.uint8)
    for none_of in (1, 1 | 2 | 16, 4):
        sel = (bits & none_of) == 0
        for p in (0.175, 0.5, 0.825):
            assert quantile_int16_bits(v, bits, none_of, p) == quantile_int16(v, sel, p)


def test_land_probability_quantile_without_gathering():
    """The radix-selected quantile of the land probabilities equals numpy's linear
    quantile (index p·(n − 1), float32 p) of the gathered float32 values."""
    from l2ps.clouds.probability import _land_quantile
    rng = np.random.default_rng(16)
    for t in range(6):
        shape = (37, 41)
        bits = (rng.integers(0, 64, shape) & rng.choice([0, 1, 23])).astype(np.uint8)
        temp = rng.integers(25000, 31000, shape).astype(np.int16)
        vprob = rng.integers(-3000, 10001, shape).astype(np.int16)
        if t == 0:
            vprob[:] = 5000                       # ties
        a, b = np.float32(30400.0), np.float32(3000.0)
        tp = np.maximum((a - temp.astype(np.float32)) / b, np.float32(0.0))
        lp = (tp * vprob.astype(np.float32) / np.float32(10000.0)).astype(np.float32)
        v = np.sort(lp[(bits & 23) == 0]).astype(np.float64)
        for p in (0.0, 0.175, 0.825, 1.0):
            idx = float(np.float32(p)) * (v.size - 1)
            k = int(np.floor(idx))
            k1 = min(k + 1, v.size - 1)
            ref = v[k] + (idx - k) * (v[k1] - v[k])
            assert _land_quantile(bits, temp, vprob, a, b, p) == ref, (t, p)


def test_saturated_specks_dropped_as_with_labels():
    """The label-free search drops the same objects as the definition on a label image:
    8-connected objects with size·res² < SATURATED_SPECK_M2 and ≥ half saturated pixels."""
    from l2ps.clouds import detect as D
    rng = np.random.default_rng(17)
    for t in range(12):
        shape = (int(rng.integers(5, 120)), int(rng.integers(5, 120)))
        c = ndimage.binary_dilation(rng.random(shape) < rng.choice([0.002, 0.02]),
                                    iterations=int(rng.integers(0, 5)))
        c |= rng.random(shape) < 0.02
        bits = np.where(rng.random(shape) < rng.choice([0.2, 0.6, 0.95]), 64, 0).astype(np.uint8)
        res = float(rng.choice([10.0, 30.0, 60.0]))
        lab, n = ndimage.label(c, structure=np.ones((3, 3), bool))
        size = np.bincount(lab.ravel(), minlength=n + 1)
        nsat = np.bincount(lab[(bits & 64) != 0], minlength=n + 1)
        drop = (size * res * res < D.SATURATED_SPECK_M2) & (2 * nsat >= size)
        drop[0] = False
        expect = c & ~drop[lab]
        got = c.copy()
        assert D.drop_saturated_specks(got, bits, res) == int(drop.sum())
        assert (got == expect).all()


def test_cirrus_candidates_packed_in_strips_equal_the_whole_mask():
    """The cirrus candidates are kept as packed bits, made strip by strip: the bytes must
    equal np.packbits of the whole-image test for any size, strip height and elevation."""
    from l2ps.clouds.detect import _cirrus_packed
    from l2ps.clouds.finalize import cirrus_candidates
    rng = np.random.default_rng(2)
    for t in range(40):
        ny, nx = (int(v) for v in rng.integers(1, 60, 2))
        cirrus = rng.integers(0, 400, (ny, nx)).astype(np.int16)
        bits = rng.integers(0, 256, (ny, nx)).astype(np.uint8)
        z = (rng.random((ny, nx)) * 3).astype(np.float32) if t % 2 else None
        ref = np.packbits(cirrus_candidates(cirrus, bits, z))
        assert ref.any() or not (cirrus > 100).any()
        for rows in (8, 16, 512):
            assert np.array_equal(_cirrus_packed(cirrus, bits, z, rows), ref)
