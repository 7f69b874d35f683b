"""A fuzz of ``key=value`` overrides (issue 25, point 9): random types and extreme values on every
validated key give a usable run or one ConfigError (exit 2, one line), never a traceback or an OOM.

The validation is called in-process on overrides parsed by Hydra's own parser and applied to
the composed config (what the command line does, without starting hundreds of processes); a
handful of subprocesses then prove the command's exit code and output.
"""

import random
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from fapm import cli
from fapm.pipeline.common import validated_settings
from fapm.settings import MAX_IMAGE_SIDE, ConfigError
from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
BASE = ["backbone=resnet18", "backbone.pretrained=false"]
_VALUES = [
    "0", "-1", "-5", "1", "3", "7", "2147483648", "1e9", "-1e9", "1e308", "-1e308", "1e-308", "20000", "30000", "0.5",
    "1.0001", "nan", "inf", "-inf", "abc", "''", "null", "true", "false", "[]", "[1]", "[1,2]", "[0,0]",
    "[99999,99999]", "[1,2,3]", "{a:1}", "'1e9'", "[abc]", "[-1,1]",
]


def _keys(cfg) -> list[str]:
    keys = ["seed", "trainer.max_epochs"]
    for group in ("model", "backbone", "data", "thresholds"):
        for key, value in OmegaConf.to_container(cfg[group], resolve=False).items():
            if key in ("optimizer", "scheduler", "mean", "std") or isinstance(value, str) and "${" in value:
                continue
            if isinstance(value, dict):
                keys.extend(f"{group}.{key}.{sub}" for sub in value)
            else:
                keys.append(f"{group}.{key}")
    return keys


def test_random_overrides_give_a_valid_run_or_one_config_error(tmp_path: Path, capsys) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    base = compose_config("train", BASE, tmp_path)
    keys = _keys(base)
    parser = OverridesParser.create()
    rng = random.Random(25)
    outcomes = {"refused": 0, "accepted": 0, "unparsable": 0}
    for trial in range(400):
        text = f"{rng.choice(keys)}={rng.choice(_VALUES)}"
        try:
            (override,) = parser.parse_overrides([text])
            value = override.value()
        except Exception as err:  # Hydra refuses the text itself: a usage error at the command line
            assert cli.report_error(err, "train", verbose=False) == 2, text
            capsys.readouterr()
            outcomes["unparsable"] += 1
            continue
        cfg = base.copy()
        with open_dict(cfg):
            OmegaConf.update(cfg, override.key_or_group, value, merge=False)
        try:
            settings = validated_settings(cfg)
        except ConfigError as err:
            assert cli.report_error(err, "train", verbose=False) == 2, text
            err_text = capsys.readouterr().err
            assert "a bug?" not in err_text and "Traceback" not in err_text, text
            assert err_text.startswith("fapm train: error: ") and "\n  hint: " in err_text, text
            outcomes["refused"] += 1
            continue
        except Exception as err:  # noqa: BLE001 - the assertion names the override that escaped
            pytest.fail(f"{text}: {type(err).__name__}: {err}")
        # what is accepted is bounded: no single value can ask for all memory or hours
        assert settings.data.image_size <= MAX_IMAGE_SIDE and settings.model.k <= 1024, text
        assert max(settings.model.grid) <= 64 and getattr(settings.model, "blur_sigma", 0) <= 64, text
        outcomes["accepted"] += 1
    assert outcomes["refused"] >= 150 and outcomes["accepted"] >= 20, outcomes


@pytest.mark.parametrize("override", ["data.image_size=30000", "seed=-5"])
def test_the_command_exits_2_with_one_line(tmp_path: Path, override: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fapm", "train", *BASE, override, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"fapm train: error: {override.split('=')[0]}: must be"), lines
    assert lines[1].startswith("  hint: ")
