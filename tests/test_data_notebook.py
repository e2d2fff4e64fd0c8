"""The data chapter (notebooks/data.ipynb) executes under papermill on small simulated data and
never shows credentialed text."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from privrad.data import load_dataset
from privrad.data.simulate import simulate

REPO = Path(__file__).resolve().parents[1]
OPENI = REPO.parent / "shared/data/openi"


@pytest.mark.slow
def test_data_notebook_executes_and_hides_credentialed_text(tmp_path):
    papermill = pytest.importorskip("papermill")
    nb = nbformat.read(REPO / "notebooks/data.ipynb", as_version=4)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    sim_m = simulate("mimic-cxr", tmp_path / "mimic-cxr", n=150, seed=0)
    sim_c = simulate("ct-rate", tmp_path / "ct-rate", n=60, seed=0)
    cred = simulate("mimic-cxr", tmp_path / "credentialed", n=80, seed=7)
    datasets = [["simulated-mimic-cxr", str(sim_m)], ["simulated-ct-rate", str(sim_c)], ["mimic-cxr", str(cred)]]
    if OPENI.is_dir():
        datasets.append(["openi", str(OPENI)])
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(REPO / "notebooks/data.ipynb"), str(out), kernel_name="privrad", cwd=str(REPO),
                               parameters={"datasets": datasets, "n_examples": 1}, progress_bar=False)
    executed = nbformat.read(out, as_version=4)
    text = "\n".join(
        o.get("text", "") + "".join(str(v) for k, v in o.get("data", {}).items() if k.startswith("text/"))
        for c in executed.cells if c.cell_type == "code" for o in c.outputs
    )
    assert "mimic-cxr: credentialed text, no examples shown" in text
    assert "--- simulated-mimic-cxr" in text and "--- simulated-ct-rate" in text
    assert sum(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in executed.cells if c.cell_type == "code" for o in c.outputs) >= 6
    secret = load_dataset("mimic-cxr", cred)
    assert not any(t in text for t in secret.texts if len(t) > 60)
    assert "Traceback" not in text
