"""MkDocs hooks (mkdocs.yml ``hooks:``): pages written from the code when the site is built.

``config_reference.md`` comes from the settings schema (:mod:`fapm.settings_reference`), so the
configuration reference cannot drift from what the parser accepts; ``changelog.md`` is the
repository's ``CHANGELOG.md`` (one file, two places to read it); ``figures/*.png`` are the
benchmarks' own plots from ``benchmarks/results/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[1]


def on_files(files: Files, config) -> Files:  # noqa: ANN001 (MkDocs' config object)
    # The checkout's own package, before any installed copy (a docs build documents this tree).
    sys.path.insert(0, str(REPO / "src"))
    for name in [n for n in sys.modules if n == "fapm" or n.startswith("fapm.")]:
        del sys.modules[name]
    from fapm.settings_reference import reference_markdown, shipped_values

    files.append(File.generated(config, "config_reference.md", content=reference_markdown(shipped_values())))
    files.append(File.generated(config, "changelog.md", content=(REPO / "CHANGELOG.md").read_text()))
    # The benchmarks' figures stay where the benchmarks write them; the pages show them as figures/.
    for png in sorted((REPO / "benchmarks" / "results").glob("*.png")):
        files.append(File.generated(config, f"figures/{png.name}", abs_src_path=str(png)))
    return files
