"""Fashion-MNIST on the Deep Feedback Control architecture (784-256-256-256-10, tanh): the
epoch cost of each continuous-time model's learner against backprop on the same network, in
the same run, and the accuracy after the bounded training done here.

Meulemans et al. 2021 (DFC) report 88.7 % test accuracy for DFC and 89.4 % for backprop on
this architecture after full training; this script trains on a subset for a bounded time
(the full runs: ``dendrite-sim run multiplexing_fashion`` / ``fashion_two_phase`` /
``fashion_mixture``).

    OMP_NUM_THREADS=1 python benchmarks/bench_fashion.py [--n-train 512] [--n-test 1000]

Needs ``apt-get install -y dataset-fashion-mnist``. Prints a Markdown table: per learner the
training-step wall time per epoch of the subset, its ratio to backprop's, the simulated time,
and the test accuracy after the epochs run.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from dendrite_sim.frontend.config import load_config
from dendrite_sim.frontend.experiment import run_experiment

CONFIGS = ("multiplexing_fashion", "fashion_two_phase", "fashion_mixture")


def measure(name: str, n_train: int, n_test: int, epochs: int, out: Path) -> dict:
    cfg = load_config(name, [f"data.max_train={n_train}", f"data.max_test={n_test}",
                             f"training.epochs={epochs}", "training.eval_every=1.0",
                             "training.diagnostics_every=0", "output.figures=false",
                             f"training.max_eval={n_test}"])
    return run_experiment(cfg, out / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    args = parser.parse_args()
    print(f"Fashion-MNIST, first {args.n_train} train / {args.n_test} test examples, "
          f"{args.epochs} epoch(s), batch 32\n")
    print("| config | learner | step time / epoch (s) | vs backprop | simulated time | "
          "test acc |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            summary = measure(name, args.n_train, args.n_test, args.epochs, Path(tmp))
            learners = summary["learners"]
            bp = learners["backprop"]["timing"]["step_wall_time_per_epoch_s"]
            for learner, entry in learners.items():
                timing = entry["timing"]
                per_epoch = timing["step_wall_time_per_epoch_s"]
                print(f"| {name} | {learner} | {per_epoch:.3g} | {per_epoch / bp:.3g}x | "
                      f"{timing['sim_time']:.4g} | "
                      f"{100 * entry['final']['test_accuracy']:.2f} % |", flush=True)


if __name__ == "__main__":
    main()
