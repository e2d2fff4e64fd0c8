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
from privrad.data import csv_adapter, ct_rate, mimic_cxr, openi, simulated  # noqa: E402,F401

__all__ = [
    "SPLITS",
    "DatasetSpec",
    "ReportDataset",
    "get_dataset_spec",
    "known_datasets",
    "load_dataset",
    "register_dataset",
]
