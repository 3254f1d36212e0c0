"""CDTP (Bengio 2020 §10.2) on one batch of digits: gamma(t) under the layer activities,
buffers and targets over two gate cycles.

    h_l   <- f_l(gamma a_{l-1} + (1 - gamma) g_l(u_l))     somatic rate            (46)
    a_l   <- h_l while gamma = 1, else held                 feed-forward buffer     (47)
    u_l   <- tau_l + [gamma < 1] (u_l - h_l)                decoder input           (48)
    tau_{l-1} = gamma a_{l-1} + (1 - gamma) g_l(u_l)        target                  (49)

each "<-" a fast leaky integrator. The figure has one column per layer: top row gamma(t),
then one unit's h (solid), a (dashed) and tau (dotted), then ||tau_l - a_l|| (the target
change the forward weights learn from while gamma < 1). A second figure compares the default
waveform (plateau with a fast return) with a smooth sinusoid: the weight change per cycle.

Usage:  python examples/cdtp.py [OUT_DIR]   (or DENDRITE_SIM_FIGURES; default a temporary
directory). Writes OUT_DIR/cdtp.png and OUT_DIR/cdtp_waveforms.png.
"""
import os
import sys
import tempfile
from pathlib import Path

import torch
from matplotlib.figure import Figure

from dendrite_sim import simulate
from dendrite_sim.dynamics.teaching import Nudge
from dendrite_sim.frontend.data import load_dataset
from dendrite_sim.models.cdtp import CDTP

out = Path(sys.argv[1] if len(sys.argv) > 1 else
           os.environ.get("DENDRITE_SIM_FIGURES") or tempfile.mkdtemp(prefix="dendrite_sim_"))
out.mkdir(parents=True, exist_ok=True)
F64 = torch.float64

data = load_dataset("digits")
x = torch.as_tensor(data.x_train[:8], dtype=F64)
y = torch.as_tensor(data.y_train[:8])
teach = Nudge(y, "cross_entropy", 1.0)


def run(waveform, cycles=2):
    model = CDTP([64, 32, 32, 10], dtype=F64, waveform=waveform, period=20.0, duty=0.25)
    sch = model.default_schedule(cycles=cycles, plastic_omega=False)
    t = torch.linspace(0.0, sch.duration, 801, dtype=F64)
    tr = simulate(model, x, t, teach, gates=sch.gates, breakpoints=sch.breakpoints,
                  plastic=True, rtol=1e-6, atol=1e-8)
    gamma = torch.tensor([sch.gates(float(s))["gamma"] for s in t])
    return model, tr, t, gamma


model, tr, t, gamma = run("plateau")
parts = model.layout.unpack(tr.y)
fig = Figure(figsize=(4 * model.depth, 7))
axes = fig.subplots(3, model.depth, sharex=True)
for k in range(model.depth):
    axes[0, k].plot(t, gamma, color="k")
    axes[0, k].set_title(f"layer {k + 1}")
    axes[0, k].set_ylabel("gamma(t)")
    for unit, colour in zip(range(2), ("C0", "C1")):
        axes[1, k].plot(t, parts["h"][k][:, 0, unit], color=colour, label=f"h unit {unit}")
        axes[1, k].plot(t, parts["a"][k][:, 0, unit], "--", color=colour, label="a (buffer)")
        axes[1, k].plot(t, parts["tau"][k][:, 0, unit], ":", color=colour, lw=2,
                        label="tau (target)")
    axes[2, k].plot(t, (parts["tau"][k][:, 0] - parts["a"][k][:, 0]).norm(dim=-1))
    axes[2, k].set_ylabel("||tau - a||")
    axes[2, k].set_xlabel("time (units of T_h)")
axes[1, 0].legend(fontsize=7)
fig.suptitle("CDTP, plateau gate with fast return: example 0 of the batch")
fig.tight_layout()
fig.savefig(out / "cdtp.png", dpi=110)

fig = Figure(figsize=(9, 3.2))
ax = fig.subplots(1, 2)
for waveform in ("plateau", "sawtooth", "square", "sinusoid"):
    m, tr, t, gamma = run(waveform)
    moved = sum(float((a - b).norm()) for a, b in zip(tr.params["W"], m.params["W"]))
    ax[0].plot(t, gamma, label=waveform)
    ax[1].bar(waveform, moved)
    print(f"{waveform:9s} total ||Delta W|| over two cycles: {moved:.4f}")
ax[0].set_xlabel("time")
ax[0].set_ylabel("gamma(t)")
ax[0].legend(fontsize=7)
ax[1].set_ylabel("sum_l ||Delta W_l||, two cycles")
fig.tight_layout()
fig.savefig(out / "cdtp_waveforms.png", dpi=110)
print(f"figures in {out}")
