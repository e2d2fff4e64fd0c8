"""Statistics across run folders: the runs table, the results table and the sentences the book opens with.

Everything here reads run folders only (``config.json``, ``metrics.json``, ``privacy.json``,
``predictions.npz``), so every number in the book can be recomputed from them.

The question answered here:

* *How good is each configuration?* — per dataset × model × method × ε: the mean weighted F1
  over seeds ± its standard deviation (training randomness; undefined with one seed) and a 95 %
  interval over test reports (test-sampling uncertainty): with one seed the run's own bootstrap
  interval, with several an interval of the seed mean computed by resampling the test reports
  jointly for every seed (:func:`seed_mean_interval`) — never averaged endpoints.

The tests across privacy levels (Friedman, Wilcoxon with Holm, the paired bootstrap, Page's trend)
are :mod:`privrad.comparisons`; their names are importable from here as well.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

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


_COMPARISONS = ("holm", "friedman", "paired_vs_nonprivate", "paired_bootstrap", "bootstrap_vs_nonprivate", "PAGE",
                "page_trend", "trend", "tests_table", "tests_summary")


def __getattr__(name: str) -> Any:
    """The tests live in :mod:`privrad.comparisons`; ``privrad.stats.tests_table`` etc. still name them."""
    if name in _COMPARISONS:
        from privrad import comparisons

        return getattr(comparisons, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
