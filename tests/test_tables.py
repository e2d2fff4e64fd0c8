"""The book's tables as a reader meets them: intervals under their values, no NaN, no non-zero
shown as zero, one threshold per tests table (run folders fabricated by the real writer)."""

from __future__ import annotations

import re

from privrad import comparisons, tables
from test_stats import make_grid


def _text(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_numbers_are_never_nan_and_a_small_delta_is_not_rounded_to_zero():
    assert tables.number(float("nan")) == tables.DASH and tables.number(None) == tables.DASH
    assert tables.number(1.2e-5) == "1.2e−05" and tables.number(0.0) == "0.000" and tables.number(0.12345) == "0.123"
    assert tables.interval(0.48, 0.43, 0.55) == "0.48 [0.43, 0.55]"
    assert tables.interval(0.01, 0.0043, 0.08) == "0.01 [0.00, 0.08]"  # an interval keeps one precision


def test_results_table_shows_each_interval_under_its_value_scrolls_when_wide_and_drops_empty_columns(tmp_path):
    runs = make_grid(tmp_path, models=("tiny-bert",), with_full=False)
    out = tables.results_table(runs, caption="Weighted F1 at the runs' thresholds").data
    assert re.search(r"display: block;\s*max-width: 100%;\s*overflow-x: auto;", out)  # a wide table scrolls, not the page
    assert re.search(r'<span class="privrad-nowrap">0\.\d\d</span><br><span class="privrad-ci">\[0\.\d\d, 0\.\d\d\]</span>', out)
    text = _text(out)
    assert "Weighted F1 at the runs&#x27; thresholds" in out and "NaN" not in text and "nan" not in text
    assert re.search(r"0\.\d\d \[0\.\d\d, 0\.\d\d\]", text)  # read as text: "0.48 [0.43, 0.55]"
    assert "ε=0.01" in text and "paper: full" in text and not re.search(r">full</th>", out)  # no column without a run


def test_tests_table_of_one_threshold_drops_that_column_and_numbers_its_own_notes(tmp_path):
    runs = make_grid(tmp_path)
    tests = comparisons.tests_table(runs, n_bootstrap=100)
    both = _text(tables.tests_table(tests).data)
    tuned = tables.tests_table(tests, threshold="tuned", caption="at the runs' thresholds").data
    half = tables.tests_table(tests, threshold="0.5").data
    assert "threshold" in both and "threshold" not in _text(tuned).replace("runs&#x27; thresholds", "")
    n_rows = lambda h: h.count("<tr") - 1  # noqa: E731 (one header row)
    assert n_rows(tuned) == n_rows(half) == (tests["threshold"] == "tuned").sum()
    assert "smallest possible p" in _text(tuned) and "NaN" not in _text(tuned) + _text(half)
    notes = re.findall(r"<li>", tuned)
    assert len(notes) == len({n for n in tests[tests["threshold"] == "tuned"]["note"] if n})


def test_the_tests_summary_counts_the_comparisons_at_the_runs_thresholds_only(tmp_path):
    runs = make_grid(tmp_path)
    tests = comparisons.tests_table(runs, n_bootstrap=100)
    tuned = tests[(tests["threshold"] == "tuned") & tests["test"].str.startswith("paired bootstrap") & tests["p_holm"].notna()]
    (sentence,) = comparisons.tests_summary(tests).values()
    assert ", at the runs' thresholds, " in sentence
    assert f"of {len(tuned)} model × ε comparisons" in sentence and len(tuned) == 3 * 4
