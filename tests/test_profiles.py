"""The one KEY=VALUE / YAML reader, and config validation in one place, as every entry point meets them."""

from __future__ import annotations

import pytest

from privrad.cli import main
from privrad.config import RunConfig, validate_config
from privrad.errors import ConfigError, PrivacyError
from privrad.profiles import parse_assignment, parse_value, read_yaml_file


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("1.0e-3", 1e-3), ("3", 3), ("null", None), (".inf", float("inf")),
                                         ("[0.1, 1, null]", [0.1, 1, None]), ("{text: impression}", {"text": "impression"}),
                                         ("minilm-l6", "minilm-l6"), ("true", True), ("", "")])
def test_values_are_yaml_as_people_write_numbers(text, value):
    assert parse_value(text) == value


def test_assignments_and_files_share_the_reader(tmp_path):
    assert parse_assignment("lr=1e-3") == ("lr", 1e-3)
    assert parse_assignment("mimic-cxr.data_dir=/a=b") == ("mimic-cxr.data_dir", "/a=b")
    with pytest.raises(ConfigError, match=r"^--dataset-option 'x' is not of the form KEY=VALUE \(e.g. --dataset-option max_reports=1000\)\.$"):
        parse_assignment("x", flag="--dataset-option")
    with pytest.raises(ConfigError, match=r"--set lr: the value '\[1' is not valid YAML"):
        parse_assignment("lr=[1")
    (tmp_path / "c.yml").write_text("lr: 1e-3\nepsilon: null\n")
    assert read_yaml_file(tmp_path / "c.yml", what="--config") == {"lr": 1e-3, "epsilon": None}


def test_run_config_from_a_file_reads_1e_3_as_a_number(tmp_path, capsys):
    """`privrad run --config`: 1e-3 is a float (it used to arrive as the string '1e-3'), so the
    one validation reports the real problem, max_length, before any data is read."""
    (tmp_path / "c.yml").write_text("lr: 1e-3\nmax_length: 4\n")
    code = main(["run", "--config", str(tmp_path / "c.yml"), "--dataset", "simulated-mimic-cxr",
                 "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "out")])
    assert code == 2
    assert capsys.readouterr().err.strip() == "privrad: error: max_length = 4 is invalid; give at least 8 tokens."
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, error, message", [
    ({"max_length": 4}, ConfigError, "max_length = 4 is invalid; give at least 8 tokens."),
    ({"lr": "fast"}, ConfigError, "parameter lr = 'fast' is not of the expected type"),
    ({"epsilon": 0}, PrivacyError, "epsilon 0 must be a positive number"),
    ({"delta": 1.5}, PrivacyError, r"delta 1.5 must lie in \(0, 1/n_train\)"),
    ({"lora_dropout": 1.0}, ConfigError, r"lora_dropout = 1.0 is invalid; give a fraction in \[0, 1\)"),
    ({"model": "nope"}, ConfigError, "unknown model 'nope'"),
    ({"learning_rate": 1}, ConfigError, "unknown run parameter"),
])
def test_one_validation_for_every_entry_point(change, error, message):
    with pytest.raises(error, match=message):
        validate_config({**RunConfig(model="tiny-bert").to_dict(), **change})
    with pytest.raises(error, match=f"^somewhere: {message}"):
        validate_config({**RunConfig(model="tiny-bert").to_dict(), **change}, where="somewhere")


def test_validation_with_the_training_split_size():
    cfg = RunConfig(model="tiny-bert", delta=1e-3, batch_size=64)
    assert validate_config(cfg, n_train=100) == cfg
    with pytest.raises(PrivacyError, match=r"delta 0.001 must lie in \(0, 1/n_train\) = \(0, 0.000667\) for n_train = 1500"):
        validate_config(cfg, n_train=1500)
    with pytest.raises(ConfigError, match="batch_size = 64 is larger than the training split"):
        validate_config(cfg.replace(delta=None), n_train=50)
    assert validate_config({**cfg.to_dict(), "epsilon": float("inf")}).epsilon is None  # one name for non-private
    assert type(validate_config({**cfg.to_dict(), "epsilon": 2}).epsilon) is float


@pytest.mark.parametrize("name", ["default", "paper", "openi", "smoke", "course"])
def test_every_hyperparameter_of_a_shipped_profile_says_where_it_was_chosen(name):
    """Issue 8: tuning on private data spends privacy that no accountant counts, so each profile
    states, for every hyperparameter it sets, on which data and split it was chosen (or that it
    was not tuned)."""
    from privrad.profiles import load_profile

    profile = load_profile(name)
    axes = {"dataset", "data_dir", "dataset_options", "model", "method", "epsilon", "seed"}
    keys = set(profile.params) | {k for d in profile.datasets for k in d.params} | {k for e in profile.extra for k in e}
    missing = sorted(keys - axes - set(profile.provenance))
    assert not missing, f"studies/{name}.yml: no provenance for {missing}"
    for key, text in profile.provenance.items():
        assert str(text).startswith(("not tuned", "chosen on ")), (name, key, text)
        if str(text).startswith("chosen on "):
            assert "split" in str(text), (name, key, text)  # which split chose it
