"""Metrics: probabilities → decisions → the paper's weighted F1, and more.

* Decisions: ``probability ≥ threshold`` per label, with the threshold either 0.5 (``fixed``) or
  tuned per label on the **validation** split to maximise that label's F1 (``tuned``). Test
  labels never choose a threshold.
* Weighted F1 (the paper's metric: per-label F1 averaged with weights = support), macro and
  micro F1, per-label precision / recall / F1 / support and AUROC (where both classes occur),
  all from scikit-learn.
* A bootstrap 95 % CI of weighted F1 over test reports (percentile, ``n_bootstrap`` resamples
  of reports, seeded).
* Weighted F1 has one implementation, here (:func:`weighted_f1_counts`, from per-label counts);
  the statistics' paired bootstrap and the benchmarks call it.
* Masked (ignored) labels are excluded everywhere: each label's metrics use only the reports
  where that label is observed.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import f1_score, precision_recall_fscore_support, roc_auc_score

from privrad.errors import ConfigError

THRESHOLDS = ("fixed", "tuned")


def tune_thresholds(probs: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-label threshold maximising that label's F1 on (validation) data; 0.5 where undefined.

    Candidates are 0.5, the midpoints between consecutive distinct probabilities (so the choice
    does not depend on a grid resolution) and the lowest probability (every report positive);
    ties go to the threshold closest to 0.5.
    """
    th = np.full(labels.shape[1], 0.5)
    for j in range(labels.shape[1]):
        m = mask[:, j]
        y, p = labels[m, j], probs[m, j]
        if y.sum() == 0 or y.sum() == len(y):
            continue
        u = np.unique(p)
        cands = np.concatenate([[0.5], (u[1:] + u[:-1]) / 2 if len(u) > 1 else [], u[:1]])
        f1s = [float(weighted_f1(y[:, None], (p >= c)[:, None])) for c in cands]  # one label: its F1
        best = max(f1s)
        th[j] = min((c for c, f in zip(cands, f1s) if f == best), key=lambda c: abs(c - 0.5))
    return th


def decide(probs: np.ndarray, thresholds: np.ndarray | float = 0.5) -> np.ndarray:
    return probs >= np.asarray(thresholds)[None, ...] if np.ndim(thresholds) else probs >= thresholds


def _flat(labels, decisions, mask, j=None):
    if j is not None:
        m = mask[:, j]
        return labels[m, j].astype(int), decisions[m, j].astype(int)
    return labels[mask].astype(int), decisions[mask].astype(int)


# ----------------------------------------------------------------------------- weighted F1 (the one implementation)


def label_indicators(labels: np.ndarray, decisions: np.ndarray, mask: np.ndarray | None = None):
    """Per report × label: true-positive, false-positive and false-negative indicators over the
    observed (unmasked) entries. Summed over reports (or weighted by bootstrap counts) they are
    the counts :func:`weighted_f1_counts` takes."""
    y, d = np.asarray(labels) > 0.5, np.asarray(decisions) > 0.5
    m = np.ones_like(y, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    return (y & d & m).astype(float), (~y & d & m).astype(float), (y & ~d & m).astype(float)


def weighted_f1_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Weighted F1 from per-label counts (last axis = labels; leading axes e.g. bootstrap
    resamples): each label's F1 = 2tp / (2tp + fp + fn) (0 where undefined) weighted by its
    support tp + fn, as scikit-learn's ``average="weighted"``; 0 when no label has support."""
    tp, fp, fn = (np.asarray(x, dtype=float) for x in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(denom), where=denom > 0)
    support = tp + fn
    total = support.sum(axis=-1)
    return np.divide((f1 * support).sum(axis=-1), total, out=np.zeros_like(total), where=total > 0)


def weighted_f1(labels: np.ndarray, decisions: np.ndarray, mask: np.ndarray | None = None) -> float:
    """The paper's metric: support-weighted mean of per-label F1 over observed entries
    (scikit-learn's ``average='weighted'`` when nothing is masked)."""
    return float(weighted_f1_counts(*(x.sum(0) for x in label_indicators(labels, decisions, mask))))


def bootstrap_counts(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """``n_bootstrap`` × ``n`` multiplicities of reports drawn with replacement (seeded): one
    resample per row, shared by every run it is applied to (paired bootstrap)."""
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_bootstrap)]).astype(float)


def bootstrap_weighted_f1(labels: np.ndarray, decisions: np.ndarray, mask: np.ndarray | None, counts: np.ndarray) -> np.ndarray:
    """Weighted F1 of every bootstrap resample (rows of :func:`bootstrap_counts`)."""
    return weighted_f1_counts(*(counts @ x for x in label_indicators(labels, decisions, mask)))


def evaluate(probs: np.ndarray, labels: np.ndarray, mask: np.ndarray, label_names, *,
             thresholds: np.ndarray | float = 0.5, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Metrics of test ``probs`` against ``labels`` (observed where ``mask``), at ``thresholds``."""
    labels = np.asarray(labels)
    mask = np.asarray(mask, bool)
    decisions = decide(probs, thresholds)
    per_label = []
    for j, name in enumerate(label_names):
        y, d = _flat(labels, decisions, mask, j)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p, r, f, _ = precision_recall_fscore_support(y, d, average="binary", zero_division=0) if len(y) else (0, 0, 0, 0)
        pj = probs[mask[:, j], j]
        auroc = float(roc_auc_score(y, pj)) if 0 < y.sum() < len(y) else None
        per_label.append({"label": name, "precision": float(p), "recall": float(r), "f1": float(f),
                          "support": int(y.sum()), "n_observed": int(len(y)), "auroc": auroc,
                          "threshold": float(np.broadcast_to(thresholds, (len(label_names),))[j])})
    y_all, d_all = _flat(labels, decisions, mask)
    aurocs = [x["auroc"] for x in per_label if x["auroc"] is not None]
    all_negative = np.zeros_like(decisions)
    out = {
        "weighted_f1": weighted_f1(labels, decisions, mask),
        "macro_f1": float(np.mean([x["f1"] for x in per_label if x["n_observed"]])),
        "micro_f1": float(f1_score(y_all, d_all, zero_division=0)),
        "macro_auroc": float(np.mean(aurocs)) if aurocs else None,
        "n_test": int(len(labels)),
        "all_negative_weighted_f1": weighted_f1(labels, all_negative, mask),
        "per_label": per_label,
    }
    if n_bootstrap:
        boots = bootstrap_weighted_f1(labels, decisions, mask, bootstrap_counts(len(labels), n_bootstrap, seed))
        out["weighted_f1_ci95"] = [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]
        out["n_bootstrap"] = int(n_bootstrap)
    return out


def learned_nothing(prevalence_labels: np.ndarray, prevalence_mask: np.ndarray, val_labels: np.ndarray, val_mask: np.ndarray,
                    test_labels: np.ndarray, test_mask: np.ndarray, *, threshold: str = "tuned") -> float:
    """Weighted F1 of a classifier that ignores the report text: the "learned nothing" reference.

    It scores every report with each label's prevalence in ``prevalence_labels`` (privrad passes
    the validation split, which the book declares public: the training split's prevalence would
    be an un-noised statistic of the private data) and decides with the same threshold policy as
    the models (``tuned``: per label on the validation split; ``fixed``: 0.5). A model whose
    weighted F1 is not above it has learned nothing from the text.
    """
    prevalence_mask = np.asarray(prevalence_mask, bool)
    prevalence = (np.asarray(prevalence_labels) * prevalence_mask).sum(0) / np.maximum(prevalence_mask.sum(0), 1)
    val_probs = np.broadcast_to(prevalence, np.shape(val_labels)).astype(float)
    th = thresholds_for(threshold, val_probs, np.asarray(val_labels), np.asarray(val_mask, bool))
    test_probs = np.broadcast_to(prevalence, np.shape(test_labels))
    return weighted_f1(np.asarray(test_labels), decide(test_probs, th), np.asarray(test_mask, bool))


def thresholds_for(mode: str, val_probs: np.ndarray, val_labels: np.ndarray, val_mask: np.ndarray) -> np.ndarray:
    """Thresholds of a run: ``fixed`` (0.5 everywhere) or ``tuned`` on the validation split."""
    if mode not in THRESHOLDS:
        raise ConfigError(f"unknown threshold {mode!r}; use one of {', '.join(THRESHOLDS)}.")
    if mode == "fixed":
        return np.full(val_labels.shape[1], 0.5)
    return tune_thresholds(val_probs, val_labels, val_mask)
