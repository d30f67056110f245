"""ONNX -> Network IR for feed-forward chains (the VNN-COMP benchmark networks).

``load_onnx(path)`` reads a model with the ``onnx`` package (the ``onnx`` extra) and converts a
single chain of supported nodes into a ``Network``; each op type has one handler in the op
table ``ONNX_OPS``. Fidelity: the IR computes the ONNX graph's real-valued function on its
float32/float64 constants. Elementwise maps by constants (Add, Sub, Mul, Div) are folded into
the preceding Dense/Conv layer only when the folded float64 values are exact (checked with
error-free transformations); otherwise they become exact IR layers: per-channel ``BatchNorm``
(x * scale + shift) or ``Normalize`` ((x - mean) / std, for Sub then Div). Only an elementwise
map that is not per-channel is folded into the *next* dense layer with float64 rounding (it has
no exact IR form). ``BatchNormalization`` becomes ``BatchNorm`` (scale and shift computed once
in float64). Anything else raises ``UnsupportedLayerError`` naming the file, the node and its
op type.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from verispec.errors import ExtraNotInstalledError, ModelFileError, UnsupportedLayerError
from verispec.network import (
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Dense,
    Flatten,
    GroupSort,
    Layer,
    Network,
    Normalize,
    ReLU,
    Shape,
)
from verispec.regions import FloatArray

SUPPORTED_OPS = (
    "Gemm, MatMul, Add, Sub, Mul, Div (by constants), Relu, Conv (dilation 1, group 1, symmetric "
    "pads), BatchNormalization (inference), AveragePool (pads 0), Flatten, Reshape, Identity, "
    "Dropout, Constant, and Transpose, Squeeze, Unsqueeze that only move unit dimensions"
)


@attrs.frozen(eq=False)
class _Affine:
    """Pending elementwise map x * scale + shift over the IR shape ``shape``; with ``std``
    (then ``scale`` is 1) the map is (x + shift) / std, exactly a ``Normalize``."""

    scale: FloatArray
    shift: FloatArray
    shape: Shape
    std: FloatArray | None = None

    def rounded(self) -> _Affine:
        """The x * scale + shift form (1 / std rounded to nearest once)."""
        if self.std is None:
            return self
        inv = 1.0 / self.std
        return _Affine(inv, self.shift * inv, self.shape)


_Item = Layer | _Affine


class _Converter:
    """Walks the node chain, keeping the ONNX shape (with batch) and the IR shape in step."""

    def __init__(self, path: str, consts: dict[str, FloatArray], oshape: Shape, batch: bool):
        self.path = path
        self.consts = consts
        self.oshape = oshape
        self.batch = batch
        self.shape: Shape = oshape[1:] if batch else oshape
        self.items: list[_Item] = []

    def fail(self, node: Any, why: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(
            f"{self.path}: node {node.name or '<unnamed>'!r} ({node.op_type}): {why}. "
            f"Supported: {SUPPORTED_OPS}"
        )

    def const(self, node: Any, name: str) -> FloatArray:
        if name not in self.consts:
            raise self.fail(node, f"operand {name!r} is not a constant")
        return self.consts[name]

    def reshape(self, node: Any, new_oshape: Shape) -> None:
        """A change of shape that keeps the data order."""
        if int(np.prod(new_oshape)) != int(np.prod(self.oshape)):
            raise self.fail(node, f"cannot reshape {self.oshape} to {new_oshape}")
        self.batch = len(new_oshape) > 1 and new_oshape[0] == 1
        new_shape = new_oshape[1:] if self.batch else new_oshape
        n = int(np.prod(new_shape))
        if len(self.shape) > 1 and new_shape != self.shape:
            if n != max(new_shape, default=1):
                raise self.fail(node, f"reshape {self.shape} -> {new_shape} is not a flatten")
            self.items.append(Flatten())
            self.shape = (n,)
        self.oshape = new_oshape

    def broadcast(self, node: Any, value: Any) -> FloatArray:
        """A constant operand broadcast to the chain tensor, in the IR shape."""
        try:
            full = np.broadcast_shapes(self.oshape, np.shape(value))
        except ValueError:
            raise self.fail(node, "constant does not broadcast to the input") from None
        if full != self.oshape:
            raise self.fail(node, f"constant broadcasts the input {self.oshape} to {full}")
        return np.broadcast_to(np.asarray(value, dtype=np.float64), full).reshape(self.shape)

    def affine(self, node: Any, scale: Any, shift: Any) -> None:
        """Apply x * scale + shift (constants broadcast against the chain tensor)."""
        s, t = self.broadcast(node, scale), self.broadcast(node, shift)
        last = self.items[-1] if self.items else None
        if isinstance(last, Dense):
            w, b = s[:, None] * last.weight, s * last.bias + t
            if _exact_mul(s[:, None], last.weight, w) and _exact_fma(s, last.bias, t, b):
                self.items[-1] = Dense(w, b)
                return
        elif isinstance(last, Conv2d) and _per_channel(s) and _per_channel(t):
            sc, tc = s[:, 0, 0], t[:, 0, 0]
            w, b = sc[:, None, None, None] * last.weight, sc * last.bias + tc
            if _exact_mul(sc[:, None, None, None], last.weight, w) and _exact_fma(
                sc, last.bias, tc, b
            ):
                self.items[-1] = Conv2d(w, b, last.stride, last.padding)
                return
        elif isinstance(last, _Affine) and last.std is None:
            scale2, shift2 = last.scale * s, last.shift * s + t
            if _exact_mul(last.scale, s, scale2) and _exact_fma(last.shift, s, t, shift2):
                self.items[-1] = _Affine(scale2, shift2, self.shape)
                return
        self.items.append(_Affine(s, t, self.shape))

    def divide(self, node: Any, divisor: Any) -> None:
        """Apply x / divisor: exact as (x - mean) / std after a pending shift, else a scale by
        the rounded reciprocal."""
        d = self.broadcast(node, divisor)
        if np.any(d == 0):
            raise self.fail(node, "division by zero")
        last = self.items[-1] if self.items else None
        if isinstance(last, _Affine) and last.std is None and np.all(last.scale == 1):
            self.items[-1] = _Affine(last.scale, last.shift, self.shape, std=d)
        elif not isinstance(last, _Affine | Dense | Conv2d):
            self.items.append(_Affine(np.ones(self.shape), np.zeros(self.shape), self.shape, std=d))
        else:
            self.affine(node, 1.0 / np.asarray(divisor, dtype=np.float64), 0.0)

    def dense(self, node: Any, weight: FloatArray, bias: FloatArray) -> None:
        """Append y = weight x + bias, folding a pending affine map into it."""
        n_in = weight.shape[1]
        if not self.oshape or self.oshape[-1] != n_in or int(np.prod(self.oshape)) != n_in:
            raise self.fail(node, f"input {self.oshape} is not a vector of {n_in} features")
        if self.shape != (n_in,) and int(np.prod(self.shape)) == n_in and len(self.shape) > 1:
            self.items.append(Flatten())
        # a pending elementwise map right before (or just before a Flatten): only one that is
        # not per-channel is folded in (it has no exact IR form; float64 rounding)
        at = None
        if self.items and isinstance(self.items[-1], _Affine):
            at = len(self.items) - 1
        elif (
            len(self.items) >= 2
            and isinstance(self.items[-1], Flatten)
            and isinstance(self.items[-2], _Affine)
        ):
            at = len(self.items) - 2
        pend = self.items[at] if at is not None else None
        if at is not None and isinstance(pend, _Affine) and not _channelwise(pend):
            del self.items[at]
            r = pend.rounded()
            s, t = r.scale.ravel(), r.shift.ravel()
            bias = bias + weight @ t
            weight = weight * s[None, :]
        self.items.append(Dense(weight, bias))
        self.shape = (weight.shape[0],)
        self.oshape = (*self.oshape[:-1], int(weight.shape[0]))

    def conv(self, node: Any, weight: FloatArray, bias: FloatArray, stride: Any, pad: Any) -> None:
        """Append a convolution (a pending elementwise map stays its own exact layer)."""
        self.push(node, Conv2d(weight, bias, stride, pad))

    def push(self, node: Any, layer: Conv2d | AvgPool2d) -> None:
        """Append an image layer, tracking the shape (errors name the node)."""
        try:
            self.shape = layer.output_shape(self.shape)
        except UnsupportedLayerError as err:
            raise self.fail(node, str(err)) from None
        self.items.append(layer)
        self.oshape = (1, *self.shape) if self.batch else self.shape

    def finish(self) -> list[Layer]:
        out: list[Layer] = []
        for item in self.items:
            if isinstance(item, _Affine):
                out.append(_channel_layer(item, self.path))
            else:
                out.append(item)
        return out


def _per_channel(a: FloatArray) -> bool:
    """Whether ``a`` (C, ...) is constant over every dimension but the first."""
    flat = a.reshape(a.shape[0], -1)
    return bool(np.all(flat == flat[:, :1]))


def _channelwise(aff: _Affine) -> bool:
    parts = [aff.scale, aff.shift] + ([aff.std] if aff.std is not None else [])
    return len(aff.shape) >= 1 and all(_per_channel(p) for p in parts)


def _channel_layer(aff: _Affine, path: str) -> Layer:
    """A per-channel pending map as an exact IR layer."""
    if not _channelwise(aff):
        raise UnsupportedLayerError(
            f"{path}: an elementwise affine map that is not per-channel cannot be folded into a "
            "neighbouring linear layer"
        )

    def per(a: FloatArray) -> FloatArray:
        return a.reshape(a.shape[0], -1)[:, 0] if a.ndim > 1 else a

    if aff.std is not None:
        return Normalize(-per(aff.shift), per(aff.std))
    return BatchNorm(per(aff.scale), per(aff.shift))


def _exact_mul(a: Any, b: Any, product: FloatArray) -> bool:
    """Whether every ``product = fl(a * b)`` is exact (Dekker's TwoProduct error is 0, no
    under- or overflow)."""
    a, b = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    if not (np.all(np.isfinite(product)) and np.all(np.abs(a) < 2.0**995)):
        return False
    if not np.all(np.abs(b) < 2.0**995):
        return False

    def split(x: FloatArray) -> tuple[FloatArray, FloatArray]:
        c = 134217729.0 * x
        hi = c - (c - x)
        return hi, x - hi

    ah, al = split(a)
    bh, bl = split(b)
    err = ((ah * bh - product) + ah * bl + al * bh) + al * bl
    tiny = (product != 0) & (np.abs(product) < 2.0**-960)
    lost = (product == 0) & (a != 0) & (b != 0)
    return bool(np.all(err == 0) and not tiny.any() and not lost.any())


def _exact_fma(a: FloatArray, b: FloatArray, t: FloatArray, result: FloatArray) -> bool:
    """Whether ``result = fl(fl(a * b) + t)`` is exact."""
    p = a * b
    if not _exact_mul(a, b, p):
        return False
    bb = result - p
    err = (p - (result - bb)) + (t - bb)
    return bool(np.all(np.isfinite(result)) and np.all(err == 0))


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def load_onnx(path: str | Path) -> Network:
    """Read an ONNX feed-forward chain as a ``Network`` (float64 weights)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ExtraNotInstalledError(
            "reading ONNX models needs the onnx package: pip install 'verispec[onnx]'"
        ) from None
    where = str(path)
    try:
        model = onnx.load(where)
    except Exception as err:
        raise ModelFileError(f"{where}: cannot read the ONNX model: {err}") from None
    graph = model.graph
    consts: dict[str, FloatArray] = {
        init.name: np.asarray(numpy_helper.to_array(init), dtype=np.float64)
        for init in graph.initializer
    }
    for name, value in consts.items():
        _require_finite(where, graph, name, value)
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise UnsupportedLayerError(
            f"{where}: the graph must have exactly one input and one output, it has "
            f"{len(inputs)} and {len(graph.output)}"
        )
    dims = [d.dim_value if d.dim_value > 0 else 1 for d in inputs[0].type.tensor_type.shape.dim]
    oshape: Shape = tuple(int(d) for d in dims)
    batch = len(oshape) > 1
    has_conv = any(n.op_type == "Conv" for n in graph.node)
    conv = _Converter(where, consts, oshape, batch)
    if not has_conv and len(conv.shape) > 1:
        conv.shape = (int(np.prod(conv.shape)),)
    input_shape = conv.shape
    chain = inputs[0].name
    used: set[str] = set()
    for node in graph.node:
        op = node.op_type
        if op == "Constant":
            at = node.attribute[0] if node.attribute else None
            if at is None or at.name != "value":
                raise conv.fail(node, "only Constant nodes with a tensor 'value' are supported")
            consts[node.output[0]] = np.asarray(numpy_helper.to_array(at.t), dtype=np.float64)
            _require_finite(where, graph, node.output[0], consts[node.output[0]])
            continue
        if op == "Identity" and len(node.input) == 1 and node.input[0] in consts:
            # an alias of a constant (torch's exporter writes one when two parameters of a
            # layer are equal, e.g. a fresh BatchNorm's weight and running variance)
            consts[node.output[0]] = consts[node.input[0]]
            continue
        live = [name for name in node.input if name == chain]
        if not live:
            raise conv.fail(node, "the graph is not a single chain (node off the main path)")
        if chain in used or len(live) > 1:
            raise conv.fail(node, "the graph branches: a tensor is used by more than one node")
        used.add(chain)
        try:
            _convert(conv, node, op, chain)
        except UnsupportedLayerError as err:
            if str(err).startswith(where):
                raise
            raise UnsupportedLayerError(
                f"{where}: node {node.name or '<unnamed>'!r} ({op}): {err}"
            ) from None
        chain = node.output[0]
    if chain != graph.output[0].name:
        raise UnsupportedLayerError(f"{where}: the node chain does not end at the graph output")
    try:
        return Network(conv.finish(), input_shape)
    except UnsupportedLayerError as err:
        raise UnsupportedLayerError(f"{where}: {err}") from None


def _require_finite(where: str, graph: Any, name: str, value: FloatArray) -> None:
    """Refuse a constant holding NaN or infinity, naming it and the nodes that use it."""
    if np.all(np.isfinite(value)):
        return
    users = [f"{n.name or '<unnamed>'!r} ({n.op_type})" for n in graph.node if name in n.input]
    used = f", used by node {', '.join(users)}" if users else ""
    bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
    raise UnsupportedLayerError(
        f"{where}: constant {name!r}{used} has {bad} NaN or infinite value(s): a network's "
        "weights must be finite numbers; export the model again"
    )


OpHandler = Callable[[_Converter, Any, str, dict[str, Any], list[str], str], None]
"""(converter, node, op type, attributes, inputs, chain tensor name) -> None."""

ONNX_OPS: dict[str, OpHandler] = {}
"""The ONNX import table: one handler per supported op type."""


def _handles(*ops: str) -> Callable[[OpHandler], OpHandler]:
    def add(fn: OpHandler) -> OpHandler:
        for name in ops:
            if name in ONNX_OPS:
                raise ValueError(f"ONNX op {name} has two handlers")
            ONNX_OPS[name] = fn
        return fn

    return add


@_handles("Identity", "Dropout")
def _op_identity(
    conv: _Converter, node: Any, op: str, at: dict[str, Any], ins: list[str], chain: str
) -> None:
    """The identity at inference time."""


@_handles("Relu")
def _op_relu(
    conv: _Converter, node: Any, op: str, at: dict[str, Any], ins: list[str], chain: str
) -> None:
    conv.items.append(ReLU())


@_handles("Add", "Sub", "Mul", "Div")
def _op_elementwise(
    conv: _Converter, node: Any, op: str, at: dict[str, Any], ins: list[str], chain: str
) -> None:
    first = ins[0] == chain
    c = conv.const(node, ins[1] if first else ins[0])
    if op == "Add":
        conv.affine(node, 1.0, c)
    elif op == "Mul":
        conv.affine(node, c, 0.0)
    elif op == "Sub":
        if first:
            conv.affine(node, 1.0, -c)
        else:
            conv.affine(node, -1.0, c)
    elif first:
        conv.divide(node, c)
    else:
        raise conv.fail(node, "division by the input is not affine")


@_handles("Flatten")
def _op_flatten(
    conv: _Converter, node: Any, op: str, at: dict[str, Any], ins: list[str], chain: str
) -> None:
    axis = int(at.get("axis", 1))
    axis = axis + len(conv.oshape) if axis < 0 else axis
    new = (int(np.prod(conv.oshape[:axis])), int(np.prod(conv.oshape[axis:])))
    conv.reshape(node, new)


@_handles("Reshape")
def _op_reshape(
    conv: _Converter, node: Any, op: str, at: dict[str, Any], ins: list[str], chain: str
) -> None:
    target = [int(v) for v in conv.const(node, ins[1]).ravel()]
    target = [conv.oshape[i] if v == 0 else v for i, v in enumerate(target)]
    if -1 in target:
        rest = int(np.prod([v for v in target if v != -1]))
        target[target.index(-1)] = int(np.prod(conv.oshape)) // max(rest, 1)
    conv.reshape(node, tuple(target))


@_handles("Squeeze", "Unsqueeze")
def _op_squeeze(
    conv: _Converter, node: Any, op: str, at: dict[str, Any], ins: list[str], chain: str
) -> None:
    axes_v = at.get("axes")
    if axes_v is None and len(ins) > 1:
        axes_v = [int(v) for v in conv.const(node, ins[1]).ravel()]
    conv.reshape(node, _squeeze(conv.oshape, axes_v, op == "Squeeze"))


@_handles("Transpose")
def _op_transpose(
    conv: _Converter, node: Any, op: str, at: dict[str, Any], ins: list[str], chain: str
) -> None:
    perm = [int(p) for p in at.get("perm", range(len(conv.oshape) - 1, -1, -1))]
    moved = [p for p in perm if conv.oshape[p] != 1]
    if moved != sorted(moved):
        raise conv.fail(node, "only transposes that move unit dimensions are supported")
    conv.reshape(node, tuple(conv.oshape[p] for p in perm))


@_handles("MatMul")
def _op_matmul(
    conv: _Converter, node: Any, op: str, at: dict[str, Any], ins: list[str], chain: str
) -> None:
    if ins[0] == chain:
        w = conv.const(node, ins[1])
        if w.ndim != 2:
            raise conv.fail(node, "weight must be a matrix")
        conv.dense(node, w.T.copy(), np.zeros(w.shape[1]))
    else:
        w = conv.const(node, ins[0])
        if w.ndim != 2 or len(conv.oshape) != 1:
            raise conv.fail(node, "W @ x needs a matrix W and an unbatched vector x")
        conv.dense(node, w.copy(), np.zeros(w.shape[0]))


@_handles("Gemm")
def _op_gemm(
    conv: _Converter, node: Any, op: str, at: dict[str, Any], ins: list[str], chain: str
) -> None:
    if ins[0] != chain or int(at.get("transA", 0)):
        raise conv.fail(node, "the input must be operand A, not transposed")
    b = conv.const(node, ins[1])
    b = b.T if int(at.get("transB", 0)) else b
    alpha, beta = float(at.get("alpha", 1.0)), float(at.get("beta", 1.0))
    c = conv.const(node, ins[2]) if len(ins) > 2 and ins[2] else np.zeros(b.shape[1])
    bias = beta * np.broadcast_to(c, (1, b.shape[1]))[0]
    conv.dense(node, alpha * b.T, bias.copy())


@_handles("Conv")
def _op_conv(
    conv: _Converter, node: Any, op: str, at: dict[str, Any], ins: list[str], chain: str
) -> None:
    w = conv.const(node, ins[1])
    bias = conv.const(node, ins[2]) if len(ins) > 2 and ins[2] else np.zeros(w.shape[0])
    if w.ndim != 4 or int(at.get("group", 1)) != 1:
        raise conv.fail(node, "only 2-D convolutions with group 1 are supported")
    if any(int(d) != 1 for d in at.get("dilations", [1, 1])):
        raise conv.fail(node, "dilation must be 1")
    auto = at.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto not in ("NOTSET", "VALID"):
        raise conv.fail(node, f"auto_pad {auto} is not supported")
    pads = [int(p) for p in at.get("pads", [0, 0, 0, 0])]
    if pads[0] != pads[2] or pads[1] != pads[3]:
        raise conv.fail(node, f"asymmetric pads {pads}")
    stride = tuple(int(s) for s in at.get("strides", [1, 1]))
    conv.conv(node, w, bias, stride, (pads[0], pads[1]))


@_handles("BatchNormalization")
def _op_batchnormalization(
    conv: _Converter, node: Any, op: str, at: dict[str, Any], ins: list[str], chain: str
) -> None:
    if ins[0] != chain or int(at.get("training_mode", 0)) or any(node.output[1:]):
        raise conv.fail(node, "only inference-mode batch normalisation of the input")
    gamma, beta, mean, var = (conv.const(node, name) for name in ins[1:5])
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = gamma / np.sqrt(var + float(at.get("epsilon", 1e-5)))
    if not np.all(np.isfinite(scale)):
        raise conv.fail(node, "input_var + epsilon must be positive")
    layer = BatchNorm(scale.ravel(), (beta - mean * scale).ravel())
    try:
        layer.output_shape(conv.shape)
    except UnsupportedLayerError as err:
        raise conv.fail(node, str(err)) from None
    conv.items.append(layer)


@_handles("AveragePool")
def _op_averagepool(
    conv: _Converter, node: Any, op: str, at: dict[str, Any], ins: list[str], chain: str
) -> None:
    pads = [int(p) for p in at.get("pads", [0, 0, 0, 0])]
    if any(pads) or int(at.get("ceil_mode", 0)):
        raise conv.fail(node, "AveragePool needs pads 0 and ceil_mode 0")
    kernel = tuple(int(k) for k in at["kernel_shape"])
    conv.push(node, AvgPool2d(kernel, tuple(int(s) for s in at.get("strides", kernel))))


ONNX_PRODUCES: dict[type, tuple[str, ...]] = {
    Dense: ("Gemm", "MatMul"),
    Conv2d: ("Conv",),
    ReLU: ("Relu",),
    Flatten: ("Flatten", "Reshape"),
    Normalize: ("Div",),
    BatchNorm: ("BatchNormalization", "Add", "Sub", "Mul"),
    AvgPool2d: ("AveragePool",),
    GroupSort: (),  # no standard ONNX operator sorts groups of channels: never imported
}
"""Which ONNX ops produce each IR layer type (checked for completeness in tests/test_rules.py)."""


def _convert(conv: _Converter, node: Any, op: str, chain: str) -> None:
    """Apply one node to the converter state through its handler in ``ONNX_OPS``."""
    handler = ONNX_OPS.get(op)
    if handler is None:
        raise conv.fail(node, "unsupported operator")
    handler(conv, node, op, _attrs(node), list(node.input), chain)


def _squeeze(shape: Shape, axes: Any, squeeze: bool) -> Shape:
    """The shape after (Un)Squeeze with ``axes`` (None: every unit dimension for Squeeze)."""
    if squeeze:
        if axes is None:
            return tuple(d for d in shape if d != 1)
        ax = {int(a) % len(shape) for a in axes}
        return tuple(d for i, d in enumerate(shape) if i not in ax)
    out = list(shape)
    n = len(shape) + len(axes)
    for a in sorted(int(a) % n for a in axes):
        out.insert(a, 1)
    return tuple(out)
