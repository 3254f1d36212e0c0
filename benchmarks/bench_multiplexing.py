"""Multiplexing network (thesis §6.9, docs/multiplexing.md): measured figures.

1. ``--digits``: digits 64-64-10, quasi-static, against backprop (same initial weights,
   batches, and SGD step ``T_learn * eta * eta_hat``): mean +- std of the final test
   accuracy over ``--seeds`` seeds.
2. ``--depth``: the learning signal per layer relative to the output error,
   ``||p^f_i - p^l_i|| / ||eta_hat e_L||`` against the two-phase mixing network's
   ``||h^f_i - h^l_i|| / ||eta_hat e_L||`` at ``mu = 0.1`` on the same forward weights, for 4 and
   6 hidden layers of width 32, at the forward pass of 64 digits: (a) each model with its
   defaults (multiplexing: identity burst transfer, ``Q_i = (s'(0) W_{i+1})^+``; two-phase:
   leaky ReLU, ``Q_i = W_{i+1}^+``), the multiplexing network's earlier defaults (sigmoid burst
   transfer, ``Q_i = W_{i+1}^T``) for comparison, and the default multiplexing network on its
   own initial weights; (b) linear layers with exact inverses in both (the decay factor
   alone).
3. ``--decoding``: coupled-mode training on a digits subset with synaptic decoding, sweeping
   the decoders' time constant: final test accuracy and the layer-1 learning signal at the end
   of one learning phase, against perfect decoding.
4. ``--fashion``: Fashion-MNIST 784-256-256-256-10 (tanh hidden layers, ``Q = W^T`` fixed;
   docs/multiplexing.md §5 says why) against backprop: test accuracy and the wall time of each
   epoch for both. ``--fashion-train 0 --fashion-test 0``: the full 60000 / 10000 (about
   80 s an epoch for the multiplexing network); the default is a 10000 / 2000 subset.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_multiplexing.py --digits --depth --decoding``;
``... --fashion --fashion-train 0 --fashion-test 0 --fashion-epochs 10`` for the full set.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

import dendrite_sim as ds
from dendrite_sim.dynamics.teaching import Nudge, loss_gradient
from dendrite_sim.frontend.data import load_dataset
from dendrite_sim.learning import BackpropLearner, DendriticLearner, present, train
from dendrite_sim.models import TwoPhaseDTP
from dendrite_sim.models.multiplexing import Multiplexing, damped_inverse

F64 = torch.float64


def _final(hist):
    return float(hist.test_accuracy[-1])


def digits(seeds, epochs):
    data = load_dataset("digits")
    rows = []
    for seed in range(seeds):
        model = Multiplexing([64, 64, 10], eta=0.1, eta_inv=0.01, seed=seed)
        base = BackpropLearner(model, lr=20.0 * 0.1 * 0.5, loss="mse")
        t0 = time.time()
        h_mx = train(DendriticLearner(model, loss="mse", eta_hat=0.5), data, epochs=epochs,
                     seed=seed, progress=False, diagnostics_every=0, eval_every=epochs)
        t_mx = time.time() - t0
        t0 = time.time()
        h_bp = train(base, data, epochs=epochs, seed=seed, progress=False,
                     diagnostics_every=0, eval_every=epochs)
        t_bp = time.time() - t0
        rows.append((_final(h_mx), _final(h_bp), t_mx / t_bp))
        print(f"  seed {seed}: multiplexing {rows[-1][0]:.4f}  backprop {rows[-1][1]:.4f}  "
              f"time ratio {rows[-1][2]:.1f}x", flush=True)
    a = np.array(rows)
    print(f"digits 64-64-10, {epochs} epochs, {seeds} seeds: multiplexing "
          f"{a[:, 0].mean():.4f} +- {a[:, 0].std():.4f}, backprop {a[:, 1].mean():.4f} +- "
          f"{a[:, 1].std():.4f}, gap {100 * (a[:, 1].mean() - a[:, 0].mean()):.2f} points")


def _signals(model, x, y, eta_hat, burst):
    """Per layer ``||signal_i|| / ||eta_hat e_L||`` (batch Frobenius norms)."""
    free = ds.fixed_point(model, x, None, tol=1e-13, max_iter=500)
    nudged = ds.fixed_point(model, x, Nudge(y, "mse", eta_hat), tol=1e-13, max_iter=500)
    e_L = loss_gradient("mse", free.layers[-1], y)
    if burst:
        a = model.burst_probabilities(free.y, model.drive(x))
        b = model.burst_probabilities(nudged.y, model.drive(x, Nudge(y, "mse", eta_hat)))
    else:
        a, b = free.layers, nudged.layers
    return [float((u - v).norm() / (eta_hat * e_L).norm()) for u, v in zip(a, b)]


def _depth_models(sizes, mu):
    """Each model with its defaults, and the multiplexing network's earlier defaults (sigmoid
    burst transfer, ``Q_i = W_{i+1}^T``), all on the two-phase network's forward weights."""
    two = TwoPhaseDTP(sizes, mu=mu, dtype=F64, seed=0)
    mux = Multiplexing(sizes, dtype=F64, seed=0)
    old = Multiplexing(sizes, burst_transfer="sigmoid", feedback_init="transpose", dtype=F64,
                       seed=0)
    for model in (mux, old):
        model.params["W"] = [w.clone() for w in two.W]
    mux.params["Q"] = [damped_inverse(0.25 * w, 0.1) for w in two.W[1:]]   # s'(0) = 1/4
    old.params["Q"] = [w.T.clone() for w in two.W[1:]]
    return two, mux, old


def depth(width=32, eta_hat=1e-3, mu=0.1):
    data = load_dataset("digits")
    x = torch.as_tensor(data.x_train[:64], dtype=F64)
    y = torch.nn.functional.one_hot(torch.as_tensor(data.y_train[:64]), 10).to(F64)
    for hidden in (4, 6):
        sizes = [64] + [width] * hidden + [10]
        two, mux, old = _depth_models(sizes, mu)
        s_two = _signals(two, x, y, eta_hat, burst=False)
        s_mux = _signals(mux, x, y, eta_hat, burst=True)
        s_old = _signals(old, x, y, eta_hat, burst=True)
        own = _signals(Multiplexing(sizes, dtype=F64, seed=0), x, y, eta_hat, burst=True)
        # linear, exact inverses: square layers (width everywhere, the input projected)
        lin_sizes = [width] * (hidden + 2)
        two_l = TwoPhaseDTP(lin_sizes, mu=mu, feedback="exact", transfer="leaky_relu",
                            slope=1.0, dtype=F64, seed=0)
        mux_l = Multiplexing(lin_sizes, transfer="identity", burst_transfer="identity",
                             bias=False, dtype=F64)
        mux_l.params["W"] = [w.clone() for w in two_l.W]
        mux_l.params["Q"] = [torch.linalg.inv(w) for w in two_l.W[1:]]
        x_l, y_l = x[:, :width], torch.rand(64, width, generator=torch.Generator()
                                            .manual_seed(0), dtype=F64)
        l_two = _signals(two_l, x_l, y_l, eta_hat, burst=False)
        l_mux = _signals(mux_l, x_l, y_l, eta_hat, burst=True)
        print(f"\n{hidden} hidden layers (width {width}), ||signal_i|| / ||eta_hat e_L||, "
              f"mu = {mu}, on the two-phase network's forward weights:")
        print("  layer | two-phase | multiplexing default  ratio | old default (sigmoid t, "
              "Q = W^T)  ratio | default, own W | linear exact: mux / two-phase")
        for i in range(len(sizes) - 1):
            print(f"  {i + 1:5d} | {s_two[i]:9.2e} | {s_mux[i]:20.2e} {s_mux[i] / s_two[i]:6.1e} |"
                  f" {s_old[i]:31.2e} {s_old[i] / s_two[i]:6.1e} | {own[i]:14.2e} |"
                  f" {l_mux[i]:9.2e} / {l_two[i]:9.2e} = {l_mux[i] / l_two[i]:7.1e}")


def decoding(taus, n_train, epochs, T):
    full = load_dataset("digits")
    data = dataclasses.replace(full, x_train=full.x_train[:n_train],
                               y_train=full.y_train[:n_train])
    x = torch.as_tensor(full.x_train[:32])
    y = torch.nn.functional.one_hot(torch.as_tensor(full.y_train[:32]), 10).float()
    print(f"\ncoupled mode, digits 64-32-32-10, {n_train} training examples, {epochs} "
          f"epochs, phases of {T} tau each:")
    print("  decoder tau | layer-1 signal ratio (1 presentation) | test accuracy")
    reference = None
    for tau in [None] + list(taus):
        kw = {} if tau is None else dict(decoding=True, tau_depression=tau,
                                          tau_facilitation=tau)
        model = Multiplexing([64, 32, 32, 10], eta=0.1, eta_inv=0.0, phase_duration=T, **kw)
        sched = model.default_schedule()
        pres = present(model, x, Nudge(y, "mse", 0.5), sched, "coupled", rtol=1e-4,
                       atol=1e-6)
        step = float((pres.params["W"][0] - model.W[0]).norm())
        reference = step if reference is None else reference
        hist = train(DendriticLearner(model, mode="coupled", loss="mse", eta_hat=0.5,
                                      present_kwargs=dict(rtol=1e-4, atol=1e-6)),
                     data, epochs=epochs, progress=False, diagnostics_every=0,
                     eval_every=epochs)
        name = "perfect" if tau is None else f"{tau:g}"
        print(f"  {name:>11} | {step / reference:37.3f} | {_final(hist):.4f}", flush=True)


def _epoch_table(h_mx, h_bp):
    """Per epoch: test accuracy of both learners, the gap, and the wall time of the epoch's
    training steps (``step_wall_time``, evaluation excluded) of both and their ratio."""
    print("  epoch | multiplexing | backprop | gap (points) | epoch wall s: mux / bp = ratio")
    dt_mx, dt_bp = np.diff(h_mx.step_wall_time), np.diff(h_bp.step_wall_time)
    for k in range(len(h_mx.epoch)):
        acc_mx, acc_bp = h_mx.test_accuracy[k], h_bp.test_accuracy[k]
        times = "" if k == 0 else (f" | {dt_mx[k - 1]:8.1f} / {dt_bp[k - 1]:6.2f} = "
                                   f"{dt_mx[k - 1] / dt_bp[k - 1]:6.0f}x")
        print(f"  {h_mx.epoch[k]:5.2f} | {acc_mx:12.4f} | {acc_bp:8.4f} | "
              f"{100 * (acc_bp - acc_mx):12.2f}{times}", flush=True)
    print(f"  training steps in all: {dt_mx.sum():.0f} s / {dt_bp.sum():.1f} s = "
          f"{dt_mx.sum() / dt_bp.sum():.1f}x backprop's wall time")


def fashion(n_train, n_test, epochs, batch_size, eta, eta_hat, eta_inv, max_eval, out_dir,
            hidden="tanh", feedback_init="damped", transient=False):
    """Fashion-MNIST 784-256-256-256-10, quasi-static, float32, against backprop at the
    equivalent SGD step ``T_learn * eta * eta_hat`` (same initial weights and batches).
    ``n_train`` / ``n_test`` 0: the full 60000 / 10000. ``hidden``: transfer of the hidden
    layers (the output stays sigmoid); docs/multiplexing.md §5 says why the defaults here are
    not the model's."""
    try:
        data = load_dataset("fashion_mnist", n_train=n_train or None, n_test=n_test or None)
    except (FileNotFoundError, ValueError) as err:
        print(f"\nFashion-MNIST not available: {err}")
        return
    model = Multiplexing([784, 256, 256, 256, 10], transfer=[hidden] * 3 + ["sigmoid"],
                         feedback_init=feedback_init, eta=eta, eta_inv=eta_inv, seed=0)
    lr = model.phase_duration * eta * eta_hat
    base = BackpropLearner(model, lr=lr, loss="mse")        # copies the initial weights
    runs = {}
    for name, learner in (("backprop", base),
                          ("multiplexing", DendriticLearner(model, loss="mse", eta_hat=eta_hat,
                                                            transient=transient))):
        out = None if out_dir is None else f"{out_dir}/{name}"
        runs[name] = train(learner, data, epochs=epochs, batch_size=batch_size, seed=0,
                           progress=out is not None, diagnostics_every=0, eval_every=1,
                           max_eval=max_eval, out_dir=out, overwrite=True)
    print(f"\nFashion-MNIST 784-256-256-256-10, {len(data.x_train)} train / "
          f"{len(data.x_test)} test, batch {batch_size}, eta {eta}, eta_hat {eta_hat}, "
          f"eta_inv {eta_inv} (backprop lr {lr:g}), {hidden} hidden layers, feedback_init "
          f"{feedback_init!r}, {epochs} epochs, float32, quasi-static:")
    _epoch_table(runs["multiplexing"], runs["backprop"])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--digits", action="store_true")
    p.add_argument("--depth", action="store_true")
    p.add_argument("--decoding", action="store_true")
    p.add_argument("--fashion", action="store_true")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--taus", type=float, nargs="+", default=[0.1, 1.0, 3.0, 10.0])
    p.add_argument("--decoding-train", type=int, default=300)
    p.add_argument("--decoding-epochs", type=int, default=3)
    p.add_argument("--phase", type=float, default=10.0)
    p.add_argument("--fashion-train", type=int, default=10000, help="0: all 60000")
    p.add_argument("--fashion-test", type=int, default=2000, help="0: all 10000")
    p.add_argument("--fashion-epochs", type=int, default=3)
    p.add_argument("--fashion-batch", type=int, default=32)
    p.add_argument("--fashion-eta", type=float, default=0.01)
    p.add_argument("--fashion-eta-hat", type=float, default=0.5)
    p.add_argument("--fashion-eta-inv", type=float, default=0.0)
    p.add_argument("--fashion-hidden", default="tanh", help="transfer of the hidden layers")
    p.add_argument("--fashion-feedback", default="damped", help="feedback_init")
    p.add_argument("--fashion-transient", action="store_true",
                   help="the transient-corrected quasi-static step (default: the plain step, "
                        "as measured in docs/multiplexing.md)")
    p.add_argument("--fashion-max-eval", type=int, default=10000,
                   help="evaluate the train metrics on at most this many examples")
    p.add_argument("--fashion-out", default=None,
                   help="write each run's history there at every epoch (progress on stderr)")
    args = p.parse_args()
    if args.digits:
        digits(args.seeds, args.epochs)
    if args.depth:
        depth()
    if args.decoding:
        decoding(args.taus, args.decoding_train, args.decoding_epochs, args.phase)
    if args.fashion:
        fashion(args.fashion_train, args.fashion_test, args.fashion_epochs, args.fashion_batch,
                args.fashion_eta, args.fashion_eta_hat, args.fashion_eta_inv,
                args.fashion_max_eval, args.fashion_out, args.fashion_hidden,
                args.fashion_feedback, args.fashion_transient)


if __name__ == "__main__":
    main()
