"""Pointwise transfer functions with their inverses and derivatives.

A transfer function ``s`` is used in the forward (basal) map ``f_i(h) = s_i(W_i h + b_i)`` and,
through its inverse, in the feedback map ``g_i(y) = Q_i s_{i+1}^{-1}(y)`` (thesis 6.4, 6.23).

``inverse(y)`` validates its domain and raises ``ValueError`` when a value lies outside it (the
public boundary). Models call ``inverse_unchecked`` inside vector fields, where a state leaving
the domain shows up as NaN and is reported by the integrator as a numerical failure.
"""
from __future__ import annotations

import torch

from dendrite_sim.errors import check_range

__all__ = ["Transfer", "Identity", "LeakyReLU", "Tanh", "Sigmoid", "make_transfer", "TRANSFERS"]


class Transfer:
    """Base class: subclasses implement ``__call__``, ``derivative`` and ``inverse_unchecked``."""

    name = "transfer"
    #: open interval on which the inverse is defined (``None`` for an unbounded side)
    inverse_domain: tuple[float | None, float | None] = (None, None)

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def derivative(self, a: torch.Tensor) -> torch.Tensor:
        """``s'(a)`` evaluated at the pre-activation ``a``."""
        raise NotImplementedError

    def backprop(self, a: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """``s'(a) * e``: an error ``e`` carried back through ``s`` at the pre-activation
        ``a`` (``D_s e`` in the plasticity rules). Subclasses may fuse the product."""
        return self.derivative(a) * e

    def inverse_unchecked(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def outside_inverse_domain(self, y: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the entries of ``y`` outside the open :attr:`inverse_domain`."""
        low, high = self.inverse_domain
        outside = torch.zeros_like(y, dtype=torch.bool)
        if low is not None:
            outside |= y <= low
        if high is not None:
            outside |= y >= high
        return outside

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """``s^{-1}(y)``; raises ``ValueError`` when ``y`` leaves the open inverse domain."""
        if self.inverse_domain != (None, None):
            outside = self.outside_inverse_domain(y)
            if bool(outside.any()):
                low, high = self.inverse_domain
                raise ValueError(
                    f"{self.name} inverse: input y must lie in the open interval "
                    f"({low}, {high}); got {float(y[outside].flatten()[0])}")
        return self.inverse_unchecked(y)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Identity(Transfer):
    name = "identity"

    def __call__(self, a):
        return a

    def derivative(self, a):
        return torch.ones_like(a)

    def inverse_unchecked(self, y):
        return y


class LeakyReLU(Transfer):
    """``s(a) = a`` for ``a >= 0`` and ``slope * a`` otherwise; invertible for ``slope > 0``."""

    name = "leaky_relu"

    def __init__(self, slope: float = 0.1):
        check_range("slope", slope, low=0.0, high=1.0, low_open=True)
        self.slope = float(slope)

    def __call__(self, a):
        return torch.nn.functional.leaky_relu(a, self.slope)

    def derivative(self, a):
        """1 for ``a > 0``, ``slope`` otherwise (at the kink the left derivative, as autograd)."""
        return torch.where(a > 0, torch.ones_like(a), torch.full_like(a, self.slope))

    def backprop(self, a, e):
        """``e`` where ``a > 0``, ``slope * e`` elsewhere: autograd's leaky-ReLU backward."""
        return torch.ops.aten.leaky_relu_backward(e, a, self.slope, False)

    def inverse_unchecked(self, y):
        return torch.nn.functional.leaky_relu(y, 1.0 / self.slope)

    def __repr__(self):
        return f"LeakyReLU(slope={self.slope})"


class Tanh(Transfer):
    """``tanh``; its inverse ``atanh`` is defined on (-1, 1) only."""

    name = "tanh"
    inverse_domain = (-1.0, 1.0)

    def __call__(self, a):
        return torch.tanh(a)

    def derivative(self, a):
        return 1.0 - torch.tanh(a) ** 2

    def inverse_unchecked(self, y):
        return torch.atanh(y)


class Sigmoid(Transfer):
    """Logistic sigmoid, a rate normalised to its maximum; inverse (logit) on (0, 1)."""

    name = "sigmoid"
    inverse_domain = (0.0, 1.0)

    def __call__(self, a):
        return torch.sigmoid(a)

    def derivative(self, a):
        s = torch.sigmoid(a)
        return s * (1.0 - s)

    def inverse_unchecked(self, y):
        return torch.logit(y)


TRANSFERS = {cls.name: cls for cls in (Identity, LeakyReLU, Tanh, Sigmoid)}


def make_transfer(spec: str | Transfer, slope: float = 0.1) -> Transfer:
    """A ``Transfer`` from a name in ``TRANSFERS`` (``slope`` applies to leaky ReLU) or itself."""
    if isinstance(spec, Transfer):
        return spec
    if not isinstance(spec, str) or spec not in TRANSFERS:
        raise ValueError(f"transfer must be one of {sorted(TRANSFERS)}; got {spec!r}")
    return LeakyReLU(slope) if spec == "leaky_relu" else TRANSFERS[spec]()
