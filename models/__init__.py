"""Network models, one file each (thesis Ch. 6; Bengio 2020 §10). Importable as ``dendrite_sim.models``."""
from .mixture import Mixture
from .two_phase import TwoPhaseDTP

__all__ = ["Mixture", "TwoPhaseDTP"]
