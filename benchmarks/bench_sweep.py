"""Throughput of ``dendrite-sim sweep``: the same cells one after another in this process
(serial), on a local process pool and on Ray (when installed), every backend in the same run.

    OMP_NUM_THREADS=1 python benchmarks/bench_sweep.py [--cells 8] [--workers N]

Each cell trains the backprop learner on the digits for one epoch (well under a second), so the
table shows each backend's overhead (worker start-up, imports, scheduling) as much as its
parallel speed-up; longer cells approach ``workers`` times the serial rate. A first, untimed
cell warms the process up (imports, data), so "serial" is the in-process rate of a warm
process — stricter than running the cells as separate commands, which each pay the imports.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path

from dendrite_sim.frontend.sweep import sweep

BASE = ["learner.name=backprop", "training.baseline=false", "output.figures=false",
        "model.sizes=[64,16,10]", "training.epochs=1", "training.n_eig=0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=8)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    backends = ["serial", "processes"] + (["ray"] if importlib.util.find_spec("ray") else [])
    lrs = [round(0.05 * (k + 1), 3) for k in range(args.cells)]
    print(f"{args.cells} cells, {args.workers} workers, {os.cpu_count()} cores\n")
    print("| backend | wall time (s) | cells / s | vs serial |")
    print("|---|---|---|---|")
    serial = None
    with tempfile.TemporaryDirectory() as tmp:
        # one cell first, untimed: the imports and data loading every backend's serial part
        # pays once (forked workers inherit them) are not charged to the serial row
        sweep("two_phase", Path(tmp) / "warm-up", overrides=BASE, grid={"learner.lr": lrs[:1]},
              backend="serial")
        for backend in backends:
            start = time.perf_counter()
            result = sweep("two_phase", Path(tmp) / backend, overrides=BASE,
                           grid={"learner.lr": lrs}, backend=backend, workers=args.workers)
            wall = time.perf_counter() - start
            serial = serial or wall
            assert not result.failed, result.failed
            print(f"| {backend} | {wall:.1f} | {args.cells / wall:.2f} | "
                  f"{serial / wall:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
