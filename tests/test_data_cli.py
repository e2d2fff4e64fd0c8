"""``privrad data simulate|describe|list`` from the command line, and ``describe()`` itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from privrad.cli import main
from privrad.data import load_dataset
from privrad.data.describe import describe, load_tokenizer, prevalence_long, token_lengths

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "mimic-cxr"
    assert main(["data", "simulate", "mimic-cxr", "--out", str(out), "--n", "300", "--seed", "0"]) == 0
    return out


def test_simulate_and_describe(sim, capsys, tmp_path):
    capsys.readouterr()
    js = tmp_path / "d.json"
    assert main(["data", "describe", "simulated-mimic-cxr", str(sim), "-o", "max_reports=200", "-o", "uncertain=positive",
                 "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "dataset simulated-mimic-cxr: 200 reports, credentialed=False" in out
    assert "subsampled from 300 (max_reports=200, seed=0)" in out
    assert "prevalence (positives among scored entries) per split:" in out and "Support Devices" in out
    assert "tokens" in out and "> 256" in out
    doc = json.loads(js.read_text())
    assert doc["n"] == 200 and doc["dropped"]["unmatched_label_rows"] == 0
    assert sum(r["reports"] for r in doc["counts"] if r["split"] != "all") == 200


def test_describe_never_prints_report_text(sim, capsys):
    ds = load_dataset("mimic-cxr", sim)
    capsys.readouterr()
    assert main(["data", "describe", "mimic-cxr", str(sim), "--tokenizer", "none"]) == 0
    out = capsys.readouterr().out
    assert "credentialed=True" in out
    assert not any(t[:40] in out for t in ds.texts if len(t) >= 40)


def test_cli_errors_exit_2_with_one_sentence_and_write_nothing(tmp_path, capsys):
    capsys.readouterr()
    assert main(["data", "describe", "openi", str(tmp_path / "nowhere"), "--json", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("privrad: error: Open-i folder ") and err.endswith("(see data/README.md).") and "\n" not in err
    assert not (tmp_path / "x.json").exists()
    assert main(["data", "describe", "mimic-iv", str(tmp_path)]) == 2
    assert "unknown dataset 'mimic-iv'; known datasets are: csv, ct-rate, mimic-cxr, openi, simulated-ct-rate, simulated-mimic-cxr." in capsys.readouterr().err
    assert main(["data", "describe", "openi", str(tmp_path), "-o", "max_reports"]) == 2
    assert "--dataset-option 'max_reports' is not of the form KEY=VALUE (e.g. --dataset-option max_reports=1000)." in capsys.readouterr().err
    assert main(["data", "simulate", "ct-rate", "--out", str(tmp_path / "s"), "--n", "5"]) == 2
    assert "n must be a whole number of reports between 10 and 1000000, not 5." in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_list(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "mimic-cxr" in out and "credentialed" in out and "openi" in out


@pytest.mark.slow  # subprocesses, papermill or large data: `make test`, not `make test-fast`
def test_subprocess_simulate_and_describe(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = tmp_path / "ct-rate"
    r = subprocess.run([sys.executable, "-m", "privrad", "data", "simulate", "ct-rate", "--out", str(out), "--n", "40"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (out / "dataset/radiology_text_reports/train_reports.csv").is_file()
    r = subprocess.run([sys.executable, "-m", "privrad", "data", "describe", "ct-rate", str(out), "--tokenizer", "none"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "dataset ct-rate: 40 reports, credentialed=True" in r.stdout
    r = subprocess.run([sys.executable, "-m", "privrad", "data", "describe", "ct-rate", str(tmp_path / "none")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("privrad: error: CT-RATE folder")


def test_describe_tables(sim):
    ds = load_dataset("simulated-mimic-cxr", sim)
    tok = load_tokenizer("minilm-l6")
    d = describe(ds, tokenizer=tok)
    assert d["counts"].loc["all", "reports"] == 300 == d["counts"].loc[["train", "validation", "test"], "reports"].sum()
    assert d["counts"].loc["all", "patients"] == len(set(ds.patient_ids))
    j = ds.label_names.index("Pneumonia")
    m = ds.label_mask[:, j]
    assert d["prevalence"].loc["Pneumonia", "all"] == pytest.approx(ds.labels[m, j].mean())
    assert d["ignored"].loc["Pneumonia", "all"] == pytest.approx(1 - m.mean())
    lengths = token_lengths(ds.texts, tok)
    assert d["lengths"].loc[("all", "tokens"), "p50"] == np.percentile(lengths, 50)
    assert d["over_max_length"].loc["all", "> 128"] == int((lengths > 128).sum())
    assert lengths[0] == len(tok(ds.texts[0])["input_ids"])
    long = prevalence_long(d)
    assert set(long.columns) == {"label", "split", "prevalence"} and len(long) == 3 * ds.n_labels


def test_describe_public_splits_only_computes_nothing_from_the_training_split(sim):
    from privrad.privacy import PUBLIC_SPLITS

    ds = load_dataset("simulated-mimic-cxr", sim)
    tok = load_tokenizer("minilm-l6")
    d = describe(ds, tokenizer=tok, splits=PUBLIC_SPLITS)
    assert d["splits_shown"] == ("validation", "test")
    assert list(d["prevalence"].columns) == ["validation", "test"] == list(d["ignored"].columns)
    assert set(d["lengths"].index.get_level_values("split")) == {"validation", "test"}
    assert set(d["over_max_length"].index) == {"validation", "test"}
    public = np.isin(ds.splits, PUBLIC_SPLITS)
    assert len(d["length_values"]["tokens"]) == public.sum() and set(d["length_splits"]) == set(PUBLIC_SPLITS)
    np.testing.assert_array_equal(d["length_values"]["tokens"], token_lengths([t for t, k in zip(ds.texts, public) if k], tok))
    assert d["counts"].loc["train", "reports"] == (ds.splits == "train").sum()  # the training split's size is public
    with pytest.raises(ValueError, match="splits"):
        describe(ds, splits=("train", "holdout"))


def test_resolve_data_path_from_a_subfolder(tmp_path, monkeypatch):
    from privrad.data.common import resolve_data_path

    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "data" / "x").mkdir(parents=True)
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert resolve_data_path("data/x") == Path("../data/x")
    assert resolve_data_path("data/simulated/y") == Path("../data/simulated/y")  # not there yet: under the project root
    assert resolve_data_path(tmp_path / "abs") == tmp_path / "abs"
