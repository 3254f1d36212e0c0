"""Network models, one file each (SPEC §2). Importable as ``dendrite_sim.models``."""
from .mixture import Mixture

__all__ = ["Mixture"]
