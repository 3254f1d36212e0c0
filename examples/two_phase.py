"""Two-phase difference target propagation (thesis §6.6 / SPEC §2.2) on one batch of digits.

    tau dh_i/dt = -h_i + (1-mu) f_i(h_{i-1}) + mu g_i(h_{i+1}),   g_i(y) = Q_i t_i(y)   (6.1)
    T_z dz_i/dt = trace(t) (h_i - z_i)                       slow trace: remembers h^f
    free phase:      output short-circuited, Q learns (6.37), z follows h
    learning phase:  output nudged (6.10), W learns from z_i - h_i = h^f_i - h^l_i (6.35)

The script
  1. integrates one presentation (free phase, then learning phase) and plots the output
     activity h_L with its trace z_L, phases shaded;
  2. shows one mini-batch with `present` and compares each layer's weight change with the
     backprop gradient of the same network (cosine);
  3. trains on 256 examples (batches of 16) next to backprop.

Usage:  python examples/two_phase.py [OUT_DIR]   (or DENDRITE_SIM_FIGURES; default a temporary
directory). Writes OUT_DIR/two_phase.png.
"""
import os
import sys
import tempfile
from pathlib import Path

import torch
from matplotlib.figure import Figure

from dendrite_sim import plots, simulate
from dendrite_sim.data import load_digits
from dendrite_sim.learning import present
from dendrite_sim.models import TwoPhaseDTP
from dendrite_sim.teaching import Nudge
from dendrite_sim.training import (BackpropLearner, DendriticLearner, backprop_gradient,
                                   loss_target, train)

out = Path(sys.argv[1] if len(sys.argv) > 1 else
           os.environ.get("DENDRITE_SIM_FIGURES") or tempfile.mkdtemp(prefix="dendrite_sim_"))
out.mkdir(parents=True, exist_ok=True)
F64 = torch.float64

data = load_digits()
# the main job's settings (dendrite_sim/configs/two_phase.toml), with 32 hidden units
model = TwoPhaseDTP([64, 32, 10], mu=0.2, slope=0.3, eta=0.1, eta_inv=0.001,
                    compensate_decay=True, bias=True, dtype=F64, seed=0)
schedule = model.default_schedule(T_free=20.0, T_learn=20.0)   # Schedule.two_phase
x_tr, y_tr, x_te, y_te = data.tensors(dtype=F64)
print(schedule)

# 1. One presentation of one digit, the output nudged toward its label in the learning phase.
teach = Nudge(loss_target(y_tr[:1], 10, F64), "cross_entropy", eta_hat=0.5)
t = torch.linspace(0, schedule.duration, 400, dtype=F64)
traj = simulate(model, x_tr[:1], t, teach, gates=schedule.gates,
                breakpoints=schedule.breakpoints)
h_out, z_out = traj.layers[-1][:, 0], traj.variable("z")[-1][:, 0]

# 2. One mini-batch: the weight change of each layer against the backprop gradient.
x, y = x_tr[:32], y_tr[:32]
pres = present(model, x, Nudge(loss_target(y, 10, F64), "cross_entropy", 0.1), schedule)
grad = backprop_gradient(model, model.params, x, loss_target(y, 10, F64),
                         "cross_entropy")
for i in range(model.depth):
    dW = (pres.params["W"][i] - model.W[i]).flatten()
    g = -grad["W"][i].flatten()
    print(f"layer {i + 1}: cos(dW, -dLoss/dW) = {float(dW @ g / (dW.norm() * g.norm())):+.3f}")

# 3. A short training run on 256 digits next to backprop (same initial weights).
small = type(data)(data.x_train[:256], data.y_train[:256], data.x_test[:200], data.y_test[:200],
                   data.n_classes, data.task, data.name, data.description)
baseline = BackpropLearner(model, lr=0.2)   # = T_learn * eta * eta_hat, the DTP output step
hist = train(DendriticLearner(model, schedule, eta_hat=0.1), small, epochs=1, batch_size=16,
             eval_every=0.25, progress=False, diagnostics_every=0)
bp = train(baseline, small, epochs=1, batch_size=16, eval_every=0.25, progress=False,
           diagnostics_every=0)
print(f"test accuracy after 256 examples: two-phase DTP {hist.test_accuracy[-1]:.3f}, "
      f"backprop {bp.test_accuracy[-1]:.3f} (from {hist.test_accuracy[0]:.3f})")

fig = Figure(figsize=(11, 4), layout="constrained")
a, b = fig.subplots(1, 2)
phases = [(s, e, p.name) for s, e, p in zip(schedule.boundaries, schedule.boundaries[1:],
                                               schedule.phases)]
for k, (s, e, name) in enumerate(phases):
    a.axvspan(s, e, color=f"C{k}", alpha=0.12, lw=0)
    a.text(0.5 * (s + e), 1.0, name, transform=a.get_xaxis_transform(), ha="center",
           va="bottom")
for u in range(10):
    a.plot(t, h_out[:, u], color=f"C{u}", lw=1)
    a.plot(t, z_out[:, u], color=f"C{u}", lw=1, ls=":")
a.set_xlabel("t")
a.set_ylabel("output h_L (solid), trace z_L (dotted)")
b.plot(hist.examples, hist.test_accuracy, "-o", ms=3, label="two-phase DTP")
b.plot(bp.examples, bp.test_accuracy, "-s", ms=3, label="backprop")
b.set_xlabel("examples")
b.set_ylabel("test accuracy")
b.legend()
print("figure:", plots.save(fig, out / "two_phase.png", dpi=100))
