"""Cost of the quasi-static transient correction (docs/derivations.md §10) in training.

Two-phase DTP on scikit-learn's digits (1257 training examples, batch 32, one epoch = 40
presentations), the same network and batches trained once with the plain quasi-static step
(``DendriticLearner(transient=False)``) and once with the correction (``transient=True``),
alternated, best of ``--reps`` epochs each; printed: seconds per epoch and their ratio (the
issue's target: <= 1.3), the time inside the correction, and its GMRES steps (field
evaluations) per phase. Two networks:

* ``main``: the main job's ``dendrite-sim run two_phase`` model (64-64-10, mu 0.2, float64;
  74 solved variables, GMRES);
* ``bench``: benchmarks/bench_training.py's timing network (64-128-128-10, mu 0.1, float32).

CPU time of the process (``time.process_time``) is measured, less sensitive than wall time to
other processes on a shared machine; the ratio is the figure to read. Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_transient.py            # both, 5 reps (~2 min)
    OMP_NUM_THREADS=1 python benchmarks/bench_transient.py --quick    # 10 batches, 2 reps
"""
from __future__ import annotations

import argparse
import time

import torch

from dendrite_sim.frontend.data import load_dataset
from dendrite_sim.learning import transient
from dendrite_sim.learning.learners.dendritic import DendriticLearner
from dendrite_sim.models import TwoPhaseDTP

NETWORKS = {
    "main": dict(sizes=[64, 64, 10], mu=0.2, slope=0.3, eta=0.1, eta_inv=0.001,
                 dtype=torch.float64),
    "bench": dict(sizes=[64, 128, 128, 10], mu=0.1, slope=0.3, eta=[0.004, 0.12, 0.25],
                  eta_inv=0.0005, dtype=torch.float32),
}


class Counter:
    """Wraps ``transient.transient_rates`` and ``transient._gmres`` to count calls, time
    and GMRES steps (the solve's field evaluations, one per step)."""

    def __init__(self):
        self.seconds, self.calls, self.steps = 0.0, 0, 0
        self._rates, self._gmres = transient.transient_rates, transient._gmres

    def install(self):
        import dendrite_sim.learning.presentation as presentation

        def rates(*args, **kwargs):
            start = time.process_time()
            try:
                return self._rates(*args, **kwargs)
            finally:
                self.seconds += time.process_time() - start
                self.calls += 1

        def gmres(matvec, rhs, rel_tol, *args, **kwargs):
            def counted(v):
                self.steps += 1
                return matvec(v)
            return self._gmres(counted, rhs, rel_tol, *args, **kwargs)

        presentation.transient_rates, transient._gmres = rates, gmres


def network(name):
    spec = dict(NETWORKS[name])
    return TwoPhaseDTP(spec.pop("sizes"), bias=True, feedback="learned",
                       compensate_decay=True, seed=0, **spec)


def epoch(name, data, on, batches):
    model = network(name)
    learner = DendriticLearner(model, eta_hat=0.1, transient=on)
    x, y, _, _ = data.tensors(dtype=model.dtype)
    start = time.process_time()
    for idx in batches:
        learner.step(x[idx], y[idx])
    return time.process_time() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="10 batches, 2 repetitions")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--only", nargs="+", choices=sorted(NETWORKS), default=sorted(NETWORKS))
    a = p.parse_args(argv)
    reps = 2 if a.quick else a.reps
    data = load_dataset("digits", test_fraction=0.3, seed=0)
    n = len(data.x_train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    batches = [perm[k:k + 32] for k in range(0, n, 32)][:10 if a.quick else None]
    counter = Counter()
    counter.install()
    for name in a.only:
        plain, corrected = float("inf"), float("inf")
        for _ in range(reps):
            plain = min(plain, epoch(name, data, False, batches))
            counter.seconds, counter.calls, counter.steps = 0.0, 0, 0
            corrected = min(corrected, epoch(name, data, True, batches))
        print(f"{name:6s} ({len(batches)} batches): plain {plain:.3f} s, corrected "
              f"{corrected:.3f} s, ratio {corrected / plain:.2f}; in the correction "
              f"{counter.seconds:.3f} s over {counter.calls} phases, "
              f"{counter.steps / max(counter.calls, 1):.1f} GMRES steps per phase", flush=True)


if __name__ == "__main__":
    main()
