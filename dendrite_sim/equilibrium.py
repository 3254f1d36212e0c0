"""Batched equilibria ``F(y*) = 0`` of a model's vector field (SPEC §3).

Each example of the batch is an independent system, solved together:

* ``"newton"`` — damped Newton with the dense autograd Jacobian (``N <= dense_limit``);
* ``"newton_krylov"`` — inexact Newton whose linear systems are solved matrix-free by a
  batched GMRES on Jacobian-vector products (forward-mode AD), for large states;
* fallback — examples that do not converge are integrated toward steady state (dopri5 over
  ``settle_time``) and polished by Newton again.

The residual is ``max_k |F_k(y)|``, the largest rate of change ``|dy/dt|`` of the state.
Non-convergence is reported per example in ``converged``; nothing is hidden.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import NumericalError, check_range
from .integrate import integrate_drive
from .model import NetworkModel
from .spectral import field_jacobian

__all__ = ["fixed_point", "Equilibrium"]

METHODS = ("auto", "newton", "newton_krylov", "integrate")


@dataclass
class Equilibrium:
    """Result of :func:`fixed_point`.

    ``y`` (B, N); ``layers`` list of (B, n_i); ``residual`` (B,) ``max |dy/dt|``;
    ``converged`` (B,) bool (``residual <= tol``); ``iterations`` Newton steps; ``nfev``
    vector-field evaluations (JVPs and Jacobians counted as one each per example batch);
    ``method`` the solver used; ``used_fallback`` whether integration was needed.
    """

    y: torch.Tensor
    model: NetworkModel
    residual: torch.Tensor
    converged: torch.Tensor
    iterations: int
    nfev: int
    method: str
    used_fallback: bool
    tol: float

    @property
    def layers(self) -> list[torch.Tensor]:
        return self.model.layers(self.y)

    @property
    def final(self) -> torch.Tensor:
        return self.y

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())


class _Residual:
    """``F(y)`` with fixed drive and prepared parameters, counting evaluations."""

    def __init__(self, model, drive, prepared):
        self.model, self.drive, self.prepared = model, drive, prepared
        self.nfev = 0

    def __call__(self, y):
        self.nfev += 1
        return self.model.field(0.0, y, self.drive, self.prepared)

    def subset(self, index) -> "_Residual":
        sub = _Residual(self.model, self.drive.subset(index), self.prepared)
        sub.nfev = self.nfev
        return sub

    def jvp(self, y, v):
        self.nfev += 1
        return torch.func.jvp(lambda u: self.model.field(0.0, u, self.drive, self.prepared),
                              (y,), (v,))[1]

    def jacobian(self, y):
        self.nfev += 1
        return field_jacobian(self.model, self.drive, y, self.prepared)


def _norm(v):
    return v.abs().amax(-1)


def _hessenberg_lstsq(hess, beta, m):
    """``argmin_c ||beta e1 - H_m c||`` for the ``(B, m+1, m)`` Hessenberg matrices, with the
    least-squares residual norm (the GMRES residual) per example."""
    e1 = hess.new_zeros(hess.shape[0], m + 1, 1)
    e1[:, 0, 0] = beta
    q, rr = torch.linalg.qr(hess[:, :m + 1, :m])
    coef = torch.linalg.solve_triangular(rr, q.transpose(1, 2) @ e1, upper=True)
    return coef[:, :, 0], (e1 - hess[:, :m + 1, :m] @ coef).norm(dim=(1, 2))


def _batched_gmres(matvec, rhs, rel_tol, restart=30, max_restarts=4):
    """Solve ``A_b x_b = rhs_b`` per example with GMRES(restart), ``A`` given by ``matvec``.

    Batched Arnoldi (modified Gram-Schmidt); the small least-squares problems are solved by
    QR. Stops when every example's residual is below ``rel_tol_b * ||rhs_b||``.
    """
    x = torch.zeros_like(rhs)
    target = rel_tol * rhs.norm(dim=-1)
    for _ in range(max_restarts):
        r = rhs - matvec(x)
        beta = r.norm(dim=-1)
        if bool((beta <= target).all()):
            break
        basis = [r / beta.clamp_min(1e-300)[:, None]]
        hess = rhs.new_zeros(rhs.shape[0], restart + 1, restart)
        for j in range(restart):
            w = matvec(basis[j])
            for i, v in enumerate(basis):
                hess[:, i, j] = (w * v).sum(-1)
                w = w - hess[:, i, j, None] * v
            hess[:, j + 1, j] = w.norm(dim=-1)
            basis.append(w / hess[:, j + 1, j].clamp_min(1e-300)[:, None])
            coef, lsq_res = _hessenberg_lstsq(hess, beta, j + 1)
            if bool((lsq_res <= target).all()):
                break
        x = x + torch.einsum("bm,mbn->bn", coef, torch.stack(basis[:coef.shape[1]]))
    return x


def _newton_direction(residual, y, F, dense: bool):
    """``-J^{-1} F`` per example: dense batched LU solve, or inexact GMRES on JVPs with the
    forcing term ``min(0.1, ||F||)`` (Eisenstat & Walker), floored at the dtype's precision."""
    if dense:
        # batched solve is exact with the default thread count (SPEC §5b; guarded by a test)
        return torch.linalg.solve(residual.jacobian(y), -F)
    floor = 1e-10 if F.dtype == torch.float64 else 1e-5
    forcing = F.norm(dim=-1).clamp(min=floor, max=0.1)
    return _batched_gmres(lambda v: residual.jvp(y, v), -F, forcing)


def _line_search(residual, y, F0, step, tries=10):
    """Per-example backtracking on ``||F||_2``: halve until it decreases (Armijo, c=1e-4).

    Returns the new states, their residual vectors and a mask of the examples that moved.
    """
    merit0 = F0.norm(dim=-1)
    alpha = torch.ones_like(merit0)
    new_y, new_F = y.clone(), F0.clone()
    pending = torch.ones_like(merit0, dtype=torch.bool)
    for _ in range(tries):
        cand = y + alpha[:, None] * step
        F = residual(cand)
        merit = F.norm(dim=-1)
        better = pending & torch.isfinite(merit) & (merit <= (1 - 1e-4 * alpha) * merit0)
        new_y = torch.where(better[:, None], cand, new_y)
        new_F = torch.where(better[:, None], F, new_F)
        pending &= ~better
        if not bool(pending.any()):
            break
        alpha = alpha / 2
    return new_y, new_F, ~pending


def _newton(residual, y, tol, max_iter, dense):
    """Damped Newton on the examples still above ``tol``; stalled examples stop early.

    Returns ``(y, residual (B,), iterations)``.
    """
    F = residual(y)
    res = _norm(F)
    stalled = torch.zeros_like(res, dtype=torch.bool)
    iterations = 0
    while iterations < max_iter:
        active = ((res > tol) & ~stalled).nonzero().flatten()
        if active.numel() == 0:
            break
        iterations += 1
        sub = residual.subset(active)
        ya, Fa = y[active], F[active]
        step = _newton_direction(sub, ya, Fa, dense)
        step = torch.where(torch.isfinite(step), step, torch.zeros_like(step))
        ya, Fa, moved = _line_search(sub, ya, Fa, step)
        residual.nfev = sub.nfev
        y, F = y.index_copy(0, active, ya), F.index_copy(0, active, Fa)
        res = _norm(F)
        stalled = stalled.index_copy(0, active, ~moved)
    return y, res, iterations


def fixed_point(model: NetworkModel, x, target=None, *, y0=None, tol=None, max_iter=50,
                method="auto", dense_limit=None, settle_time=None, params=None,
                gates=None) -> Equilibrium:
    """Batched equilibrium of ``model`` for input ``x`` and teaching ``target``.

    Parameters
    ----------
    x, target : as in :func:`dendrite_sim.simulate`.
    y0 : starting guess ``(B, N)``; default the model's initial state (the forward pass).
    tol : residual tolerance on ``max |dy/dt|``; default 1e-10 (float64) or 1e-5 (float32).
    max_iter : Newton iterations per attempt, >= 1.
    method : ``"auto"`` (dense Newton if ``N <= dense_limit`` else Newton–Krylov),
        ``"newton"``, ``"newton_krylov"`` or ``"integrate"`` (integration, then no polish).
    dense_limit : largest ``N`` for dense Jacobians in ``"auto"`` (default 64: a dense
        Jacobian costs about ``N`` field evaluations, a Krylov step a few tens).
    settle_time : integration horizon of the fallback; default ``200 * model time scale``.
    gates : constant gates ``t -> dict`` (e.g. a phase's), as in :func:`simulate`.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    max_iter = int(check_range("max_iter", max_iter, low=1))
    dense_limit = 64 if dense_limit is None else int(check_range("dense_limit", dense_limit,
                                                                  low=1))
    drive = model.drive(x, target, gates)
    params = model.params if params is None else params
    prepared = model.prepare(params)
    tol = (1e-10 if model.dtype == torch.float64 else 1e-5) if tol is None else \
        check_range("tol", tol, low=0.0, low_open=True)
    y = model.initial_state(drive, prepared) if y0 is None else \
        model.check_state(y0, drive.batch_size)
    residual = _Residual(model, drive, prepared)
    dense = method == "newton" or (method == "auto" and model.state_size <= dense_limit)
    chosen = "integrate" if method == "integrate" else ("newton" if dense else "newton_krylov")
    horizon = settle_time if settle_time is not None else 200.0 * _time_scale(model)
    with torch.no_grad():
        if chosen == "integrate":
            y, res, iterations = y, _norm(residual(y)), 0
        else:
            y, res, iterations = _newton(residual, y, tol, max_iter, dense)
        used_fallback = bool((res > tol).any() | ~torch.isfinite(res).all())
        if used_fallback:
            y, res, more = _settle_and_polish(model, drive, params, residual, y, res, tol,
                                              max_iter, dense, float(horizon), chosen)
            iterations += more
    return Equilibrium(y, model, res, res <= tol, iterations, residual.nfev, chosen,
                       used_fallback, tol)


def _settle_and_polish(model, drive, params, residual, y, res, tol, max_iter, dense, horizon,
                       chosen, rounds=4):
    """Integrate the unconverged examples toward steady state in ``rounds`` stretches of
    ``horizon / rounds``, polishing with Newton after each stretch."""
    start_over = ~torch.isfinite(res)
    y = torch.where(start_over[:, None], model.initial_state(drive, residual.prepared), y)
    iterations = 0
    for _ in range(rounds):
        todo = (~(res <= tol)).nonzero().flatten()
        if todo.numel() == 0:
            break
        t = torch.tensor([0.0, horizon / rounds], dtype=model.dtype, device=model.device)
        try:
            ys, _, nfev = integrate_drive(model, drive.subset(todo), t, y[todo], params,
                                          rtol=1e-7, atol=1e-9)
        except NumericalError:  # a diverging example: report what was reached
            break
        residual.nfev += nfev
        y = y.index_copy(0, todo, ys[-1])
        if chosen != "integrate":
            sub = residual.subset(todo)
            ya, _, more = _newton(sub, y[todo], tol, max_iter, dense)
            residual.nfev = sub.nfev
            iterations += more
            y = y.index_copy(0, todo, ya)
        res = _norm(residual(y))
    return y, res, iterations


def _time_scale(model) -> float:
    """The model's slowest declared time constant (``time_scale`` or ``tau``), default 1."""
    return float(getattr(model, "time_scale", getattr(model, "tau", 1.0)))
