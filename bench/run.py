"""`make bench`: the CPU benchmarks in sequence, each printing its table and writing bench/out/*.json.

    python bench/run.py                 # step (fresh process per configuration) + interleaved ratios + scaling
    python bench/run.py --with-study    # and the smoke study split by phase (minutes)
    python bench/run.py --tiny          # seconds: every benchmark in its tiny mode

The default study's timing (tens of minutes on 2 cores) and the GPU script are separate:
``python bench/study.py --profile default --jobs 2`` and ``bench/gpu.sh`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--with-study", action="store_true")
    args = ap.parse_args(argv)
    tiny = ["--tiny"] if args.tiny else []
    sfx = "-tiny" if args.tiny else ""  # a tiny check never overwrites measured figures
    out = lambda name: ["--out", str(HERE / "out" / f"{name}{sfx}.json")]  # noqa: E731
    steps = [
        ["step.py", *tiny, *out("step")],
        ["step.py", "--interleave", "--methods", "lora", "dp-lora", "dp-lora-ghost", *out("step-interleaved"),
         *(tiny or ["--repeats", "5"])],
        ["scaling.py", *tiny, *out("scaling")],
    ]
    if args.with_study:
        steps.append(["study.py", "--profile", "smoke"])
    rc = 0
    for s in steps:
        print(f"\n=== python bench/{' '.join(s)}", flush=True)
        rc |= subprocess.run([sys.executable, str(HERE / s[0]), *s[1:]]).returncode
    return rc


if __name__ == "__main__":
    sys.exit(main())
