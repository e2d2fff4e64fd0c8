"""Study profiles, grid expansion and the validation done before any run starts (no training)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_profile
from privrad import executors, profiles, study
from privrad.config import validate_config
from privrad.config import RunConfig
from privrad.errors import ConfigError, DataError, PrivacyError

ROOT = Path(__file__).resolve().parents[1]


def test_every_profile_loads_and_expands():
    sizes = {}
    for name in ("default", "paper", "openi", "smoke"):
        p = profiles.load_profile(name, root=ROOT)
        points = profiles.expand(p)
        sizes[name] = len(points)
        for pt in points:
            assert validate_config(pt.config) == pt.config  # expand returns validated configs
    assert set(profiles.known_profiles(ROOT)) >= {"default", "paper", "openi", "smoke"}
    assert sizes["default"] == 2 * 1 * 5  # 2 datasets × 1 model (minilm-l6) × (4 ε + non-private)
    assert sizes["paper"] == 2 * 3 * 6 * 3  # the paper's 108 runs: 5 ε + full fine-tuning, 3 seeds
    paper = profiles.expand(profiles.load_profile("paper", root=ROOT))
    full = [p for p in paper if p.config.method == "full"]
    assert len(full) == 18 and all(p.config.epsilon is None and p.config.lr == 5e-5 for p in full)
    assert {p.config.max_length for p in paper if p.entry.name == "ct-rate"} == {512}


def test_smoke_profile_exercises_every_path():
    points = profiles.expand(profiles.load_profile("smoke", root=ROOT))
    c = [p.config for p in points]
    assert {x.dataset for x in c} == {"mimic-cxr", "simulated-ct-rate"}  # a credentialed loader and a public one
    assert {x.method for x in c} == {"lora", "full"}
    assert None in {x.epsilon for x in c} and any(x.epsilon for x in c)
    assert {x.model for x in c} == {"tiny-bert", "tiny-albert"}


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown study profile 'nope'; known profiles are: course, default, openi, paper, smoke"):
        profiles.load_profile("nope", root=ROOT)


def test_unknown_grid_key_lists_known_keys(tmp_path):
    path = write_profile(tmp_path, grid={"epsilon": [1], "learning_rate": [0.1]})
    with pytest.raises(ConfigError, match=r"unknown grid key\(s\) learning_rate; known keys are: .*batch_size.*epsilon.*lr,"):
        profiles.load_profile(str(path), root=ROOT)
    path = write_profile(tmp_path, gird={"epsilon": [1]})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) gird; known keys are: .*datasets.*grid"):
        profiles.load_profile(str(path), root=ROOT)


def test_set_replaces_axes_parameters_and_data_dirs():
    p = profiles.load_profile("smoke", root=ROOT, sets=["epsilon=[0.5,1,null]", "lr=3e-3", "seed=[0,1]",
                                                     "mimic-cxr.data_dir=/somewhere", "dataset=mimic-cxr",
                                                     "mimic-cxr.max_length=32"])
    pts = profiles.expand(p)
    assert {x.config.dataset for x in pts} == {"mimic-cxr"}
    lora_bert = [x.config for x in pts if x.config.method == "lora" and x.config.model == "tiny-bert"]
    assert sorted((x.epsilon or 99, x.seed) for x in lora_bert) == [(0.5, 0), (0.5, 1), (1, 0), (1, 1), (99, 0), (99, 1)]
    assert {x.config.lr for x in pts} == {3e-3} and {x.config.max_length for x in pts} == {32}
    assert {x.config.data_dir for x in pts} == {"/somewhere"}
    p = profiles.load_profile("smoke", root=ROOT, sets=["simulated-ct-rate.simulate.n=999", "simulated-ct-rate.data_dir=/x"])
    entry = next(d for d in p.datasets if d.name == "simulated-ct-rate")
    assert entry.simulate["n"] == 999 and entry.data_dir == "/x"
    with pytest.raises(ConfigError, match=r"--set epsilom: unknown key; known keys are: dataset, <dataset>.data_dir, accountant"):
        profiles.load_profile("smoke", root=ROOT, sets=["epsilom=1"])
    with pytest.raises(ConfigError, match=r"no dataset named 'mimic'.*its datasets are: mimic-cxr, simulated-ct-rate"):
        profiles.load_profile("smoke", root=ROOT, sets=["mimic.data_dir=/x"])
    with pytest.raises(ConfigError, match="not of the form KEY=VALUE"):
        profiles.load_profile("smoke", root=ROOT, sets=["epsilon"])


def test_parameters_papermill_cannot_pass_or_of_the_wrong_type_are_refused():
    with pytest.raises(ConfigError, match=r"parameter dataset_options = .*date.*cannot be passed to a notebook by papermill"):
        profiles.expand(profiles.load_profile("smoke", root=ROOT, sets=["mimic-cxr.dataset_options.since=2020-01-01"]))
    with pytest.raises(ConfigError, match=r"parameter lr = 'fast' is not of the expected type"):
        profiles.expand(profiles.load_profile("smoke", root=ROOT, sets=["lr=fast"]))
    # .inf is the one non-private value, null, whatever way it is typed
    assert {p.config.epsilon for p in profiles.expand(profiles.load_profile("smoke", root=ROOT, sets=["epsilon=[.inf]"]))} == {None, 10.0}  # 10: an extra point
    with pytest.raises(PrivacyError, match=r"^mimic-cxr \(model=tiny-bert, method=lora, epsilon=-1, seed=0\): epsilon -1 must be a positive number"):
        profiles.expand(profiles.load_profile("smoke", root=ROOT, sets=["epsilon=[-1]"]))
    with pytest.raises(ConfigError, match=r"max_length = 4 is invalid; give at least 8 tokens"):
        profiles.expand(profiles.load_profile("smoke", root=ROOT, sets=["max_length=4"]))
    with pytest.raises(PrivacyError, match=r"delta 2 must lie in \(0, 1/n_train\)"):
        profiles.expand(profiles.load_profile("smoke", root=ROOT, sets=["delta=2"]))


def test_a_run_notebook_without_a_parameter_is_refused_before_anything_runs(tmp_path):
    nb = json.loads((ROOT / "notebooks" / "run.ipynb").read_text())
    params = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    src = "".join(params["source"]).replace("lora_dropout = 0.0\n", "")
    params["source"] = src
    bad = tmp_path / "run.ipynb"
    bad.write_text(json.dumps(nb))
    profile = profiles.load_profile("smoke", root=ROOT, sets=[f"mimic-cxr.data_dir={tmp_path}/none"], results_dir=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match=r"has no parameter\(s\) lora_dropout in its `parameters` cell, so papermill cannot pass them"):
        study.plan(profile, notebook=bad, root=ROOT)
    assert not (tmp_path / "none").exists()


def test_a_missing_data_path_is_found_before_any_run(tmp_path):
    profile = profiles.load_profile("paper", root=ROOT, results_dir=str(tmp_path / "r"),
                                 sets=[f"mimic-cxr.data_dir={tmp_path}/mimic", f"ct-rate.data_dir={tmp_path}/ct"])
    with pytest.raises(DataError, match=rf"data folder {tmp_path}/mimic for dataset mimic-cxr \(mimic-cxr\) does not exist; .*--set mimic-cxr.data_dir="):
        study.plan(profile, root=ROOT)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # subprocesses, papermill or large data: `make test`, not `make test-fast`
def test_cli_reports_bad_input_in_one_line(tmp_path):
    env_py = [sys.executable, "-m", "privrad"]
    proc = subprocess.run(env_py + ["study", "run", "--profile", "nope"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["privrad: error: unknown study profile 'nope'; known profiles are: course, default, openi, paper, smoke, tune (or give a path to a .yml file)."]
    proc = subprocess.run(env_py + ["book", "build", "--profile", "smoke", "--results-dir", str(tmp_path / "empty")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert f"no completed run in {tmp_path}/empty/smoke" in proc.stderr and "privrad study run --profile smoke" in proc.stderr
    assert not (tmp_path / "empty").exists()


def _notebook(path: Path, body: str) -> Path:
    import nbformat

    params = nbformat.v4.new_code_cell("run_dir = None\nvalue = 0")
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"), params, nbformat.v4.new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def _task(tmp_path: Path, notebook: Path, run_id: str, value) -> executors.Task:
    res = tmp_path / "res"
    return executors.Task(run_id=run_id, label=run_id, notebook=str(notebook),
                      parameters={"run_dir": str(res / run_id), "value": value}, run_dir=str(res / run_id),
                      staging=str(res / ".notebooks" / f"{run_id}.ipynb"), failed=str(res / "failed" / f"{run_id}.ipynb"),
                      kernel="python3", cwd=str(tmp_path))


@pytest.mark.slow  # subprocesses, papermill or large data: `make test`, not `make test-fast`
def test_execute_task_places_the_notebook_or_keeps_the_failed_one(tmp_path):
    """Real papermill on a tiny notebook standing for the run notebook: it writes a run folder
    through the real writer (as privrad.run does) unless its parameter makes it raise, or
    leaves it incomplete."""
    nb = _notebook(tmp_path / "nb.ipynb", "import os, sys\n"
                   f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                   "from study_helpers import fabricate_run\n"
                   "if value == 1e-05: raise ValueError(f'value {value!r} is refused')\n"
                   "fabricate_run(None, run_dir=run_dir)\n"
                   "if value == 3: os.remove(os.path.join(run_dir, 'privacy.json'))")
    tasks = [_task(tmp_path, nb, "aaaa1111", 1e-05), _task(tmp_path, nb, "bbbb2222", 2), _task(tmp_path, nb, "cccc3333", 3)]
    outcomes = {o.run_id: o for o in executors.LocalExecutor(jobs=2, gpus=[]).run(tasks)}
    ok, bad, partial = outcomes["bbbb2222"], outcomes["aaaa1111"], outcomes["cccc3333"]
    assert ok.state == "complete" and (tmp_path / "res" / "bbbb2222" / "run.ipynb").is_file()
    # 1e-05 arrives as a float (papermill's own CLI would pass the string '1e-05')
    assert bad.state == "failed" and bad.error == "ValueError: value 1e-05 is refused"
    kept = json.loads((tmp_path / "res" / "failed" / "aaaa1111.ipynb").read_text())
    assert any(o.get("ename") == "ValueError" for c in kept["cells"] for o in c.get("outputs", []))
    assert not (tmp_path / "res" / "aaaa1111").exists()
    assert partial.state == "failed" and partial.error.endswith("cccc3333: privacy.json is missing")
    assert not list((tmp_path / "res" / ".notebooks").glob("*.ipynb"))


def test_an_unknown_model_is_refused_before_anything_runs_listing_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown model 'bert-tiny'.*tiny-bert"):
        profiles.expand(profiles.load_profile("smoke", root=ROOT, sets=["model=[tiny-bert,bert-tiny]"]))


def test_a_profile_may_say_where_its_tuned_defaults_come_from(tmp_path):
    path = write_profile(tmp_path, provenance={"lr": "chosen on the validation split of simulated MIMIC-CXR"})
    assert profiles.load_profile(str(path), root=ROOT).provenance == {"lr": "chosen on the validation split of simulated MIMIC-CXR"}


def test_the_run_notebook_declares_every_runconfig_field_with_its_default():
    """notebooks/run.ipynb's parameters cell is RunConfig() written out: same names, same
    defaults (a new field must be added to both), plus run_dir."""
    import ast

    import papermill

    from privrad.config import FIELDS

    declared = papermill.inspect_notebook(str(ROOT / "notebooks" / "run.ipynb"))
    assert set(declared) == set(FIELDS) | {"run_dir"}
    defaults = RunConfig().to_dict()
    for name in FIELDS:
        assert ast.literal_eval(declared[name]["default"]) == defaults[name], name
