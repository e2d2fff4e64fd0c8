"""``simulated-mimic-cxr`` and ``simulated-ct-rate``: the real loaders run on the simulator's output.

These entries do nothing but run :func:`~privrad.data.mimic_cxr.load_mimic_cxr` or
:func:`~privrad.data.ct_rate.load_ct_rate` unchanged (same options) and then mark the text as not
credentialed, with ``provenance["source"] == "simulated"``. They refuse a folder without the
simulator's marker file (``PRIVRAD_SIMULATED.json``): otherwise pointing ``simulated-mimic-cxr`` at
a real PhysioNet download would label credentialed text as publishable. Loading simulator output
with ``mimic-cxr`` instead keeps ``credentialed=True``, exactly as for a real download.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from pathlib import Path

from privrad.data.base import register_dataset
from privrad.data.common import require_dir
from privrad.data.ct_rate import load_ct_rate
from privrad.data.labels import CHEXPERT_LABELS, CT_RATE_LABELS
from privrad.data.mimic_cxr import load_mimic_cxr
from privrad.data.simulate import MARKER
from privrad.errors import DataError


def _marker(path: str | os.PathLike, kind: str) -> dict:
    root = require_dir(path, f"simulated {kind}")
    try:
        marker = json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        marker = None
    if not isinstance(marker, dict) or marker.get("kind") != kind:
        raise DataError(
            f"{str(root)!r} is not privrad's simulated {kind} output (no valid {MARKER}); "
            f"write it with `privrad data simulate {kind} --out {root}`, or load a real download as {kind!r}."
        )
    return marker


def _as_simulated(ds, name: str, marker: dict):
    summary = ds.provenance["summary"].replace(f"{ds.name}:", f"{name} (read by the {ds.name} loader):", 1)
    return dataclasses.replace(
        ds, name=name, credentialed=False,
        provenance={**ds.provenance, "dataset": name, "source": "simulated", "loader": ds.name, "simulator": marker,
                    "summary": summary},
    )


def load_simulated_mimic_cxr(path: str | os.PathLike, **options):
    """Simulated MIMIC-CXR read by the real ``mimic-cxr`` loader (same options); not credentialed."""
    marker = _marker(path, "mimic-cxr")
    return _as_simulated(load_mimic_cxr(Path(path), **options), "simulated-mimic-cxr", marker)


def load_simulated_ct_rate(path: str | os.PathLike, **options):
    """Simulated CT-RATE read by the real ``ct-rate`` loader (same options); not credentialed."""
    marker = _marker(path, "ct-rate")
    return _as_simulated(load_ct_rate(Path(path), **options), "simulated-ct-rate", marker)


load_simulated_mimic_cxr.__signature__ = inspect.signature(load_mimic_cxr)  # type: ignore[attr-defined]
load_simulated_ct_rate.__signature__ = inspect.signature(load_ct_rate)  # type: ignore[attr-defined]

register_dataset(
    "simulated-mimic-cxr", credentialed=False, label_names=CHEXPERT_LABELS,
    description="privrad's simulated MIMIC-CXR download, read by the mimic-cxr loader (not credentialed)",
)(load_simulated_mimic_cxr)
register_dataset(
    "simulated-ct-rate", credentialed=False, label_names=CT_RATE_LABELS,
    description="privrad's simulated CT-RATE download, read by the ct-rate loader (not credentialed)",
)(load_simulated_ct_rate)
