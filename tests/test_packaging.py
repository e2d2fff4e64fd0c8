"""The project's own files install what it needs: environment.yml mirrors pyproject.toml,
CI calls the README's test command, and generated folders stay out of git."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in ("book", "dev", "slurm"):
        wanted += project["optional-dependencies"][extra]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    have = {_norm(r) for r in pip_section}
    # torch is pinned to the exact version the Makefile installs; everything else is identical.
    missing = [r for r in wanted if _norm(r) not in have and not r.startswith("torch")]
    assert not missing, f"environment.yml lacks {missing}"
    makefile = (ROOT / "Makefile").read_text()
    torch_pin = re.search(r"TORCH_VERSION \?= (\S+)", makefile).group(1)
    assert f"torch=={torch_pin}" in pip_section


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_generated_folders_are_ignored():
    out = subprocess.run(
        ["git", "check-ignore", ".venv/x", "results/x", "_build/x", "data/simulated/x", "data/cache/x"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert len(out.stdout.split()) == 5, out.stdout
