"""Test helper: fabricate run folders in the training core's run-folder format.

The statistics read run folders only; these folders carry controlled predictions (a known
fraction of test decisions flipped) so the tests can assert what the statistics must find.
Metrics are computed from those predictions with scikit-learn, as the training core does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score, precision_recall_fscore_support

from privrad.config import RunConfig
from privrad.io import atomic_write_json

LABELS = ("Atelectasis", "Cardiomegaly", "Edema", "Pleural Effusion", "Pneumonia", "No Finding")


def test_labels(n: int = 300, seed: int = 123) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(LABELS))) < np.array([0.2, 0.2, 0.12, 0.24, 0.07, 0.33])).astype(np.float32)
    mask = rng.random(labels.shape) > 0.03
    return labels, mask


def fabricate_run(results: Path, *, dataset="simulated-mimic-cxr", model="tiny-bert", method="lora", epsilon=1.0,
                  seed=0, flip: float = 0.1, n_test: int = 300, noise_multiplier: float = 1.0) -> Path:
    """A run folder whose test decisions are the true labels with a fraction ``flip`` flipped."""
    config = RunConfig(dataset=dataset, model=model, method=method, epsilon=epsilon, seed=seed)
    run_id = hashlib.sha256(config.config_hash().encode()).hexdigest()[:16]
    run_dir = results / run_id
    labels, mask = test_labels(n_test)
    rng = np.random.default_rng([seed, int(1000 * (epsilon or 0)), len(model), len(method)])
    flips = rng.random(labels.shape) < flip
    decisions = np.where(flips, 1 - labels, labels).astype(np.float32)
    probs = np.clip(decisions * 0.8 + 0.1 + rng.normal(0, 0.05, labels.shape), 0, 1).astype(np.float32)
    per = {}
    tot_w = tot = 0.0
    for j, name in enumerate(LABELS):
        m = mask[:, j]
        p, r, f, s = precision_recall_fscore_support(labels[m, j], decisions[m, j], average="binary", zero_division=0)
        support = int(labels[m, j].sum())
        per[name] = {"precision": p, "recall": r, "f1": f, "support": support}
        tot_w += f * support
        tot += support
    weighted = tot_w / tot
    if mask.all():
        assert abs(weighted - f1_score(labels, decisions, average="weighted", zero_division=0)) < 1e-12
    run_dir.mkdir(parents=True)
    atomic_write_json(run_dir / "config.json", {"config": config.to_dict(), "run_id": run_id,
                                                 "dataset_fingerprint": "f" * 64, "label_names": list(LABELS),
                                                 "version": "0.1.0"})
    atomic_write_json(run_dir / "metrics.json", {"weighted_f1": weighted, "macro_f1": float(np.mean([v["f1"] for v in per.values()])),
                                                  "micro_f1": weighted, "weighted_f1_ci": [weighted - 0.03, weighted + 0.03],
                                                  "per_label": per})
    atomic_write_json(run_dir / "privacy.json", {"target_epsilon": epsilon, "epsilon": epsilon, "delta": 1e-5,
                                                  "noise_multiplier": noise_multiplier if epsilon else 0.0,
                                                  "sample_rate": 0.01, "steps": 100})
    np.savez(run_dir / "predictions.npz", ids=np.array([f"r{i}" for i in range(n_test)]), probabilities=probs,
             labels=labels, label_mask=mask, decisions=decisions)
    return run_dir
