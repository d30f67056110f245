"""The network IR: an ordered tuple of typed layers with float64 weights.

Build one from a ``torch.nn.Sequential`` (nested Sequentials allowed) with
``Network.from_torch(module, input_shape)``; run it with ``Network.module(dtype, device)``
(a fresh torch module) or ``Network.forward64`` (a float64 numpy forward pass, the reference
every counterexample is checked with). Unknown layers raise ``UnsupportedLayerError``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import attrs
import numpy as np
import torch
from torch import nn

from verispec import layers as vl
from verispec.errors import UnsupportedLayerError
from verispec.regions import FloatArray, frozen_array

Shape = tuple[int, ...]

SUPPORTED_LAYERS = (
    "Linear, Conv2d (dilation 1, groups 1, zero padding), ReLU, MinMax / GroupSort, "
    "Flatten, Normalize (per-channel affine), AvgPool2d (padding 0), Identity/Dropout (eval)"
)


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    a, b = value
    return (int(a), int(b))


@attrs.frozen(eq=False)
class Dense:
    """y = W x + b; ``weight`` (out, in), ``bias`` (out,)."""

    weight: FloatArray = attrs.field(converter=frozen_array)
    bias: FloatArray = attrs.field(converter=frozen_array)
    kind = "dense"

    def output_shape(self, input_shape: Shape) -> Shape:
        if input_shape != (self.weight.shape[1],):
            raise UnsupportedLayerError(
                f"dense layer expects input ({self.weight.shape[1]},), got {input_shape}; "
                "add a Flatten before it"
            )
        return (self.weight.shape[0],)

    def config(self) -> dict[str, Any]:
        return {"in": int(self.weight.shape[1]), "out": int(self.weight.shape[0])}

    def arrays(self) -> dict[str, FloatArray]:
        return {"weight": self.weight, "bias": self.bias}

    def to_torch(self) -> nn.Module:
        m = nn.Linear(self.weight.shape[1], self.weight.shape[0])
        _load(m, weight=self.weight, bias=self.bias)
        return m


@attrs.frozen(eq=False)
class Conv2d:
    """2-D convolution with zero padding; ``weight`` (c_out, c_in, kh, kw), ``bias`` (c_out,)."""

    weight: FloatArray = attrs.field(converter=frozen_array)
    bias: FloatArray = attrs.field(converter=frozen_array)
    stride: tuple[int, int] = attrs.field(converter=_pair)
    padding: tuple[int, int] = attrs.field(converter=_pair)
    kind = "conv2d"

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 3 or input_shape[0] != self.weight.shape[1]:
            raise UnsupportedLayerError(
                f"conv2d expects input ({self.weight.shape[1]}, H, W), got {input_shape}"
            )
        _, h, w = input_shape
        kh, kw = self.weight.shape[2:]
        oh = (h + 2 * self.padding[0] - kh) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - kw) // self.stride[1] + 1
        if oh < 1 or ow < 1:
            raise UnsupportedLayerError(f"conv2d kernel {kh}x{kw} larger than its input {h}x{w}")
        return (int(self.weight.shape[0]), oh, ow)

    def config(self) -> dict[str, Any]:
        co, ci, kh, kw = (int(s) for s in self.weight.shape)
        return {
            "in": ci,
            "out": co,
            "kernel": [kh, kw],
            "stride": list(self.stride),
            "padding": list(self.padding),
        }

    def arrays(self) -> dict[str, FloatArray]:
        return {"weight": self.weight, "bias": self.bias}

    def to_torch(self) -> nn.Module:
        co, ci, kh, kw = self.weight.shape
        m = nn.Conv2d(ci, co, (kh, kw), stride=self.stride, padding=self.padding)
        _load(m, weight=self.weight, bias=self.bias)
        return m


@attrs.frozen
class ReLU:
    """max(x, 0) elementwise."""

    kind = "relu"

    def output_shape(self, input_shape: Shape) -> Shape:
        return input_shape

    def config(self) -> dict[str, Any]:
        return {}

    def arrays(self) -> dict[str, FloatArray]:
        return {}

    def to_torch(self) -> nn.Module:
        return nn.ReLU()


@attrs.frozen
class GroupSort:
    """Sort consecutive groups of ``group_size`` features/channels; size 2 is MinMax."""

    group_size: int = 2
    kind = "groupsort"

    def output_shape(self, input_shape: Shape) -> Shape:
        if input_shape[0] % self.group_size:
            raise UnsupportedLayerError(
                f"GroupSort({self.group_size}) on {input_shape[0]} channels: not a multiple"
            )
        return input_shape

    def config(self) -> dict[str, Any]:
        return {"group_size": self.group_size}

    def arrays(self) -> dict[str, FloatArray]:
        return {}

    def to_torch(self) -> nn.Module:
        return vl.GroupSort(self.group_size)


@attrs.frozen
class Flatten:
    """Reshape (c, h, w) -> (c*h*w,)."""

    kind = "flatten"

    def output_shape(self, input_shape: Shape) -> Shape:
        return (int(np.prod(input_shape)),)

    def config(self) -> dict[str, Any]:
        return {}

    def arrays(self) -> dict[str, FloatArray]:
        return {}

    def to_torch(self) -> nn.Module:
        return nn.Flatten()


@attrs.frozen(eq=False)
class Normalize:
    """(x - mean) / std per channel (dim 0 of the input shape)."""

    mean: FloatArray = attrs.field(converter=frozen_array)
    std: FloatArray = attrs.field(converter=frozen_array)
    kind = "normalize"

    def output_shape(self, input_shape: Shape) -> Shape:
        if self.mean.size not in (1, input_shape[0]):
            raise UnsupportedLayerError(
                f"Normalize has {self.mean.size} channels, its input {input_shape} "
                f"has {input_shape[0]}"
            )
        return input_shape

    def scale(self, input_shape: Shape) -> FloatArray:
        """1/std broadcast to ``input_shape``: the linear part of the layer is diag(scale)."""
        inv = 1.0 / np.broadcast_to(self.std, (input_shape[0],))
        return np.broadcast_to(inv.reshape((-1,) + (1,) * (len(input_shape) - 1)), input_shape)

    def config(self) -> dict[str, Any]:
        return {"channels": int(self.mean.size)}

    def arrays(self) -> dict[str, FloatArray]:
        return {"mean": self.mean, "std": self.std}

    def to_torch(self) -> nn.Module:
        return vl.Normalize(
            torch.from_numpy(np.array(self.mean)), torch.from_numpy(np.array(self.std))
        )


@attrs.frozen
class AvgPool2d:
    """Average pooling, padding 0, floor mode."""

    kernel: tuple[int, int] = attrs.field(converter=_pair)
    stride: tuple[int, int] = attrs.field(converter=_pair)
    kind = "avgpool2d"

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 3:
            raise UnsupportedLayerError(f"avgpool2d expects (C, H, W) input, got {input_shape}")
        c, h, w = input_shape
        oh = (h - self.kernel[0]) // self.stride[0] + 1
        ow = (w - self.kernel[1]) // self.stride[1] + 1
        if oh < 1 or ow < 1:
            raise UnsupportedLayerError(f"avgpool2d kernel {self.kernel} larger than input {h}x{w}")
        return (c, oh, ow)

    def config(self) -> dict[str, Any]:
        return {"kernel": list(self.kernel), "stride": list(self.stride)}

    def arrays(self) -> dict[str, FloatArray]:
        return {}

    def to_torch(self) -> nn.Module:
        return nn.AvgPool2d(self.kernel, self.stride)


Layer = Dense | Conv2d | ReLU | GroupSort | Flatten | Normalize | AvgPool2d
LAYER_TYPES: dict[str, type] = {
    cls.kind: cls for cls in (Dense, Conv2d, ReLU, GroupSort, Flatten, Normalize, AvgPool2d)
}


def _load(module: nn.Module, **arrays: FloatArray) -> None:
    with torch.no_grad():
        for name, value in arrays.items():
            getattr(module, name).copy_(torch.from_numpy(np.array(value)))


def _arr(t: torch.Tensor) -> FloatArray:
    return np.asarray(t.detach().cpu().to(torch.float64).numpy())


def _walk(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            yield from _walk(child, f"{prefix}.{name}" if prefix else name)
    else:
        yield prefix or "<root>", module


class ExportsIR(Protocol):
    """A torch module that states its own exact IR: ``verispec_layers()`` returns IR layers
    computing the same function (e.g. a residual block folded into one convolution)."""

    def verispec_layers(self) -> list[Layer]: ...


def layers_from_torch(module: nn.Module, where: str) -> list[Layer]:
    """The IR layers for one torch module (none for layers that are the identity at eval time)."""
    export = getattr(module, "verispec_layers", None)
    if callable(export):
        return list(export())
    layer = layer_from_torch(module, where)
    return [] if layer is None else [layer]


def layer_from_torch(module: nn.Module, where: str) -> Layer | None:
    """The IR layer for one standard torch module (None for the identity at eval time)."""
    if isinstance(module, nn.Identity | nn.Dropout):
        return None
    if isinstance(module, nn.Linear):
        bias: torch.Tensor = (
            module.bias if module.bias is not None else torch.zeros(module.out_features)
        )
        return Dense(_arr(module.weight), _arr(bias))
    if isinstance(module, nn.Conv2d):
        problems = []
        if _pair(module.dilation) != (1, 1):
            problems.append(f"dilation {module.dilation}")
        if module.groups != 1:
            problems.append(f"groups {module.groups}")
        if module.padding_mode != "zeros":
            problems.append(f"padding_mode {module.padding_mode!r}")
        if isinstance(module.padding, str):
            problems.append(f"padding {module.padding!r} (give explicit integers)")
        if problems:
            raise UnsupportedLayerError(
                f"layer {where} ({module}): unsupported {', '.join(problems)}. Supported: "
                + SUPPORTED_LAYERS
            )
        bias = module.bias if module.bias is not None else torch.zeros(module.out_channels)
        return Conv2d(_arr(module.weight), _arr(bias), _pair(module.stride), _pair(module.padding))
    if isinstance(module, nn.ReLU):
        return ReLU()
    if isinstance(module, vl.GroupSort):
        return GroupSort(module.group_size)
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise UnsupportedLayerError(
                f"layer {where} ({module}): only Flatten(start_dim=1, end_dim=-1) is supported"
            )
        return Flatten()
    if isinstance(module, vl.Normalize):
        return Normalize(_arr(module.mean), _arr(module.std))
    if isinstance(module, nn.AvgPool2d):
        if _pair(module.padding) != (0, 0) or module.ceil_mode or module.divisor_override:
            raise UnsupportedLayerError(
                f"layer {where} ({module}): AvgPool2d needs padding 0, ceil_mode False and no "
                "divisor_override"
            )
        stride = module.stride if module.stride is not None else module.kernel_size
        return AvgPool2d(_pair(module.kernel_size), _pair(stride))
    raise UnsupportedLayerError(
        f"layer {where} ({type(module).__name__}: {module}) is not supported. "
        f"Supported: {SUPPORTED_LAYERS}"
    )


def _layers(value: Iterable[Layer]) -> tuple[Layer, ...]:
    return tuple(value)


def _shape(value: Iterable[int]) -> Shape:
    return tuple(int(v) for v in value)


@attrs.frozen(eq=False)
class Network:
    """A feed-forward network f: R^input_shape -> R^m as an ordered tuple of IR layers."""

    layers: tuple[Layer, ...] = attrs.field(converter=_layers)
    input_shape: Shape = attrs.field(converter=_shape)
    shapes: tuple[Shape, ...] = attrs.field(init=False)
    _fingerprint: str = attrs.field(init=False, default="", repr=False)

    def __attrs_post_init__(self) -> None:
        shapes = [self.input_shape]
        for i, layer in enumerate(self.layers):
            try:
                shapes.append(layer.output_shape(shapes[-1]))
            except UnsupportedLayerError as err:
                raise UnsupportedLayerError(f"layer {i} ({layer.kind}): {err}") from None
        if len(shapes[-1]) != 1:
            raise UnsupportedLayerError(
                f"the network's output has shape {shapes[-1]}; it must be a vector of logits"
            )
        object.__setattr__(self, "shapes", tuple(shapes))

    @classmethod
    def from_torch(cls, module: nn.Module, input_shape: Shape) -> Network:
        """IR of a torch ``Sequential`` (nested allowed) or of a single supported layer."""
        found = [layer for where, m in _walk(module, "") for layer in layers_from_torch(m, where)]
        return cls(tuple(found), input_shape)

    @property
    def num_classes(self) -> int:
        return self.shapes[-1][0]

    @property
    def input_size(self) -> int:
        return int(np.prod(self.input_shape))

    def module(
        self, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> nn.Sequential:
        """A fresh torch module computing the network, in eval mode, on ``device``."""
        seq = nn.Sequential(*(layer.to_torch() for layer in self.layers))
        return seq.to(dtype=dtype, device=device).eval()

    def forward64(self, x: FloatArray) -> FloatArray:
        """Float64 logits (n, m) of ``x`` (n, *input_shape) on the CPU: the reference pass."""
        xs = np.array(x, dtype=np.float64).reshape((-1, *self.input_shape))
        with torch.no_grad():
            out = self.module(torch.float64)(torch.from_numpy(xs))
        return np.asarray(out.numpy())

    def fingerprint(self) -> str:
        """A hash of the architecture and every weight (cache key for derived constants);
        computed once per network (the IR is immutable)."""
        if self._fingerprint:
            return self._fingerprint
        h = hashlib.sha256(repr(self.input_shape).encode())
        for layer in self.layers:
            h.update(layer.kind.encode())
            h.update(repr(sorted(layer.config().items())).encode())
            for name, arr in sorted(layer.arrays().items()):
                h.update(name.encode())
                h.update(np.ascontiguousarray(arr).tobytes())
        object.__setattr__(self, "_fingerprint", h.hexdigest())
        return self._fingerprint

    def describe(self) -> list[str]:
        """One line per layer: index, kind, output shape."""
        return [
            f"{i:>3}  {layer.kind:<10} {self.shapes[i]} -> {self.shapes[i + 1]}"
            for i, layer in enumerate(self.layers)
        ]
