"""``python -m fapm ...`` is the ``fapm`` command."""

import sys

from fapm.cli import main

if __name__ == "__main__":
    sys.exit(main())
