"""Mixture model (single phase) — thesis §6.3–6.5.

Somatic rate is a convex mix of basal (forward) and apical (feedback) drive::

    tau dh_i/dt = -h_i + (1-mu) f_i(h_{i-1}) + mu g_i(h_{i+1}),   i = 1..L,  0 < mu < 0.5  (6.1)

with ``g_L = h_L^trgt`` the teaching signal (free, clamp or nudge; (6.3), (6.10)).

Plasticity (batch-averaged over the copies of the network that share synapses)::

    dW_i/dt = -eta_i D_{s_i} (f_i(h_{i-1}) - h_i) h_{i-1}^T                          (6.17)
    db_i/dt = -eta_i D_{s_i} (f_i(h_{i-1}) - h_i)                     (bias, same rule)
    dQ_i/dt = -eta_inv [ (g_i(h_{i+1}) - h_i) t_i(h_{i+1})^T + lambda Q_i ]          (6.26)

With exact feedback ``g`` follows ``W`` through a fresh LU solve, so ``Q`` does not exist.
``compensate_decay=True`` multiplies ``eta_i`` by ``((1-mu)/mu)^(L+1-i)`` (thesis §6.4).
Gates ``"teach"``, ``"plastic_W"`` and ``"plastic_Q"`` (default 1) switch teaching and
plasticity, e.g. for a sleep phase (no teaching, only ``Q`` learns; end of §6.5).
"""
from __future__ import annotations

import torch

from dendrite_sim.families.mixing import MixingNetwork
from dendrite_sim.learning.schedule import Schedule

__all__ = ["Mixture"]


class Mixture(MixingNetwork):
    """The single-phase mixture network (6.1).

    Parameters
    ----------
    sizes : ``[n_0, n_1, ..., n_L]``.
    mu : mixing coefficient in (0, 0.5).
    tau : neural time constant, > 0.
    feedback : ``"exact"`` (``g_i = f_{i+1}^{-1}``, equal sizes) or ``"learned"`` (``Q``).
    form : learned feedback form, ``"inverse"`` (``Q_i t_i(y)``) or ``"classic"`` (``s_i(Q_i y)``).
    transfer : name or list of names per layer: identity, leaky_relu, tanh, sigmoid.
    slope : leaky-ReLU negative slope in (0, 1].
    bias : whether layers have biases ``b``.
    feedback_gain : ``c`` in ``g = c * inverse`` (1 is the model; other values for sweeps).
    eta, eta_inv, weight_decay : learning rates of (6.17) (scalar or per layer) and (6.26).
    compensate_decay : layer-specific rates ``eta_i ((1-mu)/mu)^(L+1-i)``.
    seed, dtype, device, init_threshold : initialisation (robustly invertible ``W``).
    """

    def __init__(self, sizes, mu=0.1, tau=1.0, feedback="exact", transfer="leaky_relu",
                 slope=0.1, bias=False, seed=0, dtype=torch.float32, device="cpu",
                 form="inverse", feedback_gain=1.0, eta=0.01, eta_inv=0.01, weight_decay=0.0,
                 compensate_decay=False, init_threshold=0.4):
        super().__init__(sizes, mu, tau, feedback, transfer, slope, bias, seed, dtype, device,
                         form, feedback_gain, eta, eta_inv, weight_decay, compensate_decay,
                         init_threshold)

    def default_schedule(self, T=None) -> Schedule:
        """``Schedule.single_phase(T)`` (§6.4–6.5: teaching on, ``W`` and ``Q`` plastic
        together); ``T`` defaults to ``20 * tau``."""
        return Schedule.single_phase(20.0 * self.tau if T is None else T)

    def initial_state(self, drive, P):
        """The forward pass ``h_i = f_i(h_{i-1})`` (the free equilibrium with exact inverses)."""
        return torch.cat(self.forward_pass(drive.x, P), dim=-1)

    def forward_errors(self, parts, flow):
        """(6.17): ``e_i = f_i(h_{i-1}) - h_i``; ``Q`` follows (6.26)."""
        return [flow.basal(i) - hi for i, hi in enumerate(parts["h"], start=1)]
