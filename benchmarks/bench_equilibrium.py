"""Time to a steady state: ``fixed_point`` against integrating the dynamics.

Setting (one configuration per width ``n`` and dtype): the mixture model
``Mixture([n] * 6, mu=0.1, tau=1, transfer="tanh", feedback="learned")`` -- five layers of
``n`` units, ``Q`` at its initial value ``W^+`` (learned inverse-form feedback) -- a batch of
inputs ``x ~ N(0, 1)`` and a cross-entropy nudge ``Nudge(labels, "cross_entropy",
eta_hat=0.1)`` on random labels. Every method starts from the forward pass and stops when the
residual ``max_b max_k |dy/dt|`` of the whole batch is <= ``--tol`` (1e-6):

* ``fixed_point`` with ``method`` auto / newton_krylov / newton (dense Newton only where
  ``N <= --dense-max``);
* dopri5 (torchdiffeq, ``--rtol`` 1e-5, ``--atol`` 1e-8: the cheapest of a sweep 1e-3..1e-7
  that reaches 1e-6 in every configuration; looser ones hover at the stability limit or
  fail in float32) in doubling stretches (4, 8, 16, ... tau) with dense output every
  0.25 tau; the cost is counted up to the first output time where the residual is met, so
  the last stretch is not overcharged;
* forward Euler with dt = 0.02 tau (the deep-feedback-control scheme), residual checked at
  every step (it is the field value the step uses, so the check is free).

Counting (forward-pass equivalents of the batch): a field evaluation 1; a Jacobian-vector
product 2 (primal + tangent); a dense Jacobian ``N + 1``; dopri5 and Euler: field calls.
Wall times are the best of ``--reps`` repetitions, methods interleaved within a repetition;
ratios are against ``fixed_point(auto)`` of the same run.

A second part times ``jacobian`` + ``torch.linalg.eigvals`` at one state with ``N = 4096``
(``Mixture([512] * 9)``, batch 1, float64). Run with ``OMP_NUM_THREADS`` set in the
environment to pin the thread count (never ``torch.set_num_threads``, SPEC §5b)::

    OMP_NUM_THREADS=1 python benchmarks/bench_equilibrium.py            # ~10 minutes
    OMP_NUM_THREADS=1 python benchmarks/bench_equilibrium.py --quick    # ~10 seconds

A third part, always run, compares leaky ReLU with tanh in ``fixed_point`` (float32, default
settings, three seeds): issue 13's setting (``Mixture([64] * 6)``, leaky ReLU slope 0.2 at
mu 0.1 against tanh at mu 0.2, inputs ``0.5 randn``, a clamped target uniform in [-0.3, 0.3])
and the network above (mu 0.1, nudged, slope 0.1), printing wall and CPU seconds, evaluations
and the ratios leaky / tanh (goal: within 3x).

A fourth part (``--against REV``, e.g. the commit before a change of ``equilibrium.py``)
times ``fixed_point(auto)`` of the working tree against ``fixed_point`` of
``dendrite_sim/dynamics/equilibrium.py`` as of ``REV`` (loaded from git into a module of
its own), interleaved in the same run, on the tanh setting above and on leaky ReLU
(``slope`` 0.2, mu 0.1), and prints the ratio leaky ReLU / tanh::

    OMP_NUM_THREADS=1 python benchmarks/bench_equilibrium.py --quick --against 5ebbffc
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import torch
from torchdiffeq import odeint

import dendrite_sim as ds
from dendrite_sim.models import Mixture

EULER_DT = 0.02


def problem(n, dtype, batch, transfer, feedback, layers=5, seed=0, slope=0.1):
    """Model, input and teaching signal of one configuration."""
    model = Mixture([n] * (layers + 1), mu=0.1, tau=1.0, transfer=transfer, feedback=feedback,
                    dtype=dtype, seed=seed, slope=slope)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, n, generator=gen, dtype=torch.float64).to(dtype)
    labels = torch.randint(0, n, (batch,), generator=gen)
    return model, x, ds.Nudge(labels, "cross_entropy", eta_hat=0.1)


def residual_of(model, drive, prepared, y):
    return float(model.field(0.0, y, drive, prepared).abs().max())


def run_fixed_point(model, x, target, tol, method):
    start = time.perf_counter()
    eq = ds.fixed_point(model, x, target, tol=tol, method=method)
    seconds = time.perf_counter() - start
    return dict(seconds=seconds, nfev=eq.nfev, residual=float(eq.residual.max()),
                note=f"{eq.method}, {eq.iterations} it" + (", fallback" if eq.used_fallback
                                                           else ""))


def run_dopri5(model, x, target, tol, rtol, atol, t_max=4096.0, first=4.0, spacing=0.25):
    """dopri5 in doubling stretches. The cost is counted up to the first field call at or after
    the first output time that meets ``tol`` (a few calls short of the step that reached it,
    which favours dopri5); the residual checks between outputs are not charged."""
    start = time.perf_counter()
    drive = model.drive(x, target)
    prepared = model.prepare(model.params)
    y = model.initial_state(drive, prepared)
    calls = []                                  # (t, wall clock) of every field call

    def field(t, state):
        calls.append((float(t), time.perf_counter()))
        return model.field(t, state, drive, prepared)

    t0, length, spent, nfev = 0.0, first, time.perf_counter() - start, 0
    while t0 < t_max:
        grid = torch.arange(0.0, length + spacing / 2, spacing, dtype=torch.float64) + t0
        calls.clear()
        begin = time.perf_counter()
        with torch.no_grad():
            ys = odeint(field, y, grid.to(model.dtype), rtol=rtol, atol=atol)
            end = time.perf_counter()
            res = [residual_of(model, drive, prepared, s) for s in ys[1:]]
        reached = next((k for k, r in enumerate(res) if r <= tol), None)
        if reached is not None:
            t_hit = float(grid[reached + 1])
            k = next(i for i, (t, _) in enumerate(calls) if t >= t_hit - 1e-12)
            return dict(seconds=spent + calls[k][1] - begin, nfev=nfev + k + 1,
                        residual=res[reached], note=f"T = {t_hit:g} tau")
        spent += end - begin
        nfev += len(calls)
        y, t0, length = ys[-1], t0 + length, 2 * length
    return dict(seconds=spent, nfev=nfev, residual=res[-1], note=f"not reached by {t0:g}")


def run_euler(model, x, target, tol, max_steps=100_000, patience=2500):
    """Forward Euler, dt = 0.02 tau; the residual is the field value each step uses. Stops
    early when the residual has not improved for ``patience`` steps (rounding floor)."""
    start = time.perf_counter()
    drive = model.drive(x, target)
    prepared = model.prepare(model.params)
    y = model.initial_state(drive, prepared)
    best, best_step = float("inf"), 0
    with torch.no_grad():
        for k in range(1, max_steps + 1):
            F = model.field(0.0, y, drive, prepared)
            res = float(F.abs().max())
            if res <= tol or k - best_step > patience:
                break
            if res < best:
                best, best_step = res, k
            y = y + EULER_DT * F
    note = f"T = {(k - 1) * EULER_DT:g} tau" + ("" if res <= tol else
                                                f", stalled at {best:.2e}")
    return dict(seconds=time.perf_counter() - start, nfev=k, residual=res, note=note)


def bench_config(n, dtype, args):
    model, x, target = problem(n, dtype, args.batch, args.transfer, args.feedback)
    N = model.state_size
    runners = {"fixed_point(auto)": lambda: run_fixed_point(model, x, target, args.tol, "auto"),
               "fixed_point(newton_krylov)":
                   lambda: run_fixed_point(model, x, target, args.tol, "newton_krylov")}
    if N <= args.dense_max:
        runners["fixed_point(newton)"] = \
            lambda: run_fixed_point(model, x, target, args.tol, "newton")
    runners["dopri5"] = lambda: run_dopri5(model, x, target, args.tol, args.rtol, args.atol)
    runners["euler dt=0.02"] = lambda: run_euler(model, x, target, args.tol)
    best = {}
    for _ in range(args.reps):                  # interleaved repetitions
        for name, run in runners.items():
            out = run()
            if name not in best or out["seconds"] < best[name]["seconds"]:
                best[name] = out
    return N, best


def print_table(n, dtype, N, best, batch):
    ref = best["fixed_point(auto)"]
    print(f"\n[{n} x 5 layers, N = {N}, batch {batch}, {str(dtype).replace('torch.', '')}]")
    print(f"{'method':28s} {'time s':>9s} {'nfev':>7s} {'x time':>8s} {'x nfev':>8s} "
          f"{'residual':>9s}  note")
    for name, out in best.items():
        print(f"{name:28s} {out['seconds']:9.3f} {out['nfev']:7d} "
              f"{out['seconds'] / ref['seconds']:8.1f} {out['nfev'] / ref['nfev']:8.1f} "
              f"{out['residual']:9.2e}  {out['note']}")


def bench_spectrum(width, layers, reps):
    """Seconds for ``jacobian`` and ``eigvals`` at the nudged equilibrium, batch 1, float64."""
    model, x, target = problem(width, torch.float64, 1, "tanh", "learned", layers)
    state = ds.fixed_point(model, x, target, tol=1e-8)
    times = {"jacobian": [], "eigvals": []}
    for _ in range(reps):
        start = time.perf_counter()
        jac = torch.Tensor(ds.jacobian(model, x, state, target))
        mid = time.perf_counter()
        ev = torch.linalg.eigvals(jac)
        end = time.perf_counter()
        times["jacobian"].append(mid - start)
        times["eigvals"].append(end - mid)
    jt, et = min(times["jacobian"]), min(times["eigvals"])
    print(f"\n[spectrum: Mixture([{width}] * {layers + 1}), N = {model.state_size}, batch 1, "
          f"float64; best of {reps}]")
    print(f"jacobian {jt:8.2f} s ({100 * jt / (jt + et):4.1f} %)   eigvals {et:8.2f} s "
          f"({100 * et / (jt + et):4.1f} %)   max Re = {float(ev.real.max()):.4f}")


def issue_case(transfer, mu, dtype, batch, seed=0):
    """Issue 13's setting: ``Mixture([64] * 6, mu, learned feedback, slope 0.2)``, inputs
    ``0.5 randn``, a clamped target uniform in [-0.3, 0.3]."""
    model = Mixture([64] * 6, mu=mu, feedback="learned", transfer=transfer, slope=0.2,
                    dtype=dtype, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = (0.5 * torch.randn(batch, 64, generator=gen, dtype=torch.float64)).to(dtype)
    target = (0.6 * torch.rand(batch, 64, generator=gen, dtype=torch.float64) - 0.3).to(dtype)
    return model, x, target


def bench_leaky(batch, reps, seeds=(0, 1, 2)):
    """Leaky ReLU against tanh in ``fixed_point`` (default settings), float32: the issue's
    setting (leaky ReLU at mu 0.1 against tanh at mu 0.2) and the benchmark's network (both
    mu 0.1, nudged, slope 0.1); summed over ``seeds``, best of ``reps``, interleaved; wall
    and process (CPU) seconds, evaluations, and the ratios leaky / tanh."""
    settings = {
        "issue 13 (clamped)": lambda tr, seed: issue_case(tr, 0.2 if tr == "tanh" else 0.1,
                                                          torch.float32, batch, seed),
        "benchmark (nudged)": lambda tr, seed: problem(64, torch.float32, batch, tr,
                                                       "learned", seed=seed),
    }
    print(f"\n[leaky ReLU / tanh in fixed_point, float32, batch {batch}, seeds {list(seeds)}, "
          f"best of {reps}]")
    print(f"{'setting':22s} {'transfer':11s} {'wall s':>8s} {'cpu s':>8s} {'nfev':>6s} "
          f"{'converged':>10s} {'fallback':>9s}")
    for label, make in settings.items():
        out = {}
        for transfer in ("tanh", "leaky_relu"):
            cases = [make(transfer, seed) for seed in seeds]
            best = dict(wall=float("inf"), cpu=float("inf"))
            for _ in range(reps):
                wall, cpu, nfev, conv, fallback = 0.0, 0.0, 0, 0, 0
                for model, x, target in cases:
                    start, start_cpu = time.perf_counter(), time.process_time()
                    eq = ds.fixed_point(model, x, target)
                    wall += time.perf_counter() - start
                    cpu += time.process_time() - start_cpu
                    nfev, conv = nfev + eq.nfev, conv + int(eq.converged.sum())
                    fallback += eq.used_fallback
                best = dict(wall=min(best["wall"], wall), cpu=min(best["cpu"], cpu),
                            nfev=nfev, conv=conv, fallback=fallback)
            out[transfer] = best
            print(f"{label:22s} {transfer:11s} {best['wall']:8.3f} {best['cpu']:8.3f} "
                  f"{best['nfev']:6d} {best['conv']:5d}/{batch * len(seeds):<4d} "
                  f"{best['fallback']:9d}")
        ratio = {k: out["leaky_relu"][k] / out["tanh"][k] for k in ("wall", "cpu", "nfev")}
        print(f"{label:22s} leaky/tanh: wall {ratio['wall']:.2f}x, cpu {ratio['cpu']:.2f}x, "
              f"nfev {ratio['nfev']:.2f}x")


def load_revision(rev):
    """``fixed_point`` of ``dendrite_sim/dynamics/equilibrium.py`` at git revision ``rev``."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{rev}:dendrite_sim/dynamics/equilibrium.py"],
                            cwd=root, check=True, capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader(f"equilibrium_{rev}", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    exec(compile(source, f"equilibrium@{rev}", "exec"), module.__dict__)
    return module.fixed_point


def bench_against(rev, n, batch, reps, tol):
    """Best-of-``reps`` seconds of ``fixed_point(auto)`` now and at ``rev``, tanh and leaky
    ReLU, float32 and float64; ratios now / then and leaky / tanh."""
    old = load_revision(rev)
    print(f"\n[fixed_point(auto) now vs {rev}: {n} x 5 layers, batch {batch}, tol {tol:g}, "
          f"best of {reps}]")
    print(f"{'setting':28s} {'now s':>8s} {'then s':>8s} {'now/then':>9s} {'nfev now':>9s} "
          f"{'conv now':>9s}")
    for dtype in (torch.float32, torch.float64):
        seconds = {}
        for transfer in ("tanh", "leaky_relu"):
            model, x, target = problem(n, dtype, batch, transfer, "learned", slope=0.2)
            best = {"now": float("inf"), "then": float("inf")}
            for _ in range(reps):
                for name, solve in (("now", ds.fixed_point), ("then", old)):
                    start = time.perf_counter()
                    eq = solve(model, x, target, tol=tol)
                    best[name] = min(best[name], time.perf_counter() - start)
                    if name == "now":
                        nfev, conv = eq.nfev, int(eq.converged.sum())
            seconds[transfer] = best["now"]
            label = f"{transfer}, {str(dtype).replace('torch.', '')}"
            print(f"{label:28s} {best['now']:8.3f} {best['then']:8.3f} "
                  f"{best['now'] / best['then']:9.2f} {nfev:9d} {conv:9d}")
        print(f"leaky_relu / tanh ({str(dtype).replace('torch.', '')}): "
              f"{seconds['leaky_relu'] / seconds['tanh']:.1f}x")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="batch 64, width 64, one repetition, spectrum at N = 1024")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--rtol", type=float, default=1e-5, help="dopri5")
    parser.add_argument("--atol", type=float, default=1e-8, help="dopri5")
    parser.add_argument("--transfer", default="tanh")
    parser.add_argument("--feedback", default="learned", choices=("learned", "exact"))
    parser.add_argument("--dense-max", type=int, default=400,
                        help="largest N for which dense Newton is timed")
    parser.add_argument("--spectrum", type=int, nargs=2, default=[512, 8],
                        metavar=("WIDTH", "LAYERS"), help="0 0 to skip")
    parser.add_argument("--against", default=None, metavar="REV",
                        help="also time fixed_point against equilibrium.py at git REV")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.batch, args.reps, args.spectrum = [64], 64, 1, [256, 4]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; tol {args.tol:g}; "
          f"transfer {args.transfer}, feedback {args.feedback}; dopri5 rtol {args.rtol:g} "
          f"atol {args.atol:g}")
    for name in args.dtypes:                    # warm-up: lazy imports of forward-mode AD
        tiny = problem(4, getattr(torch, name), 2, args.transfer, args.feedback)
        for method in ("auto", "newton_krylov", "newton"):
            ds.fixed_point(*tiny, method=method)
        ds.fixed_point(*problem(24, getattr(torch, name), 2, "leaky_relu", "learned"),
                       method="newton_krylov", max_iter=1)     # the first JVP: 1-7 s
    for n in args.sizes:
        for name in args.dtypes:
            dtype = getattr(torch, name)
            N, best = bench_config(n, dtype, args)
            print_table(n, dtype, N, best, args.batch)
    bench_leaky(args.batch, args.reps)
    if args.spectrum[0] > 0:
        bench_spectrum(args.spectrum[0], args.spectrum[1], 1 if args.quick else 2)
    if args.against:
        bench_against(args.against, args.sizes[0], args.batch, max(args.reps, 3), args.tol)


if __name__ == "__main__":
    main()
