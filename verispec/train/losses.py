"""Certified-training losses built on a pairwise Lipschitz matrix K (m, m), K_ij bounding how fast
y_i - y_j can change (``PowerIteration.pairwise``).

- GloRo (Leino et al., 2021): cross entropy over [y, y_bot] with
  y_bot = max_{j != c} (y_j + eps K_cj).
- TRADES variant: CE(y, c) + lambda KL(softmax([y, -inf]) || softmax([y, y_bot])).
- EMMA (Hu et al., 2023): every non-target logit is raised by its own worst case within an
  adaptive radius, y_j + eps_j K_cj with eps_j = clip((y_c - y_j) / K_cj, 0, eps) computed
  under stop-gradient; cross entropy over the raised logits.
- Relaxed variants: the bottom logit from the relaxed margin. A set S containing c is
  certified when every s in S beats every j outside by eps K_sj, i.e. when
  y_c > b_S = max_{s in S, j not in S} (y_j + eps K_sj + y_c - y_s); the relaxed bottom is
  the least b_S over the admissible sets (S = {c}, and for top-k the top-kappa sets, for
  affinity those inside a group of c, that contain c). With k = 1 or singleton groups only
  S = {c} is admissible and the loss is the standard one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _others_mask(labels: torch.Tensor, m: int) -> torch.Tensor:
    return ~nn.functional.one_hot(labels, m).bool()


def gloro_bottom(
    logits: torch.Tensor, labels: torch.Tensor, kmat: torch.Tensor, eps: float
) -> torch.Tensor:
    """y_bot (n,) = max_{j != c} (y_j + eps K_cj)."""
    shifted = logits + eps * kmat[labels]
    return shifted.masked_fill(~_others_mask(labels, logits.shape[1]), -torch.inf).max(dim=1).values


def gloro_logits(
    logits: torch.Tensor, labels: torch.Tensor, kmat: torch.Tensor, eps: float
) -> torch.Tensor:
    """[y, y_bot] (n, m + 1)."""
    return torch.cat([logits, gloro_bottom(logits, labels, kmat, eps)[:, None]], dim=1)


def gloro_loss(
    logits: torch.Tensor, labels: torch.Tensor, kmat: torch.Tensor, eps: float
) -> torch.Tensor:
    """Mean cross entropy over [y, y_bot]."""
    return nn.functional.cross_entropy(gloro_logits(logits, labels, kmat, eps), labels)


def _trades_from_bottom(
    logits: torch.Tensor, labels: torch.Tensor, bottom: torch.Tensor, lam: float
) -> torch.Tensor:
    clean = nn.functional.cross_entropy(logits, labels)
    log_p = nn.functional.log_softmax(logits, dim=1)  # the clean bottom class has probability 0
    log_q = nn.functional.log_softmax(torch.cat([logits, bottom[:, None]], dim=1), dim=1)
    kl = (log_p.exp() * (log_p - log_q[:, :-1])).sum(dim=1).mean()
    return clean + lam * kl


def trades_loss(
    logits: torch.Tensor, labels: torch.Tensor, kmat: torch.Tensor, eps: float, lam: float
) -> torch.Tensor:
    """CE(y, c) + lam * KL(softmax([y, -inf]) || softmax([y, y_bot]))."""
    return _trades_from_bottom(logits, labels, gloro_bottom(logits, labels, kmat, eps), lam)


def emma_logits(
    logits: torch.Tensor, labels: torch.Tensor, kmat: torch.Tensor, eps: float
) -> torch.Tensor:
    """y_j + eps_j K_cj for j != c (y_c unchanged), eps_j = clip(margin_j / K_cj, 0, eps) with
    stop-gradient."""
    k_c = kmat[labels]
    margin = logits.gather(1, labels[:, None]) - logits
    with torch.no_grad():
        eps_j = (margin / k_c.clamp_min(1e-12)).clamp(0.0, eps)
    raised = logits + eps_j * k_c
    return torch.where(_others_mask(labels, logits.shape[1]), raised, logits)


def emma_loss(
    logits: torch.Tensor, labels: torch.Tensor, kmat: torch.Tensor, eps: float
) -> torch.Tensor:
    """Mean cross entropy over the EMMA logits."""
    return nn.functional.cross_entropy(emma_logits(logits, labels, kmat, eps), labels)


def set_bottom(
    logits: torch.Tensor, labels: torch.Tensor, kmat: torch.Tensor, eps: float, inside: torch.Tensor
) -> torch.Tensor:
    """b_S (n,) for sets given as a mask (n, m) that contain each label."""
    y_c = logits.gather(1, labels[:, None])  # (n, 1)
    # value[p, s, j] = y_j + eps K_sj + y_c - y_s
    value = logits[:, None, :] + eps * kmat[None] + y_c[:, :, None] - logits[:, :, None]
    pairs = inside[:, :, None] & ~inside[:, None, :]
    return value.masked_fill(~pairs, -torch.inf).flatten(1).max(dim=1).values


def relaxed_bottom(
    logits: torch.Tensor,
    labels: torch.Tensor,
    kmat: torch.Tensor,
    eps: float,
    k: int | None = None,
    groups: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor:
    """The least b_S over admissible sets: {c}, plus top-kappa sets (kappa <= k) containing c,
    or top-kappa sets inside a group containing c (affinity)."""
    n, m = logits.shape
    bottom = gloro_bottom(logits, labels, kmat, eps)
    with torch.no_grad():
        ranks = torch.empty_like(labels[:, None].expand(n, m))
        order = logits.argsort(dim=1, descending=True, stable=True)
        ranks.scatter_(1, order, torch.arange(m, device=logits.device).expand(n, m))
        label_rank = ranks.gather(1, labels[:, None])[:, 0]
    candidates: list[tuple[torch.Tensor, torch.Tensor]] = []
    if k is not None:
        for kappa in range(2, k + 1):
            inside = ranks < kappa
            candidates.append((inside, label_rank < kappa))
    for group in groups or ():
        in_group = torch.zeros(m, dtype=torch.bool, device=logits.device)
        in_group[list(group)] = True
        for kappa in range(2, len(group) + 1):
            inside = ranks < kappa
            ok = in_group[labels] & (label_rank < kappa) & ~(inside & ~in_group[None]).any(dim=1)
            candidates.append((inside, ok))
    for inside, ok in candidates:
        if bool(ok.any()):
            b = set_bottom(logits, labels, kmat, eps, inside)
            bottom = torch.where(ok, torch.minimum(bottom, b), bottom)
    return bottom


def relaxed_gloro_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    kmat: torch.Tensor,
    eps: float,
    k: int | None = None,
    groups: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor:
    """GloRo cross entropy with the relaxed bottom logit (top-k or affinity)."""
    bottom = relaxed_bottom(logits, labels, kmat, eps, k, groups)
    return nn.functional.cross_entropy(torch.cat([logits, bottom[:, None]], dim=1), labels)
