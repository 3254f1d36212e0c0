"""Difference target propagation as in Lee, Zhang, Biard & Bengio (2015).

* first target at the penultimate layer (eq. 20): ``h^_{L-1} = h_{L-1} - eta_hat dLoss/dh_{L-1}``;
* difference correction below (eq. 18): ``h^_{i} = h_i + g_i(h^_{i+1}) - g_i(h_{i+1})``,
  ``g_i(y) = s_i(V_i y + c_i)`` (eq. 15, the decoder of layer ``i+1``);
* forward weights: the output layer by the gradient of the global loss, every other layer by
  the gradient of its local loss ``1/2 ||s_i(W_i h_{i-1} + b_i) - h^_i||^2`` (eq. 9);
* feedback weights: the noise-injected reconstruction loss (eq. 17, as in the paper's
  algorithm): ``||g_i(f_{i+1}(h_i + eps)) - (h_i + eps)||^2``, ``eps ~ N(0, sigma^2)``;
* every weight by RMSprop (§3.1). The paper's network is tanh (7 x 240 on MNIST).
"""
from __future__ import annotations

import torch

from dendrite_sim.dynamics.teaching import loss_gradient
from dendrite_sim.errors import check_range
from dendrite_sim.learning.layered import LayeredLearner, check_rate, rmsprop
from . import register_learner


@register_learner("dtp_lee")
class DTPLee(LayeredLearner):
    """Lee et al. (2015) difference target propagation (module docstring).

    Parameters
    ----------
    model : a model with ``layer_transfers`` and at least two layers; ``W, b`` copied;
        ``V_i = W_{i+1}^+`` and ``c_i = 0`` at the start.
    lr, lr_inv : RMSprop step sizes of the forward and feedback weights, >= 0.
    eta_hat : step size of the penultimate target (eq. 20), > 0.
    noise_std : ``sigma`` of the noise injected into the reconstruction loss (eq. 17), >= 0.
    decay, eps : RMSprop's moving-average factor in [0, 1) and its ``epsilon`` > 0.
    loss : ``"cross_entropy"`` or ``"mse"``.
    seed : seeds the noise, >= 0.
    """

    def __init__(self, model, lr=0.001, lr_inv=0.001, eta_hat=0.1, noise_std=0.1,
                 decay=0.9, eps=1e-8, loss="cross_entropy", seed=0):
        self._setup(model, loss, seed)
        if self.depth < 2:
            raise ValueError(f"dtp_lee needs at least two layers; got sizes {self.sizes}")
        self.lr, self.lr_inv = check_rate("lr", lr), check_rate("lr_inv", lr_inv)
        self.eta_hat = check_range("eta_hat", eta_hat, low=0.0, low_open=True)
        self.noise_std = check_rate("noise_std", noise_std)
        self.decay = check_range("decay", decay, low=0.0, high=1.0, high_open=True)
        self.eps = check_range("eps", eps, low=0.0, low_open=True)
        W = self._state["W"]
        self._add_state("V", [torch.linalg.pinv(w) for w in W[1:-1]])
        self._add_state("c", [torch.zeros(w.shape[1], dtype=w.dtype, device=w.device)
                              for w in W[1:-1]])
        for name in ("W", "b", "V", "c"):
            self._add_state("ms_" + name, [None if p is None else torch.zeros_like(p)
                                           for p in self._state[name]])

    def feedback_map(self, i, y, state=None):
        """``g_i(y) = s_i(V_i y + c_i)`` (eq. 15), ``i = 1..L-2``."""
        s = self._state if state is None else state
        return self.transfers[i - 1](torch.nn.functional.linear(y, s["V"][i - 1], s["c"][i - 1]))

    def targets(self, h, a, target):
        """``{i: h^_i}`` for ``i = 1..L-1`` (eqs. 20 and 18)."""
        L = self.depth
        delta_L = self.transfers[-1].backprop(a[-1], loss_gradient(self.loss_name, h[L], target))
        hat = {L - 1: h[L - 1] - self.eta_hat * delta_L @ self._state["W"][-1]}
        for i in range(L - 2, 0, -1):
            hat[i] = h[i] + self.feedback_map(i, hat[i + 1]) - self.feedback_map(i, h[i + 1])
        return hat, delta_L

    def _step(self, new, name, k, grad, lr):
        new[name][k], new["ms_" + name][k] = rmsprop(new[name][k], grad, new["ms_" + name][k],
                                                     lr, self.decay, self.eps)

    def propose(self, x, y):
        h, a, target = self._start(x, y)
        new = self._copy()
        hat, delta_L = self.targets(h, a, target)
        B = x.shape[0]
        for i in range(1, self.depth + 1):
            local = delta_L if i == self.depth else \
                self.transfers[i - 1].backprop(a[i - 1], h[i] - hat[i])
            self._step(new, "W", i - 1, local.T @ h[i - 1] / B, self.lr)
            if new["b"][i - 1] is not None:
                self._step(new, "b", i - 1, local.mean(0), self.lr)
        gen = self._generator()
        for i in range(1, self.depth - 1):
            self._feedback_step(new, i, h[i], gen)
        return new, {"sim_time": 0.0, "nfev": 0}

    def _feedback_step(self, new, i, h_i, gen):
        """One RMSprop step on the noisy reconstruction loss of ``g_i`` (eq. 17)."""
        noisy = h_i + self.noise_std * self._randn(gen, *h_i.shape)
        up = self.transfers[i](torch.nn.functional.linear(noisy, self._state["W"][i],
                                                          self._state["b"][i]))
        pre = torch.nn.functional.linear(up, self._state["V"][i - 1], self._state["c"][i - 1])
        local = self.transfers[i - 1].backprop(pre, self.transfers[i - 1](pre) - noisy)
        B = h_i.shape[0]
        self._step(new, "V", i - 1, local.T @ up / B, self.lr_inv)
        self._step(new, "c", i - 1, local.mean(0), self.lr_inv)

    def config(self) -> dict:
        return self._base_config(lr=self.lr, lr_inv=self.lr_inv, eta_hat=self.eta_hat,
                                 noise_std=self.noise_std, decay=self.decay, eps=self.eps)
