"""One run: (dataset, model, method, ε, seed, hyperparameters) → a run folder, and the run-folder contract.

A run folder is the contract between a run and everything downstream (the sweep, statistics,
the book). This module is its one writer (:func:`write_run`), its one reader (:func:`read_run`)
and its one rule of completeness (:func:`run_state`); nothing else opens these files.

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
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from privrad import __version__
from privrad.config import RunConfig, epsilon_label, validate_config
from privrad.errors import ConfigError, DataError, PrivradWarning
from privrad.gpus import gpu_peak_gb, resolve_device
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


class UntrainableLabelWarning(PrivradWarning):
    """A label has no positive example in the training split: the model cannot learn it."""


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


# ----------------------------------------------------------------------------- one run


def _check_data(cfg: RunConfig, dataset, *, withheld=()) -> dict:
    """The three splits of ``dataset``, refused if one is empty; a warning for each label without a
    positive training report — unless the run withholds ``train_prevalence`` (the warning would
    publish a training statistic in the run's notebook; ``privrad data describe`` says it on the
    terminal)."""
    splits = {s: dataset.split(s) for s in ("train", "validation", "test")}
    for s, d in splits.items():
        if len(d) == 0:
            raise DataError(f"the {s!r} split of dataset {cfg.dataset!r} is empty; every run needs train, validation and test examples.")
    if "train_prevalence" in withheld:
        return splits
    tr = splits["train"]
    positives = (tr.labels * tr.label_mask).sum(0)
    for name, p in zip(dataset.label_names, positives):
        if p == 0:
            warnings.warn(f"label {name!r} has no positive example in the training split of {cfg.dataset!r}; "
                          "it cannot be learned and its F1 will be 0.", UntrainableLabelWarning, stacklevel=3)
    return splits


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "peft", "opacus", "dp-accounting", "scikit-learn", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover
            out[pkg] = "missing"
    return out


#: What a kernel started ahead of its run executes first (:class:`privrad.executors.WarmKernel`).
WARM_UP = "import privrad.runs as _privrad_runs; _privrad_runs.warm_up(); del _privrad_runs"


def warm_up() -> None:
    """Import what the run notebook needs and start CUDA when there is a GPU: the fixed cost a
    run would otherwise pay first, done while the slot's previous run still trains."""
    import matplotlib.pyplot  # noqa: F401
    import opacus  # noqa: F401
    import pandas  # noqa: F401
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    import privrad.data.describe  # noqa: F401
    import privrad.evaluate  # noqa: F401
    import privrad.features  # noqa: F401
    import privrad.privacy  # noqa: F401
    import privrad.train  # noqa: F401

    if torch.cuda.is_available():
        torch.zeros(1, device="cuda")  # the CUDA context and torch's kernels


def run(config: RunConfig | dict, *, run_dir: str | Path | None = None, results_dir: str | Path = "results",
        dataset=None, progress: bool = True, cache_dir: str | Path | None = None,
        device: str | None = None) -> RunResult:
    """Train and evaluate one configuration and write its run folder (or reuse an identical one).

    ``dataset``: an already-loaded ReportDataset (its name must equal ``config.dataset``);
    otherwise ``load_dataset(config.dataset, config.data_dir, **config.dataset_options)``.
    ``run_dir`` defaults to ``results_dir/<run_id>``. ``cache_dir`` caches tokenized reports and
    frozen-layer features (default: ``$PRIVRAD_CACHE_DIR/tokens`` and ``…/features``, so the runs
    of a study tokenize each dataset once).
    ``device``: where to train (``"cuda"``, ``"cuda:1"``, ``"cpu"``); ``None`` takes the first GPU
    when there is one. The device is not part of the run id (it says where, not what); it is
    recorded in ``config.json``.
    """
    from privrad.data import load_dataset
    from privrad.data.tokenize import EncodedDataset, tokenize_dataset
    from privrad.evaluate import evaluate, learned_nothing, thresholds_for
    from privrad.features import Classifier, frozen_features
    from privrad.io import privrad_cache
    from privrad.models import build_model, count_parameters, get_model_spec, load_tokenizer, quiet_transformers
    from privrad.accounting import default_delta
    from privrad.privacy import privacy_report, withheld_statistics
    from privrad.train import predict_proba, train

    cfg = validate_config(config)
    device = resolve_device(device)
    if dataset is None:
        dataset = load_dataset(cfg.dataset, cfg.data_dir, **cfg.dataset_options)
    elif dataset.name != cfg.dataset:
        raise ConfigError(f"the dataset passed is {dataset.name!r} but the config says dataset = {cfg.dataset!r}; pass the matching dataset or fix the config.")
    # what this run must not publish about its training split (release_terms' ``withheld``)
    withheld = withheld_statistics(private=cfg.private, credentialed=bool(dataset.credentialed))
    splits = _check_data(cfg, dataset, withheld=withheld)
    n_train = len(splits["train"])
    cfg = validate_config(cfg, n_train=n_train)
    units, n_patients = None, None
    if cfg.private and cfg.privacy_unit == "patient":  # the unit of privacy: the patient of each training report
        units = np.unique(np.asarray(splits["train"].patient_ids), return_inverse=True)[1]
        n_patients = int(units.max()) + 1
    # δ well below 1 / (number of units the guarantee protects)
    delta = (default_delta(n_patients or n_train) if cfg.delta is None else cfg.delta) if cfg.private else None
    rid = run_id(cfg, dataset.fingerprint)
    run_dir = Path(results_dir) / rid if run_dir is None else Path(run_dir)
    if run_dir.exists():
        return _reuse(run_dir, rid)

    from privrad.progress import Reporter

    report = Reporter()  # the sweep's progress line for this run (a no-op outside a sweep)
    report.phase("tokenizing and building the model")
    t0 = time.perf_counter()
    tok = load_tokenizer(cfg.model)
    token_cache = cache_dir if cache_dir is not None else privrad_cache("tokens")  # shared by the runs of a dataset
    enc = {s: EncodedDataset(tokenize_dataset(d, tok, max_length=cfg.max_length, cache_dir=token_cache), d.labels, d.label_mask)
           for s, d in splits.items()}
    model = build_model(cfg.model, dataset.n_labels, method=cfg.method, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                        lora_dropout=cfg.lora_dropout, lora_targets=cfg.lora_targets, lora_layers=cfg.lora_layers,
                        train_pooler=cfg.train_pooler, seed=cfg.seed, device=device)
    net = Classifier(model)
    if net.frozen_layers:  # LoRA in the top layers only: the frozen layers run once per report, cached
        where = cache_dir if cache_dir is not None else privrad_cache("features")
        for split, e in enc.items():
            e.features = frozen_features(net, e.encoded, cache_dir=where, key_value=split == "train")
    t_prep = time.perf_counter() - t0
    result = train(net, enc["train"], cfg, delta=delta, progress=progress, units=units, withheld=withheld)
    t1 = time.perf_counter()
    report.phase("evaluating")
    precision = result.info["precision"]
    val_probs = predict_proba(net, enc["validation"], precision=precision)
    test_probs = predict_proba(net, enc["test"], precision=precision)
    test, val = splits["test"], splits["validation"]
    th = thresholds_for(cfg.threshold, val_probs, val.labels, val.label_mask)
    metrics = evaluate(test_probs, test.labels, test.label_mask, dataset.label_names, thresholds=th,
                       n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
    metrics["weighted_f1_at_0.5"] = evaluate(test_probs, test.labels, test.label_mask, dataset.label_names,
                                             thresholds=0.5, n_bootstrap=0)["weighted_f1"]
    metrics["threshold"] = cfg.threshold
    for key, policy in (("learned_nothing_weighted_f1", cfg.threshold), ("learned_nothing_weighted_f1_at_0.5", "fixed")):
        # the validation split's prevalence (declared public), never the training split's
        metrics[key] = learned_nothing(val.labels, val.label_mask, val.labels, val.label_mask, test.labels, test.label_mask,
                                       threshold=policy)
    privacy = privacy_report(target_epsilon=cfg.epsilon, delta=delta, noise_multiplier=result.noise_multiplier,
                             sample_rate=result.sample_rate, history=result.history, n_train=n_train,
                             planned_steps=result.planned_steps, batch_size=cfg.batch_size,
                             max_grad_norm=cfg.max_grad_norm if cfg.private else None, accountant=cfg.accountant,
                             dp_randomness=cfg.dp_randomness, privacy_unit=cfg.privacy_unit, n_patients=n_patients,
                             credentialed=bool(dataset.credentialed), threshold=cfg.threshold)
    privacy["steps"] = result.steps if cfg.private else len(result.curve)
    privacy["empty_batches"] = result.info["empty_batches"]
    spec = get_model_spec(cfg.model)
    info = {
        "run_id": rid, "config": cfg.to_dict(), "config_hash": cfg.config_hash(),
        "dataset_fingerprint": dataset.fingerprint, "label_names": list(dataset.label_names),
        "split_sizes": {s: len(d) for s, d in splits.items()}, "credentialed": bool(dataset.credentialed),
        "model": {"name": spec.name, "source": spec.source,
                  "family": spec.family, "stands_in_for": spec.stands_in_for, "pretrained": spec.pretrained,
                  "parameters": count_parameters(result.model)},
        "n_truncated": {s: e.encoded.n_truncated for s, e in enc.items()},
        "versions": library_versions(), "device": device,
        "precision": precision, "physical_batch_size": result.info["physical_batch_size"],
        "physical_batch_source": result.info["physical_batch_source"],
        "runtime": {"prepare_s": t_prep, "train_s": result.seconds,
                    **{k: result.info[k] for k in ("calibrate_s", "setup_s", "first_step_s", "accounting_s")},
                    "evaluate_s": time.perf_counter() - t1, "gpu_peak_gb": gpu_peak_gb(device),
                    "train_steps_per_s": len(result.curve) / max(result.seconds, 1e-9)},
    }
    predictions = {"ids": np.asarray(test.ids, dtype=str), "probabilities": test_probs, "labels": test.labels,
                   "label_mask": test.label_mask, "decisions": test_probs >= th[None, :], "thresholds": th}

    def save_model(folder: Path) -> None:
        with quiet_transformers():
            result.model.save_pretrained(folder / ("adapter" if cfg.method == "lora" else "model"))

    return write_run(run_dir, info=info, metrics=metrics, privacy=privacy, curve=result.curve,
                     predictions=predictions, save_model=save_model)


def _reuse(run_dir: Path, rid: str) -> RunResult:
    """An existing folder is returned only if it is this run, complete; otherwise refused."""
    state = run_state(run_dir)
    stored = (state.info or {}).get("run_id")
    if stored is not None and stored != rid:
        raise ConfigError(f"{run_dir} already exists and holds run {stored!r}, not {rid!r}; choose another output folder "
                          "or delete that one to re-run.")
    if not state.complete:
        raise ConfigError(f"{run_dir} already exists but is not a complete run folder ({state.problem.split(': ', 1)[-1]}); "
                          "delete it to run again.")
    return read_run(run_dir)


# ----------------------------------------------------------------------------- `privrad run`


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("run", help="train and evaluate one configuration into a run folder",
                              description="Train and evaluate one (dataset, model, method, epsilon, seed) configuration.")
    p.add_argument("--dataset", help="dataset short name (privrad data list)")
    p.add_argument("--data-dir", help="where the dataset's files are")
    p.add_argument("--model", help="model short name, hub id or local path")
    p.add_argument("--method", help="lora or full")
    p.add_argument("--epsilon", help="target epsilon; inf or null = non-private")
    p.add_argument("--seed", type=int)
    p.add_argument("--config", help="a JSON/YAML file of RunConfig fields (flags override it)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other RunConfig field, e.g. --set lora_r=16 (repeatable; values are YAML)")
    p.add_argument("--out", help="the run folder (default: RESULTS_DIR/<run id>)")
    p.add_argument("--results-dir", default="results", help="parent of run folders (default: results)")
    p.add_argument("--cache-dir", default="data/cache", help="tokenized-report cache (default: data/cache)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: the first GPU if there is one)")
    p.set_defaults(func=_cli_run)


def _cli_run(args) -> int:
    from privrad.profiles import parse_assignments, parse_value, read_yaml_file

    fields: dict[str, Any] = {}
    if args.config:
        doc = read_yaml_file(args.config, what="--config") or {}
        if not isinstance(doc, dict):
            raise ConfigError(f"--config {args.config} must hold a mapping of RunConfig fields (e.g. lr: 1e-3).")
        fields.update(doc)
    fields.update(parse_assignments(args.set, flag="--set"))
    for key in ("dataset", "data_dir", "model", "method", "seed"):
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    if args.epsilon is not None:
        fields["epsilon"] = parse_value(args.epsilon)
    res = run(fields, run_dir=args.out, results_dir=args.results_dir, progress=not args.quiet,
              cache_dir=args.cache_dir, device=args.device)
    m, pr = res.metrics, res.privacy
    eps = "∞" if pr["epsilon_spent"] is None else f"{pr['epsilon_spent']:.3g} (target {pr['epsilon']:g}, δ={pr['delta']:.2g})"
    print(f"{res.run_dir}\nweighted F1 {m['weighted_f1']:.4f}  macro F1 {m['macro_f1']:.4f}  ε spent {eps}")
    return 0
