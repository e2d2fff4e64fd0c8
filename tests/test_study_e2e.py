"""End to end: the smoke study executed with papermill and real training, then the book.

One uninterrupted sweep (module fixture) is shared: re-running it, adding an ε, a forced
failure, a SIGKILL-and-resume sweep compared with it, a refusal to mix configs or versions, and
a book build scanned for the text of the credentialed dataset.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from privrad.runs import read_run

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def privrad(*args: str, cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "privrad", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def run_dirs(results: Path) -> dict[str, Path]:
    """Finished run folders (written atomically: config.json appears with the folder)."""
    return {d.name: d for d in (results / "smoke").iterdir()
            if d.is_dir() and not d.name.startswith(".") and (d / "config.json").is_file()}


def events(results: Path) -> list[dict]:
    return [json.loads(line) for line in (results / "smoke" / "study.jsonl").read_text().splitlines()]


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke study, uninterrupted, with its data simulated by the sweep itself."""
    base = tmp_path_factory.mktemp("smoke")
    sets = ["--set", f"mimic-cxr.data_dir={base}/data/mimic-cxr", "--set", f"simulated-ct-rate.data_dir={base}/data/ct-rate"]
    results = base / "results"
    t0 = time.time()
    proc = privrad("study", "run", "--profile", "smoke", "--jobs", "2", "--results-dir", str(results), *sets)
    seconds = time.time() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"\nsmoke study: {seconds:.1f} s\n{proc.stdout}")
    return {"base": base, "sets": sets, "results": results, "stdout": proc.stdout, "stderr": proc.stderr, "seconds": seconds}


def test_smoke_study_writes_complete_run_folders(smoke):
    dirs = run_dirs(smoke["results"])
    assert len(dirs) == 8
    assert "8 complete (8 run now, 0 cached), 0 failed" in smoke["stdout"]
    for d in dirs.values():
        assert {"config.json", "metrics.json", "privacy.json", "predictions.npz", "run.ipynb"} <= {p.name for p in d.iterdir()}
        nb = json.loads((d / "run.ipynb").read_text())
        assert any("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"])
        assert not any(o.get("output_type") == "error" for c in nb["cells"] for o in c.get("outputs", []))
    log = events(smoke["results"])
    assert [e["event"] for e in log].count("run_complete") == 8 and log[-1]["event"] == "sweep_end"
    status = privrad("study", "status", "--profile", "smoke", "--results-dir", str(smoke["results"]))
    assert status.returncode == 0 and "complete: 8" in status.stdout


def test_rerunning_a_finished_study_runs_nothing(smoke):
    before = {k: (d / "run.ipynb").stat().st_mtime_ns for k, d in run_dirs(smoke["results"]).items()}
    n_events = len(events(smoke["results"]))
    proc = privrad("study", "run", "--profile", "smoke", "--results-dir", str(smoke["results"]), *smoke["sets"])
    assert proc.returncode == 0 and "8 complete (0 run now, 8 cached), 0 failed" in proc.stdout
    assert {k: (d / "run.ipynb").stat().st_mtime_ns for k, d in run_dirs(smoke["results"]).items()} == before
    assert not [e for e in events(smoke["results"])[n_events:] if e["event"] == "run_start"]


def test_adding_an_epsilon_runs_only_the_new_point(smoke):
    before = set(run_dirs(smoke["results"]))
    proc = privrad("study", "run", "--profile", "smoke", "--results-dir", str(smoke["results"]), *smoke["sets"],
                   "--set", "dataset=mimic-cxr", "--set", "epsilon=[1,10,null]")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 complete (1 run now, 4 cached), 0 failed" in proc.stdout
    new = set(run_dirs(smoke["results"])) - before
    assert len(new) == 1
    cfg = read_run(smoke["results"] / "smoke" / new.pop()).config.to_dict()
    assert (cfg["dataset"], cfg["model"], cfg["method"], cfg["epsilon"]) == ("mimic-cxr", "tiny-bert", "lora", 10)


def test_a_failed_run_keeps_its_notebook_and_the_sweep_goes_on(smoke, tmp_path):
    # ε = 1e-6 passes validation (a positive number) but no noise level reaches it on ~150
    # training reports: the training core refuses it at calibration time, inside the notebook.
    results = tmp_path / "results"
    shutil.copytree(smoke["results"], results)
    proc = privrad("study", "run", "--profile", "smoke", "--results-dir", str(results), *smoke["sets"],
                   "--set", "dataset=mimic-cxr", "--set", "epsilon=[1,1e-6,null]")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "4 complete (0 run now, 4 cached), 1 failed" in proc.stdout
    failed_rows = [line for line in proc.stdout.splitlines() if line.strip().startswith("failed")]
    assert len(failed_rows) == 1 and "1e-06" in failed_rows[0] and "PrivacyError" in failed_rows[0]
    kept = list((results / "smoke" / "failed").glob("*.ipynb"))
    assert len(kept) == 1
    nb = json.loads(kept[0].read_text())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors and errors[0]["ename"] == "PrivacyError" and "not reachable" in errors[0]["evalue"]
    assert kept[0].stem.rsplit("__", 1)[-1] in failed_rows[0]
    assert not (results / "smoke" / kept[0].stem).exists()
    log = [e for e in events(results) if e["event"] == "run_failed"]
    assert len(log) == 1 and log[0]["epsilon"] == "1e-06" and "PrivacyError" in log[0]["error"]


def test_sigkill_mid_sweep_then_resume_gives_identical_metrics(smoke, tmp_path):
    results = tmp_path / "results"
    one = ["--set", "dataset=mimic-cxr"]  # 4 of the 8 points: enough to be killed mid-sweep
    args = [sys.executable, "-m", "privrad", "study", "run", "--profile", "smoke", "--jobs", "2", "--results-dir", str(results),
            *smoke["sets"], *one, "--quiet"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while time.time() - t0 < 300 and proc.poll() is None:
        if (results / "smoke").is_dir() and run_dirs(results):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_with = set(run_dirs(results))
    finished = {k for k, d in run_dirs(results).items() if (d / "run.ipynb").is_file()}  # notebook placed too
    assert 1 <= len(killed_with) and len(finished) < 4
    resumed = privrad("study", "run", "--profile", "smoke", "--jobs", "2", "--results-dir", str(results), *smoke["sets"], *one)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"4 complete ({4 - len(finished)} run now, {len(finished)} cached), 0 failed" in resumed.stdout
    a, b = run_dirs(smoke["results"]), run_dirs(results)
    assert set(b) <= set(a) and len(b) == 4
    for rid, d in b.items():
        assert metrics(d) == metrics(a[rid]), f"run {rid} differs after kill + resume"
    assert not list((results / "smoke").glob(".*.tmp"))


def test_a_folder_from_another_config_or_version_is_refused(smoke, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(smoke["results"], results)
    victim = sorted(run_dirs(results).values())[0]
    stored = json.loads((victim / "config.json").read_text())
    n_events = len(events(results))
    tampered = json.loads(json.dumps(stored))
    tampered["config"]["lr"] = 0.123
    (victim / "config.json").write_text(json.dumps(tampered))
    proc = privrad("study", "run", "--profile", "smoke", "--results-dir", str(results), *smoke["sets"])
    assert proc.returncode == 2
    assert f"run folder {results}/smoke/{victim.name} was written by a different config (differs in lr)" in proc.stderr
    tampered = json.loads(json.dumps(stored))
    tampered["privrad_version"] = "0.0.1"
    (victim / "config.json").write_text(json.dumps(tampered))
    proc = privrad("study", "run", "--profile", "smoke", "--results-dir", str(results), *smoke["sets"])
    assert proc.returncode == 2 and "was written by privrad 0.0.1" in proc.stderr and "refusing to mix versions" in proc.stderr
    assert not [e for e in events(results)[n_events:] if e["event"] == "run_start"]


def _damage(results: Path) -> dict[str, str]:
    """Three run folders made incomplete as copies off a cluster or full disks leave them:
    config.json truncated, metrics.json truncated, privacy.json missing. Returns folder → file."""
    last_sweep = json.loads((results / "smoke" / "study.json").read_text())["points"]
    victims = [results / "smoke" / rid for rid in sorted(p["run_id"] for p in last_sweep)[:3]]
    for d, name in zip(victims, ("config.json", "metrics.json")):
        text = (d / name).read_text()
        (d / name).write_text(text[: len(text) // 2])
    (victims[2] / "privacy.json").unlink()
    return dict(zip((v.name for v in victims), ("config.json", "metrics.json", "privacy.json")))


def test_incomplete_run_folders_are_named_by_status_and_run_again(smoke, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(smoke["results"], results)
    rerun = privrad("study", "run", "--profile", "smoke", "--results-dir", str(results), *smoke["sets"])
    assert "8 complete (0 run now, 8 cached)" in rerun.stdout  # the copy's manifest: the plain smoke grid
    before = {k: metrics(d) for k, d in run_dirs(results).items()}
    damaged = _damage(results)
    status = privrad("study", "status", "--profile", "smoke", "--results-dir", str(results))
    assert status.returncode == 0 and "complete: 5" in status.stdout and "incomplete: 3" in status.stdout
    for folder, name in damaged.items():
        assert re.search(rf"incomplete: {re.escape(str(results / 'smoke' / folder))}: {name} (is missing|cannot be read)", status.stdout), status.stdout
    proc = privrad("study", "run", "--profile", "smoke", "--jobs", "2", "--results-dir", str(results), *smoke["sets"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "8 complete (3 run now, 5 cached), 0 failed" in proc.stdout
    for folder, name in damaged.items():
        assert f"{results / 'smoke' / folder}: {name}" in proc.stderr and "set aside in" in proc.stderr
        assert (results / "smoke" / "incomplete" / folder).is_dir()
    assert {k: metrics(d) for k, d in run_dirs(results).items()} == before  # the same runs, complete again


def _sentences(texts) -> set[str]:
    out = set()
    for t in texts:
        for s in re.split(r"(?<=[.!?])\s+|\n+", t):
            s = " ".join(s.split())
            if len(s) >= 30:
                out.add(s)
    return out


def _project(where: Path) -> Path:
    """A folder laid out like a checkout: the book's sources, notebooks and profiles."""
    project = where / "project"
    project.mkdir()
    for name in ("_config.yml", "_toc.yml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    for name in ("book", "notebooks", "studies"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("generated", ".generated.tmp"))
    return project


@pytest.fixture(scope="module")
def smoke_book(smoke, tmp_path_factory):
    """The book of the smoke study, built in a checkout-like folder that also holds what a checkout
    gathers besides the book — `make test`'s .pytest_cache, a venv, results and data READMEs — none
    of which may become a page."""
    project = _project(tmp_path_factory.mktemp("book"))
    for junk in (".pytest_cache/README.md", ".venv/lib/site-packages/pkg/README.md", "results/README.md", "data/notes.md"):
        (project / junk).parent.mkdir(parents=True, exist_ok=True)
        (project / junk).write_text("# not a page of the book\n")
    # the book shows the last sweep's grid: re-run the plain smoke study (all cached) so that the
    # extra ε point added by an earlier test is left out of the book
    rerun = privrad("study", "run", "--profile", "smoke", "--results-dir", str(smoke["results"]), *smoke["sets"])
    assert rerun.returncode == 0 and "8 complete (0 run now, 8 cached), 0 failed" in rerun.stdout
    # a results folder copied elsewhere, with three run folders damaged: left out, never a traceback
    results = tmp_path_factory.mktemp("copied") / "results"
    shutil.copytree(smoke["results"], results)
    damaged = _damage(results)
    stale = project / "_build" / "html" / "book" / "generated" / "runs" / "stale-page.html"
    stale.parent.mkdir(parents=True)
    stale.write_text("<p>from an earlier build</p>")
    t0 = time.time()
    proc = privrad("book", "build", "--profile", "smoke", "--results-dir", str(results), cwd=project)
    print(f"\nbook build: {time.time() - t0:.1f} s")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for folder, name in damaged.items():
        assert f"left out of the book: {results / 'smoke' / folder}: {name}" in proc.stderr
    return {"project": project, "html": project / "_build" / "html", "stale": stale, "proc": proc, "results": results}


def test_book_from_the_smoke_study_shows_no_credentialed_text(smoke, smoke_book):
    from privrad.data import load_dataset

    project, stale = smoke_book["project"], smoke_book["stale"]
    index = project / "_build" / "html" / "index.html"
    assert index.is_file()
    runs = list((project / "_build" / "html" / "book" / "generated" / "runs").glob("*.html"))
    assert len(runs) == 8 - 3  # the last sweep's complete runs only: no leftover of another grid, no damaged folder
    assert not stale.exists()
    # every text file of the built site: pages, their notebook sources, the search index
    pages = [p for p in (project / "_build" / "html").rglob("*")
             if p.is_file() and p.suffix in (".html", ".ipynb", ".js", ".txt", ".md", ".json")]
    text = {p: " ".join(html.unescape(re.sub(r"<[^>]+>", " ", p.read_text(encoding="utf-8", errors="replace"))).replace("\\n", " ").split())
            for p in pages}
    analysis = text[project / "_build" / "html" / "book" / "generated" / "analysis.html"]
    assert "paper: ∞" in analysis and "Friedman across ε" in analysis
    # the data chapter describes the data the sweep used (its --set data_dir), from study.json
    data_page = text[project / "_build" / "html" / "book" / "generated" / "data.html"]
    # (named relative to the project folder: the book names no absolute path of the machine that built it)
    shown_as = os.path.relpath(smoke["base"] / "data" / "ct-rate", project)
    assert shown_as in data_page and str(smoke["base"]) not in data_page
    assert not re.search(r"skipped, nothing at [^{\s]", data_page)  # the notebook's code says it, no output does

    mimic = load_dataset("mimic-cxr", str(smoke["base"] / "data" / "mimic-cxr"))
    ct = load_dataset("simulated-ct-rate", str(smoke["base"] / "data" / "ct-rate"))
    assert mimic.credentialed and not ct.credentialed
    public = _sentences(ct.texts)
    secret = _sentences(mimic.split("train").texts) - public
    assert len(secret) > 50
    leaks = [(p.name, s) for p, t in text.items() for s in secret if s in t]
    assert not leaks, f"credentialed training text in the book: {leaks[:3]}"
    # the scan can find report text: the public dataset's examples are in its run pages
    shown = [s for s in _sentences(ct.split("train").texts[:2]) if any(s in t for t in text.values())]
    assert shown


def test_the_readme_papermill_command_runs_one_notebook_by_hand(smoke, tmp_path):
    """The README's `papermill notebooks/run.ipynb …` command, verbatim, in a folder laid out
    like a checkout after `make book` (its data folder holds simulated MIMIC-CXR)."""
    import shlex

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(\S*papermill notebooks/run\.ipynb .*?)\n```", readme, flags=re.S).group(1)
    argv = shlex.split(block.replace("\\\n", " "))
    assert argv[0].endswith("papermill")
    (tmp_path / "data" / "simulated").mkdir(parents=True)
    (tmp_path / "data" / "simulated" / "mimic-cxr").symlink_to(smoke["base"] / "data" / "mimic-cxr")
    (tmp_path / "notebooks").symlink_to(ROOT / "notebooks")
    proc = subprocess.run([sys.executable, "-m", "papermill", *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / argv[2]).read_text())
    assert not any(o.get("output_type") == "error" for c in out["cells"] for o in c.get("outputs", []))
    run_dir = tmp_path / argv[argv.index("run_dir") + 1]
    cfg = json.loads((run_dir / "config.json").read_text())["config"]
    assert cfg["epsilon"] == 0.5 and cfg["dataset"] == "simulated-mimic-cxr"


def test_book_build_prints_no_kernel_or_warning_noise(smoke, smoke_book):
    for err in (smoke["stderr"], smoke_book["proc"].stderr):
        assert "Kernel is running over TCP" not in err
        assert "warnings.warn(" not in err and not re.search(r"\.py:\d+: \w*Warning", err), err[-2000:]


def test_a_failed_book_build_shows_the_warning_that_failed_it(smoke_book, tmp_path, capsys):
    from privrad.errors import PrivradError
    from privrad.book import jupyter_book_build

    project = tmp_path / "project"
    shutil.copytree(smoke_book["project"], project, ignore=shutil.ignore_patterns("_build"))
    (project / "book" / "draft.md").write_text("# A draft nobody added to the table of contents\n")
    with pytest.raises(PrivradError) as err:
        jupyter_book_build(project)
    shown = capsys.readouterr().err
    assert "book/draft.md: WARNING: document isn't included in any toctree" in shown
    assert str(err.value).startswith("the book build failed: book/draft.md: WARNING: document isn't included in any toctree")
    assert str(project) not in shown + str(err.value)


def test_the_book_loads_offline_in_a_browser(smoke_book):
    """Every page in Debian's chromium with the network blocked: it loads, requests nothing outside
    the site, logs no JavaScript error, shows its images and typesets its mathematics. Screenshots of
    the index, results and statistics pages go to _build/screenshots/smoke/."""
    import site_check

    reason = site_check.why_no_browser()
    if reason:
        pytest.skip(reason)
    report = site_check.check_site(smoke_book["html"], screenshots=ROOT / "_build" / "screenshots" / "smoke")
    assert not report.problems, "\n".join(report.problems)
    pages = {p.path: p for p in report.pages}
    assert len([p for p in pages if p.startswith("book/generated/runs/")]) == 8 - 3  # three damaged folders left out
    assert pages["book/generated/analysis.html"].images >= 3 and pages["book/methods.html"].math > 10
    assert set(report.screenshots) == set(site_check.SCREENSHOTS)


def test_the_built_book_holds_no_path_of_the_building_machine_and_no_nan(smoke, smoke_book):
    import site_check

    machine = [str(smoke_book["project"]), str(smoke["base"]), str(ROOT), sys.prefix, str(Path.home())]
    assert not site_check.scan_site(smoke_book["html"], machine)


def test_a_sweep_with_two_jobs_shows_each_running_run_and_logs_run_start_when_it_starts(smoke):
    """Beside the runs-done bar, each running run's line: its label, then its phase or its epoch,
    step and ETA, read from the progress file the run writes (privrad.progress)."""
    shown = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "\n", smoke["stderr"]).replace("\r", "\n")
    lines = [ln.strip() for ln in shown.splitlines()]
    progress = [ln for ln in lines if re.search(r"\| epoch \d+/\d+ · step \d+/\d+ · ETA (\d+:\d\d|\?)$", ln)]
    labels = {ln.split(" |")[0] for ln in progress}
    assert len(labels) >= 2, "\n".join(lines[-40:])  # at least two runs showed their steps
    assert any(re.search(r"step [1-9]\d*/\d+ · ETA \d+:\d\d$", ln) for ln in progress)  # an ETA from the steps done
    assert any(ln.startswith("study smoke:") and "/8" in ln for ln in lines)  # the runs-done bar
    # run_start is logged when a run starts, not when it is queued (all 8 at submission): with
    # --jobs 2 a third run starts only when one of the first two ended (whose completion the
    # sweep may log a moment later), and the last starts after at least five have ended
    sweep = [e["event"] for e in events(smoke["results"])]
    sweep = sweep[: sweep.index("sweep_end")]  # the fixture's sweep (later tests sweep the same folder again)
    log = [e for e in sweep if e in ("run_start", "run_complete", "run_failed")]
    ended = ("run_complete", "run_failed")
    assert log.count("run_start") == 8 and sum(e in ended for e in log) == 8
    assert log[: min(log.index(e) for e in ended if e in log)].count("run_start") <= 3, log
    last_start = len(log) - 1 - log[::-1].index("run_start")
    assert sum(e in ended for e in log[:last_start]) >= 5, log


def test_the_lab_notebook_reruns_one_point_and_marks_it_on_the_curve(smoke, tmp_path):
    """notebooks/lab.ipynb as a student runs it: another ε, one run, the star on the study's curve."""
    (tmp_path / "data" / "simulated" / "smoke").mkdir(parents=True)
    for name in ("mimic-cxr", "ct-rate"):  # the smoke profile's data folders, as in a checkout
        (tmp_path / "data" / "simulated" / "smoke" / name).symlink_to(smoke["base"] / "data" / name)
    out = tmp_path / "lab.ipynb"
    proc = subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "lab.ipynb"), str(out), "-k", "privrad",
                           "-p", "epsilon", "5", "-p", "profile", "smoke", "-p", "results_dir", str(smoke["results"])],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    nb = json.loads(out.read_text())
    outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join("".join(o.get("text", "")) for o in outputs)
    assert "training mimic-cxr · tiny-bert · lora · ε=5 · seed 0" in text and "weighted F1 0." in text
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the curve with the student's star
    lab_runs = [d for d in (smoke["results"] / "smoke-lab").iterdir() if d.is_dir()]
    assert len(lab_runs) == 1 and json.loads((lab_runs[0] / "config.json").read_text())["config"]["epsilon"] == 5
