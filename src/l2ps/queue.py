"""The queue file (spec 03 §6.2): one Level-1 image per line, ``/path/to/image STATUS`` with
STATUS ∈ QUEUED, DONE, FAIL.

The queue is the source of truth for what a run processes (DESIGN.md, "The workflow"): every
QUEUED line is one ``level2`` job of the next run; DONE and FAIL lines never are. After a
job its line becomes DONE or FAIL; updates take a lock on ``<queue>.lock`` and replace the
file atomically, so parallel jobs never lose an update and a killed job never leaves a
broken queue.

Tolerated: blank lines, ``#`` comments (whole-line or trailing), tabs and runs of blanks,
trailing spaces, CRLF line ends. A line without a status counts as QUEUED (with a warning).
Relative paths are taken relative to the queue file's folder (FORCE refuses them).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from .errors import QueueError

STATUSES = ("QUEUED", "DONE", "FAIL")
LOCK_TIMEOUT = 600.0  # seconds; fcntl locks die with their process, so this only bounds waits


@dataclass(frozen=True)
class QueueEntry:
    path: Path          # absolute path of the Level-1 input (archive or folder)
    status: str         # QUEUED | DONE | FAIL
    line: int           # 1-based line number in the queue file
    raw_path: str       # the path exactly as written

    @property
    def exists(self) -> bool:
        return self.path.exists()


@dataclass
class Queue:
    file: Path
    entries: list[QueueEntry]
    warnings: list[str]

    @property
    def queued(self) -> list[QueueEntry]:
        return [e for e in self.entries if e.status == "QUEUED"]

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for e in self.entries:
            out[e.status] += 1
        return out

    def image_ids(self) -> dict[str, QueueEntry]:
        """Unique job name per entry: the basename, made unique with a short hash of the
        full path where two entries share a basename."""
        names: dict[str, list[QueueEntry]] = {}
        for e in self.entries:
            names.setdefault(e.path.name, []).append(e)
        out: dict[str, QueueEntry] = {}
        for name, group in names.items():
            if len(group) == 1:
                out[name] = group[0]
            else:
                for e in group:
                    h = hashlib.sha1(str(e.path).encode()).hexdigest()[:8]
                    out[f"{name}-{h}"] = e
        return out


def _split(line: str) -> list[str]:
    return line.split("#", 1)[0].replace("\t", " ").strip().split()


def read_queue(path: str | os.PathLike) -> Queue:
    """Read and check a queue file.

    Raises :class:`QueueError` for an unreadable file, an unknown status, a line with more
    than two fields or the same image listed twice (each with file and line number). Paths
    that do not exist are only warnings: their jobs fail with a clear reason, so that the
    rest of the queue still runs.
    """
    qfile = Path(path)
    try:
        text = qfile.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        raise QueueError(f"{qfile}: queue file not found (FILE_QUEUE of the parameter file)") from None
    except OSError as exc:
        raise QueueError(f"{qfile}: cannot read queue file: {exc.strerror}") from None
    base = qfile.resolve().parent
    entries: list[QueueEntry] = []
    warnings: list[str] = []
    problems: list[str] = []
    seen: dict[Path, int] = {}
    for no, raw in enumerate(text.splitlines(), start=1):
        fields = _split(raw.rstrip("\r"))
        if not fields:
            continue
        if len(fields) > 2:
            problems.append(f"{qfile}:{no}: expected '<path> <STATUS>', found {len(fields)} fields "
                            f"(paths must not contain spaces): {raw.strip()!r}")
            continue
        p = fields[0]
        status = fields[1] if len(fields) == 2 else "QUEUED"
        if len(fields) == 1:
            warnings.append(f"{qfile}:{no}: no status after {p!r}; taken as QUEUED")
        if status not in STATUSES:
            problems.append(f"{qfile}:{no}: status {status!r} of {p!r}: expected one of "
                            f"{', '.join(STATUSES)}")
            continue
        ap = Path(p) if os.path.isabs(p) else base / p
        ap = Path(os.path.normpath(ap))
        if ap in seen:
            problems.append(f"{qfile}:{no}: {p} is listed twice (first on line {seen[ap]})")
            continue
        seen[ap] = no
        if status == "QUEUED" and not ap.exists():
            warnings.append(f"{qfile}:{no}: {ap} does not exist; its job will FAIL")
        entries.append(QueueEntry(ap, status, no, p))
    if problems:
        raise QueueError("\n".join([f"queue file {qfile} has {len(problems)} problem(s):"] +
                                    [f"  - {p}" for p in problems]))
    return Queue(qfile, entries, warnings)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        except FileNotFoundError:
            pass
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def queue_lock(path: str | os.PathLike, timeout: float = LOCK_TIMEOUT) -> FileLock:
    qfile = Path(path)
    return FileLock(str(qfile.with_name(qfile.name + ".lock")), timeout=timeout)


def set_status(queue_file: str | os.PathLike, image: str | os.PathLike, status: str) -> bool:
    """Set the status of ``image`` in ``queue_file`` under the queue lock.

    Comments, blank lines and the other lines are kept as they are (normalised to
    ``path STATUS``). Returns False if the image is not listed (the queue was edited
    meanwhile); the caller decides whether that matters.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
    qfile = Path(queue_file)
    target = Path(os.path.normpath(Path(image).absolute()))
    base = qfile.resolve().parent
    found = False
    with queue_lock(qfile):
        lines = qfile.read_text(encoding="utf-8", errors="replace").splitlines()
        out = []
        for raw in lines:
            fields = _split(raw.rstrip("\r"))
            if fields and len(fields) <= 2:
                p = fields[0]
                ap = Path(os.path.normpath(Path(p) if os.path.isabs(p) else base / p))
                if ap == target:
                    found = True
                    comment = raw.split("#", 1)[1].rstrip("\r") if "#" in raw else None
                    raw = f"{p} {status}" + (f" #{comment}" if comment is not None else "")
            out.append(raw.rstrip("\r"))
        if found:
            _atomic_write(qfile, "\n".join(out) + "\n")
    return found


def append_entries(queue_file: str | os.PathLike, images: list[Path], status: str = "QUEUED") -> list[Path]:
    """Add images to a queue (created if missing), skipping those already listed; returns
    the images added, in the order given."""
    qfile = Path(queue_file)
    qfile.parent.mkdir(parents=True, exist_ok=True)
    with queue_lock(qfile):
        existing: set[Path] = set()
        text = ""
        if qfile.exists():
            q = read_queue(qfile)
            existing = {e.path for e in q.entries}
            text = qfile.read_text(encoding="utf-8", errors="replace")
            if text and not text.endswith("\n"):
                text += "\n"
        added = []
        for img in images:
            ap = Path(os.path.normpath(Path(img).absolute()))
            if ap in existing:
                continue
            existing.add(ap)
            added.append(ap)
            text += f"{ap} {status}\n"
        _atomic_write(qfile, text)
    return added
