"""Torch modules computing IR layers: the torch-forward rule table.

``layer_module(layer, dtype, device)`` builds a module whose parameters are the layer's
float64 values converted *once* to ``dtype`` (exact for float64; rounded to nearest for
float32, which ``verispec.engines.roundoff`` accounts for, underflow included). No module is
ever built in one precision and cast to another, so a float64 pass uses the IR's weights
unrounded.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from verispec import layers as vl
from verispec.ir import (
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Dense,
    Flatten,
    GroupSort,
    Layer,
    Normalize,
    ReLU,
)
from verispec.regions import FloatArray
from verispec.rules import RuleTable

ModuleRule = Callable[..., nn.Module]
"""(layer of the registered type, dtype, device) -> module."""
TORCH_FORWARD: RuleTable[ModuleRule] = RuleTable("the torch forward pass")


def tensor(values: FloatArray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``values`` (float64) as a tensor of ``dtype`` on ``device``: one rounding at most."""
    return torch.from_numpy(np.array(values, dtype=np.float64)).to(device=device, dtype=dtype)


def _set(module: nn.Module, dtype: torch.dtype, device: torch.device, **values: FloatArray) -> None:
    with torch.no_grad():
        for name, value in values.items():
            setattr(module, name, nn.Parameter(tensor(value, dtype, device), requires_grad=False))


@TORCH_FORWARD.register(Dense)
def _dense(layer: Dense, dtype: torch.dtype, device: torch.device) -> nn.Module:
    out_f, in_f = layer.weight.shape
    m = nn.Linear(in_f, out_f, device="meta")
    _set(m, dtype, device, weight=layer.weight, bias=layer.bias)
    return m


@TORCH_FORWARD.register(Conv2d)
def _conv(layer: Conv2d, dtype: torch.dtype, device: torch.device) -> nn.Module:
    co, ci, kh, kw = layer.weight.shape
    m = nn.Conv2d(ci, co, (kh, kw), stride=layer.stride, padding=layer.padding, device="meta")
    _set(m, dtype, device, weight=layer.weight, bias=layer.bias)
    return m


@TORCH_FORWARD.register(ReLU)
def _relu(layer: ReLU, dtype: torch.dtype, device: torch.device) -> nn.Module:
    return nn.ReLU()


@TORCH_FORWARD.register(GroupSort)
def _groupsort(layer: GroupSort, dtype: torch.dtype, device: torch.device) -> nn.Module:
    return vl.GroupSort(layer.group_size)


@TORCH_FORWARD.register(Flatten)
def _flatten(layer: Flatten, dtype: torch.dtype, device: torch.device) -> nn.Module:
    return nn.Flatten()


@TORCH_FORWARD.register(Normalize)
def _normalize(layer: Normalize, dtype: torch.dtype, device: torch.device) -> nn.Module:
    return vl.Normalize(tensor(layer.mean, dtype, device), tensor(layer.std, dtype, device))


@TORCH_FORWARD.register(BatchNorm)
def _batchnorm(layer: BatchNorm, dtype: torch.dtype, device: torch.device) -> nn.Module:
    return vl.ChannelAffine(tensor(layer.scale, dtype, device), tensor(layer.shift, dtype, device))


@TORCH_FORWARD.register(AvgPool2d)
def _avgpool(layer: AvgPool2d, dtype: torch.dtype, device: torch.device) -> nn.Module:
    return nn.AvgPool2d(layer.kernel, layer.stride)


def layer_module(
    layer: Layer, dtype: torch.dtype, device: torch.device, where: str = ""
) -> nn.Module:
    """A fresh eval-mode module computing ``layer`` in ``dtype`` on ``device``."""
    module = TORCH_FORWARD.rule(layer, where)(layer, dtype, device)
    return module.to(device).eval()
