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

    def jvp(self, y, v):
        self.nfev += 1
        return torch.func.jvp(lambda u: self.model.field(0.0, u, self.drive, self.prepared),
                              (y,), (v,))[1]

    def jacobian(self, y):
        self.nfev += 1
        return field_jacobian(self.model, self.drive, y, self.prepared)


def _norm(v):
    return v.abs().amax(-1)


def _batched_gmres(matvec, rhs, restart=40, max_restarts=5, rel_tol=1e-6):
    """Solve ``A_b x_b = rhs_b`` for each example with GMRES(restart), ``A`` via ``matvec``.

    Arnoldi with modified Gram-Schmidt, batched; the small least-squares problems are solved
    by QR of the ``(B, m+1, m)`` Hessenberg matrices. Returns ``x`` ``(B, N)``.
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
        m = restart
        for j in range(restart):
            w = matvec(basis[j])
            for i, v in enumerate(basis):
                hij = (w * v).sum(-1)
                hess[:, i, j] = hij
                w = w - hij[:, None] * v
            hnorm = w.norm(dim=-1)
            hess[:, j + 1, j] = hnorm
            if bool((hnorm <= 1e-12 * beta.clamp_min(1e-300)).all()):
                m = j + 1
                break
            basis.append(w / hnorm.clamp_min(1e-300)[:, None])
        H = hess[:, :m + 1, :m]
        e1 = rhs.new_zeros(rhs.shape[0], m + 1)
        e1[:, 0] = beta
        q, rr = torch.linalg.qr(H)
        coef = torch.linalg.solve_triangular(rr, (q.transpose(1, 2) @ e1[:, :, None]),
                                             upper=True)[:, :, 0]
        x = x + torch.einsum("bm,mbn->bn", coef, torch.stack(basis[:m]))
    return x


def _transient_newton_step(residual, y, F, inv_dt, dense: bool, gmres_tol: float):
    """Solve ``(I/dt - J) s = F`` per example (dense LU, or GMRES on JVPs)."""
    if dense:
        J = residual.jacobian(y)
        eye = torch.eye(J.shape[-1], dtype=J.dtype, device=J.device)
        # batched solve: safe with the default thread count (SPEC §5b, guarded by a test)
        return torch.linalg.solve(inv_dt[:, None, None] * eye - J, F)
    return _batched_gmres(lambda v: inv_dt[:, None] * v - residual.jvp(y, v), F,
                          rel_tol=gmres_tol)


def _pseudo_transient(residual, y, tol, max_iter, dense, dt0):
    """Pseudo-transient continuation (Kelley & Keyes 1998) toward ``F(y) = 0``.

    Each step is a linearised implicit-Euler step of size ``dt`` (per example); ``dt`` grows
    as the residual falls (switched evolution relaxation, ``dt <- dt * res_old / res_new``), so
    early steps follow the stable dynamics and late steps are Newton steps (quadratic
    convergence). A step that raises the residual tenfold or is not finite is rejected and
    ``dt`` is cut by 4.
    """
    F = residual(y)
    res = _norm(F)
    dt = torch.full_like(res, dt0)
    eps = torch.finfo(y.dtype).eps
    iterations = 0
    for iterations in range(1, max_iter + 1):
        active = res > tol
        if not bool(active.any()):
            return y, res, iterations - 1
        step = _transient_newton_step(residual, y, F, 1.0 / dt, dense,
                                      gmres_tol=max(100 * eps, 1e-4))
        cand = y + step
        F_cand = residual(cand)
        res_cand = _norm(F_cand)
        ok = active & torch.isfinite(res_cand) & (res_cand < 10 * res)
        y = torch.where(ok[:, None], cand, y)
        F = torch.where(ok[:, None], F_cand, F)
        growth = torch.where(ok, res / res_cand.clamp_min(1e-300), torch.full_like(dt, 0.25))
        dt = (dt * growth).clamp(max=1e12)
        res = torch.where(ok, res_cand, res)
    return y, res, iterations


def fixed_point(model: NetworkModel, x, target=None, *, y0=None, tol=None, max_iter=50,
                method="auto", dense_limit=1024, settle_time=None, params=None,
                gates=None) -> Equilibrium:
    """Batched equilibrium of ``model`` for input ``x`` and teaching ``target``.

    Parameters
    ----------
    x, target : as in :func:`dendrite_sim.simulate`.
    y0 : starting guess ``(B, N)``; default the model's initial state (the forward pass).
    tol : residual tolerance on ``max |dy/dt|``; default 1e-10 (float64) or 1e-5 (float32).
    max_iter : Newton iterations per attempt, >= 1.
    method : ``"auto"`` (dense Newton if ``N <= dense_limit`` else Newton–Krylov),
        ``"newton"``, ``"newton_krylov"`` or ``"integrate"`` (integration only).
    settle_time : integration horizon of the fallback; default ``200 * model time scale``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    max_iter = int(check_range("max_iter", max_iter, low=1))
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
    iterations, used_fallback = 0, False
    with torch.no_grad():
        if chosen != "integrate":
            y, res, iterations = _pseudo_transient(residual, y, tol, max_iter, dense,
                                                   _time_scale(model))
        else:
            res = _norm(residual(y))
        if bool((~(res <= tol)).any()):
            used_fallback = True
            y, res, more = _settle_and_polish(model, drive, params, residual, y, res, tol,
                                              max_iter, dense, settle_time, chosen)
            iterations += more
    return Equilibrium(y, model, res, res <= tol, iterations, residual.nfev, chosen,
                       used_fallback, tol)


def _settle_and_polish(model, drive, params, residual, y, res, tol, max_iter, dense,
                       settle_time, chosen):
    """Integrate the unconverged examples toward steady state, then polish with Newton."""
    horizon = settle_time if settle_time is not None else 200.0 * _time_scale(model)
    t = torch.tensor([0.0, float(horizon)], dtype=model.dtype, device=model.device)
    finite = torch.isfinite(res)[:, None]
    start = torch.where(finite, y, model.initial_state(drive, residual.prepared))
    try:
        ys, _, nfev = integrate_drive(model, drive, t, start, params, rtol=1e-8, atol=1e-10)
    except NumericalError:  # a diverging example: report what Newton reached
        return y, res, 0
    residual.nfev += nfev
    settled = ys[-1]
    better = _norm(residual(settled)) < res
    y = torch.where(better[:, None], settled, y)
    if chosen == "integrate":
        return y, _norm(residual(y)), 0
    return _pseudo_transient(residual, y, tol, max_iter, dense, _time_scale(model))


def _time_scale(model) -> float:
    """The model's slowest declared time constant (``time_scale`` or ``tau``), default 1."""
    return float(getattr(model, "time_scale", getattr(model, "tau", 1.0)))
