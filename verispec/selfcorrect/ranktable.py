"""The self-correcting layer's answers looked up by ranking: the fast path of its forward pass.

The layer's answer depends on its logits y only through the comparisons between their
entries. When those are strict (no ties) they form a total order, written as one bit per
pair of classes: a *key* below 2^(n(n-1)/2). For each set of regions x lies in (a *mask*),
the answer is computed once per ranking, on a representative y with that ranking, by the
layer's own general path, and stored by key: which class goes to each output position (a
gather index), whether the row changed, whether it abstained. A batch then costs one
comparison of its logits, one lookup and one gather, whatever its constraints. Rows with ties
or non-finite logits, and layers too large for the table, are left to the general path
(``SelfCorrecting.revise_masked``), the reference the table is built from: the two agree by
construction, which ``tests/test_selfcorrect.py`` checks.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import attrs
import torch

MAX_CLASSES = 6
"""Classes up to which the table is used (2^15 keys and 720 rankings per mask)."""

MAX_CONSTRAINTS = 16
"""Constraints up to which masks are indexed densely (2^16 entries)."""

Reference = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""(inside (r, c) boolean, y (r, n) float64) -> (logits (r, n), changed (r,), abstained (r,)):
the layer's general path on given regions and logits."""


def usable(classes: int, constraints: int) -> bool:
    """Whether a layer of this size can use the table."""
    return classes <= MAX_CLASSES and constraints <= MAX_CONSTRAINTS


@attrs.define(eq=False)
class _Store:
    """Built entries on one device: ``slot_of`` (2^c,) the block of each mask (-1: not built
    yet); by block and key, ``gather`` (blocks * 2^p, n) the class in each output position
    and ``flags`` (blocks * 2^p,): 1 if the row changed, 2 if it abstained."""

    slot_of: torch.Tensor
    gather: torch.Tensor
    flags: torch.Tensor


class RankTable:
    """Answers of a layer with ``classes`` classes and ``constraints`` constraints, by mask
    and by the strict comparisons of ``sign * y``, built lazily per mask by ``reference``."""

    CHANGED = 1
    ABSTAINED = 2

    def __init__(self, classes: int, constraints: int, sign: float, reference: Reference) -> None:
        self.n, self.c, self.sign, self.reference = classes, constraints, sign, reference
        pairs = [(a, b) for a in range(classes) for b in range(a + 1, classes)]
        weights = torch.zeros((classes, classes), dtype=torch.float64)
        for bit, (a, b) in enumerate(pairs):
            weights[a, b] = 2.0**bit
        self.weights = torch.stack([weights.ravel(), torch.ones(classes * classes)])
        """(2, n * n): row 0 the bit of pair (a, b), a < b, set when sign * y_a > sign * y_b;
        row 1 ones, to count the strict pairs."""
        self.pairs = len(pairs)
        self.keys = 1 << len(pairs)
        self._stores: dict[str, _Store] = {}

    def keys_of(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(b,) the key of each row of ``y`` (b, n), and (b,) whether its comparisons are
        strict (no tie, no NaN) so that the key names its ranking."""
        yt = y.detach().T.contiguous()  # batch last: the comparisons run along the batch
        above = yt[:, None, :] > yt[None, :, :] if self.sign > 0 else yt[:, None, :] < yt[None]
        key, count = self.weights.to(y.device) @ above.reshape(self.n * self.n, -1).double()
        return key.long(), count == self.pairs

    def _block(self, mask: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The gather index (2^p, n) and flags (2^p,) of one mask: every ranking's, at its
        key; keys no strict ranking has hold the identity."""
        n = self.n
        perms = torch.tensor(list(itertools.permutations(range(n))), device=device)
        ranks = torch.arange(n - 1, -1, -1, dtype=torch.float64, device=device)
        score = torch.empty(perms.shape, dtype=torch.float64, device=device)
        score.scatter_(1, perms, ranks.expand_as(perms))  # class perms[k] scores n - 1 - k
        bits = torch.tensor([mask >> k & 1 for k in range(self.c)], device=device).bool()
        y = self.sign * score
        logits, changed, abstained = self.reference(bits.expand(len(perms), -1), y)
        # every output is a permutation of the representative's distinct values: the value
        # at position j names its rank, the ranking names the class
        key = self.keys_of(y)[0]
        gather = torch.arange(n, device=device).repeat(self.keys, 1)
        gather[key] = perms.gather(1, (n - 1 - self.sign * logits).round().long())
        flags = torch.zeros(self.keys, dtype=torch.long, device=device)
        flags[key] = self.CHANGED * changed.long() + self.ABSTAINED * abstained.long()
        return gather, flags

    def lookup(self, masks: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For rows with ``masks`` (b,) and strict comparisons with ``key`` (b,): the gather
        index (b, n) and the flags (b,)."""
        name = str(masks.device)
        if name not in self._stores:
            self._stores[name] = _Store(
                torch.full((2**self.c,), -1, dtype=torch.long, device=masks.device),
                torch.zeros((0, self.n), dtype=torch.long, device=masks.device),
                torch.zeros(0, dtype=torch.long, device=masks.device),
            )
        store = self._stores[name]
        slots = store.slot_of.index_select(0, masks)
        if int(slots.min()) < 0:
            for mask in torch.unique(masks[slots < 0]).tolist():
                gather, flags = self._block(mask, masks.device)
                store.slot_of[mask] = len(store.flags) // self.keys
                store.gather = torch.cat([store.gather, gather])
                store.flags = torch.cat([store.flags, flags])
            slots = store.slot_of.index_select(0, masks)
        rows = slots * self.keys + key
        return store.gather.index_select(0, rows), store.flags.index_select(0, rows)
