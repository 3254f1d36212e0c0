"""Showing one example (or mini-batch) to a network for one :class:`Schedule` (design: issue 3).

:func:`present` runs a schedule of phases (free / learning / sleep) on a batch and returns the
parameters it ends with. Two modes:

``"coupled"``
    The exact continuous-time system: one ODE for the activity, the slow traces and the
    weights, integrated by :func:`~dendrite_sim.dynamics.integrate.integrate_drive` phase by phase
    (a restart at every phase boundary) with the phase's constant gates. A phase integrates
    the weights it makes plastic; the others have zero rates there and are held
    (:func:`_plastic_groups`). It starts from the model's initial state (the forward pass;
    traces equal to it).

``"quasi_static"``
    The adiabatic approximation for learning rates ``<< 1/tau``: in each phase the activity
    sits at its equilibrium for the weights the phase starts with. Per phase, in order:

    1. equilibrate the activity at fixed weights with the phase's constant gates
       (:func:`~dendrite_sim.dynamics.equilibrium.fixed_point`, warm-started from the previous phase's
       end state). The slow variables (``model.slow_variables``, e.g. the two-phase trace
       ``z``), and any other variable whose rate is identically zero under these gates, are
       held: the equilibrium is solved on the subspace of the activity (see :class:`Frozen`).
       A phase that trains only ``model.coarse_rate_groups`` (the feedback weights of the
       mixing models, whose rules read the reconstruction error, of the activity's size) is
       solved to the coarser ``rate_tol`` here: its equilibrium only sets the rates, and step
       4 re-solves the phase's end state to ``tol`` (two-phase DTP, digits: the free phase's
       ``Delta Q`` moves by 2e-5 relative at ``rate_tol`` 1e-3 against 1e-12, in 4.3 instead
       of 7.7 sweeps; the quasi-static approximation itself is 5e-2 from coupled mode);
    2. the slow variables relax componentwise and linearly toward the value the activity sets,
       ``dv/dt = -k (v - v*)`` (``k = 0`` while a trace holds); their trajectory over the phase
       is taken in closed form, ``v(t) = v* + exp(-k t) (v0 - v*)`` (exact for a linear trace
       the activity does not depend on). The phase's end state holds ``v(duration)``; the
       plasticity uses the phase average ``v* + phi_1(-k D) (v0 - v*)``,
       ``phi_1(a) = (e^a - 1)/a``;
    3. advance the weights by one explicit Euler step over the phase,
       ``theta += duration * dtheta/dt`` at that state (the rates already carry the phase's
       plasticity gates). With ``transient=True`` (default) the rates include the
       activity's relaxation transient at the start of the phase to first order
       (:mod:`~dendrite_sim.learning.transient`, docs/derivations.md §10: one linear solve
       with the activity's Jacobian, GMRES for large states): with step 4's drift lag
       0.1-0.8 % per layer from coupled mode at eta = eta_inv = 1e-4 and 20-tau phases on the
       mixing models, against 6-16 % for the plain step (``transient=False``, relative error
       ~ ``tau / duration``), at 1.6-1.8x the cost of a plain digits epoch (the training
       default of :class:`~dendrite_sim.learning.DendriticLearner`; ``learner.transient =
       false`` in a configuration for the plain step). Left out: the transient's
       second-order part and the rates' change as the weights move within the phase
       (relative error ~ ``eta * duration``): the quasi-static approximation.
    4. if the weights moved (or step 1 was coarse), re-solve the equilibrium at the updated
       weights (warm start): the phase ends at the equilibrium of the weights it ends with, so
       a trace that followed the activity remembers the end-of-phase value, as in coupled
       mode. With ``transient`` and ``drift_lag`` (defaults) the end state also trails the
       end equilibrium as the state trails an equilibrium drifting with the weights, to first
       order in the rates (docs/derivations.md (10.6): for two-phase DTP the trace remembers
       the free state ``(T_z + tau_eff) dh^f/dt`` behind, which moves the small layer-1 signal
       by ~10 % at ``eta_inv = 1e-4``; training leaves it out, ``DendriticLearner(drift_lag=
       False)``). For a model with ``gates_per_example`` whose only other variables are slow
       (the activity does not depend on them), this re-solve and the next phase's equilibrium
       (step 1, at the same weights) are solved together as one batch of ``2B`` examples,
       each half with its own phase's gates (:func:`_equilibrate_pair`): the same
       equilibria, in fewer iterations than one solve after the other (two-phase DTP on
       digits: 23 instead of 31 map evaluations per presentation).

Applying all of a presentation's weight changes at its end instead (every phase at the
starting weights, one solve per phase) looks second order in the rates but is not for
two-phase DTP: the layer-1 signal ``z_1 - h^l_1`` is as sensitive to the free phase's ``Q``
step as the reconstruction errors that cancel in it (``docs/derivations.md`` §6).

Neither mode mutates the parameters it is given.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch

from dendrite_sim.dynamics.equilibrium import default_tol, solve_equilibrium
from dendrite_sim.errors import NumericalError, all_finite, check_bool, check_range
from dendrite_sim.dynamics.integrate import integrate_drive
from dendrite_sim.dynamics.integrators import Integrator
from dendrite_sim.dynamics.layout import Layout
from dendrite_sim.dynamics.model import Drive, NetworkModel
from dendrite_sim.learning.schedule import Schedule
from dendrite_sim.learning.transient import drift_lag as lag_behind_drift, transient_rates

__all__ = ["present", "Presentation", "Frozen", "frozen_variables", "MODES"]

MODES = ("quasi_static", "coupled")


@dataclass
class Presentation:
    """Result of :func:`present`.

    ``params`` the parameters at the end (new lists; the input is untouched);
    ``phase_states`` ``{phase name: (B, N) state at the end of that phase}``;
    ``nfev`` vector-field evaluations (quasi-static: those of the equilibrium solves);
    ``sim_time`` simulated time (the schedule's duration); ``mode``;
    ``converged`` whether every equilibrium solve converged to a stable equilibrium (always
    True when coupled); ``residual`` the largest equilibrium residual met (0 when coupled);
    ``failure`` the first phase and example without one, and why ("" when converged).
    """

    params: dict
    phase_states: dict
    nfev: int
    sim_time: float
    mode: str
    converged: bool = True
    residual: float = 0.0
    failure: str = ""


def present(model: NetworkModel, x, target, schedule: Schedule, mode: str = "quasi_static",
            params=None, *, method: str = "dopri5", rtol: float = 1e-6, atol: float = 1e-8,
            max_abs: float = 1e6, step_size=None, tol=None, rate_tol=None,
            max_iter: int = 50, require_plastic=("W",), end_state: bool = True,
            gate_samples: int = 4, integrator: Integrator | None = None,
            transient: bool = True, drift_lag: bool = True, max_seconds=None,
            max_evals=None) -> Presentation:
    """Show the batch ``x`` with teaching ``target`` for ``schedule``; return the new weights.

    Parameters
    ----------
    model : a network model with plasticity (``Mixture``, ``TwoPhaseDTP``, ...).
    x : input ``(B, n_0)``; target : ``None``, a tensor (clamp) or a ``Nudge`` — the
        ``teach`` gate of each phase switches it on or off.
    schedule : a :class:`~dendrite_sim.learning.schedule.Schedule`.
    mode : ``"quasi_static"`` or ``"coupled"`` (module docstring).
    params : parameters to start from (default ``model.params``); never modified.
    method, rtol, atol, step_size, max_abs : integration settings (coupled mode). For
        training, fixed steps are 4-8x faster than dopri5 at rtol 1e-6: ``method="heun3"``,
        ``step_size=1.25 * tau`` (96 evaluations per two-phase presentation; weight changes
        within 7e-4 of a tight solution on digits in float64 at initialisation, 1.2e-2 after
        5 epochs; dopri5 1.8e-4 / 9.6e-4), or the exponential ``method="etdrk4"``,
        ``step_size=3 * tau`` (56 evaluations; 1.0e-2 / 1.7e-2), which integrates the leak
        ``-h / tau`` exactly (``model.linear_decay``). In float32 all sit at float32's own
        error (2e-2 at initialisation, 0.4 after 5 epochs, for ``W_1``). Stability bounds the
        step: ``step_size * |lambda|max`` must stay inside the method's real stability
        interval (heun3 2.51, rk4 2.79, midpoint 2), with ``|lambda|max`` from
        :func:`~dendrite_sim.spectrum` at the forward pass (digits: 1.59 / tau) for the plain
        methods and the largest eigenvalue of the field without its leak for the exponential
        ones (digits: 0.6 / tau; docs/derivations.md §8).
    integrator : an :class:`~dendrite_sim.dynamics.integrators.Integrator` built once (e.g.
        from a configuration's ``[solver]``); it replaces ``method, rtol, atol, step_size,
        max_abs``, which otherwise build one.
    tol, max_iter : equilibrium settings of :func:`fixed_point` (quasi-static mode); ``tol``
        defaults to 1e-10 (float64) or 1e-5 (float32).
    max_seconds, max_evals : budget of each equilibrium solve (quasi-static mode; defaults
        of :class:`~dendrite_sim.dynamics.equilibrium.EquilibriumSolver`); a spent budget
        leaves the presentation unconverged.
    rate_tol : tolerance of an equilibrium that only sets the rates of a phase training
        nothing but ``model.coarse_rate_groups`` (quasi-static mode, step 1 of the module
        docstring); default ``min(1e-3, sqrt(tol))``, never below ``tol``.
    require_plastic : parameter groups the schedule must make plastic somewhere when the
        model learns them (``ValueError`` otherwise); ``()`` allows e.g. a sleep-only schedule.
    end_state : quasi-static mode: also solve the equilibrium at the weights the last phase
        ends with. ``False`` skips that solve when only the new weights are wanted (training);
        ``phase_states`` then leaves out the last phase.
    gate_samples : quasi-static mode, phases whose gates vary in time (waveforms): each smooth
        stretch between the waveforms' breakpoints is taken as this many pieces of equal length
        with the gates held at their midpoint values (the adiabatic limit as it grows), >= 1.
    transient : quasi-static mode: include the activity's transient at the start of each
        phase to first order (default; module docstring, step 3); ``False`` gives the plain
        Euler step at the equilibrium.
    drift_lag : quasi-static mode with ``transient``: end each phase whose weights moved
        that far behind the end equilibrium as the state trails the drifting equilibrium,
        to first order in the rates (default; module docstring, step 4).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if mode not in model.presentation_modes:
        raise ValueError(f"mode {mode!r} is not supported by {type(model).__name__} (its "
                         f"presentation modes: {list(model.presentation_modes)})")
    gate_samples = int(check_range("gate_samples", gate_samples, low=1))
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a Schedule; got {type(schedule).__name__}")
    schedule.check_model(model, require_plastic)
    if integrator is None:
        integrator = Integrator(method, rtol, atol, step_size, max_abs=max_abs)
    elif not isinstance(integrator, Integrator):
        raise ValueError(f"integrator must be an Integrator; got {type(integrator).__name__}")
    tol = default_tol(model.dtype) if tol is None else \
        check_range("tol", tol, low=0.0, low_open=True)
    rate_tol = max(tol, min(1e-3, math.sqrt(tol))) if rate_tol is None else \
        check_range("rate_tol", rate_tol, low=tol)
    params = model.params if params is None or params is model.params else \
        model.check_params(params)
    model.drive(x, target)  # validates x and target against the model (its ValueError)
    if mode == "coupled":
        return _coupled(model, x, target, schedule, params, integrator)
    budget = {k: v for k, v in dict(max_seconds=max_seconds, max_evals=max_evals).items()
              if v is not None}
    return _quasi_static(model, x, target, schedule, params, dict(tol=tol, max_iter=max_iter,
                                                                  **budget),
                         rate_tol, end_state, gate_samples, check_bool("transient", transient),
                         check_bool("drift_lag", drift_lag))


# ----------------------------------------------------------------------------------------------
# coupled mode
# ----------------------------------------------------------------------------------------------
def _coupled(model, x, target, schedule, params, integrator):
    """One ODE for activity, traces and the plastic parameters of each phase. With the lean
    integrators and nothing that records gradients it runs in inference mode (no version
    counters or view tracking: about a tenth of an evaluation) and its results are cloned out
    of it."""
    recording = torch.is_grad_enabled() and (x.requires_grad or any(
        p.requires_grad for ps in params.values() for p in (ps or []) if p is not None))
    if recording or integrator.backend.engine != "lean":
        return _coupled_run(model, x, target, schedule, params, integrator)
    with torch.inference_mode():
        pres = _coupled_run(model, x, target, schedule, params, integrator)
    return dataclasses.replace(
        pres, params={n: [_outside_inference(p) for p in v] if isinstance(v, list) else v
                      for n, v in pres.params.items()},
        phase_states={k: v.clone() for k, v in pres.phase_states.items()})


def _outside_inference(p):
    """``p``, cloned into an ordinary tensor if inference mode made it."""
    return p.clone() if p is not None and p.is_inference() else p


def _coupled_run(model, x, target, schedule, params, integrator):
    base = model.drive(x, target)
    y = model.initial_state(base, model.prepare(params))
    states, nfev, t0 = {}, 0, 0.0
    for phase in schedule.phases:
        drive = _phase_drive(model, base, phase, t0)
        if t0 > 0:                                   # the gates switch: the model may jump
            y = model.jump(t0, y, drive, model.prepare(params))
        t = torch.tensor([t0, t0 + phase.duration], dtype=model.dtype, device=model.device)
        ys, final, count = integrate_drive(model, drive, t, y, params, integrator=integrator,
                                           plastic=_plastic_groups(model, phase, params))
        params = params if final is None else final
        y, nfev, t0 = ys[-1], nfev + count, t0 + phase.duration
        states[phase.name] = y
    return Presentation(_copy_params(params), states, nfev, schedule.duration, "coupled")


def _phase_drive(model, base, phase, start):
    """``base`` with the gates of ``phase`` (which begins at ``start``): constant, or read from
    its waveforms at the time since ``start``, with their breakpoints."""
    if not phase.time_varying:
        return dataclasses.replace(base, gates=_constant(_bound_gates(model, phase.gates)))
    return dataclasses.replace(
        base, gates=lambda t: _bound_gates(model, phase.gates_at(float(t) - start)),
        breakpoints=tuple(start + b for b in phase.breakpoints))


def _bound_gates(model, gates: dict) -> dict:
    """A phase's gate values with the gate of every plastic group of ``model`` that the phase
    does not name switched off."""
    return {**{f"plastic_{g}": 0.0 for g in model.plastic_groups}, **gates}


def _plastic_groups(model, phase, params) -> tuple:
    """The parameters ``phase`` makes plastic (those of the plastic groups it names): the ODE
    state of the phase in coupled mode. The others have zero rates throughout the phase (their
    gates are off) and are held, which leaves the solution unchanged and spares the integrator
    their components (a third to a half of the weights in the two-phase schedule)."""
    on = {n for g in phase.plastic for n in model.plastic_groups.get(g, ())}
    return tuple(n for n in model.plastic_params if n in on and n in params)


@dataclass(frozen=True)
class _Piece:
    """A stretch of a phase over which the quasi-static learner holds the gates constant."""

    phase: object          # the Phase
    start: float           # time since the presentation began
    duration: float
    gates: dict            # gate values held over the piece
    last: bool             # the piece ends its phase


def _pieces(model, schedule, samples) -> list:
    """The schedule as pieces of constant gates: a phase with constant gates is one piece; a
    phase with waveforms is cut at their breakpoints and each stretch into ``samples`` equal
    pieces, the gates held at the piece's midpoint."""
    out = []
    for start, phase in zip(schedule.boundaries, schedule.phases):
        if not phase.time_varying:
            out.append(_Piece(phase, start, phase.duration, _bound_gates(model, phase.gates),
                              True))
            continue
        edges = (0.0,) + phase.breakpoints + (phase.duration,)
        cuts = [a + (b - a) * j / samples for a, b in zip(edges[:-1], edges[1:])
                for j in range(samples)] + [phase.duration]
        out += [_Piece(phase, start + a, b - a, _bound_gates(model, phase.gates_at(0.5 * (a + b))),
                       k == len(cuts) - 2) for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))]
    return out


# ----------------------------------------------------------------------------------------------
# quasi-static mode
# ----------------------------------------------------------------------------------------------
def _constant(gates: dict):
    return lambda t: gates


def _quasi_static(model, x, target, schedule, params, solve, rate_tol, end_state,
                  gate_samples, transient, drift_lag):
    params = _copy_params(params)
    base = model.drive(x, target)                        # validated once
    prepared = model.prepare(params)                     # again whenever the weights move
    y = model.initial_state(base, prepared)
    slow = tuple(v for v in model.slow_variables if v in model.layout.variables)
    others = [v for v in model.layout.variables if v != model.activity and v not in slow]
    pair = model.gates_per_example and not others
    pieces = _pieces(model, schedule, gate_samples)
    coarse_solve = dict(solve, tol=rate_tol)
    states, nfev, failure, worst, ahead = {}, 0, "", 0.0, None
    for k, piece in enumerate(pieces):
        phase, t0 = piece.phase, piece.start
        drive = dataclasses.replace(base, gates=_constant(piece.gates))
        if k > 0:                 # the gates switch: the model may jump (e.g. sample-and-hold)
            jumped = model.jump(t0, y, drive, prepared)
            y, ahead = (y, ahead) if jumped is y else (jumped, None)
        held = slow + tuple(v for v in (frozen_variables(model, drive, prepared, y, t0)
                                        if others else ()) if v not in slow)
        view = Frozen(model, held, y) if held else model
        coarse = ahead is None and _trains_coarse_groups_only(model, phase, params)
        if ahead is None:
            y_star, eq = _equilibrate(view, y, drive, params, prepared,
                                      coarse_solve if coarse else solve)
            nfev, failure, worst = _tally(eq, phase, nfev, failure, worst, final=not coarse)
        else:        # solved with the previous piece's re-solve; the held blocks are y's
            y_star, ahead = (view.embed(view.restrict(ahead)) if held else ahead), None
        start = y
        y, y_mean = _relax_slow(model, drive, prepared, y_star, slow, t0, piece.duration)
        rates = transient_rates(model, view, drive, prepared, t0, start, y_star, y_mean,
                                piece.duration) \
            if transient and _plastic_groups(model, phase, params) else \
            model.plasticity(t0, y_mean, drive, prepared)
        params = _euler_step(model, params, rates, piece.duration)
        last = k == len(pieces) - 1
        if last and not end_state:
            break
        if coarse or _moving(model, rates):  # end at the equilibrium of the end weights, to tol
            started, prepared = prepared, model.prepare(params)
            if pair and not last:
                y_star, ahead, eq = _equilibrate_pair(view, y_star, drive, pieces[k + 1].gates,
                                                      params, prepared, solve)
            else:
                y_star, eq = _equilibrate(view, y_star, drive, params, prepared, solve)
            nfev, failure, worst = _tally(eq, phase, nfev, failure, worst)
            y, _ = _relax_slow(model, drive, prepared, y_star, slow, t0, piece.duration)
            if transient and drift_lag and _moving(model, rates):
                y = y + lag_behind_drift(model, view, drive, started, prepared, t0, y_star,
                                         piece.duration)
        if piece.last:
            states[phase.name] = y
    return Presentation(params, states, nfev, schedule.duration, "quasi_static", not failure,
                        worst, failure)


def _euler_step(model, params, rates, duration):
    """``theta + duration * dtheta/dt`` for the plastic groups (new lists, the input
    untouched)."""
    params = dict(params)
    for name in model.plastic_params:
        if name in params and name in rates:
            params[name] = [p if p is None or r is None else torch.add(p, r, alpha=duration)
                            for p, r in zip(params[name], rates[name])]
    return params


def _trains_coarse_groups_only(model, phase, params) -> bool:
    """Whether ``phase`` trains something, and only groups of ``model.coarse_rate_groups``."""
    groups = _plastic_groups(model, phase, params)
    return bool(groups) and set(groups) <= set(model.coarse_rate_groups)


def _moving(model, rates) -> bool:
    """Whether any plastic group has a non-zero rate."""
    return any(r is not None and bool((r != 0).any())
               for name in model.plastic_params for r in rates.get(name) or ())


def _equilibrate(view, y, drive, params, prepared, solve):
    """Equilibrium from the full state ``y``, on the subspace of ``view`` when it is a
    :class:`Frozen` view; returns the full equilibrium state and the solver result."""
    if isinstance(view, Frozen):
        eq = solve_equilibrium(view, view.wrap(drive), view.restrict(y), params, prepared,
                               **solve)
        return view.embed(eq.y), eq
    eq = solve_equilibrium(view, drive, y, params, prepared, **solve)
    return eq.y, eq


def _equilibrate_pair(view, y, drive, following, params, prepared, solve):
    """The equilibrium of this piece (``drive``'s gates) and of the next one (gate values
    ``following``), both
    at the same weights and from ``y``, solved as one batch of ``2B`` examples whose gates
    differ per example (``Drive.example_gates``): at small batches an iteration costs about
    the same for twice the examples. Valid when the activity does not depend on the held
    (slow) variables, so the following phase's equilibrium does not wait for this one's.
    Returns ``(this phase's state, the following phase's, the solver result)``.
    """
    batch = y.shape[0]
    both = torch.cat([y, y])
    twice = torch.arange(batch, device=y.device).repeat(2)
    now, then = drive.gates(0.0), following
    differ = [n for n in now if now[n] != then.get(n, now[n])]
    table = torch.tensor([[float(now[n]) for n in differ], [float(then[n]) for n in differ]],
                         dtype=y.dtype, device=y.device).repeat_interleave(batch, dim=0)
    per_example = {n: table[:, j:j + 1] for j, n in enumerate(differ)}
    same = {n: v for n, v in now.items() if n not in per_example}
    paired = dataclasses.replace(drive.subset(twice), gates=_constant(same),
                                 example_gates=per_example)
    pair_view = Frozen(view.base, view.frozen, both) if isinstance(view, Frozen) else view
    y_both, eq = _equilibrate(pair_view, both, paired, params, prepared, solve)
    return y_both[:batch], y_both[batch:], eq


def _tally(eq, phase, nfev, failure, worst, final=True):
    """Counts, the first failure and the largest residual of the equilibria at ``tol``
    (``final``; a coarse one, re-solved later, adds its evaluations and failure only). An
    unstable equilibrium is a failure: the dynamics would not stay there."""
    if not all_finite(eq.y):
        raise NumericalError(f"quasi-static presentation: the equilibrium of phase "
                             f"{phase.name!r} is not finite")
    if not failure and not bool(eq.stable.all()):
        bad = int((~eq.stable).nonzero()[0, 0])
        failure = (f"phase {phase.name!r}, example {bad}: {eq.reason[bad] or 'not converged'}"
                   f" (residual {float(eq.residual[bad]):.3g}, leading eigenvalue "
                   f"{float(eq.leading_eigenvalue[bad]):+.3g})")
    return (nfev + eq.nfev, failure,
            max(worst, float(eq.residual.max())) if final else worst)


def _relax_slow(model, drive, prepared, y, variables, t0, duration):
    """End state and phase-average state of the slow ``variables`` over a phase of
    ``duration``, the fast activity held at its equilibrium in ``y`` (whose slow blocks hold
    their values at the start of the phase).

    A slow variable relaxes componentwise and linearly toward a value set by the activity,
    ``dv/dt = -k (v - v*)`` with a rate ``k >= 0`` per component (zero while it holds); the
    activity does not depend on it. The model declares ``k`` and ``v*``
    (:meth:`~dendrite_sim.dynamics.model.NetworkModel.slow_relaxation`), or they are probed from two
    evaluations of its rates alone (``model.rates``): ``k = F_v(v) - F_v(v + 1)``,
    ``v* = v + F_v(v) / k`` (``v`` where ``k = 0``). Over the phase::

        v(D) = v* + exp(-k D) (v - v*),     mean_[0,D] v = v* + phi_1(-k D) (v - v*)

    with ``phi_1(a) = (e^a - 1) / a`` (``phi_1(0) = 1``).
    """
    if not variables:
        return y, y
    declared = model.slow_relaxation(t0, y, drive)
    y_end = y_mean = y                          # copied once a variable moves
    for v in variables:
        sl = model.layout.variable_slice(v)
        if declared is not None:
            k, target = declared[v]
            if not isinstance(k, torch.Tensor) and k == 0:
                continue                        # held throughout (e.g. a trace gated off)
            gap = target - y[:, sl]             # v* - v
        else:
            k, gap = _probe_relaxation(model, drive, prepared, y, v, sl, t0)
            if k is None:
                continue
        to_end, to_mean = _relaxed_fractions(k, duration)
        if y_end is y:
            y_end, y_mean = y.clone(), y.clone()
        y_end[:, sl] = y[:, sl] + to_end * gap
        y_mean[:, sl] = y[:, sl] + to_mean * gap
    return y_end, y_mean


def _probe_relaxation(model, drive, prepared, y, v, sl, t0):
    """``(k, v* - v)`` of the slow variable ``v`` from two evaluations of its rates; ``(None,
    None)`` when it holds everywhere."""
    shifted = y.clone()
    shifted[:, sl] += 1.0
    with torch.no_grad():
        rate_now = model.rates(t0, y, drive, prepared, (v,))
        k = rate_now - model.rates(t0, shifted, drive, prepared, (v,))
    moving = k > 0
    if not bool(moving.any()):
        return None, None
    return k, torch.where(moving, rate_now / torch.where(moving, k, 1.0), 0.0)


def _relaxed_fractions(k, duration):
    """The fractions of the gap ``v* - v`` covered at the end of a phase of ``duration`` and on
    average over it, ``1 - e^{-kD}`` and ``1 - phi_1(-kD)``, for a rate ``k >= 0`` (a number
    or a tensor; 0 where ``k = 0``)."""
    if not isinstance(k, torch.Tensor):
        kd = k * duration
        return -math.expm1(-kd), 1.0 + math.expm1(-kd) / kd
    moving = k > 0
    kd = torch.where(moving, k, 1.0) * duration
    return (torch.where(moving, -torch.expm1(-kd), 0.0),
            torch.where(moving, 1.0 + torch.expm1(-kd) / kd, 0.0))


def _copy_params(params) -> dict:
    """New dict and lists (tensors shared: they are never modified in place)."""
    return {k: list(v) if isinstance(v, list) else v for k, v in params.items()}


# ----------------------------------------------------------------------------------------------
# frozen variables: equilibria on the subspace of the variables that move
# ----------------------------------------------------------------------------------------------
def frozen_variables(model: NetworkModel, drive: Drive, prepared, y: torch.Tensor,
                     t: float = 0.0) -> tuple:
    """Names of the state variables whose rate is identically zero under ``drive``'s gates.

    Probed at ``y`` and at a deterministic small perturbation of it (a held trace has zero
    rate everywhere; a following trace is zero only where it already equals the activity).
    The activity variable is never reported.
    """
    gen = torch.Generator().manual_seed(12345)
    noise = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.dtype).to(y.device)
    probe = y + 1e-3 * (1.0 + y.abs()) * noise
    with torch.no_grad():
        rates = [model.field(t, y, drive, prepared), model.field(t, probe, drive, prepared)]
    out = []
    for v in model.layout.variables:
        if v == model.activity:
            continue
        sl = model.layout.variable_slice(v)
        if all(bool((r[:, sl] == 0).all()) for r in rates):
            out.append(v)
    return tuple(out)


@dataclass
class _FrozenDrive(Drive):
    """A drive that also carries the held values of the frozen variables, ``(B, n_frozen)``
    (they act as constant inputs); ``subset`` keeps them aligned with the batch."""

    frozen: torch.Tensor | None = None

    def subset(self, index):
        base = Drive.subset(self, index)
        return _FrozenDrive(**{f.name: getattr(base, f.name)
                               for f in dataclasses.fields(Drive)},
                            frozen=self.frozen[index])


@functools.lru_cache(maxsize=64)
def _frozen_columns(layout_key, frozen, device):
    """The layout of the active variables of a state with layout ``layout_key``
    (``((variable, widths), ...)``), the columns of the active and of the held variables,
    the order that maps ``cat([active, held])`` back to the state, and whether that order is
    the identity (the held variables come last, e.g. the two-phase trace after the
    activity)."""
    layout = Layout(dict(layout_key))
    cols = torch.arange(layout.size, device=device)
    keep = torch.ones(layout.size, dtype=torch.bool, device=device)
    for v in frozen:
        keep[layout.variable_slice(v)] = False
    active, held = cols[keep], cols[~keep]
    order = torch.argsort(torch.cat([active, held]))
    active_layout = Layout({v: list(w) for v, w in layout_key if v not in frozen})
    return active_layout, active, held, order, bool((order == cols).all())


class Frozen(NetworkModel):
    """View of ``model`` whose state leaves out the ``frozen`` variables, held at their values
    in ``y_hold`` ``(B, N)``; everything else (field, parameters, activity) is the model's.

    ``restrict`` maps a full state to the view's, ``embed`` back. Used to solve equilibria on
    the activity while the slow variables relax apart (in closed form), and while variables
    with identically zero rates hold (their Jacobian rows vanish).
    """

    def __init__(self, model: NetworkModel, frozen, y_hold: torch.Tensor):
        unknown = [v for v in frozen if v not in model.layout.variables]
        if unknown or model.activity in frozen:
            raise ValueError(f"frozen must name non-activity variables of {model.layout}; got "
                             f"{tuple(frozen)}")
        self.base = model
        self.sizes, self.dtype, self.device = model.sizes, model.dtype, model.device
        self.activity, self.params = model.activity, model.params
        self.frozen = tuple(frozen)
        layout_key = tuple((v, tuple(w)) for v, w in model.layout.variables.items())
        self.layout, self._active, self._held, self._order, self._trailing = \
            _frozen_columns(layout_key, self.frozen, model.device)
        self.hold = y_hold[:, self._active.numel():] if self._trailing else y_hold[:, self._held]
        self.time_constants = {v: model.time_constants[v] for v in self.layout.variables}
        self._variables = tuple(self.layout.variables)
        # only the activity moves and the activity does not read what is held
        self._activity_alone = self._variables == (self.activity,) and \
            set(self.frozen) <= set(model.slow_variables)

    def restrict(self, y: torch.Tensor) -> torch.Tensor:
        return y[:, :self._active.numel()] if self._trailing else y[:, self._active]

    def embed(self, y_active: torch.Tensor, hold: torch.Tensor | None = None) -> torch.Tensor:
        full = torch.cat([y_active, self.hold if hold is None else hold], dim=-1)
        return full if self._trailing else full[:, self._order]

    def drive(self, x, target=None, gates=None, breakpoints=()) -> Drive:
        base = self.base.drive(x, target, gates, breakpoints)
        if self.hold.shape[0] != base.batch_size:
            raise ValueError(f"the held state has batch {self.hold.shape[0]}; x has "
                             f"{base.batch_size}")
        return self.wrap(base)

    def wrap(self, drive: Drive) -> Drive:
        """The model's ``drive`` carrying this view's held values (same batch)."""
        return _FrozenDrive(**{f.name: getattr(drive, f.name)
                               for f in dataclasses.fields(Drive)}, frozen=self.hold)

    def _hold_of(self, drive):
        return getattr(drive, "frozen", None) if isinstance(drive, _FrozenDrive) else self.hold

    def field(self, t, y, drive, prepared):
        full = self.embed(y, self._hold_of(drive))
        return self.base.rates(t, full, drive, prepared, tuple(self.layout.variables))

    @property
    def picard_relaxation(self):
        return self.base.picard_relaxation

    @property
    def gates_per_example(self):
        return self.base.gates_per_example

    @property
    def relaxation_factor(self):
        return self.base.relaxation_factor

    def relaxation(self, t, y, drive, prepared, variables=None):
        if self._activity_alone and variables is None:
            out = self.base.activity_relaxation(t, y, drive, prepared)
            if out is not None:
                return out
        full = self.embed(y, self._hold_of(drive))
        active = self._variables if variables is None else \
            tuple(v for v in self._variables if v in variables)
        return self.base.relaxation(t, full, drive, prepared, variables=active)

    def prepare(self, params):
        return self.base.prepare(params)

    def initial_state(self, drive, prepared):
        return self.restrict(self.base.initial_state(drive, prepared))
