"""Torch modules verispec adds to the standard ones: GroupSort / MinMax and per-channel affine
maps. The network IR (``network.py``) understands these and the standard layers."""

from __future__ import annotations

import torch
from torch import nn


class GroupSort(nn.Module):
    """Sorts features in consecutive groups of ``group_size`` along dim 1 (ascending).

    A permutation of its input at every point, hence 1-Lipschitz in every l_p norm.
    ``GroupSort(2)`` is MinMax: each pair (a, b) becomes (min, max).
    """

    def __init__(self, group_size: int = 2) -> None:
        super().__init__()
        if group_size < 2:
            raise ValueError(f"GroupSort group_size must be >= 2, got {group_size}")
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c % self.group_size:
            raise ValueError(f"GroupSort({self.group_size}): {c} features is not a multiple")
        shape = x.shape
        grouped = x.reshape(shape[0], c // self.group_size, self.group_size, *shape[2:])
        if self.group_size == 2:  # min/max is several times faster than a sort of pairs
            a, b = grouped.unbind(dim=2)
            return torch.stack((torch.minimum(a, b), torch.maximum(a, b)), dim=2).reshape(shape)
        return grouped.sort(dim=2).values.reshape(shape)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"


class MinMax(GroupSort):
    """GroupSort with groups of two."""

    def __init__(self) -> None:
        super().__init__(2)


class Normalize(nn.Module):
    """(x - mean) / std per channel (dim 1), e.g. dataset normalisation in front of a model."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        mean, std = _floating(mean), _floating(std)
        if mean.shape != std.shape:
            raise ValueError("Normalize: mean and std must have the same length")
        if not bool(torch.all(std != 0)):
            raise ValueError("Normalize: std must be non-zero")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.reshape(shape)) / self.std.reshape(shape)


class ChannelAffine(nn.Module):
    """x * scale + shift per channel (dim 1): batch normalisation in evaluation mode."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        scale, shift = _floating(scale), _floating(shift)
        if scale.shape != shift.shape:
            raise ValueError("ChannelAffine: scale and shift must have the same length")
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.reshape(shape) + self.shift.reshape(shape)


def _floating(value: torch.Tensor) -> torch.Tensor:
    """A flat tensor keeping a floating dtype (float64 stays float64: no silent rounding);
    other inputs become float32."""
    t = torch.as_tensor(value)
    if not t.is_floating_point():
        t = t.to(torch.float32)
    return t.flatten()
