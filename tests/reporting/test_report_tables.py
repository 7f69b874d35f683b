"""Reports from fake run folders: discovery, failed runs, means, Table 1 / Table 2 shapes, CLI."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from fapm.metrics import names
from fapm.reporting.runs import STATUS_FAILED, collect_runs, failure_metrics, find_run_dirs, read_run
from fapm.reporting.table import (
    build_tables,
    category_table,
    choose_by,
    defect_table,
    model_table,
    to_csv,
    to_markdown,
    write_report,
)

REPO = Path(__file__).resolve().parents[2]


def ok_metrics(category: str, model: str = "fapm", image: float = 0.9, pixel: float = 0.95, **extra: float) -> dict:
    return {
        "category": category,
        "model": model,
        "status": "ok",
        names.IMAGE_AUROC: image,
        names.PIXEL_AUROC: pixel,
        names.PIXEL_AUPRO: pixel - 0.1,
        names.IMAGE_F1_MAX: 0.8,
        names.FPS: 10.0,
        names.LATENCY_MS: 100.0,
        "fit_seconds": 5.0,
        "memory_vectors": 1000,
        **extra,
    }


def write_job(sweep: Path, num: int, metrics: dict | None, config: str | None = None) -> Path:
    """A Hydra job folder ``<sweep>/<num>`` with metrics.json (unless None) and .hydra/config.yaml."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(config or "data:\n  category: x\nmodel:\n  name: fapm\n")
    (job / "wandb" / "offline-run-1").mkdir(parents=True)  # a run's sub-folders are not runs
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A 12-job multirun: 10 ok categories, one failed (recorded), one crashed (no metrics.json)."""
    root = tmp_path / "multiruns" / "2026-01-01_00-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    for i in range(10):
        write_job(root, i, ok_metrics(f"cat{i}", image=0.5 + 0.05 * i, pixel=0.9))
    failed = failure_metrics(RuntimeError("out of memory"), {"category": "cat10", "model": "fapm"})
    write_job(root, 10, failed)
    write_job(root, 11, None, "data:\n  category: cat11\nmodel:\n  name: fapm\n")
    return root


def test_discovery_natural_order_and_failures(sweep: Path) -> None:
    dirs = find_run_dirs([sweep])
    assert [d.name for d in dirs] == [str(i) for i in range(12)]  # 10 after 9, sub-folders skipped
    runs = collect_runs([sweep])
    assert [r.status for r in runs] == ["ok"] * 10 + [STATUS_FAILED] * 2
    assert runs[10].error == "RuntimeError: out of memory"
    assert runs[11].category == "cat11" and "no metrics.json" in (runs[11].error or "")
    # Single run folders, metrics.json files and globs name the same runs.
    assert find_run_dirs([sweep / "3" / "metrics.json", sweep / "3"]) == [sweep / "3"]
    assert len(find_run_dirs([str(sweep / "1*")])) == 3  # 1, 10, 11
    with pytest.raises(FileNotFoundError):
        find_run_dirs([sweep / "missing"])


def test_category_table_mean_excludes_failures(sweep: Path) -> None:
    runs = collect_runs([sweep])
    table = category_table(runs)
    categories = [row["category"] for row in table.rows]
    assert categories == [f"cat{i}" for i in range(12)] + ["mean"]
    mean = table.rows[-1]
    assert mean[names.IMAGE_AUROC] == pytest.approx(sum(0.5 + 0.05 * i for i in range(10)) / 10)
    assert mean["status"] == "10/12 ok"
    failed_rows = [row for row in table.rows if row["status"] == STATUS_FAILED]
    assert [r["category"] for r in failed_rows] == ["cat10", "cat11"]
    assert all(r[names.IMAGE_AUROC] is None for r in failed_rows)
    assert any("2 failed run(s)" in note for note in table.notes)

    markdown = to_markdown(table)
    lines = markdown.splitlines()
    assert "| cat10 |" in markdown and "failed" in markdown and "out of memory" in markdown
    assert any(line.startswith("| **mean**") and "**72.5**" in line for line in lines)  # percent, 1 decimal
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert len(rows) == 13 and rows[10]["status"] == "failed" and "out of memory" in rows[10]["error"]
    assert float(rows[-1][names.IMAGE_AUROC]) == pytest.approx(0.725)  # CSV keeps fractions


def test_model_table_order_and_means(tmp_path: Path) -> None:
    models = ["fapm", "ablation_c", "patchcore", "lamp", "ablation_d", "ablation_b"]
    num = 0
    for category, shift in (("a", 0.0), ("b", 0.1)):
        for model in models:
            write_job(tmp_path, num, ok_metrics(category, model, image=0.6 + shift, fps=20.0 + num))
            num += 1
    write_job(tmp_path, num, failure_metrics(ValueError("bad grid"), {"category": "c", "model": "fapm"}))
    runs = collect_runs([tmp_path])
    assert choose_by(runs) == "both"
    table = model_table(runs)
    assert [row["model"] for row in table.rows] == ["patchcore", "ablation_b", "ablation_c", "ablation_d", "fapm", "lamp"]
    assert [row["variant"][0] for row in table.rows[:5]] == list("ABCDE")
    fapm = table.rows[4]
    assert fapm[names.IMAGE_AUROC] == pytest.approx(0.65)  # mean of a and b; the failed c left out
    assert fapm["categories"] == "a, b" and fapm["status"] == "1/3 failed"
    assert table.rows[0]["status"] == "ok"
    assert set(build_tables(runs)) == {"by_category", "by_model"}  # no per-defect metrics: no such table
    assert set(build_tables(runs, by="model")) == {"by_model"}


def test_choose_by_and_defect_table(tmp_path: Path) -> None:
    a = write_job(tmp_path, 0, ok_metrics("a", **{names.per_defect(names.IMAGE_AUROC, "crack"): 0.7}))
    b = write_job(tmp_path, 1, ok_metrics("b", **{names.per_defect(names.IMAGE_AUROC, "hole"): 0.9}))
    runs = [read_run(a), read_run(b)]
    assert choose_by(runs) == "category"
    assert choose_by([read_run(a)]) == "category"
    table = defect_table(runs)
    assert table is not None
    assert [(r["category"], r["defect_type"]) for r in table.rows] == [
        ("a", "crack"), ("a", "(all)"), ("b", "hole"), ("b", "(all)")
    ]
    markdown = to_markdown(table)
    assert "| a | fapm | crack | 70.0 |" in markdown and "| b | fapm | (all) | 90.0 |" in markdown
    assert defect_table([read_run(write_job(tmp_path, 2, ok_metrics("c")))]) is None


def test_nan_and_missing_values_are_na(tmp_path: Path) -> None:
    metrics = ok_metrics("a")
    metrics[names.PIXEL_AUROC] = None  # NaN is written as null
    del metrics[names.PIXEL_AUPRO]
    run = read_run(write_job(tmp_path, 0, metrics))
    table = category_table([run])
    assert table.rows[-1][names.PIXEL_AUROC] is None
    assert "n/a" in to_markdown(table)
    assert not any(isinstance(v, float) and math.isnan(v) for v in table.rows[-1].values())


def test_write_report_and_cli(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    written = write_report(collect_runs([sweep]), tmp_path / "out")
    assert {p.name for p in written} >= {"by_category.md", "by_category.csv", "report.md"}

    import importlib.util

    spec = importlib.util.spec_from_file_location("report_cli", REPO / "report.py")
    assert spec is not None and spec.loader is not None
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    code = cli.main([str(sweep), "by=category", f"out={tmp_path / 'cli'}"])
    assert code == 1  # some runs failed
    printed = capsys.readouterr().out
    assert "### Per-category results (fapm)" in printed and "| cat11 |" in printed
    report = (tmp_path / "cli" / "report.md").read_text()
    assert sum(line.startswith("| cat") and not line.startswith("| category") for line in report.splitlines()) == 12
    ok_only = tmp_path / "ok_only"
    write_job(ok_only, 0, ok_metrics("a"))
    assert cli.main([str(ok_only)]) == 0
    assert (ok_only / "by_category.csv").is_file()  # default --out: the folder given


def test_a_hyperparameter_sweep_shows_the_values_that_differ(tmp_path: Path) -> None:
    common = ["backbone=resnet18", "data.category=bracket", "paths.log_dir=/x"]
    for num, (d_th, k) in enumerate([("0.024156772025296234", "8"), ("0.5", "2")]):
        job = write_job(tmp_path, num, ok_metrics("bracket", image=0.8 + 0.1 * num))
        overrides = [f"model.d_th={d_th}", f"model.k={k}", "+model.grid=[7,7]", *common]
        (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    runs = collect_runs([tmp_path])
    assert runs[0].overrides["model.grid"] == "[7,7]"  # `+` dropped
    table = category_table(runs)
    assert [c.key for c in table.columns[:2]] == ["category", "settings"]
    # Only what differs between the runs; sampled floats shortened.
    assert [row["settings"] for row in table.rows[:2]] == ["model.d_th=0.02416 model.k=8", "model.d_th=0.5 model.k=2"]
    plain = tmp_path / "plain"  # a category sweep: nothing else differs, no such column
    for num, category in enumerate(["a", "b"]):
        job = write_job(plain, num, ok_metrics(category))
        (job / ".hydra" / "overrides.yaml").write_text(f"- data.category={category}\n- backbone=resnet18\n")
    assert "settings" not in [c.key for c in category_table(collect_runs([plain])).columns]
