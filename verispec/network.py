"""The network IR: an ordered tuple of typed layers (``verispec.ir``) with float64 weights.

Build one from a ``torch.nn.Sequential`` (nested Sequentials allowed) with
``Network.from_torch(module, input_shape)`` (the torch-import rule table ``TORCH_IMPORT``, keyed
by torch module type); run it with ``Network.module(dtype, device)`` (a fresh torch module,
``verispec.torch_forward``) or ``Network.forward64`` (a float64 pass on the unrounded IR
weights, the reference every counterexample is checked with). Unknown layers raise
``UnsupportedLayerError``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import attrs
import numpy as np
import torch
from torch import nn

from verispec import layers as vl
from verispec.errors import UnsupportedLayerError
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
    Shape,
    fields,
    pair,
)
from verispec.regions import FloatArray
from verispec.rules import RuleTable
from verispec.torch_forward import layer_module

__all__ = [
    "LAYER_TYPES",
    "AvgPool2d",
    "BatchNorm",
    "Conv2d",
    "Dense",
    "Flatten",
    "GroupSort",
    "Layer",
    "Network",
    "Normalize",
    "ReLU",
    "Shape",
    "layer_from_torch",
    "layers_from_torch",
]

SUPPORTED_LAYERS = (
    "Linear, Conv2d (dilation 1, groups 1, zero padding), ReLU, MinMax / GroupSort, "
    "Flatten, Normalize (per-channel affine), BatchNorm1d / BatchNorm2d (evaluation mode, "
    "running statistics), AvgPool2d (padding 0), Identity/Dropout (eval)"
)


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


ImportRule = Callable[[Any, str], "Layer | None"]
"""(torch module of the registered type, where) -> IR layer, or None for the identity."""

TORCH_IMPORT: RuleTable[ImportRule] = RuleTable("the torch importer")
"""Keyed by the *exact* torch module type (a subclass may override ``forward``; it is refused
unless it exports its own IR with ``verispec_layers``)."""


def _unsupported(where: str, module: nn.Module, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"layer {where} ({module}): {why}. Supported: {SUPPORTED_LAYERS}")


@TORCH_IMPORT.register(nn.Identity, nn.Dropout)
def _identity(module: nn.Module, where: str) -> None:
    return None


@TORCH_IMPORT.register(nn.Linear)
def _linear(module: nn.Linear, where: str) -> Layer:
    bias = module.bias if module.bias is not None else torch.zeros(module.out_features)
    return Dense(_arr(module.weight), _arr(bias))


@TORCH_IMPORT.register(nn.Conv2d)
def _conv2d(module: nn.Conv2d, where: str) -> Layer:
    problems = []
    if pair(module.dilation) != (1, 1):
        problems.append(f"dilation {module.dilation}")
    if module.groups != 1:
        problems.append(f"groups {module.groups}")
    if module.padding_mode != "zeros":
        problems.append(f"padding_mode {module.padding_mode!r}")
    if isinstance(module.padding, str):
        problems.append(f"padding {module.padding!r} (give explicit integers)")
    if problems:
        raise _unsupported(where, module, f"unsupported {', '.join(problems)}")
    bias = module.bias if module.bias is not None else torch.zeros(module.out_channels)
    return Conv2d(_arr(module.weight), _arr(bias), pair(module.stride), pair(module.padding))


@TORCH_IMPORT.register(nn.ReLU)
def _relu(module: nn.ReLU, where: str) -> Layer:
    return ReLU()


@TORCH_IMPORT.register(vl.GroupSort, vl.MinMax)
def _groupsort(module: vl.GroupSort, where: str) -> Layer:
    return GroupSort(module.group_size)


@TORCH_IMPORT.register(nn.Flatten)
def _flatten(module: nn.Flatten, where: str) -> Layer:
    if module.start_dim != 1 or module.end_dim != -1:
        raise _unsupported(where, module, "only Flatten(start_dim=1, end_dim=-1) is supported")
    return Flatten()


@TORCH_IMPORT.register(vl.Normalize)
def _normalize(module: vl.Normalize, where: str) -> Layer:
    return Normalize(_arr(module.mean), _arr(module.std))


@TORCH_IMPORT.register(vl.ChannelAffine)
def _channel_affine(module: vl.ChannelAffine, where: str) -> Layer:
    return BatchNorm(_arr(module.scale), _arr(module.shift))


@TORCH_IMPORT.register(nn.BatchNorm1d, nn.BatchNorm2d)
def _batchnorm(module: nn.BatchNorm1d | nn.BatchNorm2d, where: str) -> Layer:
    """Evaluation-mode batch norm: scale = gamma / sqrt(var + eps), shift = beta - mean scale,
    computed in float64 from the module's running statistics."""
    mean, var = module.running_mean, module.running_var
    if mean is None or var is None:
        raise _unsupported(
            where,
            module,
            "batch norm without running statistics (track_running_stats=False) normalises "
            "with batch statistics, which is not a fixed function of the input",
        )
    c = module.num_features
    gamma = _arr(module.weight) if module.weight is not None else np.ones(c)
    beta = _arr(module.bias) if module.bias is not None else np.zeros(c)
    scale = gamma / np.sqrt(_arr(var) + float(module.eps))
    if not np.all(np.isfinite(scale)):
        raise _unsupported(where, module, "running_var + eps must be positive")
    return BatchNorm(scale, beta - _arr(mean) * scale)


@TORCH_IMPORT.register(nn.AvgPool2d)
def _avgpool(module: nn.AvgPool2d, where: str) -> Layer:
    if pair(module.padding) != (0, 0) or module.ceil_mode or module.divisor_override:
        raise _unsupported(
            where, module, "AvgPool2d needs padding 0, ceil_mode False and no divisor_override"
        )
    stride = module.stride if module.stride is not None else module.kernel_size
    return AvgPool2d(pair(module.kernel_size), pair(stride))


def layer_from_torch(module: nn.Module, where: str) -> Layer | None:
    """The IR layer for one standard torch module (None for the identity at eval time)."""
    if type(module) not in TORCH_IMPORT.covers():
        raise UnsupportedLayerError(
            f"layer {where} ({type(module).__name__}: {module}) is not supported. "
            f"Supported: {SUPPORTED_LAYERS}"
        )
    try:
        return TORCH_IMPORT.rule(module, where)(module, where)
    except UnsupportedLayerError as err:
        if str(err).startswith(f"layer {where} "):
            raise
        raise UnsupportedLayerError(f"layer {where} ({type(module).__name__}): {err}") from None


def _layers(value: Iterable[Layer]) -> tuple[Layer, ...]:
    return tuple(value)


def _shape(value: Iterable[int]) -> Shape:
    try:
        dims = tuple(value)
    except TypeError:
        raise UnsupportedLayerError(
            f"the input shape must be a tuple of positive integers, got {value!r}"
        ) from None
    if not dims or not all(
        isinstance(d, int | np.integer) and not isinstance(d, bool) and d >= 1 for d in dims
    ):
        raise UnsupportedLayerError(
            f"the input shape must be a tuple of positive integers (no batch dimension), "
            f"got {value!r}"
        )
    return tuple(int(d) for d in dims)


@attrs.frozen(eq=False)
class Network:
    """A feed-forward network f: R^input_shape -> R^m as an ordered tuple of IR layers."""

    layers: tuple[Layer, ...] = attrs.field(converter=_layers)
    input_shape: Shape = attrs.field(converter=_shape)
    shapes: tuple[Shape, ...] = attrs.field(init=False)
    _fingerprint: str = attrs.field(init=False, default="", repr=False)
    _module64: nn.Module | None = attrs.field(init=False, default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        shapes = [self.input_shape]
        for i, layer in enumerate(self.layers):
            if not (
                isinstance(getattr(layer, "kind", None), str)
                and callable(getattr(layer, "output_shape", None))
            ):
                raise UnsupportedLayerError(
                    f"layer {i} is a {type(layer).__name__}, not a verispec IR layer "
                    f"({', '.join(sorted(LAYER_TYPES))}); build a network from a torch module "
                    "with Network.from_torch(module, input_shape)"
                )
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
        """A fresh torch module computing the network, in eval mode, on ``device``; its
        parameters are the IR's float64 values converted once to ``dtype``."""
        dev = torch.device(device)
        return nn.Sequential(
            *(layer_module(layer, dtype, dev, str(i)) for i, layer in enumerate(self.layers))
        ).eval()

    def forward64(self, x: FloatArray) -> FloatArray:
        """Float64 logits (n, m) of ``x`` (n, *input_shape) on the CPU: the reference pass,
        on the IR's float64 weights unrounded."""
        xs = np.array(x, dtype=np.float64).reshape((-1, *self.input_shape))
        module = self._module64
        if module is None:
            module = self.module(torch.float64)
            object.__setattr__(self, "_module64", module)
        with torch.no_grad():
            out = module(torch.from_numpy(xs))
        return np.asarray(out.numpy())

    def fingerprint(self) -> str:
        """A hash of the architecture and every weight (cache key for derived constants);
        computed once per network (the IR is immutable)."""
        if self._fingerprint:
            return self._fingerprint
        h = hashlib.sha256(repr(self.input_shape).encode())
        for layer in self.layers:
            h.update(layer.kind.encode())
            for name, value in fields(layer).items():
                h.update(name.encode())
                if isinstance(value, np.ndarray):
                    h.update(repr(value.shape).encode())
                    h.update(np.ascontiguousarray(value).tobytes())
                else:
                    h.update(repr(value).encode())
        object.__setattr__(self, "_fingerprint", h.hexdigest())
        return self._fingerprint

    def describe(self, full: bool = False) -> list[str]:
        """One line per layer: index, kind, input and output shape; with ``full``, each layer's
        fields follow on lines of their own, arrays in full with round-trip digits (enough to
        rebuild the network exactly)."""
        lines = []
        for i, layer in enumerate(self.layers):
            lines.append(f"{i:>3}  {layer.kind:<10} {self.shapes[i]} -> {self.shapes[i + 1]}")
            if not full:
                continue
            for name, value in fields(layer).items():
                if isinstance(value, np.ndarray):
                    text = f"array({value.tolist()!r}) shape {value.shape}"
                else:
                    text = repr(value)
                lines.append(f"       {name} = {text}")
        return lines

    def summary(self) -> str:
        """A one-line description: the input shape, the layers' kinds and the classes."""
        kinds = ", ".join(layer.kind for layer in self.layers) or "no layers"
        return (
            f"Network(input {self.input_shape}, {len(self.layers)} layers: {kinds}; "
            f"{self.num_classes} classes)"
        )

    def __repr__(self) -> str:
        return self.summary()

    def __str__(self) -> str:
        return "\n".join([self.summary(), *self.describe()])

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """The pretty printers of IPython and hypothesis (a failing test's drawn networks): the
        summary and every weight (``describe(full=True)``), so the case can be rebuilt."""
        printer.text("\n".join([self.summary(), *self.describe(full=True)]))
