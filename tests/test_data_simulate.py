"""Report simulator: layout-exact, deterministic output that the real loaders read with zero
unmatched rows; prevalence within 3 points on 20k reports; text a good model cannot read perfectly."""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from privrad.data import load_dataset
from privrad.data.describe import load_tokenizer, token_lengths
from privrad.data.labels import CHEXPERT_LABELS, CT_RATE_LABELS
from privrad.data.simulate import CT_PREVALENCE, CXR_PREVALENCE, MARKER, simulate
from privrad.errors import ConfigError, DataError


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    base = tmp_path_factory.mktemp("sim")
    return simulate("mimic-cxr", base / "mimic-cxr", n=400, seed=1), simulate("ct-rate", base / "ct-rate", n=300, seed=1)


def test_same_seed_byte_identical_other_seed_differs(tmp_path, small):
    mimic, ct = small
    assert digest(simulate("mimic-cxr", tmp_path / "a", n=400, seed=1)) == digest(mimic)
    assert digest(simulate("ct-rate", tmp_path / "b", n=300, seed=1)) == digest(ct)
    other = digest(simulate("mimic-cxr", tmp_path / "c", n=400, seed=2))
    assert other["mimic-cxr-2.0.0-chexpert.csv.gz"] != digest(mimic)["mimic-cxr-2.0.0-chexpert.csv.gz"]


def test_mimic_layout_is_exact(small):
    mimic, _ = small
    tree = sorted(str(p.relative_to(mimic)) for p in (mimic / "files").rglob("*.txt"))
    assert len(tree) == 400
    assert all(re.fullmatch(r"files/p1\d/p1\d{7}/s5\d{7}\.txt", t) for t in tree)
    assert all(t.split("/")[1] == t.split("/")[2][:3] for t in tree)
    with zipfile.ZipFile(mimic / "mimic-cxr-reports.zip") as zf:
        assert sorted(zf.namelist()) == tree
        assert zf.read(tree[0]) == (mimic / tree[0]).read_bytes()
    text = (mimic / tree[0]).read_text()
    assert text.startswith(" " * 33 + "FINAL REPORT\n") and all(line.startswith(" ") for line in text.splitlines())
    labels = pd.read_csv(mimic / "mimic-cxr-2.0.0-chexpert.csv.gz", dtype=str, keep_default_na=False)
    assert list(labels.columns) == ["subject_id", "study_id", *CHEXPERT_LABELS]
    values = labels[list(CHEXPERT_LABELS)]
    assert set(np.unique(values.to_numpy())) == {"1.0", "0.0", "-1.0", ""}
    assert (values == "-1.0").any().sum() >= 5  # uncertain mentions for several labels
    split = pd.read_csv(mimic / "mimic-cxr-2.0.0-split.csv.gz", dtype=str)
    assert list(split.columns) == ["dicom_id", "study_id", "subject_id", "split"]
    assert len(split) > split.study_id.nunique() == 400 and set(split.split) == {"train", "validate", "test"}
    assert labels.subject_id.value_counts().max() > 1  # several studies for some patients


def test_ct_layout_is_exact(small):
    _, ct = small
    d = ct / "dataset"
    rep = pd.read_csv(d / "radiology_text_reports/train_reports.csv", dtype=str, keep_default_na=False)
    lab = pd.read_csv(d / "multi_abnormality_labels/train_predicted_labels.csv", dtype=str)
    assert list(rep.columns) == ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"]
    assert list(lab.columns) == ["VolumeName", *CT_RATE_LABELS]
    assert list(rep.VolumeName) == list(lab.VolumeName)
    assert rep.VolumeName.str.fullmatch(r"train_\d+_[a-z]_\d\.nii\.gz").all()
    assert rep.VolumeName.str.endswith("_2.nii.gz").any()  # two reconstructions of some scans
    assert (rep.ClinicalInformation_EN == "Not given.").any()
    assert set(np.unique(lab[list(CT_RATE_LABELS)].to_numpy())) == {"0", "1"}
    assert (d / "radiology_text_reports/validation_reports.csv").is_file()
    assert (d / "multi_abnormality_labels/valid_predicted_labels.csv").is_file()


def test_loaders_read_simulator_output_with_nothing_unmatched(small):
    mimic, ct = small
    for name, root, n in [("simulated-mimic-cxr", mimic, 400), ("mimic-cxr", mimic, 400), ("simulated-ct-rate", ct, 300), ("ct-rate", ct, 300)]:
        ds = load_dataset(name, root)  # no DataWarning: nothing dropped
        c = ds.provenance["counts"]
        assert len(ds) == n and c["dropped_no_label_row"] == c["unmatched_label_rows"] == c["dropped_empty_text"] == 0
        assert ds.credentialed == (not name.startswith("simulated-"))
        assert (ds.provenance["source"] == "simulated") == name.startswith("simulated-")
        seen = {}
        for p, s in zip(ds.patient_ids, ds.splits):
            assert seen.setdefault(p, s) == s
        assert set(ds.splits) == {"train", "validation", "test"}
    zipped = load_dataset("simulated-mimic-cxr", mimic, reports="zip")
    assert zipped.texts == load_dataset("simulated-mimic-cxr", mimic).texts


def test_simulated_loader_refuses_a_real_download(tmp_path, small):
    mimic, _ = small
    with pytest.raises(DataError, match=rf"is not privrad's simulated ct-rate output \(no valid {MARKER}\).*load a real download as 'ct-rate'"):
        load_dataset("simulated-ct-rate", mimic)
    with pytest.raises(DataError, match="is not privrad's simulated mimic-cxr output"):
        load_dataset("simulated-mimic-cxr", tmp_path)


@pytest.mark.slow  # subprocesses, papermill or large data: `make test`, not `make test-fast`
def test_prevalence_within_3_points_on_20k(tmp_path):
    mimic = simulate("mimic-cxr", tmp_path / "m", n=20_000, seed=0)
    ct = simulate("ct-rate", tmp_path / "c", n=20_000, seed=0)
    raw = pd.read_csv(mimic / "mimic-cxr-2.0.0-chexpert.csv.gz", dtype=str, keep_default_na=False)
    for k in CHEXPERT_LABELS:
        assert abs((raw[k] == "1.0").mean() - CXR_PREVALENCE[k]) <= 0.03, k
    ds = load_dataset("simulated-mimic-cxr", mimic, uncertain="negative")
    assert len(ds) == 20_000 and ds.provenance["counts"]["unmatched_label_rows"] == 0
    np.testing.assert_allclose(ds.labels.mean(0), [CXR_PREVALENCE[k] for k in CHEXPERT_LABELS], atol=0.03)
    nf = ds.labels[:, CHEXPERT_LABELS.index("No Finding")] == 1
    pathology = [j for j, k in enumerate(CHEXPERT_LABELS) if k not in ("No Finding", "Support Devices")]
    assert not (ds.labels[nf][:, pathology] == 1).any()  # No Finding excludes the findings it contradicts
    dc = load_dataset("simulated-ct-rate", ct)
    assert len(dc) == 20_000
    np.testing.assert_allclose(dc.labels.mean(0), [CT_PREVALENCE[k] for k in CT_RATE_LABELS], atol=0.03)
    # co-occurrence like the real data: related findings go together
    a, c = CT_RATE_LABELS.index("Arterial wall calcification"), CT_RATE_LABELS.index("Coronary artery wall calcification")
    assert np.corrcoef(dc.labels[:, a], dc.labels[:, c])[0, 1] > 0.2


def test_ct_reports_are_long_and_cxr_short(small):
    mimic, ct = small
    tok = load_tokenizer("minilm-l6")
    cxr = token_lengths(load_dataset("simulated-mimic-cxr", mimic).texts, tok)
    ctl = token_lengths(load_dataset("simulated-ct-rate", ct).texts, tok)
    assert np.median(ctl) > 4 * np.median(cxr)
    assert (ctl > 256).mean() > 0.5


@pytest.mark.slow  # subprocesses, papermill or large data: `make test`, not `make test-fast`
def test_text_is_learnable_but_not_perfectly(tmp_path):
    """A strong bag-of-n-grams model scores well but clearly below perfect (noise, hedges, negations)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score, roc_auc_score

    ds = load_dataset("simulated-mimic-cxr", simulate("mimic-cxr", tmp_path / "m", n=3000, seed=5))
    tr, te = ds.split("train"), ds.split("test")
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    X, Xt = vec.fit_transform(tr.texts), vec.transform(te.texts)
    aucs, f1s = [], []
    for j in range(ds.n_labels):
        m, mt = tr.label_mask[:, j], te.label_mask[:, j]
        if te.labels[mt, j].sum() < 3:
            continue
        s = LogisticRegression(C=4, max_iter=1000).fit(X[m], tr.labels[m, j]).predict_proba(Xt[mt])[:, 1]
        aucs.append(roc_auc_score(te.labels[mt, j], s))
        f1s.append(f1_score(te.labels[mt, j], s > 0.5))
    assert 0.85 < np.mean(aucs) < 0.99
    assert 0.4 < np.mean(f1s) < 0.93


def test_label_noise_moves_labels_not_prevalence(tmp_path):
    clean = simulate("ct-rate", tmp_path / "a", n=3000, seed=3, label_noise=0.0)
    noisy = simulate("ct-rate", tmp_path / "b", n=3000, seed=3, label_noise=0.2)
    f = "dataset/multi_abnormality_labels/train_predicted_labels.csv"
    a = pd.read_csv(clean / f).iloc[:, 1:].to_numpy()
    b = pd.read_csv(noisy / f).iloc[:, 1:].to_numpy()
    assert (pd.read_csv(clean / "dataset/radiology_text_reports/train_reports.csv").equals(
        pd.read_csv(noisy / "dataset/radiology_text_reports/train_reports.csv")))  # same text
    pos = a == 1
    assert 0.15 < (b[pos] == 0).mean() < 0.25  # 20 % of positives flipped
    np.testing.assert_allclose(a.mean(0), b.mean(0), atol=0.03)


def test_rerun_is_idempotent_and_bad_arguments_write_nothing(tmp_path):
    out = tmp_path / "m"
    simulate("mimic-cxr", out, n=50, seed=0)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    simulate("mimic-cxr", out, n=50, seed=0)  # same arguments: left as it is
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    with pytest.raises(ConfigError, match=r"output folder .* already exists and holds simulated mimic-cxr with n=50, seed=0, label_noise=0.05, not mimic-cxr with n=60, seed=0, label_noise=0.05; choose another folder or pass overwrite=True"):
        simulate("mimic-cxr", out, n=60, seed=0)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    simulate("mimic-cxr", out, n=60, seed=0, overwrite=True)
    assert len(list((out / "files").rglob("*.txt"))) == 60
    for kwargs, pattern in [
        (dict(kind="x-ray"), r"unknown simulator kind 'x-ray'; use one of mimic-cxr, ct-rate"),
        (dict(n=0), r"n must be a whole number of reports between 10 and 1000000, not 0"),
        (dict(label_noise=0.9), r"label_noise must be a number between 0 and 0.5, not 0.9"),
        (dict(seed=-1), r"seed must be a non-negative whole number"),
    ]:
        args = {"kind": "mimic-cxr", **kwargs}
        with pytest.raises(ConfigError, match=pattern):
            simulate(args.pop("kind"), tmp_path / "new", **args)
        assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left behind


def test_gzip_members_have_no_timestamp(small):
    mimic, _ = small
    raw = (mimic / "mimic-cxr-2.0.0-split.csv.gz").read_bytes()
    assert raw[4:8] == b"\x00\x00\x00\x00"  # gzip MTIME field
    with zipfile.ZipFile(mimic / "mimic-cxr-reports.zip") as zf:
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert gzip.GzipFile(fileobj=io.BytesIO(raw)).read().startswith(b"dicom_id,")
