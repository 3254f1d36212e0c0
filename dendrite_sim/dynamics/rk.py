"""A lean batched explicit Runge-Kutta integrator (docs/integration.md).

What a step costs besides the vector field is a handful of tensor operations: the stages of
an adaptive step are kept in one buffer ``K`` of shape ``(s, *y.shape)`` (reused between steps
when no gradient is recorded), every stage state is one ``addmv`` ``y + h A[i, :i] K[:i]``, the
error estimate one ``mv`` with ``b - b_hat``, and the step is accepted or rejected on one
number read back (the error ratio); fixed steps keep the field's outputs uncopied and form
each stage state by one fused ``add`` per nonzero coefficient. Output times inside a step are
filled by the method's dense output, one ``addmm`` for all of them (no interpolation work in
steps without output times); the final time is hit exactly.

Step control follows torchdiffeq (``rk_common.py``) so tolerances mean the same: the error
ratio is ``norm(err / (atol + rtol max(|y0|, |y1|)))`` with the root-mean-square norm by
default, a step is accepted when the ratio is at most 1, and the next step is
``h min(ifactor, max(safety ratio^(-1/p), dfactor))`` (``dfactor`` 1 after an accepted step),
the first one from Hairer, Norsett & Wanner, *Solving ODEs I*, II.4.

Three drivers share the stages: :func:`solve` (one step size for the whole batch, adaptive or
fixed), :func:`solve_per_example` (each example of a ``(B, N)`` batch with its own step size
and time; an example that reaches the end, or settles to ``max |dy/dt| < settle_tol``, leaves
the batch). :func:`solve_exponential` takes fixed steps of an exponential Runge-Kutta method,
the field's linear decay integrated exactly. Every driver stops with
:class:`~dendrite_sim.errors.NumericalError` once ``max_steps`` steps (accepted and rejected)
are spent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from dendrite_sim.errors import NumericalError

__all__ = ["Tableau", "TABLEAUX", "EXPONENTIAL", "solve", "solve_per_example",
           "solve_exponential", "phi", "Solution", "rms_norm"]


# ----------------------------------------------------------------------------------------------
# tableaux
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tableau:
    """An explicit Runge-Kutta method: ``a`` (row ``i`` holds the ``i`` coefficients of stage
    ``i``), weights ``b``, nodes ``c``; ``b_err = b - b_hat`` of an embedded pair (``None``:
    fixed steps only); ``order`` of the solution (the exponent of step control); ``fsal``:
    the last stage is ``f(y1)`` (its row of ``a`` equals ``b``); ``dense``: ``theta ->`` the
    ``s`` weights ``beta(theta)`` of the dense output ``y0 + h beta(theta) K`` (``None``: cubic
    Hermite from ``y0, y1, f0, f1``, which needs ``fsal``)."""

    name: str
    a: tuple
    b: tuple
    c: tuple
    order: int
    b_err: tuple | None = None
    fsal: bool = False
    dense: Callable | None = None

    @property
    def stages(self) -> int:
        return len(self.b)

    @property
    def adaptive(self) -> bool:
        return self.b_err is not None

    def dense_weights(self, theta: float) -> list:
        """``beta(theta)``, the stage weights of the solution at ``t0 + theta h``."""
        if self.dense is not None:
            return list(self.dense(theta))
        # cubic Hermite: y0 + h [(3t^2 - 2t^3) b + (t - 2t^2 + t^3) e_1 + (t^3 - t^2) e_s] K
        w01, w10, w11 = 3 * theta ** 2 - 2 * theta ** 3, theta - 2 * theta ** 2 + theta ** 3, \
            theta ** 3 - theta ** 2
        beta = [w01 * bi for bi in self.b]
        beta[0] += w10
        beta[-1] += w11
        return beta


def _quartic_dense(b, c_mid):
    """Dense output of a FSAL pair from a midpoint value ``y0 + h c_mid K``: the quartic through
    ``y0, y1, y_mid`` with slopes ``f0, f1`` (Shampine 1986; torchdiffeq's ``_interp_fit``)."""
    def weights(t):
        w_y1 = -5 * t ** 2 + 14 * t ** 3 - 8 * t ** 4
        w_mid = 16 * t ** 2 - 32 * t ** 3 + 16 * t ** 4
        beta = [w_y1 * bi + w_mid * mi for bi, mi in zip(b, c_mid)]
        beta[0] += t - 4 * t ** 2 + 5 * t ** 3 - 2 * t ** 4
        beta[-1] += t ** 2 - 3 * t ** 3 + 2 * t ** 4
        return beta
    return weights


def _tsit5_dense(t):
    """Tsitouras (2011) continuous extension, order 4 (the simplified polynomials of
    OrdinaryDiffEq.jl's ``Tsit5Interp``)."""
    t2 = t * t
    return [-1.0530884977290216 * t * (t - 1.3299890189751412)
            * (t2 - 1.4364028541716351 * t + 0.7139816917074209),
            0.1017 * t2 * (t2 - 2.1966568338249754 * t + 1.2949852507374631),
            2.490627285651252793 * t2 * (t2 - 2.38535645472061657 * t + 1.57803468208092486),
            -16.54810288924490272 * (t - 1.21712927295533244) * (t - 0.61620406037800089) * t2,
            47.37952196281928122 * (t - 1.203071208372362603) * (t - 0.658047292653547382) * t2,
            -34.87065786149660974 * (t - 1.2) * (t - 0.666666666666666667) * t2,
            2.5 * (t - 1) * (t - 0.6) * t2]


def _embedded(b, b_hat):
    return tuple(x - y for x, y in zip(b, b_hat))


_DOPRI5_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DOPRI5_C_MID = (6025192743 / 30085553152 / 2, 0.0, 51252292925 / 65400821598 / 2,
                 -2691868925 / 45128329728 / 2, 187940372067 / 1594534317056 / 2,
                 -1776094331 / 19743644256 / 2, 11237099 / 235043384 / 2)
_TSIT5_B = (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742,
            -3.290069515436081, 2.324710524099774, 0.0)
_BOSH3_B = (2 / 9, 1 / 3, 4 / 9, 0.0)

TABLEAUX = {t.name: t for t in (
    # Dormand & Prince (1980), 5(4), FSAL, with Shampine's embedded 4th-order weights (those
    # of torchdiffeq's dopri5) and dense output through his midpoint value
    Tableau("dopri5", a=((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
                         (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
                         (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
                         _DOPRI5_B[:6]),
            b=_DOPRI5_B, c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0), order=5,
            b_err=_embedded(_DOPRI5_B, (1951 / 21600, 0.0, 22642 / 50085, 451 / 720,
                                        -12231 / 42400, 649 / 6300, 1 / 60)),
            fsal=True, dense=_quartic_dense(_DOPRI5_B, _DOPRI5_C_MID)),
    # Tsitouras (2011), 5(4), FSAL, its own order-4 continuous extension
    Tableau("tsit5", a=((), (0.161,), (-0.008480655492356989, 0.335480655492357),
                        (2.897153057105493, -6.359448489975075, 4.3622954328695815),
                        (5.325864828439257, -11.748883564062828, 7.4955393428898365,
                         -0.09249506636175525),
                        (5.86145544294642, -12.92096931784711, 8.159367898576159,
                         -0.071584973281401, -0.028269050394068383),
                        _TSIT5_B[:6]),
            b=_TSIT5_B, c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0), order=5,
            b_err=(-0.00178001105222577714, -0.0008164344596567469, 0.007880878010261995,
                   -0.1447110071732629, 0.5823571654525552, -0.45808210592918697,
                   0.015151515151515152),
            fsal=True, dense=_tsit5_dense),
    # Bogacki & Shampine (1989), 3(2), FSAL; cubic Hermite dense output
    Tableau("bosh3", a=((), (1 / 2,), (0.0, 3 / 4), _BOSH3_B[:3]), b=_BOSH3_B,
            c=(0.0, 1 / 2, 3 / 4, 1.0), order=3,
            b_err=_embedded(_BOSH3_B, (7 / 24, 1 / 4, 1 / 3, 1 / 8)), fsal=True),
    # fixed-step methods, the tableaux of torchdiffeq's methods of these names
    Tableau("heun3", a=((), (1 / 3,), (0.0, 2 / 3)), b=(1 / 4, 0.0, 3 / 4),
            c=(0.0, 1 / 3, 2 / 3), order=3),
    Tableau("rk4", a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),   # Kutta's 3/8 rule
            b=(1 / 8, 3 / 8, 3 / 8, 1 / 8), c=(0.0, 1 / 3, 2 / 3, 1.0), order=4),
    Tableau("midpoint", a=((), (1 / 2,)), b=(0.0, 1.0), c=(0.0, 1 / 2), order=2),
    Tableau("euler", a=((),), b=(1.0,), c=(0.0,), order=1),
)}


# ----------------------------------------------------------------------------------------------
# stages
# ----------------------------------------------------------------------------------------------
def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Root-mean-square of all entries (torchdiffeq's default error norm)."""
    return torch.linalg.vector_norm(x) / math.sqrt(max(x.numel(), 1))


class _Stages:
    """A tableau's coefficients as tensors of the state's dtype and device, and its stage
    buffer: :meth:`step` evaluates one step's stages.

    ``buffered=False`` (fixed steps: no error estimate, no dense output) keeps the stages as
    the field's own outputs, uncopied, and forms each stage state by one fused ``add`` per
    nonzero coefficient (:meth:`accumulate`): for the few stages of a fixed-step method that
    moves less memory than copying every stage into the buffer and one ``addmv``."""

    def __init__(self, tableau: Tableau, like: torch.Tensor, buffered: bool = True):
        s, kw = tableau.stages, dict(dtype=like.dtype, device=like.device)
        self.tableau, self.buffered = tableau, buffered
        A = torch.zeros(s, s, **kw)
        for i, row in enumerate(tableau.a):
            A[i, :len(row)] = torch.tensor(row, **kw) if row else 0.0
        self.A, self.b = A, torch.tensor(tableau.b, **kw)
        self.b_err = None if tableau.b_err is None else torch.tensor(tableau.b_err, **kw)
        self.kw, self._buffer = kw, None

    def buffer(self, y: torch.Tensor) -> torch.Tensor:
        """``K``, reused across steps unless autograd records (a recorded step keeps its own)."""
        shape = (self.tableau.stages,) + tuple(y.shape)
        if torch.is_grad_enabled() or self._buffer is None or self._buffer.shape != shape:
            self._buffer = y.new_empty(shape)
        return self._buffer

    def step(self, func, t, y, f0, h, stage_time=True):
        """The stages of one step from ``(t, y)`` with ``f0 = f(t, y)`` (``None``: evaluated
        here) and step ``h`` (a number, or a ``(B, 1)`` tensor of per-example steps; then the
        field is called at ``t`` for every stage: ``stage_time=False``).

        Returns ``(y1, K, nfev)``; with ``fsal`` ``K[-1]`` is ``f(t + h, y1)``.
        """
        tab = self.tableau
        nfev = 0
        if f0 is None:
            f0, nfev = func(t, y), 1
        if not self.buffered:
            K, y1 = [f0], y
            for i in range(1, tab.stages):
                y1 = self.accumulate(y, K, tab.a[i], h)
                K.append(func(t + tab.c[i] * h, y1))
            if not tab.fsal:
                y1 = self.accumulate(y, K, tab.b, h)
            return y1, K, nfev + tab.stages - 1
        K = self.buffer(y)
        K[0].copy_(f0)
        y1 = None
        for i in range(1, tab.stages):
            y1 = self.combine(y, K[:i], self.A[i, :i], h)
            K[i].copy_(func(t + tab.c[i] * h if stage_time else t, y1))
            nfev += 1
        if not tab.fsal:
            y1 = self.combine(y, K, self.b, h)
        return y1, K, nfev

    @staticmethod
    def accumulate(y, K, weights, h: float):
        """``y + h weights K`` over the nonzero ``weights`` (plain numbers), one fused ``add``
        each; ``y`` itself when all are zero."""
        out = y
        for w, k in zip(weights, K):
            if w:
                out = torch.add(y, k, alpha=h * w) if out is y else out.add_(k, alpha=h * w)
        return out

    @staticmethod
    def combine(y, K, weights, h):
        """``y + h weights K`` (one fused operation for a scalar step)."""
        flat = K.reshape(K.shape[0], -1).t()
        if isinstance(h, torch.Tensor):
            return torch.addcmul(y, h, torch.mv(flat, weights).view_as(y))
        return torch.addmv(y.reshape(-1), flat, weights, alpha=h).view_as(y)

    def error(self, K, h):
        """The local error estimate ``h (b - b_hat) K``."""
        return self.combine(torch.zeros_like(K[0]), K, self.b_err, h)

    def dense(self, y, K, h, thetas) -> torch.Tensor:
        """The dense output at ``t + theta h`` for each ``theta``: ``(len(thetas), *y.shape)``."""
        W = torch.tensor([self.tableau.dense_weights(th) for th in thetas], **self.kw)
        flat = K.reshape(K.shape[0], -1)
        return torch.addmm(y.reshape(1, -1), W, flat, alpha=h).view((len(thetas),) + y.shape)


def _scaled(err, y0, y1, rtol, atol):
    """``err / (atol + rtol max(|y0|, |y1|))``."""
    return err / torch.maximum(y0.abs(), y1.abs()).mul_(rtol).add_(atol)


def _next_step(h, ratio, order, accepted, safety, ifactor, dfactor):
    """torchdiffeq's step-size update (``_optimal_step_size``)."""
    if ratio == 0.0:
        return h * ifactor
    low = 1.0 if accepted else dfactor
    return h * min(ifactor, max(safety / ratio ** (1.0 / order), low))


def _budget_error(t, t0, t1, max_steps):
    return NumericalError(
        f"integration stopped at t = {t:.6g} of [{t0:.6g}, {t1:.6g}]: the step budget "
        f"max_steps={max_steps} is spent (a stiff or fast system, or a horizon of many time "
        "constants; raise max_steps, loosen rtol/atol, or shorten the horizon)")


@dataclass
class Solution:
    """``ys`` ``(T, *y0.shape)`` at the requested times; ``nfev`` field evaluations (of the
    whole batch; :func:`solve_per_example` counts example-evaluations / B); ``steps``
    accepted and ``rejected`` steps; ``stop_times`` ``(B,)`` (:func:`solve_per_example`)."""

    ys: torch.Tensor
    nfev: int
    steps: int
    rejected: int
    stop_times: torch.Tensor | None = None


# ----------------------------------------------------------------------------------------------
# one step size for the batch
# ----------------------------------------------------------------------------------------------
def solve(func, y0: torch.Tensor, t, tableau: Tableau, *, rtol=1e-6, atol=1e-8, norm=None,
          step_size=None, max_steps=10_000, first_step=None, safety=0.9, ifactor=10.0,
          dfactor=0.2) -> Solution:
    """Integrate ``dy/dt = func(t, y)`` from ``y0`` at ``t[0]``, reporting at the times ``t``.

    ``step_size``: fixed steps, the largest not above it that divide each output interval
    evenly (no error control); else adaptive (``tableau.adaptive`` required). ``norm``: the
    error norm (default :func:`rms_norm`); ``atol`` a number or a tensor broadcastable to
    ``y0``. Raises :class:`NumericalError` when ``max_steps`` steps are spent, or when the
    step size underflows (a non-finite state).
    """
    times = [float(v) for v in t]
    if step_size is not None:
        return _solve_fixed(func, y0, times, _Stages(tableau, y0, buffered=False),
                            float(step_size), max_steps)
    if not tableau.adaptive:
        raise ValueError(f"method {tableau.name!r} is fixed-step: give step_size > 0")
    return _solve_adaptive(func, y0, times, _Stages(tableau, y0), rtol, atol, norm or rms_norm,
                           max_steps, first_step, (safety, ifactor, dfactor))


def _fixed_grid(times, step_size, max_steps) -> list:
    """``[(start, step, count)]`` per output interval: the largest step not above
    ``step_size`` that divides it evenly; the budget is checked before any step is taken."""
    counts = [max(1, math.ceil((b - a) / step_size * (1 - 1e-12)))
              for a, b in zip(times[:-1], times[1:])]
    if sum(counts) > max_steps:
        raise _budget_error(times[0], times[0], times[-1], max_steps) from None
    return [(a, (b - a) / n, n) for a, b, n in zip(times[:-1], times[1:], counts)]


def _solve_fixed(func, y0, times, stages, step_size, max_steps):
    grid = _fixed_grid(times, step_size, max_steps)
    ys, y, f, nfev = [y0], y0, None, 0
    for a, h, n in grid:
        for k in range(n):
            y, K, used = stages.step(func, a + k * h, y, f, h)
            nfev += used
            f = K[-1] if stages.tableau.fsal else None
        ys.append(y)
    return Solution(torch.stack(ys), nfev, sum(n for _, _, n in grid), 0)


def phi(j: int, z: torch.Tensor) -> torch.Tensor:
    """``phi_j(z) = sum_n z^n / (n + j)!`` (``phi_0 = exp``, ``phi_1(z) = (e^z - 1) / z``,
    ...; ``phi_j(0) = 1 / j!``), in float64: the Taylor series where ``|z| < 1``, the
    recurrence ``phi_j = (phi_{j-1} - 1 / (j-1)!) / z`` elsewhere (no cancellation there)."""
    z = z.to(torch.float64)
    value = torch.exp(z)
    for i in range(1, j + 1):
        value = (value - 1.0 / math.factorial(i - 1)) / torch.where(z == 0, 1.0, z)
    small = z.abs() < 1.0
    if bool(small.any()):
        series = torch.zeros_like(z)
        for n in range(24, -1, -1):
            series = series * z + 1.0 / math.factorial(n + j)
        value = torch.where(small, series, value)
    return value


class _Exponential:
    """The coefficients of the exponential methods for one step size ``h`` and the linear
    part ``-k`` (``z = -k h``) of one lane of the state: ``e = e^z``, ``e_half = e^{z/2}``,
    ``p_half = phi_1(z/2)``, ``p1, p2 = phi_1(z), phi_2(z)`` and ETDRK4's weights ``w_y,
    w_ab, w_c``. A tensor ``k`` gives tensors in the state's dtype (the phi functions
    evaluated on its distinct values only and spread over its shape); the number 0 gives
    plain numbers, ``phi_j(0) = 1 / j!`` (the methods reduce to classical explicit ones:
    Euler, Heun's trapezoid, RK4)."""

    def __init__(self, decay, h: float, dtype):
        if _no_decay(decay):
            (self.e, self.e_half, self.p_half, self.p1, self.p2, self.w_y, self.w_ab,
             self.w_c) = (float(v) for v in self._table(torch.zeros(1, dtype=torch.float64)))
            return
        values, where = torch.unique(decay, return_inverse=True)
        table = self._table(-values.to(torch.float64) * h).to(dtype)
        (self.e, self.e_half, self.p_half, self.p1, self.p2, self.w_y, self.w_ab,
         self.w_c) = table[:, where]

    @staticmethod
    def _table(z):
        p1, p2, p3 = (phi(j, z) for j in (1, 2, 3))
        return torch.stack([phi(0, z), phi(0, z / 2), phi(1, z / 2), p1, p2,
                            p1 - 3 * p2 + 4 * p3, 2 * (p2 - 2 * p3), 4 * p3 - p2])


def _no_decay(decay) -> bool:
    """A lane declared without linear decay: the plain number 0."""
    return isinstance(decay, (int, float)) and decay == 0


#: the coefficients of a lane without decay (``z = 0``, whatever the step)
_CLASSICAL = _Exponential(0, 1.0, torch.float64)


def kept_for(cache: dict, tensor: torch.Tensor, extra, build):
    """``build()``, kept in ``cache`` for this very ``tensor`` and ``extra`` (the entry holds
    the tensor, so its ``id`` is not reused while the entry lives); the oldest of 16 entries
    makes room. For values derived from a tensor that the engine passes again and again (a
    phase's decay rates, the same for every presentation)."""
    key = (id(tensor), extra)
    hit = cache.get(key)
    if hit is None or hit[0] is not tensor:
        if len(cache) >= 16:
            cache.pop(next(iter(cache)))
        hit = cache[key] = (tensor, build())
    return hit[1]


_COEFFICIENTS: dict = {}


def _exponential_coefficients(decay, h: float, dtype) -> _Exponential:
    """:class:`_Exponential` of ``(decay, h)``, kept for the last few ``decay`` tensors."""
    if _no_decay(decay):
        return _CLASSICAL
    return kept_for(_COEFFICIENTS, decay, (h, dtype), lambda: _Exponential(decay, h, dtype))


class _Lanes:
    """The :class:`_Exponential` coefficients of the lanes of a state, by name: ``lanes.e``
    is the tuple of each lane's ``e``."""

    NAMES = ("e", "e_half", "p_half", "p1", "p2", "w_y", "w_ab", "w_c")

    def __init__(self, per_lane):
        for name in self.NAMES:
            setattr(self, name, tuple(getattr(c, name) for c in per_lane))


# The steps below act on a state of lanes: a list of tensors, each with its own linear decay
# and coefficients, every operation applied lane by lane. A coefficient that is a plain number
# (a lane without decay) costs no tensor read, and a factor 1 no operation.
def _times(factors, y):
    """``factor * y`` per lane."""
    return [v if type(f) is float and f == 1.0 else f * v for f, v in zip(factors, y)]


def _plus(base, factors, v, scale):
    """``base + scale * factor * v`` per lane."""
    return [torch.add(b, w, alpha=scale * f) if type(f) is float
            else torch.addcmul(b, f, w, value=scale) for b, f, w in zip(base, factors, v)]


def _plus_(base, factors, v, scale):
    """:func:`_plus` into ``base``."""
    return [b.add_(w, alpha=scale * f) if type(f) is float else b.addcmul_(f, w, value=scale)
            for b, f, w in zip(base, factors, v)]


def _combine(u, v, alpha):
    """``u + alpha v`` per lane."""
    return [torch.add(a, b, alpha=alpha) for a, b in zip(u, v)]


def _etd1(func, t, y, h, k, c):
    """Exponential Euler: ``y1 = e^z y + h phi_1(z) N(y)``."""
    return _plus(_times(c.e, y), c.p1, _nonlinear(func, t, y, k), h)


def _etdrk2(func, t, y, h, k, c):
    """Cox & Matthews (2002) ETD2RK: ``a = e^z y + h phi_1 N(y)``, ``y1 = a + h phi_2
    (N(a) - N(y))``."""
    n_y = _nonlinear(func, t, y, k)
    a = _plus(_times(c.e, y), c.p1, n_y, h)
    return _plus(a, c.p2, _combine(_nonlinear(func, t + h, a, k), n_y, -1.0), h)


def _etdrk4(func, t, y, h, k, c):
    """Cox & Matthews (2002) ETDRK4 in phi-function form (Hochbruck & Ostermann 2010,
    Acta Numerica, section 2.3)::

        a = e^{z/2} y + h/2 phi_1(z/2) N(y),     b = e^{z/2} y + h/2 phi_1(z/2) N(a)
        c = e^{z/2} a + h/2 phi_1(z/2) (2 N(b) - N(y))
        y1 = e^z y + h [(phi_1 - 3 phi_2 + 4 phi_3) N(y) + 2 (phi_2 - 2 phi_3) (N(a) + N(b))
                        + (4 phi_3 - phi_2) N(c)]

    (classical RK4 where ``k = 0``). ``y1`` is accumulated as the stages come, and each
    stage is released once used: fewer states alive at once, so the ones the allocator hands
    out next are still in cache."""
    n_y = _nonlinear(func, t, y, k)
    y_half = _times(c.e_half, y)
    a = _plus(y_half, c.p_half, n_y, h / 2)
    n_a = _nonlinear(func, t + h / 2, a, k)
    b = _plus(y_half, c.p_half, n_a, h / 2)
    del y_half
    out = _plus_(_plus(_times(c.e, y), c.w_y, n_y, h), c.w_ab, n_a, h)
    del n_a
    n_b = _nonlinear(func, t + h / 2, b, k)
    del b
    out = _plus_(out, c.w_ab, n_b, h)
    c_ = _plus(_times(c.e_half, a), c.p_half, _combine(n_b, n_y, -0.5), h)
    del a, n_b, n_y
    return _plus_(out, c.w_c, _nonlinear(func, t + h, c_, k), h)


def _nonlinear(func, t, y, k):
    """``N(y) = f(t, y) + k y``, the field without its linear decay, per lane."""
    return [f if _no_decay(rate) else torch.addcmul(f, rate, v)
            for f, rate, v in zip(func(t, y), k, y)]


#: the exponential Runge-Kutta methods: ``{name: (step, evaluations per step)}``
EXPONENTIAL = {"etd1": (_etd1, 1), "etdrk2": (_etdrk2, 2), "etdrk4": (_etdrk4, 4)}


def solve_exponential(func, y0, t, method: str, decay, *, step_size: float,
                      max_steps=10_000, gives_nonlinear=False) -> Solution:
    """Fixed steps of the exponential Runge-Kutta ``method`` (:data:`EXPONENTIAL`) for
    ``dy/dt = func(t, y) = -k y + N(t, y)``, ``k = decay >= 0`` (broadcastable to ``y0``,
    constant over ``t``): the linear decay is integrated exactly (``phi`` functions of
    ``z = -k h``), so the step is bounded by the stability and accuracy of ``N`` alone, not
    by ``1 / k``. An equilibrium of ``func`` is a fixed point of every step (unlike Lawson's
    integrating-factor methods, which shift it by their quadrature error). Steps as in
    :func:`solve`: the largest not above ``step_size`` that divide each output interval.

    A state of several lanes: ``y0`` a tuple of tensors, ``decay`` a tuple with one entry per
    lane (a tensor broadcastable to it, or the number 0 where the lane has no linear decay:
    its coefficients are plain numbers, the classical method), ``func`` maps ``(t, lanes)`` to
    lanes; ``Solution.ys`` is then the tuple of each lane's outputs. (The coupled state of
    :mod:`~dendrite_sim.dynamics.integrate`: the neural state, whose decay is one row of
    rates spread over the batch, and the weights', without decay.)

    ``gives_nonlinear``: ``func`` returns ``N(t, y)`` itself (the field plus ``k y``)."""
    lanes = isinstance(y0, tuple)
    y0, decay = (y0, decay) if lanes else ((y0,), (decay,))
    step, evaluations = EXPONENTIAL[method]
    grid = _fixed_grid([float(v) for v in t], step_size, max_steps)
    k = [0 if _no_decay(rate) else torch.as_tensor(rate, dtype=v.dtype, device=v.device)
         for rate, v in zip(decay, y0)]
    added = [0] * len(k) if gives_nonlinear else k      # the decay N(y) adds to func's value
    run = (lambda s, y: func(s, tuple(y))) if lanes else (lambda s, y: (func(s, y[0]),))
    ys, y = [y0], y0
    for a, h, n in grid:
        coefficients = _Lanes([_exponential_coefficients(rate, h, v.dtype)
                               for rate, v in zip(k, y0)])
        for i in range(n):
            y = step(run, a + i * h, y, h, added, coefficients)
        ys.append(y)
    steps = sum(n for _, _, n in grid)
    stacked = tuple(torch.stack(lane) for lane in zip(*ys))
    return Solution(stacked if lanes else stacked[0], steps * evaluations, steps, 0)


@torch.no_grad()
def _initial_step(func, t0, y0, f0, order, rtol, atol, norm):
    """Hairer, Norsett & Wanner II.4 (torchdiffeq's ``_select_initial_step``)."""
    scale = torch.abs(y0) * rtol + atol
    d0, d1 = float(norm(y0 / scale)), float(norm(f0 / scale))
    if not (math.isfinite(d0) and math.isfinite(d1)):
        raise NumericalError(f"integration cannot start at t = {float(t0):.6g}: the "
                             f"{'state' if not math.isfinite(d0) else 'vector field'} has "
                             "NaN/inf entries (a state outside an inverse transfer's domain, "
                             "or weights that blew up)")
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    f1 = func(t0 + h0, torch.add(y0, f0, alpha=h0))
    d2 = float(norm((f1 - f0) / scale)) / h0
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / order)
    return min(100 * h0, h1)


def _solve_adaptive(func, y0, times, stages, rtol, atol, norm, max_steps, first_step, control):
    tab = stages.tableau
    t, t_end, y = times[0], times[-1], y0
    f, nfev = func(t, y), 1
    if first_step is None:
        h, nfev = _initial_step(func, t, y, f, tab.order, rtol, atol, norm), nfev + 1
    else:
        h = float(first_step)
    ys, nxt, steps, rejected, ratio = [y0], 1, 0, 0, 0.0
    while nxt < len(times):
        if steps >= max_steps:
            raise _budget_error(t, times[0], t_end, max_steps)
        last = t + h >= t_end - 1e-12 * max(abs(t_end), h)
        h_try = t_end - t if last else h
        if not t + h_try > t:
            raise NumericalError(f"integration failed at t = {t:.6g}: the step size "
                                 f"underflowed ({h_try:.3g}; "
                                 + ("NaN/inf in the steps)" if not math.isfinite(ratio)
                                    else "an exploding state)"))
        y1, K, used = stages.step(func, t, y, f, h_try)
        nfev, steps = nfev + used, steps + 1
        with torch.no_grad():
            ratio = float(norm(_scaled(stages.error(K, h_try), y, y1, rtol, atol)))
        accepted = ratio <= 1.0
        if accepted:
            t1 = t_end if last else t + h_try
            inside = [k for k in range(nxt, len(times)) if times[k] < t1]
            if inside:
                ys.extend(stages.dense(y, K, h_try, [(times[k] - t) / h_try for k in inside]))
            nxt += len(inside)
            if nxt < len(times) and times[nxt] == t1:
                ys.append(y1)
                nxt += 1
            t, y, f = t1, y1, K[-1]
        else:             # f(t, y) is still K[0]; K[-1] was overwritten
            rejected, f = rejected + 1, K[0]
        h = (_next_step(h_try, ratio, tab.order, accepted, *control) if math.isfinite(ratio)
             else h_try * control[2])
    return Solution(torch.stack(ys), nfev, steps - rejected, rejected)


# ----------------------------------------------------------------------------------------------
# a step size per example
# ----------------------------------------------------------------------------------------------
def solve_per_example(field_for, y0: torch.Tensor, t, tableau: Tableau, *, rtol=1e-6,
                      atol=1e-8, max_steps=10_000, settle_tol=None, safety=0.9, ifactor=10.0,
                      dfactor=0.2) -> Solution:
    """Integrate a batch ``(B, N)`` with a step size and a time per example.

    ``field_for(index)`` returns the field ``f(t, y)`` of the examples ``index`` (called when
    the set of running examples changes); every stage of a step is evaluated at the step's
    start time of the earliest running example, so the field must not depend on ``t`` within
    ``[t[0], t[-1]]`` (constant gates: true between breakpoints). An example leaves the batch
    when it reaches ``t[-1]`` or, with ``settle_tol``, at the end of the first accepted step
    where ``max |f(y)| < settle_tol`` (its later outputs hold that state); ``stop_times``
    ``(B,)`` are those times (``t[-1]`` for an example that did not settle). ``atol`` a
    number. The error norm is each example's root-mean-square.
    """
    times = [float(v) for v in t]
    stages = _Stages(tableau, y0)
    if not tableau.adaptive:
        raise ValueError(f"method {tableau.name!r} is fixed-step: per-example steps need an "
                         "adaptive method")
    B, kw = y0.shape[0], dict(dtype=y0.dtype, device=y0.device)
    out = y0.new_empty((len(times),) + tuple(y0.shape))
    out[0] = y0
    grid = torch.tensor(times, **kw)
    stop = torch.full((B,), times[-1], **kw)
    index, y = torch.arange(B, device=y0.device), y0
    func = field_for(index)
    f = func(times[0], y)
    nfev = 1
    h = _per_example_initial_step(func, times[0], y, f, tableau.order, rtol, atol)
    nfev += 1
    tnow = torch.full((B, 1), times[0], **kw)
    steps = rejected = 0
    while index.numel():
        if steps >= max_steps:
            raise _budget_error(float(tnow.min()), times[0], times[-1], max_steps)
        h = torch.minimum(h, times[-1] - tnow)
        y1, K, used = stages.step(func, float(tnow.min()), y, f, h, stage_time=False)
        nfev += used * index.numel() / B
        steps += 1
        with torch.no_grad():
            ratio = _scaled(stages.error(K, h), y, y1, rtol, atol).pow(2).mean(1, True).sqrt()
        ok = ratio <= 1.0
        t1 = torch.where(h >= times[-1] - tnow, times[-1], tnow + h)
        _fill_outputs(out, grid, index, stages, y, K, h, tnow, t1, ok)
        y, tnow = torch.where(ok, y1, y), torch.where(ok, t1, tnow)
        f = torch.where(ok, K[-1], K[0])
        rejected += int((~ok).sum())
        h = _per_example_next_step(h, ratio, ok, tableau.order, safety, ifactor, dfactor)
        done = (tnow >= times[-1]).squeeze(1)
        if settle_tol is not None:
            settled = (ok & (f.abs().amax(1, True) < settle_tol)).squeeze(1)
            stop[index[settled]] = tnow[settled, 0]
            out[:, index[settled]] = torch.where(grid[:, None, None] > tnow[settled],
                                                 y[settled], out[:, index[settled]])
            done = done | settled
        if bool(done.any()):
            keep = ~done
            index, y, f, h, tnow = index[keep], y[keep], f[keep], h[keep], tnow[keep]
            if index.numel():
                func = field_for(index)
    return Solution(out, int(math.ceil(nfev)), steps, rejected, stop)


@torch.no_grad()
def _per_example_initial_step(func, t0, y0, f0, order, rtol, atol):
    """:func:`_initial_step` with each example's own norms: ``(B, 1)``."""
    def rms(x):
        return x.pow(2).mean(1, True).sqrt()
    scale = torch.abs(y0) * rtol + atol
    d0, d1 = rms(y0 / scale), rms(f0 / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1.clamp_min(1e-300))
    f1 = func(t0, y0 + h0 * f0)
    d2 = rms((f1 - f0) / scale) / h0
    small = (d1 <= 1e-15) & (d2 <= 1e-15)
    h1 = torch.where(small, torch.clamp_min(h0 * 1e-3, 1e-6),
                     (0.01 / torch.maximum(d1, d2).clamp_min(1e-300)) ** (1.0 / order))
    return torch.minimum(100 * h0, h1)


def _per_example_next_step(h, ratio, ok, order, safety, ifactor, dfactor):
    low = torch.where(ok, 1.0, dfactor)
    factor = torch.where(ratio == 0, ifactor, torch.clamp(
        safety * ratio.pow(-1.0 / order), max=ifactor).maximum(low))
    return h * torch.where(torch.isfinite(ratio), factor, dfactor)


def _fill_outputs(out, grid, index, stages, y, K, h, t0, t1, ok):
    """Write the dense output of each accepted step at the output times it covers."""
    covered = ok & (grid[None, 1:] > t0) & (grid[None, 1:] <= t1)      # (b, T-1)
    rows, cols = covered.nonzero(as_tuple=True)
    if rows.numel() == 0:
        return
    theta = ((grid[1:][cols] - t0[rows, 0]) / h[rows, 0]).tolist()
    W = torch.tensor([stages.tableau.dense_weights(th) for th in theta], **stages.kw)
    # y0 + h sum_s W[s] K[s] for each (example, time) pair
    incr = torch.einsum("ps,spn->pn", W, K[:, rows])
    out[cols + 1, index[rows]] = torch.addcmul(y[rows], h[rows], incr)
