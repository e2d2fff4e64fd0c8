"""Scaling: step time and memory against batch size and sequence length; examples/s of full runs.

    python bench/scaling.py                # reduced CPU grid (a few minutes on 2 cores)
    python bench/scaling.py --full-grid    # batch 16…512 × length 64…512 (what bench/gpu.sh runs)
    python bench/scaling.py --tiny         # seconds, for tests

Part 1 sweeps the batch size at a fixed length and the length at a fixed batch, for
non-private LoRA and DP-LoRA (hooks), one fresh process per point (peak RSS / allocator peak
is then the point's own), using bench/step.py's step — the body of ``privrad.train``'s loop.

The CPU grid is reduced (a 2-core step of MiniLM-L3 at batch 128 × 64 tokens takes seconds,
BERT-small at 512 × 512 would take minutes): batch {16, 32, 64, 128} at length 64 and length
{64, 128, 256} at batch 16, on ``minilm-l3``. The GPU script runs the full grid — batch
{16, 32, 64, 128, 256, 512} at length 128 and length {64, 128, 256, 512} at batch 64 — on
the paper-shaped models.

Part 2 runs whole privrad runs (``privrad.pipeline.run``: tokenize, build, train, evaluate, write
the run folder) on simulated data of growing size and reports training examples/s and the
share of each phase, which shows the fixed costs a small run pays.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import step  # noqa: E402

CPU_GRID = dict(model="minilm-l3", batch_sizes=[16, 32, 64, 128], at_max_length=64, max_lengths=[64, 128, 256], at_batch_size=16)
FULL_GRID = dict(model="bert-small-shape", batch_sizes=[16, 32, 64, 128, 256, 512], at_max_length=128,
                 max_lengths=[64, 128, 256, 512], at_batch_size=64)
TINY_GRID = dict(model="tiny-bert", batch_sizes=[4, 8], at_max_length=16, max_lengths=[16, 32], at_batch_size=4)


def sweep(grid: dict, methods, *, repeats: int, warmup: int, device: str, isolate: bool = True) -> list[dict]:
    rows = []
    points = [(b, grid["at_max_length"], "batch_size") for b in grid["batch_sizes"]]
    points += [(grid["at_batch_size"], L, "max_length") for L in grid["max_lengths"]]
    if grid["model"] in common.SHAPES:
        common.shaped_model_dir(grid["model"])
    for b, L, axis in points:
        for method in methods:
            kw = dict(batch_size=b, max_length=L, repeats=repeats, warmup=warmup, device=device, physical_batch_size=None,
                      models_root=None)
            if isolate:
                r = common.run_child([step.__file__, "--child", json.dumps(
                    {"model": grid["model"], "method": method, "threads": None, **kw})])
            else:
                r = step.measure(grid["model"], method, **kw)
            r.update(axis=axis, batch_size=b, max_length=L, method=method, model=grid["model"])
            if r.get("status") == "ok":
                r["examples_per_s"] = b / r["median_s"]
                r["tokens_per_s"] = b * L / r["median_s"]
            rows.append(r)
            print(f"  {axis:10s} batch_size={b:4d} max_length={L:4d} {method:8s} {step._brief(r)}", flush=True)
    return rows


def full_runs(sizes, *, model: str, max_length: int, num_epochs: float, batch_size: int, epsilon, kind: str = "mimic-cxr",
              physical_batch_size: int = 64, progress: bool = False) -> list[dict]:
    """Whole privrad runs on simulated data of each size: phase seconds and examples/s."""
    from privrad.config import RunConfig
    from privrad.pipeline import run

    rows = []
    with tempfile.TemporaryDirectory(prefix="privrad-scaling-") as tmp:
        for n in sizes:
            t0 = time.perf_counter()
            ds = common.report_dataset(kind, n, root=Path(tmp) / "data")
            t_data = time.perf_counter() - t0
            cfg = RunConfig(dataset=ds.name, data_dir=str(Path(tmp) / "data"), model=common.resolve_model(model),
                            method="lora", epsilon=epsilon, num_epochs=num_epochs, batch_size=batch_size,
                            physical_batch_size=physical_batch_size, max_length=max_length, n_bootstrap=200)
            t1 = time.perf_counter()
            res = run(cfg, dataset=ds, results_dir=Path(tmp) / "results", progress=progress, cache_dir=Path(tmp) / "cache")
            wall = time.perf_counter() - t1
            rt = res.info["runtime"]
            n_train = res.info["split_sizes"]["train"]
            rows.append({"n": n, "n_train": n_train, "model": model, "epsilon": epsilon, "max_length": max_length,
                         "data_s": t_data, "prepare_s": rt["prepare_s"], "train_s": rt["train_s"],
                         "evaluate_s": rt["evaluate_s"], "run_wall_s": wall, "steps": len(res.curve),
                         "train_examples_per_s": n_train * num_epochs / rt["train_s"],
                         "run_examples_per_s": n_train * num_epochs / wall, "weighted_f1": res.weighted_f1})
            r = rows[-1]
            print(f"  n={n:6d} train={n_train:6d} data {t_data:6.1f}s prepare {r['prepare_s']:6.1f}s train {r['train_s']:7.1f}s "
                  f"eval {r['evaluate_s']:6.1f}s  {r['train_examples_per_s']:7.1f} ex/s train, {r['run_examples_per_s']:7.1f} ex/s run",
                  flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full-grid", action="store_true", help="batch 16…512 × length 64…512 on bert-small-shape")
    ap.add_argument("--tiny", action="store_true", help="seconds: tiny model, tiny grid (tests)")
    ap.add_argument("--model", default=None, help="override the grid's model")
    ap.add_argument("--methods", nargs="+", default=["lora", "dp-lora"], choices=list(step.METHODS))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default=None)
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="dataset sizes of the full runs")
    ap.add_argument("--run-model", default=None, help="model of the full runs (default minilm-l3; tiny-bert with --tiny)")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--skip-runs", action="store_true")
    ap.add_argument("--in-process", action="store_true")
    ap.add_argument("--out", default=str(common.OUT_DIR / "scaling.json"))
    args = ap.parse_args(argv)
    common.setup_env()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    grid = dict(TINY_GRID if args.tiny else FULL_GRID if args.full_grid else CPU_GRID)
    if args.model:
        grid["model"] = args.model
    if args.tiny:
        args.repeats, args.warmup = 1, 1
    load0 = os.getloadavg()
    out = {"grid": grid, "sweep": [], "runs": []}
    if not args.skip_sweep:
        print(f"scaling sweep on {grid['model']} ({device}):", flush=True)
        out["sweep"] = sweep(grid, args.methods, repeats=args.repeats, warmup=args.warmup, device=device,
                             isolate=not args.in_process)
        print()
        print(common.table(out["sweep"], [("axis", "axis", "s"), ("batch_size", "batch_size", "d"), ("max_length", "max_length", "d"),
                                          ("method", "method", "s"), ("median_s", "step s", ".3f"),
                                          ("examples_per_s", "ex/s", ".1f"), ("tokens_per_s", "tok/s", ".0f"),
                                          ("peak_mb", "peak MB", ".0f"), ("train_mb", "+train MB", ".0f")]))
    if not args.skip_runs:
        sizes = args.sizes or ([120, 240] if args.tiny else [500, 1000, 2000])
        model = args.run_model or ("tiny-bert" if args.tiny else "minilm-l3")
        print(f"\nfull runs (privrad.pipeline.run, {model}, DP-LoRA ε=1, 1 epoch, batch 64, length 96):", flush=True)
        out["runs"] = full_runs(sizes, model=model, max_length=32 if args.tiny else 96, num_epochs=1,
                                batch_size=16 if args.tiny else 64, epsilon=1.0)
    out["machine"] = {**common.machine(), "loadavg_start": load0, "loadavg_end": os.getloadavg()}
    path = common.write_json(Path(args.out).name, out, Path(args.out).parent)
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
