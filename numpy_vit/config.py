"""ViTConfig: every number that decides what a Vision Transformer computes.

One frozen dataclass, one reason per field, and a table of named presets whose
names are timm's architecture names (nanoGPT's ``GPTConfig`` pattern). This
module imports nothing of ours, so ``weights/`` may use it without pulling in
the model.
"""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # Google / augreg ViT checkpoints normalise to [-1, 1]
INCEPTION_STD = (0.5, 0.5, 0.5)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP and the CLIP towers trained after it
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


from .errors import CheckpointError, ConfigError


def _pair(value, name):
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise ConfigError(f"{name} must be an int or a pair of ints (height, width), got {value!r}")


@dataclass(frozen=True)
class ViTConfig:
    # --- geometry -------------------------------------------------------
    img_size: int | tuple = 224          # training resolution; the position embedding has one entry per patch of it
    patch_size: int = 16                 # side of a square patch in pixels; the grid is img_size // patch_size
    in_chans: int = 3                    # RGB
    # --- width and depth --------------------------------------------------
    embed_dim: int = 768                 # D, the width of the residual stream
    depth: int = 12                      # number of transformer blocks
    num_heads: int = 12                  # H; head width Dh = D // H
    mlp_ratio: float = 4.0               # M = D * mlp_ratio, the hidden width of each MLP
    qkv_bias: bool = True                # timm / HF / JAX ViTs all have q, k, v biases; some (EVA, BEiT) do not
    # --- tokens in front of the patches ---------------------------------
    class_token: bool = True             # a learned [CLS] token at position 0 (its final state is the image summary)
    distilled: bool = False              # DeiT: a second learned "distillation" token after CLS, with its own head
    num_reg_tokens: int = 0              # registers (Darcet et al. 2023): extra learned tokens that soak up global attention
    no_embed_class: bool = False         # True: the position embedding covers the patches only (DeiT-3, DINOv2, big_vision)
    # --- numerics ---------------------------------------------------------
    layer_norm_eps: float = 1e-6         # timm and Flax use 1e-6, HF ViTConfig uses 1e-12; it changes the last digits
    gelu: str = "erf"                    # "erf" (exact, timm / HF), "tanh" (the approximation the Flax code uses) or
                                         # "quick": x * sigmoid(1.702 x), OpenAI CLIP's (timm *_clip_quickgelu_*)
    norm_pre: bool = False               # a LayerNorm after the embedding, before the blocks (CLIP image towers)
    init_values: float | None = None     # layer scale (CaiT / DINOv2): per-channel gains on each branch, None = off
    # --- EVA-02 (Fang et al. 2023): rotary positions, gated MLP ----------
    rope: bool = False                   # 2-D rotary position embedding on the patch tokens' q and k (EVA-02)
    rope_ref_grid: tuple | None = None   # (gh, gw) RoPE positions are scaled to (timm's ref_feat_shape; EVA-02: 16 x 16)
    mlp: str = "gelu"                    # "gelu": fc1, GELU, fc2; "swiglu": SiLU(x W_g) * (x W_x), then fc2 (EVA-02)
    mlp_norm: bool = False               # LayerNorm on the MLP's hidden layer before fc2 (EVA-02 base / large's sub-LN)
    qkv_layout: str = "fused"            # "fused": qkv(.bias); "fused_qv_bias": qkv + q_bias, v_bias, no k bias (EVA-02
                                         # tiny / small); "separate": q_proj, k_proj (no bias), v_proj (EVA-02 base / large)
    # --- BEiT (Bao et al. 2022; BEiT v2, Peng et al. 2022) --------------
    block_names: str = "vit"             # a block's state-dict names: "vit" (timm VisionTransformer: attn.qkv.bias,
                                         # ls1.gamma) or "beit" (timm Beit: attn.q_bias + attn.v_bias, no key bias;
                                         # layer scale gamma_1 / gamma_2)
    abs_pos_embed: bool = True           # an absolute position embedding added to the tokens; BEiT has none (False)
    rel_pos_bias: str = ""               # BEiT's relative position bias added to the attention scores: "" none,
                                         # "layer" a table per block (fine-tuned BEiT), "shared" one for all blocks
    rel_pos_resample: str = "geometric"  # how the bias table is resized to another grid: "geometric" (timm and
                                         # BEiT's fine-tuning code) or "bilinear" (HF transformers)
    # --- head -------------------------------------------------------------
    global_pool: str = "token"           # "token": read the CLS token; "avg": mean over patch tokens; "": no pooling;
                                         # "map": a learned latent query attends over the patch tokens (SigLIP)
    fc_norm: bool | None = None          # LayerNorm after pooling instead of before it; None = timm's rule (on for "avg")
    representation_size: int | None = None  # JAX ViT "pre_logits": a Dense + tanh between pooling and head (in21k models)
    num_classes: int = 1000              # 0 = no classifier: the model returns pooled features (DINO backbones)
    # --- how images must be prepared for this checkpoint ------------------
    mean: tuple = IMAGENET_MEAN          # per-channel normalisation the weights were trained with
    std: tuple = IMAGENET_STD
    crop_pct: float = 0.875              # resize the short side to img_size / crop_pct, then centre-crop img_size
    interpolation: str = "bicubic"       # resize filter used in evaluation
    pos_embed_resample: str = "bicubic_antialias"  # how to resize the position embedding to another grid (see DESIGN)
    pos_embed_grid: tuple | None = None  # (gh, gw) the position embedding was learned at, where it was resampled
                                         # to this img_size (the figures say so); None: learned at this grid
    # --- bookkeeping --------------------------------------------------------
    name: str = ""                       # timm architecture name, if any
    labels: tuple = ()                   # class names, one per output (ImageNet names travel with classifiers)

    def __post_init__(self):
        # Normalise the forms a user may type (lists from JSON, an int image size) so that equal configs compare equal.
        object.__setattr__(self, "img_size", _pair(self.img_size, "img_size"))
        if self.pos_embed_grid is not None:
            object.__setattr__(self, "pos_embed_grid", _pair(self.pos_embed_grid, "pos_embed_grid"))
        if self.rope_ref_grid is not None:
            object.__setattr__(self, "rope_ref_grid", _pair(self.rope_ref_grid, "rope_ref_grid"))
        for name in ("mean", "std"):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, tuple(float(v) for v in value))
            except (TypeError, ValueError):
                raise ConfigError(f"{name} must be a sequence of {self.in_chans} numbers (one per channel), "
                                  f"got {value!r}") from None
        if isinstance(self.labels, (str, bytes)) or not hasattr(self.labels, "__iter__"):
            raise ConfigError(f"labels must be a list of class names (one per class), got {self.labels!r}")
        object.__setattr__(self, "labels", tuple(str(v) for v in self.labels))
        self._check()

    def _check(self):
        def need(ok, message):
            if not ok:
                raise ConfigError(message)

        def is_int(value):
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

        for name in ("patch_size", "embed_dim", "depth", "num_heads", "in_chans"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                 f"{name} must be a positive integer, got {value!r}")
        # Types first, so that the range checks below compare numbers (a string would raise a bare TypeError).
        for name in ("mlp_ratio", "layer_norm_eps", "crop_pct", "init_values"):
            value = getattr(self, name)
            need((value is None and name == "init_values") or is_int(value) or isinstance(value, (float, np.floating)),
                 f"{name} must be a number{' or None' if name == 'init_values' else ''}, got {value!r}")
        for name in ("num_reg_tokens", "num_classes", "representation_size"):
            value = getattr(self, name)
            need((value is None and name == "representation_size") or is_int(value),
                 f"{name} must be an integer{' or None' if name == 'representation_size' else ''}, got {value!r}")
        for name in ("qkv_bias", "class_token", "distilled", "no_embed_class", "fc_norm", "rope", "mlp_norm",
                     "abs_pos_embed", "norm_pre"):
            value = getattr(self, name)
            need((value is None and name == "fc_norm") or isinstance(value, (bool, np.bool_)),
                 f"{name} must be True or False{' (or None)' if name == 'fc_norm' else ''}, got {value!r}")
        need(self.representation_size is None or self.representation_size >= 1,
             f"representation_size must be >= 1 or None, got {self.representation_size}")
        need(self.embed_dim % self.num_heads == 0,
             f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        h, w = self.img_size
        need(h >= self.patch_size and w >= self.patch_size and h % self.patch_size == 0 and w % self.patch_size == 0,
             f"img_size {self.img_size} must be a multiple of patch_size ({self.patch_size}) in both directions; "
             f"try {(max(1, h // self.patch_size) * self.patch_size, max(1, w // self.patch_size) * self.patch_size)}")
        need(self.mlp_ratio > 0, f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        need(self.num_reg_tokens >= 0, f"num_reg_tokens must be >= 0, got {self.num_reg_tokens}")
        need(self.gelu in ("erf", "tanh", "quick"), f"gelu must be 'erf', 'tanh' or 'quick' (OpenAI CLIP's x * "
             f"sigmoid(1.702 x)), got {self.gelu!r}")
        need(self.mlp in ("gelu", "swiglu"), f"mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")
        need(not self.mlp_norm or self.mlp == "swiglu",
             "mlp_norm=True (the sub-LayerNorm in the MLP) exists only with mlp='swiglu' (EVA-02 base / large)")
        need(self.qkv_layout in ("fused", "fused_qv_bias", "separate"),
             f"qkv_layout must be 'fused', 'fused_qv_bias' or 'separate', got {self.qkv_layout!r}")
        need(self.qkv_layout == "fused" or self.qkv_bias,
             f"qkv_layout={self.qkv_layout!r} stores q and v biases: it needs qkv_bias=True (or use 'fused')")
        need(not self.rope or self.head_dim % 4 == 0,
             f"rope=True rotates pairs of channels by a y and an x angle: the head width {self.head_dim} "
             f"(embed_dim / num_heads) must be a multiple of 4")
        need(self.rope_ref_grid is None or (self.rope and min(self.rope_ref_grid) >= 1),
             f"rope_ref_grid {self.rope_ref_grid} needs rope=True and positive sides")
        need(self.global_pool in ("token", "avg", "", "map"),
             f"global_pool must be 'token', 'avg', 'map' (attention pooling, SigLIP) or '', got {self.global_pool!r}")
        need(not (self.global_pool == "map" and self.representation_size),
             "global_pool='map' has no pre_logits layer (representation_size must be None): the attention pool's "
             "MLP is its last layer before the head")
        need(not (self.global_pool == "token" and not self.class_token),
             "global_pool='token' needs class_token=True; use global_pool='avg' for a model without a class token")
        need(not (self.distilled and not self.class_token), "distilled=True needs class_token=True (DeiT has both)")
        need(self.block_names in ("vit", "beit"), f"block_names must be 'vit' or 'beit', got {self.block_names!r}")
        need(self.rel_pos_bias in ("", "layer", "shared"),
             f"rel_pos_bias must be '' (none), 'layer' (a table per block) or 'shared' (one for every block), "
             f"got {self.rel_pos_bias!r}")
        need(self.rel_pos_resample in ("geometric", "bilinear"),
             f"rel_pos_resample must be 'geometric' (timm) or 'bilinear' (HF), got {self.rel_pos_resample!r}")
        need(not self.rel_pos_bias or (self.class_token and not self.distilled and not self.num_reg_tokens),
             "rel_pos_bias needs exactly one prefix token, the class token (BEiT's table has three entries for it: "
             "class to patch, patch to class, class to class)")
        need(self.block_names == "vit" or self.init_values is None or self.init_values > 0,
             f"block_names='beit' layer scale init_values must be > 0 or None, got {self.init_values}")
        need(self.layer_norm_eps > 0, f"layer_norm_eps must be > 0, got {self.layer_norm_eps}")
        need(self.num_classes >= 0, f"num_classes must be >= 0, got {self.num_classes}")
        need(len(self.mean) == self.in_chans and len(self.std) == self.in_chans and all(s > 0 for s in self.std),
             f"mean and std need {self.in_chans} values each (std > 0), got mean={self.mean} std={self.std}")
        need(0 < self.crop_pct <= 1.0, f"crop_pct must be in (0, 1], got {self.crop_pct}")
        need(self.interpolation in ("bicubic", "bilinear", "nearest"),
             f"interpolation must be 'bicubic', 'bilinear' or 'nearest', got {self.interpolation!r}")
        need(self.pos_embed_resample in ("bicubic_antialias", "bicubic_hf", "bilinear"),
             f"pos_embed_resample must be 'bicubic_antialias', 'bicubic_hf' or 'bilinear', got {self.pos_embed_resample!r}")
        need(not self.labels or len(self.labels) == self.num_classes,
             f"labels has {len(self.labels)} names but the model has num_classes={self.num_classes}")

    # --- derived quantities (never stored, so they cannot disagree) ---------
    @property
    def grid_size(self) -> tuple:
        """(gh, gw): patches per column and per row at the training resolution; not always square."""
        return (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def prefix_names(self) -> tuple:
        """Names of the tokens in front of the patches, in order: cls, dist, reg0..regK."""
        names = ("cls",) if self.class_token else ()
        names += ("dist",) if self.distilled else ()
        return names + tuple(f"reg{i}" for i in range(self.num_reg_tokens))

    @property
    def num_prefix_tokens(self) -> int:
        return len(self.prefix_names)

    @property
    def use_fc_norm(self) -> bool:
        return self.global_pool == "avg" if self.fc_norm is None else bool(self.fc_norm)

    @property
    def num_pos_embed(self) -> int:
        """Rows of the position embedding: the patches, plus the prefix tokens unless no_embed_class (0: none)."""
        if not self.abs_pos_embed:
            return 0
        return self.num_patches + (0 if self.no_embed_class else self.num_prefix_tokens)

    @property
    def num_relative_distance(self) -> int:
        """Rows of BEiT's relative position bias table: one per (dy, dx) offset between two patches,
        (2 gh - 1)(2 gw - 1) of them, and 3 for the class token (class to patch, patch to class, class to class)."""
        gh, gw = self.grid_size
        return (2 * gh - 1) * (2 * gw - 1) + 3

    # --- conversion ---------------------------------------------------------
    def replace(self, **changes) -> "ViTConfig":
        return self.from_dict({**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, **changes})

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = list(value)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "ViTConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a dict of fields, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; known fields are {sorted(known)}")
        try:
            return cls(**d)
        except TypeError as e:  # a value of the wrong type inside a field check
            raise ConfigError(f"bad config value: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> "ViTConfig":
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, TypeError) as e:  # TypeError: not a str / bytes at all
            raise ConfigError(f"config is not valid JSON: {e}") from None
        return cls.from_dict(d)

    @classmethod
    def preset(cls, name: str, **overrides) -> "ViTConfig":
        """The config of a timm architecture by name, e.g. ``ViTConfig.preset("vit_base_patch16_224")``.

        A name of the table PRESETS, or any timm name of the plain ViT, DeiT, DeiT-3 and DINOv2 families
        (``vit_small_patch14_dinov2.lvd142m``, ``vit_base_patch14_reg4_dinov2``, ``deit3_small_patch16_224.fb_in1k``,
        ``vit_base_patch16_224.augreg_in21k_ft_in1k``) and of SigLIP's image towers
        (``vit_base_patch16_siglip_224.webli``, ``vit_so400m_patch14_siglip_gap_224``): see :func:`timm_name_fields`.
        The config keeps the name as given, tag included. A name without a tag is the model timm builds for it:
        its default pretrained tag's head and preprocessing (``TIMM_DEFAULT_TAGS``).
        """
        if not isinstance(name, str):
            raise ConfigError(f"a preset name must be a string, got {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        if name in TIMM_DEFAULT_TAGS:  # timm builds an untagged name with its default tag's head and preprocessing
            return cls.preset(f"{name}.{TIMM_DEFAULT_TAGS[name]}", **overrides).replace(name=name)
        eva02 = _eva02_name_fields(name)  # the EVA-02 grammar, tags included (its presets are its names)
        if eva02 is not None:
            return cls.from_dict({**eva02, "name": name, **overrides})
        base = name if name in PRESETS else name.split(".")[0]
        if base in PRESETS and (base == name or _family_grammar(base) is None):
            fields = dict(PRESETS[base])
            if base != name:  # a pretrained tag on a preset: only the head and preprocessing may change
                fields.update(_tag_fields(name.partition(".")[2], _family_of(base), fields.get("img_size", 224), name))
            return cls.from_dict({**fields, "name": name, **overrides})
        try:
            fields = timm_name_fields(name)
        except UnknownName as e:
            raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}; "
                              f"as a timm name: {e}") from None
        return cls.from_dict({**fields, "name": name, **overrides})


# timm.create_model(name) of a name without a tag takes the head and the preprocessing of the name's default
# pretrained tag (the first one timm registers for it): vit_base_patch16_clip_224 is ImageNet-1k fine-tuned,
# vit_huge_patch14_224 a backbone without a head. The names whose default tag differs from the grammar's untagged
# reading, and that tag; parity_tests/test_timm_names.py checks this table against timm's pretrained configs.
TIMM_DEFAULT_TAGS = {
    "vit_base_patch16_clip_224": "laion2b_ft_in12k_in1k", "vit_base_patch16_clip_384": "laion2b_ft_in12k_in1k",
    "vit_base_patch16_clip_quickgelu_224": "metaclip_2pt5b", "vit_base_patch16_plus_clip_240": "laion400m_e32",
    "vit_base_patch32_clip_256": "datacompxl", "vit_base_patch32_clip_384": "laion2b_ft_in12k_in1k",
    "vit_base_patch32_clip_448": "laion2b_ft_in12k_in1k", "vit_base_patch32_clip_quickgelu_224": "laion400m_e32",
    "vit_betwixt_patch16_reg1_gap_256": "sbb_in1k", "vit_betwixt_patch16_reg4_gap_256": "sbb2_e200_in12k_ft_in1k",
    "vit_betwixt_patch16_reg4_gap_384": "sbb2_e200_in12k_ft_in1k",
    "vit_betwixt_patch32_clip_224": "tinyclip_laion400m", "vit_giant_patch14_clip_224": "laion2b",
    "vit_giant_patch16_gap_224": "in22k_ijepa", "vit_gigantic_patch14_clip_224": "laion2b",
    "vit_gigantic_patch14_clip_378": "metaclip2_worldwide",
    "vit_gigantic_patch14_clip_quickgelu_224": "metaclip_2pt5b", "vit_huge_patch14_224": "orig_in21k",
    "vit_huge_patch14_clip_224": "laion2b_ft_in12k_in1k", "vit_huge_patch14_clip_336": "laion2b_ft_in12k_in1k",
    "vit_huge_patch14_clip_378": "dfn5b", "vit_huge_patch14_clip_quickgelu_224": "dfn5b",
    "vit_huge_patch14_clip_quickgelu_378": "dfn5b", "vit_huge_patch14_gap_224": "in1k_ijepa",
    "vit_huge_patch16_gap_448": "in1k_ijepa", "vit_large_patch14_clip_224": "laion2b_ft_in12k_in1k",
    "vit_large_patch14_clip_336": "laion2b_ft_in12k_in1k", "vit_large_patch14_clip_quickgelu_224": "dfn2b",
    "vit_large_patch14_clip_quickgelu_336": "openai", "vit_large_patch32_224": "orig_in21k",
    "vit_little_patch16_reg1_gap_256": "sbb_in12k_ft_in1k", "vit_little_patch16_reg4_gap_256": "sbb_in1k",
    "vit_medium_patch16_clip_224": "tinyclip_yfcc15m", "vit_medium_patch16_gap_240": "sw_in12k",
    "vit_medium_patch16_gap_256": "sw_in12k_ft_in1k", "vit_medium_patch16_gap_384": "sw_in12k_ft_in1k",
    "vit_medium_patch16_reg1_gap_256": "sbb_in1k", "vit_medium_patch16_reg4_gap_256": "sbb_in12k_ft_in1k",
    "vit_medium_patch32_clip_224": "tinyclip_laion400m",
    "vit_mediumd_patch16_reg4_gap_256": "sbb2_e200_in12k_ft_in1k",
    "vit_mediumd_patch16_reg4_gap_384": "sbb2_e200_in12k_ft_in1k", "vit_small_patch8_224": "dino",
    "vit_so150m2_patch16_reg1_gap_256": "sbb_e200_in12k_ft_in1k",
    "vit_so150m2_patch16_reg1_gap_384": "sbb_e200_in12k_ft_in1k",
    "vit_so150m2_patch16_reg1_gap_448": "sbb_e200_in12k_ft_in1k",
    "vit_so150m_patch16_reg4_gap_256": "sbb_e250_in12k_ft_in1k",
    "vit_so150m_patch16_reg4_gap_384": "sbb_e250_in12k_ft_in1k", "vit_wee_patch16_reg1_gap_256": "sbb_in1k",
    "vit_xsmall_patch16_clip_224": "tinyclip_yfcc15m"
}


# --- timm's architecture names, read as a grammar ----------------------------------------------------
# timm names a plain ViT ``{family}_{size}_[distilled_]patch{P}[_reg{K}]_{res | dinov2}[.{tag}]``. The family
# fixes the recipe (timm/models/vision_transformer.py and deit.py): the size the width, depth and heads; the
# tag the pretraining data, hence the head and the preprocessing. SigLIP's towers have a grammar of their own
# (``_siglip_name_fields``). Anything else in a name (clip, gap, rope, ...) changes the architecture in ways this
# model does not have, and is refused by name.

class UnknownName(ConfigError):
    """A name that is no timm ViT / DeiT / DINOv2 name (its message says which part is unknown)."""


TIMM_SIZES = {  # size: (embed_dim, depth, num_heads), as timm's model functions give them
    "tiny": (192, 12, 3), "small": (384, 12, 6), "medium": (512, 12, 8), "base": (768, 12, 12),
    "large": (1024, 24, 16), "huge": (1280, 32, 16),
}
_NAME = re.compile(r"^(?P<family>vit|deit3|deit)_(?P<size>[a-z]+)_(?P<distilled>distilled_)?patch(?P<patch>\d+)"
                   r"(?:_reg(?P<reg>\d+))?_(?P<rest>.+)$")
_FAMILIES = {
    # family: fields every member has (the recipe of its paper)
    "vit": dict(mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=0.9),        # Dosovitskiy et al. 2021, augreg
    "deit": dict(crop_pct=0.9),                                               # Touvron et al. 2021, ImageNet mean
    "deit3": dict(crop_pct=0.9, init_values=1e-6, no_embed_class=True),       # Touvron et al. 2022: layer scale
    "dinov2": dict(img_size=518, crop_pct=1.0, init_values=1e-5, num_classes=0),  # Oquab et al. 2023: a backbone
}
# pretrained tag: (families it exists for, fields it sets); resolution-dependent crops are applied after
_TAGS = {
    "augreg_in1k": (("vit",), {}),
    "augreg_in21k": (("vit",), dict(num_classes=21843)),
    "augreg_in21k_ft_in1k": (("vit",), {}),
    "augreg2_in21k_ft_in1k": (("vit",), {}),
    "orig_in21k": (("vit",), dict(num_classes=0)),                 # timm strips the zeroed in21k head
    "orig_in21k_ft_in1k": (("vit",), {}),
    "sam_in1k": (("vit",), {}),
    "dino": (("vit",), dict(num_classes=0, mean=IMAGENET_MEAN, std=IMAGENET_STD)),   # Caron et al. 2021
    "mae": (("vit",), dict(num_classes=0, mean=IMAGENET_MEAN, std=IMAGENET_STD)),    # He et al. 2022
    "fb_in1k": (("deit", "deit3"), {}),
    "fb_in22k_ft_in1k": (("deit3",), dict(crop_pct=1.0)),
    "lvd142m": (("dinov2",), {}),
    # SigLIP image towers (timm's vit_*_siglip_*): WebLI pre-training, no classifier, except the ImageNet fine-tunes
    "webli": (("siglip",), {}),
    "v2_webli": (("siglip",), {}),                                 # SigLIP 2 (Tschannen et al. 2025)
    "webli_i18n": (("siglip",), {}),
    "webli_ft_in1k": (("siglip",), dict(num_classes=1000, crop_pct=1.0)),  # timm squashes to square; here: centre crop
    **{tag: (("siglip",), {}) for tag in ("pali_mix", "pali_pt", "pali_refcoco_seg", "pali_ocrvqa", "pali2_3b_pt",
                                          "pali2_10b_pt", "pali2_3b_docci", "pali2_10b_docci")},  # PaliGemma towers
}


def _family_of(base: str) -> str:
    if _SIGLIP_NAME.match(base):
        return "siglip"
    m = _NAME.match(base)
    if m is None:
        return "vit"
    return "dinov2" if m["rest"] == "dinov2" else m["family"]


def _tag_fields(tag: str, family: str, res, name: str) -> dict:
    """What a pretrained tag changes: the head (in21k: 21843 classes; self-supervised: none) and the crop."""
    if tag not in _TAGS:
        raise ConfigError(f"unknown pretrained tag {tag!r} in {name!r}; known tags: {', '.join(_TAGS)} "
                          f"(or give the name without a tag)")
    families, fields = _TAGS[tag]
    if family not in families:
        raise ConfigError(f"the pretrained tag {tag!r} in {name!r} belongs to {' / '.join(families)} models, not to "
                          f"the {family} family; its tags are "
                          f"{', '.join(t for t, (f, _) in _TAGS.items() if family in f)}")
    fields = dict(fields)
    if _pair(res, "img_size")[0] >= 384 and family in ("vit", "deit", "deit3"):
        fields["crop_pct"] = 1.0                      # timm evaluates its 384 px fine-tunes without a crop
    return fields


EVA02_SIZES = {  # size: (embed_dim, depth, num_heads, resolutions timm registers), timm/models/eva.py
    "tiny": (192, 12, 3, (224, 336)), "small": (384, 12, 6, (224, 336)),
    "base": (768, 12, 12, (224, 448)), "large": (1024, 24, 16, (224, 448)),
}
_EVA02_NAME = re.compile(r"^eva02_(?P<size>[a-z]+)_patch(?P<patch>\d+)_(?P<rest>.+)$")
# EVA-02 pretrained tags (mim_<pretraining data>[_ft_<fine-tuning data>]): what the head becomes
_EVA02_TAGS = {
    "mim_in22k": dict(num_classes=0), "mim_m38m": dict(num_classes=0),     # masked image modelling: a backbone
    "mim_in22k_ft_in1k": {}, "mim_m38m_ft_in1k": {},
    "mim_in22k_ft_in22k": dict(num_classes=21841), "mim_m38m_ft_in22k": dict(num_classes=21841),
    "mim_in22k_ft_in22k_in1k": {}, "mim_m38m_ft_in22k_in1k": {},
}


def _eva02_name_fields(name: str) -> dict | None:
    """The fields of an EVA-02 name (Fang et al. 2023; timm/models/eva.py), ``eva02_{size}_patch14_{res}[.tag]``,
    or None for a name of another family. Every EVA-02 classifier: 14 px patches, a class token with a position,
    2-D RoPE scaled to the 16 x 16 grid of 224 px, a SwiGLU MLP of width 4 * 2/3 D, average pooling + fc_norm,
    OpenAI CLIP's pixel statistics. Tiny / small fuse q, k, v (q and v biases); base / large keep them apart
    and put a LayerNorm in the MLP (timm's ``qkv_fused=False, scale_mlp=True``)."""
    base, _, tag = name.partition(".")
    m = _EVA02_NAME.match(base)
    if m is None:
        return None
    size, patch, rest = m["size"], int(m["patch"]), m["rest"]
    if size not in EVA02_SIZES:
        raise UnknownName(f"unknown size {size!r} in {name!r}: timm's EVA-02 classifiers are "
                          f"{', '.join(EVA02_SIZES)} (the enormous model is a CLIP tower with post-norm blocks)")
    width, depth, heads, resolutions = EVA02_SIZES[size]
    if rest.startswith("clip"):
        raise UnknownName(f"unknown part {rest!r} in {name!r}: EVA-02 CLIP towers add a LayerNorm inside the "
                          f"attention (timm's scale_attn_inner), which numpy_vit does not model")
    if not rest.isdigit() or patch != 14:
        raise UnknownName(f"unknown part 'patch{patch}_{rest}' in {name!r}: EVA-02 names read "
                          f"eva02_<size>_patch14_<resolution>")
    res = int(rest)
    if res not in resolutions:
        raise UnknownName(f"unknown resolution {res} in {name!r}: timm's EVA-02 {size} exists at "
                          f"{' and '.join(map(str, resolutions))} px")
    if tag and tag not in _EVA02_TAGS:
        raise UnknownName(f"unknown pretrained tag {tag!r} in {name!r}; EVA-02 tags are {', '.join(_EVA02_TAGS)}")
    separate = size in ("base", "large")
    fields = dict(embed_dim=width, depth=depth, num_heads=heads, patch_size=14, img_size=res, mlp_ratio=4 * 2 / 3,
                  rope=True, rope_ref_grid=(16, 16), mlp="swiglu", mlp_norm=separate,
                  qkv_layout="separate" if separate else "fused_qv_bias", global_pool="avg",
                  mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, crop_pct=1.0 if res > 224 else 0.9)
    if not tag and res == 224:  # timm's default weights at 224 are the masked-image-modelling backbones
        fields["num_classes"] = 0
    fields.update(_EVA02_TAGS.get(tag, {}))
    return fields


def timm_name_fields(name: str) -> dict:
    """The ViTConfig fields of a timm architecture name, or a ConfigError that names the part it cannot read.

    ``vit_small_patch14_dinov2`` -> img 518, patch 14, layer scale 1e-5, no head, the class token's position
    in the embedding (timm's non-register DINOv2); ``_reg4_`` adds 4 registers and drops the prefix tokens
    from the position embedding (Darcet et al. 2023); ``deit3_*`` -> layer scale 1e-6, patch-only positions.
    """
    eva02 = _eva02_name_fields(name)
    if eva02 is not None:
        return eva02
    base, _, tag = name.partition(".")
    if _family_grammar(base) is not None:  # a family with a grammar of its own (CLIP, average-pooled ViTs, ...)
        return _family_grammar(base)(name)
    m = _NAME.match(base)
    if m is None:
        raise UnknownName(f"{name!r} is not of the form {{vit|deit|deit3}}_{{{'|'.join(TIMM_SIZES)}}}_patch<P>_<RES>, "
                          f"vit_<size>_patch14[_reg<K>]_dinov2 or eva02_<size>_patch14_<RES>")
    family, size, rest = m["family"], m["size"], m["rest"]
    if size not in TIMM_SIZES:
        raise UnknownName(f"unknown size {size!r} in {name!r}: timm's plain ViT sizes are {', '.join(TIMM_SIZES)}"
                          + (" (giant DINOv2 uses a SwiGLU MLP, which numpy_vit does not model)"
                             if size == "giant" else ""))
    if rest == "dinov2":
        if family != "vit" or m["distilled"]:
            raise ConfigError(f"{name!r}: DINOv2 names start with vit_ and have no distillation token")
        family, res = "dinov2", 518
    elif rest.isdigit():
        res = int(rest)
        if m["reg"]:
            raise ConfigError(f"{name!r}: registers (_reg{m['reg']}_) exist in timm only for the DINOv2 names "
                              f"vit_<size>_patch14_reg<K>_dinov2")
    else:
        raise UnknownName(f"unknown part {rest!r} in {name!r}: after patch<P> this reads only a resolution "
                          f"(_224) or _dinov2 (parts such as rope change the architecture "
                          f"in ways numpy_vit does not model)")
    if m["distilled"] and family != "deit":
        raise ConfigError(f"{name!r}: only deit_ models have a distilled_ variant")
    width, depth, heads = TIMM_SIZES[size]
    fields = dict(embed_dim=width, depth=depth, num_heads=heads, patch_size=int(m["patch"]), img_size=res,
                  distilled=bool(m["distilled"]))
    fields.update(_FAMILIES[family])
    if m["reg"]:  # timm's register models put no position on the prefix tokens
        fields.update(num_reg_tokens=int(m["reg"]), no_embed_class=True)
    if res >= 384 and family in ("vit", "deit", "deit3"):
        fields["crop_pct"] = 1.0
    if tag:
        fields.update(_tag_fields(tag, family, res, name))
    return fields


# --- SigLIP's image towers (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training") ---------------------
# timm names them ``vit_{size}_patch{P}_siglip[_gap]_{res}[.{tag}]`` (timm/models/vision_transformer.py): no class
# token, mean = std = 0.5, and the image summary read by attention pooling ("map", a learned latent query; timm's
# AttentionPoolLatent) or, in the ``_gap_`` variants, by the mean over the patch tokens after the final norm.
SIGLIP_SIZES = {  # size: (embed_dim, depth, num_heads, mlp_ratio), as timm's model functions give them
    "base": (768, 12, 12, 4.0), "large": (1024, 24, 16, 4.0),
    "so400m": (1152, 27, 16, 3.7362),     # the shape-optimised 400M tower (Alabdulmohsin et al. 2023): M = 4304
    "giantopt": (1536, 40, 16, 4.0),
}
# (size, patch): the resolutions timm registers, for the attention-pooled towers and for the _gap_ ones
SIGLIP_ARCHS = {
    ("base", 32): ((256,), (256,)),
    ("base", 16): ((224, 256, 384, 512), (224, 256, 384, 512)),
    ("large", 16): ((256, 384, 512), (256, 384, 512)),
    ("so400m", 14): ((224, 378, 384), (224, 378, 384, 448, 896)),
    ("so400m", 16): ((256, 384, 512), (256, 384, 512)),
    ("giantopt", 16): ((256, 384), (256, 384)),
}
# timm builds these with the tanh approximation of GELU (act_layer='gelu_tanh'), the others with the exact one
SIGLIP_GELU_TANH = {("base", 32, 256), ("large", 16, 512), ("so400m", 16, 256), ("so400m", 16, 384),
                    ("so400m", 16, 512), ("giantopt", 16, 256), ("giantopt", 16, 384)}
_SIGLIP_NAME = re.compile(r"^vit_(?P<size>[a-z0-9]+)_patch(?P<patch>\d+)_siglip(?P<gap>_gap)?_(?P<res>\d+)$")


def _siglip_name_fields(name: str) -> dict:
    """The ViTConfig fields of a timm SigLIP name, e.g. ``vit_so400m_patch14_siglip_224.v2_webli`` -> width 1152,
    27 blocks, 16 heads, M = 4304, patch 14 at 224 px, no class token, attention pooling, no classifier."""
    base, _, tag = name.partition(".")
    m = _SIGLIP_NAME.match(base)
    if m is None:
        raise UnknownName(f"{name!r} is not of the form vit_{{{'|'.join(SIGLIP_SIZES)}}}_patch<P>_siglip[_gap]_<RES> "
                          f"(timm's SigLIP image towers)")
    size, patch, res, gap = m["size"], int(m["patch"]), int(m["res"]), bool(m["gap"])
    if size not in SIGLIP_SIZES:
        raise UnknownName(f"unknown size {size!r} in {name!r}: timm's SigLIP sizes are {', '.join(SIGLIP_SIZES)}")
    if (size, patch) not in SIGLIP_ARCHS:
        raise UnknownName(f"unknown patch size {patch} for SigLIP {size} in {name!r}: timm has "
                          f"{', '.join(f'patch{p}' for s, p in SIGLIP_ARCHS if s == size)}")
    resolutions = SIGLIP_ARCHS[size, patch][gap]
    if res not in resolutions:
        raise UnknownName(f"unknown resolution {res} in {name!r}: timm's {size} patch{patch} SigLIP "
                          f"{'_gap_ ' if gap else ''}towers are {', '.join(map(str, resolutions))} px")
    if res % patch:  # vit_so400m_patch14_siglip_384: timm's patch embedding drops the last res % patch pixels
        raise ConfigError(f"{name!r}: {res} px is not a whole number of {patch} px patches (timm's patch embedding "
                          f"drops the last {res % patch} pixel rows and columns, which numpy_vit does not do); "
                          f"timm's {base.replace(f'_{res}', f'_{res // patch * patch}')} holds the same weights on "
                          f"the same {res // patch} x {res // patch} grid at {res // patch * patch} px: use that name")
    width, depth, heads, mlp_ratio = SIGLIP_SIZES[size]
    fields = dict(embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio, patch_size=patch, img_size=res,
                  class_token=False, global_pool="avg" if gap else "map", fc_norm=False if gap else None,
                  gelu="tanh" if (size, patch, res) in SIGLIP_GELU_TANH else "erf", num_classes=0,
                  mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=0.9)
    if tag:
        fields.update(_tag_fields(tag, "siglip", res, name))
    if gap and (size, patch) == ("so400m", 14) and res >= 378 and tag != "v2_webli" and (tag or res >= 448):
        # timm's pretrained configs of the PaliGemma towers (at 448 and 896 px, untagged too: their only tags) and
        # of the 378 px WebLI one evaluate without a crop
        fields["crop_pct"] = 1.0
    return fields


# --- BEiT's names: beit[v2]_{base|large}_patch16_{224|384|512}[.{tag}] (timm/models/beit.py) -----------------
_BEIT_NAME = re.compile(r"^(?P<family>beitv2|beit)_(?P<size>[a-z]+)_patch(?P<patch>\d+)_(?P<res>\d+)$")
_BEIT_MODELS = {  # the models timm registers: layer scale's initial value, and the tags it has weights for
    "beit_base_patch16_224": (0.1, ("in22k_ft_in22k_in1k", "in22k_ft_in22k")),
    "beit_base_patch16_384": (0.1, ("in22k_ft_in22k_in1k",)),
    "beit_large_patch16_224": (1e-5, ("in22k_ft_in22k_in1k", "in22k_ft_in22k")),
    "beit_large_patch16_384": (1e-5, ("in22k_ft_in22k_in1k",)),
    "beit_large_patch16_512": (1e-5, ("in22k_ft_in22k_in1k",)),
    "beitv2_base_patch16_224": (1e-5, ("in1k_ft_in22k_in1k", "in1k_ft_in1k", "in1k_ft_in22k")),
    "beitv2_large_patch16_224": (1e-5, ("in1k_ft_in22k_in1k", "in1k_ft_in1k", "in1k_ft_in22k")),
}


def _beit_name_fields(name: str) -> dict:
    """The ViTConfig fields of a timm BEiT / BEiT v2 name, e.g. ``beitv2_base_patch16_224.in1k_ft_in22k_in1k``.

    Every timm BEiT has a relative position bias table per block and no absolute position embedding, q and v
    biases without a key bias, layer scale (0.1 for BEiT-base, else 1e-5), and average pooling with a LayerNorm
    after it (fc_norm). BEiT v1 normalises with mean = std = 0.5, v2 with ImageNet's; the tag's ``_in22k`` end
    means a 21841-class head. The crop is timm's: 0.9, 1.0 at 384 / 512 px, 0.95 for BEiT v2 large's ImageNet-1k
    classifiers.
    """
    base, _, tag = name.partition(".")
    if base.startswith("beit3_"):
        raise UnknownName(f"{name!r} is BEiT-3 (timm beit3.py: Magneto's sub-LayerNorms in every branch), another "
                          f"architecture than BEiT / BEiT v2, which numpy_vit does not model")
    m = _BEIT_NAME.match(base)
    if m is None:
        raise UnknownName(f"{name!r} is not of the form beit[v2]_{{base|large}}_patch16_{{224|384|512}}")
    if m["size"] not in ("base", "large"):
        raise UnknownName(f"unknown size {m['size']!r} in {name!r}: timm's BEiT sizes are base and large")
    if base not in _BEIT_MODELS:
        raise UnknownName(f"{name!r}: timm has no BEiT of patch {m['patch']} at {m['res']} px; its BEiT names are "
                          f"{', '.join(_BEIT_MODELS)}")
    init_values, tags = _BEIT_MODELS[base]
    if tag and tag not in tags:
        raise ConfigError(f"unknown pretrained tag {tag!r} in {name!r}; {base}'s tags are {', '.join(tags)}")
    width, depth, heads = TIMM_SIZES[m["size"]]
    res = int(m["res"])
    v2 = m["family"] == "beitv2"
    return dict(embed_dim=width, depth=depth, num_heads=heads, patch_size=int(m["patch"]), img_size=res,
                block_names="beit", abs_pos_embed=False, rel_pos_bias="layer", init_values=init_values,
                global_pool="avg", mean=IMAGENET_MEAN if v2 else INCEPTION_MEAN,
                std=IMAGENET_STD if v2 else INCEPTION_STD,
                crop_pct=1.0 if res >= 384 else 0.95 if base == "beitv2_large_patch16_224" and tag != "in1k_ft_in22k"
                else 0.9,
                num_classes=21841 if tag.endswith("_in22k") else 1000)


def _family_grammar(base: str):
    """The name reader of the family a timm name (without its tag) belongs to, or None for the plain ViT / DeiT /
    DINOv2 grammar above. One line per family."""
    if "_siglip" in base:
        return _siglip_name_fields  # SigLIP image towers (Zhai et al. 2023), their _gap_ variants included
    if base.startswith(("beit_", "beitv2_", "beit3_")):
        return _beit_name_fields  # BEiT / BEiT v2 (Bao et al. 2022; Peng et al. 2022)
    if "_clip_" in base:
        return _clip_name_fields  # CLIP image towers (Radford et al. 2021)
    if re.search(r"_gap_\d+$", base) and "siglip" not in base and "_rope_" not in base:
        return _gap_name_fields  # plain ViTs pooled by the patch mean, without a class token
    return None


# --- CLIP image towers (Radford et al. 2021), as timm builds them ------------------------------------------------------
# timm names them ``vit_{size}_patch{P}[_plus]_clip[_quickgelu]_{res}[.{tag}]`` (timm/models/vision_transformer.py):
# a plain ViT with a LayerNorm before the blocks (pre_norm=True), LayerNorm eps 1e-5 and OpenAI's normalisation.
# ``_quickgelu_`` models use OpenAI's x * sigmoid(1.702 x) (the weights trained with it: OpenAI's, MetaCLIP's, DFN's).
# The tag names the weights: an image tower alone (``.openai``, ``.laion2b``, ...) ends in CLIP's projection into the
# joint image-text space, kept as the head (timm converts OpenAI's ``proj`` to ``head.weight`` with a zero bias), so
# num_classes is the projection's width; ``_ft_in1k`` / ``_ft_in12k_in1k`` are ImageNet-1k classifiers, and
# ``_ft_in12k`` one of ImageNet-12k's 11,821 classes.

CLIP_SIZES = {  # size: (embed_dim, depth, num_heads, mlp_ratio, projection width), as timm's model functions give them
    "xsmall": (256, 10, 4, 4.0, 512), "medium": (512, 12, 8, 4.0, 512), "betwixt": (640, 12, 10, 4.0, 512),
    "base": (768, 12, 12, 4.0, 512), "base_plus": (896, 12, 14, 4.0, 640), "large": (1024, 24, 16, 4.0, 768),
    "huge": (1280, 32, 16, 4.0, 1024), "giant": (1408, 40, 16, 48 / 11, 1024),
    "gigantic": (1664, 48, 16, 64 / 13, 1280),
}
_CLIP_NAME = re.compile(r"^vit_(?P<size>[a-z]+)_patch(?P<patch>\d+)(?P<plus>_plus)?_clip(?P<quick>_quickgelu)?"
                        r"_(?P<res>\d+)$")
CLIP_TOWER_TAGS = ("openai", "laion2b", "laion400m_e32", "datacompxl", "dfn2b", "dfn2b_s39b", "dfn5b", "metaclip_400m",
                   "metaclip_2pt5b", "metaclip_altogether", "metaclip2_worldwide", "apple_mclip2_dfndr2b",
                   "tinyclip_yfcc15m", "tinyclip_laion400m")
CLIP_FINE_TUNES = {"ft_in1k": 1000, "ft_in12k_in1k": 1000, "ft_in12k": 11821}  # suffix of a tag: classes
# timm evaluates most CLIP weights without a crop (crop_pct 1.0); these are its exceptions (their pretrained_cfg)
_CLIP_CROP_PCT = {
    0.9: ("vit_base_patch16_clip_224.openai", "vit_base_patch16_clip_224.openai_ft_in1k",
          "vit_base_patch16_clip_224.openai_ft_in12k", "vit_base_patch16_clip_224.laion2b_ft_in12k",
          "vit_base_patch32_clip_224.openai", "vit_base_patch32_clip_224.openai_ft_in1k",
          "vit_base_patch32_clip_224.laion2b", "vit_base_patch32_clip_224.laion2b_ft_in1k",
          "vit_base_patch32_clip_224.laion2b_ft_in12k_in1k", "vit_base_patch32_clip_224.laion400m_e32"),
    0.95: ("vit_base_patch16_clip_224.openai_ft_in12k_in1k", "vit_base_patch16_clip_224.laion2b_ft_in12k_in1k",
           "vit_base_patch16_clip_384.openai_ft_in12k_in1k", "vit_base_patch32_clip_384.openai_ft_in12k_in1k"),
}
_CLIP_INCEPTION_NORMALISED = ("vit_large_patch14_clip_224.laion2b", "vit_large_patch14_clip_336.laion2b")  # mean = std = 0.5


def _clip_name_fields(name: str) -> dict:
    """The ViTConfig fields of a timm CLIP image-tower name: ``vit_base_patch16_clip_224.openai`` -> ViT-B/16 with
    norm_pre, eps 1e-5, OpenAI's mean / std and a 512-wide projection head; ``vit_base_patch16_clip_quickgelu_224``
    the same with quick GELU; an untagged name the architecture with a 1000-class head (ViTConfig.preset reads
    a name timm gives another default tag, TIMM_DEFAULT_TAGS, with that tag)."""
    base, _, tag = name.partition(".")
    m = _CLIP_NAME.match(base)
    if m is None:
        raise UnknownName(f"{name!r} is not of the form vit_<size>_patch<P>[_plus]_clip[_quickgelu]_<RES> (timm's CLIP "
                          f"image towers)")
    size = m["size"] + ("_plus" if m["plus"] else "")
    if size not in CLIP_SIZES:
        raise UnknownName(f"unknown CLIP size {size!r} in {name!r}: timm's CLIP towers are "
                          f"{', '.join(CLIP_SIZES)} (base_plus written vit_base_patch16_plus_clip_240)")
    width, depth, heads, mlp_ratio, projection = CLIP_SIZES[size]
    fields = dict(embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio, patch_size=int(m["patch"]),
                  img_size=int(m["res"]), norm_pre=True, layer_norm_eps=1e-5, gelu="quick" if m["quick"] else "erf",
                  mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, crop_pct=0.9)
    if not tag:
        return fields
    tower = next((t for t in sorted(CLIP_TOWER_TAGS, key=len, reverse=True) if tag == t or tag.startswith(t + "_")),
                 None)
    rest = tag[len(tower) + 1:] if tower else ""
    if tower is None or (rest and rest not in CLIP_FINE_TUNES):
        raise ConfigError(f"unknown CLIP pretrained tag {tag!r} in {name!r}: a CLIP tag is the training data "
                          f"({', '.join(CLIP_TOWER_TAGS)}), optionally followed by _{', _'.join(CLIP_FINE_TUNES)}")
    fields["num_classes"] = CLIP_FINE_TUNES[rest] if rest else projection
    lookup = base.replace("_quickgelu", "") + "." + tag  # timm's quickgelu weights share their preprocessing
    fields["crop_pct"] = next((crop for crop, names in _CLIP_CROP_PCT.items() if lookup in names),
                              0.9 if tower.startswith("tinyclip") else 1.0)
    if lookup.startswith(_CLIP_INCEPTION_NORMALISED) and tower == "laion2b":
        fields.update(mean=INCEPTION_MEAN, std=INCEPTION_STD)
    return fields


# --- plain ViTs without a class token, pooled by the mean of the patch tokens ("gap") ------------------------------
# timm's ``vit_{size}_patch{P}[_reg{K}]_gap_{res}`` (timm/models/vision_transformer.py): class_token=False,
# global_pool="avg", and each model function's own recipe (layer scale, q/k/v biases, whether the final LayerNorm
# comes before the pooling (fc_norm=False) or after it, registers without position). Data, one row per function:
GAP_MODELS = {  # name without resolution: fields                                  # timm's arguments
    "vit_medium_patch16_gap": dict(embed_dim=512, depth=12, num_heads=8, qkv_bias=False, init_values=1e-6,
                                   fc_norm=False),
    "vit_betwixt_patch16_gap": dict(embed_dim=640, depth=12, num_heads=10, qkv_bias=False, init_values=1e-6,
                                    fc_norm=False),
    "vit_base_patch16_gap": dict(embed_dim=768, depth=12, num_heads=16, fc_norm=False),
    "vit_huge_patch14_gap": dict(embed_dim=1280, depth=32, num_heads=16, fc_norm=False),
    "vit_huge_patch16_gap": dict(embed_dim=1280, depth=32, num_heads=16, fc_norm=False),
    "vit_giant_patch16_gap": dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11, fc_norm=False),
    # registers (Darcet et al. 2023) in front of the patches, without a position; the mean leaves them out
    "vit_wee_patch16_reg1_gap": dict(embed_dim=256, depth=14, num_heads=4, mlp_ratio=5, init_values=1e-5,
                                     num_reg_tokens=1, no_embed_class=True),
    "vit_little_patch16_reg1_gap": dict(embed_dim=320, depth=14, num_heads=5, mlp_ratio=5.6, init_values=1e-5,
                                        num_reg_tokens=1, no_embed_class=True),
    "vit_little_patch16_reg4_gap": dict(embed_dim=320, depth=14, num_heads=5, mlp_ratio=5.6, init_values=1e-5,
                                        num_reg_tokens=4, no_embed_class=True),
    "vit_medium_patch16_reg1_gap": dict(embed_dim=512, depth=12, num_heads=8, init_values=1e-5, num_reg_tokens=1,
                                        no_embed_class=True),
    "vit_medium_patch16_reg4_gap": dict(embed_dim=512, depth=12, num_heads=8, init_values=1e-5, num_reg_tokens=4,
                                        no_embed_class=True),
    "vit_mediumd_patch16_reg4_gap": dict(embed_dim=512, depth=20, num_heads=8, init_values=1e-5, num_reg_tokens=4,
                                         no_embed_class=True),
    "vit_betwixt_patch16_reg1_gap": dict(embed_dim=640, depth=12, num_heads=10, init_values=1e-5, num_reg_tokens=1,
                                         no_embed_class=True),
    "vit_betwixt_patch16_reg4_gap": dict(embed_dim=640, depth=12, num_heads=10, init_values=1e-5, num_reg_tokens=4,
                                         no_embed_class=True),
    "vit_base_patch16_reg4_gap": dict(embed_dim=768, depth=12, num_heads=12, num_reg_tokens=4, no_embed_class=True),
    "vit_so150m_patch16_reg4_gap": dict(embed_dim=896, depth=18, num_heads=14, mlp_ratio=2.572, num_reg_tokens=4,
                                        fc_norm=False),
    "vit_so150m2_patch16_reg1_gap": dict(embed_dim=832, depth=21, num_heads=13, mlp_ratio=34 / 13, init_values=1e-5,
                                         qkv_bias=False, num_reg_tokens=1),
}
_GAP_OTHER_BLOCKS = {"dwee": "differential attention", "dlittle": "differential attention",
                     "pwee": "parallel scaling blocks", "dpwee": "differential attention in parallel scaling blocks"}
# pretrained tag: fields (timm's pretrained_cfg); sw = Ross Wightman's in12k recipe, sbb = "searching for better
# baselines" recipes, ijepa = Assran et al. 2023's self-supervised backbones
GAP_TAGS = {"untrained": {}, "sw_in12k": dict(num_classes=11821), "sw_in12k_ft_in1k": {},
            "in1k_ijepa": dict(num_classes=0, mean=IMAGENET_MEAN, std=IMAGENET_STD),
            "in22k_ijepa": dict(num_classes=0, mean=IMAGENET_MEAN, std=IMAGENET_STD),
            **{f"{recipe}_in1k": {} for recipe in ("sbb",)},
            **{f"{recipe}_in12k": dict(num_classes=11821) for recipe in ("sbb", "sbb2_e200", "sbb_e200", "sbb_e250")},
            **{f"{recipe}_in12k_ft_in1k": {} for recipe in ("sbb", "sbb2_e200", "sbb_e200", "sbb_e250")}}


def _gap_name_fields(name: str) -> dict:
    """The ViTConfig fields of a timm average-pooled ViT name (``vit_base_patch16_gap_224``,
    ``vit_medium_patch16_reg4_gap_256.sbb_in12k_ft_in1k``): no class token, the mean of the patch tokens for the head."""
    base, _, tag = name.partition(".")
    stem, _, res = base.rpartition("_")
    size = stem.split("_")[1] if stem.count("_") >= 2 else ""
    if size in _GAP_OTHER_BLOCKS:
        raise UnknownName(f"{name!r}: the {size!r} models use {_GAP_OTHER_BLOCKS[size]}, which numpy_vit does not "
                          f"model")
    if stem not in GAP_MODELS:
        raise UnknownName(f"unknown average-pooled ViT {stem!r} in {name!r}; timm's that numpy_vit reads: "
                          f"{', '.join(GAP_MODELS)} (each followed by _<RES>)")
    fields = dict(GAP_MODELS[stem], patch_size=int(re.search(r"patch(\d+)", stem)[1]), img_size=int(res), class_token=False,
                  global_pool="avg", mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=0.9)
    if tag:
        if tag not in GAP_TAGS:
            raise ConfigError(f"unknown pretrained tag {tag!r} in {name!r}; the average-pooled ViTs' tags are "
                              f"{', '.join(GAP_TAGS)}")
        fields.update(GAP_TAGS[tag])
        if tag not in ("untrained", "in1k_ijepa", "in22k_ijepa"):  # timm's crops for its own recipes
            fields["crop_pct"] = 1.0 if (int(res) >= 384 and stem != "vit_medium_patch16_gap") \
                or stem == "vit_so150m2_patch16_reg1_gap" else 0.95
        elif int(res) >= 384:
            fields["crop_pct"] = 1.0
    return fields


_GOOGLE = dict(mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=0.9)  # augreg / original Google ViT weights

PRESETS = {
    # name: fields                                                      # params (with a 1000-class head)
    "vit_tiny_patch16_224": dict(embed_dim=192, depth=12, num_heads=3, **_GOOGLE),             # 5.7M
    "vit_small_patch16_224": dict(embed_dim=384, depth=12, num_heads=6, **_GOOGLE),            # 22M
    "vit_base_patch16_224": dict(embed_dim=768, depth=12, num_heads=12, **_GOOGLE),            # 86M
    "vit_large_patch16_224": dict(embed_dim=1024, depth=24, num_heads=16, **_GOOGLE),          # 304M
    "vit_base_patch32_224": dict(patch_size=32, embed_dim=768, depth=12, num_heads=12, **_GOOGLE),  # 88M
    "vit_base_patch16_384": dict(img_size=384, embed_dim=768, depth=12, num_heads=12,
                                 mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=1.0),        # 86M
    # DeiT with a distillation token and a second head (Touvron et al. 2021)
    "deit_tiny_distilled_patch16_224": dict(embed_dim=192, depth=12, num_heads=3, distilled=True),  # 5.9M
    # DINOv2 with 4 registers: layer scale, position embedding for patches only, no head
    "vit_small_patch14_reg4_dinov2": dict(img_size=518, patch_size=14, embed_dim=384, depth=12, num_heads=6,
                                          init_values=1e-5, num_reg_tokens=4, no_embed_class=True,
                                          num_classes=0, crop_pct=1.0),                       # 22M
    # DINO self-supervised ViT-S/16: a backbone without a classifier
    "vit_small_patch16_224.dino": dict(embed_dim=384, depth=12, num_heads=6, num_classes=0, crop_pct=0.9),   # 22M
    "vit_base_patch16_224.dino": dict(embed_dim=768, depth=12, num_heads=12, num_classes=0, crop_pct=0.9),   # 86M
    # global average pooling over patches, LayerNorm after pooling (EVA / MAE-style fine-tuning)
    "eva_large_patch14_196": dict(img_size=196, patch_size=14, embed_dim=1024, depth=24, num_heads=16,
                                  global_pool="avg", crop_pct=1.0),                             # 304M
    # EVA-02 (Fang et al. 2023): 2-D RoPE on q and k, SwiGLU MLP, average pooling + fc_norm
    "eva02_tiny_patch14_224": _eva02_name_fields("eva02_tiny_patch14_224"),                    # 5.7M
    "eva02_small_patch14_224": _eva02_name_fields("eva02_small_patch14_224"),                  # 22M
    "eva02_base_patch14_224": _eva02_name_fields("eva02_base_patch14_224"),                    # 86M
    # SigLIP image towers: no class token, attention pooling by a learned latent query, no classifier
    "vit_base_patch16_siglip_224": dict(embed_dim=768, depth=12, num_heads=12, class_token=False, global_pool="map",
                                        num_classes=0, **_GOOGLE),                             # 93M
    "vit_so400m_patch14_siglip_224": dict(patch_size=14, embed_dim=1152, depth=27, num_heads=16, mlp_ratio=3.7362,
                                          class_token=False, global_pool="map", num_classes=0, **_GOOGLE),  # 428M
    # BEiT / BEiT v2: relative position bias per block, q / v biases, layer scale, mean pooling + fc_norm
    "beit_base_patch16_224": _beit_name_fields("beit_base_patch16_224"),                      # 86M
    "beitv2_base_patch16_224": _beit_name_fields("beitv2_base_patch16_224"),                  # 86M
    # CLIP image towers (Radford et al. 2021): a LayerNorm before the blocks; the head is CLIP's projection
    "vit_base_patch16_clip_224": dict(embed_dim=768, depth=12, num_heads=12, norm_pre=True, layer_norm_eps=1e-5,
                                      mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, crop_pct=0.9),   # 86M
    "vit_base_patch32_clip_quickgelu_224": dict(patch_size=32, embed_dim=768, depth=12, num_heads=12, norm_pre=True,
                                                layer_norm_eps=1e-5, gelu="quick", mean=OPENAI_CLIP_MEAN,
                                                std=OPENAI_CLIP_STD, crop_pct=0.9),                 # 88M
    # no class token: the head reads the mean of the patch tokens after the final LayerNorm
    "vit_base_patch16_gap_224": dict(embed_dim=768, depth=12, num_heads=16, class_token=False, global_pool="avg",
                                     fc_norm=False, **_GOOGLE),                                      # 86M
    # the guide's model: ViT-B/16 geometry with a 10-class head
    "guide_vit_base_patch16_224_10cls": dict(embed_dim=768, depth=12, num_heads=12, num_classes=10),
}


def param_shapes(config: ViTConfig) -> dict:
    """{name: shape} of every parameter of a model with this config, named as in timm's state dict.

    This is the one list of parameters: the model initialises from it and ``weights`` checks every
    checkpoint against it (it lives here so that ``weights/`` can use it without importing the model).
    """
    D, M, p, C = config.embed_dim, config.mlp_dim, config.patch_size, config.in_chans
    shapes = {}
    if config.class_token:
        shapes["cls_token"] = (1, 1, D)
    if config.distilled:
        shapes["dist_token"] = (1, 1, D)
    if config.num_reg_tokens:
        shapes["reg_token"] = (1, config.num_reg_tokens, D)
    if config.abs_pos_embed:
        shapes["pos_embed"] = (1, config.num_pos_embed, D)
    shapes["patch_embed.proj.weight"] = (D, C, p, p)
    if not config.norm_pre:  # CLIP's patch projection has no bias (OpenAI's conv1; timm: bias=not pre_norm)
        shapes["patch_embed.proj.bias"] = (D,)
    if config.norm_pre:
        shapes["norm_pre.weight"] = shapes["norm_pre.bias"] = (D,)
    beit = config.block_names == "beit"
    table = (config.num_relative_distance, config.num_heads)  # BEiT's relative position bias, one column per head
    if config.rel_pos_bias == "shared":
        shapes["rel_pos_bias.relative_position_bias_table"] = table
    for i in range(config.depth):
        b = f"blocks.{i}."
        shapes[b + "norm1.weight"] = shapes[b + "norm1.bias"] = (D,)
        if config.qkv_layout == "separate":  # EVA-02 base / large: three projections, the key's without bias
            shapes[b + "attn.q_proj.weight"] = shapes[b + "attn.k_proj.weight"] = (D, D)
            shapes[b + "attn.q_proj.bias"] = (D,)
            shapes[b + "attn.v_proj.weight"] = (D, D)
            shapes[b + "attn.v_proj.bias"] = (D,)
        else:
            shapes[b + "attn.qkv.weight"] = (3 * D, D)
        if config.qkv_layout == "fused_qv_bias" or (config.qkv_bias and beit):  # EVA / BEiT: q and v biases only
            shapes[b + "attn.q_bias"] = shapes[b + "attn.v_bias"] = (D,)
        elif config.qkv_layout == "fused" and config.qkv_bias:
            shapes[b + "attn.qkv.bias"] = (3 * D,)
        if config.rel_pos_bias == "layer":
            shapes[b + "attn.relative_position_bias_table"] = table
        if beit and config.init_values is not None:
            shapes[b + "gamma_1"] = shapes[b + "gamma_2"] = (D,)
        shapes[b + "attn.proj.weight"] = (D, D)
        shapes[b + "attn.proj.bias"] = (D,)
        if config.init_values is not None and not beit:
            shapes[b + "ls1.gamma"] = (D,)
        shapes[b + "norm2.weight"] = shapes[b + "norm2.bias"] = (D,)
        if config.mlp == "gelu":
            shapes[b + "mlp.fc1.weight"] = (M, D)
            shapes[b + "mlp.fc1.bias"] = (M,)
        elif config.mlp_norm:  # timm's SwiGLU: gate and value projections apart, a LayerNorm on the hidden layer
            shapes[b + "mlp.fc1_g.weight"] = shapes[b + "mlp.fc1_x.weight"] = (M, D)
            shapes[b + "mlp.fc1_g.bias"] = shapes[b + "mlp.fc1_x.bias"] = (M,)
            shapes[b + "mlp.norm.weight"] = shapes[b + "mlp.norm.bias"] = (M,)
        else:  # timm's SwiGLUPacked: one fc1, gate rows first, then value rows
            shapes[b + "mlp.fc1.weight"] = (2 * M, D)
            shapes[b + "mlp.fc1.bias"] = (2 * M,)
        shapes[b + "mlp.fc2.weight"] = (D, M)
        shapes[b + "mlp.fc2.bias"] = (D,)
        if config.init_values is not None and not beit:
            shapes[b + "ls2.gamma"] = (D,)
    final = "fc_norm" if config.use_fc_norm else "norm"
    shapes[final + ".weight"] = shapes[final + ".bias"] = (D,)
    if config.global_pool == "map":  # timm's AttentionPoolLatent, after the final norm (layers.attention_pool)
        shapes["attn_pool.latent"] = (1, 1, D)                    # the learned query (one latent token)
        shapes["attn_pool.q.weight"], shapes["attn_pool.q.bias"] = (D, D), (D,)
        shapes["attn_pool.kv.weight"], shapes["attn_pool.kv.bias"] = (2 * D, D), (2 * D,)  # rows k | v
        shapes["attn_pool.proj.weight"], shapes["attn_pool.proj.bias"] = (D, D), (D,)
        shapes["attn_pool.norm.weight"] = shapes["attn_pool.norm.bias"] = (D,)
        shapes["attn_pool.mlp.fc1.weight"], shapes["attn_pool.mlp.fc1.bias"] = (M, D), (M,)
        shapes["attn_pool.mlp.fc2.weight"], shapes["attn_pool.mlp.fc2.bias"] = (D, M), (D,)
    width = D
    if config.representation_size:
        width = config.representation_size
        shapes["pre_logits.fc.weight"] = (width, D)
        shapes["pre_logits.fc.bias"] = (width,)
    if config.num_classes:
        shapes["head.weight"] = (config.num_classes, width)
        shapes["head.bias"] = (config.num_classes,)
        if config.distilled:
            shapes["head_dist.weight"] = (config.num_classes, width)
            shapes["head_dist.bias"] = (config.num_classes,)
    return shapes


def count_params(params: dict) -> int:
    """Number of scalars in a params dict."""
    return int(sum(np.prod(np.shape(v), dtype=np.int64) for v in params.values()))


def _listing(names, limit=8):
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_params(config: "ViTConfig", params: dict, where: str = "", sources: dict | None = None) -> None:
    """Raise CheckpointError unless ``params`` has exactly the names and shapes ``config`` needs.

    The message names every missing key, every unexpected key and every wrong
    shape (both shapes). ``where`` names the file; ``sources`` maps a timm name
    to the key it is read from in the source format, to say what was looked for.
    """
    if not isinstance(params, dict):
        raise CheckpointError(f"{where + ': ' if where else ''}params must be a dict {{timm name: array}}, "
                              f"got {type(params).__name__}")
    expected = param_shapes(config)
    missing = [k for k in expected if k not in params]
    unexpected = sorted(k for k in params if k not in expected)
    wrong = [f"{k} has shape {tuple(np.shape(params[k]))} but the config needs {expected[k]}"
             for k in expected if k in params and tuple(np.shape(params[k])) != expected[k]]
    not_float = [f"{k} has dtype {np.asarray(params[k]).dtype}" for k in expected
                 if k in params and np.asarray(params[k]).dtype.kind != "f"]
    # max / min propagate NaN and reach +-inf without allocating a mask: two passes, no copy
    not_finite = [f"{k} holds {np.count_nonzero(~np.isfinite(params[k]))} NaN or infinite values" for k in expected
                  if k in params and np.asarray(params[k]).dtype.kind == "f" and np.size(params[k])
                  and not (np.isfinite(np.max(params[k])) and np.isfinite(np.min(params[k])))]
    if not (missing or unexpected or wrong or not_float or not_finite):
        return
    sources = sources or {}
    problems = []
    if missing:
        named = [k + (f" (from {sources[k]})" if k in sources else "") for k in missing]
        problems.append("missing keys: " + _listing(named))
    if unexpected:
        problems.append("unexpected keys: " + _listing(unexpected))
    if wrong:
        problems.append("wrong shapes: " + _listing(wrong, limit=5))
    if not_float:
        problems.append("not floating point: " + _listing(not_float, limit=5))
    if not_finite:
        problems.append("not finite (a diverged training run or a corrupt file): " + _listing(not_finite, limit=5))
    summary = (f"{config.name or 'ViT'} (depth {config.depth}, width {config.embed_dim}, {config.num_heads} heads, "
               f"patch {config.patch_size}, img_size {config.img_size}, {config.num_classes} classes)")
    raise CheckpointError(f"{where + ': ' if where else ''}parameters do not fit the config {summary}; "
                          + "; ".join(problems))
