"""The notebooks (jupytext percent files) run top to bottom as scripts, in quick mode."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))


def test_the_three_notebooks_are_found():
    assert [p.stem for p in NOTEBOOKS] == [
        "01_toy_posterior", "02_active_learning_mnist", "03_hessian_variants"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_a_percent_file_opening_with_markdown(path):
    lines = path.read_text().splitlines()
    assert lines[0] == "# %% [markdown]"
    assert lines[1].startswith("# # "), "the first cell should give the notebook a title"
    code_cells = [line for line in lines if line == "# %%"]
    assert len(code_cells) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_quick_mode(path, tmp_path, mnist_data_dir):
    env = {**os.environ, "JAXAL_NOTEBOOK_QUICK": "1", "MPLBACKEND": "Agg",
           "TFDS_DATA_DIR": str(mnist_data_dir)}
    result = subprocess.run([sys.executable, str(path)], env=env, cwd=tmp_path, timeout=300,
                            capture_output=True, text=True)
    assert result.returncode == 0, (
        f"{path.name} failed (exit {result.returncode})\n--- stdout\n{result.stdout[-5000:]}"
        f"\n--- stderr\n{result.stderr[-10000:]}")
    assert result.stdout.startswith("quick mode:"), result.stdout[:500]
    # Notebooks write nothing: no file appears in the directory they run from.
    assert not list(tmp_path.iterdir())
