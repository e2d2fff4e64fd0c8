"""Benchmark: simulator and loader wall time for 20k and 50k reports (prints, never asserts).

    python bench/bench_data.py [--sizes 20000 50000] [--out bench/out/data]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from privrad.data import load_dataset
from privrad.data.simulate import simulate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 50_000])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="privrad-bench-"))
    try:
        print(f"{'kind':10s} {'n':>7s} {'simulate s':>11s} {'load s':>8s} {'MB':>6s}")
        for kind in ("mimic-cxr", "ct-rate"):
            for n in args.sizes:
                out = tmp / f"{kind}-{n}"
                t0 = time.perf_counter()
                simulate(kind, out, n=n, seed=0)
                t1 = time.perf_counter()
                ds = load_dataset(f"simulated-{kind}", out)
                t2 = time.perf_counter()
                mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
                assert len(ds) == n
                print(f"{kind:10s} {n:7d} {t1 - t0:11.1f} {t2 - t1:8.1f} {mb:6.0f}")
                shutil.rmtree(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
