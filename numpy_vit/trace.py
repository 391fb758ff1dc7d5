"""Trace: every intermediate of one forward pass as a named array, plus what is needed to read it.

Names follow TransformerLens's hook names (``blocks.3.attn.pattern``); the shapes are listed once
in ``TRACE_KEYS`` below. Recording is selected by glob patterns so that statistics over many images
keep only what they need: ``model.run(x, record=["blocks.*.attn.pattern"])``.
"""
import threading
from collections.abc import Mapping
from fnmatch import fnmatchcase
from functools import lru_cache

import numpy as np

from .errors import ArgumentError


@lru_cache(maxsize=4096)
def _matches(name, patterns):
    """Whether a trace name matches any glob; cached, since every run asks the same questions again."""
    return any(fnmatchcase(name, pattern) for pattern in patterns)


UNBATCHED = {"pos_embed"}  # arrays without a batch axis (the same for every image), with ``is_unbatched``


def is_unbatched(name):
    """Whether a trace name holds an array without a batch axis: the position embedding, or a block's relative
    position bias (``blocks.{i}.attn.bias``, BEiT)."""
    return name in UNBATCHED or name.endswith(".attn.bias")


class TraceKeyError(KeyError, ArgumentError):
    """A name the trace does not hold: a KeyError (as a Mapping must raise) that is also one of our named errors."""

    def __str__(self):  # KeyError would print the message in quotes
        return str(self.args[0])

# name pattern -> shape (B batch, N tokens, P patches, D width, H heads, Dh head width, M MLP width)
TRACE_KEYS = {
    "input": "[B, 3, H_img, W_img] normalised pixels",
    "patches": "[B, P, 3*p*p] raw patch vectors, before the projection",
    "patch_embed": "[B, P, D]",
    "pos_embed": "[N_pos, D] the (possibly resampled) position embedding actually used",
    "norm_pre": "[B, N, D] CLIP's LayerNorm on the embedded tokens, before the first block (norm_pre models only)",
    "blocks.{i}.resid_pre": "[B, N, D]",
    "blocks.{i}.ln1": "[B, N, D]",
    "blocks.{i}.attn.q": "[B, H, N, Dh]",
    "blocks.{i}.attn.k": "[B, H, N, Dh]",
    "blocks.{i}.attn.v": "[B, H, N, Dh]",
    "blocks.{i}.attn.q_rot": "[B, H, N, Dh] q after the rotary position embedding (EVA-02; prefix rows unturned)",
    "blocks.{i}.attn.k_rot": "[B, H, N, Dh] k after the rotary position embedding (EVA-02)",
    "blocks.{i}.attn.bias": "[H, N, N] relative position bias added to every image's scores (BEiT only)",
    "blocks.{i}.attn.scores": "[B, H, N, N] scaled q.k (plus the relative position bias, BEiT), before the softmax",
    "blocks.{i}.attn.pattern": "[B, H, N, N] softmax probabilities, rows sum to 1",
    "blocks.{i}.attn.z": "[B, H, N, Dh] pattern @ v",
    "blocks.{i}.attn_out": "[B, N, D] after the output projection (and layer scale)",
    "blocks.{i}.resid_mid": "[B, N, D]",
    "blocks.{i}.ln2": "[B, N, D]",
    "blocks.{i}.mlp.pre": "[B, N, M] before the GELU",
    "blocks.{i}.mlp.post": "[B, N, M] after the GELU (SwiGLU: SiLU(gate) * value)",
    "blocks.{i}.mlp.gate": "[B, N, M] SwiGLU's gate x W_g, before the SiLU (EVA-02)",
    "blocks.{i}.mlp.value": "[B, N, M] SwiGLU's value x W_x (EVA-02)",
    "blocks.{i}.mlp.norm": "[B, N, M] SwiGLU's product after the sub-LayerNorm (EVA-02 base / large)",
    "blocks.{i}.mlp_out": "[B, N, D] (after layer scale)",
    "blocks.{i}.resid_post": "[B, N, D]",
    "norm": "[B, N, D] after the final LayerNorm (absent for fc_norm models, which normalise after pooling)",
    "attn_pool.q": "[B, H, L, Dh] the latent query (SigLIP's attention pooling; L latent tokens, 1 in timm)",
    "attn_pool.k": "[B, H, P, Dh] keys of the patch tokens",
    "attn_pool.v": "[B, H, P, Dh]",
    "attn_pool.scores": "[B, H, L, P] scaled q.k, before the softmax",
    "attn_pool.pattern": "[B, H, L, P] how much each patch token gives the summary, rows sum to 1",
    "attn_pool.z": "[B, H, L, Dh] pattern @ v",
    "attn_pool.attn_out": "[B, L, D] after the output projection",
    "attn_pool.ln": "[B, L, D] LayerNorm before the pool's MLP",
    "attn_pool.mlp.pre": "[B, L, M] before the GELU",
    "attn_pool.mlp.post": "[B, L, M] after the GELU",
    "attn_pool.out": "[B, L, D] attn_out + MLP; pooled is its first latent",
    "pooled": "[B, D] the image summary fed to the head (CLS token, patch mean, or the attention pool's output)",
    "pre_logits": "[B, R] JAX representation layer output (only for checkpoints with one)",
    "logits": "[B, num_classes] (DeiT: mean of the class and distillation heads)",
}


class TraceShard:
    """What a forward pass over some of a batch's images records into the whole batch's Trace: its rows of
    every array, copied into place. The first shard to record a name allocates the batch's array. Arrays
    without a batch axis (the position embedding) are the same for every shard and kept once."""

    def __init__(self, trace, rows, batch_size):
        self.trace, self.rows, self.batch_size = trace, rows, batch_size

    def wants(self, name):
        return self.trace.wants(name)

    def add(self, name, array):
        if not self.trace.wants(name):
            return array
        arrays = self.trace._arrays
        with self.trace._lock:
            if is_unbatched(name):
                arrays.setdefault(name, array)
                return array
            if name not in arrays:
                arrays[name] = np.empty((self.batch_size, *array.shape[1:]), array.dtype)
            whole = arrays[name]
        whole[self.rows] = array
        return array


class Recorder:
    """The ``record(name, array)`` callback the layer functions get: files arrays under ``prefix.name`` in a
    Trace. ``shard(rows, batch_size)``: the callback for a pass over some of the batch's images
    (numpy_vit.fast.encoder_in_shards), whose arrays hold only those rows."""

    def __init__(self, trace, prefix):
        self.trace, self.prefix = trace, prefix

    def __call__(self, name, array):
        return self.trace.add(f"{self.prefix}.{name}", array)

    def shard(self, rows, batch_size):
        return Recorder(self.trace.shard(rows, batch_size), self.prefix)


class AttentionMaps(list):
    """``model.attention_maps``: the last run's attention patterns, one [B, H, N, N] array per layer, as the
    guide's plain list; it also keeps the Trace they belong to (``.trace``), so that a figure given only this
    list still knows the patch size, the grid, the prefix tokens and the image. A slice or a copy is a plain
    list and knows none of them."""

    def __init__(self, patterns=(), trace=None):
        super().__init__(patterns)
        self.trace = trace

    def is_whole(self) -> bool:
        """True while the list holds exactly its trace's patterns (not edited since the run)."""
        if self.trace is None:
            return False
        keys = [f"blocks.{i}.attn.pattern" for i in range(len(self))]
        return all(key in self.trace and self.trace[key] is pattern for key, pattern in zip(keys, self))


class Trace(Mapping):
    """A read-only mapping name -> array from one forward pass, with the metadata to interpret it.

    Metadata: ``config``, ``grid`` (gh, gw) of this run (not always square, not always the
    training grid), ``prefix_names`` ("cls", "dist", "reg0", ...), ``patch_size``, ``image``:
    the preprocessed first image as [H, W, 3] floats in [0, 1] for overlays, and ``source_size``:
    the first image's (height, width) in pixels before it was resized and cropped, or None where
    it is not known (a normalised [B, 3, H, W] batch given directly has no other size).
    """

    def __init__(self, config, grid, record=None, image=None, source_size=None):
        self.config = config
        self.grid = tuple(grid)
        self.image = image
        self.source_size = None if source_size is None else tuple(int(v) for v in source_size)
        self._patterns = None if record is None else [record] if isinstance(record, str) else \
            list(record) if isinstance(record, (list, tuple, set)) else [record]
        if self._patterns is not None and not all(isinstance(p, str) for p in self._patterns):
            raise ArgumentError(f"record must be None, a glob such as 'blocks.*.attn.pattern', or a list of globs; "
                                f"got {record!r}")
        self._arrays = {}
        self._lock = threading.Lock()  # shards of one batch may record the same name at once

    # --- writing (used by the forward pass) --------------------------------------------
    def wants(self, name):
        return self._patterns is None or _matches(name, tuple(self._patterns))

    def add(self, name, array):
        if self.wants(name):
            self._arrays[name] = array
        return array

    def recorder(self, prefix):
        """A ``record(name, array)`` callback that files arrays under ``prefix.name`` (a Recorder)."""
        return Recorder(self, prefix)

    def shard(self, rows, batch_size):
        """A writer for one shard of a batch (images ``rows``, a slice, of ``batch_size``): see TraceShard."""
        return TraceShard(self, rows, batch_size)

    # --- reading ---------------------------------------------------------------------
    def __getitem__(self, name):
        try:
            return self._arrays[name]
        except KeyError:
            pass
        if name == "pos_embed" and not getattr(self.config, "abs_pos_embed", True):
            raise TraceKeyError("no array 'pos_embed' in this trace: this model has no absolute position embedding "
                                "(BEiT: positions enter as each block's relative position bias, "
                                "trace['blocks.0.attn.bias'])")
        if self._patterns is not None and name not in self._arrays:
            hint = f"it was not recorded (record={self._patterns}); run again with record=None to keep everything"
        else:
            hint = "the recorded names are listed by trace.keys(); the shapes by numpy_vit.trace.TRACE_KEYS"
        raise TraceKeyError(f"no array {name!r} in this trace: {hint}") from None

    def __iter__(self):
        return iter(self._arrays)

    def __len__(self):
        return len(self._arrays)

    def __repr__(self):
        return (f"Trace({len(self)} arrays, grid={self.grid}, prefix={self.prefix_names}, "
                f"batch={self.batch_size}, model={self.config.name or 'unnamed'})")

    @property
    def prefix_names(self):
        return self.config.prefix_names

    @property
    def num_prefix_tokens(self):
        return self.config.num_prefix_tokens

    @property
    def patch_size(self):
        return self.config.patch_size

    @property
    def depth(self):
        return self.config.depth

    @property
    def batch_size(self):
        for name, array in self._arrays.items():
            if array.ndim >= 2 and not is_unbatched(name):
                return array.shape[0]
        return None

    @property
    def logits(self):
        return self["logits"]

    @property
    def attention(self):
        """The attention pattern of every layer: a list of [B, H, N, N]."""
        return [self[f"blocks.{i}.attn.pattern"] for i in range(self.config.depth)]

    def layer(self, index):
        """Check a layer index (negative counts from the end) and return it as a non-negative int."""
        depth = self.config.depth
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or not -depth <= index < depth:
            raise ArgumentError(f"layer index {index!r} is out of range: this model has {depth} layers, "
                                f"numbered 0..{depth - 1} (or -{depth}..-1 from the end)")
        return int(index) % depth

    def probabilities(self):
        """Softmax of the logits: [B, num_classes]."""
        z = self.logits - self.logits.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    def top_k(self, k=5, image=0):
        """The k most probable classes of one image as [(label, probability)], best first."""
        if "logits" not in self._arrays:
            raise ArgumentError("this model has no classifier (num_classes=0), so there are no classes to rank; "
                                "use trace['pooled'] for its features")
        count = self.logits.shape[0]
        if isinstance(image, bool) or not isinstance(image, (int, np.integer)) or not -count <= image < count:
            raise ArgumentError(f"image index {image!r} is out of range: this trace holds {count} image(s), "
                                f"numbered 0..{count - 1}")
        probs = self.probabilities()[image]
        order = np.argsort(-probs)[: max(1, int(k))]
        labels = self.config.labels or tuple(f"class {i}" for i in range(len(probs)))
        return [(labels[i], float(probs[i])) for i in order]
