"""``python -m dendrite_sim``: the ``dendrite-sim`` command line (see :mod:`dendrite_sim.frontend.cli`)."""
import sys

from dendrite_sim.frontend.cli import main

sys.exit(main())
