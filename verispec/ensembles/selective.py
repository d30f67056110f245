"""Selective ensembles (Black, Leino & Fredrikson, *Selective Ensembles for Consistent
Predictions*, ICLR 2022), and a certified variant.

n members vote, one vote each: member k votes F_k(x), its float64 argmax (the certified class
where its engine certifies, as for the other ensembles). Let A be the plurality class (ties to
the lowest class), n_A its votes and n_B the votes of the runner-up. The ensemble **predicts A
when a two-sided binomial test of n_A successes in n_A + n_B trials at p = 1/2 rejects at
level alpha** (``scipy.stats.binomtest``: p-value <= alpha), and **abstains** otherwise.
Abstaining when the vote is not significant is what bounds how often two ensembles trained
from independent seeds can make different, non-abstaining predictions (the paper, theorem 1).

**The certified variant.** Members certified at x for the ball (eps, norm) keep their vote on
the whole ball (their engines proved it); the u uncertified members may vote anything
anywhere in it. At x let S_j be the certified votes for class j, and suppose the ensemble
predicts A. It is *certified at x* when every vote the ball allows is still significant for
A: for every pair (a, b) with a >= S_A, b <= max_{j != A} S_j + u and a + b <= n, the test
of a against b rejects. Then at every x' in the ball, A gets a >= S_A votes and every other
class at most S_j + u, so A is still the plurality and its test still rejects: **the
ensemble predicts A, without abstaining, at every point of the ball**. The guarantee holds
whenever the members' certifiers are sound; it says nothing about a point where the ensemble
abstains, and like the base ensemble it is consistent under retraining only in the
statistical sense of the paper.

The significance of every pair (a, b) with a + b <= n is computed once per (n, alpha) with
scipy, and the certified condition is read off that table (no argument about how p-values
move with a and b is needed: the table is searched over the whole dominated set).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from functools import cached_property

import numpy as np
from scipy import stats

from verispec.ensembles.members import Answer, Ensemble, Member, MemberDecisions
from verispec.errors import SpecError

NO_CLASS = -1
"""The predicted class of a point where the ensemble abstains."""

_P_VALUE = re.compile(r"p = ([0-9.eE+-]+) ")


def binomial_pvalue(a: int, b: int) -> float:
    """The two-sided p-value of ``a`` successes in ``a + b`` trials at p = 1/2 (1.0 without
    trials)."""
    if a + b == 0:
        return 1.0
    return float(stats.binomtest(a, a + b, 0.5).pvalue)


def pvalue_in(detail: str) -> float | None:
    """The p-value a selective ensemble's detail string states, or None."""
    found = _P_VALUE.search(detail)
    return float(found.group(1)) if found else None


class SelectiveEnsemble(Ensemble):
    """Predict the plurality class when a two-sided binomial test of the top two vote counts
    rejects at level ``alpha``, else abstain; certified where every vote the ball allows
    still rejects for the same class (the module docstring states the guarantee)."""

    kind = "selective"

    def __init__(self, members: Sequence[Member], alpha: float = 0.05) -> None:
        super().__init__(members)
        if not (isinstance(alpha, int | float) and 0 < alpha < 1):
            raise SpecError(f"a selective ensemble's alpha must be in (0, 1), got {alpha!r}")
        self.alpha = float(alpha)
        n = len(self.members)
        self.warning = ""
        """Why no vote of these members can ever be significant ("" when one can)."""
        if not self.significant[n, 0]:
            self.warning = (
                f"{n} members can never reach alpha={self.alpha:g}: even a unanimous vote has "
                f"p = {binomial_pvalue(n, 0):.4g}; every point abstains (add members or raise "
                "alpha)"
            )
            warnings.warn(self.warning, stacklevel=2)

    @cached_property
    def pvalues(self) -> np.ndarray:
        """(n + 1, n + 1): the p-value of a votes against b, for a + b <= n (NaN beyond)."""
        n = len(self.members)
        out = np.full((n + 1, n + 1), np.nan)
        for a in range(n + 1):
            for b in range(n + 1 - a):
                out[a, b] = binomial_pvalue(a, b)
        return out

    @cached_property
    def significant(self) -> np.ndarray:
        """(n + 1, n + 1) boolean: a votes beat b votes significantly (a > b, p <= alpha)."""
        n = len(self.members)
        a, b = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
        with np.errstate(invalid="ignore"):
            return (a > b) & (a + b <= n) & (self.pvalues <= self.alpha)

    @cached_property
    def robust(self) -> np.ndarray:
        """(n + 1, n + 1) boolean: every (a', b') with a' >= a, b' <= b, a' + b' <= n is
        significant (True beyond a + b > n, where no vote lies)."""
        n = len(self.members)
        fine = self.significant | ~(np.add.outer(np.arange(n + 1), np.arange(n + 1)) <= n)
        # all over a' >= a: a suffix minimum down the rows; all over b' <= b: a prefix one
        suffix = np.minimum.accumulate(fine[::-1], axis=0)[::-1]
        return np.minimum.accumulate(suffix, axis=1)

    def _combine(self, d: MemberDecisions) -> Answer:
        k, n = d.certified.shape
        m = self.num_classes
        rows = np.arange(n)
        counts = np.zeros((n, m), dtype=np.int64)
        np.add.at(counts, (np.broadcast_to(rows, (k, n)), d.predicted), 1)
        sure = np.zeros((n, m), dtype=np.int64)
        np.add.at(sure, (np.broadcast_to(rows, (k, n)), d.predicted), d.certified.astype(np.int64))
        loose = k - d.certified.sum(axis=0)
        top = np.argmax(counts, axis=1)  # ties to the lowest class
        n_a = counts[rows, top]
        others = counts.copy()
        others[rows, top] = -1
        n_b = others.max(axis=1) if m > 1 else np.zeros(n, dtype=np.int64)
        significant = self.significant[n_a, n_b]
        rivals = sure.copy()
        rivals[rows, top] = 0
        worst_b = (rivals.max(axis=1) if m > 1 else 0) + loose
        s_a = sure[rows, top]
        certified = significant & self.robust[s_a, np.minimum(worst_b, k)]
        predicted = np.where(significant, top, NO_CLASS)
        details = tuple(
            self._detail(
                counts[p],
                int(top[p]),
                (int(n_a[p]), int(n_b[p])),
                bool(certified[p]),
                (int(s_a[p]), int(worst_b[p])) if significant[p] else None,
            )
            for p in range(n)
        )
        warned = (self.warning,) if self.warning else ()
        return Answer(predicted, certified, details, abstained=~significant, warnings=warned)

    def _detail(
        self,
        counts: np.ndarray,
        top: int,
        top_two: tuple[int, int],
        certified: bool,
        worst: tuple[int, int] | None,
    ) -> str:
        """The votes, the test of the top two counts, and (where it answers) the worst case
        on the ball."""
        votes = ", ".join(f"{c}: {int(v)}" for c, v in enumerate(counts.tolist()) if v)
        a, b = top_two
        p = self.pvalues[a, b]
        text = f"votes {votes}; top two {a} vs {b}, p = {p:.8g} "
        if worst is None:
            return text + f"> alpha {self.alpha:g}: abstains"
        verdict = "still significant, certified" if certified else "may abstain or change"
        return (
            text + f"<= alpha {self.alpha:g}: class {top}; worst case on the ball "
            f"{worst[0]} vs {worst[1]}: {verdict}"
        )
