"""A real single-node Slurm cluster for the tests: munged, slurmctld and slurmd on localhost.

Everything the cluster writes (munge key and socket, ``slurm.conf``, controller state, spool,
logs) lives in one temporary folder, and clients find it through ``SLURM_CONF`` (see
:attr:`SlurmCluster.env`), so it never touches a system Slurm. The configuration is the one
that works without systemd or cgroups, as root: ``ProctrackType=proctrack/linuxproc``,
``TaskPlugin=task/none``, ``SelectType=select/cons_tres``; no accounting storage (no
``slurmdbd``): job state is read with ``squeue`` (``MinJobAge`` keeps finished jobs in the
controller's memory for an hour), as privrad does on any cluster without accounting.

:func:`install_problem` installs the Debian packages when they are missing (``make system-deps``,
the one list of system packages), or returns the one reason why that cannot happen here (not
root, no ``apt-get``, the install failed): the caller skips with it. ``start``/``stop`` are
idempotent; ``stop`` cancels every job, then stops the daemons it started (by process id), and
the daemons also die with the process that started them (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel", "scontrol", "srun")
PARTITION = "debug"


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def install_problem() -> str | None:
    """``None`` when Slurm and munge are installed (installing them with ``make system-deps`` if
    needed and possible); otherwise one sentence saying why they cannot be installed here."""
    if not sys.platform.startswith("linux"):
        return f"a test Slurm cluster needs Linux, this is {sys.platform}"
    if not missing_binaries():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return (f"Slurm is not installed ({', '.join(missing_binaries())} missing) and cannot be installed here: "
                "`make system-deps` needs root and apt-get")
    proc = subprocess.run(["make", "-s", "system-deps"], cwd=ROOT, capture_output=True, text=True)
    still = missing_binaries()
    if still:
        last = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [
            f"exit status {proc.returncode}, and the Debian packages count as installed but these commands are neither "
            "on PATH nor in /usr/sbin"]
        return f"`make system-deps` could not install Slurm ({', '.join(still)} still missing): {last[0]}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    """munged + slurmctld + slurmd for one node (this machine) with one partition, ``debug``."""

    def __init__(self, root: Path, *, cpus: int | None = None):
        self.root = Path(root)
        self.node = socket.gethostname().split(".")[0]
        self.cpus = cpus
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a client (sbatch, squeue, submitit, privrad) needs to reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    @property
    def running(self) -> bool:
        return bool(self.procs) and all(p.poll() is None for p in self.procs.values())

    # ---------------------------------------------------------------------------- start

    def start(self, timeout: float = 60) -> "SlurmCluster":
        if self.running:
            return self
        self.stop()
        try:
            self._start_munge()
            self._write_conf()
            self._spawn("slurmctld", [_sbin("slurmctld"), "-D", "-f", str(self.conf)])
            self._wait(lambda: self._ok(["scontrol", "ping"], "UP"), timeout, "slurmctld to answer `scontrol ping`")
            self._spawn("slurmd", [_sbin("slurmd"), "-D", "-f", str(self.conf), "-N", self.node])
            self._wait(lambda: self._ok(["sinfo", "-h", "-N", "-o", "%T"], "idle"), timeout, f"node {self.node} to be idle in sinfo")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munge(self) -> None:
        d = self.root / "munge"
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o711)  # munged wants its socket folder searchable by all
        key = d / "munge.key"
        if not key.exists():
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(os.urandom(1024))
        self.munge_socket = d / "munge.socket"
        self._spawn("munged", [_sbin("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={self.munge_socket}",
                               f"--pid-file={d / 'munged.pid'}", f"--log-file={d / 'munged.log'}", f"--seed-file={d / 'munged.seed'}"])
        self._wait(self.munge_socket.exists, 20, f"munged to create {self.munge_socket}")

    def _write_conf(self) -> None:
        r = self.root
        for sub in ("state", "spool", "log"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        hw = subprocess.run([_sbin("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
        fields = dict(f.split("=", 1) for f in hw.split() if "=" in f)
        cpus = self.cpus or int(fields.get("CPUs", os.cpu_count() or 1))
        memory = int(fields.get("RealMemory", 1024))
        lines = [
            "ClusterName=privradtest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
            f"AuthInfo=socket={self.munge_socket},cred_expire=10",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            # no systemd, no cgroups: track job processes by parent pid, no CPU binding
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=2,bf_interval=2",  # start pending (and requeued) jobs promptly
            # no accounting storage: sacct is unavailable, job state comes from squeue
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MinJobAge=3600",
            "MpiDefault=none",
            "ReturnToService=2",
            "MailProg=/bin/true",
            "KillWait=5",
            "InactiveLimit=0",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env={**os.environ, **self.env}, preexec_fn=_die_with_parent)
        log.close()

    def _ok(self, cmd: list[str], expect: str) -> bool:
        proc = subprocess.run(cmd, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=30)
        return proc.returncode == 0 and expect in proc.stdout

    def _wait(self, ready, timeout: float, what: str) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead[0]} exited with status {self.procs[dead[0]].returncode} while waiting for {what}:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.logs()}")

    def logs(self, lines: int = 20) -> str:
        out = []
        for f in sorted([*self.root.glob("*.out"), *(self.root / "log").glob("*.log")]):
            tail = f.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {f.name}\n" + "\n".join(tail))
        return "\n".join(out)

    # ---------------------------------------------------------------------------- use

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster (``run("squeue")``)."""
        return subprocess.run(list(cmd), env={**os.environ, **self.env}, capture_output=True, text=True, timeout=60, check=check)

    def job_ids(self) -> list[str]:
        """Jobs the controller knows that have not ended (pending, running, completing …)."""
        if "slurmctld" not in self.procs or self.procs["slurmctld"].poll() is not None:
            return []
        proc = self.run("squeue", "-h", "-o", "%i", check=False)
        return proc.stdout.split() if proc.returncode == 0 else []

    def cancel_all(self, timeout: float = 60) -> None:
        ids = self.job_ids()
        if ids:
            self.run("scancel", *ids, check=False)
            t0 = time.time()
            while self.job_ids() and time.time() - t0 < timeout:
                time.sleep(0.5)

    # ---------------------------------------------------------------------------- stop

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged (those this object started)."""
        if not self.procs:
            return
        with contextlib.suppress(Exception):
            self.cancel_all()
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.pop(name, None)
            if p is None or p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(15)
        self.procs.clear()
