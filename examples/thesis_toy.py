"""Thesis §5.1.1 (Figs. 5.2-5.4): the toy network 1 -> 2 -> 2, only W_1 (two numbers) trained,
W_2 fixed; a teacher with W_1* writes the targets. Trajectories of Gauss-Newton, target
propagation with exact inverses, modified TP (D^{-1}) and backprop on the loss contours, for a
linear hidden layer and for a leaky-ReLU one (slope 0.1).

Usage:  python examples/thesis_toy.py [OUT_DIR]   (or DENDRITE_SIM_FIGURES)  ->  thesis_toy.png
"""
import os
import sys
import tempfile
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from dendrite_sim.dynamics.transfer import Identity, LeakyReLU
from dendrite_sim.learning.layered import gauss_newton_layer_step, layer_forward
from dendrite_sim.learning.learners import learner_class
from dendrite_sim.models import TwoPhaseDTP

out = Path(sys.argv[1] if len(sys.argv) > 1 else
           os.environ.get("DENDRITE_SIM_FIGURES") or tempfile.mkdtemp(prefix="dendrite_sim_"))
out.mkdir(parents=True, exist_ok=True)
F64 = torch.float64
W2 = torch.tensor([[2.0, 0.6], [0.3, 0.7]], dtype=F64)      # fixed, ill-conditioned
W1_star = torch.tensor([[1.0], [-0.5]], dtype=F64)           # the teacher's hidden weights
START = torch.tensor([[2.5], [1.5]], dtype=F64)
STEPS = 12


def network(transfer):
    m = TwoPhaseDTP([1, 2, 2], transfer=[transfer, "identity"], slope=0.1, dtype=F64)
    m.params["W"] = [START.clone(), W2.clone()]
    return m


def trajectory(method, transfer, x, y):
    """The W_1 iterates of one method, each step on the whole batch ``(x, y)``."""
    m = network(transfer)
    transfers = m.layer_transfers
    if method == "Gauss-Newton":
        W1, path = START.clone(), [START.clone()]
        for k in range(STEPS):
            W1 = W1 + gauss_newton_layer_step([W1, W2], [None, None], transfers, x, y,
                                              layer=1)
            path.append(W1.clone())
        return path
    eta_hat = 0.8 if transfer == "identity" else 1.0          # Figs. 5.2b and 5.3b
    options = {"target propagation": ("tp_exact", dict(lr=1.0, eta_hat=eta_hat)),
               "modified TP": ("tp_exact", dict(lr=1.0, eta_hat=eta_hat, modified=True)),
               "backprop": ("backprop", dict(lr=0.3))}[method]
    learner = learner_class(options[0])(m, loss="mse", **options[1])
    path = [START.clone()]
    for k in range(STEPS):
        new, _ = learner.propose(x, y)
        new["W"][1] = W2.clone()                   # only W_1 learns (the thesis' setting)
        if "W_inv" in new:
            new["W_inv"][1] = torch.linalg.inv(W2)
        learner.commit(new)
        path.append(learner.params["W"][0].clone())
    return path


def loss_grid(transfer, x, y, grid):
    s = [Identity() if transfer == "identity" else LeakyReLU(0.1), Identity()]
    losses = np.zeros((len(grid), len(grid)))
    for i, a in enumerate(grid):
        for j, b in enumerate(grid):
            W1 = torch.tensor([[a], [b]], dtype=F64)
            out = layer_forward([W1, W2], [None, None], s, x)[0][-1]
            losses[j, i] = float(0.5 * ((out - y) ** 2).sum(-1).mean())
    return losses


gen = torch.Generator().manual_seed(0)
methods = ["Gauss-Newton", "target propagation", "modified TP", "backprop"]
fig, axes = plt.subplots(2, 4, figsize=(16, 8))
grid = np.linspace(-1.5, 3.0, 80)
for row, transfer in enumerate(["identity", "leaky_relu"]):
    if transfer == "identity":                       # Fig. 5.2: Gaussian inputs, E[h0^2] = 1
        x = torch.randn(256, 1, generator=gen, dtype=F64)
        x = x / x.pow(2).mean().sqrt()
    else:                                            # Fig. 5.3: one sample per step (h0 = 1)
        x = torch.ones(1, 1, dtype=F64)
    s1 = Identity() if transfer == "identity" else LeakyReLU(0.1)
    y = layer_forward([W1_star, W2], [None, None], [s1, Identity()], x)[0][-1]
    contours = loss_grid(transfer, x, y, grid)
    for col, method in enumerate(methods):
        ax = axes[row, col]
        ax.contour(grid, grid, np.log10(contours + 1e-6), levels=20, cmap="Blues")
        path = torch.cat(trajectory(method, transfer, x, y), dim=1).numpy()
        ax.plot(path[0], path[1], "r*-", ms=6, lw=1)
        ax.plot(*W1_star.numpy()[:, 0], "kx", ms=10, mew=2, label="teacher W1*")
        ax.set_xlim(grid[0], grid[-1])
        ax.set_ylim(grid[0], grid[-1])
        ax.set_title(f"{method}\n({'linear' if row == 0 else 'leaky-ReLU'} hidden layer)",
                     fontsize=10)
        ax.set_xlabel("hidden weight W1[0] (dimensionless)")
        ax.set_ylabel("hidden weight W1[1] (dimensionless)")
        ax.legend(fontsize=7, loc="lower right")
fig.suptitle("Thesis §5.1.1 toy example: W_1 iterates (red stars, 12 steps) on the "
             "contours of log10 loss (blue)", fontsize=12)
fig.tight_layout()
fig.savefig(out / "thesis_toy.png", dpi=100)
print(f"wrote {out / 'thesis_toy.png'}")
