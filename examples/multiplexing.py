"""Multiplexing network (thesis §6.9, docs/multiplexing.md) on digits.

    tau_b da^b_i/dt = -a^b_i + W_i h_{i-1} + b_i,   h_i = s_i(a^b_i)     event rate   (6.43, 6.45)
    tau_a da^a_i/dt = -a^a_i + Q_i p_{i+1},         p_i = t_i(a^a_i)     burst prob.  (6.44, 6.46)
    p_L = h_L (free phase) or h_L - eta_hat dLoss/dh_L (learning phase)              (6.51, 6.54)
    learning phase: dW_i/dt = -eta_i D_{s_i} (p^f_i - p^l_i) h_{i-1}^T                (6.58)

The script
  1. integrates one presentation of one digit (free phase, then learning phase) with
     synaptic decoding (depressing basal, facilitating apical synapses) and plots the event
     rates and burst probabilities of every layer, phases shaded: the event rates do not move
     when the output is nudged, the burst probabilities do, layer after layer;
  2. plots the learning signal per layer of a network with 4 hidden layers, relative to the
     output error, against the two-phase mixing network (mu = 0.1) on the same weights, with
     linear layers and exact inverses in both (the (mu/(1-mu))^(L+1-i) decay alone).

Usage:  python examples/multiplexing.py [OUT_DIR]   (or DENDRITE_SIM_FIGURES; default a
temporary directory). Writes OUT_DIR/multiplexing.png.
"""
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

import dendrite_sim as ds
from dendrite_sim.dynamics.teaching import Nudge
from dendrite_sim.frontend.data import load_digits
from dendrite_sim.models import TwoPhaseDTP
from dendrite_sim.models.multiplexing import Multiplexing

out = Path(sys.argv[1] if len(sys.argv) > 1 else
           os.environ.get("DENDRITE_SIM_FIGURES") or tempfile.mkdtemp(prefix="dendrite_sim_"))
out.mkdir(parents=True, exist_ok=True)
F64 = torch.float64
data = load_digits()
x_tr, y_tr, _, _ = data.tensors(dtype=F64)

# 1. One presentation with synaptic decoding (decoders slower than the compartments).
model = Multiplexing([64, 16, 16, 10], decoding=True, burst_transfer="sigmoid",
                     feedback_init="transpose", tau_depression=0.5, tau_facilitation=2.0,
                     feedback_scale=4.0, dtype=F64, seed=0)
schedule = model.default_schedule(T_free=15.0, T_learn=25.0)
x = x_tr[:1]
target = Nudge(torch.nn.functional.one_hot(y_tr[:1], 10).to(F64), "mse", eta_hat=0.5)
t = torch.linspace(0, schedule.duration, 300, dtype=F64)
start = model.initial_state(model.drive(x_tr[1:2]), model.params)  # the previous digit's state
traj = ds.simulate(model, x, t, target, gates=schedule.gates, breakpoints=schedule.breakpoints,
                   y0=start)
states = traj.y[:, 0]
drive = model.drive(x.expand(len(t), -1), Nudge(target.y.expand(len(t), -1), "mse", 0.5))
# the gates of each time point: p_L is the nudged target only in the learning phase
teach = torch.tensor([schedule.gates(float(s))["teach"] for s in t], dtype=F64)[:, None]
drive.example_gates = {"teach": teach}
h = model.layers(states)
p = model.burst_probabilities(states, drive)

fig = Figure(figsize=(11, 9), layout="constrained")
axes = fig.subplots(3, 3, sharex="col")
learn = schedule.boundaries[1]
for row, (hi, pi) in enumerate(zip(h, p)):
    for col, (value, label) in enumerate(((hi, "event rate $h_%d$"), (pi, "burst prob. $p_%d$"))):
        ax = axes[row, col]
        ax.plot(t.numpy(), value[:, :6].numpy(), lw=1)
        ax.axvspan(learn, float(t[-1]), color="0.9", zorder=0)
        ax.set_ylabel(label % (row + 1))
    ax = axes[row, 2]
    ax.plot(t.numpy(), (pi - hi)[:, :6].numpy(), lw=1)
    ax.axvspan(learn, float(t[-1]), color="0.9", zorder=0)
    ax.set_ylabel(f"$p_{row + 1} - h_{row + 1}$")
for ax in axes[-1]:
    ax.set_xlabel("time (tau); shaded: learning phase")
axes[0, 0].set_title("event rates (depressing synapses)")
axes[0, 1].set_title("burst prob. (facilitating synapses)")
axes[0, 2].set_title("burst probability - event rate")
fig.savefig(out / "multiplexing_presentation.png", dpi=100)

# 2. Learning signal per layer, 4 hidden layers, linear layers with exact inverses.
width, mu, eta_hat = 16, 0.1, 1e-3
sizes = [width] * 6
two = TwoPhaseDTP(sizes, mu=mu, feedback="exact", transfer="leaky_relu", slope=1.0,
                  dtype=F64, seed=0)
mux = Multiplexing(sizes, transfer="identity", burst_transfer="identity", bias=False,
                   dtype=F64)
mux.params["W"] = [w.clone() for w in two.W]
mux.params["Q"] = [torch.linalg.inv(w) for w in two.W[1:]]
xs = x_tr[:64, :width]
ys = torch.rand(64, width, generator=torch.Generator().manual_seed(0), dtype=F64)
nudge = Nudge(ys, "mse", eta_hat)
e = eta_hat * (ds.fixed_point(mux, xs, None).layers[-1] - ys).norm()
p_f = mux.burst_probabilities(ds.fixed_point(mux, xs, None).y, mux.drive(xs))
p_l = mux.burst_probabilities(ds.fixed_point(mux, xs, nudge).y, mux.drive(xs, nudge))
sig_mux = [float((a - b).norm() / e) for a, b in zip(p_f, p_l)]
h_f, h_l = ds.fixed_point(two, xs, None).layers, ds.fixed_point(two, xs, nudge).layers
sig_two = [float((a - b).norm() / e) for a, b in zip(h_f, h_l)]

fig2 = Figure(figsize=(6, 4), layout="constrained")
ax = fig2.subplots()
layers = np.arange(1, len(sizes))
ax.semilogy(layers, sig_mux, "o-", label="multiplexing $\\|p^f_i - p^l_i\\|$")
ax.semilogy(layers, sig_two, "s-", label="two-phase, $\\mu$ = 0.1: $\\|h^f_i - h^l_i\\|$")
ax.semilogy(layers, [sig_mux[i - 1] * (mu / (1 - mu)) ** (len(sizes) - i) for i in layers],
            "k:", label="multiplexing $\\times (\\mu/(1-\\mu))^{L+1-i}$")
ax.set_xlabel("layer i")
ax.set_ylabel("learning signal / $\\|\\hat\\eta e_L\\|$")
ax.set_title("linear layers, exact inverses, same weights")
ax.legend(fontsize=8)
fig2.savefig(out / "multiplexing_signal.png", dpi=100)

# one file holding both (the examples test looks for multiplexing.png)
combined = Figure(figsize=(11, 13), layout="constrained")
top, bottom = combined.subfigures(2, 1, height_ratios=[9, 4])
import matplotlib.image as mpimg  # noqa: E402 (after the figures are written)
for sub, name in ((top, "multiplexing_presentation.png"), (bottom, "multiplexing_signal.png")):
    axis = sub.subplots()
    axis.imshow(mpimg.imread(out / name))
    axis.axis("off")
combined.savefig(out / "multiplexing.png", dpi=100)
print("layer-wise signal / output error:")
for i in layers:
    print(f"  layer {i}: multiplexing {sig_mux[i - 1]:.3e}   two-phase {sig_two[i - 1]:.3e}")
print(f"wrote {out / 'multiplexing.png'}")
