"""Grads: the gradients of one backward pass (``ViT.backward``), named like the trace they came from.

``grads[name]`` is d target / d trace[name], the shape and dtype of trace[name], for every name the trace
holds; ``grads.params`` holds d target / d parameter under the names of ``model.params``, summed over the
batch. The target is a scalar: sum over the images b of <cotangent[b], output[b]>, where the output is the
logits (or, for a model without a classifier, what it ends with: pre_logits, pooled, or the final tokens),
and the cotangent is built from ``target`` (``cotangent_for``): a class index, one per image, each image's top
class, or any array of the output's shape.

Also here: which recorded arrays the backward pass reads (``names_needed``, ``BACKWARD_RECORD``), checked
before it starts so that a trace recorded with a narrow ``record=`` gets a clear error, not a KeyError halfway.
"""
import threading
from collections.abc import Mapping

import numpy as np

from .errors import ArgumentError
from .layers import ATTENTION_POOL_SAVED, BLOCK_SAVED, block_saved
from .trace import Recorder, Trace, TraceKeyError, TraceShard, _matches

# globs of every array the backward pass may read, for any model: model.run(x, record=BACKWARD_RECORD + [...]).
# "input" is not read, but recording it is what makes grads["input"] (a saliency map) available; "pos_embed"
# (one small array) lets the backward pass check that the trace was made with this model's weights; "patch_embed"
# is read back by the backward of CLIP's norm_pre (its input, the embedded tokens, is recomputed from it).
BACKWARD_RECORD = ["input", "patches", "patch_embed", "pos_embed"] + [
    f"blocks.*.{name}" for name in dict.fromkeys(BLOCK_SAVED + block_saved(rope=True, swiglu=True))] + [
    "blocks.*.resid_post", "norm", "pooled", "pre_logits", "logits"] + [
    f"attn_pool.{name}" for name in ATTENTION_POOL_SAVED]


def output_name(config):
    """The trace name of what the model ends with, the array a target's cotangent belongs to."""
    if config.global_pool:
        return "logits" if config.num_classes else "pre_logits" if config.representation_size else "pooled"
    return f"blocks.{config.depth - 1}.resid_post" if config.use_fc_norm else "norm"


def names_needed(config, target=None):
    """The recorded arrays ``ViT.backward`` reads for this model (and this target: "top" reads the logits)."""
    last = f"blocks.{config.depth - 1}.resid_post"  # the final LayerNorm's (or pooling's) input
    saved = block_saved(rope=config.rope, swiglu=config.mlp == "swiglu")
    names = ["patches"] + (["patch_embed", "pos_embed"] if config.norm_pre else []) + [
        f"blocks.{i}.{name}" for i in range(config.depth) for name in saved] + [last]
    if config.global_pool and (config.num_classes or config.representation_size):
        names.append("pooled")  # the input of the head or of pre_logits
    if config.global_pool == "map":  # the attention pool's input and its recorded arrays
        names += ["norm"] + [f"attn_pool.{name}" for name in ATTENTION_POOL_SAVED]
    if config.global_pool and config.representation_size:
        names.append("pre_logits")  # tanh's output, its derivative's argument, and the head's input
    if config.global_pool and config.num_classes and config.distilled and not config.use_fc_norm:
        names.append("norm")  # the distillation head reads the final LayerNorm's second token
    if isinstance(target, str) and target == "top" and output_name(config) == "logits":
        names.append("logits")
    return names


def check_trace(trace, config, dtype, target=None, pos_embed_for=None):
    """Raise ArgumentError unless ``trace`` comes from a model of ``config`` computing in ``dtype`` and holds
    every array the backward pass reads. ``pos_embed_for(grid)``: the model's position embedding for a grid,
    compared with the recorded one where the trace holds it (another model's weights differ there)."""
    if not isinstance(trace, Trace):
        raise ArgumentError(f"backward needs the Trace of model.run or model.forward, got {type(trace).__name__}")
    if trace.config != config:
        theirs, ours = trace.config, config
        differ = [f"{f}: {getattr(theirs, f)!r} vs {getattr(ours, f)!r}" for f in theirs.to_dict()
                  if getattr(theirs, f) != getattr(ours, f)]
        raise ArgumentError("this trace was made by a model of another config (" + "; ".join(differ[:6])
                            + "): run this model on the images, or call backward on the model that made the trace")
    missing = [name for name in names_needed(config, target) if name not in trace]
    if missing:
        shown = ", ".join(missing[:8]) + (f", ... ({len(missing)} in all)" if len(missing) > 8 else "")
        raise ArgumentError(f"the backward pass reads arrays this trace did not record: {shown}. Run the model "
                            f"with record=None (everything) or record=numpy_vit.BACKWARD_RECORD + [the names you "
                            f"want], e.g. model.run(x, record=numpy_vit.BACKWARD_RECORD)")
    if trace["patches"].dtype != dtype:
        raise ArgumentError(f"this trace was computed in {trace['patches'].dtype} but the model computes in "
                            f"{dtype}: call backward on model.astype(np.{trace['patches'].dtype})")
    if pos_embed_for is not None and "pos_embed" in trace and \
            not np.array_equal(trace["pos_embed"], pos_embed_for(trace.grid)):
        raise ArgumentError("this trace was made by a model with other weights (its position embedding differs "
                            "from this model's): call backward on the model that made the trace")


def check_keep(keep):
    """``keep`` as a list of globs, or None (keep everything); ArgumentError for anything else."""
    if keep is None:
        return None
    globs = [keep] if isinstance(keep, str) else list(keep) if isinstance(keep, (list, tuple, set)) else None
    if globs is None or not all(isinstance(g, str) for g in globs):
        raise ArgumentError(f"keep must be None, a glob such as 'blocks.*.attn.pattern', or a list of globs "
                            f"(an empty list keeps the parameters' gradients alone); got {keep!r}")
    return globs


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def cotangent_for(trace, target, config, dtype):  # -> ([B, width] cotangent, [B] classes or None)
    """The output cotangent a ``target`` stands for, and the class of each image it differentiates (None for an
    array). ``target``: an int class (every image), a list of ints (one per image), "top" (each image's largest
    logit) or a float array shaped like the output (the logits; for a model without classifier, the output
    ``output_name`` names)."""
    out = output_name(config)
    batch = trace["patches"].shape[0]
    classes = None
    has_classes = out == "logits"
    no_classes = (f"this model has no classifier (num_classes=0), so there is no class to differentiate; pass a "
                  f"cotangent array of the shape of trace[{out!r}] instead")
    if isinstance(target, str):
        if target != "top":
            raise ArgumentError(f"target {target!r} is not understood: pass a class index, a list of them (one "
                                f"per image), 'top' (each image's predicted class) or a cotangent array")
        if not has_classes:
            raise ArgumentError(no_classes)
        classes = np.argmax(trace["logits"], axis=-1)
    elif _is_int(target):
        classes = np.full(batch, int(target))
    elif (isinstance(target, (list, tuple)) and len(target) and all(_is_int(t) for t in target)) or \
            (isinstance(target, np.ndarray) and target.ndim == 1 and target.dtype.kind in "iu"):
        if len(target) != batch:
            raise ArgumentError(f"a list target needs one class per image: this trace holds {batch} image(s), "
                                f"the target names {len(target)} classes")
        classes = np.asarray(target, dtype=np.int64)
    if classes is not None:
        if not has_classes:
            raise ArgumentError(no_classes)
        num_classes = config.num_classes
        bad = [int(c) for c in classes if not 0 <= c < num_classes]
        if bad:
            raise ArgumentError(f"target class {bad[0]} is out of range: this model has {num_classes} classes, "
                                f"numbered 0..{num_classes - 1}")
        cotangent = np.zeros((batch, num_classes), dtype)  # [B, C] one-hot: d logits[b, class_b] / d logits
        cotangent[np.arange(batch), classes] = 1
        return cotangent, classes
    return _check_cotangent(target, trace, out, dtype), None


def _check_cotangent(target, trace, out, dtype):
    try:
        array = np.asarray(target)
    except (TypeError, ValueError):
        array = None
    if array is None or array.dtype.kind not in "fiu" or array.dtype.kind == "b":
        raise ArgumentError(f"target {target!r} is not understood: pass a class index, a list of them (one per "
                            f"image), 'top' or a float cotangent array of the shape of trace[{out!r}]")
    shape = trace[out].shape if out in trace else None
    if shape is None:  # the output itself need not be recorded: its shape follows from the config
        shape = _output_shape(trace, out)
    if array.shape != shape:
        batch_hint = (f" (the batch: this trace holds {shape[0]} image(s))" if array.ndim == len(shape)
                      and array.shape[1:] == shape[1:] else "")
        raise ArgumentError(f"a cotangent target must have the shape of trace[{out!r}], {shape}; got "
                            f"{array.shape}{batch_hint}")
    if not np.isfinite(array).all():
        raise ArgumentError(f"the cotangent target holds {np.count_nonzero(~np.isfinite(array))} NaN or "
                            f"infinite values")
    return array.astype(dtype)  # a copy in the trace's dtype: grads[output] is this array


def _output_shape(trace, out):
    c, batch = trace.config, trace["patches"].shape[0]
    if out == "logits":
        return (batch, c.num_classes)
    if out == "pre_logits":
        return (batch, c.representation_size)
    if out == "pooled":
        return (batch, c.embed_dim)
    return (batch, c.num_prefix_tokens + trace["patches"].shape[1], c.embed_dim)


class Grads(Mapping):
    """A read-only mapping name -> d target / d trace[name] for every array the trace holds, with:

    ``params``: {timm parameter name: gradient}, the names and shapes of ``model.params``, summed over the batch;
    ``target_classes``: the class differentiated for each image ([B] ints), or None for a cotangent target;
    ``cotangent``: the output's gradient that started the backward pass, [B, C] (the logits'), and
    ``output``: the trace name it belongs to ("logits", or for a headless model "pooled" / "pre_logits" / ...).
    """

    def __init__(self, trace, cotangent, target_classes, output, keep=None):
        self.config = trace.config
        self.grid = trace.grid
        self.cotangent = cotangent
        self.target_classes = target_classes
        self.output = output
        self.params = {}
        # the arrays whose gradient is kept: those the trace holds (that match ``keep``, a list of globs)
        self._names = frozenset(name for name in trace.keys() if keep is None or _matches(name, tuple(keep)))
        self._arrays = {}
        self._lock = threading.Lock()  # shards of one batch may record the same name at once

    # --- writing (used by the backward pass) --------------------------------------------
    def wants(self, name):
        return name in self._names

    def add(self, name, array):
        if name in self._names:
            self._arrays[name] = array
        return array

    def shard(self, rows, batch_size):
        """A writer for one shard of a batch (numpy_vit.fast.encoder_backward), as Trace.shard."""
        return TraceShard(self, rows, batch_size)

    def recorder(self, prefix):
        """A ``record(name, array)`` callback for the layers' backward functions: files under ``prefix.name``."""
        return Recorder(self, prefix)

    # --- reading ---------------------------------------------------------------------
    def __getitem__(self, name):
        try:
            return self._arrays[name]
        except KeyError:
            raise TraceKeyError(f"no gradient {name!r}: gradients are kept for the arrays the trace recorded "
                                f"that match backward's keep= (grads.keys()); record it, e.g. model.run(x, "
                                f"record=None), and keep it, e.g. model.backward(trace, target, keep=None)") from None

    def __iter__(self):
        return iter(self._arrays)

    def __len__(self):
        return len(self._arrays)

    def __repr__(self):
        what = (f"classes {self.target_classes.tolist()}" if self.target_classes is not None
                else f"a cotangent of {self.output}")
        return (f"Grads({len(self)} arrays, {len(self.params)} parameters, d({what}), grid={self.grid}, "
                f"model={self.config.name or 'unnamed'})")
