"""State layout: named per-layer variables packed into one flat vector per example.

A model's neural state for one example is a vector of size ``N``; a batch is a ``(B, N)``
tensor. The layout names its blocks: variable ``"h"`` at layer ``i`` is block ``"h[i]"``.
Within a variable, list position ``k`` holds layer ``k + 1`` (the input ``h_0 = x`` is not part
of the state), matching the parameter lists (``W[i-1]`` belongs to layer ``i``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Block", "Layout"]


@dataclass(frozen=True)
class Block:
    """One contiguous block of the state: ``variable`` at ``layer`` occupying ``[start, stop)``."""

    variable: str
    layer: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"{self.variable}[{self.layer}]"

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def size(self) -> int:
        return self.stop - self.start


class Layout:
    """Ordered named variables, each a list of per-layer widths (layers numbered from 1).

    >>> lay = Layout({"h": [3, 2], "z": [3, 2]})
    >>> lay.size, lay["z[2]"].slice
    (10, slice(8, 10, None))
    """

    def __init__(self, variables: dict[str, list[int]]):
        blocks, start = [], 0
        for variable, widths in variables.items():
            for layer, width in enumerate(widths, start=1):
                blocks.append(Block(variable, layer, start, start + int(width)))
                start += int(width)
        self.variables = {k: [int(w) for w in v] for k, v in variables.items()}
        self.blocks = blocks
        self._widths = [b.size for b in blocks]
        self.size = start
        self._by_name = {b.name: b for b in blocks}
        self._columns: dict = {}          # columns() of plain-number values, by those values

    def __getitem__(self, name: str) -> Block:
        return self._by_name[name]

    def unpack(self, y: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Views ``{variable: [layer 1, layer 2, ...]}`` of a ``(..., N)`` state."""
        out: dict[str, list[torch.Tensor]] = {v: [] for v in self.variables}
        for b, view in zip(self.blocks, y.split(self._widths, dim=-1)):
            out[b.variable].append(view)
        return out

    def variable_slice(self, variable: str) -> slice:
        """The contiguous slice holding every layer of ``variable``."""
        own = [b for b in self.blocks if b.variable == variable]
        return slice(own[0].start, own[-1].stop)

    def columns(self, values: dict, dtype, device) -> torch.Tensor:
        """Per column of the state, the value of its variable (``0`` for a variable not in
        ``values``): ``(N,)``, or ``(B, N)`` where a value is a ``(B, 1)`` tensor (e.g. a gate
        given per example). Plain-number values give the same tensor at every call (kept:
        the exponential integrators key their coefficients on it); do not modify it."""
        if all(isinstance(v, (int, float)) for v in values.values()):
            key = (tuple(sorted(values.items())), dtype, str(device))
            if key not in self._columns:
                if len(self._columns) >= 16:
                    self._columns.pop(next(iter(self._columns)))
                self._columns[key] = self._spread(values, dtype, device)
            return self._columns[key]
        return self._spread(values, dtype, device)

    def _spread(self, values: dict, dtype, device) -> torch.Tensor:
        kw = dict(dtype=dtype, device=device)
        blocks = [torch.as_tensor(values.get(v, 0.0), **kw) * torch.ones(sum(widths), **kw)
                  for v, widths in self.variables.items()]
        lead = torch.broadcast_shapes(*(b.shape[:-1] for b in blocks))
        return torch.cat([b.expand(*lead, b.shape[-1]) for b in blocks], dim=-1)

    def __repr__(self) -> str:
        return f"Layout({self.variables})"
