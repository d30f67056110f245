import numpy as np
import pytest
import torch
from torch import nn

from verispec.errors import UnsupportedLayerError
from verispec.layers import GroupSort, MinMax, Normalize
from verispec.network import Network


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        Normalize(torch.tensor([0.5]), torch.tensor([0.25])),
        nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), MinMax()),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 8),
        GroupSort(4),
        nn.Dropout(0.5),
        nn.Linear(8, 3),
        nn.ReLU(),
        nn.Linear(3, 3),
    ).eval()


def test_from_torch_matches_torch_in_float32_and_float64():
    model = _model()
    net = Network.from_torch(model, (1, 8, 8))
    assert [layer.kind for layer in net.layers] == [
        "normalize",
        "conv2d",
        "groupsort",
        "avgpool2d",
        "flatten",
        "dense",
        "groupsort",
        "dense",
        "relu",
        "dense",
    ]
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(net.module(torch.float32)(x), ref, atol=1e-6)
    assert np.allclose(net.forward64(x.double().numpy()), ref.numpy(), atol=1e-5)
    assert net.num_classes == 3 and net.shapes[2] == (4, 4, 4)


def test_groupsort_sorts_within_groups():
    out = GroupSort(2)(torch.tensor([[3.0, 1.0, -1.0, 2.0]]))
    assert out.tolist() == [[1.0, 3.0, -1.0, 2.0]]


@pytest.mark.parametrize(
    "module, fragment",
    [
        (nn.Sequential(nn.Flatten(), nn.Tanh()), "layer 1 (Tanh"),
        (nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3, dilation=2))), "dilation"),
        (nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)), "groups 2"),
        (nn.Sequential(nn.MaxPool2d(2)), "MaxPool2d"),
    ],
)
def test_unsupported_layers_are_named(module, fragment):
    with pytest.raises(UnsupportedLayerError) as err:
        Network.from_torch(module, (1, 8, 8))
    assert fragment in str(err.value)
    assert "Supported:" in str(err.value)


def test_output_must_be_logits_vector():
    with pytest.raises(UnsupportedLayerError, match="vector of logits"):
        Network.from_torch(nn.Sequential(nn.Conv2d(1, 2, 3)), (1, 8, 8))


def test_fingerprint_changes_with_weights():
    model = _model()
    a = Network.from_torch(model, (1, 8, 8)).fingerprint()
    with torch.no_grad():
        model[-1].weight[0, 0] += 1e-3
    assert Network.from_torch(model, (1, 8, 8)).fingerprint() != a


def _bn_stats(bn: nn.modules.batchnorm._BatchNorm, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    c = bn.num_features
    assert bn.running_mean is not None and bn.running_var is not None
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(c, generator=g, dtype=torch.float64) * 3 + 0.05)
        bn.weight.copy_(torch.randn(c, generator=g, dtype=torch.float64))
        bn.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64))


def test_batchnorm_1d_and_2d_match_torch_in_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5),
        nn.BatchNorm1d(5, eps=1e-3),
        nn.ReLU(),
        nn.Linear(5, 3),
    ).double()
    _bn_stats(model[1], 1)
    _bn_stats(model[5], 2)
    model.eval()
    net = Network.from_torch(model, (1, 4, 4))
    assert [layer.kind for layer in net.layers] == [
        "conv2d",
        "batchnorm",
        "relu",
        "flatten",
        "dense",
        "batchnorm",
        "relu",
        "dense",
    ]
    x = torch.rand(7, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(net.forward64(x.numpy()), expected, rtol=1e-12, atol=1e-12)


def test_batchnorm_without_affine_and_refused_without_statistics():
    bn = nn.BatchNorm1d(2, affine=False).double()
    _ = bn.running_var.fill_(4.0)
    net = Network.from_torch(nn.Sequential(bn, nn.Linear(2, 2)), (2,))
    np.testing.assert_allclose(net.layers[0].scale, 1 / np.sqrt(4.0 + 1e-5))
    with pytest.raises(UnsupportedLayerError, match="running statistics"):
        Network.from_torch(nn.Sequential(nn.BatchNorm1d(2, track_running_stats=False)), (2,))


def test_float64_forward_keeps_weights_that_float32_cannot_hold():
    """Regression (issue 12, bug 2): forward64 used to run a float32-built module cast to
    float64, so Dense(1 + 1e-9) at x = 1 returned exactly 1."""
    from verispec.network import Dense

    net = Network((Dense([[1 + 1e-9]], [0.0]),), (1,))
    assert net.forward64(np.array([[1.0]]))[0, 0] == 1 + 1e-9
    assert net.module(torch.float64)[0].weight.dtype == torch.float64
    assert net.module(torch.float32)[0].weight.item() == 1.0  # float32 rounds, explicitly


def test_repr_is_a_short_summary_and_describe_full_keeps_the_weights() -> None:
    from hypothesis.vendor.pretty import pretty

    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    net = Network.from_torch(module, (64,))
    assert repr(net) == "Network(input (64,), 3 layers: dense, relu, dense; 10 classes)"
    assert len(str(net)) < 400 and "(64,) -> (128,)" in str(net)
    full = "\n".join(net.describe(full=True))
    first = float(net.layers[0].weight[0, 0])  # type: ignore[union-attr]
    assert repr(first) in full and len(full) > 100_000
    assert repr(first) in pretty(net)  # hypothesis prints drawn networks in full


def test_non_finite_weights_are_refused_naming_the_layer() -> None:
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.bias[0] = float("nan")
    with pytest.raises(UnsupportedLayerError, match=r"layer 1 \(Linear\).*NaN"):
        Network.from_torch(nn.Sequential(nn.ReLU(), layer), (2,))
