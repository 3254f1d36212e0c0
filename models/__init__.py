"""Network models, one file each (SPEC §2). Importable as ``dendrite_sim.models``."""
from .mixture import Mixture
from .two_phase import TwoPhaseDTP

__all__ = ["Mixture", "TwoPhaseDTP"]
