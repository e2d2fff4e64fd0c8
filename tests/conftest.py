"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running single-node Slurm (see ``tests/slurm_cluster.py``), shared by the session and
    stopped at its end; skipped with one reason where Slurm cannot be installed."""
    from slurm_cluster import SlurmCluster, install_problem

    problem = install_problem()
    if problem:
        pytest.skip(problem)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
