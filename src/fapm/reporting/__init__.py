"""Reports over run folders: collect ``metrics.json`` of runs and sweeps, build the paper's tables."""

from fapm.reporting.runs import (
    STATUS_FAILED,
    STATUS_OK,
    RunRecord,
    collect_runs,
    failure_metrics,
    find_run_dirs,
    read_run,
)
from fapm.reporting.table import Table, build_tables, category_table, defect_table, model_table, write_report

__all__ = [
    "STATUS_FAILED",
    "STATUS_OK",
    "RunRecord",
    "Table",
    "build_tables",
    "category_table",
    "collect_runs",
    "defect_table",
    "failure_metrics",
    "find_run_dirs",
    "model_table",
    "read_run",
    "write_report",
]
