"""The model interface the engine integrates and analyses (generic over network models).

A model is a set of parameters plus a vector field over a flat, batched neural state
``y`` of shape ``(B, N)`` described by a :class:`~dendrite_sim.dynamics.layout.Layout`. Parameters are a
dict ``{name: [tensor or None per layer]}`` (``W[i-1]`` maps layer ``i-1`` to layer ``i``) and
are passed to the vector field explicitly, so plasticity can integrate them as ODE state.

Everything that is not state or parameters enters through a :class:`Drive`: the input ``x``
(held constant during a presentation), the teaching signal, and time-dependent gates
(phase gates, an oscillating gate ``gamma(t)``) with the times where they jump.
"""
from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from dendrite_sim.errors import all_finite, check_range, check_tensor
from dendrite_sim.dynamics.layout import Layout
from dendrite_sim.dynamics.teaching import Teaching, as_teaching

__all__ = ["Drive", "NetworkModel", "Params", "CONTRACT"]

Params = dict  # {name: list[torch.Tensor | None]}


def _no_gates(t) -> dict:
    return {}


def _as_gates(gates) -> Callable[[float], dict]:
    """The gates of a verb as a function ``t -> {name: value}``: ``None`` (none), a callable,
    or a dict of constant gates ``{name: real number}``."""
    if gates is None:
        return _no_gates
    if isinstance(gates, dict):
        constant = {}
        for name, value in gates.items():
            if not isinstance(name, str):
                raise TypeError(f"gates names must be strings; got {name!r}")
            constant[name] = check_range(f"gates[{name!r}]", value)
        return lambda t: constant
    if not callable(gates) or not isinstance(gates(0.0), dict):
        raise TypeError("gates must be None, a dict {name: value} or a callable t -> dict; "
                        f"got {type(gates).__name__}")
    return gates


@dataclass
class Drive:
    """External inputs of the vector field at time ``t``.

    ``gates(t)`` returns a dict of named gate values (floats or 0-d tensors); a missing gate
    takes the default given to :meth:`gate`. ``breakpoints`` are the times where gates jump:
    the integrator restarts there so adaptive steps never straddle a switch.
    ``example_gates`` ``{name: (B, 1) tensor}`` gives a gate one constant value per example
    instead (it overrides ``gates``; only for models with ``gates_per_example``). ``memo`` holds
    what a model computes from the drive and the parameters once per solve (e.g. the input
    layer's basal drive); copies of the drive share it, so entries record the tensors they
    were computed from (:meth:`remember`).
    """

    x: torch.Tensor
    teaching: Teaching
    gates: Callable[[float], dict] = _no_gates
    breakpoints: tuple = ()
    example_gates: dict = field(default_factory=dict)
    memo: dict = field(default_factory=dict, repr=False, compare=False)

    def gate(self, name: str, t, default: float = 1.0):
        if name in self.example_gates:
            return self.example_gates[name]
        return self.gates(t).get(name, default)

    def remember(self, name: str, inputs: tuple, compute: Callable):
        """``compute()``, memoised under ``name`` for as long as the tensors ``inputs`` are the
        same objects, unmodified (``None`` entries allowed), and ``x`` is this drive's."""
        key = (self.x,) + tuple(inputs)
        versions = tuple(None if v is None else v._version for v in key)
        hit = self.memo.get(name)
        if hit is not None and hit[1] == versions and all(u is v for u, v in zip(hit[0], key)):
            return hit[2]
        value = compute()
        self.memo[name] = (key, versions, value)
        return value

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    def within(self, start: float, end: float) -> "Drive":
        """This drive with its gates read inside ``[start, end)`` only.

        Adaptive solvers step past the end of a segment and interpolate back; gates are read at
        ``t`` clamped to the segment (the end excluded: a phase switching at ``end`` belongs to
        the next segment), so no stage ever sees the next phase's gates. A field evaluation
        reads several gates at one ``t``: the gates of the last ``t`` (the same object,
        unmodified) are kept, which spares a device-to-host read of ``t`` per gate.
        """
        first, last = float(start), math.nextafter(float(end), float(start))
        seen = [None, None, None]          # t, its version, its gates

        def gates(t):
            version = getattr(t, "_version", None)
            if seen[0] is not t or seen[1] != version:
                now = float(t.detach()) if isinstance(t, torch.Tensor) else float(t)
                seen[:] = [t, version, self.gates(min(max(now, first), last))]
            return seen[2]

        return replace(self, gates=gates)

    def subset(self, index: torch.Tensor) -> "Drive":
        """The drive of the examples ``index`` of the batch (gates are shared, per-example
        gates follow their examples)."""
        return replace(self, x=self.x[index], teaching=self.teaching.subset(index),
                       example_gates={k: v[index] for k, v in self.example_gates.items()})


class NetworkModel:
    """Base class of network models: the contract between a model and the engine.

    The engine reads a model only through the names declared here (``docs/design.md``,
    "Model contract"; ``CONTRACT`` lists them and a test holds the engine to it). A model
    sets the data attributes and implements :meth:`field` and :meth:`initial_state`; every
    other entry has a generic default and is overridden where the model has more to say.

    Attributes
    ----------
    sizes : layer widths ``[n_0, n_1, ..., n_L]`` (``n_0`` is the input).
    layout : the state layout (:class:`~dendrite_sim.dynamics.layout.Layout`); the variable
        named by ``activity`` holds what the analysis verbs return as ``.layers``.
    params : ``{name: [tensor | None per layer]}``.
    dtype, device : of the state and the parameters.
    time_constants : ``{variable: time constant > 0}``, one per state variable of ``layout``:
        the default relaxation map, the integration horizons of ``fixed_point`` and the step
        advice use them.
    """

    activity = "h"
    #: ``{group: parameter names}``: what a phase can make plastic, each group switched by the
    #: gate ``plastic_<group>`` (e.g. the mixing models: ``{"W": ("W", "b"), "Q": ("Q",)}``)
    plastic_groups: dict = {}
    #: ``{gate name: default value}`` of every gate :meth:`field` and :meth:`plasticity` read
    gates: dict = {}
    #: names of the parameters of :meth:`forward` (empty: the model has no forward map, and
    #: baselines and gradient diagnostics do not apply)
    forward_params: tuple = ()
    #: state variables that relax slowly, componentwise and linearly toward a value the
    #: activity sets (closed form in quasi-static presentations; :meth:`slow_relaxation`)
    slow_variables: tuple = ()
    #: the presentation modes the model supports (``learning.present``)
    presentation_modes: tuple = ("quasi_static", "coupled")
    #: whether :meth:`relaxation` is the default Picard map ``y + T F(y)`` (the solver then
    #: reads ``F`` off the map's residual instead of evaluating it)
    picard_relaxation = True
    #: ``omega`` of the plain iteration ``y + omega (G(y) - y)`` of :meth:`relaxation`'s map
    #: ``G`` in ``fixed_point`` (before Anderson mixing starts, if it does): 1 iterates the map
    #: itself; above 1 over-relaxes it (successive over-relaxation of a Gauss-Seidel sweep)
    relaxation_factor = 1.0
    #: plastic groups whose rules read quantities of the size of the activity at one
    #: equilibrium (e.g. a reconstruction error), not a small difference between equilibria:
    #: the quasi-static learner evaluates a phase that trains only these at an equilibrium
    #: solved to the coarser ``rate_tol`` (``learning.present``)
    coarse_rate_groups: tuple[str, ...] = ()
    #: whether :meth:`field` and :meth:`relaxation` accept gates given per example
    #: (``Drive.example_gates``, ``(B, 1)`` tensors broadcast over each example's units); the
    #: quasi-static learner then solves two phases' equilibria as one batch
    gates_per_example = False
    #: whether :meth:`field_and_plasticity` takes ``without_decay=True`` and then returns, in
    #: place of the field, ``N = field + k y`` with ``k`` of :meth:`linear_decay` (computed
    #: without the decay rather than by adding it back): coupled mode's exponential methods
    #: then read ``N`` directly
    rates_without_decay = False

    sizes: list[int]
    layout: Layout
    params: Params
    dtype: torch.dtype
    device: torch.device
    time_constants: dict

    # -- to implement -----------------------------------------------------------------------
    def field(self, t, y: torch.Tensor, drive: Drive, prepared) -> torch.Tensor:
        """``dy/dt`` at ``(t, y)`` for a batch, ``(B, N)``."""
        raise NotImplementedError

    def prepare(self, params: Params):
        """Quantities computed from the parameters alone (e.g. factorisations); default: as is."""
        return params

    def plasticity(self, t, y: torch.Tensor, drive: Drive, prepared) -> Params:
        """Batch-averaged ``d(param)/dt`` for each name in ``plastic_params``."""
        raise NotImplementedError(f"{type(self).__name__} has no plasticity rules")

    def field_and_plasticity(self, t, y: torch.Tensor, drive: Drive, params: Params):
        """``(field, plasticity)`` at one ``(t, y)``: the evaluation of coupled mode, where the
        parameters change at every evaluation — so ``params`` come raw and the model prepares
        what it needs. Default: :meth:`prepare`, then the two separately; a model whose rules
        read quantities its field computes (basal drives, feedback maps) overrides this to
        compute them once."""
        prepared = self.prepare(params)
        return self.field(t, y, drive, prepared), self.plasticity(t, y, drive, prepared)

    def rates(self, t, y: torch.Tensor, drive: Drive, prepared, variables) -> torch.Tensor:
        """``dy/dt`` of the named state variables only, concatenated in layout order (default:
        those columns of :meth:`field`; a model may compute them alone, more cheaply)."""
        return self._columns(self.field(t, y, drive, prepared), variables)

    def _columns(self, y: torch.Tensor, variables) -> torch.Tensor:
        return torch.cat([y[..., self.layout.variable_slice(v)] for v in self.layout.variables
                          if v in variables], dim=-1)

    def relaxation(self, t, y: torch.Tensor, drive: Drive, prepared,
                   variables=None) -> torch.Tensor:
        """One step of a map whose fixed points are the equilibria ``F(y) = 0``; ``fixed_point``
        accelerates it (Anderson). Default: the Picard map ``y + T F(y)``, ``T`` the time
        constant of each column (:meth:`column_time_constants`), which relaxes a linear
        variable ``T dv/dt = v* - v`` to ``v*`` in one step whatever its time constant. A model
        with cheaper structure (a layer sweep) overrides it.

        ``variables``: names of the state variables to return, concatenated in layout order
        (default: the whole state), for a view that holds the others (``learning.Frozen``).
        """
        out = y + self.column_time_constants() * self.field(t, y, drive, prepared)
        return out if variables is None else self._columns(out, variables)

    def activity_relaxation(self, t, h: torch.Tensor, drive: Drive, prepared):
        """Optional: :meth:`relaxation` of the activity from its own columns ``h`` ``(B, n)``
        alone, for a model whose activity does not read its ``slow_variables``. A
        :class:`~dendrite_sim.learning.Frozen` view that holds only those variables then
        skips assembling the full state at every iteration. Default ``None``: not
        available."""
        return None

    def slow_relaxation(self, t, y: torch.Tensor, drive: Drive):
        """Optional, for the variables in ``slow_variables``: ``{variable: (k, target)}`` with
        ``dv/dt = -k (v - target)``, ``k >= 0`` a number or a tensor broadcastable to the
        variable's block ``(B, n_v)`` and ``target`` that block's value set by the activity in
        ``y``. Default ``None``: the quasi-static learner probes ``k`` and the target from
        :meth:`rates`."""
        return None

    def linear_decay(self, t, drive: Drive):
        """Optional: the rates ``k >= 0`` of the field's linear decay per column of the state,
        ``field = -k y + N(t, y)`` (e.g. ``1 / tau`` for a leaky activity): a number or a
        ``(N,)`` tensor (or one broadcastable to the state ``(B, N)``), constant between
        breakpoints. The exponential methods (``method="etdrk4"``, ...; docs/integration.md)
        integrate it exactly. Any ``k`` gives a consistent method; the declared linear part
        lets steps exceed ``tau``. Default ``None``: not declared (those methods refuse the
        model)."""
        return None

    def initial_state(self, drive: Drive, prepared) -> torch.Tensor:
        """The state a presentation starts from, ``(B, N)`` (the mixing models: the forward
        pass for the activity, traces equal to it)."""
        raise NotImplementedError

    def output(self, y: torch.Tensor) -> torch.Tensor:
        """What the network reports as its output at state ``y`` ``(..., N)``, ``(..., n_L)``
        (what a learner predicts from). Default: the top layer of the activity."""
        return self.layers(y)[-1]

    def forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """The network's feed-forward map ``x -> output`` at ``params``, differentiable in
        the parameters named by ``forward_params`` (backprop baselines and gradient
        diagnostics). Only for models that declare ``forward_params``."""
        raise NotImplementedError(f"{type(self).__name__} declares no forward map "
                                  "(forward_params is empty)")

    def forward_layers(self, params: Params, x: torch.Tensor):
        """Optional: ``[x, h_1, ..., h_L]`` of a layered forward map ``h_i = s_i(W_i h_{i-1}
        + b_i)`` with ``W, b`` in ``params``, for the Gauss-Newton diagnostic and the discrete
        learners; default ``None`` (the forward map has no such form)."""
        return None

    @property
    def layer_transfers(self):
        """Optional: the transfer functions ``[s_1, ..., s_L]`` of :meth:`forward_layers`
        (default ``None``)."""
        return None

    def jump(self, t, y: torch.Tensor, drive: Drive, prepared) -> torch.Tensor:
        """The state right after a gate breakpoint at ``t`` (e.g. a sample-and-hold buffer
        that copies a value when a gate switches). Default: no jump, ``y`` itself."""
        return y

    def default_schedule(self, T=None):
        """The presentation schedule of this model when none is given: one phase of length
        ``T`` (default ``20 *`` :attr:`time_scale`), teaching on, every plastic group plastic.
        Models with phases of their own override it; its keyword arguments are the
        configuration's ``[schedule]`` keys."""
        from dendrite_sim.learning.schedule import Phase, Schedule
        duration = 20.0 * self.time_scale if T is None else T
        return Schedule([Phase("learn", duration, teach=True, plastic=tuple(self.plastic_groups))])

    def learning_diagnostics(self, params: Params, x: torch.Tensor, free: torch.Tensor,
                             nudged: torch.Tensor) -> dict:
        """Optional: ``{name: [value per layer]}`` of diagnostics the model's family defines,
        from the free and nudged equilibrium states ``(B, N)`` (e.g. the mixing models'
        reconstruction errors). Default: none."""
        return {}

    # -- shared -----------------------------------------------------------------------------
    @property
    def plastic_params(self) -> tuple:
        """Every parameter name of :attr:`plastic_groups`, in order."""
        return tuple(dict.fromkeys(n for names in self.plastic_groups.values() for n in names))

    @property
    def time_scale(self) -> float:
        """The slowest time constant of the state (``fixed_point``'s horizons)."""
        return max(float(v) for v in self.time_constants.values())

    def column_time_constants(self):
        """The time constant of every column of the state: a number when they are all equal,
        else a ``(N,)`` tensor (cached per set of time constants)."""
        values = tuple(float(self.time_constants[v]) for v in self.layout.variables)
        if len(set(values)) == 1:
            return values[0]
        key = (values, self.dtype, str(self.device))
        cached = self.__dict__.get("_column_time_constants")
        if cached is None or cached[0] != key:
            widths = [sum(w) for w in self.layout.variables.values()]
            column = torch.cat([torch.full((n,), v, dtype=self.dtype, device=self.device)
                                for n, v in zip(widths, values)])
            cached = (key, column)
            self.__dict__["_column_time_constants"] = cached
        return cached[1]

    @property
    def depth(self) -> int:
        return len(self.sizes) - 1

    @property
    def state_size(self) -> int:
        return self.layout.size

    def layers(self, y: torch.Tensor) -> list[torch.Tensor]:
        """The per-layer activity blocks ``[h_1, ..., h_L]`` of a state ``(..., N)``."""
        return self.layout.unpack(y)[self.activity]

    def drive(self, x, target=None, gates=None, breakpoints=()) -> Drive:
        """Validate ``x`` and ``target`` against the model and bundle them as a :class:`Drive`."""
        x = check_tensor("x", x, self.sizes[0], self.dtype, self.device)
        teaching = as_teaching(target).bind(self.sizes[-1], self.dtype, self.device)
        y = getattr(teaching, "y", None)
        if y is not None and y.shape[0] != x.shape[0]:
            raise ValueError(f"target must have the batch size of x ({x.shape[0]}); "
                             f"got {y.shape[0]}")
        return Drive(x, teaching, _as_gates(gates), tuple(breakpoints))

    def check_params(self, params) -> Params:
        """Validate parameters given to a verb in place of :attr:`params`: a dict with the same
        names, each a list of as many layers, every entry ``None`` where the model's is and
        otherwise a tensor of the model's shape, dtype and device with finite entries
        (``TypeError`` / ``ValueError`` naming the entry). ``None`` gives :attr:`params`."""
        if params is None:
            return self.params
        if not isinstance(params, dict):
            raise TypeError("params must be a dict {name: [tensor or None per layer]} like "
                            f"model.params; got {type(params).__name__}")
        if set(params) != set(self.params):
            raise ValueError(f"params must have the names {sorted(self.params)}; got "
                             f"{sorted(params)}")
        for name, own in self.params.items():
            given = params[name]
            if not isinstance(given, (list, tuple)) or len(given) != len(own):
                raise ValueError(f"params[{name!r}] must be a list of {len(own)} entries (one "
                                 f"per layer); got {given!r:.80}")
            for k, (mine, theirs) in enumerate(zip(own, given)):
                self._check_param_entry(f"params[{name!r}][{k}]", mine, theirs)
        return params

    def _check_param_entry(self, label, own, given):
        if own is None or given is None:
            if own is not given:
                raise ValueError(f"{label} must be "
                                 f"{'None' if own is None else 'a tensor'} as in model.params; "
                                 f"got {'None' if given is None else type(given).__name__}")
            return
        if not isinstance(given, torch.Tensor):
            raise TypeError(f"{label} must be a torch.Tensor; got {type(given).__name__}")
        if given.shape != own.shape or given.dtype != own.dtype or \
                given.device.type != own.device.type:
            raise ValueError(f"{label} must have shape {tuple(own.shape)}, dtype {own.dtype} "
                             f"and device {own.device}; got {tuple(given.shape)}, {given.dtype}, "
                             f"{given.device}")
        if not all_finite(given):
            raise ValueError(f"{label} must be finite; it contains NaN or inf")

    def check_state(self, y, batch: int) -> torch.Tensor:
        """Validate a user-supplied state ``(B, N)``; returns a copy the engine may change in
        place (the user's tensor is never modified)."""
        y = check_tensor("state", y, self.state_size, self.dtype, self.device)
        if y.shape[0] != batch:
            raise ValueError(f"state must have the batch size of x ({batch}); got {y.shape[0]}")
        return y.clone()

    def hyperparameters(self) -> list[str]:
        """The scalar hyper-parameters :meth:`replace` can change, by name (what
        ``continuation`` and ``analyze --sweep`` accept): by default the public real-valued
        attributes and settable properties, the seed aside (it only draws the initial
        weights). A model may narrow or widen the list."""
        cls = type(self)
        settable = [name for name in dir(cls)
                    if isinstance(getattr(cls, name), property) and getattr(cls, name).fset]
        values = {name: getattr(self, name) for name in {*vars(self), *settable}
                  if not name.startswith("_") and name != "seed"}
        return sorted(name for name, value in values.items()
                      if isinstance(value, numbers.Real) and not isinstance(value, bool))

    def replace(self, **changes) -> "NetworkModel":
        """A copy sharing the parameter tensors, with attributes in ``changes`` replaced."""
        clone = copy.copy(self)
        for name, value in changes.items():
            if not hasattr(self, name):
                raise ValueError(f"{type(self).__name__} has no parameter {name!r}")
            setattr(clone, name, value)
        clone._validate()
        return clone

    def _validate(self) -> None:
        """Re-check hyper-parameters after :meth:`replace`; subclasses extend."""


#: what the engine may read of a model: the names above (a test checks the engine against it)
CONTRACT = frozenset(name for name in vars(NetworkModel) if not name.startswith("__")) | {
    "sizes", "layout", "params", "dtype", "device", "time_constants"}
