"""Statistics over run folders (fabricated in the run-folder format with controlled predictions)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from privrad import comparisons, stats
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
    adj = comparisons.holm([0.01, 0.04, 0.03, 0.005, float("nan")])
    np.testing.assert_allclose(adj[:4], [0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adj[4])
    assert comparisons.holm([0.9, 0.8]).max() == 1.0


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
    assert table["ε=1"].str.match(r"^0\.\d\d \[0\.\d\d, 0\.\d\d\]$").all()  # one seed: mean [CI], as "0.48 [0.43, 0.55]"
    numeric = stats.paper_table(runs, formatted=False)
    assert (numeric["ε=0.01"] < numeric["ε=∞"]).all() and (numeric["ε=∞"] < numeric["full"]).all()
    assert "One seed" in stats.seeds_note(runs)


def test_tests_find_the_built_in_tradeoff_and_label_what_one_seed_cannot_do(tmp_path):
    runs = make_grid(tmp_path)
    full = comparisons.tests_table(runs, n_bootstrap=500)
    # every test at the runs' thresholds and at 0.5; these fabricated runs decide at 0.5, so both agree
    t, at_half = (full[full["threshold"] == k].reset_index(drop=True) for k in ("tuned", "0.5"))
    assert len(t) == len(at_half) and np.allclose(t["statistic"], at_half["statistic"], equal_nan=True)
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
    page = t[t["test"] == comparisons.PAGE].set_index("comparison")
    per_model = page.drop("all models")
    assert np.allclose(per_model["effect"], 1.0)  # each model's F1 rises with ε: mean ρ = 1
    assert np.allclose(per_model["p"], 1 / 24) and np.allclose(per_model["p_min"], 1 / 24)  # one block of 4 levels
    pooled = page.loc["all models"]
    assert pooled["n"] == 3 and pooled["effect"] == 1.0 and pooled["p"] == pytest.approx(24.0 ** -3)
    assert (full["p"].dropna() >= full.loc[full["p"].notna(), "p_min"] - 1e-15).all()
    # the bootstrap of a strong effect reports its minimum, never 0
    assert np.allclose(strong["p"], 2 / 501)


def test_paired_bootstrap_difference_matches_metrics_and_is_zero_against_itself(tmp_path):
    a = fabricate_run(tmp_path, epsilon=0.1, flip=0.3)
    b = fabricate_run(tmp_path, epsilon=None, flip=0.05)
    runs = stats.load_runs(tmp_path).set_index("run_dir")
    res = comparisons.paired_bootstrap(a, b, n_bootstrap=300)
    assert res["difference"] == pytest.approx(runs.loc[str(a), "weighted_f1"] - runs.loc[str(b), "weighted_f1"], abs=1e-9)
    assert res["difference_ci95_low"] < res["difference"] < res["difference_ci95_high"] < 0
    same = comparisons.paired_bootstrap(a, a, n_bootstrap=300)
    assert same["difference"] == 0 and same["difference_ci95_low"] == 0 == same["difference_ci95_high"] and same["p"] == 1.0


def test_paired_bootstrap_refuses_different_test_reports(tmp_path):
    a = fabricate_run(tmp_path, epsilon=1.0, n_test=300)
    b = fabricate_run(tmp_path, epsilon=None, n_test=250)
    with pytest.raises(ValueError, match="same test reports"):
        comparisons.paired_bootstrap(a, b)


def test_three_seeds_give_sd_and_a_wilcoxon_that_can_reach_significance(tmp_path):
    runs = make_grid(tmp_path, seeds=(0, 1, 2), with_full=False)
    s = stats.summarize(runs)
    assert (s["n_seeds"] == 3).all() and s["sd"].notna().all()
    assert stats.paper_table(runs)["ε=1"].str.contains("±").all()
    t = comparisons.tests_table(runs, n_bootstrap=200)
    t = t[t["threshold"] == "tuned"]
    wil = t[t["test"] == "Wilcoxon vs ∞"]
    assert (wil["n"] == 9).all() and not wil["note"].str.contains("cannot reach").any()
    assert (wil["p_holm"] < 0.05).all()
    assert "3 seeds" in stats.seeds_note(runs)


def test_too_few_levels_are_labelled_not_run(tmp_path):
    for eps in (1.0, None):
        fabricate_run(tmp_path, epsilon=eps, flip=0.1)
    t = comparisons.tests_table(stats.load_runs(tmp_path), n_bootstrap=100)
    notes = dict(zip(t["test"], t["note"]))
    assert notes["Friedman across ε"].startswith("not run")
    assert notes["Wilcoxon vs ∞"].startswith("not run")
    assert notes[comparisons.PAGE].startswith("not run")
    assert t[t["test"] == "paired bootstrap vs ∞"]["p"].notna().all()


def test_page_trend_reproduces_a_hand_computed_l_and_exact_p():
    table = np.array([[0.50, 0.55, 0.60],   # ranks 1 2 3
                      [0.52, 0.51, 0.58],   # ranks 2 1 3
                      [0.40, 0.45, 0.44]])  # ranks 1 3 2
    # L = Σ_j j · R_j with column rank sums R = (4, 6, 8): 1·4 + 2·6 + 3·8 = 40
    # one block's Σ j·r_j over the 6 orderings of (1, 2, 3): 14 once, 13 twice, 11 twice, 10 once;
    # three blocks reach ≥ 40 as 14+14+14 (1 way), 14+14+13 (3 · 2 = 6), 14+13+13 (3 · 2 · 2 = 12)
    L, p, p_min, method = comparisons.page_trend(table)
    assert L == 40 and method == "exact"
    assert p == pytest.approx(19 / 216, abs=1e-12) and p_min == pytest.approx(1 / 216)
    # one block: the exact permutation p over its 4! orderings; ranks 1 3 2 4 give L = 29 of a
    # maximum 30, reached or beaten by the identity and its three adjacent swaps: 4 / 24
    L1, p1, p1_min, _ = comparisons.page_trend(np.array([[0.1, 0.3, 0.2, 0.4]]))
    assert L1 == 29 and p1 == pytest.approx(4 / 24) and p1_min == pytest.approx(1 / 24)


def _runs_frame(rows):
    return pd.DataFrame(rows, columns=["dataset", "model", "method", "epsilon", "seed", "weighted_f1"])


def test_wilcoxon_counts_only_non_zero_differences_and_respects_its_exact_minimum():
    rows = []
    for i, model in enumerate(("a", "b", "c", "d", "e", "f")):
        rows.append(("ds", model, "lora", math.inf, 0, 0.80 + 0.01 * i))
        # two blocks tie exactly with ∞; four are lower by tied amounts (scipy then approximates)
        rows.append(("ds", model, "lora", 1.0, 0, 0.80 + 0.01 * i - (0.0 if i < 2 else 0.05)))
    t = pd.DataFrame(comparisons.paired_vs_nonprivate(_runs_frame(rows)))
    row = t.iloc[0]
    assert row["n"] == 6 and "4 non-zero of 6" in row["note"]
    assert row["p_min"] == pytest.approx(2 / 2 ** 4) and row["p"] >= row["p_min"]
    assert "cannot reach 0.05" in row["note"]


def test_friedman_minimum_and_label_when_it_cannot_reach_005():
    rows = [("ds", m, "lora", e, 0, f) for m in ("a", "b") for e, f in ((0.1, 0.5), (1.0, 0.6), (math.inf, 0.7))]
    row = comparisons.friedman(_runs_frame(rows))[0]
    assert row["p_min"] == pytest.approx(1 / 6) and row["p"] >= 1 / 6 and "cannot reach 0.05" in row["note"]


def test_seed_mean_interval_is_computed_not_averaged(tmp_path):
    runs = make_grid(tmp_path, seeds=(0, 1, 2), models=("tiny-bert",), with_full=False)
    s = stats.summarize(runs, n_bootstrap=400)
    cell = s[s["epsilon"] == 1.0].iloc[0]
    dirs = runs[runs["epsilon"] == 1.0]["run_dir"]
    mean, lo, hi = stats.seed_mean_interval(dirs, n_bootstrap=400)
    assert cell["mean"] == pytest.approx(mean) and (cell["weighted_f1_ci95_low"], cell["weighted_f1_ci95_high"]) == (lo, hi)
    assert lo < mean < hi
    # each run stores its own bootstrap interval: averaging their endpoints is not what is shown
    averaged = (runs[runs["epsilon"] == 1.0]["weighted_f1_ci95_low"].mean(), runs[runs["epsilon"] == 1.0]["weighted_f1_ci95_high"].mean())
    assert (lo, hi) != pytest.approx(averaged, abs=1e-6)


def test_the_weighted_f1_at_05_is_shown_beside_the_tuned_one(tmp_path):
    """Tuned thresholds come from the validation split (declared public); every table shows the
    weighted F1 at a fixed 0.5, which uses no validation data, beside it."""
    for eps in (0.1, 1.0, 10.0, None):
        fabricate_run(tmp_path, epsilon=eps, flip=0.1, threshold=0.9)  # "tuned" at 0.9
    runs = stats.load_runs(tmp_path)
    assert (runs["weighted_f1"] != runs["weighted_f1_at_0.5"]).all()
    s = stats.summarize(runs, n_bootstrap=200)
    for r in s.itertuples():
        run = runs[runs["epsilon"] == r.epsilon].iloc[0]
        assert r.mean == pytest.approx(run["weighted_f1"])
    assert np.allclose(s["mean_at_0.5"], runs["weighted_f1_at_0.5"])
    assert (s["weighted_f1_ci95_low_at_0.5"] < s["mean_at_0.5"]).all() and (s["mean_at_0.5"] < s["weighted_f1_ci95_high_at_0.5"]).all()
    tuned = stats.paper_table(runs, formatted=False, n_bootstrap=100)
    fixed = stats.paper_table(runs, threshold="0.5", formatted=False, n_bootstrap=100)
    assert tuned.loc[0, "ε=1"] == runs.loc[runs["epsilon"] == 1.0, "weighted_f1"].iloc[0]
    assert fixed.loc[0, "ε=1"] == runs.loc[runs["epsilon"] == 1.0, "weighted_f1_at_0.5"].iloc[0]
    pred = stats.load_predictions(runs["run_dir"].iloc[0])
    assert stats.weighted_f1(pred["labels"], stats.decisions(pred, "0.5"), pred["label_mask"]) == pytest.approx(runs["weighted_f1_at_0.5"].iloc[0])
    t = comparisons.tests_table(runs, n_bootstrap=100)
    assert set(t["threshold"]) == {"tuned", "0.5"}


def test_the_seeds_note_says_what_a_seed_controls_under_each_dp_randomness(tmp_path):
    runs = make_grid(tmp_path, models=("tiny-bert",), with_full=False)
    runs = runs.assign(dp_randomness=[None if e == math.inf else "secure" for e in runs["epsilon"]])
    assert "another draw of the noise" in stats.seeds_note(runs) and "replay" not in stats.seeds_note(runs)
    runs["dp_randomness"] = runs["dp_randomness"].where(runs["dp_randomness"].isna(), "reproducible")
    assert "not DP releases" in stats.seeds_note(runs)


def test_the_tests_keep_their_names_in_stats():
    """The tests across ε live in privrad.comparisons; privrad.stats still names them (one definition)."""
    assert stats.tests_table is comparisons.tests_table and stats.page_trend is comparisons.page_trend


def test_the_analysis_notebook_shows_each_tuned_result_beside_its_fixed_threshold_twin(tmp_path):
    """Issue 8 points 3 and 6 as the reader sees them: the tests table (each test at both
    thresholds, with the smallest p each can give), the two results tables, and the trade-off
    figure's dotted 0.5 lines — rendered by privrad.tables and privrad.plots from fabricated runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from privrad import plots, tables

    runs = make_grid(tmp_path, models=("tiny-bert", "tiny-albert"))
    tests = comparisons.tests_table(runs, n_bootstrap=100)
    page = tables.tests_table(tests).data
    for column in ("<th", ">threshold<", ">smallest possible p<", ">p (Holm)<", comparisons.PAGE):
        assert column in page, column
    assert page.count(">0.5<") == page.count(">tuned<") > 0
    # no p-value is printed below the test's smallest possible one (here Page's 1/24 per model)
    assert "0.042" in page and "< 0.001" not in page.split(comparisons.PAGE, 1)[1].split("</tr>", 1)[0]
    tuned = tables.results_table(runs, caption="at the runs' thresholds").data
    half = tables.results_table(runs, threshold="0.5", caption="at a fixed 0.5 threshold").data
    assert "at a fixed 0.5 threshold" in half and tuned != half
    ax = plots.tradeoff(runs, runs["dataset"].iloc[0])
    dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    solid = [line for line in ax.get_lines() if line.get_linestyle() == "-" and line.get_marker() == "o"]
    assert len(dotted) == len(solid) == 2  # one dotted 0.5 twin per model, in its colour
    assert {line.get_color() for line in dotted} == {line.get_color() for line in solid}
    assert "same runs, threshold 0.5" in [t.get_text() for t in ax.get_legend().get_texts()]  # the legend names the dotted style
    plt.close("all")
