"""Gradient target propagation (Farias & Maziero; seeds 000 = later revision, 001 = earlier).

Targets are found by Euler steps of the layer-local error (their eq. 3 and Appendix B):
``y^_L`` is the label (one-hot) or the regression target, and for ``l = L..2``::

    u <- y_{l-1};  repeat ``steps`` times:  u <- u - tau dC_l/du,
        C_l(u) = 1/2 ||y^_l - s_l(W_l u + b_l)||^2,   dC_l/du = -W_l^T D_{s_l} (y^_l - s_l(W_l u + b_l))
    y^_{l-1} = u

and every layer learns by the delta rule on its local error (eq. 5)::

    Delta W_l = lr mean_b D_{s_l} (y^_l - y_l) y_{l-1}^T,   Delta b_l alike.

Initialisation (``init``): ``"model"`` keeps the model's weights (the comparison with the
continuous-time model); the papers draw ``W_l ~ N(0, VAR)`` with fan-in ``N_l`` (their eq. 6):

* ``"gtp_earlier"`` (seed 001, the earlier version): ``VAR(w_1) = 12 / (5 N_1)``,
  ``VAR(w_l) = 8 / (3 N_l)``;
* ``"gtp_later"`` (seed 000, the later revision): ``VAR(w_1) = 48 / (35 N_1)``,
  ``VAR(w_l) = 16 / (11 N_l)``.

The two follow from eq. 27 with ``<y>^2 + VAR(y)`` (earlier, correct) and with ``<y> + VAR(y)``
(later; its eq. 26 drops the square), for uniform inputs (mean 1/2, variance 1/12), sigmoid
units of mean 1/2 and variance 1/20 and ``f'(0) = 1/4`` (``docs/discrete.md``). Biases start
at zero.
"""
from __future__ import annotations

import torch

from dendrite_sim.learning.layered import LayeredLearner, check_rate
from . import register_learner

#: ``(first layer, other layers)`` numerators ``c`` of ``VAR(w_l) = c / N_l``
INITS = {"gtp_earlier": (12.0 / 5.0, 8.0 / 3.0), "gtp_later": (48.0 / 35.0, 16.0 / 11.0)}


@register_learner("gtp")
class GradientTargetPropagation(LayeredLearner):
    """Gradient target propagation (module docstring).

    Parameters
    ----------
    model : a model with ``layer_transfers``; gives the architecture (and the weights with
        ``init="model"``).
    lr : delta-rule learning rate, >= 0.
    tau : Euler step size of the target dynamics, >= 0.
    steps : Euler steps per layer, >= 1.
    init : ``"model"``, ``"gtp_earlier"`` or ``"gtp_later"``.
    loss : ``"cross_entropy"`` or ``"mse"`` (evaluation; the targets are the labels).
    seed : seeds the papers' initialisations, >= 0.
    """

    def __init__(self, model, lr=0.05, tau=0.5, steps=1, init="model", loss="cross_entropy",
                 seed=0):
        self._setup(model, loss, seed)
        self.lr, self.tau = check_rate("lr", lr), check_rate("tau", tau)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1; got {steps!r}")
        self.steps = steps
        if init not in ("model",) + tuple(INITS):
            raise ValueError(f"init must be one of {('model',) + tuple(INITS)}; got {init!r}")
        self.init = init
        if init != "model":
            self._state["W"] = paper_init(self.sizes, init, seed, self.dtype, self.device)
            self._state["b"] = [None if b is None else torch.zeros_like(b)
                                for b in self._state["b"]]

    def _euler_target(self, l, y_prev, y_hat):
        """``y^_{l-1}`` from ``steps`` Euler steps of ``du/dt = -dC_l/du`` (eq. 3, 32)."""
        W, b, s = self._state["W"][l - 1], self._state["b"][l - 1], self.transfers[l - 1]
        u = y_prev
        for _ in range(self.steps):
            a = torch.nn.functional.linear(u, W, b)
            u = u + self.tau * s.backprop(a, y_hat - s(a)) @ W
        return u

    def targets(self, h, target):
        """``{l: y^_l}`` for ``l = 1..L``."""
        hat = {self.depth: target}
        for l in range(self.depth, 1, -1):
            hat[l - 1] = self._euler_target(l, h[l - 1], hat[l])
        return hat

    def propose(self, x, y):
        h, a, target = self._start(x, y)
        new = self._copy()
        hat = self.targets(h, target)
        for l in range(1, self.depth + 1):
            local = self.transfers[l - 1].backprop(a[l - 1], h[l] - hat[l])
            self._delta_rule(new, l, local, h[l - 1], self.lr)
        return new, {"sim_time": 0.0, "nfev": 0}

    def config(self) -> dict:
        return self._base_config(lr=self.lr, tau=self.tau, steps=self.steps, init=self.init)


def paper_init(sizes, init, seed, dtype, device):
    """``W_l ~ N(0, c / N_l)``, ``N_l = n_{l-1}`` the fan-in, ``c`` from :data:`INITS`."""
    first, other = INITS[init]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        std = ((first if l == 1 else other) / n_in) ** 0.5
        out.append((std * torch.randn(n_out, n_in, generator=gen, dtype=torch.float64))
                   .to(dtype).to(device))
    return out
