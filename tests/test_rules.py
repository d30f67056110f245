"""Every IR layer type has a rule in every algorithm's table, and each rule agrees with the
layer's float64 semantics (the layer is the unit of extension: verispec/rules.py)."""

from __future__ import annotations

from fractions import Fraction

import attrs
import numpy as np
import pytest
import torch
from verispec.solvers.lowering import LOWERING, lower

from verispec.engines.lipschitz_bounds import LIPSCHITZ, layer_bounds, network_lipschitz
from verispec.engines.roundoff import ROUNDOFF, RoundoffForward
from verispec.errors import UnsupportedLayerError
from verispec.exact_forward import EXACT_FORWARD, exact_logits
from verispec.float_error import FLOAT_ERROR, float_logits
from verispec.ir import (
    LAYER_TYPES,
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Dense,
    Flatten,
    GroupSort,
    Layer,
    Normalize,
    ReLU,
    fields,
)
from verispec.modelfile import CODECS, load_model, save_model
from verispec.network import TORCH_IMPORT, Network, layer_from_torch
from verispec.onnx import ONNX_OPS, ONNX_PRODUCES
from verispec.regions import Norm
from verispec.rules import RuleTable
from verispec.torch_forward import TORCH_FORWARD, layer_module

RNG = np.random.default_rng(0)

SAMPLES: dict[type, tuple[Layer, tuple[int, ...]]] = {
    Dense: (Dense(RNG.normal(size=(3, 4)), RNG.normal(size=3)), (4,)),
    Conv2d: (Conv2d(RNG.normal(size=(2, 1, 2, 2)), RNG.normal(size=2), 1, 1), (1, 3, 3)),
    ReLU: (ReLU(), (4,)),
    GroupSort: (GroupSort(2), (4,)),
    Flatten: (Flatten(), (2, 2, 2)),
    Normalize: (Normalize([0.1, 0.2], [0.5, 0.3]), (2, 3, 3)),
    BatchNorm: (BatchNorm([1.5, -0.3], [0.2, 0.1]), (2, 3, 3)),
    AvgPool2d: (AvgPool2d(2, 1), (1, 3, 3)),
}

TABLES: list[RuleTable] = [
    TORCH_FORWARD,
    CODECS,
    LIPSCHITZ,
    ROUNDOFF,
    LOWERING,
    EXACT_FORWARD,
    FLOAT_ERROR,
]


def _net(layer_type: type) -> Network:
    """The sample layer, flattened, then a dense head: a valid network for every table."""
    layer, shape = SAMPLES[layer_type]
    out = layer.output_shape(shape)
    size = int(np.prod(out))
    body = [layer] if len(out) == 1 else [layer, Flatten()]
    return Network((*body, Dense(RNG.normal(size=(3, size)), RNG.normal(size=3))), shape)


def test_samples_cover_every_layer_type():
    assert set(SAMPLES) == set(LAYER_TYPES.values())


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.algorithm)
def test_every_table_covers_every_layer_type(table: RuleTable):
    assert table.missing(LAYER_TYPES.values()) == []


@attrs.frozen
class _Unknown:
    kind = "unknown"

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.algorithm)
def test_a_layer_without_a_rule_raises_naming_the_algorithm(table: RuleTable):
    with pytest.raises(UnsupportedLayerError, match=table.algorithm):
        table.rule(_Unknown(), "7")


def test_a_network_with_an_unknown_layer_is_refused_everywhere():
    net = Network((_Unknown(), Dense(np.eye(2), np.zeros(2))), (2,))
    for run in (
        lambda: net.forward64(np.zeros((1, 2))),
        lambda: network_lipschitz(net, Norm.L2),
        lambda: RoundoffForward(net, [1.0, 1.0], torch.float32, torch.device("cpu")),
        lambda: lower(net),
    ):
        with pytest.raises(UnsupportedLayerError, match="unknown"):
            run()


def test_a_registered_type_cannot_get_a_second_rule():
    table: RuleTable[int] = RuleTable("test")
    table.register(Dense)(1)
    with pytest.raises(ValueError, match="two rules"):
        table.register(Dense)(2)


@pytest.mark.parametrize("layer_type", list(SAMPLES), ids=lambda t: t.__name__)
def test_torch_import_inverts_torch_forward(layer_type: type):
    layer, _ = SAMPLES[layer_type]
    module = layer_module(layer, torch.float64, torch.device("cpu"))
    back = layer_from_torch(module, "0")
    assert back is not None and type(back) is layer_type
    for (name, a), b in zip(fields(layer).items(), fields(back).values(), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


def test_every_torch_import_produces_a_known_layer():
    assert TORCH_IMPORT.covers() >= {
        type(layer_module(s, torch.float64, torch.device("cpu"))) for s, _ in SAMPLES.values()
    }


def test_onnx_table_states_what_produces_each_layer_type():
    assert set(ONNX_PRODUCES) == set(LAYER_TYPES.values())
    for ops in ONNX_PRODUCES.values():
        assert set(ops) <= set(ONNX_OPS)


@pytest.mark.parametrize("layer_type", list(SAMPLES), ids=lambda t: t.__name__)
def test_model_file_round_trip(layer_type: type, tmp_path):
    net = _net(layer_type)
    save_model(net, tmp_path / "m.pt")
    back, _ = load_model(tmp_path / "m.pt")
    assert back.fingerprint() == net.fingerprint()


@pytest.mark.parametrize("layer_type", list(SAMPLES), ids=lambda t: t.__name__)
def test_lowering_computes_the_float64_forward(layer_type: type):
    net = _net(layer_type)
    xs = RNG.uniform(-2, 2, size=(16, *net.input_shape))
    np.testing.assert_allclose(
        lower(net).forward(xs.reshape(16, -1)), net.forward64(xs), rtol=1e-13, atol=1e-13
    )


@pytest.mark.parametrize("layer_type", list(SAMPLES), ids=lambda t: t.__name__)
def test_lipschitz_bound_covers_the_exact_operator_norm(layer_type: type):
    """Linear layers: the bound is >= the exact l2 norm of the explicit operator (and within
    a factor 1 + 1e-5 of it for dense, conv, Normalize and BatchNorm); every layer: >= sampled
    difference quotients."""
    layer, shape = SAMPLES[layer_type]
    out = layer.output_shape(shape)
    size = int(np.prod(out))
    net = Network((layer, Flatten()) if len(out) > 1 else (layer,), shape)
    bound = layer_bounds(net, 1, fold=False)[0]
    lowered = lower(net)
    if lowered.depth == 1:  # a linear layer: its exact operator norm
        exact = float(np.linalg.svd(lowered.weights[0], compute_uv=False)[0])
        assert exact <= bound.l2
        if layer_type is not AvgPool2d:  # pooling uses an input-size-free (Schur) bound
            assert bound.l2 <= exact * (1 + 1e-5)
    x = RNG.normal(size=(256, *shape))
    dx = RNG.normal(size=(256, *shape)) * 1e-3
    diff = net.forward64(x + dx) - net.forward64(x)
    ratio = np.linalg.norm(diff.reshape(256, size), axis=1) / np.linalg.norm(
        dx.reshape(256, -1), axis=1
    )
    assert np.all(ratio <= bound.l2 * (1 + 1e-9))


@pytest.mark.parametrize("layer_type", list(SAMPLES), ids=lambda t: t.__name__)
def test_roundoff_bound_covers_the_float32_error(layer_type: type):
    net = _net(layer_type)
    lips = [b.l2 for b in layer_bounds(net, len(net.layers), fold=False)]
    forward = RoundoffForward(net, lips, torch.float32, torch.device("cpu"))
    xs = RNG.uniform(-2, 2, size=(64, *net.input_shape))
    logits, err = forward(xs)
    actual = np.linalg.norm(logits - net.forward64(xs), axis=1)
    assert np.all(actual <= err)
    # and it is not vacuous: within ~10^4 float32 ulps of the logits' scale
    assert np.all(err < 1e-3 * (1 + np.linalg.norm(logits, axis=1)))


@pytest.mark.parametrize("layer_type", list(SAMPLES), ids=lambda t: t.__name__)
def test_exact_forward_is_the_float64_forward_without_rounding(layer_type: type):
    net = _net(layer_type)
    xs = RNG.uniform(-2, 2, size=(3, *net.input_shape))
    for x, y in zip(xs, net.forward64(xs), strict=True):
        exact = np.array([float(v) for v in exact_logits(net, x)])
        np.testing.assert_allclose(exact, y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer_type", list(SAMPLES), ids=lambda t: t.__name__)
def test_float_error_bounds_the_float64_pass_against_exact_arithmetic(layer_type: type):
    net = _net(layer_type)
    for x in RNG.uniform(-2, 2, size=(3, *net.input_shape)):
        y, err = float_logits(net, x)
        exact = exact_logits(net, x)
        np.testing.assert_allclose(y, net.forward64(x[None])[0], rtol=1e-12, atol=1e-12)
        for a, b, e in zip(y, exact, err, strict=True):
            assert abs(Fraction(a) - b) <= Fraction(e)
        assert np.all(err < 1e-12 * (1 + np.abs(y)))  # and it is not vacuous
