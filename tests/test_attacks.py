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


def test_attacks_find_nothing_when_robust():
    net = _net()
    x = np.array([0.9, 0.1])
    (prop,) = (
        LocalRobustness(0.1, Norm.L2)
        .at(x, net.forward64(x[None])[0], Box.uniform(0, 1, (2,)))
        .alternatives
    )
    rng = np.random.default_rng(0)
    assert pgd_attack(net, prop, rng) is None
    assert sample_attack(net, prop, 500, rng) is None
