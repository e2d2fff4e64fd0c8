"""Studies: a grid of runs (dataset × model × method × ε × seed), each executed as a notebook.

A *profile* (``studies/<name>.yml``) holds the grid and the hyperparameters. ``privrad study
run`` expands it into points, validates every point (types, values, data paths, the run
notebook's parameters, existing run folders) before the first run starts, computes each
point's run id from its config and its dataset's content fingerprint, and executes
``notebooks/run.ipynb`` with papermill for every point whose run folder is not complete.

Why this shape:

* **Cache by run id.** A run folder ``<results>/<profile>/<run_id>/`` is complete when it holds
  ``run.ipynb`` and a ``config.json`` equal to the expected config. Re-running a finished
  study runs nothing; adding a seed or an ε runs only the new points. A folder with the same
  run id but another config or another privrad version is refused, never mixed.
* **Crash safety.** The training core writes the run folder atomically; the executed notebook
  is written to a staging path (``.notebooks/<run_id>.ipynb``) and renamed into the run folder
  only when the notebook succeeded. A sweep killed with SIGKILL leaves finished runs and
  nothing half-trusted; the next invocation finishes only what is missing.
* **Failures do not stop a sweep.** A failed run's executed notebook (with its traceback) is
  kept in ``failed/<run_id>.ipynb``; the sweep goes on, prints a summary (ok / failed /
  cached) and exits non-zero.
* **One process per job.** Each run is a papermill subprocess (which starts its own kernel),
  so ``--jobs N`` runs N at once and each job gets its own ``CUDA_VISIBLE_DEVICES`` where
  there are GPUs. Execution goes through an :class:`Executor`; the local one is a thread pool
  of subprocesses. A Slurm executor (submitit) fits the same seam: it needs only to call
  :func:`execute_task` on a cluster node and return its :class:`Outcome`.
* **A structured log.** Every event (sweep start, cached, started, ok, failed, sweep end) is one
  JSON line in ``<results>/<profile>/study.jsonl``; the run ids, configs and statuses of the
  last sweep are in ``study.json`` (read by ``privrad study status``).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import ctypes
import dataclasses
import datetime as _dt
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import yaml

from privrad.config import METHODS, RunConfig, epsilon_label
from privrad.errors import ConfigError, DataError, PrivradError
from privrad.io import atomic_write_json, atomic_write_text

PROFILE_KEYS = ("description", "results", "datasets", "grid", "extra", "params", "book", "kernel", "slurm")
DATASET_KEYS = ("name", "dataset", "data_dir", "dataset_options", "simulate", "params")
SIMULATE_KEYS = ("kind", "n", "seed")
RUN_NOTEBOOK = Path("notebooks") / "run.ipynb"
NOTEBOOK_EXTRA_PARAMETERS = ("run_dir",)  # notebook parameters that are not RunConfig fields
FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))
DATASET_FIELDS = ("dataset", "data_dir", "dataset_options")  # set per dataset entry, not in the grid


# --------------------------------------------------------------------------------------
# Where things are
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------


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
    slurm: dict[str, Any] = field(default_factory=dict)  # the `slurm:` block (see privrad.slurm.SlurmConfig)
    gpu_profile: bool = False  # the profile file's slurm block asks for GPUs

    def slurm_config(self):
        """The validated Slurm options of this profile (its ``slurm:`` block and ``--set slurm.KEY``)."""
        from privrad.slurm import SlurmConfig

        return SlurmConfig.from_dict(self.slurm, where=f"study profile {self.path}", gpu_profile=self.gpu_profile)

    @property
    def results_dir(self) -> Path:
        """``<results>/<profile>``: the run folders of this profile live here."""
        return Path(self.results) / self.name


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


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def _known(keys: Iterable[str]) -> str:
    return ", ".join(sorted(keys))


def load_profile(name: str, *, sets: Sequence[str] = (), results: str | None = None, root: Path | None = None) -> Profile:
    """Read a profile and apply ``--set key=value`` overrides (see :func:`apply_set`)."""
    path = profile_path(name, root)
    try:
        raw = _yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"study profile {path} is not valid YAML ({exc.__class__.__name__}); fix its syntax.") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"study profile {path} must be a mapping of {_known(PROFILE_KEYS)}.")
    unknown = sorted(set(raw) - set(PROFILE_KEYS))
    if unknown:
        raise ConfigError(f"study profile {path} has unknown key(s) {', '.join(unknown)}; known keys are: {_known(PROFILE_KEYS)}.")
    datasets = []
    for i, d in enumerate(raw.get("datasets") or []):
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
        datasets.append(
            DatasetEntry(
                name=str(d.get("name", d["dataset"])),
                dataset=str(d["dataset"]),
                data_dir=str(d["data_dir"]),
                dataset_options=dict(d.get("dataset_options") or {}),
                simulate=dict(sim) if sim else None,
                params=dict(d.get("params") or {}),
            )
        )
    if not datasets:
        raise ConfigError(f"study profile {path} lists no datasets; add at least one under `datasets:`.")
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise ConfigError(f"study profile {path} names a dataset twice ({names}); give each entry a distinct `name`.")
    grid = {k: (list(v) if isinstance(v, list) else [v]) for k, v in (raw.get("grid") or {}).items()}
    extra = list(raw.get("extra") or [])
    if not all(isinstance(e, dict) for e in extra):
        raise ConfigError(f"study profile {path}: every `extra` entry must be a mapping such as {{method: full, epsilon: null}}.")
    profile = Profile(
        name=path.stem,
        path=path,
        description=str(raw.get("description", "")),
        results=str(results or raw.get("results", "results")),
        datasets=datasets,
        grid=grid,
        extra=extra,
        params=dict(raw.get("params") or {}),
        book=dict(raw.get("book") or {}),
        kernel=raw.get("kernel"),
        slurm=dict(raw.get("slurm") or {}),
    )
    if not isinstance(raw.get("slurm") or {}, dict):
        raise ConfigError(f"study profile {path}: `slurm` must be a mapping such as {{partition: gpu, gpus_per_node: 1}}.")
    gpus = profile.slurm.get("gpus_per_node")
    profile.gpu_profile = isinstance(gpus, int) and not isinstance(gpus, bool) and gpus >= 1
    for s in sets:
        apply_set(profile, s)
    _check_keys(profile)
    return profile


def apply_set(profile: Profile, assignment: str) -> None:
    """Apply one ``--set key=value`` (the value is read as YAML: ``null``, numbers, lists).

    * ``key`` a grid axis (``epsilon``, ``seed``, ``model`` …) → the axis is replaced
      (``--set epsilon=[0.1,1,null]``); ``--set dataset=NAME`` keeps only the named datasets;
    * ``key`` another run parameter → it applies to every point, or becomes an axis when the
      value is a list (``--set seed=[0,1,2]``);
    * ``NAME.data_dir`` / ``NAME.<parameter>`` → for the dataset named ``NAME`` only
      (``--set mimic-cxr.data_dir=/data/physionet/mimic-cxr``);
    * ``NAME.simulate.n`` / ``NAME.simulate.seed`` → how a simulated dataset is generated (give it
      a new ``NAME.data_dir`` too: an existing simulated folder is never overwritten).
    """
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r} is not of the form key=value (e.g. --set epsilon=[1,null]).")
    key, text = assignment.split("=", 1)
    key = key.strip()
    try:
        value = _yaml(text) if text.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: the value {text!r} is not valid YAML; quote strings and write lists as [a,b].") from None
    if key.startswith("slurm."):
        profile.slurm[key.split(".", 1)[1]] = value
        return
    if "." in key:
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
        return
    if key == "dataset":
        wanted = value if isinstance(value, list) else [value]
        missing = sorted(set(map(str, wanted)) - {d.name for d in profile.datasets})
        if missing:
            raise ConfigError(f"--set dataset: {', '.join(missing)} not in profile {profile.name}; its datasets are: {_known(d.name for d in profile.datasets)}.")
        profile.datasets = [d for d in profile.datasets if d.name in set(map(str, wanted))]
        return
    if key not in FIELDS or key in DATASET_FIELDS:
        raise ConfigError(f"--set {key}: unknown key; known keys are: dataset, <dataset>.data_dir, {_known(set(FIELDS) - set(DATASET_FIELDS))}.")
    listy = key == "lora_targets"
    if key in profile.grid or (isinstance(value, list) and not listy):
        profile.grid[key] = value if isinstance(value, list) and not listy else [value]
        profile.params.pop(key, None)
    else:
        profile.params[key] = value


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
    profile.slurm_config()  # the slurm options are checked with everything else, whichever executor runs


# --------------------------------------------------------------------------------------
# Grid expansion and validation
# --------------------------------------------------------------------------------------


@dataclass
class Point:
    """One run of a study: its config, run id and where its files go."""

    entry: DatasetEntry
    config: RunConfig
    run_id: str = ""
    run_dir: Path = Path()
    state: str = "new"  # new | complete | partial (run folder without its notebook)

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
    dataset × model × seed). Identical configs are kept once, in first-seen order."""
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
                d = {"dataset": entry.dataset, "data_dir": entry.data_dir,
                     "dataset_options": entry.dataset_options, **values}
                check_types(d, where=f"dataset {entry.name}")
                config = RunConfig.from_dict(d)
                key = json.dumps([entry.name, config.to_dict()], sort_keys=True, default=str)
                if key not in seen:
                    seen.add(key)
                    points.append(Point(entry, config))
    return points


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
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
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


_HINTS = typing.get_type_hints(RunConfig)


def check_types(values: dict[str, Any], *, where: str) -> None:
    """Every value must be passable by papermill and of its RunConfig field's type."""
    for key, value in values.items():
        if key not in _HINTS:
            continue  # unknown keys are reported by RunConfig.from_dict with the known ones
        if not _passable(value):
            raise ConfigError(
                f"{where}: parameter {key} = {value!r} ({type(value).__name__}) cannot be passed to a notebook by papermill; "
                "use a string, number, boolean, null, list or mapping."
            )
        if not _type_ok(value, _HINTS[key]):
            raise ConfigError(f"{where}: parameter {key} = {value!r} is not of the expected type {_HINTS[key]}; fix it in the profile or --set.")


def check_values(config: RunConfig, *, where: str) -> None:
    """Value checks that need no data (the training core re-checks everything at run time)."""
    if config.method not in METHODS:
        raise ConfigError(f"{where}: unknown method {config.method!r}; known methods are: {', '.join(METHODS)}.")
    if config.epsilon is not None and not config.epsilon > 0:
        raise ConfigError(f"{where}: epsilon = {config.epsilon} must be > 0 (or null for non-private training).")
    for name in ("lr", "max_grad_norm", "num_epochs", "batch_size", "physical_batch_size", "max_length", "lora_r"):
        if not getattr(config, name) > 0:
            raise ConfigError(f"{where}: {name} = {getattr(config, name)} must be > 0.")
    if config.delta is not None and not 0 < config.delta < 1:
        raise ConfigError(f"{where}: delta = {config.delta} must be in (0, 1) (or null for privrad's default).")
    try:  # the training core's own checks (model known, max_length within the model's limit, …)
        from privrad.runs import normalize_config, validate_config
    except ImportError:  # pragma: no cover - the training core is part of privrad
        return
    try:
        validate_config(normalize_config(config))
    except PrivradError as exc:
        raise type(exc)(f"{where}: {exc}") from None


def notebook_parameters(notebook: Path) -> set[str]:
    """Names declared in the notebook's ``parameters`` cell (what papermill can set)."""
    import papermill

    if not notebook.is_file():
        raise ConfigError(f"run notebook {notebook} does not exist; run privrad from the project folder or pass --notebook.")
    return set(papermill.inspect_notebook(str(notebook)))


def _resolve(path: str) -> Path:
    return Path(os.path.expanduser(os.path.expandvars(path)))


def _is_simulated(path: Path) -> bool:
    try:
        from privrad.data.simulate import MARKER
    except ImportError:  # pragma: no cover
        return False
    return (path / MARKER).is_file()


def prepare_data(profile: Profile, *, log: "Log | None" = None) -> None:
    """Every data folder must exist before the first run; simulated ones are made if missing."""
    for entry in profile.datasets:
        path = _resolve(entry.data_dir)
        if path.exists() and not (entry.simulate and _is_simulated(path)):
            continue
        if entry.simulate:  # missing, or simulator output: simulate() returns at once if it matches
            from privrad.data.simulate import simulate

            kind = entry.simulate.get("kind", entry.dataset.replace("simulated-", ""))
            n, seed = int(entry.simulate.get("n", 1000)), int(entry.simulate.get("seed", 0))
            if not path.exists():
                print(f"privrad: simulating {kind} (n={n}, seed={seed}) into {path} …", file=sys.stderr)
            t0 = time.time()
            simulate(kind, path, n=n, seed=seed)
            if log:
                log.event("simulated", dataset=entry.name, kind=kind, n=n, seed=seed, path=str(path), seconds=round(time.time() - t0, 2))
            continue
        raise DataError(
            f"data folder {entry.data_dir} for dataset {entry.name} ({entry.dataset}) does not exist; "
            f"put the download there or pass --set {entry.name}.data_dir=/path/to/it."
        )


def _run_ids(points: list[Point], profile: Profile, results_dir: Path) -> dict[str, Any]:
    """Load each dataset once, compute every point's run id and check its folder's state."""
    from privrad.data import load_dataset
    from privrad.runs import run_id

    datasets: dict[str, Any] = {}
    for entry in profile.datasets:
        if not any(p.entry is entry for p in points):
            continue
        datasets[entry.name] = load_dataset(entry.dataset, str(_resolve(entry.data_dir)), **entry.dataset_options)
    ids: dict[str, Point] = {}
    for p in points:
        ds = datasets[p.entry.name]
        n_train = int((ds.splits == "train").sum())
        if p.config.delta is not None and not p.config.delta < 1 / max(n_train, 1):
            raise ConfigError(f"{p.label}: delta = {p.config.delta} must be < 1/n_train = {1 / n_train:.3g} for {n_train} training reports.")
        p.run_id = run_id(p.config, ds.fingerprint)
        if p.run_id in ids:
            raise ConfigError(f"{p.label} and {ids[p.run_id].label} map to the same run id {p.run_id}; make the points differ.")
        ids[p.run_id] = p
        p.run_dir = results_dir / p.run_id
        p.state = folder_state(p)
    return datasets


def _stored_config(run_dir: Path) -> dict[str, Any]:
    try:
        stored = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigError(f"run folder {run_dir} has no readable config.json; it is not a privrad run folder — move or delete it.") from None
    return stored


def folder_state(p: Point) -> str:
    """``new`` (no folder), ``partial`` (run folder written, notebook not yet placed) or
    ``complete``; a folder of another config or privrad version is refused."""
    import privrad

    if not p.run_dir.exists():
        return "new"
    stored = _stored_config(p.run_dir)
    cfg = stored.get("config", stored)
    expected = p.config.to_dict()
    mismatched = sorted(k for k in expected if k != "data_dir" and _norm(cfg.get(k, "<missing>")) != _norm(expected[k]))
    if mismatched or stored.get("run_id", p.run_id) != p.run_id:
        raise ConfigError(
            f"run folder {p.run_dir} was written by a different config (differs in {', '.join(mismatched) or 'run_id'}); "
            "refusing to mix results: delete that folder or use another --results folder."
        )
    version = stored.get("version", stored.get("privrad_version"))
    if version is not None and version != privrad.__version__:
        raise ConfigError(
            f"run folder {p.run_dir} was written by privrad {version}, this is privrad {privrad.__version__}; "
            "refusing to mix versions: delete that folder or use another --results folder."
        )
    return "complete" if (p.run_dir / "run.ipynb").is_file() else "partial"


def _norm(v: Any) -> Any:
    return json.loads(json.dumps(v, sort_keys=True, default=str))


@dataclass
class Plan:
    profile: Profile
    points: list[Point]
    notebook: Path
    kernel: str
    cwd: Path

    @property
    def results_dir(self) -> Path:
        return self.profile.results_dir

    @property
    def todo(self) -> list[Point]:
        return [p for p in self.points if p.state != "complete"]


def plan(profile: Profile, *, notebook: Path | None = None, log: "Log | None" = None, root: Path | None = None) -> Plan:
    """Validate everything a sweep needs, in order of cost, before any run starts:
    profile keys and types → values → the notebook's parameters → data paths (simulating
    missing simulated data) → datasets loaded once each → run ids → existing run folders."""
    root = root or project_root()
    notebook = notebook or root / RUN_NOTEBOOK
    points = expand(profile)
    if not points:
        raise ConfigError(f"study profile {profile.name} expands to no runs; check its grid.")
    for p in points:
        check_values(p.config, where=p.label)
    declared = notebook_parameters(notebook)
    missing = sorted((set(FIELDS) | set(NOTEBOOK_EXTRA_PARAMETERS)) - declared)
    if missing:
        raise ConfigError(
            f"run notebook {notebook} has no parameter(s) {', '.join(missing)} in its `parameters` cell, so papermill cannot pass them; add them there."
        )
    prepare_data(profile, log=log)
    _run_ids(points, profile, profile.results_dir)
    kernel = profile.kernel or _default_kernel()
    return Plan(profile, points, notebook, kernel, Path.cwd())


def _default_kernel() -> str:
    """The ``privrad`` kernel (installed by ``make setup``) if present, else ``python3``."""
    try:
        from jupyter_client.kernelspec import find_kernel_specs

        return "privrad" if "privrad" in find_kernel_specs() else "python3"
    except Exception:  # pragma: no cover - jupyter_client always exists with papermill
        return "python3"


# --------------------------------------------------------------------------------------
# Execution
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """Everything needed to execute one point anywhere the results folder is visible."""

    run_id: str
    label: str
    notebook: str
    parameters: dict[str, Any]
    run_dir: str
    staging: str  # <results>/<profile>/.notebooks/<run_id>.ipynb
    failed: str  # <results>/<profile>/failed/<run_id>.ipynb
    kernel: str
    cwd: str
    timeout_s: float | None = None


@dataclass
class Outcome:
    run_id: str
    status: str  # ok | failed
    seconds: float
    error: str | None = None
    job: str | None = None  # the Slurm job id (Slurm executor)
    log: str | None = None  # the Slurm job's log file


def _pdeathsig(slurm_job: bool = False) -> None:  # pragma: no cover - runs in the child
    """Linux: the papermill child dies with its parent, so SIGKILL of a sweep stops its runs
    (their kernels exit on their own when papermill is gone).

    In a Slurm job, Slurm signals every process of the job: SIGTERM before it cancels, preempts
    or requeues the job (then SIGKILL), SIGUSR2 before its time limit. Only the job's own process
    acts on them (submitit requeues the job); the notebook and its kernel ignore them, so that a
    stopped job never reports a half-run notebook as a failed run."""
    if slurm_job:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _notebook_error(path: Path) -> str | None:
    """``ename: evalue`` of the first error output in an executed notebook."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) or []:
            if out.get("output_type") == "error":
                return f"{out.get('ename')}: {out.get('evalue')}".strip()
    return None


_PAPERMILL_DRIVER = """
import json, logging, sys
import papermill
logging.getLogger("papermill").setLevel(logging.WARNING)
nb, out, params, kernel, cwd, timeout = sys.argv[1:7]
papermill.execute_notebook(nb, out, parameters=json.load(open(params)), kernel_name=kernel, cwd=cwd,
                           progress_bar=False, execution_timeout=float(timeout) if timeout else None)
"""


def execute_task(task: Task, env: dict[str, str] | None = None, *, slurm_job: bool = False) -> Outcome:
    """Execute one run notebook with papermill in a subprocess and place the result.

    Success: the executed notebook is renamed to ``run_dir/run.ipynb`` (after the training
    core has written the run folder atomically). Failure: it is kept as ``failed/<run_id>.ipynb``
    with its error. Executors call this function (locally, or on a cluster node)."""
    t0 = time.time()
    staging, failed, run_dir = Path(task.staging), Path(task.failed), Path(task.run_dir)
    staging.parent.mkdir(parents=True, exist_ok=True)
    params_file = staging.with_suffix(".params.json")
    atomic_write_json(params_file, task.parameters)
    # papermill's own CLI reads parameters as YAML 1.1 (``1e-05`` would arrive as a string): pass JSON.
    cmd = [sys.executable, "-c", _PAPERMILL_DRIVER, task.notebook, str(staging), str(params_file), task.kernel,
           task.cwd, str(task.timeout_s or "")]
    proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, preexec_fn=(lambda: _pdeathsig(slurm_job)) if sys.platform.startswith("linux") else None)
    params_file.unlink(missing_ok=True)
    seconds = round(time.time() - t0, 2)
    error = None
    if proc.returncode != 0:
        killed = f"the notebook process was killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else None
        error = _notebook_error(staging) or killed or _last_line(proc.stdout) or f"papermill exited with status {proc.returncode}"
    elif not (run_dir / "config.json").is_file():
        error = f"the notebook finished but wrote no run folder at {run_dir}"
    else:
        stored = _stored_config(run_dir)
        if stored.get("run_id", task.run_id) != task.run_id:
            error = f"the run folder records run id {stored.get('run_id')}, expected {task.run_id} (did the data change during the sweep?)"
    if error is None:
        os.replace(staging, run_dir / "run.ipynb")
        failed.unlink(missing_ok=True)
        return Outcome(task.run_id, "ok", seconds)
    failed.parent.mkdir(parents=True, exist_ok=True)
    if staging.exists():
        os.replace(staging, failed)
    else:
        atomic_write_text(failed.with_suffix(".log"), proc.stdout[-20000:])
    return Outcome(task.run_id, "failed", seconds, error)


def _last_line(text: str) -> str | None:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:500] if lines else None


class Executor:
    """The seam between a sweep and where its runs execute: ``run(tasks)`` yields one
    :class:`Outcome` per task as they finish. A Slurm executor would submit
    :func:`execute_task` with submitit (one job per task or a job array) and yield the
    outcomes of ``job.result()`` as jobs complete."""

    def run(self, tasks: Sequence[Task]) -> Iterator[Outcome]:  # pragma: no cover - interface
        raise NotImplementedError


def visible_gpus() -> list[str]:
    """GPU indices this process may use (empty on CPU machines)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:  # pragma: no cover
        return []


class LocalExecutor(Executor):
    """``jobs`` papermill subprocesses at once; job slot ``i`` sees GPU ``gpus[i % len(gpus)]``
    through ``CUDA_VISIBLE_DEVICES`` (one GPU per job) and, on CPU, an even share of the cores
    for torch's threads so that parallel jobs do not oversubscribe the machine."""

    def __init__(self, jobs: int = 1, gpus: Sequence[str] | None = None):
        self.jobs = max(1, int(jobs))
        self.gpus = list(visible_gpus() if gpus is None else gpus)

    def _env(self, slot: int) -> dict[str, str]:
        if self.gpus:
            return {"CUDA_VISIBLE_DEVICES": self.gpus[slot % len(self.gpus)]}
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    def run(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        slots: list[int] = list(range(self.jobs))
        lock = threading.Lock()

        def work(task: Task) -> Outcome:
            with lock:
                slot = slots.pop(0)
            try:
                return execute_task(task, self._env(slot))
            finally:
                with lock:
                    slots.append(slot)

        with cf.ThreadPoolExecutor(max_workers=self.jobs) as pool:
            futures = [pool.submit(work, t) for t in tasks]
            for fut in cf.as_completed(futures):
                yield fut.result()


# --------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------


class Log:
    """Structured log: one JSON object per line in ``<results>/<profile>/study.jsonl``.
    Appended and flushed line by line (a crash can cut the last line, never earlier ones).
    Holds run ids, configs, timings and error names — never report text."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def event(self, event: str, **fields: Any) -> None:
        rec = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "event": event, **fields}
        with self._lock:
            self._fh.write(json.dumps(rec, default=str) + "\n")
            self._fh.flush()

    def close(self) -> None:
        self._fh.close()


@contextlib.contextmanager
def _sweep_lock(results_dir: Path) -> Iterator[None]:
    """One sweep per results folder at a time (a second one is refused, not interleaved)."""
    import fcntl

    results_dir.mkdir(parents=True, exist_ok=True)
    fh = open(results_dir / ".lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise ConfigError(f"another sweep is running on {results_dir}; wait for it to finish or use another --results folder.") from None
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def _clean_stale(results_dir: Path, keep: Iterable[str] = ()) -> None:
    """Remove what a killed sweep left half-done: temporary run folders and staged notebooks
    (never trusted, always redone), except the staged notebooks of runs in ``keep`` (Slurm jobs
    of an earlier sweep that are still running)."""
    keep = set(keep)
    for tmp in results_dir.glob(".*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    staged = results_dir / ".notebooks"
    if not keep:
        shutil.rmtree(staged, ignore_errors=True)
        return
    for f in staged.glob("*") if staged.is_dir() else ():
        if f.name.split(".", 1)[0] not in keep:
            shutil.rmtree(f, ignore_errors=True) if f.is_dir() else f.unlink(missing_ok=True)


def _live_jobs(pl: Plan) -> dict[str, str]:
    """Slurm jobs that an earlier sweep submitted for runs still to do and that are still queued
    or running: run id → job id (read from the last manifest; Slurm is asked only if there are any)."""
    manifest = pl.results_dir / "study.json"
    if not manifest.is_file():
        return {}
    todo = {p.run_id for p in pl.todo}
    try:
        rows = json.loads(manifest.read_text(encoding="utf-8"))["points"]
    except (OSError, ValueError, KeyError):
        return {}
    jobs = {r["run_id"]: r["job"] for r in rows if r.get("job") and r.get("run_id") in todo and r.get("status") != "failed"}
    if not jobs:
        return {}
    from privrad.slurm import LIVE_STATES, job_states

    states = job_states(jobs.values()) or {}
    return {rid: jid for rid, jid in jobs.items() if states.get(jid) in LIVE_STATES}


def _task(p: Point, pl: Plan) -> Task:
    params = {**p.config.to_dict(), "run_dir": str(p.run_dir)}
    return Task(
        run_id=p.run_id,
        label=p.label,
        notebook=str(pl.notebook.resolve()),
        parameters=params,
        run_dir=str(p.run_dir),
        staging=str(pl.results_dir / ".notebooks" / f"{p.run_id}.ipynb"),
        failed=str(pl.results_dir / "failed" / f"{p.run_id}.ipynb"),
        kernel=pl.kernel,
        cwd=str(pl.cwd),
    )


EXECUTORS = ("local", "slurm")


def run_study(profile: Profile, *, jobs: int | None = None, executor: Executor | str | None = None,
              notebook: Path | None = None, progress: bool = True, out=sys.stdout) -> int:
    """Validate, then execute every point not yet complete. Returns 0, or 1 if a run failed.

    ``executor``: ``"local"`` (default; ``jobs`` processes at once), ``"slurm"`` (one Slurm job
    per run, the profile's ``slurm:`` options; the cluster is asked before anything is written
    or submitted), or an :class:`Executor` instance."""
    results_dir = profile.results_dir
    name = executor if isinstance(executor, str) or executor is None else type(executor).__name__
    slurm = None
    if name == "slurm":
        if jobs is not None:
            raise ConfigError("--jobs sets how many local processes run at once; with --executor slurm set "
                              "slurm.array_parallelism instead (--set slurm.array_parallelism=N).")
        from privrad.slurm import SlurmExecutor

        slurm = SlurmExecutor(profile.slurm_config(), results_dir / "slurm", job_name=f"privrad-{profile.name}")
        slurm.check(len(expand(profile)))  # nothing is written or submitted before the cluster says yes
    elif isinstance(executor, str) and executor != "local":
        raise ConfigError(f"unknown executor {executor!r}; known executors are: {', '.join(EXECUTORS)}.")
    jobs = 1 if jobs is None else jobs
    with _sweep_lock(results_dir):
        log = Log(results_dir / "study.jsonl")
        try:
            t0 = time.time()
            pl = plan(profile, notebook=notebook, log=log)
            live = _live_jobs(pl)
            if live and slurm is None:
                rid, jid = next(iter(live.items()))
                raise ConfigError(f"{len(live)} run(s) of this study are still queued or running on Slurm (e.g. {rid} as job {jid}); "
                                  "wait for them with --executor slurm, or scancel them first.")
            _clean_stale(results_dir, keep=live)
            todo = pl.todo
            log.event("sweep_start", profile=profile.name, points=len(pl.points), todo=len(todo), jobs=jobs,
                      executor=name or "local")
            status: dict[str, dict[str, Any]] = {}
            for p in pl.points:
                if p.state == "complete":
                    status[p.run_id] = {**p.row(), "status": "cached", "seconds": 0.0, "error": None}
                    log.event("cached", **p.row())
            _write_manifest(pl, status)
            by_id = {p.run_id: p for p in todo}
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc=f"study {profile.name}", unit="run", disable=not progress or not todo, file=sys.stderr)
            if slurm is not None:
                def notify(event: str, rid: str, **fields: Any) -> None:
                    log.event(f"run_{event}", **by_id[rid].row(), **fields)
                    if event in ("submitted", "adopted"):
                        status[rid] = {**by_id[rid].row(), "status": "submitted", "seconds": None, "error": None, **fields}
                        _write_manifest(pl, status)

                def on_status(counts: dict[str, int], array: str) -> None:
                    bar.set_postfix_str(" · ".join(f"{k} {v}" for k, v in counts.items()) + f" · Slurm job {array}", refresh=True)

                slurm.adopt, slurm.notify, slurm.on_status = live, notify, on_status
                executor = slurm
            else:
                executor = executor if isinstance(executor, Executor) else LocalExecutor(jobs)
            for p in todo:
                log.event("run_start", **p.row(), run_dir=str(p.run_dir))
            outcomes = executor.run([_task(p, pl) for p in todo])
            with contextlib.ExitStack() as stack:
                if slurm is not None:  # an interrupted sweep (Ctrl-C, an error) cancels its Slurm jobs
                    stack.callback(outcomes.close)
                for oc in outcomes:
                    p = by_id[oc.run_id]
                    where = {"job": oc.job, "log": oc.log} if oc.job else {}
                    status[oc.run_id] = {**p.row(), "status": oc.status, "seconds": oc.seconds, "error": oc.error, **where}
                    log.event(f"run_{oc.status}", **p.row(), seconds=oc.seconds, error=oc.error, **where)
                    _write_manifest(pl, status)
                    bar.update(1)
                    if oc.status == "failed":
                        bar.write(f"privrad: run failed: {p.label} ({oc.run_id}): {oc.error}" + (f" (log: {oc.log})" if oc.log else ""))
            bar.close()
            with contextlib.suppress(OSError):
                (results_dir / ".notebooks").rmdir()  # only if empty
            counts = {s: sum(1 for r in status.values() if r["status"] == s) for s in ("ok", "failed", "cached")}
            wall = round(time.time() - t0, 1)
            log.event("sweep_end", profile=profile.name, seconds=wall, **counts)
            print(summary_table(pl, status), file=out)
            print(f"{profile.name}: {counts['ok']} ok, {counts['failed']} failed, {counts['cached']} cached "
                  f"in {wall:.1f} s — results in {results_dir}", file=out)
            if counts["failed"]:
                print(f"the executed notebooks of the failed runs, with their errors, are in {results_dir / 'failed'}", file=out)
            return 1 if counts["failed"] else 0
        finally:
            log.close()


def _write_manifest(pl: Plan, status: dict[str, dict[str, Any]]) -> None:
    rows = []
    for p in pl.points:
        r = status.get(p.run_id, {**p.row(), "status": "pending", "seconds": None, "error": None})
        rows.append({**r, "run_dir": str(p.run_dir), "config": p.config.to_dict()})
    atomic_write_json(pl.results_dir / "study.json", {"profile": pl.profile.name, "points": rows})


def summary_table(pl: Plan, status: dict[str, dict[str, Any]]) -> str:
    import pandas as pd

    rows = [status[p.run_id] for p in pl.points if p.run_id in status]
    if not rows:
        return "(no runs)"
    columns = ["status", "run_id", "dataset", "model", "method", "epsilon", "seed", "seconds", "error"]
    if any(r.get("job") for r in rows):
        columns[-1:-1] = ["job", "log"]
    df = pd.DataFrame(rows).reindex(columns=columns)
    df["run_id"] = df["run_id"].map(_short_id)
    df = df.fillna("")
    order = {"failed": 0, "ok": 1, "cached": 2}
    df = df.sort_values("status", key=lambda s: s.map(order), kind="stable")
    with pd.option_context("display.width", 200, "display.max_colwidth", 80, "display.max_rows", 1000):
        return df.to_string(index=False)


def _short_id(run_id: str) -> str:
    """The hash part of a run id (the rest is in the table's other columns)."""
    return run_id.rsplit("__", 1)[-1][:12]


def study_status(profile: Profile, out=sys.stdout) -> int:
    """What the last sweep of a profile recorded, checked against the run folders on disk."""
    import pandas as pd

    manifest = profile.results_dir / "study.json"
    if not manifest.is_file():
        print(f"no sweep has been started for profile {profile.name} in {profile.results_dir}; run `privrad study run --profile {profile.name}`.", file=out)
        return 0
    rows = json.loads(manifest.read_text(encoding="utf-8"))["points"]
    for r in rows:
        rd = Path(r["run_dir"])
        r["complete"] = (rd / "run.ipynb").is_file() and (rd / "config.json").is_file()
    # runs submitted to Slurm that are not complete: what Slurm says of their jobs
    jobs = {r["job"] for r in rows if r.get("job") and not r["complete"]}
    states: dict[str, str] | None = {}
    if jobs:
        from privrad.slurm import LIVE_STATES, QUEUED_STATES, job_states

        states = job_states(jobs)
    for r in rows:
        job = r.get("job") if not r["complete"] else None
        state = (states or {}).get(job) if job else None
        r["slurm"] = f"{job} {state or ('(Slurm not reachable)' if states is None else 'ENDED')}" if job else ""
        if r["complete"]:
            r["status"] = "complete"
        elif state in LIVE_STATES if job else False:
            r["status"] = "queued" if state in QUEUED_STATES else "running"
        elif (profile.results_dir / "failed" / f"{r['run_id']}.ipynb").is_file():
            r["status"] = "failed"
        else:
            r["status"] = "missing"
    columns = ["status", "run_id", "dataset", "model", "method", "epsilon", "seed"] + (["slurm"] if jobs else [])
    df = pd.DataFrame(rows)[columns]
    df["run_id"] = df["run_id"].map(_short_id)
    print(df.to_string(index=False), file=out)
    print(", ".join(f"{k}: {v}" for k, v in df["status"].value_counts().items()), file=out)
    return 0


# --------------------------------------------------------------------------------------
# The book
# --------------------------------------------------------------------------------------

GENERATED = Path("book") / "generated"


def completed_runs(results_dir: Path) -> list[Path]:
    """The complete run folders (``config.json`` and the executed ``run.ipynb``) of the last
    sweep of this results folder, as listed in its ``study.json``: folders left over from an
    earlier grid or configuration are not mixed into the book's tables. Without a manifest,
    every complete folder."""
    if not results_dir.is_dir():
        return []
    complete = lambda d: (d / "run.ipynb").is_file() and (d / "config.json").is_file()  # noqa: E731
    manifest = results_dir / "study.json"
    if manifest.is_file():
        ids = [r["run_id"] for r in json.loads(manifest.read_text(encoding="utf-8"))["points"]]
        return sorted(results_dir / i for i in ids if complete(results_dir / i))
    return sorted(d for d in results_dir.iterdir() if d.is_dir() and not d.name.startswith(".") and complete(d))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _titled_copy(src: Path, dst: Path, title: str) -> None:
    """Copy an executed notebook, giving it a page title (its first heading) so the appendix
    pages are distinguishable; cells and outputs are untouched."""
    nb = json.loads(src.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            if text.lstrip().startswith("# "):
                first, _, rest = text.lstrip().partition("\n")
                cell["source"] = f"# {title}\n{rest}"
                break
    atomic_write_text(dst, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def _execute_for_book(papermill, src: Path, dst: Path, parameters: dict[str, Any], kernel: str) -> None:
    try:
        papermill.execute_notebook(str(src), str(dst), parameters=parameters, kernel_name=kernel,
                                   cwd=str(Path.cwd()), progress_bar=False)
    except papermill.PapermillExecutionError as exc:
        raise PrivradError(f"{src} failed ({exc.ename}: {exc.evalue}); the executed notebook with the error is {dst}, and no book was built.") from None


def build_book(profile: Profile, *, root: Path | None = None, out=sys.stdout) -> int:
    """Collect the executed notebooks into ``book/generated/`` and build the book offline.

    Executes (with papermill) only the analysis notebook over the run folders and the data
    notebook over the profile's datasets; Jupyter Book itself executes nothing
    (``execute_notebooks: off``) and treats every warning as an error."""
    import papermill

    root = (root or Path.cwd()).resolve()
    results_dir = profile.results_dir if profile.results_dir.is_absolute() else Path.cwd() / profile.results_dir
    runs = completed_runs(results_dir)
    if not runs:
        raise ConfigError(
            f"no completed run in {profile.results_dir}, so there is nothing to put in the book; "
            f"run `privrad study run --profile {profile.name}` first."
        )
    for required in ("_config.yml", "_toc.yml"):
        if not (root / required).is_file():
            raise ConfigError(f"{root / required} does not exist; run `privrad book build` from the project folder.")
    kernel = profile.kernel or _default_kernel()
    t0 = time.time()
    staging = root / "book" / ".generated.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "runs").mkdir(parents=True)
    # the appendix: every executed run notebook, titled by its point
    for rd in runs:
        cfg = _stored_config(rd)
        c = cfg.get("config", cfg)
        title = f"{c['dataset']} · {c['model']} · {c['method']} · ε = {epsilon_label(c.get('epsilon'))} · seed {c['seed']}"
        _titled_copy(rd / "run.ipynb", staging / "runs" / f"{_slug(rd.name)}.ipynb", title)
    # results and statistics: the analysis notebook over the run folders
    print(f"privrad: executing the analysis notebook over {len(runs)} runs …", file=sys.stderr)
    _execute_for_book(papermill, root / "notebooks" / "analysis.ipynb", staging / "analysis.ipynb",
                      {"results_dir": str(results_dir), "run_dirs": [str(rd) for rd in runs], "profile": profile.name}, kernel)
    # data: the datasets helper's notebook, over this profile's datasets
    data_nb = root / "notebooks" / "data.ipynb"
    if data_nb.is_file():
        print("privrad: executing the data notebook …", file=sys.stderr)
        datasets = [[d.dataset, str(_resolve(d.data_dir))] for d in profile.datasets]
        tokenizer = profile.book.get("tokenizer") or (profile.grid.get("model") or [RunConfig().model])[0]
        options = {d.dataset: d.dataset_options for d in profile.datasets if d.dataset_options}
        _execute_for_book(papermill, data_nb, staging / "data.ipynb",
                          {"datasets": datasets, "dataset_options": options, "tokenizer": tokenizer}, kernel)
    else:
        atomic_write_text(staging / "data.md", "# The datasets, described\n\nThe data notebook (`notebooks/data.ipynb`) is not present in this checkout.\n")
    generated = root / GENERATED
    shutil.rmtree(generated, ignore_errors=True)
    os.replace(staging, generated)
    shutil.rmtree(root / "_build", ignore_errors=True)  # no page of an earlier build survives
    print("privrad: building the book …", file=sys.stderr)
    cmd = [sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; sys.argv[0] = 'jupyter-book'; main()",
           "build", str(root), "--warningiserror", "--nitpick", "--keep-going", "--all"]
    proc = subprocess.run(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    index = root / "_build" / "html" / "index.html"
    if proc.returncode != 0 or not index.is_file():
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        print(tail, file=sys.stderr)
        raise PrivradError(f"the book build failed (jupyter-book exit status {proc.returncode}; warnings are errors): see the messages above.")
    print(f"book: {len(runs)} runs, built in {time.time() - t0:.1f} s → {index}", file=out)
    return 0


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile, sets=args.set or (), results=args.results)
    return run_study(profile, jobs=args.jobs, executor=args.executor, notebook=Path(args.notebook) if args.notebook else None,
                     progress=not args.no_progress)


def _cmd_status(args: argparse.Namespace) -> int:
    return study_status(load_profile(args.profile, sets=args.set or (), results=args.results))


def _cmd_book(args: argparse.Namespace) -> int:
    return build_book(load_profile(args.profile, results=args.results))


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    study = subparsers.add_parser("study", help="run a study profile: a grid of runs executed as notebooks")
    ssub = study.add_subparsers(dest="study_command", metavar="SUBCOMMAND", required=True)

    run = ssub.add_parser("run", help="execute every run of a profile that is not complete yet")
    run.add_argument("--profile", default="default", help="a profile in studies/ (default: default) or a .yml path")
    run.add_argument("--executor", choices=EXECUTORS, default="local",
                     help="where runs execute: local processes (default) or one Slurm job per run (options: the profile's slurm: block, --set slurm.KEY=VALUE)")
    run.add_argument("--jobs", type=int, default=None, help="runs executed at once by the local executor (default 1; one process, and one GPU where there are GPUs, per job)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override the profile: a grid axis (epsilon=[1,null]), a parameter (lr=1e-3) or a dataset path (mimic-cxr.data_dir=/data/mimic)")
    run.add_argument("--results", help="results root (default: the profile's, usually results/); runs go to RESULTS/PROFILE/RUN_ID")
    run.add_argument("--notebook", help=argparse.SUPPRESS)
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=_cmd_run)

    st = ssub.add_parser("status", help="which runs of a profile are complete, failed or missing")
    st.add_argument("--profile", default="default")
    st.add_argument("--set", action="append", metavar="KEY=VALUE")
    st.add_argument("--results")
    st.set_defaults(func=_cmd_status)

    book = subparsers.add_parser("book", help="build the Jupyter Book from a study's executed notebooks")
    bsub = book.add_subparsers(dest="book_command", metavar="SUBCOMMAND", required=True)
    build = bsub.add_parser("build", help="collect executed notebooks and build _build/html/index.html (offline, warnings as errors)")
    build.add_argument("--profile", default="default")
    build.add_argument("--results")
    build.set_defaults(func=_cmd_book)
