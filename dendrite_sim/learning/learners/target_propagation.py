"""Target propagation and its variants from the thesis (Meulemans, ch. 4-5, Appendix A).

Every variant propagates the output target ``h^_L = h_L - eta_hat e_L`` (4.4) down the network
with feedback maps ``g_i`` and moves each layer toward its target by a gradient step on the
local loss ``1/2 ||h_i - h^_i||^2`` (4.12)::

    TP:   h^_i = g_i(h^_{i+1})                                         (4.5)
    DTP:  h^_i = h_i + g_i(h^_{i+1}) - g_i(h_{i+1})                      (Alg. A.12; Lee et al. eq. 18)
    Delta W_i = -lr mean_b D_{s_i} (h_i - h^_i) h_{i-1}^T,   Delta b_i alike        (4.12)

Feedback maps (the registered names):

* ``tp_exact`` / ``dtp_exact``: ``g_i = f_{i+1}^{-1}``, ``W^{-1}`` kept by the robust
  Sherman-Morrison update (Alg. 4.1, A.4); needs ``n_1 = ... = n_L``.
* ``tp_ai`` / ``dtp_ai``: ``g_i(y) = Q_i (s_{i+1}^{-1}(y) - b_{i+1})`` (4.90), ``Q_i`` trained on
  white noise with weight decay (Alg. A.8, A.10, A.12).
* ``tp_original`` / ``dtp_original``: ``g_i(y) = s_i(Q_i y)`` (the auto-encoder form of
  Lee et al., (5.47)), ``Q_i`` trained on the batch's activities (Alg. A.9, A.14, A.16).

Options of every variant: ``randomized`` (one random layer ``k`` updated per step, Alg. A.2,
A.5, A.11, A.13, A.15, A.17) and ``modified`` (``D_{s_i}^{-1}`` instead of ``D_{s_i}`` in the
update, Alg. A.6, (5.34); the batch normalisation of Alg. A.1 is left out because it changes
the network's function, ``docs/discrete.md``).
"""
from __future__ import annotations

import torch

from dendrite_sim.errors import check_range
from dendrite_sim.learning.layered import (LayeredLearner, check_rate, exact_inverse_target,
                                           output_target, robust_inverse_update,
                                           white_noise_inverse_step)
from . import register_learner

FEEDBACKS = ("exact", "inverse", "classic")


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    return value


class TargetPropagation(LayeredLearner):
    """Shared engine of the variants (module docstring); construct a registered variant.

    Parameters (each variant takes those that apply to it)
    ----------
    model : a model with ``layer_transfers``; its ``W, b`` (and ``Q`` when present and of the
        right shapes, else ``Q_i = W_{i+1}^+``) are copied.
    lr : forward learning rate ``eta_i``, >= 0.
    eta_hat : output target step size (4.4), > 0.
    loss : ``"cross_entropy"`` or ``"mse"``.
    randomized, modified : see the module docstring.
    epsilon : threshold of the robust Sherman-Morrison update (Alg. 4.1), > 0 (exact).
    lr_inv, weight_decay : feedback learning rate and ``lambda`` (Alg. A.8/A.9), >= 0.
    noise_std : standard deviation of the white noise ``Q`` learns on (Alg. A.8), > 0.
    inverse_batch : white-noise samples per feedback step (Alg. A.8), >= 1.
    seed : seeds the random layer choice and the noise, >= 0.
    """

    feedback_kind = "exact"
    difference = False

    def _configure(self, model, lr, eta_hat, loss, randomized, modified, seed, epsilon=0.5,
                   lr_inv=0.0, weight_decay=0.0, noise_std=1.0, inverse_batch=32):
        self._setup(model, loss, seed)
        self.lr = check_rate("lr", lr)
        self.eta_hat = check_range("eta_hat", eta_hat, low=0.0, low_open=True)
        self.randomized, self.modified = bool(randomized), bool(modified)
        self.epsilon = check_range("epsilon", epsilon, low=0.0, low_open=True)
        self.lr_inv = check_rate("lr_inv", lr_inv)
        self.weight_decay = check_rate("weight_decay", weight_decay)
        self.noise_std = check_range("noise_std", noise_std, low=0.0, low_open=True)
        self.inverse_batch = _check_int("inverse_batch", inverse_batch, 1)
        W = self._state["W"]
        if self.feedback_kind == "exact":
            if len(set(self.sizes[1:])) != 1:
                raise ValueError(f"{self.name} needs exact inverses: layer sizes n_1..n_L must "
                                 f"be equal (square W_2..W_L); got sizes {self.sizes}")
            self._add_state("W_inv", [None] + [torch.linalg.inv(w) for w in W[1:]])
        else:
            given = model.params.get("Q")
            self._add_state("Q", [
                q if q is not None and given_ok(q, w) else torch.linalg.pinv(w)
                for q, w in zip(given if given is not None else [None] * (len(W) - 1), W[1:])])

    # -- feedback maps ------------------------------------------------------------------------
    def feedback_map(self, i, y, state):
        """``g_i(y)`` for ``i = 1..L-1`` (module docstring)."""
        if self.feedback_kind == "exact":
            return exact_inverse_target(y, state["W_inv"][i], state["b"][i], self.transfers[i])
        Q = state["Q"][i - 1]
        if self.feedback_kind == "classic":
            return self.transfers[i - 1](y @ Q.T)
        u = self.transfers[i].inverse_unchecked(y)
        b = state["b"][i]
        return (u if b is None else u - b) @ Q.T

    def targets(self, h, target, state=None, down_to=1):
        """``{i: h^_i}`` for ``i = down_to..L`` (4.4, 4.5 or DTP's difference correction)."""
        state = self._state if state is None else state
        L = self.depth
        hat = {L: output_target(h[L], target, self.loss_name, self.eta_hat)}
        for i in range(L - 1, down_to - 1, -1):
            hat[i] = self.feedback_map(i, hat[i + 1], state)
            if self.difference:
                hat[i] = hat[i] + h[i] - self.feedback_map(i, h[i + 1], state)
        return hat

    # -- the update -----------------------------------------------------------------------------
    def _local_error(self, i, a, h, hat):
        """``D_{s_i} (h_i - h^_i)`` (4.12), or ``D_{s_i}^{-1} (h_i - h^_i)`` when modified."""
        d = self.transfers[i - 1].derivative(a[i - 1])
        return (h[i] - hat[i]) / d if self.modified else d * (h[i] - hat[i])

    def propose(self, x, y):
        h, a, target = self._start(x, y)
        new = self._copy()
        gen = self._generator()
        if self.randomized:
            layers = [int(torch.randint(1, self.depth + 1, (1,), generator=gen))]
        else:
            layers = list(range(1, self.depth + 1))
        hat = self.targets(h, target, down_to=min(layers))
        betas = []
        for i in layers:
            local = self._local_error(i, a, h, hat)
            if self.feedback_kind == "exact" and i > 1:
                betas.append(self._robust_step(new, i, local, h[i - 1]))
            else:
                self._delta_rule(new, i, local, h[i - 1], self.lr)
        self._feedback_step(new, h, gen)
        return new, {"sim_time": 0.0, "nfev": 0, "layers": layers, "beta": betas}

    def _robust_step(self, new, i, local, h_prev):
        """Alg. 4.1 / A.4 on layer ``i``: ``W_i`` and ``W_i^{-1}`` updated together."""
        B = h_prev.shape[0]
        U, V = -self.lr / B * local.T, h_prev.T
        W, W_inv, beta = robust_inverse_update(new["W"][i - 1], new["W_inv"][i - 1], U, V,
                                               self.epsilon)
        new["W"][i - 1], new["W_inv"][i - 1] = W, W_inv
        if new["b"][i - 1] is not None:
            new["b"][i - 1] = new["b"][i - 1] - beta * self.lr * local.mean(0)
        return beta

    def _feedback_step(self, new, h, gen):
        """Alg. A.8 (inverse form, white noise) or A.9 (classic form, the batch)."""
        if self.feedback_kind == "exact" or self.lr_inv == 0.0:
            return
        for i in range(1, self.depth):
            Q = new["Q"][i - 1]
            if self.feedback_kind == "inverse":
                noise = self.noise_std * self._randn(gen, self.inverse_batch, self.sizes[i])
                new["Q"][i - 1] = white_noise_inverse_step(
                    Q, new["W"][i], new["b"][i], self.transfers[i], noise, self.lr_inv,
                    self.weight_decay)
            else:
                pre = h[i + 1] @ Q.T
                local = self.transfers[i - 1].backprop(pre, self.transfers[i - 1](pre) - h[i])
                grad = local.T @ h[i + 1] / h[i].shape[0]
                new["Q"][i - 1] = (1.0 - self.lr_inv * self.weight_decay) * Q \
                    - self.lr_inv * grad

    def config(self) -> dict:
        options = dict(lr=self.lr, eta_hat=self.eta_hat, randomized=self.randomized,
                       modified=self.modified)
        if self.feedback_kind == "exact":
            options["epsilon"] = self.epsilon
        else:
            options.update(lr_inv=self.lr_inv, weight_decay=self.weight_decay)
        if self.feedback_kind == "inverse":
            options.update(noise_std=self.noise_std, inverse_batch=self.inverse_batch)
        return self._base_config(**options)


def given_ok(q, w) -> bool:
    """Whether the model's ``Q_i`` has the shape of ``W_{i+1}^T``."""
    return tuple(q.shape) == (w.shape[1], w.shape[0])


# ============================================================================================
# the registered variants
# ============================================================================================
@register_learner("tp_exact")
class TPExact(TargetPropagation):
    """Target propagation with exact inverses (Alg. A.4; randomized A.5, modified A.6)."""

    def __init__(self, model, lr=0.01, eta_hat=0.1, loss="mse", randomized=False,
                 modified=False, epsilon=0.5, seed=0):
        self._configure(model, lr, eta_hat, loss, randomized, modified, seed, epsilon=epsilon)


@register_learner("dtp_exact")
class DTPExact(TPExact):
    """Difference target propagation with exact inverses (same updates as ``tp_exact`` up to
    rounding: ``g_i(h_{i+1}) = h_i``)."""

    difference = True


@register_learner("tp_ai")
class TPAI(TargetPropagation):
    """TP with approximate inverses ``g_i = Q_i s_{i+1}^{-1}`` (Alg. A.10; randomized A.11)."""

    feedback_kind = "inverse"

    def __init__(self, model, lr=0.01, eta_hat=0.1, loss="cross_entropy", randomized=False,
                 modified=False, lr_inv=0.01, weight_decay=0.0, noise_std=1.0,
                 inverse_batch=32, seed=0):
        self._configure(model, lr, eta_hat, loss, randomized, modified, seed, lr_inv=lr_inv,
                        weight_decay=weight_decay, noise_std=noise_std,
                        inverse_batch=inverse_batch)


@register_learner("dtp_ai")
class DTPAI(TPAI):
    """DTP with approximate inverses ``g_i = Q_i s_{i+1}^{-1}`` (Alg. A.12; randomized A.13)."""

    difference = True


@register_learner("tp_original")
class TPOriginal(TargetPropagation):
    """Original TP, ``g_i(y) = s_i(Q_i y)`` (Alg. A.14; randomized A.15)."""

    feedback_kind = "classic"

    def __init__(self, model, lr=0.01, eta_hat=0.1, loss="cross_entropy", randomized=False,
                 modified=False, lr_inv=0.01, weight_decay=0.0, seed=0):
        self._configure(model, lr, eta_hat, loss, randomized, modified, seed, lr_inv=lr_inv,
                        weight_decay=weight_decay)


@register_learner("dtp_original")
class DTPOriginal(TPOriginal):
    """Original DTP, ``g_i(y) = s_i(Q_i y)`` with the difference correction (Alg. A.16;
    randomized A.17)."""

    difference = True
