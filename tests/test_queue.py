"""Queue file: reading (spec 03 §6.2 plus tolerance), updates under a lock."""
from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from l2ps.errors import QueueError
from l2ps.queue import append_entries, read_queue, set_status


def _images(tmp_path: Path, n: int) -> list[Path]:
    out = []
    for i in range(n):
        p = tmp_path / "l1" / f"LC08_L1TP_193024_2021070{i}_20210710_02_T1.tar"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x")
        out.append(p)
    return out


def test_read_tolerates_comments_blank_crlf_tabs(tmp_path):
    a, b, c = _images(tmp_path, 3)
    q = tmp_path / "queue.txt"
    q.write_bytes(
        (f"# my queue\r\n\r\n{a} QUEUED   \r\n{b}\tDONE # processed last week\r\n"
         f"   {c}  FAIL\r\n").encode())
    queue = read_queue(q)
    assert [e.path for e in queue.entries] == [a, b, c]
    assert [e.status for e in queue.entries] == ["QUEUED", "DONE", "FAIL"]
    assert [e.line for e in queue.entries] == [3, 4, 5]
    assert queue.counts() == {"QUEUED": 1, "DONE": 1, "FAIL": 1}
    assert [e.path for e in queue.queued] == [a]


def test_problems_reported_together_with_lines(tmp_path):
    a, b = _images(tmp_path, 2)
    q = tmp_path / "queue.txt"
    q.write_text(f"{a} QUEUED\n{b} queued\n{a} DONE\n{b} QUEUED extra\n")
    with pytest.raises(QueueError) as err:
        read_queue(q)
    msg = str(err.value)
    assert "3 problem(s)" in msg
    assert f"{q}:2" in msg and "'queued'" in msg
    assert f"{q}:3" in msg and "listed twice (first on line 1)" in msg
    assert f"{q}:4" in msg and "3 fields" in msg


def test_missing_path_is_a_warning_not_an_error(tmp_path):
    (a,) = _images(tmp_path, 1)
    missing = tmp_path / "l1" / "S2A_MSIL1C_missing.zip"
    q = tmp_path / "queue.txt"
    q.write_text(f"{a} QUEUED\n{missing} QUEUED\n")
    queue = read_queue(q)
    assert len(queue.queued) == 2
    assert any("does not exist" in w and str(missing) in w for w in queue.warnings)


def test_relative_paths_resolve_against_queue_folder(tmp_path):
    (a,) = _images(tmp_path, 1)
    q = tmp_path / "queue.txt"
    q.write_text(f"l1/{a.name} QUEUED\n")
    assert read_queue(q).entries[0].path == a


def test_missing_queue_file_names_the_file(tmp_path):
    with pytest.raises(QueueError, match="queue.txt: queue file not found"):
        read_queue(tmp_path / "queue.txt")


def test_set_status_keeps_other_lines_and_comments(tmp_path):
    a, b = _images(tmp_path, 2)
    q = tmp_path / "queue.txt"
    q.write_text(f"# header\n{a} QUEUED # first\n\n{b} QUEUED\n")
    assert set_status(q, a, "DONE")
    assert set_status(q, b, "FAIL")
    assert q.read_text() == f"# header\n{a} DONE # first\n\n{b} FAIL\n"
    assert not set_status(q, tmp_path / "other.tar", "DONE")


def _worker(args):
    q, img, status = args
    set_status(q, img, status)


def test_parallel_updates_lose_nothing(tmp_path):
    imgs = _images(tmp_path, 9)
    q = tmp_path / "queue.txt"
    q.write_text("".join(f"{p} QUEUED\n" for p in imgs))
    jobs = [(q, p, "DONE" if i % 2 else "FAIL") for i, p in enumerate(imgs)]
    with mp.get_context("spawn").Pool(4) as pool:
        pool.map(_worker, jobs * 3)
    st = {e.path: e.status for e in read_queue(q).entries}
    assert st == {p: ("DONE" if i % 2 else "FAIL") for i, p in enumerate(imgs)}


def test_append_skips_listed(tmp_path):
    a, b, c = _images(tmp_path, 3)
    q = tmp_path / "queue.txt"
    q.write_text(f"{a} DONE\n")
    assert append_entries(q, [a, b, c, b]) == [b, c]
    assert [(e.path, e.status) for e in read_queue(q).entries] == [
        (a, "DONE"), (b, "QUEUED"), (c, "QUEUED")]


def test_image_ids_unique_for_same_basename(tmp_path):
    d1, d2 = tmp_path / "x", tmp_path / "y"
    d1.mkdir(); d2.mkdir()
    (d1 / "S2A.zip").write_bytes(b""); (d2 / "S2A.zip").write_bytes(b"")
    (d1 / "LC08.tar").write_bytes(b"")
    q = tmp_path / "queue.txt"
    q.write_text(f"{d1/'S2A.zip'} QUEUED\n{d2/'S2A.zip'} QUEUED\n{d1/'LC08.tar'} QUEUED\n")
    ids = read_queue(q).image_ids()
    assert len(ids) == 3 and "LC08.tar" in ids
    assert sum(k.startswith("S2A.zip-") for k in ids) == 2
