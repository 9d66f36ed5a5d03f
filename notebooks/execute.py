"""Re-execute notebooks in place and save them with clean outputs (`make notebook`).

    python notebooks/execute.py notebooks/walkthrough.ipynb

Each notebook runs in a fresh kernel with its own folder as the working directory, as Jupyter would run it. The
saved copy keeps what a reader needs (printed text, Markdown tables, figures as image/png, which a forge's
notebook viewer renders), drops what would change from one run to the next without saying anything, and stays
small (two runs on the same checkpoints give the same bytes):

- no per-cell execution timestamps (nbclient's ``record_timing`` is off) and no widget state; execution counts are
  1, 2, 3, ... in cell order, as a fresh kernel numbers them; consecutive prints to a stream are one output (the
  kernel splits them wherever its flushes fell);
- no progress bars or warnings: the kernel runs with ``TQDM_DISABLE=1`` and ``PYTHONWARNINGS=ignore``;
- a Markdown output (a table) keeps its source as its text/plain fallback too;
- figures are stored as 256-colour palette PNGs (the patch grids have ~350 colours, so the largest error is 3/255
  there; the line plots lose a few antialiasing shades): about half the bytes of matplotlib's RGBA PNGs, and
  without its version stamp. The PNG files the notebook writes to its output folder are left as they are.

A cell that fails leaves the file on disk untouched and ends the command with that cell's error message (e.g.
"run `make train` first") instead of the kernel's traceback.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from PIL import Image


def compact_png(data: str) -> str:
    """A base64 PNG re-encoded as a 256-colour palette PNG (kept as it was when that is not smaller)."""
    image = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
    buffer = io.BytesIO()
    image.quantize(256, dither=Image.Dither.NONE).save(buffer, "PNG", optimize=True)
    compact = base64.b64encode(buffer.getvalue()).decode("ascii")
    return compact if len(compact) < len(data) else data


def coalesce_streams(outputs: list) -> list:
    """Consecutive prints to the same stream as one output: where the kernel splits them depends on timing."""
    merged: list = []
    for out in outputs:
        if out.output_type == "stream" and merged and merged[-1].output_type == "stream" \
                and merged[-1].name == out.name:
            merged[-1].text += out.text
        else:
            merged.append(out)
    return merged


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop what changes from one execution to the next but says nothing about the results; shrink the figures."""
    nb.metadata.pop("widgets", None)
    count = 0
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # iopub/shell timestamps, if a client recorded them
        cell.metadata.pop("widgets", None)
        if cell.cell_type != "code":
            continue
        count += 1
        cell.execution_count = count
        cell.outputs = coalesce_streams(cell.outputs)
        for out in cell.outputs:
            if "execution_count" in out:  # an execute_result carries its cell's count too
                out.execution_count = count
            if "image/png" in out.get("data", {}):
                out.data["image/png"] = compact_png(out.data["image/png"])
            if "text/markdown" in out.get("data", {}):  # a viewer without Markdown outputs shows the table's source,
                out.data["text/plain"] = out.data["text/markdown"]  # not "<IPython.core.display.Markdown object>"
    return nb


def execute(path: Path, timeout: int) -> None:
    nb = nbformat.read(path, as_version=4)
    # the kernel inherits this process's environment: no progress bars or library warnings in the outputs
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["PYTHONWARNINGS"] = "ignore"
    # the kernel's own start-up notice (it listens on localhost TCP) is not for the user: errors only
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            extra_arguments=["--IPKernelApp.log_level=ERROR"],
                            resources={"metadata": {"path": str(path.resolve().parent)}})
    try:
        client.execute()
    except CellExecutionError as err:
        # the cell's own message (ename: evalue) is the useful part; the traceback points into the kernel
        sys.exit(f"{path}: a cell failed, so the notebook was not saved\n{err.ename}: {err.evalue}")
    nb = clean(nb)
    nbformat.validate(nb)
    nbformat.write(nb, path)
    print(f"{path}: executed and saved ({path.stat().st_size / 1024:.0f} KiB)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="the .ipynb files to execute and overwrite")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds one cell may run (default 1200)")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        execute(path, args.timeout)


if __name__ == "__main__":
    main()
