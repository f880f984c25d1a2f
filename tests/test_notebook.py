"""notebooks/inference.ipynb is stored without outputs and runs top to bottom headless."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "inference.ipynb"


def code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def outputs_of(notebook: nbformat.NotebookNode, mime: str) -> list[str]:
    return [output["data"][mime] for cell in code_cells(notebook) for output in cell.outputs
            if mime in output.get("data", {})]


def test_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in code_cells(notebook):
        assert cell.execution_count is None and cell.outputs == [], cell.source[:80]
    first = code_cells(notebook)[0].source
    assert "ISIC_CHECKPOINT" in first and "ISIC_IMAGES" in first


def test_notebook_runs_and_draws_figures(tiny_checkpoint_dir: Path, synthetic_root: Path,
                                         monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ISIC_CHECKPOINT", str(tiny_checkpoint_dir / "best.pt"))
    monkeypatch.setenv("ISIC_IMAGES", str(synthetic_root))
    monkeypatch.setenv("ISIC_N_SHOW", "3")
    # Headless servers and CI often set a non-interactive backend, which must not hide figures.
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)

    # The kernel inherits the environment above; it runs in notebooks/, as Jupyter would.
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    assert outputs_of(notebook, "image/png"), "the notebook drew no figure"
    table = "\n".join(outputs_of(notebook, "text/markdown"))
    assert table.count("| ISIC_") == 3 and "Dice" in table and "mean of 3" in table
    for column in ("quality", "review", "largest diameter", "asymmetry", "colours"):
        assert f" {column} " in table, column
