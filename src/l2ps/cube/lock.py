"""Per-file locks, atomic replacement and race-safe directories for the cube writer.

Every file of the cube (tile files, contribution chips, ``datacube-definition.prj``, the
provenance CSV) is written under a lock on ``<dir>/.locks/<file>.lock`` and replaced atomically:
the data goes to a temporary file in the same directory, which is then renamed over
the target with :func:`os.replace`. A killed writer therefore never leaves a broken or
half-written file; at worst a hidden temporary file (``.<name>.tmp-*``) is left behind.

Locks are :class:`filelock.FileLock` objects, i.e. ``flock(2)`` on the lock file:

* the kernel releases the lock when the holding process dies (also on ``kill -9``), so
  there are no stale locks; the empty ``.lock`` files themselves stay on disk (removing a
  lock file while others wait on it would break mutual exclusion);
* on NFS, Linux implements ``flock`` with POSIX byte-range locks, which need a working
  lock manager (``lockd``/NLM for NFSv3, built into NFSv4); mounts with ``nolock`` or
  ``local_lock=all`` make locks node-local and unsafe across nodes;
* on Lustre ``flock`` needs the client mount option ``flock`` (cluster-wide); with
  ``localflock`` locks only hold between processes of the same node, and without either
  option ``flock`` fails with ENOSYS, in which case filelock falls back to an existence
  lock (``O_EXCL`` file), which *can* go stale after a ``kill -9``.

See docs/cube.md, "Locking".
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import OutputError

#: default time (s) to wait for a lock before giving up with an OutputError
DEFAULT_LOCK_TIMEOUT = 600.0


LOCK_DIR = ".locks"


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file guarding ``path``: ``<dir>/.locks/<name>.lock`` — in a hidden folder,
    so that the (empty, permanent) lock files stay out of the way of readers of the cube
    (e.g. ``X*/*.tif*`` globs)."""
    p = Path(path)
    return p.parent / LOCK_DIR / (p.name + ".lock")


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[Path]:
    """Hold the exclusive lock of ``path`` (on ``<path>.lock``) inside the ``with`` block.

    Raises :class:`OutputError` naming the lock file if it cannot be taken within
    ``timeout`` seconds (negative = wait forever).
    """
    lp = lock_path(path)
    makedirs(lp.parent)
    lock = FileLock(str(lp), timeout=timeout)
    try:
        lock.acquire()
    except Timeout as e:
        raise OutputError(f"{lp}: lock not obtained within {timeout:g} s "
                          f"(another process holds it)") from e
    except OSError as e:
        raise OutputError(f"{lp}: cannot create lock file: {e}") from e
    try:
        yield Path(path)
    finally:
        lock.release()


@contextlib.contextmanager
def file_locks(paths: Iterable[str | os.PathLike],
               timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[list[Path]]:
    """Hold the locks of several files at once.

    Locks are taken in sorted path order, so that two processes locking overlapping
    sets can never deadlock.
    """
    ordered = sorted({str(Path(p)) for p in paths})
    with contextlib.ExitStack() as stack:
        for p in ordered:
            stack.enter_context(file_lock(p, timeout))
        yield [Path(p) for p in ordered]


def makedirs(path: str | os.PathLike) -> Path:
    """Create a directory and its parents; safe when other processes do the same."""
    p = Path(path)
    try:
        os.makedirs(p, exist_ok=True)
    except FileExistsError as e:   # a *file* of that name exists
        raise OutputError(f"{p}: exists and is not a directory") from e
    except OSError as e:
        raise OutputError(f"{p}: cannot create directory: {e.strerror or e}") from e
    return p


def temp_path(path: str | os.PathLike, suffix: str | None = None) -> Path:
    """A hidden, unique temporary name in the directory of ``path``.

    The extension of ``path`` is kept (``.<stem>.tmp-<random>.<ext>``): some GDAL
    drivers derive sidecar names from it (ENVI ``.hdr``).
    """
    p = Path(path)
    ext = p.suffix if suffix is None else suffix
    return p.with_name(f".{p.stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{ext}")


def sidecars(path: str | os.PathLike) -> list[Path]:
    """Files GDAL may write beside ``path``: ENVI header and PAM ``.aux.xml``."""
    p = Path(path)
    return [p.with_suffix(".hdr"), p.with_name(p.name + ".aux.xml")]


def remove_quietly(paths: Iterable[str | os.PathLike]) -> None:
    for q in paths:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            os.unlink(q)


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Write ``path`` atomically: ``writer(tmp)`` writes a temporary file in the same
    directory, which (with its sidecars: ENVI ``.hdr``, ``.aux.xml``) is then renamed
    over ``path``.

    On any error the temporary files are removed and the existing ``path`` is left
    untouched; an :class:`OSError` (ENOSPC, EDQUOT, EIO, ...) or a GDAL write error
    becomes an :class:`OutputError` naming ``path``.
    """
    p = Path(path)
    tmp = temp_path(p)
    tmp_side = sidecars(tmp)
    try:
        writer(tmp)
        if not tmp.exists():
            raise OSError(errno.EIO, "the writer produced no file", str(tmp))
        # sidecars first, the main file last: once the main file is visible its
        # sidecars are already the new ones
        for ts, fs in zip(tmp_side, sidecars(p)):
            if ts.exists():
                os.replace(ts, fs)
            elif fs.exists() and fs.suffix == ".xml":
                remove_quietly([fs])        # stale PAM metadata of an older version
        os.replace(tmp, p)
    except OutputError:
        remove_quietly([tmp, *tmp_side])
        raise
    except BaseException as e:
        remove_quietly([tmp, *tmp_side])
        if isinstance(e, OSError):
            reason = e.strerror or str(e)
            raise OutputError(f"{p}: write failed ({reason}); the existing file, if any, "
                              f"is unchanged") from e
        if _is_gdal_error(e):
            raise OutputError(f"{p}: write failed ({e}); the existing file, if any, "
                              f"is unchanged") from e
        raise


def _is_gdal_error(e: BaseException) -> bool:
    try:
        from rasterio.errors import RasterioError
        from rasterio._err import CPLE_BaseError
    except Exception:   # pragma: no cover
        return False
    return isinstance(e, (RasterioError, CPLE_BaseError))


def append_line(path: str | os.PathLike, line: str, header: str | None = None,
                timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
    """Append one text line to ``path`` under its lock, as a single ``write(2)``.

    ``header`` is written first when the file is new or empty. Because each line is one
    unbuffered ``O_APPEND`` write, a killed process never leaves half a line.
    """
    p = Path(path)
    if not line.endswith("\n"):
        line += "\n"
    with file_lock(p, timeout):
        try:
            fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as e:
            raise OutputError(f"{p}: cannot open for appending: {e.strerror or e}") from e
        size0 = 0
        try:
            data = line
            size0 = os.fstat(fd).st_size
            if header is not None and size0 == 0:
                data = (header if header.endswith("\n") else header + "\n") + line
            buf = data.encode("utf-8")
            n = os.write(fd, buf)
            if n != len(buf):
                raise OSError(errno.ENOSPC, "short write")
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size0)     # never leave half a line
            raise OutputError(f"{p}: cannot append: {e.strerror or e}") from e
        finally:
            os.close(fd)
