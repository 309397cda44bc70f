"""One Level-1 image as a job: log, record, queue update, exit status (DESIGN.md, "The
workflow"). Used by the Snakemake job script and by ``l2ps level2 IMAGE PRM``; knows
nothing of Snakemake.

The per-image record (JSON) holds status, reason, sensor, date, cloud cover, tiles and files
written, timings and peak memory, and the l2ps version. Each run of an image writes
``DIR_LOG/records/<image>/run-NNNN.json`` (the job's declared output: a new number per
request, so that a line set back to QUEUED is processed again) and a copy as
``DIR_LOG/<image>.json`` (the latest), beside the log ``DIR_LOG/<image>.log``.
"""
from __future__ import annotations

import json
import os
import re
import resource
import sys
import tempfile
import time
import traceback
from datetime import datetime
from pathlib import Path

from . import __version__
from .errors import L2psError

RECORDS = "records"
_LANDSAT_RE = re.compile(r"^L[CTEMO]0[4-9]_")
_S2_RE = re.compile(r"^(S2[A-D]_|L1C_T)")


# ------------------------------------------------------------------------ naming
def record_path(dir_log, image_id: str, run: int) -> str:
    return str(Path(dir_log) / RECORDS / image_id / f"run-{run:04d}.json")


def next_run_number(dir_log, image_id: str) -> int:
    """1 + the number of the latest record of this image (completed runs only)."""
    d = Path(dir_log) / RECORDS / image_id
    runs = [int(m.group(1)) for p in d.glob("run-*.json")
            if (m := re.fullmatch(r"run-(\d{4})\.json", p.name))] if d.is_dir() else []
    return max(runs, default=0) + 1


def sensor_family(path: Path) -> str:
    """'landsat' or 'sentinel2' from a Level-1 name (for resources; no file is opened)."""
    name = Path(path).name
    if _S2_RE.match(name) or "MSIL1C" in name:
        return "sentinel2"
    if _LANDSAT_RE.match(name):
        return "landsat"
    return "sentinel2"  # unknown: reserve the larger amount


def mem_mb_for(path: Path, table: dict | None = None) -> int:
    defaults = {"landsat": 3000, "sentinel2": 6000}
    defaults.update(table or {})
    return int(defaults[sensor_family(path)])


# ------------------------------------------------------------------------ logging
class JobLog:
    """The per-image log (FORCE-like frame; spec 03 §3.6), appended to; written to every
    path given (the run's own log and ``DIR_LOG/<image>.log``), or to stderr."""

    def __init__(self, *paths: str | os.PathLike | None):
        self._fhs = []
        for p in paths:
            if p:
                Path(p).parent.mkdir(parents=True, exist_ok=True)
                self._fhs.append(open(p, "a", encoding="utf-8"))

    def add(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._fhs.append(open(path, "a", encoding="utf-8"))

    def write(self, text: str = "") -> None:
        if not self._fhs:
            print(text, file=sys.stderr)
        for fh in self._fhs:
            fh.write(text + "\n")
            fh.flush()

    def close(self) -> None:
        for fh in self._fhs:
            fh.close()
        self._fhs = []


def _now() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, default=str)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------ the job
def run_job(image: str | os.PathLike, parameter_file: str | os.PathLike, *,
            record: str | os.PathLike | None = None, log: str | os.PathLike | None = None,
            nthreads: int | None = None, update_queue: bool = True) -> int:
    """Process one image; return the exit status (0 DONE or input FAIL, 1 crash).

    Without ``record``/``log`` (``l2ps level2``) the record goes to DIR_LOG as usual and
    the log to stderr.
    """
    from .params import read_parameters
    from .queue import set_status

    image = Path(os.path.normpath(Path(image).absolute()))
    image_id = Path(record).parent.name if record else image.name
    params, perr = None, None
    try:
        params = read_parameters(parameter_file)
        if nthreads:
            params = params.replace(nthread=int(nthreads))
    except L2psError as exc:
        perr = exc
    out = JobLog(log, Path(params.dir_log) / f"{image_id}.log" if params is not None else None)
    t0 = time.time()
    out.write("l2ps Level 2 Processing System " + __version__)
    out.write("-" * 59)
    out.write(f"Start of processing: {_now()}")
    out.write(f"Image: {image}")
    rec: dict = {"image": str(image), "image_id": image_id, "version": __version__,
                 "parameter_file": str(parameter_file), "start": _now(),
                 "host": os.uname().nodename, "pid": os.getpid()}
    status, code = "FAIL", 0
    try:
        if perr is not None:
            raise perr
        _set_threads(params.nthread)
        from .pipeline import process_image
        result = process_image(image, params, log=out.write)
        rec.update(result)
        status = "DONE"
        rec["reason"] = result.get("reason", "")
    except L2psError as exc:
        rec["reason"] = str(exc)
        out.write(f"Error: {exc}")
    except Exception as exc:  # a crash: non-zero exit, Snakemake retries as configured
        rec["reason"] = f"crashed: {type(exc).__name__}: {exc}"
        out.write(f"Crash: {type(exc).__name__}: {exc}")
        out.write(traceback.format_exc())
        code = 1
    rec["status"] = status
    rec["end"] = _now()
    rec["seconds"] = round(time.time() - t0, 2)
    rec["peak_rss_mb"] = round(peak_rss_mb(), 1)
    out.write("")
    out.write("-" * 59)
    out.write(f"Core processing signaled {status}" + (f": {rec['reason']}" if status == "FAIL" else ""))
    out.write(f"End of processing: {_now()}")
    # record: the declared output (only on exit 0), and the latest copy beside the log
    try:
        dir_log = Path(params.dir_log) if params is not None else (Path(log).parent if log else None)
        if dir_log is not None:
            _write_json(dir_log / f"{image_id}.json", rec)
        if record and code == 0:
            _write_json(Path(record), rec)
    except OSError as exc:
        out.write(f"could not write the job record: {exc}")
        code = code or 1
    if update_queue and params is not None and params.file_queue is not None:
        try:
            if not set_status(params.file_queue, image, status):
                out.write(f"note: {image} is not listed in {params.file_queue}; queue unchanged")
        except (OSError, TimeoutError) as exc:
            out.write(f"could not update the queue {params.file_queue}: {exc}")
            code = code or 1
    out.close()
    return code


def _set_threads(n: int) -> None:
    os.environ["GDAL_NUM_THREADS"] = str(n)
    try:
        import numba
        numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    except Exception:  # numba missing or already fixed: not fatal
        pass


# ------------------------------------------------------------------------ summary
def print_summary(queue_file, dir_log, stream=None) -> dict[str, int]:
    """Print how many images are DONE, FAIL and QUEUED, and where the reasons are."""
    from .queue import read_queue
    stream = stream or sys.stdout
    try:
        q = read_queue(queue_file)
    except L2psError as exc:
        print(f"l2ps: cannot read the queue for the summary: {exc}", file=stream)
        return {}
    c = q.counts()
    print(f"l2ps: {c['DONE']} DONE, {c['FAIL']} FAIL, {c['QUEUED']} QUEUED in {queue_file}",
          file=stream)
    if c["FAIL"]:
        print(f"l2ps: reasons of failures in {dir_log}/<image>.log and <image>.json", file=stream)
    return c
