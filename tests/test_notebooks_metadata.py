"""The teaching notebooks are committed in a state that GitHub renders and nbval runs.

These tests read the .ipynb files as JSON (no kernel, no execution): that every notebook (the course in
notebooks/ and the exercises in notebooks/exercises/, student and solutions versions) uses the python3
kernelspec, was executed top to bottom in one session (execution counts 1..n, no holes, no stored tracebacks),
stays under 3 MB, reads MINIMAGEN_FAST in its first code cell, and carries no progress bars or widgets.
Running the notebooks is nbval's job: `MINIMAGEN_FAST=1 python -m pytest --nbval-lax ... notebooks/`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
COURSE = sorted(NOTEBOOK_DIR.glob("*.ipynb"))  # the numbered teaching series
EXERCISES = sorted(NOTEBOOK_DIR.glob("exercises/*.ipynb")) + sorted(NOTEBOOK_DIR.glob("exercises/solutions/*.ipynb"))
NOTEBOOKS = COURSE + EXERCISES  # every rule below holds for the exercise notebooks too
MAX_BYTES = 3 * 1024 * 1024  # 3 MB: outputs of a full run with dpi <= 80 figures stay well below


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_notebooks_form_a_numbered_course_01_to_08():
    numbers = [p.name[:2] for p in COURSE]
    assert numbers == [f"{i:02d}" for i in range(1, len(COURSE) + 1)], [p.name for p in COURSE]
    assert len(COURSE) >= 8
    for path in COURSE:
        assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), path.name


def test_exercises_are_numbered_and_each_has_a_solutions_version():
    students = sorted(p.name for p in NOTEBOOK_DIR.glob("exercises/*.ipynb"))
    solutions = sorted(p.name for p in NOTEBOOK_DIR.glob("exercises/solutions/*.ipynb"))
    assert students == solutions and len(students) >= 6, (students, solutions)
    assert [n[:2] for n in students] == [f"{i:02d}" for i in range(1, len(students) + 1)], students


def _id(path: Path) -> str:
    return str(path.relative_to(NOTEBOOK_DIR))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_kernelspec_is_python3(path):
    assert _load(path)["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_execution_counts_are_1_to_n_without_holes(path):
    counts = [c.get("execution_count") for c in _code_cells(_load(path))]
    if all(n is None for n in counts):
        return  # committed without outputs: allowed
    assert counts == list(range(1, len(counts) + 1)), (
        f"{path.name}: execution counts {counts}; re-run the notebook top to bottom in a fresh kernel "
        "(jupyter nbconvert --to notebook --execute --inplace)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_no_stored_tracebacks(path):
    errors = [o.get("ename") for c in _code_cells(_load(path)) for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{path.name} was committed with errors {errors}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_file_is_smaller_than_3_mb(path):
    assert path.stat().st_size < MAX_BYTES, f"{path.name}: {path.stat().st_size / 2**20:.1f} MB"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_first_code_cell_reads_minimagen_fast(path):
    first = _source(_code_cells(_load(path))[0])
    assert "MINIMAGEN_FAST" in first and "os.environ" in first, first


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_no_progress_bars_or_widgets_in_outputs(path):
    for cell in _code_cells(_load(path)):
        for out in cell.get("outputs", []):
            assert "application/vnd.jupyter.widget-view+json" not in out.get("data", {}), path.name
            text = "".join(out.get("text", "")) if out.get("output_type") == "stream" else ""
            assert not re.search(r"\d+%\|", text), f"{path.name}: a progress bar in the outputs: {text[:80]!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_checkpoint_notebooks_default_to_the_shipped_checkpoint(path):
    code = "\n".join(_source(c) for c in _code_cells(_load(path)))
    if "from_pretrained(CHECKPOINT)" in code:
        default = r'CHECKPOINT = os\.environ\.get\("MINIMAGEN_CHECKPOINT", "((?:\.\./)+)checkpoints/(?:shapes|scenes)"\)'
        found = re.search(default, code)
        assert found, f"{path.name}: CHECKPOINT must default to the shipped checkpoint, relative to the notebook"
        assert (path.parent / found.group(1)).resolve() == NOTEBOOK_DIR.parent, f"{path.name}: {found.group(1)!r}"
    assert "/tmp/" not in code, f"{path.name} hard-codes a local /tmp path"
