"""Mixture model (single phase), thesis §6.3-6.5 / SPEC §2.1, with exact inverses.

    tau dh_i/dt = -h_i + (1-mu) f_i(h_{i-1}) + mu g_i(h_{i+1}),   g_i = f_{i+1}^{-1}   (6.1)
    dW_i/dt     = -eta_i D_{s_i} (f_i(h_{i-1}) - h_i) h_{i-1}^T                        (6.17)

What this script shows, on the thesis' invertible teacher-student regression (§5.1.3):
  1. one presentation: the network starts at the forward pass and relaxes, under the output
     nudge h_L - eta_hat dLoss/dh_L, to an equilibrium slightly off the forward pass;
  2. that deviation d_i = h*_i - f_i(h*_{i-1}) carries the output error into every layer,
     shrinking by about mu/(1-mu) per layer downward (6.12-6.16);
  3. learning by (6.17) lowers the test loss, next to backprop on the same network.

Usage:  python examples/mixture.py [OUT_DIR]     (or set DENDRITE_SIM_FIGURES; default: a
temporary directory). Writes OUT_DIR/mixture.png. Runs in a few seconds on a CPU.
"""
import os
import sys
import tempfile
from pathlib import Path

import torch
from matplotlib.figure import Figure

from dendrite_sim import fixed_point, plots, simulate
from dendrite_sim.data import load_teacher_student
from dendrite_sim.models import Mixture
from dendrite_sim.teaching import Nudge
from dendrite_sim.training import BackpropLearner, DendriticLearner, train

out = Path(sys.argv[1] if len(sys.argv) > 1 else
           os.environ.get("DENDRITE_SIM_FIGURES") or tempfile.mkdtemp(prefix="dendrite_sim_"))
out.mkdir(parents=True, exist_ok=True)
F64 = torch.float64

# Teacher and student: 6-6-6 (thesis §5.1.3), leaky-ReLU hidden layer (slope 0.35), linear output.
data = load_teacher_student(n_hidden=(6,), n_train=960, n_test=300, seed=0)
mu = 0.2
model = Mixture([6, 6, 6], mu=mu, feedback="exact", slope=0.35, dtype=F64, seed=1,
                transfer=["leaky_relu", "identity"], eta=0.15)
x_tr, y_tr, x_te, y_te = data.tensors(dtype=F64)

# 1. One presentation of one example with the output nudged toward its target.
x, y = x_te[:1], y_te[:1]
teach = Nudge(y, "mse", eta_hat=0.1)
traj = simulate(model, x, torch.linspace(0, 10, 200, dtype=F64), teach)

# 2. The deviation from the forward map at the nudged equilibrium, layer by layer.
eq = fixed_point(model, x_te[:64], Nudge(y_te[:64], "mse", 0.1))
h = [x_te[:64]] + eq.layers
dev = [float((h[i] - model.pathways.forward(i, h[i - 1], model.params)).norm(dim=-1).mean())
       for i in range(1, model.depth + 1)]
print("mean |h*_i - f_i(h*_{i-1})| per layer:", ", ".join(f"{d:.3g}" for d in dev))
print(f"ratio layer 1 / layer 2: {dev[0] / dev[1]:.3f} "
      f"(mu/(1-mu) = {mu / (1 - mu):.3f}, times the gain of the inverse maps)")

# 3. Learning: the dendritic rule and backprop from the same initial weights.
baseline = BackpropLearner(model, lr=0.05, loss="mse")      # copies the initial weights first
hist = train(DendriticLearner(model, eta_hat=0.1, loss="mse"), data, epochs=3, batch_size=32,
             eval_every=0.25, progress=False, diagnostics_every=0)
bp = train(baseline, data, epochs=3, batch_size=32, eval_every=0.25, progress=False,
           diagnostics_every=0)
print(f"test loss: mixture {hist.test_loss[0]:.3g} -> {hist.test_loss[-1]:.3g}, "
      f"backprop -> {bp.test_loss[-1]:.3g}")

fig = Figure(figsize=(11, 5), layout="constrained")
left, right = fig.subfigures(1, 2)
plots.plot_activity(traj, phases=[(0, 10, "nudged")], fig=left)
left.suptitle("one presentation (exact inverses)", fontsize="medium")
ax = right.subplots()
ax.semilogy(hist.examples, hist.test_loss, "-o", ms=3, label="mixture (6.17)")
ax.semilogy(bp.examples, bp.test_loss, "-s", ms=3, label="backprop")
ax.set_xlabel("examples")
ax.set_ylabel("test loss (mse)")
ax.legend()
right.suptitle("learning on teacher-student data", fontsize="medium")
print("figure:", plots.save(fig, out / "mixture.png", dpi=100))
