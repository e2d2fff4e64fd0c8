"""bench/gpu.py's parts 1 and 2, what one step and one kernel start cost. Part 1: non-private
LoRA and DP-LoRA step times interleaved in one process on the paper's model shapes (random
weights), at the old settings (physical batch 64, fp32) and the new ones (one chunk, fp32 and
bf16), full fine-tuning in bf16, and bf16 per-sample gradients against float32; plus the step
diagnostics (``--diagnostics``). Part 2: papermill with a cold kernel against one warmed up ahead.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import step  # noqa: E402
from gpu_estimates import PAPER  # noqa: E402

ROOT = common.BENCH_DIR.parent


def _free(device):
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


GROUPS = {  # the old settings, the new ones in fp32 and in bf16
    "old": dict(physical_batch_size=64, precision="fp32", methods=["lora", "dp-lora", "full"]),
    "new-fp32": dict(physical_batch_size=None, precision="fp32", methods=["lora", "dp-lora"]),
    "new-bf16": dict(physical_batch_size=None, precision="bf16", methods=["lora", "dp-lora", "full"]),
}


def steps_part(shapes, device, *, batch_size, max_length, repeats, warmup, dry) -> dict:
    """Interleaved step times per shape and settings group, DP ÷ LoRA per round, and the bf16
    per-sample gradient check."""
    import statistics

    import torch

    from privrad.features import Classifier
    from privrad.models import build_model
    from privrad.train import BF16_GRAD_RTOL, BF16_NORM_RTOL, bf16_gradient_error, per_sample_gradients

    rows, checks = [], []
    for shape in shapes:
        common.shaped_model_dir(shape)
        for group, g in GROUPS.items():
            if g["precision"] == "bf16" and device == "cpu" and not dry:
                continue
            physical = g["physical_batch_size"]
            physical = min(physical or batch_size, batch_size) if not dry else (2 if physical else batch_size)
            try:
                times = step.measure_interleaved(shape, g["methods"], batch_size=batch_size, max_length=max_length,
                                                 repeats=repeats, warmup=warmup, device=device,
                                                 physical_batch_size=physical, precision=g["precision"],
                                                 lora_r=PAPER["lora_r"])
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory: report and go on
                print(f"  {shape} {group}: {type(exc).__name__}: {exc}"[:300], flush=True)
                if dry:
                    raise
                continue
            finally:
                _free(device)
            lora = times.get("lora", [])
            for method, t in times.items():
                r = {"model": shape, "group": group, "method": method, "batch_size": batch_size, "max_length": max_length,
                     "physical_batch_size": physical,
                     "precision": g["precision"], "median_s": statistics.median(t), "status": "ok"}
                if lora and method != "lora":
                    r["ratio_vs_lora"] = statistics.median(a / b for a, b in zip(t, lora))
                rows.append(r)
                print(f"  {shape:18s} {group:9s} {method:8s} B={batch_size} phys={physical:3d} {r['median_s'] * 1000:8.1f} ms"
                      + (f"  ×{r['ratio_vs_lora']:.3f} vs LoRA" if "ratio_vs_lora" in r else ""), flush=True)
        # bf16 per-sample gradients against float32, dropout off (the same network twice)
        model = build_model(common.shaped_model_dir(shape), step.N_LABELS, method="lora", lora_r=PAPER["lora_r"],
                            lora_alpha=PAPER["lora_alpha"], device=device, seed=0)
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        torch.manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.02)
        net = Classifier(model)
        data = step.synthetic_data(8, max_length)
        from privrad.train import _batch, _to

        b = _to(_batch(data, list(range(8))), torch.device(device))
        err = bf16_gradient_error(per_sample_gradients(net, b, "fp32"), per_sample_gradients(net, b, "bf16"))
        ok = err["grad_rtol"] <= BF16_GRAD_RTOL and err["norm_rtol"] <= BF16_NORM_RTOL
        checks.append({"model": shape, **err, "within_tolerance": ok, "grad_rtol_limit": BF16_GRAD_RTOL,
                       "norm_rtol_limit": BF16_NORM_RTOL})
        print(f"  {shape:18s} bf16 per-sample gradients vs fp32: {err['grad_rtol']:.4f} (≤ {BF16_GRAD_RTOL}), "
              f"norms {err['norm_rtol']:.4f} (≤ {BF16_NORM_RTOL}): {'within' if ok else 'OUT OF'} tolerance", flush=True)
        del model, net
        _free(device)
    return {"rows": rows, "bf16_check": checks}


def diagnostics(shape: str, device: str, *, batch_size: int, max_length: int, repeats: int, warmup: int) -> dict:
    """Where the bf16 DP step's extra time goes: DP-LoRA ÷ LoRA with privrad's float32 per-sample
    gradients against Opacus' own (bf16) Linear sampler, and the profiler's top operations."""
    import statistics

    import torch
    from opacus.grad_sample.linear import compute_linear_grad_sample

    import privrad.privacy as pp

    res = {}
    ours = pp._linear_grad_sample_float32
    for name, fn in (("float32 sampler", ours), ("opacus bf16 sampler", compute_linear_grad_sample)):
        pp._linear_grad_sample_float32 = fn
        try:
            t = step.measure_interleaved(shape, ["lora", "dp-lora"], batch_size=batch_size, max_length=max_length, repeats=repeats,
                                         warmup=warmup, device=device, precision="bf16", lora_r=PAPER["lora_r"])
        finally:
            pp._linear_grad_sample_float32 = ours
        res[name] = {"lora_s": statistics.median(t["lora"]), "dp_s": statistics.median(t["dp-lora"]),
                     "ratio": statistics.median(a / b for a, b in zip(t["dp-lora"], t["lora"]))}
        print(f"  diagnostics {shape} bf16, {name}: LoRA {res[name]['lora_s'] * 1000:.1f} ms, DP-LoRA "
              f"{res[name]['dp_s'] * 1000:.1f} ms, ×{res[name]['ratio']:.3f}", flush=True)
        _free(device)
    try:  # the profiler's view of a DP-LoRA bf16 step
        from privrad.models import build_model

        model = build_model(common.shaped_model_dir(shape), step.N_LABELS, method="lora", device=device, seed=0,
                            lora_r=PAPER["lora_r"], lora_alpha=PAPER["lora_alpha"])
        s = step.Stepper(model, "dp-lora", batch_size=batch_size, physical_batch_size=batch_size, device=device,
                         precision="bf16")
        data, idx = step.synthetic_data(batch_size, max_length), list(range(batch_size))
        for _ in range(3):
            s.step(data, idx)
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else [])
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(3):
                s.step(data, idx)
            if device == "cuda":
                torch.cuda.synchronize()
        key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=key, row_limit=14, max_name_column_width=48)
        print(table, flush=True)
        res["profile"] = table
        res["profile_cpu"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10, max_name_column_width=48)
        print(res["profile_cpu"], flush=True)
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        res["profile_error"] = f"{type(exc).__name__}: {exc}"[:300]
    _free(device)
    return res


# ----------------------------------------------------------------------------- 2. kernel start

def kernel_part(tmp: Path) -> dict:
    """Seconds papermill needs for a notebook whose one cell is the run notebook's warm-up (imports,
    CUDA start) in a cold kernel, and what the same notebook waits for in a kernel warmed up ahead."""
    import nbformat

    from privrad import executors
    from privrad.pipeline import WARM_UP

    kernel = executors.default_kernel()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(WARM_UP)])
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    path = tmp / "warm.ipynb"
    nbformat.write(nb, path)
    (tmp / "p.json").write_text("{}")
    t0 = time.perf_counter()
    p = subprocess.run(executors.papermill_command(path, tmp / "cold-out.ipynb", tmp / "p.json", kernel, ROOT),
                       capture_output=True, text=True)
    cold = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"papermill failed: {p.stdout[-1500:]} {p.stderr[-1500:]}")
    t0 = time.perf_counter()
    k = executors.WarmKernel(kernel, str(ROOT), WARM_UP, {})
    ready = k.wait_ready()
    warm_start = time.perf_counter() - t0
    task = executors.Task(run_id="w", label="w", notebook=str(path), parameters={}, run_dir=str(tmp / "w"),
                          staging=str(tmp / "warm-out.ipynb"), failed=str(tmp / "w.failed"), kernel=kernel, cwd=str(ROOT))
    t0 = time.perf_counter()
    code, out = k.run(task, tmp / "p.json")
    warm = time.perf_counter() - t0
    res = {"kernel": kernel, "cold_s": cold, "warm_start_s": warm_start, "warm_run_s": warm, "warm_ok": code == 0,
           "warm_up": ready.get("warm_up")}
    print(f"  papermill + kernel start + imports + CUDA: cold {cold:.1f} s; warmed up ahead: {warm_start:.1f} s "
          f"beside the previous run, then {warm:.2f} s for the run (status {code})", flush=True)
    return res
