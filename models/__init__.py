"""Network models, one file each (thesis Ch. 6; Bengio 2020 §10), importable as
``dendrite_sim.models``: ``from dendrite_sim.models import Mixture, TwoPhaseDTP, Multiplexing,
CDTP``. A new file here is found without editing this one (its classes are looked up by name)."""
import importlib
import pkgutil

from .mixture import Mixture
from .two_phase import TwoPhaseDTP


def __getattr__(name):
    """A model class defined in any module of this folder, by its name."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"{__name__}.{info.name}")
            if isinstance(vars(module).get(name), type):
                return vars(module)[name]
    raise AttributeError(f"module {__name__!r} has no model {name!r}")
