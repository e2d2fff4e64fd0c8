"""Step benchmark: the cost of DP, side by side, on the same model, batch, length and data.

    python bench/step.py                          # CPU default grid (see --help)
    python bench/step.py --models bert-small-shape albert-base-shape --batch-size 64 --max-length 128
    python bench/step.py --tiny                   # seconds: tiny models, for tests

For each model, five methods are timed on identical batches (random token ids of exactly
``--max-length`` tokens, 14 random labels):

=================  =============================================================================
``lora``           non-private LoRA (query/value, r=8) + classification head — the reference
``dp-lora``        DP-SGD LoRA, Opacus ``hooks`` per-sample gradients (privrad's default)
``dp-lora-ghost``  DP-SGD LoRA, Opacus ghost clipping (``grad_sample_mode="ghost"``: per-sample
                   gradient norms without per-sample gradients, then a second backward). Opacus
                   refuses it for ALBERT: its one layer is used many times ("Parameter tying is
                   not supported with Ghost Clipping") — reported as n/a with that reason.
``dp-full``        DP-SGD full fine-tuning (hooks)
``full``           non-private full fine-tuning
=================  =============================================================================

One step is exactly the body of ``privrad.train.train``'s loop for one logical batch: the model
comes from ``privrad.models.build_model``, its forward pass is ``privrad.features.Classifier``'s,
the private ones are made private by the same ``privrad.privacy.make_private`` call (Opacus'
``GradSampleModule``, the flat ``DPOptimizer`` over AdamW, ``signal_skip_step`` per physical
chunk), and the loss is ``privrad.train.example_losses``. Noise is drawn as in a real run (σ = 1).

Each (model, method) runs in a fresh process so its peak RSS is its own; on a GPU the peak is
``torch.cuda.max_memory_allocated``. Time = median over ``--repeats`` steps after ``--warmup``.
``mem`` is the peak during training; ``+train`` the peak minus the memory held once the model
was built (what training itself adds: activations, gradients, optimizer state, per-sample
gradients). Ratios are to ``lora`` of the same model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

METHODS = {
    "lora": dict(method="lora", private=False, mode=None),
    "dp-lora": dict(method="lora", private=True, mode="hooks"),
    "dp-lora-ghost": dict(method="lora", private=True, mode="ghost"),
    "dp-full": dict(method="full", private=True, mode="hooks"),
    "full": dict(method="full", private=False, mode=None),
    "dp-lora-functorch": dict(method="lora", private=True, mode="functorch"),
}
DEFAULT_METHODS = ["lora", "dp-lora", "dp-lora-ghost", "dp-full", "full"]
#: CPU default: a 2-core step of BERT-medium / ALBERT-base shape at batch 64 × 128 takes 17 / 50 s, so
#: those two are left to the GPU script (or ``--models``); minilm-albert is the ALBERT-shaped stand-in.
CPU_MODELS = ["tiny-bert", "tiny-albert", "minilm-l6", "minilm-albert", "bert-small-shape"]
GPU_MODELS = ["tiny-bert", "tiny-albert", "bert-small-shape", "bert-medium-shape", "albert-base-shape"]
N_LABELS = 14


def synthetic_data(n: int, max_length: int, seed: int = 0):
    """``n`` reports of exactly ``max_length`` tokens ([CLS] … [SEP]) and 14 random labels."""
    import numpy as np

    from privrad.data.tokenize import Encoded, EncodedDataset

    rng = np.random.default_rng(seed)
    ids = [np.concatenate([[101], rng.integers(1000, 30000, max_length - 2), [102]]).astype(np.int32) for _ in range(n)]
    labels = (rng.random((n, N_LABELS)) < 0.2).astype(np.float32)
    return EncodedDataset(Encoded(ids, np.full(n, max_length), max_length, 0), labels, np.ones((n, N_LABELS), bool))


class HFForward:
    """The forward pass privrad used before :class:`privrad.features.Classifier`: the model's own
    ``transformers`` forward over every token of every layer (for before → after comparisons)."""

    def __new__(cls, model, *, full_private: bool = False):
        import torch

        class _HF(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, input_ids=None, attention_mask=None, features=None):
                kw = {}
                if full_private:  # Opacus needs one row of position ids per report to split their gradient
                    b, t = input_ids.shape
                    kw["position_ids"] = torch.arange(t, device=input_ids.device).expand(b, t)
                return self.model(input_ids=input_ids, attention_mask=attention_mask, **kw).logits

        return _HF()


class Stepper:
    """One logical DP-SGD / SGD step exactly as ``privrad.train.train`` does it (see module doc).

    ``forward``: ``"fast"`` (privrad's :class:`~privrad.features.Classifier`: [CLS]-only top layer,
    frozen-layer features when ``data`` carries them) or ``"hf"`` (the model's own forward).
    """

    def __init__(self, model, method: str, *, batch_size: int, physical_batch_size: int, device: str, lr: float = 1e-4,
                 noise_multiplier: float = 1.0, forward: str = "fast", precision: str = "fp32"):
        import torch

        from privrad.features import Classifier
        from privrad.privacy import make_private
        from privrad.train import _NonPrivate

        spec = METHODS[method]
        self.private, self.mode, self.device = spec["private"], spec["mode"], device
        self.batch_size, self.physical_batch_size, self.model, self.precision = batch_size, physical_batch_size, model, precision
        net = Classifier(model) if forward == "fast" else HFForward(model, full_private=self.private and spec["method"] == "full")
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
        if self.private:
            self.trainer = make_private(
                module=net, optimizer=optimizer, num_samples=batch_size, batch_size=batch_size, steps=1, max_grad_norm=1.0,
                noise_multiplier=noise_multiplier, grad_sample_mode=self.mode,
                noise_generator=torch.Generator(device=device).manual_seed(1))
        else:
            self.trainer = _NonPrivate(net, optimizer, None)

    def detach(self) -> None:
        """Remove Opacus' hooks (as ``privrad.train`` does after training)."""
        if self.private:
            self.trainer.close()

    def step(self, data, indices) -> float:
        from privrad.train import _batch, _chunks, _inputs, autocast, example_losses

        chunks = _chunks(indices, data, self.physical_batch_size)
        loss_sum = 0.0
        for k, chunk in enumerate(chunks):
            batch = {key: v.to(self.device) for key, v in _batch(data, chunk).items()}
            with autocast(self.precision, self.device):
                logits = self.trainer.module(**_inputs(batch))
            losses = example_losses(logits.float(), batch)
            loss_sum += float(losses.detach().sum())
            self.trainer.backward(losses, last=k == len(chunks) - 1)
        return loss_sum


def measure(model_name: str, method: str, *, batch_size: int, max_length: int, repeats: int, warmup: int,
            device: str = "cpu", physical_batch_size: int | None = None, models_root: str | None = None,
            precision: str = "fp32", lora_r: int = 8) -> dict:
    """Time one (model, method) in this process; returns a JSON-able dict."""
    import torch

    from privrad.models import build_model, count_parameters

    spec = METHODS[method]
    cuda = device.startswith("cuda")
    path = common.resolve_model(model_name, models_root)
    data = synthetic_data(batch_size, max_length)
    physical_batch_size = physical_batch_size or batch_size
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = build_model(path, N_LABELS, method=spec["method"], device=device, seed=0, lora_r=lora_r, lora_alpha=2 * lora_r)
    params = count_parameters(model)
    out = {"model": model_name, "method": method, "batch_size": batch_size, "max_length": max_length,
           "physical_batch_size": physical_batch_size, "device": device, "trainable": params["trainable"],
           "total": params["total"], "precision": precision, "lora_r": lora_r}
    try:
        stepper = Stepper(model, method, batch_size=batch_size, physical_batch_size=physical_batch_size, device=device,
                          precision=precision)
        base = torch.cuda.memory_allocated() / 2**20 if cuda else common.rss_mb()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times, idx = [], list(range(batch_size))
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            stepper.step(data, idx)
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    except NotImplementedError as exc:  # ghost clipping on a tied (reused) layer
        return {**out, "status": "n/a", "reason": str(exc)}
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else common.peak_rss_mb()
    return {**out, "status": "ok", "median_s": statistics.median(times), "min_s": min(times),
            "times_s": times, "peak_mb": peak, "base_mb": base, "train_mb": max(0.0, peak - base)}


def measure_interleaved(model_name: str, methods, *, batch_size: int, max_length: int, repeats: int, warmup: int,
                        device: str = "cpu", models_root: str | None = None, physical_batch_size: int | None = None,
                        precision: str = "fp32", lora_r: int = 8, data=None) -> dict[str, list[float]]:
    """Step times of several methods on one model, steps alternating A B C A B C … in one process.

    On a shared machine the load drifts over minutes; alternating steps exposes every method to
    the same drift, so the time *ratios* stay meaningful where back-to-back runs would not.
    (Memory is not measured here: the processes are shared.)
    """
    import torch

    from privrad.models import build_model

    path = common.resolve_model(model_name, models_root)
    data = synthetic_data(batch_size, max_length) if data is None else data
    idx = list(range(min(batch_size, len(data))))
    steppers = {}
    for method in methods:
        model = build_model(path, N_LABELS, method=METHODS[method]["method"], device=device, seed=0, lora_r=lora_r,
                            lora_alpha=2 * lora_r)
        try:
            stepper = Stepper(model, method, batch_size=batch_size, physical_batch_size=physical_batch_size or batch_size,
                              device=device, precision=precision)
            stepper.step(data, idx)  # probe: ghost on a tied layer raises here
        except NotImplementedError:
            continue
        steppers[method] = stepper
    times = {m: [] for m in steppers}
    for i in range(warmup + repeats):
        for method, s in steppers.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            s.step(data, idx)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= warmup:
                times[method].append(time.perf_counter() - t0)
    return times


def dp_full_physical_batch_size(model_name: str, batch_size: int, budget_gb: float, models_root: str | None = None) -> int:
    """Physical batch for DP full fine-tuning so per-sample gradients stay within ``budget_gb``
    (B × trainable × 4 bytes); the logical batch (and so the maths) is unchanged."""
    from transformers import AutoConfig

    from privrad.models import get_model_spec

    path = common.resolve_model(model_name, models_root)
    spec = get_model_spec(path)
    if spec.builder is not None:  # registered builder models: count by building once (small ones)
        from privrad.models import build_model, count_parameters

        n = count_parameters(build_model(path, N_LABELS, method="full"))["trainable"]
    else:
        c = AutoConfig.from_pretrained(spec.source)
        from transformers import AutoModelForSequenceClassification

        with __import__("torch").device("meta"):
            n = sum(p.numel() for p in AutoModelForSequenceClassification.from_config(c).parameters())
    per = n * 4 / 2**30
    return int(max(1, min(batch_size, budget_gb // per if per > 0 else batch_size)))


def run(models, methods, *, batch_size, max_length, repeats, warmup, device, physical_batch_size=None, dp_full_budget_gb=4.0,
        isolate=True, models_root=None, threads=None, timeout=None) -> list[dict]:
    rows = []
    for model_name in models:
        if model_name in common.SHAPES:
            common.shaped_model_dir(model_name, models_root)  # write once, outside the timed children
        for method in methods:
            phys = physical_batch_size
            if method == "dp-full" and not physical_batch_size:
                phys = dp_full_physical_batch_size(model_name, batch_size, dp_full_budget_gb, models_root)
            kw = dict(batch_size=batch_size, max_length=max_length, repeats=repeats, warmup=warmup, device=device,
                      physical_batch_size=phys,
                      models_root=models_root)
            if isolate:
                argv = [__file__, "--child", json.dumps({"model": model_name, "method": method, "threads": threads, **kw})]
                r = common.run_child(argv, timeout=timeout)
                r.setdefault("model", model_name)
                r.setdefault("method", method)
            else:
                r = measure(model_name, method, **kw)
            rows.append(r)
            print(f"  {model_name:18s} {method:14s} {_brief(r)}", flush=True)
    _add_ratios(rows)
    return rows


def _brief(r: dict) -> str:
    if r.get("status") != "ok":
        return f"{r.get('status')}: {r.get('reason') or r.get('error')}"
    return f"{r['median_s'] * 1000:9.1f} ms  peak {r['peak_mb']:8.0f} MB  (+{r['train_mb']:.0f} MB, physical_batch_size {r['physical_batch_size']})"


def _add_ratios(rows: list[dict]) -> None:
    ref = {r["model"]: r for r in rows if r["method"] == "lora" and r.get("status") == "ok"}
    for r in rows:
        base = ref.get(r["model"])
        if base and r.get("status") == "ok":
            r["time_ratio"] = r["median_s"] / base["median_s"]
            r["mem_ratio"] = r["peak_mb"] / base["peak_mb"]
            r["train_mem_ratio"] = r["train_mb"] / base["train_mb"] if base["train_mb"] > 0 else None


def render(rows: list[dict]) -> str:
    shown = []
    for r in rows:
        s = dict(r)
        s["ms"] = r["median_s"] * 1000 if r.get("status") == "ok" else None
        if r.get("status") != "ok":
            s["note"] = ("n/a: " + (r.get("reason") or "")[:60]) if r.get("status") == "n/a" else ("error: " + r.get("error", ""))[:70]
        elif r.get("physical_batch_size") != r.get("batch_size"):
            s["note"] = f"physical_batch_size {r['physical_batch_size']}"
        shown.append(s)
    return common.table(shown, [("model", "model", "s"), ("method", "method", "s"), ("ms", "step ms", ".1f"),
                                ("time_ratio", "×time", ".2f"), ("peak_mb", "peak MB", ".0f"),
                                ("mem_ratio", "×mem", ".2f"), ("train_mb", "+train MB", ".0f"),
                                ("train_mem_ratio", "×+train", ".2f"), ("note", "note", "s")])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=None, help=f"default on CPU: {' '.join(CPU_MODELS)}")
    ap.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--physical-batch-size", type=int, default=None, help="physical micro-batch (default: the whole batch; "
                                                                "dp-full is capped by --dp-full-budget-gb)")
    ap.add_argument("--dp-full-budget-gb", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tiny", action="store_true", help="tiny models, batch_size 8, max_length 32: a dry run for tests")
    ap.add_argument("--in-process", action="store_true", help="no subprocess per configuration (memory shared)")
    ap.add_argument("--models-root", default=None, help="where *-shape model folders are written")
    ap.add_argument("--out", default=str(common.OUT_DIR / "step.json"))
    ap.add_argument("--interleave", action="store_true",
                    help="time ratios only: all methods of a model in one process, steps alternating (robust to load drift)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kw = json.loads(args.child)
        common.setup_env(kw.pop("threads"))
        print(json.dumps(measure(kw.pop("model"), kw.pop("method"), **kw)))
        return 0
    common.setup_env(args.threads)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        args.models = args.models or ["tiny-bert", "tiny-albert"]
        args.batch_size, args.max_length, args.repeats, args.warmup = 8, 32, 2, 1
    models = args.models or (GPU_MODELS if device.startswith("cuda") else CPU_MODELS)
    if args.interleave:
        return _main_interleaved(args, models, device)
    load0 = os.getloadavg()
    print(f"step benchmark: batch_size {args.batch_size}, max_length {args.max_length}, {args.repeats} timed steps after "
          f"{args.warmup} warm-up, device {device}", flush=True)
    rows = run(models, args.methods, batch_size=args.batch_size, max_length=args.max_length, repeats=args.repeats,
               warmup=args.warmup, device=device, physical_batch_size=args.physical_batch_size, dp_full_budget_gb=args.dp_full_budget_gb,
               isolate=not args.in_process, models_root=args.models_root, threads=args.threads)
    print()
    print(render(rows))
    info = {**common.machine(), "loadavg_start": load0, "loadavg_end": os.getloadavg()}
    path = common.write_json(Path(args.out).name, {"machine": info, "args": vars(args), "rows": rows},
                             Path(args.out).parent)
    print(f"\nwritten {path}")
    return 0


def _main_interleaved(args, models, device) -> int:
    load0 = os.getloadavg()
    print(f"interleaved step times: batch_size {args.batch_size}, max_length {args.max_length}, {args.repeats} rounds after "
          f"{args.warmup} warm-up, device {device}", flush=True)
    rows = []
    for model_name in models:
        times = measure_interleaved(model_name, args.methods, batch_size=args.batch_size, max_length=args.max_length,
                                    repeats=args.repeats, warmup=args.warmup, device=device, models_root=args.models_root)
        ref = statistics.median(times["lora"]) if "lora" in times else None
        for method in args.methods:
            t = times.get(method)
            row = {"model": model_name, "method": method, "batch_size": args.batch_size, "max_length": args.max_length}
            if t:
                # per-round ratios to lora, then their median: each round shares its load
                per_round = [a / b for a, b in zip(t, times["lora"])] if "lora" in times else []
                row.update(status="ok", median_s=statistics.median(t), times_s=t,
                           time_ratio=statistics.median(per_round) if per_round else None,
                           ratio_of_medians=statistics.median(t) / ref if ref else None)
            else:
                row.update(status="n/a", reason="refused by Opacus (ghost clipping and a tied layer)")
            rows.append(row)
            print(f"  {model_name:18s} {method:14s} " + (f"{row['median_s'] * 1000:9.1f} ms  ×{row['time_ratio']:.2f}"
                                                          if t else "n/a"), flush=True)
    print(common.table(rows, [("model", "model", "s"), ("method", "method", "s"), ("median_s", "step s", ".3f"),
                              ("time_ratio", "×time (median of per-round ratios)", ".2f"),
                              ("ratio_of_medians", "×time (ratio of medians)", ".2f")]))
    info = {**common.machine(), "loadavg_start": load0, "loadavg_end": os.getloadavg()}
    path = common.write_json(Path(args.out).name, {"machine": info, "args": vars(args), "rows": rows}, Path(args.out).parent)
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
