"""ONNX import: outputs match onnxruntime on the VNN-COMP 2021 networks; bad graphs are named."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from verispec.errors import ExtraNotInstalledError, ModelFileError, UnsupportedLayerError
from verispec.network import BatchNorm, Conv2d, Dense, Normalize

onnx = pytest.importorskip("onnx", reason="needs the onnx package (pip install 'verispec[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the test oracle")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from verispec.onnx import _exact_fma, _exact_mul, load_onnx  # noqa: E402
from verispec.vnnlib import parse_vnnlib  # noqa: E402

BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks" / "vnncomp2021"
needs_bench = pytest.mark.skipif(
    not BENCH.is_dir(), reason=f"VNN-COMP 2021 benchmarks not found at {BENCH}"
)

CASES = [
    ("test/test_nano.onnx", "test/test_nano.vnnlib"),
    ("test/test_tiny.onnx", "test/test_tiny.vnnlib"),
    ("test/test_small.onnx", "test/test_small.vnnlib"),
    ("test/test_sat.onnx", "test/test_prop.vnnlib"),
    ("test/test_unsat.onnx", "test/test_prop.vnnlib"),
    ("acasxu/ACASXU_run2a_1_1_batch_2000.onnx", "acasxu/prop_1.vnnlib"),
    ("acasxu/ACASXU_run2a_2_7_batch_2000.onnx", "acasxu/prop_7.vnnlib"),
    ("acasxu/ACASXU_run2a_5_9_batch_2000.onnx", "acasxu/prop_3.vnnlib"),
    ("mnistfc/mnist-net_256x2.onnx", "mnistfc/prop_0_0.03.vnnlib"),
    ("mnistfc/mnist-net_256x4.onnx", "mnistfc/prop_1_0.05.vnnlib"),
    ("mnistfc/mnist-net_256x6.onnx", "mnistfc/prop_2_0.03.vnnlib"),
]


def _run_ort(path: str | bytes, xs: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    return np.stack(
        [
            np.asarray(sess.run(None, {inp.name: x.reshape(shape).astype(np.float32)})[0]).ravel()
            for x in xs
        ]
    )


def _check(path: str | bytes, net, xs: np.ndarray) -> None:
    ref = _run_ort(path, xs)
    got = net.forward64(xs.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@needs_bench
@pytest.mark.parametrize(("model", "prop"), CASES, ids=[c[0].split("/")[-1] for c in CASES])
def test_matches_onnxruntime(model: str, prop: str) -> None:
    net = load_onnx(BENCH / model)
    n_in = net.input_size
    spec = parse_vnnlib(BENCH / prop, n_in, net.num_classes)
    box = spec.boxes[0]
    rng = np.random.default_rng(0)
    xs = rng.uniform(box.lo, box.hi, size=(8, n_in))
    _check(str(BENCH / model), net, xs)


@needs_bench
def test_shapes_and_input_folding() -> None:
    acas = load_onnx(BENCH / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx")
    assert acas.input_shape == (5,)
    assert acas.num_classes == 5
    # the Sub of the mean is per-feature: it stays an exact layer (x * 1 - mean), it is not
    # folded into the first Dense with float64 rounding
    first = acas.layers[0]
    assert isinstance(first, BatchNorm) and np.all(first.scale == 1.0)
    assert {layer.kind for layer in acas.layers[1:]} == {"dense", "relu"}
    mnist = load_onnx(BENCH / "mnistfc" / "mnist-net_256x2.onnx")
    assert mnist.input_shape == (784,)
    assert mnist.num_classes == 10


def _model(nodes, inits, in_shape, out_shape) -> bytes:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=[
            numpy_helper.from_array(v.astype(np.float32) if v.dtype.kind == "f" else v, k)
            for k, v in inits.items()
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every supported onnxruntime
    return model.SerializeToString()


def _save(tmp_path: Path, data: bytes, name: str = "m.onnx") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_unsupported_op_names_the_node(tmp_path: Path) -> None:
    w = np.ones((3, 2))
    data = _model(
        [
            helper.make_node("Gemm", ["x", "w"], ["h"], name="fc1", transB=1),
            helper.make_node("Tanh", ["h"], ["y"], name="squash"),
        ],
        {"w": w},
        [1, 2],
        [1, 3],
    )
    path = _save(tmp_path, data)
    with pytest.raises(UnsupportedLayerError, match=r"squash.*Tanh") as info:
        load_onnx(path)
    assert str(path) in str(info.value)


def test_branching_graph_rejected(tmp_path: Path) -> None:
    data = _model(
        [
            helper.make_node("Relu", ["x"], ["a"], name="r1"),
            helper.make_node("Relu", ["x"], ["b"], name="r2"),
            helper.make_node("Add", ["a", "b"], ["y"], name="join"),
        ],
        {},
        [1, 2],
        [1, 2],
    )
    with pytest.raises(UnsupportedLayerError, match="r2"):
        load_onnx(_save(tmp_path, data))


def test_non_constant_operand_rejected(tmp_path: Path) -> None:
    data = _model(
        [
            helper.make_node("Relu", ["x"], ["a"], name="r1"),
            helper.make_node("Mul", ["a", "z"], ["y"], name="mul"),
        ],
        {},
        [1, 2],
        [1, 2],
    )
    with pytest.raises(UnsupportedLayerError, match=r"mul.*Mul"):
        load_onnx(_save(tmp_path, data))


def test_normalize_conv_gemm_chain(tmp_path: Path) -> None:
    """Per-channel Sub/Div before a padded Conv -> Normalize; Constant/Reshape/Gemm after."""
    rng = np.random.default_rng(1)
    mean = np.array([0.1, 0.2]).reshape(1, 2, 1, 1)
    std = np.array([0.5, 2.0]).reshape(1, 2, 1, 1)
    cw, cb = rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3)
    gw, gb = rng.normal(size=(4, 3 * 3 * 3)), rng.normal(size=4)
    shape = numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape_value")
    data = _model(
        [
            helper.make_node("Sub", ["x", "mean"], ["a"], name="sub"),
            helper.make_node("Div", ["a", "std"], ["b"], name="div"),
            helper.make_node(
                "Conv", ["b", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]
            ),
            helper.make_node("Relu", ["c"], ["d"], name="relu"),
            helper.make_node("Constant", [], ["shape"], name="k", value=shape),
            helper.make_node("Reshape", ["d", "shape"], ["e"], name="flat"),
            helper.make_node("Gemm", ["e", "gw", "gb"], ["f"], name="fc", transB=1, alpha=0.5),
            helper.make_node("Mul", ["f", "two"], ["y"], name="scale"),
        ],
        {"mean": mean, "std": std, "cw": cw, "cb": cb, "gw": gw, "gb": gb, "two": np.array(2.0)},
        [1, 2, 5, 5],
        [1, 4],
    )
    path = _save(tmp_path, data)
    net = load_onnx(path)
    assert net.input_shape == (2, 5, 5)
    assert isinstance(net.layers[0], Normalize)
    assert isinstance(net.layers[1], Conv2d)
    assert isinstance(net.layers[-1], Dense)
    xs = rng.uniform(0, 1, size=(5, 2, 5, 5))
    _check(str(path), net, xs)


def test_unpadded_conv_keeps_normalisation_exact(tmp_path: Path) -> None:
    """A Sub before a Conv stays an exact layer (x - 0.3); MatMul + Add fold exactly."""
    rng = np.random.default_rng(2)
    cw, cb = rng.normal(size=(2, 1, 2, 2)), rng.normal(size=2)
    data = _model(
        [
            helper.make_node("Sub", ["x", "mean"], ["a"], name="sub"),
            helper.make_node("Conv", ["a", "cw", "cb"], ["c"], name="conv"),
            helper.make_node("Flatten", ["c"], ["d"], name="flat"),
            helper.make_node("MatMul", ["d", "w"], ["e"], name="mm"),
            helper.make_node("Add", ["e", "b"], ["y"], name="add"),
        ],
        {
            "mean": np.array(0.3),
            "cw": cw,
            "cb": cb,
            "w": rng.normal(size=(2 * 2 * 2, 3)),
            "b": rng.normal(size=3),
        },
        [1, 1, 3, 3],
        [1, 3],
    )
    path = _save(tmp_path, data)
    net = load_onnx(path)
    assert [layer.kind for layer in net.layers] == ["batchnorm", "conv2d", "flatten", "dense"]
    _check(str(path), net, rng.uniform(-1, 1, size=(4, 1, 3, 3)))


def test_trivial_shape_ops_fold(tmp_path: Path) -> None:
    """Identity, Unsqueeze/Squeeze and a unit-moving Transpose around Gemm/MatMul layers."""
    rng = np.random.default_rng(3)
    data = _model(
        [
            helper.make_node("Identity", ["x"], ["a"], name="id"),
            helper.make_node("Unsqueeze", ["a", "ax"], ["b"], name="unsq"),
            helper.make_node("Transpose", ["b"], ["c"], name="tr", perm=[0, 2, 1]),
            helper.make_node("Squeeze", ["c", "ax2"], ["d"], name="sq"),
            helper.make_node("Mul", ["d", "s"], ["e"], name="scale_in"),
            helper.make_node("Gemm", ["e", "w1", "b1"], ["f"], name="fc1"),
            helper.make_node("Relu", ["f"], ["g"], name="relu"),
            helper.make_node("Sub", ["k", "g"], ["h"], name="flip"),
            helper.make_node("Relu", ["h"], ["i"], name="relu2"),
            helper.make_node("Add", ["i", "k"], ["j"], name="shift"),
            helper.make_node("MatMul", ["j", "w2"], ["y"], name="fc2"),
        ],
        {
            "ax": np.array([2], dtype=np.int64),
            "ax2": np.array([1], dtype=np.int64),
            "s": rng.uniform(0.5, 2, size=3),
            "w1": rng.normal(size=(3, 4)),
            "b1": rng.normal(size=4),
            "k": rng.normal(size=4),
            "w2": rng.normal(size=(4, 2)),
        },
        [1, 3],
        [1, 2],
    )
    path = _save(tmp_path, data)
    net = load_onnx(path)
    assert net.input_shape == (3,)
    _check(str(path), net, rng.uniform(-2, 2, size=(6, 3)))


def test_real_transpose_rejected(tmp_path: Path) -> None:
    data = _model(
        [helper.make_node("Transpose", ["x"], ["y"], name="swap", perm=[0, 2, 1])],
        {},
        [1, 2, 3],
        [1, 3, 2],
    )
    with pytest.raises(UnsupportedLayerError, match=r"swap.*Transpose"):
        load_onnx(_save(tmp_path, data))


def test_missing_extra_and_bad_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match=r"bad\.onnx"):
        load_onnx(bad)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ExtraNotInstalledError, match=r"verispec\[onnx\]"):
        load_onnx(bad)


def test_batch_normalization_becomes_batchnorm(tmp_path: Path) -> None:
    """Conv -> BatchNormalization -> Relu -> Flatten -> Gemm agrees with onnxruntime, and the
    batch norm is one exact per-channel layer."""
    rng = np.random.default_rng(7)
    cw, cb = rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3)
    gamma, beta = rng.uniform(0.5, 2, size=3), rng.normal(size=3)
    mean, var = rng.normal(size=3), rng.uniform(0.1, 3, size=3)
    data = _model(
        [
            helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node(
                "BatchNormalization", ["c", "g", "be", "mu", "var"], ["n"], name="bn", epsilon=1e-3
            ),
            helper.make_node("Relu", ["n"], ["r"], name="relu"),
            helper.make_node("Flatten", ["r"], ["f"], name="flat"),
            helper.make_node("Gemm", ["f", "gw", "gb"], ["y"], name="fc", transB=1),
        ],
        {
            "cw": cw,
            "cb": cb,
            "g": gamma,
            "be": beta,
            "mu": mean,
            "var": var,
            "gw": rng.normal(size=(4, 3 * 4 * 4)),
            "gb": rng.normal(size=4),
        },
        [1, 2, 4, 4],
        [1, 4],
    )
    path = _save(tmp_path, data)
    net = load_onnx(path)
    assert [layer.kind for layer in net.layers] == [
        "conv2d",
        "batchnorm",
        "relu",
        "flatten",
        "dense",
    ]
    bn = net.layers[1]
    assert isinstance(bn, BatchNorm)
    g32, v32 = (
        gamma.astype(np.float32).astype(np.float64),
        var.astype(np.float32).astype(np.float64),
    )
    np.testing.assert_array_equal(bn.scale, g32 / np.sqrt(v32 + float(np.float32(1e-3))))
    _check(str(path), net, rng.uniform(-1, 1, size=(6, 2, 4, 4)))


def test_training_mode_batch_normalization_rejected(tmp_path: Path) -> None:
    ones = np.ones(2)
    data = _model(
        [
            helper.make_node(
                "BatchNormalization",
                ["x", "g", "b", "m", "v"],
                ["y", "rm", "rv"],
                name="bn",
                training_mode=1,
            )
        ],
        {"g": ones, "b": ones, "m": ones, "v": ones},
        [1, 2],
        [1, 2],
    )
    with pytest.raises(UnsupportedLayerError, match=r"bn.*inference"):
        load_onnx(_save(tmp_path, data))


def test_sub_then_div_is_exactly_normalize(tmp_path: Path) -> None:
    """(x - mean) / std keeps the file's constants: no reciprocal is rounded."""
    mean, std = np.array([0.1307]), np.array([0.3081])
    data = _model(
        [
            helper.make_node("Sub", ["x", "mean"], ["a"], name="sub"),
            helper.make_node("Div", ["a", "std"], ["b"], name="div"),
            helper.make_node("MatMul", ["b", "w"], ["y"], name="mm"),
        ],
        {"mean": mean, "std": std, "w": np.eye(3)},
        [1, 3],
        [1, 3],
    )
    net = load_onnx(_save(tmp_path, data))
    norm = net.layers[0]
    assert isinstance(norm, Normalize)
    assert norm.mean[0] == float(np.float32(0.1307)) and norm.std[0] == float(np.float32(0.3081))


def test_exactness_checks_of_folds() -> None:
    a = np.array([1.0 + 2.0**-30])
    assert not _exact_mul(a, a, a * a)  # needs 61 bits
    f32 = np.array([float(np.float32(0.1))])
    assert _exact_mul(f32, f32, f32 * f32)  # 24 x 24 bits fit in 53
    assert _exact_fma(np.array([3.0]), np.array([0.5]), np.array([0.25]), np.array([1.75]))
    big, small = np.array([1.0]), np.array([2.0**-60])
    assert not _exact_fma(big, big, small, big * big + small)  # the add rounds
    assert not _exact_mul(np.array([2.0**-600]), np.array([2.0**-600]), np.array([0.0]))


def test_a_fresh_batchnorm_exported_by_torch_loads(tmp_path):
    """torch's exporter writes Identity aliases of constants when a fresh BatchNorm's weight
    equals its running variance (and bias its mean); they were refused as "off the main
    path". The network must load and agree with torch in float64."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).eval()
    path = tmp_path / "fresh_bn.onnx"
    torch.onnx.export(model, (torch.zeros(1, 4),), str(path), dynamo=False)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Identity" in ops  # the case this test is about
    net = load_onnx(path)
    x = np.random.default_rng(0).uniform(size=(5, 4))
    with torch.no_grad():
        want = model.double()(torch.from_numpy(x)).numpy()
    assert np.allclose(net.forward64(x), want, rtol=1e-12, atol=1e-12)
