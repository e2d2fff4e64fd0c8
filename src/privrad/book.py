"""The book, built from what the last sweep ran — its manifest ``study.json`` — never from the profile.

``privrad book build`` reads ``<results>/<profile>/study.json`` (written by the sweep: every
point's config and state, the datasets as the sweep used them after ``--set``, the book
settings and the kernel), and

1. copies each complete run's executed notebook into ``book/generated/runs/`` (the appendix);
2. executes ``notebooks/analysis.ipynb`` and ``notebooks/privacy.ipynb`` over those run folders
   and ``notebooks/data.ipynb`` over the manifest's datasets (papermill);
3. builds the Jupyter Book offline, warnings as errors (Jupyter Book itself executes nothing).

A run folder that is not complete (:func:`privrad.runs.run_state`: a file missing, truncated
or unreadable) is left out with one line naming the folder and the file; it never stops the
build with a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from privrad.config import epsilon_label
from privrad.errors import ConfigError, PrivradError
from privrad.executors import KERNEL_CONFIG, default_kernel
from privrad.io import atomic_write_text
from privrad.profiles import load_profile
from privrad.manifest import point_state, read_manifest

GENERATED = Path("book") / "generated"


def completed_runs(results_dir: Path, manifest: dict, *, out=sys.stderr) -> list[Path]:
    """The complete run folders of the manifest's points that hold their executed notebook;
    the others are named (with the file at fault) and left out. Folders are looked up by run id
    in ``results_dir``, so a results folder copied elsewhere builds the same book."""
    runs = []
    for point in manifest["points"]:
        rd = results_dir / point["run_id"]
        if not rd.exists():
            continue  # never run, or failed: `privrad study status` lists these
        state, problem = point_state(rd, point["run_id"], results_dir)
        if state == "complete":
            runs.append(rd)
        else:
            print(f"privrad: left out of the book: {problem}", file=out)
    return sorted(runs)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def portable(text: str, root: Path, paths: list[Path]) -> str:
    """``text`` with every absolute path of this machine that the build knows of (the project,
    the results and data folders, the environment, the home folder) written relative to the
    project folder (the home folder as ``~``): a published book names no path of the machine
    that built it."""
    home = str(Path.home())
    known = {str(Path(p)) for p in paths if p and Path(p).is_absolute()} | {str(root), sys.prefix}
    shown = {p: os.path.relpath(p, root) for p in known if p not in ("/", home)}
    if home not in ("/", ""):
        shown[home] = "~"
    if not shown:
        return text
    # one pass, longest path first, so that a replacement is never replaced again
    pattern = re.compile("(" + "|".join(re.escape(p) for p in sorted(shown, key=len, reverse=True)) + ")(/?)")

    def swap(m: re.Match) -> str:
        rel = shown[m.group(1)]
        return "" if rel == "." and m.group(2) else rel + m.group(2)

    return pattern.sub(swap, text)


def _notebook_for_readers(nb: dict, title: str | None = None) -> dict:
    """What a reader sees of an executed notebook: its first heading replaced by ``title``
    (so the appendix pages are distinguishable); the notebook's default ``parameters`` cell
    removed from the page (papermill's injected cell holds what ran, and the configuration
    table shows it) and the injected cell folded behind a toggle. Outputs are untouched."""
    for cell in nb.get("cells", []):
        if title and cell.get("cell_type") == "markdown":
            text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            if text.lstrip().startswith("# "):
                first, _, rest = text.lstrip().partition("\n")
                cell["source"] = f"# {title}\n{rest}"
                title = None
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if "injected-parameters" in tags and "hide-cell" not in tags:
            tags.append("hide-cell")
        elif "parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    return nb


def _reader_copy(src: Path, dst: Path, root: Path, paths: list[Path], title: str | None = None) -> None:
    """Copy an executed notebook as readers see it (:func:`_notebook_for_readers`, :func:`portable`)."""
    nb = _notebook_for_readers(json.loads(src.read_text(encoding="utf-8")), title)
    for key in ("input_path", "output_path"):  # where papermill read and wrote it, on the machine that ran it
        nb.get("metadata", {}).get("papermill", {}).pop(key, None)
    atomic_write_text(dst, portable(json.dumps(nb, indent=1, ensure_ascii=False), root, paths) + "\n")


# ----------------------------------------------------------------------------- generated facts
# Chapters include these snippets (```{include} generated/<name>.md```): a fact the code or
# the runs hold is never typed into the prose.


_PAPER_WORDS = {"paper: moderate DP": "DP-LoRA at a moderate privacy budget", "paper: ∞": "non-private LoRA",
                "paper: full": "full fine-tuning"}


def paper_numbers_md() -> str:
    """The paper's reported weighted F1, from :data:`privrad.stats.PAPER` (the one copy)."""
    from privrad.stats import PAPER

    parts = []
    for dataset, numbers in PAPER.items():
        said = [f"{v:.2f} for {_PAPER_WORDS[k]}" for k, v in numbers.items() if v is not None]
        parts.append(f"on {dataset}, " + (", ".join(said[:-1]) + " and " + said[-1] if len(said) > 1 else said[0]))
    return "The paper reports a weighted F1 " + "; ".join(parts) + ".\n"


def stand_ins_md() -> str:
    """The stand-in table, from the model registry (:mod:`privrad.models`)."""
    from privrad.models import get_model_spec, known_models

    rows = ["| paper's model | offline stand-in | what the stand-in is |", "|---|---|---|"]
    for name in known_models():
        spec = get_model_spec(name)
        if spec.stands_in_for:
            paper = get_model_spec(spec.stands_in_for)
            rows.append(f"| `{paper.name}`: {paper.description} (`{paper.source}`) | `{spec.name}` | {spec.description} |")
    return "\n".join(rows) + "\n"


def study_md(manifest: dict, runs: list[Path]) -> str:
    """What the last sweep ran, per dataset, read from its run folders (sizes, steps, lengths)."""
    from privrad.runs import read_run

    by_dataset: dict[str, list] = {}
    for rd in runs:
        res = read_run(rd)
        by_dataset.setdefault(res.config.dataset, []).append(res)

    def values(results, get) -> str:
        vs = sorted({get(r) for r in results}, key=lambda v: (v is None, str(v)))
        return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in vs) or "—"

    rows = [f"Profile `{manifest['profile']}`: {len(runs)} complete runs.", "",
            "| dataset | reports (train / validation / test) | max_length | batch_size | num_epochs | steps | lr (DP) | lr (non-private) |",
            "|---|---|---|---|---|---|---|---|"]
    for dataset, results in sorted(by_dataset.items()):
        sizes = results[0].info.get("split_sizes", {})
        private = [r for r in results if r.config.epsilon is not None]
        public = [r for r in results if r.config.epsilon is None]
        rows.append(f"| {dataset} | {' / '.join(str(sizes.get(s, '?')) for s in ('train', 'validation', 'test'))} | "
                    f"{values(results, lambda r: r.config.max_length)} | {values(results, lambda r: r.config.batch_size)} | "
                    f"{values(results, lambda r: r.config.num_epochs)} | {values(results, lambda r: r.privacy['steps'])} | "
                    f"{values(private, lambda r: r.config.lr)} | {values(public, lambda r: r.config.lr)} |")
    return "\n".join(rows) + "\n"


def answer_md(folder: Path, table) -> tuple[str, str]:
    """The results chapter's opening — per dataset, its trade-off figure (written beside the
    snippet as ``answer-<dataset>.png``) and the sentence that answers the study's question —
    and the sentences alone, for the first page."""
    from privrad import plots, stats

    sentences = stats.answer(table)
    figures, short = [], []
    for dataset, sentence in sentences.items():
        png = f"answer-{_slug(dataset)}.png"
        plots.tradeoff_png(table, dataset, folder / png)
        figures.append(f"```{{figure}} {GENERATED.name}/{png}\n:alt: weighted F1 against ε on {dataset}\n\n{sentence}\n```\n")
        short.append(f"- {sentence}")
    return "\n".join(figures), "\n".join(short) + "\n"


def tests_md(table, n_bootstrap: int = 2000) -> str:
    """What the tests can support, one sentence per dataset (the statistics chapter opens with it)."""
    from privrad import comparisons

    said = comparisons.tests_summary(comparisons.tests_table(table, n_bootstrap=n_bootstrap))
    return "\n".join(f"- {s}" for s in said.values()) + "\n" if said else "No test could be run on these runs.\n"


def slurm_options_md() -> str:
    """The keys of a profile's ``slurm:`` block, their defaults and meaning, from :class:`SlurmConfig`."""
    import dataclasses

    from privrad.config import SlurmConfig

    rows = ["| key | default | what it sets |", "|---|---|---|"]
    for f in dataclasses.fields(SlurmConfig):
        if "help" in f.metadata:
            default = "null" if f.default is None else ("[]" if f.default == () else f"`{f.default}`")
            rows.append(f"| `{f.name}` | {default} | {f.metadata['help']} |")
    return "\n".join(rows) + "\n"


def write_facts(folder: Path, manifest: dict, runs: list[Path]) -> None:
    from privrad import stats

    table = stats.load_runs(runs)
    answer, short = answer_md(folder, table)
    for name, text in (("paper-numbers.md", paper_numbers_md()), ("stand-ins.md", stand_ins_md()),
                       ("study.md", study_md(manifest, runs)), ("answer.md", answer), ("answer-short.md", short),
                       ("tests-summary.md", tests_md(table)), ("slurm-options.md", slurm_options_md())):
        atomic_write_text(folder / name, text)


def _execute(papermill, src: Path, dst: Path, parameters: dict[str, Any], kernel: str) -> None:
    from traitlets.config import Config

    try:
        papermill.execute_notebook(str(src), str(dst), parameters=parameters, kernel_name=kernel,
                                   cwd=str(Path.cwd()), progress_bar=False, config=Config(KERNEL_CONFIG))
    except papermill.PapermillExecutionError as exc:
        raise PrivradError(f"{src} failed ({exc.ename}: {exc.evalue}); the executed notebook with the error is {dst}, and no book was built.") from None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PROBLEM = re.compile(r"(\S+: )?\b(WARNING|ERROR|CRITICAL|SEVERE): .*|^(\w+Error|Exception)\b.*")


def build_problems(output: str, root: Path) -> list[str]:
    """The warnings and errors in jupyter-book's output, one line each (from the file that has
    it), with paths relative to the project folder: Sphinx prints them among hundreds of
    progress lines, sometimes at the end of one ("checking consistency... book/x.md: WARNING: …")."""
    out = []
    for line in _ANSI.sub("", output).splitlines():
        m = _PROBLEM.search(line.strip())
        problem = m.group(0).replace(f"{root}/", "") if m else None
        if problem and problem not in out:
            out.append(problem)
    return out


def jupyter_book_build(root: Path) -> Path:
    """Build ``root``'s book into an empty ``_build/html`` (no page of an earlier build survives)
    with warnings as errors. A failed build prints its warnings and errors, one line each, and
    raises a :class:`PrivradError` naming the first; the full output is kept in ``_build``.
    Only what a build writes is removed first: other folders under ``_build`` (the browser
    check's screenshots) stay."""
    for made_by_a_build in ("html", ".doctrees", "jupyter_execute"):
        shutil.rmtree(root / "_build" / made_by_a_build, ignore_errors=True)
    print("privrad: building the book …", file=sys.stderr)
    cmd = [sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; sys.argv[0] = 'jupyter-book'; main()",
           "build", str(root), "--warningiserror", "--nitpick", "--keep-going", "--all"]
    proc = subprocess.run(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    index = root / "_build" / "html" / "index.html"
    log_path = root / "_build" / "book-build.log"
    atomic_write_text(log_path, proc.stdout)
    if proc.returncode != 0 or not index.is_file():
        problems = build_problems(proc.stdout, root)
        for line in problems or proc.stdout.splitlines()[-40:]:
            print(line, file=sys.stderr)
        first = f": {problems[0]}" if problems else ""
        more = f" (and {len(problems) - 1} more above)" if len(problems) > 1 else ""
        raise PrivradError(f"the book build failed{first}{more}; warnings are errors, so fix it and build again "
                           f"(jupyter-book's full output is in {log_path.relative_to(root)}).")
    return index


def build_book(results_dir: Path, *, profile_name: str, root: Path | None = None, out=sys.stdout) -> int:
    """Collect the executed notebooks of the last sweep in ``results_dir`` into
    ``book/generated/`` and build the book offline."""
    import papermill

    root = (root or Path.cwd()).resolve()
    results_dir = results_dir if results_dir.is_absolute() else Path.cwd() / results_dir
    manifest = read_manifest(results_dir)
    runs = completed_runs(results_dir, manifest) if manifest else []
    if not runs:
        raise ConfigError(f"no completed run in {results_dir}, so there is nothing to put in the book; "
                          f"run `privrad study run --profile {profile_name}` first.")
    for required in ("_config.yml", "_toc.yml"):
        if not (root / required).is_file():
            raise ConfigError(f"{root / required} does not exist; run `privrad book build` from the project folder.")
    kernel = manifest.get("kernel") or default_kernel()
    t0 = time.time()
    staging = root / "book" / ".generated.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "runs").mkdir(parents=True)
    configs = {p["run_id"]: p["config"] for p in manifest["points"]}
    # absolute paths of this machine that the pages may hold: written relative to the project
    machine = [results_dir, Path.cwd(), *(Path(d["data_dir"]) for d in manifest["datasets"]),
               *(Path(p["run_dir"]) for p in manifest["points"] if p.get("run_dir"))]
    for rd in runs:  # the appendix: every executed run notebook, titled by its point
        c = configs[rd.name]
        title = f"{c['dataset']} · {c['model']} · {c['method']} · ε = {epsilon_label(c.get('epsilon'))} · seed {c['seed']}"
        _reader_copy(rd / "run.ipynb", staging / "runs" / f"{_slug(rd.name)}.ipynb", root, machine, title)
    print(f"privrad: executing the analysis notebook over {len(runs)} runs …", file=sys.stderr)
    _execute(papermill, root / "notebooks" / "analysis.ipynb", staging / "analysis.ipynb",
             {"run_dirs": [str(rd) for rd in runs], "profile": manifest["profile"]}, kernel)
    print("privrad: executing the privacy notebook …", file=sys.stderr)  # what the runs release (a section of methods)
    _execute(papermill, root / "notebooks" / "privacy.ipynb", staging / "privacy.ipynb",
             {"run_dirs": [str(rd) for rd in runs], "profile": manifest["profile"]}, kernel)
    print("privrad: executing the audit notebook …", file=sys.stderr)  # the audits of the runs (privrad.audit)
    _execute(papermill, root / "notebooks" / "audit.ipynb", staging / "audit.ipynb",
             {"run_dirs": [str(rd) for rd in runs], "profile": manifest["profile"]}, kernel)
    print("privrad: executing the data notebook …", file=sys.stderr)
    used = {configs[rd.name]["dataset"] for rd in runs}
    datasets = [[d["dataset"], d["data_dir"]] for d in manifest["datasets"] if d["dataset"] in used]
    options = {d["dataset"]: d["dataset_options"] for d in manifest["datasets"] if d["dataset_options"] and d["dataset"] in used}
    # token lengths with the tokenizer of a model that ran (the profile's choice when it ran)
    ran = sorted({configs[rd.name]["model"] for rd in runs})
    tokenizer = (manifest.get("book") or {}).get("tokenizer")
    tokenizer = tokenizer if tokenizer in ran else ran[0]
    _execute(papermill, root / "notebooks" / "data.ipynb", staging / "data.ipynb",
             {"datasets": datasets, "dataset_options": options, "tokenizer": tokenizer}, kernel)
    for name in ("analysis.ipynb", "privacy.ipynb", "audit.ipynb", "data.ipynb"):
        _reader_copy(staging / name, staging / name, root, machine)
    write_facts(staging, manifest, runs)
    generated = root / GENERATED
    shutil.rmtree(generated, ignore_errors=True)
    os.replace(staging, generated)
    index = jupyter_book_build(root)
    print(f"book: {len(runs)} runs, built in {time.time() - t0:.1f} s → {index}", file=out)
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    if args.results_dir:
        from privrad.profiles import profile_path

        name = Path(profile_path(args.profile)).stem
        return build_book(Path(args.results_dir) / name, profile_name=name)
    profile = load_profile(args.profile)  # only to find its results folder
    return build_book(profile.results_dir, profile_name=profile.name)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    from privrad.study import add_results_dir

    book = subparsers.add_parser("book", help="build the Jupyter Book from the last sweep of a study")
    bsub = book.add_subparsers(dest="book_command", metavar="SUBCOMMAND", required=True)
    build = bsub.add_parser("build", help="collect the last sweep's executed notebooks and build _build/html/index.html "
                                          "(offline, warnings as errors)")
    build.add_argument("--profile", default="default", help="the study whose last sweep (study.json) the book shows")
    add_results_dir(build)
    build.set_defaults(func=_cmd_build)
