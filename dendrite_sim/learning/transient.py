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

from dendrite_sim.dynamics.spectral import field_jacobian
from dendrite_sim.errors import NumericalError, all_finite

__all__ = ["transient_rates", "transient_integral", "DENSE_LIMIT", "REL_TOL"]

#: largest number of solved variables for a dense Jacobian and LU solve; above, GMRES
DENSE_LIMIT = 64
#: default relative residual of the GMRES solve (docs/derivations.md §10: the weight change
#: moves by ~rel_tol times the correction, itself ~10-20 % of it)
REL_TOL = 1e-2
#: the same for a phase that trains only ``model.coarse_rate_groups`` (rules that read the
#: reconstruction error, whose transient is a few % of their change: docs/derivations.md §10)
COARSE_REL_TOL = 0.1
#: most GMRES steps (no restart); a solve still above tolerance there raises
MAX_ITER = 40


def transient_rates(model, view, drive, prepared, t, start, y_star, y_mean, duration,
                    rel_tol=None) -> dict:
    """The plasticity's rates over a phase with the activity's transient: ``rate(y_mean) +
    D_y rate(y_mean)[delta] / duration`` (10.5), same structure as ``model.plasticity``.

    ``view``: the model, or its ``Frozen`` view on the variables the phase solves (held
    values those of ``start``); ``start``, ``y_star``: full states at the start of the phase
    (after any jump) and at its equilibrium; ``y_mean``: the phase-average state the plain
    step uses; ``rel_tol``: relative residual of the GMRES solve (large states); default
    :data:`REL_TOL`, or :data:`COARSE_REL_TOL` where only ``model.coarse_rate_groups`` learn.
    """
    base = model.plasticity(t, y_mean, drive, prepared)
    if rel_tol is None:
        rel_tol = COARSE_REL_TOL if _coarse_only(model, base) else REL_TOL
    delta = transient_integral(model, view, drive, prepared, t, start, y_star, duration,
                               rel_tol)
    e = _step(y_mean, delta)
    with torch.no_grad():
        moved = model.plasticity(t, y_mean + e * delta, drive, prepared)
    scale = 1.0 / (e * duration)
    return {name: [None if r is None else r + scale * (m - r) for r, m in zip(rates, moved[name])]
            for name, rates in base.items()}


def _coarse_only(model, rates) -> bool:
    """Whether every parameter with a rate belongs to ``model.coarse_rate_groups``."""
    coarse = {n for g in model.coarse_rate_groups for n in model.plastic_groups.get(g, ())}
    moving = {n for n, r in rates.items() if any(v is not None for v in r)}
    return bool(moving) and moving <= coarse


def transient_integral(model, view, drive, prepared, t, start, y_star, duration,
                       rel_tol=None) -> torch.Tensor:
    """``delta = int_0^T (y(t) - y_qs(t)) dt`` to first order, ``(B, N)``: (10.2) in the
    variables ``view`` solves, (10.4) in the slow ones that follow them, 0 in the others
    (``rel_tol`` of the GMRES solve, default :data:`REL_TOL`)."""
    rel_tol = REL_TOL if rel_tol is None else rel_tol
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
    (10.2): dense LU up to :data:`DENSE_LIMIT` variables, else GMRES (:func:`_gmres`) on
    forward differences of the field, right-preconditioned by the time constants (solve
    ``J T u = -gap``, ``delta = T u``). Raises :class:`NumericalError` if the solve fails
    (singular or non-finite Jacobian, no convergence)."""
    if h_star.shape[-1] <= DENSE_LIMIT:
        jac = field_jacobian(view, drive, h_star, prepared, t)
        out, info = torch.linalg.solve_ex(jac, -gap)
        if not bool((info == 0).all()) or not all_finite(out):
            raise NumericalError("quasi-static transient: the Jacobian of the activity at the "
                                 "phase's equilibrium is singular or not finite")
        return out
    scales = _time_constants(view, h_star)
    with torch.no_grad():
        at_star = view.field(t, h_star, drive, prepared)

        def matvec(u):                       # J T u by a forward difference about h_star
            v = u if scales is None else u * scales
            e = _step(h_star, v)
            return (view.field(t, h_star + e * v, drive, prepared) - at_star) / e

        out, relative = _gmres(matvec, -gap, rel_tol)
    if not all_finite(out) or bool((relative > 2.0 * rel_tol).any()):
        raise NumericalError(f"quasi-static transient: GMRES left a relative residual of "
                             f"{float(relative.max()):.3g} (asked {rel_tol:g}) after "
                             f"{MAX_ITER} iterations; is the phase's equilibrium stable?")
    return out if scales is None else out * scales


def _time_constants(view, like):
    """The time constant of each column of ``view``'s state, ``(N,)``, or ``None`` when all
    are equal (a common factor changes nothing in GMRES)."""
    constants = view.time_constants
    if len(set(constants.values())) == 1:
        return None
    out = like.new_empty(like.shape[-1])
    for v, tau in constants.items():
        out[view.layout.variable_slice(v)] = tau
    return out


def _gmres(matvec, rhs, rel_tol, max_iter=None):
    """GMRES from 0 for ``A_b x_b = rhs_b`` per example, ``A`` given by ``matvec``
    (Saad & Schultz 1986), with the least work per step beside ``matvec``: Arnoldi by
    classical Gram-Schmidt (elementwise products: batched matrix-vector products are slower
    at these sizes), and the residual norm of every example from the left null vector ``z``
    of the Hessenberg matrix ``H`` (``z^T H = 0``, ``z_0 = 1``, one new entry per step:
    ``min ||beta e_1 - H c|| = beta / ||z||``) instead of a least-squares solve per step; one
    QR solve at the end. Stops when every example is below ``rel_tol * ||rhs_b||`` or after
    ``max_iter`` (default :data:`MAX_ITER`) steps. Returns ``(x, relative residual per
    example)``."""
    max_iter = MAX_ITER if max_iter is None else max_iter
    tiny = torch.finfo(rhs.dtype).tiny
    beta = rhs.norm(dim=-1)
    basis = rhs.new_empty(max_iter + 1, *rhs.shape)                # (steps + 1, B, N)
    basis[0] = rhs / beta.clamp_min(tiny)[:, None]
    hess = rhs.new_zeros(max_iter + 1, max_iter, rhs.shape[0])
    null = rhs.new_zeros(max_iter + 1, rhs.shape[0])
    null[0] = 1.0
    done = beta == 0
    for j in range(max_iter):
        w = matvec(basis[j])
        col = (basis[:j + 1] * w).sum(-1)
        w = w - (col[:, :, None] * basis[:j + 1]).sum(0)
        below = w.norm(dim=-1)
        hess[:j + 1, j], hess[j + 1, j] = col, below
        basis[j + 1] = w / below.clamp_min(tiny)[:, None]
        # z_{j+1} = -sum_i z_i H_ij / H_{j+1,j}; a breakdown (H_{j+1,j} = 0) solves exactly
        null[j + 1] = -(null[:j + 1] * col).sum(0) / below.clamp_min(tiny)
        if bool((done | (null[:j + 2].norm(dim=0) * rel_tol >= 1.0)).all()):
            break
    steps = j + 1
    hess = hess[:steps + 1, :steps].permute(2, 0, 1)               # (B, steps + 1, steps)
    q, r = torch.linalg.qr(hess)
    r = r + torch.diag_embed((r.diagonal(dim1=-2, dim2=-1) == 0).to(r.dtype))  # breakdowns
    coef = torch.linalg.solve_triangular(r, q[:, :1].mT * beta[:, None, None], upper=True)
    x = (coef[:, :, 0].T[:, :, None] * basis[:steps]).sum(0)
    residual = (hess @ coef)[:, :, 0]
    residual[:, 0] -= beta
    return x, residual.norm(dim=-1) / beta.clamp_min(tiny)


def _slow_response(model, drive, prepared, t, y_star, delta, slow, duration):
    """(10.4): ``T phi_1(-kT) D_y F_v [delta]`` in the columns of each slow variable ``v``
    (``F_v`` its rate, ``k`` its relaxation rate), 0 elsewhere. Exact for the linear trace
    when ``kT >> 1`` or ``k = 0``; for ``0 < kT ~ 1`` to relative order ``k tau``."""
    e = _step(y_star, delta)
    with torch.no_grad():
        pulled = (model.rates(t, y_star + e * delta, drive, prepared, slow) -
                  model.rates(t, y_star, drive, prepared, slow)) / e
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


def _step(y, v, per_example=False):
    """The step ``e`` of the forward difference ``(f(y + e v) - f(y)) / e ~ D f(y)[v]``:
    ``e = sqrt(eps) (1 + max|y|) / max|v|`` (1 where ``v = 0``), a number or, per example,
    ``(B, 1)``. Truncation ``O(e |v|^2)`` and rounding ``O(eps / e)`` errors are both
    ``~sqrt(eps)`` relative (3e-4 in float32, 1.5e-8 in float64), below the solve's
    tolerance; a forward difference costs one evaluation (the base point's is shared), a
    central one two, ``torch.func.jvp`` of these fields 6-20."""
    root = torch.finfo(y.dtype).eps ** 0.5
    if per_example:
        size = v.abs().amax(-1, keepdim=True)
        return torch.where(size > 0, root * (1.0 + y.abs().amax(-1, keepdim=True)) /
                           size.clamp_min(torch.finfo(y.dtype).tiny), 1.0)
    size = float(v.abs().max())
    return 1.0 if size == 0.0 else root * (1.0 + float(y.abs().max())) / size


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


def drift_lag(model, view, drive, started, ended, t, y_end, duration,
              rel_tol=None) -> torch.Tensor:
    """How far the state at the end of a phase lags the equilibrium ``y_end`` of the weights
    it ends with, to first order in the weights' rates (docs/derivations.md §10, (10.6)).

    While the weights move at a constant rate the equilibrium drifts at ``dh*/dt = J^{-1}
    F(h*; theta_0) / T`` (``F(h*; theta_0) ~ J (h* - h*_0)``: the field at the end equilibrium with the
    weights the phase started with, ``started``; ``ended`` the prepared end weights, ``J``
    at ``y_end``), and the activity trails it by ``lag_h = J^{-1} dh*/dt``; a slow variable
    with ``dv/dt = -k (v - v*(h))`` trails its drifting target by ``dv*/dt / k`` besides,
    ``lag_v = D_h v*[lag_h] - D_h v*[dh*/dt] / k`` (``k = 0``: it holds, no lag). The drift
    is taken from the field, not from the difference of the two phases' equilibria: that of
    the start may be solved to the coarse ``rate_tol`` only (its error would swamp the
    drift). Two GMRES solves to ``rel_tol`` (default :data:`REL_TOL`). Returns the
    ``(B, N)`` lag to add to the end state."""
    rel_tol = REL_TOL if rel_tol is None else rel_tol
    frozen = hasattr(view, "restrict")
    h_end = view.restrict(y_end) if frozen else y_end
    with torch.no_grad():
        pushed = view.field(t, h_end, drive, started) / duration
    drift = -_response(view, drive, ended, t, h_end, pushed, rel_tol)       # J^{-1} F / T
    lag = -_response(view, drive, ended, t, h_end, drift, rel_tol)          # J^{-1} drift
    if not frozen:
        return lag
    zeros = torch.zeros_like(view.hold)
    lag, drift = view.embed(lag, zeros), view.embed(drift, zeros)
    slow = tuple(v for v in model.slow_variables if v in view.frozen)
    declared = model.slow_relaxation(t, y_end, drive) if slow else None
    for v in slow:
        sl = model.layout.variable_slice(v)
        k = declared[v][0] if declared is not None else \
            _probed_rate(model, drive, ended, t, y_end, v, sl)
        if not isinstance(k, torch.Tensor) and k == 0:
            continue                                                       # held
        rate = lambda y: model.rates(t, y, drive, ended, (v,))
        pulled_lag, pulled_drift = (_directional(rate, y_end, d) for d in (lag, drift))
        safe = torch.where(k > 0, k, 1.0) if isinstance(k, torch.Tensor) else k
        value = pulled_lag / safe - pulled_drift / safe ** 2      # D_y F_v = k D_h v*
        lag[:, sl] = torch.where(k > 0, value, 0.0) if isinstance(k, torch.Tensor) else value
    return lag


def _directional(f, y, v):
    """``D f(y)[v]`` by a forward difference (:func:`_step`)."""
    e = _step(y, v)
    with torch.no_grad():
        return (f(y + e * v) - f(y)) / e
