"""Evaluate a saved model: `python eval.py ckpt_path=<run>/model.pt [data=... data.category=...]`."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("FAPM_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="src/fapm/conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    from fapm.pipeline.evaluate import evaluate

    return evaluate(cfg).get("image_auroc")


if __name__ == "__main__":
    main()
