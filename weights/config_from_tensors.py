"""Where a checkpoint's ViTConfig comes from: an architecture name, timm's config.json, and the tensor shapes.

Shapes decide the geometry (width, depth, patch, MLP width, prefix tokens,
position-embedding rows, head size); they cannot decide the number of attention
heads, which only reshapes q, k and v. Heads, preprocessing and numerics come
from a *base* config: a preset or timm architecture name (``arch=``), timm's
``config.json``, HF's ``config.json``, or the JAX kernels' own [D, H, Dh] layout.
"""
from __future__ import annotations

import math

from numpy_vit.config import PRESETS, UnknownName, ViTConfig, timm_name_fields
from numpy_vit.errors import CheckpointError, ConfigError

def config_for_arch(arch, **overrides) -> ViTConfig:
    """The config an ``arch=`` argument names: a ViTConfig, a preset, or a timm name of the ViT, DeiT, DeiT-3 or
    DINOv2 families with or without a pretrained tag (``ViTConfig.preset`` reads the name); it keeps the name."""
    if isinstance(arch, ViTConfig):
        return arch.replace(**overrides) if overrides else arch
    if not isinstance(arch, str) or not arch:
        raise CheckpointError(f"arch must be a timm architecture name or a ViTConfig, got {arch!r}")
    try:
        if arch not in PRESETS and arch.split(".")[0] not in PRESETS:
            timm_name_fields(arch)  # an unknown name is refused here, naming its unknown part
        return ViTConfig.preset(arch, **overrides)
    except UnknownName as e:
        raise CheckpointError(f"arch={arch!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a timm name "
                              f"numpy_vit reads: {e}") from None
    except ConfigError as e:
        raise CheckpointError(f"arch={arch!r}: {e}") from None


# timm VisionTransformer keyword -> ViTConfig field, for timm's config.json "model_args"
_TIMM_ARGS = {"img_size": "img_size", "patch_size": "patch_size", "in_chans": "in_chans", "embed_dim": "embed_dim",
              "depth": "depth", "num_heads": "num_heads", "mlp_ratio": "mlp_ratio", "qkv_bias": "qkv_bias",
              "class_token": "class_token", "no_embed_class": "no_embed_class", "reg_tokens": "num_reg_tokens",
              "global_pool": "global_pool", "fc_norm": "fc_norm", "init_values": "init_values",
              "num_classes": "num_classes"}


def _known_tag(name: str, tag: str) -> bool:
    try:
        config_for_arch(f"{name}.{tag}")
    except (CheckpointError, ConfigError):
        return False
    return True


def config_from_timm_json(cfg: dict, where: str, arch=None) -> ViTConfig:
    """A base config from timm's hub ``config.json`` (``architecture``, ``model_args``, ``pretrained_cfg``)."""
    name = cfg.get("architecture")
    if not name and arch is None:
        raise CheckpointError(f"{where}: timm config.json without an 'architecture' field; pass arch=")
    pretrained = cfg.get("pretrained_cfg") or {}
    model_args = cfg.get("model_args") or {}
    for key, value in (("pretrained_cfg", pretrained), ("model_args", model_args)):
        if not isinstance(value, dict):
            raise CheckpointError(f"{where}: {key} must be a JSON object, got {value!r:.80}")
    tag = pretrained.get("tag")
    if arch is None and tag and _known_tag(name, tag):
        arch = f"{name}.{tag}"
    # a tag numpy_vit does not list only names the weights: this file's own fields below give the head and crop
    base = config_for_arch(arch if arch is not None else name)
    fields = {}
    for key, value in model_args.items():
        if key in _TIMM_ARGS:
            fields[_TIMM_ARGS[key]] = tuple(value) if isinstance(value, list) else value
        elif key not in ("drop_rate", "drop_path_rate", "attn_drop_rate", "pos_drop_rate", "proj_drop_rate",
                         "dynamic_img_size", "dynamic_img_pad", "weight_init", "act_layer"):
            raise CheckpointError(f"{where}: model_args field {key!r}={value!r} changes the architecture in a way "
                                  f"numpy_vit does not model (it knows {sorted(_TIMM_ARGS)})")
    if cfg.get("global_pool"):
        fields["global_pool"] = cfg["global_pool"]
    for src, dst in (("mean", "mean"), ("std", "std"), ("crop_pct", "crop_pct"), ("interpolation", "interpolation")):
        if pretrained.get(src) is not None:
            fields[dst] = pretrained[src]
    if pretrained.get("input_size"):
        size = pretrained["input_size"]
        if not (isinstance(size, list) and len(size) == 3):
            raise CheckpointError(f"{where}: pretrained_cfg.input_size must be [channels, height, width], got {size!r}")
        fields.setdefault("img_size", tuple(size[1:]))
    try:
        return base.replace(**fields)
    except ConfigError as e:
        raise CheckpointError(f"{where}: config.json gives a config numpy_vit cannot build: {e}") from None


def _square_grid(n: int):
    if n <= 0:  # fewer position rows than prefix tokens
        return None
    g = math.isqrt(n)
    return g if g * g == n and g > 0 else None


def presets_with(width: int, depth: int, patch: int) -> list:
    return [name for name, f in PRESETS.items()
            if ViTConfig.preset(name).embed_dim == width and ViTConfig.preset(name).depth == depth
            and ViTConfig.preset(name).patch_size == patch]


def _grid_and_embed_class(n_pos: int, n_prefix: int, patch: int, base, where: str):
    """(img_size, no_embed_class) from the position-embedding rows: a base's grid when it fits, else a square one."""
    if base is not None and base.patch_size == patch:
        if n_prefix and base.num_patches == n_pos - n_prefix:
            return base.img_size, False
        if base.num_patches == n_pos:
            return base.img_size, bool(n_prefix) or base.no_embed_class
    if n_prefix and _square_grid(n_pos - n_prefix):
        return _square_grid(n_pos - n_prefix) * patch, False
    if _square_grid(n_pos):
        return _square_grid(n_pos) * patch, n_prefix > 0
    raise CheckpointError(f"{where}: pos_embed has {n_pos} rows ({n_prefix} prefix tokens), which is no square "
                          f"grid of patches; pass arch= with the image size (a ViTConfig with img_size=(H, W))")


def infer_config(params: dict, where: str, base: ViTConfig | None = None, num_heads: int | None = None,
                 **defaults) -> ViTConfig:
    """A ViTConfig that fits the shapes of ``params`` (timm names).

    Geometry comes from the shapes; heads from ``num_heads`` or ``base``; all
    else (numerics, preprocessing, name, labels) from ``base``, or, without a
    base, from ``defaults`` (the source format's own conventions). A base whose
    width, depth, patch or MLP width disagree with the shapes is an error naming
    both: it describes another model.
    """
    ranks = {"patch_embed.proj.weight": "[D, C, p, p]", "pos_embed": "[1, N, D]", "reg_token": "[1, R, D]",
             "blocks.0.mlp.fc1.weight": "[M, D]", "blocks.0.mlp.fc1_g.weight": "[M, D]",
             "pre_logits.fc.weight": "[R, D]", "head.weight": "[C, D]"}

    def get(key):
        if key not in params:
            raise CheckpointError(f"{where}: no {key}, so the model's size cannot be read from it")
        layout = ranks[key]
        if len(params[key].shape) != layout.count(",") + 1:  # the size is read from these axes: check them first
            raise CheckpointError(f"{where}: {key} has shape {tuple(params[key].shape)}; expected {layout}")
        return params[key]

    D, C, ph, pw = (int(n) for n in get("patch_embed.proj.weight").shape)
    if ph != pw:
        raise CheckpointError(f"{where}: patch_embed.proj.weight has a {ph}x{pw} patch; numpy_vit needs square patches")
    depth = len({k.split(".")[1] for k in params if k.startswith("blocks.")})
    eva = _eva_fields(params, where, base, D)  # EVA-02's layout fields, {} for a plain ViT
    if not depth:
        mlp_dim = 4 * D
    elif "blocks.0.mlp.fc1_g.weight" in params:
        mlp_dim = int(get("blocks.0.mlp.fc1_g.weight").shape[0])
    else:  # a packed SwiGLU's fc1 holds the gate's rows and the value's
        mlp_dim = int(get("blocks.0.mlp.fc1.weight").shape[0]) // (2 if eva.get("mlp") == "swiglu" else 1)
    if base is not None:
        _check_base_fits(base, where, {"embed_dim": D, "depth": depth, "patch_size": ph, "mlp width": mlp_dim,
                                       "in_chans": C})
    table = next((params[k] for k in ("blocks.0.attn.relative_position_bias_table",
                                      "rel_pos_bias.relative_position_bias_table") if k in params), None)
    if table is not None and len(table.shape) == 2 and num_heads is None:  # BEiT's table: a column per head
        if base is not None and base.num_heads != table.shape[1]:
            raise CheckpointError(f"{where}: the relative position bias table has {table.shape[1]} heads (columns), "
                                  f"{base.name or 'the given config'} has {base.num_heads}")
        num_heads = int(table.shape[1])
    heads = _num_heads(num_heads, base, where, D, depth, ph)

    class_token, distilled = "cls_token" in params, "dist_token" in params
    num_reg_tokens = int(get("reg_token").shape[1]) if "reg_token" in params else 0
    fc_norm = "fc_norm.weight" in params
    beit = _beit_fields(params, depth)
    if "pos_embed" in params or not beit["rel_pos_bias"]:
        img_size, no_embed_class = _grid_and_embed_class(int(get("pos_embed").shape[1]),
                                                         class_token + distilled + num_reg_tokens, ph, base, where)
    else:  # BEiT without an absolute position embedding: the grid from the bias table's rows
        img_size, no_embed_class = _grid_from_rel_pos_table(params, beit["rel_pos_bias"], ph, base, where), False
    global_pool = "map" if "attn_pool.latent" in params else _global_pool(base, class_token, fc_norm)  # SigLIP
    layer_scale = (base.init_values if base is not None else None) or defaults.get("init_values") or 1e-5
    fields = dict(
        embed_dim=D, depth=depth, patch_size=ph, in_chans=C, mlp_ratio=mlp_dim / D, num_heads=heads,
        img_size=img_size, no_embed_class=no_embed_class, class_token=class_token, distilled=distilled,
        num_reg_tokens=num_reg_tokens, qkv_bias=any(f"blocks.0.attn.{k}" in params for k in (
            "qkv.bias", "q_bias", "q_proj.bias")) or depth == 0, **eva,
        init_values=layer_scale if "blocks.0.ls1.gamma" in params or "blocks.0.gamma_1" in params else None,
        abs_pos_embed="pos_embed" in params, **beit,
        fc_norm=fc_norm, global_pool=global_pool, norm_pre="norm_pre.weight" in params,
        representation_size=int(get("pre_logits.fc.weight").shape[0]) if "pre_logits.fc.weight" in params else None,
        num_classes=int(get("head.weight").shape[0]) if "head.weight" in params else 0,
    )
    try:
        start = base if base is not None else ViTConfig(**{k: v for k, v in defaults.items() if k != "init_values"},
                                                         embed_dim=D, num_heads=heads)
        if start.labels and len(start.labels) != fields["num_classes"]:
            fields["labels"] = ()  # the base's class names belong to another head
        if start.num_reg_tokens != num_reg_tokens and start.name:
            fields["name"] = name_with_registers(start.name, num_reg_tokens)  # the name must not claim others
        return start.replace(**fields)
    except ConfigError as e:
        raise CheckpointError(f"{where}: the shapes give a config numpy_vit cannot build: {e}") from None


def _eva_fields(params: dict, where: str, base, width: int) -> dict:
    """EVA-02's fields: the q, k, v layout and the sub-LayerNorm from the keys, the RoPE and the SwiGLU from the
    base (a rotary embedding has no weights, and a packed SwiGLU's fc1 is shaped like a wider GELU MLP's)."""
    keys = {k[len("blocks.0."):] for k in params if k.startswith("blocks.0.")}
    separate = "attn.q_proj.weight" in keys
    qv_bias = "attn.q_bias" in keys and not _is_beit(params)  # BEiT stores q / v biases too
    split_mlp = "mlp.fc1_g.weight" in keys
    if not (separate or qv_bias or split_mlp) and (base is None or base.mlp == "gelu"):
        return {}
    if base is None or not base.rope:
        sizes = {192: "tiny", 384: "small", 768: "base", 1024: "large"}
        hint = f"eva02_{sizes[width]}_patch14_224" if width in sizes else "eva02_<size>_patch14_<res>"
        raise CheckpointError(f"{where}: an EVA-02 checkpoint (keys {', '.join(sorted(k for k in keys if 'q_' in k or 'fc1_' in k)[:3])}); "
                              f"its rotary position embedding has no weights, so the file cannot say so: pass "
                              f"arch={hint!r} (or the file's timm name)")
    return dict(rope=True, rope_ref_grid=base.rope_ref_grid, mlp="swiglu" if split_mlp else base.mlp,
                mlp_norm="mlp.norm.weight" in keys,
                qkv_layout="separate" if separate else "fused_qv_bias" if qv_bias else "fused")


def _is_beit(params: dict) -> bool:
    """A timm Beit state dict: its layer scale (gamma_1) or a relative position bias table, keys no other family
    has (its q_bias / v_bias it shares with EVA-02)."""
    return any(k in params for k in ("blocks.0.gamma_1", "blocks.0.attn.relative_position_bias_table",
                                     "rel_pos_bias.relative_position_bias_table"))


def _beit_fields(params: dict, depth: int) -> dict:
    """BEiT's fields, read off its keys (timm Beit, ``_is_beit``): its block names; a table per block or one
    shared."""
    beit = _is_beit(params)
    rel_pos_bias = ("shared" if "rel_pos_bias.relative_position_bias_table" in params else
                    "layer" if "blocks.0.attn.relative_position_bias_table" in params else "")
    return dict(block_names="beit" if beit else "vit", rel_pos_bias=rel_pos_bias)


def _grid_from_rel_pos_table(params: dict, rel_pos_bias: str, patch: int, base, where: str):
    """img_size from a BEiT bias table's rows, (2 gh - 1)(2 gw - 1) + 3: the base's grid when it fits, else square."""
    key = ("rel_pos_bias." if rel_pos_bias == "shared" else "blocks.0.attn.") + "relative_position_bias_table"
    if len(params[key].shape) != 2:
        raise CheckpointError(f"{where}: {key} has shape {tuple(params[key].shape)}; expected [rows, heads]")
    rows = int(params[key].shape[0])
    if base is not None and base.patch_size == patch and base.num_relative_distance == rows:
        return base.img_size
    side = math.isqrt(max(rows - 3, 0))
    if side * side == rows - 3 and side % 2 == 1:
        return (side + 1) // 2 * patch
    raise CheckpointError(f"{where}: {key} has {rows} rows, which is (2 g - 1)^2 + 3 for no square grid g; pass "
                          f"arch= with the image size (a ViTConfig with img_size=(H, W))")


def name_with_registers(name: str, count: int) -> str:
    """A timm name with its register count set to ``count``: ``vit_small_patch14_reg4_dinov2.lvd142m`` with 0
    registers is ``vit_small_patch14_dinov2.lvd142m`` (timm's names say ``_reg<K>_`` after the patch size)."""
    base, dot, tag = name.partition(".")
    parts = [part for part in base.split("_") if not (part.startswith("reg") and part[3:].isdigit())]
    if not any(part.startswith("patch") for part in parts):
        return name  # not a timm name: nothing in it counts registers
    if count:
        at = next((i + 1 for i, part in enumerate(parts) if part.startswith("patch")), len(parts))
        parts.insert(at, f"reg{count}")
    return "_".join(parts) + dot + tag


def _check_base_fits(base: ViTConfig, where: str, shapes: dict):
    """A base config whose geometry disagrees with the shapes describes another model: an error naming both."""
    ours = {"embed_dim": base.embed_dim, "depth": base.depth, "patch_size": base.patch_size,
            "mlp width": base.mlp_dim, "in_chans": base.in_chans}
    clash = [f"{name} {ours[name]} vs {theirs}" for name, theirs in shapes.items() if ours[name] != theirs]
    if clash:
        raise CheckpointError(f"{where}: the checkpoint does not have the architecture of "
                              f"{base.name or 'the given config'} (config vs checkpoint: {', '.join(clash)})")


def _num_heads(num_heads, base, where: str, width: int, depth: int, patch: int) -> int:
    """The heads from ``num_heads`` or the base: the shapes cannot tell them (they only reshape q, k and v)."""
    heads = num_heads or (base.num_heads if base is not None else None)
    if heads is None:
        matches = presets_with(width, depth, patch)
        raise CheckpointError(
            f"{where}: the shapes say depth {depth}, width {width}, patch {patch}, but not the number of attention "
            f"heads, and nothing else in the file does; pass arch= (a preset or timm architecture name, or a "
            f"ViTConfig)"
            + (f", e.g. arch={matches[0]!r} (presets with these shapes: {', '.join(matches)})" if matches else ""))
    return int(heads)


def _global_pool(base, class_token: bool, fc_norm: bool) -> str:
    """Pooling leaves no trace in the shapes: take the base's, unless the shapes contradict it."""
    global_pool = base.global_pool if base is not None else None
    if global_pool == "token" and not class_token:
        global_pool = None
    if global_pool is not None and base.fc_norm is None and (global_pool == "avg") != fc_norm:
        global_pool = None  # timm's rule (fc_norm exactly when avg-pooling) disagrees with the keys present
    if global_pool is None:  # a norm after pooling, or no class token to read, means average pooling
        global_pool = "avg" if fc_norm or not class_token else "token"
    return global_pool
