"""CT-RATE loader: hand-written Hugging Face layout (reconstructions, ``Not given.``, unmatched
rows, the official validation files as the test split) and its bad inputs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from privrad.data import load_dataset
from privrad.data.common import DataWarning
from privrad.data.labels import CT_RATE_LABELS
from privrad.errors import ConfigError, DataError

RCOLS = ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"]
F1 = "Trachea is midline.  Heart size increased.\nSmall pericardial effusion."
TRAIN_REPORTS = [
    ["train_1_a_1.nii.gz", "Cough.", "Non-contrast.", F1, "Cardiomegaly. Pericardial effusion."],
    ["train_1_a_2.nii.gz", "Cough.", "Non-contrast.", F1, "Cardiomegaly. Pericardial effusion."],  # reconstruction
    ["train_1_b_1.nii.gz", "Not given.", "Not given.", "No nodule.", "Not given."],  # second scan, no impression
    ["train_2_a_1.nii.gz", "Fever.", "Non-contrast.", "Not given.", "Not given."],  # empty text: dropped
    ["train_3_a_1.nii.gz", "Fever.", "Non-contrast.", "Emphysema.", "Emphysema."],  # no label row
    ["train_10_a_1.nii.gz", "Dyspnea.", "Non-contrast.", "Lung nodule of 5 mm.", "Nodule."],
]
VALID_REPORTS = [["valid_1_a_1.nii.gz", "Not given.", "CT.", "Consolidation in the left lower lobe.", "Pneumonia."]]


def lab(*names: str) -> list[int]:
    return [int(k in names) for k in CT_RATE_LABELS]


TRAIN_LABELS = [
    ["train_1_a_1.nii.gz", *lab("Cardiomegaly", "Pericardial effusion")],
    ["train_1_a_2.nii.gz", *lab("Cardiomegaly", "Pericardial effusion")],
    ["train_1_b_1.nii.gz", *lab()],
    ["train_2_a_1.nii.gz", *lab("Emphysema")],
    ["train_4_a_1.nii.gz", *lab("Emphysema")],  # no report
    ["train_10_a_1.nii.gz", *lab("Lung nodule")],
]
VALID_LABELS = [["valid_1_a_1.nii.gz", *lab("Consolidation")]]


def _write(path: Path, header, rows, *, encoding="utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding=encoding) as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def make_ct(root: Path, *, train_labels=None, label_header=None) -> Path:
    d = root / "dataset"
    _write(d / "radiology_text_reports/train_reports.csv", RCOLS, TRAIN_REPORTS)
    _write(d / "radiology_text_reports/validation_reports.csv", RCOLS, VALID_REPORTS)
    _write(d / "multi_abnormality_labels/train_predicted_labels.csv", label_header or ["VolumeName", *CT_RATE_LABELS],
           train_labels or TRAIN_LABELS)
    _write(d / "multi_abnormality_labels/valid_predicted_labels.csv", ["VolumeName", *CT_RATE_LABELS], VALID_LABELS)
    return root


def snapshot(root: Path):
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_hand_written_layout(tmp_path):
    root = make_ct(tmp_path / "ct")
    with pytest.warns(DataWarning, match=r"1 reports with no label row, 1 label rows with no report, 1 reports with empty text after sectioning, 1 extra reconstructions merged"):
        ds = load_dataset("ct-rate", root, validation_fraction=0.0)
    assert ds.credentialed and ds.label_names == CT_RATE_LABELS
    assert ds.ids == ("train_1_a", "train_1_b", "train_10_a", "valid_1_a")
    assert ds.patient_ids == ("train_1", "train_1", "train_10", "valid_1")
    assert ds.texts == (
        "Trachea is midline. Heart size increased. Small pericardial effusion.\n\nCardiomegaly. Pericardial effusion.",
        "No nodule.",
        "Lung nodule of 5 mm.\n\nNodule.",
        "Consolidation in the left lower lobe.\n\nPneumonia.",
    )
    np.testing.assert_array_equal(ds.labels[0], lab("Cardiomegaly", "Pericardial effusion"))
    np.testing.assert_array_equal(ds.labels[1], lab())
    np.testing.assert_array_equal(ds.labels[3], lab("Consolidation"))
    assert ds.label_mask.all()
    assert list(ds.splits) == ["train", "train", "train", "test"]  # official validation files = test
    c = ds.provenance["counts"]
    assert (c["read"], c["merged_reconstructions"], c["dropped_empty_text"]) == (7, 1, 1)


def test_text_options_and_validation_carve_out(tmp_path):
    root = make_ct(tmp_path / "ct")
    with pytest.warns(DataWarning):
        imp = load_dataset("ct-rate", root, text="impression")
    assert imp.ids == ("train_1_a", "train_10_a", "valid_1_a")  # train_1_b has no impression: dropped
    assert imp.provenance["counts"]["dropped_empty_text"] == 2
    with pytest.warns(DataWarning):
        ds = load_dataset("ct-rate", root, validation_fraction=0.5, seed=1)
    by_patient = {}
    for p, s in zip(ds.patient_ids, ds.splits):
        by_patient.setdefault(p, set()).add(s)
    assert all(len(v) == 1 for v in by_patient.values())
    assert set(ds.splits[:3]) <= {"train", "validation"} and ds.splits[3] == "test"
    assert "validation" in set(ds.splits)


def _expect(root, exc, pattern, **options):
    before = snapshot(root)
    with pytest.raises(exc, match=pattern):
        load_dataset("ct-rate", root, **options)
    assert snapshot(root) == before


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match=r"CT-RATE folder .* does not exist"):
        load_dataset("ct-rate", tmp_path / "absent")
    root = make_ct(tmp_path / "ct")
    (root / "dataset/multi_abnormality_labels/valid_predicted_labels.csv").unlink()
    _expect(root, DataError, r"CT-RATE label file .*valid_predicted_labels.csv' is missing; download it")


def test_label_value_not_binary(tmp_path):
    rows = [r[:] for r in TRAIN_LABELS]
    rows[2][3] = "-1"
    root = make_ct(tmp_path / "ct", train_labels=rows)
    _expect(root, DataError, r"column 'Cardiomegaly' has the value '-1' in data row 3; allowed values are 1, 0 —")
    rows[2][3] = ""
    root = make_ct(tmp_path / "ct2", train_labels=rows)
    _expect(root, DataError, r"column 'Cardiomegaly' has the value '' in data row 3")


def test_label_column_missing(tmp_path):
    header = ["VolumeName", *CT_RATE_LABELS[:-1]]
    root = make_ct(tmp_path / "ct", train_labels=[r[:-1] for r in TRAIN_LABELS], label_header=header)
    _expect(root, DataError, r"has no column 'Interlobular septal thickening'")


def test_duplicate_volume_and_bad_volume_name(tmp_path):
    root = make_ct(tmp_path / "ct", train_labels=TRAIN_LABELS + [TRAIN_LABELS[0]])
    _expect(root, DataError, r"'train_predicted_labels.csv' has the VolumeName 'train_1_a_1.nii.gz' in two rows")
    rows = TRAIN_LABELS + [["scan7.nii.gz", *lab()]]
    root = make_ct(tmp_path / "ct2", train_labels=rows)
    _write(root / "dataset/radiology_text_reports/train_reports.csv", RCOLS, TRAIN_REPORTS + [["scan7.nii.gz", "", "", "x", "y"]])
    _expect(root, DataError, r"has the VolumeName 'scan7.nii.gz', which is not like 'train_1_a_1.nii.gz'")


def test_not_utf8_and_bad_option(tmp_path):
    root = make_ct(tmp_path / "ct")
    p = root / "dataset/radiology_text_reports/validation_reports.csv"
    p.write_bytes(p.read_bytes().replace(b"Consolidation", b"Konsolidasyon \xfd"))
    _expect(root, DataError, r"report file .*validation_reports.csv' is not UTF-8 text")
    _expect(make_ct(tmp_path / "ok"), ConfigError, r"unknown text option 'all' for CT-RATE", text="all")
    _expect(make_ct(tmp_path / "ok2"), ConfigError, r"validation_fraction must be a number in \[0, 1\)", validation_fraction=1.5)
