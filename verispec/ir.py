"""The IR layer types: plain, immutable data with float64 weights and shape inference.

A layer states *what* it computes (its fields and the output shape for an input shape) and
nothing else. Each algorithm that must understand layers keeps its own rule table keyed by
these types (``verispec.rules``): torch forward (``verispec.torch_forward``), torch import
(``verispec.network``), model files (``verispec.modelfile``), ONNX import (``verispec.onnx``),
Lipschitz bounds (``verispec.engines.lipschitz_bounds``), rounding-error constants
(``verispec.engines.roundoff``) and exact lowering (``verispec.solvers.lowering``).

The semantics of every layer is the real-valued map given by its float64 fields; every float64
path uses those values unrounded, and a float32 path rounds them explicitly and accounts for it.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from verispec.errors import UnsupportedLayerError
from verispec.regions import FloatArray, frozen_array

Shape = tuple[int, ...]


def pair(value: Any) -> tuple[int, int]:
    """An int or a pair of ints as a 2-tuple."""
    if isinstance(value, int):
        return (value, value)
    a, b = value
    return (int(a), int(b))


def _finite(instance: Any, attribute: attrs.Attribute[Any], value: FloatArray) -> None:
    if not np.all(np.isfinite(value)):
        raise UnsupportedLayerError(
            f"{type(instance).__name__}.{attribute.name} contains NaN or infinity"
        )


def _vector(instance: Any, attribute: attrs.Attribute[Any], value: FloatArray) -> None:
    if value.ndim != 1 or value.size == 0:
        raise UnsupportedLayerError(
            f"{type(instance).__name__}.{attribute.name} must be a non-empty vector, "
            f"got shape {value.shape}"
        )


def _per_channel(layer: Any, size: int, input_shape: Shape) -> None:
    if not input_shape or size not in (1, input_shape[0]):
        raise UnsupportedLayerError(
            f"{layer.kind} has {size} channels, its input {input_shape} has "
            f"{input_shape[0] if input_shape else 0}"
        )


@attrs.frozen(eq=False)
class Dense:
    """y = W x + b; ``weight`` (out, in), ``bias`` (out,)."""

    weight: FloatArray = attrs.field(converter=frozen_array, validator=_finite)
    bias: FloatArray = attrs.field(converter=frozen_array, validator=_finite)
    kind = "dense"

    def __attrs_post_init__(self) -> None:
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise UnsupportedLayerError(
                f"dense weight {self.weight.shape} and bias {self.bias.shape} do not match"
            )

    def output_shape(self, input_shape: Shape) -> Shape:
        if input_shape != (self.weight.shape[1],):
            raise UnsupportedLayerError(
                f"dense layer expects input ({self.weight.shape[1]},), got {input_shape}; "
                "add a Flatten before it"
            )
        return (self.weight.shape[0],)


@attrs.frozen(eq=False)
class Conv2d:
    """2-D convolution with zero padding; ``weight`` (c_out, c_in, kh, kw), ``bias`` (c_out,)."""

    weight: FloatArray = attrs.field(converter=frozen_array, validator=_finite)
    bias: FloatArray = attrs.field(converter=frozen_array, validator=_finite)
    stride: tuple[int, int] = attrs.field(converter=pair)
    padding: tuple[int, int] = attrs.field(converter=pair)
    kind = "conv2d"

    def __attrs_post_init__(self) -> None:
        if self.weight.ndim != 4 or self.bias.shape != (self.weight.shape[0],):
            raise UnsupportedLayerError(
                f"conv2d weight {self.weight.shape} and bias {self.bias.shape} do not match"
            )
        if min(self.stride) < 1 or min(self.padding) < 0:
            raise UnsupportedLayerError(
                f"conv2d stride {self.stride} must be >= 1 and padding {self.padding} >= 0"
            )

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


@attrs.frozen
class ReLU:
    """max(x, 0) elementwise."""

    kind = "relu"

    def output_shape(self, input_shape: Shape) -> Shape:
        return input_shape


@attrs.frozen
class GroupSort:
    """Sort consecutive groups of ``group_size`` features/channels; size 2 is MinMax."""

    group_size: int = 2
    kind = "groupsort"

    def __attrs_post_init__(self) -> None:
        if self.group_size < 2:
            raise UnsupportedLayerError(f"GroupSort group_size must be >= 2, got {self.group_size}")

    def output_shape(self, input_shape: Shape) -> Shape:
        if input_shape[0] % self.group_size:
            raise UnsupportedLayerError(
                f"GroupSort({self.group_size}) on {input_shape[0]} channels: not a multiple"
            )
        return input_shape


@attrs.frozen
class Flatten:
    """Reshape (c, h, w) -> (c*h*w,)."""

    kind = "flatten"

    def output_shape(self, input_shape: Shape) -> Shape:
        return (int(np.prod(input_shape)),)


@attrs.frozen(eq=False)
class Normalize:
    """(x - mean) / std per channel (dim 0 of the input shape); one value means all channels."""

    mean: FloatArray = attrs.field(converter=frozen_array, validator=[_finite, _vector])
    std: FloatArray = attrs.field(converter=frozen_array, validator=[_finite, _vector])
    kind = "normalize"

    def __attrs_post_init__(self) -> None:
        if self.mean.shape != self.std.shape:
            raise UnsupportedLayerError(
                f"Normalize mean {self.mean.shape} and std {self.std.shape} differ in length"
            )
        if not np.all(self.std != 0):
            raise UnsupportedLayerError("Normalize std must be non-zero")

    def output_shape(self, input_shape: Shape) -> Shape:
        _per_channel(self, self.mean.size, input_shape)
        return input_shape


@attrs.frozen(eq=False)
class BatchNorm:
    """x * scale + shift per channel (dim 0 of the input shape): batch normalisation in
    evaluation mode, with scale = gamma / sqrt(running_var + eps) and
    shift = beta - running_mean * scale (computed once, in float64, when imported)."""

    scale: FloatArray = attrs.field(converter=frozen_array, validator=[_finite, _vector])
    shift: FloatArray = attrs.field(converter=frozen_array, validator=[_finite, _vector])
    kind = "batchnorm"

    def __attrs_post_init__(self) -> None:
        if self.scale.shape != self.shift.shape:
            raise UnsupportedLayerError(
                f"BatchNorm scale {self.scale.shape} and shift {self.shift.shape} differ"
            )

    def output_shape(self, input_shape: Shape) -> Shape:
        _per_channel(self, self.scale.size, input_shape)
        return input_shape


@attrs.frozen
class AvgPool2d:
    """Average pooling, padding 0, floor mode."""

    kernel: tuple[int, int] = attrs.field(converter=pair)
    stride: tuple[int, int] = attrs.field(converter=pair)
    kind = "avgpool2d"

    def __attrs_post_init__(self) -> None:
        if min(self.kernel) < 1 or min(self.stride) < 1:
            raise UnsupportedLayerError(
                f"avgpool2d kernel {self.kernel} and stride {self.stride} must be >= 1"
            )

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 3:
            raise UnsupportedLayerError(f"avgpool2d expects (C, H, W) input, got {input_shape}")
        c, h, w = input_shape
        oh = (h - self.kernel[0]) // self.stride[0] + 1
        ow = (w - self.kernel[1]) // self.stride[1] + 1
        if oh < 1 or ow < 1:
            raise UnsupportedLayerError(f"avgpool2d kernel {self.kernel} larger than input {h}x{w}")
        return (c, oh, ow)


Layer = Dense | Conv2d | ReLU | GroupSort | Flatten | Normalize | BatchNorm | AvgPool2d
LAYER_TYPES: dict[str, type[Layer]] = {
    cls.kind: cls
    for cls in (Dense, Conv2d, ReLU, GroupSort, Flatten, Normalize, BatchNorm, AvgPool2d)
}
"""Every IR layer type by its ``kind`` (the model-file name)."""


def channel_vector(values: FloatArray, shape: Shape) -> FloatArray:
    """A per-channel vector (length 1 or shape[0]) broadcast to the full ``shape``."""
    per = np.broadcast_to(np.asarray(values, dtype=np.float64), (shape[0],))
    return np.broadcast_to(per.reshape((-1,) + (1,) * (len(shape) - 1)), shape)


def fields(layer: Layer) -> dict[str, Any]:
    """The layer's data fields by name (arrays, ints, int pairs), in declaration order."""
    return {f.name: getattr(layer, f.name) for f in attrs.fields(type(layer))}
