"""The test cluster itself: a real slurmctld/slurmd pair that runs jobs and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess

import pytest

from slurm_cluster import SlurmCluster, install_problem

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_cluster_runs_a_job_and_start_stop_are_idempotent(tmp_path):
    problem = install_problem()
    if problem:
        pytest.skip(problem)
    cluster = SlurmCluster(tmp_path / "slurm")
    cluster.start()
    pids = [p.pid for p in cluster.procs.values()]
    try:
        assert cluster.start() is cluster and [p.pid for p in cluster.procs.values()] == pids  # already running
        assert cluster.run("sinfo", "-h", "-o", "%P %a %T").stdout.split() == ["debug*", "up", "idle"]
        assert cluster.run("srun", "hostname").stdout.strip() == cluster.node
        # a batch job that would outlive the cluster is cancelled by stop()
        job = cluster.run("sbatch", "--parsable", "--wrap", "sleep 300", "-o", str(tmp_path / "j.out")).stdout.strip()
        assert job in cluster.job_ids()
    finally:
        cluster.stop()
    assert not any(_alive(pid) for pid in pids)
    cluster.stop()  # a second stop is a no-op
    # restarting after a stop gives a working cluster again
    cluster.start()
    try:
        assert cluster.run("srun", "true").returncode == 0
    finally:
        cluster.stop()
    assert subprocess.run(["pgrep", "-f", str(cluster.conf)], capture_output=True).stdout == b""
