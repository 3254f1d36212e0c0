"""Module paths of the flat layout before the engine was grouped into subpackages, kept
importable (``import dendrite_sim.training``, ``from dendrite_sim.equilibrium import ...``):
each old name loads the module that now holds its contents."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types

MOVED = {
    "model": "dynamics.model", "layout": "dynamics.layout", "teaching": "dynamics.teaching",
    "transfer": "dynamics.transfer", "integrate": "dynamics.integrate",
    "equilibrium": "dynamics.equilibrium", "spectral": "dynamics.spectral",
    "continuation": "dynamics.continuation", "mixing": "families.mixing",
    "pathways": "families.pathways", "schedule": "learning.schedule", "training": "learning",
    "files": "learning.files", "cli": "frontend.cli", "config": "frontend.config",
    "data": "frontend.data", "plots": "frontend.plots",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``dendrite_sim.<old>`` and hands out the module object of its new path."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, leaf = fullname.rpartition(".")
        if package == "dendrite_sim" and leaf in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module("dendrite_sim." + MOVED[spec.name.rpartition(".")[2]])

    def exec_module(self, module):
        """The new module is already executed."""


class _Package(types.ModuleType):
    """The ``dendrite_sim`` package: importing an old module path (``import
    dendrite_sim.continuation``) makes Python bind the module as an attribute of the package;
    where a verb has that name (``dendrite_sim.continuation``) the verb is kept."""

    def __setattr__(self, name, value):
        if name in MOVED and isinstance(value, types.ModuleType) \
                and callable(self.__dict__.get(name)):
            return
        super().__setattr__(name, value)


def install(package: types.ModuleType) -> None:
    """Make the old module paths importable, and keep ``package``'s verbs bound."""
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.append(_MovedModules())
    package.__class__ = _Package
