"""Base of the models whose somata mix basal and apical drive (thesis §6.3–6.6, eq. 6.1)::

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

import copy
import warnings

import torch

from dendrite_sim.errors import check_bool, check_range
from dendrite_sim.dynamics.layout import Layout
from dendrite_sim.dynamics.model import NetworkModel
from dendrite_sim.families.pathways import Pathways

#: above this mu the feedback nearly balances the feed-forward drive (a warning says so)
MU_WARN = 0.45

__all__ = ["MixingNetwork", "Flow", "layer_rates", "relax"]


class MixingNetwork(NetworkModel):
    """Shared machinery of the mixing models; ``variables`` names the state blocks beyond
    ``"h"`` (each one block per layer, e.g. ``("z",)`` for a slow trace)."""

    #: ``b`` follows ``W`` (the biases learn by the forward rule)
    plastic_groups = {"W": ("W", "b"), "Q": ("Q",)}
    gates = {"teach": 1.0, "plastic_W": 1.0, "plastic_Q": 1.0}
    forward_params = ("W", "b")
    picard_relaxation = False   # the layer sweep
    relaxation_factor = 1.15    # over-relaxed sweeps (SOR; docs/derivations.md §7)
    gates_per_example = True    # gates enter as factors of the teaching signal and rates
    rates_without_decay = True  # (6.1) without -h / tau; the variables' own (auxiliary_rates)
    # (6.26)/(6.37) read the reconstruction error g_i(h_{i+1}) - h_i, of the activity's size;
    # (6.17)/(6.35) read differences of order mu * eta_hat and need the full tolerance
    coarse_rate_groups = ("Q",)

    def __init__(self, sizes, mu, tau, feedback, transfer, slope, bias, seed, dtype, device,
                 form, feedback_gain, eta, eta_inv, weight_decay, compensate_decay,
                 init_threshold, variables=()):
        self.mu, self.tau, self.feedback, self.form = mu, tau, feedback, form
        self.eta, self.eta_inv, self.weight_decay = eta, eta_inv, weight_decay
        self.compensate_decay = check_bool("compensate_decay", compensate_decay)
        self.pathways = Pathways(sizes, transfer, slope, bias, feedback, form, feedback_gain,
                                 seed, dtype, device, init_threshold)
        self.sizes, self.dtype, self.device = self.pathways.sizes, dtype, self.pathways.device
        self.params = self.pathways.params
        self.layout = Layout({name: self.sizes[1:] for name in ("h",) + tuple(variables)})
        self._others = tuple(variables)          # the state variables beyond the activity
        self._validate()

    def _validate(self):
        """Check the hyper-parameters (real numbers in range: ``TypeError`` for a string or a
        bool, ``ValueError`` outside the range) and keep them as floats."""
        self.mu = check_range("mu", self.mu, low=0.0, high=0.5, low_open=True, high_open=True)
        if self.mu > MU_WARN:
            warnings.warn(f"mu = {self.mu:g} is close to 0.5: the feedback nearly balances the "
                          f"feed-forward drive (mu/(1-mu) = {self.mu / (1 - self.mu):.4g}), so "
                          "equilibria are ill-conditioned and relax slowly; mu <= "
                          f"{MU_WARN:g} is safe", RuntimeWarning, stacklevel=4)
        self.tau = check_range("tau", self.tau, low=0.0, low_open=True)
        self.compensate_decay = check_bool("compensate_decay", self.compensate_decay)
        self.layer_rates = layer_rates(self.eta, self.depth, self.mu, self.compensate_decay)
        self.eta_inv = check_range("eta_inv", self.eta_inv, low=0.0)
        self.weight_decay = check_range("weight_decay", self.weight_decay, low=0.0)

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
        """``c`` in ``g = c * inverse`` (a hyper-parameter ``replace`` and continuation can
        change: setting it gives the model its own copy of the pathways)."""
        return self.pathways.feedback_gain

    @feedback_gain.setter
    def feedback_gain(self, value):
        self.pathways = copy.copy(self.pathways)
        self.pathways.feedback_gain = check_range("feedback_gain", value)

    @property
    def time_constants(self) -> dict:
        """``tau`` for the activity (6.1); the other variables declare theirs
        (:meth:`auxiliary_time_constants`)."""
        return {"h": self.tau, **self.auxiliary_time_constants()}

    def linear_decay(self, t, drive):
        """``1 / tau`` for the activity, whose field (6.1) is ``-h / tau`` plus the mixed
        drives; the other variables declare theirs (:meth:`auxiliary_decay`; 0 where not)."""
        rates = {self.activity: 1.0 / self.tau, **self.auxiliary_decay(t, drive)}
        return self.layout.columns(rates, self.dtype, self.device)

    def auxiliary_decay(self, t, drive) -> dict:
        """``{variable: k}`` of the variables beyond the activity whose field is ``-k v`` plus
        terms free of ``v`` (none here)."""
        return {}

    def auxiliary_time_constants(self) -> dict:
        """``{variable: time constant}`` of the variables beyond the activity (none here)."""
        return {}

    @property
    def layer_transfers(self):
        return self.pathways.transfers

    def prepare(self, params):
        return self.pathways.prepare(params)

    def forward_layers(self, params, x):
        """``[x, h_1, ..., h_L]`` of the forward pass ``h_i = f_i(h_{i-1})`` (6.2)."""
        return [x] + self.forward_pass(x, params)

    def forward(self, params, x):
        """The forward pass' output ``f_L(... f_1(x))``: the free equilibrium with exact
        inverses (§6.4), and the network the backprop baseline trains."""
        return self.forward_pass(x, params)[-1]

    # -- dynamics ---------------------------------------------------------------------------
    def flow(self, h, P) -> "Flow":
        """The pathway quantities of ``h = [x, h_1, ..., h_L]``, each computed once."""
        return Flow(self.pathways, h, P)

    def apical(self, t, h, drive, P):
        """``[g_1(h_2), ..., g_{L-1}(h_L), h_L^trgt]``; the teaching signal is gated by
        ``teach`` (``h_L`` when off: the output is short-circuited, (6.29))."""
        return self._apicals(t, self.flow(h, P), drive)

    def _apicals(self, t, flow, drive):
        teach = drive.gate("teach", t)
        return [flow.feedback(i) for i in range(1, self.depth)] + \
            [self._output_target(flow.h, drive, teach)]

    def _output_target(self, h, drive, teach):
        """The gated teaching signal ``h_L^trgt`` (``h_L`` itself while a constant gate is
        off)."""
        if _off(teach):
            return h[self.depth]
        return drive.teaching.output_target(h[self.depth], teach)

    def field(self, t, y, drive, P):
        """``dh_i/dt`` (6.1), then the rates of the model's other variables
        (:meth:`auxiliary_rates`), in layout order."""
        return self.rates(t, y, drive, P, self.layout.variables)

    def auxiliary_rates(self, t, parts, drive, without_decay=False) -> dict:
        """``{variable: per-layer rates}`` of the state variables beyond the activity, from
        the unpacked state ``parts`` (none here; e.g. the two-phase trace); ``without_decay``:
        the rates plus the variable's :meth:`auxiliary_decay` times its value."""
        return {}

    def rates(self, t, y, drive, P, variables):
        """As :meth:`NetworkModel.rates`: (6.1) only when the activity is named,
        :meth:`auxiliary_rates` only when another variable is."""
        parts = self.layout.unpack(y)
        return self._rates(t, parts, drive, variables, self.flow([drive.x] + parts["h"], P))

    def _rates(self, t, parts, drive, variables, flow, without_decay=False):
        return self._by_variable(t, parts, drive, variables,
                                 lambda h: self._somatic(t, flow, drive, without_decay),
                                 lambda v, value, rate: rate, without_decay)

    def plasticity(self, t, y, drive, P):
        """The rates of ``W, b`` and ``Q`` (:meth:`plastic_rates`)."""
        parts = self.layout.unpack(y)
        return self.plastic_rates(t, parts, self.flow([drive.x] + parts["h"], P), drive)

    def field_and_plasticity(self, t, y, drive, params, without_decay=False):
        """The field (``without_decay``: plus :meth:`linear_decay` times ``y``) and the
        plasticity from one :class:`Flow`: the rules reuse the field's pre-activations and
        feedback maps. The feedback bias is not folded (``Pathways.prepare``): with
        parameters that change at every evaluation it would cost a matrix-vector product
        per layer to save a subtraction."""
        parts = self.layout.unpack(y)
        flow = self.flow([drive.x] + parts["h"], self.pathways.prepare(params, fold_bias=False))
        return (self._rates(t, parts, drive, self.layout.variables, flow, without_decay),
                self.plastic_rates(t, parts, flow, drive))

    def plastic_rates(self, t, parts, flow, drive) -> dict:
        """``{name: per-layer rates}`` from the unpacked state and its :class:`Flow`:
        :meth:`forward_rates` with the model's :meth:`forward_errors`, and
        :meth:`feedback_rates` for learned feedback."""
        rates = self.forward_rates(t, flow, lambda: self.forward_errors(parts, flow), drive)
        if "Q" in flow.P:
            rates["Q"] = self.feedback_rates(t, flow, drive)
        return rates

    def forward_errors(self, parts, flow) -> list:
        """``[e_1, ..., e_L]``, the errors the forward rule (6.17)/(6.35) moves ``W`` by."""
        raise NotImplementedError(f"{type(self).__name__} has no forward plasticity rule")

    def relaxation(self, t, y, drive, P, variables=None):
        """A map whose fixed points are the equilibria: the activity by one :meth:`layer_sweep`,
        each other variable by a Picard step over its own time constant, ``v + T_v dv/dt``
        (``variables`` as in :meth:`NetworkModel.relaxation`)."""
        steps = self.time_constants
        return self._by_variable(t, self.layout.unpack(y), drive,
                                 self.layout.variables if variables is None else variables,
                                 lambda h: self.layer_sweep(t, h, drive, P),
                                 lambda v, value, rate: value + steps[v] * rate)

    def activity_relaxation(self, t, h, drive, P):
        """One :meth:`layer_sweep` from the activity's columns alone (the activity never reads
        the other variables)."""
        layers = torch.split(h, self.sizes[1:], dim=-1)
        return torch.cat(self.layer_sweep(t, [drive.x, *layers], drive, P), dim=-1)

    def _by_variable(self, t, parts, drive, variables, activity, other, without_decay=False):
        """The blocks of the named ``variables`` of the unpacked state ``parts`` in layout
        order: ``activity([x, h_1, ..., h_L])`` for the activity, ``other(v_i, dv_i/dt)`` per
        layer for the others (their rates without decay if asked)."""
        blocks = activity([drive.x] + parts[self.activity]) if self.activity in variables \
            else []
        moving = [v for v in self._others if v in variables]
        if moving:
            rates = self.auxiliary_rates(t, parts, drive, without_decay)
            blocks += [other(v, p, r) for v in moving for p, r in zip(parts[v], rates[v])]
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
        layer's own equation is solved exactly (:meth:`_output_update`).
        """
        h, teach = list(h), drive.gate("teach", t)
        for i in range(1, self.depth + 1):
            f = self.pathways.forward(i, h[i - 1], P) if i > 1 else drive.remember(
                "basal_1", (P["W"][0], P["b"][0]), lambda: self.pathways.forward(1, h[0], P))
            h[i] = self._output_update(f, h, drive, teach) if i == self.depth else \
                torch.lerp(f, self.pathways.feedback_map(i, h[i + 1], P), self.mu)
        return h[1:]

    def _output_update(self, f, h, drive, teach):
        """The top layer's sweep update ``(1-mu) f_L + mu h_L^trgt``; where the output is
        short-circuited (``teach`` 0, also per example) its own equation
        ``h_L = (1-mu) f_L + mu h_L`` is solved exactly, ``h_L = f_L``."""
        if _off(teach):
            return f
        mixed = torch.lerp(f, self._output_target(h, drive, teach), self.mu)
        if isinstance(teach, torch.Tensor) and teach.dim() > 0:
            return torch.where(teach == 0, f, mixed)
        return mixed

    def _somatic(self, t, flow, drive, without_decay=False):
        """``dh_i/dt = (-h_i + (1-mu) f_i(h_{i-1}) + mu g_i(h_{i+1})) / tau``  (6.1), without
        the leak ``-h_i / tau`` if ``without_decay``."""
        g = self._apicals(t, flow, drive)
        mixed = [torch.lerp(flow.basal(i), gi, self.mu) for i, gi in enumerate(g, start=1)]
        if not without_decay:
            mixed = [m - hi for m, hi in zip(mixed, flow.h[1:])]
        return [per_time(m, self.tau) for m in mixed]

    def forward_pass(self, x, P):
        """``[f_1(x), f_2(f_1(x)), ...]`` — the free equilibrium with exact inverses (§6.4)."""
        h = [x]
        for i in range(1, self.depth + 1):
            h.append(self.pathways.forward(i, h[-1], P))
        return h[1:]

    # -- diagnostics of target propagation ----------------------------------------------------
    def learning_diagnostics(self, params, x, free, nudged):
        """Per layer, from the free and nudged equilibria (thesis §6.5–6.6):

        * ``useful_signal``: batch mean of ``||d^n_i - d^f_i||``, ``d_i = h_i - f_i(h_{i-1})``
          the deviation from the forward map at the nudged and free equilibria (the learning
          signal, (6.16), (6.36));
        * ``recon_deviation``: batch mean of ``||d^f_i||``, what reconstruction errors alone
          put there ((6.20)–(6.22));
        * ``recon_error``: batch mean of ``||g_i(f_{i+1}(h_i)) - h_i||`` at the free equilibrium
          (``i < L``; ~0 for exact inverses);
        * ``q_distance``: ``||Q_i - W_{i+1}^+||_F / ||W_{i+1}^+||_F`` (learned feedback).
        """
        P, nan = self.prepare(params), float("nan")
        hf = [x] + self.layers(free)
        hn = [x] + self.layers(nudged)
        dev_f = [hf[i] - self.pathways.forward(i, hf[i - 1], P) for i in range(1, self.depth + 1)]
        dev_n = [hn[i] - self.pathways.forward(i, hn[i - 1], P) for i in range(1, self.depth + 1)]
        out = {"useful_signal": [_mean_norm(dn - df) for dn, df in zip(dev_n, dev_f)],
               "recon_deviation": [_mean_norm(df) for df in dev_f],
               "recon_error": [_mean_norm(self.pathways.feedback_map(
                   i, self.pathways.forward(i + 1, hf[i], P), P) - hf[i])
                   for i in range(1, self.depth)] + [nan]}
        if params.get("Q") is not None:
            pinv = [torch.linalg.pinv(w) for w in params["W"][1:]]
            out["q_distance"] = [float((q - p).norm() / p.norm())
                                 for q, p in zip(params["Q"], pinv)] + [nan]
        return out

    # -- plasticity templates ---------------------------------------------------------------
    def forward_rates(self, t, flow, errors, drive):
        """``dW_i/dt = -eta_i <D_{s_i} e_i h_{i-1}^T>`` and ``db_i/dt = -eta_i <D_{s_i} e_i>``
        for ``errors() = [e_1, ..., e_L]`` (called only while the rule is on), ``D_{s_i}`` at
        ``a_i = W_i h_{i-1} + b_i``."""
        gate = drive.gate("plastic_W", t)
        if _off(gate):
            return {"W": [None] * self.depth, "b": [None] * self.depth}
        rates, h, per_example = {"W": [], "b": []}, flow.h, -gate / drive.batch_size
        for i, e in enumerate(errors(), start=1):
            delta = self.pathways.transfers[i - 1].backprop(
                flow.preactivation(i), e * (per_example * self.layer_rates[i - 1]))
            rates["W"].append(torch.mm(delta.t(), h[i - 1]))
            rates["b"].append(None if flow.P["b"][i - 1] is None else delta.sum(0))
        return rates

    def feedback_rates(self, t, flow, drive):
        """(6.26)/(6.37): ``-eta_inv [(g_i(h_{i+1}) - h_i) t_i(h_{i+1})^T + lambda Q_i]``
        (inverse form; the classic form uses the chain rule, ``Pathways.feedback_gradient``)."""
        gate = drive.gate("plastic_Q", t)
        if _off(gate):
            return [None] * (self.depth - 1)
        out, h, Q = [], flow.h, flow.P["Q"]
        scale = -gate * self.eta_inv
        for i in range(1, self.depth):
            out.append(self.pathways.feedback_gradient(
                i, h[i + 1], h[i], flow.P, parts=flow.feedback_parts(i),
                scale=scale / drive.batch_size, decay=(Q[i - 1], scale * self.weight_decay)))
        return out


class Flow:
    """The pathway quantities of one batch of states ``h = [x, h_1, ..., h_L]`` under
    prepared parameters ``P``, each computed on first use and kept: pre-activations
    ``a_i = W_i h_{i-1} + b_i``, basal drives ``f_i = s_i(a_i)`` (6.2) and feedback maps
    ``g_i(h_{i+1})`` with their intermediates (``Pathways.feedback_parts``). The field (6.1)
    and the plasticity rules of one evaluation read the same ones. ``h`` must not change
    while the flow is in use (the layer sweep, which updates ``h`` layer by layer, calls the
    pathways directly)."""

    def __init__(self, pathways, h, P):
        self.pathways, self.h, self.P = pathways, h, P
        self._pre, self._basal, self._feedback = {}, {}, {}

    def preactivation(self, i):
        if i not in self._pre:
            self._pre[i] = self.pathways.preactivation(i, self.h[i - 1], self.P)
        return self._pre[i]

    def basal(self, i):
        if i not in self._basal:
            self._basal[i] = self.pathways.transfers[i - 1](self.preactivation(i))
        return self._basal[i]

    def feedback_parts(self, i):
        if i not in self._feedback:
            self._feedback[i] = self.pathways.feedback_parts(i, self.h[i + 1], self.P)
        return self._feedback[i]

    def feedback(self, i):
        """``g_i(h_{i+1})`` with the pathways' gain ``c``."""
        g, c = self.feedback_parts(i)[0], self.pathways.feedback_gain
        return g if c == 1.0 else c * g


def _mean_norm(v: torch.Tensor) -> float:
    return float(v.norm(dim=-1).mean())


def per_time(change: torch.Tensor, time_constant) -> torch.Tensor:
    """``change / time_constant`` (the division skipped for the common unit constant)."""
    return change if _is(time_constant, 1) else change / time_constant


def relax(rate, value: torch.Tensor, target: torch.Tensor,
          without_decay=False) -> torch.Tensor:
    """``dv/dt = rate (target - v)`` (``without_decay``: ``rate target``, the rate without its
    linear decay ``-rate v``), sparing the operations of a plain-number rate 0 (a held
    variable) or 1."""
    if _is(rate, 0):
        return torch.zeros_like(value)
    change = target if without_decay else target - value
    return change if _is(rate, 1) else rate * change


def _is(number, value) -> bool:
    return isinstance(number, (int, float)) and number == value


def _off(gate) -> bool:
    """A gate that is a plain number 0: the rule is switched off, its rates are ``None`` (zero,
    not evaluated)."""
    return _is(gate, 0)


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
