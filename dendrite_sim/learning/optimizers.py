"""Update rules: how a learner's proposed change of its parameters becomes the step taken.

Every learner proposes a change ``Delta theta`` for a mini-batch (for backprop ``-lr grad``;
for the dendritic learners the weight change a presentation integrates, docs/design.md).
:func:`~dendrite_sim.learning.train` applies it through an update rule, the same for every
learner of a comparison:

* :class:`SGD` -- the change as proposed (the default; the sources' rules).
* :class:`Momentum` -- heavy ball, ``v <- beta v + Delta``, the step is ``v``; with
  ``Delta = -lr grad`` this is ``torch.optim.SGD(momentum=beta)``.
* :class:`Adam` -- Kingma & Ba (2015) with ``-Delta`` in place of the gradient: ``m <- b1 m +
  (1 - b1) Delta``, ``v <- b2 v + (1 - b2) Delta^2``, the step is ``lr m_hat / (sqrt(v_hat) +
  eps)`` with the bias corrections ``m_hat = m / (1 - b1^t)``, ``v_hat = v / (1 - b2^t)``. The
  step is invariant to the scale of ``Delta`` except through ``eps`` (in units of ``Delta``),
  so the learner's own rates set only the direction. Deep Feedback Control (Meulemans et al.,
  2021) trains its controller-driven updates this way.

A rule owns its state (one entry per parameter), saved in the run's checkpoint
(:meth:`UpdateRule.state_dict`), so a resumed run continues bit for bit.
"""
from __future__ import annotations

import inspect

import torch

from dendrite_sim.errors import check_range

__all__ = ["UpdateRule", "SGD", "Momentum", "Adam", "UPDATE_RULES", "make_update_rule"]


class UpdateRule:
    """``rule(delta)`` -> the step: ``delta`` and the result are ``{name: [tensor or None per
    layer]}`` (the learner's parameter layout)."""

    name = "rule"

    def __init__(self):
        self.t = 0                      # steps taken
        self.buffers: dict = {}         # per parameter ("W_1", ...): its state tensors

    def __call__(self, delta: dict) -> dict:
        self.t += 1
        return {n: [None if d is None else self._step(f"{n}_{k}", d)
                    for k, d in enumerate(values, start=1)] for n, values in delta.items()}

    def _step(self, key: str, delta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def config(self) -> dict:
        """The settings, JSON-able (part of a run's configuration)."""
        return {"name": self.name}

    def state_dict(self) -> dict:
        return {"t": self.t, "buffers": {k: [b.clone() for b in v]
                                         for k, v in self.buffers.items()}}

    def load_state_dict(self, d: dict):
        self.t = int(d["t"])
        self.buffers = {k: [b.clone() for b in v] for k, v in d["buffers"].items()}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class SGD(UpdateRule):
    """The proposed change as it is."""

    name = "sgd"

    def _step(self, key, delta):
        return delta


class Momentum(UpdateRule):
    """Heavy ball: ``v <- beta v + Delta``; the step is ``v``. ``beta`` in [0, 1)."""

    name = "momentum"

    def __init__(self, beta: float = 0.9):
        super().__init__()
        self.beta = check_range("momentum", beta, low=0.0, high=1.0, high_open=True)

    def _step(self, key, delta):
        if key not in self.buffers:
            self.buffers[key] = [delta.clone()]
        else:
            self.buffers[key][0].mul_(self.beta).add_(delta)
        return self.buffers[key][0].clone()

    def config(self):
        return {"name": self.name, "momentum": self.beta}


class Adam(UpdateRule):
    """Adam on the proposed change (module docstring). ``lr`` > 0 is the step size (the
    learner's rates no longer set it), ``momentum`` = beta_1 and ``beta2`` in [0, 1), ``eps``
    > 0 in units of the proposed change."""

    name = "adam"

    def __init__(self, lr: float = 1e-3, momentum: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8):
        super().__init__()
        self.lr = check_range("lr", lr, low=0.0, low_open=True)
        self.beta1 = check_range("momentum", momentum, low=0.0, high=1.0, high_open=True)
        self.beta2 = check_range("beta2", beta2, low=0.0, high=1.0, high_open=True)
        self.eps = check_range("eps", eps, low=0.0, low_open=True)

    def _step(self, key, delta):
        if key not in self.buffers:
            self.buffers[key] = [torch.zeros_like(delta), torch.zeros_like(delta)]
        m, v = self.buffers[key]
        m.mul_(self.beta1).add_(delta, alpha=1.0 - self.beta1)
        v.mul_(self.beta2).addcmul_(delta, delta, value=1.0 - self.beta2)
        m_hat = m / (1.0 - self.beta1 ** self.t)
        v_hat = v / (1.0 - self.beta2 ** self.t)
        return self.lr * m_hat / (v_hat.sqrt() + self.eps)

    def config(self):
        return {"name": self.name, "lr": self.lr, "momentum": self.beta1,
                "beta2": self.beta2, "eps": self.eps}


UPDATE_RULES = {"sgd": SGD, "momentum": Momentum, "adam": Adam}


def make_update_rule(rule=None, **settings) -> UpdateRule:
    """An :class:`UpdateRule` from ``None`` (:class:`SGD`), a name of :data:`UPDATE_RULES`
    with its ``settings``, or an instance (returned as is, no settings allowed)."""
    if rule is None:
        rule = "sgd"
    if isinstance(rule, UpdateRule):
        if settings:
            raise ValueError(f"optimizer: settings {sorted(settings)} given with an instance "
                             f"{rule!r}; set them on the instance")
        return rule
    if rule not in UPDATE_RULES:
        raise ValueError(f"optimizer must be one of {list(UPDATE_RULES)} or an UpdateRule; "
                         f"got {rule!r}")
    cls = UPDATE_RULES[rule]
    allowed = list(inspect.signature(cls).parameters)
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ValueError(f"optimizer {rule!r} takes the settings {allowed}; got {unknown}")
    return cls(**settings)
