"""``python -m dendrite_sim``: the ``dendrite-sim`` command line (:mod:`dendrite_sim.frontend.cli`)."""
import sys

from dendrite_sim.frontend.launch import main

sys.exit(main())
