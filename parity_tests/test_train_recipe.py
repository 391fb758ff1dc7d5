"""training/train.py, the recipe of the shipped model, on a tiny model and tiny stages (seconds, not an hour):
its targets, its position-embedding and mimetic attention start, the export our NumPy model reads, and
resuming, both in the middle of a stage and after the list of stages grows (a checkpoint of the last stage of a
shorter list)."""
import numpy as np
import pytest
import torch

import numpy_vit as nv
from numpy_vit import analysis
from training import recipe as R
from training import train as T

TINY_ARCH = dict(patch_size=16, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=10)
STAGE_A = dict(name="a", img_size=32, steps=4, batch=3, lr=1e-3, warmup=1, eval_every=2, eval_images=4)
STAGE_B = dict(name="b", img_size=48, steps=2, batch=2, lr=1e-3, warmup=1, eval_every=2, eval_images=4)


@pytest.fixture
def tiny(monkeypatch):
    for module in (T, R):                            # train.py reads ARCH, recipe.model_config exports it
        monkeypatch.setattr(module, "ARCH", TINY_ARCH)
    monkeypatch.setattr(T, "CHECKPOINT_EVERY_S", 0)  # a checkpoint after every step

    def run(tmp, stages, resume=False, steps_scale=1.0, float32=False):
        monkeypatch.setattr(T, "STAGES", tuple(stages))
        T.train(tmp, resume=resume, out=tmp / "model.npz", threads=1, steps_scale=steps_scale, float32=float32)
        return torch.load(tmp / "final.pt", weights_only=True)
    return run


def test_patch_targets_mark_the_patches_the_object_covers():
    masks = np.zeros((1, 32, 32), bool)
    masks[0, 2:14, 18:30] = True        # 144 pixels of the top-right patch (256): covered
    masks[0, 16:19, 0:5] = True         # 15 pixels of the bottom-left patch: under 1/16, background
    targets = T.patch_targets(masks, np.array([7]), patch_size=16)
    assert targets.tolist() == [[10, 7, 10, 10]]   # 10 = background, rows of the 2 x 2 grid in order


def test_cell_targets_give_each_patch_its_part_of_the_mask():
    masks = np.zeros((1, 32, 32), bool)
    masks[0, 0:4, 16:20] = True         # the first cell of the top-right patch, whole
    masks[0, 4:6, 20:24] = True         # half of its cell (row 1, column 1): at least half counts
    masks[0, 31, 0:4] = True            # a quarter of the last-row cell of the bottom-left patch: too little
    cells = T.cell_targets(masks, patch_size=16)
    assert cells.shape == (1, 4, T.SHAPE_CELLS ** 2) and cells.dtype == np.float32
    expected = np.zeros((4, 16), np.float32)
    expected[1, [0, 5]] = 1             # patch 1 (top right): cells 0 and 1 * 4 + 1
    np.testing.assert_array_equal(cells[0], expected)


def test_sincos_start_encodes_the_grid():
    table = T.sincos_pos_embed((7, 7), 128)
    assert table.shape == (1, 50, 128) and torch.all(table[0, 0] == 0)   # the CLS row is zero
    assert T.position_embedding_spearman(table.numpy(), (7, 7), 1) > 0.9


def test_low_rank_factors_are_the_truncated_svd():
    torch.manual_seed(3)
    target = torch.randn(12, 12, dtype=torch.float64)
    a, b = T.low_rank_factors(target, 12)
    torch.testing.assert_close(a.T @ b, target, rtol=0, atol=1e-12)           # full rank: the matrix itself
    a, b = T.low_rank_factors(target, 4)
    u, s, vh = torch.linalg.svd(target)
    assert a.shape == b.shape == (4, 12)
    torch.testing.assert_close(a.T @ b, u[:, :4] @ torch.diag(s[:4]) @ vh[:4], rtol=0, atol=1e-12)


def attention_distance(model, layer, images, tmp_path):
    """Mean attention distance (pixels) of one layer over heads, patch queries and images, as numpy_vit measures it
    (``analysis.mean_attention_distance``) on the model exported by the recipe's own ``export``."""
    path = tmp_path / "start.npz"
    T.export(model, path)
    trace = nv.ViT.from_pretrained(str(path)).run(list(images), record=["blocks.*.attn.pattern"])
    distance = analysis.mean_attention_distance(trace.attention[layer:layer + 1], trace.grid, T.ARCH["patch_size"],
                                                trace.num_prefix_tokens)           # [1, H]
    return float(distance.mean())


@torch.no_grad()
def test_mimetic_start_makes_attention_local_and_subtracts_the_token(tmp_path):
    model, _ = T.starting_point()
    dim, heads = model.embed_dim, model.blocks[0].attn.num_heads
    k = dim // heads
    mimetic = T.mimetic_blocks(len(model.blocks))
    assert 0 < len(mimetic) < len(model.blocks)   # some blocks start mimetic, the others as timm starts them
    for index, block in enumerate(model.blocks):
        w_q, w_k, w_v = block.attn.qkv.weight.reshape(3, dim, dim)
        forms = [w_q[h * k:(h + 1) * k].T @ w_k[h * k:(h + 1) * k] for h in range(heads)]
        leans = [form.diagonal().mean() > 3 * (form - torch.diag(form.diagonal())).abs().mean() for form in forms]
        value_out = float((w_v.T @ block.attn.proj.weight.T).trace())
        if index in mimetic:   # each head's score form leans to the identity: a query finds its own key
            assert all(leans)
            assert abs(value_out + T.MIMETIC_VO * dim) < 2.0             # MIMETIC_VO (Z - I): trace -0.4 * 128 +- 0.4
        else:                           # timm's truncated normal (std 0.02): no lean, value-output trace near 0
            assert not any(leans)
            assert abs(value_out) < 1.0
    images = T.make_shapes(4, 7, img_size=T.STAGES[0]["img_size"])["images"]
    torch.manual_seed(T.TORCH_SEED)
    plain = T.build_model(T.STAGES[0]["img_size"])                     # timm's own start, same position embedding
    plain.pos_embed.copy_(model.pos_embed)
    first = mimetic[0]
    assert attention_distance(model, first, images, tmp_path) < 0.9 * attention_distance(plain, first, images,
                                                                                         tmp_path)


def test_tiny_run_exports_a_model_numpy_vit_reads(tmp_path, tiny):
    state = tiny(tmp_path, [STAGE_A, STAGE_B])
    model = nv.ViT.from_pretrained(str(tmp_path / "model.npz"))
    assert model.config.img_size == (48, 48) and model.config.depth == 2 and model.config.labels == T.CLASSES
    timm_model = T.build_model(48)
    timm_model.load_state_dict(state)
    timm_model.eval()
    images = np.random.default_rng(0).integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = timm_model(T.to_input(torch.from_numpy(images))).numpy()
    got = model.forward(images.transpose(0, 3, 1, 2) / np.float32(255) * 2 - 1, record=["logits"])["logits"]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)   # float32, two layers of width 16
    log = (tmp_path / "train.log").read_text()
    assert "stage=a step=4/4" in log and "grew model to 48 px" in log and "eval stage=b step=2" in log


def test_resume_in_the_middle_of_a_stage_gives_the_same_weights(tmp_path, tiny, monkeypatch):
    straight = tiny(tmp_path / "straight", [STAGE_A])

    calls = []
    real_save = T.save_checkpoint

    def save_then_stop(path, **state):
        real_save(path, **state)
        calls.append(state["step"])
        if len(calls) == 2:                     # stop after the checkpoint of step 2 of 4, as a killed run would
            raise KeyboardInterrupt
    monkeypatch.setattr(T, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        tiny(tmp_path / "resumed", [STAGE_A])
    monkeypatch.setattr(T, "save_checkpoint", real_save)
    resumed = tiny(tmp_path / "resumed", [STAGE_A], resume=True)
    assert "resumed from" in (tmp_path / "resumed" / "train.log").read_text()
    for name, value in straight.items():
        assert torch.equal(resumed[name], value), name   # same batches, same optimiser state: the same bits


def test_resume_after_the_stage_list_grew_resamples_the_position_embedding(tmp_path, tiny):
    first = tiny(tmp_path, [STAGE_A])
    assert first["pos_embed"].shape == (1, 1 + 2 * 2, 16)
    grown = tiny(tmp_path, [STAGE_A, STAGE_B], resume=True)
    assert grown["pos_embed"].shape == (1, 1 + 3 * 3, 16)
    assert "resampled the checkpoint's 2x2 position embedding to 48 px for stage b" in \
        (tmp_path / "train.log").read_text()
    assert nv.ViT.from_pretrained(str(tmp_path / "model.npz")).config.img_size == (48, 48)


def test_resume_past_the_last_stage_says_what_to_do(tmp_path, tiny):
    tiny(tmp_path, [STAGE_A])
    with pytest.raises(SystemExit, match="past the last stage"):
        tiny(tmp_path, [STAGE_A], resume=True)


def test_resume_from_another_recipes_token_head_says_what_to_do(tmp_path, tiny, monkeypatch):
    tiny(tmp_path, [STAGE_A])
    monkeypatch.setattr(T, "SHAPE_CELLS", 2)        # a recipe whose token head has other outputs
    with pytest.raises(SystemExit, match="written by another recipe: its token head has 27 outputs, this recipe's 15"):
        tiny(tmp_path, [STAGE_A, STAGE_B], resume=True)


def test_steps_scale_shortens_every_stage_and_resume_keeps_it(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(T, "STAGES", (STAGE_A, dict(STAGE_B, steps=10, warmup=4, eval_every=5)))
    half = T.scaled_stages(0.5)
    assert [(s["name"], s["img_size"], s["steps"], s["warmup"], s["eval_every"]) for s in half] == \
        [("a", 32, 2, 1, 1), ("b", 48, 5, 2, 2)]   # rounded half to even, never below 1
    assert T.scaled_stages(1) == T.STAGES
    for bad in (0, -1, 11, "half", True):
        with pytest.raises(T.ArgumentError, match="steps_scale must be a number in"):
            T.scaled_stages(bad)

    tiny(tmp_path, [STAGE_A], steps_scale=0.5)
    assert "stage=a step=2/2" in (tmp_path / "train.log").read_text()
    with pytest.raises(SystemExit, match="written with --steps-scale 0.5, this run asks for 1.0"):
        tiny(tmp_path, [STAGE_A, STAGE_B], resume=True)


def test_both_attention_paths_compute_the_same_model():
    """build_model picks timm's explicit softmax under bfloat16 autocast, and in float32 its fused kernel from
    FUSED_ATTENTION_FROM on, for speed only: the same weights give the same logits either way."""
    torch.manual_seed(0)
    small, large = T.build_model(112, float32=True), T.build_model(T.FUSED_ATTENTION_FROM, float32=True)
    assert not small.blocks[0].attn.fused_attn and large.blocks[0].attn.fused_attn
    assert not T.build_model(T.FUSED_ATTENTION_FROM).blocks[0].attn.fused_attn
    fused = T.build_model(112)
    fused.load_state_dict(small.state_dict())
    for block in fused.blocks:
        block.attn.fused_attn = True
    x = T.to_input(torch.from_numpy(T.make_shapes(4, 5, img_size=112)["images"]))
    with torch.no_grad():
        torch.testing.assert_close(fused.eval()(x), small.eval()(x), rtol=0, atol=1e-5)


def test_bfloat16_step_computes_the_float32_step_at_lower_precision():
    """The recipe's step runs the forward pass under bfloat16 autocast: the logits and losses it reports are the
    float32 ones to bfloat16's precision (8 significant bits, relative steps of 2^-8 = 0.4 %, compounded
    through 12 blocks), and the losses come back in float32."""
    images, *targets = T.training_batch(8, 3, 112, 16)
    batch = (T.to_input(images), *targets)
    results = {}
    for name, autocast in (("bfloat16", T.AUTOCAST_DTYPE), ("float32", None)):
        model, head = T.starting_point()
        results[name] = T.optimisation_step(model, head, T.make_optimizer(model, head), 0.0, *batch,
                                            autocast=autocast)
    (logits16, losses16, _), (logits32, losses32, _) = results["bfloat16"], results["float32"]
    assert logits16.dtype == losses16[0].dtype == torch.float32
    scale = logits32.abs().max()
    assert (logits16 - logits32).abs().max() < 0.05 * scale          # bfloat16, not float32 rounding ...
    assert (logits16 - logits32).abs().max() > 1e-5 * scale          # ... and the autocast did run in bfloat16
    for low, high in zip(losses16, losses32):
        assert abs(low.item() - high.item()) < 0.02 * high.item()


def test_resume_in_another_precision_says_what_to_do(tmp_path, tiny):
    tiny(tmp_path, [STAGE_A], float32=True)
    with pytest.raises(SystemExit, match="was trained in float32, this run asks for bfloat16 autocast: resume "
                                         "with --float32"):
        tiny(tmp_path, [STAGE_A, STAGE_B], resume=True)


def test_recipe_sweep_trains_what_the_recipe_trains(monkeypatch):
    """bench/recipe_sweep.py, which chose the loss weights on a GPU, stacks K models into one batched pass and
    its own AdamW: after 3 steps with two settings its models match timm trained by training.train's loss,
    clipping and torch.optim.AdamW (float64, so any difference above rounding is a difference in the math).
    The recipe's model on its first 4 blocks: the sweep stacks the blocks along one axis, and 4 of them hold
    both kinds of start (blocks 0-1 timm's, 2-3 mimetic), as the recipe's 12 do; the backward pass, most of the
    test's time, shrinks with the depth."""
    import importlib.util
    from pathlib import Path

    monkeypatch.setitem(T.ARCH, "depth", 4)         # the sweep reads the same dict (bench/recipe_sweep.py: ARCH)
    path = Path(__file__).resolve().parent.parent / "bench" / "recipe_sweep.py"
    spec = importlib.util.spec_from_file_location("recipe_sweep", path)
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    dtype = torch.get_default_dtype()
    assert sweep.ARCH is T.ARCH and list(T.mimetic_blocks(T.ARCH["depth"])) == [2, 3]
    params, logits = sweep.check()
    assert torch.get_default_dtype() == dtype       # the check leaves the process as it found it
    assert params < 1e-10, f"parameters differ by {params:.2e} after 3 steps"
    assert logits < 1e-10, f"logits differ by {logits:.2e}"
