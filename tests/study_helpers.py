"""Test helper: fabricate run folders through the real writer (:func:`privrad.runs.write_run`).

The statistics read run folders only; these folders carry controlled predictions (a known
fraction of test decisions flipped) so the tests can assert what the statistics must find.
Metrics are computed from those predictions by :func:`privrad.evaluate.evaluate`, as a run does;
the writer refuses a folder without the contract's fields, so a fixture cannot drift from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from privrad.config import RunConfig
from privrad.evaluate import evaluate
from privrad.runs import run_id as make_run_id
from privrad.runs import write_run

LABELS = ("Atelectasis", "Cardiomegaly", "Edema", "Pleural Effusion", "Pneumonia", "No Finding")


def test_labels(n: int = 300, seed: int = 123) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(LABELS))) < np.array([0.2, 0.2, 0.12, 0.24, 0.07, 0.33])).astype(np.float32)
    mask = rng.random(labels.shape) > 0.03
    return labels, mask


def fabricate_run(results: Path, *, dataset="simulated-mimic-cxr", model="tiny-bert", method="lora", epsilon=1.0,
                  seed=0, flip: float = 0.1, n_test: int = 300, noise_multiplier: float = 1.0,
                  run_dir: Path | None = None, config: RunConfig | None = None, threshold: float = 0.5) -> Path:
    """A run folder whose test decisions are the true labels with a fraction ``flip`` flipped
    (``config``: the whole RunConfig, instead of dataset/model/method/epsilon/seed), decided at
    ``threshold`` (standing in for tuned thresholds when it is not 0.5)."""
    config = (config or RunConfig(dataset=dataset, model=model, method=method, epsilon=epsilon, seed=seed)).validate()
    model, method, epsilon, seed = config.model, config.method, config.epsilon, config.seed
    fingerprint = "f" * 64
    rid = make_run_id(config, fingerprint) if run_dir is None else Path(run_dir).name
    run_dir = Path(results) / rid if run_dir is None else Path(run_dir)
    labels, mask = test_labels(n_test)
    rng = np.random.default_rng([seed, int(1000 * (epsilon or 0)), len(model), len(method)])
    flips = rng.random(labels.shape) < flip
    decisions = np.where(flips, 1 - labels, labels)
    probs = np.clip(decisions * 0.8 + 0.1 + rng.normal(0, 0.05, labels.shape), 0, 1).astype(np.float32)
    metrics = evaluate(probs, labels, mask, LABELS, thresholds=threshold, n_bootstrap=100, seed=seed)
    metrics.update(threshold="fixed" if threshold == 0.5 else "tuned",
                   **{"weighted_f1_at_0.5": evaluate(probs, labels, mask, LABELS, thresholds=0.5, n_bootstrap=0)["weighted_f1"]})
    private = config.epsilon is not None
    privacy = {"private": private, "epsilon": config.epsilon, "epsilon_spent": 0.99 * config.epsilon if private else None,
               "delta": 1e-5 if private else None, "noise_multiplier": noise_multiplier if private else None,
               "sample_rate": 0.01, "steps": 100}
    info = {"run_id": rid, "config": config.to_dict(), "dataset_fingerprint": fingerprint, "label_names": list(LABELS)}
    predictions = {"ids": np.array([f"r{i}" for i in range(n_test)]), "probabilities": probs, "labels": labels,
                   "label_mask": mask, "decisions": probs >= threshold, "thresholds": np.full(len(LABELS), threshold)}
    write_run(run_dir, info=info, metrics=metrics, privacy=privacy, curve=[{"step": 1, "loss": 0.7, "lr": 1e-3, "batch_size": 3}],
              predictions=predictions)
    return run_dir


def damage(run_dir: Path, name: str, how: str) -> None:
    """A run folder's file made as copies off a cluster or full disks leave it: ``truncated`` or ``missing``."""
    if how == "missing":
        (run_dir / name).unlink()
    else:
        text = (run_dir / name).read_text()
        (run_dir / name).write_text(text[: len(text) // 2])
