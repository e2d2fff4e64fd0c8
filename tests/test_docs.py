"""The commands the README, the book and the data README document work in the order they are
documented (the slow end-to-end half is tests/test_study_e2e.py::test_the_documented_sequence)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from privrad import profiles
from privrad.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "data" / "README.md", ROOT / "bench" / "README.md", ROOT / "src" / "privrad" / "data" / "cli.py",
        *sorted((ROOT / "book").glob("*.md"))]


def documented_simulate_commands() -> list[dict]:
    """Every `privrad data simulate KIND --out PATH [--n N] [--seed S]` written in the docs."""
    out = []
    for doc in DOCS:
        for m in re.finditer(r"privrad data simulate (\S+)\s+(--out[^`\n#]*)", doc.read_text()):
            argv = shlex.split(m.group(2))
            opts = dict(zip(argv[::2], argv[1::2]))
            out.append({"doc": str(doc.relative_to(ROOT)), "kind": m.group(1), "out": opts["--out"], "n": int(opts.get("--n", 0)) or None,
                        "seed": int(opts.get("--seed", 0))})
    return out


def test_the_docs_document_simulate_commands():
    assert {c["doc"] for c in documented_simulate_commands()} >= {"book/data.md", "data/README.md", "src/privrad/data/cli.py"}


def test_no_documented_simulate_command_writes_into_a_profiles_simulated_folder():
    """`privrad data simulate … --out data/simulated/mimic-cxr --n 4000` once filled the folder the
    default profile simulates 600 reports into, and the next `make book` was refused."""
    folders = {}
    for name in profiles.known_profiles(ROOT):
        for d in profiles.load_profile(name, root=ROOT).datasets:
            if d.simulate:
                folders[Path(d.data_dir)] = (name, d.simulate)
    for c in documented_simulate_commands():
        hit = folders.get(Path(c["out"]))
        if hit:
            name, sim = hit
            assert (c["n"], c["seed"]) == (sim.get("n"), sim.get("seed", 0)), \
                f"{c['doc']}: `privrad data simulate {c['kind']} --out {c['out']}` collides with profile {name}'s simulated data"


def test_a_sweep_meeting_another_simulation_in_its_folder_says_how_to_keep_both(tmp_path):
    from privrad.data.simulate import simulate
    from privrad.study import prepare_data

    simulate("ct-rate", tmp_path / "ct", n=30, seed=0)  # what a documented command might have written
    profile = profiles.load_profile("smoke", root=ROOT, sets=["dataset=simulated-ct-rate", f"simulated-ct-rate.data_dir={tmp_path}/ct"])
    with pytest.raises(ConfigError, match=r"^dataset simulated-ct-rate: output folder .* holds simulated ct-rate with n=30, .* not ct-rate with n=200.*"
                                          r"To keep both, pass --set simulated-ct-rate.data_dir=<another folder>.$"):
        prepare_data(profile)
