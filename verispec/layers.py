"""Torch modules verispec adds to the standard ones: GroupSort / MinMax and per-channel affine
normalisation. The network IR (``network.py``) understands these and the standard layers."""

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
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.shape != std.shape:
            raise ValueError("Normalize: mean and std must have the same length")
        if not bool(torch.all(std != 0)):
            raise ValueError("Normalize: std must be non-zero")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.reshape(shape)) / self.std.reshape(shape)
