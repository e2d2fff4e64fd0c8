import numpy as np
import pytest
from sklearn.metrics import f1_score

from privrad.errors import ConfigError
from privrad.evaluate import bootstrap_counts, bootstrap_weighted_f1, evaluate, thresholds_for, tune_thresholds, weighted_f1


def _data(n=200, k=4, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < [0.1, 0.3, 0.5, 0.2]).astype(np.float32)
    p = np.clip(y * 0.3 + rng.random((n, k)) * 0.7, 0, 1)
    return y, p


def test_weighted_f1_is_sklearns_when_nothing_is_masked():
    y, p = _data()
    d = p >= 0.5
    mask = np.ones_like(y, bool)
    assert weighted_f1(y, d, mask) == pytest.approx(f1_score(y, d, average="weighted", zero_division=0))
    m = evaluate(p, y, mask, list("abcd"), n_bootstrap=200)
    assert m["weighted_f1"] == pytest.approx(f1_score(y, d, average="weighted", zero_division=0))
    assert m["micro_f1"] == pytest.approx(f1_score(y, d, average="micro", zero_division=0))
    assert m["macro_f1"] == pytest.approx(f1_score(y, d, average="macro", zero_division=0))
    lo, hi = m["weighted_f1_ci95"]
    assert lo <= m["weighted_f1"] <= hi and hi - lo > 0
    assert m["all_negative_weighted_f1"] == 0.0
    assert [r["support"] for r in m["per_label"]] == y.sum(0).astype(int).tolist()


def test_masked_entries_are_ignored_everywhere():
    y, p = _data()
    mask = np.ones_like(y, bool)
    mask[::3, 1] = False
    a = evaluate(p, y, mask, list("abcd"), n_bootstrap=50)
    y2, p2 = y.copy(), p.copy()
    y2[~mask] = 1 - y2[~mask]
    p2[~mask] = 1 - p2[~mask]
    b = evaluate(p2, y2, mask, list("abcd"), n_bootstrap=50)
    assert a == b
    assert a["per_label"][1]["n_observed"] == int(mask[:, 1].sum())


def test_auroc_undefined_without_both_classes():
    y, p = _data()
    y[:, 0] = 0
    m = evaluate(p, y, np.ones_like(y, bool), list("abcd"), n_bootstrap=0)
    assert m["per_label"][0]["auroc"] is None and m["per_label"][1]["auroc"] is not None


def test_tuned_thresholds_fit_the_data_they_see():
    y, p = _data()
    th = tune_thresholds(p, y, np.ones_like(y, bool))
    assert th.shape == (4,) and not np.allclose(th, 0.5)
    fixed = evaluate(p, y, np.ones_like(y, bool), list("abcd"), thresholds=0.5, n_bootstrap=0)
    tuned = evaluate(p, y, np.ones_like(y, bool), list("abcd"), thresholds=th, n_bootstrap=0)
    assert tuned["weighted_f1"] >= fixed["weighted_f1"]
    assert np.allclose(thresholds_for("fixed", p, y, np.ones_like(y, bool)), 0.5)
    with pytest.raises(ConfigError, match="threshold"):
        thresholds_for("best", p, y, np.ones_like(y, bool))


def test_weighted_f1_equals_sklearn_and_respects_mask():
    """The one weighted F1 (evaluate.py): metrics.json, the bootstrap CI and the statistics' paired
    bootstrap all call it."""
    rng = np.random.default_rng(0)
    y = (rng.random((200, 5)) < 0.3).astype(float)
    p = np.where(rng.random(y.shape) < 0.2, 1 - y, y)
    assert weighted_f1(y, p) == pytest.approx(f1_score(y, p, average="weighted", zero_division=0), abs=1e-12)
    mask = rng.random(y.shape) > 0.2
    masked = weighted_f1(y, p, mask)
    assert masked != pytest.approx(weighted_f1(y, p), abs=1e-9)
    # masking entries away is the same as computing on the unmasked entries label by label
    f1s = [f1_score(y[mask[:, j], j], p[mask[:, j], j], zero_division=0) for j in range(5)]
    w = [y[mask[:, j], j].sum() for j in range(5)]
    assert masked == pytest.approx(np.average(f1s, weights=w), abs=1e-12)


def test_bootstrap_resamples_are_weighted_f1_of_resampled_reports():
    rng = np.random.default_rng(1)
    y = (rng.random((120, 4)) < 0.3).astype(float)
    d = np.where(rng.random(y.shape) < 0.2, 1 - y, y) > 0.5
    mask = rng.random(y.shape) > 0.1
    counts = bootstrap_counts(len(y), 5, seed=3)
    boots = bootstrap_weighted_f1(y, d, mask, counts)
    for row, b in zip(counts, boots):
        idx = np.repeat(np.arange(len(y)), row.astype(int))
        assert b == pytest.approx(weighted_f1(y[idx], d[idx], mask[idx]), abs=1e-12)


def test_learned_nothing_is_the_best_text_blind_classifier_under_the_threshold_policy():
    """Training prevalence as every report's score: with tuned thresholds each label is 'all
    positive' where that beats 'none' on validation, which is weighted F1 of 2p/(1+p) per label."""
    from privrad.evaluate import learned_nothing

    rng = np.random.default_rng(0)
    prev = np.array([0.4, 0.2, 0.05])
    draw = lambda n: (rng.random((n, 3)) < prev).astype(np.float32)  # noqa: E731
    tr, va, te = draw(400), draw(200), draw(300)
    ones = lambda y: np.ones_like(y, bool)  # noqa: E731
    tuned = learned_nothing(tr, ones(tr), va, ones(va), te, ones(te))
    assert tuned == pytest.approx(weighted_f1(te, np.ones_like(te, bool), ones(te)))
    assert 0.2 < tuned < 0.6
    assert learned_nothing(tr, ones(tr), va, ones(va), te, ones(te), threshold="fixed") == 0.0  # all below 0.5
    # a model that ranks perfectly beats it; the tuned policy may pick "every report positive" for a model too
    assert tune_thresholds(np.full((4, 1), 0.3), np.array([[1.0], [0], [1], [1]]), np.ones((4, 1), bool))[0] == 0.3
