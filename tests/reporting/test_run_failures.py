"""A run that raises leaves ``metrics.json`` with ``status: failed``; a sweep goes on and exits non-zero."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fapm.data.errors import DataError
from fapm.reporting.runs import STATUS_FAILED, collect_runs, failure_metrics
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


def test_an_error_raised_while_handling_another_names_both() -> None:
    # Lightning's loop teardown can fail after a fit error; the first error must stay visible.
    try:
        try:
            raise ValueError("model.grid 7x7 does not divide 8x8")
        except ValueError:
            raise RuntimeError("Please call `iter(combined_loader)` first.")  # noqa: B904 (implicit chaining)
    except RuntimeError as error:
        caught = error
    record = failure_metrics(caught)
    assert record["error"] == (
        "ValueError: model.grid 7x7 does not divide 8x8; "
        "then, while handling it, RuntimeError: Please call `iter(combined_loader)` first."
    )
    assert "ValueError" in record["traceback"] and "RuntimeError" in record["traceback"]
    try:  # an explicit `raise ... from` is the author's message: reported alone
        try:
            raise KeyError("x")
        except KeyError as key:
            raise DataError("missing key x") from key
    except DataError as error:
        assert failure_metrics(error)["error"] == "DataError: missing key x"


def test_a_job_killed_by_the_cluster_points_to_its_submitit_log(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    job = sweep / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text("data:\n  category: bottle\nmodel:\n  name: fapm\n")
    (job / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    id: '4242_0'\n    num: 0\n")
    log = sweep / ".submitit" / "4242_0" / "4242_0_0_log.err"
    log.parent.mkdir(parents=True)
    log.write_text("fitting...\nslurmstepd: error: *** JOB 4243 CANCELLED AT 2026-01-01 DUE TO TIME LIMIT ***\n\n")
    (run,) = collect_runs([sweep])  # .submitit/ itself is no run
    assert run.status == STATUS_FAILED and run.category == "bottle"
    assert str(log) in (run.error or "") and "DUE TO TIME LIMIT" in (run.error or "")
