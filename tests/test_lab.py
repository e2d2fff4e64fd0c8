"""`make lab`: JupyterLab serves the repository's notebooks with the privrad kernel."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str):
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.read()


@pytest.mark.slow  # a JupyterLab server and a kernel: `make test`, not `make test-fast`
def test_make_lab_serves_the_run_notebook_with_the_privrad_kernel(tmp_path):
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    args = f"--no-browser --ip=127.0.0.1 --IdentityProvider.token={token}"
    proc = subprocess.Popen(["make", "-s", "lab", f"LAB_PORT={port}", f"LAB_ARGS={args}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            try:
                status, _ = _get(f"{base}/api/status", token)
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.stdout.read()
                assert time.time() - t0 < 120, "JupyterLab did not start within 120 s"
                time.sleep(0.5)
        specs = json.loads(_get(f"{base}/api/kernelspecs", token)[1])
        assert "privrad" in specs["kernelspecs"], sorted(specs["kernelspecs"])
        assert specs["kernelspecs"]["privrad"]["spec"]["language"] == "python"
        for name in ("run.ipynb", "lab.ipynb"):
            model = json.loads(_get(f"{base}/api/contents/notebooks/{name}", token)[1])
            assert model["type"] == "notebook" and model["content"]["cells"], name
        status, page = _get(f"{base}/lab/tree/notebooks/run.ipynb", token)
        assert status == 200 and b"JupyterLab" in page
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
