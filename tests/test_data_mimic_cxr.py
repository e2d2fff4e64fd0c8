"""MIMIC-CXR loader: hand-written layout-exact fixtures (addenda, missing sections, uncertain
labels, blanks, unmatched rows) and every bad input, each with its message and no file written."""

from __future__ import annotations

import gzip
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from privrad.data import load_dataset
from privrad.data.common import DataWarning
from privrad.data.labels import CHEXPERT_LABELS
from privrad.data.mimic_cxr import report_text
from privrad.errors import ConfigError, DataError

HEADER = " " * 33 + "FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n INDICATION:  ___-year-old man with cough.\n \n"

REPORTS = {
    # full report; the addendum must not leak into the text
    (10000001, 50000001): HEADER + " COMPARISON:  ___\n \n FINDINGS: \n \n Streaky opacity at the left base, likely\n"
    " atelectasis.  Possible mild edema.\n \n IMPRESSION: \n \n Left basilar atelectasis.  Possible mild\n edema.  No pleural effusion.\n"
    " \n ADDENDUM:  Small right pneumothorax was called to Dr. ___.\n",
    # findings only -> the findings
    (10000001, 50000002): HEADER + " FINDINGS: \n \n The lungs are clear.  No acute process.\n",
    # no section header at all -> the last paragraph
    (10000002, 50000003): " " * 33 + "FINAL REPORT\n PA AND LATERAL CHEST COMPARED TO ___:\n \n Patchy opacity in the right\n"
    " lower lobe; pneumonia cannot be excluded.\n",
    # impression header present but empty, no findings -> empty after sectioning (dropped)
    (10000003, 50000004): HEADER + " IMPRESSION: \n \n \n",
    # no label row (dropped, counted)
    (10000004, 50000005): HEADER + " IMPRESSION:  Normal chest.\n",
    # impression on the header line, masks kept
    (10000006, 50000007): HEADER + " FINDINGS:  Right PICC tip in the SVC.\n \n IMPRESSION:  Right PICC line ends at\n"
    " the cavoatrial junction, as discussed with ___.  Borderline heart size.\n",
}
LABELS = {  # study -> {label: value}; everything else blank
    50000001: {"Atelectasis": "1.0", "Edema": "-1.0", "Pleural Effusion": "0.0"},
    50000002: {"No Finding": "1.0"},
    50000003: {"Pneumonia": "-1.0", "Lung Opacity": "1.0"},
    50000004: {"No Finding": "1.0"},
    50000006: {"Fracture": "1.0"},  # no report: unmatched label row
    50000007: {"Support Devices": "1.0", "Cardiomegaly": "-1.0"},
}
SUBJECT = {50000001: 10000001, 50000002: 10000001, 50000003: 10000002, 50000004: 10000003, 50000006: 10000005, 50000007: 10000006}
SPLIT = [  # one row per image
    ("d1", 50000001, 10000001, "train"), ("d2", 50000001, 10000001, "train"), ("d3", 50000002, 10000001, "train"),
    ("d4", 50000003, 10000002, "validate"), ("d5", 50000004, 10000003, "test"), ("d6", 50000005, 10000004, "test"),
    ("d7", 50000007, 10000006, "test"), ("d8", 50000007, 10000006, "test"),
]


def _gz(path: Path, lines: list[str]) -> None:
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))


def label_lines(rows=None, header=None) -> list[str]:
    header = header or ["subject_id", "study_id", *CHEXPERT_LABELS]
    out = [",".join(f'"{h}"' if " " in h else h for h in header)]
    for study, vals in (rows or LABELS).items():
        out.append(",".join([str(SUBJECT[study]), str(study)] + [vals.get(k, "") for k in header[2:]]))
    return out


def make_mimic(root: Path, *, tree=True, zip_=False, split=True, reports=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    reports = reports or {k: v.encode() for k, v in REPORTS.items()}
    if tree:
        for (subj, study), data in reports.items():
            p = root / "files" / f"p{str(subj)[:2]}" / f"p{subj}" / f"s{study}.txt"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    if zip_:
        with zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w") as zf:
            for (subj, study), data in reports.items():
                zf.writestr(f"files/p{str(subj)[:2]}/p{subj}/s{study}.txt", data)
    _gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", label_lines())
    if split:
        _gz(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id,study_id,subject_id,split"] + [",".join(map(str, r)) for r in SPLIT])
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def vec(**kv) -> list[float]:
    return [float(kv.get(k.replace(" ", "_"), 0.0)) for k in CHEXPERT_LABELS]


def test_hand_written_layout_exact_texts_labels_counts(tmp_path):
    root = make_mimic(tmp_path / "mimic")
    with pytest.warns(DataWarning) as rec:
        ds = load_dataset("mimic-cxr", root)
    assert ds.credentialed is True and ds.name == "mimic-cxr"
    assert ds.label_names == CHEXPERT_LABELS
    assert ds.ids == ("s50000001", "s50000002", "s50000003", "s50000007")
    assert ds.patient_ids == ("p10000001", "p10000001", "p10000002", "p10000006")
    assert ds.texts == (
        "Left basilar atelectasis. Possible mild edema. No pleural effusion.",
        "The lungs are clear. No acute process.",
        "Patchy opacity in the right lower lobe; pneumonia cannot be excluded.",
        "Right PICC line ends at the cavoatrial junction, as discussed with ___. Borderline heart size.",
    )
    assert list(ds.splits) == ["train", "train", "validation", "test"]
    # default policy: uncertain ignored (masked), blank and 0.0 negative
    np.testing.assert_array_equal(ds.labels[0], vec(Atelectasis=1))
    assert [ds.label_names[j] for j in np.flatnonzero(~ds.label_mask[0])] == ["Edema"]
    np.testing.assert_array_equal(ds.labels[1], vec(No_Finding=1))
    np.testing.assert_array_equal(ds.labels[2], vec(Lung_Opacity=1))
    assert [ds.label_names[j] for j in np.flatnonzero(~ds.label_mask[2])] == ["Pneumonia"]
    assert ds.label_mask[1].all()
    c = ds.provenance["counts"]
    assert (c["read"], c["dropped_no_label_row"], c["unmatched_label_rows"], c["dropped_empty_text"], c["dropped_no_split_row"]) == (6, 1, 1, 1, 0)
    # one summary line, also in provenance
    msgs = [str(r.message) for r in rec if issubclass(r.category, DataWarning)]
    assert len(msgs) == 1 and "\n" not in msgs[0] and msgs[0] == ds.provenance["summary"]
    assert "1 reports with no label row, 1 label rows with no report, 1 reports with empty text" in msgs[0]
    assert ds.provenance["split_source"] == "official"


@pytest.mark.parametrize("policy,atel,edema", [("positive", 1, 1), ("negative", 1, 0)])
def test_uncertain_policies(tmp_path, policy, atel, edema):
    with pytest.warns(DataWarning):
        ds = load_dataset("mimic-cxr", make_mimic(tmp_path / "m"), uncertain=policy)
    assert ds.label_mask.all()
    assert ds.labels[0, CHEXPERT_LABELS.index("Atelectasis")] == atel
    assert ds.labels[0, CHEXPERT_LABELS.index("Edema")] == edema
    assert ds.labels[3, CHEXPERT_LABELS.index("Cardiomegaly")] == edema


def test_findings_impression_option_and_section_rules():
    raw = REPORTS[(10000001, 50000001)]
    assert report_text(raw, "findings_impression") == (
        "Streaky opacity at the left base, likely atelectasis. Possible mild edema.\n\n"
        "Left basilar atelectasis. Possible mild edema. No pleural effusion."
    )
    assert "pneumothorax" not in report_text(raw, "findings_impression")  # addendum cut
    assert report_text(REPORTS[(10000003, 50000004)]) == ""


def test_zip_and_tree_read_the_same(tmp_path):
    both = make_mimic(tmp_path / "both", zip_=True)
    only_zip = make_mimic(tmp_path / "zip", tree=False, zip_=True)
    loaded = []
    for root, source in [(both, "tree"), (both, "zip"), (only_zip, "auto")]:
        with pytest.warns(DataWarning):
            loaded.append(load_dataset("mimic-cxr", root, reports=source))
    a, b, c = loaded
    assert a.texts == b.texts == c.texts and a.ids == b.ids == c.ids
    np.testing.assert_array_equal(a.labels, c.labels)
    _expect(both, ConfigError, r"unknown reports source 'web'; use one of auto, tree, zip", reports="web")


def test_no_split_file_gives_seeded_patient_split(tmp_path):
    root = make_mimic(tmp_path / "m", split=False)
    with pytest.warns(DataWarning):
        a = load_dataset("mimic-cxr", root, seed=3, split_fractions=(0.5, 0.25, 0.25))
    with pytest.warns(DataWarning):
        b = load_dataset("mimic-cxr", root, seed=3, split_fractions=(0.5, 0.25, 0.25))
    assert list(a.splits) == list(b.splits)
    assert a.splits[0] == a.splits[1]  # same patient, same split
    assert "seeded" in a.provenance["split_source"]
    assert "dropped_no_split_row" not in a.provenance["counts"]


def test_negbio_labeler_file(tmp_path):
    root = make_mimic(tmp_path / "m")
    os.replace(root / "mimic-cxr-2.0.0-chexpert.csv.gz", root / "mimic-cxr-2.0.0-negbio.csv.gz")
    with pytest.warns(DataWarning):
        ds = load_dataset("mimic-cxr", root, labeler="negbio")
    assert len(ds) == 4 and ds.provenance["label_file"] == "mimic-cxr-2.0.0-negbio.csv.gz"
    with pytest.raises(DataError, match="mimic-cxr-2.0.0-chexpert.csv.gz.* is missing"):
        load_dataset("mimic-cxr", root)


# ---------------------------------------------------------------------------- bad input


def _expect(root: Path, exc, pattern: str, **options):
    before = snapshot(root) if root.exists() else None
    with pytest.raises(exc, match=pattern):
        load_dataset("mimic-cxr", root, **options)
    assert (snapshot(root) if root.exists() else None) == before  # nothing written


def test_missing_folder(tmp_path):
    _expect(tmp_path / "nope", DataError, r"MIMIC-CXR folder '.*nope' does not exist; pass the folder")
    assert not (tmp_path / "nope").exists()


def test_missing_reports(tmp_path):
    root = make_mimic(tmp_path / "m", tree=False)
    _expect(root, DataError, r"has neither a files/ reports tree nor mimic-cxr-reports.zip")


def test_zip_that_is_not_mimic(tmp_path):
    root = make_mimic(tmp_path / "m", tree=False)
    with zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w") as zf:
        zf.writestr("notes/readme.txt", "hello")
    _expect(root, DataError, r"is not a MIMIC-CXR reports zip \(no entry like files/p10/")
    (root / "mimic-cxr-reports.zip").write_bytes(b"not a zip at all")
    _expect(root, DataError, r"is not a zip file; download mimic-cxr-reports.zip again")


def test_label_file_missing_column(tmp_path):
    root = make_mimic(tmp_path / "m")
    header = ["subject_id", "study_id", *[k for k in CHEXPERT_LABELS if k != "Edema"]]
    _gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", label_lines(header=header))
    _expect(root, DataError, r"label file .*chexpert.csv.gz' has no column 'Edema' \(it has: subject_id, study_id")


def test_label_value_out_of_range(tmp_path):
    root = make_mimic(tmp_path / "m")
    _gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", label_lines(rows={**LABELS, 50000002: {"Edema": "2.0"}}))
    _expect(root, DataError, r"column 'Edema' has the value '2.0' in data row 2; allowed values are 1, 0, -1 or blank")
    _gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", label_lines(rows={**LABELS, 50000002: {"Edema": "yes"}}))
    _expect(root, DataError, r"column 'Edema' has the value 'yes'")


def test_duplicate_label_rows_and_duplicate_reports(tmp_path):
    root = make_mimic(tmp_path / "m")
    lines = label_lines()
    _gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", lines + [lines[1]])
    _expect(root, DataError, r"has study_id 50000001 in two rows; keep one label row per study")
    root2 = make_mimic(tmp_path / "m2")
    dup = root2 / "files" / "p10" / "p10000009" / "s50000001.txt"
    dup.parent.mkdir(parents=True)
    dup.write_text(REPORTS[(10000001, 50000001)])
    _expect(root2, DataError, r"study s50000001 appears twice \(files/p10/p10000001/s50000001.txt and files/p10/p10000009")


def test_report_not_utf8(tmp_path):
    reports = {k: v.encode() for k, v in REPORTS.items()}
    reports[(10000002, 50000003)] = "Opacit\u00e9 ".encode("latin-1") + b"IMPRESSION: x"
    root = make_mimic(tmp_path / "m", reports=reports)
    _expect(root, DataError, r"report files/p10/p10000002/s50000003.txt is not UTF-8 text \(bad byte at offset 6\)")


def test_label_file_not_utf8(tmp_path):
    root = make_mimic(tmp_path / "m")
    (root / "mimic-cxr-2.0.0-chexpert.csv.gz").write_bytes(gzip.compress(b"subject_id,study_id\n1,\xff\xfe\n", mtime=0))
    _expect(root, DataError, r"label file .* is not UTF-8 text")


def test_patient_in_two_splits_refused(tmp_path):
    root = make_mimic(tmp_path / "m")
    rows = [r if r[0] != "d3" else ("d3", 50000002, 10000001, "test") for r in SPLIT]
    _gz(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id,study_id,subject_id,split"] + [",".join(map(str, r)) for r in rows])
    _expect(root, DataError, r"patient 'p10000001' is in both the 'train' and 'test' splits; assign each patient to exactly one split")


def test_split_file_study_in_two_splits_and_bad_value(tmp_path):
    root = make_mimic(tmp_path / "m")
    rows = [r if r[0] != "d2" else ("d2", 50000001, 10000001, "test") for r in SPLIT]
    _gz(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id,study_id,subject_id,split"] + [",".join(map(str, r)) for r in rows])
    _expect(root, DataError, r"puts images of study 50000001 in both 'train' and 'test'")
    rows = [r if r[0] != "d2" else ("d2", 50000001, 10000001, "dev") for r in SPLIT]
    _gz(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id,study_id,subject_id,split"] + [",".join(map(str, r)) for r in rows])
    _expect(root, DataError, r"column 'split' has the value 'dev'; allowed values are train, validate, test")


def test_bad_options(tmp_path):
    root = make_mimic(tmp_path / "m")
    _expect(root, ConfigError, r"unknown text option 'all' for MIMIC-CXR; use one of impression, findings_impression", text="all")
    _expect(root, ConfigError, r"unknown uncertain policy 'zeros'; use one of ignore, positive, negative", uncertain="zeros")
    _expect(root, ConfigError, r"max_reports must be a positive whole number", max_reports=0)
    _expect(root, ConfigError, r"dataset 'mimic-cxr' has no option 'uncertainty'; its options are: text, uncertain", uncertainty="x")
    _expect(root, ConfigError, r"split_fractions \[0.5, 0.5\] must be three non-negative numbers", split_fractions=(0.5, 0.5))


def test_all_dropped_is_an_error(tmp_path):
    root = make_mimic(tmp_path / "m")
    _gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", label_lines(rows={50000006: {"Fracture": "1.0"}}))
    _expect(root, DataError, r"no report in .* has both text and labels \(6 report files or rows read, 6 reports with no label row")


def test_header_variants():
    head = " " * 33 + "FINAL REPORT\n INDICATION:  Cough.\n \n"
    assert report_text(head + " CHEST, PA AND LATERAL:\n \n Clear lungs.\n") == "Clear lungs."
    assert report_text(head + " FINDINGS/IMPRESSION:  Clear lungs.\n \n NOTIFICATION:  Called.\n") == "Clear lungs."
    assert report_text(head + " FINDINGS:  Small effusion.\n \n CONCLUSION:  Effusion.\n") == "Effusion."
    assert report_text(head + " FINDINGS:  Small effusion.\n \n CONCLUSION:  Effusion.\n", "findings_impression") == (
        "Small effusion.\n\nEffusion.")
    assert report_text(head + " COMPARISON:  None.\n \n Heart normal.\n \n Lungs clear.\n") == "Lungs clear."
