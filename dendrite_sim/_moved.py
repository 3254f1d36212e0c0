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

    def __init__(self):
        self._specs = {}

    def find_spec(self, fullname, path=None, target=None):
        package, _, leaf = fullname.rpartition(".")
        if package == "dendrite_sim" and leaf in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module("dendrite_sim." + MOVED[spec.name.rpartition(".")[2]])
        self._specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module):
        """The new module is already executed; it keeps its own ``__spec__`` (the import
        system has just set the old path's)."""
        module.__spec__ = self._specs[module.__name__]


class _Package(types.ModuleType):
    """The ``dendrite_sim`` package: importing a module path makes Python bind the module as
    an attribute of the package; where a public name of the package is spelt the same (the
    old path ``dendrite_sim.continuation`` and the verb ``continuation``), the attribute stays
    the public name (loaded on first use)."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and name in self.__dict__.get("EXPORTS", ()):
            return
        super().__setattr__(name, value)


def install(package: types.ModuleType, exports) -> None:
    """Make the old module paths importable; keep ``package``'s public names (``exports``)
    bound to themselves."""
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.append(_MovedModules())
    package.__class__ = _Package
