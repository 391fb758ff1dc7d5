"""Our preprocessing against timm's evaluation transform (resize short side to img_size / crop_pct, centre crop,
normalise), on images of several shapes: the pixels a checkpoint sees must be the pixels it was evaluated on."""
import contextlib

import numpy as np
import pytest

import numpy_vit as nv
from numpy_vit.image import load_image

timm_data = pytest.importorskip("timm.data")
PIL = pytest.importorskip("PIL.Image")


@pytest.mark.parametrize("preset", ["vit_base_patch16_224", "deit_tiny_distilled_patch16_224", "vit_base_patch16_384"])
@pytest.mark.parametrize("size", [(224, 224), (300, 400), (517, 333), (120, 90)])
def test_preprocessing_matches_timm_eval_transform(preset, size):
    config = nv.ViTConfig.preset(preset)
    rng = np.random.default_rng(size[0])
    rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    transform = timm_data.create_transform(
        input_size=(3, *config.img_size), interpolation=config.interpolation, mean=config.mean, std=config.std,
        crop_pct=config.crop_pct, is_training=False)
    reference = transform(PIL.fromarray(rgb)).numpy()[None]
    # 120x90 is upscaled more than 2x to every preset's input: numpy_vit says so, and computes the same pixels
    upscaled = size == (120, 90)
    with pytest.warns(nv.ImageConversionWarning, match="upscaled") if upscaled else contextlib.nullcontext():
        ours, overlay = load_image(rgb, config)
    assert ours.shape == reference.shape == (1, 3, *config.img_size)
    assert np.abs(ours - reference).max() <= 1e-6  # same uint8 pixels; float32 normalisation rounding only
    assert overlay.shape == (*config.img_size, 3)
