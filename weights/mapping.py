"""Key mappings as data: a table of (source keys, timm key, transform), applied with checks.

HF's conversion scripts keep their renames as a list of tuples
(``create_rename_keys()``); nanoGPT asserts every copied shape. Here a reader is
a list of :class:`Rule`; :func:`apply_table` expands the ``{i}`` rules over the
blocks, copies each tensor through its transform, and refuses source keys that
no rule reads: a checkpoint of another architecture fails loudly, naming the keys.
The shapes of the result are then checked against the config (``check_params``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from numpy_vit.errors import CheckpointError


def same(a):
    """Copy as is."""
    return a


def need_rank(a, rank: int, layout: str):
    """Raise ValueError unless ``a`` has ``rank`` axes (``layout`` names them for the message)."""
    if a.ndim != rank:
        raise ValueError(f"expected {rank} axes {layout}, got shape {a.shape}")
    return a


@dataclass(frozen=True)
class Rule:
    """Read ``sources`` (several keys when one timm tensor is stored in pieces), write ``target``.

    ``{i}`` in a key stands for the block index. ``transform`` receives the source
    arrays in order and returns the target array.
    """
    sources: tuple
    target: str
    transform: Callable = same

    def expand(self, depth: int):
        if "{i}" not in self.target:
            return [self]
        return [Rule(tuple(s.format(i=i) for s in self.sources), self.target.format(i=i), self.transform)
                for i in range(depth)]


def rule(sources, target, transform=same) -> Rule:
    return Rule((sources,) if isinstance(sources, str) else tuple(sources), target, transform)


def count_blocks(keys, pattern: str, where: str) -> int:
    """Number of blocks, from the indices ``pattern`` (a regex with one group) finds; they must be 0..L-1."""
    found = {int(m.group(1)) for k in keys for m in [re.match(pattern, k)] if m}
    if found and found != set(range(len(found))):
        missing = sorted(set(range(max(found) + 1)) - found)
        raise CheckpointError(f"{where}: block indices are not contiguous: blocks {missing} are missing "
                              f"(found {len(found)} blocks up to index {max(found)})")
    return len(found)


def apply_table(raw: dict, rules, depth: int, where: str, ignore=()):
    """Translate ``raw`` (source key -> array) into timm names with ``rules``.

    Returns ``(params, sources)``: the float32 params and, for every target a
    rule could produce, the source key(s) it reads (for error messages about
    missing keys). A rule whose source keys are all absent is skipped (the head
    of a backbone, a DeiT token); one with only some of them present is an
    error. Keys matched by a regex in ``ignore`` are dropped on purpose
    (optimizer state, a DINO projection head); any other unread key is an error.
    """
    params, sources, used = {}, {}, set()
    for r in (e for r in rules for e in r.expand(depth)):
        sources[r.target] = " + ".join(r.sources)
        present = [s in raw for s in r.sources]
        if not any(present):
            continue
        if not all(present):
            absent = [s for s, p in zip(r.sources, present) if not p]
            raise CheckpointError(f"{where}: {r.target} is read from {list(r.sources)} but {absent} "
                                  f"{'is' if len(absent) == 1 else 'are'} missing")
        arrays = [np.asarray(raw[s]) for s in r.sources]
        odd = [f"{s} ({a.dtype})" for s, a in zip(r.sources, arrays) if a.dtype.kind not in "fiub"]
        if odd:  # strings, complex numbers or Python objects cannot become float32 weights without losing something
            raise CheckpointError(f"{where}: {', '.join(odd)} should hold real numbers for {r.target}")
        try:
            value = r.transform(*arrays)
        except ValueError as e:
            shapes = ", ".join(f"{s} {a.shape}" for s, a in zip(r.sources, arrays))
            raise CheckpointError(f"{where}: cannot convert {shapes} into {r.target}: {e}") from None
        params[r.target] = np.ascontiguousarray(value, dtype=np.float32)
        used.update(r.sources)
    unread = sorted(k for k in raw if k not in used and not any(re.search(p, k) for p in ignore))
    if unread:
        shown = ", ".join(unread[:10]) + (f", ... ({len(unread)} in all)" if len(unread) > 10 else "")
        raise CheckpointError(f"{where}: unexpected keys that no rule of this reader maps: {shown}")
    return params, sources
