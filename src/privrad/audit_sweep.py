"""A sweep's audits: after every run of a study finished, the runs its profile's ``audit:`` block
selects (:class:`privrad.audit.AuditSettings`) are audited (:func:`privrad.audit.audit_run`) —
``--jobs`` of them at a time for a local sweep, in worker processes that each use their share of
the cores, as the runs did. The sweep (:mod:`privrad.study`) calls :func:`audit_points`; events
go to the study's log and ``study.json`` records which runs hold an audit."""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any

from privrad.manifest import write_manifest

if TYPE_CHECKING:  # pragma: no cover
    from privrad.profiles import Point
    from privrad.study import Log, Plan


def audit_points(pl: Plan, status: dict[str, dict[str, Any]], *, log: Log, progress: bool = True, jobs: int = 1) -> int:
    """Audit the complete runs the profile's ``audit:`` block selects (:mod:`privrad.audit`):
    each gets ``audit.json`` unless it already holds an audit with the same settings. Audits run
    after every run finished, ``jobs`` at a time (at most one per core): one in this process, more
    in worker processes that each use their share of the cores, as the runs did (an audit trains
    the run's configuration again, with canaries). Returns the number of audits that failed; a
    failure names the run and is logged, and the other audits go on."""
    from privrad.audit import summary_line
    from privrad.runs import read_audit

    settings = pl.profile.audit_settings()
    if settings is None:
        return 0
    chosen = [p for p in pl.points if settings.selects(p.config) and status[p.run_id]["state"] == "complete"]
    todo = []
    for p in chosen:
        done = read_audit(p.run_dir)
        if done is not None and done.get("settings") == settings.recorded():
            status[p.run_id]["audited"] = True
        else:
            todo.append(p)
    cores = os.cpu_count() or 1
    workers = max(1, min(jobs or 1, len(todo), cores))
    failed = 0
    started: dict[Any, tuple[Point, float]] = {}

    def start(p: Point, submit) -> Any:
        if progress:
            print(f"privrad: auditing {len(started) + 1}/{len(todo)}: {p.label} …", file=sys.stderr)
        log.event("audit_start", **p.row())
        key = submit(p)
        started[key] = (p, time.time())
        return key

    def ended(p: Point, t0: float, doc: dict | None, error: str | None) -> None:
        nonlocal failed
        if error is not None:
            failed += 1
            log.event("audit_failed", **p.row(), error=error)
            print(f"privrad: audit failed: {p.label} ({p.run_id}): {error}", file=sys.stderr)
            return
        status[p.run_id]["audited"] = True
        log.event("audit_end", **p.row(), seconds=round(time.time() - t0, 1), summary=summary_line(doc))
        if progress:
            print(f"privrad: {summary_line(doc)}", file=sys.stderr)

    if workers == 1:
        for p in todo:
            _, t0 = started[start(p, lambda q: q.run_id)]
            doc, error = _audit_one(str(p.run_dir), settings)
            ended(p, t0, doc, error)
    else:
        import concurrent.futures as cf
        import multiprocessing

        _reference_models(todo, settings, log=log, progress=progress)

        queue = list(todo)
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            submit = lambda q: pool.submit(_audit_one, str(q.run_dir), settings, max(1, cores // workers))  # noqa: E731
            running = set()
            while queue or running:
                while queue and len(running) < workers:
                    running.add(start(queue.pop(0), submit))
                done, running = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for f in done:
                    p, t0 = started[f]
                    try:
                        doc, error = f.result()
                    except Exception as exc:  # a worker that died (killed, out of memory)
                        doc, error = None, f"the audit's worker process failed: {exc}"
                    ended(p, t0, doc, error)
    write_manifest(pl, status)
    return failed


def _reference_models(todo: list[Point], settings, *, log: Log, progress: bool) -> None:
    """Train the reference models of the calibrated attack (:func:`privrad.audit.reference_runs`)
    here, with every core, before the audits start in parallel: runs that differ only in ε or seed
    share them, and a worker that trained them with its one core would keep the others waiting
    on the reference's lock (measured on the default study: 163 s for the first two audits, 39 s
    for the third, which found the reference made)."""
    from privrad.audit import run_dataset, membership_candidates, reference_config, reference_runs
    from privrad.errors import PrivradError
    from privrad.runs import read_run

    if not settings.reference_models:
        return
    seen: list[Any] = []
    for p in todo:
        recipe = reference_config(p.config, settings)
        if recipe in seen:
            continue
        seen.append(recipe)
        t0 = time.time()
        try:
            run = read_run(p.run_dir)
            dataset = run_dataset(run)
            _, info = reference_runs(run, dataset, settings, membership_candidates(dataset, settings))
        except PrivradError:  # the audit of this run fails again, and says why, in its worker
            continue
        if info["trained_now"]:
            log.event("audit_reference", **p.row(), folder=info["folder"], models=info["models"], seconds=round(time.time() - t0, 1))
            if progress:
                print(f"privrad: trained {info['trained_now']} reference model(s) for the calibrated attack ({info['folder']})",
                      file=sys.stderr)


def _audit_one(run_dir: str, settings, threads: int | None = None) -> tuple[dict | None, str | None]:
    """One audit (:func:`privrad.audit.audit_run`), in this process or a worker's: the document,
    or the one-sentence reason it failed. ``threads``: torch's share of the cores in a worker."""
    from privrad.audit import audit_run
    from privrad.errors import PrivradError

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        return audit_run(run_dir, settings), None
    except PrivradError as exc:
        return None, str(exc)


# ----------------------------------------------------------------------------- CLI
