"""Statistics across run folders: the results table and the tests across privacy levels.

Everything here reads run folders only (``config.json``, ``metrics.json``, ``privacy.json``,
``predictions.npz``), so every number in the book can be recomputed from them.

The questions and the tests that answer them (scipy throughout):

* *How good is each configuration?* — per dataset × model × method × ε: the mean weighted F1
  over seeds ± its standard deviation (training randomness; undefined with one seed) and the
  per-run bootstrap 95 % interval over test reports (test-sampling uncertainty; averaged over
  seeds when there are several).
* *Does ε matter at all?* — a Friedman test across the ε levels (∞ included), blocks = model
  × seed (:func:`scipy.stats.friedmanchisquare`). Rank-based, so the models' different levels
  do not matter, only their ordering across ε.
* *Which ε cost utility?* — each ε against non-private on the same blocks, a Wilcoxon
  signed-rank test (:func:`scipy.stats.wilcoxon`), Holm-corrected over the ε levels of a
  dataset (:func:`holm`). With n pairs the smallest two-sided exact p is 2/2ⁿ, so with three
  models and one seed (p ≥ 0.25) it cannot reach significance: the table says so.
* *Within one model and seed, is the difference real?* — a paired bootstrap over the same
  test reports of weighted F1(ε) − weighted F1(∞) (:func:`paired_bootstrap`), with its 95 %
  interval and a two-sided bootstrap p, Holm-corrected per dataset.
* *Is there a trend?* — Spearman's ρ between log ε and weighted F1 over the private runs
  (:func:`scipy.stats.spearmanr`), per dataset and per dataset × model.

Each test row carries a ``note`` that says when a test could not be run, or cannot reach
significance with the runs at hand (e.g. one seed), instead of leaving a silent gap.
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
           "weighted_f1", "weighted_f1_ci95_low", "weighted_f1_ci95_high", "macro_f1", "micro_f1",
           "learned_nothing_weighted_f1", "n_train", "epsilon_spent", "delta", "noise_multiplier", "sample_rate", "steps"]


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


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per dataset × model × method × ε: seeds, mean ± sd of weighted F1 and the (seed-averaged)
    bootstrap interval; sd is NaN with one seed (undefined, not zero)."""
    g = runs.groupby(["dataset", "model", "method", "epsilon"], sort=True)
    out = g.agg(n_seeds=("seed", "nunique"), mean=("weighted_f1", "mean"), sd=("weighted_f1", "std"),
                weighted_f1_ci95_low=("weighted_f1_ci95_low", "mean"), weighted_f1_ci95_high=("weighted_f1_ci95_high", "mean"),
                noise_multiplier=("noise_multiplier", "mean"), epsilon_spent=("epsilon_spent", "mean")).reset_index()
    out.insert(4, "epsilon_label", [epsilon_label(None if e == INF else e) for e in out["epsilon"]])
    return out


def _cell(mean: float, sd: float, lo: float, hi: float) -> str:
    if not math.isnan(sd):
        return f"{mean:.3f} ± {sd:.3f}"
    if not (math.isnan(lo) or math.isnan(hi)):
        return f"{mean:.3f} [{lo:.2f}, {hi:.2f}]"
    return f"{mean:.3f}"


def learned_nothing(runs: pd.DataFrame) -> pd.Series:
    """Per dataset, the weighted F1 of the text-blind reference (``evaluate.learned_nothing``;
    the mean over seeds where the splits differ): a cell not above it learned nothing."""
    values = pd.to_numeric(runs["learned_nothing_weighted_f1"], errors="coerce")
    return values.groupby(runs["dataset"], sort=True).mean()


def paper_table(runs: pd.DataFrame, *, formatted: bool = True) -> pd.DataFrame:
    """The paper's layout: rows dataset × model, columns ε = 0.01, 0.1, 1, 10, ∞ (LoRA) and
    full fine-tuning (non-private), the learned-nothing reference of the dataset, then the paper's
    reported numbers for the paper's dataset it stands for.
    Cells are ``mean ± sd`` over seeds, or ``mean [bootstrap CI]`` with one seed."""
    reference = learned_nothing(runs)
    s = summarize(runs)
    rows = []
    for (dataset, model), sub in s.groupby(["dataset", "model"], sort=True):
        row: dict[str, Any] = {"dataset": dataset, "model": model}
        lora = sub[sub["method"] == "lora"]
        eps_levels = sorted(set(EPSILON_ORDER) | set(lora["epsilon"]))
        for e in eps_levels:
            hit = lora[lora["epsilon"] == e]
            key = f"ε={epsilon_label(None if e == INF else e)}"
            if hit.empty:
                row[key] = "" if formatted else math.nan
            else:
                h = hit.iloc[0]
                row[key] = _cell(h["mean"], h["sd"], h["weighted_f1_ci95_low"], h["weighted_f1_ci95_high"]) if formatted else h["mean"]
        full = sub[(sub["method"] == "full") & (sub["epsilon"] == INF)]
        if full.empty:
            row["full"] = "" if formatted else math.nan
        else:
            h = full.iloc[0]
            row["full"] = _cell(h["mean"], h["sd"], h["weighted_f1_ci95_low"], h["weighted_f1_ci95_high"]) if formatted else h["mean"]
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
         effect: float = math.nan, effect_ci95_low: float = math.nan, effect_ci95_high: float = math.nan, note: str = "") -> dict[str, Any]:
    return {"test": test, "dataset": dataset, "comparison": comparison, "n": n, "statistic": statistic,
            "effect": effect, "effect_ci95_low": effect_ci95_low, "effect_ci95_high": effect_ci95_high, "p": p, "p_holm": math.nan, "note": note}


def _blocks(sub: pd.DataFrame) -> pd.DataFrame:
    """Weighted F1 pivoted to blocks (model × seed) × ε levels, LoRA runs only."""
    lora = sub[sub["method"] == "lora"]
    return lora.pivot_table(index=["model", "seed"], columns="epsilon", values="weighted_f1", aggfunc="mean")


def friedman(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Friedman test across ε levels per dataset; blocks = model × seed with every level."""
    out = []
    for dataset, sub in runs.groupby("dataset", sort=True):
        wide = _blocks(sub).dropna()
        k, n = wide.shape[1], wide.shape[0]
        levels = ", ".join(epsilon_label(None if e == INF else e) for e in wide.columns)
        if k < 3 or n < 2:
            out.append(_row("Friedman across ε", dataset, f"ε ∈ {{{levels}}}", n,
                            note=f"not run: needs ≥ 3 ε levels and ≥ 2 complete blocks (model × seed); have {k} levels, {n} blocks"))
            continue
        res = st.friedmanchisquare(*[wide[c].to_numpy() for c in wide.columns])
        note = f"blocks = model × seed ({n}); chi-square approximation is rough with few blocks" if n < 10 else f"blocks = model × seed ({n})"
        out.append(_row("Friedman across ε", dataset, f"ε ∈ {{{levels}}}", n, float(res.statistic), float(res.pvalue), note=note))
    return out


def paired_vs_nonprivate(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Wilcoxon signed-rank of each ε against ε = ∞ over blocks (model × seed); Holm over the ε
    levels within a dataset."""
    out = []
    for dataset, sub in runs.groupby("dataset", sort=True):
        wide = _blocks(sub)
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
                rows.append(_row("Wilcoxon vs ∞", dataset, comp, n, effect=0.0, p=1.0, note="all differences are zero"))
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = st.wilcoxon(pair[e].to_numpy(), pair[INF].to_numpy())
            min_p = 2.0 / 2 ** n
            note = f"median difference {np.median(d):+.3f}"
            if min_p > 0.05:
                note += f"; with n = {n} pairs the smallest possible p is {min_p:.3g}: cannot reach 0.05 (add seeds)"
            rows.append(_row("Wilcoxon vs ∞", dataset, comp, n, float(res.statistic), float(res.pvalue), effect=float(np.mean(d)), note=note))
        adj = holm([r["p"] for r in rows])
        for r, a in zip(rows, adj):
            r["p_holm"] = a
        out.extend(rows)
    return out


def paired_bootstrap(run_a: str | Path, run_b: str | Path, *, n_bootstrap: int = 2000, seed: int = 0) -> dict[str, float]:
    """Weighted F1(a) − weighted F1(b) on the same test reports, resampled together.

    Both runs must hold predictions for the same test ids (same dataset, same split). Returns
    the observed difference, the percentile 95 % interval and a two-sided bootstrap p
    (twice the share of resamples on the other side of zero)."""
    a, b = load_predictions(run_a), load_predictions(run_b)
    if a["ids"].shape != b["ids"].shape or not np.array_equal(a["ids"], b["ids"]):
        raise ValueError(f"{run_a} and {run_b} do not hold predictions for the same test reports")
    y, m, n = a["labels"], a["label_mask"], len(a["labels"])
    counts = bootstrap_counts(n, n_bootstrap, seed)  # the same resamples for both runs: paired
    pa, pb = weighted_f1(y, a["decisions"], m), weighted_f1(y, b["decisions"], m)
    diff = bootstrap_weighted_f1(y, a["decisions"], m, counts) - bootstrap_weighted_f1(y, b["decisions"], m, counts)
    lo, hi = np.nanpercentile(diff, [2.5, 97.5])
    p = min(1.0, 2 * min(np.mean(diff <= 0), np.mean(diff >= 0)))
    return {"difference": pa - pb, "difference_ci95_low": float(lo), "difference_ci95_high": float(hi), "p": float(p), "n_reports": n}


def bootstrap_vs_nonprivate(runs: pd.DataFrame, *, n_bootstrap: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
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
                    b = paired_bootstrap(r.run_dir, ref.iloc[0]["run_dir"], n_bootstrap=n_bootstrap, seed=seed)
                except ValueError as exc:  # not the same test reports
                    rows.append(_row("paired bootstrap vs ∞", dataset, comp, 0, note=f"not run: {exc}"))
                    continue
                rows.append(_row("paired bootstrap vs ∞", dataset, comp, b["n_reports"], effect=b["difference"],
                                 effect_ci95_low=b["difference_ci95_low"], effect_ci95_high=b["difference_ci95_high"], p=b["p"],
                                 note=f"{n_bootstrap} resamples of the test reports"))
        adj = holm([r["p"] for r in rows])
        for r, a in zip(rows, adj):
            r["p_holm"] = a
        out.extend(rows)
    return out


def trend(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Spearman's ρ between log10 ε and weighted F1 over private LoRA runs, per dataset (all
    models and seeds pooled) and per dataset × model."""
    out = []
    for dataset, sub in runs.groupby("dataset", sort=True):
        priv = sub[(sub["method"] == "lora") & (sub["epsilon"] != INF)]
        groups = [("all models", priv)] + [(m, g) for m, g in priv.groupby("model", sort=True)]
        for who, g in groups:
            n, k = len(g), g["epsilon"].nunique()
            if k < 3:
                out.append(_row("Spearman log ε ~ F1", dataset, who, n, note=f"not run: needs ≥ 3 private ε levels, have {k}"))
                continue
            res = st.spearmanr(np.log10(g["epsilon"].to_numpy()), g["weighted_f1"].to_numpy())
            note = "pooled over models and seeds (model differences add noise)" if who == "all models" else ""
            if n < 10:
                note = (note + "; " if note else "") + f"n = {n}: p is approximate"
            out.append(_row("Spearman log ε ~ F1", dataset, who, n, float(res.statistic), float(res.pvalue),
                            effect=float(res.statistic), note=note))
    return out


def tests_table(runs: pd.DataFrame, *, n_bootstrap: int = 2000, seed: int = 0) -> pd.DataFrame:
    """All tests in one table (see the module docstring for what each answers)."""
    rows = friedman(runs) + paired_vs_nonprivate(runs) + bootstrap_vs_nonprivate(runs, n_bootstrap=n_bootstrap, seed=seed) + trend(runs)
    cols = ["test", "dataset", "comparison", "n", "statistic", "effect", "effect_ci95_low", "effect_ci95_high", "p", "p_holm", "note"]
    return pd.DataFrame(rows, columns=cols)


def seeds_note(runs: pd.DataFrame) -> str:
    """One sentence on what the number of seeds allows."""
    n = runs["seed"].nunique() if len(runs) else 0
    if n >= 2:
        return f"{n} seeds: cells show mean ± sd over seeds."
    return ("One seed: cells show the weighted F1 with its bootstrap 95 % interval over test reports; "
            "the spread over seeds (training randomness) is not estimated — add seeds with `--set seed=[0,1,2]`.")



def findings(runs: pd.DataFrame) -> str:
    """What the runs show, in sentences (Markdown), computed from the run folders.

    Per dataset: the learned-nothing reference, and per model the gap of DP-LoRA to non-private
    LoRA at each ε with whether the bootstrap interval lies above the reference. Used by the
    analysis notebook so that the results chapter's prose about a study can never drift from it.
    """
    s = summarize(runs)
    ref = learned_nothing(runs)
    out = []
    for dataset, sub in s[s["method"] == "lora"].groupby("dataset", sort=True):
        r = ref.get(dataset, math.nan)
        n_train = runs.loc[runs["dataset"] == dataset, "n_train"].dropna()
        size = f" ({int(n_train.iloc[0]):,} training reports)" if len(n_train) else ""
        lines = [f"**{dataset}**{size}: {recipe(runs[runs['dataset'] == dataset])} A classifier that ignores "
                 f"the text (learned nothing) scores {r:.3f}." if not math.isnan(r) else f"**{dataset}**{size}:"]
        below = []
        for model, g in sub.groupby("model", sort=True):
            g = g.set_index("epsilon")
            if INF not in g.index:
                continue
            top = g.loc[INF, "mean"]
            parts = []
            for e in sorted(x for x in g.index if x != INF):
                h = g.loc[e]
                above = not math.isnan(r) and h["weighted_f1_ci95_low"] > r
                if not above and not math.isnan(r):
                    below.append(f"{model} at ε = {epsilon_label(e)}")
                parts.append(f"{h['mean']:.3f} at ε = {epsilon_label(e)} (gap {top - h['mean']:+.3f})")
            lines.append(f"- {model}: non-private {top:.3f}; DP-LoRA " + ", ".join(parts) + ".")
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
