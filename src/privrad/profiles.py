"""Study profiles, and the one KEY=VALUE / YAML reader.

A *profile* (``studies/<name>.yml``) holds a grid (datasets × models × methods × ε × seeds)
and its hyperparameters. :func:`load_profile` reads it and applies ``--set KEY=VALUE``
overrides; :func:`expand` turns it into :class:`Point` s, each with a checked
:class:`~privrad.config.RunConfig`.

Every KEY=VALUE and every YAML file privrad reads goes through :func:`parse_value` /
:func:`parse_assignment` / :func:`read_yaml_file`: ``privrad study run --set``, ``privrad run
--set`` and ``--config``, ``privrad data … --dataset-option`` and the profiles themselves. Values are YAML
as people write numbers (``1e-3`` is a float, which plain YAML 1.1 reads as a string), so one
value means the same thing wherever it is typed.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from privrad.config import FIELDS, RunConfig, SlurmConfig, epsilon_label, validate_config
from privrad.errors import ConfigError

PROFILE_KEYS = ("description", "results", "datasets", "grid", "extra", "params", "book", "kernel", "provenance", "slurm",
                "gpu", "audit")
GPU_KEYS = ("runs_per_gpu", "memory_gb")  # the `gpu:` block: how the local executor shares a GPU
DATASET_KEYS = ("name", "dataset", "data_dir", "dataset_options", "simulate", "params")
SIMULATE_KEYS = ("kind", "n", "seed")
RUN_NOTEBOOK = Path("notebooks") / "run.ipynb"
NOTEBOOK_EXTRA_PARAMETERS = ("run_dir",)  # notebook parameters that are not RunConfig fields
DATASET_FIELDS = ("dataset", "data_dir", "dataset_options")  # set per dataset entry, not in the grid


# ----------------------------------------------------------------------------- the one parser


class _Loader(yaml.SafeLoader):
    """YAML as people write numbers: ``1e-3`` is a float (plain YAML 1.1 reads it as a string),
    and ``1:30:00`` is a string such as a Slurm time (YAML 1.1 reads it as 5400, in base 60)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
               r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A value as typed after ``KEY=``: YAML (``null``, numbers incl. ``1e-3``, ``[a, b]``,
    ``{k: v}``, strings); an empty value is the empty string."""
    return yaml.load(text, Loader=_Loader) if text.strip() else ""


_EXAMPLES = {"--set": "lr=1e-3", "--dataset-option": "max_reports=1000"}


def parse_assignment(item: str, *, flag: str = "--set") -> tuple[str, Any]:
    """``"lr=1e-3"`` → ``("lr", 0.001)``; a malformed item is refused in one sentence naming ``flag``."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{flag} {item!r} is not of the form KEY=VALUE (e.g. {flag} {_EXAMPLES.get(flag, 'key=value')}).")
    try:
        return key.strip(), parse_value(text)
    except yaml.YAMLError:
        raise ConfigError(f"{flag} {key.strip()}: the value {text!r} is not valid YAML; quote strings and write lists as [a,b].") from None


def parse_assignments(items: Iterable[str] | None, *, flag: str = "--set") -> dict[str, Any]:
    """Several KEY=VALUE items → a dict (a later key wins)."""
    return dict(parse_assignment(i, flag=flag) for i in items or ())


def read_yaml_file(path: str | os.PathLike, *, what: str) -> Any:
    """A YAML (or JSON) file read with :func:`parse_value`'s rules; ``what`` names it in errors."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {str(path)!r} ({type(exc).__name__}); give a readable YAML/JSON file.") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML ({exc.__class__.__name__}); fix its syntax.") from None


# ----------------------------------------------------------------------------- where things are


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The folder holding ``studies/`` and ``notebooks/``: the current directory when it has
    them (a checkout, or a user's copy), otherwise the checkout privrad was installed from."""
    here = Path(start or os.getcwd()).resolve()
    if (here / "studies").is_dir() or (here / RUN_NOTEBOOK).is_file():
        return here
    source = Path(__file__).resolve().parents[2]
    if (source / "studies").is_dir():
        return source
    return here


def known_profiles(root: Path | None = None) -> list[str]:
    root = root or project_root()
    return sorted(p.stem for p in (root / "studies").glob("*.yml"))


def profile_path(name: str, root: Path | None = None) -> Path:
    """``name`` is a profile in ``studies/`` or a path to a YAML file."""
    root = root or project_root()
    as_path = Path(name)
    if as_path.suffix in (".yml", ".yaml") and as_path.is_file():
        return as_path
    path = root / "studies" / f"{name}.yml"
    if not path.is_file():
        known = ", ".join(known_profiles(root)) or "(none)"
        raise ConfigError(f"unknown study profile {name!r}; known profiles are: {known} (or give a path to a .yml file).")
    return path


def resolve_path(path: str) -> Path:
    """A data path as the user wrote it, with ``~`` and ``$VARS`` expanded."""
    return Path(os.path.expanduser(os.path.expandvars(path)))


# ----------------------------------------------------------------------------- profiles


@dataclass
class DatasetEntry:
    """One dataset of a study: a registry name, where its files are, and how to make them."""

    name: str  # how the study refers to it (defaults to the dataset name)
    dataset: str
    data_dir: str
    dataset_options: dict[str, Any] = field(default_factory=dict)
    simulate: dict[str, Any] | None = None  # {kind, n, seed}: simulate into data_dir when missing
    params: dict[str, Any] = field(default_factory=dict)  # hyperparameters for this dataset only


@dataclass
class Profile:
    name: str
    path: Path
    description: str
    results: str
    datasets: list[DatasetEntry]
    grid: dict[str, list[Any]]
    extra: list[dict[str, Any]]
    params: dict[str, Any]
    book: dict[str, Any]
    kernel: str | None
    provenance: dict[str, Any] = field(default_factory=dict)  # where each tuned default was chosen (issue 8)
    gpu: dict[str, Any] = field(default_factory=dict)  # runs_per_gpu, memory_gb (see gpu_options)
    slurm: dict[str, Any] = field(default_factory=dict)  # the `slurm:` block, for --executor slurm
    gpu_profile: bool = False  # the profile file's slurm block asks for GPUs
    audit: dict | None = None  # the `audit:` block: which runs are audited and how (privrad.audit.AuditSettings); None = off

    def audit_settings(self):
        """The validated ``audit:`` block (:class:`privrad.audit.AuditSettings`), or None when the
        profile audits nothing."""
        if self.audit is None:
            return None
        from privrad.audit import AuditSettings

        return AuditSettings.from_dict(self.audit, where=f"study profile {self.path}")

    def slurm_config(self) -> SlurmConfig:
        """The validated Slurm options: the ``slurm:`` block with ``--set slurm.KEY=VALUE`` applied."""
        return SlurmConfig.from_dict(self.slurm, where=f"study profile {self.path}", gpu_profile=self.gpu_profile)

    @property
    def results_dir(self) -> Path:
        """``<results>/<profile>``: the run folders of this profile live here."""
        return Path(self.results) / self.name


def _known(keys: Iterable[str]) -> str:
    return ", ".join(sorted(keys))


def load_profile(name: str, *, sets: Sequence[str] = (), results_dir: str | None = None, root: Path | None = None) -> Profile:
    """Read a profile and apply ``--set key=value`` overrides (see :func:`apply_set`).
    ``results_dir`` replaces the profile's results root (runs go to ``<results_dir>/<profile>/``)."""
    path = profile_path(name, root)
    raw = read_yaml_file(path, what="study profile") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"study profile {path} must be a mapping of {_known(PROFILE_KEYS)}.")
    unknown = sorted(set(raw) - set(PROFILE_KEYS))
    if unknown:
        raise ConfigError(f"study profile {path} has unknown key(s) {', '.join(unknown)}; known keys are: {_known(PROFILE_KEYS)}.")
    datasets = [_dataset_entry(path, i, d) for i, d in enumerate(raw.get("datasets") or [])]
    if not datasets:
        raise ConfigError(f"study profile {path} lists no datasets; add at least one under `datasets:`.")
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise ConfigError(f"study profile {path} names a dataset twice ({names}); give each entry a distinct `name`.")
    grid = {k: (list(v) if isinstance(v, list) else [v]) for k, v in (raw.get("grid") or {}).items()}
    extra = list(raw.get("extra") or [])
    if not all(isinstance(e, dict) for e in extra):
        raise ConfigError(f"study profile {path}: every `extra` entry must be a mapping such as {{method: full, epsilon: null}}.")
    profile = Profile(name=path.stem, path=path, description=str(raw.get("description", "")),
                      results=str(results_dir or raw.get("results", "results")), datasets=datasets, grid=grid,
                      extra=extra, params=dict(raw.get("params") or {}), book=dict(raw.get("book") or {}),
                      kernel=raw.get("kernel"), provenance=dict(raw.get("provenance") or {}),
                      gpu=gpu_options(raw.get("gpu"), where=f"study profile {path}"))
    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise ConfigError(f"study profile {path}: `slurm` must be a mapping such as {{partition: gpu, gpus_per_node: 1}}.")
    profile.slurm = dict(slurm)
    audit = raw.get("audit")
    if audit is not None and audit is not False:
        profile.audit = {} if audit is True else audit
    gpus = slurm.get("gpus_per_node")
    profile.gpu_profile = isinstance(gpus, int) and not isinstance(gpus, bool) and gpus >= 1
    for s in sets:
        apply_set(profile, s)
    _check_keys(profile)
    return profile


def gpu_options(raw: Any, *, where: str) -> dict[str, Any]:
    """A profile's ``gpu:`` block, checked: ``runs_per_gpu`` (runs placed on one GPU at once, an
    integer ≥ 1; default 1) and ``memory_gb`` (GPU memory one run needs, > 0 or null). They only
    apply on a machine with GPUs (:class:`privrad.executors.LocalExecutor`)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: `gpu` must be a mapping such as {{runs_per_gpu: 4, memory_gb: 12}}.")
    unknown = sorted(set(raw) - set(GPU_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown gpu key(s) {', '.join(unknown)}; known keys are: {_known(GPU_KEYS)}.")
    rpg = raw.get("runs_per_gpu", 1)
    if isinstance(rpg, bool) or not isinstance(rpg, int) or rpg < 1:
        raise ConfigError(f"{where}: gpu.runs_per_gpu = {rpg!r} must be a whole number ≥ 1.")
    mem = raw.get("memory_gb")
    if mem is not None and (isinstance(mem, bool) or not isinstance(mem, (int, float)) or not mem > 0):
        raise ConfigError(f"{where}: gpu.memory_gb = {mem!r} must be a positive number of gigabytes (or null).")
    return {"runs_per_gpu": rpg, "memory_gb": mem}


def _dataset_entry(path: Path, i: int, d: Any) -> DatasetEntry:
    if not isinstance(d, dict) or "dataset" not in d or "data_dir" not in d:
        raise ConfigError(f"study profile {path}: datasets[{i}] needs at least `dataset` and `data_dir`.")
    bad = sorted(set(d) - set(DATASET_KEYS))
    if bad:
        raise ConfigError(f"study profile {path}: datasets[{i}] has unknown key(s) {', '.join(bad)}; known keys are: {_known(DATASET_KEYS)}.")
    sim = d.get("simulate")
    if sim is not None:
        bad = sorted(set(sim) - set(SIMULATE_KEYS)) if isinstance(sim, dict) else ["(not a mapping)"]
        if bad:
            raise ConfigError(f"study profile {path}: datasets[{i}].simulate has unknown key(s) {', '.join(bad)}; known keys are: {_known(SIMULATE_KEYS)}.")
    return DatasetEntry(name=str(d.get("name", d["dataset"])), dataset=str(d["dataset"]), data_dir=str(d["data_dir"]),
                        dataset_options=dict(d.get("dataset_options") or {}), simulate=dict(sim) if sim else None,
                        params=dict(d.get("params") or {}))


def apply_set(profile: Profile, assignment: str) -> None:
    """Apply one ``--set key=value`` (the value is read by :func:`parse_value`).

    * ``key`` a grid axis (``epsilon``, ``seed``, ``model`` …) → the axis is replaced
      (``--set epsilon=[0.1,1,null]``); ``--set dataset=NAME`` keeps only the named datasets;
    * ``key`` another run parameter → it applies to every point, or becomes an axis when the
      value is a list (``--set seed=[0,1,2]``);
    * ``NAME.data_dir`` / ``NAME.<parameter>`` → for the dataset named ``NAME`` only
      (``--set mimic-cxr.data_dir=/data/physionet/mimic-cxr``);
    * ``NAME.dataset_options.<option>`` → one loader option of that dataset;
    * ``NAME.simulate.n`` / ``NAME.simulate.seed`` → how a simulated dataset is generated (give it
      a new ``NAME.data_dir`` too: an existing simulated folder is never overwritten);
    * ``slurm.KEY`` → one option of the ``slurm:`` block (``--set slurm.partition=gpu``);
    * ``audit=null`` turns the profile's audit off; ``audit.KEY`` → one option of the ``audit:``
      block (``--set audit.canaries=128``; it turns the audit on).
    """
    key, value = parse_assignment(assignment)
    if key.startswith("slurm."):
        profile.slurm[key.split(".", 1)[1]] = value
        return
    if key == "audit":
        profile.audit = None if value in (None, False) else ({} if value is True else value)
        return
    if key.startswith("audit."):
        profile.audit = {**(profile.audit or {}), key.split(".", 1)[1]: value}
        return
    if "." in key:
        _apply_dataset_set(profile, key, value)
        return
    if key == "dataset":
        wanted = {str(v) for v in (value if isinstance(value, list) else [value])}
        missing = sorted(wanted - {d.name for d in profile.datasets})
        if missing:
            raise ConfigError(f"--set dataset: {', '.join(missing)} not in profile {profile.name}; its datasets are: {_known(d.name for d in profile.datasets)}.")
        profile.datasets = [d for d in profile.datasets if d.name in wanted]
        return
    if key not in FIELDS or key in DATASET_FIELDS:
        raise ConfigError(f"--set {key}: unknown key; known keys are: dataset, <dataset>.data_dir, {_known(set(FIELDS) - set(DATASET_FIELDS))}.")
    listy = key == "lora_targets"
    if key in profile.grid or (isinstance(value, list) and not listy):
        profile.grid[key] = value if isinstance(value, list) and not listy else [value]
        profile.params.pop(key, None)
    else:
        profile.params[key] = value


def _apply_dataset_set(profile: Profile, key: str, value: Any) -> None:
    name, sub = key.split(".", 1)
    entry = next((d for d in profile.datasets if d.name == name), None)
    if entry is None:
        raise ConfigError(f"--set {key}: no dataset named {name!r} in profile {profile.name}; its datasets are: {_known(d.name for d in profile.datasets)}.")
    if sub == "data_dir":
        entry.data_dir = str(value)
    elif sub == "dataset_options" and isinstance(value, dict):
        entry.dataset_options = dict(value)
    elif sub.startswith("dataset_options."):
        entry.dataset_options[sub.split(".", 1)[1]] = value
    elif sub.startswith("simulate.") and entry.simulate is not None and sub.split(".", 1)[1] in SIMULATE_KEYS:
        entry.simulate[sub.split(".", 1)[1]] = value
    elif sub in FIELDS and sub not in DATASET_FIELDS:
        entry.params[sub] = value
    else:
        raise ConfigError(f"--set {key}: unknown dataset setting {sub!r}; use data_dir, dataset_options.<option>, simulate.<n|seed> (simulated datasets) or a run parameter ({_known(set(FIELDS) - set(DATASET_FIELDS))}).")


def _check_keys(profile: Profile) -> None:
    allowed = set(FIELDS) - set(DATASET_FIELDS)
    where = f"study profile {profile.path}"
    for section, keys in (("grid", profile.grid), ("params", profile.params)):
        bad = sorted(set(keys) - allowed)
        if bad:
            raise ConfigError(f"{where}: unknown {section} key(s) {', '.join(bad)}; known keys are: {_known(allowed)}.")
    for d in profile.datasets:
        bad = sorted(set(d.params) - allowed)
        if bad:
            raise ConfigError(f"{where}: dataset {d.name} has unknown params key(s) {', '.join(bad)}; known keys are: {_known(allowed)}.")
    for e in profile.extra:
        bad = sorted(set(e) - allowed)
        if bad:
            raise ConfigError(f"{where}: an `extra` entry has unknown key(s) {', '.join(bad)}; known keys are: {_known(allowed)}.")
    for k, v in profile.grid.items():
        if not v:
            raise ConfigError(f"{where}: the grid axis {k} is empty; give it at least one value.")
    profile.slurm_config()  # checked with the rest of the profile, whichever executor runs it
    profile.audit_settings()


# ----------------------------------------------------------------------------- the grid


@dataclass
class Point:
    """One run of a study: its config, run id, where its files go and its state on disk
    (one of :data:`privrad.runs.RUN_STATES`)."""

    entry: DatasetEntry
    config: RunConfig
    run_id: str = ""
    run_dir: Path = Path()
    state: str = "missing"
    problem: str | None = None  # why the run folder is not complete, naming the file

    @property
    def label(self) -> str:
        c = self.config
        return f"{self.entry.name} · {c.model} · {c.method} · ε={epsilon_label(c.epsilon)} · seed {c.seed}"

    def row(self) -> dict[str, Any]:
        c = self.config
        return {"run_id": self.run_id, "dataset": self.entry.name, "model": c.model, "method": c.method,
                "epsilon": epsilon_label(c.epsilon), "seed": c.seed}


def expand(profile: Profile) -> list[Point]:
    """The grid's points: datasets × product(grid axes), plus each ``extra`` entry crossed with
    the axes it does not fix (``{method: full, epsilon: null}`` → full fine-tuning for every
    dataset × model × seed). Every point's config is checked by
    :func:`privrad.config.validate_config` (types, values, the model registry); what needs the
    data is checked once the datasets are loaded. Identical configs are kept once, in
    first-seen order."""
    axes = dict(profile.grid)
    variants: list[dict[str, Any]] = [{}] + [dict(e) for e in profile.extra]
    points: list[Point] = []
    seen: set[str] = set()
    for entry in profile.datasets:
        for fixed in variants:
            var_axes = {k: ([fixed[k]] if k in fixed else v) for k, v in axes.items()}
            rest = {k: v for k, v in fixed.items() if k not in var_axes}
            keys = list(var_axes)
            for combo in itertools.product(*(var_axes[k] for k in keys)):
                values = {**profile.params, **entry.params, **dict(zip(keys, combo)), **rest}
                d = {"dataset": entry.dataset, "data_dir": entry.data_dir, "dataset_options": entry.dataset_options, **values}
                point = ", ".join(f"{k}={v}" for k, v in {**dict(zip(keys, combo)), **rest}.items())
                config = validate_config(d, where=f"{entry.name} ({point})" if point else entry.name)
                key = json.dumps([entry.name, config.to_dict()], sort_keys=True, default=str)
                if key not in seen:
                    seen.add(key)
                    points.append(Point(entry, config))
    return points


def notebook_parameters(notebook: Path) -> set[str]:
    """Names declared in the notebook's ``parameters`` cell (what papermill can set)."""
    import papermill

    if not notebook.is_file():
        raise ConfigError(f"run notebook {notebook} does not exist; run privrad from the project folder or pass --notebook.")
    return set(papermill.inspect_notebook(str(notebook)))
