"""The backprop baseline: plain SGD with autograd on the forward pass."""

from __future__ import annotations

import torch

from dendrite_sim.dynamics.teaching import _check_loss, loss_value
from dendrite_sim.errors import check_range
from . import register_learner
from .base import Learner, _check_batch


def forward_layers(model, params, x) -> list[torch.Tensor]:
    """``[x, h_1, ..., h_L]`` of a layered model's forward pass (``model.forward_layers``)."""
    layers = model.forward_layers(params, x)
    if layers is None:
        raise ValueError(f"{type(model).__name__}'s forward map is not layered "
                         "(forward_layers is not available)")
    return layers


def backprop_gradient(model, params, x, target, loss) -> dict:
    """``{name: [dLoss/dparam per layer or None]}`` for ``model.forward_params``: the gradient
    of the batch-mean loss of the model's forward map ``model.forward(params, x)`` (autograd);
    ``target`` is the ``(B, n_L)`` float target."""
    names = _forward_names(model)
    leaves = {n: [None if p is None else p.detach().clone().requires_grad_(True)
                  for p in params[n]] for n in names}
    with torch.enable_grad():
        value = loss_value(loss, model.forward({**params, **leaves}, x), target).mean()
        flat = [p for n in names for p in leaves[n] if p is not None]
        grads = iter(torch.autograd.grad(value, flat))
    return {n: [None if p is None else next(grads) for p in leaves[n]] for n in names}


def _forward_names(model) -> tuple:
    """``model.forward_params``; ``ValueError`` for a model without a forward map."""
    names = tuple(model.forward_params)
    if not names:
        raise ValueError(f"{type(model).__name__} declares no forward map (forward_params is "
                         "empty): backprop and gradient diagnostics do not apply")
    return names


@register_learner("backprop")
class BackpropLearner(Learner):
    """Plain SGD with autograd on the forward map of ``model`` (``model.forward``).

    Parameters
    ----------
    model : a network model with a forward map (``model.forward_params`` not empty, e.g.
        ``Mixture``, ``TwoPhaseDTP``); those parameters are copied (the model itself is never
        changed), so the baseline starts from the model's initial weights.
    lr : learning rate, >= 0: ``theta <- theta - lr * dLoss/dtheta`` with the batch-mean loss.
    loss : ``"cross_entropy"`` or ``"mse"``.
    """

    def __init__(self, model, lr=0.1, loss="cross_entropy"):
        self.forward_names = _forward_names(model)
        self.lr = check_range("lr", lr, low=0.0)
        self.loss_name = _check_loss(loss)
        self.model = model
        self.sizes, self.dtype, self.device = list(model.sizes), model.dtype, model.device
        self._params = {n: [None if p is None else p.detach().clone() for p in model.params[n]]
                        for n in self.forward_names}

    @property
    def params(self) -> dict:
        return self._params

    def predict(self, x):
        with torch.no_grad():
            return self.model.forward(self._params, x)

    def gradient(self, x, y) -> dict:
        """Backprop gradient of the batch-mean loss at the current weights."""
        return backprop_gradient(self.model, self._params, x, self._target(y), self.loss_name)

    def propose(self, x, y):
        _check_batch(x, self.sizes[0])
        grad = self.gradient(x, y)
        new = {n: [None if p is None else p - self.lr * g
                   for p, g in zip(self._params[n], grad[n])] for n in self.forward_names}
        return new, {"sim_time": 0.0, "nfev": 0}

    def commit(self, new):
        for n in self.forward_names:
            self._params[n] = [None if p is None else p.detach() for p in new[n]]

    def config(self) -> dict:
        transfers = self.model.layer_transfers
        bias = self._params.get("b")
        return {"learner": "backprop", "model": type(self.model).__name__,
                "sizes": self.sizes, "lr": self.lr, "loss": self.loss_name,
                "transfers": None if transfers is None else [repr(t) for t in transfers],
                "bias": bias is not None and bias[0] is not None}
