"""Two-phase difference-target-propagation network — thesis §6.6.

Neural dynamics: the mixture ODE (6.1) for the somatic rates, plus a slow trace ``z_i`` per
layer that remembers the free-phase equilibrium into the learning phase::

    tau dh_i/dt = -h_i + (1-mu) f_i(h_{i-1}) + mu g_i(h_{i+1}),   i = 1..L              (6.1)
    T_z dz_i/dt = trace(t) (h_i - z_i)                                     (trace; docs/derivations.md §1)

with ``g_L = h_L^trgt``: ``h_L`` while ``teach(t) = 0`` (free phase, output short-circuited,
(6.29)) and the nudged target ``h_L - eta_hat dLoss/dh_L`` while ``teach(t) = 1`` (learning
phase, (6.10)). During the free phase (``trace = 1``) ``z_i`` relaxes to the free equilibrium
``h^f_i``; during the learning phase (``trace = 0``) it holds that value while ``h_i`` moves to
the learning-phase equilibrium ``h^l_i``.

Plasticity, gated by phase (batch-averaged over the copies of the network sharing synapses)::

    dW_i/dt = -plastic_W(t) eta_i D^l_{s_i} (z_i - h_i) h_{i-1}^T                  (6.35) [fix]
    db_i/dt = -plastic_W(t) eta_i D^l_{s_i} (z_i - h_i)                         (bias, same rule)
    dQ_i/dt = -plastic_Q(t) eta_inv [ (g_i(h_{i+1}) - h_i) t_i(h_{i+1})^T + lambda Q_i ]  (6.37)

``D^l_{s_i} = diag(s_i'(W_i h_{i-1} + b_i))`` at the current (learning-phase) activity. The
printed (6.35) has ``h^f_{i-1}``; the layer-``i`` free value ``z_i = h^f_i`` is meant
(docs/derivations.md §1). (6.37) prints ``eta_i lambda Q_i``; ``eta_inv lambda Q_i`` is used.
The intended gating is :meth:`TwoPhaseDTP.default_schedule` (``Schedule.two_phase``): ``Q``
learns in the free phase, ``W`` in the learning phase; to first order in ``mu`` the
reconstruction errors of (6.31) and (6.33) cancel in ``z_i - h^l_i``, leaving (6.36)::

    z_i - h^l_i ~ eta_hat (mu/(1-mu))^(L+1-i) [prod_{k=i}^{L-1} J_{g_k}] e_L,  e_L = dLoss/dh_L
"""
from __future__ import annotations

import torch

from dendrite_sim.errors import check_range
from dendrite_sim.families.mixing import MixingNetwork, relax
from dendrite_sim.learning.schedule import Schedule

__all__ = ["TwoPhaseDTP"]


class TwoPhaseDTP(MixingNetwork):
    """The two-phase DTP network of thesis §6.6 (state ``{"h": sizes[1:], "z": sizes[1:]}``).

    Parameters
    ----------
    sizes : ``[n_0, n_1, ..., n_L]``.
    mu : mixing coefficient in (0, 0.5).
    tau : neural time constant, > 0.
    feedback : ``"learned"`` (``g_i = Q_i t_i``, default) or ``"exact"`` (``g_i = f_{i+1}^{-1}``,
        equal sizes; ``Q`` does not exist and only ``W, b`` learn).
    transfer, slope, bias, form, feedback_gain : as in :class:`dendrite_sim.families.pathways.Pathways`.
    eta : forward learning rate of (6.35), scalar or one per layer, >= 0.
    eta_inv, weight_decay : feedback learning rate and ``lambda`` of (6.37), >= 0.
    trace_tau : ``T_z`` of the trace, > 0 (it must be short against the free phase so that
        ``z`` reaches ``h^f``; holding is done by the ``trace`` gate, not by ``T_z``).
    compensate_decay : multiply ``eta_i`` by ``((1-mu)/mu)^(L+1-i)`` (thesis §6.4).
    phase_duration : default length of each phase in :meth:`default_schedule`, > 0
        (default ``20 * max(tau, trace_tau)``).
    seed, dtype, device, init_threshold : initialisation (robustly invertible ``W``,
        ``Q_i = W_{i+1}^+``).
    """

    #: state variables that relax slowly and linearly (closed form in quasi-static learning)
    slow_variables = ("z",)

    def __init__(self, sizes, mu=0.1, tau=1.0, feedback="learned", transfer="leaky_relu",
                 slope=0.1, bias=False, seed=0, dtype=torch.float32, device="cpu",
                 form="inverse", feedback_gain=1.0, eta=0.01, eta_inv=0.01, weight_decay=0.0,
                 trace_tau=1.0, compensate_decay=False, phase_duration=None,
                 init_threshold=0.4):
        self.trace_tau, self.phase_duration = trace_tau, phase_duration
        super().__init__(sizes, mu, tau, feedback, transfer, slope, bias, seed, dtype, device,
                         form, feedback_gain, eta, eta_inv, weight_decay, compensate_decay,
                         init_threshold, variables=("z",))

    def _validate(self):
        super()._validate()
        check_range("trace_tau", self.trace_tau, low=0.0, low_open=True)
        if self.phase_duration is not None:
            check_range("phase_duration", self.phase_duration, low=0.0, low_open=True)

    gates = {**MixingNetwork.gates, "trace": 1.0}

    def auxiliary_time_constants(self) -> dict:
        """``T_z`` of the trace."""
        return {"z": self.trace_tau}

    def default_schedule(self, T_free=None, T_learn=None, sleep=None) -> Schedule:
        """``Schedule.two_phase(T_free, T_learn, sleep)``; phases default to
        ``phase_duration`` (``20 * max(tau, trace_tau)``)."""
        T = self.phase_duration if self.phase_duration is not None else 20.0 * self.time_scale
        return Schedule.two_phase(T if T_free is None else T_free,
                                  T if T_learn is None else T_learn, sleep)

    def traces(self, y):
        """The per-layer trace blocks ``[z_1, ..., z_L]`` of a state ``(..., N)``."""
        return self.layout.unpack(y)["z"]

    def _trace_rate(self, t, drive):
        """``k = trace(t) / T_z``: the trace relaxes as ``dz_i/dt = -k (z_i - h_i)``."""
        return drive.gate("trace", t) / self.trace_tau

    def auxiliary_rates(self, t, parts, drive, without_decay=False):
        """``dz_i/dt = trace(t) (h_i - z_i) / T_z`` (trace; ``without_decay``: ``trace(t) h_i /
        T_z``); the field is ``dh_i/dt`` (6.1) followed by these."""
        rate = self._trace_rate(t, drive)
        return {"z": [relax(rate, zi, hi, without_decay)
                      for hi, zi in zip(parts["h"], parts["z"])]}

    def auxiliary_decay(self, t, drive):
        """The trace's decay rate ``k`` of ``dz_i/dt = -k z_i + k h_i``."""
        return {"z": self._trace_rate(t, drive)}

    def slow_relaxation(self, t, y, drive):
        """The same trace rule, declared: rate ``trace(t) / T_z``, target ``h``."""
        return {"z": (self._trace_rate(t, drive), y[..., self.layout.variable_slice("h")])}

    def initial_state(self, drive, P):
        """Forward pass ``h_i = f_i(h_{i-1})``, and the trace equal to it (``z_i = h_i``)."""
        state = torch.cat(self.forward_pass(drive.x, P), dim=-1)
        return torch.cat([state, state], dim=-1)

    def forward_errors(self, parts, flow):
        """(6.35): ``e_i = z_i - h_i`` (``D^l`` at the current, learning-phase activity);
        ``Q`` follows (6.37)."""
        return [z - hi for z, hi in zip(parts["z"], parts["h"])]
