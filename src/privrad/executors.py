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
* :class:`SlurmExecutor` (:mod:`privrad.executors_slurm`): one Slurm job per task, submitted as one
  job array through submitit; each job calls :func:`execute_task` on its node (``privrad study run
  --executor slurm``).

Where runs go on this machine's GPUs (slots, memory shares) is :mod:`privrad.gpus`.

Whether a run is *complete* is never decided here: :func:`privrad.runs.run_state` is the one rule.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from privrad.errors import ConfigError
from privrad.gpus import MIN_GPU_MEMORY_GB, Slot, SlotPool, gpu_memory_mb, visible_gpus  # noqa: F401 (public here too)
from privrad.io import atomic_write_json, atomic_write_text

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

def papermill_command(notebook: str | os.PathLike, out: str | os.PathLike, params_file: str | os.PathLike, kernel: str,
                      cwd: str | os.PathLike, timeout_s: float | None = None) -> list[str]:
    """The command that executes ``notebook`` into ``out`` with papermill in a fresh kernel, its
    parameters read from the JSON ``params_file`` (papermill's own CLI reads parameters as YAML 1.1:
    ``1e-05`` would arrive as a string), with :data:`KERNEL_CONFIG`."""
    return [sys.executable, "-c", _PAPERMILL_DRIVER, str(notebook), str(out), str(params_file), kernel, str(cwd),
            str(timeout_s or ""), json.dumps(KERNEL_CONFIG)]


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
        cmd = papermill_command(task.notebook, staging, params_file, task.kernel, task.cwd, task.timeout_s)
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


def __getattr__(name: str) -> Any:
    """The Slurm executor lives in :mod:`privrad.executors_slurm` (imported on first use: submitit
    is optional); ``privrad.executors.SlurmExecutor`` still names it."""
    if name in ("SlurmExecutor", "SlurmRun", "MAX_TIMEOUTS"):
        from privrad import executors_slurm

        return getattr(executors_slurm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
