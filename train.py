"""Fit a detector, test it and save it: `python train.py [overrides]` (same as `fapm train`; see README)."""

import os
import sys
from pathlib import Path

# Runs and the demo data go under this repository (the `fapm` command uses the current folder).
os.environ.setdefault("FAPM_ROOT", str(Path(__file__).resolve().parent))

if __name__ == "__main__":
    from fapm.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
