"""ViT: parameters, initialisation, the forward pass that writes a Trace, and the backward pass that reads it
back into the gradients of every traced array and every parameter (Grads).

Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words" (arXiv 2010.11929), eqs. 1-4:
    z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos
    z'_l = MSA(LN(z_{l-1})) + z_{l-1}
    z_l  = MLP(LN(z'_l)) + z'_l
    y    = LN(z_L^0)
Shapes: B batch, N tokens, P patches, D width, C classes; gh x gw the patch grid of this input.
"""

import numpy as np

from .config import ViTConfig, check_params, param_shapes
from . import image as image_module
from .errors import ArgumentError, ConfigError, ImageError
from . import fast, layers
from . import grads as grads_module
from .grads import Grads
from .resample import (resample_pos_embed, resample_pos_embed_backward, resample_rel_pos_table,
                       resample_rel_pos_table_backward)
from .trace import AttentionMaps, Trace

__all__ = ["ViT", "ViTWithAttention", "init_params", "param_shapes"]


def init_params(config: ViTConfig, seed=0, dtype=np.float32):
    """Random weights as timm initialises a fresh ViT: truncated normal (std 0.02) for weights and tokens (std
    D^-1/2 for the attention pool's latent query, as timm's AttentionPoolLatent), zeros for biases, ones for
    LayerNorm gains, ``init_values`` for layer scale; BEiT's q / v biases and relative position bias tables
    start at zero too (timm's Beit), as do EVA's q / v biases. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith((".gamma", ".gamma_1", ".gamma_2")):
            value = np.full(shape, config.init_values)
        elif name.endswith((".bias", "_bias", "relative_position_bias_table")):  # "_bias": q_bias, v_bias
            value = np.zeros(shape)
        elif name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "norm_pre.weight")):  # LayerNorm gains
            value = np.ones(shape)
        else:
            std = shape[-1] ** -0.5 if name == "attn_pool.latent" else 0.02
            value = np.clip(rng.standard_normal(shape), -2.0, 2.0) * std  # clipped at 2 std, like trunc_normal_
        params[name] = value.astype(dtype)
    return params


def _nest(flat):
    """{"blocks.0.attn.qkv.weight": a} -> {"blocks": {"0": {"attn": {"qkv": {"weight": a}}}}}: keys become the
    argument names of the layer functions, so ``block(x, **params["blocks"]["0"])`` wires the weights in."""
    tree = {}
    for name, value in flat.items():
        node = tree
        *path, leaf = name.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _flatten(tree, prefix=""):
    """The inverse of ``_nest``: {"blocks": {"0": {"attn": ...}}} -> {"blocks.0.attn...": a}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, prefix + key + "."))
        else:
            flat[prefix + key] = value
    return flat


def _stored(name, value, dtype):
    """A parameter as the model keeps it: timm's shape and values, in C order, except the [out, in] weights of
    the blocks' linear layers (qkv, proj, fc1, fc2), kept column-major. Why: ``linear`` computes
    ``x @ weight.T``; with a column-major weight, ``weight.T`` is a plain row-major [in, out] matrix, which
    OpenBLAS packs faster than a transposed one (bench/README.md). The products agree with those of the
    row-major weight within their rounding bound (tests/test_fast.py)."""
    if name.startswith("blocks.") and name.endswith(".weight") and np.ndim(value) == 2:
        return np.asfortranarray(value, dtype=dtype)
    return np.ascontiguousarray(value, dtype=dtype)


class ViT:
    """A Vision Transformer in NumPy. ``run`` takes an image (or a batch) and returns a Trace of every
    intermediate; ``attention_maps`` holds the last run's attention patterns, one array per layer, in a list as in
    the guide's class, which also remembers its Trace: a figure given that list knows the patch size, the grid
    and the image."""

    def __init__(self, config: ViTConfig = None, params=None, seed=0, dtype=np.float32, **config_fields):
        if config is None:
            config = ViTConfig(**config_fields)
        elif config_fields:
            raise ConfigError("pass either a ViTConfig or its fields as keyword arguments, not both")
        if not isinstance(config, ViTConfig):
            raise ConfigError(f"config must be a numpy_vit.ViTConfig, got {type(config).__name__}")
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise ConfigError(f"dtype must be float32 or float64, got {dtype!r}") from None
        if self.dtype not in (np.float32, np.float64):
            raise ConfigError(f"dtype must be float32 or float64, got {self.dtype}")
        self.config = config
        if params is None:
            params = init_params(config, seed)
        else:
            check_params(config, params)
        self.params = {k: _stored(k, v, self.dtype) for k, v in params.items()}
        self.param_tree = _nest(self.params)  # param_tree["blocks"]["0"]["attn"]["qkv"]["weight"]
        self.attention_maps = AttentionMaps()
        self.last_trace = None
        # numpy_vit.fast's speed-ups: None uses them on several threads (numpy_vit.get_num_threads()) and the
        # reference math of numpy_vit.layers on one; True or False: always or never
        self.speedups = None

    # --- construction -----------------------------------------------------------------
    @classmethod
    def from_preset(cls, name, seed=0, **overrides):
        """A randomly initialised model of a named architecture, e.g. ``ViT.from_preset("vit_small_patch16_224")``."""
        return cls(ViTConfig.preset(name, **overrides), seed=seed)

    @classmethod
    def from_pretrained(cls, path_or_name=None, arch=None, dtype=np.float32):
        """Load weights: our .npz, a timm .safetensors/.pth, an HF directory, a JAX .npz, a DINO .pth, or a hub
        name such as "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k". None loads the shipped default model."""
        from numpy_vit import weights  # imported here so that the model never depends on the checkpoint readers

        config, params = weights.load_any(path_or_name, arch=arch)
        return cls(config, params, dtype=dtype)

    def save(self, path):
        """Write our .npz (arrays + config as JSON); ``ViT.from_pretrained(path)`` reads it back exactly."""
        from numpy_vit import weights

        weights.save(path, self.config, self.params)

    def astype(self, dtype):
        """The same model computing in another dtype (float64 for reference-grade numbers)."""
        return ViT(self.config, self.params, dtype=dtype)

    @property
    def num_params(self):
        return int(sum(v.size for v in self.params.values()))

    def __repr__(self):
        c = self.config
        return (f"ViT({c.name or 'custom'}: depth={c.depth}, embed_dim={c.embed_dim}, heads={c.num_heads}, "
                f"patch={c.patch_size}, img={c.img_size}, classes={c.num_classes}, {self.num_params / 1e6:.1f}M params, "
                f"{self.dtype.name})")

    # --- position embedding -------------------------------------------------------------
    def pos_embed_for(self, grid):  # -> [N_pos, D], or None for a model without one (BEiT)
        """The position embedding for a patch grid (gh, gw), resampled from the training grid if they differ."""
        c = self.config
        if not c.abs_pos_embed:
            return None
        num_prefix = 0 if c.no_embed_class else c.num_prefix_tokens
        return resample_pos_embed(self.params["pos_embed"][0], c.grid_size, grid, num_prefix, c.pos_embed_resample)

    # --- BEiT: relative position bias, and the block weights in the reference's names ------
    def rel_pos_bias_for(self, table, grid):  # [T, H] -> [H, N, N]
        """BEiT's relative position bias for a patch grid: the table resampled from the training grid if they
        differ (``config.rel_pos_resample``), then gathered at each (query, key) pair's offset."""
        c = self.config
        table = resample_rel_pos_table(table, c.grid_size, grid, c.rel_pos_resample)  # [T_grid, H]
        return layers.relative_position_bias(table, layers.relative_position_index(grid))  # [H, N, N]

    def block_weights(self, grid):
        """Each block's weights in the argument names of ``layers.block``, for a patch grid. timm's Beit names the
        same math apart: its q_bias and v_bias become qkv's bias with zeros for the key (which has none: a key
        bias adds q . b_k to every score of a query, the same for each key, which the softmax cancels), its
        gamma_1 / gamma_2 the layer scales ls1 / ls2, and its relative position bias table (one per block, or
        one shared) the [H, N, N] ``attn_bias`` added to the scores."""
        c = self.config
        blocks = [self._fused_qkv_block(i) for i in range(c.depth)]
        if c.block_names == "vit" and not c.rel_pos_bias:
            return blocks
        shared = (self.rel_pos_bias_for(self.params["rel_pos_bias.relative_position_bias_table"], grid)
                  if c.rel_pos_bias == "shared" else None)  # [H, N, N]
        translated = []
        for weights in blocks:
            attn = weights["attn"]
            qkv = dict(attn["qkv"])
            if "q_bias" in attn:
                qkv["bias"] = np.concatenate([attn["q_bias"], np.zeros_like(attn["q_bias"]), attn["v_bias"]])  # [3D]
            block = dict(norm1=weights["norm1"], attn=dict(qkv=qkv, proj=attn["proj"]), norm2=weights["norm2"],
                         mlp=weights["mlp"])
            for ours, theirs in (("ls1", "gamma_1"), ("ls2", "gamma_2")):
                if theirs in weights:
                    block[ours] = {"gamma": weights[theirs]}
                elif ours in weights:
                    block[ours] = weights[ours]
            if c.rel_pos_bias == "layer":
                block["attn_bias"] = self.rel_pos_bias_for(attn["relative_position_bias_table"], grid)  # [H, N, N]
            elif shared is not None:
                block["attn_bias"] = shared
            translated.append(block)
        return translated

    def _block_params_grads(self, block_grads, grid, grads, params):
        """The gradients of ``block_weights``' arrays under the names of ``model.params`` (nested): its translation
        in reverse. A bias's gradient [H, N, N] is kept as ``blocks.{i}.attn.bias`` and scattered back into its
        table's rows (``layers.relative_position_bias_backward``), then back through the resampling; a shared
        table's gradient sums every block's (into ``params["rel_pos_bias"]``)."""
        c = self.config
        if c.block_names == "vit" and not c.rel_pos_bias:
            return {str(i): g for i, g in enumerate(block_grads)}
        D, index = c.embed_dim, layers.relative_position_index(grid)
        num_rows = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3  # the table's rows at this grid

        def table_grad(d_bias):  # [H, N, N] -> [T, H] of the stored table
            d_table = layers.relative_position_bias_backward(d_bias, index, num_rows)  # [T_grid, H]
            return resample_rel_pos_table_backward(d_table, c.grid_size, grid, c.rel_pos_resample)  # [T, H]

        out, d_shared = {}, None
        for i, g in enumerate(block_grads):
            attn = {"qkv": {"weight": g["attn"]["qkv"]["weight"]}, "proj": g["attn"]["proj"]}
            if "bias" in g["attn"]["qkv"] and c.block_names == "beit":
                d_qkv_bias = g["attn"]["qkv"]["bias"]  # [3D] q | k | v: the key's part belongs to no parameter
                attn["q_bias"], attn["v_bias"] = d_qkv_bias[:D], d_qkv_bias[2 * D:]
            elif "bias" in g["attn"]["qkv"]:
                attn["qkv"]["bias"] = g["attn"]["qkv"]["bias"]
            block = dict(norm1=g["norm1"], attn=attn, norm2=g["norm2"], mlp=g["mlp"])
            for ours, theirs in (("ls1", "gamma_1"), ("ls2", "gamma_2")):
                if ours in g and c.block_names == "beit":
                    block[theirs] = g[ours]["gamma"]  # [D]
                elif ours in g:
                    block[ours] = g[ours]
            if "attn_bias" in g:
                grads.add(f"blocks.{i}.attn.bias", g["attn_bias"])  # [H, N, N]
                if c.rel_pos_bias == "layer":
                    attn["relative_position_bias_table"] = table_grad(g["attn_bias"])  # [T, H]
                else:
                    d_shared = g["attn_bias"] if d_shared is None else d_shared + g["attn_bias"]
            out[str(i)] = block
        if d_shared is not None:
            params["rel_pos_bias"] = {"relative_position_bias_table": table_grad(d_shared)}  # [T, H]
        return out


    # --- forward --------------------------------------------------------------------------
    def forward(self, images, record=None, image_for_overlay=None):  # [B, C, H, W] -> Trace
        """Run normalised images through the model (eqs. 1-4 above), recording the intermediates into a Trace.
        ``record``: None keeps every intermediate, or a glob (or list of globs) of trace names to keep, e.g.
        ``["blocks.*.attn.pattern", "logits"]``.

        The layer functions are the reference math of numpy_vit/layers.py, or numpy_vit/fast.py's faster
        versions of them, which split their work between threads: see ``speedups``."""
        c, weights = self.config, self.param_tree
        x = self._check_input(images)  # [B, C, H, W]
        B, _, H, W = x.shape
        grid = (H // c.patch_size, W // c.patch_size)  # (gh, gw)
        trace = Trace(c, grid, record=record, image=image_for_overlay)
        trace.add("input", x)
        ops = fast if fast.wanted(self.speedups) else layers  # as nanoGPT's `if self.flash: ... else: manual`

        # eq. 1: z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos
        patches = trace.add("patches", ops.patchify(x, c.patch_size))  # [B, P, C*p*p]
        proj = weights["patch_embed"]["proj"]
        tokens = ops.linear(patches, proj["weight"].reshape(c.embed_dim, -1), proj.get("bias"))  # [B, P, D]
        trace.add("patch_embed", tokens)
        prefix = np.broadcast_to(self.prefix_tokens(), (B, c.num_prefix_tokens, c.embed_dim))  # [B, prefix, D]
        if not c.abs_pos_embed:  # BEiT: positions enter as the attention's relative position bias instead
            x = np.concatenate([prefix, tokens], axis=1)  # [B, N, D]
        elif c.no_embed_class:  # DINOv2 / DeiT-3: only the patches carry a position
            pos = trace.add("pos_embed", self.pos_embed_for(grid))  # [N_pos, D]
            x = np.concatenate([prefix, tokens + pos], axis=1)  # [B, N, D]
        else:  # original ViT: the class token has a position entry too; concatenate, then add
            pos = trace.add("pos_embed", self.pos_embed_for(grid))  # [N_pos, D]
            x = np.concatenate([prefix, tokens], axis=1) + pos  # [B, N, D]
        if c.norm_pre:  # CLIP (Radford et al. 2021): a LayerNorm on the embedded tokens before the first block
            x = trace.add("norm_pre", ops.layer_norm(x, **weights["norm_pre"], eps=c.layer_norm_eps))  # [B, N, D]

        # eqs. 2-3, block after block: z'_l = MSA(LN(z_{l-1})) + z_{l-1};  z_l = MLP(LN(z'_l)) + z'_l
        blocks = self.block_weights(grid)  # (BEiT: with each block's relative position bias for this grid)
        x = ops.encoder(x, blocks, **self._block_options(grid), record=trace.recorder("blocks"))  # [B, N, D]

        # eq. 4: y = LN(z_L^0), then the classifier head
        if not c.use_fc_norm:
            x = trace.add("norm", ops.layer_norm(x, **weights["norm"], eps=c.layer_norm_eps))  # [B, N, D]
        if c.global_pool == "map":  # SigLIP: a learned query attends over the patch tokens. The reference math at
            # every setting: with one query row the pool is a few small products next to the encoder's
            pooled = layers.attention_pool(x[:, c.num_prefix_tokens:], **weights["attn_pool"], num_heads=c.num_heads,
                                           eps=c.layer_norm_eps, gelu_approximate=c.gelu,
                                           record=trace.recorder("attn_pool"))  # [B, P, D] -> [B, D]
        else:
            pooled = layers.pool(x, c.global_pool, c.num_prefix_tokens) if c.global_pool else None  # [B, D]
        if pooled is not None and c.use_fc_norm:
            pooled = ops.layer_norm(pooled, **weights["fc_norm"], eps=c.layer_norm_eps)  # [B, D]
        if pooled is not None:
            trace.add("pooled", pooled)
            if c.representation_size:
                pooled = trace.add("pre_logits", np.tanh(ops.linear(pooled, **weights["pre_logits"]["fc"])))  # [B, R]
            if c.num_classes:
                logits = ops.linear(pooled, **weights["head"])  # [B, C]
                if c.distilled:  # DeiT at inference: average the class-token head and the distillation-token head
                    logits = (logits + ops.linear(x[:, 1], **weights["head_dist"])) / 2
                trace.add("logits", logits)

        patterns = [trace[k] for k in (f"blocks.{i}.attn.pattern" for i in range(c.depth)) if k in trace]
        self.attention_maps = AttentionMaps(patterns, trace)  # a list that remembers its trace (the figures read it)
        self.last_trace = trace
        return trace

    # --- backward ------------------------------------------------------------------------
    def backward(self, trace, target, keep=None):  # Trace -> Grads
        """The gradients of ``target`` with respect to every array of ``trace`` and every parameter: the
        forward pass (eqs. 1-4) in reverse, the chain rule written out by the ``*_backward`` functions of
        numpy_vit/layers.py, in the trace's dtype.

        ``trace``: of ``model.run`` or ``model.forward`` on this model, by the reference math or the speed-ups,
        recorded with ``record=None`` or with at least ``numpy_vit.BACKWARD_RECORD``. ``target``: an int class
        (for every image), a list of ints (one per image), "top" (each image's largest logit), or a float
        array [B, C] of output cotangents (d target / d logits, so any linear function of the logits); for a
        model without a classifier, of the shape of what it ends with (``grads.output``: pooled [B, D], or
        pre_logits [B, R]). Returns a Grads: ``grads[name]`` for each name of the trace, ``grads.params`` by
        the names of ``model.params``, summed over the batch. ``keep``: None, or a glob (or list of globs) of
        the names whose gradient to keep, e.g. ``["input"]``, or ``[]`` for the parameters' alone: the
        others are freed as the pass moves on (a trace's worth of memory)."""
        c, weights = self.config, self.param_tree
        grads_module.check_trace(trace, c, self.dtype, target, pos_embed_for=self.pos_embed_for)
        cotangent, classes = grads_module.cotangent_for(trace, target, c, self.dtype)
        grads = Grads(trace, cotangent, classes, grads_module.output_name(c), keep=grads_module.check_keep(keep))
        params = {}  # the parameters' gradients, nested like param_tree

        # eq. 4 in reverse: from the output's cotangent to the encoder output's gradient
        d = self._head_backward(trace, grads, params)  # [B, N, D]

        # eqs. 2-3 in reverse, the last block first
        blocks = self.block_weights(trace.grid)
        saved_names = layers.block_saved(rope=c.rope, swiglu=c.mlp == "swiglu")
        saved = [{name: trace[f"blocks.{i}.{name}"] for name in saved_names} for i in range(c.depth)]
        ops = fast if fast.wanted(self.speedups) else layers  # as in forward: a batch in shards on several threads
        d, block_grads = ops.encoder_backward(d, saved, blocks, **self._block_options(trace.grid),
                                              record=grads.recorder("blocks"))  # [B, N, D]
        if c.qkv_layout != "fused":  # back to EVA's stored pieces (q_bias, v_bias or q_proj, k_proj, v_proj)
            for block in block_grads:
                block["attn"] = layers.eva_qkv_backward(block["attn"], separate=c.qkv_layout == "separate")
        params["blocks"] = self._block_params_grads(block_grads, trace.grid, grads, params)

        if c.norm_pre:  # CLIP's LayerNorm before the blocks, its input (the embedded tokens) recomputed
            grads.add("norm_pre", d)
            d, params["norm_pre"] = layers.layer_norm_backward(d, self._embedded_tokens(trace), **weights["norm_pre"],
                                                               eps=c.layer_norm_eps)  # [B, N, D]

        # eq. 1 in reverse: to the tokens, the position embedding, the patch projection and the pixels
        self._embedding_backward(d, trace, grads, params)

        flat = _flatten(params)
        # a parameter the output does not reach (the head of a model with global_pool="") has gradient zero
        grads.params = {name: flat[name] if name in flat else np.zeros_like(value)
                        for name, value in self.params.items()}
        return grads

    def _head_backward(self, trace, grads, params):  # -> [B, N, D] the encoder output's gradient
        """Eq. 4 and the head in reverse: the head(s), pre_logits, the pooling (and fc_norm after it), the final
        LayerNorm; records their gradients into ``grads`` and their weights' into ``params``."""
        c, weights = self.config, self.param_tree
        last = trace[f"blocks.{c.depth - 1}.resid_post"]  # [B, N, D] the encoder's output
        d = grads.add(grads.output, grads.cotangent)  # [B, C] (a model without classifier: its output's shape)
        d_dist = None  # the distillation head's gradient of the token it reads
        if c.global_pool and c.num_classes:
            if c.distilled:  # logits = (head(h) + head_dist(final[:, 1])) / 2: each head gets half of d
                d = d / d.dtype.type(2)
                final = last if c.use_fc_norm else trace["norm"]  # [B, N, D] the tokens the heads read
                d_dist, params["head_dist"] = layers.linear_backward(d, final[:, 1], **weights["head_dist"])  # [B, D]
            head_input = trace["pre_logits"] if c.representation_size else trace["pooled"]  # [B, R] or [B, D]
            d, params["head"] = layers.linear_backward(d, head_input, **weights["head"])  # [B, C] -> [B, R or D]
        if c.global_pool and c.representation_size:  # pre_logits = tanh(linear(pooled))
            grads.add("pre_logits", d)
            d = layers.tanh_backward(d, trace["pre_logits"])  # [B, R]
            d, fc = layers.linear_backward(d, trace["pooled"], **weights["pre_logits"]["fc"])  # [B, R] -> [B, D]
            params["pre_logits"] = {"fc": fc}
        if c.global_pool:
            grads.add("pooled", d)
            if c.global_pool == "map":  # pooled = attention_pool(norm[:, prefix:]): the pool in reverse
                d = self._attention_pool_backward(d, trace, grads, params)  # [B, D] -> [B, N, D]
            elif c.use_fc_norm:  # pooled = LN(pool(last)): LayerNorm's input is recomputed, one cheap mean
                pooled_tokens = layers.pool(last, c.global_pool, c.num_prefix_tokens)  # [B, D]
                d, params["fc_norm"] = layers.layer_norm_backward(d, pooled_tokens, **weights["fc_norm"],
                                                                  eps=c.layer_norm_eps)  # [B, D]
            if c.global_pool != "map":
                d = layers.pool_backward(d, last.shape[1], c.global_pool, c.num_prefix_tokens)  # [B, D] -> [B, N, D]
            if d_dist is not None:
                d[:, 1] += d_dist
        if not c.use_fc_norm:  # norm = LN(last)
            grads.add("norm", d)
            d, params["norm"] = layers.layer_norm_backward(d, last, **weights["norm"], eps=c.layer_norm_eps)
        return d

    def _attention_pool_backward(self, d_pooled, trace, grads, params):  # [B, D] -> [B, N, D]
        """pooled = attention_pool(norm[:, prefix:]) in reverse (layers.attention_pool_backward): the gradient of the
        final norm's output, the prefix tokens' rows zero (the pool reads the patch tokens only)."""
        c = self.config
        final = trace["norm"]  # [B, N, D]
        saved = {name: trace[f"attn_pool.{name}"] for name in layers.ATTENTION_POOL_SAVED}
        d_tokens, params["attn_pool"] = layers.attention_pool_backward(
            d_pooled, final[:, c.num_prefix_tokens:], saved, **self.param_tree["attn_pool"], num_heads=c.num_heads,
            eps=c.layer_norm_eps, gelu_approximate=c.gelu, record=grads.recorder("attn_pool"))  # [B, P, D]
        d = np.zeros_like(final)  # [B, N, D]
        d[:, c.num_prefix_tokens:] = d_tokens
        return d

    def _embedded_tokens(self, trace):  # -> [B, N, D]
        """Eq. 1 again from the trace's patch_embed and pos_embed: z_0, the input of CLIP's ``norm_pre``."""
        c, tokens = self.config, trace["patch_embed"]  # [B, P, D]
        prefix = np.broadcast_to(self.prefix_tokens(), (tokens.shape[0], c.num_prefix_tokens, c.embed_dim))
        if c.no_embed_class:
            return np.concatenate([prefix, tokens + trace["pos_embed"]], axis=1)  # [B, N, D]
        return np.concatenate([prefix, tokens], axis=1) + trace["pos_embed"]  # [B, N, D]

    def _embedding_backward(self, d, trace, grads, params):  # d [B, N, D], the first block's input gradient
        """Eq. 1 in reverse, z_0 = [prefix; x_p E] + E_pos: the prefix tokens, the position embedding (back
        through its resampling to the stored table), the patch projection and the pixels."""
        c, proj = self.config, self.param_tree["patch_embed"]["proj"]
        B, _, D = d.shape
        d_prefix, d_tokens, d_pos = layers.embed_backward(d, c.num_prefix_tokens, c.no_embed_class)
        grads.add("patch_embed", d_tokens)  # [B, P, D]
        if c.abs_pos_embed:
            grads.add("pos_embed", d_pos)  # [N_pos, D] the embedding used, perhaps resampled to this grid
            params["pos_embed"] = resample_pos_embed_backward(d_pos, c.grid_size, trace.grid,
                                                              0 if c.no_embed_class else c.num_prefix_tokens,
                                                              c.pos_embed_resample)[None]  # [1, N_pos of the table, D]
        d_patches, proj_grads = layers.linear_backward(d_tokens, trace["patches"], proj["weight"].reshape(D, -1),
                                                       proj.get("bias"))  # [B, P, D] -> [B, P, C*p*p]
        proj_grads["weight"] = proj_grads["weight"].reshape(proj["weight"].shape)  # [D, C*p*p] -> [D, C, p, p]
        params["patch_embed"] = {"proj": proj_grads}
        grads.add("patches", d_patches)
        p = c.patch_size
        image_shape = (B, c.in_chans, trace.grid[0] * p, trace.grid[1] * p)
        grads.add("input", layers.patchify_backward(d_patches, image_shape, p))  # [B, C, H, W]
        start = 0
        for name, count in (("cls_token", int(c.class_token)), ("dist_token", int(c.distilled)),
                            ("reg_token", c.num_reg_tokens)):
            if count:
                params[name] = d_prefix[None, start:start + count]  # [1, count, D]
                start += count

    # --- the blocks' weights and options ------------------------------------------------------
    def _fused_qkv_block(self, i):
        """Block i's weights as ``layers.block`` takes them: the stored tree, EVA's q, k, v pieces stacked into
        one qkv projection (``layers.eva_qkv``)."""
        weights = self.param_tree["blocks"][str(i)]
        if self.config.qkv_layout == "fused":
            return weights
        return {**weights, "attn": layers.eva_qkv(**weights["attn"])}

    def _block_options(self, grid):
        """The keyword arguments of ``layers.block`` for this config, at a patch grid (gh, gw): EVA-02's RoPE
        tables are those of this grid, its positions scaled to ``rope_ref_grid`` (timm's dynamic_img_size)."""
        c = self.config
        options = dict(num_heads=c.num_heads, eps=c.layer_norm_eps, gelu_approximate=c.gelu)
        if c.rope:
            sin, cos = layers.rope_tables(grid, c.head_dim, c.rope_ref_grid, self.dtype)  # [P, Dh] each
            options["rope"] = {"sin": sin, "cos": cos}
        if c.mlp == "swiglu":
            options["swiglu"] = True
        return options

    def prefix_tokens(self):  # -> [prefix, D]
        """The class token, DeiT's distillation token and the register tokens, in that order, as learned."""
        tokens = [self.params[name][0] for name in ("cls_token", "dist_token", "reg_token") if name in self.params]
        return np.concatenate(tokens, axis=0) if tokens else np.zeros((0, self.config.embed_dim), self.dtype)

    def run(self, image, record=None, img_size=None):
        """Image(s) in, Trace out. ``image``: a path, a PIL image, an HxWx3 uint8 array, a list of those, or a
        [B, 3, H, W] float array already normalised. ``img_size`` (int or (h, w)) overrides the input size for
        images (the position embedding is resampled)."""
        batch, overlay, source_size = image_module.prepare(image, self.config, img_size=img_size)
        trace = self.forward(batch.astype(self.dtype, copy=False), record=record, image_for_overlay=overlay)
        trace.source_size = source_size  # what figure 1 says the image was resized or cropped from
        return trace

    __call__ = run

    def _check_input(self, images):
        c = self.config
        x = np.asarray(images)
        if x.ndim != 4 or x.shape[1] != c.in_chans:
            hint = ""
            if x.ndim == 4 and x.shape[-1] == c.in_chans:
                hint = " It looks channels-last: use x.transpose(0, 3, 1, 2)."
            elif x.ndim == 3:
                hint = " For a single image pass it with a batch axis (x[None]) or as an HxWx3 uint8 array to run()."
            raise ImageError(f"forward() expects a [B, {c.in_chans}, H, W] float array, got shape {x.shape}.{hint}")
        if not np.issubdtype(x.dtype, np.floating):
            raise ImageError(f"forward() expects normalised float pixels, got dtype {x.dtype}; "
                             f"use model.run() for uint8 images, which normalises them")
        if x.shape[0] == 0:
            raise ImageError(f"the batch is empty (shape {x.shape}); pass at least one image")
        H, W = x.shape[2:]
        p = c.patch_size
        if H < p or W < p or H % p or W % p:
            raise ImageError(f"input size {H}x{W} is not a multiple of the patch size {p}; "
                             f"crop or resize to e.g. {max(1, H // p) * p}x{max(1, W // p) * p}")
        if not np.isfinite(x).all():
            raise ImageError(f"the input holds {np.count_nonzero(~np.isfinite(x))} NaN or infinite values")
        return x.astype(self.dtype, copy=False)

    def layer_attention(self, layer):
        """The attention pattern of one layer from the last run, with a clear error for a bad index."""
        if not self.attention_maps:
            raise ArgumentError("no attention recorded yet: call model.run(image) first")
        if self.last_trace is not None:
            layer = self.last_trace.layer(layer)
        return self.attention_maps[layer]


class ViTWithAttention(ViT):
    """The guide's class name: ``ViTWithAttention(img_size=224, patch_size=16, num_classes=10, embed_dim=768,
    depth=12, num_heads=12)`` builds a randomly initialised model; ``model.attention_maps`` after a run."""

    def __init__(self, img_size=224, patch_size=16, num_classes=10, embed_dim=768, depth=12, num_heads=12,
                 seed=0, **fields):
        super().__init__(ViTConfig(img_size=img_size, patch_size=patch_size, num_classes=num_classes,
                                   embed_dim=embed_dim, depth=depth, num_heads=num_heads, **fields), seed=seed)
