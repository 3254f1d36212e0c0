"""§6.7 stability of the mixture equilibrium with exact inverses, swept over mu.

Thesis §6.7 checks on random block-tridiagonal Jacobians that the equilibrium is locally
stable for 0 < mu < 0.5 ("negative definite" read as: every eigenvalue has a negative real
part, SPEC §3). With exact inverses the check has a closed form (docs/derivations.md): the
similarity transform S_i = A_i S_{i-1} (A_i = D_{s_i} W_i) maps the Jacobian onto
tridiagonal-Toeplitz (x) I_n, so with a clamped output (g_L = y, here y = the forward output,
so the equilibrium is the forward pass for every mu)

    max Re lambda = (-1 + 2 sqrt(mu (1-mu)) cos(pi / (L+1))) / tau   < 0   for mu < 1/2,

and in free mode (g_L = h_L: the top diagonal block becomes -(1-mu) I) the largest root of
mu sin(L theta) = sqrt(mu (1-mu)) sin((L+1) theta) replaces pi/(L+1).

The script tracks the equilibrium and its spectrum with `continuation` over mu in
[0.02, 0.49] in both modes, overlays the closed forms, and repeats the thesis' experiment on
random block-tridiagonal matrices.

Usage:  python examples/stability_sweep.py [OUT_DIR]   (or DENDRITE_SIM_FIGURES; default a
temporary directory). Writes OUT_DIR/stability_sweep.png.
"""
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.optimize import brentq

from dendrite_sim import plots
from dendrite_sim.continuation import continuation
from dendrite_sim.models import Mixture

out = Path(sys.argv[1] if len(sys.argv) > 1 else
           os.environ.get("DENDRITE_SIM_FIGURES") or tempfile.mkdtemp(prefix="dendrite_sim_"))
out.mkdir(parents=True, exist_ok=True)
F64 = torch.float64
L, n = 4, 5
mus = np.linspace(0.02, 0.49, 15)

model = Mixture([n] * (L + 1), mu=0.1, feedback="exact", transfer="leaky_relu", slope=0.2,
                dtype=F64, seed=2)
x = torch.randn(2, n, dtype=F64, generator=torch.Generator().manual_seed(1))
y = model.forward_pass(x, model.params)[-1]          # clamp target: the forward output

clamped = continuation(model, x, "mu", mus, target=y)
free = continuation(model, x, "mu", mus)
print(clamped.summary())
print(free.summary())


def clamp_closed(mu):
    return -1 + 2 * np.sqrt(mu * (1 - mu)) * np.cos(np.pi / (L + 1))


def free_closed(mu):
    r = np.sqrt(mu * (1 - mu))
    f = lambda th: mu * np.sin(L * th) - r * np.sin((L + 1) * th)
    grid = np.linspace(1e-9, np.pi - 1e-9, 4001)
    v = f(grid)
    i = np.nonzero(np.sign(v[:-1]) != np.sign(v[1:]))[0][0]       # smallest theta
    return -1 + 2 * r * np.cos(brentq(f, grid[i], grid[i + 1]))


err_c = np.abs(clamped.max_real[:, 0].numpy() - clamp_closed(mus)).max()
err_f = np.abs(free.max_real[:, 0].numpy() - np.array([free_closed(m) for m in mus])).max()
print(f"max |numerical - closed form|: clamped {err_c:.2e}, free {err_f:.2e}")


# The thesis' check: random block-tridiagonal Jacobians -I, (1-mu) A_i below, mu A_{i+1}^{-1}
# above, with random invertible A_i (here: Gaussian, n = 5, L = 4, 50 draws per mu).
def random_max_real(mu, draws=50, rng=np.random.default_rng(0)):
    worst = -np.inf
    for _ in range(draws):
        A = [rng.standard_normal((n, n)) for _ in range(L)]
        J = -np.eye(L * n)
        for i in range(1, L):
            J[i * n:(i + 1) * n, (i - 1) * n:i * n] = (1 - mu) * A[i]
            J[(i - 1) * n:i * n, i * n:(i + 1) * n] = mu * np.linalg.inv(A[i])
        worst = max(worst, np.linalg.eigvals(J).real.max())
    return worst


rand = np.array([random_max_real(m) for m in mus])
print(f"random block-tridiagonal Jacobians: max real part over all draws {rand.max():.4f} (< 0); "
      f"clamped closed form at mu={mus[-1]:.2f}: {clamp_closed(mus[-1]):.4f} -- the similarity "
      "transform holds for any invertible A_i, so the random draws sit on the closed form")

fig = Figure(figsize=(10, 4), layout="constrained")
left, right = fig.subfigures(1, 2)
plots.plot_continuation(clamped, example=0, ax=left.subplots())
left.axes[0].plot(mus, clamp_closed(mus), "k--", lw=1, label="closed form")
left.axes[0].legend(fontsize="small")
left.suptitle("clamped output: continuation in mu", fontsize="medium")
ax = right.subplots()
ax.axhline(0, color="k", lw=1)
ax.plot(mus, clamped.max_real[:, 0], "o", label="clamped (simulator)")
ax.plot(mus, clamp_closed(mus), "k--", lw=1, label="clamped, closed form")
ax.plot(mus, free.max_real[:, 0], "s", label="free (simulator)")
ax.plot(mus, [free_closed(m) for m in mus], "k:", lw=1, label="free, closed form")
ax.plot(mus, rand, "^", color="0.5", label="random block-tridiagonal (max of 50)")
ax.set_xlabel("mu")
ax.set_ylabel("max Re lambda")
ax.legend(fontsize="small")
right.suptitle("stable for 0 < mu < 1/2 (thesis §6.7)", fontsize="medium")
print("figure:", plots.save(fig, out / "stability_sweep.png", dpi=100))
