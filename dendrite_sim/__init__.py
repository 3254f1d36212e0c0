"""dendrite_sim — continuous-time networks of pyramidal neurons with segregated dendrites
that learn by target propagation (SPEC.md).

The public surface is a few verbs over model objects::

    from dendrite_sim import simulate, fixed_point, jacobian, spectrum
    from dendrite_sim.models import Mixture
"""
from .continuation import Continuation, continuation
from .equilibrium import Equilibrium, fixed_point
from .errors import NumericalError
from .integrate import Trajectory, simulate
from .spectral import Jacobian, Spectrum, jacobian, spectrum
from .teaching import Clamp, Free, Nudge
from .transfer import make_transfer

__version__ = "0.1.0"

__all__ = ["simulate", "fixed_point", "jacobian", "spectrum", "continuation", "Trajectory",
           "Equilibrium", "Continuation",
           "Jacobian", "Spectrum", "Free", "Clamp", "Nudge", "NumericalError", "make_transfer"]
