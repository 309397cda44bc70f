"""Memory timeline of one `l2ps level2` run: RSS sampled every 20 ms, with stage marks.

    .venv/bin/python benchmarks/memtrace.py IMAGE PRM [--threads N] [--out trace.json]

Prints, per stage, the RSS at its start and end, the highest RSS sampled inside it and the
exact high-water mark at its end, so that the process's peak can be put on a stage (the
record's ``peak_rss_mb`` is only the running maximum per top-level stage; short spikes
between two samples show up as a step of the high-water mark). Runs in-process: the
sampler is a thread reading /proc/self/statm; the stage marks come from wrapping
``l2ps.pipeline.StageTimer.__call__``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from contextlib import contextmanager

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def _hwm() -> float:
    """The process's exact high-water mark so far (MiB; getrusage, not sampled)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _list_arrays(stage: str, min_mib: float = 16.0) -> None:
    """Print the numpy arrays owning at least ``min_mib`` MiB referenced from objects the
    garbage collector tracks (dicts, lists, instances; not from C or local variables)."""
    import gc

    import numpy as np
    seen, rows = set(), []
    cands = [r for o in gc.get_objects() for r in gc.get_referents(o)
             if isinstance(r, np.ndarray)]
    for o in cands:
        if isinstance(o, np.ndarray):
            base = o
            while isinstance(base.base, np.ndarray):
                base = base.base
            if id(base) in seen or base.nbytes < min_mib * 2**20:
                continue
            seen.add(id(base))
            rows.append((base.nbytes / 2**20, base.dtype.name, base.shape))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    print(f"-- arrays at the start of {stage}: {len(rows)}, {total:.0f} MiB, RSS "
          f"{_rss_mib():.0f} MiB")
    for mib, dt, shape in rows:
        print(f"   {mib:8.1f} MiB {dt:8s} {shape}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image")
    ap.add_argument("prm")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the samples and marks as JSON")
    ap.add_argument("--arrays", nargs="*", default=None, metavar="STAGE",
                    help="list the live numpy arrays of at least 16 MiB at the start of "
                         "these stages (all top-level stages if none named)")
    a = ap.parse_args(argv)
    os.environ.setdefault("NUMBA_NUM_THREADS", str(a.threads))
    os.environ.setdefault("GDAL_NUM_THREADS", str(a.threads))

    t0 = time.perf_counter()
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            samples.append((time.perf_counter() - t0, _rss_mib()))
            time.sleep(0.02)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    samples.append((0.0, _rss_mib()))

    from l2ps import pipeline
    from l2ps.cli import main as cli_main

    marks: list[tuple[str, float, float]] = []
    orig = pipeline.StageTimer.__call__

    @contextmanager
    def traced(self, name):
        if a.arrays is not None and (not a.arrays or name in a.arrays):
            _list_arrays(name)
        s = time.perf_counter() - t0
        with orig(self, name):
            yield
        marks.append((name, s, time.perf_counter() - t0, _hwm()))

    pipeline.StageTimer.__call__ = traced

    from l2ps.clouds import detect            # the cloud stage's sub-stages, "clouds." + name
    orig_lap = detect._lap

    def lap(stats, name, t_start):
        orig_lap(stats, name, t_start)
        marks.append(("  clouds." + name, t_start[0] - t0, time.perf_counter() - t0, _hwm()))

    detect._lap = lap
    t_import = time.perf_counter() - t0
    rc = cli_main(["level2", a.image, a.prm, "--no-queue", "--threads", str(a.threads)])
    stop.set()
    th.join()
    end = time.perf_counter() - t0

    def at(t):
        best = samples[0][1]
        for ts, v in samples:
            if ts > t:
                break
            best = v
        return best

    def peak(s, e):
        vals = [v for ts, v in samples if s <= ts <= e]
        return max(vals) if vals else at(s)

    print(f"imports done at {t_import:.1f} s, RSS {at(t_import):.0f} MiB")
    print(f"{'stage':24s} {'start':>7s} {'end':>7s} {'RSS in':>8s} {'RSS out':>8s} {'max':>8s}"
          f" {'HWM':>7s}")
    for name, s, e, hwm in sorted(marks, key=lambda m: m[1]):
        print(f"{name:24s} {s:7.1f} {e:7.1f} {at(s):8.0f} {at(e):8.0f} {peak(s, e):8.0f}"
              f" {hwm:7.0f}")
    print("(max: highest sample inside the stage; HWM: the exact high-water mark of the "
          "process at the stage's end)")
    gpk = max(samples, key=lambda x: x[1])
    print(f"process peak {gpk[1]:.0f} MiB at {gpk[0]:.1f} s of {end:.1f} s")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"samples": samples, "marks": marks}, f)
    return rc


if __name__ == "__main__":
    sys.exit(main())
