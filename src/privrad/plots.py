"""The figures the notebooks and the book share (one owner per figure).

:func:`tradeoff` draws weighted F1 against ε for one dataset: one line per model for DP-LoRA
with its bootstrap 95 % band, ∞ (non-private) at the right end of the log axis, full
fine-tuning as a diamond, the learned-nothing reference (a classifier that ignores the text)
as a dashed grey line, and (dotted) the same runs at a fixed 0.5 threshold; the legend sits
beside the axes. The results chapter opens with it, the analysis notebook shows it for every
dataset and the lab notebook marks a student's own run on it.

:func:`audit_roc` and :func:`audit_bounds` are the audit chapter's figures (rows of
:func:`privrad.audit.audit_table`): the membership attack's ROC curves per ε, and the empirical ε
lower bound against the accounted ε.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


#: the trade-off figure's size in inches: the axes and, to their right, the legend
FIGSIZE = (8, 4)


def _x_inf(finite: pd.Series) -> float:
    return 10 ** (math.ceil(math.log10(finite.max())) + 1) if len(finite) else 1.0


def tradeoff(runs: pd.DataFrame, dataset: str, *, ax=None, highlight: dict[str, Any] | None = None, legend: bool = True,
             at_half: bool = True):
    """Weighted F1 against ε for ``dataset`` (rows of :func:`privrad.stats.load_runs`): solid lines
    at the runs' thresholds, dotted lines of the same colour at a fixed 0.5 (``at_half``).

    ``highlight`` marks one more run, e.g. a student's: ``{"epsilon": 3.0, "weighted_f1": 0.61,
    "low": 0.57, "high": 0.65, "label": "your run"}`` (``epsilon`` None = non-private)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from privrad import stats

    if ax is None:
        _, ax = plt.subplots(figsize=FIGSIZE)
    summary = stats.summarize(runs[runs["dataset"] == dataset])
    eps = list(summary["epsilon"])
    if highlight is not None:
        eps.append(math.inf if highlight.get("epsilon") is None else float(highlight["epsilon"]))
    finite = pd.Series([e for e in eps if np.isfinite(e)], dtype=float)
    x_inf = _x_inf(finite)
    palette = sns.color_palette()
    for i, (model, g) in enumerate(summary[summary["method"] == "lora"].groupby("model")):
        x = g["epsilon"].replace(np.inf, x_inf)
        color = palette[i % len(palette)]
        ax.plot(x, g["mean"], marker="o", color=color, label=model)
        ax.fill_between(x, g["weighted_f1_ci95_low"], g["weighted_f1_ci95_high"], color=color, alpha=0.2, lw=0)
        if at_half and "mean_at_0.5" in g:  # the same runs at a fixed 0.5 threshold (no validation data)
            ax.plot(x, g["mean_at_0.5"], ls=":", marker=".", color=color)
        full = summary[(summary["method"] == "full") & (summary["model"] == model)]
        if len(full):
            ax.scatter([x_inf] * len(full), full["mean"], marker="D", color=color, s=50, zorder=3)
    if highlight is not None:
        hx = x_inf if highlight.get("epsilon") is None else float(highlight["epsilon"])
        lo, hi = highlight.get("low"), highlight.get("high")
        yerr = None if lo is None or hi is None else [[highlight["weighted_f1"] - lo], [hi - highlight["weighted_f1"]]]
        ax.errorbar([hx], [highlight["weighted_f1"]], yerr=yerr, fmt="*", ms=16, color="crimson", capsize=4, zorder=4,
                    label=highlight.get("label", "your run"))
    reference = stats.learned_nothing(runs).get(dataset, math.nan)
    if np.isfinite(reference):
        ax.axhline(reference, ls="--", color="grey", lw=1, label="learned nothing")
    ticks = sorted(set(finite)) + [x_inf]
    ax.set_xscale("log")
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks[:-1]] + ["∞"])
    ax.minorticks_off()
    ax.set(title=dataset, xlabel="ε (target; ∞ = non-private)", ylabel="weighted F1 (test)")
    if legend:
        # beside the axes, never over a line: the models by colour, then what each line style means
        from matplotlib.lines import Line2D

        handles, labels = ax.get_legend_handles_labels()
        keys = []
        if at_half and "mean_at_0.5" in summary:
            keys.append((Line2D([], [], ls=":", marker=".", color="grey"), "same runs, threshold 0.5"))
        if (summary["method"] == "full").any():
            keys.append((Line2D([], [], ls="", marker="D", color="grey"), "full fine-tuning"))
        for handle, label in keys:
            handles.append(handle)
            labels.append(label)
        ax.legend(handles, labels, title="DP-LoRA, by model", loc="upper left", bbox_to_anchor=(1.02, 1),
                  borderaxespad=0, fontsize="small", title_fontsize="small", frameon=False)
    return ax


def tradeoff_png(runs: pd.DataFrame, dataset: str, path, **kwargs) -> None:
    """:func:`tradeoff` saved as a PNG (the results chapter's figure, written by the book build)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=FIGSIZE)
    tradeoff(runs, dataset, ax=ax, **kwargs)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def audit_roc(table: pd.DataFrame, *, ax=None, title: str | None = None):
    """The membership attack's ROC curves, one per audited run (labelled by ε), on log axes with
    the chance diagonal: a curve above it at low FPR is an attacker who can pick out some training
    reports with confidence. The calibrated attack's curve, where the audit ran it, is dashed in
    the same colour."""
    import matplotlib.pyplot as plt

    from privrad.config import epsilon_label

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5))
    table = table.sort_values("epsilon")
    cmap = plt.get_cmap("viridis")
    for i, (_, r) in enumerate(table.iterrows()):
        eps = None if not np.isfinite(r["epsilon"]) else r["epsilon"]
        color = "crimson" if eps is None else cmap(i / max(1, len(table) - 1))
        ax.plot(r["roc_fpr"], r["roc_tpr"], color=color, lw=1.6,
                label=f"ε = {epsilon_label(eps)} (AUC {r['membership_auc']:.3f})")
        if isinstance(r.get("calibrated_roc_tpr"), list):
            ax.plot(r["roc_fpr"], r["calibrated_roc_tpr"], color=color, lw=1.4, ls="--",
                    label=f"ε = {epsilon_label(eps)}, calibrated (AUC {r['calibrated_membership_auc']:.3f})")
    grid = np.logspace(-3, 0, 50)
    ax.plot(grid, grid, ls=":", color="grey", lw=1, label="chance")
    ax.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1.05), xlabel="false positive rate",
           ylabel="true positive rate", title=title)
    ax.legend(fontsize="small", loc="lower right")
    return ax


def audit_bounds(table: pd.DataFrame, *, ax=None, floor: float = 1e-3):
    """The empirical ε lower bound (canary audit) against the ε accounted for the canary run, on
    log axes with the line y = x: a point above the line refutes the accountant's claim. A bound of
    0 (nothing refuted) is drawn at ``floor``; non-private runs at the right end (∞)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5))
    t = table[np.isfinite(table["epsilon_lower_bound"])]
    spent = t["canary_run_epsilon_spent"]
    finite = pd.Series(spent[np.isfinite(spent)], dtype=float)
    x_inf = _x_inf(finite)
    x = spent.replace(np.inf, x_inf)
    y = t["epsilon_lower_bound"].clip(lower=floor)
    markers = "osD^v"
    for i, ((dataset, model), g) in enumerate(t.groupby(["dataset", "model"])):  # open markers: overlaps stay visible
        ax.scatter(x[g.index], y[g.index], s=60 - 8 * i, zorder=3, marker=markers[i % len(markers)], facecolors="none",
                   edgecolors=f"C{i}", linewidths=1.6, label=f"{dataset} · {model}")
    low = min(floor, *finite) / 2 if len(finite) else floor / 2
    top = max([x_inf, *y]) * 2
    line = np.logspace(math.log10(low), math.log10(top), 50)
    ax.plot(line, line, ls="--", color="grey", lw=1, label="y = x (the accounted ε)")
    ax.set(xscale="log", yscale="log", xlim=(low, top), ylim=(floor / 2, top), xlabel="accounted ε (∞ = non-private)",
           ylabel="empirical ε lower bound (0 drawn at the bottom)")
    decades = [10.0 ** k for k in range(math.ceil(math.log10(low)), math.floor(math.log10(x_inf)))]
    ax.set_xticks(decades + [x_inf], [f"{v:g}" for v in decades] + ["∞"])
    ax.minorticks_off()
    ax.legend(fontsize="small", loc="upper left")
    return ax
