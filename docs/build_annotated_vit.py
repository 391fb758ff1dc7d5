"""Run docs/annotated_vit.ipynb top to bottom, keep its outputs, and render it: ``python docs/build_annotated_vit.py``.

Writes, from one run:
- docs/annotated_vit.ipynb, the notebook with the outputs of this run (so it reads well on a code host);
- docs/annotated_vit.md, the same cells as Markdown, its pictures in docs/annotated_vit_files/.

The notebook runs in a Jupyter kernel (nbclient) started with the Python that runs this script: ipykernel's
"python3" kernel, whose command jupyter_client launches as ``sys.executable`` (checked before the run). The
kernel's working folder is the repository's top folder, so ``import numpy_vit`` there finds this checkout's
package, and the code the notebook quotes is the code of this tree. tests/test_annotated_vit.py runs the notebook
with :func:`execute` and compares the result with the committed notebook through :func:`signature`.

The renderer is a few lines of our own rather than nbconvert, whose templates pull in many more packages.
"""
from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import sys
import time

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)
NOTEBOOK = os.path.join(DOCS, "annotated_vit.ipynb")
MARKDOWN = os.path.join(DOCS, "annotated_vit.md")
FILES = os.path.join(DOCS, "annotated_vit_files")
KERNEL = "python3"
CELL_TIMEOUT_S = 300  # one cell; the whole notebook takes well under a minute (docs/annotated_vit.md ends with it)

# a printed array shape, "(1, 197, 128)": what signature() compares between two runs
SHAPE = re.compile(r"\((?:\d+, )+\d+\)|\(\d+,\)")


def check_kernel():
    """Fail clearly unless the "python3" kernel starts the Python running this script (the one with numpy_vit)."""
    spec = KernelSpecManager().get_kernel_spec(KERNEL)
    program = spec.argv[0]
    # jupyter_client replaces a bare "python" (or "python3", "python3.11") by sys.executable when it launches
    if program not in ("python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]) \
            and os.path.realpath(program) != os.path.realpath(sys.executable):
        raise RuntimeError(f"the Jupyter kernel {KERNEL!r} runs {program} (from {spec.resource_dir}), not this Python "
                         f"({sys.executable}); install this Python's kernel with "
                         f"`{sys.executable} -m ipykernel install --sys-prefix` or remove that kernel spec")


def cleared(nb):
    """A copy of the notebook without outputs or execution counts."""
    nb = nbformat.from_dict(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def execute(nb, timeout=CELL_TIMEOUT_S):
    """Run every cell in a fresh kernel from the repository's top folder; a failing cell raises
    nbclient's CellExecutionError, naming the cell and its traceback. Returns the notebook with its outputs."""
    check_kernel()
    nb = cleared(nb)
    client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, record_timing=False,
                            resources={"metadata": {"path": ROOT}})
    client.execute()
    return nb


def _output_kind(output):
    if output.output_type == "stream":
        return f"stream:{output.name}"
    if output.output_type == "error":
        return f"error:{output.ename}"
    return f"{output.output_type}:" + ",".join(sorted(output.get("data", {})))


def _output_text(output):
    if output.output_type == "stream":
        return output.text
    data = output.get("data", {})
    return data.get("text/plain", "") if "text/markdown" not in data else ""


def _quoted_code(output):
    """The code a ``show_code`` output quotes, without its first line (the file and line numbers, which move
    whenever lines are added above the function)."""
    text = output.get("data", {}).get("text/markdown", "")
    return text.split("\n", 1)[1] if "\n" in text else text


def signature(nb):
    """What a fresh run must reproduce, per cell: its type, its source, the kind of every output (printed text,
    picture, quoted code), every array shape its printed text names, and the code it quotes from the package.
    Numbers other than shapes (maxima, probabilities, the run time) are not compared: they may differ in the
    last digits between machines. Nor is text on stderr: the warnings a library release prints say nothing
    about this notebook's outputs (a cell that fails still fails the run)."""
    cells = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            cells.append((cell.cell_type, cell.source, (), (), ()))
            continue
        outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
        kinds = tuple(_output_kind(o) for o in outputs)
        shapes = tuple(s for o in outputs for s in SHAPE.findall(_output_text(o)))
        quoted = tuple(_quoted_code(o) for o in outputs if "text/markdown" in o.get("data", {}))
        cells.append(("code", cell.source, kinds, shapes, quoted))
    return cells


# --- the rendered copy --------------------------------------------------------------------------------------

def _fence(text, language=""):
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}{language}\n{text.rstrip()}\n{fence}"


def render_markdown(nb, md_path=MARKDOWN, files_dir=FILES):
    """Write the notebook as Markdown: its Markdown cells as they are, code in python blocks, printed text in
    plain blocks, quoted code (text/markdown outputs) as it is, pictures as PNG files in ``files_dir``."""
    if os.path.isdir(files_dir):
        shutil.rmtree(files_dir)  # no picture of an earlier run stays behind
    os.makedirs(files_dir)
    folder = os.path.relpath(files_dir, os.path.dirname(md_path))
    parts = [f"<!-- Made by `python docs/build_annotated_vit.py` from {os.path.basename(NOTEBOOK)}: "
             f"edit the notebook, not this file. -->"]
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            parts.append(cell.source)
            continue
        if cell.cell_type != "code":
            continue
        parts.append(_fence(cell.source, "python"))
        for number, output in enumerate(cell.outputs):
            if output.output_type == "stream":
                parts.append(_fence(output.text))
            elif output.output_type == "error":
                parts.append(_fence("\n".join(output.traceback)))
            else:
                data = output.get("data", {})
                if "image/png" in data:
                    name = f"cell{index:02d}_{number}.png"
                    with open(os.path.join(files_dir, name), "wb") as f:
                        f.write(base64.b64decode(data["image/png"]))
                    parts.append(f"![]({folder}/{name})")
                elif "text/markdown" in data:
                    parts.append(data["text/markdown"])
                elif "text/plain" in data:
                    parts.append(_fence(data["text/plain"]))
    with open(md_path, "w", encoding="utf-8") as f:
        f.write("\n\n".join(parts) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render-only", action="store_true",
                        help="render the committed notebook's outputs to Markdown without running it")
    args = parser.parse_args(argv)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    if not args.render_only:
        start = time.perf_counter()
        try:
            nb = execute(nb)
        except RuntimeError as e:  # the kernel is another Python's
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"ran {NOTEBOOK} in {time.perf_counter() - start:.1f} s")
        nbformat.write(nb, NOTEBOOK)
    render_markdown(nb)
    size = os.path.getsize(NOTEBOOK) / 2 ** 20
    print(f"wrote {os.path.relpath(NOTEBOOK, ROOT)} ({size:.2f} MiB), {os.path.relpath(MARKDOWN, ROOT)} "
          f"and {len(os.listdir(FILES))} pictures in {os.path.relpath(FILES, ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
