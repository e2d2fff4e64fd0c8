"""Report simulator: layout-exact copies of a MIMIC-CXR or a CT-RATE download, from a seed.

The study's default data and the tests must exist offline and without credentials, and they
must go through the *real* loaders — so the simulator writes exactly what PhysioNet and Hugging
Face ship (see ``data/README.md``), and ``privrad.data.load_dataset("mimic-cxr", out_dir)``
reads it like a real download (``simulated-mimic-cxr`` does the same and marks the text as not
credentialed).

How labels are drawn
    Label prevalences match the published ones (:data:`CXR_PREVALENCE`, :data:`CT_PREVALENCE`).
    Co-occurrence comes from a Gaussian copula: each label's latent score is a mix of a shared
    "how ill" factor, a factor shared by related findings (e.g. edema, effusion and cardiomegaly;
    arterial and coronary calcification) and noise, thresholded at the quantile that gives the
    target prevalence — so marginals stay exact while related labels co-occur. For MIMIC-CXR,
    ``No Finding`` reports carry no pathology (only, sometimes, support devices); uncertain
    mentions (-1.0) and explicit negatives (0.0, "no pleural effusion") are written as the
    CheXpert labeler would, and blank means not mentioned.

How text is written
    Sections as in the real reports (MIMIC-CXR: indented ``FINAL REPORT``, ``INDICATION``,
    ``COMPARISON``, ``FINDINGS``, ``IMPRESSION``, wrapped lines starting with a space, ``___``
    masks, sometimes no findings or no impression or no headers at all, addenda; CT-RATE: long
    organ-by-organ findings and a short impression, ``Not given.`` for missing fields),
    synonyms and paraphrases, severities and locations, negations, hedges, comparisons with
    prior studies, resolved findings, normal-statement filler and findings outside the label set.

Label noise
    ``label_noise`` is the fraction of each label's positives that the written label file gets
    wrong; as many negatives are flipped to positive so prevalence is kept. Together with hedged
    mentions this keeps a good model clearly below perfect, so the privacy-utility trade-off is
    visible. The text is generated from the noise-free labels.

Determinism
    Same arguments → byte-identical files: numpy's ``default_rng(seed)`` draws the labels,
    ``random.Random(seed)`` the wording, zip entries carry a fixed timestamp and gzip streams
    ``mtime=0``. (Byte identity of the compressed files assumes the same zlib; the loaded
    dataset, and so its fingerprint, is identical everywhere.) The folder is built under a
    temporary name and renamed into place.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import random
import textwrap
import zipfile
from pathlib import Path

import numpy as np
from scipy.stats import norm

from privrad.data.labels import CHEXPERT_LABELS, CT_RATE_LABELS
from privrad.data.simulate_text import (CT_CLINICAL, CT_FILLER, CT_IMPRESSION, CT_ORDER, CT_PHRASES, CT_SLOTS,
                                        CXR_FILLER, CXR_INDICATION, CXR_NORMAL, CXR_OTHER, CXR_PHRASES, CXR_SLOTS)
from privrad.errors import ConfigError
from privrad.io import atomic_dir

KINDS = ("mimic-cxr", "ct-rate")
#: Default sizes, chosen for a CPU study (reports for MIMIC-CXR, scans for CT-RATE).
DEFAULT_N = {"mimic-cxr": 4000, "ct-rate": 2000}
DEFAULT_LABEL_NOISE = 0.05
MARKER = "PRIVRAD_SIMULATED.json"
SIMULATOR_VERSION = 1
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)

#: MIMIC-CXR CheXpert positive rates (issue 2, from the MIMIC-CXR-JPG paper).
CXR_PREVALENCE = {
    "No Finding": 0.33, "Support Devices": 0.29, "Pleural Effusion": 0.24, "Lung Opacity": 0.23,
    "Atelectasis": 0.20, "Cardiomegaly": 0.20, "Edema": 0.12, "Pneumonia": 0.07, "Consolidation": 0.05,
    "Pneumothorax": 0.05, "Enlarged Cardiomediastinum": 0.03, "Lung Lesion": 0.03, "Fracture": 0.02,
    "Pleural Other": 0.01,
}
#: Rate of uncertain (-1.0) mentions among abnormal reports where the label is not positive.
CXR_UNCERTAIN = {
    "Pneumonia": 0.12, "Atelectasis": 0.06, "Edema": 0.06, "Consolidation": 0.05, "Pleural Effusion": 0.04,
    "Lung Opacity": 0.02, "Cardiomegaly": 0.03, "Enlarged Cardiomediastinum": 0.03, "Pneumothorax": 0.01,
    "Lung Lesion": 0.02, "Fracture": 0.01, "Pleural Other": 0.01,
}
#: Rate of explicit negative mentions (0.0) when a label is not positive or uncertain.
CXR_NEGATED = {
    "Pleural Effusion": 0.55, "Pneumothorax": 0.55, "Consolidation": 0.45, "Edema": 0.3, "Pneumonia": 0.2,
    "Cardiomegaly": 0.25, "Lung Opacity": 0.15, "Fracture": 0.1, "Enlarged Cardiomediastinum": 0.1,
    "Atelectasis": 0.03, "Lung Lesion": 0.04, "Pleural Other": 0.01, "Support Devices": 0.02,
}
_CXR_GROUP = {
    "Cardiomegaly": 0, "Edema": 0, "Pleural Effusion": 0, "Enlarged Cardiomediastinum": 0,
    "Atelectasis": 1, "Lung Opacity": 1, "Consolidation": 1, "Pneumonia": 1,
    "Pneumothorax": 2, "Fracture": 2, "Pleural Other": 2, "Lung Lesion": 3,
}

#: CT-RATE positive rates (issue 2).
CT_PREVALENCE = {
    "Medical material": 0.15, "Arterial wall calcification": 0.28, "Cardiomegaly": 0.11,
    "Pericardial effusion": 0.08, "Coronary artery wall calcification": 0.22, "Hiatal hernia": 0.15,
    "Lymphadenopathy": 0.30, "Emphysema": 0.20, "Atelectasis": 0.25, "Lung nodule": 0.45, "Lung opacity": 0.25,
    "Pulmonary fibrotic sequela": 0.25, "Pleural effusion": 0.15, "Mosaic attenuation pattern": 0.08,
    "Peribronchial thickening": 0.10, "Consolidation": 0.15, "Bronchiectasis": 0.10,
    "Interlobular septal thickening": 0.09,
}
_CT_GROUP = {
    "Arterial wall calcification": 0, "Coronary artery wall calcification": 0, "Cardiomegaly": 0,
    "Pericardial effusion": 0, "Emphysema": 1, "Bronchiectasis": 1, "Peribronchial thickening": 1,
    "Mosaic attenuation pattern": 1, "Lung opacity": 2, "Consolidation": 2, "Atelectasis": 2,
    "Pleural effusion": 2, "Interlobular septal thickening": 3, "Pulmonary fibrotic sequela": 3,
    "Lung nodule": 4, "Lymphadenopathy": 4, "Hiatal hernia": 5, "Medical material": 5,
}


def simulate(
    kind: str,
    out_dir: str | os.PathLike,
    *,
    n: int | None = None,
    seed: int = 0,
    label_noise: float = DEFAULT_LABEL_NOISE,
    overwrite: bool = False,
) -> Path:
    """Write a simulated ``kind`` download (``"mimic-cxr"`` or ``"ct-rate"``) to ``out_dir``.

    ``n`` is the number of reports (MIMIC-CXR studies; CT-RATE scans, some written as two
    reconstructions), default :data:`DEFAULT_N`. If ``out_dir`` already holds simulator output
    with exactly these arguments it is left as it is (cheap re-runs of ``make book``); other
    existing content is refused unless ``overwrite=True``. Returns ``out_dir``.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown simulator kind {kind!r}; use one of {', '.join(KINDS)}.")
    n = DEFAULT_N[kind] if n is None else n
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 10 <= n <= 1_000_000:
        raise ConfigError(f"n must be a whole number of reports between 10 and 1000000, not {n!r}.")
    if not (isinstance(label_noise, (int, float)) and 0 <= label_noise <= 0.5):
        raise ConfigError(f"label_noise must be a number between 0 and 0.5, not {label_noise!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative whole number, not {seed!r}.")
    out = Path(out_dir)
    marker = {"kind": kind, "n": int(n), "seed": int(seed), "label_noise": float(label_noise),
              "simulator_version": SIMULATOR_VERSION}
    if out.exists():
        try:
            existing = json.loads((out / MARKER).read_text())
        except (OSError, ValueError):
            existing = None
        if existing == marker:
            return out
        if not overwrite:
            held = (f"simulated {existing.get('kind')} with n={existing.get('n')}, seed={existing.get('seed')}, "
                    f"label_noise={existing.get('label_noise')}" if isinstance(existing, dict) else "something else")
            raise ConfigError(
                f"output folder {str(out)!r} already exists and holds {held}, not {kind} with n={n}, seed={seed}, "
                f"label_noise={label_noise:g}; choose another folder or pass overwrite=True (--overwrite)."
            )
    files = (_simulate_mimic if kind == "mimic-cxr" else _simulate_ct)(int(n), int(seed), float(label_noise))
    files[MARKER] = (json.dumps(marker, indent=2, sort_keys=True) + "\n").encode()
    with atomic_dir(out, overwrite=True) as tmp:
        for rel, data in files.items():
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    return out


# --------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------


def _copula(rng: np.random.Generator, n: int, q: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Correlated binary labels with marginal rates ``q`` (global + group factor copula)."""
    a, b = 0.35, 0.55
    c = np.sqrt(1 - a * a - b * b)
    g = rng.standard_normal(n)[:, None]
    f = rng.standard_normal((n, n_groups))[:, group]
    z = a * g + b * f + c * rng.standard_normal((n, len(q)))
    return z > norm.ppf(1 - np.clip(q, 1e-9, 1 - 1e-9))


def _swap_noise(rng, pos: np.ndarray, eligible_neg: np.ndarray, rate: float) -> np.ndarray:
    """Flip a fraction ``rate`` of positives to negative and as many eligible negatives to
    positive (in expectation), so prevalence is kept."""
    flip_off = pos & (rng.random(pos.shape) < rate)
    n_neg = eligible_neg.sum()
    p_on = min(1.0, rate * pos.sum() / n_neg) if n_neg else 0.0
    flip_on = eligible_neg & (rng.random(pos.shape) < p_on)
    return (pos & ~flip_off) | flip_on


def _gz_csv(header, rows) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return gzip.compress(buf.getvalue().encode(), mtime=0)


def _csv(header, rows) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def _sentence(s: str) -> str:
    s = s.strip()
    return (s[0].upper() + s[1:] + ("" if s.endswith((".", "?")) else ".")) if s else s


class _Words:
    """Phrase picking with ``{slot}`` expansion from a seeded ``random.Random``."""

    def __init__(self, r: random.Random, slots: dict[str, list[str]]):
        self.r, self.slots = r, slots

    def __call__(self, options) -> str:
        s = self.r.choice(options) if isinstance(options, (list, tuple)) else options
        while "{" in s:
            i = s.index("{")
            j = s.index("}", i)
            s = s[:i] + self.r.choice(self.slots[s[i + 1 : j]]) + s[j + 1 :]
        return s

    def chance(self, p: float) -> bool:
        return self.r.random() < p


# --------------------------------------------------------------------------------------
# MIMIC-CXR
# --------------------------------------------------------------------------------------

def _wrap(text: str) -> str:
    return "\n".join(" " + line for line in textwrap.wrap(text, width=76)) or " "


def _cxr_report(w: _Words, state: dict[str, str], nf: bool, icu: bool, other: bool) -> str:
    """One MIMIC-CXR style report from per-label states ('pos', 'neg', 'unc', '')."""
    find, imp = [], []
    comparison = w(["___", "None.", "Chest radiograph from ___.", "___ chest radiographs.", "Prior study from ___."])
    has_prior = comparison not in ("None.",)
    labels = [k for k in CXR_PHRASES if state.get(k)]
    w.r.shuffle(labels)
    for k in labels:
        pos, neg, unc = CXR_PHRASES[k]
        s = state[k]
        phrase = w(pos if s == "pos" else neg if s == "neg" else unc)
        if not has_prior:
            for c in CXR_SLOTS["cmp"]:
                phrase = phrase.replace(f"{c} ", "", 1) if phrase.startswith(c + " ") else phrase
        find.append(_sentence(phrase))
        if s in ("pos", "unc") or (s == "neg" and w.chance(0.3)):
            imp.append(_sentence(phrase if w.chance(0.6) else w(pos if s == "pos" else neg if s == "neg" else unc)))
    if state.get("Cardiomegaly") not in ("pos", "unc") and state.get("Enlarged Cardiomediastinum") not in ("pos", "unc"):
        find.insert(0, _sentence(w(["the cardiomediastinal silhouette is within normal limits",
                                    "heart size and mediastinal contours are normal",
                                    "cardiac and mediastinal silhouettes are stable"])))
    for _ in range(w.r.randint(0, 3)):
        find.append(_sentence(w(CXR_FILLER)))
    if other:
        o = _sentence(w(CXR_OTHER))
        find.append(o)
        if w.chance(0.4):
            imp.append(o)
    if nf:
        imp.insert(0, w(CXR_NORMAL))
    elif not imp:
        imp.append(w(CXR_NORMAL) if other and w.chance(0.5) else "No acute change.")
    if has_prior and w.chance(0.4):
        imp.append(w(["Otherwise, no relevant change compared to the prior study.", "Findings are similar to the prior examination.",
                      "Comparison with the prior study shows no other interval change."]))
    technique = "Portable AP chest radiograph" if icu else w(["Chest PA and lateral", "PA and lateral views of the chest"])
    exam = "CHEST (PORTABLE AP)" if icu else "CHEST (PA AND LAT)"
    head = [" " * 33 + "FINAL REPORT", f" EXAMINATION:  {exam}", " ",
            f" INDICATION:  ___-year-old {w(['man', 'woman'])} with {w(CXR_INDICATION)}.", " ",
            f" TECHNIQUE:  {technique}", " ", f" COMPARISON:  {comparison}", " "]
    find_text, imp_text = " ".join(find), " ".join(imp)
    layout = w.r.random()
    if layout < 0.03:  # no headers at all: the loader falls back to the last paragraph
        body = [" " * 33 + "FINAL REPORT", f" {technique.upper()} COMPARED TO ___:", " ", _wrap(find_text + " " + imp_text)]
    elif layout < 0.13:  # impression only
        body = head + [" IMPRESSION: ", " ", _wrap(find_text + " " + imp_text)]
    elif layout < 0.25:  # findings only
        body = head + [" FINDINGS: ", " ", _wrap(find_text + " " + imp_text)]
    else:
        body = head + [" FINDINGS: ", " ", _wrap(find_text), " ", " IMPRESSION: ", " ", _wrap(imp_text)]
    if w.chance(0.05):
        body += [" ", " NOTIFICATION:  The findings were discussed with Dr. ___ by telephone at ___ on ___."]
    if w.chance(0.03):
        body += [" ", " ADDENDUM:  The study was reviewed again; the ___ line tip is unchanged in position."]
    return "\n".join(body) + "\n"


def _simulate_mimic(n: int, seed: int, noise: float) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    w = _Words(random.Random(seed), CXR_SLOTS)
    L = CHEXPERT_LABELS
    j = {k: i for i, k in enumerate(L)}
    path_labels = [k for k in L if k not in ("No Finding", "Support Devices")]
    p_nf = CXR_PREVALENCE["No Finding"]
    nf = rng.random(n) < p_nf
    ab = ~nf
    state = np.zeros((n, len(L)), dtype=np.int8)  # 1 pos, -1 unc, 2 neg mention, 0 blank
    q = np.array([CXR_PREVALENCE[k] / (1 - p_nf) for k in path_labels])
    pos = _copula(rng, n, q, np.array([_CXR_GROUP[k] for k in path_labels]), 4) & ab[:, None]
    for c, k in enumerate(path_labels):
        state[pos[:, c], j[k]] = 1
        unc = ab & ~pos[:, c] & (rng.random(n) < CXR_UNCERTAIN.get(k, 0))
        state[unc, j[k]] = -1
    sd_nf = 0.15
    sd = np.where(nf, rng.random(n) < sd_nf, rng.random(n) < (CXR_PREVALENCE["Support Devices"] - p_nf * sd_nf) / (1 - p_nf))
    state[sd, j["Support Devices"]] = 1
    state[nf, j["No Finding"]] = 1
    for k, r in CXR_NEGATED.items():
        state[(state[:, j[k]] == 0) & (rng.random(n) < r), j[k]] = 2
    other = rng.random(n) < np.where(nf, 0.12, 0.35)

    # written labels: noise-free truth with prevalence-preserving swap noise
    written = state.copy()
    for k in path_labels + ["Support Devices"]:
        col = state[:, j[k]]
        elig = (col != 1) & (col != -1) & (ab if k != "Support Devices" else True)
        new = _swap_noise(rng, col == 1, elig, noise)
        written[:, j[k]] = np.where(new, 1, np.where(col == 1, 0, col))
    pathology = ((written[:, [j[k] for k in path_labels]] == 1) | (written[:, [j[k] for k in path_labels]] == -1)).any(1)
    nf_new = _swap_noise(rng, nf, ~nf & ~pathology, noise) & ~pathology
    written[:, j["No Finding"]] = np.where(nf_new, 1, 0)

    # patients, studies, images, split
    subjects, studies = _cxr_ids(rng, n)
    split_of_subject = {}
    for s in sorted(set(subjects)):
        u = rng.random()
        split_of_subject[s] = "train" if u < 0.8 else "validate" if u < 0.9 else "test"
    names = {1: "pos", -1: "unc", 2: "neg", 0: ""}
    files: dict[str, bytes] = {}
    zbuf = io.BytesIO()
    label_rows, split_rows = [], []
    val = {1: "1.0", -1: "-1.0", 2: "0.0", 0: ""}
    with zipfile.ZipFile(zbuf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(n):
            st = {k: names[int(state[i, j[k]])] for k in CXR_PHRASES}
            icu = bool(sd[i]) and w.chance(0.7)
            text = _cxr_report(w, st, bool(nf[i]), icu, bool(other[i]))
            subj, study = subjects[i], studies[i]
            rel = f"files/p{str(subj)[:2]}/p{subj}/s{study}.txt"
            data = text.encode()
            files[rel] = data
            info = zipfile.ZipInfo(rel, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
            label_rows.append([subj, study] + [val[int(v)] if not (v == 0 and k == "No Finding") else "" for k, v in zip(L, written[i])])
            for _ in range(1 + int(rng.integers(0, 3))):
                dicom = "-".join(f"{int(x):08x}" for x in rng.integers(0, 2**32, size=5))
                split_rows.append([dicom, study, subj, split_of_subject[subj]])
    files["mimic-cxr-reports.zip"] = zbuf.getvalue()
    label_rows.sort(key=lambda r: (r[0], r[1]))
    files["mimic-cxr-2.0.0-chexpert.csv.gz"] = _gz_csv(["subject_id", "study_id", *L], label_rows)
    files["mimic-cxr-2.0.0-split.csv.gz"] = _gz_csv(["dicom_id", "study_id", "subject_id", "split"], split_rows)
    return files


def _cxr_ids(rng, n: int) -> tuple[list[int], list[int]]:
    """Subject ids (8 digits from 1), several studies for many subjects; study ids (8 digits from 5)."""
    per = []
    while sum(per) < n:
        per.append(1 + int(rng.geometric(0.5)) - 1 if rng.random() < 0.5 else 1 + int(rng.integers(1, 5)))
    per[-1] -= sum(per) - n
    subj_ids = np.sort(rng.choice(np.arange(10_000_000, 20_000_000), size=len(per), replace=False))
    study_ids = rng.choice(np.arange(50_000_000, 60_000_000), size=n, replace=False)
    subjects = [int(s) for s, c in zip(subj_ids, per) for _ in range(c)]
    return subjects, [int(s) for s in study_ids]


# --------------------------------------------------------------------------------------
# CT-RATE
# --------------------------------------------------------------------------------------

def _ct_report(w: _Words, state: dict[str, str]) -> tuple[str, str, str, str]:
    find = [w(CT_FILLER["start"])]
    imp = []
    for part, labels in CT_ORDER:
        sents = []
        for k in labels:
            s = state[k]
            pos, neg, unc = CT_PHRASES[k]
            if s == "pos":
                sents.append(w(pos))
                imp.append(w(CT_IMPRESSION[k]))
            elif s == "unc":
                sents.append(w(unc))
                if w.chance(0.5):
                    imp.append(_sentence(w(unc)))
            elif s == "neg" and neg:
                sents.append(w(neg))
        for f in w.r.sample(CT_FILLER[part], k=min(len(CT_FILLER[part]), w.r.randint(2, 4))):
            sents.append(f)
        w.r.shuffle(sents)
        find += [_sentence(s) for s in sents]
    find += w.r.sample(CT_FILLER["abdomen"], k=w.r.randint(2, 4))
    find += w.r.sample(CT_FILLER["bones"], k=w.r.randint(1, 3))
    if not imp:
        imp = [w(["No significant pathology in the thorax.", "Thoracic CT findings are within normal limits.",
                  "No acute pathology was detected in the thorax."])]
    elif w.chance(0.3):
        imp.append(w(["Other findings are described above.", "Comparison with previous examinations is recommended."]))
    clinical = w(CT_CLINICAL) if w.chance(0.8) else "Not given."
    technique = w(["Non-contrast images were obtained in the axial plane with 1 mm section thickness.",
                   "Thorax CT was performed without contrast; axial, coronal and sagittal reformats were reviewed.",
                   "Not given."]) if w.chance(0.9) else "Not given."
    findings = " ".join(_sentence(f) for f in find)
    impression = " ".join(_sentence(w(s)) for s in imp) if w.chance(0.98) else "Not given."
    return clinical, technique, findings, impression


def _simulate_ct(n: int, seed: int, noise: float) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    w = _Words(random.Random(seed), CT_SLOTS)
    L = CT_RATE_LABELS
    q = np.array([CT_PREVALENCE[k] for k in L])
    truth = _copula(rng, n, q, np.array([_CT_GROUP[k] for k in L]), 6)
    # hedged wording: some positives and as many negatives (in expectation) are written with a hedge
    hedged = np.zeros_like(truth)
    for c in range(len(L)):
        hedged[:, c] = _swap_noise(rng, truth[:, c], ~truth[:, c], 0.08) != truth[:, c]
    negated = ~truth & ~hedged & (rng.random(truth.shape) < 0.35)
    written = np.zeros_like(truth)
    for c in range(len(L)):
        written[:, c] = _swap_noise(rng, truth[:, c], ~truth[:, c], noise)
    # patients (1-2 scans), reconstructions (1-2 per scan), official train/valid by patient
    scans_of = []
    while sum(scans_of) < n:
        scans_of.append(2 if rng.random() < 0.15 else 1)
    scans_of[-1] -= sum(scans_of) - n
    valid_patient = rng.random(len(scans_of)) < 0.15
    counters = {"train": 0, "valid": 0}
    rows = {"train": ([], []), "valid": ([], [])}
    i = 0
    for pi, k in enumerate(scans_of):
        part = "valid" if valid_patient[pi] else "train"
        counters[part] += 1
        for letter in "abcdef"[:k]:
            st = {lab: "pos" if truth[i, c] and not hedged[i, c] else "unc" if hedged[i, c]
                  else "neg" if negated[i, c] else "" for c, lab in enumerate(L)}
            report = _ct_report(w, st)
            for r in range(1, 2 + int(rng.random() < 0.35)):
                vol = f"{part}_{counters[part]}_{letter}_{r}.nii.gz"
                rows[part][0].append([vol, *report])
                rows[part][1].append([vol, *(int(v) for v in written[i])])
            i += 1
    header = ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"]
    rd, ld = "dataset/radiology_text_reports", "dataset/multi_abnormality_labels"
    return {
        f"{rd}/train_reports.csv": _csv(header, rows["train"][0]),
        f"{rd}/validation_reports.csv": _csv(header, rows["valid"][0]),
        f"{ld}/train_predicted_labels.csv": _csv(["VolumeName", *L], rows["train"][1]),
        f"{ld}/valid_predicted_labels.csv": _csv(["VolumeName", *L], rows["valid"][1]),
    }
