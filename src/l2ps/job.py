"""One Level-1 image as a job: log, record, queue update, exit status (DESIGN.md, "The
workflow"). Used by the Snakemake job script and by ``l2ps level2 IMAGE PRM``; knows
nothing of Snakemake.

The per-image record (JSON) holds status, reason, sensor, date, cloud cover, tiles and files
written, timings and peak memory, and the l2ps version. Each run of an image writes
``DIR_LOG/records/<image>/run-NNNN.json`` (the job's declared output: a new number per
request, so that a line set back to QUEUED is processed again) and a copy as
``DIR_LOG/<image>.json`` (the latest), beside the log ``DIR_LOG/<image>.log``.

Temporary files: every job extracts into its own folder
``DIR_TEMP/l2ps-job-<host>-<pid>-<random>/`` holding an ``owner.json`` marker (host, pid,
process start time, boot id). The folder is removed when the job ends; one left behind by
a killed job is removed by the next job on the same host (:func:`sweep_temp`), which never
touches the folder of a live process or of another host (docs/running.md, "Failures").
"""
from __future__ import annotations

import errno
import json
import os
import re
import resource
import secrets
import shutil
import signal
import sys
import tempfile
import time
import traceback
from datetime import datetime
from pathlib import Path

from . import __version__
from .errors import L2psError, OutputError

RECORDS = "records"
JOB_TEMP_PREFIX = "l2ps-job-"
OWNER_FILE = "owner.json"
#: environment variable of the fault-injection hook (tests only, see _install_faults)
FAULT_ENV = "L2PS_FAULT_INJECTION"
_JOB_TEMP_RE = re.compile(r"^l2ps-job-(?P<host>.+)-(?P<pid>\d+)-(?P<rand>[0-9a-f]{8})$")
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


# ------------------------------------------------------------------------ temporary folders
def _hostname() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", os.uname().nodename) or "host"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks after boot (Linux ``/proc``), or None
    when it cannot be read (no such process, or no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:  # field 22; the command name (field 2) may contain blanks and parentheses
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, owned by someone else
        return True
    return True


def _owner_alive(owner: dict) -> bool:
    """Is the process described by ``owner`` (same host) still running? Decides
    conservatively: anything unclear counts as alive."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    boot = owner.get("boot_id")
    if boot and _boot_id() and boot != _boot_id():
        return False                      # the machine was rebooted since
    if not _pid_alive(pid):
        return False
    start = owner.get("start_ticks")
    now = _start_ticks(pid)
    if start is not None and now is not None and start != now:
        return False                      # the pid was reused by another process
    return True


def make_job_temp(dir_temp: str | os.PathLike, image: str = "") -> Path:
    """Create this job's temporary folder ``DIR_TEMP/l2ps-job-<host>-<pid>-<random>/``
    with its ``owner.json`` marker and return it."""
    base = Path(dir_temp)
    base.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    while True:
        d = base / f"{JOB_TEMP_PREFIX}{_hostname()}-{pid}-{secrets.token_hex(4)}"
        try:
            d.mkdir()
            break
        except FileExistsError:
            continue
    owner = {"host": _hostname(), "pid": pid, "start_ticks": _start_ticks(pid),
             "boot_id": _boot_id(), "image": str(image), "created": _now()}
    (d / OWNER_FILE).write_text(json.dumps(owner) + "\n")
    return d


def sweep_temp(dir_temp: str | os.PathLike) -> list[Path]:
    """Remove the job folders in DIR_TEMP left behind by dead processes of this host.

    A folder ``l2ps-job-<host>-<pid>-<random>`` is removed only when ``<host>`` is this
    host and its process is gone: the pid does not exist, or it now belongs to a process
    that started at another time (pid reuse), or the machine was rebooted since (boot id).
    Folders of other hosts (a DIR_TEMP shared by cluster nodes) and anything not named
    like a job folder are never touched. Returns the folders removed.
    """
    base = Path(dir_temp)
    removed: list[Path] = []
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return removed
    me = _hostname()
    for d in entries:
        m = _JOB_TEMP_RE.match(d.name)
        if not m or m.group("host") != me or not d.is_dir() or d.is_symlink():
            continue
        try:
            owner = json.loads((d / OWNER_FILE).read_text())
        except (OSError, ValueError):
            # killed between mkdir and writing the marker: the name has the pid
            owner = {"pid": int(m.group("pid"))}
        if owner.get("host", me) != me or int(owner.get("pid", -1)) != int(m.group("pid")):
            continue
        if _owner_alive(owner):
            continue
        shutil.rmtree(d, ignore_errors=True)
        if not d.exists():
            removed.append(d)
    return removed


# ------------------------------------------------------------------------ fault injection
def _install_faults(spec: str, image: Path):
    """Fault injection for the fault tests (tests/test_faults.py) — never set in production.

    ``spec`` is the JSON value of ``L2PS_FAULT_INJECTION``: one object or a list of objects
    ``{"at": "write"|"extract", "action": "enospc"|"pause", "n": N, "image": SUBSTRING,
    "signal_file": PATH, "seconds": S}``:

    - ``at = "write"``: the n-th file written by the cube writer in this job (1-based;
      every atomic write of a product, chip or quicklook counts) — ``enospc`` writes half of its
      temporary file and then fails with ENOSPC ("No space left on device"); ``pause``
      writes half of it, writes this process's pid to ``signal_file`` and sleeps ``seconds``
      (default 300; then exits with status 99), so that a test can ``kill -9`` the run in
      the middle of a tile write;
    - ``at = "extract"``: ``pause`` after the archive was unpacked into DIR_TEMP (same
      signal file and sleep).

    ``image``: apply only to jobs whose Level-1 path contains this text. Returns a function
    that removes the hooks again.
    """
    try:
        faults = json.loads(spec)
    except ValueError as exc:
        raise ValueError(f"{FAULT_ENV}: not JSON: {exc}") from None
    faults = faults if isinstance(faults, list) else [faults]
    faults = [f for f in faults if str(f.get("image", "")) in str(image)]
    undo: list = []

    def pause(f: dict) -> None:
        sig = f.get("signal_file")
        if sig:
            Path(sig).write_text(f"{os.getpid()}\n")
        time.sleep(float(f.get("seconds", 300)))
        os._exit(99)

    writes = [f for f in faults if f.get("at") == "write"]
    if writes:
        # every file of the cube is written through write.atomic_write(path, writer)
        from .cube import write as cube_write
        real_atomic_write = cube_write.atomic_write
        count = [0]

        def atomic_write(path, writer, *args, **kwargs):
            count[0] += 1
            hit = [f for f in writes if int(f.get("n", 1)) == count[0]]
            if not hit:
                return real_atomic_write(path, writer, *args, **kwargs)

            def faulty_writer(tmp):
                writer(tmp)
                t = Path(tmp)
                if t.exists():                       # leave a half-written file
                    with open(t, "r+b") as fh:
                        fh.truncate(t.stat().st_size // 2)
                for f in hit:
                    if f.get("action") == "pause":
                        pause(f)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
            return real_atomic_write(path, faulty_writer, *args, **kwargs)

        cube_write.atomic_write = atomic_write
        undo.append(lambda: setattr(cube_write, "atomic_write", real_atomic_write))
    extracts = [f for f in faults if f.get("at") == "extract"]
    if extracts:
        from .level1 import archive
        real_extract = archive.extract

        def extract(path, dest, *args, **kwargs):
            out = real_extract(path, dest, *args, **kwargs)
            for f in extracts:
                if f.get("action") == "pause":
                    pause(f)
            return out

        archive.extract = extract
        undo.append(lambda: setattr(archive, "extract", real_extract))

    def remove() -> None:
        for u in undo:
            u()
    return remove


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
    job_temp: Path | None = None
    remove_faults = None
    old_sigterm = _terminate_on_sigterm()
    try:
        if perr is not None:
            raise perr
        _set_threads(params.nthread)
        from .memory import tune_heap
        tune_heap()             # freed heap reused within a stage (pages not re-zeroed)
        for d in sweep_temp(params.dir_temp):
            out.write(f"removed the temporary folder of a killed job: {d}")
        try:
            job_temp = make_job_temp(params.dir_temp, str(image))
        except OSError as exc:
            raise OutputError(f"{params.dir_temp}: cannot create the job's temporary folder "
                              f"(DIR_TEMP): {exc.strerror or exc}") from None
        if os.environ.get(FAULT_ENV):
            remove_faults = _install_faults(os.environ[FAULT_ENV], image)
        # extraction goes into this job's own folder; FORCE_param keeps the file's DIR_TEMP
        job_params = params.replace(dir_temp=job_temp,
                                    overrides={**params.overrides, "DIR_TEMP": params.dir_temp})
        from .pipeline import process_image
        result = process_image(image, job_params, log=out.write)
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
    finally:
        if remove_faults is not None:
            remove_faults()
        if job_temp is not None:
            shutil.rmtree(job_temp, ignore_errors=True)
        if old_sigterm is not None:
            signal.signal(signal.SIGTERM, old_sigterm)
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


def _terminate_on_sigterm():
    """Turn SIGTERM (Snakemake cancelling a job, SLURM at its time limit before SIGKILL)
    into SystemExit, so that temporary files and the job folder are removed on the way
    out; the queue line stays QUEUED. Returns the previous handler (None when not in the
    main thread)."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        return None

    def _exit(signum, frame):
        raise SystemExit(128 + signum)
    return signal.signal(signal.SIGTERM, _exit)


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
