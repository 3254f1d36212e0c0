"""The equilibrium solver on a trained network: layer sweep against Picard map, plain start.

Setting: the digits two-phase DTP network of ``bench_training.py`` (64-128-128-10, its default
rates), trained for ``--epochs`` epochs in quasi-static mode, so that the learned feedback is an
imperfect inverse. On ``--batches`` batches of 32 it then solves, from the forward pass, the
free-phase and the learning-phase equilibria of the activity (the trace held, as in a
quasi-static presentation) to the dtype's default tolerance with three solvers:

* ``picard``: Anderson on the Picard map ``y + tau F(y)`` (the engine's default relaxation),
  mixing from the first iteration;
* ``sweep, mixed``: Anderson on the layer sweep (``MixingNetwork.relaxation``), mixing from the
  first iteration;
* ``sweep, plain start``: the default — the sweep iterated plainly, over-relaxed
  (``relaxation_factor`` 1.15, docs/derivations.md §7), while it contracts by 0.7 or better
  per iteration (over two iterations), then mixed.

It reports iterations, field evaluations and wall time (best of ``--reps``, solvers interleaved),
and the ratios against ``picard`` in the same run. Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_solver.py            # ~1 minute
    OMP_NUM_THREADS=1 python benchmarks/bench_solver.py --float64 --epochs 2
"""
from __future__ import annotations

import argparse
import time

import torch

import bench_training as bt
from dendrite_sim.data import load_digits
from dendrite_sim.dynamics.equilibrium import _anderson, _Residual
from dendrite_sim.learning import Frozen
from dendrite_sim.model import NetworkModel
from dendrite_sim.teaching import Nudge

SOLVERS = ("picard", "sweep, mixed", "sweep, plain start")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=2, help="training epochs before the solves")
    p.add_argument("--batches", type=int, default=4, help="batches of 32 solved")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (best is kept)")
    p.add_argument("--float64", action="store_true", help="float64 instead of float32")
    p.add_argument("--quick", action="store_true", help="1 epoch, 2 batches, 2 repetitions")
    a = p.parse_args(argv)
    if a.quick:
        a.epochs, a.batches, a.reps = 1, 2, 2
    return a


def trained_model(a, x, y):
    args = bt.parse(["--float64"] if a.float64 else [])
    model = bt.two_phase(args, [64, args.hidden, args.hidden, 10], seed=0)
    learner = bt.dtp_learner(args, model)
    for _ in range(a.epochs):
        for k in range(0, len(x) - 31, 32):
            learner.step(x[k:k + 32], y[k:k + 32])
    return model, args.eta_hat


class _PicardView(Frozen):
    """The same Frozen view with the engine's default relaxation (the Picard map)."""

    picard_relaxation = True
    relaxation_factor = 1.0
    relaxation = NetworkModel.relaxation


def solve(view, x, target, gates, tol, rho):
    """Anderson from the forward pass; returns (iterations, field evaluations, max |F|)."""
    drive = view.drive(x, target, gates)
    prepared = view.prepare(view.params)
    residual = _Residual(view, drive, prepared)
    y0 = view.initial_state(drive, prepared)
    with torch.no_grad():
        F0 = residual(y0) if view.picard_relaxation else None
        _, F, iterations, _, _ = _anderson(residual, y0, F0, tol, 200, 1.0, rho=rho)
    return iterations, residual.nfev, float(F.abs().max())


def main(argv=None):
    a = parse(argv)
    dtype = torch.float64 if a.float64 else torch.float32
    tol = 1e-10 if a.float64 else 1e-5
    data = load_digits()
    x, y, _, _ = data.tensors(dtype=dtype)
    model, eta_hat = trained_model(a, x, y)
    phases = {"free": (None, {"teach": 0.0, "trace": 0.0}),
              "learning": ("nudge", {"teach": 1.0, "trace": 0.0})}
    print(f"two-phase DTP 64-128-128-10 after {a.epochs} epoch(s), {dtype}, tol {tol:g}, "
          f"{a.batches} batch(es) of 32, best of {a.reps}")
    print(f"{'phase':<9} {'solver':<20} {'iters':>6} {'nfev':>6} {'ms':>8} {'x time':>7} "
          f"{'x nfev':>7} {'max |F|':>9}")
    for phase, (teach, gate_values) in phases.items():
        gates = lambda t, g=gate_values: g                       # noqa: E731
        rows = {name: [0, 0, float("inf"), 0.0] for name in SOLVERS}
        for b in range(a.batches):
            xb, yb = x[32 * b:32 * b + 32], y[32 * b:32 * b + 32]
            target = Nudge(yb, "cross_entropy", eta_hat) if teach else None
            y_hold = model.initial_state(model.drive(xb, target, gates), model.params)
            views = {"picard": (_PicardView(model, ("z",), y_hold), 0.0),
                     "sweep, mixed": (Frozen(model, ("z",), y_hold), 0.0),
                     "sweep, plain start": (Frozen(model, ("z",), y_hold), 0.7)}
            best = {name: float("inf") for name in SOLVERS}
            for _ in range(a.reps):
                for name, (view, rho) in views.items():
                    t0 = time.perf_counter()
                    iterations, nfev, res = solve(view, xb, target, gates, tol, rho)
                    best[name] = min(best[name], time.perf_counter() - t0)
            for name, (view, rho) in views.items():
                iterations, nfev, res = solve(view, xb, target, gates, tol, rho)
                row = rows[name]
                row[0] += iterations
                row[1] += nfev
                row[2] = best[name] if b == 0 else row[2] + best[name]
                row[3] = max(row[3], res)
        ref = rows["picard"]
        for name, (iterations, nfev, seconds, res) in rows.items():
            print(f"{phase:<9} {name:<20} {iterations / a.batches:6.1f} {nfev / a.batches:6.1f} "
                  f"{1e3 * seconds / a.batches:8.2f} {seconds / ref[2]:7.2f} "
                  f"{nfev / ref[1]:7.2f} {res:9.2e}")


if __name__ == "__main__":
    main()
