"""The Hydra configs, shipped inside the package so that the installed ``fapm`` command finds them.

``CONFIG_DIR`` is this folder; ``python train.py`` and ``fapm train`` compose ``train.yaml`` from it.
"""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
