"""The one in-memory form of every dataset, and the registry of dataset loaders by short name.

Every loader (MIMIC-CXR, CT-RATE, Open-i, a team's CSV, the simulators' output read back by
the real loaders) returns a :class:`ReportDataset`. Downstream code (tokenization, training,
evaluation, the book) only ever sees this form.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from privrad.errors import ConfigError, DataError

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True, eq=False)
class ReportDataset:
    """Reports with multi-label targets, split assignment and provenance.

    Attributes:
        name: registry name of the dataset (e.g. ``"mimic-cxr"``).
        label_names: the label columns, in order.
        ids: one id per example (unique).
        patient_ids: one patient id per example; no patient appears in two splits.
        texts: report text per example (already sectioned: what the model reads).
        labels: ``float32`` array ``(n, n_labels)`` with values in {0, 1}.
        label_mask: ``bool`` array ``(n, n_labels)``; ``False`` marks an ignored label
            (e.g. an uncertain CheXpert mention under the ``ignore`` policy). Ignored entries
            are excluded from the loss and from every metric.
        splits: array of ``"train" | "validation" | "test"`` per example.
        credentialed: ``True`` when the text comes from a credentialed source (MIMIC-CXR,
            CT-RATE). Such text must never be printed, logged or rendered.
        provenance: where the data came from and how it was read (paths, options, counts).
    """

    name: str
    label_names: tuple[str, ...]
    ids: tuple[str, ...]
    patient_ids: tuple[str, ...]
    texts: tuple[str, ...]
    labels: np.ndarray
    label_mask: np.ndarray
    splits: np.ndarray
    credentialed: bool
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, k = len(self.ids), len(self.label_names)
        object.__setattr__(self, "ids", tuple(self.ids))
        object.__setattr__(self, "patient_ids", tuple(self.patient_ids))
        object.__setattr__(self, "texts", tuple(self.texts))
        object.__setattr__(self, "label_names", tuple(self.label_names))
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.float32).reshape(n, k))
        object.__setattr__(self, "label_mask", np.asarray(self.label_mask, dtype=bool).reshape(n, k))
        object.__setattr__(self, "splits", np.asarray(self.splits, dtype=object))
        if not (len(self.patient_ids) == len(self.texts) == len(self.splits) == n):
            raise ValueError("ReportDataset fields have different lengths")
        bad = set(np.unique(self.splits).tolist()) - set(SPLITS)
        if bad:
            raise DataError(f"dataset {self.name!r} has unknown split names {sorted(bad)}; use {list(SPLITS)}.")
        if len(set(self.ids)) != n:
            dup = _first_duplicate(self.ids)
            raise DataError(f"dataset {self.name!r} has the id {dup!r} more than once; ids must be unique.")
        check_patient_disjoint(self.patient_ids, self.splits, where=f"dataset {self.name!r}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_labels(self) -> int:
        return len(self.label_names)

    def split(self, name: str) -> "ReportDataset":
        """The examples of one split (``train``, ``validation`` or ``test``)."""
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; use one of {list(SPLITS)}.")
        return self.subset(np.flatnonzero(self.splits == name))

    def subset(self, index: Sequence[int] | np.ndarray) -> "ReportDataset":
        idx = np.asarray(index, dtype=int)
        return dataclasses.replace(
            self,
            ids=tuple(self.ids[i] for i in idx),
            patient_ids=tuple(self.patient_ids[i] for i in idx),
            texts=tuple(self.texts[i] for i in idx),
            labels=self.labels[idx],
            label_mask=self.label_mask[idx],
            splits=self.splits[idx],
        )

    def split_counts(self) -> dict[str, int]:
        return {s: int((self.splits == s).sum()) for s in SPLITS}

    @property
    def fingerprint(self) -> str:
        """sha256 over everything a model could learn from: ids, text, labels, mask, splits."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            h = hashlib.sha256()
            h.update(json.dumps([self.name, list(self.label_names)]).encode())
            for i, p, t, s in zip(self.ids, self.patient_ids, self.texts, self.splits):
                h.update(json.dumps([i, p, t, str(s)]).encode("utf-8"))
            h.update(np.ascontiguousarray(self.labels).tobytes())
            h.update(np.ascontiguousarray(self.label_mask).tobytes())
            cached = h.hexdigest()
            object.__setattr__(self, "_fingerprint", cached)
        return cached


def _first_duplicate(values: Sequence[str]) -> str:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return ""


def check_patient_disjoint(patient_ids: Sequence[str], splits: Sequence[str], *, where: str) -> None:
    """Refuse a split assignment in which one patient appears in two splits."""
    first: dict[str, str] = {}
    for p, s in zip(patient_ids, splits):
        prev = first.setdefault(p, s)
        if prev != s:
            raise DataError(
                f"{where}: patient {p!r} is in both the {prev!r} and {s!r} splits; "
                "assign each patient to exactly one split."
            )


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its loader and what it declares (labels, credentialed)."""

    name: str
    loader: Callable[..., ReportDataset]
    credentialed: bool
    description: str
    label_names: tuple[str, ...] = ()


_REGISTRY: dict[str, DatasetSpec] = {}


def register_dataset(
    name: str,
    *,
    credentialed: bool,
    description: str,
    label_names: Sequence[str] = (),
) -> Callable[[Callable[..., ReportDataset]], Callable[..., ReportDataset]]:
    """Decorator: register ``loader(path, **options) -> ReportDataset`` under ``name``."""

    def deco(fn: Callable[..., ReportDataset]) -> Callable[..., ReportDataset]:
        _REGISTRY[name] = DatasetSpec(name, fn, credentialed, description, tuple(label_names))
        return fn

    return deco


def known_datasets() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_dataset_spec(name: str) -> DatasetSpec:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown dataset {name!r}; known datasets are: {', '.join(sorted(_REGISTRY))}."
        ) from None


def load_dataset(name: str, path, **options: Any) -> ReportDataset:
    """Load dataset ``name`` from ``path`` (a download folder or file) with loader options."""
    spec = get_dataset_spec(name)
    params = list(inspect.signature(spec.loader).parameters.values())
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        known = [p.name for p in params[1:]]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(
                f"dataset {name!r} has no option {unknown[0]!r}; its options are: {', '.join(known)}."
            )
    return spec.loader(path, **options)


def _ensure_loaded() -> None:
    # Importing the package registers every built-in loader.
    import privrad.data  # noqa: F401
