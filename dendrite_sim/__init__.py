"""dendrite_sim — continuous-time networks of pyramidal neurons with segregated dendrites
that learn by target propagation (thesis Ch. 6; docs/design.md).

The public surface is a few verbs over model objects::

    from dendrite_sim import simulate, fixed_point, jacobian, spectrum
    from dendrite_sim.models import Mixture

and one complete training run (data, model, learner, baselines, figures) as a library call::

    from dendrite_sim import run_experiment
    summary = run_experiment("two_phase", "runs/small")

The names load on first use (importing the package imports neither torch nor matplotlib),
so the command line can answer Ctrl-C during its imports with one line.
"""
import importlib
import sys

from dendrite_sim import _moved

__version__ = "0.1.0"

#: ``{public name: module that defines it}``
EXPORTS = {
    **dict.fromkeys(("continuation", "Continuation"), "dendrite_sim.dynamics.continuation"),
    **dict.fromkeys(("fixed_point", "Equilibrium"), "dendrite_sim.dynamics.equilibrium"),
    **dict.fromkeys(("simulate", "Trajectory"), "dendrite_sim.dynamics.integrate"),
    **dict.fromkeys(("jacobian", "spectrum", "Jacobian", "Spectrum"),
                    "dendrite_sim.dynamics.spectral"),
    **dict.fromkeys(("Free", "Clamp", "Nudge"), "dendrite_sim.dynamics.teaching"),
    "make_transfer": "dendrite_sim.dynamics.transfer",
    "NumericalError": "dendrite_sim.errors",
    "run_experiment": "dendrite_sim.frontend.experiment",
}
__all__ = list(EXPORTS)

_moved.install(sys.modules[__name__], EXPORTS)


def __getattr__(name):
    """A public name (:data:`EXPORTS`), or an old module path (``dendrite_sim.teaching``)."""
    if name in EXPORTS:
        value = getattr(importlib.import_module(EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _moved.MOVED:
        return importlib.import_module(f"dendrite_sim.{name}")
    raise AttributeError(f"module 'dendrite_sim' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(EXPORTS))
