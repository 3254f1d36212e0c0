"""Base of the models whose somata mix basal and apical drive (SPEC §2.1–2.2, thesis 6.1)::

    tau dh_i/dt = -h_i + (1-mu) f_i(h_{i-1}) + mu g_i(h_{i+1}),   i = 1..L,  0 < mu < 0.5

with ``g_L = h_L^trgt`` the teaching signal, gated by ``teach(t)``. A concrete model (the
mixture model, the two-phase DTP network) adds its own state variables and plasticity; the
shared pieces live here: the pathways ``f_i``, ``g_i`` with ``W, b, Q``, the somatic rates,
the forward pass, and the two plasticity templates::

    dW_i/dt = -eta_i D_{s_i} e_i h_{i-1}^T          (6.17 with e_i = f_i - h_i; 6.35 with z_i - h_i)
    dQ_i/dt = -eta_inv [ (g_i(h_{i+1}) - h_i) t_i(h_{i+1})^T + lambda Q_i ]        (6.26, 6.37)

batch-averaged over the copies of the network that share synapses. Gates ``plastic_W`` and
``plastic_Q`` (default 1) switch them.
"""
from __future__ import annotations

import torch

from .errors import check_range
from .layout import Layout
from .model import NetworkModel
from .pathways import Pathways

__all__ = ["MixingNetwork", "layer_rates"]


class MixingNetwork(NetworkModel):
    """Shared machinery of the mixing models; ``variables`` names the state blocks beyond
    ``"h"`` (each one block per layer, e.g. ``("z",)`` for a slow trace)."""

    plastic_params = ("W", "b", "Q")
    picard_relaxation = False   # the layer sweep
    gates_per_example = True    # gates enter as factors of the teaching signal and rates

    def __init__(self, sizes, mu, tau, feedback, transfer, slope, bias, seed, dtype, device,
                 form, feedback_gain, eta, eta_inv, weight_decay, compensate_decay,
                 init_threshold, variables=()):
        self.mu, self.tau = mu, tau
        self.eta, self.eta_inv, self.weight_decay = eta, eta_inv, weight_decay
        self.compensate_decay = bool(compensate_decay)
        self.pathways = Pathways(sizes, transfer, slope, bias, feedback, form, feedback_gain,
                                 seed, dtype, device, init_threshold)
        self.sizes, self.dtype, self.device = self.pathways.sizes, dtype, torch.device(device)
        self.params = self.pathways.params
        self.layout = Layout({name: self.sizes[1:] for name in ("h",) + tuple(variables)})
        self._validate()

    def _validate(self):
        check_range("mu", self.mu, low=0.0, high=0.5, low_open=True, high_open=True)
        check_range("tau", self.tau, low=0.0, low_open=True)
        self.layer_rates = layer_rates(self.eta, self.depth, self.mu, self.compensate_decay)
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

    # -- dynamics ---------------------------------------------------------------------------
    def basal(self, h, P):
        """``[f_1(x), ..., f_L(h_{L-1})]`` for ``h = [x, h_1, ..., h_L]``  (6.2)."""
        return [self.pathways.forward(i, h[i - 1], P) for i in range(1, self.depth + 1)]

    def apical(self, t, h, drive, P):
        """``[g_1(h_2), ..., g_{L-1}(h_L), h_L^trgt]``; the teaching signal is gated by
        ``teach`` (``h_L`` when off: the output is short-circuited, (6.29))."""
        teach = drive.gate("teach", t)
        return [self._apical(i, h, drive, P, teach) for i in range(1, self.depth + 1)]

    def _apical(self, i, h, drive, P, teach):
        """``g_i(h_{i+1})``, or the gated teaching signal ``h_L^trgt`` for ``i = L`` (``h_L``
        itself while a constant gate is off)."""
        if i < self.depth:
            return self.pathways.feedback_map(i, h[i + 1], P)
        if _off(teach):
            return h[i]
        return drive.teaching.output_target(h[i], teach)

    def field(self, t, y, drive, P):
        """``dh_i/dt`` (6.1), then the rates of the model's other variables
        (:meth:`auxiliary_rates`), in layout order."""
        return self.rates(t, y, drive, P, self.layout.variables)

    def auxiliary_rates(self, t, parts, drive) -> dict:
        """``{variable: per-layer rates}`` of the state variables beyond the activity, from
        the unpacked state ``parts`` (none here; e.g. the two-phase trace)."""
        return {}

    @property
    def _others(self):
        return [v for v in self.layout.variables if v != self.activity]

    def rates(self, t, y, drive, P, variables):
        """As :meth:`NetworkModel.rates`: (6.1) only when the activity is named,
        :meth:`auxiliary_rates` only when another variable is."""
        return self._by_variable(t, y, drive, variables,
                                 lambda h: self.somatic_rates(t, h, drive, P),
                                 lambda v, rate: rate)

    def relaxation(self, t, y, drive, P, step, variables=None):
        """A map whose fixed points are the equilibria: the activity by one :meth:`layer_sweep`,
        the other variables by a Picard step ``v + step dv/dt`` (``variables`` as in
        :meth:`NetworkModel.relaxation`)."""
        return self._by_variable(t, y, drive, self.layout.variables if variables is None
                                 else variables,
                                 lambda h: self.layer_sweep(t, h, drive, P),
                                 lambda v, rate: v + step * rate)

    def _by_variable(self, t, y, drive, variables, activity, other):
        """The blocks of the named ``variables`` in layout order: ``activity([x, h_1, ...,
        h_L])`` for the activity, ``other(v_i, dv_i/dt)`` per layer for the others."""
        parts = self.layout.unpack(y)
        blocks = activity([drive.x] + parts[self.activity]) if self.activity in variables \
            else []
        moving = [v for v in self._others if v in variables]
        if moving:
            rates = self.auxiliary_rates(t, parts, drive)
            blocks += [other(p, r) for v in moving for p, r in zip(parts[v], rates[v])]
        return torch.cat(blocks, dim=-1)

    def layer_sweep(self, t, h, drive, P):
        """One bottom-up sweep of the equilibrium condition of (6.1),
        ``h_i = (1-mu) f_i(h_{i-1}) + mu g_i(h_{i+1})`` for ``i = 1..L``: ``h_{i-1}`` already
        swept, ``h_{i+1}`` (and ``h_L`` in the teaching signal) from before — nonlinear
        Gauss-Seidel, as costly as one field evaluation. Returns ``[h_1, ..., h_L]``.

        Its fixed points are the equilibria of (6.1). A Picard step (Jacobi) mixes the error of
        every layer with both neighbours' old errors; the sweep feeds each layer the new value
        below it, so the forward (``1-mu``) part of the error is cleared in one sweep and only
        the feedback (``mu``) part lags. With the output short-circuited (``teach`` off) the top
        layer's own equation is solved exactly (:meth:`_output_update`; 4 % fewer sweeps on the
        digits network).
        """
        h, teach = list(h), drive.gate("teach", t)
        for i in range(1, self.depth + 1):
            f = self.pathways.forward(i, h[i - 1], P) if i > 1 else drive.remember(
                "basal_1", (P["W"][0], P["b"][0]), lambda: self.pathways.forward(1, h[0], P))
            h[i] = self._output_update(f, h, drive, P, teach) if i == self.depth else \
                torch.lerp(f, self._apical(i, h, drive, P, teach), self.mu)
        return h[1:]

    def _output_update(self, f, h, drive, P, teach):
        """The top layer's sweep update ``(1-mu) f_L + mu h_L^trgt``; where the output is
        short-circuited (``teach`` 0, also per example) its own equation
        ``h_L = (1-mu) f_L + mu h_L`` is solved exactly, ``h_L = f_L``."""
        if _off(teach):
            return f
        mixed = torch.lerp(f, self._apical(self.depth, h, drive, P, teach), self.mu)
        if isinstance(teach, torch.Tensor) and teach.dim() > 0:
            return torch.where(teach == 0, f, mixed)
        return mixed

    def somatic_rates(self, t, h, drive, P):
        """``dh_i/dt = (-h_i + (1-mu) f_i(h_{i-1}) + mu g_i(h_{i+1})) / tau``  (6.1)."""
        f, g = self.basal(h, P), self.apical(t, h, drive, P)
        return [(torch.lerp(fi, gi, self.mu) - hi) / self.tau for hi, fi, gi in zip(h[1:], f, g)]

    def forward_pass(self, x, P):
        """``[f_1(x), f_2(f_1(x)), ...]`` — the free equilibrium with exact inverses (§6.4)."""
        h = [x]
        for i in range(1, self.depth + 1):
            h.append(self.pathways.forward(i, h[-1], P))
        return h[1:]

    # -- plasticity templates ---------------------------------------------------------------
    def forward_rates(self, t, h, errors, drive, P):
        """``dW_i/dt = -eta_i <D_{s_i} e_i h_{i-1}^T>`` and ``db_i/dt = -eta_i <D_{s_i} e_i>``
        for ``errors = [e_1, ..., e_L]``, ``D_{s_i}`` at ``W_i h_{i-1} + b_i``."""
        gate = drive.gate("plastic_W", t)
        if _off(gate):
            return {"W": [None] * self.depth, "b": [None] * self.depth}
        rates = {"W": [], "b": []}
        for i, e in enumerate(errors, start=1):
            a = self.pathways.preactivation(i, h[i - 1], P)
            delta = self.pathways.transfers[i - 1].derivative(a) * e
            scale = -gate * self.layer_rates[i - 1] / drive.batch_size
            rates["W"].append(scale * delta.T @ h[i - 1])
            rates["b"].append(None if P["b"][i - 1] is None else scale * delta.sum(0))
        return rates

    def feedback_rates(self, t, h, drive, P):
        """(6.26)/(6.37): ``-eta_inv [(g_i(h_{i+1}) - h_i) t_i(h_{i+1})^T + lambda Q_i]``
        (inverse form; the classic form uses the chain rule, ``Pathways.feedback_gradient``)."""
        gate = drive.gate("plastic_Q", t)
        if _off(gate):
            return [None] * (self.depth - 1)
        out = []
        for i in range(1, self.depth):
            data = self.pathways.feedback_gradient(i, h[i + 1], h[i], P) / drive.batch_size
            out.append(-gate * self.eta_inv * (data + self.weight_decay * P["Q"][i - 1]))
        return out


def _off(gate) -> bool:
    """A gate that is a plain number 0: the rule is switched off, its rates are ``None`` (zero,
    not evaluated)."""
    return isinstance(gate, (int, float)) and gate == 0


def layer_rates(eta, depth, mu, compensate):
    """Per-layer forward rates ``eta_i``, optionally ``* ((1-mu)/mu)^(L+1-i)`` (thesis §6.4)."""
    rates = list(eta) if isinstance(eta, (list, tuple)) else [eta] * depth
    if len(rates) != depth:
        raise ValueError(f"eta must be a scalar or a list of {depth} rates; got {len(rates)}")
    rates = [check_range("eta", r, low=0.0) for r in rates]
    if compensate:
        ratio = (1 - mu) / mu
        rates = [r * ratio ** (depth + 1 - i) for i, r in enumerate(rates, start=1)]
    return rates
