"""Turn run folders into result tables: `python report.py <multirun_dir> [by=category|model|both] [out=DIR]` (= `fapm report`).

Reads every job's ``metrics.json`` (jobs without one are reported as failed), prints the
Markdown tables and writes ``report.md`` plus one ``.md``/``.csv`` per table into ``out``
(default: the first folder given). Exits with status 1 when some run failed. Arguments are
``key=value`` as for every ``fapm`` command (``fapm report --help`` lists the keys).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from fapm.cli import main as fapm_main

    return fapm_main(["report", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
