"""The training loop: one readable loop for private (DP-SGD) and non-private fine-tuning.

DP-SGD is assembled by :func:`privrad.privacy.make_private` (Opacus' parts, every quantity the
guarantee depends on passed explicitly); this loop only feeds it:

* **Poisson sampling** with ``sample_rate = batch_size / n_train`` for exactly the planned
  number of steps: the façade's ``batches``.
* **Physical micro-batches**: each logical batch is split into chunks of at most
  ``physical_batch_size`` reports, sorted by length so that each chunk pads little, and the DP
  optimizer is told which chunk ends the logical batch (what Opacus' ``BatchMemoryManager``
  does). Memory then bounds the chunk, never the logical batch.
* **Empty Poisson batches** (possible at small sample rates) become one dummy row with loss
  weight 0: its clipped gradient is 0, so the step adds pure noise and is counted by the
  accountant, as DP-SGD's analysis assumes. Skipping it would drop that step's noise.
* **Per-sample gradients** (Opacus ``hooks``: exact for LoRA on BERT and ALBERT; ALBERT's reused
  layer gets its per-use gradients summed), clipped to ``max_grad_norm`` and noised; the
  accountant records every real step.
* **The forward pass** is :class:`privrad.features.Classifier`'s: a [CLS]-only top layer, and,
  when LoRA adapts only the top layers, frozen-layer features computed once (both exact).
* **Precision** (``precision``): ``bf16`` runs the forward pass under bf16 autocast (weights,
  optimizer state, losses, per-sample gradients, clipping and noise stay float32; the
  per-sample gradients differ from float32 by about 1 % per report, tested); ``auto`` is bf16
  on a GPU that supports it and float32 on a CPU.
* **Physical batch** ``auto``: as many reports per chunk as the GPU memory given to the run
  holds, from a two-point probe of the longest reports before training
  (:func:`auto_physical_batch_size`); the number used is recorded in ``config.json``. A run that
  withholds its training statistics probes placeholder reports of ``max_length`` tokens instead,
  so that neither the number nor its recorded source depends on the training reports.

Non-private training uses shuffled fixed-size batches (the standard baseline) and the same
micro-batch split, with gradients summed over the chunks and divided by the logical batch size.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Collection

import numpy as np
import torch
from torch.nn.functional import binary_cross_entropy_with_logits

from privrad.config import RunConfig
from privrad.data.tokenize import EncodedDataset, collate
from privrad.errors import ConfigError
from privrad.accounting import epsilon_from_history

GRAD_SAMPLE_MODES = ("hooks",)  # exact for LoRA on BERT and ALBERT; faster modes: see issue 5

CURVE_EPSILON_POINTS = 10  # steps at which the curve records ε spent (PLD; the last one is exact PRV in privacy.json)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (data order and noise use their own seeded generators)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainResult:
    model: Any  # the trained model (peft or transformers), hooks removed, in eval mode
    curve: list[dict]
    history: list[tuple[float, float, int]]  # accountant history: (noise_multiplier, sample_rate, steps)
    noise_multiplier: float | None
    sample_rate: float
    planned_steps: int
    delta: float | None
    seconds: float
    info: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return int(sum(t for _, _, t in self.history))


def planned_steps(n_train: int, batch_size: int, num_epochs: float) -> int:
    """Logical steps of a run: ``num_epochs`` passes of ``n_train / batch_size`` expected batches."""
    return max(1, round(num_epochs * n_train / batch_size))


def example_losses(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Per-report loss: BCE averaged over the report's unmasked labels, times its weight.

    Masked (ignored) labels contribute nothing; a dummy row has weight 0. A per-example loss
    (not a batch mean over labels) keeps each report's contribution separable for clipping.
    """
    mask = batch["label_mask"].float()
    bce = binary_cross_entropy_with_logits(logits, batch["labels"], reduction="none") * mask
    return bce.sum(1) / mask.sum(1).clamp(min=1) * batch["weight"]


def _lr_lambda(total: int, warmup_ratio: float):
    warmup = max(1, round(warmup_ratio * total)) if warmup_ratio > 0 else 0

    def f(step: int) -> float:  # linear warm-up, then linear decay to 0 at the last step
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


def _shuffled_batches(n: int, batch_size: int, total: int, generator: torch.Generator):
    """Non-private batches: reshuffle every epoch, fixed size, ``total`` of them."""
    done = 0
    while True:
        perm = torch.randperm(n, generator=generator).tolist()
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i: i + batch_size]
            done += 1
            if done == total:
                return


class _NonPrivate:
    """The non-private counterpart of :class:`privrad.privacy.PrivateTraining` (same loop)."""

    def __init__(self, module, optimizer, batches):
        self.module, self.optimizer, self.batches, self.rows = module, optimizer, batches, 0

    def backward(self, losses, *, last: bool) -> None:
        losses.sum().backward()
        self.rows += len(losses)
        if last:  # the mean over the logical batch
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad /= max(1, self.rows)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.rows = 0


def dp_generators(cfg: RunConfig, device) -> tuple[torch.Generator, torch.Generator]:
    """The DP randomness of a run: the (Poisson sampling, Gaussian noise) generators.

    ``dp_randomness = "secure"`` (the default): each is seeded with 63 bits of OS entropy
    (:mod:`secrets`) that are never stored, printed or written, so nobody — not even someone who
    reads ``config.json`` — can replay the batches or the noise; the guarantee then holds for
    the released adapter. ``"reproducible"``: seeded from the public run seed (``seed``,
    ``seed + 1``), so that the same seed gives the same model; the adapter is then not a DP
    release. Non-private runs shuffle with the seeded generator either way (no DP randomness).
    The run seed always controls initialisation, dropout and evaluation.
    """
    if cfg.private and cfg.dp_randomness == "secure":
        import secrets

        return (torch.Generator().manual_seed(secrets.randbits(63)),
                torch.Generator(device=device).manual_seed(secrets.randbits(63)))
    return torch.Generator().manual_seed(cfg.seed), torch.Generator(device=device).manual_seed(cfg.seed + 1)


#: Reports per chunk of ``physical_batch_size: auto`` on a CPU (memory is not the limit there,
#: and smaller chunks pad less: bench/README.md, section 4).
CPU_PHYSICAL_BATCH_SIZE = 32
#: Share of the run's GPU memory that ``auto`` plans for (the rest: allocator fragmentation,
#: evaluation batches, per-step temporaries the probe does not see).
AUTO_MEMORY_SHARE = 0.8


def resolve_precision(precision: str, device) -> str:
    """``fp32`` or ``bf16`` for ``device``: ``auto`` is bf16 on a GPU that supports it, else fp32."""
    device = torch.device(device)
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision bf16 was asked for but {torch.cuda.get_device_name(device)} has no bf16; "
                          "use precision fp32 (or auto).")
    return precision


def autocast(precision: str, device):
    """The forward pass's autocast context: bf16 autocast for ``bf16``, nothing for ``fp32``."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _logical_cap(cfg: RunConfig, n: int) -> int:
    """The largest logical batch to plan a chunk for: the batch size, plus four standard
    deviations of the Poisson batch size for private runs (so a chunk holds a batch at once)."""
    if not cfg.private:
        return cfg.batch_size
    q = min(1.0, cfg.batch_size / n)
    return int(np.ceil(cfg.batch_size + 4 * np.sqrt(cfg.batch_size * (1 - q))))


def probe_rows(data: EncodedDataset, cfg: RunConfig, *, lengths_public: bool = True) -> tuple[list, int]:
    """The 6 rows :func:`auto_physical_batch_size` measures, longest first, and their width in tokens.

    ``lengths_public``: the 6 longest training reports (every chunk is at most as wide). Otherwise
    (a run that withholds ``longest_report``, :data:`privrad.privacy.TRAINING_STATISTICS`) 6
    placeholder rows of ``max_length`` padding tokens — with zero frozen-layer features of the
    features' width — which no report exceeds: memory depends on shapes only, so the size chosen
    is as safe and is a function of the model, ``max_length`` and the GPU alone, never of the
    training reports."""
    if lengths_public:
        longest = sorted(range(len(data)), key=lambda i: -len(data.encoded.input_ids[i]))[:6]
        return [data[i] for i in longest], len(data.encoded.input_ids[longest[0]])
    width = int(cfg.max_length)
    ids = np.full(width, data.encoded.pad_token_id, dtype=np.int64)
    row = (ids, np.zeros(data.labels.shape[1], np.float32), np.ones(data.labels.shape[1], bool), 1.0)
    if data.features is not None:
        feature = np.asarray(data.features[0])
        row = (*row, np.zeros((width, feature.shape[1]), dtype=feature.dtype))
    return [row] * 6, width


def auto_physical_batch_size(net, data: EncodedDataset, cfg: RunConfig, precision: str, *,
                             lengths_public: bool = True) -> tuple[int, str]:
    """Reports per chunk for ``physical_batch_size: auto``, and how it was found.

    On a GPU: forward + backward of the 2 and then 6 longest training reports (:func:`probe_rows`;
    placeholders of ``max_length`` tokens when ``lengths_public`` is false) measure the memory
    one more report takes (at the longest length, so every chunk fits) and the fixed part; a
    private run adds its per-sample gradients (3 copies of the trainable weights per report:
    the gradients, their clipped form and the norms' temporaries). The budget is
    :data:`AUTO_MEMORY_SHARE` of the run's memory: its share ``PRIVRAD_GPU_MEMORY_GB`` when the
    executor gave one, else what is free on the GPU. Capped at the logical batch. On a CPU:
    :data:`CPU_PHYSICAL_BATCH_SIZE`.
    """
    import os

    cap = _logical_cap(cfg, len(data))
    device = next(net.parameters()).device
    if device.type != "cuda":
        return min(cap, CPU_PHYSICAL_BATCH_SIZE), "auto on a CPU"
    share = os.environ.get("PRIVRAD_GPU_MEMORY_GB")
    free, _ = torch.cuda.mem_get_info(device)
    limit = float(share) * 2**30 if share else free + torch.cuda.memory_reserved(device)
    rows, width = probe_rows(data, cfg, lengths_public=lengths_public)
    peaks = {}
    for b in (2, 6):
        batch = _to(collate(rows[:b], data.encoded.pad_token_id), device)
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with autocast(precision, device):
            logits = net(**_inputs(batch))
        example_losses(logits.float(), batch).mean().backward()
        torch.cuda.synchronize(device)
        peaks[b] = torch.cuda.max_memory_allocated(device) - base
        net.zero_grad(set_to_none=True)
        del batch, logits
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    per_report = max(1.0, (peaks[6] - peaks[2]) / 4) + (3 * 4 * trainable if cfg.private else 0)
    fixed = max(0.0, peaks[2] - 2 * per_report)
    budget = AUTO_MEMORY_SHARE * limit - torch.cuda.memory_allocated(device) - fixed
    n = int(budget // per_report)
    size = max(1, min(cap, n if n < 16 else n - n % 8))
    need_gb = (torch.cuda.memory_allocated(device) + fixed + 8 * per_report) / AUTO_MEMORY_SHARE / 2**30
    return size, (f"auto: {AUTO_MEMORY_SHARE:.0%} of {limit / 2**30:.1f} GB ({'share' if share else 'free'}), "
                  f"{per_report / 2**20:.1f} MB per report at {width} tokens"
                  f"{'' if lengths_public else ' (max_length: the training lengths are withheld)'}, {fixed / 2**20:.0f} MB fixed; "
                  f"logical cap {cap}; a chunk of 8 needs {need_gb:.2f} GB")


#: How far bf16 per-sample gradients may lie from float32 ones (tests/test_precision.py,
#: bench/gpu.py): relative L2 error per report, and relative error of each report's norm (what
#: clipping reads). Measured about 0.5-1 % and 0.1-0.2 % on BERT and ALBERT shapes.
BF16_GRAD_RTOL, BF16_NORM_RTOL = 0.03, 0.01


def per_sample_gradients(net, batch: dict, precision: str) -> torch.Tensor:
    """``(reports, trainable weights)``: each report's gradient of its loss as DP-SGD computes
    it (before clipping), with the forward pass in ``precision``. For checks: dropout should be
    off (``p = 0``) so that two calls see the same network."""
    from privrad.privacy import grad_sample_module

    gsm = grad_sample_module(net)
    try:
        gsm.zero_grad(set_to_none=True)
        device = next(net.parameters()).device
        with autocast(precision, device):
            logits = gsm(**_inputs(batch))
        example_losses(logits.float(), batch).mean().backward()
        grads = [p.grad_sample.reshape(len(logits), -1).float() for p in gsm.parameters()
                 if p.requires_grad and p.grad_sample is not None]
        return torch.cat(grads, dim=1)  # Opacus undoes the mean's 1/batch: one report's own gradient each
    finally:
        gsm.zero_grad(set_to_none=True)
        for p in net.parameters():
            p.grad_sample = None
        gsm.remove_hooks()


def bf16_gradient_error(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Largest per-report relative L2 error of gradients ``b`` against ``a`` (float32), and of their norms."""
    na = a.norm(dim=1).clamp(min=1e-30)
    return {"grad_rtol": float(((a - b).norm(dim=1) / na).max()),
            "norm_rtol": float(((a.norm(dim=1) - b.norm(dim=1)).abs() / na).max())}


def _chunks(indices, data: EncodedDataset, size: int, units=None) -> list[list[int]]:
    """Physical chunks of a logical batch: at most ``size`` reports, sorted by length so that a
    chunk pads little. With ``units`` (patient-level DP) each unit's reports stay together in one
    chunk — a unit is clipped once, in the chunk that holds it — and a unit of more than ``size``
    reports is a chunk of its own. An empty batch is one empty chunk."""
    length = lambda i: len(data.encoded.input_ids[i])  # noqa: E731
    if units is None:
        idx = sorted(indices, key=length)
        return [idx[i: i + size] for i in range(0, len(idx), size)] or [[]]
    groups: dict[int, list[int]] = {}
    for i in indices:
        groups.setdefault(int(units[i]), []).append(i)
    out: list[list[int]] = []
    for members in sorted(groups.values(), key=lambda m: max(map(length, m))):
        if out and len(out[-1]) + len(members) <= size:
            out[-1].extend(members)
        else:
            out.append(list(members))
    return out or [[]]


def _batch(data: EncodedDataset, chunk: list[int]) -> dict:
    if not chunk:  # an empty Poisson batch: one dummy row that weighs nothing
        row = data[0]
        dummy = (row[0][:2], np.zeros_like(row[1]), np.zeros_like(row[2]), 0.0, *(r[:2] for r in row[4:]))
        return collate([dummy], data.encoded.pad_token_id)
    return collate([data[i] for i in chunk], data.encoded.pad_token_id)


def _inputs(batch: dict) -> dict:
    keys = ("input_ids", "attention_mask", "features")
    return {k: batch[k] for k in keys if k in batch}


def train(model, data: EncodedDataset, cfg: RunConfig, *, delta: float | None = None, progress: bool = True,
          units=None, withheld: Collection[str] = ()) -> TrainResult:
    """Fine-tune ``model`` (a model, or its :class:`~privrad.features.Classifier`) on ``data``
    (the encoded training split, with frozen-layer features if the classifier has a frozen prefix).
    ``units``: the patient of each training example, needed by ``privacy_unit = "patient"``.
    ``withheld``: the training statistics this run must not reveal (``release_terms["withheld"]``,
    :data:`privrad.privacy.TRAINING_STATISTICS`): with ``loss`` the progress bar shows ε only,
    with ``longest_report`` the auto physical batch probes placeholders of ``max_length`` tokens.
    The curve returned still holds every statistic; the run writer drops them from the folder."""
    from privrad.progress import Reporter

    from privrad.features import Classifier
    from privrad.privacy import make_private

    if cfg.grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ConfigError(f"grad_sample_mode {cfg.grad_sample_mode!r} is not supported; use one of {', '.join(GRAD_SAMPLE_MODES)}.")
    t0 = time.perf_counter()
    net = model if isinstance(model, Classifier) else Classifier(model)
    model = net.model
    n, q = len(data), cfg.batch_size / len(data)
    total = planned_steps(n, cfg.batch_size, cfg.num_epochs)
    device = next(model.parameters()).device
    precision = resolve_precision(cfg.precision, device)
    physical, physical_source = cfg.physical_batch_size, "config"
    if physical == "auto":  # before seeding: the probe's dropout draws do not shift training's
        physical, physical_source = auto_physical_batch_size(net, data, cfg, precision,
                                                             lengths_public="longest_report" not in withheld)
    seed_everything(cfg.seed)
    sample_gen, noise_gen = dp_generators(cfg, device)  # data order: on the CPU, identical on every device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total, cfg.warmup_ratio))
    watched = {name: p.detach().clone() for name, p in model.named_parameters()
               if p.requires_grad and ("lora_" in name or cfg.method == "full")}
    # the sweep's progress line for this run (a no-op outside a sweep) and, with ``progress``, a training bar
    report = Reporter(bar=progress, desc=f"train ε={cfg.epsilon if cfg.private else '∞'}")
    t_cal = time.perf_counter()
    if cfg.private:
        report.phase("calibrating noise")
        trainer = make_private(module=net, optimizer=optimizer, num_samples=n, batch_size=cfg.batch_size, steps=total,
                               max_grad_norm=cfg.max_grad_norm, target_epsilon=cfg.epsilon, delta=delta,
                               accountant=cfg.accountant, grad_sample_mode=cfg.grad_sample_mode,
                               sample_generator=sample_gen, noise_generator=noise_gen,
                               secure_noise=cfg.dp_randomness == "secure", sampling_unit=cfg.privacy_unit, units=units)
    else:
        trainer = _NonPrivate(net, optimizer, _shuffled_batches(n, cfg.batch_size, total, sample_gen))
    t_cal = time.perf_counter() - t_cal  # noise calibration (cached on disk across runs)
    curve, step = [], 0
    drawn = hashlib.sha256()  # a digest of every batch drawn (kept in memory for checks; never written)
    checkpoints = set(np.linspace(1, total, min(total, CURVE_EPSILON_POINTS)).round().astype(int).tolist())
    epochs = math.ceil(cfg.num_epochs)
    report.step(0, total, epoch=1, num_epochs=epochs)
    t_loop = time.perf_counter()
    first_step_s, accounting_s = 0.0, 0.0  # what a short run has more of per step than a long one
    for indices in trainer.batches:
        drawn.update(np.asarray(sorted(indices), dtype=np.int64).tobytes() + b"|")
        chunks = _chunks(indices, data, physical, units=getattr(trainer, "units", None))
        loss_sum = 0.0
        for k, chunk in enumerate(chunks):
            batch = _to(_batch(data, chunk), device)
            with autocast(precision, device):
                logits = trainer.module(**_inputs(batch))
            losses = example_losses(logits.float(), batch)
            loss_sum += float(losses.detach().sum())
            if cfg.private:
                trainer.backward(losses, last=k == len(chunks) - 1, indices=chunk)
            else:
                trainer.backward(losses, last=k == len(chunks) - 1)
        step += 1
        scheduler.step()
        if step == 1:
            _check_first_step(model, watched)
            first_step_s = time.perf_counter() - t_loop
        row = {"step": step, "loss": loss_sum / max(1, len(indices)), "lr": scheduler.get_last_lr()[0],
               "batch_size": len(indices)}
        shown = {} if "loss" in withheld else {"loss": f"{row['loss']:.3f}"}  # the bar may reach a notebook's output
        if cfg.private and step in checkpoints:
            t_acc = time.perf_counter()
            row["epsilon_spent"] = epsilon_from_history(trainer.history, delta, accountant="pld", pld_interval=cfg.epsilon / 200)
            accounting_s += time.perf_counter() - t_acc
            postfix = {**shown, "eps": f"{row['epsilon_spent']:.3g}"}
        elif shown and (step % 10 == 0 or step == total):
            postfix = shown
        else:
            postfix = {}
        curve.append(row)
        report.step(step, total, epoch=min(epochs, 1 + (step - 1) * epochs // total), num_epochs=epochs, **postfix)
    report.close()
    sigma, history = None, []
    if cfg.private:
        sigma, history = trainer.noise_multiplier, trainer.close()
        assert sum(t for _, _, t in history) == step, "accountant missed a step"
    model.eval()
    return TrainResult(model, curve, history, sigma, q, total, delta, time.perf_counter() - t0,
                       info={"empty_batches": sum(r["batch_size"] == 0 for r in curve), "batches_digest": drawn.hexdigest(),
                             "precision": precision, "physical_batch_size": int(physical),
                             "physical_batch_source": physical_source, "calibrate_s": t_cal,
                             "setup_s": t_loop - t0 - t_cal, "first_step_s": first_step_s, "accounting_s": accounting_s})


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _check_first_step(model, before: dict[str, torch.Tensor]) -> None:
    """Fail loudly if training silently updates nothing, or touches a frozen weight."""
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(p.detach(), before[n])]
    if before and not changed:
        raise RuntimeError("no LoRA/trainable weight changed after the first optimizer step (check device placement and .train())")
    leaked = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    if leaked:
        raise RuntimeError(f"frozen parameters received gradients: {leaked[:3]}")


@torch.no_grad()
def predict_proba(model, data: EncodedDataset, *, batch_size: int = 64, precision: str = "fp32") -> np.ndarray:
    """Sigmoid probabilities ``(n, n_labels)`` in dataset order (length-sorted batches, eval mode).

    ``model``: a model or its :class:`~privrad.features.Classifier` (then ``data`` carries the
    frozen-layer features when the classifier has a frozen prefix)."""
    from privrad.features import Classifier

    net = model if isinstance(model, Classifier) else Classifier(model)
    net.eval()
    device = next(net.parameters()).device
    out = np.zeros((len(data), data.labels.shape[1]), dtype=np.float32)
    for idx in data.length_sorted_batches(batch_size):
        batch = _to(collate([data[i] for i in idx], data.encoded.pad_token_id), device)
        with autocast(precision, device):
            logits = net(**_inputs(batch))
        out[idx] = torch.sigmoid(logits.float()).cpu().numpy()
    return out


__all__ = ["TrainResult", "train", "predict_proba", "planned_steps", "example_losses", "seed_everything", "dp_generators",
           "autocast", "resolve_precision", "auto_physical_batch_size", "probe_rows", "per_sample_gradients", "bf16_gradient_error"]
