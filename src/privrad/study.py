"""Studies: a grid of runs (dataset × model × method × ε × seed), each executed as a notebook.

``privrad study run`` expands a profile (:mod:`privrad.profiles`) into points, validates every
point (types, values, data paths, the run notebook's parameters, existing run folders) before
the first run starts, computes each point's run id from its config and its dataset's content
fingerprint, and executes ``notebooks/run.ipynb`` with papermill (:mod:`privrad.executors`)
for every point whose run folder is not complete.

Why this shape:

* **Cache by run id.** A point is *complete* when its run folder ``<results>/<profile>/<run_id>/``
  is complete (:func:`privrad.runs.run_state`: every file present and readable) and holds the
  executed ``run.ipynb``. Re-running a finished study runs nothing; adding a seed or an ε runs
  only the new points. A folder of the same run id but another config or another privrad
  version is refused, never mixed; an incomplete one (a truncated or missing file) is set aside
  in ``incomplete/`` and run again.
* **Crash safety.** The training core writes the run folder atomically; the executed notebook
  is written to a staging path (``.notebooks/<run_id>.ipynb``) and renamed into the run folder
  only when the notebook succeeded. A sweep killed with SIGKILL leaves finished runs and
  nothing half-trusted; the next invocation finishes only what is missing.
* **Failures do not stop a sweep.** A failed run's executed notebook (with its traceback) is
  kept in ``failed/<run_id>.ipynb``; the sweep goes on, prints a summary and exits non-zero.
* **A structured log and a manifest.** Every event is one JSON line in
  ``<results>/<profile>/study.jsonl``; ``study.json`` holds what the last sweep ran — every
  point's config and state, its datasets and book settings — and is what ``privrad study
  status`` and ``privrad book build`` read (never the profile again; :mod:`privrad.manifest`).

* **Audits after the runs.** A profile's ``audit:`` block (:class:`privrad.audit.AuditSettings`)
  names runs to audit; once every run finished, the sweep audits each of them that has no
  ``audit.json`` of the same settings (:func:`privrad.audit_sweep.audit_points`: a canary run trains the run's
  configuration again, so local sweeps audit ``--jobs`` runs at once in worker processes, each
  with its share of the cores). A failed audit is named and makes the sweep exit non-zero; the
  run itself stays complete.

A run's state is one of :data:`privrad.runs.RUN_STATES` everywhere: in ``study.json``, the
summary, ``study status`` and the log's ``run_<state>`` events.

Runs execute in local processes (``--jobs N``, :mod:`privrad.executors`) or as Slurm jobs
(``--executor slurm``, :mod:`privrad.executors_slurm`), under the same cache, lock and "complete"
rule. With Slurm the manifest records each run's job id and log: ``study status`` shows their
Slurm state, and a sweep restarted after being killed waits for its still-running jobs instead
of resubmitting.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from privrad.config import validate_config
from privrad.errors import ConfigError, DataError
from privrad.executors import Executor, LocalExecutor, Task, default_kernel
from privrad.executors_slurm import SlurmExecutor
from privrad.progress import Display
from privrad.profiles import (FIELDS, NOTEBOOK_EXTRA_PARAMETERS, RUN_NOTEBOOK, Point, Profile, expand, load_profile,
                              notebook_parameters, project_root, resolve_path)
from privrad.manifest import point_state, read_manifest, study_status, summary_table, write_manifest  # noqa: F401
from privrad.runs import run_state

EXECUTORS = ("local", "slurm")


# ----------------------------------------------------------------------------- data and run ids


def _is_simulated(path: Path) -> bool:
    from privrad.data.simulate import MARKER

    return (path / MARKER).is_file()


def prepare_data(profile: Profile, *, log: "Log | None" = None) -> None:
    """Every data folder must exist before the first run; simulated ones are made if missing."""
    for entry in profile.datasets:
        path = resolve_path(entry.data_dir)
        if path.exists() and not (entry.simulate and _is_simulated(path)):
            continue
        if entry.simulate:  # missing, or simulator output: simulate() returns at once if it matches
            from privrad.data.simulate import simulate

            kind = entry.simulate.get("kind", entry.dataset.replace("simulated-", ""))
            n, seed = int(entry.simulate.get("n", 1000)), int(entry.simulate.get("seed", 0))
            if not path.exists():
                print(f"privrad: simulating {kind} (n={n}, seed={seed}) into {path} …", file=sys.stderr)
            t0 = time.time()
            try:
                simulate(kind, path, n=n, seed=seed)
            except ConfigError as exc:  # another simulation is already there: never overwritten
                raise ConfigError(f"dataset {entry.name}: {exc} To keep both, pass --set {entry.name}.data_dir=<another folder>.") from None
            if log:
                log.event("simulated", dataset=entry.name, kind=kind, n=n, seed=seed, path=str(path), seconds=round(time.time() - t0, 2))
            continue
        from privrad.data.fetch import fetchable

        how = (f"download it with `privrad data fetch {entry.dataset} --out {entry.data_dir}`" if entry.dataset in fetchable()
               else "put the download there")
        raise DataError(
            f"data folder {entry.data_dir} for dataset {entry.name} ({entry.dataset}) does not exist; "
            f"{how} or pass --set {entry.name}.data_dir=/path/to/it."
        )


def _assign_run_ids(points: list[Point], profile: Profile, results_dir: Path) -> None:
    """Load each dataset once, validate what needs the data, give every point its run id and state."""
    from privrad.data import load_dataset
    from privrad.runs import run_id

    datasets: dict[str, Any] = {}
    for entry in profile.datasets:
        if any(p.entry is entry for p in points):
            datasets[entry.name] = load_dataset(entry.dataset, str(resolve_path(entry.data_dir)), **entry.dataset_options)
    ids: dict[str, Point] = {}
    for p in points:
        ds = datasets[p.entry.name]
        p.config = validate_config(p.config, n_train=int((ds.splits == "train").sum()), where=p.label)
        p.run_id = run_id(p.config, ds.fingerprint)
        if p.run_id in ids:
            raise ConfigError(f"{p.label} and {ids[p.run_id].label} map to the same run id {p.run_id}; make the points differ.")
        ids[p.run_id] = p
        p.run_dir = results_dir / p.run_id
        p.state, p.problem = point_state(p.run_dir, p.run_id, results_dir)
        _refuse_foreign(p)


def _refuse_foreign(p: Point) -> None:
    """A folder of this run id written by another config or privrad version is never mixed in."""
    import privrad

    info = run_state(p.run_dir).info if p.run_dir.exists() else None
    if info is None:
        return
    stored = info.get("config") if isinstance(info.get("config"), dict) else {}
    expected = p.config.to_dict()
    mismatched = sorted(k for k in expected if k != "data_dir" and _norm(stored.get(k, "<missing>")) != _norm(expected[k]))
    if mismatched or info.get("run_id", p.run_id) != p.run_id:
        raise ConfigError(
            f"run folder {p.run_dir} was written by a different config (differs in {', '.join(mismatched) or 'run_id'}); "
            "refusing to mix results: delete that folder or use another --results-dir."
        )
    version = info.get("privrad_version")
    if version != privrad.__version__:
        raise ConfigError(
            f"run folder {p.run_dir} was written by privrad {version}, this is privrad {privrad.__version__}; "
            "refusing to mix versions: delete that folder or use another --results-dir."
        )


def _norm(v: Any) -> Any:
    return json.loads(json.dumps(v, sort_keys=True, default=str))


# ----------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    profile: Profile
    points: list[Point]
    notebook: Path
    kernel: str
    cwd: Path

    @property
    def results_dir(self) -> Path:
        return self.profile.results_dir

    @property
    def todo(self) -> list[Point]:
        return [p for p in self.points if p.state != "complete"]


def plan(profile: Profile, *, notebook: Path | None = None, log: "Log | None" = None, root: Path | None = None) -> Plan:
    """Validate everything a sweep needs, in order of cost, before any run starts:
    profile keys, types and values (:func:`expand`) → the notebook's parameters → data paths
    (simulating missing simulated data) → datasets loaded once each, checks that need them, run
    ids → existing run folders."""
    root = root or project_root()
    notebook = notebook or root / RUN_NOTEBOOK
    points = expand(profile)
    if not points:
        raise ConfigError(f"study profile {profile.name} expands to no runs; check its grid.")
    declared = notebook_parameters(notebook)
    missing = sorted((set(FIELDS) | set(NOTEBOOK_EXTRA_PARAMETERS)) - declared)
    if missing:
        raise ConfigError(
            f"run notebook {notebook} has no parameter(s) {', '.join(missing)} in its `parameters` cell, so papermill cannot pass them; add them there."
        )
    prepare_data(profile, log=log)
    _assign_run_ids(points, profile, profile.results_dir)
    return Plan(profile, points, notebook, profile.kernel or default_kernel(), Path.cwd())


# ----------------------------------------------------------------------------- the sweep


class Log:
    """Structured log: one JSON object per line in ``<results>/<profile>/study.jsonl``.
    Appended and flushed line by line (a crash can cut the last line, never earlier ones).
    Holds run ids, configs, timings and error names — never report text."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def event(self, event: str, **fields: Any) -> None:
        rec = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "event": event, **fields}
        with self._lock:
            self._fh.write(json.dumps(rec, default=str) + "\n")
            self._fh.flush()

    def close(self) -> None:
        self._fh.close()


@contextlib.contextmanager
def _sweep_lock(results_dir: Path) -> Iterator[None]:
    """One sweep per results folder at a time (a second one is refused, not interleaved)."""
    import fcntl

    results_dir.mkdir(parents=True, exist_ok=True)
    fh = open(results_dir / ".lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise ConfigError(f"another sweep is running on {results_dir}; wait for it to finish or use another --results-dir.") from None
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def _clean_stale(results_dir: Path, keep: Iterable[str] = ()) -> None:
    """Remove what a killed sweep left half-done: temporary run folders and staged notebooks
    (never trusted, always redone) — except the staged notebooks of the runs in ``keep``, whose
    Slurm jobs (of an earlier sweep) are still running."""
    keep = set(keep)
    for tmp in results_dir.glob(".*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    staged = results_dir / ".notebooks"
    for f in staged.iterdir() if staged.is_dir() else ():
        if f.name.split(".", 1)[0] not in keep:
            shutil.rmtree(f, ignore_errors=True) if f.is_dir() else f.unlink(missing_ok=True)


def _live_jobs(pl: Plan) -> dict[str, str]:
    """Slurm jobs of an earlier sweep (from the last manifest) for runs still to do that are
    still queued or running: run id → job id."""
    with contextlib.suppress(ConfigError):
        todo = {p.run_id for p in pl.todo}
        jobs = {r["run_id"]: r["job"] for r in (read_manifest(pl.results_dir) or {}).get("points", [])
                if r.get("job") and r.get("run_id") in todo}
        if jobs:
            from privrad.slurm import live

            return live(jobs)
    return {}


def _set_aside(p: Point, results_dir: Path, log: Log) -> None:
    """An incomplete run folder (a file missing or unreadable) is moved to ``incomplete/`` so
    that the run executes again; a folder whose files are complete but lacks only its notebook
    stays (the notebook then reuses its training)."""
    if not p.run_dir.exists() or run_state(p.run_dir).complete:
        return
    dest = results_dir / "incomplete" / p.run_id
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(p.run_dir, dest)
    print(f"privrad: {p.problem}; set aside in {dest} and running it again", file=sys.stderr)
    log.event("run_set_aside", **p.row(), problem=p.problem, moved_to=str(dest))


def _task(p: Point, pl: Plan) -> Task:
    return Task(run_id=p.run_id, label=p.label, notebook=str(pl.notebook.resolve()),
                parameters={**p.config.to_dict(), "run_dir": str(p.run_dir)}, run_dir=str(p.run_dir),
                staging=str(pl.results_dir / ".notebooks" / f"{p.run_id}.ipynb"),
                failed=str(pl.results_dir / "failed" / f"{p.run_id}.ipynb"), kernel=pl.kernel, cwd=str(pl.cwd),
                progress=str(pl.results_dir / ".notebooks" / f"{p.run_id}.progress.json"))


def run_study(profile: Profile, *, jobs: int | None = None, executor: Executor | str | None = None,
              notebook: Path | None = None, progress: bool = True, out=sys.stdout, runs_per_gpu: int | None = None) -> int:
    """Validate, then execute every point not yet complete. Returns 0, or 1 if a run failed.

    ``executor``: ``"local"`` (the default: :func:`local_executor`, ``jobs`` processes at once,
    ``runs_per_gpu`` on each GPU), ``"slurm"`` (one Slurm job per run, with the profile's
    ``slurm:`` options; the cluster is asked before anything is written or submitted), or an
    :class:`Executor`."""
    results_dir = profile.results_dir
    executor = _executor(profile, executor, jobs, runs_per_gpu)
    with _sweep_lock(results_dir):
        log = Log(results_dir / "study.jsonl")
        try:
            return _sweep(profile, jobs=jobs, executor=executor, notebook=notebook, progress=progress, out=out, log=log)
        finally:
            log.close()


def local_executor(profile: Profile, *, jobs: int | None = None, runs_per_gpu: int | None = None) -> LocalExecutor:
    """This machine's executor for ``profile``: its ``gpu:`` block (runs per GPU, memory per run),
    ``--runs-per-gpu`` overriding it, and kernels warmed up with the run notebook's imports."""
    from privrad.pipeline import WARM_UP

    rpg = runs_per_gpu if runs_per_gpu is not None else profile.gpu.get("runs_per_gpu", 1)
    return LocalExecutor(jobs, runs_per_gpu=rpg, gpu_memory_gb=profile.gpu.get("memory_gb"), warm_up=WARM_UP)


def _executor(profile: Profile, executor: Executor | str | None, jobs: int | None, runs_per_gpu: int | None) -> Executor:
    if isinstance(executor, Executor):
        return executor
    if executor in (None, "local"):
        return local_executor(profile, jobs=jobs, runs_per_gpu=runs_per_gpu)
    if executor != "slurm":
        raise ConfigError(f"unknown executor {executor!r}; known executors are: {', '.join(EXECUTORS)}.")
    if jobs is not None:
        raise ConfigError("--jobs sets how many local processes run at once; with --executor slurm set "
                          "slurm.array_parallelism instead (--set slurm.array_parallelism=N).")
    if runs_per_gpu is not None:
        raise ConfigError("--runs-per-gpu shares this machine's GPUs between runs; with --executor slurm each run is "
                          "its own job with slurm.gpus_per_node GPUs.")
    slurm = SlurmExecutor(profile.slurm_config(), profile.results_dir / "slurm", job_name=f"privrad-{profile.name}")
    slurm.check(len(expand(profile)))  # nothing is written or submitted before the cluster says yes
    return slurm


def _sweep(profile: Profile, *, jobs, executor: Executor, notebook, progress, out, log: Log) -> int:
    results_dir = profile.results_dir
    t0 = time.time()
    pl = plan(profile, notebook=notebook, log=log)
    slurm = executor if isinstance(executor, SlurmExecutor) else None
    live = _live_jobs(pl)
    if live and slurm is None:
        rid, jid = next(iter(live.items()))
        raise ConfigError(f"{len(live)} run(s) of this study are still queued or running on Slurm (e.g. {rid} as job {jid}); "
                          "wait for them with --executor slurm, or scancel them first.")
    _clean_stale(results_dir, keep=live)
    todo = pl.todo
    if todo and hasattr(executor, "check_memory"):
        executor.check_memory()  # a GPU too full for its runs is refused before anything starts
    log.event("sweep_start", profile=profile.name, points=len(pl.points), todo=len(todo), jobs=getattr(executor, "jobs", jobs),
              executor="slurm" if slurm else "local", runs_per_gpu=getattr(executor, "runs_per_gpu", None),
              gpu_memory_share_gb=getattr(executor, "memory_share_gb", None))
    status: dict[str, dict[str, Any]] = {}
    for p in pl.points:
        cached = p.state == "complete"
        status[p.run_id] = {**p.row(), "state": p.state, "cached": cached, "seconds": 0.0 if cached else None,
                            "error": None, "problem": p.problem}
        if cached:
            log.event("run_cached", **p.row())
    write_manifest(pl, status)
    for p in todo:
        if p.run_id not in live:  # a running job may be writing it
            _set_aside(p, results_dir, log)
    for note in getattr(executor, "notes", []):
        print(f"privrad: {note}", file=sys.stderr)
        log.event("executor_note", note=note)
    by_id = {p.run_id: p for p in todo}
    # the runs-done bar, and under it each running run's phase, epoch/step and ETA (privrad.progress)
    display = Display(total=len(todo), desc=f"study {profile.name}", enabled=progress, file=sys.stderr)
    if slurm is not None:
        def notify(event: str, rid: str, **fields: Any) -> None:
            log.event(f"run_{event}", **by_id[rid].row(), **fields)
            if event in ("submitted", "adopted"):  # the manifest says where each run went
                status[rid] = {**status[rid], "job": fields["job"], "log": fields["log"]}
                write_manifest(pl, status)

        def on_status(counts: dict[str, int], arrays: str) -> None:
            display.bar.set_postfix_str(" · ".join(f"{k} {v}" for k, v in counts.items()) + f" · Slurm job {arrays}",
                                        refresh=True)

        slurm.adopt, slurm.notify, slurm.on_status = live, notify, on_status

    def started(task: Task) -> None:  # called when the executor really starts the run
        log.event("run_start", **by_id[task.run_id].row(), run_dir=task.run_dir)
        display.started(task.run_id, task.label, task.progress)

    outcomes = executor.run([_task(p, pl) for p in todo], on_start=started)
    with contextlib.ExitStack() as stack:
        stack.callback(display.close)
        if slurm is not None:  # an interrupted sweep (Ctrl-C, an error) cancels its Slurm jobs
            stack.callback(outcomes.close)
        for oc in outcomes:
            p = by_id[oc.run_id]
            where = {"job": oc.job, "log": oc.log} if oc.job else {}
            status[oc.run_id] = {**p.row(), "state": oc.state, "cached": False, "seconds": oc.seconds, "error": oc.error,
                                 "problem": None, **where}
            log.event(f"run_{oc.state}", **p.row(), seconds=oc.seconds, error=oc.error, **where)
            write_manifest(pl, status)
            display.finished(oc.run_id, f"privrad: run failed: {p.label} ({oc.run_id}): {oc.error}"
                             + (f" (log: {oc.log})" if oc.log else "") if oc.state == "failed" else None)
    with contextlib.suppress(OSError):
        (results_dir / ".notebooks").rmdir()  # only if empty
    from privrad.audit_sweep import audit_points

    audit_failed = audit_points(pl, status, log=log, progress=progress,
                                jobs=executor.jobs if isinstance(executor, LocalExecutor) else 1)
    rows = list(status.values())
    ran = sum(r["state"] == "complete" and not r["cached"] for r in rows)
    cached = sum(r["cached"] for r in rows)
    failed = sum(r["state"] == "failed" for r in rows)
    wall = round(time.time() - t0, 1)
    log.event("sweep_end", profile=profile.name, seconds=wall, ran=ran, cached=cached, failed=failed)
    print(summary_table(rows), file=out)
    print(f"{profile.name}: {ran + cached} complete ({ran} run now, {cached} cached), {failed} failed "
          f"in {wall:.1f} s — results in {results_dir}", file=out)
    if failed:
        print(f"the executed notebooks of the failed runs, with their errors, are in {results_dir / 'failed'}", file=out)
    audited = sum(bool(r.get("audited")) for r in rows)
    if audited or audit_failed:
        print(f"{profile.name}: {audited} run(s) audited (audit.json in their folders), {audit_failed} audit(s) failed", file=out)
    return 1 if failed or audit_failed else 0


def _cmd_run(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile, sets=args.set or (), results_dir=args.results_dir)
    return run_study(profile, jobs=args.jobs, executor=args.executor, notebook=Path(args.notebook) if args.notebook else None,
                     progress=not args.quiet, runs_per_gpu=args.runs_per_gpu)


def _cmd_status(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile, results_dir=args.results_dir)
    return study_status(profile.results_dir, profile.name)


def add_results_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results-dir", help="results root (default: the profile's, usually results/); "
                                              "a profile's runs are in RESULTS_DIR/PROFILE/RUN_ID")


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    study = subparsers.add_parser("study", help="run a study profile: a grid of runs executed as notebooks")
    ssub = study.add_subparsers(dest="study_command", metavar="SUBCOMMAND", required=True)

    run = ssub.add_parser("run", help="execute every run of a profile that is not complete yet")
    run.add_argument("--profile", default="default", help="a profile in studies/ (default: default) or a .yml path")
    run.add_argument("--executor", choices=EXECUTORS, default="local",
                     help="where runs execute: local processes (default), or one Slurm job per run with the profile's "
                          "slurm: options (--set slurm.KEY=VALUE overrides them)")
    run.add_argument("--jobs", type=int, default=None,
                     help="local executor: runs executed at once, one process each (default: 1 on a CPU; on GPUs, "
                          "every slot: GPUs × runs per GPU)")
    run.add_argument("--runs-per-gpu", type=int, help="local executor: runs placed on one GPU at once, each with an equal "
                                                      "share of its memory (default: the profile's gpu.runs_per_gpu, else 1; "
                                                      "no effect without a GPU)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override the profile: a grid axis (epsilon=[1,null]), a parameter (lr=1e-3) or a dataset path (mimic-cxr.data_dir=/data/mimic)")
    add_results_dir(run)
    run.add_argument("--notebook", help=argparse.SUPPRESS)
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=_cmd_run)

    st = ssub.add_parser("status", help="the state of every run of the last sweep: complete, incomplete (naming the file), failed "
                                        "or missing, and the Slurm state of submitted runs that are not complete")
    st.add_argument("--profile", default="default")
    add_results_dir(st)
    st.set_defaults(func=_cmd_status)
