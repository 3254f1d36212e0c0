"""Shared pieces of the discrete learners of layered networks ``h_i = s_i(W_i h_{i-1} + b_i)``.

Notation of the thesis (Meulemans, ch. 4-5; ``docs/discrete.md``): layers ``i = 1..L``,
``h_0 = x``, ``D_{s_i} = diag s_i'(a_i)`` at the pre-activation ``a_i = W_i h_{i-1} + b_i``,
output error ``e_L = dLoss/dh_L``, output target ``h^_L = h_L - eta_hat e_L`` (4.4).

* :class:`LayeredLearner`: the learner protocol (``learners/base.py``) over a copy of the
  model's ``W, b`` and any further per-layer state of the rule (feedback weights, inverses,
  optimiser moments), with the model's transfer functions.
* exact inverses: :func:`exact_inverse_target` (4.16), :func:`robust_inverse_update`
  (robust Sherman-Morrison, Alg. 4.1, and its Woodbury form for mini-batches).
* Gauss-Newton: :func:`gauss_newton_targets` (Lemma 4.2, (4.57)), :func:`factorised_pinv`
  (Lemma 4.8, (5.48)), :func:`gauss_newton_layer_step` (5.10)/(5.28).
* learned inverses: :func:`white_noise_inverse_step` (Alg. A.8, regularised inverse loss
  (4.97)) and :func:`regularised_pinv` (Theorem 4.7).
"""
from __future__ import annotations

import torch

from dendrite_sim.dynamics.teaching import _check_loss, loss_gradient
from dendrite_sim.errors import NumericalError, check_range
from dendrite_sim.learning.learners.base import Learner, _check_batch, _load_params

__all__ = ["layered_architecture", "LayeredLearner", "layer_forward", "output_target",
           "exact_inverse_target", "robust_inverse_update", "gauss_newton_targets",
           "factorised_pinv", "gauss_newton_layer_step", "white_noise_inverse_step",
           "regularised_pinv", "rmsprop"]


# ============================================================================================
# the network
# ============================================================================================
def layered_architecture(model, learner: str):
    """``(sizes, transfers)`` of a model whose forward map is ``h_i = s_i(W_i h_{i-1} + b_i)``;
    ``ValueError`` naming ``learner`` for a model without that form."""
    transfers = model.layer_transfers
    if transfers is None or "W" not in model.params:
        raise ValueError(f"model must be a layered network s(W h + b) (layer_transfers and "
                         f"params['W']) for {learner}; {type(model).__name__} has none")
    sizes = list(model.sizes)
    if len(transfers) != len(sizes) - 1:
        raise ValueError(f"model.layer_transfers has {len(transfers)} entries for "
                         f"{len(sizes) - 1} layers")
    return sizes, list(transfers)


def layer_forward(W, b, transfers, x):
    """``([x, h_1, ..., h_L], [a_1, ..., a_L])``: activities and pre-activations (6.2)."""
    h, a = [x], []
    for Wi, bi, s in zip(W, b, transfers):
        a.append(torch.nn.functional.linear(h[-1], Wi, bi))
        h.append(s(a[-1]))
    return h, a


def output_target(h_L, target, loss: str, eta_hat: float):
    """``h^_L = h_L - eta_hat dLoss/dh_L`` (4.4), per example."""
    return h_L - eta_hat * loss_gradient(loss, h_L, target)


def exact_inverse_target(y, W_inv, b, transfer):
    """``g_i(y) = W_{i+1}^{-1} (s_{i+1}^{-1}(y) - b_{i+1})`` (4.16), batched ``(B, n_{i+1})``."""
    u = transfer.inverse_unchecked(y)
    return (u if b is None else u - b) @ W_inv.T


def robust_inverse_update(W, W_inv, U, V, eps: float):
    """``(W + beta U V^T, (W + beta U V^T)^{-1}, beta)`` from ``W^{-1}`` in ``O(n^2 k)``.

    ``U`` ``(n, k)``, ``V`` ``(m, k)`` with ``k`` the rank of the update (the mini-batch size).
    ``k = 1``: the robust Sherman-Morrison update, Alg. 4.1 (4.19, 4.80): with
    ``d = v^T W^{-1} u``, the full step when ``|1 + d| >= eps``, else ``beta = 1 / (eps - d)``
    and the inverse update's denominator replaced by ``eps``, which keeps ``W^{-1}`` exact.
    ``k > 1``: Woodbury's identity ``(W + U V^T)^{-1} = W^{-1} - W^{-1} U C^{-1} V^T W^{-1}``,
    ``C = I + V^T W^{-1} U``; its robust form (an extension of Alg. 4.1, ``docs/discrete.md``)
    halves ``beta`` until the smallest singular value of ``I + beta V^T W^{-1} U`` (which
    bounds ``|det|`` of the update's factor, as ``1 + d`` does for ``k = 1``) is ``>= eps``.
    """
    WiU = W_inv @ U
    VtWi = V.T @ W_inv
    if U.shape[1] == 1:
        d = float(VtWi @ U)
        if abs(1.0 + d) >= eps:
            beta, denominator = 1.0, 1.0 + d
        else:
            beta, denominator = 1.0 / (eps - d), eps
        return W + beta * (U @ V.T), W_inv - (WiU @ VtWi) / denominator, beta
    eye = torch.eye(U.shape[1], dtype=U.dtype, device=U.device)
    core = VtWi @ U
    beta = 1.0
    for _ in range(60):
        C = eye + beta * core
        if float(torch.linalg.svdvals(C)[-1]) >= eps:
            break
        beta *= 0.5
    else:
        raise NumericalError("robust inverse update: no step size keeps W invertible")
    correction = beta * WiU @ torch.linalg.solve(C, VtWi)
    return W + beta * (U @ V.T), W_inv - correction, beta


# ============================================================================================
# Gauss-Newton
# ============================================================================================
def _layer_jacobians(W, a, transfers):
    """``[J_{f_1}, ..., J_{f_L}]``, ``J_{f_k} = D_{s_k} W_k`` ``(B, n_k, n_{k-1})`` (4.78)."""
    return [s.derivative(ak)[:, :, None] * Wk for Wk, ak, s in zip(W, a, transfers)]


def _output_jacobian(J, i):
    """``J_i = dh_L/dh_i = J_{f_L} ... J_{f_{i+1}}`` (4.50), ``(B, n_L, n_i)``."""
    out = J[-1]
    for k in range(len(J) - 2, i - 1, -1):
        out = out @ J[k]
    return out


def gauss_newton_targets(W, b, transfers, x, e_L, eta_hat: float):
    """``[h^GN_1, ..., h^GN_{L-1}]``, ``h^GN_i = h_i - eta_hat J_i^+ e_L`` per example (4.57):
    the Gauss-Newton step for the activities with a block-diagonal curvature (Lemma 4.2)."""
    h, a = layer_forward(W, b, transfers, x)
    J = _layer_jacobians(W, a, transfers)
    out = []
    for i in range(1, len(W)):
        Ji = _output_jacobian(J, i)
        out.append(h[i] - eta_hat * (torch.linalg.pinv(Ji) @ e_L[:, :, None])[:, :, 0])
    return out


def factorised_pinv(W, a, transfers, i):
    """``J^f_i = prod_{k=i+1..L} W_k^+ D_{s_k}^{-1}`` (5.48): the pseudo-inverse of ``J_i`` as
    target propagation factorises it; equal to ``J_i^+`` under Lemma 4.8's conditions."""
    out = None
    for k in range(i + 1, len(W) + 1):
        factor = torch.linalg.pinv(W[k - 1]) / transfers[k - 1].derivative(a[k - 1])[:, None, :]
        out = factor if out is None else out @ factor
    return out


def gauss_newton_layer_step(W, b, transfers, x, target, layer: int, loss: str = "mse"):
    """The full Gauss-Newton step ``Delta W_layer`` of the batch loss with every other layer
    fixed (5.10, 5.18, 5.28): ``-(sum_b J_b^T J_b)^+ sum_b J_b^T e_b``, ``J_b = dh_L/dvec W``
    (autograd), for the mean-squared loss; shape of ``W[layer-1]``."""
    _check_loss(loss)
    Wl = W[layer - 1].detach().clone().requires_grad_(True)

    def out(w):
        Ws = list(W)
        Ws[layer - 1] = w
        return layer_forward(Ws, b, transfers, x)[0][-1]

    with torch.enable_grad():
        h_L = out(Wl)
        e = loss_gradient(loss, h_L.detach(), target)
    jac = torch.autograd.functional.jacobian(out, Wl)            # (B, n_L, n_l, n_{l-1})
    J = jac.reshape(-1, Wl.numel())
    step = -torch.linalg.pinv(J.T @ J) @ (J.T @ e.reshape(-1))
    return step.reshape(Wl.shape)


# ============================================================================================
# learned inverses
# ============================================================================================
def white_noise_inverse_step(Q, W, b, transfer, noise, lr: float, weight_decay: float):
    """One step of Alg. A.8 on the regularised inverse loss (4.97): ``h ~`` white ``noise``
    ``(B, n_i)``, ``y = s(W h + b)``, ``t = s^{-1}(y) - b``, ``g = Q t``;
    ``Q <- (1 - lr lambda) Q - lr mean_b (g - h) t^T``."""
    y = transfer(torch.nn.functional.linear(noise, W, b))
    t = transfer.inverse_unchecked(y)
    t = t if b is None else t - b
    g = t @ Q.T
    return (1.0 - lr * weight_decay) * Q - lr * (g - noise).T @ t / noise.shape[0]


def regularised_pinv(W, weight_decay: float, variance: float = 1.0):
    """``W^T (W W^T + lambda / sigma^2 I)^{-1}``: where the regularised inverse loss (4.97)
    takes ``Q`` for white input of variance ``sigma^2`` (Theorem 4.7, expanding layers)."""
    n = W.shape[0]
    eye = torch.eye(n, dtype=W.dtype, device=W.device)
    return W.T @ torch.linalg.inv(W @ W.T + (weight_decay / variance) * eye)


def rmsprop(param, grad, mean_square, lr: float, decay: float, eps: float):
    """``(new param, new mean square)``: RMSprop (Tieleman & Hinton 2012), as Lee et al. 2015
    train every weight: ``m <- decay m + (1-decay) g^2``, ``p <- p - lr g / (sqrt(m) + eps)``."""
    m = decay * mean_square + (1.0 - decay) * grad * grad
    return param - lr * grad / (m.sqrt() + eps), m


# ============================================================================================
# the learner base
# ============================================================================================
class LayeredLearner(Learner):
    """A learner over a copy of ``model``'s ``W, b`` (the model is never changed).

    Subclasses call :meth:`_setup`, add per-layer state with :meth:`_add_state` and implement
    ``propose`` returning a dict with every state entry (``W``, ``b`` and their own). Random
    draws come from :meth:`_generator`, whose state advances only on :meth:`commit`, so that
    ``propose`` (which the diagnostics call too) is free of side effects.
    """

    def _setup(self, model, loss, seed):
        self.sizes, self.transfers = layered_architecture(model, type(self).__name__)
        self.model = model
        self.dtype, self.device = model.dtype, model.device
        self.loss_name = _check_loss(loss)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0; got {seed!r}")
        self.seed = seed
        self._rng_state = torch.Generator().manual_seed(seed).get_state()
        self._pending_rng = None
        self._state = {n: [None if p is None else p.detach().clone().to(self.dtype)
                           for p in model.params[n]] for n in ("W", "b")}

    def _add_state(self, name, values):
        self._state[name] = [None if v is None else v.detach().to(self.dtype) for v in values]

    @property
    def depth(self) -> int:
        return len(self.sizes) - 1

    @property
    def params(self) -> dict:
        return self._state

    def _generator(self) -> torch.Generator:
        """A generator at the committed state; its end state is committed with the update."""
        gen = torch.Generator().set_state(self._rng_state)
        self._pending_rng = gen
        return gen

    def _randn(self, gen, *shape):
        return torch.randn(*shape, generator=gen, dtype=self.dtype).to(self.device)

    def forward(self, x, state=None):
        s = self._state if state is None else state
        return layer_forward(s["W"], s["b"], self.transfers, x)

    def predict(self, x):
        with torch.no_grad():
            return self.forward(x)[0][-1]

    def _start(self, x, y):
        """Validated batch: ``(h, a, float target)``."""
        _check_batch(x, self.sizes[0])
        h, a = self.forward(x)
        return h, a, self._target(y)

    def _delta_rule(self, new, i, local, h_prev, lr):
        """``W_i -= lr mean_b local h_{i-1}^T``, ``b_i -= lr mean_b local`` in ``new``."""
        B = h_prev.shape[0]
        new["W"][i - 1] = new["W"][i - 1] - lr * local.T @ h_prev / B
        if new["b"][i - 1] is not None:
            new["b"][i - 1] = new["b"][i - 1] - lr * local.mean(0)

    def _copy(self) -> dict:
        return {n: list(v) for n, v in self._state.items()}

    def commit(self, new):
        for n in self._state:
            self._state[n] = [None if p is None else p.detach() for p in new[n]]
        if self._pending_rng is not None:
            self._rng_state = self._pending_rng.get_state()
            self._pending_rng = None

    def state_dict(self) -> dict:
        return {"params": {n: [None if p is None else p.clone() for p in v]
                           for n, v in self._state.items()},
                "rng": self._rng_state.clone()}

    def load_state_dict(self, d):
        self._state = _load_params(self._state, d["params"])
        self._rng_state = d["rng"].clone()

    def _base_config(self, **options) -> dict:
        return {"learner": self.name, "model": type(self.model).__name__, "sizes": self.sizes,
                "loss": self.loss_name, "transfers": [repr(t) for t in self.transfers],
                "bias": self._state["b"][0] is not None, "seed": self.seed, **options}


def check_rate(name, value):
    """A learning rate or step size ``>= 0`` (``ValueError`` naming it otherwise)."""
    return check_range(name, value, low=0.0)
