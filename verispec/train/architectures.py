"""Architectures for certified training, by name with typed parameters.

- ``minmax-mlp``: Flatten -> [Dense(width) -> MinMax] x depth -> Dense(classes).
- ``2c2f``: C16k4s2 - C32k4s2 - D100 - D10 (GloRo), MinMax activations.
- ``4c3f``: C32k3 - C32k4s2 - C64k3 - C64k4s2 - D512 - D512 - D10 (GloRo).
- ``6c2f``: C32k3 - C32k3 - C32k4s2 - C64k3 - C64k3 - C64k4s2 - D512 - D10 (GloRo).
- ``liresnet``: stem conv, ``depth`` linear residual blocks (skip before the MinMax, branch
  scaled by 1/depth), a stride-4 neck conv, Dense(width), optionally a Cholesky-orthogonal dense
  layer, and a row-normalised head.

Convolutions use padding 1 (k3: 'same'; k4s2: halves the size). Weights start orthogonal.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable

import attrs
from torch import nn

from verispec.errors import UnsupportedError
from verispec.layers import MinMax
from verispec.train.layers import CholeskyDense, LiResBlock, RowNormDense, orthogonal_init


class Arch(enum.Enum):
    """The architectures ``build`` knows."""

    MINMAX_MLP = "minmax-mlp"
    C2F2 = "2c2f"
    C4F3 = "4c3f"
    C6F2 = "6c2f"
    LIRESNET = "liresnet"

    @classmethod
    def parse(cls, name: str) -> Arch:
        try:
            return cls(name.lower())
        except ValueError:
            raise UnsupportedError(
                f"unknown architecture {name!r}; known: {', '.join(a.value for a in cls)}"
            ) from None


@attrs.frozen
class ArchConfig:
    """An architecture and its parameters (``width``/``depth`` where the architecture has them)."""

    arch: Arch
    width: int = attrs.field(default=128, validator=attrs.validators.gt(0))
    depth: int = attrs.field(default=2, validator=attrs.validators.ge(0))
    cholesky_head: bool = False


def _conv_out(size: int, kernel: int, stride: int, pad: int = 1) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def _dense_head(
    layers: list[nn.Module], features: int, widths: list[int], classes: int
) -> nn.Sequential:
    """Append Dense(width) -> MinMax for each width and a final Dense(classes); init orthogonal."""
    for width in widths:
        layers += [nn.Linear(features, width), MinMax()]
        features = width
    layers.append(nn.Linear(features, classes))
    net = nn.Sequential(*layers)
    orthogonal_init(net)
    return net


def _convnet(
    spec: list[tuple[int, int, int]], dense: list[int], shape: tuple[int, ...], classes: int
) -> nn.Sequential:
    """Convs (channels, kernel, stride) then dense widths, MinMax after each but the last."""
    c, h, w = shape
    layers: list[nn.Module] = []
    for channels, k, s in spec:
        layers += [nn.Conv2d(c, channels, k, stride=s, padding=1), MinMax()]
        c, h, w = channels, _conv_out(h, k, s), _conv_out(w, k, s)
    layers.append(nn.Flatten())
    return _dense_head(layers, c * h * w, dense, classes)


def _mlp(cfg: ArchConfig, shape: tuple[int, ...], classes: int) -> nn.Sequential:
    width = cfg.width + cfg.width % 2
    return _dense_head([nn.Flatten()], math.prod(shape), [width] * cfg.depth, classes)


def _liresnet(cfg: ArchConfig, shape: tuple[int, ...], classes: int) -> nn.Sequential:
    c, h, w = shape
    width = cfg.width + cfg.width % 2
    layers: list[nn.Module] = [nn.Conv2d(c, width, 3, padding=1), MinMax()]
    for _ in range(cfg.depth):
        layers += [LiResBlock(width, 3, alpha=1.0 / max(1, cfg.depth)), MinMax()]
    stride = 4 if min(h, w) >= 16 else 2
    layers += [nn.Conv2d(width, width, stride, stride=stride, padding=0), MinMax(), nn.Flatten()]
    features = width * (h // stride) * (w // stride)
    dense = 2 * width
    layers += [nn.Linear(features, dense), MinMax()]
    if cfg.cholesky_head:
        layers += [CholeskyDense(dense), MinMax()]
    layers.append(RowNormDense(dense, classes))
    net = nn.Sequential(*layers)
    for m in net:
        if isinstance(m, nn.Linear | nn.Conv2d):
            orthogonal_init(m)
    return net


_BUILDERS: dict[Arch, Callable[[ArchConfig, tuple[int, ...], int], nn.Sequential]] = {
    Arch.MINMAX_MLP: _mlp,
    Arch.C2F2: lambda cfg, s, m: _convnet([(16, 4, 2), (32, 4, 2)], [100], s, m),
    Arch.C4F3: lambda cfg, s, m: _convnet(
        [(32, 3, 1), (32, 4, 2), (64, 3, 1), (64, 4, 2)], [512, 512], s, m
    ),
    Arch.C6F2: lambda cfg, s, m: _convnet(
        [(32, 3, 1), (32, 3, 1), (32, 4, 2), (64, 3, 1), (64, 3, 1), (64, 4, 2)], [512], s, m
    ),
    Arch.LIRESNET: _liresnet,
}


def build(cfg: ArchConfig, input_shape: tuple[int, ...], classes: int) -> nn.Sequential:
    """A freshly initialised model (call ``torch.manual_seed`` first for determinism)."""
    if cfg.arch is not Arch.MINMAX_MLP and len(input_shape) != 3:
        raise UnsupportedError(f"{cfg.arch.value} needs image inputs (C, H, W), got {input_shape}")
    return _BUILDERS[cfg.arch](cfg, input_shape, classes)
