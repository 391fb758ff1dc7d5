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


def _render(scene, size, noise_rng):
    """Pixels of one scene at S x S: background, clutter, the object on top, then noise. -> ([S,S,3] uint8, [S,S] bool)."""
    image = _background(size, scene["base"], scene["texture"])                     # [S, S, 3]
    clutter = _draw_clutter(scene["clutter"], size)                              # [S, S, 4] uint8
    drawn = clutter[..., 3] > 0                                                  # blend only where clutter was drawn
    alpha = clutter[drawn, 3:].astype(np.float32) / 255                          # [n_drawn, 1]
    image[drawn] = image[drawn] * (1 - alpha) + clutter[drawn, :3] * alpha
    mask = _draw_object(CLASSES[scene["label"]], scene["center"], scene["radius"], scene["angle"], size)
    image[mask] = scene["colour"]
    image += noise_rng.standard_normal(image.shape, dtype=np.float32) * np.float32(scene["noise_sigma"])
    return np.clip(image, 0, 255).astype(np.uint8), mask


def make_shapes(n: int, seed: int, img_size: int = 224) -> dict:
    """``n`` images of one shape each in clutter; deterministic for (n, seed, img_size).

    Scene i depends only on (seed, i), so ``make_shapes(10, s)`` is the first ten
    images of ``make_shapes(1000, s)``, and the same scenes come out at every
    ``img_size`` (only the pixel noise is drawn per size).
    """
    from numpy_vit.errors import ArgumentError

    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ArgumentError(f"make_shapes: n must be an integer >= 0, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ArgumentError(f"make_shapes: seed must be an integer >= 0, got {seed!r}")
    if not isinstance(img_size, (int, np.integer)) or isinstance(img_size, bool) or img_size < 16:
        raise ArgumentError(f"make_shapes: img_size must be an integer >= 16 (pixels per side), got {img_size!r}")
    images = np.empty((n, img_size, img_size, 3), np.uint8)
    masks = np.empty((n, img_size, img_size), bool)
    labels = np.empty(n, np.int64)
    for i in range(n):
        scene = _sample_scene(np.random.default_rng([seed, i]))
        images[i], masks[i] = _render(scene, img_size, np.random.default_rng([seed, i, img_size]))
        labels[i] = scene["label"]
    return dict(images=images, labels=labels, masks=masks, classes=CLASSES)
