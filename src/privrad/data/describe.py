"""What a dataset looks like: counts and prevalence per split, report lengths, dropped rows.

Used by ``privrad data describe`` and by the data chapter of the book. Nothing here returns or
prints report text, so it is safe for credentialed datasets.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from privrad.data.base import SPLITS, ReportDataset

PERCENTILES = (5, 25, 50, 75, 95, 99)
#: Token counts at which truncation is reported (common ``max_length`` choices).
LENGTH_CUTS = (128, 256, 512)
def load_tokenizer(name: str):
    """A tokenizer by model short name, hub id or local path: the model registry's loader
    (:func:`privrad.models.load_tokenizer`), imported here lazily so that describing a dataset
    without token lengths needs no model code."""
    from privrad.models import load_tokenizer as registry_load_tokenizer

    return registry_load_tokenizer(name)


def token_lengths(texts: Sequence[str], tokenizer, *, batch_size: int = 1024) -> np.ndarray:
    """Untruncated token counts (special tokens included) of each text."""
    out: list[int] = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i : i + batch_size]), add_special_tokens=True, truncation=False, verbose=False)
        out.extend(len(ids) for ids in enc["input_ids"])
    return np.asarray(out, dtype=np.int64)


def word_lengths(texts: Sequence[str]) -> np.ndarray:
    return np.asarray([len(t.split()) for t in texts], dtype=np.int64)


def describe(dataset: ReportDataset, tokenizer=None, *, splits: Sequence[str] = SPLITS) -> dict[str, Any]:
    """Summary tables of ``dataset``.

    ``splits``: the splits whose statistics are computed. The book passes only the splits it
    declares public (validation, test) for a credentialed dataset, so that nothing computed from
    the training split but its size is published (:data:`privrad.privacy.PUBLIC_SPLITS`); the
    ``all`` column is computed only when every split is included. ``counts`` always lists every
    split's size.

    Returns a dict with
        ``counts``: DataFrame (split → reports, patients),
        ``prevalence``: DataFrame (label × split → fraction positive among scored entries),
        ``ignored``: DataFrame (label × split → fraction masked out, e.g. uncertain under ``ignore``),
        ``lengths``: DataFrame (split × unit → length percentiles; unit ``words`` and, with a
        tokenizer, ``tokens``),
        ``over_max_length``: DataFrame (split × cut → reports longer than 128/256/512 tokens),
        ``length_values``: per-report lengths (``words``, ``tokens``) for histograms, with
        ``length_splits`` the split of each; ``splits_shown``: the splits described,
        ``dropped``: the loader's counts from provenance, ``summary``: its one-line summary,
        and ``name``, ``credentialed``, ``fingerprint``, ``n``.
    ``tokenizer`` is a tokenizer object or a short name (see :func:`load_tokenizer`).
    """
    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    if not splits or set(splits) - set(SPLITS):
        raise ValueError(f"describe(splits=...) takes some of {SPLITS}, not {list(splits)}")
    shown = tuple(s for s in SPLITS if s in splits) + (("all",) if set(splits) == set(SPLITS) else ())
    split_of = np.asarray(dataset.splits)
    counts = pd.DataFrame(
        {
            "reports": [int((split_of == s).sum()) for s in SPLITS],
            "patients": [len({p for p, t in zip(dataset.patient_ids, split_of) if t == s}) for s in SPLITS],
        },
        index=pd.Index(SPLITS, name="split"),
    )
    counts.loc["all"] = [len(dataset), len(set(dataset.patient_ids))]
    prev, ign = {}, {}
    for s in shown:
        sel = np.ones(len(dataset), bool) if s == "all" else split_of == s
        lab, mask = dataset.labels[sel], dataset.label_mask[sel]
        with np.errstate(invalid="ignore", divide="ignore"):
            prev[s] = (lab * mask).sum(0) / mask.sum(0)
        ign[s] = 1 - mask.mean(0) if sel.any() else np.full(dataset.n_labels, np.nan)
    prevalence = pd.DataFrame(prev, index=pd.Index(dataset.label_names, name="label"))
    ignored = pd.DataFrame(ign, index=pd.Index(dataset.label_names, name="label"))
    # lengths only of the reports in the splits shown (no statistic of a withheld split)
    keep = np.isin(split_of, [s for s in shown if s != "all"])
    texts = [t for t, k in zip(dataset.texts, keep) if k]
    kept_split = split_of[keep]
    values = {"words": word_lengths(texts)}
    if tokenizer is not None:
        values["tokens"] = token_lengths(texts, tokenizer)
    rows, over = [], []
    for s in shown:
        sel = np.ones(len(kept_split), bool) if s == "all" else kept_split == s
        for unit, v in values.items():
            pct = np.percentile(v[sel], PERCENTILES) if sel.any() else [np.nan] * len(PERCENTILES)
            rows.append({"split": s, "unit": unit, **{f"p{p}": float(x) for p, x in zip(PERCENTILES, pct)},
                         "max": float(v[sel].max()) if sel.any() else np.nan})
        if "tokens" in values:
            over.append({"split": s, **{f"> {c}": int((values["tokens"][sel] > c).sum()) for c in LENGTH_CUTS}})
    return {
        "name": dataset.name,
        "credentialed": dataset.credentialed,
        "fingerprint": dataset.fingerprint,
        "n": len(dataset),
        "counts": counts,
        "prevalence": prevalence,
        "ignored": ignored,
        "lengths": pd.DataFrame(rows).set_index(["split", "unit"]),
        "over_max_length": pd.DataFrame(over).set_index("split") if over else None,
        "length_values": values,
        "length_splits": kept_split,
        "splits_shown": shown,
        "dropped": dict(dataset.provenance.get("counts", {})),
        "summary": dataset.provenance.get("summary", ""),
    }


def prevalence_long(description: dict[str, Any]) -> pd.DataFrame:
    """A :func:`describe` result's prevalence in long form (label, split, prevalence), for seaborn."""
    p = description["prevalence"].drop(columns="all", errors="ignore")
    return p.reset_index().melt(id_vars="label", var_name="split", value_name="prevalence")


def format_description(d: dict[str, Any]) -> str:
    """Plain-text rendering for the command line."""
    parts = [
        f"dataset {d['name']}: {d['n']} reports, credentialed={d['credentialed']}, fingerprint {d['fingerprint'][:12]}",
        d["summary"],
        "",
        "counts per split:",
        d["counts"].to_string(),
        "",
        "prevalence (positives among scored entries) per split:",
        d["prevalence"].to_string(float_format=lambda x: f"{x:.3f}"),
    ]
    if (d["ignored"].fillna(0).to_numpy() > 0).any():
        parts += ["", "ignored (masked) fraction per split:", d["ignored"].to_string(float_format=lambda x: f"{x:.3f}")]
    parts += ["", "length percentiles:", d["lengths"].to_string(float_format=lambda x: f"{x:.0f}")]
    if d["over_max_length"] is not None:
        parts += ["", "reports longer than a max_length (would be truncated):", d["over_max_length"].to_string()]
    return "\n".join(parts)
