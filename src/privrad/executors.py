"""Where a run executes: the seam between a sweep and the processes that run its notebooks.

A sweep hands an :class:`Executor` a list of :class:`Task` s and reads back one
:class:`Outcome` per task as they finish. :func:`execute_task` executes one run notebook with
papermill in a subprocess and places its result (the executed notebook into the run folder, or
into ``failed/``); every executor calls it, locally or on a cluster node.

* :class:`LocalExecutor`: ``jobs`` papermill subprocesses at once on this machine, one GPU (or
  an even share of the CPU cores) per job.
* :class:`SlurmExecutor`: one Slurm job per task, submitted as one job array through submitit;
  each job calls :func:`execute_task` on its node (``privrad study run --executor slurm``).

Whether a run is *complete* is never decided here: :func:`privrad.runs.run_state` is the one rule.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from privrad.errors import ConfigError
from privrad.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from privrad.config import SlurmConfig


KERNEL_CONFIG = {"KernelManager": {"transport_encryption": "auto"}}
"""traitlets config for the kernels papermill starts: CurveZMQ transport encryption where the kernel
supports it (the privrad kernel does), so a kernel neither talks in plain text nor warns on every
start that it does."""


def default_kernel() -> str:
    """The ``privrad`` kernel (installed by ``make setup``) if present, else ``python3``."""
    try:
        from jupyter_client.kernelspec import find_kernel_specs

        return "privrad" if "privrad" in find_kernel_specs() else "python3"
    except Exception:  # pragma: no cover - jupyter_client always exists with papermill
        return "python3"


@dataclass(frozen=True)
class Task:
    """Everything needed to execute one point anywhere the results folder is visible."""

    run_id: str
    label: str
    notebook: str
    parameters: dict[str, Any]
    run_dir: str
    staging: str  # <results>/<profile>/.notebooks/<run_id>.ipynb
    failed: str  # <results>/<profile>/failed/<run_id>.ipynb
    kernel: str
    cwd: str
    timeout_s: float | None = None
    progress: str | None = None  # the run reports its phase and steps here (privrad.progress); None: nowhere


@dataclass
class Outcome:
    """How one task ended: ``state`` is ``complete`` or ``failed`` (see :data:`privrad.runs.RUN_STATES`)."""

    run_id: str
    state: str
    seconds: float
    error: str | None = None
    job: str | None = None  # the Slurm job id (SlurmExecutor)
    log: str | None = None  # the Slurm job's log file


def _pdeathsig(slurm_job: bool = False) -> None:  # pragma: no cover - runs in the child
    """Linux: the papermill child dies with its parent, so SIGKILL of a sweep stops its runs
    (their kernels exit on their own when papermill is gone).

    In a Slurm job, Slurm signals every process of the job: SIGTERM before it cancels, preempts
    or requeues the job (then SIGKILL), SIGUSR2 before its time limit. Only the job's own process
    acts on them (submitit requeues the job); the notebook and its kernel ignore them, so that a
    stopped job never reports a half-run notebook as a failed run."""
    if slurm_job:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def notebook_error(path: Path) -> str | None:
    """``ename: evalue`` of the first error output in an executed notebook."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) or []:
            if out.get("output_type") == "error":
                return f"{out.get('ename')}: {out.get('evalue')}".strip()
    return None


_PAPERMILL_DRIVER = """
import json, logging, sys
import papermill
logging.getLogger("papermill").setLevel(logging.WARNING)
from traitlets.config import Config
nb, out, params, kernel, cwd, timeout, config = sys.argv[1:8]
papermill.execute_notebook(nb, out, parameters=json.load(open(params)), kernel_name=kernel, cwd=cwd,
                           progress_bar=False, execution_timeout=float(timeout) if timeout else None,
                           config=Config(json.loads(config)))
"""


def execute_task(task: Task, env: dict[str, str] | None = None, *, slurm_job: bool = False) -> Outcome:
    """Execute one run notebook with papermill in a subprocess and place the result.

    Success: the training core wrote a complete run folder (:func:`privrad.runs.run_state`)
    of the expected run id, and the executed notebook is renamed to ``run_dir/run.ipynb``.
    Failure: the notebook is kept as ``failed/<run_id>.ipynb`` with its error."""
    from privrad.runs import run_state

    t0 = time.time()
    staging, failed, run_dir = Path(task.staging), Path(task.failed), Path(task.run_dir)
    staging.parent.mkdir(parents=True, exist_ok=True)
    params_file = staging.with_suffix(".params.json")
    atomic_write_json(params_file, task.parameters)
    # papermill's own CLI reads parameters as YAML 1.1 (``1e-05`` would arrive as a string): pass JSON.
    from privrad.progress import ENV as PROGRESS_ENV

    env = {**(env or {}), **({PROGRESS_ENV: task.progress} if task.progress else {})}
    cmd = [sys.executable, "-c", _PAPERMILL_DRIVER, task.notebook, str(staging), str(params_file), task.kernel,
           task.cwd, str(task.timeout_s or ""), json.dumps(KERNEL_CONFIG)]
    proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, preexec_fn=(lambda: _pdeathsig(slurm_job)) if sys.platform.startswith("linux") else None)
    params_file.unlink(missing_ok=True)
    if task.progress:
        Path(task.progress).unlink(missing_ok=True)
    seconds = round(time.time() - t0, 2)
    error = None
    if proc.returncode != 0:
        killed = f"the notebook process was killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else None
        error = notebook_error(staging) or killed or _last_line(proc.stdout) or f"papermill exited with status {proc.returncode}"
    else:
        state = run_state(run_dir, run_id=task.run_id)
        if not state.complete:
            error = f"the notebook finished but the run folder is not complete: {state.problem}"
    if error is None:
        os.replace(staging, run_dir / "run.ipynb")
        failed.unlink(missing_ok=True)
        return Outcome(task.run_id, "complete", seconds)
    failed.parent.mkdir(parents=True, exist_ok=True)
    if staging.exists():
        os.replace(staging, failed)
    else:
        atomic_write_text(failed.with_suffix(".log"), proc.stdout[-20000:])
    return Outcome(task.run_id, "failed", seconds, error)


def _last_line(text: str) -> str | None:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:500] if lines else None


class Executor:
    """The seam between a sweep and where its runs execute: ``run(tasks, on_start=)`` yields one
    :class:`Outcome` per task as they finish, and calls ``on_start(task)`` when a task really
    starts to execute (not when it is queued), from whichever thread notices it."""

    def run(self, tasks: Sequence[Task], on_start: Callable[[Task], None] | None = None) -> Iterator[Outcome]:  # pragma: no cover - interface
        raise NotImplementedError


def visible_gpus() -> list[str]:
    """GPU indices this process may use (empty on CPU machines)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:  # pragma: no cover
        return []


class LocalExecutor(Executor):
    """``jobs`` papermill subprocesses at once; job slot ``i`` sees GPU ``gpus[i % len(gpus)]``
    through ``CUDA_VISIBLE_DEVICES`` (one GPU per job) and, on CPU, an even share of the cores
    for torch's threads so that parallel jobs do not oversubscribe the machine."""

    def __init__(self, jobs: int = 1, gpus: Sequence[str] | None = None):
        self.jobs = max(1, int(jobs))
        self.gpus = list(visible_gpus() if gpus is None else gpus)

    def _env(self, slot: int) -> dict[str, str]:
        if self.gpus:
            return {"CUDA_VISIBLE_DEVICES": self.gpus[slot % len(self.gpus)]}
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    def run(self, tasks: Sequence[Task], on_start: Callable[[Task], None] | None = None) -> Iterator[Outcome]:
        slots: list[int] = list(range(self.jobs))
        lock = threading.Lock()

        def work(task: Task) -> Outcome:
            with lock:
                slot = slots.pop(0)
            try:
                if on_start is not None:
                    on_start(task)
                return execute_task(task, self._env(slot))
            finally:
                with lock:
                    slots.append(slot)

        with cf.ThreadPoolExecutor(max_workers=self.jobs) as pool:
            futures = [pool.submit(work, t) for t in tasks]
            for fut in cf.as_completed(futures):
                yield fut.result()


# ----------------------------------------------------------------------------- Slurm

MAX_TIMEOUTS = 3  # a run stopped by its time limit is requeued at most this many times
_FORWARDED = ("PRIVRAD_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")


class SlurmRun:
    """What one array task executes on its node: :func:`execute_task` for one run.

    Checkpointable in submitit's sense: when Slurm announces the time limit (``SIGUSR2``),
    submitit calls :meth:`checkpoint` and requeues the job, which then starts this run again
    from its beginning — a notebook cannot resume mid-training, and a half-run attempt leaves
    nothing that counts. A preempted job (or one requeued by an administrator) restarts the same
    way under the same job id. Either way the run is counted once, by the one result its last
    attempt writes."""

    def __init__(self, task: Task, gpus: int):
        self.task = task
        self.gpus = gpus
        # what a run reads from the environment, as the sweep saw it (a cluster may start jobs with
        # a bare environment: sbatch --export=NONE)
        self.env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED) or k == "PYTHONHASHSEED"}

    def __call__(self) -> Outcome:
        threads = os.environ.get("SLURM_CPUS_PER_TASK", "1")
        env = {**self.env, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        if not self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU job must not use a GPU it was not given
        return execute_task(self.task, env, slurm_job=True)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


class SlurmExecutor(Executor):
    """One Slurm job per task, submitted as one job array through submitit (at most
    ``array_parallelism`` at once, each job asking for what :class:`~privrad.config.SlurmConfig`
    says), yielding each task's :class:`Outcome` as its job ends.

    submitit writes the sbatch script, pickles the call, submits the array, collects each job's
    result and log, and requeues a job at its time limit (see :class:`SlurmRun`). Job state
    comes from :func:`privrad.slurm.job_states` (``squeue``, no accounting database needed):
    a job that ends without writing its result — cancelled, timed out too often, its node lost —
    is a failed run, its half-executed notebook kept in ``failed/``. Interrupting the sweep
    (closing this generator: Ctrl-C, an error) cancels its jobs.

    ``adopt`` maps run ids to jobs of an earlier sweep that are still queued or running: they
    are waited for instead of submitted again. ``notify(event, run_id, **fields)`` hears
    ``submitted`` / ``adopted`` / ``requeued``; ``on_status(counts, array_ids)`` hears how many
    runs are queued / running / done / failed whenever that changes."""

    def __init__(self, config: "SlurmConfig", folder: str | os.PathLike, *, job_name: str = "privrad",
                 adopt: dict[str, str] | None = None, notify: Callable[..., None] | None = None,
                 on_status: Callable[[dict[str, int], str], None] | None = None, poll_s: float = 1.0,
                 grace_s: float = 30.0):
        self.config = config
        self.folder = Path(folder)
        self.job_name = job_name
        self.adopt = dict(adopt or {})
        self.notify = notify or (lambda *a, **k: None)
        self.on_status = on_status or (lambda counts, jobs: None)
        self.poll_s = poll_s
        self.grace_s = grace_s

    @staticmethod
    def _submitit_module() -> Any:
        try:
            import submitit
        except ImportError:
            raise ConfigError("--executor slurm needs submitit, which is not installed; install privrad with its slurm extra "
                              "(pip install -e '.[slurm]').") from None
        return submitit

    def _submitit(self) -> Any:
        submitit = self._submitit_module()
        ex = submitit.SlurmExecutor(folder=self.folder / "%j", max_num_timeout=MAX_TIMEOUTS, python=sys.executable)
        ex.update_parameters(job_name=self.job_name, **self.config.submitit_parameters())
        return ex

    def script(self, n_tasks: int) -> str:
        """The sbatch script submitit writes for ``n_tasks`` runs (an array when > 1)."""
        self._submitit_module()
        from submitit.slurm.slurm import _make_sbatch_string

        params = {"job_name": self.job_name, **self.config.submitit_parameters()}
        if n_tasks > 1:
            params["map_count"] = n_tasks
        command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(self.folder / '%j'))}"
        return _make_sbatch_string(command=command, folder=self.folder / "%j", **params)

    def check(self, n_tasks: int) -> None:
        """Everything the cluster can say about ``n_tasks`` jobs before any is submitted."""
        from privrad.slurm import check_cluster, require

        for tool in ("sbatch", "squeue", "sinfo", "srun"):
            require(tool)
        check_cluster(self.config, self.script(max(1, n_tasks)))

    def run(self, tasks: Sequence[Task], on_start: Callable[[Task], None] | None = None) -> Iterator[Outcome]:
        """One job per task; ``on_start(task)`` when Slurm is first seen running its job."""
        from privrad.slurm import LIVE_STATES, QUEUED_STATES, cancel, job_states

        submitit = self._submitit_module()

        by_id = {t.run_id: t for t in tasks}
        jobs: dict[str, Any] = {rid: submitit.SlurmJob(folder=self.folder / "%j", job_id=jid)
                                for rid, jid in self.adopt.items() if rid in by_id}
        new = [t for t in tasks if t.run_id not in jobs]
        if new:
            ex = self._submitit()
            with ex.batch():
                submitted = [ex.submit(SlurmRun(t, self.config.gpus_per_node)) for t in new]
            jobs.update({t.run_id: j for t, j in zip(new, submitted)})
        for rid, job in jobs.items():
            self.notify("adopted" if rid in self.adopt else "submitted", rid, job=job.job_id, log=str(job.paths.stdout))
        t0 = time.time()
        pending = dict(jobs)
        state: dict[str, str] = {}
        ended: dict[str, float] = {}  # run id → when Slurm was first seen to have ended the job
        started: set[str] = set()
        counts = {"queued": len(pending), "running": 0, "done": 0, "failed": 0}
        next_look = 0.0
        try:
            while pending:
                changed = False
                for rid, job in list(pending.items()):
                    # a job Slurm says completed or failed may write its result a moment later (shared
                    # filesystems lag); one that was cancelled, timed out or lost its node will not
                    wait = self.grace_s if state.get(rid) in ("COMPLETED", "FAILED") else min(5.0, self.grace_s)
                    gone = rid in ended and time.time() - ended[rid] > wait
                    if job.paths.result_pickle.exists() or gone:
                        oc = self._outcome(by_id[rid], job, state.get(rid), time.time() - t0)
                        del pending[rid]
                        counts["done" if oc.state == "complete" else "failed"] += 1
                        changed = True
                        yield oc
                if pending and time.time() >= next_look:
                    now = job_states(j.job_id for j in pending.values())
                    for rid, job in pending.items() if now is not None else ():
                        # a job Slurm no longer knows has ended (after a first moment in which it may not show yet)
                        new_state = now.get(job.job_id, "ENDED" if time.time() - t0 > 30 else state.get(rid, "PENDING"))
                        if state.get(rid) in LIVE_STATES - QUEUED_STATES and new_state in QUEUED_STATES:  # started, then queued again
                            self.notify("requeued", rid, job=job.job_id, state=new_state)
                        if on_start is not None and rid not in started and new_state not in QUEUED_STATES:
                            started.add(rid)  # running now, or already ended between two looks
                            on_start(by_id[rid])
                        state[rid] = new_state
                        if new_state not in LIVE_STATES:
                            ended.setdefault(rid, time.time())
                    # look often at first, then less often (a long sweep asks Slurm every 30 s at most)
                    next_look = time.time() + min(30.0, max(1.0, (time.time() - t0) / 20))
                    changed = True
                if changed:
                    counts["queued"] = sum(1 for r in pending if state.get(r, "PENDING") in QUEUED_STATES)
                    counts["running"] = len(pending) - counts["queued"]
                    self.on_status(dict(counts), _array_ids(jobs.values()))
                if pending:
                    time.sleep(self.poll_s)
        finally:
            if pending:  # the sweep was interrupted (Ctrl-C, an error): its jobs go with it
                cancel(j.job_id for j in pending.values())

    def _outcome(self, task: Task, job: Any, last_state: str | None, seconds: float) -> Outcome:
        log = str(job.paths.stdout)
        if job.paths.result_pickle.exists():
            try:
                oc = job.result()
            except Exception as exc:  # the job raised, or submitit gave up after MAX_TIMEOUTS requeues
                oc = Outcome(task.run_id, "failed", round(seconds, 2), f"Slurm job {job.job_id}: {_last_line(str(exc))}")
        else:
            what = last_state or "ENDED"
            oc = Outcome(task.run_id, "failed", round(seconds, 2), f"Slurm job {job.job_id} ended {what} before the run finished")
        if oc.state != "complete":
            _keep_failed_notebook(task)
        oc.job, oc.log = job.job_id, log
        return oc


def _array_ids(jobs: Iterable[Any]) -> str:
    return ", ".join(sorted({j.job_id.split("_")[0] for j in jobs}, key=int))


def _keep_failed_notebook(task: Task) -> None:
    """A job that died mid-run leaves its half-executed notebook in staging: keep it where failed
    runs' notebooks go (``failed/<run_id>.ipynb``), as the local executor does."""
    staging, failed = Path(task.staging), Path(task.failed)
    if staging.exists():
        failed.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, failed)
    Path(staging).with_suffix(".params.json").unlink(missing_ok=True)
