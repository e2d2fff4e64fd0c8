"""Shared helpers of the benchmarks: model shapes, memory readings, subprocess isolation, tables.

Benchmarks measure and print; they never fail on a time. Every figure is written as JSON under
``bench/out/`` (git-ignored) beside the printed table.

Shapes
------
The paper's models (BERT-small 4 × 512, BERT-medium 8 × 512, ALBERT-base 12 uses × 768 with a
128-wide embedding) need the Hugging Face hub. For timing, random weights of the same shape are
as good as pretrained ones, so :func:`shaped_model_dir` writes a local model folder (config,
random weights, MiniLM's public uncased tokenizer) once and privrad loads it as any local path:
``build_model(path, ...)`` — the same code path a user's local model takes.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"

#: Random-weight configs shaped like the paper's models (and a tiny one for dry runs).
SHAPES = {
    "bert-small-shape": dict(model_type="bert", hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
                             intermediate_size=2048),
    "bert-medium-shape": dict(model_type="bert", hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                              intermediate_size=2048),
    "albert-base-shape": dict(model_type="albert", embedding_size=128, hidden_size=768, num_hidden_layers=12,
                              num_attention_heads=12, intermediate_size=3072),
    "tiny-bert-shape": dict(model_type="bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64),
    "tiny-albert-shape": dict(model_type="albert", embedding_size=16, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=64),
}
#: Which paper model each shape stands for (for the tables).
SHAPE_OF = {"bert-small-shape": "bert-small", "bert-medium-shape": "bert-medium", "albert-base-shape": "albert-base"}


def setup_env(threads: int | None = None) -> None:
    """Offline, quiet, deterministic thread count (call before importing torch-heavy modules)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threads:
        import torch

        torch.set_num_threads(threads)


def shaped_model_dir(shape: str, root: str | Path | None = None) -> str:
    """A local model folder (config + random weights + uncased BERT tokenizer) of ``shape``.

    Written once under ``root`` (default ``bench/out/models``) and reused; the weights are seeded,
    so the folder is the same on every machine.
    """
    import torch
    from transformers import AlbertConfig, AutoModel, BertConfig, BertTokenizerFast

    root = Path(root or OUT_DIR / "models")
    out = root / shape
    if (out / "config.json").exists() and (out / "tokenizer_config.json").exists():
        return str(out)
    kw = dict(SHAPES[shape])
    kind = kw.pop("model_type")
    common = dict(vocab_size=30522, max_position_embeddings=512, pad_token_id=0)
    config = (BertConfig(**common, **kw) if kind == "bert"
              else AlbertConfig(**common, bos_token_id=101, eos_token_id=102, **kw))
    torch.manual_seed(0)
    model = AutoModel.from_config(config)
    tmp = root / f".{shape}.tmp{os.getpid()}"
    model.save_pretrained(tmp)
    _tokenizer().save_pretrained(tmp)
    os.replace(tmp, out) if not out.exists() else None
    return str(out)


def _tokenizer():
    """MiniLM's public uncased BERT tokenizer; on machines without the package, a vocab.txt
    carried in ``$PRIVRAD_VOCAB`` (see bench/gpu.sh)."""
    from transformers import BertTokenizerFast

    vocab = os.environ.get("PRIVRAD_VOCAB")
    if vocab:
        return BertTokenizerFast(vocab_file=vocab, do_lower_case=True)
    from privrad.models import load_tokenizer

    return load_tokenizer("minilm-l6")


def resolve_model(name: str, root: str | Path | None = None) -> str:
    """A registered privrad model name as is; a ``*-shape`` name → its local folder."""
    return shaped_model_dir(name, root) if name in SHAPES else name


def rss_mb() -> float:
    """Current resident set size of this process (MB)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MB; ru_maxrss is in kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(argv: list[str], timeout: float | None = None) -> dict:
    """Run ``python argv...`` in a fresh process; it prints one JSON line last. Returns that dict
    (or ``{"status": "error", "error": ...}``): a fresh process per configuration makes its peak
    RSS its own."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join(
                               filter(None, [str(BENCH_DIR.parent / "src"), os.environ.get("PYTHONPATH")]))})
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"status": "error", "error": " | ".join(tail)[-400:], "wall_s": time.perf_counter() - t0}
    return json.loads(lines[-1])


def write_json(name: str, payload: dict, out_dir: str | Path | None = None) -> Path:
    from privrad.io import atomic_write_json

    path = Path(out_dir or OUT_DIR) / name
    atomic_write_json(path, payload)
    return path


def machine() -> dict:
    import platform

    import torch

    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Plain-text table; ``columns`` = (key, header, format) with format like ``.3f`` or ``s``."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        line = []
        for key, _, fmt in columns:
            v = r.get(key)
            line.append("—" if v is None else (format(v, fmt) if not isinstance(v, str) else v))
        cells.append(line)
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    out = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


# ------------------------------------------------------------------------------------ data

def report_dataset(kind: str, n: int, *, seed: int = 0, root: str | Path | None = None):
    """``n`` simulated reports of ``kind`` (``mimic-cxr`` | ``ct-rate``) as a ReportDataset:
    privrad's report simulator, read by the ``simulated-<kind>`` loader."""
    from privrad.data import load_dataset
    from privrad.data.simulate import simulate

    out = Path(root or OUT_DIR / "data") / f"{kind}-{n}-s{seed}"
    simulate(kind, out, n=n, seed=seed)  # returns at once when the folder already holds it
    return load_dataset(f"simulated-{kind}", out)
