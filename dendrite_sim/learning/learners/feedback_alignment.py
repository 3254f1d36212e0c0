"""Feedback alignment (Lillicrap et al. 2016): backprop with fixed random feedback matrices.

A control for the target-propagation learners: the error is carried down by a random matrix
``B_{i+1}`` fixed at construction instead of ``W_{i+1}^T``::

    delta_L = D_{s_L} e_L,     delta_i = D_{s_i} B_{i+1} delta_{i+1},
    Delta W_i = -lr mean_b delta_i h_{i-1}^T,   Delta b_i = -lr mean_b delta_i
"""
from __future__ import annotations

import torch

from dendrite_sim.dynamics.teaching import loss_gradient
from dendrite_sim.learning.layered import LayeredLearner, check_rate
from . import register_learner


@register_learner("feedback_alignment")
class FeedbackAlignment(LayeredLearner):
    """Feedback alignment on ``model``'s layered network (copied ``W, b``).

    Parameters
    ----------
    model : a model with ``layer_transfers`` (``h_i = s_i(W_i h_{i-1} + b_i)``).
    lr : learning rate, >= 0.
    loss : ``"cross_entropy"`` or ``"mse"``.
    feedback_scale : the feedback ``B_{i+1}`` is Gaussian with standard deviation
        ``feedback_scale / sqrt(n_{i+1})`` (the scale of ``W^T`` at initialisation), > 0.
    seed : seeds the feedback matrices, >= 0.
    """

    def __init__(self, model, lr=0.1, loss="cross_entropy", feedback_scale=1.0, seed=0):
        self._setup(model, loss, seed)
        self.lr = check_rate("lr", lr)
        self.feedback_scale = check_rate("feedback_scale", feedback_scale)
        gen = torch.Generator().manual_seed(seed + 1)
        self.feedback = [
            (torch.randn(n_in, n_out, generator=gen, dtype=torch.float64)
             * (self.feedback_scale / n_out ** 0.5)).to(self.dtype).to(self.device)
            for n_in, n_out in zip(self.sizes[1:-1], self.sizes[2:])]

    def propose(self, x, y):
        h, a, target = self._start(x, y)
        new = self._copy()
        delta = self.transfers[-1].backprop(a[-1], loss_gradient(self.loss_name, h[-1], target))
        for i in range(self.depth, 0, -1):
            self._delta_rule(new, i, delta, h[i - 1], self.lr)
            if i > 1:
                delta = self.transfers[i - 2].backprop(a[i - 2], delta @ self.feedback[i - 2].T)
        return new, {"sim_time": 0.0, "nfev": 0}

    def config(self) -> dict:
        return self._base_config(lr=self.lr, feedback_scale=self.feedback_scale)
