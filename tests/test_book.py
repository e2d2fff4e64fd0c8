"""The book's sources: configuration, table of contents and chapters (the build itself is
tested end to end in test_study_e2e.py on an executed smoke study)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ("intro", "data", "methods", "results", "statistics", "reproduce", "appendix")


def _toc_files(node) -> list[str]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("file", "root"):
                out.append(v)
            else:
                out += _toc_files(v)
    elif isinstance(node, list):
        for v in node:
            out += _toc_files(v)
    return out


def test_config_executes_nothing_reads_only_the_book_and_loads_nothing_remote():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert cfg["execute"]["execute_notebooks"] == "off"
    sphinx = cfg["sphinx"]["config"]
    assert sphinx["include_patterns"] == ["book/**"]  # not .pytest_cache/, .venv/, results/, data/ …
    assert {".*", "**/.*"} <= set(cfg["exclude_patterns"])
    # no thebe (a CDN script); MathJax from _static; exercises with hidden solutions
    assert "sphinx_thebe" not in sphinx["extensions"] and cfg["launch_buttons"]["thebe"] is False
    assert {"sphinx-mathjax-offline", "sphinx_exercise"} <= set(sphinx["extensions"])


def test_toc_lists_every_chapter_and_the_generated_pages():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    assert toc["format"] == "jb-book"
    files = _toc_files(toc)
    assert [f for f in files if not f.startswith("book/generated")] == [f"book/{c}" for c in CHAPTERS]
    assert {"book/generated/data", "book/generated/analysis"} <= set(files)
    assert "book/generated/runs/*" in str(toc)
    assert sorted(p.stem for p in (ROOT / "book").glob("*.md")) == sorted(CHAPTERS)


def test_every_chapter_ends_with_a_summary_and_exercises_whose_solutions_are_folded():
    for c in CHAPTERS:
        text = (ROOT / "book" / f"{c}.md").read_text()
        headings = re.findall(r"^(#+) (.+)$", text, flags=re.M)
        assert headings[0][0] == "#", c  # one title
        assert [h for _, h in headings[-2:]] == ["Summary", "Exercises"], c
        exercises = text.split("## Exercises", 1)[1]
        labels = re.findall(r"^:::\{exercise\}\n:label: (\S+)$", exercises, flags=re.M)
        solved = re.findall(r"^:::\{solution\} (\S+)\n:class: dropdown$", exercises, flags=re.M)
        assert len(labels) >= 2 and labels == solved, c  # every exercise has a solution, hidden until clicked


def test_the_book_names_the_stand_ins_and_the_papers_numbers():
    results = (ROOT / "book" / "results.md").read_text()
    for paper, ours in (("BERT-small", "minilm-l3"), ("BERT-medium", "minilm-l6"), ("ALBERT-base", "minilm-albert")):
        assert re.search(rf"{paper}.*\| `{ours}`", results), (paper, ours)
    for number in ("0.88", "0.90", "0.96", "0.59", "0.78"):
        assert number in results
    assert "δ" in (ROOT / "book" / "methods.md").read_text()
