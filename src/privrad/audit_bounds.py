"""The bounds and summaries of privrad's audit (:mod:`privrad.audit`): the one-run ε lower bound of
Steinke, Nasr and Jagielski (2023, "Privacy Auditing with One (1) Training Run", arXiv 2305.08846)
and an attack's ROC summary.

The bound is computed with :mod:`scipy.stats` (the paper's analysis: the number of correct guesses
of an ε-DP run is dominated by a binomial with success probability ``e^ε / (1 + e^ε)``; for
(ε, δ)-DP a term proportional to ``2 m δ`` is added to the p-value). ``jax_privacy.auditing``
(Google) implements the same bound, but the package imports JAX, optax and chex; privrad's tests
check agreement with values it gives.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from privrad.errors import DataError

#: False positive rates at which the true positive rate of an attack is reported.
FPR_TARGETS = (0.01, 0.001)
#: The FPR grid of the ROC curves stored in audit.json (log-spaced, for log-axis plots).
ROC_GRID = tuple(float(x) for x in np.unique(np.concatenate([np.logspace(-3, 0, 31), np.linspace(0, 1, 21)])))


# ----------------------------------------------------------------------------- the one-run bound


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float = 0.0) -> float:
    """P[at least ``v`` of ``r`` guesses correct] for an (ε, δ)-DP run audited with ``m`` canaries.

    Steinke, Nasr and Jagielski (2023): with δ = 0 the correct guesses are dominated by
    Binomial(r, e^ε / (1 + e^ε)); with δ > 0 the p-value gains ``2 m δ`` times the largest average
    of the binomial's mass just below ``v``. A p-value: small means the claim is refuted.
    """
    if not (0 <= v <= r <= m):
        raise ValueError(f"one_run_p_value needs 0 ≤ v ≤ r ≤ m (got m={m}, r={r}, v={v})")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"one_run_p_value needs ε ≥ 0 and 0 ≤ δ ≤ 1 (got ε={epsilon}, δ={delta})")
    from scipy.special import expit
    from scipy.stats import binom

    q = float(expit(epsilon))  # accuracy of ε-DP randomized response
    beta = float(binom.sf(v - 1, r, q))  # P[Binomial(r, q) ≥ v]
    if delta == 0 or v == 0:
        return min(beta, 1.0)
    i = np.arange(1, v + 1)
    below = binom.sf(v - i - 1, r, q) - beta  # P[v - i ≤ Binomial(r, q) < v]
    alpha = float(np.max(below / i))
    return min(beta + alpha * delta * 2 * m, 1.0)


def one_run_epsilon(m: int, r: int, v: int, *, delta: float = 0.0, confidence: float = 0.95) -> float:
    """The empirical lower bound on ε: the largest ε at which :func:`one_run_p_value` of ``v``
    correct out of ``r`` guesses (``m`` canaries) is still below ``1 - confidence``; 0 when even
    ε = 0 is not refuted (e.g. no guesses, or no better than a coin)."""
    from scipy.optimize import brentq

    alpha = 1 - confidence
    if r == 0 or one_run_p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    lo, hi = 0.0, 1.0
    while one_run_p_value(m, r, v, hi, delta) < alpha:
        lo, hi = hi, 2 * hi
        if hi > 1e3:  # p-value below alpha for every ε: only possible with δ = 0 and all correct; cannot happen for r ≥ 1
            return math.inf
    return float(brentq(lambda e: one_run_p_value(m, r, v, e, delta) - alpha, lo, hi, xtol=1e-6))


def guess_counts(m: int) -> list[int]:
    """The numbers of guesses tried, fixed before the scores are seen: m/8, m/4, m/2 and m
    (even, ≥ 2). The bound is the best over them with a Bonferroni correction."""
    return sorted({max(2, 2 * round(m * f / 2)) for f in (1 / 8, 1 / 4, 1 / 2, 1)} & set(range(2, m + 1)))


def guesses(scores: np.ndarray, r: int) -> np.ndarray:
    """+1 ("in") for the ``r / 2`` highest scores, -1 ("out") for the ``r / 2`` lowest, 0 (abstain)
    for the rest. Ties are broken by position (the canaries are in random order)."""
    scores = np.asarray(scores, dtype=float)
    order = np.argsort(-scores, kind="stable")
    t = np.zeros(len(scores), dtype=int)
    k_in = r // 2
    t[order[:k_in]] = 1
    if r - k_in:
        t[order[-(r - k_in):]] = -1
    return t


def one_run_audit(scores: Sequence[float], included: Sequence[bool], *, delta: float, confidence: float = 0.95,
                  counts: Sequence[int] | None = None) -> dict:
    """The one-run audit of canary ``scores`` (higher = more likely trained on) against the coins
    ``included``: for each number of guesses in ``counts`` (default :func:`guess_counts`), the
    correct guesses and the bound at confidence ``1 - (1 - confidence) / len(counts)``
    (Bonferroni); ``epsilon_lower_bound`` is the best of them, at ``confidence``."""
    scores = np.asarray(scores, dtype=float)
    s = np.where(np.asarray(included, dtype=bool), 1, -1)
    m = len(scores)
    counts = list(counts) if counts is not None else guess_counts(m)
    each = 1 - (1 - confidence) / max(1, len(counts))
    tried = []
    for r in counts:
        t = guesses(scores, r)
        v = int((t * s > 0).sum())
        tried.append({"guesses": int(r), "correct": v, "epsilon_lower_bound": one_run_epsilon(m, r, v, delta=delta, confidence=each)})
    best = max(tried, key=lambda x: x["epsilon_lower_bound"], default={"guesses": 0, "correct": 0, "epsilon_lower_bound": 0.0})
    return {"canaries": m, "included": int(s.clip(0).sum()), "delta": delta, "confidence": confidence,
            "epsilon_lower_bound": best["epsilon_lower_bound"], "guesses": best["guesses"], "correct": best["correct"],
            "tried": tried}


# ----------------------------------------------------------------------------- attack summaries


def roc_summary(member_scores: Sequence[float], nonmember_scores: Sequence[float], *, n_bootstrap: int = 1000,
                seed: int = 0) -> dict:
    """An attack's ROC on members (positives) vs non-members: AUC with a bootstrap 95 % interval
    (members and non-members resampled separately), TPR at :data:`FPR_TARGETS` (the largest TPR at
    an FPR no larger; with fewer than 1 / FPR non-members only FPR 0 qualifies) and the curve
    interpolated on :data:`ROC_GRID`."""
    from sklearn.metrics import roc_auc_score, roc_curve

    pos, neg = np.asarray(member_scores, dtype=float), np.asarray(nonmember_scores, dtype=float)
    if len(pos) == 0 or len(neg) == 0:
        raise DataError(f"an attack needs members and non-members to score (got {len(pos)} and {len(neg)}).")
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    x = np.r_[pos, neg]
    auc = float(roc_auc_score(y, x))
    fpr, tpr, _ = roc_curve(y, x)
    out = {"n_members": int(len(pos)), "n_nonmembers": int(len(neg)), "auc": auc,
           "tpr_at_fpr": {f"{f:g}": float(tpr[fpr <= f].max()) for f in FPR_TARGETS},
           "roc": {"fpr": list(ROC_GRID), "tpr": [float(t) for t in np.interp(ROC_GRID, fpr, tpr)]}}
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        aucs = np.empty(n_bootstrap)
        for b in range(n_bootstrap):
            p, n = rng.choice(pos, len(pos)), rng.choice(neg, len(neg))
            aucs[b] = roc_auc_score(y, np.r_[p, n])
        out["auc_ci95"] = [float(np.quantile(aucs, 0.025)), float(np.quantile(aucs, 0.975))]
    return out
