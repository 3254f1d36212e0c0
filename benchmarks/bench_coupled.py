"""Coupled learning on digits against backprop: the cost of one epoch, as a ratio (issue 18).

The configuration of ``bench_training.py``'s timing section (docs/report.md): two-phase DTP
64-128-128-10, float32, batch 32, the schedule ``T_free = T_learn = 20 tau``, rates times
``--rate-scale`` (2e-4; see ``bench_training.py`` for why), the coupled ODE integrated by
``--coupled`` (default etdrk4 at 3 tau, 56 field evaluations per presentation, and heun3 at
1.25 tau, 96; docs/derivations.md §8). Backprop is ``BackpropLearner`` with the same
architecture and initial weights.

Both learners are timed in CPU time of this process (``time.process_time``: less sensitive
to other processes on a shared machine than wall time), alternated, best of ``--reps``: both
over the same full epoch (``--coupled-batches K``: the coupled learner over the first ``K``
batches only, extrapolated to the epoch; shorter, and noisier). Prints seconds per epoch and
the ratio. About a minute::

    OMP_NUM_THREADS=1 python benchmarks/bench_coupled.py
    OMP_NUM_THREADS=1 python benchmarks/bench_coupled.py --coupled dopri5 midpoint:1

No ``torch.set_num_threads`` here (2 or more threads misbehave on some platforms): pin
threads with ``OMP_NUM_THREADS``.
"""
from __future__ import annotations

import argparse
import math
import time

import torch

import bench_training as bt
from dendrite_sim.data import load_digits


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--coupled", nargs="+", default=["etdrk4:3", "heun3:1.25"],
                   metavar="METHOD[:STEP]",
                   help="integrators of the coupled learner (a fixed-step method with its "
                        "step in tau, or an adaptive one at its default tolerances)")
    p.add_argument("--coupled-batches", type=int, default=None,
                   help="time the coupled learner over this many batches (default: the epoch)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rate-scale", type=float, default=2e-4)
    a = p.parse_args(argv)
    if (a.coupled_batches is not None and a.coupled_batches < 1) or a.reps < 1:
        p.error("--coupled-batches and --reps must be >= 1")
    return a


def seconds_per_epoch(learner, x, y, batches, n_epoch) -> float:
    """CPU seconds of ``learner.step`` over ``batches``, extrapolated to ``n_epoch`` batches."""
    start = time.process_time()
    for idx in batches:
        learner.step(x[idx], y[idx])
    return (time.process_time() - start) * n_epoch / len(batches)


def main(argv=None):
    a = parse(argv)
    defaults = bt.parse([])          # the digits configuration of bench_training.py
    x, y, _, _ = load_digits().tensors(dtype=defaults.dtype)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    batches = [perm[k:k + defaults.batch_size] for k in range(0, len(x), defaults.batch_size)]
    sizes = [64, defaults.hidden, defaults.hidden, 10]

    def backprop():
        return bt.BackpropLearner(bt.two_phase(defaults, sizes, seed=0), lr=defaults.bp_lr)

    def coupled(spec):
        model = bt.two_phase(defaults, sizes, seed=0, scale=a.rate_scale)
        return bt.dtp_learner(defaults, model, mode="coupled",
                              present_kwargs=bt.integrator(spec))

    seconds_per_epoch(backprop(), x, y, batches[:5], len(batches))        # warm up
    best = {"backprop": math.inf, **{spec: math.inf for spec in a.coupled}}
    for _ in range(a.reps):
        best["backprop"] = min(best["backprop"],
                               seconds_per_epoch(backprop(), x, y, batches, len(batches)))
        for spec in a.coupled:
            best[spec] = min(best[spec], seconds_per_epoch(
                coupled(spec), x, y, batches[:a.coupled_batches], len(batches)))
    print(f"digits epoch ({len(batches)} batches of {defaults.batch_size}), CPU seconds, best "
          f"of {a.reps}: backprop {best['backprop']:.4f}")
    for spec in a.coupled:
        print(f"  coupled ({bt.integrator_label(spec)}, rates x{a.rate_scale:g}): "
              f"~{best[spec]:.3f} s = {best[spec] / best['backprop']:.1f}x backprop")


if __name__ == "__main__":
    main()
