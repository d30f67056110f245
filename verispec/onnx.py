"""ONNX -> Network IR for feed-forward chains (the VNN-COMP benchmark networks).

``load_onnx(path)`` reads a model with the ``onnx`` package (the ``onnx`` extra) and converts a
single chain of supported nodes into a ``Network``. Elementwise affine maps by constants (Add,
Sub, Mul, Div) are folded into the neighbouring Dense/Conv layer when exact, otherwise emitted as
a per-channel ``Normalize`` layer. Anything else raises ``UnsupportedLayerError`` naming the file,
the node and its op type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np

from verispec.errors import ExtraNotInstalledError, ModelFileError, UnsupportedLayerError
from verispec.network import (
    AvgPool2d,
    Conv2d,
    Dense,
    Flatten,
    Layer,
    Network,
    Normalize,
    ReLU,
    Shape,
)
from verispec.regions import FloatArray

SUPPORTED_OPS = (
    "Gemm, MatMul, Add, Sub, Mul, Div (by constants), Relu, Conv (dilation 1, group 1, symmetric "
    "pads), AveragePool (pads 0), Flatten, Reshape, Identity, Dropout, Constant, and Transpose, "
    "Squeeze, Unsqueeze that only move unit dimensions"
)


@attrs.frozen(eq=False)
class _Affine:
    """Pending elementwise map x * scale + shift over the IR shape ``shape``."""

    scale: FloatArray
    shift: FloatArray
    shape: Shape


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

    def affine(self, node: Any, scale: Any, shift: Any) -> None:
        """Apply x * scale + shift (constants broadcast against the chain tensor)."""
        try:
            full = np.broadcast_shapes(self.oshape, np.shape(scale), np.shape(shift))
        except ValueError:
            raise self.fail(node, "constant does not broadcast to the input") from None
        if full != self.oshape:
            raise self.fail(node, f"constant broadcasts the input {self.oshape} to {full}")
        s = np.broadcast_to(np.asarray(scale, dtype=np.float64), full).reshape(self.shape)
        t = np.broadcast_to(np.asarray(shift, dtype=np.float64), full).reshape(self.shape)
        last = self.items[-1] if self.items else None
        if isinstance(last, Dense):
            self.items[-1] = Dense(s[:, None] * last.weight, s * last.bias + t)
        elif isinstance(last, Conv2d) and _per_channel(s) and _per_channel(t):
            sc, tc = s[:, 0, 0], t[:, 0, 0]
            self.items[-1] = Conv2d(
                sc[:, None, None, None] * last.weight,
                sc * last.bias + tc,
                last.stride,
                last.padding,
            )
        elif isinstance(last, _Affine):
            self.items[-1] = _Affine(last.scale * s, last.shift * s + t, self.shape)
        else:
            self.items.append(_Affine(s, t, self.shape))

    def dense(self, node: Any, weight: FloatArray, bias: FloatArray) -> None:
        """Append y = weight x + bias, folding a pending affine map into it."""
        n_in = weight.shape[1]
        if not self.oshape or self.oshape[-1] != n_in or int(np.prod(self.oshape)) != n_in:
            raise self.fail(node, f"input {self.oshape} is not a vector of {n_in} features")
        if self.shape != (n_in,) and int(np.prod(self.shape)) == n_in and len(self.shape) > 1:
            self.items.append(Flatten())
        pend = None
        if self.items and isinstance(self.items[-1], _Affine):
            pend = self.items.pop()
        elif (
            len(self.items) >= 2
            and isinstance(self.items[-1], Flatten)
            and isinstance(self.items[-2], _Affine)
        ):
            pend = self.items.pop(-2)
        if isinstance(pend, _Affine):
            s, t = pend.scale.ravel(), pend.shift.ravel()
            bias = bias + weight @ t
            weight = weight * s[None, :]
        self.items.append(Dense(weight, bias))
        self.shape = (weight.shape[0],)
        self.oshape = (*self.oshape[:-1], int(weight.shape[0]))

    def conv(self, node: Any, weight: FloatArray, bias: FloatArray, stride: Any, pad: Any) -> None:
        """Append a convolution, folding a pending per-channel affine map when padding is 0."""
        last = self.items[-1] if self.items else None
        if (
            isinstance(last, _Affine)
            and tuple(pad) == (0, 0)
            and _per_channel(last.scale)
            and _per_channel(last.shift)
        ):
            self.items.pop()
            sc, tc = last.scale[:, 0, 0], last.shift[:, 0, 0]
            bias = bias + np.einsum("ocij,c->o", weight, tc)
            weight = weight * sc[None, :, None, None]
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
                out.append(_normalize(item, self.path))
            else:
                out.append(item)
        return out


def _per_channel(a: FloatArray) -> bool:
    """Whether ``a`` (C, ...) is constant over every dimension but the first."""
    flat = a.reshape(a.shape[0], -1)
    return bool(np.all(flat == flat[:, :1]))


def _normalize(aff: _Affine, path: str) -> Normalize:
    if not (_per_channel(aff.scale) and _per_channel(aff.shift)):
        raise UnsupportedLayerError(
            f"{path}: an elementwise affine map that is not per-channel cannot be folded into a "
            "neighbouring linear layer"
        )
    s = aff.scale.reshape(aff.scale.shape[0], -1)[:, 0]
    t = aff.shift.reshape(aff.shift.shape[0], -1)[:, 0]
    if np.any(s == 0):
        raise UnsupportedLayerError(f"{path}: an elementwise scale by zero cannot be represented")
    return Normalize(-t / s, 1.0 / s)


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
            continue
        live = [name for name in node.input if name == chain]
        if not live:
            raise conv.fail(node, "the graph is not a single chain (node off the main path)")
        if chain in used or len(live) > 1:
            raise conv.fail(node, "the graph branches: a tensor is used by more than one node")
        used.add(chain)
        _convert(conv, node, op, chain)
        chain = node.output[0]
    if chain != graph.output[0].name:
        raise UnsupportedLayerError(f"{where}: the node chain does not end at the graph output")
    try:
        return Network(conv.finish(), input_shape)
    except UnsupportedLayerError as err:
        raise UnsupportedLayerError(f"{where}: {err}") from None


def _convert(conv: _Converter, node: Any, op: str, chain: str) -> None:
    """Apply one node to the converter state."""
    at = _attrs(node)
    ins = list(node.input)
    if op in ("Identity", "Dropout"):
        return
    if op == "Relu":
        conv.items.append(ReLU())
        return
    if op in ("Add", "Sub", "Mul", "Div"):
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
            conv.affine(node, 1.0 / c, 0.0)
        else:
            raise conv.fail(node, "division by the input is not affine")
        return
    if op == "Flatten":
        axis = int(at.get("axis", 1))
        axis = axis + len(conv.oshape) if axis < 0 else axis
        new = (int(np.prod(conv.oshape[:axis])), int(np.prod(conv.oshape[axis:])))
        conv.reshape(node, new)
        return
    if op == "Reshape":
        target = [int(v) for v in conv.const(node, ins[1]).ravel()]
        target = [conv.oshape[i] if v == 0 else v for i, v in enumerate(target)]
        if -1 in target:
            rest = int(np.prod([v for v in target if v != -1]))
            target[target.index(-1)] = int(np.prod(conv.oshape)) // max(rest, 1)
        conv.reshape(node, tuple(target))
        return
    if op in ("Squeeze", "Unsqueeze"):
        axes_v = at.get("axes")
        if axes_v is None and len(ins) > 1:
            axes_v = [int(v) for v in conv.const(node, ins[1]).ravel()]
        conv.reshape(node, _squeeze(conv.oshape, axes_v, op == "Squeeze"))
        return
    if op == "Transpose":
        perm = [int(p) for p in at.get("perm", range(len(conv.oshape) - 1, -1, -1))]
        moved = [p for p in perm if conv.oshape[p] != 1]
        if moved != sorted(moved):
            raise conv.fail(node, "only transposes that move unit dimensions are supported")
        conv.reshape(node, tuple(conv.oshape[p] for p in perm))
        return
    if op == "MatMul":
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
        return
    if op == "Gemm":
        if ins[0] != chain or int(at.get("transA", 0)):
            raise conv.fail(node, "the input must be operand A, not transposed")
        b = conv.const(node, ins[1])
        b = b.T if int(at.get("transB", 0)) else b
        alpha, beta = float(at.get("alpha", 1.0)), float(at.get("beta", 1.0))
        c = conv.const(node, ins[2]) if len(ins) > 2 and ins[2] else np.zeros(b.shape[1])
        bias = beta * np.broadcast_to(c, (1, b.shape[1]))[0]
        conv.dense(node, alpha * b.T, bias.copy())
        return
    if op == "Conv":
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
        return
    if op == "AveragePool":
        pads = [int(p) for p in at.get("pads", [0, 0, 0, 0])]
        if any(pads) or int(at.get("ceil_mode", 0)):
            raise conv.fail(node, "AveragePool needs pads 0 and ceil_mode 0")
        kernel = tuple(int(k) for k in at["kernel_shape"])
        conv.push(node, AvgPool2d(kernel, tuple(int(s) for s in at.get("strides", kernel))))
        return
    raise conv.fail(node, "unsupported operator")


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
