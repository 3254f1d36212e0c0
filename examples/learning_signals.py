"""Single-phase vs two-phase learning signals with imperfect learned inverses (thesis §6.5-6.6).

Both networks run the same neural ODE (6.1) with learned feedback g_i(y) = Q_i t_i(y). When
Q_i is not the exact inverse of f_{i+1}, the equilibrium deviates from the forward pass even
without any teaching: reconstruction errors enter every layer at scale mu/(1-mu) (6.20-6.22).

* Single phase (mixture, (6.17)): W_i learns from  e_i = f_i(h_{i-1}) - h_i  at the nudged
  equilibrium, which is  useful signal + reconstruction term.  The useful part shrinks like
  eta_hat (mu/(1-mu))^(L+1-i) toward the input, so already small reconstruction errors swamp it.
* Two phase (two-phase DTP, (6.35)): W_i learns from  z_i - h_i = h^f_i - h^l_i,  free minus
  learning-phase equilibrium; the reconstruction terms of both phases nearly cancel (6.36),
  to first order in mu.

The script perturbs Q_i = W_{i+1}^{-1} + noise for growing noise, shows one batch to each
network with `present` (feedback frozen: eta_inv = 0) and measures, for the first layer, how
well each weight change aligns with the change the exact-inverse network makes (cosine), and
the size of the reconstruction term against the useful signal.

Usage:  python examples/learning_signals.py [OUT_DIR]   (or DENDRITE_SIM_FIGURES; default a
temporary directory). Writes OUT_DIR/learning_signals.png.
"""
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from dendrite_sim import fixed_point, plots
from dendrite_sim.learning import present
from dendrite_sim.models import Mixture, TwoPhaseDTP
from dendrite_sim.teaching import Nudge

out = Path(sys.argv[1] if len(sys.argv) > 1 else
           os.environ.get("DENDRITE_SIM_FIGURES") or tempfile.mkdtemp(prefix="dendrite_sim_"))
out.mkdir(parents=True, exist_ok=True)
F64 = torch.float64
sizes, mu, eta_hat = [10, 10, 10, 10], 0.2, 0.1
kw = dict(mu=mu, feedback="learned", transfer="leaky_relu", slope=0.3, dtype=F64, seed=4,
          eta=0.01, eta_inv=0.0)                     # same W (same seed); Q frozen
single, double = Mixture(sizes, **kw), TwoPhaseDTP(sizes, **kw)
gen = torch.Generator().manual_seed(0)
x = torch.randn(32, sizes[0], dtype=F64, generator=gen)
y = single.forward_pass(x, single.params)[-1] + 0.3 * torch.randn(32, sizes[-1], dtype=F64,
                                                            generator=gen)
teach = Nudge(y, "mse", eta_hat)
W_inv = [torch.linalg.inv(w) for w in single.W[1:]]
noise_dirs = [torch.randn(w.shape, dtype=F64, generator=gen) for w in W_inv]


def with_noise(model, sigma):
    """Q_i = W_{i+1}^{-1} + sigma |W^{-1}| N / |N|  (relative Frobenius perturbation sigma)."""
    Q = [wi + sigma * wi.norm() * d / d.norm() for wi, d in zip(W_inv, noise_dirs)]
    return {**model.params, "Q": Q}


def delta_W1(model, params, schedule):
    p = present(model, x, teach, schedule, params=params)
    return (p.params["W"][0] - params["W"][0]).flatten()


def deviation_1(params, target):
    """Layer-1 e_1 = f_1(x) - h_1 at the equilibrium of the single-phase network."""
    eq = fixed_point(single, x, target, params=params)
    return single.pathways.forward(1, x, params) - eq.layers[0]


def cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


sigmas = np.array([0.0, 0.003, 0.01, 0.03, 0.1])
sched_1, sched_2 = single.default_schedule(20.0), double.default_schedule(20.0, 20.0)
ref_1 = delta_W1(single, with_noise(single, 0.0), sched_1)       # exact-inverse updates
ref_2 = delta_W1(double, with_noise(double, 0.0), sched_2)
rows = []
for s in sigmas:
    P1, P2 = with_noise(single, s), with_noise(double, s)
    c1 = cos(delta_W1(single, P1, sched_1), ref_1)
    c2 = cos(delta_W1(double, P2, sched_2), ref_2)
    recon = deviation_1(P1, None)                                 # no teaching: pure recon.
    useful = deviation_1(P1, teach) - recon
    rows.append((s, c1, c2, float(recon.norm()), float(useful.norm())))
    print(f"noise {s:6.3f}: cos(dW_1, exact) single-phase {c1:+.3f}  two-phase {c2:+.3f}   "
          f"|recon term| {rows[-1][3]:.2e}  |useful signal| {rows[-1][4]:.2e}")
rows = np.array(rows)

fig = Figure(figsize=(10, 4), layout="constrained")
a, b = fig.subplots(1, 2)
a.semilogx(rows[1:, 0], rows[1:, 1], "o-", label="single phase (6.17)")
a.semilogx(rows[1:, 0], rows[1:, 2], "s-", label="two phase (6.35)")
a.axhline(1, color="k", lw=0.5)
a.set_xlabel("relative error of Q (noise)")
a.set_ylabel("cos(dW_1, exact-inverse dW_1)")
a.set_title("layer-1 update alignment", fontsize="medium")
a.legend(fontsize="small")
b.loglog(rows[1:, 0], rows[1:, 3], "o-", label="reconstruction term |e_1 (free)|")
b.loglog(rows[1:, 0], rows[1:, 4], "s-", label="useful signal |e_1 (nudged) - e_1 (free)|")
b.set_xlabel("relative error of Q (noise)")
b.set_title("reconstruction error swamps the single-phase signal", fontsize="medium")
b.legend(fontsize="small")
print("figure:", plots.save(fig, out / "learning_signals.png", dpi=100))
