"""Fit a detector, test it and save it: `python train.py [overrides]` (see README)."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("FAPM_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="src/fapm/conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from fapm.pipeline.train import train
    from fapm.reporting.runs import check_optimized_metric, optimized_value

    check_optimized_metric(cfg.get("optimized_metric"))  # a misspelt name fails before the fit
    metrics = train(cfg)
    # Returned for Hydra sweepers (hparams_search=fapm_optuna) that optimise a value.
    return optimized_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
