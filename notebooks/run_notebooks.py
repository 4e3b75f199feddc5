"""Run the notebooks of this folder top to bottom, as Jupyter runs them, and time each.

Each ``NN_*.py`` here is a notebook in jupytext's percent format; this script converts
it (jupytext), executes it in a fresh Python 3 kernel (nbclient) and prints its wall
time. It fails (exit status 1) when a cell raises, or when a notebook that draws with
``xpcnn.viz`` shows no figure inline (no ``image/png`` output). ``--out DIR`` also
writes the executed ``.ipynb`` files there.

    pip install ".[notebooks]"
    python notebooks/run_notebooks.py                # all of them
    python notebooks/run_notebooks.py 03 --out runs/notebooks
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent


def figures(nb: nbformat.NotebookNode) -> int:
    """How many PNG images the executed notebook's outputs hold."""
    return sum(
        "image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", [])
    )


def run(path: Path, out: Path | None, timeout: int) -> tuple[float, str | None]:
    """Execute one notebook; ``(seconds, None)`` or ``(seconds, why it failed)``."""
    nb = jupytext.read(path)
    start = time.perf_counter()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={
            "metadata": {"path": str(HERE)}
        }).execute()  # fmt: skip
        error = None
    except CellExecutionError as exc:
        lines = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()  # no colours
        error = lines[-1] if lines else repr(exc)
    seconds = time.perf_counter() - start
    if error is None and "viz." in path.read_text(encoding="utf-8") and not figures(nb):
        error = "draws with xpcnn.viz but shows no figure inline"
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out / path.with_suffix(".ipynb").name)
    return seconds, error


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="prefixes of the notebooks to run (default: all)")
    p.add_argument("--out", type=Path, help="folder for the executed .ipynb files")
    p.add_argument("--timeout", type=int, default=900, help="seconds per cell (default 900)")
    args = p.parse_args(argv)
    paths = sorted(HERE.glob("[0-9][0-9]_*.py"))
    if args.names:
        paths = [q for q in paths if q.name.startswith(tuple(args.names))]
    if not paths:
        print(f"no notebook matches {args.names}", file=sys.stderr)
        return 1
    failed = 0
    for path in paths:
        seconds, error = run(path, args.out, args.timeout)
        print(f"{path.name}: {seconds:.0f} s" + (f"  FAILED: {error}" if error else ""), flush=True)
        failed += error is not None
    print(f"{len(paths) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
