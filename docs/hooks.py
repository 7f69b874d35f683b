"""MkDocs hooks (mkdocs.yml ``hooks:``): pages written from the code when the site is built.

``config_reference.md`` comes from the settings schema (:mod:`fapm.settings_reference`), so the
configuration reference cannot drift from what the parser accepts; ``results.md`` gathers every
rendered results table (``docs/results/``); ``changelog.md`` is the repository's
``CHANGELOG.md`` (one file, two places to read it); ``figures/*.png`` are the benchmarks' own
plots from ``benchmarks/results/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[1]


RESULTS_INTRO = """# All results tables

Every table on this page is rendered from a benchmark's JSON under `benchmarks/results/` by
`python -m benchmarks.tables`, with the command, date, machine and weights it was measured
with; a test fails when a rendered table and its JSON differ. The pages that discuss each result
include the same files. This page lists them all, one section per results file.
"""


def results_page() -> str:
    """Every rendered results table (``docs/results/*.md``), one section per file."""
    parts = [RESULTS_INTRO]
    for path in sorted((REPO / "docs" / "results").glob("*.md")):
        parts.append(f"\n## {path.stem}\n\n" + path.read_text().split("\n", 1)[1])
    return "".join(parts)


def on_files(files: Files, config) -> Files:  # noqa: ANN001 (MkDocs' config object)
    # The checkout's own package, before any installed copy (a docs build documents this tree).
    sys.path.insert(0, str(REPO / "src"))
    for name in [n for n in sys.modules if n == "fapm" or n.startswith("fapm.")]:
        del sys.modules[name]
    from fapm.settings_reference import reference_markdown, shipped_values

    files.append(File.generated(config, "config_reference.md", content=reference_markdown(shipped_values())))
    files.append(File.generated(config, "changelog.md", content=(REPO / "CHANGELOG.md").read_text()))
    files.append(File.generated(config, "results.md", content=results_page()))
    # The benchmarks' figures stay where the benchmarks write them; the pages show them as figures/.
    for png in sorted((REPO / "benchmarks" / "results").glob("*.png")):
        files.append(File.generated(config, f"figures/{png.name}", abs_src_path=str(png)))
    return files
