"""No user mistake ends in "a bug?" (issue 25, point 8): one line and a hint that works."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from fapm import cli
from tests.conftest import compose_config


def _two_lines(err: str) -> list[str]:
    lines = [line for line in err.strip().splitlines() if not line.startswith("Error executing job")]
    assert len(lines) == 2 and lines[1].startswith("  hint: "), err
    assert "a bug?" not in err and "Traceback (most recent call last)" not in err
    return lines


def test_a_dataloader_worker_error_is_its_last_line(capsys) -> None:
    """Failed before: a truncated PNG in train/good printed ~35 lines of DataLoader traceback."""
    from fapm.data.errors import DataError

    inner = ("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
             '  File "worker.py", line 308, in _worker_loop\n    data = fetcher.fetch(index)\n'
             "fapm.data.errors.DataError: /data/plate/train/good/003.png: cannot read the image (truncated)\n")
    assert cli.report_error(DataError(inner), "train", verbose=False) == 1
    first, _ = _two_lines(capsys.readouterr().err)
    assert first == "fapm train: error: /data/plate/train/good/003.png: cannot read the image (truncated)"


def test_eval_hint_for_a_data_key_works(capsys) -> None:
    """Failed before: the hint said +data.category=weave, which then failed too."""
    assert cli.main(["eval", "ckpt_path=m.safetensors", "data.category=weave"]) == 2
    first, hint = _two_lines(capsys.readouterr().err)
    assert "+data.category" not in first + hint
    assert "category=<name>" in hint and "data_root=<folder>" in hint


def _file(tmp_path: Path, **data) -> SimpleNamespace:
    from fapm.settings import parse_data

    stored = {"type": "mvtec", "root": str(tmp_path / "evil"), "category": "bracket", "generate_demo": True,
              "image_size": 64, "crop_size": 64, **data}
    return SimpleNamespace(path=tmp_path / "m.safetensors", data=parse_data(stored, "data"),
                           preprocess={"image_size": 64, "crop_size": 64})


def test_eval_never_takes_the_data_root_from_the_model_file(tmp_path: Path) -> None:
    """Failed before: a crafted file's data.root decided where eval generated demo data."""
    from fapm.pipeline.evaluate import data_settings
    from fapm.settings import ConfigError

    cfg = compose_config("eval", ["ckpt_path=m.safetensors"], tmp_path / "run")
    settings = data_settings(cfg, _file(tmp_path))
    assert settings.root == f"{cfg.paths.data_dir}/fapm_demo" and "evil" not in settings.root
    cfg = compose_config("eval", ["ckpt_path=m.safetensors", f"data_root={tmp_path / 'mine'}", "category=weave"],
                         tmp_path / "run")
    settings = data_settings(cfg, _file(tmp_path))
    assert settings.root == str(tmp_path / "mine") and settings.category == "weave"
    cfg = compose_config("eval", ["ckpt_path=m.safetensors"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"data_root: .* say where it is on this machine: data_root=<folder>"):
        data_settings(cfg, _file(tmp_path, generate_demo=False))


def test_report_on_a_missing_folder_or_a_malformed_metrics_file(tmp_path: Path, capsys) -> None:
    """Failed before: FileNotFoundError / AttributeError tracebacks ending in 'a bug?'."""
    assert cli.main(["report", str(tmp_path / "nothing")]) == 1
    first, _ = _two_lines(capsys.readouterr().err)
    assert first == f"fapm report: error: run folder not found: {tmp_path / 'nothing'}"
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps([1, 2]))
    assert cli.main(["report", str(run), "--out", str(tmp_path / "out")]) == 1  # a failed run, reported
    out = capsys.readouterr()
    assert "a bug?" not in out.err and "unreadable metrics.json: ValueError: expected a JSON object" in out.out
