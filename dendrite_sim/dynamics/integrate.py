"""Integration of a model's vector field (docs/integration.md).

The default methods (``dopri5``, ``tsit5``, ``bosh3``, ``heun3``, ``rk4``, ``midpoint``,
``euler``) run on the lean batched Runge-Kutta integrator of :mod:`~dendrite_sim.dynamics.rk`;
torchdiffeq's methods are available as ``"torchdiffeq:<name>"`` (and the adjoint always runs on
torchdiffeq). Settings travel as an :class:`~dendrite_sim.dynamics.integrators.Integrator`.

The neural state ``y`` is ``(B, N)``. With ``plastic=True`` the plastic parameters become ODE
state too: ``(y, *displacements)`` are integrated jointly (coupled mode), packed in one
flat vector with torchdiffeq's error norm of a tuple, the largest root-mean-square over the
parts; the weights are shared by every example of the batch (their rates are batch averages).
A weight enters the state as its displacement from its value at the start of the segment, so
a step adds the small change to a small number; adding it to the weight itself loses the
change's digits below the weight's float32 resolution (the float32 errors of both choices are
in ``docs/report.md``; ``tests/test_integrate.py`` checks them). Each displacement's absolute
tolerance is ``atol + rtol |theta_0|``.

Gate switches (``drive.breakpoints``) split the integration into segments that restart at the
switch, and within a segment gates are read at times clamped to it (:meth:`Drive.within`), so
no solver stage ever sees the gates of the next phase. At each switch the state jumps to
``model.jump`` (identity by default). After each segment the state is checked: NaN/inf or
``|y| > max_abs`` raise :class:`~dendrite_sim.errors.NumericalError`; so does a segment that
spends its step budget (``Integrator.max_steps``).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
from torchdiffeq import odeint, odeint_adjoint

from dendrite_sim.errors import NumericalError, check_range
from dendrite_sim.dynamics import rk
from dendrite_sim.dynamics.integrators import FIXED_STEP, Integrator, METHODS as REGISTRY
from dendrite_sim.dynamics.model import Drive, NetworkModel
from dendrite_sim.dynamics.rk import TABLEAUX

__all__ = ["simulate", "Trajectory", "integrate_drive", "relax", "Relaxation", "Integrator",
           "METHODS", "FIXED_STEP"]

#: the method names (a live view of the registry ``integrators.METHODS``)
METHODS = REGISTRY.keys()


@dataclass
class Trajectory:
    """Result of :func:`simulate`.

    ``t`` (T,); ``y`` (T, B, N) the neural state; ``layers`` the activity per layer, a list of
    (T, B, n_i); ``params`` the parameters at the final time (``None`` unless plastic);
    ``nfev`` the number of vector-field evaluations.
    """

    t: torch.Tensor
    y: torch.Tensor
    model: NetworkModel
    params: dict | None = None
    nfev: int = 0

    @property
    def layers(self) -> list[torch.Tensor]:
        return self.model.layers(self.y)

    def variable(self, name: str) -> list[torch.Tensor]:
        """All layers of a named state variable, each (T, B, n_i)."""
        return self.model.layout.unpack(self.y)[name]

    @property
    def final(self) -> torch.Tensor:
        return self.y[-1]


class _Field(torch.nn.Module):
    """``odeint``'s callable; a Module so the adjoint method can find parameters.

    With plastic parameters the ODE state holds the neural state ``(B, N)`` and the flat
    displacement of the integrated parameters from their values at the segment start: as
    one flat vector for the plain methods (:meth:`forward`, :meth:`pack`), as two lanes for
    the exponential ones (:meth:`lanes`).
    """

    def __init__(self, model, drive, params, plastic_names, reprepare, y_shape):
        super().__init__()
        self.model, self.drive, self.params = model, drive, params
        self.plastic_names = plastic_names
        self.slots = _plastic_slots(params, plastic_names)
        self.start = [params[n][k] for n, k in self.slots]
        self.zeros = [torch.zeros_like(p) for p in self.start]
        self.shapes = [tuple(y_shape)] + [tuple(p.shape) for p in self.start]
        self.sizes = [math.prod(shape) for shape in self.shapes]
        # the integrated parameters' starting values as one vector: the parameters at a state
        # are one addition into views (:meth:`_params_of`)
        self.start_flat = torch.cat([p.reshape(-1) for p in self.start]) if self.start \
            else None
        self._current = None      # (flat buffer, parameters viewing it), made on first use
        # with the adjoint method, autograd re-enters the field: prepare inside each call
        self._prepared = None if reprepare else model.prepare(params)
        self.nfev, self.last_t = 0, 0.0

    def _count(self, t):
        """One more evaluation, at ``t`` (plain attribute writes: Module.__setattr__ costs as
        much as a small tensor operation)."""
        object.__setattr__(self, "nfev", self.nfev + 1)
        object.__setattr__(self, "last_t", t)

    def forward(self, t, state):
        self._count(t)
        if not self.plastic_names:
            prepared = self._prepared or self.model.prepare(self.params)
            return self.model.field(t, state, self.drive, prepared)
        n_y = self.sizes[0]
        return self.pack(self._with_plasticity(t, state[:n_y].view(self.shapes[0]),
                                               state[n_y:]))

    def lanes(self, t, state):
        """The field of the coupled state as two lanes ``(y, displacement)`` (the neural state
        ``(B, N)`` and the flat displacement of the integrated parameters; the exponential
        methods step them apart): ``(dy/dt, d displacement/dt)``, with ``dy/dt + k y`` in
        place of ``dy/dt`` where the model computes that directly
        (``rates_without_decay``)."""
        self._count(t)
        dy, *rates = self._with_plasticity(t, *state,
                                           without_decay=self.model.rates_without_decay)
        return dy, self.pack(rates)

    def _with_plasticity(self, t, y, displacement, without_decay=False) -> list:
        """``[dy/dt, *rates of the integrated parameters]``; a rule switched off (rate
        ``None``) is integrated as zero."""
        asked = {"without_decay": True} if without_decay else {}   # only where declared
        dy, rates = self.model.field_and_plasticity(t, y, self.drive,
                                                    self._params_of(displacement), **asked)
        return [dy] + [zero if rates[n][k] is None else rates[n][k]
                       for (n, k), zero in zip(self.slots, self.zeros)]

    def decay(self, t):
        """``k`` of the model's linear decay (``linear_decay``): the neural state's rates; with
        integrated parameters the lanes' ``(rates, 0)`` (:meth:`lanes`)."""
        k = self.model.linear_decay(t, self.drive)
        if k is None:
            raise ValueError(f"the exponential methods need the model's linear decay, but "
                             f"{type(self.model).__name__} declares none (linear_decay); use "
                             "a plain method (heun3, rk4, dopri5, ...)")
        k = torch.as_tensor(k, dtype=self.model.dtype, device=self.model.device)
        return (k, 0) if self.plastic_names else k

    def subset(self, index):
        """The field of the examples ``index`` of the batch (no plastic parameters)."""
        if index.numel() == self.drive.batch_size:
            drive = self.drive
        else:
            drive = self.drive.subset(index)
        prepared = self._prepared or self.model.prepare(self.params)
        return lambda t, y: self.model.field(t, y, drive, prepared)

    def pack(self, tensors) -> torch.Tensor:
        """``tensors`` flattened into one vector (empty without any)."""
        if not tensors:
            return torch.zeros(0, dtype=self.model.dtype, device=self.model.device)
        return torch.cat([v.reshape(-1) for v in tensors])

    def _params_of(self, displacement: torch.Tensor) -> dict:
        """The parameters, the integrated ones at ``start + displacement`` (flat): one
        addition for all of them. Where autograd records nothing it is written into one
        buffer that the returned parameters view (the same dict at every call: valid until
        the next one); else into a new tensor."""
        if not self.slots:
            return self.params
        if torch.is_grad_enabled() and (displacement.requires_grad
                                        or self.start_flat.requires_grad):
            return self.viewing(self.start_flat + displacement)
        if self._current is None:
            flat = torch.empty_like(self.start_flat)
            self._current = (flat, self.viewing(flat))
        torch.add(self.start_flat, displacement, out=self._current[0])
        return self._current[1]

    def viewing(self, flat: torch.Tensor) -> dict:
        """The parameters with the integrated ones replaced by views of ``flat``."""
        out = {n: list(v) if isinstance(v, list) else v for n, v in self.params.items()}
        for (n, k), p, shape in zip(self.slots, torch.split(flat, self.sizes[1:]),
                                    self.shapes[1:]):
            out[n][k] = p.view(shape)
        return out

    def max_rms(self, flat: torch.Tensor) -> torch.Tensor:
        """The error norm of a tuple state in torchdiffeq: the largest root-mean-square over
        the parts (neural state, each parameter)."""
        return torch.stack([piece.pow(2).mean().sqrt()
                            for piece in torch.split(flat, self.sizes)]).max()


def _plastic_slots(params, names):
    """(name, layer) pairs of the parameters that are integrated."""
    return [(n, k) for n in names for k, p in enumerate(params.get(n) or []) if p is not None]


def _check_finite(tensors, t_end, max_abs):
    """The largest ``|entry|`` of ``tensors`` (NaN where one is NaN) is finite and at most
    ``max_abs``."""
    peaks = [torch.linalg.vector_norm(v.detach(), math.inf) for v in tensors if v.numel()]
    peak = float(torch.stack(peaks).max()) if peaks else 0.0
    if not math.isfinite(peak):
        raise NumericalError(f"integration produced NaN/inf by t = {float(t_end):.6g} "
                             "(a state left the domain of an inverse transfer, or blew up)")
    if peak > max_abs:
        raise NumericalError(f"integration blew up: |state| reached {peak:.3g} > max_abs="
                             f"{max_abs:.3g} by t = {float(t_end):.6g}")


def _segments(t: torch.Tensor, breakpoints):
    """Split the output grid at the breakpoints strictly inside it.

    Returns the closed segments and, for their concatenation (each segment after the first
    without its first point), a mask of the points that were requested in ``t``.
    """
    if not breakpoints:
        return [t], torch.ones_like(t, dtype=torch.bool)
    bps = t.new_tensor([float(b) for b in breakpoints])
    cuts = torch.unique(bps[(bps > t[0]) & (bps < t[-1])])
    edges = torch.cat([t[:1], cuts, t[-1:]])
    segs = [torch.cat([a[None], t[(t > a) & (t < b)], b[None]])
            for a, b in zip(edges[:-1], edges[1:])]
    grid = torch.cat([segs[0]] + [s[1:] for s in segs[1:]])
    return segs, torch.isin(grid, t)


def integrate_drive(model, drive: Drive, t, y0, params, *, method="dopri5", rtol=1e-6,
                    atol=1e-8, step_size=None, adjoint=False, plastic=False, max_abs=1e6,
                    options=None, integrator: Integrator | None = None):
    """Integrate from ``y0`` over the grid ``t`` (restarting at breakpoints).

    ``plastic``: ``False``, ``True`` (every plastic parameter of the model is ODE state) or a
    collection of parameter names (only those; the others are held).
    ``integrator``: an :class:`Integrator` (it replaces ``method, rtol, atol, step_size,
    max_abs, options``). At every breakpoint between segments the state becomes
    ``model.jump(t_b, y, drive, prepared)`` (the neural state only; the drive of the segment
    that starts there); the output at ``t_b`` is the state before the jump.
    Returns ``(ys (T, B, N), final params, nfev)``. Engine-level entry point used by
    :func:`simulate` and by the training loop.
    """
    integ = integrator or Integrator(method, rtol, atol, step_size, max_abs=max_abs,
                                     options=options)
    names = tuple(n for n in model.plastic_params if n in params
                  and (plastic is True or (plastic is not False and n in plastic)))
    if adjoint and integ.backend.exponential:
        raise ValueError(f"adjoint=True integrates with torchdiffeq, which has no exponential "
                         f"method ({integ.method!r}); use a plain method")
    if integ.per_example and (names or adjoint):
        raise ValueError("per_example steps need plastic=False and adjoint=False (the weights "
                         "and the adjoint are shared by the whole batch)")
    outputs, nfev, y, current = [], 0, y0, params
    segments, requested = _segments(t, drive.breakpoints)
    for k, seg in enumerate(segments):
        seg_drive = drive.within(seg[0], seg[-1])
        if k:
            y = model.jump(seg[0], y, seg_drive, model.prepare(current))
        func = _Field(model, seg_drive, current, names, reprepare=adjoint or bool(names),
                      y_shape=y.shape)
        ys, current, used, integrated = _integrate_segment(func, y, seg, integ, adjoint,
                                                           current)
        _check_finite([ys[-1], *integrated], seg[-1], integ.max_abs)
        outputs.append(ys if k == 0 else ys[1:])
        y, nfev = ys[-1], nfev + used
    return torch.cat(outputs)[requested], (current if names else None), nfev


def _integrate_segment(func, y, seg, integ, adjoint, params):
    """One segment: ``(ys (T, B, N), params at its end, nfev, [the integrated parameters'
    final values, flat]`` (empty without them))."""
    try:
        if integ.backend.exponential:
            ys, displacement, nfev = _exponential(func, y, seg, integ)
        else:
            ys, displacement, nfev = _runge_kutta(func, y, seg, integ, adjoint, params)
    except NumericalError as err:
        raise NumericalError(f"{err} (integrating [{float(seg[0]):.6g}, "
                             f"{float(seg[-1]):.6g}])") from None
    nfev = func.nfev if nfev is None else nfev
    if not func.slots:
        return ys, params, nfev, []
    final = func.start_flat + displacement[-1]
    return ys, func.viewing(final), nfev, [final]


def _exponential(func, y, seg, integ):
    """An exponential method: the neural state alone, or with integrated parameters the two
    lanes of :meth:`_Field.lanes`. ``(ys, displacements (T, P) or None, nfev)``."""
    middle = 0.5 * (float(seg[0]) + float(seg[-1]))
    options = dict(step_size=integ.steps_option, max_steps=integ.budget)
    if not func.plastic_names:
        solution = rk.solve_exponential(func.forward, y, seg, integ.backend.solver,
                                        func.decay(middle), **options)
        return solution.ys, None, solution.nfev
    solution = rk.solve_exponential(func.lanes, (y, func.pack(func.zeros)), seg,
                                    integ.backend.solver, func.decay(middle),
                                    gives_nonlinear=func.model.rates_without_decay, **options)
    return (*solution.ys, solution.nfev)


def _runge_kutta(func, y, seg, integ, adjoint, params):
    """A plain method (lean, or torchdiffeq's and every adjoint) on one flat state with the
    integrated parameters' displacements from the segment's start. ``(ys, displacements
    (T, P) or None, nfev)``; ``nfev`` ``None`` where the field counted them."""
    state, tol, norm = y, integ.atol, None
    if func.plastic_names:       # displacements from the segment's starting weights
        state = func.pack([y] + func.zeros)
        norm = func.max_rms
        if not adjoint:          # the adjoint's augmented state takes scalar tolerances
            tol = func.pack([torch.full_like(y, integ.atol)]
                            + [integ.atol + integ.rtol * p.detach().abs() for p in func.start])
    if adjoint or integ.backend.engine == "torchdiffeq":
        sol, nfev = _torchdiffeq(func, state, seg, integ, tol, norm, adjoint, params), None
    elif integ.per_example:
        solution = rk.solve_per_example(func.subset, state, seg, TABLEAUX[integ.method],
                                        rtol=integ.rtol, atol=tol, max_steps=integ.budget,
                                        **_control(integ.options))
        sol, nfev = solution.ys, solution.nfev
    else:
        solution = rk.solve(func.forward, state, seg, TABLEAUX[integ.backend.solver],
                            rtol=integ.rtol, atol=tol, norm=(integ.options or {}).get(
                                "norm", norm), step_size=integ.steps_option,
                            max_steps=integ.budget, first_step=(integ.options or {}).get(
                                "first_step"), **_control(integ.options))
        sol, nfev = solution.ys, solution.nfev
    if not func.plastic_names:
        return sol, None, nfev
    n_y = func.sizes[0]
    return sol[..., :n_y].reshape(sol.shape[:-1] + func.shapes[0]), sol[..., n_y:], nfev


def _control(options) -> dict:
    """The step-control constants among the lean options."""
    return {k: v for k, v in (options or {}).items() if k in ("safety", "ifactor", "dfactor")}


def _torchdiffeq(func, state, seg, integ, tol, norm, adjoint, params):
    """A segment on torchdiffeq (its methods, and every adjoint): its options, with
    ``max_num_steps`` the step budget; its failures as :class:`NumericalError`."""
    solver_name = integ.backend.solver
    if adjoint and solver_name not in _torchdiffeq_methods():
        raise ValueError(f"adjoint=True integrates with torchdiffeq, which has no method "
                         f"{integ.method!r}; use one of {tuple(_torchdiffeq_methods())}")
    opts = {k: v for k, v in (integ.options or {}).items() if k != "max_num_steps"}
    if integ.step_size is not None:
        opts["step_size"] = integ.step_size
    if norm is not None:
        opts = {"norm": norm, **opts}
    if integ.fixed:
        steps = float(seg[-1] - seg[0]) / float(integ.steps_option)
        if steps > integ.budget:
            raise rk._budget_error(float(seg[0]), float(seg[0]), float(seg[-1]), integ.budget)
    else:
        opts["max_num_steps"] = integ.budget
    extra = {}
    if adjoint:
        extra["adjoint_params"] = tuple(p for ps in params.values() for p in (ps or [])
                                        if p is not None and p.requires_grad)
    solver = odeint_adjoint if adjoint else odeint
    try:
        return solver(func, state, seg, method=solver_name, rtol=integ.rtol, atol=tol,
                      options=opts or None, **extra)
    except AssertionError as err:  # torchdiffeq: "underflow in dt", "max_num_steps exceeded"
        if "max_num_steps" in str(err):
            raise rk._budget_error(float(func.last_t), float(seg[0]), float(seg[-1]),
                                   integ.budget) from None
        raise NumericalError(f"integration failed at t = {float(func.last_t):.6g}: "
                             f"{err}") from None


def _torchdiffeq_methods():
    return sys.modules["torchdiffeq._impl.odeint"].SOLVERS


def simulate(model: NetworkModel, x, t, target=None, *, method="dopri5", rtol=1e-6, atol=1e-8,
             step_size=None, adjoint=False, y0=None, gates=None, breakpoints=(), params=None,
             plastic=False, max_abs=1e6, options=None,
             integrator: Integrator | None = None) -> Trajectory:
    """Integrate a batch of networks from ``y0`` (default: the forward pass) over times ``t``.

    Parameters
    ----------
    model : a network model, e.g. :class:`dendrite_sim.models.Mixture`.
    x : input ``(B, n_0)`` (or ``(n_0,)``), model dtype and device, finite.
    t : increasing 1-D times (tensor or sequence); output is reported there.
    target : ``None`` (free), a ``(B, n_L)`` tensor (clamp) or a teaching object
        (:class:`~dendrite_sim.dynamics.teaching.Nudge`).
    method : a name of ``METHODS`` (``dopri5`` default: the lean integrator; ``tsit5``,
        ``bosh3``; ``rk4``/``heun3``/``midpoint``/``euler`` need ``step_size``;
        ``"torchdiffeq:<name>"`` any torchdiffeq method; docs/integration.md).
    rtol, atol : tolerances of adaptive methods.
    adjoint : use ``odeint_adjoint`` (memory-light gradients through the solution).
    y0 : initial state ``(B, N)``; default: the model's ``initial_state``.
    gates, breakpoints : time-dependent gates ``t -> dict`` and the times where they jump.
    params : parameters to use instead of ``model.params``.
    plastic : integrate the model's plasticity rules jointly with the activity.
    max_abs : a state beyond this magnitude is reported as a blow-up.
    options : the method's options (lean: ``LEAN_OPTIONS``; torchdiffeq: its own).
    integrator : an :class:`Integrator`, replacing ``method, rtol, atol, step_size, max_abs,
        options`` (and adding ``max_steps``, ``per_example``).
    """
    drive = model.drive(x, target, gates, breakpoints)
    t = _check_times(t, model)
    if integrator is None:
        integrator = Integrator(method, rtol, atol, step_size, max_abs=max_abs, options=options)
    elif not isinstance(integrator, Integrator):
        raise ValueError(f"integrator must be an Integrator; got {type(integrator).__name__}")
    params = model.check_params(params)
    if y0 is None:
        y0 = model.initial_state(drive, model.prepare(params))
    else:
        y0 = model.check_state(y0, drive.batch_size)
    ys, final, nfev = integrate_drive(model, drive, t, y0, params, adjoint=adjoint,
                                      plastic=plastic, integrator=integrator)
    return Trajectory(t, ys, model, final, nfev)


@dataclass
class Relaxation:
    """Result of :func:`relax`: ``y`` ``(B, N)`` the state where each example stopped;
    ``stop_times`` ``(B,)``; ``settled`` ``(B,)`` whether ``max |dy/dt| < tol`` there (else it
    ran to ``t_max``); ``nfev`` field evaluations of the whole batch (example-evaluations / B).
    """

    y: torch.Tensor
    stop_times: torch.Tensor
    settled: torch.Tensor
    nfev: int


def relax(model: NetworkModel, x, target=None, *, tol, t_max, integrator=None, y0=None,
          gates=None, params=None) -> Relaxation:
    """Integrate each example until it settles, ``max |dy/dt| < tol`` (the check after every
    accepted step), or until ``t_max``; a settled example stops costing.

    ``gates``: constant gates ``t -> dict``, as in :func:`simulate` (no breakpoints). The
    integrator must be adaptive and lean (default ``Integrator("dopri5")``); each example takes
    its own steps.
    """
    check_range("tol", tol, low=0.0, low_open=True)
    check_range("t_max", t_max, low=0.0, low_open=True)
    integ = integrator or Integrator()
    if not isinstance(integ, Integrator):
        raise ValueError(f"integrator must be an Integrator; got {type(integ).__name__}")
    if integ.backend.engine != "lean" or integ.fixed:
        raise ValueError(f"relax needs an adaptive lean method; got {integ.method!r}")
    drive = model.drive(x, target, gates)
    params = model.check_params(params)
    prepared = model.prepare(params)
    y0 = model.initial_state(drive, prepared) if y0 is None else \
        model.check_state(y0, drive.batch_size)
    t = torch.tensor([0.0, float(t_max)], dtype=model.dtype, device=model.device)
    func = _Field(model, drive.within(0.0, t_max), params, (), reprepare=False,
                  y_shape=y0.shape)
    sol = rk.solve_per_example(func.subset, y0, t, TABLEAUX[integ.method], rtol=integ.rtol,
                               atol=integ.atol, max_steps=integ.budget, settle_tol=float(tol),
                               **_control(integ.options))
    y = sol.ys[-1]
    _check_finite([y], t_max, integ.max_abs)
    settled = model.field(t[-1], y, drive, prepared).abs().amax(1) < tol
    return Relaxation(y, sol.stop_times, settled, sol.nfev)


def _check_times(t, model) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=model.dtype, device=model.device)
    if t.dim() != 1 or t.numel() < 2:
        raise ValueError(f"t must be a 1-D sequence of at least 2 times; got shape "
                         f"{tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or not bool((t[1:] > t[:-1]).all()):
        raise ValueError("t must be finite and strictly increasing")
    return t
