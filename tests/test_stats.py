"""Statistics over run folders (fabricated in the run-folder format with controlled predictions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from privrad import stats
from privrad.evaluate import weighted_f1
from study_helpers import fabricate_run

FLIP = {0.01: 0.40, 0.1: 0.30, 1.0: 0.15, 10.0: 0.08, None: 0.05}


def make_grid(tmp_path, seeds=(0,), models=("tiny-bert", "tiny-albert", "minilm-l6"), with_full=True):
    for model in models:
        for seed in seeds:
            for eps, flip in FLIP.items():
                fabricate_run(tmp_path, model=model, epsilon=eps, seed=seed, flip=flip,
                              noise_multiplier=0.0 if eps is None else 1.0 / eps ** 0.5)
            if with_full:
                fabricate_run(tmp_path, model=model, method="full", epsilon=None, seed=seed, flip=0.02)
    return stats.load_runs(tmp_path)


def test_holm_matches_hand_computed_values():
    adj = stats.holm([0.01, 0.04, 0.03, 0.005, float("nan")])
    np.testing.assert_allclose(adj[:4], [0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adj[4])
    assert stats.holm([0.9, 0.8]).max() == 1.0


def test_load_runs_and_paper_table(tmp_path):
    runs = make_grid(tmp_path)
    assert len(runs) == 3 * 6
    assert set(runs["epsilon_label"]) == {"0.01", "0.1", "1", "10", "∞"}
    # the fabricated metrics equal the statistics' own weighted F1 on the stored predictions
    for r in runs.itertuples():
        pr = stats.load_predictions(r.run_dir)
        assert weighted_f1(pr["labels"], pr["decisions"], pr["label_mask"]) == pytest.approx(r.weighted_f1, abs=1e-9)
    table = stats.paper_table(runs)
    assert list(table.columns) == ["dataset", "model", "ε=0.01", "ε=0.1", "ε=1", "ε=10", "ε=∞", "full", "learned nothing",
                                   "paper: moderate DP", "paper: ∞", "paper: full"]
    assert (table["paper: ∞"] == "0.90").all() and (table["paper: full"] == "0.96").all()
    assert table["ε=1"].str.match(r"^0\.\d{3} \[0\.\d\d, 0\.\d\d\]$").all()  # one seed: mean [CI]
    numeric = stats.paper_table(runs, formatted=False)
    assert (numeric["ε=0.01"] < numeric["ε=∞"]).all() and (numeric["ε=∞"] < numeric["full"]).all()
    assert "One seed" in stats.seeds_note(runs)


def test_tests_find_the_built_in_tradeoff_and_label_what_one_seed_cannot_do(tmp_path):
    runs = make_grid(tmp_path)
    t = stats.tests_table(runs, n_bootstrap=500)
    fr = t[t["test"] == "Friedman across ε"].iloc[0]
    assert fr["n"] == 3 and fr["statistic"] == pytest.approx(12.0) and fr["p"] < 0.05
    wil = t[t["test"] == "Wilcoxon vs ∞"]
    assert len(wil) == 4 and (wil["p"] >= 0.25 - 1e-9).all()
    assert wil["note"].str.contains("cannot reach 0.05").all()
    boot = t[t["test"] == "paired bootstrap vs ∞"]
    assert len(boot) == 3 * 4
    strong = boot[boot["comparison"].str.contains("ε=0.01 vs")]
    assert (strong["effect"] < -0.2).all() and (strong["effect_ci95_high"] < 0).all() and (strong["p_holm"] < 0.05).all()
    assert (boot["p_holm"] >= boot["p"]).all()
    sp = t[(t["test"] == "Spearman log ε ~ F1") & (t["comparison"] != "all models")]
    assert np.allclose(sp["statistic"], 1.0)
    pooled = t[(t["test"] == "Spearman log ε ~ F1") & (t["comparison"] == "all models")].iloc[0]
    assert pooled["statistic"] > 0.8 and pooled["p"] < 0.01


def test_paired_bootstrap_difference_matches_metrics_and_is_zero_against_itself(tmp_path):
    a = fabricate_run(tmp_path, epsilon=0.1, flip=0.3)
    b = fabricate_run(tmp_path, epsilon=None, flip=0.05)
    runs = stats.load_runs(tmp_path).set_index("run_dir")
    res = stats.paired_bootstrap(a, b, n_bootstrap=300)
    assert res["difference"] == pytest.approx(runs.loc[str(a), "weighted_f1"] - runs.loc[str(b), "weighted_f1"], abs=1e-9)
    assert res["difference_ci95_low"] < res["difference"] < res["difference_ci95_high"] < 0
    same = stats.paired_bootstrap(a, a, n_bootstrap=300)
    assert same["difference"] == 0 and same["difference_ci95_low"] == 0 == same["difference_ci95_high"] and same["p"] == 1.0


def test_paired_bootstrap_refuses_different_test_reports(tmp_path):
    a = fabricate_run(tmp_path, epsilon=1.0, n_test=300)
    b = fabricate_run(tmp_path, epsilon=None, n_test=250)
    with pytest.raises(ValueError, match="same test reports"):
        stats.paired_bootstrap(a, b)


def test_three_seeds_give_sd_and_a_wilcoxon_that_can_reach_significance(tmp_path):
    runs = make_grid(tmp_path, seeds=(0, 1, 2), with_full=False)
    s = stats.summarize(runs)
    assert (s["n_seeds"] == 3).all() and s["sd"].notna().all()
    assert stats.paper_table(runs)["ε=1"].str.contains("±").all()
    t = stats.tests_table(runs, n_bootstrap=200)
    wil = t[t["test"] == "Wilcoxon vs ∞"]
    assert (wil["n"] == 9).all() and not wil["note"].str.contains("cannot reach").any()
    assert (wil["p_holm"] < 0.05).all()
    assert "3 seeds" in stats.seeds_note(runs)


def test_too_few_levels_are_labelled_not_run(tmp_path):
    for eps in (1.0, None):
        fabricate_run(tmp_path, epsilon=eps, flip=0.1)
    t = stats.tests_table(stats.load_runs(tmp_path), n_bootstrap=100)
    notes = dict(zip(t["test"], t["note"]))
    assert notes["Friedman across ε"].startswith("not run")
    assert notes["Wilcoxon vs ∞"].startswith("not run")
    assert notes["Spearman log ε ~ F1"].startswith("not run")
    assert t[t["test"] == "paired bootstrap vs ∞"]["p"].notna().all()
