import math

import pytest
import torch

from _synthetic import no_dropout
from privrad.errors import PrivacyError
from privrad.privacy import (
    PLD_PRECISION,
    calibrate_noise_multiplier,
    check_delta,
    check_epsilon,
    default_delta,
    cross_check,
    epsilon_from_history,
    pld_bounds,
    privacy_report,
    prv_bounds,
)


def test_default_delta_is_below_one_over_n():
    assert default_delta(1000) == 1e-5
    for n in (10, 1000, 50_000, 300_000):
        assert default_delta(n) < 1 / n
    assert default_delta(300_000) < 1e-5


@pytest.mark.parametrize("delta", [0, -1e-6, 1e-3, 2e-3, float("nan"), "x"])
def test_delta_outside_open_interval_is_refused(delta):
    with pytest.raises(PrivacyError, match=r"delta .* \(0, 1/n_train\)|not a number"):
        check_delta(delta, 1000)


@pytest.mark.parametrize("eps", [0, -1, float("nan"), "abc", float("-inf")])
def test_bad_epsilon_is_refused(eps):
    with pytest.raises(PrivacyError, match="epsilon"):
        check_epsilon(eps)


def test_infinite_epsilon_means_non_private():
    assert check_epsilon(float("inf")) is None and check_epsilon(None) is None


@pytest.mark.parametrize("target", [0.01, 0.1, 1.0, 10.0])
def test_calibration_is_tight_and_pld_agrees(target):
    q, steps, delta = 0.1, 30, 1e-5
    sigma = calibrate_noise_multiplier(target, delta, q, steps)
    report = privacy_report(target_epsilon=target, delta=delta, noise_multiplier=sigma, sample_rate=q,
                            history=[(sigma, q, steps)], n_train=640, planned_steps=steps, batch_size=64,
                            max_grad_norm=1.0)
    spent = report["epsilon_spent"]
    assert 0.97 * target <= spent <= target
    check = report["cross_check"]
    assert check["agrees"] and not check["pld_above_target"]
    # each accountant's interval is as narrow as its stated precision: PRV 2 × 1 %, PLD 2 % of the target
    r_low, r_up = check["reporting_interval"]
    p_low, p_up = check["pld_interval"]
    assert r_up == spent and r_up - r_low <= 2.05 * 0.01 * target
    assert p_up - p_low == pytest.approx(PLD_PRECISION * target)
    assert p_low <= r_up and r_low <= p_up
    assert report["rdp_epsilon"] >= check["epsilon_spent"]  # RDP is the looser bound
    assert report["steps"] == steps and math.isclose(report["epochs"], 3.0)


def test_a_constructed_disagreement_at_epsilon_001_fails_the_cross_check():
    """A PLD of 0.029 beside a PRV of 0.0099 at target 0.01 passed the old rule (|Δ| ≤ 0.02);
    both numbers come from the real accountants (the PLD one of a history with less noise)."""
    target, q, steps, delta = 0.01, 0.1, 30, 1e-5
    sigma = calibrate_noise_multiplier(target, delta, q, steps)
    prv_low, _, prv_up = prv_bounds([(sigma, q, steps)], delta, 0.01 * target)
    wrong = [(sigma / 2.5, q, steps)]  # what a PLD that mis-read σ would compute
    pld = pld_bounds(wrong, delta, PLD_PRECISION * target)
    assert 0.025 < pld[1] < 0.03 and abs(pld[1] - prv_up) <= 0.02  # the old rule said "agrees"
    check = cross_check((prv_low, prv_up), pld, target)
    assert not check["agrees"] and check["pld_above_target"]
    assert check["epsilon_spent"] == pld[1]  # the larger of the two is reported
    # and a PLD that is right but merely a hair above the target is flagged, still agreeing
    near = cross_check((0.00985, 0.00999), (0.0099, 0.0101), target)
    assert near["agrees"] and near["pld_above_target"] and near["epsilon_spent"] == 0.00999


def test_calibration_reaches_epsilon_001_where_rdp_cannot():
    """At δ = 1e-8 RDP's orders cannot certify ε = 0.01 at any noise; the PLD brackets instead."""
    q, steps, delta = 0.1, 30, 1e-8
    assert epsilon_from_history([(1e4, q, steps)], delta, accountant="rdp-dp_accounting") > 0.01
    sigma = calibrate_noise_multiplier(0.01, delta, q, steps)
    spent = epsilon_from_history([(sigma, q, steps)], delta, eps_error=1e-4)
    assert 0.985 * 0.01 <= spent <= 0.01


def test_unreachable_target_says_what_would_reach_it():
    with pytest.raises(PrivacyError, match="not reachable.*larger epsilon"):
        calibrate_noise_multiplier(1e-4, 1e-5, 1.0, 10_000)


def test_heterogeneous_history_composes():
    one = epsilon_from_history([(2.0, 0.01, 200)], 1e-5, accountant="pld")
    two = epsilon_from_history([(2.0, 0.01, 100), (2.0, 0.01, 100)], 1e-5, accountant="pld")
    assert math.isclose(one, two, rel_tol=1e-6)


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-albert"])
def test_per_sample_gradients_equal_one_at_a_time(name):
    """Opacus hooks on LoRA (and ALBERT's reused layer) give exact per-example gradients."""
    from opacus import GradSampleModule

    from privrad.models import build_model

    model = no_dropout(build_model(name, 3, method="lora", seed=0))
    for n, p in model.named_parameters():  # LoRA B starts at 0: make every factor non-trivial
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (4, 12), generator=g)
    att = torch.ones_like(ids)
    att[1, 8:] = 0
    att[3, 5:] = 0
    y = torch.randint(0, 2, (4, 3), generator=g).float()
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    loss = torch.nn.functional.binary_cross_entropy_with_logits(gsm(input_ids=ids, attention_mask=att).logits, y, reduction="sum")
    loss.backward()
    per_sample = {n: p.grad_sample.clone() for n, p in gsm.named_parameters() if p.requires_grad}
    assert per_sample and any("lora_A" in n for n in per_sample)
    gsm.remove_hooks()
    for i in range(4):
        model.zero_grad()
        out = model(input_ids=ids[i: i + 1], attention_mask=att[i: i + 1]).logits
        torch.nn.functional.binary_cross_entropy_with_logits(out, y[i: i + 1], reduction="sum").backward()
        for n, p in model.named_parameters():
            if p.requires_grad:
                ps = per_sample["_module." + n][i]
                rel = (ps - p.grad).norm() / p.grad.norm().clamp(min=1e-12)
                assert rel < 1e-4, (n, float(rel))


def test_release_terms_answer_may_i_publish_this_adapter():
    from privrad.privacy import TRAINING_STATISTICS, release_terms

    secure = release_terms(private=True, dp_randomness="secure", credentialed=True, threshold="tuned", epsilon=1.0, delta=1e-5)
    assert secure["dp_release"] and "adapter" in secure["covers"][0] and "k·ε" in secure["covers"][0]
    assert secure["withheld"] == list(TRAINING_STATISTICS)
    assert any("validation and test splits are declared public" in s for s in secure["does_not_cover"])
    assert any("--set" in s for s in secure["does_not_cover"])
    replay = release_terms(private=True, dp_randomness="reproducible", credentialed=True, threshold="tuned")
    assert not replay["dp_release"] and replay["release"].startswith("not a DP release") and replay["covers"] == []
    public = release_terms(private=True, credentialed=False, threshold="fixed")
    assert public["dp_release"] and public["withheld"] == []
    assert any("training-split label prevalence" in s for s in public["does_not_cover"])
    assert any("fixed at 0.5" in s for s in public["does_not_cover"])
    patient = release_terms(private=True, privacy_unit="patient", credentialed=True, threshold="tuned")
    assert "one patient with all of their reports" in patient["covers"][0]
    assert not release_terms(private=False, credentialed=True, threshold="tuned")["dp_release"]
    with pytest.raises(PrivacyError, match="dp_randomness"):
        release_terms(private=True, dp_randomness="seeded", credentialed=True, threshold="tuned")


def test_delta_table_states_how_far_below_one_over_n_the_default_is():
    from privrad.privacy import delta_table

    rows = {r["n_train"]: r for r in delta_table([25_000, 35_000, 250_000])}
    assert rows[25_000]["delta"] == 1e-5 and rows[25_000]["one_over_n_divided_by_delta"] == pytest.approx(4.0)
    assert 2.5 < rows[35_000]["one_over_n_divided_by_delta"] < 3.0  # n^-1.1 takes over: only ~3× below 1/n
    assert rows[250_000]["delta"] < 1e-5 and rows[250_000]["delta_times_n"] == pytest.approx(250_000 ** -0.1)
