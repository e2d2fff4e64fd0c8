"""A team's own reports: one CSV (optionally gzipped) or parquet file, one row per report.

Columns are named by the user: a text column, label columns (given, or every remaining column),
and optional id, patient and split columns.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence


from privrad.data.base import register_dataset
from privrad.data.common import (
    DEFAULT_SPLIT_FRACTIONS,
    check_fractions,
    check_max_reports,
    finish,
    norm_space,
    parse_label_values,
    patient_split,
    read_table,
    require_file,
)
from privrad.data.labels import DEFAULT_UNCERTAIN, apply_uncertain, check_uncertain
from privrad.errors import ConfigError, DataError

SPLIT_VALUES = {"train": "train", "validation": "validation", "validate": "validation", "val": "validation", "test": "test"}


def load_csv(
    path: str | os.PathLike,
    *,
    text_column: str = "text",
    label_columns: Sequence[str] | str | None = None,
    id_column: str | None = None,
    patient_column: str | None = None,
    split_column: str | None = None,
    credentialed: bool = True,
    uncertain: str = DEFAULT_UNCERTAIN,
    max_reports: int | None = None,
    seed: int = 0,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
):
    """Load reports from a CSV (``.csv``, ``.csv.gz``) or ``.parquet`` file.

    Options:
        text_column: the column holding the report text (default ``"text"``); used as is,
            with whitespace collapsed. Rows with empty text are dropped and counted.
        label_columns: the label columns, in order (a list, or one comma-separated string);
            default every column that is not the text, id, patient or split column. Values
            must be 1, 0, -1 (uncertain) or blank (not mentioned → 0), as a CheXpert-style
            labeler writes them.
        id_column: unique report ids (default: the row number, ``row<k>``).
        patient_column: patient ids (default: each report is its own patient — give this
            column whenever a patient can have several reports, or the split leaks).
        split_column: ``train`` / ``validation`` (or ``validate``, ``val``) / ``test`` per row
            (default: a seeded patient-level split with ``split_fractions``).
        credentialed: default ``True``: a team's own reports are clinical text and must
            never reach a notebook output or the published book unless someone has decided
            they may; pass ``credentialed=False`` only for text that is public or synthetic.
        uncertain: ``"ignore"`` (default), ``"positive"`` or ``"negative"`` for -1 values.
        max_reports, seed: seeded random subsample; seed also drives the split.
    """
    check_uncertain(uncertain)
    max_reports = check_max_reports(max_reports)
    fractions = check_fractions(split_fractions)
    if not isinstance(credentialed, bool):
        raise ConfigError(f"credentialed must be true or false, not {credentialed!r}.")
    fpath = require_file(Path(path), "CSV adapter")
    if isinstance(label_columns, str):
        label_columns = [c.strip() for c in label_columns.split(",") if c.strip()]
    named = [c for c in (text_column, id_column, patient_column, split_column) if c]
    df = read_table(fpath, required=(*named, *(label_columns or ())), what="file")
    if label_columns is None:
        label_columns = [c for c in df.columns if c not in named]
    label_columns = list(label_columns)
    if not label_columns:
        raise DataError(f"file {str(fpath)!r} has no label column besides {', '.join(named)}; add label columns or name them.")
    values = parse_label_values(df, label_columns, allowed=(1.0, 0.0, -1.0), allow_blank=True, where=f"file {fpath.name!r}")
    n = len(df)
    ids = df[id_column].str.strip().tolist() if id_column else [f"row{i}" for i in range(n)]
    if id_column:
        seen: set[str] = set()
        for v in ids:
            if v in seen:
                raise DataError(f"file {fpath.name!r} column {id_column!r} has the id {v!r} in two rows; ids must be unique.")
            seen.add(v)
    patients = df[patient_column].str.strip().tolist() if patient_column else list(ids)
    texts = [norm_space(t) for t in df[text_column].tolist()]
    keep = [i for i, t in enumerate(texts) if t]
    counts = {"read": n, "dropped_empty_text": n - len(keep)}
    if split_column:
        raw = df[split_column].str.strip().str.lower().tolist()
        for i, v in enumerate(raw):
            if v not in SPLIT_VALUES:
                raise DataError(
                    f"file {fpath.name!r} column {split_column!r} has the value {df[split_column].iloc[i]!r} in data row {i + 1}; "
                    "allowed values are train, validation, test."
                )
        splits = [SPLIT_VALUES[raw[i]] for i in keep]
    else:
        assign = patient_split([patients[i] for i in keep], fractions=fractions, seed=seed)
        splits = [assign[patients[i]] for i in keep]
    labels, mask = apply_uncertain(values[keep], uncertain)
    options = dict(text_column=text_column, label_columns=label_columns, id_column=id_column,
                   patient_column=patient_column, split_column=split_column, credentialed=credentialed,
                   uncertain=uncertain, max_reports=max_reports, seed=seed, split_fractions=list(fractions))
    return finish(
        "csv", path=fpath, ids=[ids[i] for i in keep], patient_ids=[patients[i] for i in keep],
        texts=[texts[i] for i in keep], labels=labels, label_mask=mask, splits=splits, label_names=label_columns,
        counts=counts, options=options, source="user-file", credentialed=credentialed, max_reports=max_reports,
        seed=seed, extra={"split_source": f"column {split_column!r}" if split_column else f"seeded patient-level split (seed={seed})"},
    )


register_dataset(
    "csv",
    credentialed=True,
    description="a team's own reports from one CSV/parquet file (credentialed unless credentialed=False)",
)(load_csv)
