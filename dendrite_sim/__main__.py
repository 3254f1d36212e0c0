"""``python -m dendrite_sim``: the ``dendrite-sim`` command line (see :mod:`dendrite_sim.cli`)."""
import sys

from .cli import main

sys.exit(main())
