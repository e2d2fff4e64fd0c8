"""The GPU benchmark (run through bench/gpu.sh): real sizes, paper-sized runs, the paper grid's time.

    bench/gpu.sh                 # on one H100, no network: < 10 minutes
    bench/gpu.sh --dry-run       # tiny shapes on CPU in ~30 s (what the tests run)

1. **Step benchmark at real sizes** (bench/step.py, in this process: on a GPU the allocator
   peak is per configuration after ``reset_peak_memory_stats``): BERT-small, BERT-medium and
   ALBERT-base shapes (random weights; the hub is unreachable), batch 64 × 128 tokens, the five
   methods; then batch 64 × 512 for DP-LoRA vs LoRA.
2. **One paper-sized run per model**: ≈25k simulated reports, DP-LoRA ε = 1 with the
   paper profile's hyperparameters (batch 256, physical 64, LoRA r = 16), through
   ``privrad.runs.run`` (tokenize, build, calibrate, train, evaluate, write the run folder) at
   sequence length 256 (MIMIC-CXR-like) and 512 (CT-RATE-like reports). ``--epochs`` (default 1,
   the paper trains 5) keeps it inside the budget; the estimate scales the measured epoch.
3. **The paper grid's total time**: 2 datasets × 3 models × 6 configurations (DP-LoRA at
   ε = 0.01, 0.1, 1, 10, non-private LoRA, non-private full fine-tuning) × 3 seeds, from the
   measured epoch times, the step-benchmark ratios (non-private LoRA and full fine-tuning vs
   DP-LoRA), the measured fixed costs (tokenize + build + calibrate, evaluate) and a papermill
   kernel start per run (``--kernel-start-s``, measured on CPU by bench/study.py).

Runs that would not fit in ``--budget-s`` are skipped and estimated from the step benchmark.
Everything is written to ``--out`` (JSON + a log); the summary is printed last.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import step  # noqa: E402

#: the paper's models → the local random-weight model of their shape (bench/common.py)
SHAPES = {"bert-small": "bert-small-shape", "bert-medium": "bert-medium-shape", "albert-base": "albert-base-shape"}
TINY_SHAPES = {"bert-small": "tiny-bert-shape", "albert-base": "tiny-albert-shape"}
DATASETS = {"mimic-cxr": 256, "ct-rate": 512}  # the paper profile's max_length per dataset
PAPER = dict(num_epochs=5, batch_size=256, physical_batch_size=64, lr=1e-3, lora_r=16, lora_alpha=32, seeds=3,
             lora_epsilons=(0.01, 0.1, 1, 10), n_bootstrap=1000)


def _free(device):
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def step_benchmark(shapes, device, *, batch, length, repeats, warmup, methods) -> list[dict]:
    rows = []
    for shape in shapes:
        common.shaped_model_dir(shape)
        for method in methods:
            try:
                r = step.measure(shape, method, batch=batch, length=length, repeats=repeats, warmup=warmup, device=device)
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory: report and go on
                r = {"model": shape, "method": method, "status": "error", "error": f"{type(exc).__name__}: {exc}"[:300]}
            r.pop("times_s", None)
            rows.append(r)
            print(f"  {shape:18s} {method:14s} B={batch} L={length} {step._brief(r)}", flush=True)
            _free(device)
    step._add_ratios(rows)
    return rows


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
    ds = common.report_dataset(kind, n, root=Path(tmp) / "data")
    t["data_s"] = time.perf_counter() - t0
    batch_size, physical_batch_size = (16, 16) if dry else (PAPER["batch_size"], PAPER["physical_batch_size"])
    config = RunConfig(dataset=ds.name, data_dir=str(Path(tmp) / "data"), model=common.shaped_model_dir(shape), method="lora",
                       epsilon=1.0, seed=0, num_epochs=epochs, batch_size=batch_size, physical_batch_size=physical_batch_size,
                       lr=PAPER["lr"], lora_r=PAPER["lora_r"], lora_alpha=PAPER["lora_alpha"], max_length=length,
                       threshold="fixed", n_bootstrap=50 if dry else PAPER["n_bootstrap"])
    n_train = len(ds.split("train"))
    q, delta = batch_size / n_train, default_delta(n_train)
    t0 = time.perf_counter()
    calibrate_noise_multiplier(1.0, delta, q, planned_steps(n_train, batch_size, PAPER["num_epochs"]))
    t["calibrate_s"] = time.perf_counter() - t0
    os.environ["PRIVRAD_CACHE_DIR"] = str(Path(tmp) / "calibration-cache")
    cached_noise_multiplier(1.0, delta, q, planned_steps(n_train, batch_size, epochs))
    res = privrad.run(config, dataset=ds, results_dir=Path(tmp) / "runs", device=device, progress=False,
                      cache_dir=Path(tmp) / "cache")
    rt = res.info["runtime"]
    t.update(prepare_s=rt["prepare_s"] + t["calibrate_s"], train_s=rt["train_s"], evaluate_s=rt["evaluate_s"])
    out = {"model": model, "shape": shape, "kind": kind, "n": n, "n_train": n_train, "max_length": length,
           "epochs": epochs, "steps": res.privacy["steps"], **t, "epoch_s": t["train_s"] / epochs,
           "train_examples_per_s": n_train * epochs / t["train_s"], "noise_multiplier": res.privacy["noise_multiplier"],
           "weighted_f1_untuned": res.weighted_f1, "n_truncated": res.info["n_truncated"]["train"],
           "mean_tokens": _mean_tokens(ds, config, Path(tmp) / "cache"), "device": res.info["device"]}
    print(f"  {model:12s} {kind:9s} L={length:3d} n={n} train {t['train_s']:7.1f}s ({out['train_examples_per_s']:.0f} ex/s, "
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


def estimate_grid(steps_rows, runs, *, kernel_start_s, dry) -> dict:
    """Paper grid seconds: Σ datasets × models × configs × seeds of (epochs × epoch_s + fixed)."""
    ratio = {}
    for r in steps_rows:
        if r.get("status") == "ok":
            ratio.setdefault(r["model"], {})[r["method"]] = r["median_s"]
    lines, total = [], 0.0
    for model in {r["model"] for r in runs}:
        for kind in DATASETS:
            got = [r for r in runs if r["model"] == model and r["kind"] == kind]
            note = "measured"
            if not got:  # skipped for the budget: scale the model's other run by the token count
                other = [r for r in runs if r["model"] == model]
                if not other:
                    continue
                o = other[0]
                length = DATASETS[kind] if not dry else o["max_length"]
                got = [{**o, "kind": kind, "max_length": length, "epoch_s": o["epoch_s"] * length / o["max_length"]}]
                note = f"extrapolated from L={o['max_length']} (× tokens)"
            r = got[0]
            length = r["max_length"]
            t = ratio.get(r["shape"], {})
            dp = t.get("dp-lora")
            rel_lora = t["lora"] / dp if dp and "lora" in t else 1.0
            rel_full = t["full"] / dp if dp and "full" in t else 3.0
            fixed = r["prepare_s"] + r["evaluate_s"] + kernel_start_s
            epoch = r["epoch_s"]
            per_seed = (len(PAPER["lora_epsilons"]) * (PAPER["num_epochs"] * epoch + fixed)
                        + (PAPER["num_epochs"] * epoch * rel_lora + fixed)
                        + (PAPER["num_epochs"] * epoch * rel_full + fixed))
            secs = PAPER["seeds"] * per_seed
            total += secs
            lines.append({"dataset": kind, "model": model, "max_length": length, "epoch_s": epoch,
                          "fixed_s": fixed, "nonprivate_lora_vs_dp": rel_lora, "full_vs_dp_lora": rel_full,
                          "runs": 6 * PAPER["seeds"], "seconds": secs, "source": note})
    return {"rows": lines, "total_s": total, "total_h": total / 3600, "assumptions": (
        f"{PAPER['num_epochs']} epochs, batch {PAPER['batch_size']}, ≈25k reports per dataset (n as run), "
        f"{PAPER['seeds']} seeds, one GPU, runs in sequence, kernel start {kernel_start_s:.1f} s per run"
        + (" (DRY RUN: tiny shapes on CPU, meaningless figures)" if dry else ""))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes, tiny data, CPU: checks the script, not the GPU")
    ap.add_argument("--n", type=int, default=25_000, help="simulated reports per paper-sized run")
    ap.add_argument("--epochs", type=float, default=1.0, help="epochs of each paper-sized run (paper: 5; scaled)")
    ap.add_argument("--budget-s", type=float, default=540.0, help="stop starting paper-sized runs after this")
    ap.add_argument("--kernel-start-s", type=float, default=12.0,
                    help="papermill kernel start + notebook overhead per run (bench/study.py measured 12 s on the "
                         "2-core machine under load; a 16-core GPU host will be faster, so this is pessimistic)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=str(common.OUT_DIR / "gpu"))
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    common.setup_env()
    import tempfile

    import torch

    dry = args.dry_run
    device = "cpu" if dry else ("cuda" if torch.cuda.is_available() else "cpu")
    if not dry and device == "cpu":
        print("warning: no GPU visible; running the GPU benchmark on the CPU (slow)", flush=True)
    models = TINY_SHAPES if dry else SHAPES
    shapes = list(models.values())
    n = 120 if dry else args.n
    epochs = 0.25 if dry else args.epochs
    lengths = {"mimic-cxr": 32, "ct-rate": 64} if dry else DATASETS
    out = {"machine": common.machine(), "args": vars(args), "device": device}
    os.makedirs(args.out, exist_ok=True)

    print(f"[1/3] step benchmark, {device}", flush=True)
    rep, wu = (1, 0) if dry else (args.repeats, args.warmup)
    out["steps_128"] = step_benchmark(shapes, device, batch=4 if dry else 64, length=16 if dry else 128,
                                      repeats=rep, warmup=wu, methods=step.DEFAULT_METHODS)
    out["steps_512"] = step_benchmark(shapes, device, batch=4 if dry else 64, length=32 if dry else 512,
                                      repeats=rep, warmup=wu, methods=["lora", "dp-lora"])
    print("\n" + step.render(out["steps_128"]) + "\n\n" + step.render(out["steps_512"]), flush=True)
    common.write_json("gpu.json", out, args.out)

    print(f"\n[2/3] paper-sized runs: {n} reports, DP-LoRA ε=1, {args.epochs:g} epoch(s)", flush=True)
    runs, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="privrad-gpu-") as tmp:
        for kind, length in lengths.items():
            for model, shape in models.items():
                elapsed = time.perf_counter() - t_start
                last = 1.3 * runs[-1]["wall_s"] if runs else 0.0  # the next run is about as long as the last
                if elapsed + last > args.budget_s:
                    skipped.append(f"{model}/{kind}")
                    continue
                t_run = time.perf_counter()
                try:
                    runs.append(paper_run(model, shape, "mimic-cxr" if kind == "mimic-cxr" else "ct-rate", length, n,
                                          epochs=epochs, device=device, tmp=tmp, dry=dry))
                    runs[-1]["wall_s"] = time.perf_counter() - t_run
                except Exception as exc:  # noqa: BLE001 - report and go on with the next model
                    print(f"  {model} {kind}: {type(exc).__name__}: {exc}"[:300], flush=True)
                    if dry:
                        raise
                finally:
                    _free(device)
                common.write_json("gpu.json", {**out, "runs": runs}, args.out)
    out["runs"], out["skipped_runs"] = runs, skipped
    if skipped:
        print(f"  skipped (budget): {', '.join(skipped)}", flush=True)

    print("\n[3/3] paper grid estimate (2 datasets × 3 models × 6 configurations × 3 seeds)", flush=True)
    out["grid"] = estimate_grid(out["steps_128"], runs, kernel_start_s=args.kernel_start_s, dry=dry)
    for r in out["grid"]["rows"]:
        print(f"  {r['dataset']:9s} {r['model']:12s} L={r['max_length']:3d} epoch {r['epoch_s']:7.1f}s fixed "
              f"{r['fixed_s']:5.1f}s → {r['runs']} runs {r['seconds'] / 60:7.1f} min ({r['source']})", flush=True)
    g = out["grid"]
    print(f"  total ≈ {g['total_h']:.2f} h on one {out['machine'].get('gpu', device)} ({g['assumptions']})")
    overhead = [args.kernel_start_s / (PAPER["num_epochs"] * r["epoch_s"] + r["prepare_s"] + r["evaluate_s"] + args.kernel_start_s)
                for r in runs]
    if overhead:
        out["kernel_overhead_share"] = {"min": min(overhead), "max": max(overhead)}
        print(f"  papermill + kernel start share of a paper-profile run: {100 * min(overhead):.1f}–{100 * max(overhead):.1f} %")
    out["wall_s"] = time.perf_counter() - t_start
    path = common.write_json("gpu.json", out, args.out)
    print(f"\nwritten {path} in {out['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
