"""Learners, one file each, found automatically (like the models).

A learner trains a network on mini-batches through the protocol of :class:`~.base.Learner`
(``step``, ``predict``, ``state_dict`` ...). Each file in this folder registers its classes
with :func:`register_learner`; the configuration's ``[learner] name`` and the baselines of a
run are looked up here (:func:`learner_class`). A new learner is one new file::

    from dendrite_sim.learning.learners import register_learner
    from dendrite_sim.learning.learners.base import Learner

    @register_learner("my_rule")
    class MyRule(Learner):
        def __init__(self, model, lr=0.1, loss="cross_entropy"): ...
"""
from __future__ import annotations

import importlib
import pkgutil

__all__ = ["register_learner", "learner_class", "learner_names", "LEARNERS"]

#: ``{name: learner class}``, filled by :func:`register_learner` as the files are imported
LEARNERS: dict = {}
_discovered = False


def register_learner(name: str):
    """Class decorator: register a :class:`~.base.Learner` subclass under ``name``."""
    def add(cls):
        if name in LEARNERS and LEARNERS[name] is not cls:
            raise ValueError(f"learner name {name!r} is taken by {LEARNERS[name].__name__}")
        LEARNERS[name] = cls
        cls.name = name
        return cls
    return add


def _discover() -> None:
    global _discovered
    if not _discovered:
        for info in pkgutil.iter_modules(__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{__name__}.{info.name}")
        _discovered = True


def learner_names() -> list[str]:
    """The registered learner names, sorted."""
    _discover()
    return sorted(LEARNERS)


def learner_class(name: str):
    """The learner class registered as ``name``; ``ValueError`` naming the choices otherwise."""
    _discover()
    if not isinstance(name, str) or name not in LEARNERS:
        raise ValueError(f"learner must be one of {sorted(LEARNERS)}; got {name!r}")
    return LEARNERS[name]
