"""Shared fixtures: real test data location, a workspace with parameter file and queue."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def testdata_dir() -> Path | None:
    d = os.environ.get("L2PS_TESTDATA")
    return Path(d) if d and Path(d).is_dir() else None


@pytest.fixture
def testdata() -> Path:
    d = testdata_dir()
    if d is None:
        pytest.skip("L2PS_TESTDATA is not set (real Level-1 products in ../shared/testdata)")
    return d


class Workspace:
    """A folder with the directories a parameter file needs, a queue and a parameter file."""

    def __init__(self, root: Path):
        self.root = root
        self.dirs = {k: root / v for k, v in {"DIR_LEVEL2": "cube", "DIR_LOG": "log",
                                              "DIR_TEMP": "temp",
                                              "DIR_PROVENANCE": "provenance"}.items()}
        for d in self.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.queue = root / "queue.txt"
        self.prm = root / "level2.prm"
        self.cube = self.dirs["DIR_LEVEL2"]
        self.log = self.dirs["DIR_LOG"]

    def write_queue(self, entries: list[tuple[Path, str]]) -> None:
        self.queue.write_text("".join(f"{p} {s}\n" for p, s in entries))

    def write_parameters(self, **values) -> Path:
        from l2ps.demo import set_parameter_values
        from l2ps.params import write_skeleton
        write_skeleton(self.prm)
        vals = {k: str(v) for k, v in self.dirs.items()}
        vals["FILE_QUEUE"] = str(self.queue)
        vals.update({k: str(v) for k, v in values.items()})
        self.prm.write_text(set_parameter_values(self.prm.read_text(), vals))
        return self.prm

    def snakemake(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory",
               str(self.root), *args, "--config", f"parameter_file={self.prm}"]
        env = dict(os.environ)
        env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".venv" / "numba-cache"))
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if check and res.returncode != 0:
            raise AssertionError(f"snakemake failed ({res.returncode}):\n{res.stdout[-4000:]}\n"
                                 f"{res.stderr[-6000:]}")
        return res


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    if not (REPO / "Snakefile").exists():
        pytest.skip("no Snakefile")
    return Workspace(tmp_path)
