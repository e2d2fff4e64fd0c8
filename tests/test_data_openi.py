"""Open-i loader on the real public files in ``../shared/data/openi`` (never copied into the repo)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from privrad.data import load_dataset
from privrad.data.common import DataWarning
from privrad.data.labels import OPENI_LABELS
from privrad.errors import DataError

OPENI = Path(__file__).resolve().parents[1].parent / "shared/data/openi"
needs_openi = pytest.mark.skipif(
    not (OPENI / "indiana_reports.csv").is_file(),
    reason=f"the public Open-i files are not at {OPENI} (CI has them there; see shared/data/openi/README.md)",
)


@needs_openi
def test_real_openi_counts_labels_and_splits():
    with pytest.warns(DataWarning, match=r"3851 report files or rows read, 0 reports with no label row, 0 label rows with no report, 25 reports with empty text"):
        ds = load_dataset("openi", OPENI)
    assert ds.provenance["counts"]["read"] == 3851  # reports in indiana_reports.csv
    assert len(ds) == 3826  # with non-empty findings + impression
    assert not ds.credentialed and ds.label_names == OPENI_LABELS
    assert ds.labels.shape == (3826, 15) and set(np.unique(ds.labels)) == {0.0, 1.0} and ds.label_mask.all()
    assert ds.labels[:, OPENI_LABELS.index("Hernia")].sum() == 0
    i = ds.ids.index("CXR1")
    assert ds.texts[i].startswith("The cardiac silhouette and mediastinum size are within normal limits.")
    assert ds.texts[i].endswith("\n\nNormal chest x-XXXX.")
    assert ds.labels[i, OPENI_LABELS.index("normal")] == 1 and ds.labels[i].sum() == 1
    assert abs(ds.split_counts()["test"] - 383) <= 1
    with pytest.warns(DataWarning):
        imp = load_dataset("openi", OPENI, text="impression")
    assert len(imp) == 3820


@needs_openi
def test_real_openi_fixed_test_list_and_disjoint_patients():
    with pytest.warns(DataWarning, match="4 test-list ids with no loaded report"):
        ds = load_dataset("openi", OPENI, test_list=True)
    listed = set((OPENI / "openi-testset.txt").read_text().split())
    assert len(listed) == 771
    assert {i for i, s in zip(ds.ids, ds.splits) if s == "test"} == listed & set(ds.ids)
    assert ds.split_counts() == {"train": 2719, "validation": 340, "test": 767}
    seen = {}
    for p, s in zip(ds.patient_ids, ds.splits):
        assert seen.setdefault(p, s) == s


def _write(path: Path, header, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def test_hand_written_openi_and_bad_values(tmp_path):
    _write(tmp_path / "indiana_reports.csv", ["uid", "MeSH", "findings", "impression"],
           [["1", "normal", "Clear lungs.", "Normal."], ["2", "x", "", ""], ["3", "x", "Effusion.", ""], ["9", "x", "No label.", "x"]])
    zero = ["0"] * 15
    _write(tmp_path / "openi_gld_std14.csv", ["filename", *OPENI_LABELS],
           [["CXR1", *zero[:-1], "1"], ["CXR2", *zero], ["CXR3", "0", "0", "1", *zero[3:]], ["CXR4", *zero]])
    with pytest.warns(DataWarning, match="1 reports with no label row, 1 label rows with no report, 1 reports with empty text"):
        ds = load_dataset("openi", tmp_path, split_fractions=(1, 0, 0))
    assert ds.ids == ("CXR1", "CXR3") and ds.texts == ("Clear lungs.\n\nNormal.", "Effusion.")
    assert ds.labels[1, OPENI_LABELS.index("Effusion")] == 1 and ds.labels[1].sum() == 1
    with pytest.raises(DataError, match=r"Open-i test list file .*nolist.txt' is missing"):
        load_dataset("openi", tmp_path, test_list=tmp_path / "nolist.txt")
    _write(tmp_path / "openi_gld_std14.csv", ["filename", *OPENI_LABELS], [["CXR1", *zero[:-1], "-1"]])
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir())
    with pytest.raises(DataError, match=r"column 'normal' has the value '-1' in data row 1; allowed values are 1, 0"):
        load_dataset("openi", tmp_path)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir()) == before


@needs_openi
def test_max_reports_keeps_split_proportions_and_is_seeded():
    with pytest.warns(DataWarning, match=r"subsampled from 3826 \(max_reports=100, seed=4\)"):
        a = load_dataset("openi", OPENI, max_reports=100, seed=4)
    with pytest.warns(DataWarning):
        b = load_dataset("openi", OPENI, max_reports=100, seed=4)
    assert a.ids == b.ids and len(a) == 100
    assert a.split_counts() == {"train": 80, "validation": 10, "test": 10}
    assert a.provenance["counts"]["kept"] == 100 and a.provenance["counts"]["loaded"] == 3826
