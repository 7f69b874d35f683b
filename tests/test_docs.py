"""The documentation: results tables generated from their JSON, each page once, the reference from the schema.

The strict site build itself (``mkdocs build --strict``: broken links, missing pages) runs in
``.ci/run``; these tests keep the inputs of that build honest and run without MkDocs.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from benchmarks import tables
from fapm import settings as schema
from fapm.settings_reference import groups, reference_markdown

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


# ------------------------------------------------------------------------------ results tables
def test_committed_tables_are_what_their_json_renders():
    """``docs/results/*.md`` and the README's table are exactly ``python -m benchmarks.tables``'s output."""
    expected = tables.expected_files()
    assert any(path.parent == tables.RENDERED for path in expected), "no results JSON has a table"
    for path, text in expected.items():
        assert path.is_file(), f"{path.relative_to(REPO)} is missing: run python -m benchmarks.tables"
        assert path.read_text() == text, f"{path.relative_to(REPO)} differs from its JSON: run python -m benchmarks.tables"
    rendered = {p for p in expected if p.parent == tables.RENDERED}
    orphans = sorted(p.name for p in tables.RENDERED.glob("*.md") if p not in rendered)
    assert not orphans, f"docs/results/ files without a results JSON table: {orphans}"


def test_check_mode_finds_a_stale_table(tmp_path, monkeypatch, capsys):
    """``--check`` exits 1 and names the file when a rendered table differs from its JSON."""
    results, rendered = tmp_path / "results", tmp_path / "rendered"
    results.mkdir()
    table = {"title": "T", "command": "python x.py", "date": "2026-01-02", "machine": "m", "weights": "w",
             "columns": ["model", "AUROC"], "rows": [["A", 0.5], ["B", 0.75]]}
    (results / "x.json").write_text(json.dumps({"raw": 1, "table": table}))
    monkeypatch.setattr(tables, "RESULTS", results)
    monkeypatch.setattr(tables, "RENDERED", rendered)
    monkeypatch.setattr(tables, "README", tmp_path / "README.md")
    monkeypatch.setattr(tables, "REPO", tmp_path)
    assert tables.main([]) == 0
    text = (rendered / "x.md").read_text()
    assert "| A | 0.50 |" in text and "| B | 0.75 |" in text and "2026-01-02" in text and "python x.py" in text
    assert tables.main(["--check"]) == 0
    table["rows"][0][1] = 0.6
    (results / "x.json").write_text(json.dumps({"table": table}))
    assert tables.main(["--check"]) == 1
    assert "rendered/x.md" in capsys.readouterr().err


def test_a_malformed_table_names_its_file_and_key(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"table": {"title": "t", "columns": ["a"], "rows": [[1]]}}))
    with pytest.raises(tables.TableError, match=r"bad.json: table lacks command, date, machine, weights"):
        tables.load_table(path)
    path.write_text(json.dumps({"table": {k: "x" for k in tables.TABLE_KEYS} | {"date": "2026-01-02", "columns": ["a", "b"], "rows": [[1]]}}))
    with pytest.raises(tables.TableError, match=r"bad.json: table.rows\[0\] has 1 cells for 2 columns"):
        tables.load_table(path)


def test_numbers_align_right_and_share_their_column_decimals():
    text = tables.markdown_table(["name", "ms", "n"], [["a", 9.5, 3], ["b", 8.67, 12], ["c", None, 1]])
    assert text.splitlines()[1] == "|---|---:|---:|"
    assert "| a | 9.50 | 3 |" in text and "| c | — | 1 |" in text


# ------------------------------------------------------------------------------ pages
def _nav_pages(nav) -> list[str]:
    out = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out.extend(_nav_pages(value) if isinstance(value, list) else [value])
    return out


def test_every_page_is_in_the_nav_once_and_docs_readme_is_gone():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text().replace("!!python", "#"))
    pages = _nav_pages(config["nav"])
    generated = {"config_reference.md", "changelog.md", "results.md"}  # written by docs/hooks.py at build time
    assert len(pages) == len(set(pages))
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if p.parent.name != "results"}
    assert on_disk == set(pages) - generated
    assert not (DOCS / "readme").exists()


def _markdown_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "*.md"], cwd=REPO, capture_output=True, text=True)
    return [REPO / p for p in listed.stdout.split()] if listed.returncode == 0 else list(REPO.rglob("*.md"))


def test_no_markdown_file_repeats_another_files_paragraph():
    """A paragraph of prose (160+ characters, code blocks left out) is written in one file only."""
    seen: dict[str, set[str]] = defaultdict(set)
    for path in _markdown_files():
        if path.relative_to(REPO).as_posix().startswith("docs/results/"):
            continue  # rendered from the JSON results: their captions share the machine's wording by design
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for paragraph in re.split(r"\n\s*\n", text):
            paragraph = " ".join(paragraph.split())
            if len(paragraph) >= 160 and not paragraph.startswith(("|", "<!--")):
                seen[paragraph].add(path.relative_to(REPO).as_posix())
    repeated = {p[:80]: sorted(files) for p, files in seen.items() if len(files) > 1}
    assert not repeated, repeated


def test_no_results_table_is_copied_by_hand():
    """A table row of a docs page is not also in another Markdown file (results are included, not copied)."""
    rows: dict[str, set[str]] = defaultdict(set)
    for path in _markdown_files():
        lines = path.read_text().splitlines()
        for line, after in zip(lines, [*lines[1:], ""]):
            header = set(after.strip()) <= set("|-: ") and after.strip()
            if line.startswith("|") and line.count("|") >= 6 and not set(line) <= set("|-: ") and not header:
                rows[line.strip()].add(path.relative_to(REPO).as_posix())
    copied = {row[:80]: sorted(files) for row, files in rows.items()
              if len(files) > 1 and any(f.startswith("docs/") and not f.startswith("docs/results/") for f in files)}
    assert not copied, copied


# ------------------------------------------------------------------------------ configuration reference
def test_configuration_reference_lists_every_key_of_every_settings_group():
    page = reference_markdown()
    documented = {g.cls for g in groups()}
    every = {c for c in vars(schema).values() if isinstance(c, type) and dataclasses.is_dataclass(c)
             and issubclass(c, schema.Settings) and c is not schema.Settings and not c.__name__.startswith("_")}
    every -= set(schema.MODEL_FILE_SECTIONS)  # what a model file stores, not configuration keys
    assert every <= documented, f"settings groups missing from the reference: {every - documented}"
    for group in groups():
        for field in dataclasses.fields(group.cls):
            if field.init and not (dataclasses.is_dataclass(field.type) if isinstance(field.type, type) else False):
                if f"{group.prefix}.{field.name}" + "." not in page:
                    assert f"`{group.prefix}.{field.name}`" in page or field.name == "search", f"{group.prefix}.{field.name}"
    assert "`model.search.nprobe`" in page and "`data.normal_holdout`" in page and "`backbone.weights`" in page


def test_configuration_reference_shows_ranges_and_the_shipped_values():
    from fapm.settings_reference import shipped_values

    page = reference_markdown(shipped_values())
    row = next(line for line in page.splitlines() if line.startswith("| `model.coreset_ratio`"))
    assert "in (0.0, 1.0]" in row and "`0.1`" in row
    backbone = next(line for line in page.splitlines() if line.startswith("| `backbone.name`"))
    assert "`tf_efficientnet_lite0`" in backbone  # the shipped default, beside the schema's wide_resnet50_2
