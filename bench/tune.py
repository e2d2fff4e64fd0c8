"""The tuning table: what the sweep of ``studies/tune.yml`` found, read from its run folders.

    python bench/tune.py results/tune            # Markdown table on stdout

One row per (tuning dataset, trained weights, method): weighted F1 with its bootstrap interval
for each learning rate, the learned-nothing reference, and the best learning rate. DP-SGD runs
are at ε = 1. These are the simulator's seed-1 reports, never the default study's.
"""

from __future__ import annotations

import argparse
import sys

from privrad import stats
from privrad.runs import read_run


def table(results_dir: str) -> str:
    runs = stats.load_runs(results_dir)
    if runs.empty:
        return f"no complete runs under {results_dir}"
    rows = {}
    for r in runs.itertuples():
        c = read_run(r.run_dir).config
        what = ("LoRA " + "+".join(c.lora_targets or ("query", "value")) + f" r={c.lora_r}, top {c.lora_layers or 'all'} layer(s), "
                + ("pooler trained" if c.train_pooler else "pooler frozen"))
        method = "non-private" if c.epsilon is None else f"DP ε={c.epsilon:g}"
        key = (r.dataset, what, method)
        rows.setdefault(key, {"reference": r.learned_nothing_weighted_f1})[c.lr] = (
            r.weighted_f1, r.weighted_f1_ci95_low, r.weighted_f1_ci95_high)
    lrs = sorted({lr for v in rows.values() for lr in v if lr != "reference"})
    out = ["| tuning data | trained | method | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | learned nothing | best lr |",
           "|---|---|---|" + "---|" * len(lrs) + "---|---|"]
    for (dataset, what, method), v in sorted(rows.items()):
        cells = [f"{v[lr][0]:.3f} [{v[lr][1]:.2f}, {v[lr][2]:.2f}]" if lr in v else "" for lr in lrs]
        best = max((lr for lr in lrs if lr in v), key=lambda lr: v[lr][0])
        out.append(f"| {dataset} | {what} | {method} | " + " | ".join(cells) + f" | {v['reference']:.3f} | {best:g} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results_dir", nargs="?", default="results/tune")
    args = ap.parse_args(argv)
    print(table(args.results_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
