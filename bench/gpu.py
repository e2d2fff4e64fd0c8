"""The GPU benchmark (run through bench/gpu.sh): the paper grid's time before → after, in one call.

    bench/gpu.sh --out $OUT          # on one H100/H200, no network: < 9 minutes
    bench/gpu.sh --dry-run           # tiny shapes on the CPU, every code path (what `make test` runs)

**Before** is privrad's earlier way of running the paper grid: one run at a time, physical
batch 64, float32, a fresh kernel per run. **After** is the paper profile now: ``runs_per_gpu``
runs share the GPU (each with its share of the memory, kernels warmed up ahead), the physical
batch is ``auto`` (probed from that share), ``precision: auto`` (bf16 autocast on the GPU),
tokenization and calibration cached across runs. Parts, each written to ``gpu.json`` as it ends:

1. **Steps** (in this process, paper shapes with random weights: BERT-small, BERT-medium,
   ALBERT-base; batch 256 × 128 tokens, LoRA r = 16): non-private LoRA vs DP-LoRA interleaved,
   at the old settings (physical 64, fp32) and the new ones (one chunk, fp32 and bf16), plus
   full fine-tuning in bf16; and bf16 per-sample gradients against float32
   (:func:`privrad.train.per_sample_gradients`, tolerance ``BF16_GRAD_RTOL`` / ``BF16_NORM_RTOL``).
2. **Kernel start**: the run notebook's imports and CUDA start executed by papermill in a cold
   kernel, and what a run still waits for when its kernel was warmed up ahead.
3. **Before**: one paper-sized DP-LoRA ε = 1 run per model and dataset (≈ 25k simulated reports:
   MIMIC-CXR-like at length 256, CT-RATE-like at 512) at the old settings, in sequence, a fraction
   of an epoch each (``--old-epochs``); the grid estimate as before (sequential, the measured cold
   kernel start per run).
4. **After**: the paper grid's 36 runs of one seed (2 datasets × 3 models × DP-LoRA at four ε,
   LoRA ∞, full fine-tuning ∞) executed by ``privrad.executors.LocalExecutor`` through the real
   run notebook with the paper profile's settings, a fraction of the 5 epochs each (chosen from
   part 1 to fit ``--budget-s``), plus float32 twins of two runs for weighted-F1 parity. The
   grid (3 seeds, 5 epochs) is estimated from each run's measured seconds: training scaled to 5
   epochs, the rest (notebook, kernel, data, tokenization, calibration, evaluation) as measured;
   wall ≈ Σ / slots, bounded above by list scheduling (Σ / slots + (1 − 1/slots) × longest run).
5. **Calibration** (CPU, in the background from the start): the eight noise calibrations the
   grid needs (2 datasets × 4 ε, 5 epochs), cold and then as a cached check.

Everything is written to ``--out`` (JSON, log); the summary table is printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from gpu_estimates import (DATASETS, PAPER, SHAPES, TINY_SHAPES, choose_epochs, estimate_grid, finish,  # noqa: E402
                           report)
from gpu_steps import _free, diagnostics, kernel_part, steps_part  # noqa: E402

ROOT = common.BENCH_DIR.parent


def paper_run(model, shape, kind, length, n, *, epochs, device, tmp, dry) -> dict:
    """One DP-LoRA ε = 1 run with the paper profile's hyperparameters through ``privrad.run``
    on ``device`` (tokenize, build, calibrate, train, evaluate, write the run folder).

    ``model`` is the paper's model name, ``shape`` the local random-weight model of its shape
    (the hub is unreachable). The calibration for the paper's ``num_epochs`` is timed first on
    its own (it is part of a paper run's fixed cost); the run's own calibration (for ``epochs``)
    is done before it starts and cached, so the run's ``train_s`` is training.
    """
    import privrad
    from privrad.config import RunConfig
    from privrad.privacy import cached_noise_multiplier, calibrate_noise_multiplier, default_delta
    from privrad.train import planned_steps

    t = {}
    t0 = time.perf_counter()
    ds = common.report_dataset(kind, n, root=Path(tmp) / "data")  # simulated at the start (in the background)
    t["data_s"] = time.perf_counter() - t0
    batch_size, physical_batch_size = (16, 16) if dry else (PAPER["batch_size"], PAPER["physical_batch_size"])
    config = RunConfig(dataset=ds.name, data_dir=str(Path(tmp) / "data"), model=common.shaped_model_dir(shape), method="lora",
                       epsilon=1.0, seed=0, num_epochs=epochs, batch_size=batch_size, physical_batch_size=physical_batch_size,
                       lr=PAPER["lr"], lora_r=PAPER["lora_r"], lora_alpha=PAPER["lora_alpha"], max_length=length,
                       threshold="fixed", n_bootstrap=50 if dry else PAPER["n_bootstrap"], precision="fp32")
    n_train = len(ds.split("train"))
    q, delta = batch_size / n_train, default_delta(n_train)
    t0 = time.perf_counter()
    calibrate_noise_multiplier(1.0, delta, q, planned_steps(n_train, batch_size, PAPER["num_epochs"]))
    t["calibrate_s"] = time.perf_counter() - t0
    saved = os.environ.get("PRIVRAD_CACHE_DIR")
    os.environ["PRIVRAD_CACHE_DIR"] = str(Path(tmp) / "calibration-cache")
    try:
        cached_noise_multiplier(1.0, delta, q, planned_steps(n_train, batch_size, epochs))
        res = privrad.run(config, dataset=ds, results_dir=Path(tmp) / "runs", device=device, progress=False,
                          cache_dir=Path(tmp) / "cache")
    finally:
        os.environ.pop("PRIVRAD_CACHE_DIR") if saved is None else os.environ.__setitem__("PRIVRAD_CACHE_DIR", saved)
    rt = res.info["runtime"]
    t.update(prepare_s=rt["prepare_s"] + t["calibrate_s"], train_s=rt["train_s"], evaluate_s=rt["evaluate_s"])
    out = {"model": model, "shape": shape, "kind": kind, "n": n, "n_train": n_train, "max_length": length,
           "epochs": epochs, "steps": res.privacy["steps"], **t, "epoch_s": t["train_s"] / epochs,
           "train_examples_per_s": n_train * epochs / t["train_s"], "noise_multiplier": res.privacy["noise_multiplier"],
           "weighted_f1_untuned": res.weighted_f1, "n_truncated": res.info["n_truncated"]["train"],
           "mean_tokens": _mean_tokens(ds, config, Path(tmp) / "cache"), "device": res.info["device"]}
    print(f"  {model:12s} {kind:9s} max_length={length:3d} n={n} train {t['train_s']:7.1f}s ({out['train_examples_per_s']:.0f} ex/s, "
          f"mean {out['mean_tokens']:.0f} tokens) prepare {rt['prepare_s']:.1f}s calibrate {t['calibrate_s']:.1f}s "
          f"evaluate {t['evaluate_s']:.1f}s", flush=True)
    return out


def _mean_tokens(ds, config, cache_dir) -> float:
    """Mean tokens per training report as trained (truncated at max_length; the run's token cache)."""
    import numpy as np

    from privrad.data.tokenize import tokenize_dataset
    from privrad.models import load_tokenizer

    enc = tokenize_dataset(ds.split("train"), load_tokenizer(config.model), max_length=config.max_length, cache_dir=cache_dir)
    return float(np.mean([len(x) for x in enc.input_ids]))


# ----------------------------------------------------------------------------- 5. calibration (background)

def _calibrate_one(args):
    from privrad.privacy import calibrate_noise_multiplier, compute_epsilon, _prv_eps_error

    kind, eps, delta, q, steps = args
    t0 = time.perf_counter()
    sigma = calibrate_noise_multiplier(eps, delta, q, steps)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    compute_epsilon(sigma, q, steps, delta, eps_error=_prv_eps_error(eps))
    return {"dataset": kind, "epsilon": eps, "steps": steps, "sample_rate": q, "calibrate_s": cold,
            "check_s": time.perf_counter() - t0, "noise_multiplier": sigma}


def calibration_child(spec: dict) -> None:
    """The grid's calibrations (5 epochs), each cold and then as the cached check; prints JSON."""
    from multiprocessing import Pool

    from privrad.data import load_dataset
    from privrad.privacy import default_delta
    from privrad.train import planned_steps

    jobs = []
    for kind, folder in spec["datasets"].items():
        while not (Path(folder) / "PRIVRAD_SIMULATED.json").exists():
            time.sleep(1)
        n = len(load_dataset(f"simulated-{kind}", folder).split("train"))
        for eps in spec["epsilons"]:
            jobs.append((kind, eps, default_delta(n), PAPER["batch_size"] / n if not spec["dry"] else 16 / n,
                         planned_steps(n, PAPER["batch_size"] if not spec["dry"] else 16, PAPER["num_epochs"])))
    with Pool(min(len(jobs), max(1, (os.cpu_count() or 2) // 4))) as pool:
        rows = pool.map(_calibrate_one, jobs)
    print(json.dumps(rows), flush=True)


# ----------------------------------------------------------------------------- 4. after: the paper profile

def paper_profile(tmp: Path, models: dict, data_dirs: dict, *, epochs: float, dry: bool) -> Path:
    """studies/paper.yml with the simulated datasets, the shape folders for the models, one seed,
    ``epochs`` epochs, and float32 twins of BERT-small's DP ε = 1 and LoRA ∞ runs."""
    import yaml

    from privrad.profiles import read_yaml_file

    raw = read_yaml_file(ROOT / "studies" / "paper.yml", what="study profile")
    paths = {m: common.shaped_model_dir(s) for m, s in models.items()}
    # the longest runs first (CT-RATE, ALBERT): slots drain evenly, and a budget stop cuts short runs
    raw["datasets"] = [{**d, "dataset": f"simulated-{d['dataset']}", "data_dir": data_dirs[d["name"]]}
                       for d in reversed(raw["datasets"])]
    raw["grid"]["model"] = list(reversed(paths.values()))
    raw["grid"]["seed"] = [0]
    raw["params"]["num_epochs"] = epochs
    raw["results"] = str(tmp / "results")
    twin = paths["bert-small"]
    raw["extra"] = list(raw.get("extra") or []) + [{"model": twin, "epsilon": 1, "precision": "fp32"},
                                                   {"model": twin, "epsilon": None, "precision": "fp32"}]
    raw.pop("slurm", None)
    if dry:  # tiny: ε = 1 and ∞, no full fine-tuning, one twin, small batches, 2 runs at once on the CPU
        raw["grid"]["epsilon"] = [1, None]
        raw["extra"] = raw["extra"][-2:-1]
        raw["params"].update(batch_size=16, n_bootstrap=20)
        for d in raw["datasets"]:
            d["params"] = {"max_length": 32 if d["name"] == "mimic-cxr" else 64}
    path = tmp / "paper-bench.yml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _cells(nb_path: Path) -> dict:
    """Per-cell papermill durations of an executed run notebook, by what the cell does."""
    nb = json.loads(nb_path.read_text())
    out = {"cells_s": 0.0, "imports_s": 0.0, "data_s": 0.0, "run_s": 0.0, "other_cells_s": 0.0}
    for c in nb["cells"]:
        d = (c.get("metadata", {}).get("papermill") or {}).get("duration") or 0.0
        if c["cell_type"] != "code":
            continue
        src = "".join(c["source"])
        out["cells_s"] += d
        key = ("imports_s" if "import privrad" in src else "data_s" if "load_dataset(config" in src
               else "run_s" if "privrad.run(" in src else "other_cells_s")
        out[key] += d
    return out


def after_part(tmp: Path, models: dict, data_dirs: dict, *, epochs: float, deadline: float, dry: bool,
               runs_per_gpu: int | None, save_partial=None) -> dict:
    """The paper profile's sweep (one seed, ``epochs``) through privrad's own study runner.

    ``save_partial(after)``, when given, is called every ~15 s with what has finished so far (the
    same dict as the return value, ``"partial": True``), so a call stopped from outside still
    leaves its finished runs in gpu.json (``--summarize`` estimates from them)."""
    import threading

    from privrad import profiles, study

    path = paper_profile(tmp, models, data_dirs, epochs=epochs, dry=dry)
    prof = profiles.load_profile(str(path), root=ROOT)
    os.environ["PRIVRAD_CACHE_DIR"] = str(tmp / "cache-after")  # this sweep pays its own tokenization and calibration
    ex = study.local_executor(prof, jobs=2 if dry else None, runs_per_gpu=runs_per_gpu)
    print(f"  {len(profiles.expand(prof))} runs, {ex.jobs} at once (runs_per_gpu {ex.runs_per_gpu}, GPUs {ex.gpus or 'none'}), "
          f"{epochs:g} epoch(s) each; " + " ".join(ex.notes), flush=True)
    points = [{"dataset": p.entry.name, "model": next(m for m, sh in models.items() if p.config.model.endswith(sh)),
               "method": p.config.method, "epsilon": p.config.epsilon, "twin": p.config.precision == "fp32"}
              for p in profiles.expand(prof)]
    base = {"runs_per_gpu": ex.runs_per_gpu, "slots": ex.jobs, "epochs": epochs, "points": len(points),
            "memory_share_gb": ex.memory_share_gb, "notes": ex.notes, "point_list": points}
    t0 = time.perf_counter()
    result = {}
    th = threading.Thread(target=lambda: result.setdefault("rc", study.run_study(prof, executor=ex, progress=False,
                                                                                out=open(tmp / "sweep.txt", "w"))),
                          daemon=True)  # a stopped sweep's thread must not keep the process alive
    th.start()
    last_save = time.perf_counter()
    while th.is_alive():
        th.join(1.0)
        if save_partial and time.perf_counter() - last_save > 15:
            last_save = time.perf_counter()
            try:
                rows, failed = _after_rows(prof, models)
                save_partial({**base, "wall_s": last_save - t0, "runs": rows, "failed": failed, "partial": True})
            except (OSError, ValueError, KeyError) as exc:  # a file being written: next time
                print(f"  (partial save skipped: {type(exc).__name__}: {exc})"[:200], flush=True)
        failed, complete = _event_counts(prof.results_dir / "study.jsonl")
        if failed >= min(4, ex.jobs) and not complete:  # the same fault in every run: keep the budget for a rerun
            print(f"  the first {failed} runs failed and none completed: stopping the sweep", flush=True)
            _stop(th)
            break
        if time.perf_counter() > deadline:  # out of budget: stop what runs; the estimate uses what finished
            print("  budget reached: stopping the runs still in flight", flush=True)
            _stop(th)
            break
    wall = time.perf_counter() - t0
    rows, failed = _after_rows(prof, models)
    print(f"  {len(rows)} of {len(points)} runs complete in {wall:.0f} s; {len(failed)} failed", flush=True)
    for f in failed[:5]:
        print(f"    failed {f['run_id']}: {f['error']}"[:400], flush=True)
    return {**base, "wall_s": wall, "runs": rows, "failed": failed, "rc": result.get("rc")}


def _event_counts(log: Path) -> tuple[int, int]:
    """Runs failed and completed so far, from the study's event log."""
    text = log.read_text() if log.exists() else ""
    return text.count('"event": "run_failed"'), text.count('"event": "run_complete"')


def _after_rows(prof, models: dict) -> tuple[list[dict], list[dict]]:
    """The sweep's finished runs (one row each, from the run folders and study.jsonl) and its failures."""
    from privrad.runs import read_run, run_state

    log = prof.results_dir / "study.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:  # the line being written
            pass
    seconds = {e["run_id"]: e["seconds"] for e in events if e.get("event") == "run_complete"}
    rows = []
    for d in sorted(x for x in prof.results_dir.iterdir() if x.is_dir()):
        state = run_state(d)
        if not state.complete or d.name not in seconds:
            continue
        info, rt = state.info, state.info["runtime"]
        cfg = info["config"]
        cells = _cells(d / "run.ipynb")
        result = read_run(d)  # the run-folder contract's one reader
        metrics = result.metrics
        model = next(m for m, s in models.items() if cfg["model"].endswith(s))
        rows.append({"run_id": d.name, "dataset": cfg["dataset"].replace("simulated-", ""), "model": model,
                     "method": cfg["method"], "epsilon": cfg["epsilon"], "precision": info["precision"],
                     "twin": cfg["precision"] == "fp32", "seconds": seconds[d.name], **cells,
                     "kernel_s": max(0.0, seconds[d.name] - cells["cells_s"]), "prepare_s": rt["prepare_s"],
                     "train_s": rt["train_s"] - rt["calibrate_s"], "calibrate_s": rt["calibrate_s"],
                     **{k: rt.get(k) for k in ("setup_s", "first_step_s", "accounting_s")},
                     "evaluate_s": rt["evaluate_s"], "gpu_peak_gb": rt.get("gpu_peak_gb"),
                     "physical_batch_size": info["physical_batch_size"], "physical_batch_source": info["physical_batch_source"],
                     "weighted_f1": metrics["weighted_f1"], "learned_nothing_weighted_f1": metrics.get("learned_nothing_weighted_f1"),
                     "steps": result.privacy["steps"]})
    failed = [{"run_id": e["run_id"], "error": e.get("error")} for e in events if e.get("event") == "run_failed"]
    return rows, failed


def _stop(th, within_s: float = 15.0) -> None:
    """Stop a sweep: kill the runs in flight, and again each second the ones the executor starts
    from its queue in their place, until the sweep's thread ends or ``within_s`` has passed (the
    estimate then goes on with what finished; the thread is a daemon)."""
    end = time.perf_counter() + within_s
    while th.is_alive() and time.perf_counter() < end:
        _kill_children()
        th.join(1.0)


def _kill_children() -> None:
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.Error:
            pass


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes, tiny data, CPU: checks the script, not the GPU")
    ap.add_argument("--n", type=int, default=25_000, help="simulated reports per dataset")
    ap.add_argument("--old-epochs", type=float, default=0.15, help="epochs of each 'before' run (scaled to 5)")
    ap.add_argument("--budget-s", type=float, help="the whole script ends by then (runs in flight are stopped); "
                                                   "default 420, 1200 with --dry-run (the shared CPU is slow)")
    ap.add_argument("--runs-per-gpu", type=int, default=None, help="override the paper profile's gpu.runs_per_gpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=str(common.OUT_DIR / "gpu"))
    ap.add_argument("--calibration-child", help=argparse.SUPPRESS)
    ap.add_argument("--reuse", help="a gpu.json of an earlier call on the same machine kind: its parts 1-3 are "
                                    "taken from it (say so when reporting) and only part 4 runs")
    ap.add_argument("--after-epochs", type=float, help="epochs per run of part 4 (default: chosen from part 1)")
    ap.add_argument("--diagnostics", action="store_true", help="with --reuse: also time where the bf16 DP step's "
                                                                  "extra time goes (costs GPU time)")
    ap.add_argument("--summarize", metavar="GPU_JSON", help="print the summary of a gpu.json, estimating the 'after' "
                                                           "grid from the runs it holds (a call stopped in part 4)")
    args = ap.parse_args(argv)
    if args.summarize:
        out = json.loads(Path(args.summarize).read_text())
        finish(out, dry=out["args"].get("dry_run", False))
        report(out)
        return 0
    if args.budget_s is None:
        args.budget_s = 1200.0 if args.dry_run else 420.0
    if args.calibration_child:
        calibration_child(json.loads(args.calibration_child))
        return 0
    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    common.setup_env()
    import tempfile

    import torch

    dry = args.dry_run
    device = "cpu" if dry else ("cuda" if torch.cuda.is_available() else "cpu")
    if not dry and device == "cpu":
        print("warning: no GPU visible; running the GPU benchmark on the CPU (slow)", flush=True)
    models = TINY_SHAPES if dry else SHAPES
    if dry:
        models = {"bert-small": TINY_SHAPES["bert-small"]}
    n = 120 if dry else args.n
    lengths = {"mimic-cxr": 32, "ct-rate": 64} if dry else DATASETS
    out = {"machine": common.machine(), "args": vars(args), "device": device}
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        out["machine"].update(gpu_memory_gb=total / 2**30, gpu_free_gb=free / 2**30)
    os.makedirs(args.out, exist_ok=True)
    save = lambda: common.write_json("gpu.json", out, args.out)  # noqa: E731
    tmp = Path(tempfile.mkdtemp(prefix="privrad-gpu-"))
    data_dirs = {kind: str(tmp / "data" / f"{kind}-{n}-s0") for kind in DATASETS}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), str(common.BENCH_DIR),
                                                                     os.environ.get("PYTHONPATH")]))}
    sims = [subprocess.Popen([sys.executable, "-c", f"import common; common.report_dataset({kind!r}, {n}, root={str(tmp / 'data')!r})"],
                             env=env, cwd=common.BENCH_DIR) for kind in DATASETS]
    spec = {"datasets": data_dirs, "epsilons": [1] if dry else list(PAPER["lora_epsilons"]), "dry": dry}
    calib = None if args.reuse else subprocess.Popen(
        [sys.executable, str(Path(__file__)), "--calibration-child", json.dumps(spec)], env=env, stdout=subprocess.PIPE, text=True)
    for shape in models.values():
        common.shaped_model_dir(shape)

    batch_size, max_length = (8, 16) if dry else (PAPER["batch_size"], 128)
    rep, wu = (1, 0) if dry else (args.repeats, args.warmup)
    if args.reuse:
        prev = json.loads(Path(args.reuse).read_text())
        for r in prev["steps"]["rows"]:  # a gpu.json written before the rows took the contract's names
            for old, new in (("batch", "batch_size"), ("length", "max_length"), ("physical", "physical_batch_size")):
                if old in r:
                    r[new] = r.pop(old)
        out.update(steps=prev["steps"], kernel=prev["kernel"], before=prev["before"], calibration=prev.get("calibration"),
                   reused={"from": args.reuse, "machine": prev["machine"], "parts": "1-3 and the calibration timings"})
        print(f"[1-3/4] steps, kernel start, 'before' and calibration timings taken from {args.reuse} "
              f"({prev['machine'].get('gpu')}, {prev['machine'].get('date')})", flush=True)
        if args.diagnostics:
            out["diagnostics"] = diagnostics(list(models.values())[0], device, batch_size=batch_size, max_length=max_length,
                                             repeats=rep, warmup=wu)
    else:
        print(f"[1/4] steps on {device}: LoRA vs DP-LoRA interleaved, old and new settings; bf16 per-sample gradients", flush=True)
        out["steps"] = steps_part(list(models.values()), device, batch_size=batch_size, max_length=max_length, repeats=rep,
                                  warmup=wu, dry=dry)
        save()

        print("\n[2/4] kernel start: papermill, a cold kernel vs one warmed up ahead", flush=True)
        try:
            out["kernel"] = kernel_part(tmp)
        except Exception as exc:  # noqa: BLE001
            out["kernel"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            print(f"  {out['kernel']['error']}", flush=True)
            if dry:
                raise
    save()
    for p in sims:
        p.wait()

    old_runs = []
    if not args.reuse:
        print(f"\n[3/4] before: one run at a time, physical 64, fp32; {args.old_epochs:g} epoch per model and dataset", flush=True)
    for kind, L in ({} if args.reuse else lengths).items():
        for model, shape in models.items():
            if not dry and time.perf_counter() > t_start + 0.45 * args.budget_s and old_runs:
                print(f"  skipped {model}/{kind} (budget)", flush=True)
                continue
            t_run = time.perf_counter()
            try:
                r = paper_run(model, shape, kind, L, n, epochs=0.5 if dry else args.old_epochs, device=device, tmp=tmp, dry=dry)
                r["wall_s"] = time.perf_counter() - t_run
                old_runs.append(r)
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"  {model} {kind}: {type(exc).__name__}: {exc}"[:300], flush=True)
                if dry:
                    raise
            finally:
                _free(device)
    if not args.reuse:
        old_steps = [{**r, "model": r["model"]} for r in out["steps"]["rows"] if r["group"] == "old"]
        kernel_cold = out["kernel"].get("cold_s", 12.0)
        out["before"] = {"runs": old_runs, "grid": estimate_grid(old_steps, old_runs, kernel_start_s=kernel_cold, dry=dry)}
        save()

    n_train = {}
    from privrad.data import load_dataset

    for kind, folder in data_dirs.items():
        n_train[kind] = len(load_dataset(f"simulated-{kind}", folder).split("train"))
    from privrad import profiles, study

    slots = study.local_executor(profiles.load_profile("paper", root=ROOT), runs_per_gpu=args.runs_per_gpu).jobs
    epochs = args.after_epochs or choose_epochs(out["steps"]["rows"], n_train, deadline - time.perf_counter() - 30, slots, dry)
    print(f"\n[4/4] after: the paper profile's sweep, one seed, {epochs:g} epoch(s) per run (scaled to 5)", flush=True)
    _free(device)

    def save_partial(after):
        out["after"] = after
        save()

    out["after"] = after_part(tmp, models, data_dirs, epochs=epochs, deadline=deadline, dry=dry, runs_per_gpu=args.runs_per_gpu,
                              save_partial=save_partial)
    save()
    if calib is not None:
        try:
            cal_out, _ = calib.communicate(timeout=5 if not dry else 120)
            out["calibration"] = json.loads(cal_out.strip().splitlines()[-1])
        except Exception as exc:  # noqa: BLE001 - not finished in time
            calib.kill()
            out["calibration"] = None
            print(f"  calibration timings not available ({type(exc).__name__})", flush=True)
    finish(out, dry=dry)
    out["wall_s"] = time.perf_counter() - t_start
    save()
    report(out)
    print(f"\nwritten {Path(args.out) / 'gpu.json'} in {out['wall_s']:.0f} s")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
