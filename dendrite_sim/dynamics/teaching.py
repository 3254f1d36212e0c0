"""Teaching signals for the output layer: ``g_L = h_L^trgt`` (thesis 6.3 and 6.10).

* :class:`Free` — short-circuit, ``h_L^trgt = h_L`` (no teaching);
* :class:`Clamp` — ``h_L^trgt = y`` fixed;
* :class:`Nudge` — ``h_L^trgt = h_L - eta_hat * dLoss/dh_L`` evaluated continuously on the
  current ``h_L`` (6.10).

Losses are per example (each example is its own dynamical system) and summed over output units:
``mse``: ``Loss = 1/2 ||h_L - y||^2`` so ``dLoss/dh_L = h_L - y``;
``cross_entropy``: ``Loss = -log softmax(h_L)[label]`` so ``dLoss/dh_L = softmax(h_L) - onehot``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dendrite_sim.errors import check_range, check_tensor

__all__ = ["Teaching", "Free", "Clamp", "Nudge", "LOSSES", "loss_value", "loss_gradient",
           "as_teaching"]

LOSSES = ("mse", "cross_entropy")


def _check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}; got {loss!r}")
    return loss


def loss_value(loss: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example loss ``(B,)``; ``target`` is ``(B, n_L)`` for mse, labels or one-hot for ce."""
    if _check_loss(loss) == "mse":
        return 0.5 * ((output - target) ** 2).sum(-1)
    return -(F.log_softmax(output, dim=-1) * target).sum(-1)


def loss_gradient(loss: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Closed-form ``dLoss/dh_L`` per example, ``(B, n_L)``."""
    if _check_loss(loss) == "mse":
        return output - target
    return torch.softmax(output, dim=-1) - target


class Teaching:
    """Base class; ``output_target(h_L, gate)`` returns ``h_L^trgt``."""

    mode = "teaching"

    def bind(self, width: int, dtype, device) -> "Teaching":
        """Validate against the model's output layer and return a ready-to-use copy."""
        return self

    def output_target(self, h_out: torch.Tensor, gate: float = 1.0) -> torch.Tensor:
        raise NotImplementedError

    def subset(self, index: torch.Tensor) -> "Teaching":
        """The teaching signal of the examples ``index`` of the batch."""
        return self


class Free(Teaching):
    """No teaching: the output is short-circuited, ``h_L^trgt = h_L``."""

    mode = "free"

    def output_target(self, h_out, gate=1.0):
        return h_out

    def __repr__(self):
        return "Free()"


class Clamp(Teaching):
    """Output target fixed to ``y``; with ``gate`` in [0, 1] it blends ``h_L`` and ``y``."""

    mode = "clamp"

    def __init__(self, y: torch.Tensor):
        self.y = y

    def bind(self, width, dtype, device):
        return Clamp(check_tensor("target", self.y, width, dtype, device))

    def output_target(self, h_out, gate=1.0):
        return h_out + gate * (self.y - h_out)

    def subset(self, index):
        return Clamp(self.y[index])

    def __repr__(self):
        return f"Clamp(y of shape {tuple(self.y.shape)})"


class Nudge(Teaching):
    """``h_L^trgt = h_L - gate * eta_hat * dLoss/dh_L`` (thesis 6.10).

    ``y`` is a ``(B, n_L)`` tensor for ``mse``; for ``cross_entropy`` integer class labels
    ``(B,)`` (converted to one-hot) or a ``(B, n_L)`` probability tensor.
    """

    mode = "nudge"

    def __init__(self, y: torch.Tensor, loss: str = "mse", eta_hat: float = 0.1):
        self.y = y
        self.loss = _check_loss(loss)
        self.eta_hat = check_range("eta_hat", eta_hat, low=0.0, low_open=True)

    def bind(self, width, dtype, device):
        y = self.y
        if isinstance(y, torch.Tensor) and y.dtype == torch.bool:
            raise ValueError("target must be a float tensor (B, n_L), or integer class labels "
                             "(B,) for cross_entropy; got a bool tensor")
        if isinstance(y, torch.Tensor) and self.loss == "cross_entropy" and y.dim() == 1 \
                and not y.is_floating_point() and not y.is_complex():
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= width):
                raise ValueError(f"target labels must lie in [0, {width - 1}]; got values in "
                                 f"[{int(y.min())}, {int(y.max())}]")
            y = F.one_hot(y.to(device=device, dtype=torch.long), width).to(dtype)
        return Nudge(check_tensor("target", y, width, dtype, device), self.loss, self.eta_hat)

    def gradient(self, h_out):
        return loss_gradient(self.loss, h_out, self.y)

    def output_target(self, h_out, gate=1.0):
        if isinstance(gate, torch.Tensor):
            return torch.addcmul(h_out, gate, self.gradient(h_out), value=-self.eta_hat)
        return torch.add(h_out, self.gradient(h_out), alpha=-gate * self.eta_hat)

    def subset(self, index):
        return Nudge(self.y[index], self.loss, self.eta_hat)

    def __repr__(self):
        return f"Nudge(loss={self.loss!r}, eta_hat={self.eta_hat})"


def as_teaching(target) -> Teaching:
    """``None`` -> :class:`Free`, a tensor -> :class:`Clamp`, a ``Teaching`` -> itself."""
    if target is None:
        return Free()
    if isinstance(target, Teaching):
        return target
    if isinstance(target, torch.Tensor):
        return Clamp(target)
    raise ValueError("target must be None (free), a tensor (clamp) or a Teaching such as "
                     f"Nudge(y, loss, eta_hat); got {type(target).__name__}")
