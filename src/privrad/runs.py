"""One run: (dataset, model, method, ε, seed, hyperparameters) → a run folder.

A run folder is the contract between a run and everything downstream (statistics, the book):

==================  ==========================================================================
``config.json``     the full RunConfig, run id, dataset fingerprint, label names, split sizes,
                    model description, privrad and library versions, wall times
``metrics.json``    weighted F1 (the paper's metric) with its bootstrap 95 % CI, macro/micro F1,
                    AUROC, per-label P/R/F1/support/AUROC/threshold (deterministic for a seed)
``privacy.json``    target and spent ε, δ, noise multiplier, sample rate, steps, epochs,
                    n_train, accountant, PLD cross-check and RDP (see privacy.privacy_report)
``predictions.npz`` test split: ids, probabilities, labels, label_mask, decisions, thresholds
``curve.json``      per logical step: loss, lr, batch size; ε spent at checkpoints
``adapter/``        peft ``save_pretrained`` (``lora``); ``model/`` for ``full``
``run.ipynb``       added by the study runner after its notebook finished (not written here)
==================  ==========================================================================

The run id is ``<dataset>__<model>__<method>__eps<ε>__s<seed>__<hash10>`` where the hash covers
every config field (``data_dir`` excluded) and the dataset's content fingerprint: the same config
on the same data maps to the same folder, which is then reused instead of retrained. The folder
is built under a temporary name and renamed into place, so a killed run leaves nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from privrad import __version__
from privrad.config import METHODS, RunConfig, epsilon_label
from privrad.errors import ConfigError, DataError, PrivradWarning
from privrad.io import atomic_dir, atomic_write_json

RUN_FILES = ("config.json", "metrics.json", "privacy.json", "predictions.npz", "curve.json")


class UntrainableLabelWarning(PrivradWarning):
    """A label has no positive example in the training split: the model cannot learn it."""


def _slug(value: str) -> str:
    return "".join(c if c.isalnum() or c in ".-_" else "-" for c in value).strip("-")


def run_id(config: RunConfig | dict, dataset_fingerprint: str) -> str:
    """Human-readable prefix + 10 hex of sha256(config hash, dataset fingerprint)."""
    cfg = normalize_config(config)
    h = hashlib.sha256(f"{cfg.config_hash()}|{dataset_fingerprint}".encode()).hexdigest()[:10]
    eps = "inf" if cfg.epsilon is None else f"{cfg.epsilon:g}"
    return f"{_slug(cfg.dataset)}__{_slug(cfg.model)}__{cfg.method}__eps{eps}__s{cfg.seed}__{h}"


def normalize_config(config: RunConfig | dict) -> RunConfig:
    """A RunConfig with ε = inf written as None (one name for non-private) and checked values."""
    from privrad.privacy import check_epsilon

    cfg = config if isinstance(config, RunConfig) else RunConfig.from_dict(dict(config))
    eps = check_epsilon(cfg.epsilon)
    if eps != cfg.epsilon or type(eps) is not type(cfg.epsilon):  # 1 and 1.0 must hash alike
        cfg = cfg.replace(epsilon=eps)
    return cfg


def validate_config(cfg: RunConfig) -> None:
    """Refuse invalid values before any data is read or anything is written (one sentence each)."""
    from privrad.evaluate import THRESHOLDS
    from privrad.models import get_model_spec
    from privrad.train import GRAD_SAMPLE_MODES

    if cfg.method not in METHODS:
        raise ConfigError(f"unknown method {cfg.method!r}; known methods are: {', '.join(METHODS)}.")
    checks = [
        ("lr", cfg.lr, cfg.lr > 0, "a positive learning rate, e.g. 5e-4"),
        ("max_grad_norm", cfg.max_grad_norm, cfg.max_grad_norm > 0, "a positive clipping norm, e.g. 1.0"),
        ("batch_size", cfg.batch_size, cfg.batch_size >= 1, "a positive integer"),
        ("physical_batch_size", cfg.physical_batch_size, cfg.physical_batch_size >= 1, "a positive integer"),
        ("num_epochs", cfg.num_epochs, cfg.num_epochs > 0, "a positive number"),
        ("max_length", cfg.max_length, cfg.max_length >= 8, "at least 8 tokens"),
        ("lora_r", cfg.lora_r, cfg.lora_r >= 1, "a positive integer"),
        ("warmup_ratio", cfg.warmup_ratio, 0 <= cfg.warmup_ratio < 1, "a fraction in [0, 1)"),
        ("n_bootstrap", cfg.n_bootstrap, cfg.n_bootstrap >= 0, "0 (no CI) or more resamples"),
    ]
    for name, value, ok, what in checks:
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and ok):
            raise ConfigError(f"{name} = {value!r} is invalid; give {what}.")
    if cfg.threshold not in THRESHOLDS:
        raise ConfigError(f"threshold {cfg.threshold!r} is unknown; use one of {', '.join(THRESHOLDS)}.")
    if cfg.accountant not in ("prv", "rdp"):
        raise ConfigError(f"accountant {cfg.accountant!r} is unknown; use 'prv' (default) or 'rdp'.")
    if cfg.grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ConfigError(f"grad_sample_mode {cfg.grad_sample_mode!r} is not supported; use one of {', '.join(GRAD_SAMPLE_MODES)}.")
    spec = get_model_spec(cfg.model)
    if cfg.max_length > spec.max_length:
        raise ConfigError(f"max_length = {cfg.max_length} exceeds model {cfg.model!r}'s limit of {spec.max_length}; lower it.")


def _check_data(cfg: RunConfig, dataset) -> dict:
    splits = {s: dataset.split(s) for s in ("train", "validation", "test")}
    for s, d in splits.items():
        if len(d) == 0:
            raise DataError(f"the {s!r} split of dataset {cfg.dataset!r} is empty; every run needs train, validation and test examples.")
    n_train = len(splits["train"])
    if cfg.batch_size > n_train:
        raise ConfigError(f"batch_size = {cfg.batch_size} is larger than the training split ({n_train} reports); use a batch_size ≤ {n_train}.")
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


@dataclass
class RunResult:
    """A finished run, read from (or just written to) its folder."""

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
    def per_label(self):
        """Per-label precision, recall, F1, support, AUROC and threshold as a DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.metrics["per_label"]).set_index("label")

    def predictions(self) -> dict[str, np.ndarray]:
        with np.load(self.run_dir / "predictions.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def summary(self):
        """One row: what was run, what it achieved and what it spent."""
        import pandas as pd

        m, p, c = self.metrics, self.privacy, self.config
        ci = m.get("weighted_f1_ci95") or [None, None]
        return pd.DataFrame([{
            "dataset": c.dataset, "model": c.model, "method": c.method, "epsilon": epsilon_label(c.epsilon),
            "seed": c.seed, "weighted_f1": m["weighted_f1"], "ci95_low": ci[0], "ci95_high": ci[1],
            "macro_f1": m["macro_f1"], "micro_f1": m["micro_f1"], "macro_auroc": m["macro_auroc"],
            "epsilon_spent": p.get("epsilon"), "delta": p.get("delta"), "noise_multiplier": p.get("noise_multiplier"),
            "steps": p.get("steps"),
        }]).set_index("dataset")


def load_run(run_dir: str | Path) -> RunResult:
    """Read a run folder written by :func:`run`."""
    run_dir = Path(run_dir)
    missing = [f for f in RUN_FILES if not (run_dir / f).exists()]
    if missing:
        raise DataError(f"{run_dir} is not a complete run folder (missing {', '.join(missing)}); run it again with privrad run.")
    read = lambda f: json.loads((run_dir / f).read_text())  # noqa: E731
    info = read("config.json")
    return RunResult(run_dir, info["run_id"], RunConfig.from_dict(info["config"]), read("metrics.json"),
                     read("privacy.json"), read("curve.json")["steps"], info)


def _device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but torch sees no GPU; use device 'cpu' or install a CUDA build of torch.")
    return str(device)


def run(config: RunConfig | dict, *, run_dir: str | Path | None = None, results_dir: str | Path = "results",
        dataset=None, progress: bool = True, cache_dir: str | Path | None = None,
        device: str | None = None) -> RunResult:
    """Train and evaluate one configuration and write its run folder (or reuse an identical one).

    ``dataset``: an already-loaded ReportDataset (its name must equal ``config.dataset``);
    otherwise ``load_dataset(config.dataset, config.data_dir, **config.dataset_options)``.
    ``run_dir`` defaults to ``results_dir/<run_id>``. ``cache_dir`` caches tokenized reports.
    ``device``: where to train (``"cuda"``, ``"cuda:1"``, ``"cpu"``); ``None`` takes the first GPU
    when there is one. The device is not part of the run id (it says where, not what); it is
    recorded in ``config.json``.
    """
    from privrad.data import load_dataset
    from privrad.data.tokenize import EncodedDataset, tokenize_dataset
    from privrad.evaluate import evaluate, thresholds_for
    from privrad.models import build_model, count_parameters, get_model_spec, load_tokenizer, quiet_transformers
    from privrad.privacy import check_delta, default_delta, privacy_report
    from privrad.train import predict_proba, train

    cfg = normalize_config(config)
    validate_config(cfg)
    device = _device(device)
    if dataset is None:
        dataset = load_dataset(cfg.dataset, cfg.data_dir, **cfg.dataset_options)
    elif dataset.name != cfg.dataset:
        raise ConfigError(f"the dataset passed is {dataset.name!r} but the config says dataset = {cfg.dataset!r}; pass the matching dataset or fix the config.")
    splits = _check_data(cfg, dataset)
    n_train = len(splits["train"])
    delta = None
    if cfg.private:
        delta = default_delta(n_train) if cfg.delta is None else check_delta(cfg.delta, n_train)
    rid = run_id(cfg, dataset.fingerprint)
    run_dir = Path(results_dir) / rid if run_dir is None else Path(run_dir)
    if run_dir.exists():
        return _reuse(run_dir, rid)

    t0 = time.perf_counter()
    tok = load_tokenizer(cfg.model)
    enc = {s: EncodedDataset(tokenize_dataset(d, tok, max_length=cfg.max_length, cache_dir=cache_dir), d.labels, d.label_mask)
           for s, d in splits.items()}
    model = build_model(cfg.model, dataset.n_labels, method=cfg.method, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                        lora_dropout=cfg.lora_dropout, lora_targets=cfg.lora_targets, seed=cfg.seed,
                        device=device)
    t_prep = time.perf_counter() - t0
    result = train(model, enc["train"], cfg, delta=delta, progress=progress)
    t1 = time.perf_counter()
    val_probs = predict_proba(result.model, enc["validation"])
    test_probs = predict_proba(result.model, enc["test"])
    test, val = splits["test"], splits["validation"]
    th = thresholds_for(cfg.threshold, val_probs, val.labels, val.label_mask)
    metrics = evaluate(test_probs, test.labels, test.label_mask, dataset.label_names, thresholds=th,
                       n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
    metrics["weighted_f1_at_0.5"] = evaluate(test_probs, test.labels, test.label_mask, dataset.label_names,
                                             thresholds=0.5, n_bootstrap=0)["weighted_f1"]
    metrics["threshold"] = cfg.threshold
    privacy = privacy_report(target_epsilon=cfg.epsilon, delta=delta, noise_multiplier=result.noise_multiplier,
                             sample_rate=result.sample_rate, history=result.history, n_train=n_train,
                             planned_steps=result.planned_steps, batch_size=cfg.batch_size,
                             max_grad_norm=cfg.max_grad_norm if cfg.private else None, accountant=cfg.accountant)
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
        "privrad_version": __version__, "versions": library_versions(), "device": device,
        "runtime": {"prepare_s": t_prep, "train_s": result.seconds, "evaluate_s": time.perf_counter() - t1,
                    "train_steps_per_s": len(result.curve) / max(result.seconds, 1e-9)},
    }
    with atomic_dir(run_dir) as tmp:
        atomic_write_json(tmp / "config.json", info)
        atomic_write_json(tmp / "metrics.json", metrics)
        atomic_write_json(tmp / "privacy.json", privacy)
        atomic_write_json(tmp / "curve.json", {"epsilon_accountant": "pld (checkpoints)", "steps": result.curve})
        np.savez(tmp / "predictions.npz", ids=np.asarray(test.ids, dtype=str), probabilities=test_probs,
                 labels=test.labels, label_mask=test.label_mask, decisions=test_probs >= th[None, :], thresholds=th)
        with quiet_transformers():
            result.model.save_pretrained(tmp / ("adapter" if cfg.method == "lora" else "model"))
    return load_run(run_dir)


def _reuse(run_dir: Path, rid: str) -> RunResult:
    cfg_file = run_dir / "config.json"
    stored = json.loads(cfg_file.read_text()).get("run_id") if cfg_file.exists() else None
    if stored != rid:
        what = f"holds run {stored!r}" if stored else "is not a privrad run folder"
        raise ConfigError(f"{run_dir} already exists and {what}, not {rid!r}; choose another output folder "
                          "or delete that one to re-run.")
    return load_run(run_dir)


# ---------------------------------------------------------------------------------------- CLI


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_epsilon(text: str) -> float | None:
    if text.strip().lower() in ("inf", "none", "null", "∞"):
        return None
    try:
        return float(text)
    except ValueError:
        from privrad.errors import PrivacyError

        raise PrivacyError(f"--epsilon {text!r} is not a number; give e.g. 1, or inf/none for non-private training.") from None


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("run", help="train and evaluate one configuration into a run folder",
                              description="Train and evaluate one (dataset, model, method, epsilon, seed) configuration.")
    p.add_argument("--dataset", help="dataset short name (privrad data list)")
    p.add_argument("--data-dir", help="where the dataset's files are")
    p.add_argument("--model", help="model short name, hub id or local path")
    p.add_argument("--method", help="lora or full")
    p.add_argument("--epsilon", help="target epsilon; inf or none = non-private")
    p.add_argument("--seed", type=int)
    p.add_argument("--config", help="a JSON/YAML file of RunConfig fields (flags override it)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other RunConfig field, e.g. --set lora_r=16 (repeatable)")
    p.add_argument("--out", help="the run folder (default: RESULTS_DIR/<run id>)")
    p.add_argument("--results-dir", default="results", help="parent of run folders (default: results)")
    p.add_argument("--cache-dir", default="data/cache", help="tokenized-report cache (default: data/cache)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: the first GPU if there is one)")
    p.set_defaults(func=_cli_run)


def _cli_run(args) -> int:
    fields: dict[str, Any] = {}
    if args.config:
        import yaml

        try:
            fields.update(yaml.safe_load(Path(args.config).read_text()) or {})
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read --config {args.config!r} ({type(exc).__name__}); give a readable YAML/JSON file.") from None
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE; write e.g. --set lora_r=16.")
        k, v = item.split("=", 1)
        fields[k.strip()] = _parse_value(v)
    for flag, key in (("dataset", "dataset"), ("data_dir", "data_dir"), ("model", "model"), ("method", "method"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            fields[key] = getattr(args, flag)
    if args.epsilon is not None:
        fields["epsilon"] = _parse_epsilon(args.epsilon)
    res = run(RunConfig.from_dict(fields), run_dir=args.out, results_dir=args.results_dir, progress=not args.quiet,
              cache_dir=args.cache_dir, device=args.device)
    m, pr = res.metrics, res.privacy
    eps = "∞" if pr.get("epsilon") is None else f"{pr['epsilon']:.3g} (target {pr['target_epsilon']:g}, δ={pr['delta']:.2g})"
    print(f"{res.run_dir}\nweighted F1 {m['weighted_f1']:.4f}  macro F1 {m['macro_f1']:.4f}  ε spent {eps}")
    return 0
