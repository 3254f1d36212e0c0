"""Bengio (2020) "B20": differential target propagation by iterated approximate inverses, as
discrete learners on the network of :class:`~dendrite_sim.models.cdtp.CDTP`
(``f_l(v) = W_l sigma(v)``, ``g_l(y) = Omega_l sigma(y)``, eq. 54).

* targets: ``tau_L = h_L - beta dLoss/dh_L`` (eq. 7), then per layer ``tau_{l-1}`` by one of

  - ``"none"``: ``tau_{l-1} = g_l(tau_l)`` (eq. 7), or with the difference correction of
    eq. 33 (``difference=True``) ``h_{l-1} + g_l(tau_l) - g_l(h_l)``;
  - ``"input"``: decoder-input correction (§5, eq. 27): ``u <- u + tau_l - f_l(g_l(u))``,
    ``tau_{l-1} = g_l(u)`` (with ``difference``: ``h_{l-1} + g_l(u) - g_l(h_l)``);
  - ``"output"``: decoder-output correction (§6.2, eq. 35): ``tau_{l-1} <- tau_{l-1} +
    g_l(tau_l) - g_l(f_l(tau_{l-1}))``, from the start above;

  iterated over all layers in parallel (§8), ``iterations`` times;
* forward weights: DTP1 (eq. 13) ``Delta W_l = (tau_l - h_l) n_{l-1}^T``, ``n_{l-1} =
  sigma(h_{l-1}) / ||sigma(h_{l-1})||^2``, or the influence-normalised parallel update
  (eq. 41–43) with the factor ``||tau_L - h_L||^2 / ||tau_l - h_l||^2`` (``normalise=True``),
  per example, averaged over the batch, times ``lr``;
* feedback weights (Alg. 1): ``Omega_l <- Omega_l + lr_omega (h_{l-1} - g_l(h_l))
  sigma(h_l)^T / ||sigma(h_l)||^2``.

``bengio_alg1`` is Algorithm 1: output correction, normalised update, decoder training.
The iteration maps are public (:func:`input_correction`, :func:`output_correction`) with
their increments, for the convergence claims of §5 and §6.2 (rate ``alpha``, the deviation
of the auto-encoder from the identity).
"""
from __future__ import annotations

import torch

from dendrite_sim.dynamics.teaching import _check_loss, loss_gradient
from dendrite_sim.dynamics.transfer import make_transfer
from dendrite_sim.errors import NumericalError, check_range
from . import register_learner
from .base import Learner, _check_batch

__all__ = ["input_correction", "output_correction", "dtp1_update", "layer_factor",
           "BengioDTP", "AlgorithmOne", "INVERSIONS"]

INVERSIONS = ("none", "input", "output")


def input_correction(f, g, tau_y, u0, steps: int):
    """§5, eq. 27: ``u <- u + tau_y - f(g(u))`` ``steps`` times from ``u0``; returns ``(u,
    increments)`` with ``increments[t] = ||u_{t+1} - u_t||`` per example ``(steps, B)``.
    Converges in ``alpha^t`` when ``f(g(u)) - u`` has Lipschitz constant ``alpha < 1``."""
    u, norms = u0, []
    for _ in range(int(steps)):
        step = tau_y - f(g(u))
        u = u + step
        norms.append(step.norm(dim=-1))
    return u, torch.stack(norms) if norms else u.new_zeros(0, u.shape[0])


def output_correction(f, g, tau_y, x0, steps: int):
    """§6.2, eq. 35: ``tau_x <- tau_x + g(tau_y) - g(f(tau_x))`` ``steps`` times from
    ``x0``; returns ``(tau_x, increments)`` as :func:`input_correction`."""
    x, norms, goal = x0, [], g(tau_y)
    for _ in range(int(steps)):
        step = goal - g(f(x))
        x = x + step
        norms.append(step.norm(dim=-1))
    return x, torch.stack(norms) if norms else x.new_zeros(0, x.shape[0])


def dtp1_update(sigma_below: torch.Tensor, tau: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Per example, eq. 13: ``(tau_l - h_l) sigma(h_{l-1})^T / ||sigma(h_{l-1})||^2``,
    ``(B, n_l, n_{l-1})``. Added to ``W_l`` it moves ``h_l = W_l sigma(h_{l-1})`` to
    ``tau_l`` exactly (eq. 12)."""
    n = sigma_below / sigma_below.pow(2).sum(-1, keepdim=True)
    return (tau - h)[:, :, None] * n[:, None, :]


def layer_factor(tau_top, h_top, tau, h, eps: float = 0.0) -> torch.Tensor:
    """Eq. 41/43: ``(||tau_L - h_L||^2 + eps) / (||tau_l - h_l||^2 + eps)`` per example
    ``(B,)``; ``NumericalError`` where it is 0/0 (``eps = 0`` and no target change)."""
    num = (tau_top - h_top).pow(2).sum(-1) + eps
    den = (tau - h).pow(2).sum(-1) + eps
    if bool((den == 0).any()):
        raise NumericalError("layer factor 0/0: a layer's target equals its activity; give "
                             "eps > 0")
    return num / den


@register_learner("bengio_dtp")
class BengioDTP(Learner):
    """B20's discrete DTP variants on a :class:`~dendrite_sim.models.cdtp.CDTP` network
    (module docstring); the model's ``W, Omega`` are copied.

    Parameters
    ----------
    model : a network whose parameters are B20's ``W`` and ``Omega`` (e.g. ``CDTP``): the
        learner copies them and computes ``f_l(v) = W_l sigma(v)``, ``g_l(y) = Omega_l
        sigma(y)`` itself (eq. 54).
    transfer, slope : ``sigma`` (:func:`~dendrite_sim.dynamics.transfer.make_transfer`); the
        model's own (``CDTP``'s default: tanh).
    lr : forward step, >= 0 (1: each example's update is the full DTP step).
    beta : output target step ``tau_L = h_L - beta dLoss/dh_L``, > 0.
    inversion : ``"none"``, ``"input"`` (§5) or ``"output"`` (§6.2).
    iterations : iterations of the inversion, >= 0.
    normalise : the influence-normalised parallel update (eq. 41–43) instead of DTP1.
    factor_eps : ``eps`` of the layer factor, > 0.
    difference : start each layer's inversion from the eq. 33 correction with the forward
        pair (needed where ``g_l`` is no inverse, e.g. a narrow output layer).
    lr_omega : step of the decoder update of Alg. 1, >= 0.
    loss : ``"cross_entropy"`` or ``"mse"``.
    """

    forward_names = ("W",)

    def __init__(self, model, lr=0.5, beta=0.5, inversion="output", iterations=5,
                 normalise=True, factor_eps=1e-8, difference=True, lr_omega=0.0,
                 loss="cross_entropy", transfer="tanh", slope=0.1):
        if not {"W", "Omega"} <= set(model.params):
            raise ValueError(f"model must have B20's parameters W and Omega (f = W sigma(h), "
                             f"g = Omega sigma(y)); {type(model).__name__} has "
                             f"{sorted(model.params)}")
        self.sigma = make_transfer(transfer, slope)
        if inversion not in INVERSIONS:
            raise ValueError(f"inversion must be one of {INVERSIONS}; got {inversion!r}")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
            raise ValueError(f"iterations must be an integer >= 0; got {iterations!r}")
        self.lr = check_range("lr", lr, low=0.0)
        self.beta = check_range("beta", beta, low=0.0, low_open=True)
        self.factor_eps = check_range("factor_eps", factor_eps, low=0.0, low_open=True)
        self.lr_omega = check_range("lr_omega", lr_omega, low=0.0)
        self.inversion, self.iterations = inversion, iterations
        self.normalise, self.difference = bool(normalise), bool(difference)
        self.loss_name = _check_loss(loss)
        self.model = model
        self.sizes, self.dtype, self.device = list(model.sizes), model.dtype, model.device
        self._params = {n: [None if p is None else p.detach().clone() for p in model.params[n]]
                        for n in ("W", "Omega")}

    @property
    def params(self) -> dict:
        return self._params

    @property
    def depth(self) -> int:
        return len(self.sizes) - 1

    def predict(self, x):
        with torch.no_grad():
            return self._forward_pass(x)[-1]

    # -- the network, eq. 54 ------------------------------------------------------------------
    def _f(self, l, v):
        """``f_l(v) = W_l sigma(v)``."""
        return self.sigma(v) @ self._params["W"][l - 1].T

    def _g(self, l, y):
        """``g_l(y) = Omega_l sigma(y)`` (layer ``l`` to ``l-1``)."""
        return self.sigma(y) @ self._params["Omega"][l - 1].T

    def _forward_pass(self, x):
        """``[h_1, ..., h_L]``, ``h_l = f_l(h_{l-1})``."""
        out, h = [], x
        for l in range(1, self.depth + 1):
            h = self._f(l, h)
            out.append(h)
        return out

    def _decode(self, l, y, h):
        """``g_l(y)``, or with ``difference`` ``h_{l-1} + g_l(y) - g_l(h_l)`` (eq. 33)."""
        out = self._g(l, y)
        return out + h[l - 1] - self._g(l, h[l]) if self.difference else out

    def targets(self, h, target):
        """``[None, tau_1, ..., tau_L]`` and the largest last increment of the inversion."""
        L = self.depth
        tau = [None] * (L + 1)
        tau[L] = h[L] - self.beta * loss_gradient(self.loss_name, h[L], target)
        u = [None] * (L + 1)
        for l in range(L, 1, -1):                      # eq. 7 (or eq. 33) initialisation
            u[l] = tau[l]
            tau[l - 1] = self._decode(l, tau[l], h)
        last = 0.0
        for _ in range(self.iterations if self.inversion != "none" else 0):
            new = list(tau)
            for l in range(L, 1, -1):                  # all layers in parallel (§8)
                if self.inversion == "input":          # eq. 27
                    u[l] = u[l] + tau[l] - self._f(l, self._decode(l, u[l], h))
                    new[l - 1] = self._decode(l, u[l], h)
                else:                                  # eq. 35
                    new[l - 1] = tau[l - 1] + self._g(l, tau[l]) \
                        - self._g(l, self._f(l, tau[l - 1]))
            last = max(float((n - o).norm(dim=-1).max()) for n, o in zip(new[1:L], tau[1:L])) \
                if L > 1 else 0.0
            tau = new
        return tau, last

    def propose(self, x, y):
        _check_batch(x, self.sizes[0])
        target = self._target(y)
        with torch.no_grad():
            h = [x] + self._forward_pass(x)
            tau, last = self.targets(h, target)
            new = {"W": [], "Omega": list(self._params["Omega"])}
            for l in range(1, self.depth + 1):
                delta = dtp1_update(self.sigma(h[l - 1]), tau[l], h[l])
                if self.normalise:
                    delta = delta * layer_factor(tau[-1], h[-1], tau[l], h[l],
                                                 self.factor_eps)[:, None, None]
                new["W"].append(self._params["W"][l - 1] + self.lr * delta.mean(0))
            for l in range(2, self.depth + 1):         # Alg. 1's decoder step
                if self.lr_omega > 0:
                    s = self.sigma(h[l])
                    step = (h[l - 1] - self._g(l, h[l]))[:, :, None] * \
                        (s / s.pow(2).sum(-1, keepdim=True))[:, None, :]
                    new["Omega"][l - 1] = self._params["Omega"][l - 1] + \
                        self.lr_omega * step.mean(0)
        return new, {"sim_time": 0.0, "nfev": 0, "inversion_increment": last}

    def commit(self, new):
        for n in ("W", "Omega"):
            self._params[n] = [None if p is None else p.detach() for p in new[n]]

    def config(self) -> dict:
        return {"learner": self.name, "model": type(self.model).__name__, "sizes": self.sizes,
                "lr": self.lr, "beta": self.beta, "inversion": self.inversion,
                "iterations": self.iterations, "normalise": self.normalise,
                "factor_eps": self.factor_eps, "difference": self.difference,
                "lr_omega": self.lr_omega, "loss": self.loss_name}


@register_learner("bengio_alg1")
class AlgorithmOne(BengioDTP):
    """B20 Algorithm 1: decoder-output correction (eq. 35) iterated in parallel over the
    layers, the influence-normalised update (eq. 43) and the decoder step (parameters as
    :class:`BengioDTP`)."""

    def __init__(self, model, lr=0.5, beta=0.5, iterations=5, factor_eps=1e-8,
                 difference=True, lr_omega=0.0, loss="cross_entropy"):
        super().__init__(model, lr, beta, "output", iterations, True, factor_eps, difference,
                         lr_omega, loss)
