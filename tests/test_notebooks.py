"""The notebooks' parameters, the configs, and a bad parameter failing fast (nbval checks the outputs)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import papermill
import pytest

from nsr import cli

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_one_parameters_cell_first(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    assert all(c.cell_type == "markdown" for c in nb.cells[: tagged[0]])
    assert "scale" in papermill.inspect_notebook(str(path))
    assert "tqdm" not in "".join(c.source for c in nb.cells if c.cell_type == "code")


def test_configs_name_real_parameters():
    assert cli.check_configs(ROOT) == []
    for scale in cli.SCALES:
        assert set(cli.load_config(scale, ROOT)) == {p.stem for p in NOTEBOOKS}


def test_config_typo_is_reported(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "notebooks").symlink_to(ROOT / "notebooks")
    for scale in cli.SCALES:
        (tmp_path / "configs" / f"{scale}.yaml").write_text("tutorial:\n  epoch: 3\n")
    problems = cli.check_configs(tmp_path)
    assert any("'epoch' is not a parameter" in p for p in problems)


def test_bad_parameter_fails_first_cell(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match="epochs must be a positive int"):
        papermill.execute_notebook(
            str(ROOT / "notebooks" / "tutorial.ipynb"), str(tmp_path / "out.ipynb"),
            parameters={"epochs": -1}, cwd=str(ROOT / "notebooks"), progress_bar=False, kernel_name="python3",
        )
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    code = [c for c in out.cells if c.cell_type == "code"]
    failed = [i for i, c in enumerate(code) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert failed and failed[0] <= 2  # parameters, injected parameters, then the validating cell
