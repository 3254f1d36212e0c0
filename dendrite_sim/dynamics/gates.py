"""Gates that vary in time within a phase (e.g. an oscillating neuromodulatory gate).

A phase's gate is a number (constant over the phase) or a :class:`Waveform`: a function of the
time since the phase began, with the times where it is not smooth (``breakpoints``, relative to
the phase start). The engine hands those times to the integrator, which restarts there (no step
straddles a jump or a kink), and applies the model's :meth:`~dendrite_sim.dynamics.model.
NetworkModel.jump` at each of them.
"""
from __future__ import annotations

import math
from typing import Callable

__all__ = ["Waveform", "gate_value", "is_constant"]


class Waveform:
    """A gate as a function of the time ``s`` since the phase began.

    Parameters
    ----------
    function : ``s -> value`` (a float), defined for ``s >= 0``.
    breakpoints : times ``s > 0`` where the function jumps or has a kink, ascending.
    name : a short label for figures and ``repr``.
    """

    def __init__(self, function: Callable[[float], float], breakpoints=(), name: str = "waveform"):
        if not callable(function):
            raise ValueError(f"function must be callable (time -> gate value); got "
                             f"{type(function).__name__}")
        points = tuple(float(b) for b in breakpoints)
        if any(not math.isfinite(b) or b <= 0 for b in points) or list(points) != sorted(points):
            raise ValueError(f"breakpoints must be finite, > 0 and ascending; got {points}")
        self.function, self.breakpoints, self.name = function, points, str(name)

    def __call__(self, s: float) -> float:
        return float(self.function(s))

    def breakpoints_within(self, duration: float) -> tuple:
        """The breakpoints strictly inside ``(0, duration)``."""
        return tuple(b for b in self.breakpoints if b < duration)

    def __repr__(self) -> str:
        return f"Waveform({self.name})"


def is_constant(value) -> bool:
    """Whether a gate value is a plain number (not a :class:`Waveform`)."""
    return not isinstance(value, Waveform)


def gate_value(value, s: float) -> float:
    """The value of a phase gate (number or waveform) at ``s`` after the phase began."""
    return float(value) if is_constant(value) else value(s)
