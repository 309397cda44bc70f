# Helper functions (no rules): the parameter file, the queue → table of pending images.
import os
from pathlib import Path

import l2ps
from l2ps.errors import L2psError
from l2ps.params import read_parameters
from l2ps.queue import read_queue
from l2ps.job import (
    mem_mb_for,
    record_path,
    next_run_number,
    print_summary,
    sensor_family,
)


def _load_parameters():
    try:
        return read_parameters(config["parameter_file"])
    except L2psError as exc:
        raise WorkflowError(str(exc)) from None


PRM = _load_parameters()
if PRM.file_queue is None:
    raise WorkflowError(
        f"{config['parameter_file']}: FILE_QUEUE is NULL; the workflow needs a queue file "
        "(one 'image-path QUEUED' line per Level-1 image; `l2ps queue DIR... -o FILE`)"
    )
try:
    QUEUE = read_queue(PRM.file_queue)
except L2psError as exc:
    raise WorkflowError(str(exc)) from None
for _w in QUEUE.warnings:
    logger.warning(_w)

LOGDIR = str(PRM.dir_log)
# image id (basename, made unique) -> queue entry, for the QUEUED lines only
_IDS = QUEUE.image_ids()
PENDING = {i: e for i, e in _IDS.items() if e.status == "QUEUED"}
RUNS = {i: next_run_number(PRM.dir_log, i) for i in PENDING}
if not PENDING:
    # nothing to do is not an error (exit 0), but say why
    _c = QUEUE.counts()
    logger.warning(
        f"l2ps: nothing to do: no QUEUED image in {PRM.file_queue} "
        + (f"({_c['DONE']} DONE, {_c['FAIL']} FAIL). Set a line to QUEUED to (re)process "
           "that image." if QUEUE.entries else "(the queue is empty). Add images with "
           f"`l2ps queue DIR... -o {PRM.file_queue}`.")
    )


def pending_records():
    """The job record of this run for every QUEUED image (the targets of `rule all`)."""
    return [record_path(PRM.dir_log, i, RUNS[i]) for i in sorted(PENDING)]


def level1_input(wildcards):
    """The Level-1 input, wrapped in ancient(): its timestamp never triggers a rerun. A
    missing path is not declared (the job then fails with a clear reason instead of
    stopping the whole DAG)."""
    path = PENDING[wildcards.image].path
    return [ancient(str(path))] if path.exists() else []


def image_path(wildcards):
    return str(PENDING[wildcards.image].path)


def mem_mb(wildcards, attempt):
    base = mem_mb_for(PENDING[wildcards.image].path, config.get("mem_mb", {}))
    return int(base * (1 + 0.5 * (attempt - 1)))


def print_run_summary():
    print_summary(PRM.file_queue, PRM.dir_log)
