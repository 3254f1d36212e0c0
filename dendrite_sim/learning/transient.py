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
    base = model.plasticity(t, y_mean, drive, prepared)
    up, down = _central(lambda y: model.plasticity(t, y, drive, prepared), y_mean, delta)
    step = 1.0 / (2.0 * duration)
    out = {}
    for name, rates in base.items():
        out[name] = [None if r is None else r + step * (a - b)
                     for r, a, b in zip(rates, up[name], down[name])]
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
        up, down = _central(lambda u: view.field(t, u, drive, prepared), h_star, v)
        return (up - down) / 2.0

    with torch.no_grad():
        out = _batched_gmres(matvec, -gap, rel_tol)
        residual = (matvec(out) + gap).norm(dim=-1)
    # the recomputed residual carries the differences' rounding (float32: ~1e-4 relative),
    # so the check is loose: it catches a failed solve (an unstable or singular Jacobian)
    if not all_finite(out) or bool((residual > 0.1 * gap.norm(dim=-1)).any()):
        raise NumericalError(f"quasi-static transient: GMRES left a relative residual above "
                             f"0.1 (worst absolute {float(residual.max()):.3g}; asked "
                             f"{rel_tol:g}); is the phase's equilibrium stable?")
    return out


def _slow_response(model, drive, prepared, t, y_star, delta, slow, duration):
    """(10.4): ``T phi_1(-kT) D_y F_v [delta]`` in the columns of each slow variable ``v``
    (``F_v`` its rate, ``k`` its relaxation rate), 0 elsewhere. Exact for the linear trace
    when ``kT >> 1`` or ``k = 0``; for ``0 < kT ~ 1`` to relative order ``k tau``."""
    up, down = _central(lambda y: model.rates(t, y, drive, prepared, slow), y_star, delta)
    pulled = (up - down) / 2.0
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


def _central(f, y, v):
    """``f(y + e v) / e`` and ``f(y - e v) / e`` (any nest of dicts and lists of tensors or
    ``None``): ``(up - down) / 2`` is the directional derivative ``D f(y)[v]`` by central
    differences, truncation error ``O(e^2)``, ``e = eps^(1/3) (1 + max|y|) / max|v|`` (relative
    error ~1e-5 in float32, ~1e-10 in float64). A central difference costs two evaluations;
    ``torch.func.jvp`` of these fields costs 6-20 (digits network, batch 32)."""
    scale = float(v.abs().max())
    if scale == 0.0:
        e = 1.0
    else:
        e = torch.finfo(y.dtype).eps ** (1.0 / 3.0) * (1.0 + float(y.abs().max())) / scale
    with torch.no_grad():
        return _scaled(f(y + e * v), 1.0 / e), _scaled(f(y - e * v), 1.0 / e)


def _scaled(value, factor):
    if isinstance(value, dict):
        return {k: _scaled(v, factor) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scaled(v, factor) for v in value]
    return None if value is None else value * factor


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
