"""Score new images with a saved model: `python predict.py ckpt_path=<model.pt> input=<image|folder|glob>`.

Exit code 0 when at least one image was scored, 1 when none could be, 2 when the run could
not start (a bad setting, device, output folder or model file: one line on stderr; see
docs/predict.md).
"""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("FAPM_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="src/fapm/conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from fapm.pipeline.predict import SETUP_ERRORS, predict

    try:
        code = predict(cfg).exit_code
    except SETUP_ERRORS as err:
        print(f"predict: error: {err}", file=sys.stderr)
        sys.exit(2)
    if code:
        sys.exit(code)  # Hydra does not return the task's value from main()


if __name__ == "__main__":
    main()
