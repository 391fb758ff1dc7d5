"""Images in: any file, PIL image or array -> the normalised [B, 3, H, W] batch a checkpoint expects.

The steps are timm's evaluation transform (``timm.data.transforms_factory.transforms_imagenet_eval``):
resize the short side to ``img_size / crop_pct`` with the checkpoint's filter, centre-crop ``img_size``,
scale to [0, 1], subtract ``mean`` and divide by ``std`` per channel. Pillow is imported only here,
and only when an image is actually loaded.
"""
import math
import os
import warnings

import numpy as np

from .errors import ImageError


class ImageConversionWarning(UserWarning):
    """The image was usable but had to be changed (mode, orientation, value range) to become RGB, or is so
    small that the model's input is mostly interpolation."""


def _warn(message):
    warnings.warn(message, ImageConversionWarning, stacklevel=4)


def _open(path):
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageError(f"image file not found: {path!r} (check the path; relative paths start at {os.getcwd()})")
    if os.path.isdir(path):
        raise ImageError(f"{path!r} is a directory, not an image file; pass the image files inside it")
    if os.path.getsize(path) == 0:
        raise ImageError(f"{path!r} is empty (0 bytes): the file was not written or the download failed")
    try:
        img = Image.open(path)
        img.load()  # decode now, so a truncated file fails here and not later inside NumPy
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path!r} is too large to decode safely ({e}); downscale it first") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path!r} is not an image Pillow can read (PNG, JPEG, GIF, BMP, TIFF, WebP ...)") from None
    except Exception as e:  # Pillow's decoders meet corrupt data with OSError, but also IndexError, struct.error ...
        raise ImageError(f"{path!r} could not be decoded, it may be truncated or corrupt "
                         f"({type(e).__name__}: {e})") from None
    return img


def _pil_to_rgb(img, name="image"):
    """Any PIL image -> RGB, with EXIF orientation applied; says what it changed."""
    from PIL import Image, ImageOps

    try:  # counting frames decodes every frame's header: a truncated animation fails here
        frames = img.n_frames if getattr(img, "is_animated", False) else 1
        if frames > 1:
            img.seek(0)
    except Exception as e:
        raise ImageError(f"{name} is an animation whose frames cannot be read ({type(e).__name__}: {e}); "
                         f"it may be truncated") from None
    if frames > 1:
        _warn(f"{name} is animated ({frames} frames); using the first frame")
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a malformed EXIF block is not worth failing for; the pixels are still fine
        orientation = 1
    if orientation not in (1, None):
        img = ImageOps.exif_transpose(img)
        _warn(f"{name} had EXIF orientation {orientation}; rotated/flipped it upright")
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode_note = "palette (P)"
    elif mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(float(a.max()), 1.0)
        if mode in ("I", "F"):  # 32-bit data has no fixed range: stretch what is there
            lo = float(a.min())
            a = (a - lo) / max(float(a.max()) - lo, 1e-12) * 255.0
        else:
            a = a / top * 255.0
        img = Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L")
        mode_note = f"{mode} (high bit depth, scaled to 8 bits)"
    else:
        mode_note = mode
    if img.mode in ("RGBA", "LA", "PA") or (img.mode in ("RGBa", "La")):
        try:
            rgba = img.convert("RGBA")
        except ValueError as e:  # premultiplied "La" has no conversion in Pillow
            raise ImageError(f"{name} has mode {img.mode}, which Pillow cannot convert to RGBA ({e}); "
                             f"save it as an RGBA PNG first") from None
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
        _warn(f"{name} had mode {mode_note} with transparency; composited it on white to get RGB")
        return img
    _warn(f"{name} had mode {mode_note}; converted to RGB")
    try:
        return img.convert("RGB")
    except ValueError as e:  # modes Pillow cannot turn into RGB (LAB, some TIFF layouts)
        raise ImageError(f"{name} has mode {img.mode}, which Pillow cannot convert to RGB ({e}); "
                         f"save it as an RGB PNG or JPEG first") from None


def _array_to_rgb(a):
    """An HxW or HxWxC array -> HxWx3 uint8 (floats must lie in [0, 1])."""
    try:
        a = np.asarray(a)
    except ValueError as e:  # a ragged nested list
        raise ImageError(f"the nested list is not a rectangular HxW or HxWx3 array of numbers ({e})") from None
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) \
            or np.issubdtype(a.dtype, np.complexfloating):
        raise ImageError(f"an image array must hold real numbers (uint8 0..255, or floats in [0, 1]), "
                         f"got dtype {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ImageError(f"an image array must be HxW or HxWx3 (got shape {a.shape}); a batch goes in as "
                         f"[B, 3, H, W] floats already normalised")
    if a.shape[0] in (1, 3, 4) and a.shape[2] not in (1, 3, 4):
        raise ImageError(f"the array looks channels-first (shape {a.shape}); pass it as HxWxC: a.transpose(1, 2, 0)")
    if a.shape[2] not in (1, 3, 4):
        raise ImageError(f"an image needs 1, 3 or 4 channels in its last axis, got shape {a.shape}")
    if min(a.shape[:2]) < 1:
        raise ImageError(f"the image array is empty (shape {a.shape})")
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageError(f"the image array holds {np.count_nonzero(~np.isfinite(a))} NaN or infinite values")
        if a.min() < 0 or a.max() > 1:
            raise ImageError(f"a float image must lie in [0, 1], got values in [{a.min():.3g}, {a.max():.3g}]; "
                             f"for 0..255 data use a.astype(np.uint8)")
        a = np.round(a * 255).astype(np.uint8)
        _warn("float image in [0, 1] scaled to uint8")
    elif a.dtype == bool:
        a = a.astype(np.uint8) * 255
        _warn("boolean image mapped to black and white")
    elif a.dtype != np.uint8:
        if a.min() < 0 or a.max() > 255:
            if a.dtype == np.uint16 or (a.min() >= 0 and a.max() <= 65535):
                a = np.round(a.astype(np.float64) / 65535 * 255).astype(np.uint8)
                _warn(f"{a.dtype} image with values above 255 read as 16-bit and scaled to 8 bits")
            else:
                raise ImageError(f"integer image values must lie in 0..255 (or 0..65535), got "
                                 f"[{a.min()}, {a.max()}]")
        else:
            a = a.astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
        _warn("greyscale array repeated to 3 channels")
    elif a.shape[2] == 4:
        alpha = a[:, :, 3:4].astype(np.float64) / 255
        a = np.round(a[:, :, :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
        _warn("RGBA array composited on white to get RGB")
    return np.ascontiguousarray(a)


def to_rgb_array(src):
    """A path, PIL image or array -> HxWx3 uint8 RGB (EXIF orientation applied, any mode converted)."""
    if isinstance(src, (str, os.PathLike)):
        return np.asarray(_pil_to_rgb(_open(src), name=repr(os.fspath(src))))
    if type(src).__module__.startswith("PIL."):
        try:
            src.load()  # an Image.open() result decodes only now: a truncated file fails here, not inside NumPy
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"the PIL image could not be decoded, it may be truncated or corrupt: {e}") from None
        return np.asarray(_pil_to_rgb(src))
    if isinstance(src, (np.ndarray, list, tuple)):
        return _array_to_rgb(src)
    raise ImageError(f"cannot read an image from a {type(src).__name__}; pass a file path, a PIL image, "
                     f"or an HxWx3 uint8 array")


_FILTERS = {"bicubic": 3, "bilinear": 2, "nearest": 0}  # PIL.Image.Resampling values


def resized_size(h, w, size, crop_pct=1.0):
    """(new_h, new_w) an h x w image is resized to before the centre crop to ``size`` (H, W): timm's eval
    transform resizes the short side to size / crop_pct, truncating the long side as torchvision's Resize does."""
    H, W = size
    if H != W:
        return math.floor(H / crop_pct), math.floor(W / crop_pct)
    scaled = math.floor(H / crop_pct)
    return (scaled, int(scaled * w / h)) if h <= w else (int(scaled * h / w), scaled)


def resize_and_crop(rgb, size, crop_pct=1.0, interpolation="bicubic"):  # [h, w, 3] uint8 -> [H, W, 3] uint8
    """timm's eval transform: short side to size / crop_pct (or each side, for a non-square size), centre crop."""
    from PIL import Image

    H, W = size
    h, w = rgb.shape[:2]
    new_h, new_w = resized_size(h, w, size, crop_pct)
    if new_h * new_w > (Image.MAX_IMAGE_PIXELS or math.inf):  # a 1-pixel-high strip scaled up to img_size
        raise ImageError(f"an image of {w}x{h} pixels would be resized to {new_w}x{new_h} before the centre crop, "
                         f"beyond Pillow's {Image.MAX_IMAGE_PIXELS} pixel limit; crop it closer to square first")
    img = Image.fromarray(rgb)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample=_FILTERS[interpolation])
    top, left = round((new_h - H) / 2), round((new_w - W) / 2)
    return np.asarray(img.crop((left, top, left + W, top + H)))


MAX_UPSCALE = 2.0  # beyond this the model sees mostly interpolated pixels


def warn_if_upscaled(h, w, size, crop_pct, patch_size, name="the image"):
    """One ImageConversionWarning when an h x w image is smaller than the model's patch grid, or is upscaled
    more than MAX_UPSCALE times in either side to become the model's input ``size``: its patches then hold
    interpolation rather than detail of the image."""
    H, W = size
    new_h, new_w = resized_size(h, w, size, crop_pct)
    scale = max(new_h / h, new_w / w)
    grid_h, grid_w = H // patch_size, W // patch_size
    if h < grid_h or w < grid_w:
        _warn(f"{name} is {w}x{h} pixels, fewer than the model's {grid_w}x{grid_h} patches: it is upscaled "
              f"{scale:.1f}x to the {W}x{H} input, so each patch holds less than one pixel of it; use a larger image")
    elif scale > MAX_UPSCALE:
        _warn(f"{name} is {w}x{h} pixels and is upscaled {scale:.1f}x to the model's {W}x{H} input, so its patches "
              f"hold interpolated pixels; use a larger image, or run the model at a smaller size (img_size=)")


def normalise(rgb, mean, std):  # [H, W, 3] uint8 -> [3, H, W] float32
    x = rgb.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x.transpose(2, 0, 1)


def load_image(src, config, img_size=None):
    """One image -> ([1, 3, H, W] float32 normalised, [H, W, 3] float in [0, 1] for overlays)."""
    batch, overlay, _ = _load(src, config, img_size)
    return batch, overlay


def _load(src, config, img_size=None):  # load_image, and the image's (height, width) before resizing
    size = config.img_size if img_size is None else _size(img_size, config.patch_size)
    original = to_rgb_array(src)
    rgb = resize_and_crop(original, size, config.crop_pct, config.interpolation)
    name = repr(os.fspath(src)) if isinstance(src, (str, os.PathLike)) else "the image"
    warn_if_upscaled(*original.shape[:2], size, config.crop_pct, config.patch_size, name)
    return normalise(rgb, config.mean, config.std)[None], rgb.astype(np.float32) / 255.0, original.shape[:2]


def _size(img_size, patch_size):
    pair = (img_size, img_size) if not isinstance(img_size, (tuple, list)) else tuple(img_size)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair):
        raise ImageError(f"img_size must be an int or a pair of ints (height, width), got {img_size!r}")
    h, w = (int(v) for v in pair)
    if h % patch_size or w % patch_size or h < patch_size or w < patch_size:
        raise ImageError(f"img_size {h}x{w} is not a multiple of the patch size {patch_size}; "
                         f"use e.g. {max(1, h // patch_size) * patch_size}x{max(1, w // patch_size) * patch_size}")
    return (h, w)


def prepare(image, config, img_size=None):
    """What ``ViT.run`` accepts -> ([B, 3, H, W] float batch, overlay image of the first one, the first one's
    (height, width) before resizing: None for a normalised batch, which has no other size)."""
    if isinstance(image, np.ndarray) and image.ndim == 4:
        if image.shape[1] != config.in_chans and image.shape[-1] == config.in_chans:
            raise ImageError(f"a batch must be [B, 3, H, W] normalised floats; got shape {image.shape} "
                             f"(channels last): use x.transpose(0, 3, 1, 2)")
        if image.shape[0] == 0:
            raise ImageError(f"the batch is empty (shape {image.shape}); pass at least one image")
        if not np.issubdtype(image.dtype, np.floating):
            raise ImageError(f"a [B, 3, H, W] batch must be normalised floats, got dtype {image.dtype}; "
                             f"pass uint8 images one by one (or as a list) to have them normalised")
        overlay = image[0].transpose(1, 2, 0) * np.asarray(config.std) + np.asarray(config.mean)
        return image, np.clip(overlay, 0, 1).astype(np.float32), None
    if isinstance(image, (list, tuple)) and image and not isinstance(image[0], (int, float, np.number)):
        loaded = [_load(item, config, img_size) for item in image]
        return np.concatenate([batch for batch, _, _ in loaded], axis=0), loaded[0][1], loaded[0][2]
    return _load(image, config, img_size)
