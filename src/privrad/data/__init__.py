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

# Built-in loaders register themselves on import (added by the dataset modules).

__all__ = [
    "SPLITS",
    "DatasetSpec",
    "ReportDataset",
    "get_dataset_spec",
    "known_datasets",
    "load_dataset",
    "register_dataset",
]
