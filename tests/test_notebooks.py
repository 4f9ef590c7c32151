"""Notebooks run top to bottom (with small settings)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def run_notebook(name: str, params: dict[str, object]) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    # The first code cell holds the parameters; append overrides to it.
    first = next(c for c in nb.cells if c.cell_type == "code")
    first.source += "\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def test_simulate_layout_notebook() -> None:
    nb = run_notebook("simulate_layout.ipynb", {"STEPS": 8})
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "predicted speedup" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2


@pytest.mark.slow
def test_calibrate_predict_compare_notebook() -> None:
    """Calibrate on a real run, predict, train, compare: the loop a user follows (tiny settings)."""
    nb = run_notebook("calibrate_predict_compare.ipynb",
                      {"CALIB_STEPS": 8, "STEPS": 6, "SEEDS": [0], "COMBOS": ["sync", "fully_async(eta=2)"]})
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "throughput MAPE" in text and "samples/s" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 1
