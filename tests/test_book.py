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


def test_config_executes_nothing_and_excludes_everything_but_the_book():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert cfg["execute"]["execute_notebooks"] == "off"
    assert {".venv", "results", "data", "tests", "bench"} <= set(cfg["exclude_patterns"])
    assert cfg["only_build_toc_files"] is True


def test_toc_lists_every_chapter_and_the_generated_pages():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    assert toc["format"] == "jb-book"
    files = _toc_files(toc)
    assert [f for f in files if not f.startswith("book/generated")] == [f"book/{c}" for c in CHAPTERS]
    assert {"book/generated/data", "book/generated/analysis"} <= set(files)
    assert "book/generated/runs/*" in str(toc)
    assert sorted(p.stem for p in (ROOT / "book").glob("*.md")) == sorted(CHAPTERS)


def test_every_chapter_ends_with_a_summary_and_exercises():
    for c in CHAPTERS:
        text = (ROOT / "book" / f"{c}.md").read_text()
        headings = re.findall(r"^(#+) (.+)$", text, flags=re.M)
        assert headings[0][0] == "#", c  # one title
        assert [h for _, h in headings[-2:]] == ["Summary", "Exercises"], c
        exercises = text.split("## Exercises", 1)[1]
        assert len(re.findall(r"^\d+\. ", exercises, flags=re.M)) >= 2, c


def test_facts_are_generated_and_included_never_typed():
    """The stand-in table comes from the model registry, the paper's numbers from stats.PAPER,
    the study's sizes from its run folders (book.study_md, tested end to end); chapters include
    them and type none of them."""
    from privrad import book
    from privrad.models import get_model_spec
    from privrad.stats import PAPER

    stand_ins = book.stand_ins_md()
    for paper, ours in (("bert-small", "minilm-l3"), ("bert-medium", "minilm-l6"), ("albert-base", "minilm-albert")):
        assert re.search(rf"`{paper}`: .*{re.escape(get_model_spec(paper).source)}.* \| `{ours}` \|", stand_ins), (paper, ours)
    numbers = book.paper_numbers_md()
    for dataset, values in PAPER.items():
        assert dataset in numbers and all(f"{v:.2f}" in numbers for v in values.values() if v is not None)
    text = {c: (ROOT / "book" / f"{c}.md").read_text() for c in CHAPTERS}
    assert "```{include} generated/paper-numbers.md" in text["intro"]
    assert "```{include} generated/stand-ins.md" in text["results"] and "```{include} generated/study.md" in text["results"]
    for chapter, t in text.items():
        for v in {v for values in PAPER.values() for v in values.values() if v is not None}:
            assert f"{v:.2f}" not in t, (chapter, v)
        assert "| `minilm-l3`" not in t, chapter
    assert "δ" in text["methods"]
