"""Thesis §5.2.2 (Figs. 5.14-5.16): teacher-student regression 6-6-6 (leaky ReLU 0.35, linear
output) with approximate inverses: TP-AI and DTP-AI (g = Q s^{-1}, Q on white noise, Alg. A.8),
original TP and DTP (g = s(Q .), Alg. A.9) and backprop, mini-batches of one sample, test MSE
per epoch (mean over seeds).

Usage:  python examples/thesis_teacher_student_approx.py [OUT_DIR]  ->  thesis_teacher_student_approx.png
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

from dendrite_sim.frontend.data import load_teacher_student
from dendrite_sim.learning.learners import learner_class
from dendrite_sim.learning.loop import train
from dendrite_sim.models import TwoPhaseDTP

out = Path(sys.argv[1] if len(sys.argv) > 1 else
           os.environ.get("DENDRITE_SIM_FIGURES") or tempfile.mkdtemp(prefix="dendrite_sim_"))
out.mkdir(parents=True, exist_ok=True)
EPOCHS, SEEDS = 5, (0, 1)
RUNS = [("TP-AI", "tp_ai", dict(lr=0.02, eta_hat=0.1, lr_inv=0.002, inverse_batch=1)),
        ("DTP-AI", "dtp_ai", dict(lr=0.02, eta_hat=0.1, lr_inv=0.002, inverse_batch=1)),
        ("original TP", "tp_original", dict(lr=0.02, eta_hat=0.1, lr_inv=0.002)),
        ("original DTP", "dtp_original", dict(lr=0.02, eta_hat=0.1, lr_inv=0.002)),
        ("backprop", "backprop", dict(lr=0.002))]

fig, ax = plt.subplots(figsize=(7, 4.8))
for label, name, options in RUNS:
    curves = []
    for seed in SEEDS:
        data = load_teacher_student(n_train=300, n_test=300, seed=seed)
        student = TwoPhaseDTP([6, 6, 6], transfer=["leaky_relu", "identity"], slope=0.35,
                              feedback="exact", seed=100 + seed, dtype=torch.float64)
        learner = learner_class(name)(student, loss="mse", **options)
        hist = train(learner, data, epochs=EPOCHS, batch_size=1, seed=seed, progress=False,
                     diagnostics_every=0)
        curves.append(2 * np.asarray(hist.test_loss))          # ||h_L - y||^2 per example
    mean = np.mean(curves, axis=0)
    ax.semilogy(np.arange(len(mean)), mean, marker="o", ms=3, label=label)
    print(f"{label}: test MSE {mean[0]:.3g} -> {mean[-1]:.3g}")
ax.set_xlabel("epoch (300 examples, one per update)")
ax.set_ylabel("test loss ||h_L - y||^2 per example (dimensionless)")
ax.set_title("Thesis §5.2.2 teacher-student 6-6-6: "
             + "approximate inverses"
             + f"\n(mean of {len(SEEDS)} seeds)", fontsize=10)
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "thesis_teacher_student_approx.png", dpi=100)
print(f"wrote {out / 'thesis_teacher_student_approx.png'}")
