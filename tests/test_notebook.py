"""The walkthrough notebook is committed with the outputs of the reference run (`make notebook`), so that a forge's
notebook viewer shows its tables and figures without running it. These tests only read the file (no kernel, well
under a second); tests/test_pipeline.py executes the notebook on tiny data."""

from __future__ import annotations

import copy
from pathlib import Path

import nbformat

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"
FIX = "run `make notebook` (after `make train`) and commit notebooks/walkthrough.ipynb"


def printed_text(cell: nbformat.NotebookNode) -> str:
    """Everything a cell's outputs show as text: streams, errors, and every non-image representation."""
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts += [out.get("ename", ""), out.get("evalue", ""), *out.get("traceback", [])]
        parts += [str(value) for kind, value in out.get("data", {}).items() if not kind.startswith("image/")]
    return "".join(parts)


def output_problems(nb: nbformat.NotebookNode) -> list[str]:
    """What keeps the saved notebook from rendering its results cleanly; empty when it is fine."""
    problems = []
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as err:
        problems.append(f"not a valid notebook: {err.message}")
    # no machine's directories in the outputs (the notebook prints paths relative to the checkout): this checkout,
    # the home directory, and /work/, where the reference run was made
    machine = ["/work/", str(NOTEBOOK.parents[1])]
    if Path.home() != Path(Path.home().anchor):  # a home directory of "/" would match every path
        machine.append(str(Path.home()))
    for k, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        where = f"cell {k} ({(cell.source.splitlines() or [''])[0]!r})"
        kinds = [out.output_type for out in cell.outputs]
        if "error" in kinds:
            problems.append(f"{where} has an error output")
        if any(out.output_type == "stream" and out.name == "stderr" for out in cell.outputs):
            problems.append(f"{where} printed to stderr (warnings or progress bars)")
        figures = cell.source.count("display(Image(")
        pngs = sum("image/png" in out.get("data", {}) for out in cell.outputs)
        if pngs != figures:
            problems.append(f"{where} draws {figures} figure(s) but has {pngs} image/png output(s)")
        if "results_markdown(" in cell.source and not any("text/markdown" in out.get("data", {})
                                                          for out in cell.outputs):
            problems.append(f"{where} makes a table but has no text/markdown output")
        text = printed_text(cell)
        problems += [f"{where} shows the machine path {path!r}" for path in machine if path in text]
        if "execution" in cell.metadata:
            problems.append(f"{where} keeps execution timestamps in its metadata")
    if "widgets" in nb.metadata:
        problems.append("the notebook keeps widget state")
    return problems


def test_the_walkthrough_is_committed_with_its_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    problems = output_problems(nb)
    assert not problems, "\n".join(problems) + f"\n{FIX}"


def test_the_output_check_fails_on_a_notebook_without_outputs_or_with_a_machine_path():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    bare = copy.deepcopy(nb)
    for cell in bare.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    assert any("image/png output" in problem for problem in output_problems(bare))
    leaky = copy.deepcopy(nb)
    code = next(cell for cell in leaky.cells if cell.cell_type == "code")
    code.outputs.append(nbformat.v4.new_output("stream", name="stdout", text="/work/logs/synthetic\n"))
    assert any("machine path '/work/'" in problem for problem in output_problems(leaky))
