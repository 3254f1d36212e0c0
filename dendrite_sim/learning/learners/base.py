"""The learner protocol shared by every learning rule (module docstring of
:mod:`dendrite_sim.learning`), and the helpers its implementations share."""
from __future__ import annotations

import math

import torch

from dendrite_sim.errors import NumericalError
from dendrite_sim.dynamics.teaching import loss_value


#: the forward parameters of a layered network ``s(W h + b)`` (the default of
#: :attr:`Learner.forward_names`)
FORWARD_NAMES = ("W", "b")


def _forward_params(params, names=FORWARD_NAMES) -> dict:
    return {n: list(params[n]) for n in names}


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


def _layer_vectors(p: dict, depth: int) -> list[torch.Tensor]:
    """Per layer, the parameters of ``p`` (``{name: [per layer]}``) at that layer, flattened
    and concatenated (e.g. ``(W_i, b_i)``)."""
    return [torch.cat([v[k].reshape(-1) for v in p.values() if k < len(v) and v[k] is not None])
            for k in range(depth)]


def _cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    nu, nv = float(u.norm()), float(v.norm())
    if nu == 0.0 or nv == 0.0 or not (math.isfinite(nu) and math.isfinite(nv)):
        return float("nan")
    return float((u * v).sum()) / (nu * nv)


#: a parameter whose norm grows this many times its initial norm (at least 1) has run away
RUNAWAY = 1e4


def parameter_norms(params: dict) -> dict:
    """``{"W_1": ||W_1||, ...}`` of the parameters (``None`` entries skipped)."""
    return {f"{name}_{i}": float(p.detach().double().norm())
            for name, values in params.items() for i, p in enumerate(values, start=1)
            if p is not None}


#: growth (over max(1, the norm when training began)) that names a weight as the likely cause
GREW = 10.0


def _largest_growth(norms: dict, start: dict) -> tuple:
    """``(name, growth)`` of the parameter whose norm grew most since ``start`` (``(None,
    0.0)`` when there is nothing to compare); a non-finite norm counts as infinite growth."""
    growth = {k: v / max(start[k], 1.0) if math.isfinite(v) else math.inf
              for k, v in norms.items() if k in start}
    if not growth:
        return None, 0.0
    worst = max(growth, key=growth.get)
    return worst, growth[worst]


def growth_hint(norms: dict, start: dict) -> str:
    """Which parameter grew most since ``start`` (norms as :func:`parameter_norms`), as the
    likely cause of a failure, or that none grew much."""
    worst, growth = _largest_growth(norms, start)
    if worst is None:
        return ""
    if growth > GREW:
        return (f"{worst} grew from norm {start[worst]:.3g} to {norms[worst]:.3g} since "
                f"training began: lower the learning rate that updates {worst.rsplit('_', 1)[0]}")
    return (f"no weight grew much (at most {growth:.3g}x, {worst}): look at the "
            "nudge (eta_hat), the phase lengths, the state's range (a tanh inverse needs "
            "(-1, 1)) and mu (near 0.5 the equilibria are ill-conditioned)")


def _check_update(new: dict, current: dict, start: dict, runaway: float):
    """Refuse an update (``current`` -> ``new``) that leaves a parameter non-finite, or whose
    norm ran away (``runaway`` times its value in ``start``, when training began)."""
    norms = parameter_norms(new)          # in float64: not finite iff an entry is not
    bad = next((k for k, v in norms.items() if not math.isfinite(v)), None)
    if bad is not None:
        raise NumericalError(f"training diverged: {bad} is not finite after this update (not "
                             f"applied); likely cause: "
                             f"{growth_hint(parameter_norms(current), start)}")
    worst, growth = _largest_growth(norms, start)
    if growth > runaway:
        current_norms = parameter_norms(current)
        if _largest_growth(current_norms, start)[1] > GREW:     # an earlier update's doing
            cause = growth_hint(current_norms, start)
        else:
            cause = f"lower the learning rate that updates {worst.rsplit('_', 1)[0]}"
        raise NumericalError(f"training diverged: {worst} ran away (norm {start[worst]:.3g} when "
                             f"training began, {norms[worst]:.3g} after this update, not "
                             f"applied); likely cause: {cause}")


def _difference(new: dict, old: dict) -> dict:
    """``new - old`` for the names of ``old``."""
    return {n: [None if a is None else (a - b) for a, b in zip(new[n], old[n])] for n in old}


def _taken_step(new: dict, old: dict, scale: float, optimizer) -> dict:
    """``old + scale rule(new - old)`` for every parameter of ``new`` (``rule``: the update
    rule ``optimizer`` of :mod:`dendrite_sim.learning.optimizers`, or none)."""
    delta = {n: [None if p is None else p - o for p, o in zip(new[n], old[n])] for n in new}
    if optimizer is not None:
        delta = optimizer(delta)
    return {n: [p if d is None else o + scale * d for p, o, d in zip(new[n], old[n], delta[n])]
            for n in new}


class Learner:
    """Shared protocol. Subclasses implement ``predict``, ``propose``, ``commit``, ``params``,
    ``state_dict``/``load_state_dict`` and ``config``, and are registered with
    :func:`~dendrite_sim.learning.learners.register_learner`.

    ``forward_names``: the parameters whose change per layer ``step`` reports (``dW_norm``)
    and the gradient diagnostics compare with backprop; ``model`` (where the learner has one)
    is the network model whose forward map those parameters feed.
    """

    name = "learner"
    loss_name: str
    model = None
    forward_names: tuple = FORWARD_NAMES
    sizes: list
    dtype: torch.dtype
    device: torch.device
    eval_chunk = 1024
    dynamic = False
    #: a presentation whose equilibria did not converge: "stop", "skip" or "continue"
    on_unconverged = "continue"
    #: parameter norms at the first step (:meth:`step`), the reference of ``runaway``
    start_norms = None
    #: growth of a parameter's norm (over max(1, its norm at the first step)) that stops
    #: training as a run-away; ``math.inf`` to study divergence itself
    runaway = RUNAWAY

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

    def step(self, x, y, scale: float = 1.0, optimizer=None) -> dict:
        """One update on the mini-batch ``(x, y)``; returns ``info`` with ``sim_time``,
        ``nfev`` and ``dW_norm`` (per layer ``||Delta (W_i, b_i)||`` of the step taken).

        ``optimizer`` (an :class:`~dendrite_sim.learning.optimizers.UpdateRule`, e.g.
        ``Adam``; none: plain SGD) turns the proposed change into the step, and ``scale``
        multiplies that step (a step-size schedule, ``train(..., lr_decay=)``): for the
        quasi-static and discrete rules under SGD, whose change is proportional to their
        learning rates, the same as scaling every rate.

        An update that leaves a parameter non-finite, or grown :attr:`runaway` times its norm
        when training began (:attr:`start_norms`, taken at the first step), is not applied:
        ``NumericalError`` (the learning rates are too large for this network and data).
        """
        old = _forward_params(self.params, self.forward_names)
        if self.start_norms is None:
            self.start_norms = parameter_norms(self.params)
        try:
            new, info = self.propose(x, y)
        except NumericalError as err:
            raise NumericalError(f"{err}; likely cause: {self._likely_cause(x, y)}") from None
        if info.get("converged") is False and self.on_unconverged != "continue":
            why = ("this presentation has no stable equilibrium "
                   f"({info.get('failure') or 'not converged'})")
            if self.on_unconverged == "stop":
                raise NumericalError(f"{why}, so its weight change cannot be trusted; likely "
                                     f"cause: {self._likely_cause(x, y)} (on_unconverged = "
                                     "'skip' skips such batches)")
            info.update(skipped=True, dW_norm=[0.0] * (len(self.sizes) - 1))
            return info
        if scale != 1.0 or optimizer is not None:
            new = _taken_step(new, self.params, scale, optimizer)
        _check_update(new, self.params, self.start_norms, self.runaway)
        self.commit(new)
        delta = _layer_vectors(_difference(new, old), len(self.sizes) - 1)
        info["dW_norm"] = [float(v.norm()) for v in delta]
        return info

    def _likely_cause(self, x, y) -> str:
        """What looking at the learner finds (:meth:`failure_hints`), else which weight grew."""
        try:
            hints = self.failure_hints(x, y)
        except (NumericalError, ValueError, RuntimeError):
            hints = []
        return "; ".join(hints) or growth_hint(parameter_norms(self.params), self.start_norms)

    def failure_hints(self, x, y) -> list[str]:
        """Causes of a numerical failure on the batch ``(x, y)`` found by looking at the
        learner's own state (e.g. a target outside a transfer's inverse domain); default
        none."""
        return []

    def state_dict(self) -> dict:
        """``{"params": copies of}`` :attr:`params` (a learner with more state extends it)."""
        return {"params": {n: [None if p is None else p.detach().clone() for p in v]
                           for n, v in self.params.items()}}

    def load_state_dict(self, d):
        """Install the parameters of :meth:`state_dict` (checked against the current ones)."""
        self.commit(_load_params(self.params, d["params"]))

    # -- to implement ----------------------------------------------------------------------
    def predict(self, x):
        raise NotImplementedError

    def propose(self, x, y):
        """``(new params, info)`` of one update from the current weights, not applied."""
        raise NotImplementedError

    def commit(self, new):
        raise NotImplementedError


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
