"""Study benchmark: wall time of a study (``smoke``, ``default``) split into its phases.

    python bench/study.py --profile smoke
    python bench/study.py --profile default          # what `make book` runs
    python bench/study.py --profile smoke --results-dir /tmp/r --skip-book

Runs ``privrad study run`` and ``privrad book build`` as a user does (subprocesses, the
``privrad`` kernel, a fresh results folder), then splits the time with what the study records
— its structured log ``<results>/<profile>/study.jsonl`` (data simulation seconds, seconds per
papermill run) and each run folder's ``config.json`` ``runtime`` (prepare = tokenize + model
load, train, evaluate) — and a few measurements from outside:

* **calibration**: ``privrad.train.train`` calibrates the noise inside its timed span, so the
  benchmark re-times ``calibrate_noise_multiplier`` for each distinct (ε, δ, q, steps) of the
  study and moves that out of "training";
* **tokenization vs model load**: the prepare span holds both; they are re-timed once per
  (dataset, tokenizer, max_length) and per model, and the prepare time split in proportion;
* **papermill + kernel**: a run's papermill seconds minus everything its run folder accounts
  for (kernel start, imports, reading the dataset, the notebook's own cells); an empty-notebook
  papermill execution gives the pure kernel-start part;
* **statistics**: ``privrad.stats`` over the run folders (load, summaries, paper table, tests);
* **book build**: ``privrad book build`` (analysis + data notebooks via papermill, Jupyter Book).

Phases are summed over runs; with ``--jobs`` > 1 they overlap and exceed the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from privrad.runs import read_run  # noqa: E402
from privrad.stats import run_folders as stats_run_folders  # noqa: E402

ROOT = common.BENCH_DIR.parent


def _privrad(*args: str, env=None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "privrad", *args], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})})
    return time.perf_counter() - t0, p


def kernel_start_seconds(kernel: str | None = None, repeats: int = 2) -> float:
    """Seconds papermill needs to execute a one-cell notebook (start + stop the kernel)."""
    import nbformat
    import papermill

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    nb.metadata["kernelspec"] = {"name": kernel or "privrad", "display_name": "privrad", "language": "python"}
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "empty.ipynb"
        nbformat.write(nb, src)
        for _ in range(repeats):
            t0 = time.perf_counter()
            papermill.execute_notebook(str(src), str(Path(tmp) / "out.ipynb"), kernel_name=kernel or "privrad",
                                       progress_bar=False)
            times.append(time.perf_counter() - t0)
    return min(times)


def _events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


def outside_timings(run_dirs: list[Path]) -> dict:
    """Calibration per distinct privacy setting; tokenization and model load per distinct input."""
    from privrad.data import load_dataset
    from privrad.data.tokenize import tokenize_dataset
    from privrad.models import build_model, load_tokenizer
    from privrad.accounting import calibrate_noise_multiplier

    calib, tok, build, datasets = {}, {}, {}, {}
    for rd in run_dirs:
        res = read_run(rd)
        info, c, pr = res.info, res.info["config"], res.privacy
        if pr["private"]:
            key = (pr["epsilon"], pr["delta"], pr["sample_rate"], pr["planned_steps"], pr["accountant"])
            if key not in calib:
                t0 = time.perf_counter()
                calibrate_noise_multiplier(key[0], key[1], key[2], key[3], accountant=key[4])
                calib[key] = time.perf_counter() - t0
        dkey = (c["dataset"], c["data_dir"], json.dumps(c.get("dataset_options") or {}, sort_keys=True))
        if dkey not in datasets:
            datasets[dkey] = load_dataset(c["dataset"], c["data_dir"], **(c.get("dataset_options") or {}))
        tkey = (dkey, c["model"], c["max_length"])
        if tkey not in tok:
            tokenizer = load_tokenizer(c["model"])
            t0 = time.perf_counter()
            for s in ("train", "validation", "test"):
                tokenize_dataset(datasets[dkey].split(s), tokenizer, max_length=c["max_length"])
            tok[tkey] = time.perf_counter() - t0
        bkey = (c["model"], c["method"], len(info["label_names"]))
        if bkey not in build:
            t0 = time.perf_counter()
            build_model(c["model"], bkey[2], method=c["method"], lora_r=c["lora_r"], lora_alpha=c["lora_alpha"], seed=0)
            build[bkey] = time.perf_counter() - t0
    return {"calibrate": calib, "tokenize": tok, "build": build}


def statistics_seconds(results_dir: Path) -> float:
    from privrad import comparisons, stats

    t0 = time.perf_counter()
    runs = stats.load_runs(results_dir)
    stats.summarize(runs)
    stats.paper_table(runs)
    comparisons.friedman(runs)
    comparisons.paired_vs_nonprivate(runs)
    return time.perf_counter() - t0


def split_phases(results_dir: Path, profile: str, sweep_s: float, book_s: float | None, kernel_s: float) -> dict:
    """Phase seconds of a finished study (see the module docstring for how each is obtained)."""
    pdir = results_dir / profile
    events = _events(pdir / "study.jsonl")
    simulate = sum(e.get("seconds", 0) for e in events if e["event"] == "simulated")
    papermill_s = {e["run_id"] if "run_id" in e else e.get("label", str(i)): e["seconds"]
                   for i, e in enumerate(events) if e["event"] == "run_complete"}
    run_dirs = stats_run_folders(pdir)
    outside = outside_timings(run_dirs)
    phases = dict.fromkeys(["data simulation", "tokenization", "model load", "papermill + kernel", "calibration",
                            "training", "evaluation", "statistics", "book build", "other (sweep)"], 0.0)
    phases["data simulation"] = simulate
    per_run = []
    for rd in run_dirs:
        res = read_run(rd)
        info, pr = res.info, res.privacy
        c, rt = info["config"], info["runtime"]
        cal = 0.0
        if pr["private"]:
            cal = outside["calibrate"][(pr["epsilon"], pr["delta"], pr["sample_rate"], pr["planned_steps"], pr["accountant"])]
        dkey = (c["dataset"], c["data_dir"], json.dumps(c.get("dataset_options") or {}, sort_keys=True))
        t_tok = outside["tokenize"][(dkey, c["model"], c["max_length"])]
        t_build = outside["build"][(c["model"], c["method"], len(info["label_names"]))]
        share = t_tok / max(t_tok + t_build, 1e-9)
        pm = papermill_s.get(info["run_id"], papermill_s.get(rd.name))
        accounted = rt["prepare_s"] + rt["train_s"] + rt["evaluate_s"]
        row = {"run": rd.name, "model": c["model"], "method": c["method"], "epsilon": c["epsilon"],
               "tokenize_s": rt["prepare_s"] * share, "model_s": rt["prepare_s"] * (1 - share), "calibrate_s": min(cal, rt["train_s"]),
               "train_s": max(0.0, rt["train_s"] - cal), "evaluate_s": rt["evaluate_s"], "papermill_s": pm,
               "notebook_overhead_s": None if pm is None else max(0.0, pm - accounted), "steps": pr["steps"]}
        per_run.append(row)
        phases["tokenization"] += row["tokenize_s"]
        phases["model load"] += row["model_s"]
        phases["calibration"] += row["calibrate_s"]
        phases["training"] += row["train_s"]
        phases["evaluation"] += row["evaluate_s"]
        phases["papermill + kernel"] += row["notebook_overhead_s"] or 0.0
    stat_s = statistics_seconds(pdir)
    phases["statistics"] = stat_s
    phases["book build"] = book_s or 0.0
    in_runs = sum(r["papermill_s"] or 0 for r in per_run)
    phases["other (sweep)"] = max(0.0, sweep_s - simulate - in_runs)
    return {"phases": phases, "per_run": per_run, "kernel_start_s": kernel_s, "sweep_s": sweep_s, "book_s": book_s,
            "statistics_outside_s": stat_s, "runs": len(per_run)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to privrad study run")
    ap.add_argument("--results-dir", default=None, help="results root (default: a fresh temporary folder)")
    ap.add_argument("--skip-book", action="store_true")
    ap.add_argument("--analyze-only", action="store_true",
                    help="split an existing (even unfinished) --results-dir study; run nothing")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    common.setup_env()
    tmp = None
    if args.results_dir is None:
        tmp = tempfile.mkdtemp(prefix=f"privrad-study-{args.profile}-")
        args.results_dir = tmp
    results = Path(args.results_dir).resolve()
    load0 = os.getloadavg()
    sweep_s = book_s = None
    try:
        if not args.analyze_only:
            sets = [x for s in args.set for x in ("--set", s)]
            print(f"privrad study run --profile {args.profile} --jobs {args.jobs} --results-dir {results}", flush=True)
            sweep_s, p = _privrad("study", "run", "--profile", args.profile, "--jobs", str(args.jobs), "--results-dir",
                                  str(results), "--quiet", *sets)
            print(p.stdout[-2000:], flush=True)
            if p.returncode != 0:
                print(p.stderr[-3000:], file=sys.stderr)
                return p.returncode
            if not args.skip_book:
                book_s, p = _privrad("book", "build", "--profile", args.profile, "--results-dir", str(results))
                if p.returncode != 0:
                    print(p.stderr[-3000:], file=sys.stderr)
                    book_s = None
        else:
            events = _events(results / args.profile / "study.jsonl")
            sweep_s = sum(e.get("seconds", 0) for e in events if e["event"] == "sweep_end")
            if not sweep_s and events:  # an unfinished sweep: the span of its log so far
                import datetime as dt

                stamps = [dt.datetime.fromisoformat(e["time"]) for e in events]
                sweep_s = (max(stamps) - min(stamps)).total_seconds()
                out_note = f"unfinished sweep: {sum(e['event'] == 'run_complete' for e in events)} runs finished"
                print(out_note, flush=True)
        kernel_s = kernel_start_seconds()
        out = split_phases(results, args.profile, sweep_s, book_s, kernel_s)
    finally:
        if tmp and not args.analyze_only:
            shutil.rmtree(tmp, ignore_errors=True) if os.environ.get("PRIVRAD_BENCH_KEEP") is None else None
    out.update(profile=args.profile, jobs=args.jobs, machine={**common.machine(), "loadavg_start": load0,
                                                               "loadavg_end": os.getloadavg()})
    total = (sweep_s or 0) + (book_s or 0)
    out["total_s"] = total
    print(f"\nstudy '{args.profile}': {out['runs']} runs, sweep {sweep_s:.0f} s, book {book_s or 0:.0f} s, total {total:.0f} s "
          f"({total / 60:.1f} min)")
    rows = [{"phase": k, "seconds": v, "share": 100 * v / total if total else None} for k, v in out["phases"].items()]
    print(common.table(rows, [("phase", "phase", "s"), ("seconds", "seconds", ".1f"), ("share", "% of wall", ".1f")]))
    pm = [r for r in out["per_run"] if r["papermill_s"]]
    if pm:
        over = [r["notebook_overhead_s"] / r["papermill_s"] for r in pm]
        print(f"papermill + kernel per run: {sum(r['notebook_overhead_s'] for r in pm) / len(pm):.1f} s on average "
              f"({100 * min(over):.0f}–{100 * max(over):.0f} % of a run); empty-notebook kernel start {out['kernel_start_s']:.1f} s")
    path = common.write_json(Path(args.out).name if args.out else f"study-{args.profile}.json", out,
                             Path(args.out).parent if args.out else None)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
