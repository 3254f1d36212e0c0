"""Equilibrium and Jacobian spectrum of the mixture network (SPEC §3, thesis §6.4 and §6.7).

With exact inverses g_i = f_{i+1}^{-1} and no teaching (free mode, g_L = h_L) the equilibrium
is the forward pass. The Jacobian of the field there is block tridiagonal (6.40):

    diagonal      -I / tau                     (top block: -(1-mu) I / tau in free mode)
    below         (1-mu) D_{s_i} W_i / tau
    above         mu dg_i/dh_{i+1} / tau = mu W_{i+1}^{-1} D_{s_{i+1}}^{-1} / tau

and the similarity transform S_i = A_i S_{i-1} (A_i = D_{s_i} W_i) turns it into a scalar
tridiagonal Toeplitz matrix times I_n: every eigenvalue is n-fold. In free mode

    lambda_k = (-1 + 2 sqrt(mu (1-mu)) cos theta_k) / tau,
    theta_k the L roots in (0, pi) of  mu sin(L theta) = sqrt(mu (1-mu)) sin((L+1) theta)

(docs/derivations.md). The script solves the equilibrium with `fixed_point` (Newton, not long
integration), checks it against the forward pass, reads blocks of the Jacobian by name, and
compares the spectrum with the closed form.

Usage:  python examples/equilibrium_spectrum.py [OUT_DIR]   (or DENDRITE_SIM_FIGURES; default a
temporary directory). Writes OUT_DIR/equilibrium_spectrum.png.
"""
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.optimize import brentq

from dendrite_sim import fixed_point, plots, spectrum
from dendrite_sim.models import Mixture

out = Path(sys.argv[1] if len(sys.argv) > 1 else
           os.environ.get("DENDRITE_SIM_FIGURES") or tempfile.mkdtemp(prefix="dendrite_sim_"))
out.mkdir(parents=True, exist_ok=True)
F64 = torch.float64
L, n, mu, tau = 4, 6, 0.3, 1.0

model = Mixture([n] * (L + 1), mu=mu, tau=tau, feedback="exact", transfer="leaky_relu",
                slope=0.2, dtype=F64, seed=0)
x = torch.randn(3, n, dtype=F64, generator=torch.Generator().manual_seed(0))

# Equilibrium (free mode: target=None) and its distance to the forward pass.
eq = fixed_point(model, x)
forward = torch.cat(model.forward_pass(x, model.params), dim=-1)
print(f"fixed_point: method {eq.method}, converged {eq.converged.tolist()}, residual "
      f"{float(eq.residual.max()):.2e}, |h* - forward pass| = "
      f"{float((eq.y - forward).abs().max()):.2e}")

# Spectrum of the Jacobian there; blocks by name.
spec = spectrum(model, x, eq)
J = spec.jacobian
below = J.block("h[2]", "h[1]")          # (1-mu) D_s W_2 / tau
print("block h[2]<-h[1] equals (1-mu) D W_2:",
      torch.allclose(below[0], (1 - mu) * torch.diag(
          model.pathways.transfers[1].derivative(
              model.pathways.preactivation(2, eq.layers[0], model.params))[0]) @ model.W[1]))
print(f"max real part {spec.max_real.tolist()}, stable {spec.stable.tolist()}, slowest time "
      f"constant {spec.slowest_time_constant.tolist()}")


def free_mode_eigenvalues(mu, L):
    r = np.sqrt(mu * (1 - mu))
    f = lambda th: mu * np.sin(L * th) - r * np.sin((L + 1) * th)
    grid = np.linspace(1e-9, np.pi - 1e-9, 20001)
    v = f(grid)
    sign_changes = np.nonzero(np.sign(v[:-1]) != np.sign(v[1:]))[0]
    roots = [brentq(f, grid[i], grid[i + 1]) for i in sign_changes]
    return (-1 + 2 * r * np.cos(np.array(roots))) / tau


closed = np.sort(free_mode_eigenvalues(mu, L))[::-1]
numeric = np.sort(spec.eigenvalues[0].real.numpy())[::-1]
print("closed form (each", n, "-fold):", np.round(closed, 6))
print("numerical, every", n, "th     :", np.round(numeric[::n], 6))
assert np.allclose(np.repeat(closed, n), numeric, atol=1e-8), "closed form mismatch"

fig = Figure(figsize=(10, 4), layout="constrained")
left, right = fig.subfigures(1, 2)
plots.plot_eigenvalues(spec, example=0, ax=left.subplots())
for lam in closed:
    left.axes[0].axvline(lam, color="0.6", ls=":", lw=1)
left.axes[0].set_ylim(-0.5, 0.5)
left.suptitle("spectrum at the free equilibrium (dotted: closed form)", fontsize="medium")
ax = right.subplots()
image = ax.imshow(torch.Tensor(J)[0].numpy(), cmap="RdBu_r", vmin=-1.5, vmax=1.5)
right.colorbar(image, ax=ax)
ax.set_title("Jacobian (block tridiagonal, 6.40)", fontsize="medium")
print("figure:", plots.save(fig, out / "equilibrium_spectrum.png", dpi=100))
