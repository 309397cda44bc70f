"""The workflow as users run it: DAG from the queue, profiles, lint."""
from __future__ import annotations

import re

import pytest

LANDSAT = "LC08_L1TP_193024_202107{:02d}_20210710_02_T1.tar"
S2 = "S2A_MSIL1C_20210705T102021_N0301_R065_T32UPC_20210705T1234{:02d}.zip"


def _dummy_queue(ws, statuses):
    entries = []
    (ws.root / "l1").mkdir(exist_ok=True)
    for i, st in enumerate(statuses):
        name = (LANDSAT if i % 2 == 0 else S2).format(i + 1)
        p = ws.root / "l1" / name
        p.write_bytes(b"not really a product")
        entries.append((p, st))
    ws.write_queue(entries)
    return entries


def _jobs(stdout: str) -> dict[str, int]:
    table = {}
    for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", stdout, re.M):
        table[m.group(1)] = int(m.group(2))
    return table


@pytest.mark.parametrize("n_queued,n_done", [(3, 2), (1, 4), (0, 3)])
def test_dry_run_lists_exactly_the_queued_images(workspace, n_queued, n_done):
    statuses = ["DONE"] * n_done + ["QUEUED"] * n_queued + ["FAIL"]
    entries = _dummy_queue(workspace, statuses)
    workspace.write_parameters()
    res = workspace.snakemake("-n")
    assert _jobs(res.stdout).get("level2", 0) == n_queued
    listed = set(re.findall(r"wildcards: image=([^,\s]+)", res.stdout))
    assert listed == {p.name for p, st in entries if st == "QUEUED"}


def test_reprocessing_a_done_image_is_a_new_job(workspace):
    entries = _dummy_queue(workspace, ["QUEUED", "DONE"])
    workspace.write_parameters()
    # pretend image 0 was processed before (its run-0001 record exists) and re-queued
    rec = workspace.log / "records" / entries[0][0].name / "run-0001.json"
    rec.parent.mkdir(parents=True)
    rec.write_text("{}")
    res = workspace.snakemake("-n")
    assert _jobs(res.stdout).get("level2") == 1
    assert "run-0002.json" in res.stdout


def test_missing_path_does_not_stop_the_dag(workspace):
    entries = _dummy_queue(workspace, ["QUEUED", "QUEUED"])
    entries[1][0].unlink()
    workspace.write_parameters()
    res = workspace.snakemake("-n", "--quiet", "rules")
    assert _jobs(res.stdout).get("level2") == 2
    assert "does not exist" in res.stdout + res.stderr


def test_invalid_parameter_file_stops_with_all_problems(workspace):
    _dummy_queue(workspace, ["QUEUED"])
    workspace.write_parameters(RESAMPLING="cubic", TIER=7)
    res = workspace.snakemake("-n", check=False)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "RESAMPLING" in out and "TIER" in out


@pytest.mark.parametrize("profile", ["local", "slurm"])
def test_profiles_dry_run(workspace, profile):
    from conftest import REPO
    _dummy_queue(workspace, ["QUEUED", "QUEUED", "DONE"])
    workspace.write_parameters(NTHREAD=3)
    extra = ("--cores", "4") if profile == "local" else ()
    res = workspace.snakemake("--profile", str(REPO / "profiles" / profile), "-n", *extra)
    assert _jobs(res.stdout).get("level2") == 2
    if profile == "slurm":
        import yaml
        mem = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["mem_mb"]
        assert "slurm_partition=" in res.stdout and f"mem_mb={mem['sentinel2']}" in res.stdout
    else:
        assert "threads: 3" in res.stdout


def test_lint_is_clean(workspace):
    _dummy_queue(workspace, ["QUEUED"])
    workspace.write_parameters()
    res = workspace.snakemake("--lint")
    assert "good condition" in res.stdout + res.stderr
