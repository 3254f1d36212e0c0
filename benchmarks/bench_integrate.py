"""Integration benchmark: the lean Runge-Kutta integrator against torchdiffeq (and torchode).

1. ``simulate`` on a mixture network with learned feedback, 5 layers of ``n`` tanh units
   (``n = 64, 256``), a clamped target, batch 256, float64, from the forward pass to
   ``t = 40 tau``, at ``rtol`` in ``--rtols`` (``atol = rtol / 100``): wall time (best of
   ``--reps``), field evaluations, the fraction of the time spent in the vector field, the
   steps, and the largest error of the final state against scipy's DOP853 at rtol 1e-12 on
   ``--ref-examples`` examples. Methods: the lean ``dopri5`` and ``tsit5`` (shared step),
   ``dopri5`` with per-example steps, ``torchdiffeq:dopri5``, and torchode's ``Dopri5`` and
   ``Tsit5`` (per-example steps; its own optional install: ``pip install torchode``) when it
   imports. "time at equal error" interpolates each method's time against its error
   (log-log, over the tolerances) at the error of the lean dopri5 at rtol 1e-6.
2. ``relax``: every example integrated until ``max |dy/dt| < 1e-6`` (per-example stop) against
   ``simulate`` to the latest stop time.
3. The coupled learning epoch on digits (two-phase DTP, 64-128-128-10, batch 32, float32,
   rates x 2e-4 as in ``bench_training.py``'s timing) in ``--coupled`` configurations
   ``METHOD[:STEP]`` (step in units of tau), extrapolated from ``--coupled-batches`` batches,
   against a full backprop epoch in the same run.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_integrate.py            # ~10 minutes
    OMP_NUM_THREADS=1 python benchmarks/bench_integrate.py --quick    # n = 64, one tolerance

No ``torch.set_num_threads`` here: pin threads with ``OMP_NUM_THREADS``.
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time

import numpy as np
import torch
from scipy.integrate import solve_ivp

import dendrite_sim as ds
from dendrite_sim.dynamics.integrate import Integrator, relax
from dendrite_sim.models import Mixture

F64 = torch.float64
sys.path.insert(0, str(pathlib.Path(__file__).parent))


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sizes", type=int, nargs="+", default=None)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--horizon", type=float, default=40.0)
    p.add_argument("--rtols", type=float, nargs="+", default=None)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--ref-examples", type=int, default=3)
    p.add_argument("--coupled", nargs="+", default=["heun3:1.25", "torchdiffeq:heun3:1.25",
                                                    "dopri5", "torchdiffeq:dopri5"])
    p.add_argument("--coupled-batches", type=int, default=3)
    p.add_argument("--only", nargs="+", default=["simulate", "relax", "coupled"])
    a = p.parse_args(argv)
    a.sizes = a.sizes or ([64] if a.quick else [64, 256])
    a.rtols = a.rtols or ([1e-6] if a.quick else [1e-5, 1e-6, 1e-7])
    return a


def log(msg):
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------------
# 1. simulate
# ----------------------------------------------------------------------------------------------
def problem(n, batch):
    model = Mixture([n] * 6, mu=0.1, feedback="learned", transfer="tanh", dtype=F64, seed=0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, n, dtype=F64, generator=g)
    target = 0.3 * torch.tanh(torch.randn(batch, n, dtype=F64, generator=g))
    return model, x, target


class FieldClock:
    """Counts and times the model's field evaluations (an instance attribute over the method)."""

    def __init__(self, model):
        self.model, self.field, self.seconds, self.calls = model, model.field, 0.0, 0

    def __call__(self, *args):
        t0 = time.perf_counter()
        out = self.field(*args)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out

    def __enter__(self):
        self.model.field = self
        return self

    def __exit__(self, *exc):
        del self.model.field


def reference(model, x, target, horizon, examples):
    """Final states of the first ``examples`` examples by scipy DOP853 at rtol 1e-12."""
    out = []
    for k in range(examples):
        drive = model.drive(x[k:k + 1], target[k:k + 1])
        prepared = model.prepare(model.params)
        y0 = model.initial_state(drive, prepared)[0].numpy()

        def f(t, y):
            return model.field(t, torch.from_numpy(y)[None], drive, prepared)[0].numpy()

        sol = solve_ivp(f, (0.0, horizon), y0, method="DOP853", rtol=1e-12, atol=1e-14)
        out.append(sol.y[:, -1])
    return torch.tensor(np.stack(out), dtype=F64)


def run_dendrite(model, x, target, t, method, rtol, per_example=False):
    integ = Integrator(method, rtol, rtol / 100, per_example=per_example)
    tr = ds.simulate(model, x, t, target, integrator=integ)
    return tr.final, tr.nfev


def run_torchode(model, x, target, t, method, rtol):
    import torchode as to
    drive = model.drive(x, target)
    prepared = model.prepare(model.params)
    y0 = model.initial_state(drive, prepared)
    term = to.ODETerm(lambda s, y: model.field(0.0, y, drive, prepared))  # autonomous
    step = {"dopri5": to.Dopri5, "tsit5": to.Tsit5}[method](term=term)
    solver = to.AutoDiffAdjoint(step, to.IntegralController(atol=rtol / 100, rtol=rtol,
                                                            term=term))
    sol = solver.solve(to.InitialValueProblem(y0=y0, t_eval=t.expand(len(x), -1)))
    return sol.ys[:, -1], int(sol.stats["n_f_evals"].max())


def simulate_section(a):
    rows = []
    try:
        import torchode  # noqa: F401
        have_torchode = True
    except ImportError:
        have_torchode = False
        log("torchode not installed: its rows are skipped")
    for n in a.sizes:
        model, x, target = problem(n, a.batch)
        t = torch.tensor([0.0, a.horizon], dtype=F64)
        ref = reference(model, x, target, a.horizon, a.ref_examples)
        configs = [("dendrite_sim dopri5", lambda r: run_dendrite(model, x, target, t, "dopri5", r)),
                   ("dendrite_sim tsit5", lambda r: run_dendrite(model, x, target, t, "tsit5", r)),
                   ("dendrite_sim dopri5 per-example",
                    lambda r: run_dendrite(model, x, target, t, "dopri5", r, per_example=True)),
                   ("torchdiffeq dopri5",
                    lambda r: run_dendrite(model, x, target, t, "torchdiffeq:dopri5", r))]
        if have_torchode:
            configs += [("torchode dopri5", lambda r: run_torchode(model, x, target, t,
                                                                   "dopri5", r)),
                        ("torchode tsit5", lambda r: run_torchode(model, x, target, t,
                                                                  "tsit5", r))]
        for rtol in a.rtols:
            for name, run in configs:
                best, frac = math.inf, float("nan")
                for _ in range(a.reps):
                    with torch.no_grad(), FieldClock(model) as clock:
                        t0 = time.perf_counter()
                        final, nfev = run(rtol)
                        wall = time.perf_counter() - t0
                    if wall < best:
                        best, frac = wall, clock.seconds / wall
                err = float((final[:a.ref_examples] - ref).abs().max())
                rows.append(dict(n=n, rtol=rtol, method=name, seconds=best, nfev=nfev,
                                 field_fraction=frac, error=err))
                log(f"n={n:4d} rtol={rtol:.0e} {name:34s} {best * 1e3:8.1f} ms  "
                    f"nfev {nfev:5d}  field {100 * frac:4.0f} %  error {err:.2e}")
        equal_error_table(rows, n)
    return rows


def equal_error_table(rows, n):
    """Each method's time at the error of the lean dopri5 at rtol 1e-6 (log-log interpolation
    over the tolerances), and its ratio to that."""
    mine = [r for r in rows if r["n"] == n]
    anchor = [r for r in mine if r["method"] == "dendrite_sim dopri5" and r["rtol"] == 1e-6]
    if not anchor:
        return
    e0, s0 = anchor[0]["error"], anchor[0]["seconds"]
    log(f"-- n={n}: time at the error of dendrite_sim dopri5 rtol 1e-6 ({e0:.2e}, "
        f"{s0 * 1e3:.1f} ms), relative to it:")
    for method in dict.fromkeys(r["method"] for r in mine):
        pts = sorted((math.log(r["error"]), math.log(r["seconds"])) for r in mine
                     if r["method"] == method and r["error"] > 0)
        if len(pts) < 2:
            continue
        le = math.log(e0)
        lo = max([p for p in pts if p[0] <= le], default=pts[0])
        hi = min([p for p in pts if p[0] >= le], default=pts[-1])
        if lo == hi:
            ls = lo[1]
        else:
            ls = lo[1] + (le - lo[0]) * (hi[1] - lo[1]) / (hi[0] - lo[0])
        log(f"   {method:34s} {math.exp(ls) * 1e3:8.1f} ms  x{math.exp(ls) / s0:5.2f}")


# ----------------------------------------------------------------------------------------------
# 2. relax
# ----------------------------------------------------------------------------------------------
def relax_section(a):
    model, x, target = problem(a.sizes[0], a.batch)
    with torch.no_grad():
        t0 = time.perf_counter()
        res = relax(model, x, target, tol=1e-6, t_max=200.0)
        t_relax = time.perf_counter() - t0
        horizon = float(res.stop_times.max())
        t0 = time.perf_counter()
        tr = ds.simulate(model, x, [0.0, horizon], target)
        t_sim = time.perf_counter() - t0
    log(f"relax n={a.sizes[0]}: stop times {float(res.stop_times.min()):.1f}-{horizon:.1f} tau "
        f"(median {float(res.stop_times.median()):.1f}), all settled {bool(res.settled.all())}; "
        f"{t_relax * 1e3:.0f} ms, nfev {res.nfev} against simulate to {horizon:.1f}: "
        f"{t_sim * 1e3:.0f} ms, nfev {tr.nfev}")


# ----------------------------------------------------------------------------------------------
# 3. coupled learning epoch
# ----------------------------------------------------------------------------------------------
def coupled_section(a):
    import bench_training as bt
    from dendrite_sim.data import load_digits
    from dendrite_sim.training import BackpropLearner

    b = bt.parse([])
    data = load_digits()
    x, y, _, _ = data.tensors(dtype=b.dtype)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    batches = [perm[k:k + b.batch_size] for k in range(0, len(x), b.batch_size)]

    def epoch(learner, subset):
        t0 = time.perf_counter()
        for idx in subset:
            learner.step(x[idx], y[idx])
        return (time.perf_counter() - t0) * len(batches) / len(subset)

    def coupled(spec):
        method, _, step = spec.rpartition(":") if spec.count(":") > (1 if spec.startswith(
            "torchdiffeq:") else 0) else (spec, "", "")
        kwargs = {"method": method, **({"step_size": float(step)} if step else {})}
        model = bt.two_phase(b, [64, b.hidden, b.hidden, 10], seed=0,
                             scale=b.timing_rate_scale)
        return bt.dtp_learner(b, model, mode="coupled", present_kwargs=kwargs)

    backprop = min(epoch(BackpropLearner(bt.two_phase(b, [64, b.hidden, b.hidden, 10], 0),
                                         lr=b.bp_lr), batches) for _ in range(a.reps))
    log(f"digits epoch: backprop {backprop:.2f} s")
    for spec in a.coupled:
        seconds = min(epoch(coupled(spec), batches[:a.coupled_batches]) for _ in range(a.reps))
        log(f"digits epoch: coupled {spec:24s} ~{seconds:7.1f} s  = {seconds / backprop:5.1f}x "
            "backprop")


def main(argv=None):
    a = parse(argv)
    if "simulate" in a.only:
        simulate_section(a)
    if "relax" in a.only:
        relax_section(a)
    if "coupled" in a.only:
        coupled_section(a)


if __name__ == "__main__":
    main()
