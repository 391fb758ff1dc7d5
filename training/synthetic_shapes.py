"""Synthetic "shapes in clutter": the data the shipped default model is trained on.

Every image holds exactly one object of one of ten classes (circle, square, ...)
at a random position, size, rotation and colour, drawn over a cluttered
background: a smooth colour texture, pixel noise, and distractor strokes and
blobs that belong to no class. The label says which class the object is, the
mask says which pixels it covers, so the figures can be checked: an attention
map that "finds the object" puts its mass inside the mask.

    data = make_shapes(1000, seed=0)            # 224 x 224, the model's input size
    data["images"]   # [n, H, W, 3] uint8
    data["labels"]   # [n] int64, index into data["classes"]
    data["masks"]    # [n, H, W] bool, the object's pixels
    data["classes"]  # ("circle", "square", ...)

Scenes are drawn in units of the image side, so ``make_shapes(n, seed,
img_size=112)`` renders the same scenes (same classes, positions, sizes,
colours) directly at 112 x 112: training at low resolution and fine-tuning at
224 see one distribution. Only the pixel noise differs between sizes.

``make_two_shapes(n, seed)`` draws scenes in the same clutter holding two
objects of different classes, a patch apart, for checking class-specific
explanations (a map for one class should sit on that class's object).

Shapes: n images, S image side in pixels, K polygon vertices.
"""
from __future__ import annotations

import numpy as np

from numpy_vit.weights.labels import SHAPE_CLASSES as CLASSES   # the shipped model's classes, in label order

# Object size: the diameter of the object's bounding circle, as a fraction of the
# image side (40..120 px at 224).
OBJECT_SIZE = (40 / 224, 120 / 224)
MARGIN = 0.01          # least gap between the object's bounding circle and the image border
MIN_CONTRAST = 90.0     # least RGB distance between the object's colour and the background under it
MAX_CLUTTER = 10        # distractors per image: 3..MAX_CLUTTER strokes and blobs


# --- outlines: unit-radius polygons centred at 0 ------------------------------

def _regular_polygon(k: int, phase: float = np.pi / 2) -> np.ndarray:  # -> [k, 2]
    angles = phase + 2 * np.pi * np.arange(k) / k
    return np.stack([np.cos(angles), -np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.42) -> np.ndarray:  # -> [2*points, 2]
    outer = _regular_polygon(2 * points)
    radius = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return outer * radius[:, None]


def _heart(k: int = 48) -> np.ndarray:  # -> [k, 2]
    """The classic parametric heart (x = 16 sin^3 t, y = 13 cos t - 5 cos 2t - ...), scaled into the unit disc."""
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    xy = np.stack([x, -y], axis=1)                           # image y grows downwards
    xy -= (xy.max(0) + xy.min(0)) / 2
    return xy / np.abs(xy).max()


_CIRCLE = _regular_polygon(48)
_OUTLINES = {  # polygons of the simply connected shapes, all inside the unit disc
    "circle": _CIRCLE,
    "square": _regular_polygon(4, np.pi / 4),
    "triangle": _regular_polygon(3),
    "star": _star(),
    "hexagon": _regular_polygon(6),
    "cross": np.array([[-1, -3], [1, -3], [1, -1], [3, -1], [3, 1], [1, 1],
                       [1, 3], [-1, 3], [-1, 1], [-3, 1], [-3, -1], [-1, -1]]) / np.sqrt(10),
    "arrow": np.array([[-1, -0.28], [0.15, -0.28], [0.15, -0.7], [1, 0],
                       [0.15, 0.7], [0.15, 0.28], [-1, 0.28]]) / 1.0,
    "heart": _heart(),
}


def _parts(name: str) -> list:
    """The object as (unit polygon, fill) layers drawn in order; fill 0 cuts a hole (ring, crescent)."""
    if name == "ring":
        return [(_CIRCLE, 1), (_CIRCLE * 0.55, 0)]
    if name == "crescent":
        return [(_CIRCLE, 1), (_CIRCLE * 0.85 + np.array([0.42, -0.1]), 0)]
    return [(_OUTLINES[name], 1)]


# --- drawing ---------------------------------------------------------------------

def _rotate(points: np.ndarray, angle: float) -> np.ndarray:  # [K, 2] -> [K, 2]
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _draw_object(name, center, radius, angle, size, supersample=2):
    """Rasterise the object as a bool mask [S, S] (antialiasing skipped: the mask is the ground truth)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (size * supersample, size * supersample), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon, fill in _parts(name):
        xy = (_rotate(polygon, angle) * radius + center) * size * supersample   # unit disc -> pixels
        draw.polygon([tuple(p) for p in xy], fill=255 * fill)
    if supersample > 1:
        canvas = canvas.resize((size, size), Image.BOX)
    return np.asarray(canvas) >= 128                                              # [S, S]


def _draw_clutter(scene, size):
    """Distractor strokes (polylines) and blobs (small lumpy ellipses) as RGB on transparent, [S, S, 4] uint8."""
    from PIL import Image, ImageDraw

    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for kind, points, width, colour in scene:
        xy = [tuple(p) for p in points * size]
        if kind == "stroke":
            draw.line(xy, fill=colour, width=max(1, int(round(width * size))), joint="curve")
        else:
            draw.polygon(xy, fill=colour)
    return np.asarray(layer)


def _background(size, base, texture):
    """A smooth colour field: the base colour plus a few low-frequency plane waves per channel. -> [S, S, 3] float32.

    sin(a_y + b_x) = sin(a_y) cos(b_x) + cos(a_y) sin(b_x), so each wave is two outer products, not S*S sines.
    """
    coords = 2 * np.pi * (np.arange(size, dtype=np.float32) + 0.5) / size          # [S]
    waves = []
    for (fy, fx, phase, _) in texture:
        a, b = fy * coords + phase, fx * coords                                  # [S], [S]
        waves.append(np.outer(np.sin(a), np.cos(b)) + np.outer(np.cos(a), np.sin(b)))  # [S, S]
    amplitudes = np.array([amplitude for (*_, amplitude) in texture], np.float32)   # [T, 3]
    field = np.stack(waves, axis=-1).reshape(size * size, -1) @ amplitudes      # [S*S, T] @ [T, 3] -> [S*S, 3]
    return field.reshape(size, size, 3) + np.asarray(base, np.float32)


def _sample_scene(rng):
    """Draw one scene in image-side units, independent of the pixel size."""
    label = int(rng.integers(len(CLASSES)))
    diameter = rng.uniform(*OBJECT_SIZE)
    radius = diameter / 2
    center = rng.uniform(radius + MARGIN, 1 - radius - MARGIN, size=2)           # (x, y), wholly inside the image
    angle = rng.uniform(0, 2 * np.pi)
    base = rng.uniform(30, 225, size=3)
    texture = [(rng.integers(-4, 5), rng.integers(-4, 5), rng.uniform(0, 2 * np.pi), rng.uniform(-35, 35, size=3))
               for _ in range(3)]
    while True:                                                                  # a colour that stands out
        colour = rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - base) >= MIN_CONTRAST:
            break
    clutter = []
    for _ in range(int(rng.integers(3, MAX_CLUTTER + 1))):
        clutter_colour = tuple(int(c) for c in rng.integers(0, 256, size=3)) + (int(rng.integers(150, 256)),)
        if rng.random() < 0.6:   # a stroke: a random walk of 2-4 segments, thin
            start = rng.uniform(0, 1, size=2)
            steps = rng.normal(0, 0.12, size=(int(rng.integers(2, 5)), 2))
            points = np.concatenate([start[None], start + np.cumsum(steps, axis=0)])
            clutter.append(("stroke", points, rng.uniform(0.006, 0.02), clutter_colour))
        else:                    # a blob: a lumpy, elongated closed curve smaller than any object
            k = 12
            t = 2 * np.pi * np.arange(k) / k
            lumps = 1 + 0.35 * rng.uniform(-1, 1, size=k)
            axes = rng.uniform(0.01, 0.045, size=2)
            points = np.stack([np.cos(t) * axes[0], np.sin(t) * axes[1]], 1) * lumps[:, None]
            points = _rotate(points, rng.uniform(0, 2 * np.pi)) + rng.uniform(0, 1, size=2)
            clutter.append(("blob", points, 0.0, clutter_colour))
    noise_sigma = rng.uniform(4, 16)
    return dict(label=label, center=center, radius=radius, angle=angle, base=base, texture=texture,
                colour=colour, clutter=clutter, noise_sigma=noise_sigma)


def _render(scene, size, noise_rng, objects=None):
    """Pixels of one scene at S x S: background, clutter, the objects on top, then noise.

    ``objects``: the objects to draw, each a dict with label, center, radius, angle and colour; None draws the
    scene's own one. -> ([S, S, 3] uint8, [k, S, S] bool: one mask per object, in order).
    """
    image = _background(size, scene["base"], scene["texture"])                     # [S, S, 3]
    clutter = _draw_clutter(scene["clutter"], size)                              # [S, S, 4] uint8
    drawn = clutter[..., 3] > 0                                                  # blend only where clutter was drawn
    alpha = clutter[drawn, 3:].astype(np.float32) / 255                          # [n_drawn, 1]
    image[drawn] = image[drawn] * (1 - alpha) + clutter[drawn, :3] * alpha
    masks = []
    for thing in [scene] if objects is None else objects:
        mask = _draw_object(CLASSES[thing["label"]], thing["center"], thing["radius"], thing["angle"], size)
        image[mask] = thing["colour"]
        masks.append(mask)
    image += noise_rng.standard_normal(image.shape, dtype=np.float32) * np.float32(scene["noise_sigma"])
    return np.clip(image, 0, 255).astype(np.uint8), np.stack(masks)             # [S, S, 3], [k, S, S]


def _check_request(name, n, seed, img_size):
    from numpy_vit.errors import ArgumentError

    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ArgumentError(f"{name}: n must be an integer >= 0, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ArgumentError(f"{name}: seed must be an integer >= 0, got {seed!r}")
    if not isinstance(img_size, (int, np.integer)) or isinstance(img_size, bool) or img_size < 16:
        raise ArgumentError(f"{name}: img_size must be an integer >= 16 (pixels per side), got {img_size!r}")


def make_shapes(n: int, seed: int, img_size: int = 224) -> dict:
    """``n`` images of one shape each in clutter; deterministic for (n, seed, img_size).

    Scene i depends only on (seed, i), so ``make_shapes(10, s)`` is the first ten
    images of ``make_shapes(1000, s)``, and the same scenes come out at every
    ``img_size`` (only the pixel noise is drawn per size).
    """
    _check_request("make_shapes", n, seed, img_size)
    images = np.empty((n, img_size, img_size, 3), np.uint8)
    masks = np.empty((n, img_size, img_size), bool)
    labels = np.empty(n, np.int64)
    for i in range(n):
        scene = _sample_scene(np.random.default_rng([seed, i]))
        images[i], (masks[i],) = _render(scene, img_size, np.random.default_rng([seed, i, img_size]))
        labels[i] = scene["label"]
    return dict(images=images, labels=labels, masks=masks, classes=CLASSES)


# --- two objects of different classes in one scene ---------------------------------------------

# The gap between the two objects, in patches of the shipped model's grid (16 px patches at 224, a 14 x 14 grid):
# the patch cells each object's bounding box touches are at least one whole cell row or column apart, so no patch
# holds any of both objects and an explanation map can be scored object by object (training/synthetic_shapes).
GAP_GRID = 14
GAP_CELLS = 1


def _cells(center, radius):
    """The patch cells (first, last) along x and y that an object's bounding circle touches, on GAP_GRID."""
    low = np.floor((np.asarray(center) - radius) * GAP_GRID).astype(int)          # (x, y)
    high = np.floor((np.asarray(center) + radius) * GAP_GRID).astype(int)        # (x, y), inclusive
    return low, high


def _apart(first, second):
    """Whether two objects' cell boxes have at least GAP_CELLS whole cells between them along x or along y."""
    (low_a, high_a), (low_b, high_b) = _cells(first["center"], first["radius"]), _cells(second["center"], second["radius"])
    return bool(np.any((low_b > high_a + GAP_CELLS) | (low_a > high_b + GAP_CELLS)))


def _sample_two_object_scene(rng, max_tries=1000):
    """One scene (background, clutter, noise as ``_sample_scene``) holding two objects of different classes.

    The first object's class and colour are the scene's; the second's class is drawn from the other nine and its
    colour stands out from the background and from the first object. Sizes and positions of both are drawn
    again until they are apart (``_apart``), so large pairs that cannot be separated are never chosen.
    """
    scene = _sample_scene(rng)
    second = int(rng.integers(len(CLASSES) - 1))
    second += second >= scene["label"]                                           # any class but the first's
    while True:
        colour = rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - scene["base"]) >= MIN_CONTRAST and \
                np.linalg.norm(colour - scene["colour"]) >= MIN_CONTRAST:
            break
    for _ in range(max_tries):
        objects = []
        for label, tint in ((scene["label"], scene["colour"]), (second, colour)):
            radius = rng.uniform(*OBJECT_SIZE) / 2
            center = rng.uniform(radius + MARGIN, 1 - radius - MARGIN, size=2)    # (x, y), wholly inside
            objects.append(dict(label=label, center=center, radius=radius, angle=rng.uniform(0, 2 * np.pi),
                                colour=tint))
        if _apart(*objects):
            return scene, objects
    raise RuntimeError(f"no placement of two objects {max_tries} draws long: the object sizes cannot fit")


def make_two_shapes(n: int, seed: int, img_size: int = 224) -> dict:
    """``n`` images holding two objects of different classes each, in the clutter of ``make_shapes``.

    The two objects never overlap: the 16 px patches (at 224; a 14 x 14 grid at any size) that their bounding
    circles touch are at least one whole patch row or column apart, so every patch shows at most one of them.
    Meant for explanations: a map for class A should sit on object A, a map for class B on object B.
    Deterministic for (n, seed, img_size); scene i depends only on (seed, i); the same scenes at every img_size.

        data = make_two_shapes(4, seed=0)
        data["images"]   # [n, S, S, 3] uint8
        data["labels"]   # [n, 2] int64, the two objects' classes (always different), index into data["classes"]
        data["masks"]    # [n, 2, S, S] bool, each object's pixels (disjoint)
        data["classes"]  # the ten class names
    """
    _check_request("make_two_shapes", n, seed, img_size)
    images = np.empty((n, img_size, img_size, 3), np.uint8)
    masks = np.empty((n, 2, img_size, img_size), bool)
    labels = np.empty((n, 2), np.int64)
    for i in range(n):
        scene, objects = _sample_two_object_scene(np.random.default_rng([seed, i, 2]))   # 2: not make_shapes' scenes
        images[i], masks[i] = _render(scene, img_size, np.random.default_rng([seed, i, 2, img_size]), objects)
        labels[i] = [thing["label"] for thing in objects]
    return dict(images=images, labels=labels, masks=masks, classes=CLASSES)
