"""Does DP protect the reports? Membership inference and a one-run canary audit of a trained run.

Three attacks, one file (``audit.json`` in the audited run's folder, written by
:func:`privrad.runs.write_audit`):

* **Membership inference** (``membership``) on the run itself: the attacker holds a report and the
  released model and guesses whether the report was a training report. The score is the model's
  log-likelihood of the report's labels (minus its loss: a report seen in training tends to have a
  lower loss). The candidates (:func:`membership_candidates`) are training reports (members) and
  as many held-out test reports of the same distribution (non-members; their probabilities are the
  run's ``predictions.npz``). Reported: ROC AUC with a bootstrap 95 % interval, TPR at 1 % and
  0.1 % FPR, and the ROC curve on a fixed grid.
* **The calibrated attack** (``calibrated_membership``, :func:`calibrated_membership`): the same
  candidates and fields, each score minus the candidate's log-likelihood under reference models
  that never saw any candidate (:func:`reference_runs`: the audited recipe, non-private, trained on
  the training split without the member candidates, once per study and recipe).
* **Canaries and a one-run audit** (:func:`canary_audit`) of Steinke, Nasr and Jagielski (2023,
  "Privacy Auditing with One (1) Training Run", arXiv 2305.08846): ``m`` unique synthetic reports
  with random label vectors, each added to the training split by a fair coin, are trained on in a
  *separate* run of the same configuration (the published run never sees them). Afterwards every
  canary is scored, the attacker guesses "in" for the highest and "out" for the lowest scores and
  abstains on the rest; the number of correct guesses turns into an empirical lower bound on ε at
  a stated confidence (:func:`privrad.audit_bounds.one_run_epsilon`): the largest ε for which an (ε, δ)-DP training
  would make that many correct guesses less likely than ``1 - confidence``.

What the bound says: if the audited run were (ε, δ)-DP with ε below the bound, a result at least
this good would have had probability below ``1 - confidence``. It can refute a privacy claim (a
bound above the accounted ε means a bug, or bad luck at that confidence), never prove one: a weak
attack gives a small bound for any model.

The bound and the attacks' ROC summaries are computed in :mod:`privrad.audit_bounds`.

Every number in ``audit.json`` is an aggregate (no per-report score): for a private run on
credentialed data they are still functions of the training split outside ε, as ``audit.json``'s
``covered_by_epsilon: false`` says.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from privrad.audit_bounds import one_run_audit, roc_summary
from privrad.errors import ConfigError, DataError


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class AuditSettings:
    """What an audit does: the profile's ``audit:`` block, or ``privrad audit``'s flags.

    ``canaries``: m, the synthetic reports of the one-run audit (0 skips it and its training run);
    ``confidence``: of the ε lower bound; ``members``: at most this many training reports (and as
    many test reports) scored by the membership-inference attacks; ``reference_models``: non-private
runs of the audited recipe without the candidates, for the calibrated attack (0 skips it; a
study trains them once per dataset and recipe, shared by its audited runs); ``n_bootstrap``: resamples of the
    AUC intervals; ``seed``: canary texts, labels, coins and the attacker's samples.
    ``runs``: which runs of a study are audited — a mapping of config field → value or list of
    values that a run must all match (e.g. ``{model: minilm-l3, epsilon: [1, null]}``); empty:
    every run. ``privrad audit RUN_DIR`` ignores it.
    """

    canaries: int = 64
    confidence: float = 0.95
    members: int = 500
    reference_models: int = 1
    n_bootstrap: int = 1000
    seed: int = 0
    runs: dict | None = None

    @classmethod
    def from_dict(cls, raw: Any, *, where: str) -> "AuditSettings":
        if raw is None or raw is False:
            raise ConfigError(f"{where}: `audit` is off; give a mapping such as {{canaries: 64}} to turn it on.")
        if raw is True:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: `audit` must be a mapping such as {{canaries: 64, runs: {{epsilon: [1, null]}}}}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown audit key(s) {', '.join(unknown)}; known keys are: {', '.join(sorted(known))}.")
        s = cls(**raw)
        s.check(where=where)
        return s

    def check(self, *, where: str = "audit") -> "AuditSettings":
        def whole(name: str, low: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"{where}: audit {name} = {v!r} must be a whole number ≥ {low}.")

        whole("canaries", 0)
        whole("members", 2)
        whole("reference_models", 0)
        whole("n_bootstrap", 0)
        whole("seed", 0)
        if self.canaries and self.canaries < 4:
            raise ConfigError(f"{where}: audit canaries = {self.canaries} is too few to guess on; give 0 (no canary run) or at least 4.")
        c = self.confidence
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.5 <= c < 1:
            raise ConfigError(f"{where}: audit confidence = {c!r} must be a number in [0.5, 1), e.g. 0.95.")
        if self.runs is not None and not isinstance(self.runs, dict):
            raise ConfigError(f"{where}: audit runs = {self.runs!r} must be a mapping of config fields to values, e.g. {{epsilon: [1, null]}}.")
        if self.runs:
            from privrad.config import FIELDS

            bad = sorted(set(self.runs) - set(FIELDS))
            if bad:
                raise ConfigError(f"{where}: audit runs names unknown config field(s) {', '.join(bad)}; use fields such as model, epsilon, dataset.")
        return self

    def selects(self, config) -> bool:
        """Whether a run of this config is audited (every key of ``runs`` matches)."""
        cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        for key, want in (self.runs or {}).items():
            values = want if isinstance(want, list) else [want]
            have = cfg.get(key)
            if not any(_same(have, v) for v in values):
                return False
        return True

    def recorded(self) -> dict:
        """What audit.json records of the settings (``runs`` is the study's business)."""
        d = asdict(self)
        d.pop("runs")
        return d


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b))
    return a == b


# ----------------------------------------------------------------------------- scoring a run's model


def label_log_likelihood(probabilities: np.ndarray, labels: np.ndarray, label_mask: np.ndarray) -> np.ndarray:
    """Per report: the mean log-likelihood of its (unmasked) labels under the model — minus the
    training loss (:func:`privrad.train.example_losses`), the membership score."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1 - 1e-7)
    y, mask = np.asarray(labels, dtype=np.float64), np.asarray(label_mask, dtype=bool)
    ll = (y * np.log(p) + (1 - y) * np.log1p(-p)) * mask
    return ll.sum(1) / np.maximum(mask.sum(1), 1)


def model_probabilities(run, reports, *, device: str = "cpu") -> np.ndarray:
    """The probabilities the run's saved weights give ``reports`` (a ReportDataset), exactly as
    the run computed its test predictions (same tokenizer, max_length, precision)."""
    from privrad.data.tokenize import EncodedDataset, tokenize_dataset
    from privrad.models import load_tokenizer
    from privrad.runs import load_model
    from privrad.train import predict_proba, resolve_precision

    cfg = run.config
    model = load_model(run, device=device)
    enc = EncodedDataset(tokenize_dataset(reports, load_tokenizer(cfg.model), max_length=cfg.max_length), reports.labels,
                         reports.label_mask)
    precision = run.info.get("precision") or resolve_precision(cfg.precision, device)
    return predict_proba(model, enc, precision=precision)


def run_dataset(run, dataset=None):
    """The reports ``run`` trained on — ``dataset`` if given, else read again from the run's
    ``data_dir`` — refused in one sentence unless their fingerprint is the run's."""
    from privrad.data import load_dataset

    cfg = run.config
    if dataset is not None:
        ds = dataset
    else:
        try:
            ds = load_dataset(cfg.dataset, cfg.data_dir, **cfg.dataset_options)
        except (ConfigError, DataError) as exc:
            raise DataError(f"{run.run_dir}: the run's dataset cannot be read again ({str(exc).rstrip('.')}); "
                            "the audit needs the training reports.") from None
    if ds.fingerprint != run.info["dataset_fingerprint"]:
        raise DataError(f"{run.run_dir}: the reports in {cfg.data_dir} changed since this run trained (dataset fingerprint differs); "
                        "audit a run of the current data, or restore the data it trained on.")
    return ds


def membership_candidates(dataset, settings: AuditSettings) -> tuple[np.ndarray, np.ndarray]:
    """The reports both membership attacks score: at most ``settings.members`` training reports
    (members) and as many test reports (non-members), drawn at random with ``settings.seed``.
    Returns their positions in the training and in the test split."""
    n_train, n_test = int((dataset.splits == "train").sum()), int((dataset.splits == "test").sum())
    n = min(settings.members, n_train, n_test)
    rng = np.random.default_rng(settings.seed)
    return np.sort(rng.choice(n_train, n, replace=False)), np.sort(rng.choice(n_test, n, replace=False))


def candidate_log_likelihoods(run, dataset, candidates, *, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """:func:`label_log_likelihood` of the candidates under the run's model: members (training
    reports, scored with the saved weights) and non-members (test reports, from the run's
    ``predictions.npz``)."""
    members = dataset.split("train").subset(candidates[0])
    pred, pick = run.predictions(), candidates[1]
    if list(pred["ids"][pick]) != [dataset.split("test").ids[i] for i in pick]:
        raise DataError(f"{run.run_dir}: predictions.npz does not hold the test reports of the audited data; audit a run of this data.")
    nonmember = label_log_likelihood(pred["probabilities"][pick], pred["labels"][pick], pred["label_mask"][pick])
    member = label_log_likelihood(model_probabilities(run, members, device=device), members.labels, members.label_mask)
    return member, nonmember


def attack_summary(score: str, member, nonmember, settings: AuditSettings, **more) -> dict:
    """What audit.json records of a membership attack on the candidates (the same fields for every attack)."""
    return {"score": score, "members": "training reports", "nonmembers": "test reports", **more,
            **roc_summary(member, nonmember, n_bootstrap=settings.n_bootstrap, seed=settings.seed)}


# ----------------------------------------------------------------------------- the calibrated attack


REFERENCE_DIR = "audit-reference"  # beside the audited run folders: <results>/audit-reference/<key>/<i>/


def reference_config(config, settings: AuditSettings, i: int = 0):
    """Reference model ``i``'s configuration: the audited run's recipe, non-private (a reference
    stands for a model that never saw the candidates; noise would only blur the difficulty it
    measures), seed ``settings.seed + i`` (not the audited run's: one reference serves every seed and ε)."""
    return config.replace(epsilon=None, seed=settings.seed + i)


def reference_dataset(dataset, candidates):
    """The audited data without the member candidates: every candidate (member or not) is OUT for
    a reference model; the test split, which the run evaluates on, is kept."""
    drop = np.flatnonzero(dataset.splits == "train")[candidates[0]]
    return dataset.subset(np.setdiff1d(np.arange(len(dataset)), drop))


def reference_runs(run, dataset, settings: AuditSettings, candidates, *, device: str | None = None) -> tuple[list, dict]:
    """The ``settings.reference_models`` reference runs, trained through :func:`privrad.pipeline.run`
    into ``audit-reference/<key>/<i>/`` beside the audited run folder (the study's results folder),
    or reused from there. ``key`` is reference 0's run id, a function of the recipe (ε and seed
    aside), the candidates left out and the data: the runs of a study that differ only in ε or seed
    share it. Returns the reference runs and what audit.json records of them."""
    from privrad.io import cache_lock
    from privrad.pipeline import run as train_run
    from privrad.runs import read_run, run_id

    data = reference_dataset(dataset, candidates)
    key = run_id(reference_config(run.config, settings), data.fingerprint)
    folder = run.run_dir.parent / REFERENCE_DIR / key
    refs, trained, seconds = [], 0, 0.0
    for i in range(settings.reference_models):
        d = folder / str(i)
        with cache_lock(d):  # two audits at once: the second waits and reuses the first one's model
            if not d.exists():
                for tmp in folder.glob(f".{i}.*.tmp"):  # a killed training's leftover
                    shutil.rmtree(tmp, ignore_errors=True)
                t0 = time.perf_counter()
                train_run(reference_config(run.config, settings, i), run_dir=d, dataset=data, progress=False, device=device)
                trained, seconds = trained + 1, seconds + time.perf_counter() - t0
            refs.append(read_run(d))
    return refs, {"models": len(refs), "folder": f"{REFERENCE_DIR}/{key}", "epsilon": None,
                  "n_train": int((data.splits == "train").sum()), "trained_now": trained, "seconds": seconds}


def calibrated_membership(run, dataset, settings: AuditSettings, candidates, member, nonmember, *,
                          device: str | None = None, score_device: str = "cpu") -> dict:
    """The difficulty-calibrated attack (Watson et al. 2022, "On the Importance of Difficulty
    Calibration in Membership Inference Attacks"): each candidate's log-likelihood under the
    audited run (``member``, ``nonmember``: :func:`candidate_log_likelihoods`) minus its mean
    log-likelihood under reference models that never saw it (:func:`reference_runs`). A report that
    is easy for every model no longer looks like a member. With references that all leave the
    candidates out and one global variance this is the ranking of offline LiRA (Carlini et al. 2022)."""
    refs, info = reference_runs(run, dataset, settings, candidates, device=device)
    ref = [candidate_log_likelihoods(r, dataset, candidates, device=score_device) for r in refs]
    ref_member, ref_nonmember = np.mean([m for m, _ in ref], 0), np.mean([n for _, n in ref], 0)
    return attack_summary("label log-likelihood minus the reference models' mean (difficulty-calibrated)",
                          member - ref_member, nonmember - ref_nonmember, settings, reference=info)


# ----------------------------------------------------------------------------- canaries


def canary_words(model: str) -> list[str]:
    """The words canaries are made of: the whole lower-case words (4 to 12 letters) of the
    model's tokenizer vocabulary, so that each is one token and no report text is involved."""
    from privrad.models import load_tokenizer

    vocab = load_tokenizer(model).get_vocab()
    words = sorted(w for w in vocab if w.isascii() and w.isalpha() and w.islower() and 4 <= len(w) <= 12)
    if len(words) < 50:
        raise ConfigError(f"the tokenizer of model {model!r} has only {len(words)} whole words to make canaries of; audit a model with a word vocabulary.")
    return words


def make_canaries(dataset, m: int, *, words: Sequence[str], seed: int = 0, length: int = 16):
    """``m`` canaries for ``dataset``: unique synthetic reports (``length`` random words each) with
    uniformly random label vectors (every label observed), each its own patient, all in the
    training split. Returns (canaries as a ReportDataset, coins: which ones training sees)."""
    from privrad.data.base import ReportDataset

    rng = np.random.default_rng([seed, 0xCA4A])
    texts = [" ".join(rng.choice(words, length)) for _ in range(m)]
    labels = rng.integers(0, 2, size=(m, dataset.n_labels)).astype(np.float32)
    included = rng.random(m) < 0.5
    ids = tuple(f"canary-{i:04d}" for i in range(m))
    canaries = ReportDataset(name=dataset.name, label_names=dataset.label_names, ids=ids, patient_ids=ids, texts=texts,
                             labels=labels, label_mask=np.ones_like(labels, dtype=bool), splits=np.array(["train"] * m),
                             credentialed=False, provenance={"canaries": m, "seed": seed})
    return canaries, included


def with_reports(dataset, extra):
    """``dataset`` with the reports of ``extra`` appended (the training split's order kept, the
    extra reports last: cached frozen-layer features of the original reports are reused)."""
    import dataclasses

    taken = set(dataset.ids) & set(extra.ids)
    if taken:
        raise DataError(f"dataset {dataset.name!r} already has the id {sorted(taken)[0]!r}; canary ids must be new.")
    return dataclasses.replace(
        dataset, ids=dataset.ids + extra.ids, patient_ids=dataset.patient_ids + extra.patient_ids,
        texts=dataset.texts + extra.texts, labels=np.concatenate([dataset.labels, extra.labels]),
        label_mask=np.concatenate([dataset.label_mask, extra.label_mask]),
        splits=np.concatenate([dataset.splits, extra.splits]),
        provenance={**dataset.provenance, "with": extra.provenance})


def canary_audit(run, dataset, settings: AuditSettings, *, device: str | None = None, workdir: str | Path | None = None) -> dict:
    """Train the run's configuration again with ``settings.canaries`` canaries, each added by a
    fair coin, score every canary with the trained weights and audit the guesses (the one-run
    audit). The canary run is written to a temporary folder under ``workdir`` and deleted; only
    its privacy numbers and the audit's aggregates are kept."""
    from privrad.pipeline import run as train_run
    from privrad.runs import read_run

    m = settings.canaries
    canaries, included = make_canaries(dataset, m, words=canary_words(run.config.model), seed=settings.seed)
    train_with = with_reports(dataset, canaries.subset(np.flatnonzero(included)))
    workdir = Path(workdir) if workdir is not None else run.run_dir.parent
    tmp = Path(tempfile.mkdtemp(prefix=".audit-", suffix=".tmp", dir=workdir))  # a killed sweep's leftover is cleaned like a run's
    try:
        t0 = time.perf_counter()
        canary_run = train_run(run.config, run_dir=tmp / "canary-run", dataset=train_with, progress=False, device=device)
        seconds = time.perf_counter() - t0
        canary_run = read_run(canary_run.run_dir)
        probs = model_probabilities(canary_run, canaries, device=canary_run.info["device"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    scores = label_log_likelihood(probs, canaries.labels, canaries.label_mask)
    p = canary_run.privacy
    from privrad.privacy import default_delta

    delta = p["delta"] if p.get("delta") else default_delta(p.get("n_train") or len(train_with.split("train")))
    audit = one_run_audit(scores, included, delta=delta, confidence=settings.confidence)
    return {**audit, "score": "mean label log-likelihood of the canary's random labels",
            "auc": roc_summary(scores[included], scores[~included], n_bootstrap=settings.n_bootstrap, seed=settings.seed),
            "run": {"epsilon": p["epsilon"], "epsilon_spent": p["epsilon_spent"], "delta": p["delta"],
                    "noise_multiplier": p["noise_multiplier"], "steps": p["steps"], "n_train": p.get("n_train"),
                    "weighted_f1": canary_run.metrics["weighted_f1"], "seconds": seconds},
            "example": canaries.texts[0]}


def audit_run(run_dir: str | Path, settings: AuditSettings | None = None, *, device: str | None = None,
              dataset=None) -> dict:
    """Audit a complete run folder and write its ``audit.json``; returns the document.
    ``dataset``: the run's data already loaded (else read from the run's ``data_dir``; either way
    it must be the data the run trained on)."""
    from privrad import __version__
    from privrad.runs import read_run, write_audit

    settings = (settings or AuditSettings()).check()
    run = read_run(run_dir)
    if run.config.method not in ("lora", "full"):  # pragma: no cover - guarded by config validation
        raise ConfigError(f"{run_dir}: cannot audit method {run.config.method!r}.")
    weights = run.run_dir / ("adapter" if run.config.method == "lora" else "model")
    if not weights.is_dir():
        raise DataError(f"{run.run_dir}: the run kept no weights ({weights.name}/ is missing); the audit needs the trained model.")
    dataset = run_dataset(run, dataset)
    from privrad.gpus import resolve_device

    score_device = resolve_device(device)  # the first GPU when there is one, as a run picks it
    t0 = time.perf_counter()
    doc: dict[str, Any] = {"run_id": run.run_id, "settings": settings.recorded(), "privrad_version": __version__,
                           "epsilon": run.privacy["epsilon"], "epsilon_spent": run.privacy["epsilon_spent"],
                           "delta": run.privacy["delta"],
                           "covered_by_epsilon": False,
                           "note": "audit numbers are computed from the training split (and a canary run and reference models) and are not covered by ε"}
    candidates = membership_candidates(dataset, settings)
    member, nonmember = candidate_log_likelihoods(run, dataset, candidates, device=score_device)
    doc["membership"] = attack_summary("mean label log-likelihood (minus the loss)", member, nonmember, settings,
                                       seconds=time.perf_counter() - t0)
    t0 = time.perf_counter()
    doc["calibrated_membership"] = calibrated_membership(run, dataset, settings, candidates, member, nonmember, device=device,
                                                         score_device=score_device) if settings.reference_models else None
    if doc["calibrated_membership"]:
        doc["calibrated_membership"]["seconds"] = time.perf_counter() - t0
    doc["canaries"] = canary_audit(run, dataset, settings, device=device) if settings.canaries else None
    write_audit(run.run_dir, doc)
    return doc


# ----------------------------------------------------------------------------- gathering audits


def audit_table(run_dirs: Sequence[str | Path]):
    """One row per audited run (runs without ``audit.json`` are left out): what ran, the
    membership attack's and the calibrated attack's AUC with its interval and TPR at low FPR
    (``calibrated_*`` NaN where the audit ran none), and the canary audit — its
    AUC, the empirical ε lower bound with its confidence and guesses, beside the canary run's
    accounted ε. The analysis notebook, the audit chapter and the tests read this."""
    import pandas as pd

    from privrad.runs import read_audit, read_run

    rows = []
    for d in run_dirs:
        doc = read_audit(d)
        if doc is None:
            continue
        r = read_run(d)
        c, mi, can = r.config, doc["membership"], doc.get("canaries") or {}
        lo, hi = mi.get("auc_ci95") or (math.nan, math.nan)
        cal = doc.get("calibrated_membership") or {}
        calo, cahi = cal.get("auc_ci95") or (math.nan, math.nan)
        clo, chi = (can.get("auc") or {}).get("auc_ci95") or (math.nan, math.nan)
        rows.append({"run_id": r.run_id, "run_dir": str(r.run_dir), "dataset": c.dataset, "model": c.model, "method": c.method,
                     "epsilon": math.inf if c.epsilon is None else float(c.epsilon), "seed": c.seed,
                     "epsilon_spent": math.inf if doc["epsilon_spent"] is None else float(doc["epsilon_spent"]),
                     "membership_auc": mi["auc"], "membership_auc_ci95_low": lo, "membership_auc_ci95_high": hi,
                     "membership_tpr_at_1pct_fpr": mi["tpr_at_fpr"]["0.01"], "membership_tpr_at_0.1pct_fpr": mi["tpr_at_fpr"]["0.001"],
                     "calibrated_membership_auc": cal.get("auc", math.nan), "calibrated_membership_auc_ci95_low": calo,
                     "calibrated_membership_auc_ci95_high": cahi,
                     "calibrated_membership_tpr_at_1pct_fpr": (cal.get("tpr_at_fpr") or {}).get("0.01", math.nan),
                     "calibrated_membership_tpr_at_0.1pct_fpr": (cal.get("tpr_at_fpr") or {}).get("0.001", math.nan),
                     "reference_models": (cal.get("reference") or {}).get("models", 0),
                     "n_members": mi["n_members"], "n_nonmembers": mi["n_nonmembers"],
                     "canaries": can.get("canaries"), "canary_auc": (can.get("auc") or {}).get("auc", math.nan),
                     "canary_auc_ci95_low": clo, "canary_auc_ci95_high": chi,
                     "epsilon_lower_bound": can.get("epsilon_lower_bound", math.nan), "confidence": can.get("confidence"),
                     "guesses": can.get("guesses"), "correct": can.get("correct"),
                     "canary_run_epsilon_spent": (math.inf if (can.get("run") or {}).get("epsilon_spent") is None
                                                  else float(can["run"]["epsilon_spent"])) if can else math.nan,
                     "roc_fpr": mi["roc"]["fpr"], "roc_tpr": mi["roc"]["tpr"],
                     "calibrated_roc_tpr": (cal.get("roc") or {}).get("tpr")})
    return pd.DataFrame(rows)


def refuted(table) -> "Any":
    """The audited runs whose empirical lower bound exceeds the ε accounted for their canary run:
    a claim refuted at the audit's confidence (a bug in the DP machinery, or bad luck)."""
    return table[table["epsilon_lower_bound"] > table["canary_run_epsilon_spent"]] if len(table) else table


# ----------------------------------------------------------------------------- `privrad audit`


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("audit", help="membership inference and a one-run canary audit of a run folder (writes audit.json)",
                              description="Audit a trained run: a loss membership-inference attack on the run, and a one-run "
                                          "canary audit (a separate training run with canaries) giving an empirical ε lower bound.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a complete run folder (results/<profile>/<run id>)")
    d = AuditSettings()
    p.add_argument("--canaries", type=int, default=d.canaries, help=f"canaries of the one-run audit; 0 skips it (default {d.canaries})")
    p.add_argument("--confidence", type=float, default=d.confidence, help=f"confidence of the ε lower bound (default {d.confidence})")
    p.add_argument("--members", type=int, default=d.members, help=f"training reports scored by the attacks (default {d.members})")
    p.add_argument("--reference-models", type=int, default=d.reference_models,
                   help=f"non-private reference runs without the candidates, for the calibrated attack; 0 skips it (default {d.reference_models})")
    p.add_argument("--n-bootstrap", type=int, default=d.n_bootstrap, help=f"resamples of the AUC interval (default {d.n_bootstrap})")
    p.add_argument("--seed", type=int, default=d.seed, help="canaries, coins and samples (default 0)")
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: where the run trained)")
    p.add_argument("--quiet", action="store_true", help="print only the path of audit.json")
    p.set_defaults(func=_cli_audit)


def _cli_audit(args) -> int:
    from privrad.runs import AUDIT_FILE

    settings = AuditSettings(canaries=args.canaries, confidence=args.confidence, members=args.members,
                             reference_models=args.reference_models, n_bootstrap=args.n_bootstrap, seed=args.seed).check(where="privrad audit")
    doc = audit_run(args.run_dir, settings, device=args.device)
    print(Path(args.run_dir) / AUDIT_FILE)
    if not args.quiet:
        print(summary_line(doc))
    return 0


def summary_line(doc: dict) -> str:
    """One line: the attack's AUC and the empirical ε lower bound beside the accounted ε."""
    mi = doc["membership"]
    lo, hi = mi.get("auc_ci95") or (math.nan, math.nan)
    eps = "∞" if doc["epsilon_spent"] is None else f"{doc['epsilon_spent']:.3g}"
    text = f"membership AUC {mi['auc']:.3f} [{lo:.3f}, {hi:.3f}] on {mi['n_members']}+{mi['n_nonmembers']} reports"
    cal = doc.get("calibrated_membership")
    if cal:
        lo, hi = cal.get("auc_ci95") or (math.nan, math.nan)
        text += f"; calibrated AUC {cal['auc']:.3f} [{lo:.3f}, {hi:.3f}] ({cal['reference']['models']} reference model(s))"
    c = doc.get("canaries")
    if c:
        text += (f"; canaries: ε ≥ {c['epsilon_lower_bound']:.3g} at {c['confidence']:.0%} ({c['correct']}/{c['guesses']} "
                 f"guesses right, {c['canaries']} canaries; canary run accounted ε {_eps(c['run']['epsilon_spent'])})")
    return text + f"; this run's accounted ε {eps}"


def _eps(e) -> str:
    return "∞" if e is None else f"{e:.3g}"
