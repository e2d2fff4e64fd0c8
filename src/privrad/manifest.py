"""What a study ran and where each of its runs stands: ``study.json`` (the manifest), the summary
table a sweep ends with, and ``privrad study status``.

``study.json`` holds what the last sweep ran — the profile as run (after ``--set``), its datasets,
book settings and kernel, and every point with its config and state — and is what ``privrad study
status`` and ``privrad book build`` read, never the profile. A run's state is one of
:data:`privrad.runs.RUN_STATES` in the manifest, the summary table, ``study status`` and the
sweep's log; that a complete run was cached (not run now) is its own column.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privrad.errors import ConfigError
from privrad.io import atomic_write_json
from privrad.profiles import resolve_path
from privrad.runs import RUN_STATES, run_state

if TYPE_CHECKING:
    from privrad.study import Plan

MANIFEST = "study.json"


def point_state(run_dir: Path, rid: str, results_dir: Path) -> tuple[str, str | None]:
    """A point's state (one of :data:`RUN_STATES`) and, unless complete, why, naming the file:
    complete = a complete run folder of run ``rid`` (:func:`run_state`) with its executed notebook.
    The sweep, ``study status`` and the book all judge a point by this."""
    if not run_dir.exists():
        failed = results_dir / "failed" / f"{rid}.ipynb"
        if failed.is_file():
            return "failed", f"the last attempt failed; its notebook is {failed}"
        return "missing", None
    state = run_state(run_dir, run_id=rid)
    if not state.complete:
        return "incomplete", state.problem
    if not state.notebook:
        return "incomplete", f"{run_dir}: run.ipynb is missing (run the study again to place it)"
    return "complete", None


def write_manifest(pl: Plan, status: dict[str, dict[str, Any]]) -> None:
    """``study.json``: what this sweep ran — the profile as run (after ``--set``), its datasets,
    book settings and kernel, and every point with its config and state. The book and ``study
    status`` read this, never the profile."""
    rows = [{**status[p.run_id], "run_dir": str(p.run_dir), "config": p.config.to_dict()} for p in pl.points]
    used = {p.entry.name for p in pl.points}
    datasets = [{"name": d.name, "dataset": d.dataset, "data_dir": str(resolve_path(d.data_dir).absolute()),
                 "dataset_options": d.dataset_options} for d in pl.profile.datasets if d.name in used]
    atomic_write_json(pl.results_dir / MANIFEST, {"profile": pl.profile.name, "datasets": datasets,
                                                  "book": pl.profile.book, "kernel": pl.kernel, "points": rows})


def read_manifest(results_dir: Path) -> dict | None:
    """The last sweep's ``study.json`` (None when no sweep has started); unreadable → one sentence."""
    path = results_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc.get("points"), list):
            raise ValueError("no points")
    except (OSError, ValueError, AttributeError):
        raise ConfigError(f"{path} cannot be read (truncated or edited); run the study again to rewrite it.") from None
    return doc


def summary_table(rows: list[dict[str, Any]]) -> str:
    import pandas as pd

    if not rows:
        return "(no runs)"
    df = pd.DataFrame(rows)
    df["cached"] = df["cached"].map({True: "yes", False: ""})  # a state is one of RUN_STATES; cached is a column
    columns = ["state", "cached", "run_id", "dataset", "model", "method", "epsilon", "seed", "seconds", "error"]
    if "job" in df and df["job"].notna().any():  # Slurm: each run's job id and log, beside its error
        columns[-1:-1] = ["job", "log"]
    df = df.reindex(columns=columns)
    df["run_id"] = df["run_id"].map(_short_id)
    df[columns[-3:]] = df[columns[-3:]].fillna("")
    order = {s: i for i, s in enumerate(("failed", "incomplete", "missing", "complete"))}
    df = df.sort_values(["state", "cached"], key=lambda s: s.map(order) if s.name == "state" else s, kind="stable")
    with pd.option_context("display.width", 200, "display.max_colwidth", 80, "display.max_rows", 1000):
        return df.to_string(index=False)


def _short_id(run_id: str) -> str:
    """The hash part of a run id (the rest is in the table's other columns)."""
    return run_id.rsplit("__", 1)[-1][:12]


def study_status(results_dir: Path, profile_name: str, out=sys.stdout) -> int:
    """What the last sweep recorded, checked against the run folders on disk now: each point's
    state, and for an incomplete one the folder and the file at fault."""
    import pandas as pd

    manifest = read_manifest(results_dir)
    if manifest is None:
        print(f"no sweep has been started for profile {profile_name} in {results_dir}; run `privrad study run --profile {profile_name}`.", file=out)
        return 0
    rows = manifest["points"]
    for r in rows:
        r["state"], r["problem"] = point_state(results_dir / r["run_id"], r["run_id"], results_dir)
    columns = ["state", "run_id", "dataset", "model", "method", "epsilon", "seed"]
    jobs = {r["job"] for r in rows if r.get("job") and r["state"] != "complete"}
    if jobs:  # runs submitted to Slurm that are not complete: what Slurm says of their jobs
        from privrad.slurm import describe

        said = describe(jobs)
        for r in rows:
            r["slurm"] = said.get(r.get("job"), "") if r["state"] != "complete" else ""
        columns.append("slurm")
    df = pd.DataFrame(rows)[columns]
    df["run_id"] = df["run_id"].map(_short_id)
    with pd.option_context("display.width", 200, "display.max_rows", 1000):
        print(df.to_string(index=False), file=out)
    for r in rows:
        if r["state"] == "incomplete":
            print(f"incomplete: {r['problem']}", file=out)
    counts = df["state"].value_counts()
    print(", ".join(f"{s}: {counts[s]}" for s in RUN_STATES if s in counts), file=out)
    return 0
