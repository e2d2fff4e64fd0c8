"""The run-folder contract: what a run folder holds, its one writer, its one reader, its one rule of completeness.

A run folder is the contract between a run and everything downstream (the sweep, statistics,
the book). This module is its one writer (:func:`write_run`), its one reader (:func:`read_run`)
and its one rule of completeness (:func:`run_state`); nothing else opens these files. The run
itself (load, tokenize, build, train, evaluate, then :func:`write_run`) is :func:`privrad.pipeline.run`.

==================  ==========================================================================
``config.json``     ``run_format``, ``run_id``, ``config`` (the full RunConfig), ``config_hash``,
                    ``dataset_fingerprint``, ``label_names``, ``split_sizes``, ``credentialed``,
                    ``model`` (name, source, family, stands_in_for, pretrained, parameters),
                    ``n_truncated``, ``privrad_version``, ``versions``, ``device``,
                    ``precision`` and ``physical_batch_size`` as used (``auto`` resolved; with
                    ``physical_batch_source``), ``runtime`` (seconds: prepare, train, of which
                    calibrate, setup before the first step, first step and ε accounting in the
                    loop, evaluate; ``gpu_peak_gb``). A private run on credentialed data keeps
                    only the validation and test ``n_truncated`` and no ``gpu_peak_gb``
``metrics.json``    ``weighted_f1`` (the paper's metric) and ``weighted_f1_ci95 = [low, high]``
                    (bootstrap over test reports; absent when ``n_bootstrap = 0``), ``macro_f1``,
                    ``micro_f1``, ``macro_auroc``, ``per_label`` (label, P/R/F1, support,
                    AUROC, threshold), ``threshold``, ``weighted_f1_at_0.5``, and the learned-
                    nothing reference ``learned_nothing_weighted_f1`` and ``…_at_0.5`` (:func:`privrad.
                    evaluate.learned_nothing`: the text ignored, every report scored with the validation
                    split's prevalence)
``privacy.json``    ``epsilon`` (the target; null = non-private) and ``epsilon_spent``, ``delta``,
                    ``noise_multiplier``, ``sample_rate``, ``steps``, ``epochs``, ``n_train``,
                    ``accountant``, the PLD ``cross_check`` and ``rdp_epsilon`` (see
                    :func:`privrad.privacy.privacy_report`)
``predictions.npz`` test split: ids, probabilities, labels, label_mask, decisions, thresholds
``curve.json``      ``steps``: per logical step loss, lr, batch size; ``epsilon_spent`` at checkpoints
                    (a private run on credentialed data keeps only step, lr and ε: see
                    :func:`withhold_training_statistics`)
``adapter/``        peft ``save_pretrained`` (``lora``); ``model/`` for ``full``
``run.ipynb``       added by the study runner after its notebook finished (not written here)
``audit.json``      optional, added to a complete folder by ``privrad audit`` (:func:`write_audit`;
                    :mod:`privrad.audit`): membership-inference AUC (loss and calibrated
                    attacks), the canary run's empirical ε lower bound; not part of completeness
==================  ==========================================================================

A folder is *complete* when every file above (but the weights and the notebook) is present,
parses and holds its required fields (:data:`REQUIRED`); a truncated or missing file makes it
incomplete, and :func:`run_state` names the file. privrad's own writes are atomic (the folder
is built under a temporary name and renamed into place), so incomplete folders come from
copies, full disks or hand edits. A folder of an earlier format (``run_format`` below
:data:`RUN_FORMAT`) is refused with one sentence.

The run id is ``<dataset>__<model>__<method>__eps<ε>__s<seed>__<hash10>`` where the hash covers
every config field (``data_dir`` excluded) and the dataset's content fingerprint: the same config
on the same data maps to the same folder, which is then reused instead of retrained.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from privrad import __version__
from privrad.config import RunConfig, epsilon_label, validate_config
from privrad.errors import DataError
from privrad.io import atomic_dir, atomic_write_json

#: Version of the run-folder layout below; a folder of another format is refused, never guessed at.
RUN_FORMAT = 2
#: The files every run folder holds (the weights and the study's notebook aside).
RUN_FILES = ("config.json", "metrics.json", "privacy.json", "predictions.npz", "curve.json")
#: A file added to a complete run folder later (never part of completeness): the audit.
AUDIT_FILE = "audit.json"
#: The fields of audit.json that readers rely on (:func:`write_audit` refuses a document without them).
AUDIT_REQUIRED = ("run_id", "settings", "epsilon", "epsilon_spent", "membership", "canaries")
#: The fields readers rely on, per file: the writer refuses to write without them and
#: :func:`run_state` calls a folder without them incomplete.
REQUIRED = {
    "config.json": ("run_format", "run_id", "config", "dataset_fingerprint", "label_names", "privrad_version"),
    "metrics.json": ("weighted_f1", "weighted_f1_at_0.5", "macro_f1", "micro_f1", "per_label"),
    "privacy.json": ("epsilon", "epsilon_spent", "delta", "noise_multiplier", "sample_rate", "steps"),
    "curve.json": ("steps",),
    "predictions.npz": ("ids", "probabilities", "labels", "label_mask", "decisions", "thresholds"),
}
#: The one vocabulary for the state of a run: no folder yet; a folder that is not complete
#: (a file missing, truncated or without a required field); the last attempt failed (its
#: notebook is in ``failed/``); complete.
RUN_STATES = ("missing", "incomplete", "failed", "complete")


def _slug(value: str) -> str:
    return "".join(c if c.isalnum() or c in ".-_" else "-" for c in value).strip("-")


def run_id(config: RunConfig | dict, dataset_fingerprint: str) -> str:
    """Human-readable prefix + 10 hex of sha256(config hash, dataset fingerprint)."""
    cfg = validate_config(config)
    h = hashlib.sha256(f"{cfg.config_hash()}|{dataset_fingerprint}".encode()).hexdigest()[:10]
    eps = "inf" if cfg.epsilon is None else f"{cfg.epsilon:g}"
    return f"{_slug(cfg.dataset)}__{_slug(cfg.model)}__{cfg.method}__eps{eps}__s{cfg.seed}__{h}"


# ----------------------------------------------------------------------------- the contract


@dataclass(frozen=True)
class RunState:
    """Whether a run folder is complete, and if not, why (naming the folder and the file)."""

    complete: bool
    problem: str | None = None
    notebook: bool = False  # run.ipynb placed by the study runner
    info: dict | None = field(default=None, repr=False, compare=False)  # config.json, when readable


def _read_json(path: Path) -> dict:
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


def run_state(run_dir: str | Path, *, run_id: str | None = None) -> RunState:
    """The one rule for "is this run complete": every file of :data:`RUN_FILES` exists, parses
    and holds the fields of :data:`REQUIRED`, in the current :data:`RUN_FORMAT` (and, given
    ``run_id``, of that run). Used by the sweep, ``study status``, the statistics and the book."""
    run_dir = Path(run_dir)
    notebook = (run_dir / "run.ipynb").is_file()
    if not run_dir.is_dir():
        return RunState(False, f"{run_dir} does not exist")
    info = None
    for name in RUN_FILES:
        path = run_dir / name
        if not path.is_file():
            return RunState(False, f"{run_dir}: {name} is missing", notebook, info)
        try:
            if name.endswith(".npz"):
                with np.load(path, allow_pickle=False) as z:
                    keys = set(z.files)
            else:
                doc = _read_json(path)
                keys = set(doc)
        except Exception as exc:  # noqa: BLE001 - any unreadable file makes the folder incomplete
            return RunState(False, f"{run_dir}: {name} cannot be read ({type(exc).__name__}: it is truncated or corrupt)", notebook, info)
        if name == "config.json":
            info = doc
            if doc.get("run_format") != RUN_FORMAT:
                version = doc.get("privrad_version", "before 0.2")
                return RunState(False, f"{run_dir}: config.json is in the run-folder format of privrad {version}, "
                                       f"not format {RUN_FORMAT}; run it again with this privrad (delete the folder first)", notebook, info)
            if run_id is not None and doc.get("run_id") != run_id:
                return RunState(False, f"{run_dir}: config.json holds run {doc.get('run_id')!r}, not {run_id!r}", notebook, info)
        missing = [k for k in REQUIRED[name] if k not in keys]
        if missing:
            return RunState(False, f"{run_dir}: {name} lacks {', '.join(missing)}", notebook, info)
    return RunState(True, None, notebook, info)


@dataclass
class RunResult:
    """A complete run, read from (or just written to) its folder."""

    run_dir: Path
    run_id: str
    config: RunConfig
    metrics: dict
    privacy: dict
    curve: list[dict]
    info: dict  # the rest of config.json (fingerprint, labels, versions, times)

    @property
    def weighted_f1(self) -> float:
        return self.metrics["weighted_f1"]

    @property
    def weighted_f1_ci95(self) -> tuple[float, float]:
        """The bootstrap 95 % interval (NaN, NaN without bootstrap)."""
        ci = self.metrics.get("weighted_f1_ci95")
        return (float(ci[0]), float(ci[1])) if ci else (float("nan"), float("nan"))

    @property
    def per_label(self):
        """Per-label precision, recall, F1, support, AUROC and threshold as a DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.metrics["per_label"]).set_index("label")

    def predictions(self) -> dict[str, np.ndarray]:
        with np.load(self.run_dir / "predictions.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def row(self) -> dict[str, Any]:
        """One flat row in the names of the contract (``epsilon`` = target, ``epsilon_spent``)."""
        m, p, c = self.metrics, self.privacy, self.config
        lo, hi = self.weighted_f1_ci95
        return {"run_id": self.run_id, "run_dir": str(self.run_dir), "dataset": c.dataset, "model": c.model,
                "method": c.method, "epsilon": c.epsilon, "seed": c.seed, "weighted_f1": m["weighted_f1"],
                "weighted_f1_ci95_low": lo, "weighted_f1_ci95_high": hi, "weighted_f1_at_0.5": m["weighted_f1_at_0.5"],
                "macro_f1": m["macro_f1"], "micro_f1": m["micro_f1"], "macro_auroc": m.get("macro_auroc"),
                "learned_nothing_weighted_f1": m.get("learned_nothing_weighted_f1"),
                "learned_nothing_weighted_f1_at_0.5": m.get("learned_nothing_weighted_f1_at_0.5"), "n_train": p.get("n_train"),
                "epsilon_spent": p["epsilon_spent"], "delta": p["delta"], "noise_multiplier": p["noise_multiplier"],
                "sample_rate": p["sample_rate"], "steps": p["steps"], "dp_randomness": p.get("dp_randomness"),
                "privacy_unit": p.get("privacy_unit")}

    def summary(self):
        """One row: what was run, what it achieved and what it spent (ε shown as a label)."""
        import pandas as pd

        row = self.row()
        row["epsilon"] = epsilon_label(row["epsilon"])
        row.pop("run_dir")
        return pd.DataFrame([row]).set_index("dataset")


def read_run(run_dir: str | Path) -> RunResult:
    """Read a complete run folder; an incomplete one is refused in one sentence naming the file."""
    run_dir = Path(run_dir)
    state = run_state(run_dir)
    if not state.complete:
        raise DataError(f"{state.problem}; it is not a complete run folder.")
    read = lambda f: _read_json(run_dir / f)  # noqa: E731
    info = state.info
    return RunResult(run_dir, info["run_id"], RunConfig.from_dict(info["config"]), read("metrics.json"),
                     read("privacy.json"), read("curve.json")["steps"], info)


#: What a private run on credentialed data keeps of each training step: the step, the learning
#: rate (a function of the step) and ε spent at checkpoints (a function of σ, q and the step).
CURVE_PUBLIC_KEYS = ("step", "lr", "epsilon_spent")


def withhold_training_statistics(info: dict, privacy: dict, curve: list[dict]) -> tuple[dict, dict, list[dict]]:
    """Drop from a run's files the training statistics its ``release_terms`` withhold.

    :func:`privrad.privacy.release_terms` decides (private runs on credentialed data withhold
    every entry of :data:`privrad.privacy.TRAINING_STATISTICS`); this is where it is enforced, for
    every run folder privrad writes: per-step loss and realised batch size leave ``curve.json``
    (only :data:`CURVE_PUBLIC_KEYS` stay), the empty-batch count leaves ``privacy.json``, the
    training split's truncation count and the peak GPU memory (``runtime.gpu_peak_gb``: it
    grows with the longest training reports) leave ``config.json``. The training loop does its
    part before: no loss on its progress bar, an auto physical batch probed without the
    training lengths (``privrad.train.train(..., withheld=...)``)."""
    withheld = set((privacy.get("release_terms") or {}).get("withheld") or ())
    if not withheld:
        return info, privacy, curve
    from privrad.privacy import PUBLIC_SPLITS

    if withheld & {"loss", "batch_size"}:
        curve = [{k: v for k, v in row.items() if k in CURVE_PUBLIC_KEYS} for row in curve]
    if "empty_batches" in withheld:
        privacy = {k: v for k, v in privacy.items() if k != "empty_batches"}
    if "n_truncated" in withheld and isinstance(info.get("n_truncated"), dict):
        info = {**info, "n_truncated": {k: v for k, v in info["n_truncated"].items() if k in PUBLIC_SPLITS}}
    if "longest_report" in withheld and isinstance(info.get("runtime"), dict):
        info = {**info, "runtime": {k: v for k, v in info["runtime"].items() if k != "gpu_peak_gb"}}
    return info, privacy, curve


def write_run(run_dir: str | Path, *, info: dict, metrics: dict, privacy: dict, curve: list[dict],
              predictions: dict[str, np.ndarray], save_model: Callable[[Path], None] | None = None) -> RunResult:
    """The one writer of run folders: builds the folder under a temporary name and renames it
    into place (a killed run leaves nothing). ``info`` is config.json without ``run_format`` and
    ``privrad_version`` (added here); every file must hold the fields of :data:`REQUIRED`.
    ``save_model(folder)`` writes the weights (``adapter/`` or ``model/``). What the run's
    ``privacy["release_terms"]["withheld"]`` names is not written (:func:`withhold_training_statistics`)."""
    info = {**info, "run_format": RUN_FORMAT, "privrad_version": __version__}
    info, privacy, curve = withhold_training_statistics(info, privacy, curve)
    docs = {"config.json": info, "metrics.json": metrics, "privacy.json": privacy, "curve.json": {"steps": curve},
            "predictions.npz": predictions}
    for name, doc in docs.items():
        missing = [k for k in REQUIRED[name] if k not in doc]
        if missing:  # a bug in the caller, not a user error
            raise ValueError(f"write_run: {name} lacks {', '.join(missing)} (see privrad.runs.REQUIRED)")
    with atomic_dir(run_dir) as tmp:
        for name in ("config.json", "metrics.json", "privacy.json", "curve.json"):
            atomic_write_json(tmp / name, docs[name])
        np.savez(tmp / "predictions.npz", **{k: np.asarray(v) for k, v in predictions.items()})
        if save_model is not None:
            save_model(tmp)
    return read_run(run_dir)


def write_audit(run_dir: str | Path, doc: dict) -> Path:
    """Add ``audit.json`` to a complete run folder (atomically; it replaces an earlier audit).
    The folder must be complete and ``doc["run_id"]`` its run; see :mod:`privrad.audit`."""
    run_dir = Path(run_dir)
    state = run_state(run_dir)
    if not state.complete:
        raise DataError(f"{state.problem}; only a complete run folder can be audited.")
    missing = [k for k in AUDIT_REQUIRED if k not in doc]
    if missing:  # a bug in the caller
        raise ValueError(f"write_audit: audit.json lacks {', '.join(missing)} (see privrad.runs.AUDIT_REQUIRED)")
    if doc["run_id"] != state.info["run_id"]:
        raise ValueError(f"write_audit: the audit is of run {doc['run_id']!r}, the folder holds {state.info['run_id']!r}")
    return atomic_write_json(run_dir / AUDIT_FILE, doc)


def read_audit(run_dir: str | Path) -> dict | None:
    """A run folder's audit.json, or None when the run was not audited (or its audit is of
    another run, or unreadable: an audit is then simply missing, never half-read)."""
    path = Path(run_dir) / AUDIT_FILE
    if not path.is_file():
        return None
    try:
        doc = _read_json(path)
    except Exception:  # noqa: BLE001 - a damaged audit counts as no audit
        return None
    info = run_state(run_dir).info or {}
    if any(k not in doc for k in AUDIT_REQUIRED) or doc.get("run_id") != info.get("run_id"):
        return None
    return doc


def load_model(run: "RunResult", *, device: str = "cpu"):
    """The trained model a run folder keeps, in eval mode: the base model rebuilt exactly as the
    run built it (same seed: same random parts) with the saved LoRA adapter, or the saved full
    model. Its predictions on the test split equal ``predictions.npz`` (tested)."""
    from privrad.models import build_model, quiet_transformers

    cfg = run.config
    with quiet_transformers(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        if cfg.method == "lora":
            from peft import PeftModel

            base = build_model(cfg.model, len(run.info["label_names"]), method="full", seed=cfg.seed, device=device)
            model = PeftModel.from_pretrained(base, run.run_dir / "adapter")
        else:
            from transformers import AutoModelForSequenceClassification

            model = AutoModelForSequenceClassification.from_pretrained(run.run_dir / "model")
    model.to(device)
    model.eval()
    return model

