"""Multiplexing network — thesis §6.9 (biology §2.1.2, §2.1.4); derivations in
docs/multiplexing.md.

Every neuron has a basal and an apical compartment with their own voltages, and sends two
signals down one axon: an event rate ``h_i`` (feed-forward, read by basal synapses) and a
burst probability ``p_i`` (feedback, read by apical synapses)::

    tau_b da^b_i/dt = -a^b_i + W_i h_{i-1} + b_i        h_i = s_i(a^b_i)     (6.43, 6.45)
    tau_a da^a_i/dt = -a^a_i + Q_i p_{i+1}              p_i = t_i(a^a_i)     (6.44, 6.46)

for ``i = 1..L`` (basal) and ``i = 1..L-1`` (apical); ``h_0 = x``. The output burst
probability is the teaching signal, gated by ``teach(t)`` (6.51, 6.54)::

    p_L = h_L                                   (free phase: short-circuited)
    p_L = clip(h_L - eta_hat dLoss/dh_L)        (learning phase: nudged; clipped to the range
                                                 of s_L, where burst probabilities live)

The two paths are decoupled: event rates are the same in both phases and the equilibria are
the forward pass ``h_i = s_i(W_i h_{i-1} + b_i)`` and the chain ``p_i = g_i(p_{i+1}) =
t_i(Q_i p_{i+1})`` (6.47–6.50). A slow trace remembers the free-phase burst probability,
``T_z dz_i/dt = trace(t) (p_i - z_i)`` (as the two-phase network's trace), and plasticity is
gated by phase (batch-averaged over the copies of the network that share synapses)::

    dW_i/dt = -plastic_W(t) eta_i D_{s_i} (z_i - p_i) h_{i-1}^T        (6.58) [fix: p^f_i]
    db_i/dt = -plastic_W(t) eta_i D_{s_i} (z_i - p_i)                  (bias, same rule)
    dQ_i/dt = -plastic_Q(t) eta_inv [D_{t_i} (p_i - h_i) p_{i+1}^T + lambda Q_i]

``D_{s_i} = diag s_i'(a^b_i)`` and ``D_{t_i} = diag t_i'(a^a_i)`` at the neuron's own
voltages. The printed (6.58) has ``p^f_{i-1}``; the layer-``i`` free value is meant. In the
learning phase ``z_i - p_i = p^f_i - p^l_i ~ eta_hat [prod_{k=i}^{L-1} J_{g_k}] e_L``: the
reconstruction errors of (6.53) and (6.57) cancel and no ``(mu/(1-mu))^(L+1-i)`` decay appears
(6.59). The defaults (identity ``t_i``, ``Q_i = (s_{i+1}'(0) W_{i+1})^+``) make ``J_{g_i} =
Q_i ~ J_{f_{i+1}}^{-1}`` at the centre of ``s``, so no transfer-dependent decay appears either
(a sigmoid ``t_i`` with ``Q_i = W_{i+1}^T`` shrinks the signal by ``t' <= 1/4`` per layer;
docs/multiplexing.md §2). The ``Q`` rule (free phase) moves each neuron's burst probability toward its own
event rate, the gradient of ``1/2 ||t_i(Q_i p_{i+1}) - h_i||^2``; its fixed point is the chain
``p_i = h_i``, i.e. ``g_i`` inverts ``f_{i+1}`` on the data (docs/multiplexing.md).

``decoding=True`` (beyond the thesis): the basal synapses read the presynaptic event rate
through short-term depression and the apical synapses read the burst probability through
short-term facilitation with divisive normalisation
(:mod:`dendrite_sim.dynamics.synapses`); their states join the layout. At equilibrium the
decoders return ``h`` and ``p h / (h + eps)``.
"""
from __future__ import annotations

import torch

from dendrite_sim.dynamics.layout import Layout
from dendrite_sim.dynamics.model import NetworkModel
from dendrite_sim.dynamics.synapses import DepressingSynapse, FacilitatingSynapse, Multiplexed
from dendrite_sim.dynamics.transfer import make_transfer
from dendrite_sim.errors import check_range
from dendrite_sim.families.mixing import layer_rates
from dendrite_sim.families.pathways import _check_sizes
from dendrite_sim.learning.schedule import Schedule

__all__ = ["Multiplexing"]

FEEDBACK_INITS = ("inverse", "damped", "transpose", "random", "pinv")


class Multiplexing(NetworkModel):
    """The multiplexing network of thesis §6.9 (module docstring).

    State ``{"ab": sizes[1:], "aa": sizes[1:-1], [synapse states], "z": sizes[1:]}``: basal
    voltages (the activity variable), apical voltages, with ``decoding`` the synapses'
    decoders (``basal_event`` of layers 1..L-1; ``apical_burst``, ``apical_norm`` of layers
    2..L, listed from 1), and the trace of the free-phase burst probabilities. ``layers(y)``
    and ``output(y)`` return event rates ``h_i = s_i(a^b_i)``.

    Parameters
    ----------
    sizes : ``[n_0, n_1, ..., n_L]``.
    transfer : event-rate transfer ``s_i`` (name or one per layer); default sigmoid, event
        rates normalised to the maximum rate.
    burst_transfer : burst-probability transfer ``t_i`` (name or one per layer ``1..L-1``);
        default identity (unit slope: ``J_{g_i} = Q_i``, no transfer-dependent decay of the
        learning signal; docs/multiplexing.md §2). ``"sigmoid"`` (the earlier default) keeps
        burst probabilities in [0, 1] and is needed with ``decoding``.
    slope : leaky-ReLU negative slope, if used.
    bias : whether basal compartments have biases ``b``.
    tau_basal, tau_apical : time constants of (6.43) and (6.44), > 0.
    trace_tau : ``T_z`` of the trace of the free-phase burst probability, > 0.
    eta : rate of (6.58), scalar or one per layer, >= 0.
    eta_inv, weight_decay : rate and ``lambda`` of the ``Q`` rule, >= 0.
    feedback_init : ``Q_i`` at the start, times ``feedback_scale``, with ``J = s_{i+1}'(0)
        W_{i+1}`` the forward Jacobian at the centre of ``s_{i+1}``: ``"damped"`` (default,
        the Tikhonov-damped inverse ``J^T (J J^T + lambda_i I)^{-1}``, ``lambda_i =
        feedback_damping ||J||_2^2``: ``J_{g_i} J_{f_{i+1}} ~ I`` along the strong directions
        of ``J``, while the gain along the weak ones is capped at ``1 / (2 sqrt(lambda_i))``),
        ``"inverse"`` (``J^+``, whose gain ``1 / s_min`` makes the learning signal of wide
        square layers explode toward the input: docs/multiplexing.md), ``"pinv"``
        (``W_{i+1}^+``), ``"transpose"`` (``W_{i+1}^T``) or ``"random"`` (independent
        Gaussian).
    feedback_damping : ``lambda_i / ||J||_2^2`` of ``"damped"``, > 0.
    decoding : decode through short-term-plastic synapses (module docstring); needs a
        non-negative event-rate transfer and burst transfers with values in [0, 1].
    tau_depression, tau_facilitation : time constants of the basal (depressing) and apical
        (facilitating) decoders, > 0.
    eps : the divisive normalisation's regulariser, > 0.
    phase_duration : length of each phase of :meth:`default_schedule`, > 0.
    seed, dtype, device : initialisation (``W_i`` Gaussian with std ``1/sqrt(n_{i-1})``).
    """

    activity = "ab"
    plastic_groups = {"W": ("W", "b"), "Q": ("Q",)}
    gates = {"teach": 1.0, "plastic_W": 1.0, "plastic_Q": 1.0, "trace": 1.0}
    forward_params = ("W", "b")
    slow_variables = ("z",)
    picard_relaxation = False        # the relaxation map is the exact equilibrium sweep
    # the Q rule reads p_i - h_i, of the activity's size, not a difference between equilibria
    coarse_rate_groups = ("Q",)

    def __init__(self, sizes, transfer="sigmoid", burst_transfer="identity", slope=0.1,
                 bias=True, tau_basal=1.0, tau_apical=1.0, trace_tau=1.0, eta=0.1,
                 eta_inv=0.01, weight_decay=0.0, feedback_init="damped",
                 feedback_scale=1.0, feedback_damping=0.1, decoding=False, tau_depression=0.1,
                 tau_facilitation=0.1, eps=1e-6, phase_duration=20.0, seed=0,
                 dtype=torch.float32, device="cpu"):
        self.sizes = _check_sizes(sizes)
        self.dtype, self.device = dtype, torch.device(device)
        self.transfers = _transfers("transfer", transfer, slope, self.depth)
        self.burst_transfers = _transfers("burst_transfer", burst_transfer, slope,
                                          self.depth - 1)
        self.tau_basal, self.tau_apical, self.trace_tau = tau_basal, tau_apical, trace_tau
        self.eta, self.eta_inv, self.weight_decay = eta, eta_inv, weight_decay
        self.decoding, self.eps = bool(decoding), eps
        self.tau_depression, self.tau_facilitation = tau_depression, tau_facilitation
        self.phase_duration = phase_duration
        if feedback_init not in FEEDBACK_INITS:
            raise ValueError(f"feedback_init must be one of {FEEDBACK_INITS}; "
                             f"got {feedback_init!r}")
        damping = check_range("feedback_damping", feedback_damping, low=0.0, low_open=True)
        self.params = _init_params(self.sizes, bool(bias), feedback_init,
                                   check_range("feedback_scale", feedback_scale), seed, dtype,
                                   self.device, self.transfers, damping)
        self._validate()

    def _validate(self):
        for name in ("tau_basal", "tau_apical", "trace_tau", "tau_depression",
                     "tau_facilitation", "phase_duration", "eps"):
            check_range(name, getattr(self, name), low=0.0, low_open=True)
        check_range("eta_inv", self.eta_inv, low=0.0)
        check_range("weight_decay", self.weight_decay, low=0.0)
        self.layer_rates = layer_rates(self.eta, self.depth, 0.5, False)
        if self.decoding:
            _check_decodable(self.transfers, self.burst_transfers)
        self.synapses = self._synapses()
        widths = {"ab": self.sizes[1:], "aa": self.sizes[1:-1]}
        for synapse in self.synapses:
            widths.update(synapse.variables)
        widths["z"] = self.sizes[1:]
        self.layout = Layout({v: w for v, w in widths.items() if w})

    def _synapses(self):
        """The decoders (basal: depressing, of layers 1..L-1; apical: facilitating, of layers
        2..L), none without ``decoding`` or below two layers."""
        if not self.decoding or self.depth < 2:
            return ()
        return (DepressingSynapse("basal", self.sizes[1:-1], self.tau_depression),
                FacilitatingSynapse("apical", self.sizes[2:], self.tau_facilitation,
                                    self.eps))

    @property
    def time_constants(self) -> dict:
        out = {"ab": self.tau_basal, "aa": self.tau_apical, "z": self.trace_tau}
        for synapse in self.synapses:
            out.update(synapse.time_constants)
        return {v: out[v] for v in self.layout.variables}

    # -- named views ------------------------------------------------------------------------
    @property
    def W(self):
        return self.params["W"]

    @property
    def Q(self):
        return self.params["Q"]

    @property
    def layer_transfers(self):
        return self.transfers

    # -- forward map --------------------------------------------------------------------------
    def forward_layers(self, params, x):
        """``[x, h_1, ..., h_L]`` of ``h_i = s_i(W_i h_{i-1} + b_i)`` (6.49)."""
        h = [x]
        for i in range(1, self.depth + 1):
            h.append(self.transfers[i - 1](self._basal_input(params, i, h[-1])))
        return h

    def forward(self, params, x):
        """The event rate of the top layer at equilibrium (6.49): ``f_L(... f_1(x))``."""
        return self.forward_layers(params, x)[-1]

    def _basal_input(self, P, i, h_prev):
        return torch.nn.functional.linear(h_prev, P["W"][i - 1], P["b"][i - 1])

    # -- readouts ---------------------------------------------------------------------------
    def layers(self, y):
        """Event rates ``[h_1, ..., h_L]``, ``h_i = s_i(a^b_i)`` (6.45)."""
        return [s(a) for s, a in zip(self.transfers, self.layout.unpack(y)["ab"])]

    def output(self, y):
        """The top layer's event rate ``h_L``."""
        return self.transfers[-1](self.layout.unpack(y)["ab"][-1])

    def traces(self, y):
        """The trace blocks ``[z_1, ..., z_L]`` (free-phase burst probabilities)."""
        return self.layout.unpack(y)["z"]

    def burst_probabilities(self, y, drive, t=0.0):
        """``[p_1, ..., p_L]`` at state ``y`` under ``drive`` (``p_L`` is the gated output
        target (6.51, 6.54))."""
        return self._signals(t, self.layout.unpack(y), drive)[1][1:]

    # -- dynamics -----------------------------------------------------------------------------
    def _output_target(self, t, h_L, drive):
        """``p_L``: ``h_L`` while ``teach`` is 0, else the teaching signal, clipped to the
        range of ``s_L`` (6.51, 6.54)."""
        teach = drive.gate("teach", t)
        if isinstance(teach, (int, float)) and teach == 0:
            return h_L
        target = drive.teaching.output_target(h_L, teach)
        low, high = self.transfers[-1].inverse_domain
        return target if low is None and high is None else target.clamp(low, high)

    def _signals(self, t, parts, drive):
        """``(h, p, h_in, p_in)``: event rates ``[x, h_1..h_L]``, burst probabilities
        ``[None, p_1..p_L]``, and what the synapses deliver: basal inputs ``[x, h_1..]``
        (list position ``i-1`` feeds layer ``i``) and apical inputs (position ``i+1`` feeds
        layer ``i``) — the presynaptic values, or their decoded estimates with ``decoding``."""
        h = [drive.x] + [s(a) for s, a in zip(self.transfers, parts["ab"])]
        p = [None] + [tr(a) for tr, a in zip(self.burst_transfers, parts.get("aa", []))]
        p.append(self._output_target(t, h[-1], drive))
        if not self.synapses:
            return h, p, h, p
        basal, apical = self.synapses
        h_in = [drive.x] + [basal.decode(parts, k) for k in range(self.depth - 1)]
        p_in = [None, None] + [apical.decode(parts, k) for k in range(self.depth - 1)]
        return h, p, h_in, p_in

    def field(self, t, y, drive, P):
        """(6.43), (6.44), the synapses' decoders and the trace, in layout order."""
        parts = self.layout.unpack(y)
        h, p, h_in, p_in = self._signals(t, parts, drive)
        rates = {
            "ab": [(self._basal_input(P, i, h_in[i - 1]) - a) / self.tau_basal
                   for i, a in enumerate(parts["ab"], start=1)],
            "aa": [(torch.nn.functional.linear(p_in[i + 1], P["Q"][i - 1]) - a) /
                   self.tau_apical for i, a in enumerate(parts.get("aa", []), start=1)],
            "z": [(drive.gate("trace", t) / self.trace_tau) * (pi - z)
                  for pi, z in zip(p[1:], parts["z"])],
        }
        for synapse in self.synapses:
            rates.update(synapse.rates(parts, self._presynaptic(synapse, h, p)))
        return torch.cat([r for v in self.layout.variables for r in rates[v]], dim=-1)

    def linear_decay(self, t, drive):
        """The leak of each compartment: ``1 / tau_basal`` (``ab``), ``1 / tau_apical``
        (``aa``), ``trace / T_z`` (``z``) of (6.43), (6.44); 0 for the synapses' decoders
        (integrated as they are)."""
        return self.layout.columns({"ab": 1.0 / self.tau_basal, "aa": 1.0 / self.tau_apical,
                                    "z": drive.gate("trace", t) / self.trace_tau},
                                   self.dtype, self.device)

    def _presynaptic(self, synapse, h, p):
        """The :class:`Multiplexed` signals a synapse population reads: layers 1..L-1 for the
        basal decoders, 2..L for the apical ones."""
        layers = range(1, self.depth) if synapse.prefix == "basal" else range(2, self.depth + 1)
        return [Multiplexed(h[j], p[j]) for j in layers]

    def equilibrium(self, t, drive, P):
        """The unpacked equilibrium of every variable but the trace under the gates at ``t``:
        the forward pass (6.47, 6.49), the decoders' steady states, then the burst
        probabilities top-down (6.48, 6.50). Exact: the two chains are acyclic."""
        parts = {"ab": [], "aa": [None] * (self.depth - 1)}
        h = [drive.x]
        basal = self.synapses[0] if self.synapses else None
        for i in range(1, self.depth + 1):
            h_prev = h[-1] if basal is None or i == 1 else \
                basal.decode(basal.steady([Multiplexed(h[-1], h[-1])]), 0)
            parts["ab"].append(self._basal_input(P, i, h_prev))
            h.append(self.transfers[i - 1](parts["ab"][-1]))
        p = [None] * self.depth + [self._output_target(t, h[-1], drive)]
        apical = self.synapses[1] if self.synapses else None
        for i in range(self.depth - 1, 0, -1):
            p_in = p[i + 1] if apical is None else \
                apical.decode(apical.steady([Multiplexed(h[i + 1], p[i + 1])]), 0)
            parts["aa"][i - 1] = torch.nn.functional.linear(p_in, P["Q"][i - 1])
            p[i] = self.burst_transfers[i - 1](parts["aa"][i - 1])
        for synapse in self.synapses:
            parts.update(synapse.steady(self._presynaptic(synapse, h, p)))
        return parts, p

    def relaxation(self, t, y, drive, P, variables=None):
        """The exact equilibrium (:meth:`equilibrium`) for every fast variable, and a Picard
        step ``z + T_z dz/dt`` for the trace (to the burst probability of ``y``)."""
        parts, _ = self.equilibrium(t, drive, P)
        held = self.layout.unpack(y)
        _, p, _, _ = self._signals(t, held, drive)
        follow = drive.gate("trace", t)
        parts["z"] = [z + follow * (pi - z) for pi, z in zip(p[1:], held["z"])]
        names = self.layout.variables if variables is None else \
            [v for v in self.layout.variables if v in variables]
        return torch.cat([b for v in names for b in parts[v]], dim=-1)

    def slow_relaxation(self, t, y, drive):
        """The trace relaxes at rate ``trace(t) / T_z`` toward the burst probabilities."""
        p = self._signals(t, self.layout.unpack(y), drive)[1][1:]
        return {"z": (drive.gate("trace", t) / self.trace_tau, torch.cat(p, dim=-1))}

    def initial_state(self, drive, P):
        """The free-phase equilibrium (output short-circuited), the trace equal to ``p^f``."""
        free = _Ungated(drive)
        parts, p = self.equilibrium(0.0, free, P)
        parts["z"] = p[1:]
        return torch.cat([b for v in self.layout.variables for b in parts[v]], dim=-1)

    # -- plasticity ---------------------------------------------------------------------------
    def plasticity(self, t, y, drive, P):
        """(6.58) [fix] for ``W, b`` and the ``Q`` rule (module docstring), batch-averaged."""
        parts = self.layout.unpack(y)
        h, p, h_in, p_in = self._signals(t, parts, drive)
        return {**self._forward_rates(t, parts, p, h_in, drive, P),
                "Q": self._feedback_rates(t, parts, h, p, p_in, drive, P)}

    def _forward_rates(self, t, parts, p, h_in, drive, P):
        """``dW_i/dt = -eta_i <D_{s_i} (z_i - p_i) h_{i-1}^T>`` (6.58), ``db_i`` alike."""
        gate = drive.gate("plastic_W", t)
        if isinstance(gate, (int, float)) and gate == 0:
            return {"W": [None] * self.depth, "b": [None] * self.depth}
        out = {"W": [], "b": []}
        for i, (a, z) in enumerate(zip(parts["ab"], parts["z"]), start=1):
            scale = -gate * self.layer_rates[i - 1] / drive.batch_size
            delta = self.transfers[i - 1].backprop(a, scale * (z - p[i]))
            out["W"].append(delta.T @ h_in[i - 1])
            out["b"].append(None if P["b"][i - 1] is None else delta.sum(0))
        return out

    def _feedback_rates(self, t, parts, h, p, p_in, drive, P):
        """``dQ_i/dt = -eta_inv [<D_{t_i} (p_i - h_i) p_{i+1}^T> + lambda Q_i]``."""
        gate = drive.gate("plastic_Q", t)
        if isinstance(gate, (int, float)) and gate == 0:
            return [None] * (self.depth - 1)
        out, scale = [], -gate * self.eta_inv
        for i, a in enumerate(parts.get("aa", []), start=1):
            delta = self.burst_transfers[i - 1].backprop(a, p[i] - h[i])
            rate = (delta.T @ p_in[i + 1]) * (scale / drive.batch_size)
            out.append(rate + (scale * self.weight_decay) * P["Q"][i - 1]
                       if self.weight_decay else rate)
        return out

    def default_schedule(self, T_free=None, T_learn=None, sleep=None) -> Schedule:
        """``Schedule.two_phase(T_free, T_learn, sleep)``: free phase (teach off, ``Q``
        plastic, trace follows ``p``), learning phase (teach on, ``W`` plastic, trace holds
        ``p^f``); each phase ``phase_duration`` long unless given."""
        T = self.phase_duration
        return Schedule.two_phase(T if T_free is None else T_free,
                                  T if T_learn is None else T_learn, sleep)


class _Ungated:
    """A drive seen with the output short-circuited (``teach`` 0) and the trace following."""

    def __init__(self, drive):
        self._drive = drive
        self.x, self.teaching = drive.x, drive.teaching

    def gate(self, name, t, default=1.0):
        return 0.0 if name == "teach" else 1.0 if name == "trace" else \
            self._drive.gate(name, t, default)


def _transfers(name, spec, slope, count):
    specs = spec if isinstance(spec, (list, tuple)) else [spec] * count
    if len(specs) != count:
        raise ValueError(f"{name} must be one name or a list of {count} (one per layer); "
                         f"got {len(specs)}")
    return [make_transfer(s, slope) for s in specs]


def _check_decodable(transfers, burst_transfers):
    """Decoding divides burst rates by event rates: event rates >= 0, probabilities in
    [0, 1]."""
    for i, s in enumerate(transfers, start=1):
        low = s.inverse_domain[0]
        if low is None or low < 0:
            raise ValueError(f"transfer of layer {i} must give non-negative event rates with "
                             f"decoding=True (e.g. 'sigmoid'); got {s.name!r}")
    for i, tr in enumerate(burst_transfers, start=1):
        low, high = tr.inverse_domain
        if low is None or high is None or low < 0 or high > 1:
            raise ValueError(f"burst_transfer of layer {i} must take values in [0, 1] with "
                             f"decoding=True (e.g. 'sigmoid'); got {tr.name!r}")


def damped_inverse(J: torch.Tensor, damping: float) -> torch.Tensor:
    """``J^T (J J^T + lambda I)^{-1}`` with ``lambda = damping * ||J||_2^2``, by the SVD
    ``J = U S V^T``: ``V diag(s / (s^2 + lambda)) U^T`` (each direction's gain ``s / (s^2 +
    lambda)`` is at most ``1 / (2 sqrt(lambda))``; the pseudo-inverse's is ``1 / s``)."""
    U, S, Vh = torch.linalg.svd(J, full_matrices=False)
    lam = damping * float(S.max()) ** 2 if S.numel() else 0.0
    return Vh.T @ torch.diag(S / (S ** 2 + lam)) @ U.T


def _init_params(sizes, bias, feedback_init, scale, seed, dtype, device, transfers,
                 damping=0.1):
    """``W_i ~ N(0, 1/n_{i-1})``, ``b_i = 0``, ``Q_i`` per ``feedback_init`` times ``scale``
    (``"inverse"``: ``(s_{i+1}'(0) W_{i+1})^+`` with the transfers ``s_i``; ``"damped"``: its
    Tikhonov-damped version, :func:`damped_inverse`)."""
    gen = torch.Generator().manual_seed(int(seed))
    W = [torch.randn(n_out, n_in, generator=gen, dtype=torch.float64) / n_in ** 0.5
         for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    if feedback_init == "transpose":
        Q = [w.T for w in W[1:]]
    elif feedback_init == "pinv":
        Q = [torch.linalg.pinv(w) for w in W[1:]]
    elif feedback_init in ("inverse", "damped"):
        zero = torch.zeros((), dtype=torch.float64)
        J = [float(s.derivative(zero)) * w for s, w in zip(transfers[1:], W[1:])]
        Q = [torch.linalg.pinv(j) if feedback_init == "inverse" else damped_inverse(j, damping)
             for j in J]
    else:
        Q = [torch.randn(w.shape[1], w.shape[0], generator=gen, dtype=torch.float64) /
             w.shape[0] ** 0.5 for w in W[1:]]
    as_model = dict(dtype=dtype, device=device)
    return {"W": [w.to(**as_model) for w in W],
            "b": [torch.zeros(n, **as_model) if bias else None for n in sizes[1:]],
            "Q": [(scale * q).contiguous().to(**as_model) for q in Q]}
