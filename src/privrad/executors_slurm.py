"""The Slurm executor: one Slurm job per run, submitted as one job array through submitit; each
job calls :func:`privrad.executors.execute_task` on its node (``privrad study run --executor
slurm``). What privrad asks the cluster itself (partitions, job states) is :mod:`privrad.slurm`.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from privrad.errors import ConfigError
from privrad.executors import Executor, Outcome, Task, _last_line, execute_task

if TYPE_CHECKING:
    from privrad.config import SlurmConfig


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
    runs are queued / running / complete / failed whenever that changes."""

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
        """One job per task; ``on_start(task)`` when Slurm is first seen running its job (or, for a
        job that ran and ended between two looks at the queue, just before its outcome)."""
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
        counts = {"queued": len(pending), "running": 0, "complete": 0, "failed": 0}
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
                        if on_start is not None and rid not in started and job.paths.result_pickle.exists():
                            started.add(rid)  # it ran and ended between two looks: its start comes before its end
                            on_start(by_id[rid])
                        oc = self._outcome(by_id[rid], job, state.get(rid), time.time() - t0)
                        del pending[rid]
                        counts[oc.state] += 1
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
