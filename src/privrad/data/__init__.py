"""Datasets: one in-memory form (:class:`ReportDataset`) and loaders registered by short name."""

from privrad.data.base import (
    SPLITS,
    DatasetSpec,
    ReportDataset,
    get_dataset_spec,
    known_datasets,
    load_dataset,
    register_dataset,
)

# Built-in loaders register themselves on import.
from privrad.data import csv_adapter, ct_rate, mimic_cxr, openi, simulated_loaders  # noqa: E402,F401
from privrad.data.common import DataWarning  # noqa: E402
from privrad.data.labels import CHEXPERT_LABELS, CT_RATE_LABELS, OPENI_LABELS, UNCERTAIN_POLICIES  # noqa: E402

__all__ = [
    "CHEXPERT_LABELS",
    "CT_RATE_LABELS",
    "OPENI_LABELS",
    "UNCERTAIN_POLICIES",
    "DataWarning",
    "SPLITS",
    "DatasetSpec",
    "ReportDataset",
    "get_dataset_spec",
    "known_datasets",
    "load_dataset",
    "register_dataset",
]
