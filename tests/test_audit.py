"""The audit (issue 9): the one-run ε lower bound against known values, and the attacks on real
tiny runs (tiny-bert, real Opacus): a non-private run that memorises is caught, DP runs are not,
and a DP run with its noise switched off (possible only here) is caught claiming an ε it does not have."""

import dataclasses
import json
import math

import numpy as np
import pytest
from scipy.special import logit

from privrad.audit import (AuditSettings, audit_run, audit_table, label_log_likelihood, make_canaries, membership_candidates,
                           reference_config, reference_dataset, summary_line, with_reports)
from privrad.audit_bounds import guess_counts, guesses, one_run_audit, one_run_epsilon, one_run_p_value, roc_summary
from privrad.errors import ConfigError, DataError
from privrad.pipeline import run
from privrad.runs import AUDIT_FILE, read_audit, read_run, run_state, write_audit

from _synthetic import make_dataset


# ----------------------------------------------------------------------------- the bound


@pytest.mark.parametrize("r", [10, 50, 100])
def test_all_guesses_right_without_delta_gives_the_closed_form(r):
    # δ = 0: p = q^r with q = e^ε / (1 + e^ε), so the bound is logit((1 - confidence)^(1/r))
    want = float(logit(0.05 ** (1 / r)))
    assert one_run_epsilon(r, r, r, delta=0, confidence=0.95) == pytest.approx(want, abs=1e-5)
    assert one_run_p_value(r, r, r, want, 0) == pytest.approx(0.05, rel=1e-4)


def test_edge_cases_all_wrong_none_right_no_guesses_and_coin_flips():
    assert one_run_epsilon(100, 100, 0, delta=1e-5) == 0.0  # all wrong
    assert one_run_epsilon(100, 0, 0, delta=1e-5) == 0.0  # no guesses (every canary abstained)
    assert one_run_epsilon(100, 100, 50, delta=1e-5) == 0.0  # a coin's accuracy
    assert one_run_epsilon(100, 100, 58, delta=1e-5) == 0.0  # 58/100 is within chance at 95 %
    assert one_run_p_value(100, 0, 0, 1.0, 1e-5) == 1.0
    with pytest.raises(ValueError):
        one_run_p_value(10, 11, 5, 1.0)


def test_abstentions_delta_and_confidence_move_the_bound_the_right_way():
    base = one_run_epsilon(1000, 100, 90, delta=0)
    # with δ = 0 the canaries abstained on do not matter; with δ > 0 more canaries (2mδ) weaken the bound
    assert one_run_epsilon(100, 100, 90, delta=0) == pytest.approx(base, abs=1e-6)
    assert one_run_epsilon(1000, 100, 90, delta=1e-5) < one_run_epsilon(100, 100, 90, delta=1e-5) <= base
    assert one_run_epsilon(1000, 100, 90, delta=0, confidence=0.99) < base
    bounds = [one_run_epsilon(200, 200, v, delta=1e-5) for v in range(100, 201, 20)]
    assert bounds == sorted(bounds) and bounds[0] == 0 and bounds[-1] > 3


# Values from jax_privacy 2.0.0's jax_privacy/auditing.py (Google's implementation of the same
# paper): _epsilon_one_run(0, m, n_guess, n_correct, significance, delta), computed once with the
# wheel's module file (it imports only numpy, scipy and dp_accounting; the package imports JAX).
JAX_PRIVACY = [  # (m, r, v, significance, delta, epsilon)
    (1000, 100, 90, 0.05, 1e-5, 1.6261436787042223),
    (1000, 1000, 700, 0.05, 1e-5, 0.7317406384658977),
    (100, 50, 50, 0.05, 0.0, 2.7847274046130224),
    (200, 40, 30, 0.01, 1e-6, 0.23588964359543),
    (64, 64, 40, 0.05, 1e-5, 0.05893840800385791),
    (48, 24, 24, 0.0125, 1e-5, 1.6048343161569179),
    (500, 250, 200, 0.05, 1e-6, 1.1189449524677781),
]


@pytest.mark.parametrize("m,r,v,significance,delta,eps", JAX_PRIVACY)
def test_bound_agrees_with_jax_privacy(m, r, v, significance, delta, eps):
    assert one_run_epsilon(m, r, v, delta=delta, confidence=1 - significance) == pytest.approx(eps, abs=2e-4)


def test_guesses_and_the_audit_of_synthetic_score_vectors():
    assert guess_counts(64) == [8, 16, 32, 64] and guess_counts(4) == [2, 4]
    t = guesses(np.array([0.1, 0.9, 0.5, 0.2, 0.8]), 4)
    assert list(t) == [-1, 1, 0, -1, 1]
    rng = np.random.default_rng(0)
    included = rng.random(200) < 0.5
    perfect = one_run_audit(included + rng.normal(0, 0.01, 200), included, delta=1e-5)
    assert perfect["correct"] == perfect["guesses"] and perfect["epsilon_lower_bound"] > 2.5
    # the best of 4 guess counts at 95 %: each is tested at 98.75 % (Bonferroni)
    best = [t for t in perfect["tried"] if t["guesses"] == perfect["guesses"]][0]
    assert best["epsilon_lower_bound"] == pytest.approx(one_run_epsilon(200, best["guesses"], best["correct"], delta=1e-5,
                                                                        confidence=1 - 0.05 / 4))
    noise = [one_run_audit(rng.normal(size=200), included, delta=1e-5)["epsilon_lower_bound"] for _ in range(20)]
    assert np.mean(noise) < 0.1 and sum(b > 0 for b in noise) <= 3  # random guesses: ≈ 0 (false positives ≤ 5 %)


def test_roc_summary_bands_and_tpr_at_low_fpr():
    rng = np.random.default_rng(1)
    same = roc_summary(rng.normal(size=400), rng.normal(size=400), n_bootstrap=200)
    assert same["auc_ci95"][0] < 0.5 < same["auc_ci95"][1]
    apart = roc_summary(rng.normal(2, 1, 400), rng.normal(size=400), n_bootstrap=200)
    assert apart["auc"] > 0.9 and apart["auc_ci95"][0] > 0.85
    assert apart["tpr_at_fpr"]["0.01"] > 0.2 and 0 <= apart["tpr_at_fpr"]["0.001"] <= apart["tpr_at_fpr"]["0.01"]
    assert apart["roc"]["tpr"][0] <= apart["roc"]["tpr"][-1] == 1.0
    with pytest.raises(DataError):
        roc_summary([], [1.0])


def test_label_log_likelihood_is_minus_the_training_loss():
    import torch

    from privrad.train import example_losses

    rng = np.random.default_rng(2)
    logits = torch.tensor(rng.normal(size=(5, 3)), dtype=torch.float32)
    labels = torch.tensor(rng.integers(0, 2, (5, 3)), dtype=torch.float32)
    mask = torch.tensor(rng.random((5, 3)) < 0.8)
    loss = example_losses(logits, {"labels": labels, "label_mask": mask, "weight": torch.ones(5)})
    ll = label_log_likelihood(torch.sigmoid(logits).numpy(), labels.numpy(), mask.numpy())
    assert np.allclose(-ll, loss.numpy(), atol=1e-5)


def test_settings_refuse_bad_values_in_one_sentence():
    assert AuditSettings.from_dict(True, where="p").canaries == 64
    s = AuditSettings.from_dict({"canaries": 8, "runs": {"epsilon": [1, None], "model": "tiny-bert"}}, where="p")
    assert s.selects({"epsilon": 1.0, "model": "tiny-bert"}) and s.selects({"epsilon": None, "model": "tiny-bert"})
    assert not s.selects({"epsilon": 10, "model": "tiny-bert"}) and not s.selects({"epsilon": 1, "model": "minilm-l3"})
    for raw, msg in [({"canaries": 2}, "too few"), ({"confidence": 1.0}, r"confidence = 1.0 must be a number in \[0.5, 1\)"),
                     ({"canary": 8}, "unknown audit key"), ({"runs": {"epsilonn": 1}}, "unknown config field"),
                     ("yes", "must be a mapping")]:
        with pytest.raises(ConfigError, match=msg):
            AuditSettings.from_dict(raw, where="studies/x.yml")


def test_canaries_are_unique_synthetic_and_appended_to_training():
    ds = make_dataset(60)
    canaries, included = make_canaries(ds, 32, words=[f"word{c}" for c in "abcdefghijklmnopqrstuvwxyz"] * 2, seed=0)
    assert len(set(canaries.texts)) == 32 and canaries.label_mask.all() and set(np.unique(canaries.labels)) == {0.0, 1.0}
    assert 4 < included.sum() < 28
    both = with_reports(ds, canaries.subset(np.flatnonzero(included)))
    tr = both.split("train")
    assert tr.ids[: len(ds.split("train"))] == ds.split("train").ids and len(tr) == len(ds.split("train")) + included.sum()
    assert both.split("test").ids == ds.split("test").ids
    with pytest.raises(DataError, match="already has the id"):
        with_reports(both, canaries)


# ----------------------------------------------------------------------------- real tiny runs

# One tiny recipe trained long enough to memorise (tiny-bert, LoRA r = 16, 40 epochs of 84 training
# reports plus the canaries that won the coin), non-private and at ε = 1; 96 canaries.
BASE = dict(dataset="simulated-mimic-cxr", model="tiny-bert", method="lora", seed=0, max_length=48, n_bootstrap=0,
            dp_randomness="reproducible", threshold="fixed", batch_size=32, physical_batch_size=64, num_epochs=40,
            lr=5e-2, lora_r=16, max_grad_norm=1.0)
MEMORISE = dict(BASE, epsilon=None)
DP = dict(BASE, epsilon=1.0)
SETTINGS = AuditSettings(canaries=96, members=40, n_bootstrap=200)


@pytest.fixture(scope="module")
def ds():
    return make_dataset(120)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """The results folder of the module's audited runs: they share one reference model, as a study's do."""
    return tmp_path_factory.mktemp("results")


def _trained_and_audited(config: dict, ds, run_dir):
    """One training run of ``config`` in ``run_dir``, then its audit: (RunResult, audit document)."""
    res = run(config, run_dir=run_dir, dataset=ds, progress=False, device="cpu")
    return res, audit_run(res.run_dir, SETTINGS, dataset=ds, device="cpu")


@pytest.fixture(scope="module")
def memorised(ds, results):
    return _trained_and_audited(MEMORISE, ds, results / "mem")


@pytest.mark.slow
def test_non_private_run_that_memorises_is_caught(memorised):
    res, doc = memorised
    assert read_audit(res.run_dir) == json.loads((res.run_dir / AUDIT_FILE).read_text()) and run_state(res.run_dir).complete
    c = doc["canaries"]
    assert c["auc"]["auc_ci95"][0] > 0.5, c["auc"]  # canaries in training are told apart
    assert c["epsilon_lower_bound"] > 0.5, c
    # the ordinary reports are templated: the loss attack on them is reported, not required to succeed
    mi = doc["membership"]
    assert mi["n_members"] == mi["n_nonmembers"] == 18 and 0 <= mi["auc_ci95"][0] <= mi["auc"] <= mi["auc_ci95"][1] <= 1
    assert doc["epsilon_spent"] is None and c["run"]["epsilon_spent"] is None
    assert "ε ≥" in summary_line(doc) and "canary-" not in json.dumps(doc)  # aggregates only, no canary ids/scores
    assert doc["covered_by_epsilon"] is False
    cal = doc["calibrated_membership"]  # on these templated reports, reported like the loss attack
    assert cal["n_members"] == 18 and cal["reference"]["epsilon"] is None and 0 <= cal["auc"] <= 1


@pytest.mark.slow
def test_saved_weights_reproduce_the_runs_test_predictions(memorised, ds):
    from privrad.audit import model_probabilities

    res, _ = memorised
    assert np.allclose(model_probabilities(res, ds.split("test")), res.predictions()["probabilities"], atol=1e-6)


@pytest.fixture(scope="module")
def noisy():
    """Reports a model can only memorise: 20 % of the labels flipped (label noise, as in real
    reports), 96 training and 48 test reports."""
    ds = make_dataset(160, fractions=(0.6, 0.1, 0.3))
    flip = np.random.default_rng(7).random(ds.labels.shape) < 0.2
    return dataclasses.replace(ds, labels=np.where(flip, 1 - ds.labels, ds.labels).astype(np.float32))


def test_calibrated_attack_catches_a_non_private_run_that_memorises_reports(noisy, tmp_path):
    res = run(MEMORISE, run_dir=tmp_path / "mem", dataset=noisy, progress=False, device="cpu")
    doc = audit_run(res.run_dir, dataclasses.replace(SETTINGS, canaries=0), dataset=noisy, device="cpu")
    cal = doc["calibrated_membership"]
    assert cal["n_members"] == cal["n_nonmembers"] == 40 and cal["reference"]["n_train"] == 96 - 40
    assert cal["auc_ci95"][0] > 0.5, cal  # members told apart from test reports, each report's difficulty taken out


@pytest.fixture(scope="module")
def private(ds, results):
    return _trained_and_audited(DP, ds, results / "dp")


@pytest.mark.slow
def test_dp_run_at_epsilon_1_is_not_refuted(private):
    res, doc = private
    c = doc["canaries"]
    assert c["auc"]["auc_ci95"][0] < 0.5 < c["auc"]["auc_ci95"][1], c["auc"]
    assert doc["membership"]["auc_ci95"][0] < 0.5 < doc["membership"]["auc_ci95"][1]
    assert doc["calibrated_membership"]["auc_ci95"][0] < 0.5 < doc["calibrated_membership"]["auc_ci95"][1]
    assert 0 <= c["epsilon_lower_bound"] <= c["run"]["epsilon_spent"] <= 1.0
    assert c["delta"] == c["run"]["delta"] and c["run"]["noise_multiplier"] > 0


@pytest.mark.slow
def test_dp_run_without_noise_is_caught_claiming_its_epsilon(private, ds, monkeypatch):
    """A DP-SGD bug made on purpose: the DP run's configuration at ε = 0.5, trained again with
    canaries, clipping and accounting as usual but the Gaussian noise replaced by zeros (Opacus'
    noise function, patched only here). The accountant still reports ε = 0.5."""

    import opacus.optimizers.optimizer as dp_optimizer
    import torch

    from privrad.audit import canary_audit

    monkeypatch.setattr(dp_optimizer, "_generate_noise", lambda std, reference, generator=None, secure_mode=False:
                        torch.zeros_like(reference))
    res, _ = private
    claim = dataclasses.replace(res, config=dataclasses.replace(res.config, epsilon=0.5))
    c = canary_audit(claim, ds, dataclasses.replace(SETTINGS, n_bootstrap=0), device="cpu")
    assert c["run"]["epsilon_spent"] <= 0.5 and c["run"]["noise_multiplier"] > 10  # the claim
    assert c["epsilon_lower_bound"] > c["run"]["epsilon_spent"], c  # refuted


def test_calibrated_attack_trains_one_reference_without_the_candidates_and_reuses_it(ds, tmp_path):
    settings = AuditSettings(canaries=0, members=40, n_bootstrap=50)
    quick = dict(BASE, num_epochs=2)
    first = run(dict(quick, epsilon=None), run_dir=tmp_path / "inf", dataset=ds, progress=False, device="cpu")
    doc = audit_run(first.run_dir, settings, dataset=ds, device="cpu")
    cal, mi = doc["calibrated_membership"], doc["membership"]
    assert set(mi) - {"seconds"} <= set(cal) and cal["n_members"] == mi["n_members"] == 18
    assert 0 <= cal["auc"] <= 1 and 0 <= cal["auc_ci95"][0] <= cal["auc_ci95"][1] <= 1
    assert 0 <= cal["tpr_at_fpr"]["0.001"] <= cal["tpr_at_fpr"]["0.01"] <= 1 and cal["roc"]["tpr"][-1] == 1.0
    ref_info = cal["reference"]
    assert ref_info["models"] == 1 and ref_info["trained_now"] == 1 and ref_info["epsilon"] is None
    # the split the reference trained on: the audited training split without a single candidate
    members, nonmembers = membership_candidates(ds, settings)
    candidates = {ds.split("train").ids[i] for i in members} | {ds.split("test").ids[i] for i in nonmembers}
    data = reference_dataset(ds, (members, nonmembers))
    ref = read_run(tmp_path / ref_info["folder"] / "0")
    assert ref.info["dataset_fingerprint"] == data.fingerprint and data.split("test").ids == ds.split("test").ids
    assert not candidates & set(data.split("train").ids)
    assert ref.privacy["n_train"] == ref_info["n_train"] == len(ds.split("train")) - len(members)
    assert ref.config == reference_config(first.config, settings) and ref.config.epsilon is None
    # another ε of the same recipe reuses the reference: nothing trains again
    second = run(dict(quick, epsilon=1.0), run_dir=tmp_path / "eps1", dataset=ds, progress=False, device="cpu")
    again = audit_run(second.run_dir, settings, dataset=ds, device="cpu")["calibrated_membership"]["reference"]
    assert again == {**ref_info, "trained_now": 0, "seconds": 0.0}
    assert [p.name for p in (tmp_path / "audit-reference").iterdir()] == [ref_info["folder"].split("/")[1]]
    table = audit_table([first.run_dir, second.run_dir])
    assert table["calibrated_membership_auc"].between(0, 1).all() and (table["reference_models"] == 1).all()
    assert "calibrated AUC" in summary_line(doc)
    skipped = audit_run(second.run_dir, AuditSettings(canaries=0, members=40, n_bootstrap=0, reference_models=0), dataset=ds,
                        device="cpu")
    assert skipped["calibrated_membership"] is None and math.isnan(audit_table([second.run_dir])["calibrated_membership_auc"][0])


def test_audit_refuses_bad_input_and_writes_nothing(ds, tmp_path):
    from privrad.cli import main

    assert main(["audit", str(tmp_path / "nope")]) == 2
    assert main(["audit", str(tmp_path), "--confidence", "1.5"]) == 2
    assert not (tmp_path / AUDIT_FILE).exists()
    res = run(dict(DP, num_epochs=1, data_dir=str(tmp_path / "gone")), run_dir=tmp_path / "run", dataset=ds, progress=False,
              device="cpu")
    with pytest.raises(DataError, match="cannot be read again"):  # its data_dir holds nothing (a checkout's may hold data)
        audit_run(res.run_dir, SETTINGS)
    other = make_dataset(120, seed=5)
    with pytest.raises(DataError, match="changed since this run trained"):
        audit_run(res.run_dir, SETTINGS, dataset=other)
    assert not (res.run_dir / AUDIT_FILE).exists() and read_audit(res.run_dir) is None
    with pytest.raises(ValueError, match="lacks"):
        write_audit(res.run_dir, {"run_id": res.run_id})
    (res.run_dir / AUDIT_FILE).write_text("{trunc")
    assert read_audit(res.run_dir) is None and run_state(res.run_dir).complete  # a damaged audit is no audit
    assert math.isfinite(one_run_epsilon(10, 10, 10, delta=1e-5))


def test_the_profile_audit_block_and_its_set_overrides():
    from pathlib import Path

    from privrad import profiles

    root = Path(__file__).resolve().parents[1]
    smoke = profiles.load_profile("smoke", root=root)
    s = smoke.audit_settings()
    chosen = [p.config for p in profiles.expand(smoke) if s.selects(p.config)]
    assert sorted((c.dataset, c.model, c.method, c.epsilon is None) for c in chosen) == [("mimic-cxr", "tiny-bert", "lora", False),
                                                                                        ("mimic-cxr", "tiny-bert", "lora", True)]
    assert profiles.load_profile("smoke", root=root, sets=["audit=null"]).audit_settings() is None
    assert profiles.load_profile("smoke", root=root, sets=["audit.canaries=128"]).audit_settings().canaries == 128
    assert profiles.load_profile("openi", root=root).audit_settings() is None  # off unless a profile asks
    with pytest.raises(ConfigError, match=r"smoke.yml: audit canaries = 2 is too few"):
        profiles.load_profile("smoke", root=root, sets=["audit.canaries=2"])
