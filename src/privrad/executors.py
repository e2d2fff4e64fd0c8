"""Where a run executes: the seam between a sweep and the processes that run its notebooks.

A sweep hands an :class:`Executor` a list of :class:`Task` s and reads back one
:class:`Outcome` per task as they finish. :func:`execute_task` executes one run notebook with
papermill in a subprocess and places its result (the executed notebook into the run folder, or
into ``failed/``); every executor calls it, locally or on a cluster node.

* :class:`LocalExecutor`: ``jobs`` papermill subprocesses at once on this machine, one GPU (or
  an even share of the CPU cores) per job.
* A Slurm executor (submitit) fits the same seam: it submits :func:`execute_task` per task (or
  as a job array) and yields the outcomes of ``job.result()`` as jobs complete.

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


def _pdeathsig() -> None:  # pragma: no cover - runs in the child
    """Linux: the papermill child dies with its parent, so SIGKILL of a sweep stops its runs
    (their kernels exit on their own when papermill is gone)."""
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


def execute_task(task: Task, env: dict[str, str] | None = None) -> Outcome:
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
                          text=True, preexec_fn=_pdeathsig if sys.platform.startswith("linux") else None)
    params_file.unlink(missing_ok=True)
    if task.progress:
        Path(task.progress).unlink(missing_ok=True)
    seconds = round(time.time() - t0, 2)
    error = None
    if proc.returncode != 0:
        error = notebook_error(staging) or _last_line(proc.stdout) or f"papermill exited with status {proc.returncode}"
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
