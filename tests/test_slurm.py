"""The Slurm executor: options checked before anything is submitted, and the smoke study run end
to end on a real single-node Slurm (``tests/slurm_cluster.py``: munged, slurmctld, slurmd) —
equal to the local run, resumable after ``scancel``, requeued without double counting."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, events, metrics, run_dirs, run_privrad, write_profile
from privrad import profiles, study
from privrad.errors import ConfigError
from privrad.config import SlurmConfig, minutes
from privrad.executors_slurm import SlurmExecutor
from privrad.runs import read_run


# ----------------------------------------------------------------------------- no cluster needed


def test_slurm_times_are_read_as_slurm_writes_them(tmp_path):
    assert [minutes(v, key="time") for v in (90, "90", "1:30:00", "1:30", "2-00:00:00", "1-12", "0:10:00")] == \
        [90, 90, 90, 2, 2880, 2160, 10]
    # unquoted in YAML, 1:30:00 is a Slurm time, not YAML 1.1's base-60 integer 5400
    path = tmp_path / "p.yml"
    raw = (ROOT / "studies" / "smoke.yml").read_text().replace('time: "0:15:00"', "time: 1:30:00")
    path.write_text(raw)
    assert profiles.load_profile(str(path), root=ROOT).slurm_config().time_min == 90
    assert profiles.load_profile("smoke", root=ROOT, sets=["slurm.time=2:00:00"]).slurm_config().time_min == 120


@pytest.mark.parametrize("sets, message", [
    (["slurm.gpus=1"], r"unknown slurm key\(s\) gpus; known keys are: account, array_parallelism, cpus_per_task"),
    (["slurm.cpus_per_task=0"], r"slurm.cpus_per_task = 0 must be an integer ≥ 1"),
    (["slurm.time=soon"], r"slurm.time = 'soon' is not a Slurm time"),
    (["slurm.sbatch_args=[-C a100]"], r"sbatch_args entry '-C a100' is not a long sbatch option; write it as --name=value"),
    (["slurm.sbatch_args=[--time=5]"], r"sbatch_args entry '--time=5' sets what privrad sets itself"),
    (["slurm.mem_gb=-1"], r"slurm.mem_gb = -1 must be a positive number of gigabytes"),
])
def test_bad_slurm_options_are_one_sentence_when_the_profile_is_read(sets, message):
    with pytest.raises(ConfigError, match=message):
        profiles.load_profile("smoke", root=ROOT, sets=sets)


def test_a_gpu_profile_with_zero_gpus_and_a_time_limit_below_the_shortest_run_are_refused(tmp_path):
    gpu = write_profile(tmp_path, "smoke-gpu.yml", slurm={"gpus_per_node": 1, "time": "1:00:00", "min_run_time": "0:20:00"})
    assert profiles.load_profile(str(gpu), root=ROOT).slurm_config().gpus_per_node == 1
    with pytest.raises(ConfigError, match=r"this profile runs on GPUs \(its slurm block asks for gpus_per_node ≥ 1\) "
                                          r"but slurm.gpus_per_node = 0; ask for at least one GPU per run"):
        profiles.load_profile(str(gpu), root=ROOT, sets=["slurm.gpus_per_node=0"])
    with pytest.raises(ConfigError, match=r"slurm.time = 10 is shorter than this profile's shortest expected run "
                                          r"\(slurm.min_run_time = 0:20:00\), so every job would hit its time limit"):
        profiles.load_profile(str(gpu), root=ROOT, sets=["slurm.time=10"])


def test_the_options_become_the_sbatch_script_submitit_submits(tmp_path):
    cfg = SlurmConfig.from_dict({"partition": "gpu", "account": "lab", "gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 32,
                                 "time": "2:00:00", "array_parallelism": 4, "sbatch_args": ["--qos=high", "--exclusive"],
                                 "setup": ["module load cuda/12.4"]}, where="test")
    script = SlurmExecutor(cfg, tmp_path / "slurm", job_name="privrad-paper").script(108)
    for line in ("--partition=gpu", "--account=lab", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=32GB", "--time=120",
                 "--array=0-107%4", "--qos=high", "--exclusive", "--requeue", "--signal=USR2@90", "--job-name=privrad-paper"):
        assert f"#SBATCH {line}\n" in script
    assert "module load cuda/12.4\n" in script and f"{tmp_path / 'slurm'}/%A_%a/%A_%a_0_log.out" in script


def test_jobs_is_for_the_local_executor():
    profile = profiles.load_profile("smoke", root=ROOT)
    with pytest.raises(ConfigError, match=r"--jobs sets how many local processes run at once; with --executor slurm set "
                                          r"slurm.array_parallelism instead"):
        study.run_study(profile, jobs=2, executor="slurm")


# ----------------------------------------------------------------------------- a real Slurm

def all_jobs(cluster) -> list[str]:
    return cluster.run("squeue", "--states=all", "-h", "-o", "%i").stdout.split()


def live_jobs(cluster) -> dict[str, str]:
    out = cluster.run("squeue", "-h", "-r", "-o", "%i|%T").stdout.split()
    return dict(line.split("|") for line in out)


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the sweep ended (status {proc.returncode}) before {what}: {proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def sweep_in_background(results: Path, smoke: dict, cluster) -> subprocess.Popen:
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **cluster.env}
    return subprocess.Popen([sys.executable, "-m", "privrad", "study", "run", "--profile", "smoke", "--executor", "slurm",
                             "--results-dir", str(results), *smoke["sets"], "--quiet"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_ctrl_c_as_in_a_terminal)


def _ctrl_c_as_in_a_terminal() -> None:
    """The sweep gets Ctrl-C (SIGINT) as a command typed in a terminal does, also where the test
    suite itself ignores SIGINT (a suite started in the background by a non-interactive shell: its
    children inherit the ignored signal, and Python then never turns it into KeyboardInterrupt)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def slurm_smoke(smoke, slurm_cluster, tmp_path_factory):
    """The smoke study through Slurm (one array of 8 jobs, 2 at once), on the local run's data."""
    results = tmp_path_factory.mktemp("slurm-smoke") / "results"
    t0 = time.time()
    proc = run_privrad("study", "run", "--profile", "smoke", "--executor", "slurm", "--results-dir", str(results), *smoke["sets"],
                       env=slurm_cluster.env)
    seconds = time.time() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr[-5000:] + slurm_cluster.logs()
    print(f"\nsmoke study through Slurm: {seconds:.1f} s (local, --jobs 2: {smoke['seconds']:.1f} s)\n{proc.stdout}")
    return {"results": results, "stdout": proc.stdout, "stderr": proc.stderr, "seconds": seconds}


@pytest.mark.slow
def test_the_smoke_study_through_slurm_equals_the_local_run(slurm_smoke, smoke, slurm_cluster):
    results = slurm_smoke["results"]
    assert "8 complete (8 run now, 0 cached), 0 failed" in slurm_smoke["stdout"]
    local = run_dirs(smoke["results"], placed=True)
    ran = run_dirs(results, placed=True)
    assert len(ran) == 8 and set(ran) <= set(local)
    for rid, d in ran.items():
        assert metrics(d) == metrics(local[rid]), f"run {rid} differs between Slurm and local"
    # one array: every run has its job id and log path, in the summary and in the manifest
    rows = json.loads((results / "smoke" / "study.json").read_text())["points"]
    arrays = {r["job"].split("_")[0] for r in rows}
    assert len(arrays) == 1 and sorted(int(r["job"].split("_")[1]) for r in rows) == list(range(8))
    for r in rows:
        assert r["state"] == "complete" and Path(r["log"]).is_file() and f"{r['job']} " in slurm_smoke["stdout"] and r["log"] in slurm_smoke["stdout"]
    log = events(results)
    assert [e["event"] for e in log].count("run_submitted") == 8 and [e["event"] for e in log].count("run_complete") == 8
    # the progress display: the runs-done bar with Slurm's counts and the array's job id, and under it each
    # running run's line, read from the progress file its job writes into the shared results folder
    shown = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "\n", slurm_smoke["stderr"]).replace("\r", "\n")
    lines = [ln.strip() for ln in shown.splitlines()]
    assert any(ln.startswith("study smoke:") and "/8" in ln and "running" in ln and f"Slurm job {arrays.pop()}" in ln
               for ln in lines), "\n".join(lines[-40:])
    progress = [ln for ln in lines if re.search(r"\| epoch \d+/\d+ · step \d+/\d+ · ETA (\d+:\d\d|\?)$", ln)]
    assert progress, "\n".join(lines[-40:])  # a job's steps, seen from the login node
    # run_start is logged when Slurm runs the job, not at submission: after every run_submitted, before that
    # run's end, and (two jobs at once) at most three starts before the first end
    sweep = [(e["event"], e.get("run_id")) for e in log[: [e["event"] for e in log].index("sweep_end")]]
    starts = [i for i, (e, _) in enumerate(sweep) if e == "run_start"]
    ends = [i for i, (e, _) in enumerate(sweep) if e in ("run_complete", "run_failed")]
    assert len(starts) == 8 and min(starts) > max(i for i, (e, _) in enumerate(sweep) if e == "run_submitted")
    assert all(sweep.index(("run_start", rid)) < sweep.index(("run_complete", rid)) for rid in ran), sweep
    assert sum(i < min(ends) for i in starts) <= 3, sweep
    assert not live_jobs(slurm_cluster)
    # the cache is the local one: nothing runs again, nothing is submitted
    n_jobs = len(all_jobs(slurm_cluster))
    again = run_privrad("study", "run", "--profile", "smoke", "--executor", "slurm", "--results-dir", str(results), *smoke["sets"],
                        env=slurm_cluster.env)
    assert again.returncode == 0 and "8 complete (0 run now, 8 cached), 0 failed" in again.stdout
    assert len(all_jobs(slurm_cluster)) == n_jobs
    status = run_privrad("study", "status", "--profile", "smoke", "--results-dir", str(results), env=slurm_cluster.env)
    assert status.returncode == 0 and "complete: 8" in status.stdout


def copy_without(results: Path, dst: Path, n_missing: int, smoke: dict) -> tuple[Path, list[str]]:
    """A copy of a finished Slurm sweep with the run folders of ``n_missing`` mimic-cxr runs removed."""
    shutil.copytree(results, dst)
    removed = []
    for rid, d in sorted(run_dirs(dst, placed=True).items()):
        if len(removed) < n_missing and read_run(d).config.dataset == "mimic-cxr":
            shutil.rmtree(d)
            removed.append(rid)
    return dst, removed


def running_jobs(slurm_cluster, sweep) -> list[str]:
    """The job ids Slurm runs now, waited for (up to 120 s) while ``sweep`` is alive."""
    return wait_for(lambda: [j for j, s in live_jobs(slurm_cluster).items() if s == "RUNNING"], 120, "a running job", sweep)


@pytest.mark.slow
def test_scancel_then_rerun_completes_only_the_missing_runs(slurm_smoke, smoke, slurm_cluster, tmp_path):
    results, removed = copy_without(slurm_smoke["results"], tmp_path / "results", 2, smoke)
    sweep = sweep_in_background(results, smoke, slurm_cluster)
    try:
        running = running_jobs(slurm_cluster, sweep)
        cancelled = next(r["run_id"] for r in json.loads((results / "smoke" / "study.json").read_text())["points"]
                         if r.get("job") == running[0])
        # its notebook has started (what the book's exercise cancels: a run part-way through)
        wait_for((results / "smoke" / ".notebooks" / f"{cancelled}.ipynb").is_file, 180, "the run's notebook to start", sweep)
        status = run_privrad("study", "status", "--profile", "smoke", "--results-dir", str(results), env=slurm_cluster.env)
        row = next(line for line in status.stdout.splitlines() if line.rstrip().endswith(f"{running[0]} RUNNING"))
        assert status.returncode == 0 and row.split()[0] == "missing", status.stdout  # on disk: not there yet
        slurm_cluster.run("scancel", running[0])
        out, _ = sweep.communicate(timeout=600)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 1, out
    assert "7 complete (1 run now, 6 cached), 1 failed" in out
    failed = [line for line in out.splitlines() if line.strip().startswith("failed")]
    assert len(failed) == 1 and running[0] in failed[0] and "CANCELLED" in failed[0]
    assert len(run_dirs(results, placed=True)) == 7
    status = run_privrad("study", "status", "--profile", "smoke", "--results-dir", str(results), env=slurm_cluster.env)
    row = next(line for line in status.stdout.splitlines() if line.rstrip().endswith(f"{running[0]} CANCELLED"))
    assert row.split()[0] == "failed" and "failed: 1, complete: 7" in status.stdout, status.stdout
    assert (results / "smoke" / "failed" / f"{cancelled}.ipynb").is_file()  # its half-executed notebook
    again = run_privrad("study", "run", "--profile", "smoke", "--executor", "slurm", "--results-dir", str(results), *smoke["sets"],
                        env=slurm_cluster.env)
    assert again.returncode == 0 and "8 complete (1 run now, 7 cached), 0 failed" in again.stdout, again.stdout + again.stderr[-3000:]
    local = run_dirs(smoke["results"], placed=True)
    for rid in removed:
        assert metrics(run_dirs(results, placed=True)[rid]) == metrics(local[rid]), f"run {rid} differs after scancel + re-run"
    assert not live_jobs(slurm_cluster)
    status = run_privrad("study", "status", "--profile", "smoke", "--results-dir", str(results), env=slurm_cluster.env)
    assert "complete: 8" in status.stdout and "CANCELLED" not in status.stdout, status.stdout


@pytest.mark.slow
def test_a_preempted_and_a_timed_out_job_are_requeued_and_counted_once(slurm_smoke, smoke, slurm_cluster, tmp_path):
    results, removed = copy_without(slurm_smoke["results"], tmp_path / "results", 2, smoke)
    staged = results / "smoke" / ".notebooks"
    n_events = len(events(results))
    sweep = sweep_in_background(results, smoke, slurm_cluster)
    try:
        # both runs have started their notebooks (so submitit's signal handler is in place)
        wait_for(lambda: all((staged / f"{rid}.ipynb").is_file() for rid in removed), 180, "both notebooks to start", sweep)
        jobs = {r["run_id"]: r["job"] for r in json.loads((results / "smoke" / "study.json").read_text())["points"] if r.get("job")}
        preempted, timed_out = jobs[removed[0]], jobs[removed[1]]
        slurm_cluster.run("scontrol", "requeue", preempted)  # what preemption (PreemptMode=REQUEUE) does
        slurm_cluster.run("scancel", "--signal=USR2", timed_out)  # what Slurm sends before the time limit
        out, _ = sweep.communicate(timeout=600)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, out
    assert "8 complete (2 run now, 6 cached), 0 failed" in out
    log = [e for e in events(results)[n_events:] if e.get("run_id") in removed]
    requeued = {e["run_id"] for e in log if e["event"] == "run_requeued"}
    assert requeued == set(removed)
    assert sorted(e["run_id"] for e in log if e["event"] == "run_complete") == sorted(removed)  # once each
    assert not (results / "smoke" / "failed").exists()
    local = run_dirs(smoke["results"], placed=True)
    rows = {r["run_id"]: r for r in json.loads((results / "smoke" / "study.json").read_text())["points"]}
    for rid in removed:
        assert metrics(run_dirs(results, placed=True)[rid]) == metrics(local[rid]), f"run {rid} differs after its requeue"
        assert Path(rows[rid]["log"]).read_text().count("Starting with") == 2  # two attempts, one result


@pytest.mark.slow
def test_bad_slurm_settings_are_refused_before_anything_is_submitted(slurm_cluster, smoke, tmp_path):
    gpu_profile = write_profile(tmp_path, "smoke-gpu.yml", slurm={"gpus_per_node": 1, "min_run_time": "0:20:00", "time": "1:00:00"})
    dead = tmp_path / "dead.conf"
    conf = Path(slurm_cluster.env["SLURM_CONF"]).read_text()
    port = next(line for line in conf.splitlines() if line.startswith("SlurmctldPort="))
    from slurm_cluster import _free_port

    dead.write_text(conf.replace(port, f"SlurmctldPort={_free_port()}"))
    cases = [
        ("smoke", ["--set", "slurm.partition=gpu"], {},
         "unknown Slurm partition 'gpu'; this cluster's partitions are: debug (set slurm.partition)."),
        ("smoke", ["--set", "slurm.gpus_per_node=1"], {},
         "Slurm partition debug has no GPUs (its nodes list no gpu gres) but slurm.gpus_per_node = 1; set slurm.partition to a GPU partition."),
        (str(gpu_profile), ["--set", "slurm.gpus_per_node=0"], {},
         "but slurm.gpus_per_node = 0; ask for at least one GPU per run, or use a CPU profile such as default."),
        (str(gpu_profile), ["--set", "slurm.time=10"], {},
         "slurm.time = 10 is shorter than this profile's shortest expected run (slurm.min_run_time = 0:20:00)"),
        ("smoke", ["--set", "slurm.mem_gb=100000"], {}, "Slurm refuses the jobs (partition (default), 0 GPU(s), 1 CPU(s), 100000 GB"),
        ("smoke", [], {"SLURM_CONF": str(dead)}, "Slurm is not reachable: `sinfo` failed (slurm_load_partitions: Unable to contact slurm controller"),
    ]
    before = all_jobs(slurm_cluster)
    for profile, sets, env, message in cases:
        results = tmp_path / "results"
        proc = run_privrad("study", "run", "--profile", profile, "--executor", "slurm", "--results-dir", str(results),
                           *smoke["sets"], *sets, env={**slurm_cluster.env, **env})
        assert proc.returncode == 2, (sets, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("privrad: error: ") and message in lines[0], (sets, proc.stderr)
        assert not results.exists(), f"{sets} left {list(results.rglob('*'))}"
    assert all_jobs(slurm_cluster) == before


@pytest.mark.slow
def test_a_sweep_killed_while_its_jobs_run_is_resumed_by_waiting_for_them(slurm_smoke, smoke, slurm_cluster, tmp_path):
    results, removed = copy_without(slurm_smoke["results"], tmp_path / "results", 1, smoke)
    n_events = len(events(results))
    sweep = sweep_in_background(results, smoke, slurm_cluster)
    try:
        wait_for(lambda: (results / "smoke" / ".notebooks" / f"{removed[0]}.ipynb").is_file(), 180, "the run to start", sweep)
    finally:
        sweep.kill()  # SIGKILL: the job goes on running on the cluster
        sweep.wait()
    job = next(e["job"] for e in events(results)[n_events:] if e["event"] == "run_submitted")
    assert live_jobs(slurm_cluster).get(job) == "RUNNING"
    # the job is held (SIGSTOP) until the next Slurm sweep has taken it over, however slow the machine
    slurm_cluster.run("scontrol", "suspend", job)
    again = None
    try:
        # the local executor must not run it a second time beside the Slurm job
        local = run_privrad("study", "run", "--profile", "smoke", "--results-dir", str(results), *smoke["sets"], env=slurm_cluster.env)
        assert local.returncode == 2 and f"1 run(s) of this study are still queued or running on Slurm (e.g. {removed[0]} as job {job})" in local.stderr
        n_jobs = len(all_jobs(slurm_cluster))
        again = sweep_in_background(results, smoke, slurm_cluster)
        wait_for(lambda: any(e["event"] == "run_adopted" for e in events(results)[n_events:]), 180, "the sweep to adopt the job", again)
    finally:
        slurm_cluster.run("scontrol", "resume", job, check=False)
        if again is not None:
            try:
                out, _ = again.communicate(timeout=600)
            finally:
                if again.poll() is None:
                    again.kill()
    assert again.returncode == 0 and "8 complete (1 run now, 7 cached), 0 failed" in out, out
    assert len(all_jobs(slurm_cluster)) == n_jobs  # waited for, not submitted again
    log = events(results)[n_events:]
    assert [e["job"] for e in log if e["event"] == "run_adopted"] == [job]
    assert [e["event"] for e in log].count("run_submitted") == 1
    assert metrics(run_dirs(results, placed=True)[removed[0]]) == metrics(run_dirs(smoke["results"], placed=True)[removed[0]])


@pytest.mark.slow
def test_ctrl_c_cancels_the_sweeps_jobs(slurm_smoke, smoke, slurm_cluster, tmp_path):
    import signal

    # four runs to do, two at once: when one runs, the sweep still waits for the others (with one,
    # a tiny run could finish between the test seeing it run and the signal, and the sweep end well)
    results, removed = copy_without(slurm_smoke["results"], tmp_path / "results", 4, smoke)
    sweep = sweep_in_background(results, smoke, slurm_cluster)
    try:
        running_jobs(slurm_cluster, sweep)
        sweep.send_signal(signal.SIGINT)
        out, _ = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 130 and "privrad: interrupted" in out, out
    wait_for(lambda: not live_jobs(slurm_cluster), 60, "the sweep's jobs, running and pending, to be cancelled")
    assert set(removed) - set(run_dirs(results, placed=True))  # runs whose jobs were cancelled never came back
