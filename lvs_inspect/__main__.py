"""``python -m lvs_inspect`` runs the command line (used where the console script is not on PATH,
e.g. inside ``ip netns exec``)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
