"""bench/gpu.py's arithmetic: the paper grid's settings, and its time estimated from what the GPU
call measured (before: sequential runs; after: the paper profile's one-seed sweep), the DP ÷ LoRA
ratios, the bf16/fp32 weighted-F1 twins, the epochs that fit the budget, and the summary printed
last. Pure functions of the measured rows: no GPU, no torch.
"""

from __future__ import annotations

#: the paper's models → the local random-weight model of their shape (bench/common.py)
SHAPES = {"bert-small": "bert-small-shape", "bert-medium": "bert-medium-shape", "albert-base": "albert-base-shape"}
TINY_SHAPES = {"bert-small": "tiny-bert-shape", "albert-base": "tiny-albert-shape"}
DATASETS = {"mimic-cxr": 256, "ct-rate": 512}  # the paper profile's max_length per dataset
PAPER = dict(num_epochs=5, batch_size=256, physical_batch_size=64, lr=1e-3, lora_r=16, lora_alpha=32, seeds=3,
             lora_epsilons=(0.01, 0.1, 1, 10), n_bootstrap=1000)


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
                note = f"extrapolated from max_length={o['max_length']} (× tokens)"
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


def _five_epoch_training(r: dict, scale: float) -> float:
    """A sweep run's training seconds at the paper's epochs: what it pays once (setup before the
    first step, the first step, the ε accounting at the curve's fixed number of checkpoints) plus
    its later steps' mean time × the paper's number of steps. Without those timings (an older
    run folder): all of its training × ``scale``."""
    once = [r.get(k) for k in ("setup_s", "first_step_s", "accounting_s")]
    if None in once or r["steps"] < 2:
        return scale * r["train_s"]
    per_step = max(0.0, r["train_s"] - sum(once)) / (r["steps"] - 1)
    return sum(once) + per_step * (round(r["steps"] * scale) - 1)


def single_run_training(steps_rows: list[dict], before_runs: list[dict]) -> dict[str, float]:
    """Seconds of 5 epochs' training per ``dataset|model|method|private`` for one run alone on the
    GPU at the new settings: the 'before' run's measured epoch (DP-LoRA, physical 64, fp32) times
    the step-time ratio of part 1 (new settings, bf16 where measured, ÷ old DP-LoRA)."""
    t = {(r["model"], r["group"], r["method"]): r["median_s"] for r in steps_rows if r.get("status", "ok") == "ok"}
    out = {}
    for b in before_runs:
        old = t.get((b["shape"], "old", "dp-lora"))
        group = "new-bf16" if (b["shape"], "new-bf16", "dp-lora") in t else "new-fp32"
        for method, private, step_method in (("lora", True, "dp-lora"), ("lora", False, "lora"), ("full", False, "full")):
            new = t.get((b["shape"], group, step_method))
            if old and new:
                out[f"{b['kind']}|{b['model']}|{method}|{private}"] = PAPER["num_epochs"] * b["epoch_s"] * new / old
    return out


def estimate_after(after: dict, calibrations: list[dict] | None, *, dry: bool, single: dict | None = None) -> dict:
    """The paper grid (3 seeds, 5 epochs) from the one-seed sweep: each run's seconds with its
    training scaled to 5 epochs and its calibration replaced by the grid's (each of the 8
    calibrations cold once, then a cached check per other run; without those timings the runs'
    own calibrations stay in); wall from the slots.

    A short sweep's runs train beside other runs' fixed phases, so they share the GPU less than
    5-epoch runs would. ``single`` (:func:`single_run_training`) gives the pessimistic bound
    ``wall_no_sharing_gain_s``: the runs' training one at a time (as if sharing the GPU gained
    nothing) plus their fixed phases spread over the slots."""
    import statistics

    runs = [r for r in after["runs"] if not r["twin"]]
    if not runs:
        return {}
    scale = PAPER["num_epochs"] / after["epochs"]
    slots = after["slots"]
    per_run = []
    naive = []  # every second of training × scale, as the 'before' runs were scaled (estimate_grid)
    for r in runs:
        rest = r["seconds"] - (r["calibrate_s"] if calibrations else 0.0) - r["train_s"]
        five = _five_epoch_training(r, scale)
        naive.append(rest + scale * r["train_s"])
        per_run.append({**r, "paper_run_s": rest + five, "train5_s": five, "fixed_s": rest})
    # points that did not finish (budget stop, failure): the mean of the same dataset/model/method's runs
    done = {(r["dataset"], r["model"], r["method"], r["epsilon"]) for r in runs}
    extrapolated = []
    for p in after.get("point_list", []):
        key = (p["dataset"], p["model"], p["method"], p["epsilon"])
        if p["twin"] or key in done:
            continue
        like = [r["paper_run_s"] for r in per_run if (r["dataset"], r["model"], r["method"]) == key[:3]] or \
               [r["paper_run_s"] for r in per_run if (r["dataset"], r["model"]) == key[:2]]
        if like:
            extrapolated.append({**p, "paper_run_s": statistics.mean(like), "kernel_s": 0.0, "extrapolated": True})
    unestimated = sum(1 for p in after.get("point_list", []) if not p["twin"]) - len(runs) - len(extrapolated)
    per_run += extrapolated
    occupancy = PAPER["seeds"] * sum(r["paper_run_s"] for r in per_run)
    naive_occupancy = PAPER["seeds"] * (sum(naive) * len(per_run) / len(runs))
    cal = 0.0
    if calibrations:
        models, seeds = len({r["model"] for r in runs}), PAPER["seeds"]
        cal = sum(c["calibrate_s"] + (models * seeds - 1) * c["check_s"] for c in calibrations)
    occupancy += cal
    longest = max(r["paper_run_s"] for r in per_run)
    lower = occupancy / slots
    upper = lower + (1 - 1 / slots) * longest
    naive_wall = (naive_occupancy + cal) / slots + (1 - 1 / slots) * max(naive)
    no_gain = None
    if single and all(f"{r['dataset']}|{r['model']}|{r['method']}|{r['epsilon'] is not None}" in single for r in per_run):
        train1 = [single[f"{r['dataset']}|{r['model']}|{r['method']}|{r['epsilon'] is not None}"] for r in per_run]
        fixed = [r.get("fixed_s", statistics.mean(x["fixed_s"] for x in per_run[:len(runs)])) for r in per_run]
        no_gain = PAPER["seeds"] * (sum(train1) + sum(fixed) / slots) + cal / slots
    share = [r["kernel_s"] / r["paper_run_s"] for r in per_run if not r.get("extrapolated")]
    # the points of the sweep that did not finish (budget): scaled from the same model/dataset's others
    missing = after["points"] - len(after["runs"])
    by = {}
    for r in per_run:
        by.setdefault((r["dataset"], r["model"]), []).append(r["paper_run_s"])
    rows = [{"dataset": k[0], "model": k[1], "runs": PAPER["seeds"] * len(v), "minutes": PAPER["seeds"] * sum(v) / 60,
             "mean_run_s": statistics.mean(v)} for k, v in sorted(by.items())]
    done_runs = [r for r in per_run if not r.get("extrapolated")]
    phases = {k: {"median": statistics.median(r[k] for r in done_runs), "max": max(r[k] for r in done_runs)}
              for k in ("kernel_s", "imports_s", "data_s", "prepare_s", "calibrate_s", "train_s", "evaluate_s",
                        "other_cells_s", "seconds", "paper_run_s")}
    return {"rows": rows, "phases": phases, "occupancy_s": occupancy, "calibration_s": cal, "slots": slots, "longest_run_s": longest,
            "wall_lower_s": lower, "wall_s": upper, "wall_min": upper / 60, "missing_points": missing,
            "extrapolated_points": len(extrapolated), "unestimated_points": unestimated,
            "wall_no_sharing_gain_s": no_gain, "partial": bool(after.get("partial")),
            "wall_scaled_as_before_s": naive_wall,
            "kernel_share": {"min": min(share), "median": statistics.median(share), "max": max(share)},
            "assumptions": (f"{PAPER['num_epochs']} epochs (training scaled from {after['epochs']:g}), {PAPER['seeds']} seeds, "
                            f"{slots} runs at once on one GPU; wall = Σ/slots + (1 − 1/slots) × longest run (list scheduling)"
                            + (" (DRY RUN: tiny shapes on CPU, meaningless figures)" if dry else ""))}


def dp_ratios(steps_rows: list[dict], after_runs: list[dict]) -> dict:
    """DP-LoRA ÷ LoRA: step time (interleaved) per settings group, and training seconds per
    (model, dataset) in the paper-profile sweep (ε = 1 against ∞, bf16 runs)."""
    step_r = {f"{r['model']}/{r['group']}": r["ratio_vs_lora"] for r in steps_rows
              if r["method"] == "dp-lora" and "ratio_vs_lora" in r}
    run_r = {}
    for r in after_runs:
        if r["twin"] or r["method"] != "lora" or r["epsilon"] != 1:
            continue
        base = [b for b in after_runs if not b["twin"] and b["method"] == "lora" and b["epsilon"] is None
                and b["model"] == r["model"] and b["dataset"] == r["dataset"]]
        if base and base[0]["train_s"] > 0:
            run_r[f"{r['model']}/{r['dataset']}"] = (r["train_s"] / r["steps"]) / (base[0]["train_s"] / base[0]["steps"])
    return {"step": step_r, "run_per_step": run_r}


def f1_parity(after_runs: list[dict]) -> list[dict]:
    out = []
    for t in (r for r in after_runs if r["twin"]):
        same = [r for r in after_runs if not r["twin"] and r["model"] == t["model"] and r["dataset"] == t["dataset"]
                and r["method"] == t["method"] and r["epsilon"] == t["epsilon"]]
        if same:
            out.append({"dataset": t["dataset"], "model": t["model"], "epsilon": t["epsilon"], "f1_fp32": t["weighted_f1"],
                        "f1_bf16": same[0]["weighted_f1"], "difference": same[0]["weighted_f1"] - t["weighted_f1"],
                        "train_s_fp32": t["train_s"], "train_s_bf16": same[0]["train_s"],
                        "learned_nothing": t["learned_nothing_weighted_f1"]})
    return out


def choose_epochs(steps_rows: list[dict], n_train: dict, budget_s: float, slots: int, dry: bool) -> float:
    """Epochs per run of the after-sweep so that it fits ``budget_s``: training predicted from the
    bf16 step times (× padded length ÷ 128) and a fixed 15 s per run, at half the slots' speed-up."""
    if dry:
        return 0.5
    t = {}
    for r in steps_rows:
        if r["group"] == ("new-bf16" if any(x["group"] == "new-bf16" for x in steps_rows) else "new-fp32"):
            t[(r["model"], r["method"])] = r["median_s"]
    factor = {"mimic-cxr": 1.7, "ct-rate": 3.9}  # padded tokens of a 256-report chunk ÷ 128 (simulated lengths)
    per_epoch = 0.0
    for kind, n in n_train.items():
        steps = n / PAPER["batch_size"]
        for shape in SHAPES.values():
            for method, count in (("dp-lora", 4 + 1), ("lora", 1), ("full", 1)):
                per_epoch += count * steps * factor[kind] * t.get((shape, method), t.get((shape, "dp-lora"), 0.5))
    fixed = 36 * 15.0
    speedup = max(1.0, slots / 2)
    epochs = (budget_s * speedup - fixed) / max(per_epoch, 1e-9)
    return float(min(1.0, max(0.1, round(epochs, 2))))


def finish(out: dict, *, dry: bool) -> None:
    """The estimates and ratios from the parts' results (also for a gpu.json saved mid-sweep)."""
    out["after"]["grid"] = estimate_after(out["after"], out.get("calibration"), dry=dry,
                                          single=single_run_training(out["steps"]["rows"], out["before"]["runs"]))
    out["dp_ratio"] = dp_ratios(out["steps"]["rows"], out["after"]["runs"])
    out["f1_parity"] = f1_parity(out["after"]["runs"])


def report(out: dict) -> None:
    """The summary, printed last (the device reply carries the end of the output)."""
    gpu = out["machine"].get("gpu", out["device"])
    print(f"\n=== summary on {gpu} ===")
    b, a = out["before"]["grid"], out["after"].get("grid") or {}
    print(f"paper grid (108 runs, 3 seeds, 5 epochs, ~{out['args']['n']} reports per dataset):")
    print(f"  before (sequential, physical 64, fp32, cold kernel {out['kernel'].get('cold_s', float('nan')):.1f} s): "
          f"{b['total_s'] / 60:.1f} min")
    if a:
        print(f"  after  ({a['slots']} runs at once, physical auto, bf16 auto, warm kernels, caches): {a['wall_min']:.1f} min "
              f"(lower bound {a['wall_lower_s'] / 60:.1f} min; {a['missing_points']} sweep points unfinished, "
              f"{a['extrapolated_points']} extrapolated)")
        if a.get("unestimated_points"):
            print(f"  INCOMPLETE: {a['unestimated_points']} of the sweep's points have no finished run of their "
                  "dataset and model: the 'after' figure leaves them out")
        if a.get("wall_scaled_as_before_s"):
            print(f"  after, its training scaled as 'before' was (setup, first step and ε accounting × epochs too): "
                  f"{a['wall_scaled_as_before_s'] / 60:.1f} min")
        if a.get("wall_no_sharing_gain_s"):
            print(f"  after, if runs sharing the GPU trained no faster than one at a time: "
                  f"{a['wall_no_sharing_gain_s'] / 60:.1f} min")
        for r in a["rows"]:
            print(f"    {r['dataset']:9s} {r['model']:12s} {r['runs']:3d} runs  mean run {r['mean_run_s']:6.1f} s")
        print("  per run (median / max s): " + ", ".join(f"{k[:-2]} {v['median']:.1f}/{v['max']:.1f}" for k, v in a["phases"].items()))
        phys = sorted({(r["dataset"], r["model"], r["physical_batch_size"], r["precision"]) for r in out["after"]["runs"]
                       if not r["twin"]})
        print("  physical batch (auto) and precision: " + ", ".join(f"{d}/{m} {p} {q}" for d, m, p, q in phys))
        ks = a["kernel_share"]
        print(f"  papermill + kernel start share of a paper-profile run: {100 * ks['min']:.1f}–{100 * ks['max']:.1f} % "
              f"(median {100 * ks['median']:.1f} %)")
    for k, v in out["dp_ratio"]["step"].items():
        print(f"  DP-LoRA ÷ LoRA step time {k}: {v:.3f}")
    for k, v in out["dp_ratio"]["run_per_step"].items():
        print(f"  DP-LoRA ÷ LoRA per training step in the sweep {k}: {v:.3f}")
    for c in out["steps"]["bf16_check"]:
        print(f"  bf16 per-sample gradients {c['model']}: {c['grad_rtol']:.4f} / norms {c['norm_rtol']:.4f}: "
              f"{'within' if c['within_tolerance'] else 'OUT OF'} tolerance")
    for f in out["f1_parity"]:
        print(f"  weighted F1 {f['dataset']} {f['model']} ε={f['epsilon']}: fp32 {f['f1_fp32']:.4f}, bf16 {f['f1_bf16']:.4f} "
              f"(Δ {f['difference']:+.4f}); train {f['train_s_fp32']:.1f} s → {f['train_s_bf16']:.1f} s")
