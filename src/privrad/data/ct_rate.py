"""CT-RATE (Hugging Face ``ibrahimhamamci/CT-RATE``) chest CT reports with 18 abnormality labels.

Layout (``path`` is the folder holding the download, see ``data/README.md``)::

    path/dataset/radiology_text_reports/train_reports.csv
    path/dataset/radiology_text_reports/validation_reports.csv
        VolumeName, ClinicalInformation_EN, Technique_EN, Findings_EN, Impressions_EN
    path/dataset/multi_abnormality_labels/train_predicted_labels.csv
    path/dataset/multi_abnormality_labels/valid_predicted_labels.csv
        VolumeName, then the 18 labels (0/1)

Rows are per *volume*: ``train_1_a_1.nii.gz`` and ``train_1_a_2.nii.gz`` are two reconstructions of
scan ``train_1_a`` of patient ``train_1``; they share one report and one label row, so they give
one example (the lowest-numbered reconstruction's rows are used).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from privrad.data.base import register_dataset
from privrad.data.common import (
    check_max_reports,
    finish,
    norm_space,
    parse_label_values,
    patient_split,
    read_table,
    require_dir,
    require_file,
)
from privrad.data.labels import CT_RATE_LABELS
from privrad.errors import ConfigError, DataError

REPORT_DIR = Path("dataset/radiology_text_reports")
LABEL_DIR = Path("dataset/multi_abnormality_labels")
FILES = {
    "train": (REPORT_DIR / "train_reports.csv", LABEL_DIR / "train_predicted_labels.csv"),
    "valid": (REPORT_DIR / "validation_reports.csv", LABEL_DIR / "valid_predicted_labels.csv"),
}
REPORT_COLUMNS = ("VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN")
TEXT_MODES = {
    "findings_impression": ("Findings_EN", "Impressions_EN"),
    "impression": ("Impressions_EN",),
    "findings": ("Findings_EN",),
}
NOT_GIVEN = "Not given."
_VOLUME = re.compile(r"((train|valid)_(\d+))_([a-z]+)_(\d+)\.nii\.gz")


def parse_volume_name(name: str, where: str) -> tuple[str, str, int]:
    """``train_1_a_2.nii.gz`` → (scan ``train_1_a``, patient ``train_1``, reconstruction 2)."""
    m = _VOLUME.fullmatch(name.strip())
    if m is None:
        raise DataError(
            f"{where} has the VolumeName {name!r}, which is not like 'train_1_a_1.nii.gz'; use the file as downloaded."
        )
    return f"{m.group(1)}_{m.group(4)}", m.group(1), int(m.group(5))


def _field(v: str) -> str:
    v = v.strip()
    return "" if v == NOT_GIVEN else v


def load_ct_rate(
    path: str | os.PathLike,
    *,
    text: str = "findings_impression",
    validation_fraction: float = 0.1,
    max_reports: int | None = None,
    seed: int = 0,
):
    """Load CT-RATE from a Hugging Face download folder.

    Options:
        text: ``"findings_impression"`` (default, findings then impression, as the paper fed the
            models), ``"impression"`` or ``"findings"``. Fields holding ``Not given.`` count as empty.
        validation_fraction: fraction of the *train* patients carved out (seeded, by patient) as
            the ``validation`` split. The official ``validation_reports.csv`` /
            ``valid_predicted_labels.csv`` form the ``test`` split: CT-RATE's public test labels are
            the validation files, so results stay comparable with published CT-RATE numbers.
        max_reports: keep a seeded random subset of this many scans.
        seed: seed of the validation carve-out and of the subsample.

    Volumes with no label row, label rows with no report, and scans whose text is empty are
    dropped, counted in ``provenance["counts"]`` and announced in one summary line.
    """
    if text not in TEXT_MODES:
        raise ConfigError(f"unknown text option {text!r} for CT-RATE; use one of {', '.join(TEXT_MODES)}.")
    if not (isinstance(validation_fraction, (int, float)) and 0 <= validation_fraction < 1):
        raise ConfigError(f"validation_fraction must be a number in [0, 1), not {validation_fraction!r}.")
    max_reports = check_max_reports(max_reports)
    root = require_dir(path, "CT-RATE")
    counts = {"read": 0, "dropped_no_label_row": 0, "unmatched_label_rows": 0, "dropped_empty_text": 0, "merged_reconstructions": 0}
    ids, patients, texts, values, official = [], [], [], [], []
    for part, (report_rel, label_rel) in FILES.items():
        rpath = require_file(root / report_rel, "CT-RATE report")
        lpath = require_file(root / label_rel, "CT-RATE label")
        rdf = read_table(rpath, required=REPORT_COLUMNS, what="report file")
        ldf = read_table(lpath, required=("VolumeName", *CT_RATE_LABELS), what="label file")
        lvals = parse_label_values(ldf, CT_RATE_LABELS, allowed=(1.0, 0.0), allow_blank=False, where=f"label file {lpath.name!r}")
        reports = _index(rdf, rpath)
        counts["read"] += len(reports)
        label_rows = _index(ldf, lpath)
        counts["dropped_no_label_row"] += len(set(reports) - set(label_rows))
        counts["unmatched_label_rows"] += len(set(label_rows) - set(reports))
        columns = {c: rdf[c].tolist() for c in TEXT_MODES[text]}
        scans: dict[str, list[tuple[int, str]]] = {}
        for vol in set(reports) & set(label_rows):
            scan, patient, recon = parse_volume_name(vol, f"report file {rpath.name!r}")
            scans.setdefault(scan, []).append((recon, vol))
        for scan in sorted(scans, key=_natural):
            recons = sorted(scans[scan])
            counts["merged_reconstructions"] += len(recons) - 1
            vol = recons[0][1]
            body = "\n\n".join(t for t in (norm_space(_field(columns[c][reports[vol]])) for c in columns) if t)
            if not body:
                counts["dropped_empty_text"] += 1
                continue
            ids.append(scan)
            patients.append(parse_volume_name(vol, "")[1])
            texts.append(body)
            values.append(lvals[label_rows[vol]])
            official.append(part)
    train_patients = [p for p, o in zip(patients, official) if o == "train"]
    assign = patient_split(
        train_patients, fractions=(1 - validation_fraction, validation_fraction), seed=seed, names=("train", "validation")
    )
    splits = [assign[p] if o == "train" else "test" for p, o in zip(patients, official)]
    labels = np.asarray(values, dtype=np.float32).reshape(len(ids), len(CT_RATE_LABELS))
    options = dict(text=text, validation_fraction=validation_fraction, max_reports=max_reports, seed=seed)
    return finish(
        "ct-rate", path=root, ids=ids, patient_ids=patients, texts=texts, labels=labels,
        label_mask=np.ones_like(labels, dtype=bool), splits=splits, label_names=CT_RATE_LABELS, counts=counts,
        options=options, source="download", max_reports=max_reports, seed=seed,
        extra={"split_source": f"official validation files = test; validation carved from train by patient (seed={seed})"},
    )


def _index(df, path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for i, v in enumerate(df["VolumeName"].str.strip()):
        if v in out:
            raise DataError(f"file {path.name!r} has the VolumeName {v!r} in two rows; keep one row per volume.")
        out[v] = i
    return out


def _natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


register_dataset(
    "ct-rate",
    credentialed=True,
    description="CT-RATE chest CT reports (Hugging Face, credentialed) with 18 abnormality labels",
    label_names=CT_RATE_LABELS,
)(load_ct_rate)
