"""The run-folder contract (privrad.runs): one writer, one reader, one rule of completeness,
and what the sweep, `study status`, the statistics and the book make of an incomplete folder."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from privrad import book, executors, manifest, profiles, stats, study
from privrad.errors import DataError
from privrad.runs import REQUIRED, RUN_FILES, RUN_FORMAT, RUN_STATES, read_run, run_state, write_run
from study_helpers import damage, fabricate_run

ROOT = Path(__file__).resolve().parents[1]
DAMAGES = [(name, how) for name in ("config.json", "metrics.json", "privacy.json") for how in ("truncated", "missing")]


def test_a_written_folder_is_complete_and_reads_back(tmp_path):
    rd = fabricate_run(tmp_path, epsilon=1.0)
    state = run_state(rd)
    assert state.complete and state.problem is None and not state.notebook
    res = read_run(rd)
    assert res.info["run_format"] == RUN_FORMAT and res.privacy["epsilon"] == 1.0 and res.privacy["epsilon_spent"] < 1.0
    row = res.row()
    assert row["weighted_f1_ci95_low"] < row["weighted_f1"] < row["weighted_f1_ci95_high"]
    assert set(RUN_FILES) <= {p.name for p in rd.iterdir()}


def test_the_writer_refuses_a_file_without_its_required_fields(tmp_path):
    rd = fabricate_run(tmp_path)
    res = read_run(rd)
    privacy = {k: v for k, v in res.privacy.items() if k != "epsilon_spent"}
    privacy["spent_epsilon"] = 0.9  # another spelling of the same field
    with pytest.raises(ValueError, match="privacy.json lacks epsilon_spent"):
        write_run(tmp_path / "other", info=res.info, metrics=res.metrics, privacy=privacy, curve=res.curve,
                  predictions=res.predictions())
    assert not (tmp_path / "other").exists()
    assert "epsilon_spent" in REQUIRED["privacy.json"] and "weighted_f1" in REQUIRED["metrics.json"]


@pytest.mark.parametrize("name, how", DAMAGES)
def test_a_truncated_or_missing_file_is_not_complete_and_is_named(tmp_path, name, how):
    rd = fabricate_run(tmp_path)
    damage(rd, name, how)
    state = run_state(rd)
    assert not state.complete
    assert state.problem.startswith(f"{rd}: {name} ") and ("is missing" if how == "missing" else "cannot be read") in state.problem
    with pytest.raises(DataError, match=f"^{rd}: {name} .*; it is not a complete run folder.$"):
        read_run(rd)
    # the statistics read complete folders only
    other = fabricate_run(tmp_path, epsilon=None)
    assert stats.run_folders(tmp_path) == [other]
    assert list(stats.load_runs(tmp_path)["run_dir"]) == [str(other)]


def test_a_folder_of_the_previous_format_is_refused_in_one_sentence(tmp_path):
    rd = fabricate_run(tmp_path)
    info = json.loads((rd / "config.json").read_text())
    del info["run_format"]
    info["privrad_version"] = "0.1.0"
    (rd / "config.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match=rf"^{rd}: config.json is in the run-folder format of privrad 0.1.0, not format {RUN_FORMAT}; "
                                        r"run it again with this privrad \(delete the folder first\); it is not a complete run folder.$"):
        read_run(rd)


def _manifest_with(tmp_path: Path, run_dirs: list[Path]) -> Path:
    """A study.json written by the sweep's own writer for fabricated run folders."""
    profile = profiles.load_profile("smoke", root=ROOT, results_dir=str(tmp_path / "results"))
    points = []
    for rd in run_dirs:
        res = read_run(rd)
        entry = next(d for d in profile.datasets if d.dataset == "mimic-cxr")
        p = profiles.Point(entry, res.config, run_id=rd.name, run_dir=rd, state="complete")
        points.append(p)
    pl = study.Plan(profile, points, ROOT / profiles.RUN_NOTEBOOK, "python3", ROOT)
    manifest.write_manifest(pl, {p.run_id: {**p.row(), "state": "complete", "cached": True, "seconds": 0.0, "error": None,
                                         "problem": None} for p in points})
    return profile.results_dir


@pytest.mark.parametrize("name, how", DAMAGES)
def test_status_and_the_book_name_the_folder_and_the_file(tmp_path, name, how):
    results = tmp_path / "results" / "smoke"
    good = fabricate_run(results, epsilon=None)
    bad = fabricate_run(results, epsilon=1.0)
    for rd in (good, bad):
        (rd / "run.ipynb").write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    _manifest_with(tmp_path, [good, bad])
    damage(bad, name, how)
    out = io.StringIO()
    assert manifest.study_status(results, "smoke", out=out) == 0
    text = out.getvalue()
    assert f"incomplete: {bad}: {name} " in text and text.splitlines()[-1] == "incomplete: 1, complete: 1"
    err = io.StringIO()
    assert book.completed_runs(results, manifest.read_manifest(results), out=err) == [good]
    assert err.getvalue().startswith(f"privrad: left out of the book: {bad}: {name} ")


def test_the_books_study_facts_come_from_the_run_folders(tmp_path):
    results = tmp_path / "results" / "smoke"
    runs = [fabricate_run(results, epsilon=e) for e in (1.0, None)]
    _manifest_with(tmp_path, runs)
    text = book.study_md(manifest.read_manifest(results), runs)
    assert text.startswith("Profile `smoke`: 2 complete runs.")
    row = next(line for line in text.splitlines() if line.startswith("| simulated-mimic-cxr |"))
    assert f"| {read_run(runs[0]).config.max_length} |" in row and "| 100 |" in row  # max_length, steps


def test_privrad_run_refuses_an_incomplete_folder_in_one_sentence(tmp_path):
    """`privrad run --out DIR` on an incomplete folder: refused, naming the file (the sweep instead
    sets such a folder aside and runs it again, tests/test_study_e2e.py)."""
    from privrad.errors import ConfigError
    from privrad.pipeline import _reuse

    rd = fabricate_run(tmp_path)
    damage(rd, "metrics.json", "truncated")
    with pytest.raises(ConfigError, match=rf"^{rd} already exists but is not a complete run folder \(metrics.json cannot be read .*\); delete it to run again.$"):
        _reuse(rd, rd.name)


class FabricatingExecutor(executors.Executor):
    """Executes a task by writing its run folder through the real writer (no training, no kernel):
    the sweep's own logic — plan, state, set-aside, manifest, summary — is what runs for real."""

    def __init__(self):
        self.ran: list[str] = []

    def run(self, tasks, on_start=None):
        for t in tasks:
            from privrad.config import RunConfig

            if on_start is not None:
                on_start(t)

            params = {k: v for k, v in t.parameters.items() if k != "run_dir"}
            fabricate_run(None, run_dir=Path(t.run_dir), config=RunConfig.from_dict(params))
            Path(t.run_dir, "run.ipynb").write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
            self.ran.append(t.run_id)
            yield executors.Outcome(t.run_id, "complete", 0.0)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    base = tmp_path_factory.mktemp("swept")
    sets = [f"mimic-cxr.data_dir={base}/mimic", f"simulated-ct-rate.data_dir={base}/ct", "simulated-ct-rate.simulate.n=60",
            "mimic-cxr.simulate.n=80", "audit=null"]  # fabricated folders hold no weights to audit
    profile = profiles.load_profile("smoke", root=ROOT, sets=sets, results_dir=str(base / "results"))
    first = FabricatingExecutor()
    assert study.run_study(profile, executor=first, progress=False, out=io.StringIO()) == 0
    return profile, first.ran


@pytest.mark.parametrize("name, how", DAMAGES)
def test_study_run_sets_an_incomplete_folder_aside_and_runs_it_again(swept, name, how):
    profile, ran = swept
    rd = profile.results_dir / sorted(ran)[0]
    damage(rd, name, how)
    again, out = FabricatingExecutor(), io.StringIO()
    assert study.run_study(profile, executor=again, progress=False, out=out) == 0
    assert again.ran == [rd.name] and f"{len(ran)} complete (1 run now, {len(ran) - 1} cached), 0 failed" in out.getvalue()
    assert run_state(rd).complete and (profile.results_dir / "incomplete" / rd.name / "config.json").exists() == (
        not (name == "config.json" and how == "missing"))


class OneFailsExecutor(FabricatingExecutor):
    """Fabricates every run but the first, which fails as a real one does (its notebook in failed/)."""

    def run(self, tasks, on_start=None):
        first, *rest = tasks
        Path(first.failed).parent.mkdir(parents=True, exist_ok=True)
        Path(first.failed).write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
        yield executors.Outcome(first.run_id, "failed", 0.0, "RuntimeError: boom")
        yield from super().run(rest, on_start)


def test_one_state_vocabulary_in_the_manifest_the_summary_the_status_and_the_log(tmp_path):
    """runs.RUN_STATES names a run's state everywhere; that a complete run was cached is a column, not a state."""
    sets = [f"mimic-cxr.data_dir={tmp_path}/mimic", f"simulated-ct-rate.data_dir={tmp_path}/ct", "simulated-ct-rate.simulate.n=60",
            "mimic-cxr.simulate.n=80"]
    profile = profiles.load_profile("smoke", root=ROOT, sets=sets, results_dir=str(tmp_path / "results"))
    assert study.run_study(profile, executor=OneFailsExecutor(), progress=False, out=io.StringIO()) == 1
    rd = profile.results_dir / sorted(p.name for p in profile.results_dir.iterdir() if (p / "config.json").is_file())[0]
    damage(rd, "metrics.json", "truncated")
    out = io.StringIO()
    assert study.run_study(profile, executor=OneFailsExecutor(), progress=False, out=out) == 1
    table = out.getvalue().splitlines()
    header = table[0].split()
    assert header[:3] == ["state", "cached", "run_id"]
    states = [line.split()[0] for line in table[1:] if line.split() and line.split()[0] in RUN_STATES]
    assert len(states) == len(manifest.read_manifest(profile.results_dir)["points"]) and set(states) == {"failed", "complete"}
    points = manifest.read_manifest(profile.results_dir)["points"]
    assert {p["state"] for p in points} <= set(RUN_STATES) and any(p["cached"] for p in points)
    status = io.StringIO()
    manifest.study_status(profile.results_dir, "smoke", out=status)
    counts = dict(part.split(": ") for part in status.getvalue().splitlines()[-1].split(", "))
    assert set(counts) <= set(RUN_STATES) and counts["failed"] == "1"
    log = [json.loads(line) for line in (profile.results_dir / "study.jsonl").read_text().splitlines()]
    run_events = {e["event"] for e in log if e["event"].startswith("run_")}
    assert run_events <= {f"run_{s}" for s in RUN_STATES} | {"run_start", "run_cached", "run_set_aside"}, run_events
    assert {"run_failed", "run_complete", "run_cached", "run_set_aside"} <= run_events
