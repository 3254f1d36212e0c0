"""The ``dendrite-sim`` executable: the command line of :mod:`dendrite_sim.frontend.cli`,
loaded here so that Ctrl-C while torch and the engine import ends with one line, not a
traceback (the package itself imports nothing heavy)."""
import sys

PROG = "dendrite-sim"


def main(argv=None) -> int:
    """Import the command line and run it; exit status 130 if interrupted while importing."""
    try:
        from dendrite_sim.frontend.cli import main as command_line
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    return command_line(argv)
