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

Non-private training uses shuffled fixed-size batches (the standard baseline) and the same
micro-batch split, with gradients summed over the chunks and divided by the logical batch size.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn.functional import binary_cross_entropy_with_logits

from privrad.config import RunConfig
from privrad.data.tokenize import EncodedDataset, collate
from privrad.errors import ConfigError
from privrad.privacy import epsilon_from_history

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
    """The DP randomness of a run: (Poisson sampling, Gaussian noise) generators, seeded from the run seed."""
    return torch.Generator().manual_seed(cfg.seed), torch.Generator(device=device).manual_seed(cfg.seed + 1)


def _chunks(indices, data: EncodedDataset, size: int) -> list[list[int]]:
    idx = sorted(indices, key=lambda i: len(data.encoded.input_ids[i]))
    return [idx[i: i + size] for i in range(0, len(idx), size)] or [[]]


def _batch(data: EncodedDataset, chunk: list[int]) -> dict:
    if not chunk:  # an empty Poisson batch: one dummy row that weighs nothing
        row = data[0]
        dummy = (row[0][:2], np.zeros_like(row[1]), np.zeros_like(row[2]), 0.0, *(r[:2] for r in row[4:]))
        return collate([dummy], data.encoded.pad_token_id)
    return collate([data[i] for i in chunk], data.encoded.pad_token_id)


def _inputs(batch: dict) -> dict:
    keys = ("input_ids", "attention_mask", "features")
    return {k: batch[k] for k in keys if k in batch}


def train(model, data: EncodedDataset, cfg: RunConfig, *, delta: float | None = None, progress: bool = True) -> TrainResult:
    """Fine-tune ``model`` (a model, or its :class:`~privrad.features.Classifier`) on ``data``
    (the encoded training split, with frozen-layer features if the classifier has a frozen prefix)."""
    from tqdm.auto import tqdm

    from privrad.features import Classifier
    from privrad.privacy import make_private

    if cfg.grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ConfigError(f"grad_sample_mode {cfg.grad_sample_mode!r} is not supported; use one of {', '.join(GRAD_SAMPLE_MODES)}.")
    t0 = time.perf_counter()
    seed_everything(cfg.seed)
    net = model if isinstance(model, Classifier) else Classifier(model)
    model = net.model
    n, q = len(data), cfg.batch_size / len(data)
    total = planned_steps(n, cfg.batch_size, cfg.num_epochs)
    device = next(model.parameters()).device
    sample_gen, noise_gen = dp_generators(cfg, device)  # data order: on the CPU, identical on every device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total, cfg.warmup_ratio))
    watched = {name: p.detach().clone() for name, p in model.named_parameters()
               if p.requires_grad and ("lora_" in name or cfg.method == "full")}
    if cfg.private:
        trainer = make_private(module=net, optimizer=optimizer, num_samples=n, batch_size=cfg.batch_size, steps=total,
                               max_grad_norm=cfg.max_grad_norm, target_epsilon=cfg.epsilon, delta=delta,
                               accountant=cfg.accountant, grad_sample_mode=cfg.grad_sample_mode,
                               sample_generator=sample_gen, noise_generator=noise_gen)
    else:
        trainer = _NonPrivate(net, optimizer, _shuffled_batches(n, cfg.batch_size, total, sample_gen))
    curve, step = [], 0
    bar = tqdm(total=total, disable=not progress, desc=f"train ε={cfg.epsilon if cfg.private else '∞'}", leave=False)
    checkpoints = set(np.linspace(1, total, min(total, CURVE_EPSILON_POINTS)).round().astype(int).tolist())
    for indices in trainer.batches:
        chunks = _chunks(indices, data, cfg.physical_batch_size)
        loss_sum = 0.0
        for k, chunk in enumerate(chunks):
            batch = _to(_batch(data, chunk), device)
            losses = example_losses(trainer.module(**_inputs(batch)), batch)
            loss_sum += float(losses.detach().sum())
            trainer.backward(losses, last=k == len(chunks) - 1)
        step += 1
        scheduler.step()
        if step == 1:
            _check_first_step(model, watched)
        row = {"step": step, "loss": loss_sum / max(1, len(indices)), "lr": scheduler.get_last_lr()[0],
               "batch_size": len(indices)}
        if cfg.private and step in checkpoints:
            row["epsilon_spent"] = epsilon_from_history(trainer.history, delta, accountant="pld", pld_interval=cfg.epsilon / 200)
            bar.set_postfix(loss=f"{row['loss']:.3f}", eps=f"{row['epsilon_spent']:.3g}")
        elif step % 10 == 0 or step == total:
            bar.set_postfix(loss=f"{row['loss']:.3f}")
        curve.append(row)
        bar.update(1)
    bar.close()
    sigma, history = None, []
    if cfg.private:
        sigma, history = trainer.noise_multiplier, trainer.close()
        assert sum(t for _, _, t in history) == step, "accountant missed a step"
    model.eval()
    return TrainResult(model, curve, history, sigma, q, total, delta, time.perf_counter() - t0,
                       info={"empty_batches": sum(r["batch_size"] == 0 for r in curve)})


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
def predict_proba(model, data: EncodedDataset, *, batch_size: int = 64) -> np.ndarray:
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
        out[idx] = torch.sigmoid(net(**_inputs(batch)).float()).cpu().numpy()
    return out


__all__ = ["TrainResult", "train", "predict_proba", "planned_steps", "example_losses", "seed_everything", "dp_generators"]
