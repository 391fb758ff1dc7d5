"""The command line meets bad arguments with one line and exit code 2, never a traceback."""
import re

import pytest

from numpy_vit import cli


CLI_CASES = [
    (["show", "{photo}", "--model", "{deep}", "--layers", "12"], r"layer 12 is out of range: there are 12"),
    (["show", "{photo}", "--model", "{deep}", "--figure", "all_heads", "--layers", "-13"], r"--layers -13 is out"),
    (["show", "{photo}", "--model", "{deep}", "--head", "12"], r"--head 12 is out of range"),
    (["show", "{photo}", "--model", "{deep}", "--layers"], r"--layers: expected at least one argument"),
    (["show", "{photo}", "--model", "{deep}", "--figure", "heatmap"], r"unknown figure 'heatmap'; choose from"),
    (["show", "{photo}", "--model", "{deep}", "--query", "a,b"], r"--query 'a,b': use ROW,COL"),
    (["show", "{tmp}/nope.png", "--model", "{deep}"], r"image file not found: '.*nope\.png'"),
    (["show", "{photo}", "--model", "{tmp}/nope.npz"], r"nope\.npz: no such file or folder"),
    (["show", "{photo}", "--model", "random:resnet50"], r"unknown preset 'resnet50'"),
    (["show", "{photo}", "--model", "{deep}", "-o", "{afile}"], r"File exists: '.*afile\.txt'"),
    (["compare", "{photo}", "--after", "{deep}", "-o", "{afile}/x.png"], r"File exists|Not a directory"),
    (["predict", "{afile}", "--model", "{deep}"], r"afile\.txt' is not an image Pillow can read"),
    (["predict", "{photo}", "--model", "{deep}", "-k", "many"], r"-k/--top: invalid int value: 'many'"),
    (["convert", "{deep}", "-o", "{tmp}/missing_dir/out.npz"], r"folder .*missing_dir does not exist"),
    (["convert", "{deep}", "-o", "{tmp}"], r"that is a folder"),
    (["convert", "{deep}", "-o", "{tmp}/x.npz", "--arch", "vit_base_patch16_224"], r"not --arch vit_base_patch16_224 \(--arch vs file"),
    (["show", "{photo}", "--model", "{deep}", "--dpi", "3"], r"dpi must be a number from 10 to 1200, got 3"),
    (["demo", "--model", "{deep}", "--out", "{tmp}", "--dpi", "-5"], r"dpi must be a number from 10 to 1200, got -5"),
    (["explain", "{photo}", "--model", "{deep}", "--target", "unicorn"], r"unknown class 'unicorn'"),
    (["explain", "{photo}", "--model", "{deep}", "--method", "saliency"], r"invalid choice: 'saliency'"),
    (["explore", "{photo}", "--model", "{deep}", "--classes", "-1"], r"--classes"),
    (["explainn", "{photo}"], r"invalid choice: 'explainn'"),
    (["predict", "{photo}", "--model", "{deep}", "--img-size", "20"],
     r"--img-size 20 is not a multiple of this model's 8-pixel patches; use e\.g\. --img-size 16 or --img-size 24"),
    (["predict", "{photo}", "--img-size", "big"], r"argument --img-size: 'big': use one positive integer"),
    (["predict", "{photo}", "--model", "{bare}"], r"not the number of attention heads.*; pass --arch \(a preset"),
    (["predict", "{photo}", "--model", "{bare}", "--arch", "vit_gigantic"], r"--arch vit_gigantic is neither a preset"),
    (["predict", "{photo}", "--model", "random:vit_tiny_patch16_224", "--arch", "vit_tiny_patch16_224"],
     r"both name an architecture; give one"),
    (["compare", "{photo}", "--before", "{tmp}/nope.npz"], r"nope\.npz: no such file or folder"),
    (["convert", "random:resnet50", "-o", "{tmp}/x.npz"], r"unknown preset 'resnet50'"),
]


@pytest.mark.parametrize("argv, said", CLI_CASES, ids=[" ".join(a[:1] + a[2:]) for a, _ in CLI_CASES])
def test_cli_bad_argument_is_one_line_and_exit_code_2(argv, said, world, tmp_path, capsys):
    values = dict(photo=world.path("photo.png"), deep=world.path("deep.npz"), afile=world.path("afile.txt"),
                  bare=world.path("small.safetensors"), tmp=str(tmp_path))
    argv = [arg.format(**values) for arg in argv]
    try:
        code = cli.main(argv)
    except SystemExit as stop:                                            # argparse's own usage errors
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("numpy-vit") and "error:" in last and re.search(said, last), err
    assert not re.search(r"\barch=|ViTConfig|img_size|head_index|layer_idx", err), err   # flags, not Python names
