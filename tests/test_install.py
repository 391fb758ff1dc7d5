"""The installed package as a user meets it: the wheel built from this repository, installed into a fresh virtual
environment, used from a folder of the user's own that holds a ``weights.py`` and a ``viz.py``.

The wheel must put only ``numpy_vit`` on the import path (the repository's ``viz/`` and ``weights/`` install as
``numpy_vit.viz`` and ``numpy_vit.weights``), so the user's modules and ours both keep working; and the README's
example must run from any folder. The fresh environment gets numpy_vit from the wheel alone; its dependencies
(numpy, Pillow, matplotlib, scikit-learn) come from this test's own environment through a ``.pth`` file, so that
the test needs no network.
"""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import venv

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_example() -> str:
    """The README's first Python block: the example a newcomer copies."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    assert blocks, "README.md has no ```python block"
    return blocks[0]


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtual environment with the wheel installed; returns (python, site-packages folder)."""
    tmp = tmp_path_factory.mktemp("install")
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools (in the test extra)")
    # built from a copy, so that a build/ folder left in the checkout by an earlier build adds nothing stale
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                                "_train", "out", "runs", ".pytest_cache"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(tmp), source])
    wheel = next(str(tmp / name) for name in os.listdir(tmp) if name.endswith(".whl"))
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / ("Scripts" if os.name == "nt" else "bin") / "python")
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", wheel])
    # then numpy, Pillow, ... from this environment (after the install: pip would find numpy_vit there too)
    with open(os.path.join(site, "test_dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    return python, site


def test_the_wheel_puts_only_numpy_vit_on_the_import_path(installed):
    python, site = installed
    top_level = sorted(name for name in os.listdir(site) if not name.endswith((".pth", ".dist-info"))
                       and name not in ("pip", "setuptools", "_distutils_hack", "pkg_resources", "__pycache__"))
    assert top_level == ["numpy_vit"]
    inside = set(os.listdir(os.path.join(site, "numpy_vit")))
    assert {"viz", "weights"} <= inside
    assert os.path.isfile(os.path.join(site, "numpy_vit", "weights", "default.npz"))   # the shipped model
    assert os.path.isfile(os.path.join(site, "numpy_vit", "viz", "assets", "sample.png"))


def test_readme_example_beside_a_users_own_weights_and_viz_modules(installed, tmp_path):
    python, site = installed
    user = tmp_path / "my_project"
    user.mkdir()
    (user / "weights.py").write_text("LEARNING_RATE = 3e-4  # the user's own module named weights\n")
    (user / "viz.py").write_text("def plot():\n    return 'the user own viz'\n")
    (user / "example.py").write_text(textwrap.dedent("""\
        import weights, viz                          # the user's modules, found first in the script's folder
        assert weights.LEARNING_RATE == 3e-4 and viz.plot() == "the user own viz"
        """) + readme_example() + textwrap.dedent("""
        import numpy_vit, numpy_vit.viz, numpy_vit.weights
        print("numpy_vit from", numpy_vit.__file__)
        print("top-1", trace.top_k(1))
        """))
    out = run([python, "example.py"], cwd=user)
    assert f"numpy_vit from {os.path.join(site, 'numpy_vit')}" in out   # the wheel's copy, not the repository's
    assert "top-1 [('heart'" in out                                      # the shipped model reads the sample


def test_the_command_runs_from_any_folder(installed, tmp_path):
    python, _ = installed
    command = os.path.join(os.path.dirname(python), "numpy-vit")
    image = run([python, "-c", "import numpy_vit; print(numpy_vit.sample_image())"]).strip()
    out = run([command, "predict", image], cwd=tmp_path)
    assert "heart" in out


def test_the_installed_demo_needs_nothing_outside_the_wheel(installed, tmp_path):
    """The demo pools the eight sample scenes shipped in viz/assets/; training/ stays in the repository."""
    python, site = installed
    assert os.path.isfile(os.path.join(site, "numpy_vit", "viz", "assets", "sample_scenes.npz"))
    assert not os.path.exists(os.path.join(site, "training"))
    out = run([python, "-m", "numpy_vit.viz.demo", "--out", str(tmp_path / "figures"), "--dpi", "30"], cwd=tmp_path)
    expected = {f"vis_{i}_{name}.png" for i, name in enumerate(
        ["patch_grid", "position_embedding", "attention_layers", "all_heads", "attention_distance", "cls_evolution",
         "attention_rollout", "explanations", "attention_budget"], start=1)} | {"explorer.html"}
    assert set(os.listdir(tmp_path / "figures")) == expected and "prediction: heart" in out
