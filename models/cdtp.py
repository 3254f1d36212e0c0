"""CDTP: continuously running differential target propagation with an oscillating gate —
Bengio (2020) §10.2 ("B20"), docs/cdtp.md.

One set of equations runs in every unit all the time; a neuromodulatory gate ``gamma(t)``
(1: feed-forward, down to ``gamma_min``: feedback) switches the network between settling its
activity and relaxing its targets. Parametrisation (B20 eq. 54), layers ``l = 1..L``::

    f_l(v) = W_l sigma(v)        (n_l x n_{l-1})        g_l(y) = Omega_l sigma(y)   (l >= 2)

State per layer: somatic rate ``h_l``, feed-forward buffer ``a_l``, decoder input ``u_l``
(``l >= 2``), target ``tau_l`` and the layer factor ``s_l`` (one number). Each "<-" of B20
eq. 46–49 is a fast leaky integrator gated by ``gamma_l`` (``ff_l = [gamma_l >= gamma_ff]``
marks the feed-forward phase, "gamma = 1")::

    m_{l-1}   = gamma_l a_{l-1} + (1 - gamma_l) g_l(u_l)              (m_0 = x)  (46), (49)
    T_h dh_l/dt   = f_l(m_{l-1}) - h_l                                          (46)
    T_a da_l/dt   = ff_l (h_l - a_l)                                            (47)
    T_u du_l/dt   = tau_l - h_l        while gamma_l < gamma_ff (integral correction)   (48)
                  = tau_l - u_l        while gamma_l >= gamma_ff (explicit reset)
    T_tau dtau_{l-1}/dt = m_{l-1} - tau_{l-1}                                   (49)
    T_tau dtau_L/dt     = a_L - teach (1 - gamma_L) beta dLoss/da_L - tau_L  (output target)
    T_s ds_l/dt   = (1 - ff_l) r_l + ff_l - s_l,  r_l = (||tau_L - a_L||^2 + eps)
                                                / (||tau_l - a_l||^2 + eps)      (Alg. 1, eq. 43)

The output target of the feedback phase is not given by B20; ``tau_L = a_L - (1 - gamma)
beta dLoss/da_L`` (``beta`` the teaching signal's ``eta_hat``) is the DTP output target
(eq. 7) at the buffered output, faded in as the gate opens the feedback path, so it equals
``a_L`` on the feed-forward plateau (no update there, B20 §10.1).

Plasticity (batch means over the examples; gates ``plastic_W``, ``plastic_Omega``)::

    dW_l/dt     = eta (1 - ff_l) d(s_l (tau_l - a_l))/dt n_{l-1}^T,
                  n_{l-1} = sigma(a_{l-1}) / ||sigma(a_{l-1})||^2  (n_0 from x)       (50), (43)
    dOmega_l/dt = eta_omega (m_{l-1} - g_l(u_l)) sigma(u_l)^T       ("delta1", eq. 51)
                or eta_omega (a_{l-1} - g_l(u_l)) sigma(u_l)^T      ("delta2", eq. 52)

Eq. 50 as printed gates on ``[alpha < 1]`` and pairs ``Delta tau_{l-1}`` with ``n_{l-1}``; the
layer-``l`` target with the gate ``gamma < 1`` is meant (B20 eq. 43, Prop. 5). The layer
factor follows Alg. 1 (eq. 53 applies that of the wrong layer). It is 0/0 on the plateau
and large while the lower targets have not moved yet, so it is not applied to ``dtau`` as
it comes: ``s_l`` tracks its eps-regularised value during the feedback phase (it rests at 1
on the plateau, where the rule is closed), and the rule integrates the change of the product ``s_l (tau_l - a_l)``, which
telescopes (B20 Prop. 5): over one feedback window that starts with ``tau_l = a_l``::

    Delta W_l = eta s_l(T) (tau_l(T) - a_l) n_{l-1}^T,

the DTP update (eq. 43) with the factor the relaxation ends with, ``s_l(T)`` (the large
transient values of ``s_l`` cancel in the integral; with small ``eps`` they can still move the
weights a lot within the window (and so the activities), so the default is DTP1,
``layer_factor = False``; docs/cdtp.md).

The trap of a smooth symmetric gate: ``tau_l -> a_l`` again as ``gamma`` rises back to 1
while ``gamma < gamma_ff``, so the window ends with ``tau_l(T) ~ a_l`` and the weight change
integrates to about zero. The default waveform ("plateau") returns to 1 in a jump: the rule
closes with the targets still relaxed (``tests/test_cdtp.py`` shows both).
"""
from __future__ import annotations

import math

import torch

from dendrite_sim.dynamics.gates import WAVEFORMS, oscillation
from dendrite_sim.dynamics.layout import Layout
from dendrite_sim.dynamics.model import NetworkModel
from dendrite_sim.dynamics.transfer import make_transfer
from dendrite_sim.errors import check_bool, check_range

__all__ = ["CDTP"]

FEEDBACK_RULES = ("delta1", "delta2")
DECODERS = ("difference", "plain")


def _switch(ff, on: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
    """``on`` where the gate is feed-forward (``ff = 1``), else ``off``; ``ff`` a float or a
    ``(B, 1)`` tensor."""
    if isinstance(ff, torch.Tensor):
        return torch.where(ff > 0, on, off)
    return on if ff else off


def _closed(weight) -> bool:
    """Whether a rule's gate is shut for every example (a zero number; a tensor never
    counts as shut: its rows are weighted)."""
    return not isinstance(weight, torch.Tensor) and weight == 0.0


class CDTP(NetworkModel):
    """Continuously running DTP (B20 §10.2); module docstring for the equations.

    Parameters
    ----------
    sizes : ``[n_0, n_1, ..., n_L]``, at least two layers (``L >= 1``).
    sigma : the non-linearity of ``f`` and ``g`` (``"tanh"``, ``"leaky_relu"``, ...).
    slope : negative slope of ``"leaky_relu"``.
    tau_h, tau_a, tau_u, tau_target, tau_factor : time constants ``T_h, T_a, T_u, T_tau,
        T_s`` of the fast integrators, > 0 (short against the phases).
    gamma_ff : the gate counts as feed-forward ("gamma = 1") at ``gamma >= gamma_ff``, in
        (0, 1]: the buffer samples, ``u`` resets and plasticity is closed.
    eta : forward learning rate (dimensionless: the weight change of one window is ``eta``
        times the DTP update eq. 43), >= 0.
    decoder : ``"plain"``: ``g_l`` as in eq. 54; ``"difference"``: ``g_l(u)`` corrected by
        the buffered pair, ``a_{l-1} + g_l(u) - g_l(a_l)`` (B20 eq. 33, the single-step
        decoder-output correction), so the feedback phase starts from ``m_{l-1} = a_{l-1}``
        even where ``g_l`` is no inverse (a layer narrower than the one below). The
        feedback rules read the plain ``g_l`` (eq. 51/52).
    eta_omega : feedback learning rate per unit time, >= 0.
    feedback_rule : ``"delta1"`` (eq. 51) or ``"delta2"`` (eq. 52).
    layer_factor : apply Alg. 1's layer factor ``s_l`` (else ``s_l = 1``: DTP1, eq. 13).
    factor_eps : ``eps`` of the regularised factor, > 0.
    waveform, period, duty, gamma_min, fall, wave_delay : the default gate ``gamma(t)``
        (:func:`dendrite_sim.dynamics.gates.oscillation`); ``wave_delay > 0`` makes it a
        travelling wave ``gamma_l(t) = gamma(t - (l-1) wave_delay)``.
    hold_feedback : where no gate sets ``gamma``, it sits at ``gamma_min`` (the feedback
        phase alone, with the buffers held: its equilibrium, spectrum and continuation in
        ``gamma_min``); default ``False``: 1, the feed-forward phase.
    init_gain : the forward weights start as ``init_gain`` times an orthogonal matrix (a
        scaled random one for unequal sizes), the feedback weights as the pseudo-inverse of
        the forward ones, ``Omega_l = W_l^+``.
    seed, dtype, device : initialisation.
    """

    activity = "h"

    def __init__(self, sizes=(64, 64, 10), sigma="tanh", slope=0.1, tau_h=1.0, tau_a=1.0,
                 tau_u=1.0, tau_target=1.0, tau_factor=1.0, gamma_ff=0.999, eta=1.0,
                 eta_omega=0.0, decoder="difference", feedback_rule="delta2",
                 layer_factor=False, factor_eps=1e-4,
                 waveform="plateau", period=30.0, duty=0.3, gamma_min=0.0, fall=0.1,
                 wave_delay=0.0, hold_feedback=False, init_gain=1.0, seed=0,
                 dtype=torch.float32, device="cpu"):
        sizes = [int(n) for n in sizes]
        if len(sizes) < 2 or any(n < 1 for n in sizes):
            raise ValueError(f"sizes must list at least two positive layer widths; got {sizes}")
        self.sizes, self.dtype, self.device = sizes, dtype, torch.device(device)
        self.sigma_name, self.slope = sigma, slope
        self.sigma = make_transfer(sigma, slope)
        self.tau_h, self.tau_a, self.tau_u = tau_h, tau_a, tau_u
        self.tau_target, self.tau_factor = tau_target, tau_factor
        self.gamma_ff, self.eta, self.eta_omega = gamma_ff, eta, eta_omega
        self.decoder = decoder
        self.feedback_rule, self.layer_factor, self.factor_eps = (feedback_rule, layer_factor,
                                                                  factor_eps)
        self.waveform, self.period, self.duty = waveform, period, duty
        self.gamma_min, self.fall, self.wave_delay = gamma_min, fall, wave_delay
        self.hold_feedback = hold_feedback
        self.init_gain, self.seed = init_gain, seed
        self._validate()
        widths = sizes[1:]
        self.layout = Layout({"h": widths, "a": widths, "u": [0] + widths[1:],
                              "tau": widths, "s": [1] * len(widths)})
        self.params = self._initial_params()

    # -- set-up ---------------------------------------------------------------------------
    def _validate(self):
        for name in ("tau_h", "tau_a", "tau_u", "tau_target", "tau_factor", "period",
                     "factor_eps"):
            check_range(name, getattr(self, name), low=0.0, low_open=True)
        check_range("gamma_ff", self.gamma_ff, low=0.0, high=1.0, low_open=True)
        check_range("gamma_min", self.gamma_min, low=0.0, high=1.0, high_open=True)
        if self.gamma_min >= self.gamma_ff:
            raise ValueError(f"gamma_min must lie below gamma_ff={self.gamma_ff}; got "
                             f"{self.gamma_min}")
        check_range("eta", self.eta, low=0.0)
        check_range("eta_omega", self.eta_omega, low=0.0)
        check_range("wave_delay", self.wave_delay, low=0.0)
        check_range("init_gain", self.init_gain, low=0.0, low_open=True)
        check_bool("hold_feedback", self.hold_feedback)
        if self.feedback_rule not in FEEDBACK_RULES:
            raise ValueError(f"feedback_rule must be one of {FEEDBACK_RULES}; got "
                             f"{self.feedback_rule!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}; got {self.decoder!r}")
        if self.waveform not in WAVEFORMS:
            raise ValueError(f"waveform must be one of {WAVEFORMS}; got {self.waveform!r}")
        oscillation(self.waveform, self.period, self.duty, self.gamma_min, 1, self.fall)

    def _initial_params(self) -> dict:
        gen = torch.Generator().manual_seed(int(self.seed))
        W = []
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]):
            q, _ = torch.linalg.qr(torch.randn(max(n_in, n_out), max(n_in, n_out),
                                               generator=gen, dtype=torch.float64))
            W.append(self.init_gain * q[:n_out, :n_in])
        omega = [None] + [torch.linalg.pinv(w) for w in W[1:]]
        cast = dict(dtype=self.dtype, device=self.device)
        return {"W": [w.to(**cast) for w in W],
                "Omega": [None if o is None else o.to(**cast) for o in omega]}

    plastic_groups = {"W": ("W",), "Omega": ("Omega",)}
    gates = {"gamma": 1.0, "teach": 1.0, "plastic_W": 1.0, "plastic_Omega": 1.0}
    forward_params = ("W",)
    presentation_modes = ("coupled",)
    gates_per_example = True    # gamma may be a (B, 1) tensor: each example its own cycle

    @property
    def time_constants(self) -> dict:
        return {"h": self.tau_h, "a": self.tau_a, "u": self.tau_u, "tau": self.tau_target,
                "s": self.tau_factor}

    # -- maps -----------------------------------------------------------------------------
    def f(self, l: int, v: torch.Tensor, params=None) -> torch.Tensor:
        """``f_l(v) = W_l sigma(v)`` (eq. 54), ``l = 1..L``."""
        return self.sigma(v) @ (params or self.params)["W"][l - 1].T

    def g(self, l: int, y: torch.Tensor, params=None) -> torch.Tensor:
        """``g_l(y) = Omega_l sigma(y)`` (eq. 54), ``l = 2..L``: layer ``l`` to layer ``l-1``."""
        return self.sigma(y) @ (params or self.params)["Omega"][l - 1].T

    def forward(self, params, x):
        """The feed-forward map ``h_L = f_L(... f_1(x))`` (eq. 2)."""
        h = x
        for l in range(1, self.depth + 1):
            h = self.f(l, h, params)
        return h

    def forward_pass(self, x, params=None) -> list[torch.Tensor]:
        """``[h_1, ..., h_L]`` of the feed-forward pass."""
        out, h = [], x
        for l in range(1, self.depth + 1):
            h = self.f(l, h, params)
            out.append(h)
        return out

    def initial_state(self, drive, prepared):
        """The settled feed-forward phase: ``h`` the forward pass, ``a = tau = u = h``,
        ``s = 1``."""
        h = self.forward_pass(drive.x, prepared)
        ones = [torch.ones_like(hl[..., :1]) for hl in h]
        return self._pack({"h": h, "a": h, "u": [h[0][..., :0]] + h[1:], "tau": h,
                                 "s": ones})

    def _pack(self, parts: dict) -> torch.Tensor:
        """The state ``(..., N)`` from ``{variable: [block per layer]}`` (layout order)."""
        return torch.cat([parts[b.variable][b.layer - 1] for b in self.layout.blocks], dim=-1)

    def gammas(self, t, drive) -> list:
        """``[gamma_1, ..., gamma_L]``: gate ``gamma_<l>`` where the schedule sets one (a
        travelling wave), else the global ``gamma`` (where unset: 1, or ``gamma_min`` with
        ``hold_feedback``)."""
        base = drive.gate("gamma", t, self.gamma_min if self.hold_feedback else 1.0)
        return [drive.gate(f"gamma_{l}", t, base) for l in range(1, self.depth + 1)]

    # -- dynamics -------------------------------------------------------------------------
    def _evaluate(self, t, y, drive, params, plasticity: bool):
        p = self.layout.unpack(y)
        h, a, u, tau, s = p["h"], p["a"], p["u"], p["tau"], p["s"]
        L, gam = self.depth, self.gammas(t, drive)
        ff = [self.feedforward(g) for g in gam]
        m, dec = [drive.x], [None]                      # m_{l-1}, g_l(u_l) per layer l
        for l in range(2, L + 1):
            dec.append(self.g(l, u[l - 1], params))
            m.append(self.mix(l, gam[l - 1], a, dec[-1], params))
        dh = [(self.f(l, m[l - 1], params) - h[l - 1]) / self.tau_h for l in range(1, L + 1)]
        da = [ff[k] * (h[k] - a[k]) / self.tau_a for k in range(L)]
        du = [u[0]] + [(tau[k] - _switch(ff[k], u[k], h[k])) / self.tau_u for k in range(1, L)]
        teach = drive.gate("teach", t, 1.0) * (1.0 - gam[-1])
        top = drive.teaching.output_target(a[-1], teach)
        dtau = [(m[l] - tau[l - 1]) / self.tau_target for l in range(1, L)]
        dtau.append((top - tau[-1]) / self.tau_target)
        e = [tk - ak for tk, ak in zip(tau, a)]
        ds = [((1.0 - ff[k]) * self.factor(e, k) + ff[k] - s[k]) / self.tau_factor
              for k in range(L)]
        dy = self._pack({"h": dh, "a": da, "u": du, "tau": dtau, "s": ds})
        if not plasticity:
            return dy, None
        rates = {"W": self._forward_rates(t, drive, ff, e, s, dtau, ds, a),
                 "Omega": self._feedback_rates(t, drive, dec, a, u)}
        return dy, rates

    def feedforward(self, gamma):
        """``ff = [gamma >= gamma_ff]``: a float for a gate shared by the batch, a ``(B, 1)``
        tensor for gates given per example (:meth:`example_cycles`)."""
        if isinstance(gamma, torch.Tensor):
            return (gamma >= self.gamma_ff).to(gamma.dtype)
        return float(gamma >= self.gamma_ff)

    def mix(self, l, gamma, a, decoded, params=None):
        """Eq. 46/49's ``m_{l-1} = gamma a_{l-1} + (1 - gamma) g_l(u_l)``; with the difference
        decoder ``g_l(u_l)`` is corrected by the buffered pair (eq. 33):
        ``a_{l-1} + g_l(u_l) - g_l(a_l)``."""
        if self.decoder == "difference":
            decoded = decoded - self.g(l, a[l - 1], params) + a[l - 2]
        return gamma * a[l - 2] + (1.0 - gamma) * decoded

    def factor(self, e, k) -> torch.Tensor:
        """Alg. 1's layer factor ``(||tau_L - a_L||^2 + eps) / (||tau_l - a_l||^2 + eps)``
        of layer ``k + 1`` per example ``(B, 1)`` from the target changes ``e`` (1 without
        ``layer_factor``)."""
        if not self.layer_factor:
            return torch.ones_like(e[k][..., :1])
        eps = self.factor_eps
        top = e[-1].pow(2).sum(-1, keepdim=True)
        return (top + eps) / (e[k].pow(2).sum(-1, keepdim=True) + eps)

    def normalised_inputs(self, x, a) -> list[torch.Tensor]:
        """``n_{l-1} = sigma(a_{l-1}) / ||sigma(a_{l-1})||^2`` (``a_0 = x``), l = 1..L."""
        out = []
        for v in [x] + list(a[:-1]):
            sv = self.sigma(v)
            out.append(sv / sv.pow(2).sum(-1, keepdim=True).clamp_min(1e-30))
        return out

    def _forward_rates(self, t, drive, ff, e, s, dtau, ds, a):
        """(50) with Alg. 1's factor: ``eta (1 - ff_l) d(s_l e_l)/dt n_{l-1}^T``; ``a_l`` is
        held while ``ff_l = 0``, so ``d e_l/dt = dtau_l/dt``."""
        gate = drive.gate("plastic_W", t, 1.0) * self.eta
        n = self.normalised_inputs(drive.x, a)
        B = drive.batch_size
        opens = [gate * (1.0 - f) for f in ff]         # a number, or (B, 1) per example
        return [None if _closed(w) else (w * (ds[k] * e[k] + s[k] * dtau[k])).T @ n[k] / B
                for k, w in enumerate(opens)]

    def _feedback_rates(self, t, drive, dec, a, u):
        """(51) ``(m_{l-1} - g_l(u_l)) sigma(u_l)^T`` or (52) ``(a_{l-1} - g_l(u_l))
        sigma(u_l)^T``, times ``eta_omega``."""
        gate = drive.gate("plastic_Omega", t, 1.0) * self.eta_omega
        if gate == 0.0:
            return [None] * self.depth
        B = drive.batch_size
        gam = self.gammas(t, drive)
        return [None] + [(gate / B) * self._feedback_error(l, gam[l - 1], a, dec[l - 1]).T
                         @ self.sigma(u[l - 1]) for l in range(2, self.depth + 1)]

    def _feedback_error(self, l, gamma, a, decoded):
        """``tau_{l-1} - g_l(u_l)`` with eq. 49's ``tau_{l-1} = gamma a_{l-1} + (1 - gamma)
        g_l(u_l)`` (eq. 51, plain decoder) or ``a_{l-1} - g_l(u_l)`` (eq. 52)."""
        if self.feedback_rule == "delta2":
            return a[l - 2] - decoded
        return gamma * a[l - 2] + (1.0 - gamma) * decoded - decoded

    def field(self, t, y, drive, prepared):
        return self._evaluate(t, y, drive, prepared, plasticity=False)[0]

    def plasticity(self, t, y, drive, prepared):
        return self._evaluate(t, y, drive, prepared, plasticity=True)[1]

    def field_and_plasticity(self, t, y, drive, params):
        return self._evaluate(t, y, drive, params, plasticity=True)

    def output(self, y):
        """The buffered feed-forward output ``a_L`` (what the network last computed with
        ``gamma = 1``)."""
        return self.layout.unpack(y)["a"][-1]

    def exact_inverse(self, l: int, y: torch.Tensor, params=None) -> torch.Tensor:
        """``f_l^{-1}(y) = sigma^{-1}(W_l^{-1} y)``: needs ``n_l = n_{l-1}`` (B20 §2) and an
        invertible ``sigma``."""
        W = (params or self.params)["W"][l - 1]
        if W.shape[0] != W.shape[1]:
            raise ValueError(f"an exact inverse of layer {l} needs equal sizes n_{l} = "
                             f"n_{l - 1}; got {W.shape[0]} and {W.shape[1]}")
        return self.sigma.inverse(torch.linalg.solve(W, y.T).T)

    # -- analysis -------------------------------------------------------------------------
    def inversion_map(self, l: int, u, a_below, tau, gamma, params=None):
        """The discrete decoder-input correction of eq. 48 at gate ``gamma < 1``:
        ``r_l(u) = u + tau_l - f_l(gamma a_{l-1} + (1 - gamma) g_l(u))``."""
        m = gamma * a_below + (1.0 - gamma) * self.g(l, u, params)
        return u + tau - self.f(l, m, params)

    def contraction(self, l: int, u, a_below, gamma, params=None) -> torch.Tensor:
        """Prop. 3: the spectral radius of ``r_l'(u) = I - (1 - gamma) f_l' g_l'`` per example
        ``(B,)``, from the Jacobian of :meth:`inversion_map` (autograd). Below 1 the
        iteration of eq. 48 converges locally."""
        def r(v, below):
            return self.inversion_map(l, v, below, torch.zeros_like(v), gamma, params)
        jac = torch.func.vmap(torch.func.jacrev(r))(u, a_below)
        return torch.linalg.eigvals(jac).abs().max(-1).values

    def feedback_phase(self, y_hold: torch.Tensor, gamma_min: float | None = None):
        """The feedback phase alone: a view of this model with the gate held at ``gamma_min``
        (default the model's; ``hold_feedback``) and the buffers ``a`` held at their values
        in ``y_hold`` ``(B, N)`` (their rates vanish at ``gamma < gamma_ff``, so they are
        no part of the equilibrium). Its equilibrium is the end point of the relaxation
        (B20 Prop. 1, 2); ``continuation(view, x, lambda v, g: model.feedback_phase(y_hold,
        g), values, target)`` follows it in ``gamma_min`` (docs/cdtp.md)."""
        from dendrite_sim.learning.presentation import Frozen
        level = self.gamma_min if gamma_min is None else gamma_min
        return Frozen(self.replace(gamma_min=level, hold_feedback=True), ("a",), y_hold)

    # -- schedule -------------------------------------------------------------------------
    def gate_waveforms(self, cycles: int = 1) -> dict:
        """``{"gamma": waveform}`` (and ``gamma_<l>`` for a travelling wave) over ``cycles``
        periods; the crossings of ``gamma_ff`` are breakpoints too."""
        def wave(delay):
            return oscillation(self.waveform, self.period, self.duty, self.gamma_min, cycles,
                               self.fall, delay, levels=(self.gamma_ff,))
        gates = {"gamma": wave(0.0)}
        if self.wave_delay > 0:
            gates.update({f"gamma_{l}": wave((l - 1) * self.wave_delay)
                          for l in range(1, self.depth + 1)})
        return gates

    def example_cycles(self, offsets, cycles: int = 1):
        """Gates for a batch whose examples each run their own cycle: example ``b`` sees
        ``gamma(t - offsets[b])`` (and the travelling wave per layer with ``wave_delay``).
        Returns ``(gates, breakpoints)`` for :func:`dendrite_sim.simulate`: ``gates(t)`` gives
        ``(B, 1)`` tensors, ``breakpoints`` are every example's jumps and kinks over
        ``cycles`` periods (the solver restarts at each). The waveform is evaluated once per
        distinct offset, not per example. The training presentation (a
        :class:`~dendrite_sim.learning.schedule.Schedule`) shares one cycle per batch."""
        offsets = torch.as_tensor(offsets, dtype=torch.float64).reshape(-1)
        if offsets.numel() < 1 or not bool(torch.isfinite(offsets).all()) or \
                bool((offsets < 0).any()):
            raise ValueError(f"offsets must be finite, >= 0, one per example; got "
                             f"{offsets.tolist()}")
        distinct, which = torch.unique(offsets, return_inverse=True)
        names = ["gamma"] + ([f"gamma_{l}" for l in range(1, self.depth + 1)]
                             if self.wave_delay > 0 else [])
        lag = [0.0] + [(l - 1) * self.wave_delay for l in range(1, len(names))]
        waves = [[oscillation(self.waveform, self.period, self.duty, self.gamma_min, cycles,
                              self.fall, float(d) + extra, levels=(self.gamma_ff,))
                  for d in distinct] for extra in lag]
        cast = dict(dtype=self.dtype, device=self.device)
        index = which.to(self.device)

        def gates(t):
            s = float(t)
            return {name: torch.tensor([w(s) for w in row], **cast)[index][:, None]
                    for name, row in zip(names, waves)}
        points = sorted({b for row in waves for w in row for b in w.breakpoints})
        return gates, tuple(points)

    def default_schedule(self, cycles=1, plastic_omega=True):
        """One phase of ``cycles`` gate periods: teaching on (faded in by ``1 - gamma``),
        ``W`` plastic (and ``Omega`` with ``plastic_omega``), gates of
        :meth:`gate_waveforms`."""
        from dendrite_sim.learning.schedule import Phase, Schedule
        if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
            raise ValueError(f"cycles must be an integer >= 1; got {cycles!r}")
        plastic = ("W", "Omega") if plastic_omega else ("W",)
        return Schedule([Phase("cycle", cycles * self.period, teach=True, plastic=plastic,
                               extra_gates=self.gate_waveforms(cycles))])
