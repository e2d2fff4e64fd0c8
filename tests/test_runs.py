import json

import numpy as np
import pytest
import torch

from privrad.errors import ConfigError, DataError, PrivacyError
from privrad.pipeline import UntrainableLabelWarning, run
from privrad.runs import read_run, run_id

from _synthetic import make_dataset

TINY = dict(dataset="simulated-mimic-cxr", model="tiny-bert", method="lora", epsilon=2.0, seed=0, batch_size=16,
            physical_batch_size=8, num_epochs=1, lr=1e-2, max_length=48, n_bootstrap=100, dp_randomness="reproducible")


@pytest.fixture(scope="module")
def ds():
    return make_dataset(120)


@pytest.fixture(scope="module")
def first_run(ds, tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    return run(TINY, results_dir=root, dataset=ds, progress=False), root


def test_run_folder_contents(first_run, ds):
    res, root = first_run
    assert res.run_dir.parent == root and res.run_id == run_id(TINY, ds.fingerprint)
    assert res.run_id.startswith("simulated-mimic-cxr__tiny-bert__lora__eps2__s0__")
    assert run_id({**TINY, "epsilon": 2}, ds.fingerprint) == res.run_id  # 2 and 2.0 are one config
    assert run_id({**TINY, "epsilon": float("inf")}, ds.fingerprint) == run_id({**TINY, "epsilon": None}, ds.fingerprint)
    for f in ("config.json", "metrics.json", "privacy.json", "predictions.npz", "curve.json", "adapter/adapter_config.json"):
        assert (res.run_dir / f).exists(), f
    info = json.loads((res.run_dir / "config.json").read_text())
    assert info["dataset_fingerprint"] == ds.fingerprint and info["label_names"] == list(ds.label_names)
    assert info["privrad_version"] and "opacus" in info["versions"] and info["run_format"] == 2
    assert info["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    p = res.privacy
    assert p["epsilon"] == 2.0 and 0.97 * 2.0 <= p["epsilon_spent"] <= 2.0 and p["cross_check"]["agrees"]
    assert p["delta"] == 1e-5 and p["steps"] == p["planned_steps"] and p["sample_rate"] == 16 / 84
    pred = res.predictions()
    assert pred["probabilities"].shape == (len(ds.split("test")), 14)
    assert list(pred["ids"]) == list(ds.split("test").ids)
    assert res.summary().loc["simulated-mimic-cxr", "weighted_f1"] == res.metrics["weighted_f1"]
    assert len(res.per_label) == 14
    assert not [x for x in root.iterdir() if x.name.startswith(".")]  # no temporary leftovers


def test_existing_run_is_reused_and_a_different_config_refused(first_run, ds):
    res, root = first_run
    stamp = (res.run_dir / "metrics.json").stat().st_mtime_ns
    again = run(TINY, results_dir=root, dataset=ds, progress=False)
    assert again.run_dir == res.run_dir and (res.run_dir / "metrics.json").stat().st_mtime_ns == stamp
    (res.run_dir / "run.ipynb").write_text("{}")  # the study runner's notebook is not foreign
    assert run(TINY, results_dir=root, dataset=ds, progress=False).metrics == res.metrics
    with pytest.raises(ConfigError, match="already exists and holds run .*choose another output folder or delete"):
        run({**TINY, "seed": 1}, run_dir=res.run_dir, dataset=ds, progress=False)


def test_saved_adapter_reproduces_test_probabilities(first_run, ds):
    from peft import PeftModel

    from privrad.data.tokenize import EncodedDataset, tokenize_dataset
    from privrad.models import build_model, load_tokenizer
    from privrad.train import predict_proba

    res, _ = first_run
    base = build_model("tiny-bert", 14, method="full", seed=0)  # same seed: same random base weights
    model = PeftModel.from_pretrained(base, res.run_dir / "adapter")
    test = ds.split("test")
    enc = EncodedDataset(tokenize_dataset(test, load_tokenizer("tiny-bert"), max_length=48), test.labels, test.label_mask)
    assert np.array_equal(predict_proba(model, enc), res.predictions()["probabilities"])


def test_same_seed_twice_gives_identical_metrics_in_reproducible_mode_only(first_run, ds, tmp_path):
    res, _ = first_run
    other = run(TINY, run_dir=tmp_path / "again", dataset=ds, progress=False)
    assert (other.run_dir / "metrics.json").read_bytes() == (res.run_dir / "metrics.json").read_bytes()
    assert (other.run_dir / "privacy.json").read_bytes() == (res.run_dir / "privacy.json").read_bytes()
    secure = [run({**TINY, "dp_randomness": "secure"}, run_dir=tmp_path / f"secure{i}", dataset=ds, progress=False) for i in (1, 2)]
    assert not np.array_equal(secure[0].predictions()["probabilities"], secure[1].predictions()["probabilities"])
    assert secure[0].privacy["epsilon_spent"] == secure[1].privacy["epsilon_spent"]  # the same mechanism, other draws


@pytest.mark.parametrize("change, error, pattern", [
    ({"model": "gpt-9"}, ConfigError, "unknown model 'gpt-9'; known models are: .*minilm-l6"),
    ({"method": "adapter"}, ConfigError, "unknown method 'adapter'; known methods are: lora, full"),
    ({"epsilon": 0}, PrivacyError, "epsilon 0 must be a positive number"),
    ({"epsilon": -1.0}, PrivacyError, "epsilon -1.0 must be a positive number"),
    ({"epsilon": float("nan")}, PrivacyError, "epsilon nan must be a positive number"),
    ({"epsilon": "lots"}, PrivacyError, "epsilon 'lots' is not a number"),
    ({"delta": 0.5}, PrivacyError, r"delta 0.5 must lie in \(0, 1/n_train\)"),
    ({"delta": 0.0}, PrivacyError, r"delta 0.0 must lie in \(0, 1/n_train\)"),
    ({"batch_size": 500}, ConfigError, "batch_size = 500 is larger than the training split"),
    ({"max_grad_norm": 0.0}, ConfigError, "max_grad_norm = 0.0 is invalid"),
    ({"lr": -1e-3}, ConfigError, "lr = -0.001 is invalid"),
    ({"threshold": "best"}, ConfigError, "threshold 'best' is unknown"),
    ({"dataset": "openi"}, ConfigError, "the dataset passed is 'simulated-mimic-cxr' but the config says dataset = 'openi'"),
])
def test_bad_input_is_refused_before_anything_is_written(ds, tmp_path, change, error, pattern):
    with pytest.raises(error, match=pattern):
        run({**TINY, **change}, results_dir=tmp_path, dataset=ds, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_empty_split_is_refused(tmp_path):
    ds = make_dataset(60, fractions=(0.8, 0.2, 0.0))
    with pytest.raises(DataError, match="the 'test' split of dataset 'simulated-mimic-cxr' is empty"):
        run(TINY, results_dir=tmp_path, dataset=ds, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_label_without_positive_in_train_warns_and_continues(tmp_path):
    ds = make_dataset(60)
    labels = ds.labels.copy()
    labels[ds.splits == "train", 5] = 0
    import dataclasses

    ds = dataclasses.replace(ds, labels=labels)
    with pytest.warns(UntrainableLabelWarning, match="label 'Fracture' has no positive example in the training split"):
        res = run({**TINY, "epsilon": None, "n_bootstrap": 0}, results_dir=tmp_path, dataset=ds, progress=False)
    assert res.privacy["epsilon"] is None and res.privacy["epsilon_spent"] is None


def test_cli_run_non_private(tmp_path, capsys, monkeypatch):
    from privrad.cli import main
    from privrad.data import register_dataset

    register_dataset("synthetic-test", credentialed=False, description="tests/_synthetic.py")(
        lambda path, **kw: make_dataset(80, name="synthetic-test"))
    out = tmp_path / "run"
    code = main(["run", "--dataset", "synthetic-test", "--data-dir", str(tmp_path), "--model", "tiny-bert", "--method", "lora",
                 "--epsilon", "inf", "--seed", "3", "--out", str(out), "--quiet", "--cache-dir", str(tmp_path / "cache"),
                 "--set", "num_epochs=1", "--set", "batch_size=8", "--set", "max_length=32", "--set", "n_bootstrap=0"])
    assert code == 0
    res = read_run(out)
    assert res.config.epsilon is None and res.config.seed == 3 and res.config.batch_size == 8
    assert "weighted F1" in capsys.readouterr().out
    assert list((tmp_path / "cache").glob("tokens-*.npz"))
    code = main(["run", "--dataset", "synthetic-test", "--data-dir", str(tmp_path), "--epsilon", "-2", "--out", str(tmp_path / "x")])
    assert code == 2 and "privrad: error: epsilon -2 must be a positive number" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_unsupported_grad_sample_mode_is_refused(ds, tmp_path):
    with pytest.raises(ConfigError, match="grad_sample_mode 'ghost' is not supported; use one of hooks"):
        run({**TINY, "grad_sample_mode": "ghost"}, results_dir=tmp_path, dataset=ds, progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_asking_for_a_gpu_without_one_is_refused_before_anything_is_written(ds, tmp_path):
    with pytest.raises(ConfigError, match="torch sees no GPU"):
        run(TINY, results_dir=tmp_path, dataset=ds, progress=False, device="cuda")
    assert list(tmp_path.iterdir()) == []
