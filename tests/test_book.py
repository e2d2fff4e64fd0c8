"""The book's sources: configuration, table of contents and chapters (the build itself is
tested end to end in test_study_e2e.py on an executed smoke study)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ("intro", "data", "methods", "results", "audit", "statistics", "reproduce", "appendix")


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
    assert {"book/generated/data", "book/generated/privacy", "book/generated/analysis", "book/generated/audit"} <= set(files)
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


def test_every_number_glued_into_a_chapter_is_computed_by_the_privacy_notebook():
    import json

    nb = json.loads((ROOT / "notebooks" / "privacy.ipynb").read_text())
    source = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    used = set()
    for c in CHAPTERS:
        used |= set(re.findall(r"\{glue:text\}`generated/privacy\.ipynb::([a-z0-9_]+):", (ROOT / "book" / f"{c}.md").read_text()))
    assert {"trainable_share_range", "pooler_share_range", "delta_ratio_25k", "eps_at_default_delta_all_mimic",
            "withheld_statistics"} <= used  # the withheld list: privrad.privacy.TRAINING_STATISTICS, never typed
    for key in used:
        assert f'glue("{key}"' in source, key


def test_every_number_glued_into_the_audit_chapter_is_computed_by_the_audit_notebook():
    import json

    nb = json.loads((ROOT / "notebooks" / "audit.ipynb").read_text())
    source = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    used = set(re.findall(r"\{glue:text\}`generated/audit\.ipynb::([a-z0-9_]+):", (ROOT / "book" / "audit.md").read_text()))
    assert {"audit_answer", "max_bound", "nonprivate_auc"} <= used
    for key in used:
        assert f'glue("{key}"' in source or f'"{key}"' in source, key


def test_methods_says_the_loss_is_averaged_over_unmasked_labels_as_the_code_does():
    import torch

    from privrad.train import example_losses

    logits = torch.tensor([[2.0, -1.0, 0.5]])
    batch = {"labels": torch.tensor([[1.0, 0.0, 1.0]]), "label_mask": torch.tensor([[True, False, True]]),
             "weight": torch.tensor([1.0])}
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"], reduction="none")[0]
    assert torch.isclose(example_losses(logits, batch)[0], (bce[0] + bce[2]) / 2)  # the mean, not the sum
    methods = (ROOT / "book" / "methods.md").read_text()
    assert "averaged over its unmasked labels" in methods and "summed over labels" not in methods


def test_the_book_states_coverage_unit_threshold_policy_delta_and_mode():
    methods = (ROOT / "book" / "methods.md").read_text()
    for phrase in ("## The unit of privacy", "group privacy", "privacy_unit: patient", "## DP randomness",
                   "not a DP release", "## What ε covers, and what it does not", "declares the validation split public",
                   "May I publish this adapter?", "## Choosing δ", "distribution* of the trained model",
                   "spends privacy that no accountant counts"):
        assert phrase.lower() in methods.lower(), phrase
    assert "probability that the guarantee fails" not in methods.replace('not, in general, "the probability that the guarantee fails"', "")
    statistics = (ROOT / "book" / "statistics.md").read_text()
    assert "*these two trained models*" in statistics and "Page's trend test" in statistics
    appendix = (ROOT / "book" / "appendix.md").read_text()
    assert "release_terms" in appendix and "not a DP release" in appendix
    assert "spends privacy that no accountant counts" in (ROOT / "book" / "reproduce.md").read_text()


def test_the_profiles_the_book_names_reproducible_are_those_that_are():
    """Issue 8 point 1: which profile draws its DP randomness from the seed is a fact of studies/*.yml."""
    from privrad.profiles import load_profile

    names = sorted(p.stem for p in (ROOT / "studies").glob("*.yml"))
    mode = {n: load_profile(n).params.get("dp_randomness", "secure") for n in names}
    reproducible = {n for n, m in mode.items() if m == "reproducible"}
    assert {"smoke", "openi", "course"} <= reproducible and {"default", "paper"}.isdisjoint(reproducible)
    sentence = re.search(r"[^.]*use `reproducible`[^.]*\.", " ".join((ROOT / "book" / "reproduce.md").read_text().split())).group(0)
    named = set(re.findall(r"`(\w+)`", sentence)) & set(names)
    assert named == reproducible - {"tune"}, (named, reproducible)
    appendix = " ".join((ROOT / "book" / "appendix.md").read_text().split())
    assert "`dp_randomness: reproducible` (the course and smoke profiles)" in appendix
