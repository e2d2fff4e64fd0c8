"""The commands the README, the book and the data README document work in the order they are
documented: every `privrad …` command they show is one the CLI accepts, with a profile and `--set`
keys that exist, and no documented simulate command fills a profile's folder. The slow half runs
the documented sequence itself (the data chapter's simulate command, then `make study`'s and `make
book`'s commands on a fresh project: the ``smoke`` fixture in conftest.py and
tests/test_study_e2e.py)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from privrad import cli, profiles
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


COMMAND = re.compile(r"(?:\.venv/bin/)?privrad ((?:study|book|data|run)\b[^`\n#]*)")
PLACEHOLDER = re.compile(r"…|\.\.\.|<|\bNAME\b")


def documented_privrad_commands() -> list[tuple[str, list[str]]]:
    """Every complete `privrad …` command the README, the data README and the book show, in code
    blocks or inline (continuation lines joined, comments dropped), as (doc, argv); commands with
    a placeholder (…, <folder>, NAME) are left out."""
    out = []
    for doc in [ROOT / "README.md", ROOT / "data" / "README.md", *sorted((ROOT / "book").glob("*.md"))]:
        parts = re.sub(r"\\\n\s*", " ", doc.read_text()).split("```")  # odd parts are code blocks
        text = "```".join(p if i % 2 else re.sub(r"`[^`]+`", lambda m: " ".join(m.group(0).split()), p) for i, p in enumerate(parts))
        for m in COMMAND.finditer(text):
            if not PLACEHOLDER.search(m.group(1)):
                out.append((str(doc.relative_to(ROOT)), shlex.split(m.group(1))))
    return out


def test_every_documented_privrad_command_is_accepted(capsys):
    """Parsed by privrad's own parser; a study's profile loads with its --set overrides and expands
    into valid points (the paper recipe's data_dir overrides included)."""
    commands = documented_privrad_commands()
    docs = {doc for doc, _ in commands}
    assert {"README.md", "book/reproduce.md", "book/data.md", "data/README.md"} <= docs
    assert any(argv[:2] == ["study", "run"] and any(a.startswith("mimic-cxr.data_dir=") for a in argv) for _, argv in commands)
    parser = cli.build_parser()
    for doc, argv in commands:
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{doc}: `privrad {shlex.join(argv)}` is refused by the CLI: {capsys.readouterr().err.strip()}")
        name = getattr(args, "profile", None)
        if argv[0] == "study" and name and (name in profiles.known_profiles(ROOT) or (ROOT / name).is_file()):
            try:
                profiles.expand(profiles.load_profile(name, root=ROOT, sets=getattr(args, "set", None) or ()))
            except ConfigError as exc:
                pytest.fail(f"{doc}: `privrad {shlex.join(argv)}`: {exc}")


def test_the_readmes_account_of_the_default_study_matches_the_profile():
    """The README says what `make book` runs; the default profile decides it."""
    m = re.search(r"--profile default --jobs 2` \(both simulated datasets, (?:(\w+) offline models|the offline stand-in\s+for "
                  r"([\w-]+)),\s+(\w+) privacy levels: (\d+) runs, then (\w+) audits\)", (ROOT / "README.md").read_text())
    assert m, "README.md no longer says what the default study runs"
    words = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
    profile = profiles.load_profile("default", root=ROOT)
    points = profiles.expand(profile)
    models = {p.config.model for p in points}
    audit = profile.audit_settings()
    assert len(profile.datasets) == 2 and all(d.simulate for d in profile.datasets)
    assert (words[m.group(1)] if m.group(1) else 1, words[m.group(3)], int(m.group(4)), words[m.group(5)]) == (
        len(models), len({p.config.epsilon for p in points}), len(points), sum(audit.selects(p.config) for p in points))
    if m.group(2):  # "the offline stand-in for BERT-medium": the one model stands in for that one
        from privrad.models import get_model_spec

        assert get_model_spec(models.pop()).stands_in_for.lower() == m.group(2).lower()
