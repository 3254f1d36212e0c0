"""Mixture model (single phase) — SPEC §2.1, thesis §6.3–6.5.

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

from dendrite_sim.errors import check_range
from dendrite_sim.layout import Layout
from dendrite_sim.model import NetworkModel
from dendrite_sim.pathways import Pathways

__all__ = ["Mixture"]


class Mixture(NetworkModel):
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

    plastic_params = ("W", "b", "Q")

    def __init__(self, sizes, mu=0.1, tau=1.0, feedback="exact", transfer="leaky_relu",
                 slope=0.1, bias=False, seed=0, dtype=torch.float32, device="cpu",
                 form="inverse", feedback_gain=1.0, eta=0.01, eta_inv=0.01, weight_decay=0.0,
                 compensate_decay=False, init_threshold=0.4):
        self.mu, self.tau = mu, tau
        self.eta, self.eta_inv, self.weight_decay = eta, eta_inv, weight_decay
        self.compensate_decay = bool(compensate_decay)
        self.pathways = Pathways(sizes, transfer, slope, bias, feedback, form, feedback_gain,
                                 seed, dtype, device, init_threshold)
        self.sizes, self.dtype, self.device = self.pathways.sizes, dtype, torch.device(device)
        self.params = self.pathways.params
        self.layout = Layout({"h": self.sizes[1:]})
        self._validate()

    def _validate(self):
        check_range("mu", self.mu, low=0.0, high=0.5, low_open=True, high_open=True)
        check_range("tau", self.tau, low=0.0, low_open=True)
        self.layer_rates = _layer_rates(self.eta, self.depth, self.mu, self.compensate_decay)
        check_range("eta_inv", self.eta_inv, low=0.0)
        check_range("weight_decay", self.weight_decay, low=0.0)

    # -- named views of the parameters, as in the thesis ------------------------------------
    @property
    def W(self):
        return self.params["W"]

    @property
    def b(self):
        return None if self.params["b"][0] is None else self.params["b"]

    @property
    def Q(self):
        return self.params.get("Q")

    @property
    def feedback_gain(self):
        return self.pathways.feedback_gain

    def prepare(self, params):
        return self.pathways.prepare(params)

    def default_schedule(self, T=None):
        """``Schedule.single_phase(T)`` (§6.4–6.5: teaching on, ``W`` and ``Q`` plastic
        together); ``T`` defaults to ``20 * tau``."""
        from dendrite_sim.schedule import Schedule
        return Schedule.single_phase(20.0 * self.tau if T is None else T)

    # -- dynamics ---------------------------------------------------------------------------
    def basal(self, h, P):
        """``[f_1(x), ..., f_L(h_{L-1})]`` for ``h = [x, h_1, ..., h_L]``."""
        return [self.pathways.forward(i, h[i - 1], P) for i in range(1, self.depth + 1)]

    def apical(self, t, h, drive, P):
        """``[g_1(h_2), ..., g_{L-1}(h_L), h_L^trgt]`` for ``h = [x, h_1, ..., h_L]``."""
        g = [self.pathways.feedback_map(i, h[i + 1], P) for i in range(1, self.depth)]
        return g + [drive.teaching.output_target(h[-1], drive.gate("teach", t))]

    def field(self, t, y, drive, P):
        """``dh_i/dt = (-h_i + (1-mu) f_i(h_{i-1}) + mu g_i(h_{i+1})) / tau``  (6.1)."""
        h = [drive.x] + self.layers(y)
        f, g = self.basal(h, P), self.apical(t, h, drive, P)
        mu = self.mu
        return torch.cat([(-hi + (1 - mu) * fi + mu * gi) / self.tau
                          for hi, fi, gi in zip(h[1:], f, g)], dim=-1)

    def initial_state(self, drive, P):
        """The forward pass ``h_i = f_i(h_{i-1})`` (the free equilibrium with exact inverses)."""
        h = [drive.x]
        for i in range(1, self.depth + 1):
            h.append(self.pathways.forward(i, h[-1], P))
        return torch.cat(h[1:], dim=-1)

    # -- plasticity -------------------------------------------------------------------------
    def plasticity(self, t, y, drive, P):
        """Batch-averaged rates (6.17) for ``W, b`` and (6.26) for ``Q`` (module docstring)."""
        h = [drive.x] + self.layers(y)
        batch = drive.batch_size
        gate_w = drive.gate("plastic_W", t)
        rates = {"W": [], "b": []}
        for i in range(1, self.depth + 1):
            a = self.pathways.preactivation(i, h[i - 1], P)
            s = self.pathways.transfers[i - 1]
            delta = s.derivative(a) * (s(a) - h[i])           # D_{s_i} (f_i - h_i), (B, n_i)
            scale = -gate_w * self.layer_rates[i - 1] / batch
            rates["W"].append(scale * delta.T @ h[i - 1])
            rates["b"].append(None if P["b"][i - 1] is None else scale * delta.sum(0))
        if "Q" in P:
            rates["Q"] = self._feedback_rates(t, h, drive, P)
        return rates

    def _feedback_rates(self, t, h, drive, P):
        """(6.26): ``-eta_inv [(g_i(h_{i+1}) - h_i) t_i(h_{i+1})^T + lambda Q_i]``."""
        gate_q = drive.gate("plastic_Q", t)
        out = []
        for i in range(1, self.depth):
            data = self.pathways.feedback_gradient(i, h[i + 1], h[i], P) / drive.batch_size
            out.append(-gate_q * self.eta_inv * (data + self.weight_decay * P["Q"][i - 1]))
        return out


def _layer_rates(eta, depth, mu, compensate):
    rates = list(eta) if isinstance(eta, (list, tuple)) else [eta] * depth
    if len(rates) != depth:
        raise ValueError(f"eta must be a scalar or a list of {depth} rates; got {len(rates)}")
    rates = [check_range("eta", r, low=0.0) for r in rates]
    if compensate:
        ratio = (1 - mu) / mu
        rates = [r * ratio ** (depth + 1 - i) for i, r in enumerate(rates, start=1)]
    return rates
