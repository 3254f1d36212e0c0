"""Thesis §5.2.1 (Figs. 5.9, 5.10): learning the (pseudo-)inverse of fixed forward weights.

h_2 = s(W h_1), g(h_2) = Q s^{-1}(h_2), leaky ReLU slope 0.35; Q by gradient steps on the
(regularised) inverse loss, Alg. A.8 (``white_noise_inverse_step``). Three panels: equal
layers 5 -> 5 (white, full-rank coloured, rank-2 coloured input), contracting 5 -> 3 (white
batch 1 and 16, coloured), expanding 3 -> 5 (white lambda = 0 and 0.2, coloured lambda = 0.2;
dashed: distance to Theorem 4.7's W^T (W W^T + lambda I)^{-1}).

Usage:  python examples/thesis_inverse_learning.py [OUT_DIR]  ->  thesis_inverse_learning.png
"""
import os
import sys
import tempfile
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from dendrite_sim.dynamics.transfer import LeakyReLU
from dendrite_sim.families.pathways import robust_invertible
from dendrite_sim.learning.layered import regularised_pinv, white_noise_inverse_step

out = Path(sys.argv[1] if len(sys.argv) > 1 else
           os.environ.get("DENDRITE_SIM_FIGURES") or tempfile.mkdtemp(prefix="dendrite_sim_"))
out.mkdir(parents=True, exist_ok=True)
F64 = torch.float64
ITER = 2500
s = LeakyReLU(0.35)


def run(n1, n2, colour=None, batch=1, weight_decay=0.0, lr=(0.05, 0.04), seed=0):
    """Distances ``||Q - W^+||_inf`` and ``||Q - Q_4.7||_inf`` along the iterations."""
    gen = torch.Generator().manual_seed(seed)
    W = robust_invertible(n2, n1, gen, 0.4)
    Q = robust_invertible(n1, n2, gen, 0.4)
    C = None if colour is None else torch.randn(n1, colour, generator=gen, dtype=F64)
    pinv, q47 = torch.linalg.pinv(W), regularised_pinv(W, weight_decay)
    dist, dist47 = [], []
    for k in range(ITER):
        h = torch.randn(batch, n1 if C is None else colour, generator=gen, dtype=F64)
        h = h if C is None else h @ C.T
        rate = lr[0] + (lr[1] - lr[0]) * k / ITER          # linear decay, as the thesis
        Q = white_noise_inverse_step(Q, W, None, s, h, rate, weight_decay)
        dist.append(float((Q - pinv).abs().max()))
        dist47.append(float((Q - q47).abs().max()))
    return dist, dist47


panels = [
    ("equal layers 5 -> 5 (target W^-1)", [
        ("white input", dict(n1=5, n2=5)),
        ("coloured input, full rank", dict(n1=5, n2=5, colour=5)),
        ("coloured input, rank 2", dict(n1=5, n2=5, colour=2))]),
    ("contracting layers 5 -> 3 (target W^+)", [
        ("coloured input", dict(n1=5, n2=3, colour=5, lr=(0.05, 0.0005))),
        ("white input, batch 1", dict(n1=5, n2=3, lr=(0.05, 0.0005))),
        ("white input, batch 16", dict(n1=5, n2=3, batch=16, lr=(0.05, 0.0005)))]),
    ("expanding layers 3 -> 5 (target W^+)", [
        ("white input, lambda = 0", dict(n1=3, n2=5)),
        ("white input, lambda = 0.2", dict(n1=3, n2=5, weight_decay=0.2)),
        ("coloured input, lambda = 0.2", dict(n1=3, n2=5, colour=5, weight_decay=0.2))]),
]
fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
for ax, (title, curves) in zip(axes, panels):
    for label, kw in curves:
        dist, dist47 = run(**kw)
        line, = ax.semilogy(dist, label=label)
        if kw.get("weight_decay"):
            ax.semilogy(dist47, "--", color=line.get_color(),
                        label=label + ": distance to W^T(WW^T+lambda I)^-1")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("iteration (gradient steps on the inverse loss)")
    ax.set_ylabel("max |Q - W^+| (dimensionless)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
fig.suptitle("Thesis §5.2.1: learning the (pseudo-)inverse of fixed forward weights "
             "(leaky ReLU 0.35; step sizes 5x the thesis' 0.01, decaying linearly)", fontsize=11)
fig.tight_layout()
fig.savefig(out / "thesis_inverse_learning.png", dpi=100)
print(f"wrote {out / 'thesis_inverse_learning.png'}")
