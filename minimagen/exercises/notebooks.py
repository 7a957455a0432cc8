"""Student notebooks, generated from the solutions notebooks so the two can never drift apart.

The solutions notebooks (notebooks/exercises/solutions/*.ipynb) are the only ones anyone edits. Three markers
in them say what a student must not see:

    # BEGIN SOLUTION: <hint>      the lines up to `# END SOLUTION` become `raise NotImplementedError("<hint>")`
    # END SOLUTION                (same indentation as the marker)
    ...  # solutions only         a code line ending so is dropped (e.g. `assert result.passed`)
    ... <!-- solutions only -->   a markdown line ending so is dropped

Outputs, execution counts and timing metadata are stripped. The student notebooks sit one folder up
(notebooks/exercises/), so relative paths lose one `../`: in code, string literals that start with "../";
in markdown, links "](../". Regenerate after editing a solutions notebook:

    python -m minimagen.exercises --make-student-notebooks          (--check: only report stale ones)

Contents: `student_source`, `make_student_notebook`, `student_notebooks`, `write_student_notebooks`, `main`.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
SOLUTIONS_ONLY = ("# solutions only", "<!-- solutions only -->")
DEFAULT_FOLDER = Path("notebooks") / "exercises"  # relative to the repository root


def student_source(source: str, where: str = "a cell") -> str:
    """One cell's source with its solution regions replaced by `raise NotImplementedError` and
    solutions-only lines removed."""
    out, inside = [], False
    for line in source.split("\n"):
        stripped = line.strip()
        if stripped.startswith(BEGIN):
            if inside:
                raise ValueError(f"{where}: '{BEGIN}' inside another solution region; close it with '{END}' first")
            hint = stripped[len(BEGIN):].lstrip(":").strip() or "write your code here"
            if '"' in hint:
                raise ValueError(f"{where}: the hint {hint!r} contains a double quote; use single quotes in hints")
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f'{indent}raise NotImplementedError("{hint}")')
            inside = True
        elif stripped.startswith(END):
            if not inside:
                raise ValueError(f"{where}: '{END}' without a '{BEGIN}' before it")
            inside = False
        elif not inside and not line.rstrip().endswith(SOLUTIONS_ONLY):
            out.append(line)
    if inside:
        raise ValueError(f"{where}: '{BEGIN}' is never closed; add a line '{END}'")
    return "\n".join(out)


def _one_folder_up(source: str, cell_type: str) -> str:
    """Relative paths as seen from the parent folder: one leading '../' fewer."""
    if cell_type == "code":
        return re.sub(r"""(["'])\.\./""", r"\1", source)  # "../../x" -> "../x", "../.." -> ".."
    return source.replace("](../", "](")  # markdown links


def _tidy(source: str, cell_type: str) -> str:
    """Markdown: no double blank line where a solutions-only line was removed. Code is left as written."""
    return re.sub(r"\n{3,}", "\n\n", source) if cell_type == "markdown" else source


def _text(source) -> str:
    return "".join(source) if isinstance(source, list) else source


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)  # Jupyter's on-disk form: a list of lines, each ending in "\n" but the last


def make_student_notebook(solution: dict, name: str = "notebook") -> dict:
    """The student version of a solutions notebook (a JSON dict, as `json.load` reads an .ipynb)."""
    notebook = copy.deepcopy(solution)
    cells = []
    for i, cell in enumerate(notebook["cells"]):
        text = student_source(_text(cell["source"]), where=f"{name}, cell {i}")
        text = _tidy(_one_folder_up(text, cell["cell_type"]), cell["cell_type"]).strip("\n")
        if not text.strip():
            continue  # the whole cell was for the solutions only
        cell["source"] = _lines(text)
        cell.get("metadata", {}).pop("execution", None)  # timings of the solutions run
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cells.append(cell)
    notebook["cells"] = cells
    return notebook


def notebook_text(notebook: dict) -> str:
    """JSON as Jupyter writes it (sorted keys, indent 1, UTF-8 kept, final newline)."""
    return json.dumps(notebook, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def student_notebooks(folder: str | Path = DEFAULT_FOLDER) -> dict[Path, str]:
    """{student notebook path: the text it should have}, one per solutions/*.ipynb in `folder`."""
    folder = Path(folder)
    solutions = sorted((folder / "solutions").glob("*.ipynb"))
    if not solutions:
        raise FileNotFoundError(f"no solutions notebooks in {folder / 'solutions'}; run from the repository root "
                                f"or pass --folder notebooks/exercises")
    return {folder / path.name: notebook_text(make_student_notebook(json.loads(path.read_text(encoding="utf-8")),
                                                                    path.name))
            for path in solutions}


def write_student_notebooks(folder: str | Path = DEFAULT_FOLDER) -> list[Path]:
    """(Re)write every student notebook; returns the paths whose content changed."""
    changed = []
    for path, text in student_notebooks(folder).items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minimagen.exercises", description=__doc__.split("\n")[0])
    parser.add_argument("--make-student-notebooks", action="store_true",
                        help="write notebooks/exercises/*.ipynb from notebooks/exercises/solutions/*.ipynb")
    parser.add_argument("--check", action="store_true", help="only report student notebooks that are out of date")
    parser.add_argument("--folder", default=str(DEFAULT_FOLDER), help="the exercises folder (default: %(default)s)")
    args = parser.parse_args(argv)
    if not (args.make_student_notebooks or args.check):
        parser.print_help()
        return 2
    if args.check:
        stale = [str(p) for p, text in student_notebooks(args.folder).items()
                 if not p.exists() or p.read_text(encoding="utf-8") != text]
        print("\n".join(f"out of date: {p}" for p in stale) or "student notebooks are up to date")
        return 1 if stale else 0
    for path in write_student_notebooks(args.folder):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
