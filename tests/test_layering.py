"""Imports run one way, read from the source (ast), without importing anything:

    training/             the recipe of the shipped model (torch)          imports anything below
    numpy_vit/cli.py      the application: the numpy-vit command           imports anything below
    viz/                  the figures and the demo (matplotlib)            numpy_vit.weights, the core
    weights/              checkpoint formats, the shipped model, models    the core
                          by name
    numpy_vit/            the core: config, errors, image, layers, fast,   itself only
                          erf, model, trace, resample, analysis

One import runs upward, inside the function that needs it: ``ViT.from_pretrained`` reads checkpoints with
``numpy_vit.weights`` (numpy_vit.model -> numpy_vit.weights). No module imports another that imports it back,
directly or through others, except through that one. torch, timm and transformers are imported at the top of
training/ only (inside the readers that need them elsewhere); matplotlib only by viz/.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# folder -> the package its modules are imported as (the installed layout: viz/ is numpy_vit.viz)
PACKAGES = {"numpy_vit": "numpy_vit", "weights": "numpy_vit.weights", "viz": "numpy_vit.viz", "training": "training"}
LAYERS = ("core", "weights", "viz", "app", "training")          # each may import its own layer and those before it
ALLOWED_UPWARD = {("numpy_vit.model", "numpy_vit.weights")}     # ViT.from_pretrained, inside the method
TOP_LEVEL_ONLY_IN_TRAINING = ("torch", "timm", "transformers")
MATPLOTLIB_LAYERS = ("viz", "app", "training")


def layer_of(module: str) -> str:
    if module == "numpy_vit.cli":
        return "app"
    for prefix, layer in (("numpy_vit.weights", "weights"), ("numpy_vit.viz", "viz"), ("training", "training")):
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return "core"


def our_modules(root=ROOT) -> dict:
    """{module name: source} for every .py of the four folders."""
    modules = {}
    for folder, package in PACKAGES.items():
        for name in sorted(os.listdir(os.path.join(root, folder))):
            if name.endswith(".py"):
                module = package if name == "__init__.py" else f"{package}.{name[:-3]}"
                with open(os.path.join(root, folder, name), encoding="utf-8") as f:
                    modules[module] = f.read()
    return modules


def imports(module: str, source: str, known) -> list:
    """(imported module, line, at the top level?) for every import in ``source``; ``from package import name``
    counts as importing ``package.name`` when that is one of ``known``."""
    package = module if module in PACKAGES.values() else module.rpartition(".")[0]
    found = []

    def visit(node, top):
        for child in ast.iter_child_nodes(node):
            inside = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - child.level + 1] + ([base] if base else []))
                for alias in child.names:
                    name = f"{base}.{alias.name}"
                    found.append((name if name in known else base, child.lineno, top))
            visit(child, inside)

    visit(ast.parse(source), True)
    return found


def our_target(name: str, known) -> str:
    """The module of ours that ``name`` is or lies in (``numpy_vit.weights.loader.DEFAULT_PATH`` -> the loader),
    else None."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def layering_errors(modules: dict) -> list:
    """Every import that runs against the layering, and every cycle, as readable lines."""
    errors, graph = [], {module: set() for module in modules}
    for module, source in modules.items():
        for name, line, top in imports(module, source, modules):
            target = our_target(name, modules)
            top_package = name.split(".")[0]
            if top and top_package in TOP_LEVEL_ONLY_IN_TRAINING and layer_of(module) != "training":
                errors.append(f"{module}:{line} imports {name} at the top (only training/ may; elsewhere inside "
                              f"the function that needs it)")
            if top_package == "matplotlib" and layer_of(module) not in MATPLOTLIB_LAYERS:
                errors.append(f"{module}:{line} imports {name}: matplotlib belongs to the figures (viz/)")
            if target is None or target == module:
                continue
            upward = LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(module))
            allowed = any(module == low and (target == high or target.startswith(high + "."))
                          for low, high in ALLOWED_UPWARD) and not top
            if upward and not allowed:
                errors.append(f"{module}:{line} imports {target}: {layer_of(module)} may not import "
                              f"{layer_of(target)} ({' <- '.join(LAYERS)})")
            if not allowed:
                graph[module].add(target)
    errors.extend(f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph))
    return errors


def cycles(graph: dict) -> list:
    """One path around each cycle that a depth-first search meets."""
    found, state, path = [], {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                found.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_imports_run_one_way_and_never_in_a_circle():
    errors = layering_errors(our_modules())
    assert not errors, "\n".join(errors)


def test_every_layer_is_there():
    """The test reads the folders it means to: a renamed folder would pass it silently."""
    layers = {layer_of(module) for module in our_modules()}
    assert layers == set(LAYERS)


@pytest.mark.parametrize("module, source, expected", [
    ("numpy_vit.config", "from numpy_vit.viz import figures\n", "core may not import viz"),
    ("numpy_vit.weights.loader", "def f():\n    from numpy_vit.cli import main\n", "weights may not import app"),
    ("numpy_vit.viz.demo", "from .. import cli\n", "viz may not import app"),
    ("numpy_vit.viz.figures", "import training.synthetic_shapes\n", "viz may not import training"),
    ("numpy_vit.model", "from numpy_vit.weights import loader\n", "core may not import weights"),   # at the top
    ("numpy_vit.weights.native", "import torch\n", "imports torch at the top"),
    ("numpy_vit.analysis", "import matplotlib.pyplot\n", "matplotlib belongs to the figures"),
    ("numpy_vit.weights.native", "from .loader import read_checkpoint\n", "import cycle"),
])
def test_a_deliberate_violation_is_reported(module, source, expected):
    modules = our_modules()
    modules[module] = modules[module] + "\n" + source
    errors = layering_errors(modules)
    assert any(expected in error for error in errors), errors


def test_the_one_upward_import_is_allowed_only_inside_a_function():
    modules = our_modules()
    assert "numpy_vit.weights" in {our_target(name, modules) for name, _, top
                                   in imports("numpy_vit.model", modules["numpy_vit.model"], modules) if not top}
