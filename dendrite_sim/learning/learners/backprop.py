"""The backprop baseline: plain SGD with autograd on the forward pass."""

from __future__ import annotations

import torch

from dendrite_sim.errors import check_range
from dendrite_sim.dynamics.teaching import loss_value
from . import register_learner
from .base import FORWARD_NAMES, Learner, _check_batch, _check_loss, _load_params


def forward_layers(pathways, params, x) -> list[torch.Tensor]:
    """``[x, h_1, ..., h_L]`` of the forward pass ``h_i = f_i(h_{i-1})``."""
    h = [x]
    for i in range(1, pathways.depth + 1):
        h.append(pathways.forward(i, h[-1], params))
    return h


def backprop_gradient(pathways, params, x, target, loss) -> dict:
    """``{"W": [dL/dW_i], "b": [dL/db_i or None]}`` of the batch-mean loss of the forward pass
    (autograd); ``target`` is the ``(B, n_L)`` float target."""
    leaves = {n: [None if p is None else p.detach().clone().requires_grad_(True)
                  for p in params[n]] for n in FORWARD_NAMES}
    with torch.enable_grad():
        out = forward_layers(pathways, leaves, x)[-1]
        value = loss_value(loss, out, target).mean()
        flat = [p for n in FORWARD_NAMES for p in leaves[n] if p is not None]
        grads = iter(torch.autograd.grad(value, flat))
    return {n: [None if p is None else next(grads) for p in leaves[n]] for n in FORWARD_NAMES}



@register_learner("backprop")
class BackpropLearner(Learner):
    """Plain SGD with autograd on the forward pass of ``model``'s architecture.

    Parameters
    ----------
    model : a network model with ``pathways`` (e.g. ``Mixture``, ``TwoPhaseDTP``); its
        ``W, b`` are copied (the model itself is never changed).
    lr : learning rate, >= 0: ``theta <- theta - lr * dLoss/dtheta`` with the batch-mean loss.
    loss : ``"cross_entropy"`` or ``"mse"``.
    """

    def __init__(self, model, lr=0.1, loss="cross_entropy"):
        pathways = getattr(model, "pathways", None)
        if pathways is None:
            raise ValueError("model must have forward pathways (model.pathways) for "
                             f"BackpropLearner; {type(model).__name__} has none")
        self.lr = check_range("lr", lr, low=0.0)
        self.loss_name = _check_loss(loss)
        self.pathways, self.model = pathways, model
        self.sizes, self.dtype, self.device = list(model.sizes), model.dtype, model.device
        self._params = {n: [None if p is None else p.detach().clone() for p in model.params[n]]
                        for n in FORWARD_NAMES}

    @property
    def params(self) -> dict:
        return self._params

    def predict(self, x):
        with torch.no_grad():
            return forward_layers(self.pathways, self._params, x)[-1]

    def gradient(self, x, y) -> dict:
        """Backprop gradient of the batch-mean loss at the current weights."""
        return backprop_gradient(self.pathways, self._params, x, self._target(y),
                                 self.loss_name)

    def propose(self, x, y):
        _check_batch(x, self.sizes[0])
        grad = self.gradient(x, y)
        new = {n: [None if p is None else p - self.lr * g
                   for p, g in zip(self._params[n], grad[n])] for n in FORWARD_NAMES}
        return new, {"sim_time": 0.0, "nfev": 0}

    def commit(self, new):
        for n in FORWARD_NAMES:
            self._params[n] = [None if p is None else p.detach() for p in new[n]]

    def state_dict(self) -> dict:
        return {"params": {n: [None if p is None else p.clone() for p in v]
                           for n, v in self._params.items()}}

    def load_state_dict(self, d):
        self._params = _load_params(self._params, d["params"])

    def config(self) -> dict:
        return {"learner": "backprop", "model": type(self.model).__name__,
                "sizes": self.sizes, "lr": self.lr, "loss": self.loss_name,
                "transfers": [repr(t) for t in self.pathways.transfers],
                "bias": self._params["b"][0] is not None}
