"""The notebooks in notebooks/ run top to bottom (nbclient, a real kernel) and draw real figures.

Each notebook asserts its own claims (exact accuracies, equal weights), so an executed
notebook is a passed test of them; here any error in any cell fails the test. Each runs in
its own new ipykernel process, forked from the session's zygote that has imported
TensorFlow, Keras and NumPy (`helpers.forked_kernel`): their import in the first cell
costs nothing, the rest of the notebook runs as in a kernel started from scratch.
"""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path

import matplotlib.image
import nbformat
import pytest
from helpers.forked_kernel import kernel_manager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = [
    "1_quickstart.ipynb",
    "2_evaluate_every_n_steps.ipynb",
    "3_load_without_model_code.ipynb",
    "4_long_runs.ipynb",
]


def test_the_notebooks_are_there_and_committed_without_outputs():
    assert [p.name for p in NOTEBOOKS] == EXPECTED
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name


def _pngs(notebook) -> list[bytes]:
    return [
        base64.b64decode(output["data"]["image/png"])
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch, fresh):
    # The kernel is a child process: it imports keras_ckpt from this checkout.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        # The python3 kernel, forked from the session's zygote that imported TensorFlow
        # (~4 s of CPU less per notebook); its own stdout/stderr go to tmp_path/kernel.*.
        km=kernel_manager(fresh, tmp_path / "kernel"),
        timeout=300,
        resources={"metadata": {"path": str(tmp_path)}},  # runs/ and exports land here
    )
    start = time.monotonic()
    # cleanup_kc: shut the kernel down at the end, as nbclient does with kernels it starts
    client.execute(cleanup_kc=True)  # raises CellExecutionError, naming the cell, on any error
    seconds = time.monotonic() - start
    print(f"{path.name}: {seconds:.1f} s")

    pngs = _pngs(notebook)
    assert pngs, f"{path.name} shows no figure"
    for png in pngs:
        pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels[..., :3].std() > 0.05
