"""Running a study's runs as Slurm jobs, through submitit.

``privrad study run --executor slurm`` submits the runs that are not complete as one job array
(one array task per run, at most ``array_parallelism`` at once) and waits for them, exactly as
the local executor waits for its processes: the run ids, the cache, the sweep lock and the
"complete" rule are the sweep's own, and each job executes the same papermill driver
(:func:`privrad.study.execute_task`) on a node that sees the shared results folder.

Why this shape:

* **submitit, not a home-made runner.** submitit writes the sbatch script, pickles the call,
  submits the array, collects each job's result and log, and requeues a job when Slurm
  announces its time limit (``--signal=USR2@…``): a run restarts from its beginning (a
  notebook cannot resume mid-training), at most ``MAX_TIMEOUTS`` times. A preempted job, or one
  requeued by an administrator, restarts under the same job id. Either way a run is counted
  once: by the one result its last attempt writes.
* **Job state without accounting storage.** ``sacct`` needs ``slurmdbd`` (and a database),
  which many small clusters do not run, and submitit's own watcher then never sees a
  cancelled job end. privrad reads state with ``squeue --states=all`` (the controller keeps
  ended jobs for ``MinJobAge``, 300 s by default) and asks ``sacct`` only for jobs that
  ``squeue`` no longer knows; a job that neither knows has ended. Whether a run succeeded is
  never read from Slurm: it is the run folder and the result file the job wrote.
* **Checked before anything is submitted.** The options are validated when the profile is
  read (:meth:`SlurmConfig.from_dict`); the cluster is asked (``sinfo``, then ``sbatch
  --test-only`` with the very script that will be submitted) before the first job exists.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from privrad.errors import ConfigError

SLURM_KEYS = ("partition", "account", "gpus_per_node", "cpus_per_task", "mem_gb", "time", "min_run_time",
              "array_parallelism", "sbatch_args", "setup")
MAX_TIMEOUTS = 3  # a run killed by its time limit is requeued at most this many times
# states in which a job may still run (everything else has ended)
LIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
                         "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "PREEMPTED", "STOPPED", "RESV_DEL_HOLD"})
QUEUED_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"})

_TIME = re.compile(r"^(?:(?P<d>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$")


def minutes(value: Any, *, key: str) -> int:
    """A Slurm time (``90``, ``"90"``, ``"1:30:00"``, ``"2-00:00:00"`` …) in whole minutes,
    rounded up, as Slurm itself counts time limits."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"slurm.{key} = {value!r} is not a Slurm time; write minutes (90) or \"HH:MM:SS\" (\"1:30:00\").")
    m = _TIME.match(str(value).strip())
    if not m:
        raise ConfigError(f"slurm.{key} = {value!r} is not a Slurm time; write minutes (90), \"HH:MM:SS\" (\"1:30:00\") or \"D-HH:MM:SS\".")
    g = {k: int(v) for k, v in m.groupdict().items() if v is not None}
    if "d" in g:
        seconds = ((g["d"] * 24 + g["dh"]) * 60 + g.get("dm", 0)) * 60 + g.get("ds", 0)
    elif "c" in g:  # hours:minutes:seconds
        seconds = (g["a"] * 60 + g["b"]) * 60 + g["c"]
    elif "b" in g:  # minutes:seconds
        seconds = g["a"] * 60 + g["b"]
    else:
        seconds = g["a"] * 60
    return math.ceil(seconds / 60)


def _hms(total_minutes: int) -> str:
    return f"{total_minutes // 60}:{total_minutes % 60:02d}:00"


@dataclass(frozen=True)
class SlurmConfig:
    """A profile's ``slurm:`` block (overridden by ``--set slurm.KEY=VALUE``): what each run's
    job asks the cluster for. The names are Slurm's (``sbatch --partition``, ``--account``,
    ``--gpus-per-node``, ``--cpus-per-task``, ``--time``) or submitit's (``mem_gb``,
    ``array_parallelism``)."""

    partition: str | None = None  # None: the cluster's default partition
    account: str | None = None
    gpus_per_node: int = 0  # GPUs per run; 0 = a CPU job (the run does not see any GPU)
    cpus_per_task: int = 1  # CPU cores per run (torch uses this many threads)
    mem_gb: float | None = None  # memory per run; None = the partition's default
    time: str = "1:00:00"  # time limit of one run
    min_run_time: str | None = None  # how long the profile's shortest run takes (a `time` below it is refused)
    array_parallelism: int = 32  # runs at once (the job array's %N)
    sbatch_args: tuple[str, ...] = ()  # more sbatch options, long form: ["--qos=high", "--constraint=a100"]
    setup: tuple[str, ...] = ()  # shell lines run before each run (e.g. "module load cuda/12.4")
    gpu_profile: bool = field(default=False, compare=False)  # the profile file itself asks for GPUs

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, *, where: str, gpu_profile: bool = False) -> "SlurmConfig":
        """Validate a ``slurm:`` block; every problem is one sentence naming the key."""
        raw = dict(raw or {})
        unknown = sorted(set(raw) - set(SLURM_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown slurm key(s) {', '.join(unknown)}; known keys are: {', '.join(sorted(SLURM_KEYS))}.")
        for key in ("partition", "account"):
            if raw.get(key) is not None and (not isinstance(raw[key], str) or not raw[key].strip()):
                raise ConfigError(f"{where}: slurm.{key} = {raw[key]!r} must be a name such as \"gpu\" (or null for the cluster's default).")
        for key, low in (("gpus_per_node", 0), ("cpus_per_task", 1), ("array_parallelism", 1)):
            if key in raw and (isinstance(raw[key], bool) or not isinstance(raw[key], int) or raw[key] < low):
                raise ConfigError(f"{where}: slurm.{key} = {raw[key]!r} must be an integer ≥ {low}.")
        if raw.get("mem_gb") is not None and (isinstance(raw["mem_gb"], bool) or not isinstance(raw["mem_gb"], (int, float)) or not raw["mem_gb"] > 0):
            raise ConfigError(f"{where}: slurm.mem_gb = {raw['mem_gb']!r} must be a positive number of gigabytes (or null for the partition's default).")
        for key in ("sbatch_args", "setup"):
            value = raw.get(key, [])
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: slurm.{key} must be a list of strings, e.g. [\"--qos=high\"].")
            raw[key] = tuple(value)
        for arg in raw.get("sbatch_args", ()):
            if not re.match(r"^--[a-z][a-z0-9-]*(=.+)?$", arg):
                raise ConfigError(f"{where}: slurm.sbatch_args entry {arg!r} is not a long sbatch option; write it as --name=value (e.g. --constraint=a100).")
            if arg.split("=", 1)[0][2:].replace("-", "_") in SLURM_KEYS + ("array", "output", "error", "signal", "time", "mem", "gpus", "gres"):
                raise ConfigError(f"{where}: slurm.sbatch_args entry {arg!r} sets what privrad sets itself; use the slurm key for it instead ({', '.join(SLURM_KEYS[:7])}).")
        cfg = cls(**{k: (str(v) if k in ("time", "min_run_time") and v is not None else v) for k, v in raw.items()},
                  gpu_profile=gpu_profile)
        time_min = minutes(cfg.time, key="time")
        if time_min < 1:
            raise ConfigError(f"{where}: slurm.time = {cfg.time!r} must be at least one minute.")
        if cfg.min_run_time is not None and time_min < minutes(cfg.min_run_time, key="min_run_time"):
            raise ConfigError(
                f"{where}: slurm.time = {cfg.time} is shorter than this profile's shortest expected run "
                f"(slurm.min_run_time = {cfg.min_run_time}), so every job would hit its time limit; raise slurm.time."
            )
        if gpu_profile and cfg.gpus_per_node == 0:
            raise ConfigError(
                f"{where}: this profile runs on GPUs (its slurm block asks for gpus_per_node ≥ 1) but slurm.gpus_per_node = 0; "
                "ask for at least one GPU per run, or use a CPU profile such as default."
            )
        return cfg

    @property
    def time_min(self) -> int:
        return minutes(self.time, key="time")

    def submitit_parameters(self) -> dict[str, Any]:
        """Parameters for ``submitit.SlurmExecutor.update_parameters``."""
        extra: dict[str, Any] = {"requeue": True}  # a preempted job (or a failed node) comes back
        for arg in self.sbatch_args:
            name, _, value = arg[2:].partition("=")
            extra[name] = value if value else True
        p: dict[str, Any] = {
            "time": self.time_min,
            "cpus_per_task": self.cpus_per_task,
            "array_parallelism": self.array_parallelism,
            # Slurm sends USR2 this long before the time limit: submitit requeues the job then
            "signal_delay_s": max(15, min(90, self.time_min * 15)),
            "stderr_to_stdout": True,
            "additional_parameters": extra,
        }
        if self.partition:
            p["partition"] = self.partition
        if self.account:
            p["account"] = self.account
        if self.gpus_per_node:
            p["gpus_per_node"] = self.gpus_per_node
        if self.mem_gb is not None:
            p["mem"] = f"{int(self.mem_gb)}GB" if float(self.mem_gb).is_integer() else f"{int(self.mem_gb * 1024)}MB"
        if self.setup:
            p["setup"] = list(self.setup)
        return p

    def describe(self) -> str:
        parts = [f"partition {self.partition or '(default)'}"]
        if self.account:
            parts.append(f"account {self.account}")
        parts += [f"{self.gpus_per_node} GPU(s)", f"{self.cpus_per_task} CPU(s)"]
        if self.mem_gb is not None:
            parts.append(f"{self.mem_gb:g} GB")
        parts += [f"time {_hms(self.time_min)}", f"{self.array_parallelism} at once"]
        return ", ".join(parts)


# ------------------------------------------------------------------------------- the cluster


class SlurmUnreachable(ConfigError):
    """Slurm's commands are missing or its controller does not answer."""


def _slurm_tool(name: str) -> None:
    if shutil.which(name) is None:
        raise SlurmUnreachable(
            f"Slurm is not reachable from this machine: `{name}` is not on PATH; run privrad on a Slurm login node "
            "(or use --executor local)."
        )


def _slurm(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
    _slurm_tool(cmd[0])
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmUnreachable(f"Slurm is not reachable: `{' '.join(cmd[:2])}` did not answer within {timeout:.0f} s; check the cluster's controller.") from None


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


def partitions() -> dict[str, dict[str, str]]:
    """The cluster's partitions as ``sinfo`` reports them: name → availability, GPUs (gres),
    time limit; the default partition has ``default = "yes"``."""
    proc = _slurm("sinfo", "-h", "-o", "%P|%a|%G|%l")
    if proc.returncode != 0:
        raise SlurmUnreachable(
            f"Slurm is not reachable: `sinfo` failed ({_first_line(proc.stderr) or f'exit status {proc.returncode}'}); "
            "check that the controller is up and that this machine's Slurm configuration (SLURM_CONF) points at it."
        )
    out: dict[str, dict[str, str]] = {}
    for line in proc.stdout.splitlines():
        name, avail, gres, limit = (line.split("|") + ["", "", "", ""])[:4]
        default = name.endswith("*")
        name = name.rstrip("*")
        entry = out.setdefault(name, {"avail": avail, "gres": "", "time_limit": limit, "default": "yes" if default else "no"})
        if gres and gres != "(null)":
            entry["gres"] = ",".join(filter(None, [entry["gres"], gres]))
    return out


def _limit_minutes(limit: str) -> int | None:
    if not limit or limit in ("infinite", "UNLIMITED", "n/a"):
        return None
    try:
        return minutes(limit, key="time")
    except ConfigError:
        return None


def check_cluster(cfg: SlurmConfig, script: str) -> None:
    """Ask the cluster whether it would run these jobs, before anything is submitted:
    Slurm reachable, the partition known (and up), GPUs where GPUs are asked for, the time
    limit within the partition's, and ``sbatch --test-only`` of the very script to submit."""
    parts = partitions()
    if cfg.partition is not None and cfg.partition not in parts:
        raise ConfigError(f"unknown Slurm partition {cfg.partition!r}; this cluster's partitions are: {', '.join(sorted(parts)) or '(none)'} (set slurm.partition).")
    name = cfg.partition or next((n for n, p in parts.items() if p["default"] == "yes"), None)
    if name is None:
        raise ConfigError(f"this cluster has no default partition; set slurm.partition to one of: {', '.join(sorted(parts))}.")
    part = parts[name]
    if part["avail"] not in ("up", ""):
        raise ConfigError(f"Slurm partition {name} is {part['avail']}, not up; choose another partition (slurm.partition) or wait until it is up.")
    if cfg.gpus_per_node and "gpu" not in part["gres"]:
        raise ConfigError(f"Slurm partition {name} has no GPUs (its nodes list no gpu gres) but slurm.gpus_per_node = {cfg.gpus_per_node}; set slurm.partition to a GPU partition.")
    limit = _limit_minutes(part["time_limit"])
    if limit is not None and cfg.time_min > limit:
        raise ConfigError(f"slurm.time = {cfg.time} exceeds partition {name}'s time limit {part['time_limit']}; lower slurm.time or choose another partition.")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "test.sh"
        path.write_text(script)
        proc = _slurm("sbatch", "--test-only", str(path))
    if proc.returncode != 0:
        msg = "; ".join(ln.strip() for ln in proc.stderr.strip().splitlines() if ln.strip()) or f"exit status {proc.returncode}"
        raise ConfigError(f"Slurm refuses the jobs ({cfg.describe()}): {msg}; fix the slurm settings of the profile or --set slurm.KEY=VALUE.")


def job_states(job_ids: Iterable[str]) -> dict[str, str] | None:
    """Slurm's state of each job (``"123"`` or an array task ``"123_4"``): ``squeue`` for the
    jobs the controller holds (pending, running, and ended within ``MinJobAge``), then
    ``sacct`` for the others where accounting storage exists. A job neither knows is absent
    from the answer. ``None`` when Slurm could not be asked this time."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    arrays = sorted({i.split("_")[0] for i in ids})
    try:
        proc = _slurm("squeue", "--states=all", "-h", "-r", "-o", "%i|%T", "-j", ",".join(arrays))
    except ConfigError:
        return None
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
        return None
    states: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        jid, _, state = line.strip().partition("|")
        states[jid] = state.split()[0] if state else "UNKNOWN"
    unknown = [i for i in ids if i not in states]
    if unknown:
        acct = _slurm("sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(sorted({i.split("_")[0] for i in unknown})))
        if acct.returncode == 0:
            for line in acct.stdout.splitlines():
                jid, _, state = line.strip().partition("|")
                if jid in unknown:
                    states[jid] = state.split()[0] if state else "UNKNOWN"
    return {i: states[i] for i in ids if i in states}


def cancel(job_ids: Iterable[str]) -> None:
    ids = sorted(set(job_ids))
    if ids and shutil.which("scancel"):
        subprocess.run(["scancel", *ids], capture_output=True, text=True, timeout=60)


# ------------------------------------------------------------------------------- the executor


_FORWARDED = ("PRIVRAD_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")


class SlurmRun:
    """What one array task executes on its node: the sweep's papermill driver for one run.

    Checkpointable in submitit's sense: when Slurm announces the time limit, submitit calls
    :meth:`checkpoint` and requeues the job, which then starts this run again from its
    beginning (a half-trained run is never resumed or counted)."""

    def __init__(self, task: Any, gpus: int):
        self.task = task
        self.gpus = gpus
        # what a run reads from the environment, as the sweep saw it (a cluster may start jobs with
        # a bare environment: sbatch --export=NONE)
        self.env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED) or k == "PYTHONHASHSEED"}

    def __call__(self) -> Any:
        from privrad.study import execute_task

        threads = os.environ.get("SLURM_CPUS_PER_TASK", "1")
        env = {**self.env, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        if not self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU job must not use a GPU it was not given
        return execute_task(self.task, env, slurm_job=True)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


def _tail(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[-1][:500] if lines else ""


class SlurmExecutor:
    """Submit tasks as one Slurm job array through submitit and yield their outcomes as jobs end.

    ``adopt`` maps run ids to jobs of an earlier sweep that are still queued or running: they
    are waited for instead of submitted again. ``notify(event, run_id, **fields)`` hears
    ``submitted`` / ``adopted`` / ``requeued``; ``on_status(counts, jobs)`` hears the counts of
    queued / running / done / failed runs after each look at the queue."""

    def __init__(self, config: SlurmConfig, folder: str | os.PathLike, *, job_name: str = "privrad",
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
        """Everything the cluster can say about these jobs before any is submitted."""
        for tool in ("sbatch", "squeue", "sinfo", "srun"):
            _slurm_tool(tool)
        check_cluster(self.config, self.script(max(1, n_tasks)))

    def run(self, tasks: Sequence[Any]) -> Iterator[Any]:
        import submitit

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
                        counts["done" if oc.status == "ok" else "failed"] += 1
                        changed = True
                        yield oc
                if pending and time.time() >= next_look:
                    now = job_states(j.job_id for j in pending.values())
                    for rid, job in pending.items() if now is not None else ():
                        # a job Slurm no longer knows has ended (after a first moment in which it may not show yet)
                        new_state = now.get(job.job_id, "ENDED" if time.time() - t0 > 30 else state.get(rid, "PENDING"))
                        if state.get(rid) in LIVE_STATES - QUEUED_STATES and new_state in QUEUED_STATES:  # started, then queued again
                            self.notify("requeued", rid, job=job.job_id, state=new_state)
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

    def _outcome(self, task: Any, job: Any, last_state: str | None, seconds: float) -> Any:
        from privrad.study import Outcome

        log = str(job.paths.stdout)
        if job.paths.result_pickle.exists():
            try:
                oc = job.result()
            except Exception as exc:  # the job raised, or submitit gave up after MAX_TIMEOUTS requeues
                oc = Outcome(task.run_id, "failed", round(seconds, 2), f"Slurm job {job.job_id}: {_tail(exc)}")
        else:
            what = last_state or "ENDED"
            oc = Outcome(task.run_id, "failed", round(seconds, 2), f"Slurm job {job.job_id} ended {what} before the run finished")
        if oc.status != "ok":
            _keep_failed_notebook(task)
        oc.job, oc.log = job.job_id, log
        return oc


def _array_ids(jobs: Iterable[Any]) -> str:
    return ", ".join(sorted({j.job_id.split("_")[0] for j in jobs}, key=int))


def _keep_failed_notebook(task: Any) -> None:
    """A job that died mid-run leaves its half-executed notebook in staging: keep it where failed
    runs' notebooks go (``failed/<run_id>.ipynb``), as the local executor does."""
    staging, failed = Path(task.staging), Path(task.failed)
    if staging.exists():
        failed.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, failed)
    Path(staging).with_suffix(".params.json").unlink(missing_ok=True)
