"""A run that raises leaves ``metrics.json`` with ``status: failed``; a sweep goes on and exits non-zero."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fapm.data.errors import DataError
from fapm.reporting.runs import STATUS_FAILED, collect_runs
from fapm.reporting.table import category_table, to_markdown
from tests.conftest import compose_config, tiny_train_overrides

REPO = Path(__file__).resolve().parents[2]


def test_failed_run_records_status_and_reraises(tmp_path: Path, mvtec_tree) -> None:  # type: ignore[no-untyped-def]
    from fapm.pipeline.train import train

    root = mvtec_tree(category="widget")
    out = tmp_path / "run"
    cfg = compose_config("train", [*tiny_train_overrides(root, category="no_such_category")], out)
    with pytest.raises(DataError, match="no_such_category"):
        train(cfg)
    record = json.loads((out / "metrics.json").read_text())
    assert record["status"] == STATUS_FAILED
    assert record["error"].startswith("DataError: Category folder not found")
    assert record["category"] == "no_such_category" and record["model"] == "fapm"
    assert "traceback" in record
    (run,) = collect_runs([out])
    assert not run.ok and run.error == record["error"]


def test_multirun_records_every_failed_job_and_exits_nonzero(tmp_path: Path, mvtec_tree) -> None:  # type: ignore[no-untyped-def]
    root = mvtec_tree(category="widget")
    logs = tmp_path / "logs"
    command = [
        sys.executable, str(REPO / "train.py"), "-m",
        "data=mvtec", f"data.root={root}", "data.category=missing_a,missing_b",
        f"paths.log_dir={logs}", "logger=none", "callbacks=none", "backbone=resnet18", "backbone.pretrained=false",
    ]  # fmt: skip
    env = {**os.environ, "FAPM_ROOT": str(tmp_path), "HYDRA_FULL_ERROR": "0"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0, done.stdout[-2000:]
    (sweep,) = (logs / "train" / "multiruns").iterdir()
    runs = collect_runs([sweep])
    assert [r.category for r in runs] == ["missing_a", "missing_b"]  # the second job ran after the first failed
    assert all(r.status == STATUS_FAILED and "Category folder not found" in (r.error or "") for r in runs)
    markdown = to_markdown(category_table(runs))
    assert "| missing_a |" in markdown and "| missing_b |" in markdown and "2 failed run(s)" in markdown
