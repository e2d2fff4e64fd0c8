"""One run: (dataset, model, method, ε, seed, hyperparameters) → load, tokenize, build, train,
evaluate → a run folder, and ``privrad run``.

:func:`run` is the training core every entry point calls (``privrad.run``, ``privrad run``, the
study's run notebook, the audit's reference runs, bench/). It writes its folder through the one
writer :func:`privrad.runs.write_run` and reuses an identical complete folder instead of training
again (:func:`_reuse`); what a run folder holds, and when it is complete, is :mod:`privrad.runs`.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from privrad.config import RunConfig, validate_config
from privrad.errors import ConfigError, DataError, PrivradWarning
from privrad.gpus import gpu_peak_gb, resolve_device
from privrad.runs import RunResult, read_run, run_id, run_state, write_run


class UntrainableLabelWarning(PrivradWarning):
    """A label has no positive example in the training split: the model cannot learn it."""


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
WARM_UP = "import privrad.pipeline as _privrad_pipeline; _privrad_pipeline.warm_up(); del _privrad_pipeline"


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
