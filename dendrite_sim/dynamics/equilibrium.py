"""Batched equilibria ``F(y*) = 0`` of a model's vector field (SPEC §3).

Each example of the batch is an independent system, solved together:

* ``"anderson"`` — Anderson acceleration of the model's relaxation map
  (:meth:`~dendrite_sim.dynamics.model.NetworkModel.relaxation`): by default the Picard map
  ``y <- y + tau F(y)``, on a linear problem equivalent to GMRES on the Jacobian; the mixing
  models sweep their layers bottom-up, ``h_i <- (1-mu) f_i(h_{i-1}) + mu g_i(h_{i+1})`` with
  ``h_{i-1}`` already updated (nonlinear Gauss–Seidel), which needs 40–60 % fewer iterations
  when the feedback is an imperfect inverse (measured on the digits network after training:
  13 against 25 to 1e-10). One map evaluation per iteration, no derivatives; plain iterations
  (no mixing, cheaper) while the map contracts by 0.7 or better per iteration over two
  iterations; the true residual is evaluated at the end;
* ``"newton"`` — damped Newton with the dense autograd Jacobian;
* ``"newton_krylov"`` — inexact Newton whose linear systems are solved matrix-free by a
  batched GMRES on Jacobian-vector products (forward-mode AD);
* ``"auto"`` — dense Newton for small states (``N <= dense_limit``); otherwise Anderson, then
  Newton–Krylov on the examples where it stalls;
* fallback — examples that do not converge are integrated toward steady state (dopri5 over
  ``settle_time``) and polished by the same solver again.

The residual is ``max_k |F_k(y)|``, the largest rate of change ``|dy/dt|`` of the state.
Non-convergence is reported per example in ``converged``; nothing is hidden.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dendrite_sim.errors import NumericalError, check_range
from dendrite_sim.dynamics.integrate import integrate_drive
from dendrite_sim.dynamics.model import Drive, NetworkModel
from dendrite_sim.dynamics.spectral import field_jacobian

__all__ = ["fixed_point", "solve_equilibrium", "Equilibrium"]

METHODS = ("auto", "anderson", "newton", "newton_krylov", "integrate")


@dataclass
class Equilibrium:
    """Result of :func:`fixed_point`.

    ``y`` (B, N); ``layers`` list of (B, n_i); ``residual`` (B,) ``max |dy/dt|``;
    ``converged`` (B,) bool (``residual <= tol``); ``iterations`` Anderson and Newton steps;
    ``nfev`` vector-field evaluations in forward-pass equivalents of the batch (a field
    evaluation 1, a Jacobian-vector product 2, a dense Jacobian ``N + 1``, integration steps
    as counted by the integrator); ``method`` the solvers that ran, joined by ``+`` (e.g.
    ``"anderson+newton_krylov"``); ``used_fallback`` whether integration was needed.
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
    """``F(y)`` with fixed drive and prepared parameters. Subsets (examples of the batch)
    share one count of evaluations, in forward-pass equivalents (see :class:`Equilibrium`)."""

    def __init__(self, model, drive, prepared, tally=None):
        self.model, self.drive, self.prepared = model, drive, prepared
        self._tally = [0] if tally is None else tally

    @property
    def nfev(self) -> int:
        return self._tally[0]

    def count(self, n: int):
        self._tally[0] += n

    def __call__(self, y):
        self.count(1)
        return self.model.field(0.0, y, self.drive, self.prepared)

    def relax(self, y, step, F=None):
        """One application of the model's relaxation map (as costly as a field evaluation;
        free for the Picard map ``y + step F(y)`` when ``F = F(y)`` is known; ``step``: the
        model's column time constants)."""
        if F is not None and self.picard:
            return y + step * F
        self.count(1)
        return self.model.relaxation(0.0, y, self.drive, self.prepared)

    @property
    def picard(self) -> bool:
        return bool(self.model.picard_relaxation)

    @property
    def omega(self) -> float:
        return float(self.model.relaxation_factor)

    def subset(self, index) -> "_Residual":
        return _Residual(self.model, self.drive.subset(index), self.prepared, self._tally)

    def jvp(self, y, v):
        self.count(2)
        return torch.func.jvp(lambda u: self.model.field(0.0, u, self.drive, self.prepared),
                              (y,), (v,))[1]

    def jacobian(self, y):
        self.count(y.shape[-1] + 1)
        return field_jacobian(self.model, self.drive, y, self.prepared)


def _norm(v):
    return v.abs().amax(-1)


def _rate_norm(r, step):
    """``max |r / step|``: the map residual ``r`` in the units of ``F`` (``step`` a number or
    the ``(N,)`` column time constants)."""
    return _norm(r) / step if isinstance(step, float) else _norm(r / step)


def _start(y, F, tol):
    """Copies of ``y`` and ``F`` and the examples to iterate: those above ``tol`` (NaN compares
    False: left as is), or all of them when ``F`` is not known (``None``)."""
    if F is None:
        return y.clone(), torch.full_like(y, float("nan")), torch.arange(y.shape[0],
                                                                          device=y.device)
    return y.clone(), F.clone(), (_norm(F) > tol).nonzero().flatten()


def _anderson(residual, y, F, tol, max_iter, step, memory=5, patience=5, rho=0.7):
    """Anderson acceleration (type II) of the model's relaxation map ``G`` on the examples
    above ``tol`` (:meth:`~dendrite_sim.dynamics.model.NetworkModel.relaxation`: by default the Picard
    map ``y + step F(y)``; the mixing models sweep their layers, nonlinear Gauss-Seidel).

    The last ``memory`` differences of the map residual ``r = G(y) - y`` and of ``G`` are kept
    in ring buffers ``(B, memory, N)``; each iteration mixes them with the coefficients of
    :func:`_mixing_coefficients`. Plain start: while every active example's ``max |r|`` shrinks
    by ``rho`` or better per iteration, measured over pairs of iterations (``rho^2`` per pair,
    checked after every second one: a single iteration is erratic, e.g. the sweep's first step
    on the trained digits network shrinks the residual 0.5-0.67x where the next ones shrink it
    0.3x), the map is iterated plainly, without history, and over-relaxed: ``y + omega (G(y) -
    y)`` with the model's ``relaxation_factor`` (1.15 for the mixing models' sweep, 20 % fewer
    sweeps on digits; ``docs/derivations.md`` §7). Mixing starts after the first slower
    pair, with the history recorded from then on. On a map that contracts well mixing does not
    pay: on the digits network it saved 8 % of the sweeps and cost ~40 % of a sweep per
    iteration (training epochs 11-15 % faster without it). An example stops when ``max |r| /
    step <= tol`` (in the units of ``F``; equal to ``max |F|`` for the Picard map), turns
    non-finite, or finds no new best in ``patience`` iterations; it is then frozen, and the
    batch is compacted to the live examples once at most half of it is live (a compaction costs
    about as much as the frozen examples' iterations). For the Picard map each example returns
    its best iterate ``y``, and ``F`` is the map residual over ``step``. For any other map it
    returns the map's image ``G(y)`` of its best iterate, and ``F`` is evaluated there once at
    the end: for the layer sweep ``tau F(G(y))_i = mu (g_i(G(y)_{i+1}) - g_i(y_{i+1}))``, only
    the change of the feedback input, about ``mu`` times the map residual, where ``tau F(y)``
    carries the forward change as well and can exceed the map residual (measured: examples
    stopped at ``max |r| <= tol`` with ``max |F| = 1.2 tol``, sent on to Newton–Krylov at ~15x
    the cost of the solve). Returns ``(y, F, iterations)``.
    """
    y, F, touched = _start(y, F, tol)
    if touched.numel() == 0:
        return y, F, 0
    image = not residual.picard                      # return G(y_best), not y_best
    omega = residual.omega
    sub = residual if touched.numel() == y.shape[0] else residual.subset(touched)
    idx, touched_residual, ya = touched, sub, y[touched]
    ga = sub.relax(ya, step, F[touched])
    fa = ga - ya
    best, since_best, y_best, f_best = (_rate_norm(fa, step), torch.zeros_like(touched),
                                        ga if image else ya, fa)
    iterations, limit, res, previous = 0, tol, best, best
    d_f = d_g = None                  # ring buffers of the history, once mixing has started
    recorded, keep = 0, best > limit
    while iterations < max_iter:
        active = int(keep.sum())
        if active == 0:
            break
        if 2 * active <= idx.numel():                       # compact to the live examples
            y[idx], F[idx] = y_best, f_best / step
            idx, ya, ga, fa, res, previous, best, since_best, y_best, f_best = (
                v[keep] for v in (idx, ya, ga, fa, res, previous, best, since_best, y_best,
                                  f_best))
            sub = residual.subset(idx)
            if d_f is not None:
                d_f, d_g = d_f[keep], d_g[keep]
            keep = keep[keep]
        finished = active < idx.numel()                     # still in the batch, frozen
        new = ga if omega == 1.0 or d_f is not None else torch.lerp(ya, ga, omega)
        if recorded:
            filled = min(recorded, memory)
            gamma = _mixing_coefficients(d_f[:, :filled], fa)
            new = torch.baddbmm(ga[:, None], gamma[:, None], d_g[:, :filled], alpha=-1)[:, 0]
        gn = sub.relax(new, step)
        fn = gn - new
        if d_f is not None:
            torch.sub(fn, fa, out=d_f[:, recorded % memory])
            torch.sub(gn, ga, out=d_g[:, recorded % memory])
            recorded += 1
        ya, ga, fa, earlier, previous, iterations = new, gn, fn, previous, res, iterations + 1
        res = _rate_norm(fn, step)
        if d_f is None and iterations % 2 == 0 and bool((keep & ~(res <= rho * rho * earlier))
                                                        .any()):
            d_f = fn.new_empty(fn.shape[0], memory, fn.shape[-1])  # only filled slots are read
            d_g = torch.empty_like(d_f)
        if d_f is None and not finished:  # every example shrinks by rho: each one's best
            best, y_best, f_best = res, gn if image else ya, fa
            keep = res > limit
            continue
        better = keep & (res < best) if d_f is not None else keep    # False for NaN
        best = torch.where(better, res, best)
        y_best = torch.where(better[:, None], gn if image else ya, y_best)
        f_best = torch.where(better[:, None], fa, f_best)
        if d_f is not None:
            since_best = torch.where(better, 0, since_best + 1)
            keep = keep & (since_best < patience)
        keep = keep & (res > limit)                          # NaN stops at once
    y[idx], F[idx] = y_best, f_best / step
    if image:                                             # the map residual is not F
        F[touched] = touched_residual(y[touched])
    return y, F, iterations


def _mixing_coefficients(d_f, f):
    """Anderson's ``gamma = argmin ||f - d_f^T gamma||`` per example, ``d_f`` ``(B, k, N)``,
    from the ``k x k`` normal equations with a Tikhonov term ``sqrt(eps) * max diag`` (the
    history may be nearly degenerate). An example whose system cannot be solved gets
    ``gamma = 0`` (a plain step of the map)."""
    k = d_f.shape[1]
    both = torch.cat([d_f, f[:, None]], dim=1)
    products = both @ both.mT                       # one product: the Gram matrix and d_f f
    gram, rhs = products[:, :k, :k], products[:, :k, k]
    diagonal = gram.diagonal(dim1=-2, dim2=-1)
    diagonal += diagonal.amax(-1, keepdim=True) * torch.finfo(gram.dtype).eps ** 0.5
    gamma, info = torch.linalg.solve_ex(gram, rhs)
    return torch.where((info == 0)[:, None], gamma, 0.0)


def _hessenberg_lstsq(hess, beta, m):
    """``argmin_c ||beta e1 - H_m c||`` for the ``(B, m+1, m)`` Hessenberg matrices, with the
    least-squares residual norm (the GMRES residual) per example."""
    e1 = hess.new_zeros(hess.shape[0], m + 1, 1)
    e1[:, 0, 0] = beta
    q, rr = torch.linalg.qr(hess[:, :m + 1, :m])
    coef = torch.linalg.solve_triangular(rr, q.transpose(1, 2) @ e1, upper=True)
    return coef[:, :, 0], (e1 - hess[:, :m + 1, :m] @ coef).norm(dim=(1, 2))


def _batched_gmres(matvec, rhs, rel_tol, restart=30, max_restarts=4):
    """Solve ``A_b x_b = rhs_b`` per example with GMRES(restart) from ``x = 0``, ``A`` given
    by ``matvec``.

    Batched Arnoldi (modified Gram-Schmidt); the small least-squares problems are solved by
    QR. Stops when every example's residual is below ``rel_tol_b * ||rhs_b||``; the true
    residual is recomputed only on a restart.
    """
    x, r = torch.zeros_like(rhs), rhs
    target = rel_tol * rhs.norm(dim=-1)
    for cycle in range(max_restarts):
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
        if bool((lsq_res <= target).all()) or cycle + 1 == max_restarts:
            break
        r = rhs - matvec(x)
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


def _newton(residual, y, F, tol, max_iter, dense):
    """Damped Newton on the examples still above ``tol``; stalled examples stop early.

    Returns ``(y, F, iterations)``.
    """
    stalled = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
    iterations = 0
    while iterations < max_iter:
        active = ((_norm(F) > tol) & ~stalled).nonzero().flatten()
        if active.numel() == 0:
            break
        iterations += 1
        sub = residual.subset(active)
        ya, Fa = y[active], F[active]
        step = _newton_direction(sub, ya, Fa, dense)
        step = torch.where(torch.isfinite(step), step, torch.zeros_like(step))
        ya, Fa, moved = _line_search(sub, ya, Fa, step)
        y, F = y.index_copy(0, active, ya), F.index_copy(0, active, Fa)
        stalled = stalled.index_copy(0, active, ~moved)
    return y, F, iterations


def _solve(residual, y, F, tol, max_iter, plan, step):
    """Run the solvers of ``plan`` in turn on the examples still above ``tol``. ``F = None``
    (not yet evaluated) is evaluated first unless the first solver is Anderson on a relaxation
    map other than Picard's (which finds the converged examples by itself, and evaluates ``F``).

    Returns ``(y, F, iterations, names of the solvers that ran)``.
    """
    iterations, ran = 0, []
    for name in plan:
        if F is None and (name != "anderson" or residual.picard):
            F = residual(y)
        if F is not None and not bool((~(_norm(F) <= tol)).any()):
            break
        if name == "anderson":
            y, F, more = _anderson(residual, y, F, tol, max_iter, step)
        else:
            y, F, more = _newton(residual, y, F, tol, max_iter, dense=name == "newton")
        iterations, ran = iterations + more, ran + [name]
    F = residual(y) if F is None else F
    return y, F, iterations, ran


def fixed_point(model: NetworkModel, x, target=None, *, y0=None, tol=None, max_iter=50,
                method="auto", dense_limit=None, settle_time=None, settle_steps=2000,
                params=None, gates=None) -> Equilibrium:
    """Batched equilibrium of ``model`` for input ``x`` and teaching ``target``.

    Parameters
    ----------
    x, target : as in :func:`dendrite_sim.simulate`.
    y0 : starting guess ``(B, N)``; default the model's initial state (the forward pass).
    tol : residual tolerance on ``max |dy/dt|``; default 1e-10 (float64) or 1e-5 (float32).
    max_iter : iterations per solver and attempt, >= 1.
    method : ``"auto"`` (dense Newton if ``N <= dense_limit``; else Anderson, then
        Newton–Krylov on the examples where it stalls), ``"anderson"``, ``"newton"``,
        ``"newton_krylov"`` or ``"integrate"`` (integration, then no polish).
    dense_limit : largest ``N`` for dense Newton in ``"auto"`` (default 64: a dense Jacobian
        costs about ``N`` field evaluations, in one vectorised pass, and Newton then converges
        quadratically, far below ``tol``; an Anderson iteration costs one evaluation).
    settle_time : integration horizon of the fallback; default ``200 * model time scale``.
    settle_steps : most dopri5 steps per stretch of the fallback, >= 1 (in four stretches).
        A stiff or runaway system (e.g. weights that diverged in training) stops there and
        its examples are reported unconverged, instead of integrating for hours.
    gates : constant gates ``t -> dict`` (e.g. a phase's), as in :func:`simulate`.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    max_iter = int(check_range("max_iter", max_iter, low=1))
    settle_steps = int(check_range("settle_steps", settle_steps, low=1))
    dense_limit = 64 if dense_limit is None else int(check_range("dense_limit", dense_limit,
                                                                  low=1))
    drive = model.drive(x, target, gates)
    params = model.params if params is None else params
    prepared = model.prepare(params)
    if tol is not None:
        check_range("tol", tol, low=0.0, low_open=True)
    y = model.initial_state(drive, prepared) if y0 is None else \
        model.check_state(y0, drive.batch_size)
    return solve_equilibrium(model, drive, y, params, prepared, tol=tol, max_iter=max_iter,
                             method=method, dense_limit=dense_limit, settle_time=settle_time,
                             settle_steps=settle_steps)


def default_tol(dtype: torch.dtype) -> float:
    """The default residual tolerance on ``max |dy/dt|``: 1e-10 in float64, 1e-5 otherwise."""
    return 1e-10 if dtype == torch.float64 else 1e-5


def solve_equilibrium(model: NetworkModel, drive: Drive, y: torch.Tensor, params, prepared, *,
                      tol=None, max_iter=50, method="auto", dense_limit=64, settle_time=None,
                      settle_steps=2000) -> Equilibrium:
    """:func:`fixed_point` on an already validated ``drive`` from the state ``y``, with
    ``prepared = model.prepare(params)`` (engine-level: nothing is checked; used by the
    training loop, which validates its inputs once per presentation)."""
    tol = default_tol(model.dtype) if tol is None else tol
    residual = _Residual(model, drive, prepared)
    auto = ("newton",) if model.state_size <= dense_limit else ("anderson", "newton_krylov")
    plan = {"auto": auto, "integrate": ()}.get(method, (method,))
    step = model.column_time_constants()
    horizon = settle_time if settle_time is not None else 200.0 * model.time_scale
    with torch.no_grad():
        y, F, iterations, ran = _solve(residual, y, None, tol, max_iter, plan, step)
        res = _norm(F)
        used_fallback = bool((~(res <= tol)).any())
        if used_fallback:
            y, res, more, ran_more = _settle_and_polish(model, drive, params, residual, y, res,
                                                        tol, max_iter, plan, step,
                                                        float(horizon), settle_steps)
            iterations += more
            ran += [name for name in ran_more if name not in ran]
    label = "+".join(ran or plan[:1] or ("integrate",))
    return Equilibrium(y, model, res, res <= tol, iterations, residual.nfev, label,
                       used_fallback, tol)


def _settle_and_polish(model, drive, params, residual, y, res, tol, max_iter, plan, step,
                       horizon, max_steps, rounds=4):
    """Integrate the unconverged examples toward steady state in ``rounds`` stretches of
    ``horizon / rounds``, polishing with the solvers of ``plan`` after each stretch.

    Returns ``(y, residual (B,), iterations, names of the solvers that ran)``.
    """
    start_over = ~torch.isfinite(res)
    y = torch.where(start_over[:, None], model.initial_state(drive, residual.prepared), y)
    iterations, ran = 0, []
    for _ in range(rounds):
        todo = (~(res <= tol)).nonzero().flatten()
        if todo.numel() == 0:
            break
        t = torch.tensor([0.0, horizon / rounds], dtype=model.dtype, device=model.device)
        try:
            ys, _, nfev = integrate_drive(model, drive.subset(todo), t, y[todo], params,
                                          rtol=1e-7, atol=1e-9,
                                          options={"max_num_steps": max_steps})
        except NumericalError:  # diverging, or out of steps: report what was reached
            break
        residual.count(nfev)
        sub = residual.subset(todo)
        ya, Fa, more, names = _solve(sub, ys[-1], sub(ys[-1]), tol, max_iter, plan, step)
        iterations, ran = iterations + more, ran + names
        y = y.index_copy(0, todo, ya)
        res = res.index_copy(0, todo, _norm(Fa))
    return y, res, iterations, ran

