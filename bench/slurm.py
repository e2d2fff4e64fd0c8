"""Slurm vs local: the wall time of the smoke study through ``--executor slurm`` beside a local run.

    python bench/slurm.py                 # 2 rounds, interleaved: local, Slurm, local, Slurm
    python bench/slurm.py --rounds 3

Brings up the tests' one-node Slurm (``tests/slurm_cluster.py``: munged, slurmctld, slurmd in a
temporary folder; root and the Debian packages ``slurm-wlm`` and ``munge`` needed), simulates the
smoke data once, then runs the smoke study with each executor in turn, each into a fresh results
folder: locally with ``--jobs 2``, and through Slurm with the smoke profile's ``slurm:`` block (one
CPU per run, two runs at once) — the same parallelism and the same threads per run. Rounds are
interleaved so that a change in the machine's load hits both executors alike.

Prints, per sweep, the wall time of ``privrad study run`` and the sum of the runs' own seconds
(papermill, measured inside the job); for Slurm also each job's wall time (Slurm's StartTime to
EndTime, 1 s resolution) minus its run's own seconds — submitit's start and result; and the Slurm
overhead: the wall-time difference per sweep and per run, and — robust to a loaded machine, which
slows the runs themselves by different amounts from sweep to sweep — each sweep's wall time beyond
what two runs at once need at least (its runs' own seconds ÷ 2): queueing, scheduling, polling,
the last run alone. Writes the rows to ``bench/out/slurm.json``. Never asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def sweep(results: Path, data: Path, executor: str, env: dict[str, str]) -> dict:
    args = ["study", "run", "--profile", "smoke", "--results-dir", str(results), "--quiet",
            "--set", f"mimic-cxr.data_dir={data}/mimic-cxr", "--set", f"simulated-ct-rate.data_dir={data}/ct-rate"]
    args += ["--executor", "slurm"] if executor == "slurm" else ["--jobs", "2"]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "privrad", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{executor} sweep failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")
    rows = json.loads((results / "smoke" / "study.json").read_text())["points"]
    out = {"executor": executor, "wall_s": wall, "runs": len(rows), "run_s": sum(r["seconds"] for r in rows)}
    if executor == "slurm":  # inside each job: its wall time (Slurm's StartTime → EndTime) minus the run's own
        out["job_overhead_s"] = [job_seconds(r["job"], env) - r["seconds"] for r in rows]
    return out


def job_seconds(job: str, env: dict[str, str]) -> float:
    from datetime import datetime

    text = subprocess.run(["scontrol", "show", "job", "-o", job], env=env, capture_output=True, text=True).stdout
    fields = dict(f.split("=", 1) for f in text.split() if "=" in f)
    start, end = (datetime.fromisoformat(fields[k]) for k in ("StartTime", "EndTime"))
    return (end - start).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from slurm_cluster import SlurmCluster, install_problem

    problem = install_problem()
    if problem:
        raise SystemExit(f"no Slurm here: {problem}")
    with tempfile.TemporaryDirectory(prefix="privrad-bench-slurm-") as tmp:
        tmp = Path(tmp)
        cluster = SlurmCluster(tmp / "cluster").start()
        try:
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                   **cluster.env}
            data = tmp / "data"
            from privrad import study

            sets = [f"mimic-cxr.data_dir={data}/mimic-cxr", f"simulated-ct-rate.data_dir={data}/ct-rate"]
            study.prepare_data(study.load_profile("smoke", sets=sets, root=ROOT))  # the data, simulated once
            out = []
            for r in range(args.rounds):
                for executor in ("local", "slurm"):
                    res = sweep(tmp / f"{executor}-{r}", data, executor, env)
                    res["load"] = os.getloadavg()[0]
                    out.append(res)
                    extra = (f", per job: Slurm wall − run's own time median {statistics.median(res['job_overhead_s']):.1f} s"
                             if "job_overhead_s" in res else "")
                    print(f"round {r}: {executor:5s} wall {res['wall_s']:6.1f} s, runs' own time {res['run_s']:6.1f} s "
                          f"({res['runs']} runs), load {res['load']:.1f}{extra}", flush=True)
        finally:
            cluster.stop()
    from common import OUT_DIR

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "slurm.json").write_text(json.dumps(out, indent=1))
    print(summary(out))


AT_ONCE = 2  # --jobs 2 locally; the smoke profile's slurm.array_parallelism


def summary(out: list[dict]) -> str:
    """The medians over interleaved rounds: wall times, their difference, and each executor's wall
    time beyond ``runs' own seconds ÷ AT_ONCE``."""
    local = [o for o in out if o["executor"] == "local"]
    slurm = [o for o in out if o["executor"] == "slurm"]
    pairs = [s["wall_s"] - l["wall_s"] for l, s in zip(local, slurm)]
    beyond = {ex: [o["wall_s"] - o["run_s"] / AT_ONCE for o in rows] for ex, rows in (("local", local), ("slurm", slurm))}
    extra = [s - l for l, s in zip(beyond["local"], beyond["slurm"])]
    n = out[0]["runs"]
    med = statistics.median
    lines = [f"\nsmoke study ({n} runs, {AT_ONCE} at once), median of {len(pairs)} interleaved rounds:",
             f"  local --jobs {AT_ONCE}       {med(o['wall_s'] for o in local):6.1f} s   (beyond runs' own ÷ {AT_ONCE}: {med(beyond['local']):5.1f} s)",
             f"  --executor slurm     {med(o['wall_s'] for o in slurm):6.1f} s   (beyond runs' own ÷ {AT_ONCE}: {med(beyond['slurm']):5.1f} s)",
             f"  Slurm overhead       {med(pairs):+6.1f} s per sweep ({med(pairs) / n:+.1f} s per run), "
             f"ratio {med(s['wall_s'] / l['wall_s'] for l, s in zip(local, slurm)):.2f}",
             f"  Slurm overhead beyond the runs' own time: {med(extra):+.1f} s per sweep ({med(extra) / n:+.1f} s per run)"]
    if slurm and "job_overhead_s" in slurm[0]:
        per_job = [x for o in slurm for x in o["job_overhead_s"]]
        lines.append(f"  inside each job (Slurm wall − run's own): median {med(per_job):.1f} s, max {max(per_job):.1f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
