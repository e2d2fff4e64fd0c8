"""The training loop: one readable loop for private (DP-SGD) and non-private fine-tuning.

DP-SGD here is Opacus' own parts, assembled explicitly so that every quantity the privacy
guarantee depends on is visible in this file:

* **Poisson sampling** with ``sample_rate = batch_size / n_train``: Opacus'
  ``UniformWithReplacementSampler`` (the batch sampler inside ``DPDataLoader``), run for exactly
  the planned number of steps. (``PrivacyEngine.make_private`` would use ``1 / len(loader)``,
  which is not ``batch_size / n_train`` when ``n_train`` is not a multiple of ``batch_size``.)
* **Physical micro-batches**: each logical batch is split into chunks of at most
  ``physical_batch_size`` reports, sorted by length so that each chunk pads little, and the DP
  optimizer is told which chunk ends the logical batch (``signal_skip_step``, exactly what
  Opacus' ``BatchMemoryManager`` does). Memory then bounds the chunk, never the logical batch.
* **Empty Poisson batches** (possible at small sample rates) become one dummy row with loss
  weight 0: its clipped gradient is 0, so the step adds pure noise and is counted by the
  accountant, as DP-SGD's analysis assumes. Skipping it would drop that step's noise.
* **Per-sample gradients** from ``GradSampleModule`` in ``hooks`` mode (exact for LoRA on BERT
  and ALBERT; ALBERT's reused layer gets its per-use gradients summed), clipped to
  ``max_grad_norm`` and noised by ``DPOptimizer`` with a seeded generator.
* **Accounting**: an Opacus ``PRVAccountant`` hooked on the optimizer records every real step.

Non-private training uses shuffled fixed-size batches (the standard baseline) and the same
micro-batch split, with gradients accumulated and averaged over the logical batch.
"""

from __future__ import annotations

import random
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn.functional import binary_cross_entropy_with_logits

from privrad.config import RunConfig
from privrad.data.tokenize import EncodedDataset, collate
from privrad.errors import ConfigError
from privrad.privacy import cached_noise_multiplier, epsilon_from_history

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


def _logical_batches(n: int, cfg: RunConfig, total: int, generator: torch.Generator):
    """Index lists, one per logical step: Poisson (private) or shuffled fixed-size (non-private)."""
    if cfg.private:
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        yield from UniformWithReplacementSampler(num_samples=n, sample_rate=cfg.batch_size / n,
                                                 generator=generator, steps=total)
        return
    done = 0
    while True:
        perm = torch.randperm(n, generator=generator).tolist()
        for i in range(0, n - cfg.batch_size + 1, cfg.batch_size):
            yield perm[i: i + cfg.batch_size]
            done += 1
            if done == total:
                return


def _chunks(indices, data: EncodedDataset, size: int) -> list[list[int]]:
    idx = sorted(indices, key=lambda i: len(data.encoded.input_ids[i]))
    return [idx[i: i + size] for i in range(0, len(idx), size)] or [[]]


def _batch(data: EncodedDataset, chunk: list[int]) -> dict:
    if not chunk:  # an empty Poisson batch: one dummy row that weighs nothing
        ids, labels, mask, _ = data[0]
        return collate([(ids[:2], np.zeros_like(labels), np.zeros_like(mask), 0.0)], data.encoded.pad_token_id)
    return collate([data[i] for i in chunk], data.encoded.pad_token_id)


def train(model, data: EncodedDataset, cfg: RunConfig, *, delta: float | None = None, progress: bool = True) -> TrainResult:
    """Fine-tune ``model`` on ``data`` (the encoded training split) as ``cfg`` says."""
    from tqdm.auto import tqdm

    if cfg.grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ConfigError(f"grad_sample_mode {cfg.grad_sample_mode!r} is not supported; use one of {', '.join(GRAD_SAMPLE_MODES)}.")
    t0 = time.perf_counter()
    seed_everything(cfg.seed)
    n, q = len(data), cfg.batch_size / len(data)
    total = planned_steps(n, cfg.batch_size, cfg.num_epochs)
    data_gen = torch.Generator().manual_seed(cfg.seed)  # data order: on the CPU, identical on every device
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total, cfg.warmup_ratio))
    watched = {name: p.detach().clone() for name, p in model.named_parameters()
               if p.requires_grad and ("lora_" in name or cfg.method == "full")}
    sigma, history, net = None, [], model
    if cfg.private:
        from opacus.accountants import PRVAccountant
        from opacus.grad_sample.utils import wrap_model
        from opacus.optimizers import get_optimizer_class

        sigma = cached_noise_multiplier(cfg.epsilon, delta, q, total, accountant=cfg.accountant)
        net = wrap_model(model, grad_sample_mode=cfg.grad_sample_mode, batch_first=True, loss_reduction="mean")
        net.forbid_grad_accumulation()  # Poisson sampling: per-sample grads of two batches must never mix
        optimizer = get_optimizer_class("flat", False, cfg.grad_sample_mode)(
            optimizer, noise_multiplier=sigma, max_grad_norm=cfg.max_grad_norm, expected_batch_size=cfg.batch_size,
            loss_reduction="mean", generator=torch.Generator(device=device).manual_seed(cfg.seed + 1))
        accountant = PRVAccountant()
        optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=q))
        history = accountant.history  # the same list object: grows with every real step
    curve, step = [], 0
    bar = tqdm(total=total, disable=not progress, desc=f"train ε={cfg.epsilon if cfg.private else '∞'}", leave=False)
    checkpoints = set(np.linspace(1, total, min(total, CURVE_EPSILON_POINTS)).round().astype(int).tolist())
    for indices in _logical_batches(n, cfg, total, data_gen):
        chunks = _chunks(indices, data, cfg.physical_batch_size)
        loss_sum = 0.0
        for k, chunk in enumerate(chunks):
            batch = _to(_batch(data, chunk), device)
            logits = _forward(net, batch, cfg)
            losses = example_losses(logits, batch)
            loss_sum += float(losses.detach().sum())
            if cfg.private:  # mean over the chunk; Opacus rescales to per-sample and divides by batch_size
                optimizer.signal_skip_step(do_skip=k < len(chunks) - 1)
                with warnings.catch_warnings():  # Opacus' hooks on modules after frozen embeddings: harmless
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    losses.mean().backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            else:
                (losses.sum() / len(indices)).backward()
        if not cfg.private:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        step += 1
        scheduler.step()
        if step == 1:
            _check_first_step(model, watched)
        row = {"step": step, "loss": loss_sum / max(1, len(indices)), "lr": scheduler.get_last_lr()[0],
               "batch_size": len(indices)}
        if cfg.private and step in checkpoints:
            row["epsilon_spent"] = epsilon_from_history(history, delta, accountant="pld", pld_interval=cfg.epsilon / 200)
            bar.set_postfix(loss=f"{row['loss']:.3f}", eps=f"{row['epsilon_spent']:.3g}")
        elif step % 10 == 0 or step == total:
            bar.set_postfix(loss=f"{row['loss']:.3f}")
        curve.append(row)
        bar.update(1)
    bar.close()
    if cfg.private:
        net.remove_hooks()
        assert sum(t for _, _, t in history) == step, "accountant missed a step"
    model.eval()
    return TrainResult(model, curve, [tuple(h) for h in history], sigma, q, total, delta, time.perf_counter() - t0,
                       info={"empty_batches": sum(r["batch_size"] == 0 for r in curve)})


def _forward(net, batch: dict, cfg: RunConfig) -> torch.Tensor:
    kw = {}
    if cfg.private and cfg.method == "full":
        # transformers broadcasts one row of position ids over the batch; the position embedding
        # then sees a batch of 1 and Opacus cannot split its gradient per report. Give one row each.
        b, w = batch["input_ids"].shape
        kw["position_ids"] = torch.arange(w, device=batch["input_ids"].device).expand(b, w)
    return net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kw).logits


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
    """Sigmoid probabilities ``(n, n_labels)`` in dataset order (length-sorted batches, eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    out = np.zeros((len(data), data.labels.shape[1]), dtype=np.float32)
    for idx in data.length_sorted_batches(batch_size):
        batch = _to(collate([data[i] for i in idx], data.encoded.pad_token_id), device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out[idx] = torch.sigmoid(logits.float()).cpu().numpy()
    return out


__all__ = ["TrainResult", "train", "predict_proba", "planned_steps", "example_losses", "seed_everything"]
