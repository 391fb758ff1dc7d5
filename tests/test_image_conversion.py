"""Convertible images: every image a learner may hand the tool that can be read (a mode other than RGB, an
EXIF rotation, an animation, an upscaling) gives the right RGB and says what was done with an
ImageConversionWarning.
"""
import re
import warnings

import numpy as np
import pytest
from PIL import Image

import numpy_vit as nv
from bad_input_files import animated_gif, pattern_image
from numpy_vit.image import ImageConversionWarning, load_image, to_rgb_array


# --- convertible images: the right RGB, and a warning that says what was done ------------------------------

def _composite_on_white(rgb, alpha):
    a = alpha.astype(np.float64)[..., None] / 255
    return np.round(rgb * a + 255 * (1 - a))


def _conversions():
    base = pattern_image(6, 10)                                               # [6, 10, 3]
    alpha = np.tile(np.array([0, 64, 128, 255, 200], np.uint8), (6, 2))      # [6, 10]
    grey = base[..., 0]
    palette = Image.fromarray(base).quantize(8)
    lut = np.array(palette.getpalette()[:8 * 3]).reshape(8, 3)
    cmyk = np.stack([base[..., 0], base[..., 1], base[..., 2], np.full((6, 10), 40, np.uint8)], -1)
    high = np.arange(60, dtype=np.uint16).reshape(6, 10) * 1110           # up to 65490
    bits = (np.arange(60).reshape(6, 10) % 3 == 0)
    return [
        ("RGBA", Image.frombytes("RGBA", (10, 6), np.dstack([base, alpha]).tobytes()), "PNG",
         r"mode RGBA with transparency; composited it on white", _composite_on_white(base, alpha)),
        ("LA", Image.frombytes("LA", (10, 6), np.dstack([grey, alpha]).tobytes()), "PNG", r"mode LA with transparency",
         _composite_on_white(np.repeat(grey[..., None], 3, -1), alpha)),
        ("P", palette, "PNG", r"mode palette \(P\); converted to RGB", lut[np.asarray(palette)]),
        ("L", Image.fromarray(grey), "PNG", r"mode L; converted to RGB", np.repeat(grey[..., None], 3, -1)),
        ("1", Image.fromarray(bits), "PNG", r"mode 1; converted to RGB", np.repeat(bits[..., None] * 255, 3, -1)),
        ("I;16", Image.fromarray(high), "PNG", r"mode I;16 \(high bit depth, scaled to 8 bits\)",
         np.repeat(np.round(high / 65535 * 255)[..., None], 3, -1)),
        ("CMYK", Image.frombytes("CMYK", (10, 6), cmyk.tobytes()), "TIFF", r"mode CMYK; converted to RGB",
         (255.0 - cmyk[..., :3]) * (255 - 40) / 255),                     # Pillow's cmyk2rgb
    ]


@pytest.mark.parametrize("mode, image, fmt, said, expected", _conversions(), ids=[c[0] for c in _conversions()])
def test_convertible_mode_gives_the_right_rgb_and_says_so(mode, image, fmt, said, expected, tmp_path):
    path = tmp_path / f"image.{fmt.lower()}"
    image.save(path, fmt)
    assert Image.open(path).mode == mode                                  # the file really is in that mode
    with pytest.warns(ImageConversionWarning, match=said):
        rgb = to_rgb_array(path)
    assert rgb.dtype == np.uint8 and rgb.shape == expected.shape
    np.testing.assert_allclose(rgb, expected, atol=1)                     # 1 level: Pillow's integer rounding


@pytest.mark.parametrize("height, width, crop_pct, said", [
    (10, 10, 1.0, r"the image is 10x10 pixels, fewer than the model's 14x14 patches: it is upscaled 22\.4x to the "
                  r"224x224 input, so each patch holds less than one pixel of it; use a larger image"),
    (100, 300, 1.0, r"the image is 300x100 pixels and is upscaled 2\.2x to the model's 224x224 input, so its patches "
                    r"hold interpolated pixels; use a larger image, or run the model at a smaller size \(img_size=\)"),
    (112, 112, 0.875, r"is 112x112 pixels and is upscaled 2\.3x"),           # crop_pct: resized to 256, then cropped
])
def test_an_image_upscaled_past_2x_says_so_once(height, width, crop_pct, said):
    config = nv.ViTConfig(img_size=224, patch_size=16, crop_pct=crop_pct)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_image(np.zeros((height, width, 3), np.uint8), config)
    assert [str(w.message) for w in caught if w.category is ImageConversionWarning] == \
        [m for m in [str(w.message) for w in caught] if re.search(said, m)] and len(caught) == 1


@pytest.mark.parametrize("height, width, img_size", [(112, 112, None), (224, 224, None), (600, 300, None),
                                                     (100, 100, 160)])
def test_an_image_upscaled_at_most_2x_is_quiet(height, width, img_size):
    config = nv.ViTConfig(img_size=224, patch_size=16, crop_pct=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(np.zeros((height, width, 3), np.uint8), config, img_size=img_size)


@pytest.mark.parametrize("orientation, turn", [(3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)),
                                               (8, lambda a: np.rot90(a, 1)), (2, lambda a: a[:, ::-1])])
def test_exif_orientation_rotates_the_pixels(orientation, turn, tmp_path):
    """EXIF 6 = the camera was turned: the stored rows are the picture's right-hand column (rotate 90 clockwise)."""
    stored = pattern_image(6, 10)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "turned.png", exif=exif)
    with pytest.warns(ImageConversionWarning, match=f"EXIF orientation {orientation}; rotated/flipped it upright"):
        rgb = to_rgb_array(tmp_path / "turned.png")
    np.testing.assert_array_equal(rgb, turn(stored))
    if orientation in (6, 8):
        assert rgb.shape == (10, 6, 3)


def test_animated_gif_uses_the_first_frame_and_says_so(tmp_path):
    (tmp_path / "anim.gif").write_bytes(animated_gif(colours=((255, 0, 0), (0, 0, 255), (0, 255, 0))))
    with pytest.warns(ImageConversionWarning) as said:                    # animated, and palette (P) -> RGB
        rgb = to_rgb_array(tmp_path / "anim.gif")
    assert any(re.search(r"anim\.gif' is animated \(3 frames\); using the first frame", str(w.message)) for w in said)
    assert rgb.shape == (16, 16, 3)
    np.testing.assert_array_equal(rgb.reshape(-1, 3), np.tile([255, 0, 0], (256, 1)))


@pytest.mark.parametrize("array, said, expected", [
    (np.full((2, 2, 3), 0.5), r"float image in \[0, 1\] scaled to uint8", 128),
    (np.full((2, 2, 3), 65535, np.uint16), r"read as 16-bit and scaled to 8 bits", 255),
    (np.full((2, 2), 77, np.uint8), r"greyscale array repeated to 3 channels", 77),
    (np.ones((2, 2, 3), bool), r"boolean image mapped to black and white", 255),
    (np.dstack([np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.uint8)]), r"RGBA array composited on white", 255),
], ids=["float01", "uint16", "greyscale", "bool", "transparent RGBA"])
def test_convertible_arrays_say_what_was_done(array, said, expected):
    with pytest.warns(ImageConversionWarning, match=said):
        rgb = to_rgb_array(array)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8 and (rgb == expected).all()


def test_a_converted_image_runs_and_its_overlay_is_rgb(world, tmp_path):
    Image.fromarray(pattern_image(20, 28)).convert("LA").save(tmp_path / "grey.png")
    with pytest.warns(ImageConversionWarning, match="mode LA"):
        batch, overlay = load_image(tmp_path / "grey.png", world.small.config)
    assert batch.shape == (1, 3, 16, 16) and overlay.shape == (16, 16, 3)
    assert np.allclose(overlay[..., 0], overlay[..., 1])                  # grey stayed grey


