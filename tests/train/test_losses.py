import torch
from torch import nn

from verispec.train import losses


def _case():
    torch.manual_seed(0)
    logits = torch.randn(6, 5, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    w = torch.randn(5, 7, dtype=torch.float64)
    kmat = torch.cdist(w, w) * 1.3
    return logits, labels, kmat


def test_gloro_bottom_logit_and_cross_entropy_limit():
    logits, labels, kmat = _case()
    ext = losses.gloro_logits(logits, labels, kmat, 0.0)
    others = logits.masked_fill(nn.functional.one_hot(labels, 5).bool(), -torch.inf)
    assert torch.allclose(ext[:, -1], others.max(dim=1).values)  # eps = 0: the runner-up
    minus_inf = torch.cat([logits, torch.full((6, 1), -torch.inf, dtype=logits.dtype)], dim=1)
    assert torch.allclose(
        nn.functional.cross_entropy(minus_inf, labels), nn.functional.cross_entropy(logits, labels)
    )
    eps = 0.2
    expected = (
        (logits + eps * kmat[labels])
        .masked_fill(nn.functional.one_hot(labels, 5).bool(), -torch.inf)
        .max(dim=1)
        .values
    )
    assert torch.allclose(losses.gloro_logits(logits, labels, kmat, eps)[:, -1], expected)
    assert losses.gloro_loss(logits, labels, kmat, eps) > losses.gloro_loss(
        logits, labels, kmat, 0.0
    )


def test_trades_is_cross_entropy_plus_lambda_kl():
    logits, labels, kmat = _case()
    ce = nn.functional.cross_entropy(logits, labels)
    assert torch.allclose(losses.trades_loss(logits, labels, kmat, 0.3, 0.0), ce)
    t1 = losses.trades_loss(logits, labels, kmat, 0.3, 1.0)
    t2 = losses.trades_loss(logits, labels, kmat, 0.3, 2.0)
    assert torch.allclose(t2 - ce, 2 * (t1 - ce)) and t1 > ce
    logits.requires_grad_(True)
    losses.trades_loss(logits, labels, kmat, 0.3, 1.0).backward()
    assert torch.isfinite(logits.grad).all()


def test_emma_margins_by_hand():
    logits = torch.tensor([[3.0, 1.0, 2.5]])
    labels = torch.tensor([0])
    kmat = torch.tensor([[0.0, 4.0, 1.0], [4.0, 0.0, 2.0], [1.0, 2.0, 0.0]])
    # class 1: margin 2.0 / K 4 = 0.5, clipped to eps 0.3: +1.2
    # class 2: margin 0.5 / K 1 = 0.5, clipped to 0.3: +0.3
    out = losses.emma_logits(logits, labels, kmat, 0.3)
    assert torch.allclose(out, torch.tensor([[3.0, 2.2, 2.8]]))
    # with a larger eps the adaptive radius stops at the margin: y_j + margin = y_c
    out = losses.emma_logits(logits, labels, kmat, 10.0)
    assert torch.allclose(out, torch.tensor([[3.0, 3.0, 3.0]]))
    # a class already ahead of the label gets no raise (eps_j clipped at 0)
    out = losses.emma_logits(torch.tensor([[1.0, 2.0, 0.0]]), labels, kmat, 0.3)
    assert torch.allclose(out, torch.tensor([[1.0, 2.0, 0.3]]))


def test_emma_radius_has_no_gradient():
    logits, labels, kmat = _case()
    logits.requires_grad_(True)
    kmat = kmat.clone().requires_grad_(True)
    losses.emma_loss(logits, labels, kmat, 0.3).backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(kmat.grad).all()


def test_relaxed_losses_reduce_to_standard():
    logits, labels, kmat = _case()
    std = losses.gloro_loss(logits, labels, kmat, 0.3)
    assert torch.allclose(losses.relaxed_gloro_loss(logits, labels, kmat, 0.3, k=1), std)
    singletons = [[c] for c in range(5)]
    assert torch.allclose(
        losses.relaxed_gloro_loss(logits, labels, kmat, 0.3, groups=singletons), std
    )
    relaxed = losses.relaxed_gloro_loss(logits, labels, kmat, 0.3, k=3)
    assert relaxed <= std + 1e-12


def test_relaxed_bottom_matches_set_certificate():
    # classes 0 and 1 far ahead of 2: {0, 1} is separated, so the top-2 bottom comes from it
    logits = torch.tensor([[5.0, 4.9, 0.0]])
    labels = torch.tensor([0])
    kmat = torch.ones(3, 3) - torch.eye(3)
    b = losses.relaxed_bottom(logits, labels, kmat, 1.0, k=2)
    # b_S = max over s in {0,1}, j = 2 of y_2 + 1 + y_0 - y_s = 0 + 1 + 0.1 = 1.1; standard: 5.9
    assert torch.allclose(b, torch.tensor([1.1]))
    assert torch.allclose(losses.gloro_bottom(logits, labels, kmat, 1.0), torch.tensor([5.9]))
