"""Presentation schedules: piecewise-constant phase gates for one example (thesis §6.4–6.6).

A :class:`Schedule` is an ordered list of :class:`Phase` objects, played back to back from
``t = 0``. Each phase holds its gates constant:

* ``"teach"``         — 1 while the output is nudged/clamped, 0 while it is short-circuited
  (``h_L^trgt = h_L``, free phase);
* ``"plastic_<group>"`` — 1 while the model's plastic group learns (``model.plastic_groups``;
  the mixing models: ``W`` with its biases, ``Q``), 0 otherwise;
* ``"trace"``         — 1 while a slow trace follows the activity (two-phase DTP,
  ``T_z dz_i/dt = trace(t) (h_i - z_i)``), 0 while it holds its value;
* any other gate a model declares (``model.gates``), through ``extra_gates``: a number, or a
  :class:`~dendrite_sim.dynamics.gates.Waveform` of the time since the phase began (e.g. an
  oscillating ``gamma(t)``).

Phase ``k`` covers ``[start_k, end_k)``; at or after the end of the schedule the last phase
holds. The phase boundaries and the waveforms' own breakpoints are the
:attr:`Schedule.breakpoints` handed to the integrator, which restarts there so no step
straddles a switch.

Factories:

* :meth:`Schedule.single_phase` — mixture model (§6.4–6.5): one phase, teaching on, ``W`` and
  ``Q`` plastic together;
* :meth:`Schedule.two_phase` — two-phase DTP (§6.6): a free phase (no teaching, ``Q`` plastic,
  trace on) then a learning phase (teaching, ``W`` plastic, trace off), optionally followed by
  a sleep phase (no teaching, only ``Q`` plastic; end of §6.5).
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from dendrite_sim.dynamics.gates import Waveform, gate_value, is_constant
from dendrite_sim.errors import check_range

__all__ = ["Phase", "Schedule", "PLASTIC_NAMES", "GATE_NAMES"]

#: plastic groups whose gates every phase sets (1 or 0), beside those it names: the groups of
#: the mixing models (``W`` with its biases, ``Q``)
PLASTIC_NAMES = ("W", "Q")
#: gates every schedule sets at every time
GATE_NAMES = ("teach", "plastic_W", "plastic_Q", "trace")


@dataclass(frozen=True)
class Phase:
    """One phase of a presentation, with constant gates.

    Parameters
    ----------
    name : label of the phase (unique within a schedule), e.g. ``"free"``, ``"learn"``.
    duration : length in model time units, finite and > 0.
    teach : output teaching on (``teach`` gate 1) or short-circuited (0).
    plastic : names of the model's plastic groups that learn (``model.plastic_groups``; the
        mixing models: ``"W"`` forward weights and biases, ``"Q"`` feedback weights).
    trace : the slow trace follows the activity (``trace`` gate 1) or holds (0).
    extra_gates : ``{gate name: number or Waveform}`` for the other gates the model reads
        (:mod:`dendrite_sim.dynamics.gates`); a waveform makes the phase's gates vary in time.
    """

    name: str
    duration: float
    teach: bool = False
    plastic: tuple = ()
    trace: bool = False
    extra_gates: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string; got {self.name!r}")
        duration = check_range("duration", self.duration, low=0.0, low_open=True)
        plastic = (self.plastic,) if isinstance(self.plastic, str) else self.plastic
        try:
            plastic = tuple(plastic)
        except TypeError:
            raise ValueError(f"plastic must be a tuple of plastic group names (e.g. "
                             f"{PLASTIC_NAMES}); got {self.plastic!r}") from None
        for name in plastic:
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"plastic must name plastic groups (identifiers, e.g. "
                                 f"{PLASTIC_NAMES}); got {name!r}")
        object.__setattr__(self, "extra_gates", _check_extra_gates(self.extra_gates))
        for flag in ("teach", "trace"):
            value = getattr(self, flag)
            if not isinstance(value, (bool, int)) or value not in (0, 1):
                raise ValueError(f"{flag} must be a bool; got {value!r}")
        object.__setattr__(self, "duration", duration)
        object.__setattr__(self, "plastic", tuple(dict.fromkeys(plastic)))
        object.__setattr__(self, "teach", bool(self.teach))
        object.__setattr__(self, "trace", bool(self.trace))

    @property
    def gates(self) -> dict:
        """The gates of this phase: ``teach``, ``trace`` and ``plastic_<group>`` (floats 0.0 /
        1.0; every group of :data:`PLASTIC_NAMES` and those named in ``plastic``), then
        ``extra_gates`` (numbers or waveforms)."""
        plastic = {f"plastic_{g}": float(g in self.plastic)
                   for g in dict.fromkeys(PLASTIC_NAMES + self.plastic)}
        return {"teach": float(self.teach), **plastic, "trace": float(self.trace),
                **self.extra_gates}

    @property
    def time_varying(self) -> bool:
        """Whether a gate of this phase is a waveform."""
        return not all(is_constant(v) for v in self.extra_gates.values())

    @property
    def breakpoints(self) -> tuple:
        """The waveforms' breakpoints inside the phase, relative to its start, ascending."""
        points = {b for v in self.extra_gates.values() if not is_constant(v)
                  for b in v.breakpoints_within(self.duration)}
        return tuple(sorted(points))

    def gates_at(self, s: float) -> dict:
        """The gate values (floats) at ``s`` after the phase began."""
        return {k: gate_value(v, s) for k, v in self.gates.items()}


def _check_extra_gates(gates) -> dict:
    if gates is None:
        return {}
    if not isinstance(gates, dict):
        raise ValueError(f"extra_gates must be a dict {{gate name: number or Waveform}}; got "
                         f"{type(gates).__name__}")
    out = {}
    for name, value in gates.items():
        if not isinstance(name, str) or name in ("teach", "trace") or name.startswith("plastic_"):
            raise ValueError(f"extra_gates: {name!r} is set by the phase itself (teach, trace, "
                             "plastic) or is not a gate name")
        if isinstance(value, Waveform):
            out[name] = value
        else:
            out[name] = check_range(f"extra_gates[{name!r}]", value)
    return out


class Schedule:
    """Phases played back to back from ``t = 0``; gates are piecewise constant in time.

    ``schedule.gates(t)`` (also ``schedule(t)``) returns the gate dict of the phase at ``t``
    (a python float or a 0-d tensor), so a schedule can be passed as ``gates=`` to
    :func:`dendrite_sim.simulate` together with ``breakpoints=schedule.breakpoints``.
    """

    def __init__(self, phases):
        try:
            phases = tuple(phases)
        except TypeError:
            raise ValueError(f"phases must be a sequence of Phase; got {phases!r}") from None
        if not phases:
            raise ValueError("phases must hold at least one Phase; got an empty schedule")
        for p in phases:
            if not isinstance(p, Phase):
                raise ValueError(f"phases must hold Phase objects; got {type(p).__name__}")
        names = [p.name for p in phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phases must have unique names; got {names}")
        self.phases = phases
        ends, total = [], 0.0
        for p in phases:
            total += p.duration
            ends.append(total)
        self._ends = tuple(ends)
        self._gates = tuple(p.gates for p in phases)

    # -- factories --------------------------------------------------------------------------
    @classmethod
    def single_phase(cls, T: float, name: str = "learn") -> "Schedule":
        """Mixture model (§6.4–6.5): one phase of duration ``T``, teaching on, ``W`` and ``Q``
        plastic, no trace."""
        return cls([Phase(name, T, teach=True, plastic=("W", "Q"), trace=False)])

    @classmethod
    def two_phase(cls, T_free: float, T_learn: float, sleep: float | None = None) -> "Schedule":
        """Two-phase DTP (§6.6).

        * ``"free"`` (``T_free``): no teaching, ``Q`` plastic (6.37), trace on (``z -> h^f``);
        * ``"learn"`` (``T_learn``): teaching, ``W`` plastic (6.35), trace off (``z`` holds
          ``h^f``);
        * ``"sleep"`` (``sleep``, optional): no teaching, only ``Q`` plastic, trace off.
        """
        try:
            Phase("free", T_free)
        except ValueError as err:
            raise ValueError(str(err).replace("duration", "T_free", 1)) from None
        try:
            Phase("learn", T_learn)
        except ValueError as err:
            raise ValueError(str(err).replace("duration", "T_learn", 1)) from None
        phases = [Phase("free", T_free, teach=False, plastic=("Q",), trace=True),
                  Phase("learn", T_learn, teach=True, plastic=("W",), trace=False)]
        if sleep is not None:
            try:
                phases.append(Phase("sleep", sleep, teach=False, plastic=("Q",), trace=False))
            except ValueError as err:
                raise ValueError(str(err).replace("duration", "sleep", 1)) from None
        return cls(phases)

    # -- timing -----------------------------------------------------------------------------
    @property
    def duration(self) -> float:
        """Total length of the schedule."""
        return self._ends[-1]

    @property
    def boundaries(self) -> tuple:
        """``(0, end_1, ..., end_K)``: phase ``k`` covers ``[boundaries[k], boundaries[k+1])``."""
        return (0.0,) + self._ends

    @property
    def breakpoints(self) -> tuple:
        """Interior phase boundaries and the waveforms' breakpoints inside the phases (where the
        gates jump or kink), ascending, for the integrator."""
        inner = [start + b for start, p in zip(self.boundaries, self.phases)
                 for b in p.breakpoints]
        return tuple(sorted(set(self._ends[:-1]) | set(inner)))

    @property
    def names(self) -> tuple:
        return tuple(p.name for p in self.phases)

    def index_at(self, t) -> int:
        """Index of the phase active at ``t`` (float or 0-d tensor)."""
        t = float(t)
        if math.isnan(t):
            raise ValueError("t must not be NaN")
        return min(bisect.bisect_right(self._ends, t), len(self.phases) - 1)

    def phase_at(self, t) -> Phase:
        """The phase active at ``t``; before 0 the first, at or after the end the last."""
        return self.phases[self.index_at(t)]

    def gates(self, t) -> dict:
        """Gate values at ``t`` (a fresh dict of floats)."""
        k = self.index_at(t)
        if not self.phases[k].time_varying:
            return dict(self._gates[k])
        return self.phases[k].gates_at(float(t) - self.boundaries[k])

    __call__ = gates

    # -- checks -----------------------------------------------------------------------------
    def plastic_anywhere(self, name: str) -> bool:
        """Whether some phase makes parameter group ``name`` plastic."""
        return any(name in p.plastic for p in self.phases)

    def check_model(self, model, require_plastic=("W",)) -> "Schedule":
        """Raise ``ValueError`` (naming ``schedule``) unless every phase names only plastic
        groups of ``model`` and every group in ``require_plastic`` that ``model`` has is plastic
        in at least one phase."""
        has = tuple(model.plastic_groups)
        for phase in self.phases:
            unknown = [g for g in phase.plastic if g not in has]
            if unknown:
                hint = " (biases follow 'W')" if "b" in unknown else ""
                raise ValueError(f"schedule: phase {phase.name!r} makes {unknown} plastic, but "
                                 f"{type(model).__name__}'s plastic groups are {list(has)}"
                                 f"{hint}")
        for name in require_plastic:
            if name in has and not self.plastic_anywhere(name):
                raise ValueError(f"schedule has no phase where {name!r} is plastic, but "
                                 f"{type(model).__name__} learns {name!r}; phases: "
                                 f"{[(p.name, p.plastic) for p in self.phases]}")
        return self

    def __len__(self) -> int:
        return len(self.phases)

    def __iter__(self):
        return iter(self.phases)

    def __repr__(self) -> str:
        inner = ", ".join(f"{p.name}: {p.duration:g} teach={int(p.teach)} "
                          f"plastic={''.join(p.plastic) or '-'} trace={int(p.trace)}"
                          + "".join(f" {k}={v!r}" for k, v in p.extra_gates.items())
                          for p in self.phases)
        return f"Schedule([{inner}])"
