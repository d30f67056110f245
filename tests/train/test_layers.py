import numpy as np
import torch
from torch import nn

from verispec.engines.lipschitz import network_lipschitz
from verispec.network import Network
from verispec.regions import Norm
from verispec.train.layers import CholeskyDense, LiResBlock, RowNormDense


def test_cholesky_dense_is_orthogonal_and_gradients_match_unrolled():
    torch.manual_seed(0)
    layer = CholeskyDense(6).double()
    with torch.no_grad():
        layer.V.add_(0.3 * torch.randn(6, 6, dtype=torch.float64))
    w = layer.weight()
    assert torch.allclose(w @ w.T, torch.eye(6, dtype=torch.float64), atol=1e-3)
    assert torch.linalg.matrix_norm(w, ord=2) <= 1.0
    x = torch.randn(5, 6, dtype=torch.float64)
    (g_layer,) = torch.autograd.grad(layer(x).square().sum(), layer.V)

    def unrolled(v):
        gram = v @ v.T + layer.delta * torch.eye(6, dtype=v.dtype)
        chol = torch.linalg.cholesky(gram)
        return nn.functional.linear(x, torch.linalg.inv(chol) @ v, layer.bias)

    v = layer.V.detach().clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(unrolled(v).square().sum(), v)
    assert torch.allclose(g_layer, g_ref, atol=1e-8)
    # the engine computes the bound from the weights and it is <= 1 here
    net = Network.from_torch(nn.Sequential(layer.float(), nn.Linear(6, 2)), (6,))
    assert network_lipschitz(net, Norm.L2).body <= 1 + 1e-5


def test_liresblock_ir_is_exact_and_bounded_as_one_operator():
    torch.manual_seed(1)
    block = LiResBlock(3, 3, alpha=0.5).double()
    with torch.no_grad():
        block.conv.weight.normal_()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    seq = nn.Sequential(block, nn.Flatten(), nn.Linear(75, 2).double())
    net = Network.from_torch(seq, (3, 5, 5))
    assert net.layers[0].kind == "conv2d"
    assert np.allclose(net.forward64(x.numpy()), seq(x).detach().numpy(), atol=1e-10)
    # exact norm of x -> x + alpha conv(x), by the explicit Jacobian
    jac = torch.autograd.functional.jacobian(
        lambda z: block(z.reshape(1, 3, 5, 5)).flatten(), torch.zeros(75, dtype=torch.float64)
    )
    exact = np.linalg.svd(jac.numpy(), compute_uv=False)[0]
    bound = network_lipschitz(net, Norm.L2).layers[0].l2
    assert exact <= bound <= exact * 1.02


def test_row_norm_dense_has_unit_rows_and_gradients():
    layer = RowNormDense(4, 3)
    with torch.no_grad():
        layer.V.mul_(7.0)
    assert torch.allclose(layer.weight().norm(dim=1), torch.ones(3), atol=1e-6)
    layer(torch.randn(2, 4)).sum().backward()
    assert layer.V.grad is not None and torch.isfinite(layer.V.grad).all()
