"""Notebooks execute top to bottom (nbclient) on a small demo, writing only under a temp folder."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


def execute(path: Path, workdir: Path, timeout: int = 600) -> tuple[object, float]:
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    start = time.perf_counter()
    client.execute()
    return notebook, time.perf_counter() - start


def test_quickstart_runs_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fapm.data.demo import generate_demo

    data = tmp_path / "data"
    # A small demo (the default one has 60 training and 52 test images per category).
    generate_demo(data / "fapm_demo", categories=["bracket"], n_train=10, n_test_good=4, n_test_defect_per_type=2)
    out = tmp_path / "out"
    monkeypatch.setenv("FAPM_ROOT", str(REPO))
    monkeypatch.setenv("FAPM_DATA_DIR", str(data))
    monkeypatch.setenv("FAPM_NOTEBOOK_OUTPUT", str(out))
    notebook, seconds = execute(NOTEBOOKS / "quickstart.ipynb", tmp_path)

    errors, images, texts = [], 0, []
    for cell in notebook.cells:  # type: ignore[attr-defined]
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                errors.append(f"{output.ename}: {output.evalue}")
            data_ = output.get("data", {})
            images += "image/png" in data_
            texts.append(output.get("text", "") + data_.get("text/markdown", "") + data_.get("text/plain", ""))
    assert not errors
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]  # type: ignore[attr-defined]
    assert all(c.execution_count for c in code_cells)  # every cell ran
    assert images >= 4 + 1 + 1  # 4 sample figures, the memory figure, the plain-detector figure
    joined = "\n".join(texts)
    assert "image AUROC (%)" in joined and "layer2: memory" in joined
    assert (out / "run" / "metrics.json").is_file() and (out / "run" / "figures" / "memory.png").is_file()
    assert not (REPO / "notebooks" / "logs").exists()  # nothing written next to the notebook
    assert seconds < 180
