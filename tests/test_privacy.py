import math

import pytest
import torch

from privrad.errors import PrivacyError
from privrad.privacy import (
    calibrate_noise_multiplier,
    check_delta,
    check_epsilon,
    default_delta,
    epsilon_from_history,
    privacy_report,
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
    pld = report["cross_check"]["epsilon_spent"]
    assert abs(pld - spent) <= 0.02 or abs(pld - spent) <= 0.02 * spent
    assert report["cross_check"]["agrees"]
    assert report["rdp_epsilon"] >= pld  # RDP is the looser bound
    assert report["steps"] == steps and math.isclose(report["epochs"], 3.0)


def test_unreachable_target_says_what_would_reach_it():
    with pytest.raises(PrivacyError, match="not reachable.*larger epsilon"):
        calibrate_noise_multiplier(1e-4, 1e-5, 1.0, 10_000)


def test_heterogeneous_history_composes():
    one = epsilon_from_history([(2.0, 0.01, 200)], 1e-5, accountant="pld")
    two = epsilon_from_history([(2.0, 0.01, 100), (2.0, 0.01, 100)], 1e-5, accountant="pld")
    assert math.isclose(one, two, rel_tol=1e-6)


def _no_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-albert"])
def test_per_sample_gradients_equal_one_at_a_time(name):
    """Opacus hooks on LoRA (and ALBERT's reused layer) give exact per-example gradients."""
    from opacus import GradSampleModule

    from privrad.models import build_model

    model = _no_dropout(build_model(name, 3, method="lora", seed=0))
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
