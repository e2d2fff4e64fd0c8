"""The forward-pass speed-ups of issue 14, side by side: [CLS]-only top layer, LoRA in the top
layers only, frozen-layer features (cached), pooler frozen — each against the forward pass
privrad used before (the model's own ``transformers`` forward, LoRA in every layer).

    python bench/fastpath.py                              # minilm-l6, minilm-l3, minilm-albert, DP-LoRA, batch 256
    python bench/fastpath.py --models minilm-l6 --batch-size 512 --rounds 5
    python bench/fastpath.py --tiny                       # seconds: tiny-bert, for tests

Steps alternate between the variants in one process (A B C … A B C …) on the same Poisson-sized
batch of real simulated MIMIC-CXR reports, 1 thread (what each of ``--jobs 2`` gets on 2
cores); the ratio is the median over rounds of each round's ratio to ``before``, so load drift
on a shared machine hits every variant alike. The one-time cost of computing the frozen-layer
features is timed separately (reports per second). Also times bf16 autocast against float32
once (``--bf16``), per-sample gradients included.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

#: name → (forward, build_model options, uses the feature cache)
VARIANTS = {
    "before": ("hf", {}, False),                                        # privrad before issue 14
    "cls-only": ("fast", {}, False),                                    # + [CLS]-only top layer
    "top1": ("fast", {"lora_layers": 1}, False),                        # + LoRA in the top layer only
    "top1-cached": ("fast", {"lora_layers": 1}, True),                  # + frozen-layer features cached (and
                                                                        #   the top layer's key/value bases)
    "top1-cached-frozen-pooler": ("fast", {"lora_layers": 1, "train_pooler": False}, True),
}


def reports(n: int, max_length: int, seed: int = 1):
    """``n`` simulated MIMIC-CXR reports (simulator seed ``seed``, not the study's), tokenized."""
    from privrad.data import load_dataset
    from privrad.data.simulate import simulate
    from privrad.data.tokenize import EncodedDataset, tokenize_dataset
    from privrad.models import load_tokenizer

    folder = common.OUT_DIR / "data" / f"mimic-cxr-n{n}-s{seed}"
    simulate("mimic-cxr", folder, n=n, seed=seed)
    ds = load_dataset("simulated-mimic-cxr", folder).split("train")
    enc = tokenize_dataset(ds, load_tokenizer("minilm-l6"), max_length=max_length)
    return EncodedDataset(enc, ds.labels, ds.label_mask)


def interleaved(model_name: str, data, *, batch_size: int, physical_batch_size: int, rounds: int, warmup: int, method: str,
                variants) -> dict[str, list[float]]:
    import numpy as np

    from privrad.data.tokenize import EncodedDataset
    from privrad.features import Classifier, frozen_features
    from privrad.models import build_model, get_model_spec
    from step import METHODS, Stepper

    rng = np.random.default_rng(0)
    idx = sorted(rng.choice(len(data), size=min(batch_size, len(data)), replace=False).tolist())
    steppers, inputs = {}, {}
    for name in variants:
        forward, options, cached = VARIANTS[name]
        if "lora_layers" in options and get_model_spec(model_name).family == "albert":
            continue  # ALBERT adapts its one shared layer at every use: nothing to cache
        model = build_model(model_name, data.labels.shape[1], method=METHODS[method]["method"], seed=0, **options)
        d = data
        if cached:
            feats = frozen_features(Classifier(model), data.encoded)
            d = EncodedDataset(data.encoded, data.labels, data.label_mask, feats)
        steppers[name] = Stepper(model, method, batch_size=batch_size, physical_batch_size=physical_batch_size, device="cpu",
                                 forward=forward)
        inputs[name] = d
    times = {name: [] for name in steppers}
    cpu = {name: [] for name in steppers}
    for r in range(warmup + rounds):
        for name, s in steppers.items():
            t0, c0 = time.perf_counter(), time.process_time()
            s.step(inputs[name], idx)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    return times, cpu


def feature_rate(model_name: str, data, n: int) -> float:
    """Reports per CPU-second of computing the frozen-layer features (LoRA in the top layer)."""
    from privrad.features import Classifier, frozen_features
    from privrad.models import build_model

    net = Classifier(build_model(model_name, data.labels.shape[1], seed=0, lora_layers=1))
    sub = data.encoded.subset(range(min(n, len(data))))
    t0 = time.process_time()
    frozen_features(net, sub, key_value=False)
    return len(sub) / (time.process_time() - t0)


def bf16_check(data, batch_size: int) -> dict:
    """float32 vs bf16 autocast: one non-private LoRA step of minilm-l3, interleaved, and whether
    a DP-LoRA step runs under autocast at all (Opacus' per-sample gradients come out in bf16)."""
    import numpy as np
    import torch

    from privrad.models import build_model
    from step import Stepper

    idx = list(range(min(batch_size, len(data))))
    s = Stepper(build_model("minilm-l3", data.labels.shape[1], seed=0), "lora", batch_size=batch_size, physical_batch_size=batch_size,
                device="cpu")
    t32, t16 = [], []
    for r in range(4):
        t0 = time.perf_counter()
        s.step(data, idx)
        t32.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            s.step(data, idx)
        t16.append(time.perf_counter() - t0)
    dp = Stepper(build_model("minilm-l3", data.labels.shape[1], seed=0), "dp-lora", batch_size=8, physical_batch_size=8,
                 device="cpu")
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            dp.step(data, idx[:8])
        dp_error = None
    except RuntimeError as exc:
        dp_error = str(exc).split(".")[0]
    return {"fp32_s": float(np.median(t32[1:])), "bf16_autocast_s": float(np.median(t16[1:])),
            "ratio": float(np.median([b / a for a, b in zip(t32[1:], t16[1:])])),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "dp_lora_under_autocast": dp_error or "ran"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["minilm-l6", "minilm-l3", "minilm-albert"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--method", default="dp-lora", choices=["dp-lora", "lora"])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--physical-batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--n", type=int, default=1200, help="simulated reports (the batch is drawn from the training split)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bf16", action="store_true", help="also time bf16 autocast against float32")
    ap.add_argument("--tiny", action="store_true", help="tiny-bert, 60 reports, batch 16: a dry run for tests")
    ap.add_argument("--out", default=str(common.OUT_DIR / "fastpath.json"))
    args = ap.parse_args(argv)
    common.setup_env(args.threads)
    if args.tiny:
        args.models, args.n, args.batch_size, args.physical_batch_size, args.rounds, args.warmup = ["tiny-bert"], 80, 16, 8, 1, 0
    load0 = os.getloadavg()
    data = reports(args.n, args.max_length)
    lengths = [len(x) for x in data.encoded.input_ids]
    print(f"fast-path benchmark: {args.method}, batch_size {args.batch_size} (physical_batch_size {args.physical_batch_size}), "
          f"{len(data)} training reports, mean {statistics.mean(lengths):.1f} tokens, {args.threads} thread(s), "
          f"{args.rounds} rounds after {args.warmup} warm-up; load {load0[0]:.1f}", flush=True)
    rows = []
    for model_name in args.models:
        times, cpu = interleaved(model_name, data, batch_size=args.batch_size, physical_batch_size=args.physical_batch_size,
                                 rounds=args.rounds, warmup=args.warmup, method=args.method, variants=args.variants)
        ref = times.get("before")
        for name, t in times.items():
            ratio = statistics.median(a / b for a, b in zip(t, ref)) if ref else None
            rows.append({"model": model_name, "variant": name, "median_s": statistics.median(t), "times_s": t,
                         "cpu_s": statistics.median(cpu[name]), "cpu_ms_per_report": 1000 * statistics.median(cpu[name]) / args.batch_size,
                         "per_report_ms": 1000 * statistics.median(t) / args.batch_size, "ratio_to_before": ratio,
                         "speedup": 1 / ratio if ratio else None})
            print(f"  {model_name:10s} {name:28s} {statistics.median(t):8.3f} s  ×{ratio:.3f}" if ratio
                  else f"  {model_name:10s} {name:28s} {statistics.median(t):8.3f} s", flush=True)
        if "top1-cached" in times:
            rate = feature_rate(model_name, data, 400 if not args.tiny else 40)
            rows.append({"model": model_name, "variant": "frozen features (once per report)", "reports_per_s": rate})
            print(f"  {model_name:10s} frozen features: {rate:.0f} reports/s", flush=True)
    print(common.table(rows, [("model", "model", "s"), ("variant", "variant", "s"), ("median_s", "step s", ".3f"),
                              ("cpu_s", "step CPU s", ".3f"), ("cpu_ms_per_report", "CPU ms/report", ".2f"),
                              ("ratio_to_before", "× before", ".3f"),
                              ("speedup", "speed-up", ".1f"), ("reports_per_s", "reports/s", ".0f")]))
    out = {"machine": {**common.machine(), "loadavg_start": load0, "loadavg_end": os.getloadavg()},
           "args": vars(args), "rows": rows}
    path = common.write_json(Path(args.out).name, out, Path(args.out).parent)
    if args.bf16:
        out["bf16"] = bf16_check(data, min(args.batch_size, 64))
        print(f"bf16 autocast vs float32 (non-private LoRA step, minilm-l3): ×{out['bf16']['ratio']:.2f} time "
              f"({out['bf16']['cpu_capability']}); DP-LoRA under autocast: {out['bf16']['dp_lora_under_autocast']}")
        path = common.write_json(Path(args.out).name, out, Path(args.out).parent)
    print(f"\nwritten {path}; load now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
