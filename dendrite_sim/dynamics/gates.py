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

from dendrite_sim.errors import check_range

__all__ = ["Waveform", "gate_value", "is_constant", "oscillation", "WAVEFORMS"]


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


# ----------------------------------------------------------------------------------------------
# periodic gates gamma(t) between 1 (feed-forward) and gamma_min (feedback): B20 §10.2
# ----------------------------------------------------------------------------------------------
#: the shapes of :func:`oscillation`
WAVEFORMS = ("square", "plateau", "sawtooth", "sinusoid")


def _square(p, duty, fall, lo):
    """1 on ``[0, duty)``, ``lo`` on ``[duty, 1)`` (phase ``p`` in ``[0, 1)``)."""
    return 1.0 if p < duty else lo


def _plateau(p, duty, fall, lo):
    """1 on ``[0, duty)``, a linear fall to ``lo`` over ``fall``, ``lo`` held, then the fast
    return (a jump back to 1 at the end of the period)."""
    if p < duty:
        return 1.0
    return max(lo, 1.0 - (1.0 - lo) * (p - duty) / fall)


def _sawtooth(p, duty, fall, lo):
    """1 on ``[0, duty)``, then a linear fall to ``lo`` over the rest of the period, then the
    jump back to 1."""
    if p < duty:
        return 1.0
    return 1.0 - (1.0 - lo) * (p - duty) / (1.0 - duty)


def _sinusoid(p, duty, fall, lo):
    """``lo + (1 - lo) (1 + cos 2 pi p) / 2``: smooth and symmetric, 1 at the period's start."""
    return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(2.0 * math.pi * p))


def _kinks(shape, duty, fall, lo, levels):
    """Phases in ``[0, 1)`` where one period of ``shape`` jumps or kinks, and where it crosses
    one of ``levels`` (a model's threshold, so a switch the model makes there is a breakpoint
    too)."""
    if shape == "square":
        return (0.0, duty)
    if shape == "plateau":
        return (0.0, duty, duty + fall)
    if shape == "sawtooth":
        points = [0.0, duty]
        points += [duty + (1.0 - duty) * (1.0 - c) / (1.0 - lo) for c in levels if lo < c < 1.0]
        return tuple(points)
    points = [0.0]
    for c in levels:                     # cos(2 pi p) = 2 (c - lo) / (1 - lo) - 1
        if lo < c < 1.0:
            p = math.acos(2.0 * (c - lo) / (1.0 - lo) - 1.0) / (2.0 * math.pi)
            points += [p, 1.0 - p]
    return tuple(points)


_SHAPES = {"square": _square, "plateau": _plateau, "sawtooth": _sawtooth, "sinusoid": _sinusoid}


def oscillation(shape: str = "plateau", period: float = 30.0, duty: float = 0.3,
                gamma_min: float = 0.0, cycles: int = 1, fall: float = 0.1, delay: float = 0.0,
                levels=()) -> Waveform:
    """A periodic gate ``gamma(t)`` of B20 §10.2: 1 is the feed-forward phase, ``gamma_min``
    the deepest feedback phase.

    Parameters
    ----------
    shape : ``"square"`` (1 for ``duty * period``, then ``gamma_min``); ``"plateau"`` (1 for
        ``duty * period``, a linear fall over ``fall * period``, ``gamma_min`` held, and a fast
        return: a jump back to 1 at the end of the period); ``"sawtooth"`` (1 for
        ``duty * period``, then a linear fall to ``gamma_min`` at the end of the period, and
        the jump back); ``"sinusoid"`` (smooth and symmetric, 1 at ``t = 0``; ``duty`` and
        ``fall`` unused).
    period : length of one cycle, > 0.
    duty : fraction of the period spent on the feed-forward plateau, in (0, 1).
    gamma_min : the feedback level, in [0, 1).
    cycles : number of periods the waveform is defined for (its breakpoints), >= 1.
    fall : ``"plateau"``: fraction of the period the fall takes, in (0, 1 - duty).
    delay : the waveform is ``gamma(t - delay)``, >= 0 (the travelling wave ``gamma_l(t) =
        gamma(t - (l-1) delta)`` of B20 §10.2; before ``delay`` it continues the previous
        period).
    levels : values in (gamma_min, 1) whose crossing times are added to the breakpoints (a
        model that switches a rule on ``gamma >= level`` then switches at a breakpoint).

    Every jump and kink is a breakpoint, so the integrator restarts exactly there and nowhere
    else (the smooth sinusoid has none but the period boundaries and ``levels``).
    """
    if shape not in _SHAPES:
        raise ValueError(f"shape must be one of {WAVEFORMS}; got {shape!r}")
    period = check_range("period", period, low=0.0, low_open=True)
    gamma_min = check_range("gamma_min", gamma_min, low=0.0, high=1.0, high_open=True)
    duty = check_range("duty", duty, low=0.0, high=1.0, low_open=True, high_open=True)
    fall = check_range("fall", fall, low=0.0, high=1.0 - duty, low_open=True,
                       high_open=True) if shape == "plateau" else float(fall)
    delay = check_range("delay", delay, low=0.0)
    if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
        raise ValueError(f"cycles must be an integer >= 1; got {cycles!r}")
    levels = tuple(check_range("levels", c, low=0.0, high=1.0) for c in levels)
    unit = _SHAPES[shape]

    def gamma(s):
        return unit(((float(s) - delay) / period) % 1.0, duty, fall, gamma_min)

    kinks = _kinks(shape, duty, fall, gamma_min, levels)
    end = cycles * period
    points = sorted({round(delay + (k + p) * period, 12) for k in range(-1, cycles + 1)
                     for p in kinks} - {0.0})
    points = [b for b in points if 0.0 < b < end]
    label = f"{shape}(period={period:g}, gamma_min={gamma_min:g}" + \
        ("" if shape == "sinusoid" else f", duty={duty:g}") + \
        (f", delay={delay:g}" if delay else "") + ")"
    return Waveform(gamma, points, label)
