"""Live progress of a run, as its sweep shows it beside the runs-done bar.

A sweep gives each run it launches a progress file (the environment variable
``PRIVRAD_PROGRESS_FILE``, set by the executor). The run writes its phase there — loading
the data, calibrating the noise, training (epoch, step, steps in all, seconds of training so
far), evaluating — at most four times a second, atomically; the sweep reads the files of its
running runs and shows each as one line: ``epoch 2/3 · step 130/174 · ETA 0:21``. The ETA is
the remaining steps at the pace of the steps already done. Outside a sweep (no variable) a run
writes nothing.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from privrad.io import atomic_write_json

ENV = "PRIVRAD_PROGRESS_FILE"


class Reporter:
    """A run's progress: what it tells its sweep (a no-op without a progress file) and, with
    ``bar``, the training bar shown where the run itself runs (``privrad run``, a notebook)."""

    def __init__(self, path: str | os.PathLike | None = None, *, interval_s: float = 0.25, bar: bool = False,
                 desc: str = ""):
        path = path if path is not None else os.environ.get(ENV)
        self.path = Path(path) if path else None
        self.interval_s = interval_s
        self._last = 0.0
        self._train_t0: float | None = None
        self._show_bar, self._desc, self._bar = bar, desc, None

    def phase(self, name: str) -> None:
        """A phase without steps: ``loading data``, ``calibrating noise``, ``evaluating`` …"""
        self._write({"phase": name}, force=True)

    def step(self, step: int, total: int, *, epoch: int, num_epochs: int, **shown: str) -> None:
        """``step`` of ``total`` logical steps done, in ``epoch`` (1-based) of ``num_epochs``;
        ``shown`` (e.g. ``loss="0.412"``) goes beside the training bar."""
        if self._show_bar:
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=self._desc, leave=False)
            if shown:
                self._bar.set_postfix(shown)  # shown at once (as tqdm does by default)
            self._bar.update(step - self._bar.n)
        now = time.monotonic()
        if self._train_t0 is None:
            self._train_t0 = now
        self._write({"phase": "training", "step": int(step), "total": int(total), "epoch": int(epoch),
                     "num_epochs": int(num_epochs), "train_s": round(now - self._train_t0, 3)},
                    force=step in (0, total))

    def close(self) -> None:
        """Ends the training bar (the progress file stays: the sweep reads its last record)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _write(self, record: dict[str, Any], *, force: bool) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        try:
            atomic_write_json(self.path, record)
        except OSError:  # progress is a courtesy: it never stops a run
            pass


def read(path: str | os.PathLike) -> dict[str, Any] | None:
    """The last record a run wrote, or None (not started yet, or outside a sweep)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def eta_s(record: dict[str, Any]) -> float | None:
    """Seconds left in training at the pace of the steps done so far (None before the first)."""
    step, total, spent = record.get("step", 0), record.get("total", 0), record.get("train_s", 0.0)
    if not step or not total or spent <= 0:
        return None
    return spent / step * max(0, total - step)


def clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def describe(record: dict[str, Any] | None) -> str:
    """One line for a running run: its phase, or ``epoch e/E · step s/S · ETA m:ss``."""
    if not record:
        return "starting"
    if record.get("phase") != "training":
        return str(record.get("phase", "starting"))
    return (f"epoch {record['epoch']}/{record['num_epochs']} · step {record['step']}/{record['total']} · "
            f"ETA {clock(eta_s(record))}")


def line(label: str, record: dict[str, Any] | None, width: int = 12) -> str:
    """A running run's line under the runs-done bar: label, a bar of its training steps, :func:`describe`."""
    done = 0.0
    if record and record.get("phase") == "training" and record.get("total"):
        done = min(1.0, record["step"] / record["total"])
    filled = int(round(done * width))
    return f"  {label} |{'█' * filled}{' ' * (width - filled)}| {describe(record)}"


class Display:
    """The sweep's progress: the runs-done bar, and under it one line per running run
    (its label, a bar of its training steps and :func:`describe`), refreshed from the runs'
    progress files by a background thread. Thread-safe: executors report from worker threads."""

    def __init__(self, *, total: int, desc: str, enabled: bool = True, file=None, interval_s: float = 0.25):
        import sys
        import threading

        from tqdm import tqdm

        self._tqdm = tqdm
        self.enabled = enabled and total > 0
        self.file = file or sys.stderr
        self.interval_s = interval_s
        self.bar = tqdm(total=total, desc=desc, unit="run", disable=not self.enabled, file=self.file, dynamic_ncols=True)
        self._running: dict[str, tuple[Any, str, Path | None]] = {}  # run id → (its line, label, progress file)
        self._free: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="privrad-progress", daemon=True)
        if self.enabled:
            self._thread.start()

    def started(self, run_id: str, label: str, progress_file: str | os.PathLike | None) -> None:
        if not self.enabled:
            return
        with self._lock:
            position = self._free.pop(0) if self._free else len(self._running) + 1
            bar = self._tqdm(total=1, position=position, leave=False, file=self.file, dynamic_ncols=True, bar_format="{desc}")
            bar.set_description_str(line(label, None), refresh=True)
            self._running[run_id] = (bar, label, Path(progress_file) if progress_file else None)

    def finished(self, run_id: str, message: str | None = None) -> None:
        if not self.enabled:
            if message:
                print(message, file=self.file)
            return
        with self._lock:
            bar, _, _ = self._running.pop(run_id, (None, None, None))
            if bar is not None:
                self._free.append(bar.pos if bar.pos > 0 else -bar.pos)
                self._free.sort()
                bar.close()
            if message:
                self.bar.write(message, file=self.file)
            self.bar.update(1)

    def write(self, message: str) -> None:
        with self._lock:
            self._tqdm.write(message, file=self.file)

    def refresh(self) -> None:
        with self._lock:
            for bar, label, path in self._running.values():
                bar.set_description_str(line(label, read(path) if path else None), refresh=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            for bar, _, _ in self._running.values():
                bar.close()
            self._running.clear()
            self.bar.close()
