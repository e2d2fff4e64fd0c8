"""Helpers shared by the loaders: checked file access, strict CSV reading, seeded patient-level
splits, subsampling, and the one-line load summary.

Every problem a user can meet becomes a :class:`~privrad.errors.DataError` with one sentence
naming the file, column or value and what to do. Rows a loader has to drop (a report with no
label row, a label row with no report, text empty after sectioning) are counted, recorded in the
dataset's provenance and announced in one summary line — never dropped silently.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from privrad.data.base import SPLITS, ReportDataset, get_dataset_spec
from privrad.errors import ConfigError, DataError, PrivradWarning

logger = logging.getLogger("privrad.data")

#: Default fractions of patients in train / validation / test for a seeded patient-level split.
DEFAULT_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


class DataWarning(PrivradWarning):
    """Rows were dropped or left unmatched while loading a dataset (the message counts them)."""


def require_dir(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"{what} folder {str(p)!r} does not exist; pass the folder that holds the download (see data/README.md).")
    return p


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{what} file {str(path)!r} is missing; download it into that place (see data/README.md).")
    return path


def decode_utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{where} is not UTF-8 text (bad byte at offset {exc.start}); re-download it or convert it to UTF-8."
        ) from None


def read_table(path: Path, *, required: Sequence[str] = (), what: str | None = None) -> pd.DataFrame:
    """Read a CSV (optionally gzipped) or parquet file as strings; blanks stay ``""``.

    Columns are selected by name, so extra or reordered columns are fine; a missing
    required column is refused with the list of columns the file does have.
    """
    what = what or "file"
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
            df = df.astype(object).where(df.notna(), "")
            df = df.map(lambda v: v if isinstance(v, str) else str(v.item() if hasattr(v, "item") else v))
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{what} {str(path)!r} is not UTF-8 text (bad byte at offset {exc.start}); re-download it or convert it to UTF-8."
        ) from None
    except (OSError, EOFError, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise DataError(f"{what} {str(path)!r} cannot be read as a table ({exc}); re-download or fix the file.") from None
    df.columns = [str(c) for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{what} {str(path)!r} has no column {missing[0]!r} (it has: {', '.join(df.columns)}); "
            "use the file as downloaded or name the right column."
        )
    return df


def parse_label_values(
    df: pd.DataFrame, columns: Sequence[str], *, allowed: Iterable[float], allow_blank: bool, where: str
) -> np.ndarray:
    """Parse label columns into a float array (NaN for blank), refusing any other value."""
    allowed = set(allowed)
    out = np.empty((len(df), len(columns)), dtype=np.float64)
    allowed_text = ", ".join(f"{a:g}" for a in sorted(allowed, reverse=True)) + (" or blank" if allow_blank else "")
    for j, col in enumerate(columns):
        raw = df[col].astype(str).str.strip()
        vals = pd.to_numeric(raw.where(raw != "", np.nan), errors="coerce").to_numpy(dtype=np.float64)
        bad = (np.isnan(vals) & (raw.to_numpy() != "")) | (~np.isnan(vals) & ~np.isin(vals, list(allowed)))
        if not allow_blank:
            bad |= raw.to_numpy() == ""
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{where} column {col!r} has the value {raw.iloc[i]!r} in data row {i + 1}; "
                f"allowed values are {allowed_text} — fix the file or re-download it."
            )
        out[:, j] = vals
    return out


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    f = tuple(float(x) for x in fractions)
    if len(f) != 3 or min(f) < 0 or abs(sum(f) - 1) > 1e-6:
        raise ConfigError(
            f"split_fractions {list(fractions)} must be three non-negative numbers (train, validation, test) summing to 1."
        )
    return f  # type: ignore[return-value]


def patient_split(
    patients: Sequence[str], *, fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS, seed: int = 0,
    names: Sequence[str] = SPLITS,
) -> dict[str, str]:
    """Assign each distinct patient to a split, seeded; every report of a patient follows it.

    Patients are shuffled with ``numpy.random.default_rng(seed)`` after sorting, so the result
    depends only on the set of patients and the seed, not on file order.
    """
    fr = np.asarray(fractions, dtype=float)
    fr = fr / fr.sum()
    uniq = sorted(set(patients))
    order = np.random.default_rng(seed).permutation(len(uniq))
    cuts = np.round(np.cumsum(fr)[:-1] * len(uniq)).astype(int)
    out: dict[str, str] = {}
    for part, name in zip(np.split(order, cuts), names):
        for k in part:
            out[uniq[k]] = name
    return out


def check_max_reports(max_reports: int | None) -> int | None:
    if max_reports is None:
        return None
    if isinstance(max_reports, bool) or not isinstance(max_reports, (int, np.integer)) or max_reports < 1:
        raise ConfigError(f"max_reports must be a positive whole number or None, not {max_reports!r}.")
    return int(max_reports)


def norm_space(text: str) -> str:
    """Collapse whitespace (line wraps, indentation) to single spaces; keep paragraph breaks."""
    paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    return "\n\n".join(p for p in paras if p)


def finish(
    name: str,
    *,
    path: Path,
    ids: Sequence[str],
    patient_ids: Sequence[str],
    texts: Sequence[str],
    labels: np.ndarray,
    label_mask: np.ndarray,
    splits: Sequence[str],
    label_names: Sequence[str],
    counts: dict[str, int],
    options: dict[str, Any],
    source: str,
    credentialed: bool | None = None,
    max_reports: int | None = None,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> ReportDataset:
    """Build the :class:`ReportDataset`, subsample (seeded), record provenance, emit the summary."""
    if credentialed is None:
        credentialed = get_dataset_spec(name).credentialed
    if len(ids) == 0:
        raise DataError(
            f"{name}: no report in {str(path)!r} has both text and labels ({_describe_counts(counts)}); "
            "check that the report and label files belong to the same download."
        )
    ds = ReportDataset(
        name=name,
        label_names=tuple(label_names),
        ids=ids,
        patient_ids=patient_ids,
        texts=texts,
        labels=labels,
        label_mask=label_mask,
        splits=np.asarray(splits, dtype=object),
        credentialed=bool(credentialed),
        provenance={},
    )
    n_loaded = len(ds)
    if max_reports is not None and max_reports < len(ds):
        ds = ds.subset(_stratified_subsample(ds.splits, max_reports, seed))
    counts = {**counts, "loaded": n_loaded, "kept": len(ds)}
    summary = f"{name}: {len(ds)} reports ({', '.join(f'{s} {c}' for s, c in ds.split_counts().items())})"
    if len(ds) < n_loaded:
        summary += f", subsampled from {n_loaded} (max_reports={max_reports}, seed={seed})"
    summary += f" from {str(path)!r}; {_describe_counts(counts)}."
    provenance = {
        "dataset": name,
        "path": str(path),
        "source": source,
        "options": options,
        "counts": counts,
        "summary": summary,
        **(extra or {}),
    }
    object.__setattr__(ds, "provenance", provenance)
    dropped = sum(v for k, v in counts.items() if k.startswith(("dropped_", "unmatched_")))
    if dropped:
        warnings.warn(summary, DataWarning, stacklevel=4)  # points at the caller of load_dataset
    else:
        logger.info(summary)
    return ds


def _stratified_subsample(splits: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` indices drawn at random (seeded) within each split, in proportion to the split sizes
    (largest remainders), so a subsample keeps the split proportions of the full dataset."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(splits == s) for s in SPLITS]
    exact = np.array([len(g) for g in groups], dtype=float) * k / len(splits)
    sizes = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - sizes), kind="stable")[: k - sizes.sum()]:
        sizes[i] += 1
    return np.sort(np.concatenate([rng.choice(g, size=n, replace=False) for g, n in zip(groups, sizes)]))


COUNT_TEXT = {
    "read": "report files or rows read",
    "dropped_no_label_row": "reports with no label row",
    "unmatched_label_rows": "label rows with no report",
    "dropped_empty_text": "reports with empty text after sectioning",
    "dropped_no_split_row": "reports with no split row",
    "merged_reconstructions": "extra reconstructions merged into their scan",
    "test_list_ids_not_loaded": "test-list ids with no loaded report",
}


def _describe_counts(counts: dict[str, int]) -> str:
    parts = [f"{counts.get(k, 0)} {v}" for k, v in COUNT_TEXT.items() if k in counts]
    return ", ".join(parts) if parts else "nothing dropped"


def resolve_data_path(path: str | os.PathLike) -> Path:
    """Find a relative data path from wherever a notebook runs (repo root or ``notebooks/``).

    An absolute or existing path is returned as is; otherwise the current folder's parents are
    tried in turn, and a path found nowhere is placed under the project root (the nearest folder
    holding ``pyproject.toml``), which is where ``data/simulated/<kind>`` belongs.
    """
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    here = Path.cwd()
    for base in here.parents:
        if (base / p).exists():
            return Path(os.path.relpath(base / p))
    for base in (here, *here.parents):
        if (base / "pyproject.toml").is_file():
            return Path(os.path.relpath(base / p))
    return p
