"""Evaluate a saved model: `python eval.py ckpt_path=<run>/model.pt [data=... data.category=...]` (= `fapm eval`)."""

import os
import sys
from pathlib import Path

# Runs go under this repository (the `fapm` command uses the current folder).
os.environ.setdefault("FAPM_ROOT", str(Path(__file__).resolve().parent))

if __name__ == "__main__":
    from fapm.cli import main

    sys.exit(main(["eval", *sys.argv[1:]]))
