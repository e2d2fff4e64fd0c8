"""What privrad asks a Slurm cluster: its partitions, whether it would run a sweep's jobs, and
the state of jobs. The Slurm executor (:class:`privrad.executors_slurm.SlurmExecutor`) and ``privrad
study status`` use it.

* **Job state without accounting storage.** ``sacct`` needs ``slurmdbd`` and a database, which
  many small clusters (and the tests' one-node cluster) do not run; submitit's own watcher then
  never sees a cancelled job end ("status may be inaccurate"). privrad reads state with
  ``squeue --states=all`` — the controller keeps a job while it is queued or running and for
  ``MinJobAge`` (300 s by default) after it ended — and asks ``sacct`` only for the jobs that
  ``squeue`` no longer knows, where accounting exists; a job that neither knows has ended.
  Whether a run succeeded is never read from Slurm: the run folder and the result file its job
  wrote decide.
* **Asked before anything is submitted.** :func:`check_cluster` asks ``sinfo`` (partition known
  and up, GPUs where GPUs are asked for, the time limit within the partition's) and then
  ``sbatch --test-only`` with the very script that will be submitted: every refusal is one
  sentence, and no job or file exists yet.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable

from privrad.config import SlurmConfig, minutes
from privrad.errors import ConfigError

# states in which a job may still run (every other state means it has ended)
LIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
                         "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "PREEMPTED", "STOPPED", "RESV_DEL_HOLD"})
QUEUED_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"})


class SlurmUnreachable(ConfigError):
    """Slurm's commands are missing or its controller does not answer."""


def require(name: str) -> None:
    """A Slurm command must be on PATH (else: Slurm is not reachable from here)."""
    if shutil.which(name) is None:
        raise SlurmUnreachable(
            f"Slurm is not reachable from this machine: `{name}` is not on PATH; run privrad on a Slurm login node "
            "(or use --executor local)."
        )


def _slurm(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
    require(cmd[0])
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


def live(jobs: dict[str, str]) -> dict[str, str]:
    """The entries of ``{run_id: job_id}`` whose job is still queued or running."""
    states = job_states(jobs.values()) or {}
    return {rid: jid for rid, jid in jobs.items() if states.get(jid) in LIVE_STATES}


def describe(job_ids: Iterable[str]) -> dict[str, str]:
    """``"12_3 RUNNING"`` for each job id (``ENDED`` once Slurm has forgotten it), for ``study status``."""
    states = job_states(job_ids)
    return {j: f"{j} {'(Slurm not reachable)' if states is None else states.get(j, 'ENDED')}" for j in job_ids}
