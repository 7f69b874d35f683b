"""Score new images with a saved model: `python predict.py ckpt_path=<model.safetensors> input=<image|folder|glob>` (= `fapm predict`).

Exit code 0 when at least one image was scored, 1 when none could be, 2 when the run could
not start (a bad setting, device, output folder or model file: one line on stderr; see
docs/predict.md).
"""

import os
import sys
from pathlib import Path

# Runs go under this repository (the `fapm` command uses the current folder).
os.environ.setdefault("FAPM_ROOT", str(Path(__file__).resolve().parent))

if __name__ == "__main__":
    from fapm.cli import main

    sys.exit(main(["predict", *sys.argv[1:]]))
