"""docs/annotated_vit.ipynb, the walk-through from pixels to prediction: it runs from top to bottom on the shipped
model, its committed outputs are those of the current code, and it quotes the package instead of copying it.

Every step of the notebook recomputes an array with the package's functions and compares it with the model's
trace, raising if they differ, and its last section compares the attention with timm's; so running it checks
its claims. This file adds what a run alone would not: a fresh run gives the committed notebook's cells, kinds
of output, printed array shapes and quoted code (no stale outputs), and docs/annotated_vit.md is the committed
notebook's rendering. ``python docs/build_annotated_vit.py`` rewrites both.
"""
import ast
import importlib.util
import os

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs the test extra (pip install '.[test]')")
for _module in ("nbclient", "ipykernel", "torch", "timm"):  # the last section runs the same weights in timm
    if importlib.util.find_spec(_module) is None:  # looked up, not imported: the notebook's kernel imports them
        pytest.skip(f"the notebook test needs {_module}, from the test extra (pip install '.[test]')",
                    allow_module_level=True)

from numpy_vit import layers  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("build_annotated_vit", os.path.join(ROOT, "docs", "build_annotated_vit.py"))
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

REBUILD = "run `python docs/build_annotated_vit.py` and commit the notebook, docs/annotated_vit.md and its pictures"


@pytest.fixture(scope="module")
def committed():
    return nbformat.read(build.NOTEBOOK, as_version=4)


@pytest.fixture(scope="module")
def fresh(committed):
    """The committed notebook run again from top to bottom; a failing cell raises nbclient's
    CellExecutionError, which names the cell and shows its traceback."""
    return build.execute(committed)


def test_the_notebook_runs_and_its_outputs_are_not_stale(committed, fresh):
    old, new = build.signature(committed), build.signature(fresh)
    assert len(old) == len(new)
    for index, (was, now) in enumerate(zip(old, new)):
        kind, source, *_ = now
        first_line = source.splitlines()[0] if source else ""
        for part, what in ((2, "kinds of output"), (3, "printed array shapes"), (4, "code quoted from the package")):
            assert was[part] == now[part], (f"cell {index} ({kind}: {first_line!r}): its {what} differ from a "
                                            f"fresh run's: committed {was[part]!r}, fresh {now[part]!r}; {REBUILD}")


def test_every_code_cell_ran_without_error_in_the_committed_notebook(committed):
    for index, cell in enumerate(committed.cells):
        if cell.cell_type == "code":
            assert cell.execution_count is not None, f"cell {index} has not been run; {REBUILD}"
            errors = [o for o in cell.outputs if o.output_type == "error"]
            assert not errors, f"cell {index} holds an error output ({errors[0].ename}); {REBUILD}"


def test_the_rendered_copy_is_the_committed_notebook(committed, tmp_path):
    md = tmp_path / "annotated_vit.md"
    files = tmp_path / "annotated_vit_files"
    build.render_markdown(committed, str(md), str(files))
    with open(build.MARKDOWN, encoding="utf-8") as f:
        assert f.read() == md.read_text(encoding="utf-8"), f"docs/annotated_vit.md is out of date; {REBUILD}"
    pictures = sorted(os.listdir(files))
    assert sorted(os.listdir(build.FILES)) == pictures, f"docs/annotated_vit_files/ is out of date; {REBUILD}"
    for name in pictures:
        with open(os.path.join(build.FILES, name), "rb") as f:
            assert f.read() == (files / name).read_bytes(), f"docs/annotated_vit_files/{name} is out of date; {REBUILD}"


def _code_cells(nb):
    """Each code cell parsed as Python, its IPython magics (``%matplotlib inline``) left out."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            lines = [line for line in cell.source.splitlines() if not line.lstrip().startswith("%")]
            yield ast.parse("\n".join(lines))


def test_the_notebook_quotes_the_package_and_copies_none_of_it(committed):
    shown, defined = set(), set()
    for tree in _code_cells(committed):
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                defined.add(node.name)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "show_code" and node.args:
                target = node.args[0]
                if isinstance(target, ast.Attribute) and getattr(target.value, "id", None) == "layers":
                    shown.add(target.attr)
    package_functions = {name for name in dir(layers) if callable(getattr(layers, name)) and not name.startswith("_")}
    assert not defined & package_functions, f"the notebook defines its own {sorted(defined & package_functions)}"
    forward_steps = {"linear", "layer_norm", "gelu", "softmax", "patchify", "attention", "merge_heads", "mlp_block",
                     "block", "encoder", "pool"}
    assert forward_steps <= shown, f"the notebook does not quote layers.{sorted(forward_steps - shown)}"


def test_the_notebook_file_stays_small():
    # code hosts render notebooks up to a few MB; the pictures are 256-colour PNGs at modest resolution
    size = os.path.getsize(build.NOTEBOOK)
    assert size < 3 * 2 ** 20, f"docs/annotated_vit.ipynb is {size / 2 ** 20:.1f} MiB; keep it under 3 MiB"
