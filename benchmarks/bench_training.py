"""Learning benchmarks: two-phase DTP and the mixture model against backprop (like for like).

Every comparison trains a dendritic network and a :class:`~dendrite_sim.training.
BackpropLearner` with the SAME architecture and the SAME initial weights (copied before the
dendritic network learns) on the same seeded mini-batches, and reports the final test metric:

1. digits (scikit-learn, 70/30 stratified split): ``64-h-h-10`` two-phase DTP (learned
   feedback: the 64->10 output layer is not square) vs backprop; mean +- std of the final test
   accuracy over ``--seeds`` seeds (seed = weight initialisation and shuffling).
2. MNIST-1D (4000/1000, 40 features): ``40-h-h-10`` two-phase DTP vs backprop (same protocol).
3. teacher-student regression, ``6-6-6`` with exact inverses (thesis §5.1.3): the single-phase
   mixture model with the plasticity (6.17) vs backprop; reported as the reduction factor of
   the test MSE, ``MSE(initial weights) / MSE(final)``.
4. wall time of one digits epoch (same network, batch size and batches): quasi-static two-phase
   DTP / backprop and coupled two-phase DTP / backprop, and both against a bare PyTorch SGD loop
   (:class:`BareSGD`: the backprop learner without the training loop's per-step bookkeeping,
   about a third of its epoch). The quasi-static and backprop epochs
   are timed in full, alternated, best of ``--timing-reps``, both for the first epoch and
   after ``--timing-warm-epochs`` epochs of training. The coupled mode (one ODE for activity,
   traces and weights) is timed in the integrator configurations ``--coupled`` (the first is
   the headline), best of ``--timing-reps`` runs of ``--coupled-batches`` batches
   extrapolated to an epoch (marked ``~``): by default the exponential etdrk4 at 3 tau (56
   evaluations per presentation; the leak integrated exactly, docs/derivations.md §8), fixed
   steps of heun3 at 1.25 tau (96), midpoint at tau (80), heun3 and rk4 at tau (120, 160), and
   dopri5 at its default tolerances (rtol 1e-6, ~230). The digits network's Jacobian has real
   eigenvalues in [-1.59, -0.40]/tau from initialisation through 30 epochs of training, so
   the explicit steps are stable up to 2/1.59 = 1.26 tau (midpoint), 2.51/1.59 = 1.58 tau
   (heun3) and 2.79/1.59 = 1.75 tau (rk4; it blows up at 1.8). Relative error of one
   presentation's weight changes against dopri5 at rtol 1e-10, float64, worst of
   ``W_1..3, Q_1..2``: heun3 at 1.25 tau 7.1e-4, midpoint at tau 5.0e-3, heun3 at tau
   3.6e-4, rk4 at tau 2.4e-4, dopri5 1.8e-4 (docs/derivations.md §8); in float32 all sit
   at float32's own error (2e-2 for ``W_1``, 0.2 for ``Q_1``). tests/test_two_phase.py
   checks the fixed steps on a small network (midpoint at tau: 7e-3 there, above the test's
   5e-3). Its
   rates are multiplied by ``--timing-rate-scale`` (2e-4) here: with the training rates the
   coupled learning phase runs away — (6.35) is a positive feedback while ``W`` moves within
   the phase (``h_i`` follows ``W_i`` away from the held ``z_i``, growth factor about
   ``exp(eta_i ||h_{i-1}||^2 T_learn)``, docs/derivations.md §4), which the quasi-static
   single Euler step never sees — and dopri5 crawls or stops with "underflow in dt". At
   2e-4 the largest exponent is about 1 for the 64-128-128-10 digits network.

The two-phase DTP sections train in float32 (the fast default for training; ``--float64``
for float64, measured to give the same digits accuracy within the seeds' spread). Wall times
depend on the machine and its load; the ratios are taken in one process. Usage::

    python benchmarks/bench_training.py            # full table (~15 minutes on 2 cores)
    python benchmarks/bench_training.py --quick    # reduced: 1 seed, few epochs, subsets
    python benchmarks/bench_training.py --only digits timing --seeds 2 --out results.json

No ``torch.set_num_threads`` here (SPEC §5b): pin threads with ``OMP_NUM_THREADS``. On a
small shared machine ``OMP_NUM_THREADS=1`` is much faster (measured 30x per presentation on 2
busy cores: the batches are small and idle OpenMP threads spin).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import torch

from dendrite_sim.data import Dataset, load_digits, load_mnist1d, load_teacher_student
from dendrite_sim.errors import NumericalError
from dendrite_sim.models import Mixture, TwoPhaseDTP
from dendrite_sim.training import BackpropLearner, DendriticLearner, train

SECTIONS = ("digits", "mnist1d", "teacher_student", "timing")
F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="reduced run: 1 seed, few epochs, data subsets (minutes)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds for digits and teacher-student (default 3; --quick 1)")
    p.add_argument("--seeds-mnist1d", type=int, default=None,
                   help="seeds for MNIST-1D (default 1: an epoch is 125 presentations)")
    p.add_argument("--hidden", type=int, default=128, help="h of 64-h-h-10 / 40-h-h-10")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs-digits", type=int, default=None)
    p.add_argument("--epochs-mnist1d", type=int, default=None)
    p.add_argument("--epochs-ts", type=int, default=None)
    # two-phase DTP
    p.add_argument("--mu", type=float, default=0.1)
    p.add_argument("--slope", type=float, default=0.3, help="leaky-ReLU negative slope")
    p.add_argument("--eta", type=float, nargs=3, default=[0.004, 0.12, 0.25],
                   metavar=("ETA_1", "ETA_2", "ETA_3"),
                   help="per-layer forward rates of (6.35), before the decay compensation "
                        "((1-mu)/mu)^(L+1-i)")
    p.add_argument("--eta-inv", type=float, default=0.0005,
                   help="feedback rate of (6.37); 0.002 lets Q_L-1 run away once the logits "
                        "grow (digits, ~20 epochs)")
    p.add_argument("--eta-hat", type=float, default=0.1, help="output nudge step (6.10)")
    p.add_argument("--T-free", type=float, default=20.0)
    p.add_argument("--T-learn", type=float, default=20.0)
    p.add_argument("--bp-lr", type=float, default=0.4,
                   help="backprop learning rate (digits 64-128-128-10: 0.4 best of 0.1-0.5; "
                        "0.5 diverges on seed 2)")
    p.add_argument("--mnist1d-rate-scale", type=float, default=0.4,
                   help="MNIST-1D multiplies eta and eta_inv by this (its standardised inputs "
                        "have ||x||^2 = 40 against 15 for digits; the digits rates diverge)")
    p.add_argument("--mnist1d-bp-lr", type=float, default=0.1)
    # teacher-student mixture
    # Teacher-student: the student has the teacher's architecture (6-6-6, leaky_relu 0.35 /
    # identity, no biases), so the teacher is realisable. With an
    # identity output layer and exact inverses the nudged equilibrium is linear in eta_hat and
    # the quasi-static update is exactly Gauss-Newton target propagation with per-layer rate
    # eta_i * T * eta_hat / (1 + (r + r^2) eta_hat), r = mu/(1-mu) (decay compensated): only
    # eta_i * T * eta_hat matters (mu barely). Tuned over 8 seeds, 100 epochs: a larger
    # uniform eta (0.035, 0.05) diverges on seed 2 (W_2 passes near singular early and the
    # hidden target W_2^{-1} e explodes); a larger hidden than output rate helps later, when
    # W_2 has grown and W_2^{-1} shrinks the hidden targets.
    p.add_argument("--ts-mu", type=float, default=0.2)
    p.add_argument("--ts-eta", type=float, nargs=2, default=[0.04, 0.03],
                   metavar=("ETA_1", "ETA_2"),
                   help="per-layer rates of (6.17), before the decay compensation "
                        "((1-mu)/mu)^(L+1-i)")
    p.add_argument("--ts-eta-hat", type=float, default=0.1)
    p.add_argument("--ts-T", type=float, default=20.0)
    p.add_argument("--ts-bp-lr", type=float, default=0.15,
                   help="backprop rate (best of 0.02-0.2 at 100 epochs, 3 seeds; 0.2 "
                        "diverges)")
    # timing
    p.add_argument("--coupled-batches", type=int, default=None)
    p.add_argument("--coupled", nargs="+", metavar="METHOD[:STEP]",
                   default=["etdrk4:3", "heun3:1.25", "midpoint:1", "heun3:1", "rk4:1",
                            "dopri5"],
                   help="integrators of the coupled timings: a fixed-step method with its step "
                        "(tau = 1), or an adaptive one at its default tolerances; the first "
                        "is the headline")
    p.add_argument("--timing-reps", type=int, default=3,
                   help="timed epochs per learner and regime (the best is kept)")
    p.add_argument("--timing-warm-epochs", type=int, default=5,
                   help="epochs of training before the trained-network timing")
    p.add_argument("--timing-rate-scale", type=float, default=2e-4,
                   help="the timing section multiplies every rate (eta, eta_inv, backprop lr) "
                        "by this: with the training rates the coupled learning phase runs "
                        "away (see the module docstring)")
    p.add_argument("--float64", action="store_true",
                   help="float64 instead of float32 for the two-phase DTP sections (digits, "
                        "MNIST-1D, timing); teacher-student is always float64")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--progress", action="store_true", help="progress bars on stderr")
    a = p.parse_args(argv)
    quick = a.quick
    a.seeds = a.seeds or (1 if quick else 3)
    a.epochs_digits = a.epochs_digits or (2 if quick else 30)
    a.epochs_mnist1d = a.epochs_mnist1d or (1 if quick else 20)
    a.epochs_ts = a.epochs_ts or (2 if quick else 100)
    a.seeds_mnist1d = a.seeds_mnist1d or 1
    a.coupled_batches = a.coupled_batches or (1 if quick else 3)
    a.dtype = F64 if a.float64 else torch.float32
    return a


def subset(data: Dataset, n_train, n_test) -> Dataset:
    """The first examples of a split (the loaders' splits are already shuffled)."""
    return Dataset(data.x_train[:n_train], data.y_train[:n_train], data.x_test[:n_test],
                   data.y_test[:n_test], data.n_classes, data.task, data.name,
                   f"{data.description} (first {n_train}/{n_test})")


def two_phase(a, sizes, seed, scale=1.0):
    return TwoPhaseDTP(sizes, mu=a.mu, slope=a.slope, bias=True, feedback="learned",
                       eta=[scale * e for e in a.eta], eta_inv=scale * a.eta_inv,
                       compensate_decay=True, seed=seed, dtype=a.dtype)


def dtp_learner(a, model, mode="quasi_static", present_kwargs=None):
    return DendriticLearner(model, model.default_schedule(T_free=a.T_free, T_learn=a.T_learn),
                            mode=mode, eta_hat=a.eta_hat, present_kwargs=present_kwargs)


class BareSGD:
    """A bare PyTorch SGD loop on the same network and initial weights (autograd through
    ``F.linear`` and the transfer, cross-entropy, in-place update): no finiteness checks, no
    update norms — the cost of backprop without the training loop's bookkeeping, reported
    next to ``BackpropLearner`` (which goes through the same ``step`` as the dendritic
    learner)."""

    def __init__(self, model, lr):
        self.pathways, self.lr = model.pathways, lr
        self.params = [p.detach().clone().requires_grad_(True)
                       for name in ("W", "b") for p in model.params[name] if p is not None]
        self.depth = model.depth

    def step(self, x, y):
        weights, biases = self.params[:self.depth], self.params[self.depth:] or \
            [None] * self.depth
        h = x
        for i in range(self.depth):
            h = self.pathways.transfers[i](torch.nn.functional.linear(h, weights[i], biases[i]))
        grads = torch.autograd.grad(torch.nn.functional.cross_entropy(h, y), self.params)
        with torch.no_grad():
            for p, g in zip(self.params, grads):
                p.sub_(self.lr * g)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------
def classification(a, data, n_in, epochs, name, seeds, scale=1.0, bp_lr=None):
    """Two-phase DTP vs backprop on ``data``; per seed the final test accuracies (NaN, with the
    message under ``failed``, for a run that diverged)."""
    rows = []
    for seed in range(seeds):
        model = two_phase(a, [n_in, a.hidden, a.hidden, 10], seed, scale=scale)
        bp = BackpropLearner(model, lr=a.bp_lr if bp_lr is None else bp_lr)  # same init
        dtp = dtp_learner(a, model)
        common = dict(epochs=epochs, batch_size=a.batch_size, seed=seed, progress=a.progress,
                      diagnostics_every=0)
        row, failed = {"seed": seed}, {}
        for key, learner in (("dtp", dtp), ("bp", bp)):
            t0 = time.perf_counter()
            try:
                hist = train(learner, data, **common)
                row.update({key: float(hist.test_accuracy[-1]),
                            f"{key}_best": float(np.nanmax(hist.test_accuracy)),
                            f"{key}_curve": hist.test_accuracy.tolist()})
            except NumericalError as err:                  # report, do not hide
                failed[key] = str(err)
                row.update({key: float("nan"), f"{key}_best": float("nan")})
            row[f"{key}_s"] = time.perf_counter() - t0
        rows.append({**row, "unconverged": dtp.unconverged, "failed": failed})
        log(f"[{name}] seed {seed}: two-phase DTP {row['dtp']:.4f} ({row['dtp_s']:.0f} s), "
            f"backprop {row['bp']:.4f} ({row['bp_s']:.0f} s){' FAILED ' if failed else ''}"
            f"{failed or ''}")
    return rows


def teacher_student(a, data):
    """Mixture (6.17) with exact inverses vs backprop, test-MSE reduction factors."""
    rows = []
    for seed in range(a.seeds):
        model = Mixture([6, 6, 6], mu=a.ts_mu, feedback="exact",
                        transfer=["leaky_relu", "identity"], slope=0.35, eta=a.ts_eta,
                        compensate_decay=True, seed=seed + 100, dtype=F64)
        bp = BackpropLearner(model, lr=a.ts_bp_lr, loss="mse")
        mix = DendriticLearner(model, model.default_schedule(T=a.ts_T), loss="mse",
                               eta_hat=a.ts_eta_hat)
        common = dict(epochs=a.epochs_ts, batch_size=a.batch_size, seed=seed,
                      progress=a.progress, diagnostics_every=0)
        t0 = time.perf_counter()
        h_mix = train(mix, data, **common)
        t1 = time.perf_counter()
        h_bp = train(bp, data, **common)
        t2 = time.perf_counter()
        rows.append({"seed": seed,
                     "mixture": float(h_mix.test_loss[0] / h_mix.test_loss[-1]),
                     "bp": float(h_bp.test_loss[0] / h_bp.test_loss[-1]),
                     "mse_init": float(h_mix.test_loss[0]),
                     "mixture_mse": float(h_mix.test_loss[-1]),
                     "bp_mse": float(h_bp.test_loss[-1]), "mixture_s": t1 - t0,
                     "bp_s": t2 - t1})
        log(f"[teacher-student] seed {seed}: mixture x{rows[-1]['mixture']:.3g}, "
            f"backprop x{rows[-1]['bp']:.3g}")
    return rows


def timing(a, data):
    """Seconds per digits epoch of quasi-static two-phase DTP and backprop (training rates),
    and of coupled two-phase DTP (rates times ``--timing-rate-scale``, extrapolated from
    ``--coupled-batches`` batches).

    Whole epochs, the learners alternated, best of ``--timing-reps`` (interleaving single
    batches would run each learner with the other's data in the caches, which slows the fast
    backprop step most). Two regimes: the first epoch from the initial weights (each
    repetition from the same initial weights), and the epochs after ``--timing-warm-epochs``
    of training (a trained network's equilibria take more iterations).
    """
    x, y, _, _ = data.tensors(dtype=a.dtype)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    batches = [perm[k:k + a.batch_size] for k in range(0, len(x), a.batch_size)]
    n_epoch = len(batches)
    if a.quick:
        batches = batches[:4]
    failures = []

    def fresh():
        model = two_phase(a, [64, a.hidden, a.hidden, 10], seed=0)
        bp = BackpropLearner(model, lr=a.bp_lr)               # copies the initial weights
        return {"quasi_static": dtp_learner(a, model), "backprop": bp,
                "bare_backprop": BareSGD(model, a.bp_lr)}

    def epoch(name, learner, subset):
        t0 = time.perf_counter()
        for k, idx in enumerate(subset):
            try:
                learner.step(x[idx], y[idx])
            except NumericalError as err:                     # report, do not hide
                failures.append(f"{name} batch {k}: {err}")
                log(f"[timing] {name} failed on batch {k}: {err}")
                return float("nan")
        return (time.perf_counter() - t0) * n_epoch / len(subset)

    def best_of(make_learners, subset=batches):
        best = {}
        for _ in range(a.timing_reps):
            for name, learner in make_learners().items():
                best[name] = min(best.get(name, math.inf), epoch(name, learner, subset))
        return best

    def coupled_learners():
        return {spec: dtp_learner(a, two_phase(a, [64, a.hidden, a.hidden, 10], seed=0,
                                               scale=a.timing_rate_scale),
                                  mode="coupled", present_kwargs=integrator(spec))
                for spec in a.coupled}

    first = best_of(fresh)
    trained_learners = fresh()
    for _ in range(a.timing_warm_epochs):
        for name, learner in trained_learners.items():
            epoch(name, learner, batches)
    trained = best_of(lambda: trained_learners)
    coupled = best_of(coupled_learners, batches[:a.coupled_batches])
    log(f"[timing] first epoch {first}, trained {trained}, coupled {coupled}")
    headline = coupled[a.coupled[0]]
    return {"batches_per_epoch": n_epoch, "reps": a.timing_reps,
            "warm_epochs": a.timing_warm_epochs, "rate_scale": a.timing_rate_scale,
            "coupled_batches": a.coupled_batches, "failures": failures,
            "seconds_per_epoch": first, "coupled_seconds_per_epoch": coupled,
            "trained_seconds_per_epoch": trained,
            "quasi_static/backprop": first["quasi_static"] / first["backprop"],
            "quasi_static/bare_backprop": first["quasi_static"] / first["bare_backprop"],
            "trained quasi_static/backprop": trained["quasi_static"] / trained["backprop"],
            "coupled/backprop": {spec: t / first["backprop"] for spec, t in coupled.items()},
            "coupled/bare_backprop": headline / first["bare_backprop"],
            "extrapolated": {"quasi_static": a.quick, "backprop": a.quick, "coupled": True}}


def integrator(spec: str) -> dict:
    """``present`` keyword arguments of ``METHOD[:STEP]`` (a fixed step in units of tau, or an
    adaptive method at its default tolerances)."""
    method, _, step = spec.partition(":")
    return {"method": method, **({"step_size": float(step)} if step else {})}


def integrator_label(spec: str) -> str:
    method, _, step = spec.partition(":")
    return f"{method}, step {step} tau" if step else f"{method}, rtol 1e-6"


# ----------------------------------------------------------------------------------------------
def mean_std(values):
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def fmt(values, pct=True):
    m, s = mean_std(values)
    if pct:
        return f"{100 * m:6.2f} %" + ("" if math.isnan(s) else f" +- {100 * s:.2f}")
    return f"x{m:8.3g}" + ("" if math.isnan(s) else f" +- {s:.2g}")


def main(argv=None):
    a = parse(argv)
    results = {"config": {k: (str(v) if isinstance(v, torch.dtype) else v)
                          for k, v in vars(a).items()}}
    digits = load_digits()
    table = []
    t_start = time.perf_counter()
    if "digits" in a.only:
        data = subset(digits, 400, 540) if a.quick else digits
        rows = classification(a, data, 64, a.epochs_digits, "digits", a.seeds)
        results["digits"] = rows
        table.append((f"digits 64-{a.hidden}-{a.hidden}-10, {a.epochs_digits} ep, "
                      f"{len(rows)} seed(s)", "test acc",
                      fmt([r["dtp"] for r in rows]), fmt([r["bp"] for r in rows])))
    if "mnist1d" in a.only:
        data = load_mnist1d()
        data = subset(data, 800, 1000) if a.quick else data
        rows = classification(a, data, 40, a.epochs_mnist1d, "mnist1d", a.seeds_mnist1d,
                              scale=a.mnist1d_rate_scale, bp_lr=a.mnist1d_bp_lr)
        results["mnist1d"] = rows
        table.append((f"MNIST-1D 40-{a.hidden}-{a.hidden}-10, {a.epochs_mnist1d} ep, "
                      f"{len(rows)} seed(s)", "test acc",
                      fmt([r["dtp"] for r in rows]), fmt([r["bp"] for r in rows])))
    if "teacher_student" in a.only:
        data = load_teacher_student(n_train=640 if a.quick else 1920)
        rows = teacher_student(a, data)
        results["teacher_student"] = rows
        table.append((f"teacher-student 6-6-6 exact, {a.epochs_ts} ep, {len(rows)} seed(s)",
                      "MSE_0/MSE", fmt([r["mixture"] for r in rows], pct=False),
                      fmt([r["bp"] for r in rows], pct=False)))
    if "timing" in a.only:
        tm = timing(a, digits)
        results["timing"] = tm
        ext = tm["extrapolated"]
        sec = tm["seconds_per_epoch"]
        table.append((f"(timing: coupled rates x{tm['rate_scale']:g}; "
                      f"{len(tm['failures'])} failed step(s))", "", "", ""))
        table.append(("digits epoch wall time: quasi-static / backprop", "ratio",
                      f"{tm['quasi_static/backprop']:8.1f}",
                      f"{'~' if ext['quasi_static'] else ''}{sec['quasi_static']:.2f} s / "
                      f"{sec['backprop']:.3f} s"))
        trained = tm["trained_seconds_per_epoch"]
        table.append((f"  same, after {tm['warm_epochs']} epochs of training", "ratio",
                      f"{tm['trained quasi_static/backprop']:8.1f}",
                      f"{trained['quasi_static']:.2f} s / {trained['backprop']:.3f} s"))
        for spec, ratio in tm["coupled/backprop"].items():
            table.append((f"digits epoch wall time: coupled ({integrator_label(spec)}) / "
                          "backprop", "ratio", f"~{ratio:7.0f}",
                          f"~{tm['coupled_seconds_per_epoch'][spec]:.1f} s / "
                          f"{sec['backprop']:.3f} s"))
        table.append((f"  against a bare SGD loop (no bookkeeping): quasi-static / coupled "
                      f"({a.coupled[0]})", "ratio", f"{tm['quasi_static/bare_backprop']:.1f} / "
                      f"~{tm['coupled/bare_backprop']:.0f}",
                      f"bare {sec['bare_backprop']:.3f} s"))
    results["wall_time_s"] = time.perf_counter() - t_start
    print(f"\nbench_training ({'quick' if a.quick else 'full'}; dtype {a.dtype}; "
          f"two-phase mu={a.mu} slope={a.slope} eta={a.eta} (x((1-mu)/mu)^(L+1-i)) "
          f"eta_inv={a.eta_inv} eta_hat={a.eta_hat} T={a.T_free}/{a.T_learn}; backprop "
          f"lr={a.bp_lr:g}; batch {a.batch_size}; teacher-student mixture mu={a.ts_mu} "
          f"eta={a.ts_eta} eta_hat={a.ts_eta_hat} T={a.ts_T}, backprop lr={a.ts_bp_lr:g})")
    w = max(len(r[0]) for r in table) if table else 10
    print(f"{'comparison':<{w}}  {'metric':<10}  {'dendritic':>18}  {'backprop / detail':>22}")
    for name, metric, dend, bp in table:
        print(f"{name:<{w}}  {metric:<10}  {dend:>18}  {bp:>22}")
    print(f"total wall time {results['wall_time_s']:.0f} s")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
