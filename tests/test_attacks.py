import numpy as np
import torch
from torch import nn

from verispec.attacks import pgd_attack, sample_attack
from verispec.network import Network
from verispec.regions import Box, Norm
from verispec.specs import LocalRobustness


def _net() -> Network:
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        lin.bias.zero_()
    return Network.from_torch(lin, (2,))


def test_attacks_find_a_counterexample_across_the_boundary():
    net = _net()
    x = np.array([0.6, 0.5])  # margin 0.1: the boundary is at l2 distance 0.1 / sqrt(2)
    for norm, eps in ((Norm.L2, 0.1), (Norm.LINF, 0.06)):
        (prop,) = LocalRobustness(eps, norm).at(x, net.forward64(x[None])[0]).alternatives
        rng = np.random.default_rng(0)
        w = pgd_attack(net, prop, rng)
        assert w is not None and prop.region.contains(w)
        assert net.forward64(w[None])[0].argmax() == 1


def _threshold_net() -> Network:
    """f(x) = (1.01, x1): class 0 iff x1 < 1.01, so in the unit box class 1 never wins."""
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
        lin.bias.copy_(torch.tensor([1.01, 0.0]))
    return Network.from_torch(lin, (2,))


def test_counterexamples_outside_the_domain_are_not_returned():
    """The l2 ball of radius 0.1 around (0.5, 0.98) reaches x1 = 1.08, but the domain stops
    at x1 = 1: both attacks find a counterexample without the domain and none with it."""
    net = _threshold_net()
    x = np.array([0.5, 0.98])
    y = net.forward64(x[None])[0]
    spec = LocalRobustness(0.1, Norm.L2)
    (bare,) = spec.at(x, y).alternatives
    (boxed,) = spec.at(x, y, Box.uniform(0, 1, (2,))).alternatives
    for attack in (
        lambda p, rng: pgd_attack(net, p, rng),
        lambda p, rng: sample_attack(net, p, 500, rng),
    ):
        w = attack(bare, np.random.default_rng(0))
        assert w is not None and w[1] >= 1.01
        assert attack(boxed, np.random.default_rng(0)) is None


def test_pgd_finds_a_counterexample_along_the_domain_boundary():
    """At (1.0, 0.98) the steepest way across x0 = x1 leaves the unit box (x1 > 1); PGD must
    project each step back into the domain to end on a counterexample inside it."""
    net = _net()
    x = np.array([1.0, 0.98])
    domain = Box.uniform(0, 1, (2,))
    (prop,) = LocalRobustness(0.05, Norm.L2).at(x, net.forward64(x[None])[0], domain).alternatives
    w = pgd_attack(net, prop, np.random.default_rng(0))
    assert w is not None and domain.contains(w) and prop.region.contains(w)
    assert w[1] >= w[0]
