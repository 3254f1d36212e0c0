"""Solver settings as one object, and the registry of integration methods (docs/integration.md).

:class:`Integrator` bundles what :func:`~dendrite_sim.simulate` and ``integrate_drive`` take as
loose keywords (``method, rtol, atol, step_size, options, max_abs``) plus the step budget
``max_steps`` and the per-example step option, validated once.

``METHODS`` maps a method name to the :class:`Backend` that runs it. The plain names of the
tableaux in :data:`~dendrite_sim.dynamics.rk.TABLEAUX` (``dopri5``, ``tsit5``, ``bosh3``,
``heun3``, ``rk4``, ``midpoint``, ``euler``) run on the lean integrator of
:mod:`~dendrite_sim.dynamics.rk`; every method of torchdiffeq's own registry is available as
``"torchdiffeq:<name>"``, and by its plain name where no lean tableau has that name
(``dopri8``, ``adaptive_heun``, ``explicit_adams``, ...). The exponential Runge-Kutta methods
``etd1``, ``etdrk2``, ``etdrk4`` (Cox & Matthews 2002) take fixed steps on the lean engine
with the model's declared linear decay (``NetworkModel.linear_decay``, e.g. ``-h / tau``)
integrated exactly, so the step is bounded by the rest of the field, not by ``tau``. The lean methods take the plain names
because they are faster at the same error and evaluations (measured in docs/integration.md),
and existing calls ``simulate(..., method="dopri5", rtol=..., atol=..., options=...)`` keep
their meaning: the same tableau and the same error-control semantics.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
import torchdiffeq  # noqa: F401  (loads torchdiffeq._impl.odeint, whose SOLVERS we read)
from torchdiffeq._impl.solvers import FixedGridODESolver

from dendrite_sim.errors import check_range
from dendrite_sim.dynamics.rk import EXPONENTIAL, TABLEAUX

__all__ = ["Integrator", "Backend", "METHODS", "FIXED_STEP", "register_method",
           "DEFAULT_MAX_STEPS", "LEAN_OPTIONS"]

#: steps (accepted and rejected) per segment between breakpoints before ``NumericalError``:
#: a clamped 5-layer presentation to 40 tau at rtol 1e-6 takes about 35 steps, a coupled
#: digits phase at heun3's 1.25 tau about 30; at ~1 ms a step (a small network) the budget
#: is spent in seconds, not hours (docs/integration.md)
DEFAULT_MAX_STEPS = 10_000
#: options the lean methods accept (``max_num_steps`` is torchdiffeq's name of ``max_steps``)
LEAN_OPTIONS = ("norm", "first_step", "max_num_steps", "safety", "ifactor", "dfactor",
                "step_size")


@dataclass(frozen=True)
class Backend:
    """What runs a method: ``engine`` ``"lean"`` (``solver`` names a tableau of
    :data:`~dendrite_sim.dynamics.rk.TABLEAUX`) or ``"torchdiffeq"`` (``solver`` names a
    method of its ``odeint``); ``fixed``: it takes fixed steps only (needs ``step_size``);
    ``exponential``: ``solver`` names an exponential Runge-Kutta method of
    :data:`~dendrite_sim.dynamics.rk.EXPONENTIAL` (the model's ``linear_decay`` integrated
    exactly; fixed steps)."""

    engine: str
    solver: str
    fixed: bool
    exponential: bool = False


def _torchdiffeq_solvers() -> dict:
    """torchdiffeq's own registry, ``{name: solver class}``."""
    return sys.modules["torchdiffeq._impl.odeint"].SOLVERS


def _build_registry() -> dict:
    methods = {}
    for name, cls in _torchdiffeq_solvers().items():
        backend = Backend("torchdiffeq", name, issubclass(cls, FixedGridODESolver))
        methods[f"torchdiffeq:{name}"] = backend
        methods[name] = backend
    for name, tableau in TABLEAUX.items():
        methods[name] = Backend("lean", name, not tableau.adaptive)
    for name in EXPONENTIAL:
        methods[name] = Backend("lean", name, True, exponential=True)
    return methods


#: ``{method name: Backend}``
METHODS: dict = _build_registry()


def register_method(name: str, backend: Backend) -> None:
    """Make ``method=name`` run on ``backend`` (e.g. a tableau added to ``TABLEAUX``)."""
    if not isinstance(backend, Backend):
        raise ValueError(f"backend must be a Backend; got {type(backend).__name__}")
    METHODS[name] = backend


def fixed_step_methods() -> tuple:
    return tuple(name for name, b in METHODS.items() if b.fixed)


FIXED_STEP = fixed_step_methods()


@dataclass(frozen=True)
class Integrator:
    """How to integrate: ``method`` (a name of ``METHODS``), tolerances ``rtol, atol``
    (``atol`` a number or a tensor broadcastable to the state), ``step_size`` (fixed steps;
    required by fixed-step methods, optional for the adaptive lean ones), ``max_steps`` (step
    budget per segment between breakpoints), ``max_abs`` (a larger ``|state|`` is a blow-up),
    ``options`` (the backend's options: for the lean methods those of ``LEAN_OPTIONS``, for
    torchdiffeq its own), ``per_example`` (lean adaptive methods: each example its own step
    size; an example that reaches the end stops costing)."""

    method: str = "dopri5"
    rtol: float = 1e-6
    atol: float | torch.Tensor = 1e-8
    step_size: float | None = None
    max_steps: int = DEFAULT_MAX_STEPS
    max_abs: float = 1e6
    options: dict | None = field(default=None, compare=False)
    per_example: bool = False

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {tuple(METHODS)}; got {self.method!r}")
        check_range("rtol", self.rtol, low=0.0, high=1.0, low_open=True, high_open=True)
        self._check_atol()
        if self.step_size is not None:
            check_range("step_size", self.step_size, low=0.0, low_open=True)
        if self.backend.fixed and self.step_size is None \
                and not (self.options or {}).get("step_size"):
            raise ValueError(f"method {self.method!r} is fixed-step: give step_size > 0")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) \
                or self.max_steps < 1:
            raise ValueError(f"max_steps must be an integer in [1, inf); got {self.max_steps!r}")
        check_range("max_abs", self.max_abs, low=0.0, low_open=True)
        if self.options is not None and not isinstance(self.options, dict):
            raise ValueError(f"options must be a dict or None; got {type(self.options).__name__}")
        if self.backend.engine == "lean":
            unknown = set(self.options or {}) - set(LEAN_OPTIONS)
            if unknown:
                raise ValueError(f"options of method {self.method!r} must be among "
                                 f"{LEAN_OPTIONS}; got {sorted(unknown)}")
        if self.per_example and (self.backend.engine != "lean" or self.backend.fixed):
            raise ValueError("per_example needs an adaptive lean method (dopri5, tsit5, bosh3); "
                             f"got {self.method!r}")

    def _check_atol(self):
        if isinstance(self.atol, torch.Tensor):
            low = float(self.atol.min()) if self.atol.numel() else float("nan")
            if not low > 0.0 or not bool(torch.isfinite(self.atol).all()):
                raise ValueError("atol must lie in (0, inf) (every entry of a tensor atol)")
        else:
            check_range("atol", self.atol, low=0.0, low_open=True)

    @property
    def backend(self) -> Backend:
        return METHODS[self.method]

    @property
    def fixed(self) -> bool:
        """Whether this integrates with fixed steps."""
        return self.backend.fixed or self.step_size is not None \
            or bool((self.options or {}).get("step_size"))

    @property
    def steps_option(self) -> float | None:
        """The fixed step, from ``step_size`` or ``options["step_size"]``."""
        return self.step_size if self.step_size is not None \
            else (self.options or {}).get("step_size")

    @property
    def budget(self) -> int:
        """``max_steps``, or torchdiffeq's ``options["max_num_steps"]`` when smaller."""
        return min(self.max_steps, int((self.options or {}).get("max_num_steps",
                                                                 self.max_steps)))
