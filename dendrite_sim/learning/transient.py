"""The activity's transient at the start of a quasi-static phase, to first order
(docs/derivations.md §10).

Within a phase of constant gates and (to zeroth order in the learning rates) fixed weights,
the solved variables ``h`` (those of the :class:`~dendrite_sim.learning.presentation.Frozen`
view: the activity, and any other variable that moves and is not slow) start at ``h0`` and
relax to the equilibrium ``h*``. Linearised, ``dh/dt = J (h - h*)`` with ``J`` the Jacobian of
their field at ``h*``, so::

    int_0^T (h(t) - h*) dt = J^{-1} (e^{JT} - I) (h0 - h*)  ~  -J^{-1} (h0 - h*)      (10.2)

for a stable ``J`` and ``T`` long against its slowest mode. A slow variable ``v`` with
``dv/dt = -k (v - v*(h))`` (the two-phase trace following ``h`` in the free phase) follows the
transient through its target; its own integral is ``T phi_1(-kT) D_h F_v [int (h - h*)]``
(10.4; ``F_v = dv/dt``, ``phi_1(a) = (e^a - 1)/a``): the whole transient of ``v*`` when
``kT >> 1``, none while the trace holds (``k = 0``, ``D_h F_v = 0``). Variables held with zero
rate get none. With ``delta`` that full-state vector, the weight change over the phase is, to
first order in the transient (10.5)::

    Delta theta = T rate(y_mean) + D_y rate(y_mean) [delta]

``y_mean`` the quasi-static phase-average state. :func:`transient_rates` returns
``Delta theta / T``, so the quasi-static Euler step applies it unchanged.
"""
from __future__ import annotations

import math

import torch

from dendrite_sim.dynamics.equilibrium import _batched_gmres
from dendrite_sim.dynamics.spectral import field_jacobian
from dendrite_sim.errors import NumericalError, all_finite

__all__ = ["transient_rates", "transient_integral", "DENSE_LIMIT"]

#: largest number of solved variables for a dense Jacobian and LU solve; above, GMRES on JVPs
DENSE_LIMIT = 64


def transient_rates(model, view, drive, prepared, t, start, y_star, y_mean, duration,
                    rel_tol=1e-3) -> dict:
    """The plasticity's rates over a phase with the activity's transient: ``rate(y_mean) +
    D_y rate(y_mean)[delta] / duration`` (10.5), same structure as ``model.plasticity``.

    ``view``: the model, or its ``Frozen`` view on the variables the phase solves (held
    values those of ``start``); ``start``, ``y_star``: full states at the start of the phase
    (after any jump) and at its equilibrium; ``y_mean``: the phase-average state the plain
    step uses; ``rel_tol``: relative residual of the GMRES solve (large states).
    """
    delta = transient_integral(model, view, drive, prepared, t, start, y_star, duration,
                               rel_tol)
    layout = []

    def flat(y):
        rates = model.plasticity(t, y, drive, prepared)
        layout[:] = [(name, [r is not None for r in rs]) for name, rs in rates.items()]
        # the state itself last: jvp wants an output even where every rate is None
        return tuple(r for rs in rates.values() for r in rs if r is not None) + (y,)

    with torch.no_grad():
        rates, changes = torch.func.jvp(flat, (y_mean,), (delta,))
    out, k = {}, 0
    for name, present in layout:
        out[name] = []
        for there in present:
            out[name].append(torch.add(rates[k], changes[k], alpha=1.0 / duration)
                             if there else None)
            k += there
    return out


def transient_integral(model, view, drive, prepared, t, start, y_star, duration,
                       rel_tol=1e-3) -> torch.Tensor:
    """``delta = int_0^T (y(t) - y_qs(t)) dt`` to first order, ``(B, N)``: (10.2) in the
    variables ``view`` solves, (10.4) in the slow ones that follow them, 0 in the others."""
    frozen = hasattr(view, "restrict")
    active = view.restrict(y_star) if frozen else y_star
    gap = (view.restrict(start) if frozen else start) - active
    solved = _response(view, drive, prepared, t, active, gap, rel_tol)
    if not frozen:
        return solved
    delta = view.embed(solved, torch.zeros_like(view.hold))
    slow = tuple(v for v in model.slow_variables if v in view.frozen)
    if slow:
        delta = delta + _slow_response(model, drive, prepared, t, y_star, delta, slow, duration)
    return delta


def _response(view, drive, prepared, t, h_star, gap, rel_tol):
    """``-J^{-1} gap`` per example, ``J`` the Jacobian of ``view``'s field at ``h_star``
    (10.2): dense LU up to :data:`DENSE_LIMIT` variables, else GMRES on JVPs to ``rel_tol``.
    Raises :class:`NumericalError` if the solve fails (singular or non-finite Jacobian, no
    convergence)."""
    if h_star.shape[-1] <= DENSE_LIMIT:
        jac = field_jacobian(view, drive, h_star, prepared, t)
        out, info = torch.linalg.solve_ex(jac, -gap)
        if not bool((info == 0).all()) or not all_finite(out):
            raise NumericalError("quasi-static transient: the Jacobian of the activity at the "
                                 "phase's equilibrium is singular or not finite")
        return out

    def matvec(v):
        return torch.func.jvp(lambda u: view.field(t, u, drive, prepared), (h_star,), (v,))[1]

    with torch.no_grad():
        out = _batched_gmres(matvec, -gap, rel_tol)
        residual = (matvec(out) + gap).norm(dim=-1)
    if not all_finite(out) or bool((residual > 10 * rel_tol * gap.norm(dim=-1)).any()):
        raise NumericalError(f"quasi-static transient: GMRES did not reach the relative "
                             f"residual {rel_tol:g} (worst {float(residual.max()):.3g} in "
                             f"absolute terms); is the phase's equilibrium stable?")
    return out


def _slow_response(model, drive, prepared, t, y_star, delta, slow, duration):
    """(10.4): ``T phi_1(-kT) D_y F_v [delta]`` in the columns of each slow variable ``v``
    (``F_v`` its rate, ``k`` its relaxation rate), 0 elsewhere. Exact for the linear trace
    when ``kT >> 1`` or ``k = 0``; for ``0 < kT ~ 1`` to relative order ``k tau``."""
    with torch.no_grad():
        pulled = torch.func.jvp(lambda y: model.rates(t, y, drive, prepared, slow),
                                (y_star,), (delta,))[1]
    out, col = torch.zeros_like(delta), 0
    declared = model.slow_relaxation(t, y_star, drive)
    for v in model.layout.variables:
        if v not in slow:
            continue
        sl = model.layout.variable_slice(v)
        width = sl.stop - sl.start
        k = declared[v][0] if declared is not None else \
            _probed_rate(model, drive, prepared, t, y_star, v, sl)
        out[:, sl] = _integrated_response(k, duration) * pulled[:, col:col + width]
        col += width
    return out


def _probed_rate(model, drive, prepared, t, y, v, sl):
    """``k = F_v(v) - F_v(v + 1)`` of a linear slow variable (as the quasi-static learner
    probes it)."""
    shifted = y.clone()
    shifted[:, sl] += 1.0
    with torch.no_grad():
        return model.rates(t, y, drive, prepared, (v,)) - \
            model.rates(t, shifted, drive, prepared, (v,))


def _integrated_response(k, duration):
    """``T phi_1(-kT) = (1 - e^{-kT}) / k`` (``T`` where ``k = 0``), for ``k >= 0`` a number
    or a tensor."""
    if not isinstance(k, torch.Tensor):
        return duration if k == 0 else -math.expm1(-k * duration) / k
    moving = k > 0
    safe = torch.where(moving, k, 1.0)
    return torch.where(moving, -torch.expm1(-safe * duration) / safe, duration)
