"""Short-term-plastic synapses that decode a multiplexed axonal signal (thesis §2.1.2, §2.1.4).

A pyramidal neuron can send two signals down one axon (thesis §2.1.2, "Multiplexing"): an
*event rate* ``E`` (a single spike or a burst counts as one event; driven by basal input) and a
*burst probability* ``P`` (the fraction of events that are bursts; driven by apical input). The
axon carries the *burst rate* ``B = P E`` beside the event rate. The receiving synapses decode:

* a **depressing** synapse (STD, high release probability) transmits essentially the first
  spike of every event: a low-pass filter of the event rate (§2.1.4),
  ``tau_D de/dt = -e + E``, decoded event rate ``e``;
* a **facilitating** synapse (STF, low release probability) transmits essentially the later
  spikes of a burst: a high-pass filter, i.e. a filter of the burst rate,
  ``tau_F db/dt = -b + B``, read through a divisive feed-forward inhibition driven by an event
  -rate decoder with the same kernel, ``tau_F dn/dt = -n + E``; decoded burst probability
  ``b / (n + eps)`` (§2.1.2, "Decoding").

Because ``b`` and ``n`` filter ``P E`` and ``E`` with one kernel ``k``, the decoded
probability ``int k P E / int k E`` is an ``E``-weighted average of past burst probabilities:
it stays in ``[0, 1]`` whenever ``P`` does (and ``E >= 0``), during transients too. At steady
state the decoders read ``e = E`` and ``b / (n + eps) = P E / (E + eps)``.

Each synapse population is a component in the style of BrainPy: it owns its state
variables (:attr:`Synapse.variables`, ``{name: widths per layer}``), their time constants
(:attr:`Synapse.time_constants`) and their equations (:meth:`Synapse.rates`); it reads a
:class:`Multiplexed` signal per presynaptic layer and hands back the decoded quantity
(:meth:`Synapse.decode`) and its steady state (:meth:`Synapse.steady`). A model adds the
component's variables to its :class:`~dendrite_sim.dynamics.layout.Layout` and its time
constants to its own, and calls these methods from its field.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dendrite_sim.errors import check_range

__all__ = ["Multiplexed", "Synapse", "DepressingSynapse", "FacilitatingSynapse"]


@dataclass
class Multiplexed:
    """What one layer's axons carry, ``(B, n)`` each: ``event_rate`` ``E >= 0`` and
    ``burst_probability`` ``P`` in ``[0, 1]``; the burst rate is ``P E``."""

    event_rate: torch.Tensor
    burst_probability: torch.Tensor

    @property
    def burst_rate(self) -> torch.Tensor:
        return self.burst_probability * self.event_rate


class Synapse:
    """A population of synapses (one per presynaptic layer in ``widths``) with linear
    first-order state variables ``tau_v dv/dt = -v + drive_v(signal)``.

    Subclasses declare the variables' names (:attr:`names`), what each one is driven by
    (:meth:`drives`) and how the state is read (:meth:`decode`).
    """

    names: tuple = ()

    def __init__(self, prefix: str, widths, tau: float):
        if not isinstance(prefix, str) or not prefix.isidentifier():
            raise ValueError(f"prefix must be an identifier; got {prefix!r}")
        self.prefix = prefix
        self.widths = [int(w) for w in widths]
        self.tau = check_range(f"{prefix} time constant", tau, low=0.0, low_open=True)

    def _name(self, short: str) -> str:
        return f"{self.prefix}_{short}"

    @property
    def variables(self) -> dict:
        """``{state variable: widths per presynaptic layer}`` for the model's layout."""
        return {self._name(n): list(self.widths) for n in self.names}

    @property
    def time_constants(self) -> dict:
        """``{state variable: time constant}``."""
        return {self._name(n): self.tau for n in self.names}

    def drives(self, signal: Multiplexed) -> dict:
        """``{short name: the value the variable relaxes to}`` for one layer's signal."""
        raise NotImplementedError

    def decode(self, state: dict, k: int) -> torch.Tensor:
        """The decoded quantity of presynaptic layer ``k`` (list position) from the unpacked
        state ``{variable: [blocks]}``."""
        raise NotImplementedError

    def rates(self, state: dict, signals) -> dict:
        """``{variable: [dv/dt per layer]}``: ``(drive - v) / tau`` for the ``signals``
        (one :class:`Multiplexed` per presynaptic layer)."""
        out = {self._name(n): [] for n in self.names}
        for k, signal in enumerate(signals):
            for short, target in self.drives(signal).items():
                name = self._name(short)
                out[name].append((target - state[name][k]) / self.tau)
        return out

    def steady(self, signals) -> dict:
        """``{variable: [steady-state block per layer]}`` under constant ``signals``."""
        out = {self._name(n): [] for n in self.names}
        for signal in signals:
            for short, target in self.drives(signal).items():
                out[self._name(short)].append(target)
        return out


class DepressingSynapse(Synapse):
    """Short-term depression: a low-pass decoder of the event rate,
    ``tau_D de/dt = -e + E``; decodes ``e`` (thesis §2.1.2, §2.1.4)."""

    names = ("event",)

    def drives(self, signal):
        return {"event": signal.event_rate}

    def decode(self, state, k):
        return state[self._name("event")][k]


class FacilitatingSynapse(Synapse):
    """Short-term facilitation with divisive normalisation: a decoder of the burst
    probability, ``tau_F db/dt = -b + P E`` (facilitating, burst-driven) and
    ``tau_F dn/dt = -n + E`` (the feed-forward inhibition's event-rate decoder); decodes
    ``b / (n + eps)`` (thesis §2.1.2, "Decoding"). ``eps > 0`` keeps the ratio finite where
    no events arrive."""

    names = ("burst", "norm")

    def __init__(self, prefix: str, widths, tau: float, eps: float = 1e-6):
        super().__init__(prefix, widths, tau)
        self.eps = check_range("eps", eps, low=0.0, low_open=True)

    def drives(self, signal):
        return {"burst": signal.burst_rate, "norm": signal.event_rate}

    def decode(self, state, k):
        return state[self._name("burst")][k] / (state[self._name("norm")][k] + self.eps)
