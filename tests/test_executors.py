"""Where runs execute: GPU slots (several runs per GPU), the memory check, kernels started ahead.

The slot tests run real papermill executions of a tiny notebook that records where it ran; a
list of GPU names stands for the machine's GPUs (on this CPU machine ``CUDA_VISIBLE_DEVICES=0``
changes nothing), and the free-memory reading (``nvidia-smi`` on a GPU machine, exercised by
``bench/gpu.sh``) is passed in.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import nbformat
import pytest

from privrad import executors, gpus, profiles, study
from privrad.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def _probe(free_gb: float, total_gb: float = 80.0):
    return lambda gpus: {g: (free_gb * 1024, total_gb * 1024) for g in gpus}


def test_the_executor_seam_keeps_its_public_names():
    """The Slurm executor and the GPU slots live in their own modules; privrad.executors still names them."""
    from privrad import executors_slurm

    assert executors.SlurmExecutor is executors_slurm.SlurmExecutor and executors.SlurmRun is executors_slurm.SlurmRun
    assert (executors.SlotPool, executors.visible_gpus, executors.gpu_memory_mb) == (gpus.SlotPool, gpus.visible_gpus, gpus.gpu_memory_mb)
    assert issubclass(executors.SlurmExecutor, executors.Executor)


def test_a_run_is_never_placed_on_an_occupied_slot():
    pool = gpus.SlotPool([gpus.Slot(0, "0", 0), gpus.Slot(1, "0", 1)])
    a, b = pool.acquire(), pool.acquire()
    assert {a.label, b.label} == {"gpu0:0", "gpu0:1"}
    assert pool.acquire(timeout=0.2) is None  # both slots taken: the third run waits, it is not placed
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire()))
    waiter.start()
    time.sleep(0.2)
    assert not got  # still queued
    pool.release(a)
    waiter.join(5)
    assert got == [a]  # the queued run gets the slot that was freed, and only then
    with pytest.raises(RuntimeError, match="released but it was not taken"):
        pool.release(gpus.Slot(5, "0", 5))
    pool.release(b)
    with pytest.raises(RuntimeError, match="released but it was not taken"):
        pool.release(b)


def _recording_notebook(path: Path) -> Path:
    params = nbformat.v4.new_code_cell("run_dir = None\nvalue = 0\nlog = None")
    params.metadata["tags"] = ["parameters"]
    body = ("import json, os, sys, time\n"
            f"sys.path.insert(0, {str(HERE)!r})\n"
            "from study_helpers import fabricate_run\n"
            "t0 = time.time()\n"
            "time.sleep(1.5)\n"
            "rec = {'run': os.path.basename(run_dir), 'start': t0, 'end': time.time(), 'slot': os.environ.get('PRIVRAD_SLOT'),\n"
            "       'gpu': os.environ.get('CUDA_VISIBLE_DEVICES'), 'share': os.environ.get('PRIVRAD_GPU_MEMORY_GB'),\n"
            "       'threads': os.environ.get('OMP_NUM_THREADS'), 'warm': 'privrad_warm_marker' in sys.modules}\n"
            "open(log, 'a').write(json.dumps(rec) + '\\n')\n"
            "fabricate_run(None, run_dir=run_dir)")
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def _tasks(tmp_path: Path, n: int) -> list[executors.Task]:
    nb = _recording_notebook(tmp_path / "nb.ipynb")
    res = tmp_path / "res"
    out = []
    for i in range(n):
        rid = f"run{i:02d}"
        out.append(executors.Task(run_id=rid, label=rid, notebook=str(nb),
                                  parameters={"run_dir": str(res / rid), "value": i, "log": str(tmp_path / "log.jsonl")},
                                  run_dir=str(res / rid), staging=str(res / ".notebooks" / f"{rid}.ipynb"),
                                  failed=str(res / "failed" / f"{rid}.ipynb"), kernel="python3", cwd=str(tmp_path)))
    return out


@pytest.mark.slow  # papermill and warm kernels: `make test`, not `make test-fast`
def test_runs_beyond_the_gpu_slots_wait_and_each_run_gets_its_memory_share(tmp_path):
    """One GPU, runs_per_gpu = 2, 5 runs, --jobs 3: never more than 2 at once on the GPU, each
    on its own slot, with half the GPU's free memory and a kernel warmed up ahead."""
    (tmp_path / "privrad_warm_marker.py").write_text("")
    warm = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import privrad_warm_marker"
    ex = executors.LocalExecutor(3, gpus=["0"], runs_per_gpu=2, gpu_memory_gb=8, memory_probe=_probe(40.0),
                                 prestart=True, warm_up=warm)
    assert ex.jobs == 2 and any("at most 2 runs at once" in n for n in ex.notes)
    outcomes = list(ex.run(_tasks(tmp_path, 5)))
    assert [o.state for o in outcomes] == ["complete"] * 5, [o.error for o in outcomes]
    recs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(recs) == 5
    assert {r["gpu"] for r in recs} == {"0"} and {r["share"] for r in recs} == {"20.000"}
    assert {r["slot"] for r in recs} == {"gpu0:0", "gpu0:1"}
    for r in recs:  # at any run's start, at most one other run is in flight, and on the other slot
        others = [o for o in recs if o is not r and o["start"] <= r["start"] < o["end"]]
        assert len(others) <= 1 and all(o["slot"] != r["slot"] for o in others)
    assert sum(r["warm"] for r in recs) >= 3  # every run after a slot's first finds its kernel warm
    nb = json.loads((tmp_path / "res" / "run04" / "run.ipynb").read_text())
    assert [c["execution_count"] for c in nb["cells"]] == [1, 2, 3]  # (papermill adds a cell) the silent warm-up left no trace


def test_a_gpu_too_full_for_its_runs_is_refused_before_anything_starts(tmp_path):
    ex = executors.LocalExecutor(gpus=["0"], runs_per_gpu=4, gpu_memory_gb=4, memory_probe=_probe(10.0))
    with pytest.raises(ConfigError, match=r"GPU 0 has 10.0 GB free of 80.0 GB, but runs_per_gpu = 4 runs needing 4 GB "
                                          r"each .* take 16 GB; lower runs_per_gpu to 2"):
        list(ex.run(_tasks(tmp_path, 1)))
    assert not (tmp_path / "res").exists()
    assert executors.LocalExecutor(gpus=["0"], runs_per_gpu=2, gpu_memory_gb=4, memory_probe=_probe(10.0)).check_memory() == {"0": 5.0}


def test_runs_per_gpu_means_nothing_without_a_gpu_and_says_so():
    ex = executors.LocalExecutor(gpus=[], runs_per_gpu=3)
    assert ex.jobs == 1 and ex.check_memory() == {}
    assert ex.notes == [f"runs_per_gpu = 3 has no effect here: no GPU is visible, so 1 run(s) execute at once (--jobs), "
                        f"each on its share of the {__import__('os').cpu_count()} CPU cores."]
    env = ex._env(0)
    assert "CUDA_VISIBLE_DEVICES" not in env and "PRIVRAD_GPU_MEMORY_GB" not in env
    with pytest.raises(ConfigError, match=r"runs_per_gpu = 0 is invalid"):
        executors.LocalExecutor(gpus=[], runs_per_gpu=0)


def test_local_executor_spreads_slots_over_gpus_first():
    ex = executors.LocalExecutor(gpus=["0", "1"], runs_per_gpu=2)
    assert [s.label for s in ex.slots] == ["gpu0:0", "gpu1:0", "gpu0:1", "gpu1:1"] and ex.jobs == 4
    assert [ex._env(s)["CUDA_VISIBLE_DEVICES"] for s in ex.slots] == ["0", "1", "0", "1"]
    cpu = executors.LocalExecutor(2, gpus=[])
    assert "CUDA_VISIBLE_DEVICES" not in cpu._env(0) and int(cpu._env(0)["OMP_NUM_THREADS"]) >= 1


def test_the_profile_gpu_block_is_checked_and_reaches_the_executor(tmp_path):
    paper = profiles.load_profile("paper", root=ROOT)
    ex = study.local_executor(paper)
    assert ex.runs_per_gpu == paper.gpu["runs_per_gpu"] and ex.gpu_memory_gb == paper.gpu["memory_gb"]
    assert study.local_executor(paper, runs_per_gpu=1).runs_per_gpu == 1  # --runs-per-gpu wins
    src = (ROOT / "studies" / "smoke.yml").read_text()
    for block, message in [("gpu: {runs_per_gpu: 0}", r"gpu.runs_per_gpu = 0 must be a whole number ≥ 1"),
                           ("gpu: {memory_gb: -2}", r"gpu.memory_gb = -2 must be a positive number"),
                           ("gpu: {slots: 2}", r"unknown gpu key\(s\) slots; known keys are: memory_gb, runs_per_gpu")]:
        path = tmp_path / "p.yml"
        path.write_text(src + "\n" + block + "\n")
        with pytest.raises(ConfigError, match=message):
            profiles.load_profile(str(path), root=ROOT)
