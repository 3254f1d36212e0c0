"""Tracking an equilibrium and its spectrum while a parameter varies.

:func:`continuation` sweeps one parameter over given values. At each value it solves the
equilibrium with :func:`~dendrite_sim.fixed_point`, warm-started from the previous value's
equilibrium, and takes the spectrum of the Jacobian there, for a whole batch of examples.

The swept parameter is named in one of three ways:

* a scalar hyper-parameter of the model (``"mu"``, ``"tau"``, ...), changed with
  ``model.replace(name=value)`` — the model re-validates it and raises its own ``ValueError``
  for a value outside its range;
* ``"feedback_gain"``, the gain ``c`` of ``g = c * inverse``, which lives in
  ``model.pathways``: the pathways object is copied and given the new gain;
* a callable ``(model, value) -> model`` returning the model at ``value``.

Non-convergence is reported, never hidden: ``converged[k, b]`` is False where
``fixed_point`` did not reach its tolerance; ``states`` then holds its last iterate and
``eigenvalues`` the spectrum *there* (NaN where the state or its Jacobian is not finite).
The next value starts from the example's last converged equilibrium.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from dendrite_sim.dynamics.equilibrium import fixed_point
from dendrite_sim.errors import NumericalError
from dendrite_sim.dynamics.model import NetworkModel
from dendrite_sim.dynamics.spectral import eigenvalues_sorted, jacobian_matrix

__all__ = ["Continuation", "continuation", "with_parameter", "check_sweep", "scalar_hyperparameters"]


@dataclass
class Continuation:
    """Result of :func:`continuation` for ``V`` parameter values and ``B`` examples.

    ``values`` (V,) float64; ``states`` (V, B, N); ``eigenvalues`` (V, B, N) complex, sorted by
    decreasing real part; ``max_real`` (V, B); ``stable`` (V, B) — a converged equilibrium with
    ``max_real < 0`` (a point where ``fixed_point`` failed is never called stable);
    ``converged`` (V, B); ``residual`` (V, B) ``max |dy/dt|``; ``parameter`` the swept name.
    """

    parameter: str
    values: torch.Tensor
    states: torch.Tensor
    eigenvalues: torch.Tensor
    max_real: torch.Tensor
    stable: torch.Tensor
    converged: torch.Tensor
    residual: torch.Tensor

    def _first_crossing(self):
        """Index ``k`` (B,) of the first bracket with ``max_real[k] < 0 <= max_real[k+1]``."""
        m = self.max_real
        cross = (m[:-1] < 0) & (m[1:] >= 0)  # NaN compares False: no crossing through NaN
        found = cross.any(0)
        return cross.int().argmax(0), found

    @property
    def loss_of_stability(self) -> torch.Tensor:
        """Per example (B,), the parameter value where ``max_real`` first goes from negative to
        non-negative along the sweep, linearly interpolated between the bracketing values;
        NaN if it never does. See :attr:`crossing_converged` for whether both bracketing
        points are converged equilibria (otherwise the crossing is only indicative)."""
        k, found = self._first_crossing()
        cols = torch.arange(k.numel())
        m0, m1 = self.max_real[k, cols].double(), self.max_real[k + 1, cols].double()
        v0, v1 = self.values[k], self.values[k + 1]
        star = v0 + (v1 - v0) * (-m0) / (m1 - m0)
        return torch.where(found, star, torch.full_like(star, math.nan))

    @property
    def crossing_converged(self) -> torch.Tensor:
        """Per example (B,), True where a crossing was found and ``fixed_point`` converged at
        both bracketing values."""
        k, found = self._first_crossing()
        cols = torch.arange(k.numel())
        return found & self.converged[k, cols] & self.converged[k + 1, cols]

    @property
    def first_unconverged(self) -> torch.Tensor:
        """Per example (B,), the first value at which ``fixed_point`` did not converge (NaN if
        it always did) — typically where the tracked equilibrium diverges or disappears."""
        bad = ~self.converged
        k = bad.int().argmax(0)
        return torch.where(bad.any(0), self.values[k], torch.full_like(self.values[k], math.nan))

    def summary(self) -> str:
        """A short human-readable report of the sweep."""
        V, B = self.max_real.shape
        v = self.values
        conv = self.converged
        lines = [f"continuation in {self.parameter}: {V} values from {float(v[0]):.6g} to "
                 f"{float(v[-1]):.6g}, {B} example(s)",
                 f"  converged: {int(conv.sum())}/{V * B} (value, example) pairs"]
        bad_values = v[~conv.all(1)]
        if bad_values.numel():
            lines.append("  NOT converged at " + _format_values(bad_values))
        stable_values = v[self.stable.all(1)]
        lines.append(f"  stable for all examples at {stable_values.numel()}/{V} values")
        mr = self.max_real
        lines.append(f"  max real part: from {_nan_range(mr[0])} to {_nan_range(mr[-1])}")
        loss = self.loss_of_stability
        found = ~torch.isnan(loss)
        if not bool(found.any()):
            lines.append("  loss of stability: none within the sweep")
        else:
            certified = int(self.crossing_converged.sum())
            lines.append(f"  loss of stability in {int(found.sum())}/{B} example(s) at "
                         f"{_nan_range(loss)} ({certified} bracketed by converged equilibria)")
        return "\n".join(lines)


def _format_values(values: torch.Tensor, limit: int = 8) -> str:
    shown = ", ".join(f"{float(a):.6g}" for a in values[:limit])
    more = f" (+{values.numel() - limit} more)" if values.numel() > limit else ""
    return shown + more


def _nan_range(x: torch.Tensor) -> str:
    x = x[~torch.isnan(x)].double()
    if not x.numel():
        return "n/a"
    lo, hi = float(x.min()), float(x.max())
    return f"{lo:.6g}" if math.isclose(lo, hi, rel_tol=1e-9, abs_tol=1e-12) else \
        f"[{lo:.6g}, {hi:.6g}]"


# -- parameters ------------------------------------------------------------------------------
def with_parameter(model: NetworkModel, parameter, value) -> NetworkModel:
    """``model`` with ``parameter`` (a name or a callable, see module docstring) at ``value``."""
    return _setter(model, parameter)[0](model, float(value))


def _setter(model: NetworkModel, parameter) -> tuple[Callable, str]:
    """``(apply(model, value) -> model, display name)`` for a parameter spec."""
    if callable(parameter):
        return _checked(parameter), getattr(parameter, "__name__", "parameter")
    if not isinstance(parameter, str):
        raise ValueError("parameter must be a hyper-parameter name or a callable "
                         f"(model, value) -> model; got {parameter!r}")
    attr = getattr(type(model), parameter, None)
    read_only = isinstance(attr, property) and attr.fset is None
    if read_only or parameter not in scalar_hyperparameters(model):
        raise ValueError(f"parameter {parameter!r} is not a scalar hyper-parameter of "
                         f"{type(model).__name__}; those are: "
                         f"{', '.join(scalar_hyperparameters(model))}")
    return (lambda m, value: m.replace(**{parameter: value})), parameter


def scalar_hyperparameters(model: NetworkModel) -> list[str]:
    """The names a sweep can change by name (:meth:`NetworkModel.hyperparameters`)."""
    return model.hyperparameters()


def check_sweep(model: NetworkModel, parameter, values) -> tuple[Callable, str, np.ndarray]:
    """``(apply, name, grid)`` of a sweep, every value checked by the model before anything is
    solved (``ValueError`` naming the parameter and the value it rejects)."""
    apply, name = _setter(model, parameter)
    grid = _check_values(values)
    for value in grid:
        try:
            apply(model, float(value))
        except ValueError as err:
            raise ValueError(f"{name} = {value:g} is not allowed: {err}") from None
    return apply, name, grid


def _checked(setter: Callable) -> Callable:
    """``setter`` whose result must be a model of the same layout (``TypeError`` /
    ``ValueError`` naming what it returned)."""
    def apply(model, value):
        swept = setter(model, value)
        if not isinstance(swept, NetworkModel):
            raise TypeError("parameter, a callable (model, value) -> model, must return a "
                            f"model; it returned {type(swept).__name__} at value {value!r}")
        if swept.layout.size != model.layout.size or swept.sizes != model.sizes or \
                swept.dtype != model.dtype:
            raise ValueError("parameter, a callable (model, value) -> model, must keep the "
                             "model's sizes, state layout and dtype; at value "
                             f"{value!r} it returned sizes {swept.sizes}, dtype {swept.dtype}")
        return swept
    return apply


def _check_values(values) -> np.ndarray:
    try:
        v = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values,
                       dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"values must be a 1-D sequence of real numbers; got {values!r}") \
            from None
    if v.ndim != 1 or v.size < 2:
        raise ValueError(f"values must be 1-D with at least 2 entries; got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("values must be finite")
    d = np.diff(v)
    if not ((d > 0).all() or (d < 0).all()):
        raise ValueError("values must be strictly monotone (increasing or decreasing)")
    return v


# -- the sweep -------------------------------------------------------------------------------
def _spectrum_at(model, x, y, target, params, gates, fallback):
    """Eigenvalues (B, N) at ``y``; NaN rows where ``y`` or the Jacobian is not finite."""
    finite = torch.isfinite(y).all(-1)
    safe = torch.where(finite[:, None], y, fallback)
    jac = jacobian_matrix(model, x, safe, target, params=params, gates=gates)
    ok = finite & torch.isfinite(jac).flatten(1).all(-1)
    ev = eigenvalues_sorted(torch.where(ok[:, None, None], jac, torch.zeros_like(jac)))
    return torch.where(ok[:, None], ev, torch.full_like(ev, complex(math.nan, math.nan)))


def continuation(model: NetworkModel, x, parameter, values, target=None, *, tol=None,
                 params=None, y0=None, gates=None, **solver) -> Continuation:
    """Track the equilibrium and its spectrum while ``parameter`` runs over ``values``.

    Parameters
    ----------
    model : a network model (e.g. :class:`dendrite_sim.models.Mixture`).
    x, target : input ``(B, n_0)`` and teaching signal, as in :func:`dendrite_sim.fixed_point`.
    parameter : a scalar hyper-parameter name changed with ``model.replace`` (e.g. ``"mu"``),
        ``"feedback_gain"``, or a callable ``(model, value) -> model``.
    values : 1-D, finite, at least 2, strictly monotone. Each value is validated by the model
        itself (its ``ValueError`` propagates).
    tol, params, gates : passed to ``fixed_point`` (and ``params``/``gates`` to the Jacobian).
    y0 : starting guess at the first value; default the model's initial state.
    solver : further ``fixed_point`` options (``max_iter``, ``method``, ``settle_time``, ...).

    Returns a :class:`Continuation`. Examples are solved together; at each value an example
    starts from its last converged equilibrium (or ``y0`` / the initial state before any).
    """
    apply, name, grid = check_sweep(model, parameter, values)
    drive = model.drive(x, target, gates)
    base = model.initial_state(drive, model.prepare(model.check_params(params)))
    start = base if y0 is None else model.check_state(y0, drive.batch_size)
    rows = {k: [] for k in ("states", "eigenvalues", "converged", "residual")}
    for value in grid:
        swept = apply(model, float(value))
        y, res, ok = _solve(swept, x, target, start, tol, params, gates, solver)
        rows["states"].append(y)
        rows["converged"].append(ok)
        rows["residual"].append(res)
        rows["eigenvalues"].append(_spectrum_at(swept, x, y, target, params, gates, base))
        start = torch.where(ok[:, None], y, start)
    out = {k: torch.stack(v) for k, v in rows.items()}
    max_real = out["eigenvalues"].real[..., 0]
    return Continuation(name, torch.as_tensor(grid, dtype=torch.float64), out["states"],
                        out["eigenvalues"], max_real, out["converged"] & (max_real < 0),
                        out["converged"], out["residual"])


def _solve(model, x, target, start, tol, params, gates, solver):
    """``fixed_point`` from ``start``: (state, residual, converged); a raised numerical
    failure marks the whole batch as not converged (NaN state, infinite residual)."""
    try:
        eq = fixed_point(model, x, target, y0=start, tol=tol, params=params, gates=gates,
                         **{"basin": "any", **solver})     # follow the branch past stability
    except NumericalError:
        nan = torch.full_like(start, math.nan)
        inf = torch.full(start.shape[:1], math.inf, dtype=start.dtype, device=start.device)
        return nan, inf, torch.zeros_like(inf, dtype=torch.bool)
    return eq.y, eq.residual, eq.converged
