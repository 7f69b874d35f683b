"""Fit a detector, test it and save it: `python train.py [overrides]` (see README)."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("FAPM_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="src/fapm/conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from fapm.pipeline.train import train

    metrics = train(cfg)
    # Returned for Hydra sweepers (e.g. Optuna) that optimise a value.
    return metrics.get("image_auroc")


if __name__ == "__main__":
    main()
