"""Learning diagnostics (the quantities of ``docs/design.md``, "Learning diagnostics").

Every ``diagnostics_every`` batches :func:`~dendrite_sim.learning.train` takes a *trial*
update of the learner on a fixed probe batch (the update it would make from its current
weights, not applied) and records per layer ``i = 1..L`` (``NaN`` where a quantity does not
exist for the learner or the model):

``dW_norm``        ``||Delta theta_i||`` of the trial update, ``theta_i`` the learner's
                   ``forward_names`` parameters of layer ``i`` (e.g. ``(W_i, b_i)``) flattened.
``step_dW_norm``   ``||Delta theta_i||`` of the training step actually taken at that batch.
``cos_bp``         cosine between ``Delta theta_i`` and ``-dLoss/dtheta_i``, the backprop
                   gradient of the batch-mean loss of the model's forward map (autograd;
                   any model that declares ``forward_params``).
``cos_gn``         cosine with the Gauss–Newton direction of target propagation
                   (:func:`gauss_newton_direction`; layered forward maps only).

plus what the model's family defines (``model.learning_diagnostics`` at the free and nudged
equilibria; the mixing models: reconstruction errors, ``Q`` distance, useful signal), and per
sample ``max_real_eig``: the largest real part of the eigenvalues of the Jacobian of the
activity block at the free equilibrium, maximised over the first ``n_eig`` probe examples.
"""

from __future__ import annotations

import torch

from dendrite_sim.dynamics.teaching import loss_gradient
from dendrite_sim.errors import all_finite
from .learners.base import _cosine, _difference, _forward_params, _layer_vectors
from .learners.backprop import backprop_gradient, forward_layers

#: per-layer diagnostics every run records (the mixing family's own among them)
LAYER_DIAGNOSTICS = ("dW_norm", "step_dW_norm", "cos_bp", "cos_gn", "recon_error",
                     "q_distance", "useful_signal", "recon_deviation")
SCALAR_DIAGNOSTICS = ("max_real_eig",)


def gauss_newton_direction(model, params, x, target, loss) -> dict:
    """Per-layer Gauss–Newton target direction of target propagation, as weight directions.

    At the forward pass, with ``e_L = dLoss/dh_L`` per example and the layer Jacobians
    ``J_k = D_{s_k} W_k`` (``D_{s_k} = diag s_k'(W_k h_{k-1} + b_k)``), the target direction
    of layer ``i`` is the output step ``-e_L`` pulled back through the inverse layer
    Jacobians::

        delta h_L = -e_L,      delta h_i = J_{i+1}^+ delta h_{i+1} = [J_{i+1}^+ ... J_L^+] delta h_L

    For square invertible layers ``J^+ = J^{-1}`` and ``delta h_i`` is the Gauss–Newton step
    for ``h_i`` (the inverse of the Jacobian of ``h_L`` w.r.t. ``h_i``; TP with exact inverses
    follows it, Meulemans et al. 2020). Where a layer contracts (e.g. 64 -> 10 outputs) each
    ``J^+`` is the layer's pseudo-inverse: the target that target propagation with ideal
    pseudo-inverse feedback (``Q_i = W_{i+1}^+``) propagates, which below such a layer is *not*
    the minimum-norm GN step ``(J_L ... J_{i+1})^+ delta h_L`` (Meulemans et al. 2020, §3).
    The weight direction is the batch mean of the local delta rule that moves ``h_i`` toward
    ``h_i + delta h_i``::

        G_W_i = mean_b D_{s_i} delta h_i h_{i-1}^T,     G_b_i = mean_b D_{s_i} delta h_i

    For the output layer this is ``-dLoss/dW_L`` (GN and backprop coincide). Returned as
    ``{"W": [...], "b": [...]}`` (unnormalised: only directions are compared). For models
    whose forward map is layered (``model.forward_layers`` and ``model.layer_transfers``).
    """
    with torch.no_grad():
        h = forward_layers(model, params, x)
        L, transfers = len(h) - 1, model.layer_transfers
        a = [None] + [torch.nn.functional.linear(h[i - 1], params["W"][i - 1],
                                                 params["b"][i - 1]) for i in range(1, L + 1)]
        d = [None] + [transfers[i - 1].derivative(a[i]) for i in range(1, L + 1)]
        delta = [None] * (L + 1)
        delta[L] = -loss_gradient(loss, h[L], target)
        for i in range(L - 1, 0, -1):
            J = d[i + 1][:, :, None] * params["W"][i]               # (B, n_{i+1}, n_i)
            delta[i] = _solve_or_least_squares(J, delta[i + 1])
        B = x.shape[0]
        out = {"W": [], "b": []}
        for i in range(1, L + 1):
            local = d[i] * delta[i]
            out["W"].append(local.T @ h[i - 1] / B)
            out["b"].append(None if params["b"][i - 1] is None else local.mean(0))
    return out


def _solve_or_least_squares(J: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``J^+ v`` per example: a batched LU solve where ``J`` is square and invertible, the
    minimum-norm least-squares solution (pseudo-inverse) where it is not square or singular
    (e.g. a saturated unit whose derivative is exactly 0 in float32)."""
    if J.shape[1] == J.shape[2]:
        out, info = torch.linalg.solve_ex(J, v)
        bad = info != 0
        if not bad.any():
            return out
        out[bad] = (torch.linalg.pinv(J[bad]) @ v[bad][:, :, None])[:, :, 0]
        return out
    return (torch.linalg.pinv(J) @ v[:, :, None])[:, :, 0]


def layer_diagnostics(learner, x, y, n_eig: int = 4) -> dict:
    """The diagnostics of ``learner`` on the batch ``(x, y)`` (module docstring).

    Returns ``{name: [value per layer]}`` for :data:`LAYER_DIAGNOSTICS` (without
    ``step_dW_norm``, which belongs to a training step) and the model's own, and
    ``{"max_real_eig": value}``.
    """
    L = len(learner.sizes) - 1
    out = {name: [float("nan")] * L for name in LAYER_DIAGNOSTICS if name != "step_dW_norm"}
    out["max_real_eig"] = float("nan")
    current = _forward_params(learner.params, learner.forward_names)
    new, _ = learner.propose(x, y)
    delta = _layer_vectors(_difference(new, current), L)
    out["dW_norm"] = [float(v.norm()) for v in delta]
    model = learner.model
    if model is None or not model.forward_params:
        return out
    target = learner._target(y)
    params = {**model.params, **learner.params}
    grad = backprop_gradient(model, params, x, target, learner.loss_name)
    descent = _layer_vectors({n: [None if g is None else -g for g in v]
                              for n, v in grad.items() if n in current}, L)
    out["cos_bp"] = [_cosine(d, g) for d, g in zip(delta, descent)]
    if model.layer_transfers is not None and set(current) == {"W", "b"}:
        gn = gauss_newton_direction(model, params, x, target, learner.loss_name)
        out["cos_gn"] = [_cosine(d, g) for d, g in zip(delta, _layer_vectors(gn, L))]
    if learner.dynamic:
        out.update(_dynamic_diagnostics(learner, x, y, n_eig))
    return out


def _dynamic_diagnostics(learner, x, y, n_eig) -> dict:
    """The model family's diagnostics at the free and nudged equilibria, and the largest
    real part of the activity block's eigenvalues at the free one."""
    from dendrite_sim.dynamics.equilibrium import fixed_point
    from dendrite_sim.dynamics.spectral import jacobian

    model = learner.model
    free = fixed_point(model, x, None, **learner.fixed_point_kwargs)
    nudged = fixed_point(model, x, learner.teaching(y), y0=free.y, **learner.fixed_point_kwargs)
    with torch.no_grad():
        out = dict(model.learning_diagnostics(model.params, x, free.y, nudged.y))
    k = min(int(n_eig), x.shape[0])
    if k > 0 and all_finite(free.y[:k]):
        jac = torch.Tensor(jacobian(model, x[:k], free.y[:k]))
        block = model.layout.variable_slice(model.activity)
        activity = jac[:, block, block]
        if all_finite(activity):               # never hand non-finite matrices to LAPACK
            out["max_real_eig"] = float(torch.linalg.eigvals(activity).real.max())
    return out
