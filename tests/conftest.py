"""Shared fixtures: the smoke study run once per session (local executor), and a real Slurm."""

from __future__ import annotations

import os
import re
import shlex
import shutil
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


def fresh_project(dest: Path) -> Path:
    """What a fresh clone gives a user besides the package: the book's sources, the notebooks and
    the profiles (no data, no results, no built book)."""
    dest.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    for name in ("book", "notebooks", "studies"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("generated", ".generated.tmp"))
    return dest



def write_profile(tmp_path: Path, name: str = "p.yml", **changes) -> Path:
    """The smoke profile with top-level keys replaced (``slurm={…}``, ``grid={…}``), written as a
    profile file; read with privrad's own YAML reader."""
    import yaml

    from privrad.profiles import read_yaml_file

    raw = read_yaml_file(ROOT / "studies" / "smoke.yml", what="study profile")
    raw.update(changes)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path


def run_dirs(results: Path, profile: str = "smoke", *, placed: bool = False) -> dict[str, Path]:
    """A study's complete run folders by run id (:func:`privrad.runs.run_state` decides); ``placed``:
    only those whose executed notebook the study has placed too (complete points)."""
    from privrad.runs import run_state

    return {d.name: d for d in (results / profile).iterdir()
            if d.is_dir() and not d.name.startswith(".") and run_state(d).complete and (not placed or (d / "run.ipynb").is_file())}


def events(results: Path, profile: str = "smoke") -> list[dict]:
    """The study's log (``study.jsonl``), one dict per event."""
    import json

    return [json.loads(line) for line in (results / profile / "study.jsonl").read_text().splitlines()]


def metrics(run_dir: Path) -> dict:
    """A run's metrics.json, through the one reader."""
    from privrad.runs import read_run

    return read_run(run_dir).metrics

def documented(target: str, profile: str = "smoke", jobs: int = 2) -> list[str]:
    """The privrad command of a Makefile target (`make study`, `make book`), as argv for PROFILE/JOBS."""
    recipe = re.search(rf"^{target}:.*\n\t(\$\(VENV\)/bin/privrad .*)$", (ROOT / "Makefile").read_text(), flags=re.M).group(1)
    return shlex.split(recipe.replace("$(VENV)/bin/privrad ", "").replace("$(PROFILE)", profile).replace("$(JOBS)", str(jobs)))


def documented_simulate() -> list[str]:
    """The `privrad data simulate …` command the data chapter shows (book/data.md)."""
    return shlex.split(re.search(r"`privrad (data simulate [^`]+)`", (ROOT / "book" / "data.md").read_text()).group(1))


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """Shared by the end-to-end tests of the local and the Slurm executor: the documented sequence
    on a fresh project, with the smoke profile for `make book`'s
    default: the data chapter's `privrad data simulate …` command first (it must not fill a folder
    a profile simulates into), then `make study PROFILE=smoke JOBS=2`'s command (the sweep
    simulates the profile's own data); the book test runs `make book`'s last command."""
    base = tmp_path_factory.mktemp("smoke")
    project = fresh_project(base / "project")
    sim = run_privrad(*documented_simulate(), cwd=project)
    assert sim.returncode == 0, sim.stderr
    t0 = time.time()
    proc = run_privrad(*documented("study"), cwd=project)
    seconds = time.time() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"\nsmoke study: {seconds:.1f} s\n{proc.stdout}")
    data = project / "data" / "simulated" / "smoke"
    sets = ["--set", f"mimic-cxr.data_dir={data}/mimic-cxr", "--set", f"simulated-ct-rate.data_dir={data}/ct-rate"]
    return {"base": base, "project": project, "data": data, "sets": sets, "results": project / "results",
            "stdout": proc.stdout, "stderr": proc.stderr, "seconds": seconds}


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
