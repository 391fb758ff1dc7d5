"""Class names that travel with classifier checkpoints, and the ten classes of the shipped default model.

``imagenet_classes.json`` lists the 1000 ImageNet-1k classes in the order every
timm / torchvision / Google classifier uses (sorted WordNet ids): a JSON list
with one ``[synset, lemmas]`` pair per class index, one per line. It was generated from timm's
``timm/data/_info/imagenet_synsets.txt`` and ``imagenet_synset_to_lemma.txt`` by
``python -m numpy_vit.weights.labels --regenerate`` (which needs timm installed).
A label is the first lemma ("tench" for "tench, Tinca tinca").
"""
from __future__ import annotations

import functools
import json
import os
import sys

from numpy_vit.errors import CheckpointError

# What weights/default.npz classifies, in its label order (its config.labels hold the same names):
# the synthetic shapes that training/synthetic_shapes.py draws.
SHAPE_CLASSES = ("circle", "square", "triangle", "star", "hexagon",
                 "cross", "ring", "crescent", "arrow", "heart")

IMAGENET_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_classes.json")


@functools.lru_cache(maxsize=None)
def _imagenet_rows() -> tuple:
    try:
        with open(IMAGENET_FILE, encoding="utf-8") as f:
            rows = tuple(tuple(pair) for pair in json.load(f))
    except (OSError, json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"cannot read the ImageNet class list {IMAGENET_FILE}: {e}") from None
    if len(rows) != 1000 or any(len(r) != 2 for r in rows):
        raise CheckpointError(f"{IMAGENET_FILE} must list 1000 [synset, lemmas] pairs")
    return rows


def imagenet_labels() -> tuple:
    """The 1000 ImageNet-1k class names, index order."""
    return tuple(lemmas.split(",")[0].strip() for _, lemmas in _imagenet_rows())


def imagenet_synsets() -> tuple:
    return tuple(synset for synset, _ in _imagenet_rows())


def labels_from_synsets(names) -> tuple:
    """Readable names for a list of WordNet ids (timm's ``label_names``); names that are not ids stay as they are."""
    lookup = {synset: lemmas.split(",")[0].strip() for synset, lemmas in _imagenet_rows()}
    return tuple(lookup.get(str(n), str(n)) for n in names)


def _regenerate():
    """Write imagenet_classes.json from the class lists timm ships."""
    import timm.data
    folder = os.path.join(os.path.dirname(timm.data.__file__), "_info")
    with open(os.path.join(folder, "imagenet_synsets.txt")) as f:
        synsets = [line.strip() for line in f if line.strip()]
    with open(os.path.join(folder, "imagenet_synset_to_lemma.txt")) as f:
        lemmas = dict(line.rstrip("\n").split("\t", 1) for line in f if "\t" in line)
    assert len(synsets) == 1000 and synsets == sorted(synsets), "ImageNet-1k order is the sorted synset order"
    with open(IMAGENET_FILE, "w", encoding="utf-8") as f:
        f.write("[\n" + ",\n".join(json.dumps([s, lemmas[s]]) for s in synsets) + "\n]\n")
    print(f"wrote {IMAGENET_FILE}: {len(synsets)} classes")


if __name__ == "__main__" and "--regenerate" in sys.argv:
    _regenerate()
