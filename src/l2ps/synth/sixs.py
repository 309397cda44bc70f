"""6S-derived atmosphere for synthetic Level-1 scenes (docs/sixs-tables.md).

The synthetic scenes of :mod:`l2ps.synth` get their top-of-atmosphere reflectance from tables
generated with the 6S radiative transfer code (``tools/make_sixs_tables.py``), never from
l2ps's own radiative transfer, so that comparing l2ps's retrieval with the truth is a real
check.  Per band the tables hold the surface-independent terms of

    rho_TOA = tg * [ path + t_down * (t_up_dir * rho + t_up_dif * rho_env) / (1 - s * rho_env) ]

(rho: Lambertian surface reflectance of the pixel, rho_env: reflectance of its environment;
rho_env = rho is a homogeneous surface), where

- ``path``      intrinsic (path) reflectance of the atmosphere, *gas-coupled as in 6S*: 6S
                attenuates the Rayleigh part of the path by the gases without H2O and the aerosol
                part by the gases with half the H2O column ("water vapour mixed with aerosol");
                ``path`` = (tg_ray * path_rayleigh + tg_aer * path_aerosol) / tg, so that the
                formula above reproduces 6S's apparent reflectance (to ~1e-4, docs/sixs-tables.md);
                ``path_scatter`` is the gas-free intrinsic reflectance,
- ``tg``        total gaseous transmittance sun -> surface -> sensor (H2O, O3, O2, CO2, CH4, ...),
- ``t_down``    total (direct + diffuse) downward scattering transmittance,
- ``t_up_dir``  direct upward transmittance exp(-tau / cos(view_zenith)),
- ``t_up_dif``  diffuse upward transmittance,
- ``s``         spherical albedo of the atmosphere.

Units: angles in degrees; ``rel_azimuth`` = sun azimuth - view azimuth, both measured as the
azimuths of the directions target -> sun and target -> sensor, folded to 0..180 (0 = sun behind
the sensor, backscatter; 6S convention); ``aod550`` aerosol optical depth at 550 nm of the
column above the target (continental model); ``water_vapor`` g/cm2 above the target;
``elevation_km`` target altitude above sea level.  Ozone is 0.3 atm-cm (sea-level column).

Grid: see ``SixSTables.axes``; values outside it raise :class:`SixSTableError`
(interpolation only, never extrapolation).  Interpolation is multilinear.

Sensors: LND04/LND05 use the TM responses of 6S (one for both), LND07 ETM+, LND08 and LND09
OLI (no OLI-2 response in 6S), SEN2A, SEN2C and SEN2D MSI-A, SEN2B MSI-B.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import L2psError

TABLE_FILE = Path(__file__).resolve().parents[1] / "data" / "sixs_tables.npz"

#: l2ps sensor id -> table sensor (Py6S spectral responses)
SENSOR_TABLE = {
    "LND04": "TM", "LND05": "TM", "LND07": "ETM", "LND08": "OLI", "LND09": "OLI",
    "SEN2A": "MSIA", "SEN2B": "MSIB", "SEN2C": "MSIA", "SEN2D": "MSIA",
}
SCATTERING_TERMS = ("path", "t_down", "t_up_dir", "t_up_dif", "s")
GAS_TERMS = ("tg", "tg_ray", "tg_aer")
TERMS = ("path", "tg", "t_down", "t_up_dir", "t_up_dif", "s", "path_scatter")
_TG_FLOOR = 1e-6   # tg is 0 to 6S's printed precision in the cores of H2O bands
_SLACK = 1e-4   # tolerance on the grid limits (rounding of float32 inputs)


class SixSTableError(L2psError, ValueError):
    """Unknown sensor or band, or an input outside the 6S table grid."""


def _f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _locate(x: np.ndarray, nodes: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Index of the lower node and weight of the upper node for multilinear interpolation."""
    x = np.asarray(x, dtype=np.float32)
    if x.size:
        lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
        if lo < nodes[0] - _SLACK or hi > nodes[-1] + _SLACK:
            raise SixSTableError(
                f"{name} outside the 6S table grid: got {lo:g}..{hi:g}, "
                f"expected {nodes[0]:g}..{nodes[-1]:g}")
    if len(nodes) == 1:
        return np.zeros(x.shape, np.intp), np.zeros(x.shape, np.float32)
    i = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, len(nodes) - 2)
    w = (x - nodes[i]) / (nodes[i + 1] - nodes[i])
    return i.astype(np.intp), np.clip(w, 0.0, 1.0).astype(np.float32)


def _multilinear(table: np.ndarray, locs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Interpolate ``table`` (dims = len(locs), plus trailing value dims) at broadcast points."""
    ndim = len(locs)
    idx = np.broadcast_arrays(*[i for i, _ in locs])
    wts = np.broadcast_arrays(*[w for _, w in locs])
    out = None
    for corner in range(2 ** ndim):
        ix, wt = [], None
        for d in range(ndim):
            up = (corner >> d) & 1
            ix.append(idx[d] + up)
            wd = wts[d] if up else (1.0 - wts[d])
            wt = wd if wt is None else wt * wd
        # an axis with a single node has weight 0 for its (clipped) upper corner
        ix = [np.minimum(i, table.shape[d] - 1) for d, i in enumerate(ix)]
        val = table[tuple(ix)]
        term = val * (wt[..., None] if val.ndim > wt.ndim else wt)
        out = term if out is None else out + term
    return out.astype(np.float32)


@dataclass(frozen=True)
class BandTermsGrid:
    """The 6S terms of one band at one (scalar) geometry, on the nodes of the per-pixel dims.

    Produced by :meth:`SixSTables.terms_grid`; :meth:`terms` and :meth:`toa` interpolate per
    pixel bilinearly in (aod550, elevation) and (water_vapor, elevation) — cheap enough for
    full scenes.  ``scattering`` has shape (n_aod, n_elev, 5) in the order of
    ``SCATTERING_TERMS``; ``gas`` has shape (n_wv, n_elev, 3) in the order of ``GAS_TERMS``.
    """

    sensor: str
    domain: str
    aod: np.ndarray
    elev: np.ndarray
    wv: np.ndarray
    scattering: np.ndarray
    gas: np.ndarray

    def terms(self, aod550, water_vapor, elevation_km) -> dict[str, np.ndarray]:
        la = _locate(aod550, self.aod, "aod550")
        lz = _locate(elevation_km, self.elev, "elevation_km")
        lw = _locate(water_vapor, self.wv, "water_vapor")
        sc = _multilinear(self.scattering, [la, lz])
        ray = _multilinear(self.scattering[0, :, 0], [lz])
        gas = _multilinear(self.gas, [lw, lz])
        return _assemble(sc, ray, gas)

    def toa(self, rho_surface, rho_env, aod550, water_vapor, elevation_km,
            block_rows: int | None = None) -> np.ndarray:
        """TOA reflectance per pixel (float32, broadcast shape of the inputs).

        Large inputs are processed in blocks of rows of the first axis (about 2**20 values per
        block unless ``block_rows`` is given) to keep the temporaries small.
        """
        args = [np.asarray(a, dtype=np.float32) for a in
                (rho_surface, rho_env, aod550, water_vapor, elevation_km)]
        shape = np.broadcast_shapes(*(a.shape for a in args))
        size = int(np.prod(shape))
        if len(shape) == 0 or size <= 2 ** 20 and block_rows is None:
            t = self.terms(*args[2:])
            return compose_toa(t, args[0], args[1])
        rows = block_rows or max(1, (2 ** 20 * shape[0]) // max(size, 1))
        full = [np.broadcast_to(a, shape) for a in args]
        out = np.empty(shape, np.float32)
        for i in range(0, shape[0], rows):
            blk = [a[i:i + rows] for a in full]
            out[i:i + rows] = compose_toa(self.terms(*blk[2:]), blk[0], blk[1])
        return out


def _assemble(sc: np.ndarray, path_ray: np.ndarray, gas: np.ndarray) -> dict[str, np.ndarray]:
    """Terms from interpolated scattering (..., 5), Rayleigh path (...) and gas (..., 3) values."""
    path = sc[..., 0]
    tg, tg_ray, tg_aer = gas[..., 0], gas[..., 1], gas[..., 2]
    path_eff = (tg_ray * path_ray + tg_aer * (path - path_ray)) / np.maximum(tg, _TG_FLOOR)
    out = {"path": path_eff, "tg": tg, "t_down": sc[..., 1], "t_up_dir": sc[..., 2],
           "t_up_dif": sc[..., 3], "s": sc[..., 4], "path_scatter": path}
    shape = np.broadcast_shapes(*(v.shape for v in out.values()))
    return {k: np.broadcast_to(out[k], shape).astype(np.float32, copy=False) for k in TERMS}


def compose_toa(t: dict[str, np.ndarray], rho_surface, rho_env) -> np.ndarray:
    """rho_TOA = tg * [path + t_down * (t_up_dir * rho + t_up_dif * rho_env) / (1 - s * rho_env)]."""
    rho = _f32(rho_surface)
    env = _f32(rho_env)
    surf = t["t_down"] * (t["t_up_dir"] * rho + t["t_up_dif"] * env) / (1.0 - t["s"] * env)
    return (t["tg"] * (t["path"] + surf)).astype(np.float32)


class SixSTables:
    """The 6S tables of all sensors (``src/l2ps/data/sixs_tables.npz``)."""

    def __init__(self, path: str | Path = TABLE_FILE):
        self.path = Path(path)
        try:
            with np.load(self.path) as z:
                data = {k: z[k] for k in z.files}
        except OSError as e:
            raise SixSTableError(f"cannot read the 6S tables {self.path}: {e}") from e
        self.meta: dict = json.loads(bytes(data.pop("meta")).decode())
        self.axes: dict[str, np.ndarray] = {
            k.split(".", 1)[1]: v.astype(np.float32) for k, v in data.items() if k.startswith("axis.")}
        self.table_sensors: dict[str, tuple[str, ...]] = {
            ts: tuple(d) for ts, d in self.meta["sensors"].items()}
        self._scat: dict[tuple[str, str], np.ndarray] = {}
        self._gas: dict[tuple[str, str], np.ndarray] = {}
        self._e0: dict[tuple[str, str], float] = {}
        for ts, domains in self.table_sensors.items():
            for d in domains:
                self._scat[ts, d] = np.stack([data[f"{ts}.{d}.{k}"] for k in SCATTERING_TERMS],
                                             axis=-1).astype(np.float32)
                self._gas[ts, d] = np.stack([data[f"{ts}.{d}.{k}"] for k in GAS_TERMS],
                                            axis=-1).astype(np.float32)
                self._e0[ts, d] = float(data[f"{ts}.{d}.e0"])

    # ---------------------------------------------------------------------------------------
    def _key(self, sensor: str, domain: str) -> tuple[str, str]:
        ts = SENSOR_TABLE.get(sensor)
        if ts is None or ts not in self.table_sensors:
            raise SixSTableError(f"no 6S table for sensor {sensor!r}; known: "
                                 + ", ".join(s for s, t in SENSOR_TABLE.items() if t in self.table_sensors))
        if domain not in self.table_sensors[ts]:
            raise SixSTableError(f"no 6S table for band {domain!r} of {sensor}; expected one of "
                                 + ", ".join(self.table_sensors[ts]))
        return ts, domain

    def bands(self, sensor: str) -> tuple[str, ...]:
        """Band domains of ``sensor`` that have tables (all reflective bands, internal order)."""
        ts = SENSOR_TABLE.get(sensor)
        if ts is None or ts not in self.table_sensors:
            raise SixSTableError(f"no 6S table for sensor {sensor!r}; known: "
                                 + ", ".join(s for s, t in SENSOR_TABLE.items() if t in self.table_sensors))
        return self.table_sensors[ts]

    def table_sensor(self, sensor: str) -> str:
        """The Py6S response set used for ``sensor`` (e.g. LND09 -> "OLI", SEN2C -> "MSIA")."""
        self.bands(sensor)
        return SENSOR_TABLE[sensor]

    def e0(self, sensor: str, domain: str) -> float:
        """Band solar irradiance of 6S's solar spectrum, W m-2 um-1 (RSR weighted)."""
        return self._e0[self._key(sensor, domain)]

    # ---------------------------------------------------------------------------------------
    def _geometry_locs(self, sun_zenith, view_zenith, rel_azimuth):
        raa = np.abs(np.asarray(rel_azimuth, dtype=np.float32)) % np.float32(360.0)
        raa = np.where(raa > 180.0, 360.0 - raa, raa).astype(np.float32)
        sza = np.asarray(sun_zenith, dtype=np.float32)
        vza = np.asarray(view_zenith, dtype=np.float32)
        mu = (1.0 / np.cos(np.radians(sza, dtype=np.float32))
              + 1.0 / np.cos(np.radians(vza, dtype=np.float32))).astype(np.float32)
        return ([_locate(sza, self.axes["sza"], "sun_zenith"),
                 _locate(vza, self.axes["vza"], "view_zenith"),
                 _locate(raa, self.axes["raa"], "rel_azimuth")],
                _locate(mu, self.axes["airmass"], "air mass 1/cos(sun_zenith)+1/cos(view_zenith)"))

    def terms_grid(self, sensor: str, domain: str, sun_zenith: float, view_zenith: float,
                   rel_azimuth: float) -> BandTermsGrid:
        """Terms at one geometry on the (aod, elevation) and (water vapour, elevation) nodes."""
        key = self._key(sensor, domain)
        for name, v in (("sun_zenith", sun_zenith), ("view_zenith", view_zenith),
                        ("rel_azimuth", rel_azimuth)):
            if np.size(v) != 1:
                raise SixSTableError(f"terms_grid needs a scalar {name}; use terms() for arrays")
        geo, lm = self._geometry_locs(float(np.squeeze(sun_zenith)), float(np.squeeze(view_zenith)),
                                      float(np.squeeze(rel_azimuth)))
        scat = _multilinear(self._scat[key], geo)           # (n_aod, n_elev, 5)
        gas = self._gas[key]                                # (n_m, n_wv, n_elev, 3)
        i, w = int(lm[0]), float(lm[1])
        gas = (1.0 - w) * gas[i] + w * gas[min(i + 1, gas.shape[0] - 1)]
        return BandTermsGrid(sensor, domain, self.axes["aod"], self.axes["elev"], self.axes["wv"],
                             scat.astype(np.float32), gas.astype(np.float32))

    def terms(self, sensor: str, domain: str, sun_zenith, view_zenith, rel_azimuth, aod550,
              water_vapor, elevation_km) -> dict[str, np.ndarray]:
        """All terms (keys ``TERMS``) at broadcast inputs, float32 arrays of the broadcast shape."""
        key = self._key(sensor, domain)
        if all(np.size(v) == 1 for v in (sun_zenith, view_zenith, rel_azimuth)):
            shape = np.broadcast_shapes(*(np.shape(v) for v in (
                sun_zenith, view_zenith, rel_azimuth, aod550, water_vapor, elevation_km)))
            g = self.terms_grid(sensor, domain, sun_zenith, view_zenith, rel_azimuth)
            t = g.terms(aod550, water_vapor, elevation_km)
            return {k: np.broadcast_to(v, shape).astype(np.float32, copy=False) for k, v in t.items()}
        geo, lm = self._geometry_locs(sun_zenith, view_zenith, rel_azimuth)
        la = _locate(aod550, self.axes["aod"], "aod550")
        lz = _locate(elevation_km, self.axes["elev"], "elevation_km")
        lw = _locate(water_vapor, self.axes["wv"], "water_vapor")
        sc = _multilinear(self._scat[key], geo + [la, lz])
        ray = _multilinear(self._scat[key][:, :, :, 0, :, 0], geo + [lz])
        gas = _multilinear(self._gas[key], [lm, lw, lz])
        t = _assemble(sc, ray, gas)
        shape = np.broadcast_shapes(*(np.shape(v) for v in (
            sun_zenith, view_zenith, rel_azimuth, aod550, water_vapor, elevation_km)))
        return {k: np.broadcast_to(v, shape).astype(np.float32, copy=False) for k, v in t.items()}

    def toa(self, sensor: str, domain: str, rho_surface, rho_env, sun_zenith, view_zenith,
            rel_azimuth, aod550, water_vapor, elevation_km) -> np.ndarray:
        """TOA reflectance for a Lambertian surface ``rho_surface`` in an environment ``rho_env``."""
        if all(np.size(v) == 1 for v in (sun_zenith, view_zenith, rel_azimuth)):
            g = self.terms_grid(sensor, domain, sun_zenith, view_zenith, rel_azimuth)
            shape = np.broadcast_shapes(*(np.shape(v) for v in (
                rho_surface, rho_env, sun_zenith, view_zenith, rel_azimuth, aod550, water_vapor,
                elevation_km)))
            return np.broadcast_to(g.toa(rho_surface, rho_env, aod550, water_vapor, elevation_km),
                                   shape).astype(np.float32, copy=False)
        t = self.terms(sensor, domain, sun_zenith, view_zenith, rel_azimuth, aod550, water_vapor,
                       elevation_km)
        return compose_toa(t, rho_surface, rho_env)


@functools.lru_cache(maxsize=None)
def _load(path: str) -> SixSTables:
    return SixSTables(path)


def load_tables(path: str | Path | None = None) -> SixSTables:
    """The 6S tables (cached per path)."""
    return _load(str(Path(path) if path is not None else TABLE_FILE))
