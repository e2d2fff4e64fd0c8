"""Label names of every dataset, and the policies that turn raw label values into targets.

The order of each tuple is the order of the label columns everywhere in privrad (the
``labels`` array, metrics tables, the book).
"""

from __future__ import annotations

import numpy as np

from privrad.errors import ConfigError

#: The 14 CheXpert labels, in the order of ``mimic-cxr-2.0.0-chexpert.csv.gz``.
CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)

#: The 18 CT-RATE abnormality labels, in the order of ``*_predicted_labels.csv``.
CT_RATE_LABELS: tuple[str, ...] = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)

#: The 14 ChestX-ray14 classes of the NegBio Open-i gold standard, in file order, then ``normal``.
OPENI_FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
OPENI_LABELS: tuple[str, ...] = OPENI_FINDINGS + ("normal",)

#: How an uncertain mention (CheXpert ``-1.0``) becomes a target.
UNCERTAIN_POLICIES = ("ignore", "positive", "negative")

#: The default uncertain policy. ``ignore`` (CheXpert's "U-Ignore") masks uncertain entries out
#: of the loss and out of every metric: it injects no label noise in either direction, whereas
#: mapping "cannot exclude pneumonia" to 1 or to 0 is right for some labels and wrong for others
#: (Irvin et al., 2019, found no single mapping best for all labels). The price is that each
#: label is trained and scored on slightly fewer reports; the mask records exactly which.
DEFAULT_UNCERTAIN = "ignore"


def check_uncertain(policy: str) -> str:
    if policy not in UNCERTAIN_POLICIES:
        raise ConfigError(
            f"unknown uncertain policy {policy!r}; use one of {', '.join(UNCERTAIN_POLICIES)}."
        )
    return policy


def apply_uncertain(values: np.ndarray, policy: str = DEFAULT_UNCERTAIN) -> tuple[np.ndarray, np.ndarray]:
    """Map raw values (1, 0, -1 uncertain, NaN not mentioned) to ``(labels, label_mask)``.

    Not mentioned (blank) counts as negative, the CheXpert convention: the labeler found no
    mention of the finding. Uncertain follows ``policy`` (see :data:`DEFAULT_UNCERTAIN`).
    """
    check_uncertain(policy)
    values = np.asarray(values, dtype=np.float64)
    uncertain = values == -1
    labels = np.where(values == 1, 1.0, 0.0)
    mask = np.ones(values.shape, dtype=bool)
    if policy == "positive":
        labels[uncertain] = 1.0
    elif policy == "ignore":
        mask[uncertain] = False
    return labels.astype(np.float32), mask
