"""dendrite_sim — continuous-time networks of pyramidal neurons with segregated dendrites
that learn by target propagation (thesis Ch. 6; docs/design.md).

The public surface is a few verbs over model objects::

    from dendrite_sim import simulate, fixed_point, jacobian, spectrum
    from dendrite_sim.models import Mixture

and one complete training run (data, model, learner, baselines, figures) as a library call::

    from dendrite_sim import run_experiment
    summary = run_experiment("two_phase", "runs/small")
"""
from dendrite_sim.dynamics.continuation import Continuation, continuation
from dendrite_sim.dynamics.equilibrium import Equilibrium, fixed_point
from dendrite_sim.errors import NumericalError
from dendrite_sim.dynamics.integrate import Trajectory, simulate
from dendrite_sim.dynamics.spectral import Jacobian, Spectrum, jacobian, spectrum
from dendrite_sim.dynamics.teaching import Clamp, Free, Nudge
from dendrite_sim.dynamics.transfer import make_transfer

import sys

from dendrite_sim import _moved

__version__ = "0.1.0"
_moved.install(sys.modules[__name__])


def __getattr__(name):
    """``dendrite_sim.<old module>`` (e.g. ``dendrite_sim.teaching``) as an attribute;
    ``run_experiment`` imported on first use (the front end loads matplotlib)."""
    if name == "run_experiment":
        from dendrite_sim.frontend.experiment import run_experiment
        return run_experiment
    if name in _moved.MOVED:
        import importlib
        return importlib.import_module(f"dendrite_sim.{name}")
    raise AttributeError(f"module 'dendrite_sim' has no attribute {name!r}")

__all__ = ["simulate", "fixed_point", "jacobian", "spectrum", "continuation", "Trajectory",
           "Equilibrium", "Continuation",
           "Jacobian", "Spectrum", "Free", "Clamp", "Nudge", "NumericalError", "make_transfer",
           "run_experiment"]

