"""Statistics across run folders: the results table and the tests across privacy levels.

Everything here reads run folders only (``config.json``, ``metrics.json``, ``privacy.json``,
``predictions.npz``), so every number in the book can be recomputed from them.

The questions and the tests that answer them (scipy throughout):

* *How good is each configuration?* — per dataset × model × method × ε: the mean weighted F1
  over seeds ± its standard deviation (training randomness; undefined with one seed) and a 95 %
  interval over test reports (test-sampling uncertainty): with one seed the run's own bootstrap
  interval, with several an interval of the seed mean computed by resampling the test reports
  jointly for every seed (:func:`seed_mean_interval`) — never averaged endpoints.
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
from privrad.runs import read_run, run_state

EPSILON_ORDER = (0.01, 0.1, 1.0, 10.0, math.inf)
INF = math.inf

#: The two thresholds every weighted F1 is shown at: the run's own (``tuned`` on the validation
#: split, which the book declares public, or 0.5 for ``threshold: fixed``) and a fixed 0.5, which
#: uses no validation data. Keys name them in tables; values are the ``load_runs`` columns.
THRESHOLDS = {"tuned": "weighted_f1", "0.5": "weighted_f1_at_0.5"}

#: Weighted F1 reported in arXiv 2506.04450 (abstract): on MIMIC-CXR, DP-LoRA at a moderate
#: privacy budget 0.88 (up to 0.89), non-private LoRA 0.90, full fine-tuning 0.96; on CT-RATE
#: 0.59 at a moderate budget and 0.78 non-private.
PAPER = {
    "MIMIC-CXR": {"paper: moderate DP": 0.88, "paper: ∞": 0.90, "paper: full": 0.96},
    "CT-RATE": {"paper: moderate DP": 0.59, "paper: ∞": 0.78, "paper: full": None},
}


def paper_dataset(name: str) -> str:
    """The paper's dataset a dataset stands for: ``simulated-mimic-cxr`` and ``mimic-cxr`` →
    ``MIMIC-CXR`` (to put the paper's numbers beside ours)."""
    n = name.lower()
    if "mimic" in n:
        return "MIMIC-CXR"
    if "ct-rate" in n or "ctrate" in n:
        return "CT-RATE"
    if "openi" in n or "open-i" in n:
        return "Open-i"
    return name


# --------------------------------------------------------------------------------------
# Reading run folders (through privrad.runs only)
# --------------------------------------------------------------------------------------


def run_folders(results: str | Path | Iterable[str | Path]) -> list[Path]:
    """The complete run folders (:func:`privrad.runs.run_state`) under a results folder
    (searched two levels deep), or among those given."""
    if isinstance(results, (str, Path)):
        root = Path(results)
        candidates = [root] + [p for p in root.glob("*") if p.is_dir()] + [p for p in root.glob("*/*") if p.is_dir()]
    else:
        candidates = [Path(p) for p in results]
    found = {p for p in candidates if not p.name.startswith(".") and (p / "config.json").exists() and run_state(p).complete}
    return sorted(found)


COLUMNS = ["run_id", "run_dir", "dataset", "paper_dataset", "model", "method", "epsilon", "epsilon_label", "seed",
           "weighted_f1", "weighted_f1_ci95_low", "weighted_f1_ci95_high", "weighted_f1_at_0.5", "macro_f1", "micro_f1",
           "learned_nothing_weighted_f1", "learned_nothing_weighted_f1_at_0.5", "n_train", "epsilon_spent", "delta",
           "noise_multiplier", "sample_rate", "steps", "dp_randomness", "privacy_unit"]


def load_runs(results: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """One row per complete run folder, read by :func:`privrad.runs.read_run`: its point
    (dataset, model, method, ε, seed), weighted / macro / micro F1 with the bootstrap CI, and its
    privacy report. ``epsilon`` is the target (∞ for non-private, as a number for sorting)."""
    rows = []
    for rd in run_folders(results):
        row = read_run(rd).row()
        eps = row["epsilon"]
        row.update(epsilon=INF if eps is None else float(eps), epsilon_label=epsilon_label(eps),
                   paper_dataset=paper_dataset(row["dataset"]),
                   noise_multiplier=row["noise_multiplier"] if row["noise_multiplier"] is not None else 0.0)
        rows.append(row)
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["dataset", "model", "method", "epsilon", "seed"], ignore_index=True)


def per_label(runs: pd.DataFrame) -> pd.DataFrame:
    """Long table of per-label F1 and support: one row per run × label."""
    rows = []
    for r in runs.itertuples():
        for d in read_run(r.run_dir).metrics["per_label"]:
            rows.append({"dataset": r.dataset, "model": r.model, "method": r.method, "epsilon": r.epsilon,
                         "epsilon_label": r.epsilon_label, "seed": r.seed, "label": d["label"],
                         "f1": float(d["f1"]), "support": d["support"]})
    return pd.DataFrame(rows)


def load_predictions(run_dir: str | Path) -> dict[str, np.ndarray]:
    return read_run(run_dir).predictions()


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------


def summarize(runs: pd.DataFrame, *, n_bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per dataset × model × method × ε: seeds, mean ± sd of weighted F1 and a 95 % interval
    over test reports, at the run's thresholds and at 0.5 (``*_at_0.5``); sd is NaN with one seed
    (undefined, not zero).

    The interval at the run's thresholds is the run's own bootstrap interval with one seed; with
    several it is computed for the seed mean by :func:`seed_mean_interval` (averaging the runs'
    endpoints would not be an interval of anything). At 0.5 it is always computed that way."""
    keys = ["dataset", "model", "method", "epsilon"]
    g = runs.groupby(keys, sort=True)
    out = g.agg(n_seeds=("seed", "nunique"), mean=("weighted_f1", "mean"), sd=("weighted_f1", "std"),
                weighted_f1_ci95_low=("weighted_f1_ci95_low", "first"), weighted_f1_ci95_high=("weighted_f1_ci95_high", "first"),
                mean_at_0_5=("weighted_f1_at_0.5", "mean"), sd_at_0_5=("weighted_f1_at_0.5", "std"),
                noise_multiplier=("noise_multiplier", "mean"), epsilon_spent=("epsilon_spent", "mean")).reset_index()
    out = out.rename(columns={"mean_at_0_5": "mean_at_0.5", "sd_at_0_5": "sd_at_0.5"})
    out["weighted_f1_ci95_low_at_0.5"] = math.nan
    out["weighted_f1_ci95_high_at_0.5"] = math.nan
    for i, (_, sub) in enumerate(g):
        if len(sub) > 1:
            _, lo, hi = seed_mean_interval(sub["run_dir"], n_bootstrap=n_bootstrap, seed=seed)
            out.loc[i, ["weighted_f1_ci95_low", "weighted_f1_ci95_high"]] = [lo, hi]
        if n_bootstrap:
            _, lo, hi = seed_mean_interval(sub["run_dir"], threshold="0.5", n_bootstrap=n_bootstrap, seed=seed)
            out.loc[i, ["weighted_f1_ci95_low_at_0.5", "weighted_f1_ci95_high_at_0.5"]] = [lo, hi]
    out.insert(4, "epsilon_label", [epsilon_label(None if e == INF else e) for e in out["epsilon"]])
    return out


def decisions(pred: dict[str, np.ndarray], threshold: str = "tuned") -> np.ndarray:
    """A run's stored test decisions (``tuned``: at its own thresholds) or those at 0.5 (``"0.5"``)."""
    if threshold not in THRESHOLDS:
        raise ValueError(f"threshold {threshold!r}: use one of {', '.join(THRESHOLDS)}")
    return pred["decisions"] if threshold == "tuned" else pred["probabilities"] >= 0.5


def seed_mean_interval(run_dirs: Iterable[str | Path], *, threshold: str = "tuned", n_bootstrap: int = 1000,
                       seed: int = 0) -> tuple[float, float, float]:
    """The mean weighted F1 of several runs (seeds) on the same test reports, with a percentile
    95 % interval over test reports: each resample draws the reports once and scores every run
    on it, so the interval is one of the seed mean itself. ``threshold``: see :func:`decisions`."""
    preds = [load_predictions(r) for r in run_dirs]
    ids = preds[0]["ids"]
    if any(p["ids"].shape != ids.shape or not np.array_equal(p["ids"], ids) for p in preds):
        raise ValueError("the runs do not hold predictions for the same test reports")
    counts = bootstrap_counts(len(ids), n_bootstrap, seed)  # one resample of the reports, every seed scored on it
    mean = float(np.mean([weighted_f1(p["labels"], decisions(p, threshold), p["label_mask"]) for p in preds]))
    boots = np.mean([bootstrap_weighted_f1(p["labels"], decisions(p, threshold), p["label_mask"], counts) for p in preds], axis=0)
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    return mean, float(lo), float(hi)


def _cell(mean: float, sd: float, lo: float, hi: float) -> str:
    """``0.48 ± 0.02`` over seeds, or ``0.48 [0.43, 0.55]`` (bootstrap 95 % CI) with one seed."""
    from privrad.tables import interval, number

    if not math.isnan(sd):
        return f"{number(mean, 2)} ± {number(sd, 2)}"
    return interval(mean, lo, hi, 2)


def learned_nothing(runs: pd.DataFrame, *, threshold: str = "tuned") -> pd.Series:
    """Per dataset, the weighted F1 of the text-blind reference (``evaluate.learned_nothing``;
    the mean over seeds where the splits differ) at the runs' thresholds or at 0.5: a cell not
    above it learned nothing."""
    column = "learned_nothing_weighted_f1" + ("" if threshold == "tuned" else "_at_0.5")
    values = pd.to_numeric(runs[column], errors="coerce")
    return values.groupby(runs["dataset"], sort=True).mean()


def paper_table(runs: pd.DataFrame, *, threshold: str = "tuned", formatted: bool = True, n_bootstrap: int = 1000) -> pd.DataFrame:
    """The paper's layout: rows dataset × model, columns ε = 0.01, 0.1, 1, 10, ∞ (LoRA) and
    full fine-tuning (non-private), the learned-nothing reference of the dataset, then the paper's
    reported numbers for the paper's dataset it stands for.
    Cells are ``mean ± sd`` over seeds, or ``mean [bootstrap CI]`` with one seed; ``threshold``
    ``"tuned"`` (the runs' thresholds) or ``"0.5"`` (see :data:`THRESHOLDS`)."""
    if threshold not in THRESHOLDS:
        raise ValueError(f"threshold {threshold!r}: use one of {', '.join(THRESHOLDS)}")
    reference = learned_nothing(runs, threshold=threshold)
    s = summarize(runs, n_bootstrap=n_bootstrap)
    at = "" if threshold == "tuned" else "_at_0.5"
    cols = (f"mean{at}", f"sd{at}", f"weighted_f1_ci95_low{at}", f"weighted_f1_ci95_high{at}")

    def cell(h):
        return _cell(*(h[c] for c in cols)) if formatted else h[cols[0]]

    rows = []
    for (dataset, model), sub in s.groupby(["dataset", "model"], sort=True):
        row: dict[str, Any] = {"dataset": dataset, "model": model}
        lora = sub[sub["method"] == "lora"]
        eps_levels = sorted(set(EPSILON_ORDER) | set(lora["epsilon"]))
        for e in eps_levels:
            hit = lora[lora["epsilon"] == e]
            key = f"ε={epsilon_label(None if e == INF else e)}"
            row[key] = ("" if formatted else math.nan) if hit.empty else cell(hit.iloc[0])
        full = sub[(sub["method"] == "full") & (sub["epsilon"] == INF)]
        row["full"] = ("" if formatted else math.nan) if full.empty else cell(full.iloc[0])
        ref = reference.get(dataset, math.nan)
        row["learned nothing"] = ("" if math.isnan(ref) else f"{ref:.3f}") if formatted else ref
        for k, v in PAPER.get(paper_dataset(dataset), {}).items():
            row[k] = ("" if v is None else f"{v:.2f}") if formatted else (math.nan if v is None else v)
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


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
        adj = holm([r["p"] for r in rows])
        for r, a in zip(rows, adj):
            r["p_holm"] = a
        out.extend(rows)
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
        adj = holm([r["p"] for r in rows])
        for r, a in zip(rows, adj):
            r["p_holm"] = a
        out.extend(rows)
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


def seeds_note(runs: pd.DataFrame) -> str:
    """What the number of seeds allows, and what a seed controls under the runs' DP randomness."""
    n = runs["seed"].nunique() if len(runs) else 0
    if n >= 2:
        text = f"{n} seeds: cells show mean ± sd over seeds."
    else:
        text = ("One seed: cells show the weighted F1 with its bootstrap 95 % interval over test reports; "
                "the spread over seeds (training randomness) is not estimated — add seeds with `--set seed=[0,1,2]`.")
    modes = set(runs["dp_randomness"].dropna()) if "dp_randomness" in runs else set()
    if "secure" in modes:
        text += (" Private runs draw their Poisson batches and noise from secret randomness: a seed fixes "
                 "initialisation and data handling only, and re-running a seed gives another draw of the noise.")
    if "reproducible" in modes:
        text += (" Runs in reproducible mode replay their batches and noise from the seed: the same seed gives the "
                 "same model, and their adapters are not DP releases.")
    return text


def findings(runs: pd.DataFrame) -> str:
    """What the runs show, in sentences (Markdown), computed from the run folders.

    Per dataset: the learned-nothing reference, and per model the gap of DP-LoRA to non-private
    LoRA at each ε with whether the bootstrap interval lies above the reference; every weighted F1
    at the runs' thresholds with the one at a fixed 0.5 beside it in brackets. Used by the
    analysis notebook so that the results chapter's prose about a study can never drift from it.
    """
    s = summarize(runs)
    ref, ref_half = learned_nothing(runs), learned_nothing(runs, threshold="0.5")
    out = []
    for dataset, sub in s[s["method"] == "lora"].groupby("dataset", sort=True):
        r = ref.get(dataset, math.nan)
        n_train = runs.loc[runs["dataset"] == dataset, "n_train"].dropna()
        size = f" ({int(n_train.iloc[0]):,} training reports)" if len(n_train) else ""
        half = ref_half.get(dataset, math.nan)
        lines = [f"**{dataset}**{size}: {recipe(runs[runs['dataset'] == dataset])} A classifier that ignores "
                 f"the text (learned nothing) scores {r:.3f} [{half:.3f} at 0.5]." if not math.isnan(r) else f"**{dataset}**{size}:"]
        below = []
        for model, g in sub.groupby("model", sort=True):
            g = g.set_index("epsilon")
            if INF not in g.index:
                continue
            top, top_half = g.loc[INF, "mean"], g.loc[INF, "mean_at_0.5"]
            parts = []
            for e in sorted(x for x in g.index if x != INF):
                h = g.loc[e]
                above = not math.isnan(r) and h["weighted_f1_ci95_low"] > r
                if not above and not math.isnan(r):
                    below.append(f"{model} at ε = {epsilon_label(e)}")
                parts.append(f"{h['mean']:.3f} [{h['mean_at_0.5']:.3f}] at ε = {epsilon_label(e)} (gap {top - h['mean']:+.3f})")
            lines.append(f"- {model}: non-private {top:.3f} [{top_half:.3f}]; DP-LoRA " + ", ".join(parts) + ".")
        if not math.isnan(r):
            lines.append("- Bootstrap interval not above the learned-nothing reference: "
                         + ("; ".join(below) if below else "none — every private cell learned something") + ".")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def recipe(runs: pd.DataFrame) -> str:
    """One sentence on how the LoRA runs among ``runs`` were trained, read from their configs."""
    cfgs = {}
    for r in runs[runs["method"] == "lora"].itertuples():
        c = read_run(r.run_dir).config.to_dict()
        cfgs.setdefault("dp" if c.get("epsilon") is not None else "np", c)
    c = cfgs.get("dp") or cfgs.get("np")
    if not c:
        return ""
    layers = c.get("lora_layers")
    where = "every layer" if layers is None else ("the top layer" if layers == 1 else f"the top {layers} layers")
    targets = " and ".join(c.get("lora_targets") or ["query", "value"])
    head = "classifier and pooler" if c.get("train_pooler", True) else "classifier (pooler frozen)"
    lrs = []
    for key, what in (("dp", "DP-SGD"), ("np", "non-private")):
        if key in cfgs:
            lrs.append(f"{cfgs[key]['lr']:g} ({what})")
    text = (f"LoRA of rank {c['lora_r']} on the attention {targets} of {where}, with the {head} trained; "
            f"{c['num_epochs']:g} epochs of batches of {c['batch_size']} reports (Poisson-sampled under DP), "
            f"reports cut at {c['max_length']} tokens, learning rate {' and '.join(lrs)}")
    if "dp" in cfgs:
        text += f", clipping norm {cfgs['dp']['max_grad_norm']:g}"
    return text + "."


# --------------------------------------------------------------------------------------
# The answer, in sentences (the results and statistics chapters open with them)
# --------------------------------------------------------------------------------------


def answer(runs: pd.DataFrame) -> dict[str, str]:
    """One sentence per dataset: what privacy costs the best model (best without privacy) —
    its weighted F1 without privacy, at ε = 1 and at the smallest ε of the study, each with its
    interval — and what the learned-nothing reference (a classifier that ignores the text) scores."""
    from privrad.tables import interval

    s = summarize(runs)
    reference = learned_nothing(runs)
    out = {}
    for dataset, sub in s.groupby("dataset", sort=True):
        lora = sub[sub["method"] == "lora"]
        if lora.empty:
            continue
        top = lora[lora["epsilon"] == lora["epsilon"].max()]
        model = top.loc[top["mean"].idxmax(), "model"]
        rows = lora[lora["model"] == model].set_index("epsilon")
        say = lambda e: interval(rows.at[e, "mean"], rows.at[e, "weighted_f1_ci95_low"], rows.at[e, "weighted_f1_ci95_high"])  # noqa: E731
        parts = []
        if INF in rows.index:
            parts.append(f"{say(INF)} without privacy")
        private = sorted(e for e in rows.index if np.isfinite(e))
        for e in ([1.0] if 1.0 in private else []) + ([private[0]] if private and private[0] != 1.0 else []):
            parts.append(f"{say(e)} at ε = {epsilon_label(e)}")
        text = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
        best = " (the best model without privacy)" if lora["model"].nunique() > 1 and INF in rows.index else ""
        sentence = f"On {dataset}, {model}{best} reaches a weighted F1 of {text}"
        nothing = reference.get(dataset, math.nan)
        if not math.isnan(nothing):
            sentence += f"; a classifier that ignores the text scores {nothing:.2f}"
        out[dataset] = sentence + "."
    return out


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
