"""The tests across privacy levels, read from the runs table of :func:`privrad.stats.load_runs`.

The questions and the tests that answer them (scipy throughout):

* *Does ε matter at all?* — a Friedman test across the ε levels (∞ included), blocks = model
  × seed (:func:`scipy.stats.friedmanchisquare`). Rank-based, so the models' different levels
  do not matter, only their ordering across ε.
* *Which ε cost utility?* — each ε against non-private on the same blocks, a Wilcoxon
  signed-rank test (:func:`scipy.stats.wilcoxon`), Holm-corrected over the ε levels of a
  dataset (:func:`holm`). Zero differences are dropped (scipy's default), so with n non-zero
  differences the smallest two-sided exact p is 2/2ⁿ: with three models and one seed (p ≥ 0.25)
  it cannot reach significance, and the table says so.
* *Do these two trained models differ on test reports like these?* — a paired bootstrap over
  the same test reports of weighted F1(ε) − weighted F1(∞) for one model and seed
  (:func:`paired_bootstrap`), with its 95 % interval and a two-sided bootstrap p, Holm-corrected
  per dataset. It is a statement about two trained models, not about the training procedure:
  training randomness is held fixed, so it cannot say that another seed would differ as much.
* *Does utility rise with ε?* — Page's trend test (:func:`scipy.stats.page_trend_test`) over
  the private ε levels in increasing order, blocks = model × seed per dataset and blocks =
  seeds per dataset × model; one block is tested exactly by enumerating its k! orderings
  (:func:`page_trend`). Blocks keep models and seeds apart, so clustered runs are never treated
  as independent points.

Every test row carries ``p_min``, the smallest p-value the test can give with these blocks or
resamples (for rank tests: under their exact permutation distribution). No row reports a p below
it (an approximate p is raised to it, and the note says so), and a row whose ``p_min`` exceeds
0.05 is labelled "cannot reach 0.05". Each row's ``note`` also says when a test could not be
run, instead of leaving a silent gap.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from scipy import stats as st

from privrad.config import epsilon_label
from privrad.evaluate import bootstrap_counts, bootstrap_weighted_f1, weighted_f1
from privrad.stats import INF, THRESHOLDS, decisions, load_predictions


def holm(pvalues: Iterable[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (step-down; NaN entries are left out and kept NaN).
    The i-th smallest of m p-values is multiplied by (m − i), made monotone, capped at 1."""
    p = np.asarray(list(pvalues), dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out[order] = np.minimum(adj, 1.0)
    return out


def _holm_within(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of one family (a dataset's comparisons) with their Holm-adjusted ``p_holm``."""
    for r, a in zip(rows, holm([r["p"] for r in rows])):
        r["p_holm"] = a
    return rows


def _row(test: str, dataset: str, comparison: str, n: int, statistic: float = math.nan, p: float = math.nan,
         effect: float = math.nan, effect_ci95_low: float = math.nan, effect_ci95_high: float = math.nan,
         note: str = "", p_min: float = math.nan) -> dict[str, Any]:
    """One row of the tests table. ``p_min`` is the smallest p the test can give here: a p below
    it (an approximation's artefact) is raised to it, and a row that cannot reach 0.05 says so."""
    notes = [note] if note else []
    if not math.isnan(p) and not math.isnan(p_min) and p < p_min:
        p = p_min
        notes.append(f"approximate p was below the exact minimum {p_min:.3g}; shown as that minimum")
    if not math.isnan(p_min) and p_min > 0.05:
        notes.append(f"smallest possible p is {p_min:.3g}: cannot reach 0.05")
    return {"test": test, "dataset": dataset, "comparison": comparison, "n": n, "statistic": statistic,
            "effect": effect, "effect_ci95_low": effect_ci95_low, "effect_ci95_high": effect_ci95_high, "p": p,
            "p_min": p_min, "p_holm": math.nan, "note": "; ".join(notes)}


def _blocks(sub: pd.DataFrame, threshold: str = "tuned") -> pd.DataFrame:
    """Weighted F1 (at ``threshold``, see :data:`THRESHOLDS`) pivoted to blocks (model × seed) ×
    ε levels, LoRA runs only."""
    lora = sub[sub["method"] == "lora"]
    return lora.pivot_table(index=["model", "seed"], columns="epsilon", values=THRESHOLDS[threshold], aggfunc="mean")


def friedman(runs: pd.DataFrame, *, threshold: str = "tuned") -> list[dict[str, Any]]:
    """Friedman test across ε levels per dataset; blocks = model × seed with every level."""
    out = []
    for dataset, sub in runs.groupby("dataset", sort=True):
        wide = _blocks(sub, threshold).dropna()
        k, n = wide.shape[1], wide.shape[0]
        levels = ", ".join(epsilon_label(None if e == INF else e) for e in wide.columns)
        if k < 3 or n < 2:
            out.append(_row("Friedman across ε", dataset, f"ε ∈ {{{levels}}}", n,
                            note=f"not run: needs ≥ 3 ε levels and ≥ 2 complete blocks (model × seed); have {k} levels, {n} blocks"))
            continue
        res = st.friedmanchisquare(*[wide[c].to_numpy() for c in wide.columns])
        note = f"blocks = model × seed ({n}); chi-square approximation is rough with few blocks" if n < 10 else f"blocks = model × seed ({n})"
        # exact minimum: every block ranks the levels the same way, k! of the (k!)^n equally likely rankings
        p_min = float(math.factorial(k)) ** (1 - n)
        out.append(_row("Friedman across ε", dataset, f"ε ∈ {{{levels}}}", n, float(res.statistic), float(res.pvalue),
                        note=note, p_min=p_min))
    return out


def paired_vs_nonprivate(runs: pd.DataFrame, *, threshold: str = "tuned") -> list[dict[str, Any]]:
    """Wilcoxon signed-rank of each ε against ε = ∞ over blocks (model × seed); Holm over the ε
    levels within a dataset."""
    out = []
    for dataset, sub in runs.groupby("dataset", sort=True):
        wide = _blocks(sub, threshold)
        if INF not in wide.columns:
            out.append(_row("Wilcoxon vs ∞", dataset, "each ε vs ∞", 0, note="not run: no non-private LoRA run (ε = ∞)"))
            continue
        rows = []
        for e in [c for c in wide.columns if c != INF]:
            pair = wide[[e, INF]].dropna()
            n = len(pair)
            d = (pair[e] - pair[INF]).to_numpy()
            comp = f"ε={epsilon_label(e)} vs ∞"
            if n < 2:
                rows.append(_row("Wilcoxon vs ∞", dataset, comp, n, effect=float(d.mean()) if n else math.nan,
                                 note="not run: needs ≥ 2 paired blocks (model × seed)"))
                continue
            if np.all(d == 0):
                rows.append(_row("Wilcoxon vs ∞", dataset, comp, n, effect=0.0, p=1.0, p_min=1.0, note="all differences are zero"))
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = st.wilcoxon(pair[e].to_numpy(), pair[INF].to_numpy())
            nonzero = int(np.count_nonzero(d))  # scipy drops zero differences (zero_method="wilcox")
            note = f"median difference {np.median(d):+.3f}; {nonzero} non-zero of {n} differences"
            rows.append(_row("Wilcoxon vs ∞", dataset, comp, n, float(res.statistic), float(res.pvalue), effect=float(np.mean(d)),
                             note=note, p_min=2.0 / 2 ** nonzero))
        out.extend(_holm_within(rows))
    return out


def paired_bootstrap(run_a: str | Path, run_b: str | Path, *, n_bootstrap: int = 2000, seed: int = 0,
                     threshold: str = "tuned") -> dict[str, float]:
    """Weighted F1(a) − weighted F1(b) on the same test reports, resampled together.

    A statement about these two trained models on test reports like these, not about the
    training procedure (each model's training randomness is held fixed). Both runs must hold
    predictions for the same test ids (same dataset, same split). Returns the observed
    difference, the percentile 95 % interval and a two-sided bootstrap p,
    ``2 (1 + #resamples on the other side of zero) / (n_bootstrap + 1)`` capped at 1, whose
    smallest possible value ``p_min = 2 / (n_bootstrap + 1)`` is returned too."""
    a, b = load_predictions(run_a), load_predictions(run_b)
    if a["ids"].shape != b["ids"].shape or not np.array_equal(a["ids"], b["ids"]):
        raise ValueError(f"{run_a} and {run_b} do not hold predictions for the same test reports")
    y, m, n = a["labels"], a["label_mask"], len(a["labels"])
    counts = bootstrap_counts(n, n_bootstrap, seed)  # the same resamples for both runs: paired
    da, db = decisions(a, threshold), decisions(b, threshold)
    pa, pb = weighted_f1(y, da, m), weighted_f1(y, db, m)
    diff = bootstrap_weighted_f1(y, da, m, counts) - bootstrap_weighted_f1(y, db, m, counts)
    lo, hi = np.nanpercentile(diff, [2.5, 97.5])
    other_side = min(int(np.sum(diff <= 0)), int(np.sum(diff >= 0)))
    p = min(1.0, 2 * (1 + other_side) / (n_bootstrap + 1))
    return {"difference": pa - pb, "difference_ci95_low": float(lo), "difference_ci95_high": float(hi), "p": float(p),
            "p_min": 2 / (n_bootstrap + 1), "n_reports": n}


def bootstrap_vs_nonprivate(runs: pd.DataFrame, *, n_bootstrap: int = 2000, seed: int = 0,
                            threshold: str = "tuned") -> list[dict[str, Any]]:
    """Paired bootstrap of each private LoRA run against the non-private LoRA run of the same
    dataset, model and seed; Holm over all comparisons of a dataset."""
    out = []
    for dataset, sub in runs.groupby("dataset", sort=True):
        lora = sub[sub["method"] == "lora"]
        rows = []
        for (model, s), grp in lora.groupby(["model", "seed"], sort=True):
            ref = grp[grp["epsilon"] == INF]
            for r in grp[grp["epsilon"] != INF].itertuples():
                comp = f"{model}, seed {s}: ε={r.epsilon_label} vs ∞"
                if ref.empty:
                    rows.append(_row("paired bootstrap vs ∞", dataset, comp, 0, note="not run: no non-private run of this model and seed"))
                    continue
                try:
                    b = paired_bootstrap(r.run_dir, ref.iloc[0]["run_dir"], n_bootstrap=n_bootstrap, seed=seed, threshold=threshold)
                except ValueError as exc:  # not the same test reports
                    rows.append(_row("paired bootstrap vs ∞", dataset, comp, 0, note=f"not run: {exc}"))
                    continue
                rows.append(_row("paired bootstrap vs ∞", dataset, comp, b["n_reports"], effect=b["difference"],
                                 effect_ci95_low=b["difference_ci95_low"], effect_ci95_high=b["difference_ci95_high"],
                                 p=b["p"], p_min=b["p_min"],
                                 note=f"these two trained models; {n_bootstrap} resamples of the test reports"))
        out.extend(_holm_within(rows))
    return out


PAGE = "Page trend: F1 rises with ε"


def page_trend(table: np.ndarray) -> tuple[float, float, float, str]:
    """Page's L, its one-sided p, and its exact minimum p for ``table`` (blocks × levels, the
    levels in the predicted increasing order); the method used.

    Two or more blocks: :func:`scipy.stats.page_trend_test` (exact for small tables, normal
    approximation beyond). One block: the exact permutation p, the share of the k! orderings of
    its ranks whose L is at least the observed one. The exact minimum is (1/k!)^blocks.
    """
    table = np.asarray(table, dtype=float)
    m, k = table.shape
    p_min = float(math.factorial(k)) ** -m
    if m >= 2:
        res = st.page_trend_test(table)
        return float(res.statistic), float(res.pvalue), p_min, str(res.method)
    from itertools import permutations

    ranks = st.rankdata(table[0])
    weights = np.arange(1, k + 1)
    L = float(weights @ ranks)
    perms = np.array(list(permutations(ranks)))
    p = float(np.mean(perms @ weights >= L - 1e-9))
    return L, p, p_min, "exact (one block, all orderings)"


def trend(runs: pd.DataFrame, *, threshold: str = "tuned") -> list[dict[str, Any]]:
    """Page's trend test of "weighted F1 rises with ε" over the private LoRA ε levels: per
    dataset with blocks = model × seed, and per dataset × model with blocks = seeds. The effect
    is the mean within-block Spearman ρ between ε and F1, ρ̄ = 12 L / (m k (k² − 1)) − 3 (k + 1) / (k − 1)."""
    out = []
    for dataset, sub in runs.groupby("dataset", sort=True):
        priv = sub[(sub["method"] == "lora") & (sub["epsilon"] != INF)]
        groups = [("all models", priv)] + [(m, g) for m, g in priv.groupby("model", sort=True)]
        for who, g in groups:
            wide = g.pivot_table(index=["model", "seed"], columns="epsilon", values=THRESHOLDS[threshold], aggfunc="mean").dropna()
            m, k = wide.shape
            blocks = "model × seed" if who == "all models" else "seed"
            if k < 3 or m < 1:
                out.append(_row(PAGE, dataset, who, m, note=f"not run: needs ≥ 3 private ε levels in a complete block ({blocks}); have {k}"))
                continue
            L, p, p_min, method = page_trend(wide[sorted(wide.columns)].to_numpy())
            rho = 12 * L / (m * k * (k * k - 1)) - 3 * (k + 1) / (k - 1)
            out.append(_row(PAGE, dataset, who, m, L, p, effect=rho, p_min=p_min,
                            note=f"blocks = {blocks} ({m}), {k} ε levels; {method}; one-sided"))
    return out


def tests_table(runs: pd.DataFrame, *, n_bootstrap: int = 2000, seed: int = 0) -> pd.DataFrame:
    """All tests in one table (see the module docstring for what each answers), each at the runs'
    thresholds and at 0.5 (column ``threshold``, see :data:`THRESHOLDS`); Holm within each."""
    rows = []
    for threshold in THRESHOLDS:
        part = (friedman(runs, threshold=threshold) + paired_vs_nonprivate(runs, threshold=threshold)
                + bootstrap_vs_nonprivate(runs, n_bootstrap=n_bootstrap, seed=seed, threshold=threshold)
                + trend(runs, threshold=threshold))
        rows += [{**r, "threshold": threshold} for r in part]
    cols = ["test", "threshold", "dataset", "comparison", "n", "statistic", "effect", "effect_ci95_low", "effect_ci95_high",
            "p", "p_min", "p_holm", "note"]
    return pd.DataFrame(rows, columns=cols)


def tests_summary(tests: pd.DataFrame, *, alpha: float = 0.05) -> dict[str, str]:
    """One sentence per dataset on what the tests can support (from :func:`tests_table`), at the
    runs' thresholds (the tests at a fixed 0.5 are in the table beside them)."""
    from privrad.tables import pvalue

    if "threshold" in tests:
        tests = tests[tests["threshold"] == "tuned"]
    out = {}
    for dataset, t in tests.groupby("dataset", sort=True):
        parts = []
        fr = t[t["test"].str.startswith("Friedman") & t["p"].notna()]
        if len(fr):
            r = fr.iloc[0]
            verdict = "ε changes weighted F1" if r["p"] < alpha else "no effect of ε is detectable"
            parts.append(f"{verdict} (Friedman p = {pvalue(r['p'])} over {int(r['n'])} model × seed blocks)")
        bs = t[t["test"].str.startswith("paired bootstrap") & t["p_holm"].notna()]
        if len(bs):
            drops = bs[(bs["p_holm"] < alpha) & (bs["effect"] < 0)]
            parts.append(f"the paired bootstrap finds a significant drop against non-private training in "
                         f"{len(drops)} of {len(bs)} model × ε comparisons (Holm-corrected)")
        wx = t[t["test"].str.startswith("Wilcoxon") & t["p"].notna()]
        if len(wx):
            if wx["note"].str.contains("cannot reach").all():
                parts.append("the Wilcoxon tests across models cannot reach significance with these seeds")
            else:
                sig = wx[wx["p_holm"] < alpha]
                parts.append(f"Wilcoxon across models: {len(sig)} of {len(wx)} ε levels differ from ∞ (Holm-corrected)")
        if parts:
            out[dataset] = f"On {dataset}, at the runs' thresholds, " + "; ".join(parts) + "."
    return out
