"""Batched equilibria ``F(y*) = 0`` of a model's vector field.

Each example of the batch is an independent system, solved together:

* ``"ptc"`` — pseudo-transient continuation (dense): linearly implicit Euler steps
  ``(I/dt - J) s = F`` along the flow, the step ``dt`` growing as the residual falls
  (switched evolution relaxation), ending as Newton: it converges to the equilibrium the
  dynamics reach from the starting state (``docs/derivations.md``, "The equilibrium the
  network reaches");
* ``"anderson"`` — Anderson acceleration of the model's relaxation map
  (:meth:`~dendrite_sim.dynamics.model.NetworkModel.relaxation`): by default the Picard map
  ``y <- y + tau F(y)``, on a linear problem equivalent to GMRES on the Jacobian; the mixing
  models sweep their layers bottom-up, ``h_i <- (1-mu) f_i(h_{i-1}) + mu g_i(h_{i+1})`` with
  ``h_{i-1}`` already updated (nonlinear Gauss–Seidel), which needs 40–60 % fewer iterations
  when the feedback is an imperfect inverse (measured on the digits network after training:
  13 against 25 to 1e-10). One map evaluation per iteration, no derivatives; plain iterations
  (no mixing, cheaper) while the map contracts by 0.7 or better per iteration over two
  iterations; the true residual is evaluated at the end;
* ``"newton"`` — damped Newton with the dense autograd Jacobian (any root, stable or not);
* ``"newton_krylov"`` — inexact Newton whose linear systems are solved matrix-free by a
  batched GMRES on Jacobian-vector products (forward-mode AD);
* ``"auto"`` — for small states (``N <= dense_limit``), basin ``"reached"``: the fallback
  below from the start (integration in doubling stretches, each end polished by dense
  Newton and accepted where the root is stable), basin ``"any"``: dense Newton; otherwise
  Anderson, a second attempt of Anderson (fresh history, ``max_iter`` more iterations: a
  slow leaky-ReLU example needing 60 cost 1700 evaluations in Newton-Krylov and the
  fallback), then Newton–Krylov on the examples where it stalls;
* basin check (basin ``"reached"``, ``N > dense_limit``) — a stable root that Anderson's
  mixing or Newton–Krylov found from far away (not by the plain relaxation map to within
  ``max |F| <= max(sqrt(tol), 1e-3)``) is accepted once the trajectory from the start,
  followed by the lean dopri5 per example, is captured by its linearisation
  (:func:`_follow_flow`; with several stable equilibria the accelerated solvers can land in
  another basin: 6 of 32 strongly clamped examples at N = 72);
* fallback — examples that do not converge, and (basin ``"reached"``) roots that are not
  stable, are integrated toward steady state (dopri5 over ``settle_time``; from the starting
  state for an unstable root) and polished by the same solvers again.

Every result says whether the equilibrium is stable: the eigenvalue of largest real part of
the Jacobian, dense for ``N <= dense_limit``, else certified where the plain relaxation map
converges to the root (``-inf``) and by Arnoldi steps on JVPs elsewhere, computed by every
call. The
residual is ``max_k |F_k(y)|``, the largest rate of change ``|dy/dt|`` of the state.
Non-convergence is reported per example in ``converged`` and ``reason``, within the budget
of :class:`EquilibriumSolver` (field evaluations and wall time); nothing is hidden.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch
from torch.autograd import forward_ad

from dendrite_sim.errors import NumericalError, check_range
from dendrite_sim.dynamics import rk
from dendrite_sim.dynamics.integrate import integrate_drive
from dendrite_sim.dynamics.model import Drive, NetworkModel
from dendrite_sim.dynamics.spectral import field_jacobian

__all__ = ["fixed_point", "solve_equilibrium", "Equilibrium", "EquilibriumSolver"]

#: the root finders a plan is made of, by name (``"auto"`` and ``"integrate"`` are plans)
SOLVERS = ("ptc", "anderson", "newton", "newton_krylov")
METHODS = ("auto",) + SOLVERS + ("integrate",)
BASINS = ("reached", "any")
#: why an example has no (stable, reached) equilibrium; "" where it has one
REASONS = ("", "unstable", "oscillating", "diverging", "budget", "stalled", "singular")


@dataclass(frozen=True)
class EquilibriumSolver:
    """Settings of :func:`fixed_point` (validated here; ``None`` means the default).

    method : one of ``METHODS``: ``"auto"``, ``"ptc"``, ``"anderson"``, ``"newton"``,
        ``"newton_krylov"`` or ``"integrate"`` (integration, then no polish).
    basin : ``"reached"`` (default): the equilibrium the dynamics reach from the starting
        state; a root that is not stable is replaced by the end of an integration from the
        start, or reported (``reason`` ``"unstable"``) when the integration reaches none;
        above ``dense_limit`` a stable root found by accelerated steps is checked against
        the trajectory from the start (:func:`_follow_flow`).
        ``"any"``: the root the solver finds, stable or not (continuation past a loss of
        stability; the flags still say which).
    tol : residual tolerance on ``max |dy/dt|``; default 1e-10 (float64) or 1e-5 (float32).
    rate_tol : coarser tolerance, >= ``tol``, of an equilibrium that only sets the rates of a
        phase (read by the quasi-static presentation; ``fixed_point`` solves to ``tol``).
    max_iter : iterations per solver and attempt, >= 1.
    dense_limit : largest ``N`` for the dense solvers and eigenvalues (default 64).
    settle_time : integration horizon of the fallback; default ``200 * model time scale``.
    settle_steps : most dopri5 steps per stretch of the fallback, >= 1 (four stretches).
    max_evals : most vector-field evaluations (forward-pass equivalents of the batch, as
        counted in ``Equilibrium.nfev``) of one call; default ``None``, unbounded.
    max_seconds : wall-time budget of one call, > 0 (default 10 s). A spent budget stops the
        solvers and the fallback; the unconverged examples get ``reason`` ``"budget"``.
    arnoldi_steps : Krylov dimension of the leading-eigenvalue estimate for ``N >
        dense_limit`` (default 20: with 12 steps or fewer the sign was wrong for 6 of 46
        examples of a strongly clamped leaky-ReLU network, with 20 for 1).
    """

    method: str = "auto"
    basin: str = "reached"
    tol: float | None = None
    rate_tol: float | None = None
    max_iter: int = 50
    dense_limit: int | None = None
    settle_time: float | None = None
    settle_steps: int = 2000
    max_evals: int | None = None
    max_seconds: float = 10.0
    arnoldi_steps: int = 20

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}; got {self.method!r}")
        if self.basin not in BASINS:
            raise ValueError(f"basin must be one of {BASINS}; got {self.basin!r}")
        positive = dict(tol=self.tol, settle_time=self.settle_time,
                        max_seconds=self.max_seconds)
        for name, value in positive.items():
            if value is not None:
                check_range(name, value, low=0.0, low_open=True)
        if self.rate_tol is not None:
            check_range("rate_tol", self.rate_tol, low=self.tol or 0.0,
                        low_open=self.tol is None)
        counts = dict(max_iter=self.max_iter, dense_limit=self.dense_limit,
                      settle_steps=self.settle_steps, max_evals=self.max_evals,
                      arnoldi_steps=self.arnoldi_steps)
        for name, value in counts.items():
            if value is not None and (check_range(name, value, low=1) != int(value)):
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")

    @property
    def dense(self) -> int:
        """``dense_limit`` with its default."""
        return 64 if self.dense_limit is None else int(self.dense_limit)

    def tolerance(self, dtype: torch.dtype) -> float:
        """``tol`` with its default for ``dtype``."""
        return default_tol(dtype) if self.tol is None else float(self.tol)

    def plan(self, state_size: int) -> tuple:
        """The solvers run in turn: ``method``, or what ``"auto"`` chooses for ``N``."""
        if self.method == "integrate":
            return ()
        if self.method != "auto":
            return (self.method,)
        if state_size <= self.dense:
            return () if self.basin == "reached" else ("newton",)
        return ("anderson", "anderson", "newton_krylov")

    def polish(self, state_size: int) -> tuple:
        """The solvers that polish the end of each integration stretch of the fallback."""
        if self.method == "auto" and state_size <= self.dense:
            return ("newton",)
        return self.plan(state_size)


@dataclass
class Equilibrium:
    """Result of :func:`fixed_point`.

    ``y`` (B, N); ``layers`` list of (B, n_i); ``residual`` (B,) ``max |dy/dt|``;
    ``converged`` (B,) bool (``residual <= tol``: a root); ``iterations`` Anderson and Newton
    steps; ``nfev`` vector-field evaluations in forward-pass equivalents of the batch (a field
    evaluation 1, a Jacobian-vector product 2, a dense Jacobian ``N + 1``, integration steps
    as counted by the integrator); ``method`` the solvers that ran, joined by ``+`` (e.g.
    ``"anderson+newton_krylov"``); ``used_fallback`` whether integration was needed.

    ``leading_eigenvalue`` (B,) real part of the Jacobian's eigenvalue of largest real part
    at ``y``: dense for ``N <= dense_limit``; above, ``-inf`` where the relaxation map
    certifies stability without an estimate, else an Arnoldi estimate; NaN where not
    converged or not checked. ``stable`` (B,) ``converged & (leading_eigenvalue < 0)``;
    ``reason`` per example ``""`` (a stable equilibrium) or why not: ``"unstable"`` (a root,
    not stable, and no stable state reached from the start), ``"oscillating"`` (the
    integration neither settles nor blows up), ``"diverging"`` (it blows up or turns
    non-finite), ``"budget"`` (the budget ran out, also before a root's stability was
    checked), ``"stalled"`` (the solvers stopped making progress); ``report`` says it in
    words.
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
    seconds: float = 0.0
    _lead: torch.Tensor | None = dataclasses.field(default=None, repr=False)
    _why: tuple = dataclasses.field(default=(), repr=False)
    _spent: bool = dataclasses.field(default=False, repr=False)

    @property
    def leading_eigenvalue(self) -> torch.Tensor:
        """(B,), computed by :func:`fixed_point` itself (NaN where not converged; ``-inf``
        where stability is certified without an estimate, see :func:`_stability`)."""
        return self._lead

    @property
    def reason(self) -> tuple:
        out = []
        for b, why in enumerate(self._why or [""] * self.y.shape[0]):
            lead = float(self.leading_eigenvalue[b])
            if bool(self.converged[b]) and math.isnan(lead) and self._spent:
                out.append("budget")                  # no time left to estimate it
            elif bool(self.converged[b]):
                out.append(why if lead < 0 else "unstable")
            else:
                out.append(why or ("budget" if self._spent else "stalled"))
        return tuple(out)

    @property
    def layers(self) -> list[torch.Tensor]:
        return self.model.layers(self.y)

    @property
    def final(self) -> torch.Tensor:
        return self.y

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())

    @property
    def stable(self) -> torch.Tensor:
        return self.converged & (self.leading_eigenvalue < 0)

    @property
    def reached(self) -> torch.Tensor:
        """(B,) bool: a stable equilibrium that the dynamics reach from the start (``reason``
        empty)."""
        return torch.tensor([not why for why in self.reason], dtype=torch.bool,
                            device=self.y.device)

    @property
    def report(self) -> str:
        """One line per example without a stable equilibrium: index, reason, residual and
        leading eigenvalue; ``"all N examples stable"`` otherwise."""
        bad = [b for b, why in enumerate(self.reason) if why]
        if not bad:
            return f"all {len(self.reason)} examples stable"
        lines = [f"{len(bad)} of {len(self.reason)} examples without a stable equilibrium "
                 f"after {self.nfev} evaluations, {self.seconds:.2f} s ({self.method}):"]
        lines += [f"  example {b}: {self.reason[b]}, residual {float(self.residual[b]):.3g}, "
                  f"leading eigenvalue {float(self.leading_eigenvalue[b]):+.3g}"
                  for b in bad[:20]]
        if len(bad) > 20:
            lines.append(f"  ... and {len(bad) - 20} more")
        return "\n".join(lines)


class _Tally:
    """Evaluations spent by one call, in forward-pass equivalents, and its budget."""

    def __init__(self, max_evals=None, max_seconds=math.inf):
        self.nfev, self.start = 0, time.perf_counter()
        self.max_evals = math.inf if max_evals is None else max_evals
        self.deadline = self.start + max_seconds

    @property
    def spent(self) -> bool:
        return self.nfev >= self.max_evals or time.perf_counter() >= self.deadline

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def evals_left(self) -> float:
        """Evaluations left, by count and by wall time at the rate measured so far."""
        left = self.max_evals - self.nfev
        if self.nfev > 0:
            rate = self.nfev / max(self.seconds, 1e-9)
            left = min(left, (self.deadline - time.perf_counter()) * rate)
        return left


class _Residual:
    """``F(y)`` with fixed drive and prepared parameters. Subsets (examples of the batch)
    share one :class:`_Tally` of evaluations (see :class:`Equilibrium`) and its budget."""

    def __init__(self, model, drive, prepared, tally=None):
        self.model, self.drive, self.prepared = model, drive, prepared
        self.tally = _Tally() if tally is None else tally

    @property
    def nfev(self) -> int:
        return self.tally.nfev

    @property
    def spent(self) -> bool:
        return self.tally.spent

    def count(self, n: int):
        self.tally.nfev += n

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
        return _Residual(self.model, self.drive.subset(index), self.prepared, self.tally)

    def jvp(self, y, v):
        """``J(y) v`` by forward-mode AD (dual numbers: 30-40 % cheaper than
        ``torch.func.jvp``, which wraps the same formulas, at the batch sizes of training)."""
        self.count(2)
        with forward_ad.dual_level():
            out = self.model.field(0.0, forward_ad.make_dual(y, v), self.drive, self.prepared)
            return forward_ad.unpack_dual(out).tangent

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


def _anderson(residual, y, F, tol, max_iter, step, memory=5, patience=5, rho=0.7,
              max_restarts=10, defer=0.25):
    """Anderson acceleration (type II) of the model's relaxation map ``G`` on the examples
    above ``tol`` (:meth:`~dendrite_sim.dynamics.model.NetworkModel.relaxation`: by default the Picard
    map ``y + step F(y)``; the mixing models sweep their layers, nonlinear Gauss-Seidel).

    The last ``memory`` differences of the map residual ``r = G(y) - y`` and of ``G`` are kept
    in ring buffers ``(B, memory, N)``; each iteration mixes them with the coefficients of
    :func:`_mixing_coefficients`. Plain start, per example: while its ``max |r|`` shrinks
    by ``rho`` or better per iteration, measured over pairs of iterations (``rho^2`` per pair,
    checked after every second one: a single iteration is erratic, e.g. the sweep's first step
    on the trained digits network shrinks the residual 0.5-0.67x where the next ones shrink it
    0.3x), the map is iterated plainly, without history, and over-relaxed: ``y + omega (G(y) -
    y)`` with the model's ``relaxation_factor`` (1.15 for the mixing models' sweep, 20 % fewer
    sweeps on digits; ``docs/derivations.md`` §7). An example mixes from its first slower
    pair on, with the history (of the whole batch) recorded from the first such pair; the
    examples that never mix are returned in ``contracted``, certified stable
    (:func:`_stability`). On a map that contracts well mixing does not
    pay: on the digits network it saved 8 % of the sweeps and cost ~40 % of a sweep per
    iteration (training epochs 11-15 % faster without it). An example stops when ``max |r| /
    step <= tol`` (in the units of ``F``; equal to ``max |F|`` for the Picard map), turns
    non-finite, or has been restarted ``max_restarts`` times. An example's history is
    forgotten (Anderson restarted) where its residual grows over an iteration, and where it
    finds no new best in ``patience`` iterations (a restart that counts): a piecewise-linear
    map (leaky ReLU) is linear between kinks, and differences recorded across a kink mix two
    linear maps; the mixed step then stalls or cycles (measured on ``Mixture([64] * 6)`` with
    leaky ReLU, slope 0.1, nudged: 23 of 64 examples stalled, sent on to Newton-Krylov and
    integration, 2300 evaluations against 10 for tanh; with restarts 47, no fallback). The
    batch is compacted to the live examples once at most half of it is live (a compaction costs
    about as much as the frozen examples' iterations). For the Picard map each example returns
    its best iterate ``y``, and ``F`` is the map residual over ``step``. For any other map it
    returns the map's image ``G(y)`` of its best iterate, and ``F`` is evaluated there once at
    the end: for the layer sweep ``tau F(G(y))_i = mu (g_i(G(y)_{i+1}) - g_i(y_{i+1}))``, only
    the change of the feedback input, about ``mu`` times the map residual, where ``tau F(y)``
    carries the forward change as well and can exceed the map residual (measured: examples
    stopped at ``max |r| <= tol`` with ``max |F| = 1.2 tol``, sent on to Newton–Krylov at ~15x
    the cost of the solve). ``approached`` (a superset of ``contracted``): the examples that
    the plain map took to ``max |r| / step <= near`` (:func:`_capture_level`) before they
    mixed, or all the way: from there the mixing, a local solve, converges to the root of
    the neighbourhood that the map (and, for the mixing models' sweep, the flow) reached
    (:func:`_follow_flow` is not needed; measured: 1 of 256 examples of the benchmark's
    network, which mixed at ``7.7e-7`` where float32 rounding broke the map's contraction,
    cost 18 ms to follow, 70 % of the solve). Examples that start mixing while the history
    is not yet kept, at most a fraction ``defer`` of the live ones, are set aside (frozen at
    their best iterate) and solved afterwards as a batch of their own, mixing from its first
    pair: one example that mixes no longer puts the whole batch on the slow path of history
    writes and restarts (measured on the benchmark's network, N = 320, float32, batch 256:
    one mixing example cost 7 of 18 ms). Returns ``(y, F, iterations, contracted,
    approached)``.
    """
    y, F, touched = _start(y, F, tol)
    contracted = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
    approached = contracted.clone()
    if touched.numel() == 0:
        return y, F, 0, contracted, approached
    near, set_aside = _capture_level(tol), []      # set aside: (row, late)
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
    restarts = torch.zeros_like(touched)
    mixing = torch.zeros_like(keep)                 # per example: plain map, then mixing
    late = torch.zeros_like(keep)                   # started mixing at res <= near
    aside = torch.zeros_like(keep)                  # deferred to a batch of their own
    while iterations < max_iter and not residual.spent:
        active = int(keep.sum())
        if active == 0:
            break
        if 2 * active <= idx.numel():                       # compact to the live examples
            y[idx], F[idx] = y_best, f_best / step
            contracted[idx], approached[idx] = ~mixing & ~aside, ~mixing & ~aside | late
            set_aside += [(b, v) for b, v in zip(idx[aside].tolist(), late[aside].tolist())]
            idx, ya, ga, fa, res, previous, best, since_best, y_best, f_best, restarts, \
                mixing, late, aside = (v[keep] for v in (idx, ya, ga, fa, res, previous, best,
                                                         since_best, y_best, f_best, restarts,
                                                         mixing, late, aside))
            sub = residual.subset(idx)
            if d_f is not None:
                d_f, d_g = d_f[keep], d_g[keep]
            keep = keep[keep]
        finished = active < idx.numel()                     # still in the batch, frozen
        new = ga if omega == 1.0 else torch.lerp(ya, ga, omega)
        if d_f is not None:
            mixed = ga
            if recorded:
                gamma = _mixing_coefficients(d_f[:, :min(recorded, memory)], fa)
                mixed = torch.baddbmm(ga[:, None], gamma[:, None], d_g[:, :min(recorded, memory)],
                                      alpha=-1)[:, 0]
            new = torch.where(mixing[:, None], mixed, new)
        gn = sub.relax(new, step)
        fn = gn - new
        if d_f is not None:
            torch.sub(fn, fa, out=d_f[:, recorded % memory])
            torch.sub(gn, ga, out=d_g[:, recorded % memory])
            recorded += 1
        ya, ga, fa, earlier, previous, iterations = new, gn, fn, previous, res, iterations + 1
        res = _rate_norm(fn, step)
        if iterations % 2 == 0:
            starts = keep & ~mixing & ~(res <= rho * rho * earlier)
            late = late | (starts & (res <= near))
            if d_f is None and defer * int(keep.sum()) >= int(starts.sum()):
                aside, keep = aside | starts, keep & ~starts
            else:
                mixing = mixing | starts
        if d_f is None and bool(mixing.any()):
            d_f = fn.new_empty(fn.shape[0], memory, fn.shape[-1])  # only filled slots are read
            d_g = torch.empty_like(d_f)
        if d_f is None and not finished and not bool(aside.any()):  # each one's best
            best, y_best, f_best = res, gn if image else ya, fa
            keep = res > limit
            continue
        better = keep & (res < best) if d_f is not None else keep    # False for NaN
        best = torch.where(better, res, best)
        y_best = torch.where(better[:, None], gn if image else ya, y_best)
        f_best = torch.where(better[:, None], fa, f_best)
        if d_f is not None:
            since_best = torch.where(better, 0, since_best + 1)
            stalled = keep & (since_best >= patience)
            restart = stalled | (keep & (res > previous))
            if bool(restart.any()):                     # forget the history
                d_f[restart], d_g[restart] = 0.0, 0.0
                restarts, since_best = restarts + stalled, torch.where(stalled, 0, since_best)
                keep = keep & (restarts <= max_restarts)
        keep = keep & (res > limit)                          # NaN stops at once
    y[idx], F[idx] = y_best, f_best / step
    contracted[idx], approached[idx] = ~mixing & ~aside, ~mixing & ~aside | late
    set_aside += [(b, v) for b, v in zip(idx[aside].tolist(), late[aside].tolist())]
    if image:                                             # the map residual is not F
        F[touched] = touched_residual(y[touched])
    if set_aside and iterations < max_iter and not residual.spent:
        rows = torch.tensor([b for b, _ in set_aside], device=y.device)
        y[rows], F[rows], more, _, _ = _anderson(residual.subset(rows), y[rows], None, tol,
                                                 max_iter - iterations, step, memory,
                                                 patience, 0.0, max_restarts, defer=0.0)
        iterations += more
        approached[rows] = torch.tensor([v for _, v in set_aside], device=y.device)
    converged = _norm(F[touched]) <= tol
    contracted[touched] &= converged
    approached[touched] &= converged
    return y, F, iterations, contracted, approached


def _capture_level(tol):
    """``max(sqrt(tol), 1e-3)``: a residual ``max |F|`` at which a state is taken to be in
    the neighbourhood of the equilibrium it approaches (:func:`_follow_flow`)."""
    return max(math.sqrt(tol), 1e-3)


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


def _batched_gmres(matvec, rhs, rel_tol, restart=30, max_restarts=4, spent=lambda: False):
    """Solve ``A_b x_b = rhs_b`` per example with GMRES(restart) from ``x = 0``, ``A`` given
    by ``matvec``; returns the current iterate as soon as ``spent()`` (the budget).

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
            if bool((lsq_res <= target).all()) or spent():
                break
        x = x + torch.einsum("bm,mbn->bn", coef, torch.stack(basis[:coef.shape[1]]))
        if bool((lsq_res <= target).all()) or cycle + 1 == max_restarts or spent():
            break
        r = rhs - matvec(x)
    return x


def _newton_direction(residual, y, F, dense: bool):
    """``-J^{-1} F`` per example: dense batched LU solve (NaN for a singular or non-finite
    Jacobian; :func:`_check_isolated` raises first where a gate stops some variables), or
    inexact GMRES on JVPs with the forcing term ``min(0.1, ||F||)`` (Eisenstat & Walker), floored at the dtype's precision."""
    if dense:
        # batched solve is exact with the default thread count (never set_num_threads(n >= 2))
        step, info = torch.linalg.solve_ex(_finite_jacobian(residual, y), -F)
        return torch.where((info == 0)[:, None], step, float("nan"))   # singular: no step
    floor = 1e-10 if F.dtype == torch.float64 else 1e-5
    forcing = F.norm(dim=-1).clamp(min=floor, max=0.1)
    return _batched_gmres(lambda v: residual.jvp(y, v), -F, forcing,
                          spent=lambda: residual.spent)


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
    """Damped Newton on the examples still above ``tol``; stalled examples stop early, and
    all of them when the budget is spent. Returns ``(y, F, iterations)``."""
    stalled = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
    iterations = 0
    while iterations < max_iter and not residual.spent:
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


def _ptc(residual, y, F, tol, max_iter, dt0, growth=2.0, near=1e-3):
    """Pseudo-transient continuation (Kelley & Keyes 1998) on the examples above ``tol``:
    linearly implicit Euler steps of the flow ``dy/dt = F(y)``,

        (I / dt_k - J(y_k)) s_k = F(y_k),   y_{k+1} = y_k + s_k,

    with the step set by switched evolution relaxation, ``dt_{k+1} = dt_k ||F(y_k)|| /
    ||F(y_{k+1})||`` (growth at most ``growth`` per iteration), from ``dt0`` (the model's
    time scale), and capped at ``dt0`` while ``max |F| > near``. While ``dt`` is small the
    iterates follow the trajectory from the start, approximately (implicit Euler: near a
    separatrix they may end in another basin, measured on strongly clamped leaky-ReLU
    networks in 5-10 % of the examples, which is why ``"auto"`` integrates instead); once the
    residual falls ``dt`` grows without bound and the step becomes Newton's (quadratic convergence; for piecewise-linear
    transfers the generalised Jacobian makes it a semismooth Newton method, exact once the
    active set is right). A step whose residual is not finite is rejected and ``dt``
    quartered; ``J`` is checked finite before it reaches LAPACK. An example stops when
    ``dt`` falls below ``1e-6 dt0`` (stalled); all stop when the budget is spent. Returns
    ``(y, F, iterations)``.
    """
    dt = torch.full((y.shape[0],), float(dt0), dtype=y.dtype, device=y.device)
    iterations = 0
    while iterations < max_iter and not residual.spent:
        active = ((_norm(F) > tol) & (dt >= 1e-6 * dt0)).nonzero().flatten()
        if active.numel() == 0:
            break
        iterations += 1
        sub = residual.subset(active)
        ya, Fa, dta = y[active], F[active], dt[active]
        jac = _finite_jacobian(sub, ya)
        eye = torch.eye(ya.shape[-1], dtype=ya.dtype, device=ya.device)
        step, info = torch.linalg.solve_ex(eye / dta[:, None, None] - jac, Fa)
        new = ya + step
        Fn = sub(new)
        ok = (info == 0) & torch.isfinite(Fn).all(-1) & torch.isfinite(new).all(-1)
        ratio = Fa.norm(dim=-1) / Fn.norm(dim=-1).clamp_min(torch.finfo(y.dtype).tiny)
        dta = torch.where(ok, dta * ratio.clamp(max=growth), dta / 4)
        far = _norm(torch.where(ok[:, None], Fn, Fa)) > near
        dta = torch.where(far, dta.clamp(max=dt0), dta)
        y = y.index_copy(0, active, torch.where(ok[:, None], new, ya))
        F = F.index_copy(0, active, torch.where(ok[:, None], Fn, Fa))
        dt = dt.index_copy(0, active, dta)
    return y, F, iterations


def _finite_jacobian(residual, y):
    """The dense Jacobian, with the rows of examples whose Jacobian is not finite replaced by
    ``-I`` (never pass NaN to LAPACK); raises ``ValueError`` if the equilibrium is not
    isolated (:func:`_check_isolated`)."""
    jac = residual.jacobian(y)
    _check_isolated(residual, jac.abs().amax(-1))
    finite = torch.isfinite(jac).flatten(1).all(-1)
    if not bool(finite.all()):
        eye = torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device)
        jac = torch.where(finite[:, None, None], jac, -eye)
    return jac


def _check_isolated(residual, row_size):
    """Raise ``ValueError`` when rows of the Jacobian vanish for every example (``row_size``
    ``(B, N)``: ``max_j |J_kj|``, or ``|(J v)_k|`` for a random ``v``): those variables do not
    move (a gate switched their dynamics off, e.g. the held trace of the learning phase,
    ``trace = 0``), so every value of them is an equilibrium and the Jacobian is singular."""
    if row_size.shape[0] == 0:
        return
    dead = (row_size == 0).all(0)
    if not bool(dead.any()):
        return
    model = residual.model
    blocks = [b.name for b in model.layout.blocks if bool(dead[b.slice].all())]
    gates = residual.drive.gates(0.0)
    raise ValueError(
        f"the equilibrium is not isolated: the rates of {blocks or 'some variables'} vanish "
        f"identically under the gates {gates} (the Jacobian is singular), so every value of "
        f"them is an equilibrium. Hold them explicitly (the quasi-static presentation solves on "
        f"the subspace of the moving variables) or use gates under which they relax.")


def _leading_eigenvalue(residual, y, dense: bool, steps: int):
    """Real part of the eigenvalue of largest real part of ``J(y)`` per example (NaN where
    ``y`` or ``J`` is not finite): dense ``eigvals`` when ``dense``, else the rightmost Ritz
    value of ``steps`` Arnoldi steps on JVPs (:func:`_arnoldi_leading`)."""
    out = torch.full(y.shape[:1], float("nan"), dtype=y.dtype, device=y.device)
    finite = torch.isfinite(y).all(-1).nonzero().flatten()
    if finite.numel() == 0:
        return out
    sub = residual.subset(finite)
    if dense:
        jac = sub.jacobian(y[finite])
        _check_isolated(sub, jac.abs().amax(-1))
        ok = torch.isfinite(jac).flatten(1).all(-1)
        lead = torch.full_like(out[finite], float("nan"))
        if bool(ok.any()):
            lead[ok] = torch.linalg.eigvals(jac[ok]).real.amax(-1).to(y.dtype)
    else:
        lead = _arnoldi_leading(sub, y[finite], steps)
    return out.index_copy(0, finite, lead)


def _arnoldi_leading(residual, y, steps):
    """Rightmost Ritz value (real part) of ``min(steps, N)`` Arnoldi steps on ``v -> J(y) v``
    (JVPs by forward-mode AD: forward differences, 4-5x cheaper in wall time, are not linear
    in ``v`` where a perturbation crosses a kink of a piecewise-linear transfer, and gave
    Ritz values of +0.03 where every eigenvalue is below -0.45, float32), batched, from a fixed pseudo-random start, the basis orthogonalised twice
    (classical Gram-Schmidt loses orthogonality on these non-normal Jacobians and returned
    spurious Ritz values near 0). Where an example's Krylov space is
    invariant early (breakdown), its Hessenberg matrix is block diagonal: the exact Ritz
    values, and a block of ``-sqrt(max float)`` on the diagonal that cannot be the largest.
    A Hessenberg matrix that is not finite gives NaN."""
    batch, n = y.shape
    m = min(steps, n)
    gen = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(n, generator=gen, dtype=torch.float64).to(y).expand(batch, n)
    basis = [v / v.norm(dim=-1, keepdim=True)]
    hess = y.new_zeros(batch, m + 1, m)
    alive = torch.ones(batch, dtype=torch.bool, device=y.device)
    low = -torch.finfo(y.dtype).max ** 0.5
    for j in range(m):
        w = residual.jvp(y, basis[j])
        if j == 0:
            _check_isolated(residual, w.abs())
        for _ in range(2):                   # Gram-Schmidt twice: orthogonal to rounding
            for i, b in enumerate(basis):
                projection = (w * b).sum(-1)
                hess[:, i, j] += projection
                w = w - projection[:, None] * b
        hess[:, j, j] = torch.where(alive, hess[:, j, j], low)
        size = w.norm(dim=-1)
        scale = hess[:, :j + 1, :j + 1].abs().amax((-2, -1)).clamp_max(-low / 2)
        alive = alive & (size > torch.finfo(y.dtype).eps ** 0.5 * scale)
        hess[:, j + 1, j] = torch.where(alive, size, 0.0)
        basis.append(torch.where(alive[:, None], w / size.clamp_min(1e-300)[:, None], 0.0))
    square = hess[:, :m, :m]
    ok = torch.isfinite(square).flatten(1).all(-1)
    lead = torch.full((batch,), float("nan"), dtype=y.dtype, device=y.device)
    if bool(ok.any()):
        lead[ok] = torch.linalg.eigvals(square[ok]).real.amax(-1).to(y.dtype)
    return lead


def _solve(residual, y, F, tol, max_iter, plan, step, dt0):
    """Run the solvers of ``plan`` in turn on the examples still above ``tol``. ``F = None``
    (not yet evaluated) is evaluated first unless the first solver is Anderson on a relaxation
    map other than Picard's (which finds the converged examples by itself, and evaluates ``F``).

    Returns ``(y, F, iterations, names of the solvers that ran, contracted, approached)``,
    the last two the
    (B,) examples that Anderson's plain map took to ``tol`` on its own (see :func:`_anderson`).
    """
    iterations, ran = 0, []
    contracted = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
    approached = contracted.clone()
    for name in plan:
        if F is None and (name != "anderson" or residual.picard):
            F = residual(y)
        if F is not None and not bool((~(_norm(F) <= tol)).any()):
            break
        if residual.spent:
            break
        if name == "anderson":
            y, F, more, plain, near = _anderson(residual, y, F, tol, max_iter, step)
            contracted = contracted | plain           # a second attempt keeps the first's
            approached = approached | near
        elif name == "ptc":
            y, F, more = _ptc(residual, y, F, tol, max_iter, dt0)
        else:
            y, F, more = _newton(residual, y, F, tol, max_iter, dense=name == "newton")
        iterations, ran = iterations + more, ran + [name] * (name not in ran)
    F = residual(y) if F is None else F
    return y, F, iterations, ran, contracted, approached


def _as_gates(gates):
    """Constant gates given as a dict become the function ``t -> dict`` the drive expects."""
    if isinstance(gates, dict):
        values = dict(gates)
        return lambda t: values
    return gates


def fixed_point(model: NetworkModel, x, target=None, *, y0=None, tol=None, max_iter=50,
                method="auto", dense_limit=None, settle_time=None, settle_steps=2000,
                params=None, gates=None, solver: EquilibriumSolver | None = None,
                **settings) -> Equilibrium:
    """Batched equilibrium of ``model`` for input ``x`` and teaching ``target``: by default
    the one the dynamics reach from ``y0``, with its stability (:class:`Equilibrium`).

    Parameters
    ----------
    x, target : as in :func:`dendrite_sim.simulate`.
    y0 : starting state ``(B, N)``; default the model's initial state (the forward pass).
    solver : an :class:`EquilibriumSolver`; its fields may also be given as keywords
        (``tol``, ``max_iter``, ``method``, ``dense_limit``, ``settle_time``,
        ``settle_steps``, and in ``settings``: ``basin``, ``max_evals``, ``max_seconds``,
        ``arnoldi_steps``), which override it.
    tol : residual tolerance on ``max |dy/dt|``; default 1e-10 (float64) or 1e-5 (float32).
    max_iter : iterations per solver and attempt, >= 1.
    method : ``"auto"`` (for ``N <= dense_limit`` pseudo-transient continuation, or dense
        Newton with ``basin="any"``; else Anderson in two attempts, then Newton–Krylov on the
        examples where it stalls), ``"ptc"``, ``"anderson"``, ``"newton"``, ``"newton_krylov"`` or
        ``"integrate"`` (integration, then no polish).
    dense_limit : largest ``N`` for the dense solvers and eigenvalues in ``"auto"`` (default
        64: a dense Jacobian costs about ``N`` field evaluations, in one vectorised pass, and
        Newton then converges quadratically; an Anderson iteration costs one evaluation).
    settle_time : integration horizon of the fallback; default ``200 * model time scale``.
    settle_steps : most dopri5 steps per stretch of the fallback, >= 1 (in four stretches).
        A stiff or runaway system (e.g. weights that diverged in training) stops there and
        its examples are reported unconverged, instead of integrating for hours.
    gates : constant gates, a dict or a function ``t -> dict`` (e.g. a phase's), as in
        :func:`simulate`. Gates under which some variables do not move at all (the held
        trace, ``trace = 0``) leave the equilibrium undefined: ``ValueError``.
    """
    keywords = dict(tol=tol, max_iter=max_iter, method=method, dense_limit=dense_limit,
                    settle_time=settle_time, settle_steps=settle_steps)
    defaults = {f.name: f.default for f in dataclasses.fields(EquilibriumSolver)}
    unknown = set(settings) - set(defaults)
    if unknown:
        raise ValueError(f"unknown fixed_point settings {sorted(unknown)}; allowed: "
                         f"{sorted(defaults)}")
    changed = {k: v for k, v in keywords.items() if v != defaults[k]}
    solver = EquilibriumSolver() if solver is None else solver
    if not isinstance(solver, EquilibriumSolver):
        raise ValueError(f"solver must be an EquilibriumSolver; got {type(solver).__name__}")
    solver = dataclasses.replace(solver, **changed, **settings)
    drive = model.drive(x, target, _as_gates(gates))
    params = model.check_params(params)
    prepared = model.prepare(params)
    y = model.initial_state(drive, prepared) if y0 is None else \
        model.check_state(y0, drive.batch_size)
    return solve_equilibrium(model, drive, y, params, prepared, solver=solver)


#: :func:`solve_equilibrium`'s settings when none are given (see there)
ENGINE_SOLVER = EquilibriumSolver(basin="any")


def default_tol(dtype: torch.dtype) -> float:
    """The default residual tolerance on ``max |dy/dt|``: 1e-10 in float64, 1e-5 otherwise."""
    return 1e-10 if dtype == torch.float64 else 1e-5


def solve_equilibrium(model: NetworkModel, drive: Drive, y: torch.Tensor, params, prepared, *,
                      solver: EquilibriumSolver | None = None, **settings) -> Equilibrium:
    """:func:`fixed_point` on an already validated ``drive`` from the state ``y``, with
    ``prepared = model.prepare(params)`` (engine-level; used by the training loop, which
    validates its inputs once per presentation). ``settings`` override fields of
    ``solver`` (e.g. ``tol``, ``max_iter``); without ``solver`` the engine's default
    :data:`ENGINE_SOLVER` (basin ``"any"``: the quasi-static presentation warm-starts each
    solve from the previous phase's equilibrium, and keeps its speed; the stability flags
    are still computed)."""
    solver = ENGINE_SOLVER if solver is None else solver
    if settings:
        solver = dataclasses.replace(solver, **settings)
    tol = solver.tolerance(model.dtype)
    residual = _Residual(model, drive, prepared, _Tally(solver.max_evals, solver.max_seconds))
    plan = solver.plan(model.state_size)
    step = model.column_time_constants()
    dense = model.state_size <= solver.dense
    start = y
    with torch.no_grad():
        y, F, iterations, ran, contracted, approached = _solve(residual, y, None, tol,
                                                               solver.max_iter,
                                                   plan, step, model.time_scale)
        res = _norm(F)
        lead = _stability(residual, y, res <= tol, contracted, dense, solver.arnoldi_steps)
        attempt = _Attempt(y, res, lead, contracted)
        pending = attempt.pending(tol, solver.basin)
        if solver.basin == "reached" and not dense and plan:
            start, left = _follow_flow(residual, attempt, start, ~pending & ~approached,
                                       tol, solver)
            for b in left.nonzero().flatten().tolist():    # until the fallback decides
                attempt.why[b] = "budget" if residual.spent else "stalled"
            pending = pending | left
        used_fallback = bool(pending.any())
        if used_fallback:
            more, ran_more = _settle_and_polish(residual, params, attempt, start, pending,
                                                tol, solver, step, dense)
            iterations += more
            ran += [name for name in dict.fromkeys(ran_more) if name not in ran]
            lost = ~(attempt.res <= tol)
            if not plan and solver.method == "auto" and bool(lost.any()) and not residual.spent:
                more, ran_more = _any_root(residual, attempt, start, lost, tol, solver, dense)
                iterations += more
                ran += [name for name in ran_more if name not in ran]
    label = "+".join(ran or plan[:1] or ("integrate",))
    converged = attempt.res <= tol
    seconds, spent = residual.tally.seconds, residual.spent
    return Equilibrium(attempt.y, model, attempt.res, converged, iterations, residual.nfev,
                       label, used_fallback, tol, seconds, attempt.lead, tuple(attempt.why),
                       spent)


def _stability(residual, y, converged, contracted, dense, steps):
    """Leading eigenvalue (real part) at the converged examples (NaN elsewhere): dense
    ``eigvals`` for ``N <= dense_limit`` (``dense``), else the rightmost Ritz value of
    ``steps`` Arnoldi steps on JVPs (:func:`_arnoldi_leading`), batched over the examples.

    Above ``dense_limit`` the examples that Anderson's plain relaxation map took to the root,
    shrinking the residual at every step, and then those to which the map returns from a
    small random perturbation (:func:`_relaxes_back`, a few map evaluations) are certified
    without an estimate (``-inf``): they sit at an attracting fixed point of the map. For the Picard map ``y + T F(y)`` the spectral
    radius of ``I + T J`` is then below 1, so every eigenvalue of ``T J`` has negative real
    part (and of ``J`` when the time constants are equal); for the mixing models' layer sweep
    (Gauss-Seidel on a block-tridiagonal Jacobian, whose Jacobi and Gauss-Seidel spectral
    radii satisfy ``rho_GS = rho_J^2``, Young's theorem) likewise ``rho(I - tau J) < 1``.
    Measured: all 64 examples of the benchmark's tanh network certified (8 map evaluations
    instead of 20 JVPs, ``fixed_point`` 18 evaluations in all), 62-63 of 64 of its leaky-ReLU
    one; the rest get Arnoldi. Nothing is estimated once the budget is spent (NaN, reason
    ``"budget"``). On the training hot path (the two-phase digits job, warm-started solves) 99.5 % of the
    examples are certified so; the others cost ``steps`` JVPs, on them only."""
    lead = torch.full(y.shape[:1], float("nan"), dtype=y.dtype, device=y.device)
    if not dense:
        check = (converged & ~contracted).nonzero().flatten()
        if check.numel() and not residual.spent:
            contracted = contracted.index_copy(
                0, check, _relaxes_back(residual.subset(check), y[check]))
        lead = torch.where(contracted, -math.inf, lead)
        converged = converged & ~contracted
    index = converged.nonzero().flatten()
    if index.numel() and not residual.spent:         # else NaN: reason "budget"
        lead[index] = _leading_eigenvalue(residual.subset(index), y[index], dense, steps)
    return lead


def _relaxes_back(residual, y, first=8, most=32, shrink=0.5, last=0.9):
    """(b,) whether the model's relaxation map, iterated from ``y`` (a root) plus a random
    perturbation ``p`` (max-norm ``eps^(1/3) (1 + max |y|)``), settles back: after ``first``
    to ``most`` iterations the iterate is within ``shrink * max |p|`` of ``y`` and its step
    ``d_k = max |y_k - y_{k-1}|`` is below ``shrink * d_1`` and shrank over the last iteration
    (by ``last``), or is below the floor ``max(100 eps (1 + max |y|), 1e-5 d_1)`` (above the
    map's rounding noise, where the ratios are noise). Steps, and distances only against
    ``shrink * max |p|``: ``y`` is a root to ``tol`` only, and the map's own fixed point lies
    ~``tol`` away (measured: distances stuck at 1.3e-7, float64, tol 1e-6); the distance
    rejects a saddle the map leaves for another fixed point, and variables the map does not
    move (a gate holds them; :func:`_check_isolated` then raises in the Arnoldi estimate). An example
    stops iterating once certified, so a map that contracts slowly costs only its own
    examples; ``first`` map evaluations against ``2 * arnoldi_steps`` for the Arnoldi
    estimate (JVPs, each 4-10x a field evaluation in wall time).

    A certificate that ``y`` attracts the map (see :func:`_stability`): a mode that grows,
    ``|lambda| > 1``, overtakes the decaying ones after a few iterations (its share of a
    random perturbation is about ``N^(-1/2)``) and then makes the last step grow. Not a
    proof: a perturbation orthogonal to that mode to the floor's precision would miss it.
    The map is the nonlinear one, so for a piecewise-linear field the kinks near ``y`` are
    accounted for (forward differences, which cross them, gave spurious Ritz values)."""
    gen = torch.Generator(device="cpu").manual_seed(1)
    scale = 1 + _norm(y)
    eps = torch.finfo(y.dtype).eps
    delta = 2 * torch.rand(y.shape, generator=gen, dtype=torch.float64).to(y) - 1
    z = y + eps ** (1 / 3) * scale[:, None] * delta
    certified = torch.zeros_like(scale, dtype=torch.bool)
    rows = torch.arange(y.shape[0], device=y.device)
    start = previous = floor = None
    for k in range(1, most + 1):
        new = residual.subset(rows).relax(z, None)
        step = _norm(new - z)
        if start is None:
            start, previous = step, step
            floor = torch.maximum(100 * eps * scale, 1e-5 * start)
        done = ((step <= shrink * start[rows]) & (step <= last * previous)) | \
            (step <= floor[rows])
        near = _norm(new - y[rows]) <= shrink * eps ** (1 / 3) * scale[rows]
        done &= near & torch.isfinite(step) & (k >= first)
        certified[rows[done]] = True
        rows, z, previous = rows[~done], new[~done], step[~done]
        if rows.numel() == 0:
            break
    return certified


class _Attempt:
    """The best result so far per example: state, residual, leading eigenvalue, and why an
    example still has no stable equilibrium."""

    def __init__(self, y, res, lead, contracted):
        self.y, self.res, self.lead = y, res, lead
        self.why = [""] * y.shape[0]

    def pending(self, tol, basin):
        """Examples to integrate: unconverged, or (basin "reached") converged to a root that
        is not stable (a NaN eigenvalue counts as not stable)."""
        todo = ~(self.res <= tol)
        if basin == "reached":
            todo |= ~(self.lead < 0)
        return todo


def _follow_flow(residual, attempt, start, check, tol, solver, first=2.0, linear=0.1,
                 most=4):
    """Basin check above ``dense_limit`` of the stable roots in ``check`` (those Anderson's
    mixing or Newton-Krylov found: with several stable equilibria an accelerated step can land
    in another basin than the dynamics, measured on 6 of 32 strongly clamped examples at
    N = 72, and the plain layer sweep alone in 4 of them). Each example's trajectory from
    ``start`` is followed by the lean dopri5 integrator (a step size per example, loose
    tolerances: it only has to tell basins apart; stretches of doubling length from
    ``first`` time scales, up to ``settle_time``) until it is captured by its root ``y*``:
    the field at the trajectory's point ``z`` is the linearisation at the root, ``|F(z) -
    J(y*) (z - y*)| <= linear |J(y*) (z - y*)| + 2 tol`` (max norms; one JVP per example and
    stretch; ``2 tol`` the root's own residual). Then ``F(z) ~ J (z - y*)`` with ``y*``
    stable: the linear flow from ``z`` goes to ``y*``, and the nonlinear remainder, a tenth of
    the linear term at ``z``, shrinks closer in. A trajectory near a saddle or another
    equilibrium has ``F(z)`` small but ``J (z - y*)`` not: where ``|F(z)| <= linear |J(y*)
    (z - y*)|`` the root is solved again from ``z`` (:func:`_repolish`, at most ``most``
    times) and the trajectory goes on against the new root (captured only by a stable one).
    An example whose trajectory is not captured within the horizon, whose re-solve fails or
    whose integration fails is returned in ``left``, with its trajectory's end as its new
    ``start``: the fallback (:func:`_settle_and_polish`) takes it on from there. ``attempt``
    is updated in place. Returns ``(start, left)``."""
    left = torch.zeros_like(check)
    todo = check.nonzero().flatten()
    if todo.numel() == 0 or residual.spent:
        return start, left
    model, start = residual.model, start.clone()
    horizon = solver.settle_time if solver.settle_time is not None else \
        200.0 * model.time_scale
    rtol, atol = (1e-5, 1e-7) if model.dtype == torch.float64 else (1e-4, 1e-6)
    near, batch = _capture_level(tol), start.shape[0]
    z, elapsed, length = start[todo], 0.0, first * model.time_scale
    polished = torch.zeros_like(todo)
    # a start already captured by its root needs no integration (e.g. a warm start)
    sub, root = residual.subset(todo), attempt.y[todo]
    linear_part, F = sub.jvp(root, z - root), sub(z)
    keep = ~_captured(F, linear_part, attempt.lead[todo], linear, tol, near)
    todo, z, polished = todo[keep], z[keep], polished[keep]
    while todo.numel():
        steps = int(min(solver.settle_steps, residual.tally.evals_left() / 6))
        if elapsed >= horizon or steps < 1 or residual.spent:
            break
        length = min(length, horizon - elapsed)
        t = torch.tensor([0.0, length], dtype=model.dtype, device=model.device)
        drive = residual.drive.subset(todo)
        try:
            sol = rk.solve_per_example(
                lambda index: lambda s, y: model.field(s, y, drive.subset(index),
                                                        residual.prepared),
                z, t, rk.TABLEAUX["dopri5"], rtol=rtol, atol=atol, max_steps=steps)
        except NumericalError:
            residual.count(steps * 6)              # an upper bound: the count is lost
            break
        residual.count(math.ceil(sol.nfev * todo.numel() / batch))   # of the whole batch
        z, elapsed, length = sol.ys[-1], elapsed + length, 2 * length
        sub, root = residual.subset(todo), attempt.y[todo]
        linear_part, F = sub.jvp(root, z - root), sub(z)
        captured = _captured(F, linear_part, attempt.lead[todo], linear, tol, near)
        elsewhere = ~captured & (_norm(F) <= linear * _norm(linear_part))
        failed = ~torch.isfinite(z).all(-1) | (elsewhere & (polished >= most))
        again = (elsewhere & ~failed).nonzero().flatten()
        if again.numel():
            found = _repolish(residual.subset(todo[again]), attempt, todo[again], z[again],
                              F[again], tol, solver)
            polished[again] += 1
            failed[again[~found]] = True
        left[todo[failed]] = True
        start[todo[failed]] = torch.where(torch.isfinite(z[failed]), z[failed],
                                          start[todo[failed]])
        keep = ~(captured | failed)
        todo, z, polished = todo[keep], z[keep], polished[keep]
    left[todo] = True                               # not captured within the horizon
    start[todo] = z
    return start, left


def _captured(F, linear_part, lead, linear, tol, near):
    """(b,) bool: the points whose field ``F`` is the linearisation ``linear_part = J(y*) (z -
    y*)`` at a stable root to ``linear`` (plus the root's own residual ``2 tol``), with ``|F|
    <= near``: the flow from there goes to the root (:func:`_follow_flow`)."""
    return (_norm(F - linear_part) <= linear * _norm(linear_part) + 2 * tol) & \
        (_norm(F) <= near) & (lead < 0)


def _repolish(sub, attempt, rows, z, F, tol, solver):
    """Solve the roots of the examples ``rows`` again from the trajectory's points ``z``
    (``F = F(z)``) with the solvers of ``solver.plan``, with their stability (kept from
    ``attempt`` where the root is the one it had, to ``sqrt(tol)`` in every entry: the
    trajectory is slow but heading there); where a root is found it replaces ``attempt``'s.
    Returns the (b,) examples where one was found."""
    model = sub.model
    y, Fy, _, _, contracted, _ = _solve(sub, z, F, tol, solver.max_iter,
                                     solver.plan(model.state_size),
                                     model.column_time_constants(), model.time_scale)
    res = _norm(Fy)
    found = res <= tol
    same = found & (_norm(y - attempt.y[rows]) <= math.sqrt(tol))
    lead = _stability(sub, y, found & ~same, contracted, False, solver.arnoldi_steps)
    lead = torch.where(same, attempt.lead[rows], lead)
    index = rows[found]
    attempt.y[index], attempt.res[index], attempt.lead[index] = y[found], res[found], lead[found]
    return found


def _settle_and_polish(residual, params, attempt, start, pending, tol, solver, step, dense,
                       first=4.0, reach=10.0):
    """Integrate the ``pending`` examples toward steady state over ``settle_time``, in
    stretches of doubling length (``first`` time scales, then twice that, ...), polishing the
    end of each stretch with the solvers of ``solver.polish`` (dense Newton for small states
    under ``"auto"``); an example is done when the polish converges to a stable root (any
    root, basin ``"any"``). Its integration goes on from the stretch's end, not from the
    polished root, so a passage near a saddle does not end there. It starts from ``start``
    (the dynamics' own initial state) for examples at an unstable root or a non-finite state,
    else from their iterate. Each stretch takes at most ``settle_steps`` dopri5 steps and what
    the budget leaves; a stretch that fails is split in halves so one runaway example does
    not stop the others. Basin ``"reached"``: a polished stable root counts only if it lies
    within ``reach * max|F(end)| / |leading eigenvalue|`` of the stretch's end (the distance
    of a linear system's state to its equilibrium is ``|J^{-1} F|``, about ``|F| / |lambda|``
    along the slowest mode): farther, Newton jumped to another basin, and the integration goes
    on. ``attempt`` is updated in place (an unstable root is kept where
    nothing stable is reached). Returns ``(iterations, names of the solvers that ran)``.
    """
    model = residual.model
    horizon = solver.settle_time if solver.settle_time is not None else \
        200.0 * model.time_scale
    polish = solver.polish(model.state_size)
    restart = ~(attempt.res <= tol) & torch.isfinite(attempt.res)
    todo = pending.nonzero().flatten()
    flow = torch.where(restart[:, None], attempt.y, start)[todo]
    iterations, ran, previous, elapsed = 0, [], None, 0.0
    length = min(first * model.time_scale, horizon)
    while elapsed < horizon and todo.numel() and not residual.spent:
        steps = int(min(solver.settle_steps, residual.tally.evals_left() / 6))
        if steps < 1:
            break
        length = min(length, horizon - elapsed)
        t = torch.tensor([0.0, length], dtype=model.dtype, device=model.device)
        ends, failures = _integrate(residual, params, todo, flow, t, steps)
        elapsed, length = elapsed + length, 2 * length
        for b, why in zip(todo.tolist(), failures):
            if why:
                attempt.why[b] = why if why == "diverging" or steps < solver.settle_steps \
                    else "stalled"
        keep = torch.tensor([not f for f in failures], dtype=torch.bool, device=todo.device)
        todo, ends = todo[keep], ends[keep]
        previous = previous[keep] if previous is not None else None
        if todo.numel() == 0:
            break
        sub = residual.subset(todo)
        F_end = sub(ends)
        stuck = _norm(F_end)
        near = (stuck <= math.sqrt(tol)) | (solver.basin == "any")
        done = torch.zeros_like(near)
        if bool(near.any()):
            index = near.nonzero().flatten()
            done[index], more, names = _polish(residual.subset(todo[index]), attempt,
                                               todo[index], ends[index], F_end[index], tol,
                                               solver, polish, step, dense, reach)
            iterations, ran = iterations + more, ran + names
        for b in todo[done].tolist():
            attempt.why[b] = ""
        if previous is not None:
            for b in todo[~done & (stuck > 0.5 * previous)].tolist():
                attempt.why[b] = "oscillating"
        todo, flow, previous = todo[~done], ends[~done], stuck[~done]
    return iterations, ran


def _any_root(residual, attempt, start, lost, tol, solver, dense):
    """Basin ``"reached"`` with nothing reached (the flow diverges, oscillates, or the budget
    ran out): dense Newton from the start for a root of any stability, kept where it
    converges; its ``reason`` still says why it is not the state reached (``"unstable"``
    for an unstable root). Returns ``(iterations, names of the solvers that ran)``."""
    rows = lost.nonzero().flatten()
    sub = residual.subset(rows)
    ys = start[rows]
    y, F, iterations = _newton(sub, ys, sub(ys), tol, solver.max_iter, dense=True)
    res = _norm(F)
    found = res <= tol
    lead = _stability(sub, y, found, torch.zeros_like(found), dense, solver.arnoldi_steps)
    index = rows[found]
    attempt.y[index], attempt.res[index], attempt.lead[index] = y[found], res[found], lead[found]
    return iterations, ["newton"]


def _polish(sub, attempt, rows, ends, F_end, tol, solver, polish, step, dense, reach):
    """Polish the stretch ends ``ends`` of the examples ``rows``: where the root found is
    accepted (see :func:`_settle_and_polish`), or an unconverged state improves on an
    unconverged one, it replaces ``attempt``'s. Returns ``(accepted (b,), iterations, names
    of the solvers that ran)``."""
    ya, Fa, iterations, ran, contracted, _ = _solve(sub, ends, F_end, tol, solver.max_iter,
                                                 polish, step, sub.model.time_scale)
    res = _norm(Fa)
    lead = _stability(sub, ya, res <= tol, contracted, dense, solver.arnoldi_steps)
    done = (res <= tol) & ((lead < 0) | (solver.basin == "any"))
    if solver.basin == "reached":                  # the attractor of this stretch's end
        done &= (_norm(ya - ends) <= reach * _norm(F_end) / lead.abs() + math.sqrt(tol)) | \
            torch.isinf(lead)                      # certified: the map took the end there
    old = attempt.res[rows]          # else keep a root; a rejected root is another basin's
    better = done | (~(old <= tol) & (res < old) & ~(res <= tol))
    index = rows[better]
    attempt.y[index], attempt.res[index], attempt.lead[index] = \
        ya[better], res[better], lead[better]
    return done, iterations, ran


def _integrate(residual, params, todo, flow, t, steps):
    """dopri5 from ``flow`` over ``t`` for the examples ``todo``; returns the end states and,
    per example, ``""`` or why its integration failed: ``"diverging"`` (non-finite, blow-up)
    or ``"budget"`` (out of steps). A failed batch is split in halves to find its culprits
    (the adaptive steps of a batch follow its worst example)."""
    model = residual.model
    try:
        ys, _, nfev = integrate_drive(model, residual.drive.subset(todo), t, flow, params,
                                      rtol=1e-7, atol=1e-9,
                                      options={"max_num_steps": steps})
        residual.count(nfev)
        return ys[-1], [""] * todo.numel()
    except NumericalError as err:
        residual.count(steps * 6)                 # an upper bound: the count is lost
        why = "diverging" if "NaN" in str(err) or "blew up" in str(err) else "budget"
        if todo.numel() == 1 or residual.spent:
            return flow, [why] * todo.numel()
    half = todo.numel() // 2
    first = _integrate(residual, params, todo[:half], flow[:half], t, steps)
    second = _integrate(residual, params, todo[half:], flow[half:], t, steps)
    return torch.cat([first[0], second[0]]), first[1] + second[1]
