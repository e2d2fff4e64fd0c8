"""Shared fixtures: the smoke study run once per session (local executor), and a real Slurm."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_privrad(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m privrad ARGS`` as a user runs it (offline), capturing its output."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run([sys.executable, "-m", "privrad", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """The smoke study, uninterrupted, run locally with ``--jobs 2``, its data simulated by the
    sweep itself: shared by the end-to-end tests of the local and the Slurm executor."""
    base = tmp_path_factory.mktemp("smoke")
    sets = ["--set", f"mimic-cxr.data_dir={base}/data/mimic-cxr", "--set", f"simulated-ct-rate.data_dir={base}/data/ct-rate"]
    results = base / "results"
    t0 = time.time()
    proc = run_privrad("study", "run", "--profile", "smoke", "--jobs", "2", "--results-dir", str(results), *sets)
    seconds = time.time() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"\nsmoke study: {seconds:.1f} s\n{proc.stdout}")
    return {"base": base, "sets": sets, "results": results, "stdout": proc.stdout, "seconds": seconds}


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running single-node Slurm (see ``tests/slurm_cluster.py``), shared by the session and
    stopped at its end; skipped with one reason where Slurm cannot be installed."""
    from slurm_cluster import SlurmCluster, install_problem

    problem = install_problem()
    if problem:
        pytest.skip(problem)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
