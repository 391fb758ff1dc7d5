"""Shared helpers for the parity tests: the same random weights in torch and in numpy_vit.

Tolerances (float32 / float64), stated once and used by every test:
- attention patterns: max abs error <= 1e-5 / 1e-10
- residual stream and other activations: max abs error <= 1e-4 / 1e-10 times the tensor's scale
  (its largest absolute value, at least 1)
- logits / pooled features: max abs error <= 1e-4 / 1e-10
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need torch (pip install -e '.[test]')")
timm = pytest.importorskip("timm")
import timm.layers  # noqa: E402

TOL = {
    np.float32: dict(pattern=1e-5, resid=1e-4, logits=1e-4),
    np.float64: dict(pattern=1e-10, resid=1e-10, logits=1e-10),
}

# every measured error is appended here; the run ends by printing them as a table (``parity_table``), the
# README's parity table
MEASURED = []
# test_backward_parity.py's worst gradient errors: (label, dtype, (error, array name), None or, in float32, the
# worst ratios to torch's own float32 error ((root-mean-square ratio, array), (largest-error ratio, array))),
# printed after MEASURED's table
GRADIENTS = []


def torch_setup():
    torch.manual_seed(0)
    timm.layers.set_fused_attn(False)  # the probabilities are hidden inside fused SDPA otherwise


torch_setup()  # once, when pytest reads this file: before every test of the run


def max_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def scale_of(ref):
    return max(1.0, float(np.max(np.abs(ref))))


def random_batch(config, batch=2, size=None, seed=0, dtype=np.float32):
    h, w = config.img_size if size is None else size
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, config.in_chans, h, w)).astype(dtype)


def timm_state_to_params(module):
    """A torch module's state dict as the flat {timm name: array} numpy_vit uses (our names are timm's)."""
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


class Recorder:
    """Forward hooks on a timm ViT that keep each block's input/output and each attention pattern."""

    def __init__(self, model):
        self.arrays = {}
        self.handles = []
        for i, blk in enumerate(model.blocks):
            self.handles.append(blk.register_forward_pre_hook(self._keep_input(f"blocks.{i}.resid_pre")))
            self.handles.append(blk.register_forward_hook(self._keep_output(f"blocks.{i}.resid_post")))
            self.handles.append(blk.attn.attn_drop.register_forward_hook(self._keep_output(f"blocks.{i}.attn.pattern")))
            self.handles.append(blk.mlp.fc1.register_forward_hook(self._keep_output(f"blocks.{i}.mlp.pre")))
        if not isinstance(model.norm, torch.nn.Identity):
            self.handles.append(model.norm.register_forward_hook(self._keep_output("norm")))
        self.handles.append(model.patch_embed.register_forward_hook(self._keep_output("patch_embed")))

    def _keep_input(self, name):
        def hook(module, args):
            self.arrays[name] = args[0].detach().numpy()
        return hook

    def _keep_output(self, name):
        def hook(module, args, out):
            out = out.detach().numpy()
            self.arrays[name] = out.reshape(out.shape[0], -1, out.shape[-1]) if name == "patch_embed" else out
        return hook


def compare_traces(trace, reference, dtype, label, depth):
    """Compare every recorded reference array with the trace; returns {kind: worst error} and asserts."""
    tol = TOL[dtype]
    worst = {"pattern": 0.0, "resid": 0.0, "logits": 0.0}
    failures = []
    for name, ref in reference.items():
        ours = trace[name]
        assert ours.shape == ref.shape, f"{label}: {name} shape {ours.shape} != reference {ref.shape}"
        err = max_err(ours, ref)
        if name.endswith("attn.pattern") or name == "attn_pool.pattern":  # SigLIP's pooling attention too
            kind, limit = "pattern", tol["pattern"]
        elif name in ("logits", "pooled"):
            kind, limit = "logits", tol["logits"]
        else:
            kind, limit = "resid", tol["resid"]
            err = err / scale_of(ref)  # relative to the tensor's scale
        worst[kind] = max(worst[kind], err)
        if err > limit:
            failures.append(f"{name}: {err:.3g} > {limit:g}")
    patterns = [k for k in reference if k.endswith("attn.pattern")]
    assert len(patterns) == depth, f"{label}: compared {len(patterns)} attention patterns, model has {depth} layers"
    MEASURED.append((label, np.dtype(dtype).name, worst))
    assert not failures, f"{label} ({np.dtype(dtype).name}): " + "; ".join(failures)
    return worst


TABLE_TITLE = "parity: worst errors (pattern abs | residual abs / scale | logits or pooled abs)"


def parity_table(measured):
    """One line per compared model: its worst attention, residual and logits errors (``MEASURED``'s rows)."""
    return [f"{label:<60} {dtype:<8} {worst['pattern']:9.2e} {worst['resid']:9.2e} {worst['logits']:9.2e}"
            for label, dtype, worst in measured]


GRADIENT_TITLE = ("gradients: worst largest error / scale (array) | float32: worst ratio to torch's own float32 "
                  "error, root-mean-square (array), largest (array)")


def gradient_table(measured):
    """One line per model and dtype: the worst gradient error (relative to the array's scale) and where, and in
    float32 the worst ratios to torch's own float32 error."""
    lines = []
    for label, dtype, (err, name), ratios in measured:
        own = "".join(f" | {r:4.2f}x ({n})" for r, n in ratios) if ratios else ""
        lines.append(f"{label:<52} {dtype:<8} {err:9.2e} ({name}){own}")
    return lines


def pytest_terminal_summary(terminalreporter):
    """Print the worst error of every compared model: the parity table of the README comes from here."""
    if MEASURED:
        terminalreporter.write_sep("-", TABLE_TITLE)
        for line in parity_table(MEASURED):
            terminalreporter.write_line(line)
    if GRADIENTS:
        terminalreporter.write_sep("-", GRADIENT_TITLE)
        for line in gradient_table(GRADIENTS):
            terminalreporter.write_line(line)
