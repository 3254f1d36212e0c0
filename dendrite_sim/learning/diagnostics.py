"""Learning diagnostics (SPEC §4)."""

from __future__ import annotations

import torch

from dendrite_sim.dynamics.teaching import loss_gradient
from .learners.base import _cosine, _forward_params, _difference, _layer_vectors
from .learners.backprop import backprop_gradient, forward_layers


LAYER_DIAGNOSTICS = ("dW_norm", "step_dW_norm", "cos_bp", "cos_gn", "recon_error",
                     "q_distance", "useful_signal", "recon_deviation")
SCALAR_DIAGNOSTICS = ("max_real_eig",)

def gauss_newton_direction(pathways, params, x, target, loss) -> dict:
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
    ``{"W": [...], "b": [...]}`` (unnormalised: only directions are compared).
    """
    with torch.no_grad():
        h = forward_layers(pathways, params, x)
        L = pathways.depth
        a = [None] + [pathways.preactivation(i, h[i - 1], params) for i in range(1, L + 1)]
        d = [None] + [pathways.transfers[i - 1].derivative(a[i]) for i in range(1, L + 1)]
        delta = [None] * (L + 1)
        delta[L] = -loss_gradient(loss, h[L], target)
        for i in range(L - 1, 0, -1):
            J = d[i + 1][:, :, None] * params["W"][i]               # (B, n_{i+1}, n_i)
            if J.shape[1] == J.shape[2]:
                delta[i] = torch.linalg.solve(J, delta[i + 1])
            else:
                delta[i] = (torch.linalg.pinv(J) @ delta[i + 1][:, :, None])[:, :, 0]
        B = x.shape[0]
        out = {"W": [], "b": []}
        for i in range(1, L + 1):
            local = d[i] * delta[i]
            out["W"].append(local.T @ h[i - 1] / B)
            out["b"].append(None if params["b"][i - 1] is None else local.mean(0))
    return out



# ============================================================================================
# diagnostics
# ============================================================================================
def layer_diagnostics(learner, x, y, n_eig: int = 4) -> dict:
    """SPEC §4 diagnostics of ``learner`` on the batch ``(x, y)`` (module docstring).

    Returns ``{name: [value per layer]}`` for :data:`LAYER_DIAGNOSTICS` (without
    ``step_dW_norm``, which belongs to a training step) and ``{"max_real_eig": value}``.
    """
    L = len(learner.sizes) - 1
    nan_layers = [float("nan")] * L
    out = {name: list(nan_layers) for name in LAYER_DIAGNOSTICS if name != "step_dW_norm"}
    out["max_real_eig"] = float("nan")
    current = _forward_params(learner.params)
    new, _ = learner.propose(x, y)
    delta = _layer_vectors(_difference(new, current), L)
    out["dW_norm"] = [float(v.norm()) for v in delta]
    pathways = learner.pathways
    if pathways is None:
        return out
    target = learner._target(y)
    neg_grad = backprop_gradient(pathways, current, x, target, learner.loss_name)
    neg_grad = {n: [None if g is None else -g for g in v] for n, v in neg_grad.items()}
    gn = gauss_newton_direction(pathways, current, x, target, learner.loss_name)
    out["cos_bp"] = [_cosine(d, g) for d, g in zip(delta, _layer_vectors(neg_grad, L))]
    out["cos_gn"] = [_cosine(d, g) for d, g in zip(delta, _layer_vectors(gn, L))]
    if getattr(learner, "dynamic", False):
        out.update(_dynamic_diagnostics(learner, x, y, n_eig))
    return out


def _mean_norm(v: torch.Tensor) -> float:
    return float(v.norm(dim=-1).mean())


def _dynamic_diagnostics(learner, x, y, n_eig) -> dict:
    from dendrite_sim.dynamics.equilibrium import fixed_point
    from dendrite_sim.dynamics.spectral import jacobian

    model, pathways = learner.model, learner.pathways
    L = len(learner.sizes) - 1
    P = model.params
    prepared = model.prepare(P)
    free = fixed_point(model, x, None, **learner.fixed_point_kwargs)
    nudged = fixed_point(model, x, learner.teaching(y), y0=free.y, **learner.fixed_point_kwargs)
    hf, hn = [x] + free.layers, [x] + nudged.layers
    out = {}
    with torch.no_grad():
        dev_f = [hf[i] - pathways.forward(i, hf[i - 1], P) for i in range(1, L + 1)]
        dev_n = [hn[i] - pathways.forward(i, hn[i - 1], P) for i in range(1, L + 1)]
        out["useful_signal"] = [_mean_norm(dn - df) for dn, df in zip(dev_n, dev_f)]
        out["recon_deviation"] = [_mean_norm(df) for df in dev_f]
        recon = []
        for i in range(1, L):
            back = pathways.feedback_map(i, pathways.forward(i + 1, hf[i], P), prepared)
            recon.append(_mean_norm(back - hf[i]))
        out["recon_error"] = recon + [float("nan")]
        if "Q" in P and P["Q"] is not None:
            qd = []
            for i in range(1, L):
                pinv = torch.linalg.pinv(P["W"][i])
                qd.append(float((P["Q"][i - 1] - pinv).norm() / pinv.norm()))
            out["q_distance"] = qd + [float("nan")]
    k = min(int(n_eig), x.shape[0])
    if k > 0:
        jac = torch.Tensor(jacobian(model, x[:k], free.y[:k]))
        block = model.layout.variable_slice(model.activity)
        ev = torch.linalg.eigvals(jac[:, block, block])
        out["max_real_eig"] = float(ev.real.max())
    return out
