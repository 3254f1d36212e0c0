"""Training loops, the like-for-like backprop baseline, learning diagnostics and run I/O.

Learners
--------
Every learner follows one protocol::

    info = learner.step(x, y)      # one mini-batch update; returns a dict (sim_time, nfev, ...)
    out = learner.predict(x)       # (B, n_L) network output
    value = learner.loss(x, y)     # mean loss over the batch
    learner.params                 # {"W": [...], "b": [...], ...} (list index i-1 = layer i)
    learner.state_dict() / learner.load_state_dict(d)

``y`` is ``(B,)`` int64 class labels (classification) or ``(B, n_L)`` float targets
(regression). Losses are those of :mod:`dendrite_sim.teaching`, per example and summed over
output units, averaged over the batch: ``cross_entropy`` (labels become one-hot) or
``mse`` = ``1/2 ||h_L - y||^2`` (labels become one-hot targets).

* :class:`DendriticLearner` shows each mini-batch to a network model through
  :func:`dendrite_sim.learning.present` with the teaching signal ``Nudge(y, loss, eta_hat)``
  and keeps the weights the presentation ends with. Its prediction is the output of the *free*
  equilibrium (``fixed_point`` with no teaching; with exact inverses that is the forward pass).
* :class:`BackpropLearner` is the baseline: the same architecture (``model.pathways``), the
  same initial ``W, b`` (copied), the output ``f_L(...f_1(x))`` of the forward pass, trained by
  plain SGD on the same batch-mean loss with autograd.

Diagnostics (SPEC §4)
---------------------
Every ``diagnostics_every`` batches :func:`train` takes a *trial* update of the learner on a
fixed probe batch of training examples (the update the learner would make from its current
weights, not applied) and records per layer ``i = 1..L`` (arrays ``(n_samples, L)``; ``NaN``
where a quantity does not exist):

``dW_norm``        ``||Delta theta_i||`` of the trial update, ``theta_i = (W_i, b_i)`` flattened.
``step_dW_norm``   ``||Delta theta_i||`` of the training step actually taken at that batch.
``cos_bp``         cosine between ``Delta theta_i`` and ``-dLoss/dtheta_i``, the backprop
                   gradient of the batch-mean loss of the forward pass at the same weights
                   (autograd).
``cos_gn``         cosine between ``Delta theta_i`` and the Gauss–Newton (target propagation)
                   direction (:func:`gauss_newton_direction`; exact GN where the layers above
                   are square and invertible, layer-wise pseudo-inverses where they contract).
``recon_error``    batch mean of ``||g_i(f_{i+1}(h_i)) - h_i||`` at the free equilibrium
                   (``i < L``; feedback maps only; ~0 for exact inverses).
``q_distance``     ``||Q_i - W_{i+1}^+||_F / ||W_{i+1}^+||_F`` (learned feedback only).
``useful_signal``  batch mean of ``||d^n_i - d^f_i||``, ``d_i = h_i - f_i(h_{i-1})`` the
                   deviation from the forward map at the nudged (``n``, teaching
                   ``Nudge(y, loss, eta_hat)``) and free (``f``) equilibria: the learning
                   signal.
``recon_deviation`` batch mean of ``||d^f_i||``: what reconstruction errors alone put there.

and per sample ``max_real_eig``: the largest real part of the eigenvalues of the Jacobian of
the activity block (``d(dh/dt)/dh``; slow memory traces such as two-phase DTP's ``z`` feed
nothing back, so the full Jacobian is block triangular and these are its neural eigenvalues) at
the free equilibrium, maximised over the first ``n_eig`` probe examples.

Runs on disk
------------
With ``out_dir``, :func:`train` writes ``trajectory.npz`` (every recorded array,
``np.savez_compressed``), ``summary.json`` (final metrics, configuration, timing) and
``checkpoint.pt`` (learner state, shuffling RNG state, position, history) at every evaluation,
each atomically (temporary file in the same directory, then ``os.replace``).
``resume=True`` continues from the checkpoint and gives the same history and weights as an
uninterrupted run (wall-clock times aside).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .files import atomic_write
from .errors import NumericalError, all_finite, check_range
from .teaching import LOSSES, Nudge, loss_gradient, loss_value

__all__ = ["DendriticLearner", "BackpropLearner", "History", "train", "plot_history",
           "layer_diagnostics", "backprop_gradient", "gauss_newton_direction",
           "forward_layers", "LAYER_DIAGNOSTICS", "SCALAR_DIAGNOSTICS"]

LAYER_DIAGNOSTICS = ("dW_norm", "step_dW_norm", "cos_bp", "cos_gn", "recon_error",
                     "q_distance", "useful_signal", "recon_deviation")
SCALAR_DIAGNOSTICS = ("max_real_eig",)
EVAL_KEYS = ("examples", "epoch", "batches", "sim_time", "wall_time", "step_wall_time",
             "train_loss", "train_accuracy", "test_loss", "test_accuracy")
FORWARD_NAMES = ("W", "b")
FILES = ("trajectory.npz", "summary.json", "checkpoint.pt")


# ============================================================================================
# losses and the forward pass
# ============================================================================================
def _check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}; got {loss!r}")
    return loss


def loss_target(y: torch.Tensor, width: int, dtype) -> torch.Tensor:
    """``(B, n_L)`` float target: one-hot rows for integer labels, ``y`` itself otherwise."""
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"y must be a torch.Tensor; got {type(y).__name__}")
    if y.dim() == 1 and not y.is_floating_point():
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= width):
            raise ValueError(f"y: class labels must lie in [0, {width - 1}]; got values in "
                             f"[{int(y.min())}, {int(y.max())}]")
        return torch.nn.functional.one_hot(y, width).to(dtype)
    if y.dim() == 1:
        y = y.unsqueeze(0)
    if y.dim() != 2 or y.shape[1] != width:
        raise ValueError(f"y must be (B,) integer labels or a (B, {width}) tensor; got shape "
                         f"{tuple(y.shape)}")
    return y.to(dtype)


def forward_layers(pathways, params, x) -> list[torch.Tensor]:
    """``[x, h_1, ..., h_L]`` of the forward pass ``h_i = f_i(h_{i-1})``."""
    h = [x]
    for i in range(1, pathways.depth + 1):
        h.append(pathways.forward(i, h[-1], params))
    return h


def _forward_params(params) -> dict:
    return {n: list(params[n]) for n in FORWARD_NAMES}


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


def _layer_vectors(p: dict, depth: int) -> list[torch.Tensor]:
    """Per-layer flattened ``(W_i, b_i)``."""
    out = []
    for k in range(depth):
        parts = [p["W"][k].reshape(-1)]
        if p["b"][k] is not None:
            parts.append(p["b"][k].reshape(-1))
        out.append(torch.cat(parts))
    return out


def _cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    nu, nv = float(u.norm()), float(v.norm())
    if nu == 0.0 or nv == 0.0 or not (math.isfinite(nu) and math.isfinite(nv)):
        return float("nan")
    return float((u * v).sum()) / (nu * nv)


def _check_finite_params(params: dict):
    for name, values in params.items():
        for i, p in enumerate(values, start=1):
            if p is not None and not all_finite(p):
                raise NumericalError(f"training diverged: {name}_{i} is not finite after this "
                                     "update (not applied); lower the learning rates")


def _difference(new: dict, old: dict) -> dict:
    return {n: [None if a is None else (a - b) for a, b in zip(new[n], old[n])]
            for n in FORWARD_NAMES}


# ============================================================================================
# learners
# ============================================================================================
class _Learner:
    """Shared protocol. Subclasses implement ``predict``, ``propose``, ``commit``, ``params``,
    ``state_dict``/``load_state_dict`` and ``config``."""

    loss_name: str
    pathways = None
    sizes: list
    dtype: torch.dtype
    device: torch.device
    eval_chunk = 1024
    dynamic = False

    def _target(self, y):
        return loss_target(y, self.sizes[-1], self.dtype)

    def loss(self, x, y) -> float:
        """Batch-mean loss of :meth:`predict` against ``y``."""
        return float(loss_value(self.loss_name, self.predict(x), self._target(y)).mean())

    def evaluate(self, x, y) -> tuple[float, float]:
        """``(mean loss, accuracy)`` over a whole set, in chunks; accuracy is NaN for
        regression targets."""
        if x.shape[0] == 0:
            return float("nan"), float("nan")
        total, correct = 0.0, 0
        classify = y.dim() == 1 and not y.is_floating_point()
        for start in range(0, x.shape[0], self.eval_chunk):
            xs, ys = x[start:start + self.eval_chunk], y[start:start + self.eval_chunk]
            out = self.predict(xs)
            total += float(loss_value(self.loss_name, out, self._target(ys)).sum())
            if classify:
                correct += int((out.argmax(-1) == ys).sum())
        n = x.shape[0]
        return total / n, (correct / n if classify else float("nan"))

    def step(self, x, y) -> dict:
        """One update on the mini-batch ``(x, y)``; returns ``info`` with ``sim_time``,
        ``nfev`` and ``dW_norm`` (per layer ``||Delta (W_i, b_i)||``).

        An update that leaves a parameter non-finite is not applied: ``NumericalError`` (the
        learning rates are too large for this network and data).
        """
        old = _forward_params(self.params)
        new, info = self.propose(x, y)
        _check_finite_params(new)
        self.commit(new)
        delta = _layer_vectors(_difference(new, old), len(self.sizes) - 1)
        info["dW_norm"] = [float(v.norm()) for v in delta]
        return info

    # -- to implement ----------------------------------------------------------------------
    def predict(self, x):
        raise NotImplementedError

    def propose(self, x, y):
        """``(new params, info)`` of one update from the current weights, not applied."""
        raise NotImplementedError

    def commit(self, new):
        raise NotImplementedError


class BackpropLearner(_Learner):
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


class DendriticLearner(_Learner):
    """Learning by presenting each mini-batch to the dynamical network.

    Parameters
    ----------
    model : a network model with plasticity (``Mixture``, ``TwoPhaseDTP``, ...); its
        parameters are updated in place (``model.params`` lists).
    schedule : a :class:`dendrite_sim.schedule.Schedule`; default ``model.default_schedule()``.
    mode : ``"quasi_static"`` or ``"coupled"`` (see :func:`dendrite_sim.learning.present`).
    loss : ``"cross_entropy"`` or ``"mse"``: the loss of the output nudge.
    eta_hat : output step size of ``Nudge(y, loss, eta_hat)``, > 0.
    present_kwargs : extra keyword arguments for ``present`` (tolerances, ...); for coupled
        training ``{"method": "heun3", "step_size": 1.25 * tau}`` is ~7x faster than the
        default dopri5 and nearly as accurate (``present``'s docstring; CLI: ``--set
        solver.method=heun3 --set solver.step_size=1.25``).
    fixed_point_kwargs : extra keyword arguments for the ``fixed_point`` of :meth:`predict`.
    """

    MODES = ("quasi_static", "coupled")
    #: has neural dynamics: equilibria, reconstruction errors and spectra are diagnosed
    dynamic = True

    def __init__(self, model, schedule=None, mode="quasi_static", loss="cross_entropy",
                 eta_hat=0.1, present_kwargs=None, fixed_point_kwargs=None):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}; got {mode!r}")
        self.eta_hat = check_range("eta_hat", eta_hat, low=0.0, low_open=True)
        self.loss_name = _check_loss(loss)
        if schedule is None:
            if not hasattr(model, "default_schedule"):
                raise ValueError(f"schedule is required: {type(model).__name__} has no "
                                 "default_schedule()")
            schedule = model.default_schedule()
        self.model, self.schedule, self.mode = model, schedule, mode
        self.pathways = getattr(model, "pathways", None)
        self.sizes, self.dtype, self.device = list(model.sizes), model.dtype, model.device
        self.present_kwargs = dict(present_kwargs or {})
        self.fixed_point_kwargs = dict(fixed_point_kwargs or {})
        self.unconverged = 0  # free equilibria of predict() that did not converge
        self.unconverged_presentations = 0  # presentations with an unconverged phase

    @property
    def params(self) -> dict:
        return self.model.params

    def teaching(self, y) -> Nudge:
        return Nudge(self._target(y), self.loss_name, self.eta_hat)

    def free_equilibrium(self, x):
        from .equilibrium import fixed_point
        eq = fixed_point(self.model, x, None, **self.fixed_point_kwargs)
        self.unconverged += int((~eq.converged).sum())
        return eq

    def predict(self, x):
        return self.free_equilibrium(x).layers[-1]

    def propose(self, x, y):
        from .learning import present
        kwargs = {"end_state": False, **self.present_kwargs}   # only the weights are kept
        pres = present(self.model, x, self.teaching(y), self.schedule, mode=self.mode,
                       params=self.model.params, **kwargs)
        new = {n: [None if p is None else p.detach() for p in pres.params[n]]
               for n in self.model.params}
        converged = bool(getattr(pres, "converged", True))
        self.unconverged_presentations += int(not converged)
        return new, {"sim_time": float(pres.sim_time), "nfev": int(pres.nfev),
                     "converged": converged}

    def commit(self, new):
        for n, values in new.items():
            current = self.model.params[n]
            for k, p in enumerate(values):
                current[k] = p

    def state_dict(self) -> dict:
        return {"params": {n: [None if p is None else p.detach().clone() for p in v]
                           for n, v in self.model.params.items()}}

    def load_state_dict(self, d):
        new = _load_params(self.model.params, d["params"])
        self.commit(new)

    def config(self) -> dict:
        model = self.model
        hyper = {k: v for k, v in vars(model).items()
                 if not k.startswith("_") and _jsonable_scalar_or_list(v)}
        if self.pathways is not None:
            hyper.update(feedback=self.pathways.feedback, form=self.pathways.form,
                         transfers=[repr(t) for t in self.pathways.transfers])
        return {"learner": "dendritic", "model": type(model).__name__, "sizes": self.sizes,
                "mode": self.mode, "loss": self.loss_name, "eta_hat": self.eta_hat,
                "schedule": repr(self.schedule), "model_hyper": hyper}


def _jsonable_scalar_or_list(v) -> bool:
    if isinstance(v, (bool, int, float, str)) or v is None:
        return True
    return isinstance(v, (list, tuple)) and all(isinstance(e, (bool, int, float, str))
                                                for e in v)


def _load_params(current: dict, saved: dict) -> dict:
    out = {}
    for n, values in current.items():
        if n not in saved or len(saved[n]) != len(values):
            raise ValueError(f"state dict does not match the learner: parameter {n!r}")
        new = []
        for k, (p, q) in enumerate(zip(values, saved[n])):
            if (p is None) != (q is None) or (p is not None and p.shape != q.shape):
                raise ValueError(f"state dict does not match the learner: {n}[{k}]")
            new.append(None if q is None else q.detach().clone().to(p.dtype))
        out[n] = new
    return out


def _check_batch(x, width):
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != width:
        raise ValueError(f"x must be a (B, {width}) tensor; got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)}")


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
    from .equilibrium import fixed_point
    from .spectral import jacobian

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


# ============================================================================================
# history
# ============================================================================================
@dataclass
class History:
    """Everything a :func:`train` run records (numpy arrays).

    Evaluation points (length ``n_eval``): ``examples`` seen, ``epoch`` (fractional),
    ``batches``, cumulative simulated time ``sim_time``, cumulative ``wall_time`` and
    ``step_wall_time`` (time spent in ``learner.step`` only), ``train_loss``,
    ``train_accuracy``, ``test_loss``, ``test_accuracy`` (accuracy NaN for regression).

    Diagnostic samples (length ``n_diag``): ``diag_examples``, ``diag_batches``,
    ``diag_sim_time`` and ``diagnostics[name]``: ``(n_diag, L)`` per layer for
    :data:`LAYER_DIAGNOSTICS`, ``(n_diag,)`` for :data:`SCALAR_DIAGNOSTICS`.
    """

    examples: np.ndarray
    epoch: np.ndarray
    batches: np.ndarray
    sim_time: np.ndarray
    wall_time: np.ndarray
    step_wall_time: np.ndarray
    train_loss: np.ndarray
    train_accuracy: np.ndarray
    test_loss: np.ndarray
    test_accuracy: np.ndarray
    diag_examples: np.ndarray
    diag_batches: np.ndarray
    diag_sim_time: np.ndarray
    diagnostics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    @classmethod
    def from_records(cls, records: dict, depth: int, config: dict) -> "History":
        ev = {k: np.asarray(records["eval"][k], dtype=np.float64) for k in EVAL_KEYS}
        for k in ("examples", "batches"):
            ev[k] = ev[k].astype(np.int64)
        dg = records["diag"]
        diagnostics = {}
        for name in LAYER_DIAGNOSTICS:
            diagnostics[name] = np.asarray(dg[name], dtype=np.float64).reshape(-1, depth)
        for name in SCALAR_DIAGNOSTICS:
            diagnostics[name] = np.asarray(dg[name], dtype=np.float64).reshape(-1)
        return cls(**ev, diag_examples=np.asarray(dg["examples"], dtype=np.int64),
                   diag_batches=np.asarray(dg["batches"], dtype=np.int64),
                   diag_sim_time=np.asarray(dg["sim_time"], dtype=np.float64),
                   diagnostics=diagnostics, config=dict(config))

    def arrays(self) -> dict:
        """Flat ``{key: array}``: the evaluation keys, ``diag_examples``, ``diag_batches``,
        ``diag_sim_time`` and ``diag_<name>`` for each diagnostic."""
        out = {k: getattr(self, k) for k in EVAL_KEYS}
        out.update(diag_examples=self.diag_examples, diag_batches=self.diag_batches,
                   diag_sim_time=self.diag_sim_time)
        out.update({f"diag_{k}": v for k, v in self.diagnostics.items()})
        return out

    def learning_curves(self) -> dict:
        """``{examples, train_loss, test_loss[, train_accuracy, test_accuracy]}`` for
        :func:`dendrite_sim.plots.plot_learning_curves`."""
        out = {"examples": self.examples, "train_loss": self.train_loss,
               "test_loss": self.test_loss}
        if np.isfinite(self.test_accuracy).any() or np.isfinite(self.train_accuracy).any():
            out.update(train_accuracy=self.train_accuracy, test_accuracy=self.test_accuracy)
        return out

    def final(self) -> dict:
        """The last evaluation point as plain floats (empty history: NaNs)."""
        out = {}
        for k in EVAL_KEYS:
            v = getattr(self, k)
            out[k] = float(v[-1]) if len(v) else float("nan")
        return out

    def to_npz(self, path) -> Path:
        """Write every array (and the configuration as JSON text) atomically."""
        arrays = self.arrays()
        arrays["config_json"] = np.array(json.dumps(self.config, default=str))
        return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))

    @classmethod
    def from_npz(cls, path) -> "History":
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        config = json.loads(str(data.pop("config_json"))) if "config_json" in data else {}
        diagnostics = {k[len("diag_"):]: data.pop(k) for k in list(data)
                       if k.startswith("diag_") and k not in
                       ("diag_examples", "diag_batches", "diag_sim_time")}
        return cls(**{k: data[k] for k in EVAL_KEYS}, diag_examples=data["diag_examples"],
                   diag_batches=data["diag_batches"], diag_sim_time=data["diag_sim_time"],
                   diagnostics=diagnostics, config=config)


def _empty_records() -> dict:
    diag = {name: [] for name in LAYER_DIAGNOSTICS + SCALAR_DIAGNOSTICS}
    diag.update(examples=[], batches=[], sim_time=[])
    return {"eval": {k: [] for k in EVAL_KEYS}, "diag": diag}


# ============================================================================================
# atomic files
# ============================================================================================
def _write_json(path, obj) -> Path:
    text = json.dumps(obj, indent=2, default=str, allow_nan=True).encode()
    return atomic_write(path, lambda f: f.write(text))


# ============================================================================================
# the training loop
# ============================================================================================
class _Progress:
    """A one-line progress bar on stderr (no dependency)."""

    def __init__(self, enabled: bool, total: int, width: int = 24):
        self.enabled, self.total, self.width = enabled, max(total, 1), width
        self.start = time.perf_counter()

    def update(self, done: int, note: str = ""):
        if not self.enabled:
            return
        frac = min(done / self.total, 1.0)
        filled = int(round(frac * self.width))
        elapsed = time.perf_counter() - self.start
        bar = "#" * filled + "." * (self.width - filled)
        sys.stderr.write(f"\r[{bar}] {done}/{self.total} {elapsed:6.1f}s {note}   ")
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _check_int(name, value, low=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    return int(value)


def _as_dataset(data):
    from .data import Dataset, load_dataset
    if isinstance(data, str):
        return load_dataset(data)
    if not isinstance(data, Dataset):
        raise ValueError("data must be a dendrite_sim.data.Dataset or a data set name for "
                         f"load_dataset; got {type(data).__name__}")
    return data


def _check_data(data, learner):
    n_in, n_out = learner.sizes[0], learner.sizes[-1]
    if len(data.x_train) == 0:
        raise ValueError("data has no training examples (empty x_train)")
    for split in ("train", "test"):
        x = getattr(data, f"x_{split}")
        if len(x) and (x.ndim != 2 or x.shape[1] != n_in):
            raise ValueError(f"data: x_{split} has shape {x.shape} but the model input width "
                             f"is {n_in}")
        if len(x) and not np.isfinite(x).all():
            raise ValueError(f"data: x_{split} contains NaN or inf")
        y = getattr(data, f"y_{split}")
        if data.task == "classification":
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_out):
                raise ValueError(f"data: y_{split} labels must lie in [0, {n_out - 1}] (the "
                                 f"model has {n_out} outputs); got [{int(y.min())}, "
                                 f"{int(y.max())}]")
        elif len(y) and (y.ndim != 2 or y.shape[1] != n_out):
            raise ValueError(f"data: y_{split} has shape {y.shape} but the model output width "
                             f"is {n_out}")
    if data.task == "regression" and learner.loss_name != "mse":
        raise ValueError(f"loss {learner.loss_name!r} needs class labels; data "
                         f"{data.name!r} is a regression task (use loss='mse')")


def train(learner, data, *, epochs, batch_size=32, eval_every=1, seed=0, out_dir=None,
          resume=False, progress=True, diagnostics_every=None, max_eval=None, probe_size=None,
          n_eig=4, overwrite=False) -> History:
    """Train ``learner`` on ``data`` with seeded shuffled mini-batches; return the History.

    Parameters
    ----------
    learner : a learner (:class:`DendriticLearner`, :class:`BackpropLearner`) or a network
        model (wrapped in ``DendriticLearner(model)``, which needs ``default_schedule``).
    data : a :class:`dendrite_sim.data.Dataset`, or a name for ``load_dataset``.
    epochs : total number of epochs (with ``resume``, the total including those done).
    batch_size : mini-batch size (the last batch of an epoch may be smaller).
    eval_every : evaluation interval in epochs (fractions allowed: rounded to whole batches,
        at least one); the initial weights and the end of training are always evaluated.
    seed : seeds the shuffling, the probe batch and the evaluation subsets.
    out_dir : if given, ``trajectory.npz``, ``summary.json`` and ``checkpoint.pt`` are written
        there (atomically) at every evaluation.
    resume : continue from ``out_dir/checkpoint.pt`` (same configuration required); with no
        files in ``out_dir`` the run starts from scratch.
    progress : a progress line on stderr.
    diagnostics_every : sample the diagnostics every this many batches (default: at every
        evaluation); ``0`` disables them.
    max_eval : evaluate train and test metrics on at most this many examples each (a fixed
        seeded subset of the training set, the first ``max_eval`` test examples).
    probe_size : size of the fixed probe batch of training examples (default ``batch_size``).
    n_eig : examples of the probe batch whose spectrum is computed (0: none).
    overwrite : allow a fresh run (``resume=False``) to replace the files of an earlier run in
        ``out_dir``; otherwise that raises ``FileExistsError``.
    """
    if not hasattr(learner, "step"):
        learner = DendriticLearner(learner)
    data = _as_dataset(data)
    epochs = _check_int("epochs", epochs)
    batch_size = _check_int("batch_size", batch_size)
    eval_every = check_range("eval_every", eval_every, low=0.0, low_open=True)
    seed = _check_int("seed", seed, low=0)
    if max_eval is not None:
        max_eval = _check_int("max_eval", max_eval)
    n_eig = _check_int("n_eig", n_eig, low=0)
    _check_data(data, learner)

    x_tr, y_tr, x_te, y_te = data.tensors(dtype=learner.dtype, device=learner.device)
    n = x_tr.shape[0]
    per_epoch = -(-n // batch_size)
    total = epochs * per_epoch
    eval_steps = max(1, int(round(eval_every * per_epoch)))
    if diagnostics_every is None:
        diag_steps = eval_steps
    else:
        diag_steps = _check_int("diagnostics_every", diagnostics_every, low=0)
    probe_size = batch_size if probe_size is None else _check_int("probe_size", probe_size)

    # fixed subsets from a generator separate from the shuffling stream
    sub = torch.Generator().manual_seed(seed + 7919)
    probe = torch.randperm(n, generator=sub)[:probe_size]
    train_eval = torch.randperm(n, generator=sub)[:max_eval] if max_eval else torch.arange(n)
    test_eval = slice(0, max_eval) if max_eval else slice(None)
    xe_tr, ye_tr = x_tr[train_eval], y_tr[train_eval]
    xe_te, ye_te = x_te[test_eval], y_te[test_eval]
    xp, yp = x_tr[probe], y_tr[probe]

    config = {"learner": learner.config(), "data": data.name, "n_train": n,
              "n_test": int(x_te.shape[0]), "batch_size": batch_size, "seed": seed,
              "eval_every_batches": eval_steps, "diagnostics_every": diag_steps,
              "max_eval": max_eval, "probe_size": probe_size, "n_eig": n_eig,
              "dtype": str(learner.dtype)}
    depth = len(learner.sizes) - 1

    out = None if out_dir is None else Path(out_dir)
    ckpt_path = None if out is None else out / "checkpoint.pt"
    gen = torch.Generator().manual_seed(seed)
    state = {"step": 0, "epoch": 0, "pos": 0, "perm": None, "examples": 0, "sim_time": 0.0,
             "wall_time": 0.0, "step_wall_time": 0.0, "records": _empty_records()}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        existing = [f for f in FILES if (out / f).exists()]
        if resume and ckpt_path.exists():
            ckpt = torch.load(ckpt_path, weights_only=True)
            _check_resume_config(ckpt["config"], config)
            learner.load_state_dict(ckpt["learner"])
            gen.set_state(ckpt["rng"])
            state = {k: ckpt[k] for k in state}
        elif existing and not overwrite:
            hint = ("resume=True found no checkpoint.pt to continue from; pass "
                    "overwrite=True to start afresh there, or another out_dir") if resume else \
                ("pass resume=True to continue it, overwrite=True to replace it, or another "
                 "out_dir")
            raise FileExistsError(f"out_dir {str(out)!r} already holds {existing} of an earlier "
                                  f"run; {hint}")
    records = state["records"]
    bar = _Progress(progress, total)
    clock = time.perf_counter()
    wall0 = state["wall_time"]

    def wall():
        return wall0 + time.perf_counter() - clock

    def evaluate():
        tr = learner.evaluate(xe_tr, ye_tr)
        te = learner.evaluate(xe_te, ye_te)
        values = {"examples": state["examples"], "epoch": state["step"] / per_epoch,
                  "batches": state["step"], "sim_time": state["sim_time"],
                  "wall_time": wall(), "step_wall_time": state["step_wall_time"],
                  "train_loss": tr[0], "train_accuracy": tr[1], "test_loss": te[0],
                  "test_accuracy": te[1]}
        for k, v in values.items():
            records["eval"][k].append(float(v))

    def save(done: bool):
        if out is None:
            return
        state["wall_time"] = wall()
        hist = History.from_records(records, depth, config)
        hist.to_npz(out / "trajectory.npz")
        summary = _summary(hist, config, state, per_epoch, total, done)
        summary["solver"] = {k: getattr(learner, k) for k in
                             ("unconverged", "unconverged_presentations")
                             if hasattr(learner, k)}
        _write_json(out / "summary.json", summary)
        payload = {k: state[k] for k in state}
        payload.update(learner=learner.state_dict(), rng=gen.get_state(), config=config)
        atomic_write(ckpt_path, lambda f: torch.save(payload, f))

    if state["step"] == 0 and not records["eval"]["examples"]:
        evaluate()
        save(done=total == 0)
    try:
        while state["step"] < total:
            if state["pos"] == 0 or state["perm"] is None:
                state["perm"] = torch.randperm(n, generator=gen)
            idx = state["perm"][state["pos"] * batch_size:(state["pos"] + 1) * batch_size]
            diag_now = diag_steps > 0 and state["step"] % diag_steps == 0
            if diag_now:
                values = layer_diagnostics(learner, xp, yp, n_eig=n_eig)
                dg = records["diag"]
                for name in LAYER_DIAGNOSTICS + SCALAR_DIAGNOSTICS:
                    if name != "step_dW_norm":
                        dg[name].append(values[name])
                dg["examples"].append(state["examples"])
                dg["batches"].append(state["step"])
                dg["sim_time"].append(state["sim_time"])
            t0 = time.perf_counter()
            info = learner.step(x_tr[idx], y_tr[idx])
            state["step_wall_time"] += time.perf_counter() - t0
            if diag_now:
                records["diag"]["step_dW_norm"].append(info["dW_norm"])
            state["step"] += 1
            state["pos"] += 1
            state["examples"] += int(idx.numel())
            state["sim_time"] += float(info.get("sim_time", 0.0))
            if state["pos"] == per_epoch:
                state["pos"], state["epoch"], state["perm"] = 0, state["epoch"] + 1, None
            if state["step"] % eval_steps == 0 or state["step"] == total:
                evaluate()
                save(done=state["step"] == total)
            last = records["eval"]
            note = f"epoch {state['step'] / per_epoch:.2f}"
            if last["test_loss"]:
                note += f" test_loss {last['test_loss'][-1]:.4g}"
                if math.isfinite(last["test_accuracy"][-1]):
                    note += f" test_acc {last['test_accuracy'][-1]:.4f}"
            bar.update(state["step"], note)
    finally:
        bar.close()
    return History.from_records(records, depth, config)


def _check_resume_config(saved: dict, current: dict):
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if diff:
        raise ValueError(f"resume: the checkpoint was made with a different configuration "
                         f"({', '.join(diff)} differ); use the same learner, data, batch_size, "
                         "seed and evaluation settings, or another out_dir")


def _summary(hist: History, config: dict, state: dict, per_epoch: int, total: int,
             done: bool) -> dict:
    final = hist.final()
    epochs_done = state["step"] / per_epoch if per_epoch else 0.0
    best = float(np.nanmax(hist.test_accuracy)) if np.isfinite(hist.test_accuracy).any() \
        else float("nan")
    return {
        "complete": bool(done),
        "final": final,
        "best_test_accuracy": best,
        "initial": {k: float(getattr(hist, k)[0]) for k in
                    ("train_loss", "train_accuracy", "test_loss", "test_accuracy")}
        if len(hist.examples) else {},
        "config": config,
        "timing": {"wall_time_s": state["wall_time"],
                   "step_wall_time_s": state["step_wall_time"],
                   "step_wall_time_per_epoch_s": state["step_wall_time"] / epochs_done
                   if epochs_done else float("nan"),
                   "sim_time": state["sim_time"], "batches": state["step"],
                   "batches_total": total, "epochs_done": epochs_done},
    }


# ============================================================================================
# figures
# ============================================================================================
def plot_history(history: History, out_dir) -> list[Path]:
    """Write ``learning_curves.png`` (loss/accuracy against examples),
    ``learning_curves_time.png`` (against simulated time, when it advances),
    ``alignment.png`` (per-layer ``cos_bp``, ``cos_gn``, weight-change norms) and
    ``diagnostics.png`` (reconstruction, Q distance, signal sizes, max real eigenvalue)
    into ``out_dir``; diagnostics that are NaN throughout are left out. Returns the paths."""
    from . import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    curves = history.learning_curves()
    if len(history.examples):
        paths.append(plots.save(plots.plot_learning_curves(curves), out / "learning_curves.png"))
        if np.ptp(history.sim_time) > 0:
            timed = {"time": history.sim_time,
                     **{k: v for k, v in curves.items() if k != "examples"}}
            paths.append(plots.save(plots.plot_learning_curves(timed, x="time"),
                                    out / "learning_curves_time.png"))
    groups = {"alignment.png": ("cos_bp", "cos_gn", "dW_norm", "step_dW_norm"),
              "diagnostics.png": ("recon_error", "q_distance", "useful_signal",
                                  "recon_deviation", "max_real_eig")}
    if len(history.diag_examples):
        for name, keys in groups.items():
            panels = {k: history.diagnostics[k] for k in keys
                      if k in history.diagnostics and np.isfinite(history.diagnostics[k]).any()}
            if panels:
                fig = plots.plot_layer_diagnostics(panels, steps=history.diag_examples)
                fig.axes[-1].set_xlabel("examples")
                paths.append(plots.save(fig, out / name))
    return paths
