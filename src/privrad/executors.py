"""Where a run executes: the seam between a sweep and the processes that run its notebooks.

A sweep hands an :class:`Executor` a list of :class:`Task` s and reads back one
:class:`Outcome` per task as they finish. :func:`execute_task` executes one run notebook with
papermill in a subprocess and places its result (the executed notebook into the run folder, or
into ``failed/``); every executor calls it, locally or on a cluster node.

* :class:`LocalExecutor`: papermill subprocesses on this machine, at most ``runs_per_gpu`` at
  once on each visible GPU (its *slots*: a run is only ever placed on a free slot; the others
  wait in the queue), or ``jobs`` at once with an even share of the CPU cores each on a machine
  without a GPU. On a GPU, each run gets an equal share of the GPU's free memory (checked before
  the first run starts) and a kernel started ahead of time (:class:`WarmKernel`).
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

# A kernel started ahead of its run: the driver starts the kernel, runs the warm-up code in it
# (silently: no output, no execution count, so the executed notebook is the same as from a cold
# kernel), prints "ready", then waits for one task on stdin and executes it with papermill in
# that kernel. EOF instead of a task shuts the kernel down.
_WARM_DRIVER = """
import json, logging, sys, time
t0 = time.time()
import papermill
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from traitlets.config import Config
logging.getLogger("papermill").setLevel(logging.WARNING)
kernel, cwd, warm_up, config = sys.argv[1:5]
km = AsyncKernelManager(kernel_name=kernel, config=Config(json.loads(config)))
run_sync(km.start_kernel)(cwd=cwd)

def silent(code):
    kc = km.client()
    kc.start_channels()
    try:
        run_sync(kc.wait_for_ready)(timeout=120)
        msg_id = kc.execute(code, silent=True, store_history=False)
        while True:
            reply = run_sync(kc.get_shell_msg)(timeout=600)
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"]["status"]
    finally:
        kc.stop_channels()

status = "ok"
try:
    if warm_up:
        status = silent(warm_up)
except Exception as exc:  # the notebook imports what it needs anyway; say so on stderr
    status = repr(exc)
print("PRIVRAD-READY " + json.dumps({"ready": True, "warm_up": status, "seconds": round(time.time() - t0, 3)}), flush=True)
line = sys.stdin.readline()
try:
    if line.strip():
        task = json.loads(line)
        if task.get("env"):  # the task's own variables (its progress file), known only now
            silent("import os; os.environ.update(" + repr(task["env"]) + ")")
        papermill.execute_notebook(task["notebook"], task["out"], parameters=task["parameters"], kernel_name=kernel,
                                   cwd=cwd, progress_bar=False, km=km,
                                   execution_timeout=float(task["timeout"]) if task["timeout"] else None)
finally:
    run_sync(km.shutdown_kernel)(now=True)
"""


class WarmKernel:
    """A papermill driver whose kernel is started, and warmed up, before its run is known.

    While one run of a slot executes, the slot's next kernel starts beside it and runs
    ``warm_up`` (e.g. the run notebook's imports), so the next run on that slot finds a ready
    kernel: kernel start and imports leave the run's critical path. The warm-up runs silently in
    the kernel's namespace; the notebook's own cells still run in full, so its outputs are those
    of a cold kernel. ``env`` is the slot's environment (its GPU), fixed when the kernel starts.
    """

    def __init__(self, kernel: str, cwd: str, warm_up: str, env: dict[str, str]):
        self.kernel, self.cwd, self.env = kernel, cwd, env
        self.proc = subprocess.Popen([sys.executable, "-c", _WARM_DRIVER, kernel, cwd, warm_up, json.dumps(KERNEL_CONFIG)],
                                     env={**os.environ, **env}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     preexec_fn=_pdeathsig if sys.platform.startswith("linux") else None)
        self.ready: dict | None = None

    def wait_ready(self) -> dict:
        """Block until the kernel is started and warm; returns the driver's ready line (seconds taken)."""
        lines = []
        while self.ready is None:
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            if line.startswith("PRIVRAD-READY "):
                self.ready = json.loads(line.split(" ", 1)[1])
            elif not line:  # the driver exited before its kernel was ready
                self.ready = {"ready": False, "error": _last_line("".join(lines)) or f"driver exited with {self.proc.poll()}"}
            else:  # the kernel's own messages (warnings on stderr)
                lines.append(line)
        return self.ready

    def run(self, task: Task, params_file: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
        """Execute ``task`` in this kernel (``env``: variables set in the kernel first); returns
        (exit status, driver output)."""
        job = {"notebook": task.notebook, "out": task.staging, "timeout": task.timeout_s, "env": env or {},
               "parameters": json.loads(params_file.read_text(encoding="utf-8"))}
        out, _ = self.proc.communicate(json.dumps(job) + "\n")
        return self.proc.returncode, out

    def close(self) -> None:
        """Shut the unused kernel down (EOF on its stdin)."""
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.proc.communicate("", timeout=30)
        if self.proc.poll() is None:  # pragma: no cover - a driver that does not exit
            self.proc.kill()


def execute_task(task: Task, env: dict[str, str] | None = None, *, kernel: WarmKernel | None = None,
                 slurm_job: bool = False) -> Outcome:
    """Execute one run notebook with papermill in a subprocess and place the result.

    ``kernel``: a :class:`WarmKernel` started ahead for this task's slot (its ``env`` is used);
    otherwise a fresh papermill process starts its own kernel.
    Success: the training core wrote a complete run folder (:func:`privrad.runs.run_state`)
    of the expected run id, and the executed notebook is renamed to ``run_dir/run.ipynb``.
    Failure: the notebook is kept as ``failed/<run_id>.ipynb`` with its error."""
    from privrad.runs import run_state

    t0 = time.time()
    staging, failed, run_dir = Path(task.staging), Path(task.failed), Path(task.run_dir)
    staging.parent.mkdir(parents=True, exist_ok=True)
    params_file = staging.with_suffix(".params.json")
    atomic_write_json(params_file, task.parameters)
    from privrad.progress import ENV as PROGRESS_ENV

    progress_env = {PROGRESS_ENV: task.progress} if task.progress else {}
    if kernel is not None and not kernel.wait_ready().get("ready"):  # its kernel did not start: start one here
        kernel.close()
        kernel = None
    if kernel is not None:  # a run's seconds include any wait for its kernel to be ready
        returncode, stdout = kernel.run(task, params_file, env=progress_env)
    else:
        # papermill's own CLI reads parameters as YAML 1.1 (``1e-05`` would arrive as a string): pass JSON.
        cmd = [sys.executable, "-c", _PAPERMILL_DRIVER, task.notebook, str(staging), str(params_file), task.kernel,
               task.cwd, str(task.timeout_s or ""), json.dumps(KERNEL_CONFIG)]
        proc = subprocess.run(cmd, env={**os.environ, **(env or {}), **progress_env}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              preexec_fn=(lambda: _pdeathsig(slurm_job)) if sys.platform.startswith("linux") else None)
        returncode, stdout = proc.returncode, proc.stdout
    params_file.unlink(missing_ok=True)
    if task.progress:
        Path(task.progress).unlink(missing_ok=True)
    seconds = round(time.time() - t0, 2)
    error = None
    if returncode != 0:
        killed = f"the notebook process was killed by {signal.Signals(-returncode).name}" if returncode < 0 else None
        error = notebook_error(staging) or killed or _last_line(stdout) or f"papermill exited with status {returncode}"
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
        atomic_write_text(failed.with_suffix(".log"), stdout[-20000:])
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


def gpu_memory_mb(gpus: Sequence[str]) -> dict[str, tuple[float, float]]:
    """``{gpu: (free MB, total MB)}`` of the given GPUs (indices or UUIDs, as in
    ``CUDA_VISIBLE_DEVICES``), read with ``nvidia-smi`` without creating a CUDA context here."""
    import shutil

    if not shutil.which("nvidia-smi"):
        raise ConfigError("cannot read the GPUs' free memory: nvidia-smi is not on PATH; install the NVIDIA driver "
                          "tools, or set the profile's gpu.memory_gb to null to start runs without the check.")
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,memory.free,memory.total", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=False).stdout
    rows = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            rows[parts[0]] = rows[parts[1]] = (float(parts[2]), float(parts[3]))
    missing = [g for g in gpus if g.strip() not in rows]
    if missing:
        raise ConfigError(f"nvidia-smi does not list GPU {missing[0]} (CUDA_VISIBLE_DEVICES); check the variable.")
    return {g: rows[g.strip()] for g in gpus}


#: The least GPU memory a run is given when a profile does not say what its runs need: a CUDA
#: context with torch's kernels loaded takes about 0.5-1 GB before any model.
MIN_GPU_MEMORY_GB = 1.0


@dataclass(frozen=True)
class Slot:
    """Where one run executes: a GPU and its slot number on it (``gpu`` None: a CPU slot)."""

    index: int
    gpu: str | None = None
    number: int = 0

    @property
    def label(self) -> str:
        return f"cpu:{self.number}" if self.gpu is None else f"gpu{self.gpu}:{self.number}"


class SlotPool:
    """Free slots, handed out one run each. ``acquire`` takes a free slot or waits (the run is
    queued) until one is released; a slot is never handed out twice at once, and releasing a
    slot that is not taken is refused (a bug)."""

    def __init__(self, slots: Sequence[Slot]):
        self.slots = list(slots)
        self._free = list(self.slots)
        self._cond = threading.Condition()

    def acquire(self, timeout: float | None = None) -> Slot | None:
        """A free slot, or None if none was released within ``timeout`` seconds (None: wait)."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._free), timeout=timeout):
                return None
            return self._free.pop(0)

    def release(self, slot: Slot) -> None:
        with self._cond:
            if slot in self._free or slot not in self.slots:
                raise RuntimeError(f"slot {slot.label} released but it was not taken")
            self._free.append(slot)
            self._cond.notify()

    @property
    def busy(self) -> list[Slot]:
        with self._cond:
            return [s for s in self.slots if s not in self._free]


class LocalExecutor(Executor):
    """Runs on this machine, each in its own papermill process.

    **With GPUs** (``gpus``; default: the visible ones) each GPU has ``runs_per_gpu`` slots and a
    run executes on a free slot only (:class:`SlotPool`; the others queue): ``CUDA_VISIBLE_DEVICES``
    names its GPU, ``PRIVRAD_GPU_MEMORY_GB`` its share of that GPU's memory (free memory ÷
    ``runs_per_gpu``, read before the first run; refused when a share is below ``gpu_memory_gb``,
    the memory one run needs), and ``OMP_NUM_THREADS`` its share of the CPU cores. ``jobs``
    (default: every slot) caps how many run at once. Kernels are started ahead (``prestart``,
    default on with GPUs; :class:`WarmKernel` with ``warm_up`` code).

    **Without a GPU** ``jobs`` run at once with an even share of the CPU cores each;
    ``runs_per_gpu`` means nothing there, and :attr:`notes` says so.
    """

    def __init__(self, jobs: int | None = None, gpus: Sequence[str] | None = None, *, runs_per_gpu: int = 1,
                 gpu_memory_gb: float | None = None, prestart: bool | None = None, warm_up: str = "",
                 memory_probe=gpu_memory_mb):
        if isinstance(runs_per_gpu, bool) or not isinstance(runs_per_gpu, int) or runs_per_gpu < 1:
            raise ConfigError(f"runs_per_gpu = {runs_per_gpu!r} is invalid; give a whole number ≥ 1 of runs to place on one GPU.")
        if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
            raise ConfigError(f"jobs = {jobs!r} is invalid; give a whole number ≥ 1 of runs to execute at once.")
        self.gpus = list(visible_gpus() if gpus is None else gpus)
        self.runs_per_gpu = runs_per_gpu
        self.gpu_memory_gb = gpu_memory_gb
        self.memory_probe = memory_probe
        self.notes: list[str] = []
        if self.gpus:
            self.slots = [Slot(k * len(self.gpus) + i, g, k) for k in range(runs_per_gpu) for i, g in enumerate(self.gpus)]
            self.jobs = min(jobs or len(self.slots), len(self.slots))
            if jobs and jobs > len(self.slots):
                self.notes.append(f"--jobs {jobs} but {len(self.gpus)} GPU(s) × runs_per_gpu {runs_per_gpu} = "
                                  f"{len(self.slots)} slots: at most {len(self.slots)} runs at once, the others wait.")
        else:
            self.jobs = jobs or 1
            self.slots = [Slot(i, None, i) for i in range(self.jobs)]
            if runs_per_gpu > 1:
                self.notes.append(f"runs_per_gpu = {runs_per_gpu} has no effect here: no GPU is visible, so {self.jobs} "
                                  f"run(s) execute at once (--jobs), each on its share of the {os.cpu_count()} CPU cores.")
        self.prestart = bool(self.gpus) if prestart is None else bool(prestart)
        self.warm_up = warm_up
        self.memory_share_gb: dict[str, float] = {}

    def check_memory(self) -> dict[str, float]:
        """Each GPU's free memory ÷ ``runs_per_gpu`` (GB): the share each of its runs gets.
        Refused in one sentence when a share is below what one run needs (``gpu_memory_gb``)."""
        if not self.gpus:
            return {}
        need = self.gpu_memory_gb if self.gpu_memory_gb is not None else MIN_GPU_MEMORY_GB
        shares = {}
        for gpu, (free_mb, total_mb) in self.memory_probe(self.gpus).items():
            share = free_mb / 1024 / self.runs_per_gpu
            if share < need:
                fit = int(free_mb / 1024 // need)
                raise ConfigError(
                    f"GPU {gpu} has {free_mb / 1024:.1f} GB free of {total_mb / 1024:.1f} GB, but runs_per_gpu = "
                    f"{self.runs_per_gpu} runs needing {need:g} GB each (gpu.memory_gb) take {need * self.runs_per_gpu:g} GB; "
                    + (f"lower runs_per_gpu to {fit}" if fit >= 1 else "free that GPU") + " (or --runs-per-gpu).")
            shares[gpu] = share
        self.memory_share_gb = shares
        return shares

    def _env(self, slot: Slot | int) -> dict[str, str]:
        if isinstance(slot, int):
            slot = self.slots[slot % len(self.slots)]
        threads = str(max(1, (os.cpu_count() or 1) // max(1, min(self.jobs, len(self.slots)))))
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PRIVRAD_SLOT": slot.label}
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.gpu
            if slot.gpu in self.memory_share_gb:
                env["PRIVRAD_GPU_MEMORY_GB"] = f"{self.memory_share_gb[slot.gpu]:.3f}"
        return env

    def run(self, tasks: Sequence[Task], on_start: Callable[[Task], None] | None = None) -> Iterator[Outcome]:
        tasks = list(tasks)
        if not tasks:
            return
        if self.gpus and not self.memory_share_gb:
            self.check_memory()
        pool = SlotPool(self.slots[: self.jobs] if not self.gpus else self.slots)
        warm: dict[Slot, WarmKernel] = {}
        lock = threading.Lock()
        kernel_of = {t.run_id: (t.kernel, t.cwd) for t in tasks}
        remaining = [len(tasks)]

        def take_kernel(slot: Slot, task: Task) -> WarmKernel | None:
            if not self.prestart:
                return None
            with lock:
                k = warm.pop(slot, None)
                remaining[0] -= 1
                more = remaining[0] > 0
            if k is None or (k.kernel, k.cwd) != kernel_of[task.run_id]:
                if k is not None:
                    k.close()
                k = WarmKernel(task.kernel, task.cwd, self.warm_up, self._env(slot))
            if more:  # the slot's next kernel starts now, beside this run
                with lock:
                    warm[slot] = WarmKernel(task.kernel, task.cwd, self.warm_up, self._env(slot))
            return k

        def work(task: Task) -> Outcome:
            slot = pool.acquire()
            try:
                kernel = take_kernel(slot, task)
                if on_start is not None:
                    on_start(task)
                return execute_task(task, self._env(slot), kernel=kernel)
            finally:
                pool.release(slot)

        with cf.ThreadPoolExecutor(max_workers=self.jobs) as executor:
            try:
                futures = [executor.submit(work, t) for t in tasks]
                for fut in cf.as_completed(futures):
                    yield fut.result()
            finally:  # before the worker threads exit (a driver dies with the thread that started it)
                with lock:
                    for k in warm.values():
                        k.close()
                    warm.clear()


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
                        if on_start is not None and rid not in started and job.paths.result_pickle.exists():
                            started.add(rid)  # it ran and ended between two looks: its start comes before its end
                            on_start(by_id[rid])
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
