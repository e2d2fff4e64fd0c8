"""A small in-memory MIMIC-CXR-like dataset for the training-core tests.

Each of the 14 CheXpert labels has a finding phrase; a positive report mentions it, a negative
report either omits it or negates it ("no pleural effusion"), so a model has to read negations.
Some labels are masked (ignored, like uncertain CheXpert mentions under the ``ignore`` policy).
Once the report simulator is merged, tests switch to it by changing :func:`make_dataset` only.
"""

from __future__ import annotations

import numpy as np
import torch

from privrad.data.base import ReportDataset

# One thread for the tests: tiny models gain nothing from two, and on a shared 2-core machine two
# OpenMP threads busy-wait for each other (a tiny-bert run measured 0.5 s vs 12.8 s under load).
torch.set_num_threads(1)

CHEXPERT = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
)
PHRASES = {
    "Atelectasis": "bibasilar atelectasis", "Cardiomegaly": "cardiomegaly", "Consolidation": "focal consolidation",
    "Edema": "pulmonary edema", "Enlarged Cardiomediastinum": "widened mediastinum", "Fracture": "rib fracture",
    "Lung Lesion": "pulmonary nodule", "Lung Opacity": "airspace opacity", "Pleural Effusion": "pleural effusion",
    "Pleural Other": "pleural thickening", "Pneumonia": "pneumonia", "Pneumothorax": "pneumothorax",
    "Support Devices": "endotracheal tube",
}
PREVALENCE = {"Atelectasis": .25, "Cardiomegaly": .2, "Consolidation": .08, "Edema": .15, "Enlarged Cardiomediastinum": .05,
              "Fracture": .04, "Lung Lesion": .05, "Lung Opacity": .25, "Pleural Effusion": .25, "Pleural Other": .03,
              "Pneumonia": .08, "Pneumothorax": .05, "Support Devices": .3}
FILLER = ["PA and lateral views of the chest.", "Comparison is made to the prior study.",
          "The osseous structures are unremarkable.", "Heart size is normal.", "Lungs are well expanded.",
          "Portable upright view.", "The hila are normal."]


def make_reports(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, len(CHEXPERT)), np.float32)
    mask = np.ones_like(labels, dtype=bool)
    texts = []
    for i in range(n):
        parts = ["FINDINGS:"] + list(rng.choice(FILLER, size=rng.integers(1, 4), replace=False))
        for j, name in enumerate(CHEXPERT):
            if name == "No Finding":
                continue
            if rng.random() < PREVALENCE[name]:
                labels[i, j] = 1
                parts.append(f"There is {PHRASES[name]}.")
            elif rng.random() < 0.3:
                parts.append(f"No {PHRASES[name]}.")
            if rng.random() < 0.03:
                mask[i, j] = False  # an uncertain mention, ignored
        labels[i, CHEXPERT.index("No Finding")] = float(labels[i].sum() == 0)
        order = rng.permutation(len(parts) - 1) + 1
        texts.append(" ".join([parts[0]] + [parts[k] for k in order]))
    return texts, labels, mask


def make_dataset(n: int = 400, seed: int = 0, name: str = "simulated-mimic-cxr", fractions=(0.7, 0.15, 0.15)) -> ReportDataset:
    texts, labels, mask = make_reports(n, seed)
    n_tr, n_va = int(fractions[0] * n), int(fractions[1] * n)
    splits = np.array(["train"] * n_tr + ["validation"] * n_va + ["test"] * (n - n_tr - n_va), dtype=object)
    return ReportDataset(
        name=name, label_names=CHEXPERT, ids=[f"r{i}" for i in range(n)], patient_ids=[f"p{i}" for i in range(n)],
        texts=texts, labels=labels, label_mask=mask, splits=splits, credentialed=False,
        provenance={"generator": "tests/_synthetic.py", "n": n, "seed": seed},
    )


def no_dropout(model):
    """The model with every dropout off (the same network on every call: gradients comparable)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model
