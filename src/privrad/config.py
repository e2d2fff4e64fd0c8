"""Run configuration: plain data, one name per idea.

The same names are used everywhere: in code, in notebook ``parameters`` cells, in study
profiles (``studies/*.yml``), on the command line (``--set lora_r=16``) and in the book.
Non-private training is ``epsilon = None`` (shown as ∞), never a magic number.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from privrad.errors import ConfigError, PrivacyError, PrivradError

METHODS = ("lora", "full")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class RunConfig:
    # what is trained on what
    dataset: str = "simulated-mimic-cxr"
    data_dir: str = "data/simulated/mimic-cxr"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    model: str = "minilm-l6"
    method: str = "lora"  # "lora" | "full"
    seed: int = 0
    # privacy: epsilon None = non-private; delta None = privrad's default (see accounting.default_delta)
    epsilon: float | None = 1.0
    delta: float | None = None
    max_grad_norm: float = 1.0
    accountant: str = "prv"
    grad_sample_mode: str = "hooks"
    # "secure": Poisson batches and noise from secret OS entropy (a DP release); "reproducible":
    # seeded from `seed` (teaching, tests: the adapter is then not a DP release)
    dp_randomness: str = "secure"
    privacy_unit: str = "report"  # what ε protects: one "report", or one "patient" with all their reports
    # optimisation
    num_epochs: float = 3
    batch_size: int = 64  # expected logical batch size; sample_rate = batch_size / n_train
    physical_batch_size: int | str = 32  # memory-bound micro-batch; does not change the maths; "auto": from GPU memory
    precision: str = "auto"  # "fp32" | "bf16" (autocast) | "auto": bf16 on a GPU that has it, fp32 on a CPU
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    max_length: int = 128
    # LoRA
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] | None = None  # None = the model family's default (query, value)
    lora_layers: int | None = None  # LoRA in the top lora_layers layers only (BERT family); None = every layer
    train_pooler: bool = True  # under LoRA, train the pooler with the classifier (the head), or keep it frozen
    # evaluation
    threshold: str = "tuned"  # "fixed" (0.5) | "tuned" (per label, on the validation split)
    n_bootstrap: int = 1000

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["lora_targets"] is not None:
            d["lora_targets"] = list(d["lora_targets"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(
                f"unknown run parameter(s) {', '.join(unknown)}; known parameters are: {', '.join(sorted(names))}."
            )
        d = dict(d)
        if d.get("lora_targets") is not None:
            d["lora_targets"] = tuple(d["lora_targets"])
        return cls(**d)

    def replace(self, **changes: Any) -> "RunConfig":
        return self.from_dict({**self.to_dict(), **changes})

    def validate(self, *, n_train: int | None = None, where: str | None = None) -> "RunConfig":
        """This config checked and normalised (see :func:`validate_config`)."""
        return validate_config(self, n_train=n_train, where=where)

    @property
    def private(self) -> bool:
        return self.epsilon is not None

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of every field (the data_dir path excluded: the
        dataset is identified by its content fingerprint instead)."""
        d = self.to_dict()
        d.pop("data_dir")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


#: Every RunConfig field name, in order: the run notebook's parameters, profile keys, --set keys.
FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))


def epsilon_label(epsilon: float | None) -> str:
    """How an epsilon is shown: ``∞`` for non-private, otherwise ``%g``."""
    return "∞" if epsilon is None else f"{epsilon:g}"


# ----------------------------------------------------------------------------- validation

_HINTS = typing.get_type_hints(RunConfig)
_JSON_SCALARS = (str, int, float, bool, type(None))


def _passable(value: Any) -> bool:
    """What papermill can write into a parameters cell faithfully: JSON-like values.
    (A tuple, for one, would arrive as the *string* "(1, 2)"; a YAML date as a date object.)"""
    if isinstance(value, _JSON_SCALARS):
        return not (isinstance(value, float) and not math.isfinite(value))
    if isinstance(value, list):
        return all(_passable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _passable(v) for k, v in value.items())
    return False


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


def _type_errors(values: dict[str, Any]) -> str | None:
    for key, value in values.items():
        if key not in _HINTS:
            continue  # unknown keys are reported by RunConfig.from_dict with the known ones
        if not _passable(value):
            return (f"parameter {key} = {value!r} ({type(value).__name__}) cannot be passed to a notebook by papermill; "
                    "use a string, number, boolean, null, list or mapping.")
        if not _type_ok(value, _HINTS[key]):
            return f"parameter {key} = {value!r} is not of the expected type {_HINTS[key]}; fix it in the profile, --set or --config."
    return None


def validate_config(config: "RunConfig | dict[str, Any]", *, n_train: int | None = None, where: str | None = None) -> RunConfig:
    """The one validation of a run configuration, called by every entry point (``privrad.run``,
    ``privrad run``, the run notebook through ``privrad.run``, study profiles and ``--set``).

    Returns the normalised config (ε = inf written as None, the one name for non-private;
    1 and 1.0 alike). Refuses, in one sentence naming the value (prefixed by ``where``): unknown
    names, types papermill cannot pass, invalid values, an unknown model or a ``max_length``
    beyond the model's limit; given ``n_train``, a ``delta`` ≥ 1/n_train and a ``batch_size``
    larger than the training split."""
    from privrad.accounting import check_delta, check_epsilon

    try:
        d = config.to_dict() if isinstance(config, RunConfig) else dict(config)
        if "epsilon" in d:
            d["epsilon"] = check_epsilon(d["epsilon"])
        problem = _type_errors(d)
        if problem:
            raise ConfigError(problem)
        cfg = RunConfig.from_dict(d)
        _check_values(cfg)
        if cfg.delta is not None:
            if n_train is not None:
                check_delta(cfg.delta, n_train)
            elif not 0 < cfg.delta < 1:
                raise PrivacyError(f"delta {cfg.delta!r} must lie in (0, 1/n_train); leave it unset for privrad's default.")
        if n_train is not None and cfg.batch_size > n_train:
            raise ConfigError(f"batch_size = {cfg.batch_size} is larger than the training split ({n_train} reports); "
                              f"use a batch_size ≤ {n_train}.")
    except PrivradError as exc:
        if where:
            raise type(exc)(f"{where}: {exc}") from None
        raise
    return cfg


def _check_values(cfg: RunConfig) -> None:
    from privrad.evaluate import THRESHOLDS
    from privrad.models import get_model_spec
    from privrad.train import GRAD_SAMPLE_MODES

    if cfg.method not in METHODS:
        raise ConfigError(f"unknown method {cfg.method!r}; known methods are: {', '.join(METHODS)}.")
    checks = [
        ("lr", cfg.lr, cfg.lr > 0, "a positive learning rate, e.g. 5e-4"),
        ("max_grad_norm", cfg.max_grad_norm, cfg.max_grad_norm > 0, "a positive clipping norm, e.g. 1.0"),
        ("batch_size", cfg.batch_size, cfg.batch_size >= 1, "a positive integer"),
        ("num_epochs", cfg.num_epochs, cfg.num_epochs > 0, "a positive number"),
        ("max_length", cfg.max_length, cfg.max_length >= 8, "at least 8 tokens"),
        ("lora_r", cfg.lora_r, cfg.lora_r >= 1, "a positive integer"),
        ("lora_alpha", cfg.lora_alpha, cfg.lora_alpha > 0, "a positive number"),
        ("lora_dropout", cfg.lora_dropout, 0 <= cfg.lora_dropout < 1, "a fraction in [0, 1)"),
        ("weight_decay", cfg.weight_decay, cfg.weight_decay >= 0, "0 or a positive number"),
        ("warmup_ratio", cfg.warmup_ratio, 0 <= cfg.warmup_ratio < 1, "a fraction in [0, 1)"),
        ("n_bootstrap", cfg.n_bootstrap, cfg.n_bootstrap >= 0, "0 (no CI) or more resamples"),
    ]
    if cfg.physical_batch_size != "auto":
        checks.append(("physical_batch_size", cfg.physical_batch_size,
                       isinstance(cfg.physical_batch_size, int) and cfg.physical_batch_size >= 1,
                       "a positive integer, or auto (as many reports as the GPU memory given to the run holds)"))
    for name, value, ok, what in checks:
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and ok):
            raise ConfigError(f"{name} = {value!r} is invalid; give {what}.")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision {cfg.precision!r} is unknown; use one of {', '.join(PRECISIONS)} "
                          "(auto: bf16 autocast on a GPU that supports it, fp32 on a CPU).")
    if cfg.threshold not in THRESHOLDS:
        raise ConfigError(f"threshold {cfg.threshold!r} is unknown; use one of {', '.join(THRESHOLDS)}.")
    if cfg.accountant not in ("prv", "rdp"):
        raise ConfigError(f"accountant {cfg.accountant!r} is unknown; use 'prv' (default) or 'rdp'.")
    from privrad.privacy import DP_RANDOMNESS, PRIVACY_UNITS

    if cfg.dp_randomness not in DP_RANDOMNESS:
        raise ConfigError(f"dp_randomness {cfg.dp_randomness!r} is unknown; use 'secure' (secret, a DP release) or "
                          "'reproducible' (seeded from the run seed: not a DP release).")
    if cfg.privacy_unit not in PRIVACY_UNITS:
        raise ConfigError(f"privacy_unit {cfg.privacy_unit!r} is unknown; use 'report' (default) or 'patient'.")
    if cfg.privacy_unit == "patient" and cfg.grad_sample_mode != "hooks":
        raise ConfigError(f"privacy_unit 'patient' needs grad_sample_mode 'hooks' (per-report gradients summed per "
                          f"patient before clipping), not {cfg.grad_sample_mode!r}.")
    if cfg.grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ConfigError(f"grad_sample_mode {cfg.grad_sample_mode!r} is not supported; use one of {', '.join(GRAD_SAMPLE_MODES)}.")
    spec = get_model_spec(cfg.model)
    if cfg.max_length > spec.max_length:
        raise ConfigError(f"max_length = {cfg.max_length} exceeds model {cfg.model!r}'s limit of {spec.max_length}; lower it.")
    if cfg.lora_layers is not None:
        if isinstance(cfg.lora_layers, bool) or not isinstance(cfg.lora_layers, int) or cfg.lora_layers < 1:
            raise ConfigError(f"lora_layers = {cfg.lora_layers!r} is invalid; give a positive number of top layers, or null for every layer.")
        if spec.family == "albert":
            raise ConfigError(f"lora_layers = {cfg.lora_layers} cannot apply to {cfg.model!r}: ALBERT adapts its one shared "
                              "layer at every use; leave lora_layers unset (null) for ALBERT models.")


# ----------------------------------------------------------------------------- Slurm options

_TIME = re.compile(r"^(?:(?P<d>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$")


def minutes(value: Any, *, key: str) -> int:
    """A Slurm time (``90``, ``"90"``, ``"1:30:00"``, ``"2-00:00:00"`` …) in whole minutes,
    rounded up, as Slurm itself counts time limits."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"slurm.{key} = {value!r} is not a Slurm time; write minutes (90) or \"HH:MM:SS\" (\"1:30:00\").")
    m = _TIME.match(str(value).strip())
    if not m:
        raise ConfigError(f"slurm.{key} = {value!r} is not a Slurm time; write minutes (90), \"HH:MM:SS\" (\"1:30:00\") or \"D-HH:MM:SS\".")
    g = {k: int(v) for k, v in m.groupdict().items() if v is not None}
    if "d" in g:
        seconds = ((g["d"] * 24 + g["dh"]) * 60 + g.get("dm", 0)) * 60 + g.get("ds", 0)
    elif "c" in g:  # hours:minutes:seconds
        seconds = (g["a"] * 60 + g["b"]) * 60 + g["c"]
    elif "b" in g:  # minutes:seconds
        seconds = g["a"] * 60 + g["b"]
    else:
        seconds = g["a"] * 60
    return math.ceil(seconds / 60)


def _opt(default: Any, help: str) -> Any:
    """A Slurm option with what it means (the book's table of options is generated from these)."""
    return field(default=default, metadata={"help": help})


def _hms(total_minutes: int) -> str:
    return f"{total_minutes // 60}:{total_minutes % 60:02d}:00"


@dataclass(frozen=True)
class SlurmConfig:
    """A profile's ``slurm:`` block (overridden by ``--set slurm.KEY=VALUE``): what each run's
    job asks the cluster for. The names are Slurm's (``sbatch --partition``, ``--account``,
    ``--gpus-per-node``, ``--cpus-per-task``, ``--time``) or submitit's (``mem_gb``,
    ``array_parallelism``)."""

    partition: str | None = _opt(None, "the partition (`sbatch --partition`); null: the cluster's default")
    account: str | None = _opt(None, "the account charged (`sbatch --account`)")
    gpus_per_node: int = _opt(0, "GPUs per run (`--gpus-per-node`); 0: a CPU job, in which the run sees no GPU")
    cpus_per_task: int = _opt(1, "CPU cores per run (`--cpus-per-task`); torch uses this many threads")
    mem_gb: float | None = _opt(None, "memory per run in GB (`--mem`); null: the partition's default")
    time: str = _opt("1:00:00", "time limit of one run (`--time`): minutes or \"H:MM:SS\"")
    min_run_time: str | None = _opt(None, "how long the profile's shortest run takes; a `time` below it is refused")
    array_parallelism: int = _opt(32, "runs at once (the job array's `%N`)")
    sbatch_args: tuple[str, ...] = _opt((), "more sbatch options, long form: `[--qos=high, --constraint=a100]`")
    setup: tuple[str, ...] = _opt((), "shell lines run before each run, e.g. `module load cuda/12.4`")
    gpu_profile: bool = field(default=False, compare=False)  # the profile file itself asks for GPUs

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, *, where: str, gpu_profile: bool = False) -> "SlurmConfig":
        """Validate a ``slurm:`` block; every problem is one sentence naming the key."""
        raw = dict(raw or {})
        unknown = sorted(set(raw) - set(SLURM_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown slurm key(s) {', '.join(unknown)}; known keys are: {', '.join(sorted(SLURM_KEYS))}.")
        for key in ("partition", "account"):
            if raw.get(key) is not None and (not isinstance(raw[key], str) or not raw[key].strip()):
                raise ConfigError(f"{where}: slurm.{key} = {raw[key]!r} must be a name such as \"gpu\" (or null for the cluster's default).")
        for key, low in (("gpus_per_node", 0), ("cpus_per_task", 1), ("array_parallelism", 1)):
            if key in raw and (isinstance(raw[key], bool) or not isinstance(raw[key], int) or raw[key] < low):
                raise ConfigError(f"{where}: slurm.{key} = {raw[key]!r} must be an integer ≥ {low}.")
        if raw.get("mem_gb") is not None and (isinstance(raw["mem_gb"], bool) or not isinstance(raw["mem_gb"], (int, float)) or not raw["mem_gb"] > 0):
            raise ConfigError(f"{where}: slurm.mem_gb = {raw['mem_gb']!r} must be a positive number of gigabytes (or null for the partition's default).")
        for key in ("sbatch_args", "setup"):
            value = raw.get(key, [])
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: slurm.{key} must be a list of strings, e.g. [\"--qos=high\"].")
            raw[key] = tuple(value)
        for arg in raw.get("sbatch_args", ()):
            if not re.match(r"^--[a-z][a-z0-9-]*(=.+)?$", arg):
                raise ConfigError(f"{where}: slurm.sbatch_args entry {arg!r} is not a long sbatch option; write it as --name=value (e.g. --constraint=a100).")
            if arg.split("=", 1)[0][2:].replace("-", "_") in SLURM_KEYS + ("array", "output", "error", "signal", "time", "mem", "gpus", "gres"):
                raise ConfigError(f"{where}: slurm.sbatch_args entry {arg!r} sets what privrad sets itself; use the slurm key for it instead (partition, account, gpus_per_node, cpus_per_task, mem_gb, time).")
        cfg = cls(**{k: (str(v) if k in ("time", "min_run_time") and v is not None else v) for k, v in raw.items()},
                  gpu_profile=gpu_profile)
        time_min = minutes(cfg.time, key="time")
        if time_min < 1:
            raise ConfigError(f"{where}: slurm.time = {cfg.time!r} must be at least one minute.")
        if cfg.min_run_time is not None and time_min < minutes(cfg.min_run_time, key="min_run_time"):
            raise ConfigError(
                f"{where}: slurm.time = {cfg.time} is shorter than this profile's shortest expected run "
                f"(slurm.min_run_time = {cfg.min_run_time}), so every job would hit its time limit; raise slurm.time."
            )
        if gpu_profile and cfg.gpus_per_node == 0:
            raise ConfigError(
                f"{where}: this profile runs on GPUs (its slurm block asks for gpus_per_node ≥ 1) but slurm.gpus_per_node = 0; "
                "ask for at least one GPU per run, or use a CPU profile such as default."
            )
        return cfg

    @property
    def time_min(self) -> int:
        return minutes(self.time, key="time")

    def submitit_parameters(self) -> dict[str, Any]:
        """Parameters for ``submitit.SlurmExecutor.update_parameters``."""
        extra: dict[str, Any] = {"requeue": True}  # a preempted job (or a failed node) comes back
        for arg in self.sbatch_args:
            name, _, value = arg[2:].partition("=")
            extra[name] = value if value else True
        p: dict[str, Any] = {
            "time": self.time_min,
            "cpus_per_task": self.cpus_per_task,
            "array_parallelism": self.array_parallelism,
            # Slurm sends USR2 this long before the time limit: submitit requeues the job then
            "signal_delay_s": max(15, min(90, self.time_min * 15)),
            "stderr_to_stdout": True,
            "additional_parameters": extra,
        }
        if self.partition:
            p["partition"] = self.partition
        if self.account:
            p["account"] = self.account
        if self.gpus_per_node:
            p["gpus_per_node"] = self.gpus_per_node
        if self.mem_gb is not None:
            p["mem"] = f"{int(self.mem_gb)}GB" if float(self.mem_gb).is_integer() else f"{int(self.mem_gb * 1024)}MB"
        if self.setup:
            p["setup"] = list(self.setup)
        return p

    def describe(self) -> str:
        parts = [f"partition {self.partition or '(default)'}"]
        if self.account:
            parts.append(f"account {self.account}")
        parts += [f"{self.gpus_per_node} GPU(s)", f"{self.cpus_per_task} CPU(s)"]
        if self.mem_gb is not None:
            parts.append(f"{self.mem_gb:g} GB")
        parts += [f"time {_hms(self.time_min)}", f"{self.array_parallelism} at once"]
        return ", ".join(parts)


SLURM_KEYS = tuple(f.name for f in dataclasses.fields(SlurmConfig) if "help" in f.metadata)  # the slurm: block's keys
