"""Turn run folders into result tables: `python report.py <multirun_dir> [--by category|model|both] [--out DIR]`.

Reads every job's ``metrics.json`` (jobs without one are reported as failed), prints the
Markdown tables and writes ``report.md`` plus one ``.md``/``.csv`` per table into ``--out``
(default: the first folder given). Exits with status 1 when some run failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="multirun folder(s), run folder(s), metrics.json files or globs")
    parser.add_argument(
        "--by",
        choices=["auto", "category", "model", "both"],
        default="auto",
        help="table rows: per category (paper Table 1), per model (Table 2); auto = from what varies",
    )
    parser.add_argument("--out", default=None, help="folder for report.md and the CSV files (default: first run path)")
    args = parser.parse_args(argv)

    from fapm.reporting import collect_runs, write_report
    from fapm.reporting.table import build_tables, to_markdown

    runs = collect_runs(args.runs)
    if not runs:
        parser.error(f"no run folders (with metrics.json or .hydra/config.yaml) under {args.runs}")
    first = Path(args.runs[0])
    out = Path(args.out) if args.out else first if first.is_dir() else Path.cwd()
    for table in build_tables(runs, args.by).values():
        print(to_markdown(table))
    written = write_report(runs, out, args.by)
    print(f"{len(runs)} run(s); wrote {', '.join(p.name for p in written)} to {out}")
    return 1 if any(not r.ok for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
