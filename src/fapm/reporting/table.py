"""Result tables shaped like the paper's: per category (Table 1), per model variant (Table 2),
and per defect type, written as Markdown and CSV.

Failed runs are rows with status ``failed`` and their error; they never enter a mean, and
every table that has some says how many were left out. Markdown shows AUROC-type metrics in
percent (as the paper does); CSV keeps the raw fractions at full precision.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fapm.metrics import names
from fapm.reporting.runs import STATUS_FAILED, STATUS_OK, RunRecord

Kind = Literal["text", "percent", "float", "int"]
By = Literal["category", "model", "both", "auto"]

#: Model names of the paper's Table 2, in its row order, with their row label.
PAPER_VARIANTS: dict[str, str] = {
    "patchcore": "A PatchCore",
    "ablation_b": "B patch-wise",
    "ablation_c": "C layer-wise",
    "ablation_d": "D patch- + layer-wise",
    "fapm": "E FAPM",
}

MEAN_LABEL = "mean"


@dataclass(frozen=True)
class Column:
    """A table column: the row key it shows, its header, and how values are formatted."""

    key: str
    header: str
    kind: Kind = "float"
    digits: int = 1


@dataclass
class Table:
    """Rows (dicts keyed by column key) with their columns and notes printed under them."""

    title: str
    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# Metric columns shared by the tables (keys are those of metrics.json).
_METRIC_COLUMNS = [
    Column(names.IMAGE_AUROC, "image AUROC (%)", "percent"),
    Column(names.PIXEL_AUROC, "pixel AUROC (%)", "percent"),
    Column(names.PIXEL_AUPRO, "pixel AUPRO (%)", "percent"),
    Column(names.IMAGE_F1_MAX, "image F1-max (%)", "percent"),
    Column(names.FPS, "FPS", "float", 1),
    Column(names.LATENCY_MS, "latency (ms)", "float", 1),
    Column("fit_seconds", "fit (s)", "float", 1),
    Column("memory_vectors", "memory vectors", "int"),
]
_STATUS = Column("status", "status", "text")
_SETTINGS = Column("settings", "settings", "text")
#: Overrides that the category/model columns already show, or that do not change results.
_SHOWN_OVERRIDES = frozenset({"data.category", "model", "model.name", "logger", "callbacks"})
_SHOWN_PREFIXES = ("paths.", "hydra.", "logger.", "callbacks.")
_ERROR = Column("error", "error", "text")
_MEANS = [c.key for c in _METRIC_COLUMNS]


# ---------------------------------------------------------------------------------- helpers
def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _mean(runs: Sequence[RunRecord], key: str) -> float | None:
    values = [v for v in (_number(r.metrics.get(key)) for r in runs) if v is not None]
    return sum(values) / len(values) if values else None


def model_sort_key(model: str) -> tuple[int, str]:
    """Paper variants A..E first, in that order; other models after, alphabetically."""
    order = list(PAPER_VARIANTS)
    return (order.index(model), "") if model in order else (len(order), model)


def _unique(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


def varying_settings(runs: Sequence[RunRecord]) -> list[str]:
    """Override keys whose value differs between ``runs`` (a sweep's searched settings), sorted.

    Keys shown by other columns (category, model) or naming output places are left out, so
    a plain category sweep has none while an Optuna search lists its parameters.
    """
    keys = sorted({k for r in runs for k in r.overrides})
    keys = [k for k in keys if k not in _SHOWN_OVERRIDES and not k.startswith(_SHOWN_PREFIXES)]
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


def _short(value: str) -> str:
    """A sampled float as 4 significant digits (``0.024156772025296234`` -> ``0.02416``)."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() or len(value) <= 6 else f"{number:.4g}"


def _settings_text(run: RunRecord, keys: Sequence[str]) -> str:
    return " ".join(f"{k}={_short(run.overrides[k])}" for k in keys if k in run.overrides)


def _run_row(run: RunRecord, label_key: str, label: str) -> dict[str, Any]:
    row: dict[str, Any] = {label_key: label, "model": run.model, _STATUS.key: run.status}
    for column in _METRIC_COLUMNS:
        row[column.key] = run.metrics.get(column.key) if run.ok else None
    row[_ERROR.key] = run.error or ""
    row["path"] = str(run.path)
    return row


def _failure_notes(failed: Sequence[RunRecord]) -> list[str]:
    if not failed:
        return []
    notes = [f"{len(failed)} failed run(s) are listed with status `{STATUS_FAILED}` and excluded from every mean:"]
    notes += [f"- {r.category} / {r.model}: {r.error} ({r.path})" for r in failed]
    return notes


# ---------------------------------------------------------------------------------- tables
def category_table(runs: Sequence[RunRecord]) -> Table:
    """Table 1: one row per run (category), a mean row over the successful ones.

    With several models, rows are grouped by model (A..E first) with one mean row each.
    When the runs differ in other settings too (a hyper-parameter sweep), a ``settings``
    column shows each run's values of those (:func:`varying_settings`).
    """
    models = sorted(_unique([r.model for r in runs]), key=model_sort_key)
    several = len(models) > 1
    settings = varying_settings(runs)
    columns = [Column("category", "category", "text")]
    columns += [Column("model", "model", "text")] if several else []
    columns += [_SETTINGS] if settings else []
    columns += [*_METRIC_COLUMNS, _STATUS]
    title = "Per-category results" + ("" if several else f" ({models[0]})" if models else "")
    table = Table(title, columns)
    for model in models:
        group = [r for r in runs if r.model == model]
        for run in group:
            table.rows.append({**_run_row(run, "category", run.category), _SETTINGS.key: _settings_text(run, settings)})
        ok = [r for r in group if r.ok]
        mean: dict[str, Any] = {"category": MEAN_LABEL, "model": model, _STATUS.key: f"{len(ok)}/{len(group)} ok"}
        mean.update({key: _mean(ok, key) for key in _MEANS})
        table.rows.append(mean)
    table.notes = _failure_notes([r for r in runs if not r.ok])
    return table


def run_table(run: RunRecord) -> Table:
    """One run as a one-row Table 1 (logged to the trackers at the end of a run)."""
    columns = [Column("category", "category", "text"), Column("model", "model", "text"), *_METRIC_COLUMNS, _STATUS]
    return Table(f"{run.category} / {run.model}", columns, [_run_row(run, "category", run.category)])


def model_table(runs: Sequence[RunRecord]) -> Table:
    """Table 2: one row per model variant (A..E first), means over its successful runs."""
    columns = [
        Column("variant", "variant", "text"),
        Column("model", "model", "text"),
        Column("categories", "categories", "text"),
        *_METRIC_COLUMNS,
        _STATUS,
    ]
    table = Table("Per-model results (mean over categories)", columns)
    for model in sorted(_unique([r.model for r in runs]), key=model_sort_key):
        group = [r for r in runs if r.model == model]
        ok = [r for r in group if r.ok]
        row: dict[str, Any] = {
            "variant": PAPER_VARIANTS.get(model, model),
            "model": model,
            "categories": ", ".join(_unique([r.category for r in ok])) or "-",
            _STATUS.key: STATUS_OK if len(ok) == len(group) else f"{len(group) - len(ok)}/{len(group)} failed",
        }
        row.update({key: _mean(ok, key) for key in _MEANS})
        table.rows.append(row)
    table.notes = _failure_notes([r for r in runs if not r.ok])
    return table


def defect_table(runs: Sequence[RunRecord]) -> Table | None:
    """Image AUROC per defect type: one row per (successful run, defect type); None if no run has any."""
    columns = [
        Column("category", "category", "text"),
        Column("model", "model", "text"),
        Column("defect_type", "defect type", "text"),
        Column(names.IMAGE_AUROC, "image AUROC (%)", "percent"),
    ]
    table = Table("Image AUROC per defect type", columns)
    for run in sorted((r for r in runs if r.ok), key=lambda r: model_sort_key(r.model)):
        per_type: dict[str, Any] = {}
        for key in sorted(run.metrics):
            metric, defect_type = names.split_per_defect(key)
            if metric == names.IMAGE_AUROC and defect_type is not None:
                per_type[defect_type] = run.metrics[key]
        if per_type:
            per_type["(all)"] = run.metrics.get(names.IMAGE_AUROC)
        for defect_type, value in per_type.items():
            table.rows.append(
                {"category": run.category, "model": run.model, "defect_type": defect_type, names.IMAGE_AUROC: value}
            )
    if not table.rows:
        return None
    table.notes = ["Each defect type's images against all normal test images; (all): every test image."]
    return table


def choose_by(runs: Sequence[RunRecord]) -> Literal["category", "model", "both"]:
    """What varies: categories only → ``category``; models only → ``model``; both → ``both``."""
    many_categories = len({r.category for r in runs}) > 1
    many_models = len({r.model for r in runs}) > 1
    if many_models and many_categories:
        return "both"
    return "model" if many_models else "category"


# ---------------------------------------------------------------------------------- output
def format_value(value: Any, column: Column) -> str:
    """Display text of a cell (Markdown): percent with ``digits`` decimals, ``n/a`` for missing."""
    if column.kind == "text":
        return "" if value is None else str(value)
    number = _number(value)
    if number is None:
        return "n/a" if value is None or isinstance(value, float) else str(value)
    if column.kind == "percent":
        return f"{100 * number:.{column.digits}f}"
    if column.kind == "int":
        return f"{number:,.0f}"
    return f"{number:.{column.digits}f}"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(table: Table) -> str:
    """The table as GitHub Markdown, with a title line and its notes under it."""
    header = "| " + " | ".join(c.header for c in table.columns) + " |"
    rule = "|" + "|".join("---" if c.kind == "text" else "---:" for c in table.columns) + "|"
    lines = [f"### {table.title}", "", header, rule]
    for row in table.rows:
        cells = [format_value(row.get(c.key), c) for c in table.columns]
        if row.get(table.columns[0].key) == MEAN_LABEL:
            cells = [f"**{x}**" if x else x for x in cells]
        lines.append("| " + " | ".join(_md_cell(x) for x in cells) + " |")
    if table.notes:
        lines += [""] + table.notes
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """The table as CSV: raw values (fractions, not percent), plus error and run folder columns."""
    keys = [c.key for c in table.columns]
    extra = [k for k in (_ERROR.key, "path") if any(k in row for row in table.rows) and k not in keys]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(keys + extra)
    for row in table.rows:
        values = [row.get(k) for k in keys + extra]
        writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in values])
    return buffer.getvalue()


def build_tables(runs: Sequence[RunRecord], by: By = "auto") -> dict[str, Table]:
    """The report's tables by file stem: ``by_category``, ``by_model`` and ``per_defect``."""
    if not runs:
        raise ValueError("no runs to report")
    chosen = choose_by(runs) if by == "auto" else by
    makers: dict[str, Callable[[Sequence[RunRecord]], Table | None]] = {}
    if chosen in ("category", "both"):
        makers["by_category"] = category_table
    if chosen in ("model", "both"):
        makers["by_model"] = model_table
    makers["per_defect"] = defect_table
    tables = {stem: make(runs) for stem, make in makers.items()}
    return {stem: t for stem, t in tables.items() if t is not None}


def write_report(runs: Sequence[RunRecord], out_dir: str | Path, by: By = "auto") -> list[Path]:
    """Write ``<stem>.md`` and ``<stem>.csv`` per table and ``report.md`` with all of them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = build_tables(runs, by)
    written = []
    for stem, table in tables.items():
        for suffix, text in ((".md", to_markdown(table)), (".csv", to_csv(table))):
            path = out / f"{stem}{suffix}"
            path.write_text(text)
            written.append(path)
    report = out / "report.md"
    report.write_text("\n".join(to_markdown(t) for t in tables.values()))
    written.append(report)
    return written
