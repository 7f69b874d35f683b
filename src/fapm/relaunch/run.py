"""``python <path of this file> <command> [args]`` is ``fapm <command> [args]`` (see the package docstring)."""

import sys

from fapm.cli import main

if __name__ == "__main__":
    sys.exit(main())
