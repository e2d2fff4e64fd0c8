"""MIMIC-CXR (PhysioNet) reports with CheXpert or NegBio labels, read as downloaded.

Layout (``path`` is the folder holding the download, see ``data/README.md``)::

    path/
      files/p10/p10000032/s50414267.txt     reports tree (extracted from the zip), or
      mimic-cxr-reports.zip                 the zip itself (read without extracting)
      mimic-cxr-2.0.0-chexpert.csv.gz       subject_id, study_id, 14 labels (1.0, 0.0, -1.0, blank)
      mimic-cxr-2.0.0-negbio.csv.gz         the same columns from NegBio (``labeler="negbio"``)
      mimic-cxr-2.0.0-split.csv.gz          dicom_id, study_id, subject_id, split (optional)

One example per study (one report). The patient is the subject.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Iterator, Sequence

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
from privrad.data.labels import CHEXPERT_LABELS, DEFAULT_UNCERTAIN, apply_uncertain, check_uncertain
from privrad.errors import ConfigError, DataError

REPORTS_ZIP = "mimic-cxr-reports.zip"
SPLIT_FILE = "mimic-cxr-2.0.0-split.csv.gz"
LABELERS = ("chexpert", "negbio")
TEXT_MODES = ("impression", "findings_impression")
REPORT_SOURCES = ("auto", "tree", "zip")
SPLIT_NAMES = {"train": "train", "validate": "validation", "validation": "validation", "test": "test"}

_REPORT_PATH = re.compile(r"(?:^|/)p(\d{2})/p(\d{8})/s(\d{8})\.txt$")
_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z ,/&()-]*[A-Z)])[ \t]*:", re.M)
_ADDENDUM = re.compile(r"^[ \t]*(?:FINAL[ \t]+)?ADDENDUM\b", re.M)
_TITLE = re.compile(r"^[ \t]*(?:FINAL|PRELIMINARY|WET READ)[ \t]+REPORT[ \t]*$", re.M)
# Headers that name the view describe the whole study: findings (as in MIT-LCP's section parser).
_VIEW_HEADER = re.compile(r"CHEST|PORTABLE|PA AND LAT|AP AND LAT|LATERAL AND|FRONTAL|TWO VIEWS|ONE VIEW|PA VIEW|AP VIEW|RIBS")


def section_kind(header: str) -> str:
    """Normalise a section header: ``impression`` (IMPRESSION, CONCLUSION, FINDINGS/IMPRESSION,
    typos containing IMPRESSION), ``findings`` (FINDINGS, FINDING), ``view`` (a header naming the
    view, e.g. ``CHEST, PA AND LATERAL``: findings when not empty), or the header in lower case."""
    if "IMPRESSION" in header or header.startswith("CONCLUSION"):
        return "impression"
    if "FINDING" in header:
        return "findings"
    if _VIEW_HEADER.search(header):
        return "view"
    return header.lower()


def split_sections(raw: str) -> tuple[dict[str, str], str]:
    """Split a report into ``{section kind: text}`` (see :func:`section_kind`) and its last paragraph.

    Addenda (from a line starting ``ADDENDUM`` or ``FINAL ADDENDUM``) are cut off: they amend
    the signed report after the fact and are not what the labeler read. Sections of the same
    kind have their texts joined.
    """
    raw = raw.replace("\r\n", "\n")
    m = _ADDENDUM.search(raw)
    body = raw[: m.start()] if m else raw
    body = _TITLE.sub("", body)
    sections: dict[str, str] = {}
    heads = list(_HEADER.finditer(body))
    for h, nxt in zip(heads, heads[1:] + [None]):
        key = section_kind(re.sub(r"\s+", " ", h.group(1)).strip())
        content = body[h.end() : nxt.start() if nxt else len(body)]
        sections[key] = (sections.get(key, "") + "\n\n" + content).strip("\n")
    paras = [p for p in re.split(r"\n[ \t]*\n", body) if p.strip()]
    last = _HEADER.sub("", paras[-1], count=1) if paras else ""
    return sections, norm_space(last)


def report_text(raw: str, text: str = "impression") -> str:
    """The text a model reads, by the usual MIMIC-CXR convention: the impression, else the
    findings, else (only when the report has neither section) the last paragraph;
    ``text="findings_impression"`` joins findings and impression (either may be absent).

    Returns ``""`` when a FINDINGS or IMPRESSION header is present but every such section is
    empty: unlike MIT-LCP's script, privrad does not fall back to the last paragraph then,
    because that paragraph is the indication or comparison of an unfinished report, not a
    reading of the image; such reports are dropped and counted.
    """
    sections, last = split_sections(raw)
    impression = norm_space(sections.get("impression", ""))
    findings = norm_space(sections.get("findings", "")) or norm_space(sections.get("view", ""))
    if not any(k in sections for k in ("impression", "findings")) and not findings:
        return last
    if text == "findings_impression":
        return "\n\n".join(t for t in (findings, impression) if t)
    return impression or findings


def _iter_tree(root: Path) -> Iterator[tuple[str, str, str, bytes]]:
    for group in sorted(os.scandir(root), key=lambda e: e.name):
        if not (group.is_dir() and re.fullmatch(r"p\d{2}", group.name)):
            continue
        for subj in sorted(os.scandir(group.path), key=lambda e: e.name):
            if not (subj.is_dir() and re.fullmatch(r"p\d{8}", subj.name)):
                continue
            for f in sorted(os.scandir(subj.path), key=lambda e: e.name):
                if re.fullmatch(r"s\d{8}\.txt", f.name):
                    with open(f.path, "rb") as fh:
                        yield f"files/{group.name}/{subj.name}/{f.name}", subj.name[1:], f.name[1:9], fh.read()


def _iter_zip(path: Path) -> Iterator[tuple[str, str, str, bytes]]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise DataError(
            f"{str(path)!r} is not a zip file; download mimic-cxr-reports.zip again from PhysioNet."
        ) from None
    with zf:
        found = False
        for info in zf.infolist():
            m = _REPORT_PATH.search(info.filename)
            if m is None:
                continue
            found = True
            yield f"{path.name}:{info.filename}", m.group(2), m.group(3), zf.read(info)
        if not found:
            raise DataError(
                f"{str(path)!r} is not a MIMIC-CXR reports zip (no entry like files/p10/p10000032/s50414267.txt); "
                "download mimic-cxr-reports.zip from PhysioNet."
            )


def read_reports(path: Path, source: str = "auto") -> dict[str, tuple[str, str, bytes]]:
    """``{study_id: (subject_id, where, raw bytes)}`` from the tree or the zip."""
    tree, zpath = path / "files", path / REPORTS_ZIP
    if source not in REPORT_SOURCES:
        raise ConfigError(f"unknown reports source {source!r}; use one of {', '.join(REPORT_SOURCES)}.")
    if source == "auto":
        if tree.is_dir():
            source = "tree"
        elif zpath.exists():
            source = "zip"
        else:
            raise DataError(
                f"MIMIC-CXR folder {str(path)!r} has neither a files/ reports tree nor {REPORTS_ZIP}; "
                "put the PhysioNet download there (see data/README.md)."
            )
    if source == "tree":
        it = _iter_tree(require_dir(tree, "MIMIC-CXR reports tree"))
    else:
        it = _iter_zip(require_file(zpath, "MIMIC-CXR reports zip"))
    out: dict[str, tuple[str, str, bytes]] = {}
    for where, subject, study, data in it:
        study, subject = str(int(study)), str(int(subject))
        if study in out:
            raise DataError(
                f"study s{study} appears twice ({out[study][1]} and {where}); keep one copy of each report."
            )
        out[study] = (subject, where, data)
    return out


def load_mimic_cxr(
    path: str | os.PathLike,
    *,
    text: str = "impression",
    uncertain: str = DEFAULT_UNCERTAIN,
    labeler: str = "chexpert",
    reports: str = "auto",
    max_reports: int | None = None,
    seed: int = 0,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
):
    """Load MIMIC-CXR from a PhysioNet download folder.

    Options:
        text: ``"impression"`` (default; the impression, else findings, else the last
            paragraph — the convention of the MIMIC-CXR section script and of the CheXpert
            labels, which were extracted from that text) or ``"findings_impression"``.
        uncertain: ``"ignore"`` (default), ``"positive"`` or ``"negative"``: what an uncertain
            mention (-1.0) becomes. ``ignore`` masks it out of loss and metrics — it adds no label
            noise in either direction (see :data:`privrad.data.labels.DEFAULT_UNCERTAIN`).
            Blank (not mentioned) is always negative.
        labeler: ``"chexpert"`` (default) or ``"negbio"``: which label file to read.
        reports: ``"auto"`` (the ``files/`` tree if present, else the zip), ``"tree"`` or ``"zip"``.
        max_reports: keep a seeded random subset of this many reports (after matching).
        seed: seed of the subsample and of the patient-level split used when
            ``mimic-cxr-2.0.0-split.csv.gz`` is absent.
        split_fractions: (train, validation, test) patient fractions for that seeded split.

    The official split file has one row per image; rows are reduced to one per study
    (``validate`` becomes ``validation``) and a study whose images disagree is refused.
    Reports with no label row, label rows with no report, reports with no split row and reports
    whose chosen text is empty are dropped, counted in ``provenance["counts"]`` and announced in
    one summary line (a :class:`~privrad.data.common.DataWarning` when anything was dropped).
    """
    if text not in TEXT_MODES:
        raise ConfigError(f"unknown text option {text!r} for MIMIC-CXR; use one of {', '.join(TEXT_MODES)}.")
    if labeler not in LABELERS:
        raise ConfigError(f"unknown labeler {labeler!r}; use one of {', '.join(LABELERS)}.")
    check_uncertain(uncertain)
    max_reports = check_max_reports(max_reports)
    fractions = check_fractions(split_fractions)
    root = require_dir(path, "MIMIC-CXR")
    label_path = require_file(root / f"mimic-cxr-2.0.0-{labeler}.csv.gz", "MIMIC-CXR label")
    label_df = read_table(label_path, required=("subject_id", "study_id", *CHEXPERT_LABELS), what="label file")
    values = parse_label_values(
        label_df, CHEXPERT_LABELS, allowed=(1.0, 0.0, -1.0), allow_blank=True, where=f"label file {label_path.name!r}"
    )
    label_keys = [str(int(s)) for s in _int_column(label_df, "study_id", label_path)]
    label_subjects = [str(int(s)) for s in _int_column(label_df, "subject_id", label_path)]
    row_of: dict[str, int] = {}
    for i, k in enumerate(label_keys):
        if k in row_of:
            raise DataError(
                f"label file {label_path.name!r} has study_id {k} in two rows; keep one label row per study."
            )
        row_of[k] = i

    split_of: dict[str, str] | None = None
    split_path = root / SPLIT_FILE
    if split_path.exists():
        split_df = read_table(split_path, required=("study_id", "subject_id", "split"), what="split file")
        split_of = {}
        for study, sp in zip(_int_column(split_df, "study_id", split_path), split_df["split"].str.strip()):
            if sp not in SPLIT_NAMES:
                raise DataError(
                    f"split file {split_path.name!r} column 'split' has the value {sp!r}; "
                    "allowed values are train, validate, test."
                )
            key, name = str(int(study)), SPLIT_NAMES[sp]
            prev = split_of.setdefault(key, name)
            if prev != name:
                raise DataError(
                    f"split file {split_path.name!r} puts images of study {key} in both {prev!r} and {name!r}; "
                    "assign each study to one split."
                )

    raw_reports = read_reports(root, reports)
    counts = {"read": len(raw_reports), "dropped_no_label_row": 0, "unmatched_label_rows": 0, "dropped_empty_text": 0}
    if split_of is not None:
        counts["dropped_no_split_row"] = 0
    ids, patients, texts, rows, splits = [], [], [], [], []
    matched: set[str] = set()
    for study in sorted(raw_reports, key=int):
        subject, where, data = raw_reports[study]
        row = row_of.get(study)
        if row is None or label_subjects[row] != subject:
            counts["dropped_no_label_row"] += 1
            continue
        matched.add(study)
        if split_of is not None and study not in split_of:
            counts["dropped_no_split_row"] += 1
            continue
        body = report_text(decode_utf8(data, f"report {where}"), text)
        if not body:
            counts["dropped_empty_text"] += 1
            continue
        ids.append(f"s{study}")
        patients.append(f"p{subject}")
        texts.append(body)
        rows.append(row)
        splits.append(split_of[study] if split_of is not None else None)
    counts["unmatched_label_rows"] = len(row_of) - len(matched)
    if split_of is None:
        assign = patient_split(patients, fractions=fractions, seed=seed)
        splits = [assign[p] for p in patients]
    labels, mask = apply_uncertain(values[rows] if rows else np.zeros((0, len(CHEXPERT_LABELS))), uncertain)
    options = dict(text=text, uncertain=uncertain, labeler=labeler, reports=reports, max_reports=max_reports,
                   seed=seed, split_fractions=list(fractions))
    return finish(
        "mimic-cxr", path=root, ids=ids, patient_ids=patients, texts=texts, labels=labels, label_mask=mask,
        splits=splits, label_names=CHEXPERT_LABELS, counts=counts, options=options, source="download",
        max_reports=max_reports, seed=seed,
        extra={"split_source": "official" if split_of is not None else f"seeded patient-level split (seed={seed})",
               "label_file": label_path.name},
    )


def _int_column(df, col: str, path: Path) -> np.ndarray:
    raw = df[col].astype(str).str.strip()
    ok = raw.str.fullmatch(r"\d+")
    if not ok.all():
        i = int(np.flatnonzero(~ok.to_numpy())[0])
        raise DataError(
            f"file {path.name!r} column {col!r} has the value {raw.iloc[i]!r} in data row {i + 1}; it must be a whole number."
        )
    return raw.astype(np.int64).to_numpy()


register_dataset(
    "mimic-cxr",
    credentialed=True,
    description="MIMIC-CXR reports (PhysioNet, credentialed) with CheXpert/NegBio labels",
    label_names=CHEXPERT_LABELS,
)(load_mimic_cxr)
