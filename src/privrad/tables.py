"""Tables as a reader meets them in the notebooks and the book.

Numbers are rounded for reading, an interval is written ``0.48 [0.43, 0.55]``, anything
undefined (a test that was not run, a precision with no predicted positive) is a dash — never
``NaN`` — and the notes of the tests table are footnotes under it, not a squeezed column.
Every function returns an object a notebook displays as HTML (a pandas ``Styler`` or
``IPython.display.HTML``); the values themselves come from :mod:`privrad.stats` and the run folders.
"""

from __future__ import annotations

import html
import math
import re
from typing import Any, Iterable

import pandas as pd

DASH = "—"
_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x)) or (isinstance(x, str) and not x.strip())


def number(x: Any, digits: int = 3, *, small: bool = True) -> str:
    """A number for reading: ``digits`` decimals for floats, as is for integers, a dash if undefined;
    a non-zero float too small for ``digits`` (a δ) in two significant digits unless ``small`` is False."""
    if missing(x):
        return DASH
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}".replace(",", " ") if abs(x) >= 10_000 else str(x)
    if small and x != 0 and math.isfinite(x) and abs(x) < 0.5 * 10 ** -digits:  # never a δ shown as 0.000
        return f"{x:.2g}".replace("-", "−")
    return f"{x:.{digits}f}".replace("-", "−")


def interval(value: Any, low: Any, high: Any, digits: int = 2) -> str:
    """``0.48 [0.43, 0.55]``; the value alone when the interval is undefined."""
    if missing(value):
        return DASH
    if missing(low) or missing(high):
        return number(value, digits, small=False)
    return f"{number(value, digits, small=False)} [{number(low, digits, small=False)}, {number(high, digits, small=False)}]"


def pvalue(p: Any) -> str:
    if missing(p):
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def footnote_marks(notes: Iterable[str]) -> tuple[list[str], list[str]]:
    """Per row, its footnote mark (``¹``…, empty when the row has no note), and the distinct
    notes in order of first use."""
    order: list[str] = []
    marks = []
    for note in notes:
        if missing(note):
            marks.append("")
            continue
        if note not in order:
            order.append(note)
        marks.append(str(order.index(note) + 1).translate(_SUPERSCRIPT))
    return marks, order


_INTERVAL = re.compile(r"^(\S+) (\[[^\]]+\])$")  # "0.48 [0.43, 0.55]"
# one look for every reader table: no cell wraps inside a number or an interval (the interval goes
# under its value, smaller), headers wrap, and a table wider than the page scrolls on its own
_TABLE_STYLES = [
    {"selector": "", "props": "display: block; max-width: 100%; overflow-x: auto; border-collapse: collapse;"
                              " font-size: 0.88em; margin: 0 0 0.5em 0;"},
    {"selector": "caption", "props": "caption-side: top; text-align: left; font-weight: 600; padding: 0.3em 0;"},
    {"selector": "th", "props": "padding: 0.25em 0.45em; text-align: left; vertical-align: bottom;"},
    {"selector": "thead th", "props": "border-bottom: 1px solid currentColor;"},
    {"selector": "td", "props": "padding: 0.25em 0.45em; vertical-align: top;"},
    {"selector": "td .privrad-ci", "props": "font-size: 0.85em; opacity: 0.75; white-space: nowrap;"},
    {"selector": "td .privrad-nowrap", "props": "white-space: nowrap;"},
]


def show(df: pd.DataFrame, *, digits: int = 3, index: bool = True, caption: str | None = None):
    """Any table for reading: floats rounded, undefined values as a dash."""
    styler = (df.style.format(lambda x: number(x, digits)).format_index(lambda x: DASH if missing(x) else x, axis=0)
              .set_table_styles(_TABLE_STYLES))
    if not index:
        styler = styler.hide(axis="index")
    if caption:
        styler = styler.set_caption(caption)
    return styler


def config_table(config):
    """A run's configuration, one parameter per row: ε as ∞ when non-private, ``default`` where
    privrad chooses (δ, the LoRA targets), lists and options as written in a profile."""
    import json

    from privrad.config import epsilon_label

    def value(name: str, v: Any) -> str:
        if name == "epsilon":
            return epsilon_label(v)
        if v is None:
            return "default"
        return json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list, tuple)) else str(v)

    rows = {name: value(name, v) for name, v in config.to_dict().items()}
    return pd.Series(rows).to_frame("value").rename_axis("parameter").style.set_table_styles(_TABLE_STYLES)


def _cell_html(x: Any) -> str:
    """A formatted cell as HTML: an interval as its value with the interval under it, a number
    kept on one line, text as it is (escaped)."""
    text = str(x)
    m = _INTERVAL.match(text)
    if m:
        return f'<span class="privrad-nowrap">{html.escape(m[1])}</span><br><span class="privrad-ci">{html.escape(m[2])}</span>'
    if (len(text) <= 12 and " " not in text.strip()) or re.match(r"^\S+ ± \S+$", text):
        return f'<span class="privrad-nowrap">{html.escape(text)}</span>'
    return html.escape(text)


def html_table(df: pd.DataFrame, *, notes: list[str] = (), caption: str | None = None):
    """``df`` (already formatted as text) as an HTML table without its index, with numbered notes
    under it: intervals ``0.48 [0.43, 0.55]`` are shown with the interval under the value."""
    from IPython.display import HTML

    body = (df.map(_cell_html).style.hide(axis="index").set_table_attributes('class="privrad-table"')
            .set_table_styles(_TABLE_STYLES))
    if caption:
        body = body.set_caption(html.escape(caption))
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return HTML(body.to_html() + (f'<ol class="privrad-notes">{notes_html}</ol>' if notes else ""))


def results_table(runs: pd.DataFrame, *, threshold: str = "tuned", caption: str | None = None):
    """:func:`privrad.stats.paper_table` for reading: each cell ``mean [bootstrap 95 % CI]``
    (or ``mean ± sd`` over seeds), a dash where the study has no such run (a column with no run
    at all is left out); ``threshold`` as
    :data:`privrad.stats.THRESHOLDS` (the runs' tuned thresholds, or a fixed 0.5)."""
    from privrad import stats

    table = stats.paper_table(runs, threshold=threshold).map(lambda x: DASH if missing(x) else x)
    table = table.loc[:, [c for c in table.columns if not (table[c] == DASH).all()]]  # no column the study has no run for
    return html_table(table, caption=caption)


def tests_table(tests: pd.DataFrame, *, threshold: str | None = None, caption: str | None = None):
    """:func:`privrad.comparisons.tests_table` for reading: the effect with its interval, p-values
    rounded, a dash for what was not computed, and each row's note as a footnote. ``threshold``
    (as :data:`privrad.stats.THRESHOLDS`) keeps the tests of one threshold and drops that column."""
    if threshold is not None and "threshold" in tests:
        tests = tests[tests["threshold"] == threshold]
    marks, notes = footnote_marks(tests["note"])
    table = pd.DataFrame({
        "test": [f"{t}{m}" for t, m in zip(tests["test"], marks)],
        "dataset": tests["dataset"],
        **({"threshold": tests["threshold"]} if "threshold" in tests and threshold is None else {}),
        "comparison": tests["comparison"],
        "n": [number(int(n)) if not missing(n) else DASH for n in tests["n"]],
        "statistic": [number(x, 3) for x in tests["statistic"]],
        "effect [95 % CI]": [interval(e, lo, hi, 3) for e, lo, hi in
                             zip(tests["effect"], tests["effect_ci95_low"], tests["effect_ci95_high"])],
        "p": [pvalue(p) for p in tests["p"]],
        "p (Holm)": [pvalue(p) for p in tests["p_holm"]],
        **({"smallest possible p": [pvalue(p) for p in tests["p_min"]]} if "p_min" in tests else {}),
    })
    return html_table(table, notes=notes, caption=caption)
