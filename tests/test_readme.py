"""Every command in the README's ``bash`` blocks is exercised, so that a renamed key breaks a test, not a user.

``fapm train|eval|predict`` lines are composed in-process from the packaged configs with exactly
the README's overrides (``-m`` sweeps: every combination), and the run settings are validated
by the same strict schema a run uses; ``fapm export|report`` lines are parsed by their own
argument parsers; the set-up and test commands must be the ones ``.ci/run`` runs. A README command
that none of these recognises fails the test. The demo itself (``fapm train``) runs end to end
in ``tests/test_cli.py``. The README stays at most 300 lines.
"""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest

from fapm import cli
from fapm.pipeline.common import validated_settings
from tests.conftest import compose_config

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def readme_commands(text: str) -> list[str]:
    """The commands of the ``bash`` blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


COMMANDS = readme_commands(README.read_text())


def _sweep(overrides: list[str]) -> list[list[str]]:
    """A multirun's jobs: every combination of the comma-separated values."""
    choices = []
    for override in overrides:
        key, _, value = override.partition("=")
        choices.append([f"{key}={v}" for v in value.split(",")] if "," in value and "[" not in value else [override])
    return [list(job) for job in itertools.product(*choices)]


def check_hydra_command(command: str, args: list[str], tmp_path: Path) -> None:
    """Compose ``command``'s config with the README's overrides and validate it as a run would."""
    multirun = "-m" in args or "--multirun" in args
    if "--cfg" in args:  # --cfg job|hydra|all prints the composed config: the composition is what is checked
        at = args.index("--cfg")
        assert args[at + 1] in ("job", "hydra", "all"), args
        args = args[:at] + args[at + 2:]
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    assert all("=" in a for a in overrides), f"{command} {args}: every argument is key=value"
    jobs = _sweep(overrides) if multirun else [overrides]
    # A multirun sweeps comma-separated values, or the sweeper parameters of an experiment config.
    assert not multirun or len(jobs) > 1 or any(o.startswith("experiment=") for o in overrides), (
        f"fapm {command} -m {overrides}: a multirun with one job"
    )
    config_name = cli.HYDRA_COMMANDS[command][0]
    for job in jobs:
        cfg = compose_config(config_name, job, tmp_path)
        for override in job:
            key, _, value = override.partition("=")
            if "/" not in key and not key.startswith(("+", "~")) and "." in key:
                composed = cfg
                for part in key.split("."):
                    composed = composed[part]
                assert str(composed) == value, f"{override}: composed as {composed!r}"
        if command == "train":
            validated_settings(cfg)
        else:
            assert cfg.ckpt_path, f"fapm {command} needs ckpt_path"


def check(line: str, tmp_path: Path) -> None:
    """Exercise one README command; fails for a command no check recognises."""
    ci = (REPO / ".ci" / "run").read_text()
    if line.startswith("python3 -m venv") or line.startswith("pip install"):
        assert line.replace(".venv", ".ci-venv") in ci, f"README set-up {line!r} is not what .ci/run runs"
        return
    if line == "python -m pytest -q":
        assert line in ci.splitlines()
        return
    # A run folder's name, as a user would paste it in place of the README's placeholder.
    line = line.replace("<time>", "2026-01-01_12-00-00")
    assert "<" not in line, f"README command {line!r}: a placeholder the test cannot fill"
    argv = shlex.split(line)
    assert argv[0] == "fapm", f"README command {line!r}: no test exercises it (add a check here)"
    command, args = argv[1], argv[2:]
    if command in cli.HYDRA_COMMANDS:
        check_hydra_command(command, args, tmp_path)
    elif command == "export":
        parsed = cli.parse_export_args(args)
        assert parsed["model"].name == "model.safetensors" and parsed["format"] in cli.EXPORT_FORMATS
    elif command == "report":
        parsed = cli.parse_report_args(args)
        assert parsed["runs"]
    else:
        pytest.fail(f"README command {line!r}: unknown fapm command {command!r}")


def test_readme_is_one_screenful_per_task():
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines (at most 300; reference material goes in docs/)"
    # no machine paths, no times of day
    text = "\n".join(lines)
    assert not re.search(r"/(work|home|root|tmp)/", text), "a machine path in the README"
    assert not re.search(r"\b\d{1,2}:\d{2}(:\d{2})? ?(UTC|h)\b", text), "a time of day in the README"


def test_readme_has_the_cookbook_commands():
    """The set-up, the demo, the tests and the ten cookbook commands are all there."""
    assert "pip install -r requirements.txt" in " ".join(COMMANDS)
    assert "fapm train" in COMMANDS and "python -m pytest -q" in COMMANDS
    fapm = [c for c in COMMANDS if c.startswith("fapm ")]
    assert len(fapm) >= 11, fapm  # the demo and the ten of the cookbook
    for needle in ("data=folder", "model=patchcore", " -m ", "trainer=ddp", "fapm predict", "fapm export",
                   "model.align=", "model=fapm_scalable", "fapm report", "logger=wandb"):
        assert any(needle in c for c in fapm), f"the cookbook lacks {needle!r}"


@pytest.mark.parametrize("line", COMMANDS)
def test_readme_command(line: str, tmp_path: Path) -> None:
    check(line, tmp_path)


#: Tutorial pages whose commands are checked the same way.
TUTORIALS = ["docs/own_data.md", "docs/mvtec.md", "docs/configuration.md"]


@pytest.mark.parametrize(
    "line", [c for page in TUTORIALS for c in readme_commands((REPO / page).read_text()) if c.startswith("fapm ")]
)
def test_tutorial_command(line: str, tmp_path: Path) -> None:
    check(line, tmp_path)


def test_an_unknown_readme_command_fails(tmp_path: Path) -> None:
    """The checker refuses what it cannot exercise, and a renamed key fails composition."""
    with pytest.raises(AssertionError, match="no test exercises"):
        check("make install", tmp_path)
    with pytest.raises(Exception, match="model.no_such_key"):
        check("fapm train model.no_such_key=1", tmp_path)


def test_readme_links_point_at_files_that_exist():
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    local = [link.split("#")[0] for link in links if not link.startswith(("http://", "https://", "#"))]
    assert local, "the README links into the docs"
    missing = sorted({link for link in local if not (REPO / link).exists()})
    assert not missing, f"README links to missing files: {missing}"
